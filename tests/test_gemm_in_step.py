"""benchmarks/gemm_in_step.py: projections timed alone and after the work that precedes them in a step."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    return load_benchmark("gemm_in_step")


def test_projections_are_a_llama_layer() -> None:
    # held-out model of docs/fidelity.md: 14 heads of 64 over 2 KV heads, gated MLP of 4864
    assert _script().projections(896, 14, 2, 4864) == [("qkv_proj", 896, 1152), ("o_proj", 896, 896),
                                                        ("mlp_up", 896, 9728), ("mlp_down", 4864, 896)]  # fmt: skip


def test_bad_dimensions_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    mod = _script()
    assert mod.main(["--hidden", "250", "--heads", "4", "--kv-heads", "2", "--ffn", "512"]) == 2
    assert "--hidden 250 must be a multiple of --heads 4" in capsys.readouterr().err
    assert mod.main(["--hidden", "256", "--heads", "4", "--kv-heads", "2", "--ffn", "512", "--rows", "0"]) == 2
    assert "--rows must be positive integers" in capsys.readouterr().err


def test_a_tiny_run_prints_every_projection_with_the_profile(capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()  # the script sets one thread for the process: restored after
    mod = _script()
    args = ["--hidden", "128", "--heads", "2", "--kv-heads", "1", "--ffn", "256", "--rows", "2", "--context", "16",
            "--dtype", "fp32", "--budget", "0.005", "--profile", str(ROOT / "calibration" / "profiles" / "ci-vm-cpu")]
    try:
        assert mod.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[0].startswith("fp32, 1 thread")
    for line, name in zip(lines[1:], ("qkv_proj", "o_proj", "mlp_up", "mlp_down")):
        assert line.startswith(name) and "after LLC x" in line and "after attn+norm x" in line and "| profile x" in line
