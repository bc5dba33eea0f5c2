"""benchmarks/step_operators.py: every operator of real decode and prefill steps against profiles' predictions."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    return load_benchmark("step_operators")


def test_step_tap_names_calls_as_ops_py_does() -> None:
    mod = _script()
    clock = iter(float(i) for i in range(100))
    tap = mod.StepTap(layers=2, now=lambda: next(clock))
    lin = tap.timed(tap.linear_name, lambda: None)
    norm = tap.timed(tap.norm_name, lambda: None)
    for _ in range(2):  # two steps: the names restart with every step
        tap.start_step()
        names = []
        for _ in range(9):
            names.append(tap.linear_name())
        assert names == ["qkv_proj", "o_proj", "mlp_up", "mlp_down"] * 2 + ["lm_head"]
        assert [tap.norm_name() for _ in range(5)] == ["input_norm", "post_attn_norm"] * 2 + ["final_norm"]
    tap.start_step()
    lin()
    norm()
    assert tap.times == {"qkv_proj": 1.0, "input_norm": 1.0}  # each call's own clock difference


@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_a_tiny_run_reports_every_operator_of_the_step(phase: str, capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    mod = _script()
    args = [str(ROOT / "calibration" / "profiles" / "ci-vm-cpu"), "--layers", "1", "--hidden", "64", "--heads", "2",
            "--kv-heads", "1", "--ffn", "128", "--vocab", "100", "--cells", "2/8", "--seconds", "0", "--dtype", "fp32",
            "--phase", phase]  # fmt: skip
    try:
        assert mod.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    ops = ("embedding", "input_norm", "qkv_proj", "rope", f"attn_{phase}", "o_proj", "residual_add", "post_attn_norm",
           "mlp_up", "mlp_act", "mlp_down", "final_norm", "lm_head", "sampling")  # fmt: skip
    lines = {line.split()[0] for line in out.splitlines()[2:]}
    assert lines == {*ops, "elementwise"}
    assert f"{phase} b=2 ctx=8: " in out and "nan" not in out  # every operator has a prediction


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--cells", "2x64"], "--cells: expected comma-separated BATCH/CONTEXT pairs"),
        (["--cells", "0/64"], "--cells: expected comma-separated BATCH/CONTEXT pairs"),
        (["--hidden", "100", "--heads", "3"], "must be --heads 3 x an even head size"),
    ],
)
def test_bad_arguments_are_one_line_errors(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = {"--hidden": "64", "--heads": "2", "--kv-heads": "1", "--ffn": "128"}
    base.update(zip(args[::2], args[1::2]))
    flat = [x for kv in base.items() for x in kv]
    assert _script().main([str(ROOT / "calibration" / "profiles" / "ci-vm-cpu"), *flat]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and len(err.strip().splitlines()) == 1
