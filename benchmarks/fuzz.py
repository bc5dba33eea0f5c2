"""Fuzz simkit's inputs: every input must give a clean error or a result that holds the invariants.

    .venv/bin/python benchmarks/fuzz.py --cases 10000            # the run docs/fuzzing.md reports
    .venv/bin/python benchmarks/fuzz.py --cases 500 --workers 2  # a quick look
    .venv/bin/python benchmarks/fuzz.py --case 1234              # replay one case, with its traceback

Each case is built from ``(seed, index)`` alone (so any case can be replayed) by mutating one
of the product's inputs (``--kinds inputs``): a shipped scenario (``workloads/scenarios/*.yaml``: wrong types, 0, -1, 1e30, NaN, inf,
2^63, booleans, unknown enum values, deleted and unknown keys, plus valid alternatives that
steer runs into other engine paths), a trace file of every format (corrupt, out-of-order,
missing or extra fields, non-UTF-8 bytes, bare CRs, 10^7-token prompts), a model file, the
scenario YAML text itself (non-UTF-8 bytes, truncation, alias bombs), or a CLI command line;
or one of the faces users drive (``--kinds faces``): a what-if study file (validated with
``--dry-run``, or a tiny study run, its folder corrupted, and run again to resume), a search file
(a real search of a few 2-request candidates without calibration), an ``offload-plan`` command
line, or a run, study or search folder corrupted or half-written and given to ``simkit report``.
``--kinds all`` (the default) mixes both; its inputs cases are those of ``--kinds inputs``.
Workloads are cut small (``workload.limit``) so a case takes well under a second.

Outcomes:
  clean       a SimkitError (the CLI's exit 2) or an argparse usage error; "unnamed" ones give
              neither a file nor a key nor a line
  ok          a result; its invariants are checked (see :func:`check_invariants`)
  accepted    ok, although a mutation was clearly invalid (NaN, inf, negative, a bool or a
              string for a number, an integer beyond int64)
  traceback   any other exception (the cause is its type and innermost simkit frame)
  slow        over the per-case time budget, but it finished within a grace period, or its
              simulated clock still advanced during it (more work than the budget, not a hang)
  hang        over budget and grace with the simulated clock standing still, or no answer at
              all (the worker is killed)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import multiprocessing as mp
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

SCENARIOS = sorted((ROOT / "workloads" / "scenarios").glob("*.yaml"))
MODELS = sorted((ROOT / "workloads" / "models").glob("*.yaml"))
TRACES = {
    "azure": ROOT / "workloads/traces/azure_code_2023_sample.csv",
    "azure_conv": ROOT / "workloads/traces/azure_conv_2023_sample.csv",
    "burstgpt": ROOT / "workloads/traces/burstgpt_sample.csv",
    "mooncake": ROOT / "workloads/traces/mooncake_sample.jsonl",
}
TRACE_LINES = 30
"""Data lines of each shipped trace a trace case starts from."""
HEAVY = {"llama405b-two-nodes", "llama70b-tp4pp2", "mixtral-ep", "cxl-long-context", "disaggregated"}
"""Scenarios that take a second or more even when cut small: mutated less often."""

DELETE = object()
INVALID = object()  # marker in the value table: this value is clearly invalid for a numeric key
BAD_VALUES: list[Any] = [0, -1, 1e30, -1e30, float("nan"), float("inf"), -float("inf"), 2**63, -(2**63) - 1, 10**30,
                         True, False, "", "x" * 300, "bogus", "1e30 GB/s", [], {}, [1, 2], None, 1e-300, 0.5, 10**7]
"""What a mutation may write into any key."""

# dotted keys worth setting to valid alternatives (engine paths), with the values to draw from
ALTERNATIVES: dict[str, list[Any]] = {
    "plan.batching.policy": ["static", "continuous", "chunked_prefill", "disaggregated", "bogus"],
    "plan.batching.max_num_seqs": [1, 2, 4, 64, 4096],
    "plan.batching.max_num_batched_tokens": [16, 256, 2048, 8192, 10**6],
    "plan.batching.chunk_size": [16, 512, 10**6],
    "plan.batching.batch_size": [1, 2, 8],
    "plan.batching.prefill_replicas": [1, 2],
    "plan.batching.kv_transfer_link": ["nvlink", "pcie", "network", "bogus"],
    "plan.precision.weights": ["fp32", "fp16", "bf16", "fp8", "int8", "int4", "fp4"],
    "plan.precision.activations": ["fp32", "fp16", "bf16", "fp8", "int8"],
    "plan.precision.kv_cache": ["fp16", "fp8", "int8", "int4"],
    "plan.kv_cache.block_size": [1, 8, 16, 256, 4096],
    "plan.kv_cache.num_blocks": [1, 4, 64, 100000],
    "plan.kv_cache.gpu_memory_utilization": [0.05, 0.5, 0.95, 1.0],
    "plan.kv_cache.watermark": [0.0, 0.5, 0.99],
    "plan.kv_cache.preemption": ["recompute", "swap"],
    "plan.kv_cache.swap_space": ["0 GiB", "1 MiB", "64 GiB"],
    "plan.prefix_cache.enabled": [True, False],
    "plan.prefix_cache.tiers": [["hbm"], ["hbm", "dram"], ["ssd"], ["hbm", "dram", "cxl", "ssd"]],
    "plan.offload.compress_weights": [True, False],
    "plan.offload.compress_kv": [True, False],
    "plan.offload.cpu_attention": [True, False],
    "plan.offload.overlap": [True, False],
    "plan.offload.pinned": [True, False],
    "plan.offload.resident_layers": [0, 1, 8, 200],
    "plan.offload.gpu_batch_size": [1, 4, 64],
    "plan.offload.num_gpu_batches": [1, 2, 8],
    "plan.offload.weights": [{"gpu": 0.5, "cpu": 0.5}, {"gpu": 0.2, "cpu": 0.3, "disk": 0.5}, {"gpu": 0.0, "cxl": 1.0}],
    "plan.offload.kv_cache": [{"gpu": 0.5, "cpu": 0.5}, {"gpu": 0.0, "cpu": 1.0}],
    "plan.offload.activations": [{"gpu": 0.5, "cpu": 0.5}],
    "plan.offload.kv_spill": [{"after_tokens": 64, "tier": "cpu"}, {"after_tokens": 1, "tier": "cxl"}, {"after_tokens": 512, "tier": "disk"}],
    "plan.offload.io_block_size": ["4 KiB", "4 MiB", "1 GiB"],
    "plan.parallel.tp": [1, 2, 3, 4, 8, 16],
    "plan.parallel.pp": [1, 2, 3, 4],
    "plan.parallel.replicas": [1, 2, 3, 8],
    "plan.parallel.ep": [1, 2, 8],
    "plan.parallel.cross_node_tp": [True, False],
    "plan.parallel.collective_algorithm": ["ring", "tree"],
    "plan.parallel.expert_routing": [{"distribution": "zipf", "skew": 2.0}, {"distribution": "uniform"}],
    "plan.routing": ["round_robin", "least_outstanding", "prefix_aware", "bogus"],
    "plan.execution.mode": ["auto", "one_step", "layer_by_layer"],
    "plan.execution.device": ["gpu", "cpu"],
    "plan.execution.iteration_overhead": ["0 s", "2 ms", "1 s"],
    "hardware": ["dgx-h100", "dgx-a100", "gcp-t4-vm", "ci-vm", "cpu-server", "h100-pcie-cxl-server", "rtx4090-workstation", "bogus"],
    "hardware.bandwidth_scale": [{"hbm": 2.0}, {"hbm": 0.001}, {"host_to_gpu": 1000}, {"gpu_to_gpu": 0.01}, {"dram": 0.5}],
    "hardware.num_gpus": [1, 2, 8],
    "hardware.num_nodes": [1, 2, 4],
    "model": ["llama-2-7b", "opt-6.7b", "mixtral-8x7b", "phi-2", "llama-3.1-70b", "deepseek-moe-16b", "bogus"],
    "calibration": ["none", "auto", "bogus/profile.yaml"],
    "slo": [{"ttft_s": 0.01, "tpot_s": 0.001}, {"ttft_p99_s": 10.0}],
    "seed": [0, 1, 12345],
    "workload.batch": [{"num_prompts": 3, "input_tokens": 10**7, "output_tokens": 2},
                       {"num_prompts": 2, "input_tokens": 1, "output_tokens": 1},
                       {"num_prompts": 4, "input_tokens": 4000, "output_tokens": 300}],
    "workload.synthetic": [
        {"num_requests": 6, "arrival": {"process": "gamma", "rate": 100, "cv": 4},
         "lengths": {"input": {"dist": "zipf", "a": 1.5, "max": 10**7}, "output": {"dist": "uniform", "low": 1, "high": 64}}},
        {"num_requests": 5, "arrival": {"process": "all_at_once"},
         "lengths": {"input": {"dist": "fixed", "value": 10**7}, "output": {"dist": "fixed", "value": 3}}},
        {"num_requests": 5, "arrival": {"process": "fixed_rate", "rate": 1e-6},
         "lengths": {"input": {"dist": "lognormal", "mean": 300, "sigma": 3}, "output": {"dist": "fixed", "value": 1}}},
    ],
}


# ---------------------------------------------------------------------------------------------
# building cases
def _paths(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key path inside ``node`` (mappings and lists)."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        p = f"{prefix}.{k}" if prefix else str(k)
        out.append(p)
        out.extend(_paths(v, p))
    return out


def _get(data: Any, path: str) -> Any:
    node = data
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _set(data: dict, path: str, value: Any) -> None:
    # a path through a list with a non-numeric index, or through a scalar, leaves the case as it is
    with contextlib.suppress(ValueError, TypeError, IndexError, KeyError):
        _set_path(data, path, value)


def _set_path(data: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        key: Any = int(part) if isinstance(node, list) else part
        nxt = node[key] if (isinstance(node, list) and key < len(node)) or (isinstance(node, dict) and key in node) else None
        if not isinstance(nxt, dict | list):
            if part == "hardware" and isinstance(nxt, str):
                nxt = {"preset": nxt}
            elif nxt is not None and i > 0:
                return  # a scalar in the way: leave the case as it is
            else:
                nxt = {}
            node[key] = nxt
        node = nxt
    last: Any = int(parts[-1]) if isinstance(node, list) else parts[-1]
    if value is DELETE:
        if isinstance(node, dict):
            node.pop(last, None)
        elif isinstance(node, list) and last < len(node):
            node.pop(last)
    elif isinstance(node, list):
        if last < len(node):
            node[last] = value
    else:
        node[last] = value


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _clearly_invalid(old: Any, new: Any) -> bool:
    """A value no numeric key should accept in place of the number ``old``."""
    if not _is_number(old) or new is DELETE:
        return False
    if isinstance(new, bool | str | list | dict):
        return True
    if isinstance(new, float) and not math.isfinite(new):
        return True
    if isinstance(new, int) and abs(new) >= 2**63:
        return True
    return _is_number(new) and new < 0


def _absolute_trace_paths(data: dict, base: Path) -> None:
    wl = data.get("workload")
    if not isinstance(wl, dict):
        return
    for holder in (wl.get("trace"), ((wl.get("synthetic") or {}).get("lengths") or {}).get("trace")
                   if isinstance(wl.get("synthetic"), dict) else None):
        if isinstance(holder, dict) and isinstance(holder.get("path"), str):
            holder["path"] = str((base / holder["path"]).resolve())


def _small(rng: random.Random, data: dict) -> None:
    """Cut the workload small and keep runs quick (most cases skip calibration's fitted model)."""
    if isinstance(data.get("workload"), dict):
        data["workload"]["limit"] = rng.choice([1, 2, 4, 8])
    if rng.random() < 0.8:
        data["calibration"] = "none"


def _mutate_data(rng: random.Random, data: dict, notes: list[str]) -> bool:
    """Apply 1-3 mutations; returns whether the result holds a clearly invalid value for a
    numeric key (a later mutation of the same key, or of a mapping above it, undoes an earlier)."""
    state: dict[str, bool] = {}

    def mark(path: str, bad: bool) -> None:
        for k in [k for k in state if k == path or k.startswith(path + ".")]:
            del state[k]
        state[path] = bad

    for _ in range(rng.choice([1, 1, 2, 3])):
        r = rng.random()
        paths = [p for p in _paths(data) if not p.startswith("workload.limit")]
        if r < 0.45 and paths:
            path = rng.choice(paths)
            try:
                old = _get(data, path)
            except (KeyError, IndexError, TypeError):
                continue
            new = DELETE if rng.random() < 0.12 else rng.choice(BAD_VALUES)
            if isinstance(old, str) and rng.random() < 0.3:
                new = old + "-bogus"
            _set(data, path, new)
            mark(path, _clearly_invalid(old, new))
            notes.append(f"{path}={'<deleted>' if new is DELETE else repr(new)[:40]}")
        elif r < 0.9:
            key = rng.choice(sorted(ALTERNATIVES))
            value = copy.deepcopy(rng.choice(ALTERNATIVES[key]))
            _set(data, key, value)
            mark(key, False)
            notes.append(f"{key}={json.dumps(value)[:60]}")
        elif r < 0.95 and paths:
            path = rng.choice(paths)
            parent, _, leaf = path.rpartition(".")
            typo = leaf + "s" if rng.random() < 0.5 else leaf[:-1] or "x"
            try:
                _set(data, f"{parent}.{typo}" if parent else typo, 1)
            except (TypeError, IndexError):
                continue
            notes.append(f"unknown key {typo!r} beside {leaf!r}")
        else:
            key = rng.choice(["plan.parallel.tp", "workload.batch.input_tokens", "plan.batching.max_num_batched_tokens",
                              "plan.kv_cache.block_size", "plan.offload.num_gpu_batches", "seed"])
            value = rng.choice([2**62, 10**12, 10**7, -5])
            _set(data, key, value)
            mark(key, value < 0 and key != "seed")
            notes.append(f"{key}={value}")
    return any(state.values())


def _scenario_case(rng: random.Random) -> dict:
    pool = [p for p in SCENARIOS if p.stem not in HEAVY or rng.random() < 0.3]
    src = rng.choice(pool)
    data = yaml.safe_load(src.read_text())
    _absolute_trace_paths(data, src.parent)
    notes: list[str] = [src.stem]
    _small(rng, data)
    invalid = _mutate_data(rng, data, notes)
    if rng.random() < 0.05:
        notes.append("limit removed")
        data.get("workload", {}).pop("limit", None) if isinstance(data.get("workload"), dict) else None
        if isinstance(data.get("workload"), dict) and "trace" in data["workload"]:
            data["workload"]["limit"] = 8  # the shipped traces are too long to replay in full here
    return {"kind": "scenario", "data": data, "invalid": invalid, "notes": notes}


def _trace_lines(fmt: str) -> list[bytes]:
    if fmt == "native":
        rows = [b"arrival_s,input_tokens,output_tokens,prefix_id,prefix_tokens"]
        rows += [f"{0.25 * i},{100 + 7 * i},{5 + i % 9},{i % 3 - 1},{(40 * i) % 90}".encode() for i in range(TRACE_LINES)]
        return [r + b"\n" for r in rows]
    with open(TRACES[fmt], "rb") as f:
        return [next(f) for _ in range(TRACE_LINES + (0 if fmt == "mooncake" else 1))]


FIELD_GARBAGE = ["", "abc", "-1", "0", "1e30", "nan", "inf", "4.5", "99999999999999999999", "10000000", "9999-01-01 00:00:00",
                 "1677-01-01", '"quoted, comma"', "null", "[]", "{}", "true"]


def _mutate_trace(rng: random.Random, lines: list[bytes], notes: list[str]) -> bytes:
    lines = list(lines)
    for _ in range(rng.choice([1, 1, 2, 3])):
        if not lines:
            break
        i = rng.randrange(1, len(lines)) if len(lines) > 1 else 0
        r = rng.random()
        line = lines[i]
        if r < 0.12:
            j = rng.randrange(1, len(lines)) if len(lines) > 1 else 0
            lines[i], lines[j] = lines[j], lines[i]
            notes.append(f"swap lines {i + 1},{j + 1}")
        elif r < 0.18:
            lines = lines[:1] + lines[1:][::-1]
            notes.append("data lines reversed")
        elif r < 0.45:
            body = line.rstrip(b"\r\n")
            end = line[len(body):]
            if body.startswith(b"{"):
                try:
                    obj = json.loads(body)
                    key = rng.choice([*obj.keys(), "extra"])
                    obj[key] = rng.choice([*FIELD_GARBAGE, None, -1, 1e30, 10**7, 2**70, [1, "a"], {"x": 1}, True])
                    if rng.random() < 0.2:
                        obj.pop(key, None)
                    body = json.dumps(obj).encode()
                    notes.append(f"line {i + 1}: {key}")
                except ValueError:
                    pass
            else:
                cells = body.split(b",")
                k = rng.randrange(len(cells))
                cells[k] = rng.choice(FIELD_GARBAGE).encode()
                body = b",".join(cells)
                notes.append(f"line {i + 1} field {k}")
            lines[i] = body + end
        elif r < 0.55:
            body = line.rstrip(b"\r\n")
            lines[i] = (body + b",7" if rng.random() < 0.5 else body.rsplit(b",", 1)[0]) + b"\n"
            notes.append(f"line {i + 1} field count")
        elif r < 0.63:
            pos = rng.randrange(len(line) or 1)
            lines[i] = line[:pos] + rng.choice([b"\xff", b"\xe9", b"\xc3", b"\x00"]) + line[pos:]
            notes.append(f"line {i + 1} non-UTF-8 byte")
        elif r < 0.71:
            lines[i] = line.rstrip(b"\r\n") + rng.choice([b"\r", b"\r\n", b"\n\n", b"\r\r\n"])
            notes.append(f"line {i + 1} line end")
        elif r < 0.76:
            lines = lines[: rng.randrange(1, len(lines) + 1)]
            if lines and rng.random() < 0.5:
                lines[-1] = lines[-1][: len(lines[-1]) // 2]
            notes.append("truncated")
        elif r < 0.8:
            lines.insert(i, lines[0])
            notes.append("header repeated")
        elif r < 0.84:
            lines[0] = b"\xef\xbb\xbf" + lines[0]
            notes.append("BOM")
        elif r < 0.88:
            lines = [] if rng.random() < 0.5 else lines[:1]
            notes.append("empty" if not lines else "header only")
        elif r < 0.94:
            body = line.rstrip(b"\r\n")
            if body.startswith(b"{"):
                try:
                    obj = json.loads(body)
                    obj["input_length"] = 10**7
                    body = json.dumps(obj).encode()
                except ValueError:
                    pass
            else:
                cells = body.split(b",")
                if len(cells) > 2:
                    cells[-2 if len(cells) == 3 else 2] = b"10000000"
                    body = b",".join(cells)
            lines[i] = body + b"\n"
            notes.append(f"line {i + 1} 10^7-token prompt")
        else:
            lines = [lines[0]] + [lines[i]] * 3 + lines[1:]
            notes.append("duplicate timestamps")
    return b"".join(lines)


def _trace_case(rng: random.Random) -> dict:
    fmt = rng.choice(["azure", "azure_conv", "burstgpt", "mooncake", "native"])
    notes = [f"trace {fmt}"]
    raw = _mutate_trace(rng, _trace_lines(fmt), notes)
    ext = ".jsonl" if fmt == "mooncake" else ".csv"
    base = yaml.safe_load((ROOT / "workloads/scenarios/burstgpt-sample.yaml").read_text())
    reader = "azure" if fmt == "azure_conv" else fmt
    tr: dict[str, Any] = {"path": "@TRACE@", "format": rng.choice(["auto", reader, reader, "azure", "native"])}
    if rng.random() < 0.5:
        tr["on_bad_line"] = "skip"
    if rng.random() < 0.15:
        tr["window"] = rng.choice([[0, 5], [1.5, 2.0], [0, 1e30], [100, 1000], [3, 1]])
    if rng.random() < 0.15:
        tr["rate_scale"] = rng.choice([0.001, 2.0, 1000, 1e-300])
    if rng.random() < 0.1:
        tr["sample"] = rng.choice([1, 3, 10**6])
    if fmt == "burstgpt" and rng.random() < 0.3:
        tr["keep_failed"] = True
    if rng.random() < 0.2:  # lengths resampled from the trace instead
        base["workload"] = {"synthetic": {"num_requests": 5, "arrival": {"process": "poisson", "rate": 5},
                                          "lengths": {"trace": {"path": "@TRACE@", "format": tr["format"]}}}}
    else:
        base["workload"] = {"trace": tr}
    if fmt == "mooncake" and rng.random() < 0.5:
        base.setdefault("plan", {})["prefix_cache"] = {"enabled": True}
    base["workload"]["limit"] = rng.choice([2, 4, 8])
    base["calibration"] = "none"
    notes.append(json.dumps(tr)[:100])
    return {"kind": "trace", "data": base, "files": {"trace" + ext: raw}, "invalid": False, "notes": notes}


def _model_case(rng: random.Random) -> dict:
    src = rng.choice(MODELS)
    mdata = yaml.safe_load(src.read_text())
    notes = [f"model {src.stem}"]
    state: dict[str, bool] = {}  # the last mutation of a key decides
    original = copy.deepcopy(mdata)
    for _ in range(rng.choice([1, 1, 2])):
        keys = [k for k in mdata if k not in ("kind",)]
        if not keys:
            break
        key = rng.choice(keys)
        old = original.get(key)
        new = DELETE if rng.random() < 0.2 else rng.choice(BAD_VALUES)
        if new is DELETE:
            mdata.pop(key)
        else:
            mdata[key] = new
        state[key] = _clearly_invalid(old, new)
        notes.append(f"{key}={'<deleted>' if new is DELETE else repr(new)[:40]}")
    data = yaml.safe_load((ROOT / "workloads/scenarios/quickstart.yaml").read_text())
    data["model"] = "@MODEL@"
    data["hardware"] = rng.choice(["dgx-h100", "dgx-a100", "gcp-t4-vm", "cpu-server"])
    data["calibration"] = "none"
    data["workload"]["limit"] = rng.choice([1, 2, 4])
    return {"kind": "model", "data": data, "files": {"model.yaml": yaml.safe_dump(mdata).encode()}, "invalid": any(state.values()),
            "notes": notes}


HF_CONFIGS: list[dict[str, Any]] = [
    {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
     "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32, "vocab_size": 32000,
     "max_position_embeddings": 4096, "tie_word_embeddings": False, "hidden_act": "silu", "rms_norm_eps": 1e-5,
     "_name_or_path": "meta-llama/Llama-2-7b-hf"},
    {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
     "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 32000,
     "max_position_embeddings": 32768, "num_local_experts": 8, "num_experts_per_tok": 2, "hidden_act": "silu",
     "sliding_window": None, "_name_or_path": "mistralai/Mixtral-8x7B-v0.1"},
]
"""Hugging Face config.json files a model case may mutate instead of a catalog YAML."""


def _hf_case(rng: random.Random) -> dict:
    cfg = copy.deepcopy(rng.choice(HF_CONFIGS))
    notes = [f"hf {cfg['model_type']}"]
    state: dict[str, bool] = {}  # the last mutation of a key decides
    original = copy.deepcopy(cfg)
    for _ in range(rng.choice([1, 2])):
        key = rng.choice(sorted(cfg))
        old = original.get(key)
        new = DELETE if rng.random() < 0.2 else rng.choice([v for v in BAD_VALUES if not isinstance(v, float) or math.isfinite(v)])
        if new is DELETE:
            cfg.pop(key)
        else:
            cfg[key] = new
        state[key] = _clearly_invalid(old, new) and key in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                          "num_hidden_layers", "num_key_value_heads", "vocab_size",
                                                          "max_position_embeddings", "num_local_experts", "num_experts_per_tok")
        notes.append(f"{key}={'<deleted>' if new is DELETE else repr(new)[:40]}")
    raw = json.dumps(cfg).encode()
    if rng.random() < 0.1:
        raw = raw[: rng.randrange(len(raw))] if rng.random() < 0.5 else raw.replace(b"{", b"{\xff", 1)
        notes.append("corrupt JSON")
    data = yaml.safe_load((ROOT / "workloads/scenarios/quickstart.yaml").read_text())
    data["model"] = "@CONFIG@"
    data["calibration"] = "none"
    data["workload"]["limit"] = rng.choice([1, 2, 4])
    return {"kind": "model", "data": data, "files": {"config.json": raw}, "invalid": any(state.values()), "notes": notes}


def _yaml_text_case(rng: random.Random) -> dict:
    src = rng.choice([p for p in SCENARIOS if p.stem not in HEAVY])
    data = yaml.safe_load(src.read_text())
    _absolute_trace_paths(data, src.parent)
    data["workload"]["limit"] = 2
    data["calibration"] = "none"
    text = yaml.safe_dump(data).encode()
    r = rng.random()
    if r < 0.3:
        pos = rng.randrange(len(text))
        text = text[:pos] + rng.choice([b"\xff", b"\xe9", b"\x80"]) + text[pos:]
        note = "non-UTF-8 byte"
    elif r < 0.55:
        text = text[: rng.randrange(len(text))]
        note = "truncated"
    elif r < 0.8:
        depth = rng.choice([3, 6, 9])
        bomb = "".join(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}" if i else "1"] * 9) + "]\n" for i in range(depth))
        where = rng.choice(["hardware", "description", "extra"])
        if where == "hardware":
            text += f"hardware:\n  preset: dgx-h100\n{bomb}".encode()
        else:
            text += f"{where}:\n{bomb}".encode()
        note = f"alias bomb depth {depth} in {where}"
    else:
        text = rng.choice([b"", b"[]", b"just text", b"a: [unclosed", b"\t- tab", b"x: &a [*a]\n", b"hardware: !!python/object:os.system x"])
        note = "odd document"
    overrides = ["seed=1"] if rng.random() < 0.5 else []
    return {"kind": "yaml", "files": {"scenario.yaml": text}, "overrides": overrides, "invalid": False, "notes": [src.stem, note]}


def _cli_case(rng: random.Random) -> dict:
    which = rng.random()
    if which < 0.6:
        argv = ["estimate", "ops", "--gpu", rng.choice(["h100-sxm", "a40", "t4", "bogus"]),
                "--model", rng.choice(["llama-2-7b", "mixtral-8x7b", "phi-2", "bogus"]),
                "--tp", rng.choice(["0", "-1", "1", "2", "3", "8", "x", "99999999999999999999"]),
                "--tokens", rng.choice(["1,16,512", "0", "-4", "1,10000000", "a,b", "", "1" * 25]),
                "--dtype", rng.choice(["bf16", "fp8", "int4", "fp32"]),
                "--calibration", rng.choice(["auto", "none", "bogus"])]
    elif which < 0.8:
        argv = ["catalog", rng.choice(["list", "show"]), *rng.choice([[], ["h100-sxm"], ["bogus"], ["x" * 300]]),
                *rng.choice([[], ["--kind", "gpu"], ["--kind", "bogus"]])]
    else:
        argv = ["run", rng.choice(["quickstart", "nope", "x" * 300, str(ROOT)]), "--out", "@OUT@", "--set",
                rng.choice(["workload.limit=1", "=3", "noequals", "plan..tp=2", "workload.limit=[&a [1], *a]"]),
                "--set", "calibration=none"]
    return {"kind": "cli", "argv": argv, "invalid": False, "notes": argv[:3]}




# ---------------------------------------------------------------------------------------------
# the product's faces: study files, search files, offload-plan command lines, report folders.
# A face case is a list of steps run in one work folder: command lines (the CLI in this
# process), copies of a small finished run, study or search folder, and corruptions of files.
STUDIES = sorted((ROOT / "workloads" / "studies").glob("*.yaml"))
SEARCHES = [ROOT / "workloads" / "searches" / f"{n}.yaml" for n in ("capacity-per-dollar", "cheapest-llama7b", "mixed-fleet")]
"""Shipped searches a search case starts from (fleet-10k screens 12,480 candidates: too slow per case)."""
QUICKSTART = ROOT / "workloads" / "scenarios" / "quickstart.yaml"

STUDY_KEYS_OK: dict[str, list[Any]] = {
    "plan.batching.max_num_seqs": [8, 16, 64],
    "plan.parallel.tp": [1, 2],
    "plan.kv_cache.preemption": ["recompute", "swap"],
    "hardware.dram.capacity": ["64 GiB", "1 TiB"],
    "hardware.bandwidth_scale.host_to_gpu": [0.5, 2.0],
    "workload.synthetic.arrival.rate": [1, 4.5],
    "plan.execution.iteration_overhead": ["1 ms", "0 s"],
    "seed": [0, 3],
}
"""Dotted keys (and valid values) an axis may sweep."""
STUDY_KEYS_BAD = ["plan.batching.max_num_seq", "bogus.key", "plan..tp", "", ".", "hardware.bogus", "variant", "run_id",
                  "status", "plan", "workload.limit.x", "plan.parallel.tp.x", "x" * 300, "hardware.gpu.bogus"]
"""Keys an axis, a variant or set: must refuse (unknown, malformed, reserved, a scalar's child)."""
RANGE_TEXTS = ["5..1", "1..", "..5", "1..2..3", "a..b", "1 ms..5 GB", "0..10", "2..40", "1e30..1e31", "nan..5",
               "-inf..inf", "1 GiB..0.5 TiB", "1..1", "1 ms..10 ms", "0.5..0.75", "-5..5", "1 bogus..2 bogus", ""]
RANGE_COUNTS: list[Any] = [2, 3, 0, 1, -1, 1e30, True, "3", 2.5, 10**9, 10**12, float("nan"), None]
RANGE_STEPS: list[Any] = [1, 0.5, 0, -1, float("nan"), float("inf"), "1 ms", 1e-30, "x", True, 10**9]


def _axis_value(rng: random.Random) -> tuple[Any, str]:
    """Values for one axis key: a list, or a range mapping (valid or not)."""
    r = rng.random()
    if r < 0.3:
        vals = [copy.deepcopy(rng.choice(BAD_VALUES)) for _ in range(rng.choice([1, 2]))]
        return vals, f"values {repr(vals)[:40]}"
    if r < 0.4:
        return [], "empty list"
    rs: dict[str, Any] = {"range": rng.choice(RANGE_TEXTS)}
    if rng.random() < 0.6:
        rs["count"] = rng.choice(RANGE_COUNTS)
    if rng.random() < 0.4:
        rs["step"] = rng.choice(RANGE_STEPS)
    if rng.random() < 0.3:
        rs["scale"] = rng.choice(["log", "linear", "bogus", 1])
    if rng.random() < 0.15:
        rs["integer"] = rng.choice([True, False, "yes"])
    if rng.random() < 0.05:
        rs["bogus"] = 1
    return rs, f"range {json.dumps(rs, default=repr)[:60]}"


def _study_source(rng: random.Random) -> dict:
    if rng.random() < 0.4:
        data = {"name": "tiny", "base": str(QUICKSTART), "set": {"workload.limit": 2, "calibration": "none"},
                "axes": {"grid": {"plan.batching.max_num_seqs": [8, 16]}}}
        if rng.random() < 0.3:
            data["variants"] = {"a": {}, "b": {"plan.parallel.tp": 2}}
            data["baseline"] = "a"
        return data
    src = rng.choice(STUDIES)
    data = yaml.safe_load(src.read_text())
    if isinstance(data.get("base"), str):
        data["base"] = str((src.parent / data["base"]).resolve())
    elif isinstance(data.get("base"), dict):
        _absolute_trace_paths(data["base"], src.parent)
    data.setdefault("set", {})["workload.limit"] = 2
    return data


class _Marks:
    """Which mutated keys hold a clearly invalid value: the last mutation of a key, or of a
    mapping above it, decides."""

    def __init__(self) -> None:
        self.state: dict[str, bool] = {}

    def mark(self, path: str, bad: bool) -> None:
        for k in [k for k in self.state if k == path or k.startswith(path + ".")]:
            del self.state[k]
        self.state[path] = bool(bad)

    def any(self) -> bool:
        return any(self.state.values())


def _study_group(rng: random.Random, data: dict) -> str:
    """An axis group to add to (``data['axes']`` made a mapping if a mutation replaced it)."""
    if not isinstance(data.get("axes"), dict):
        data["axes"] = {}
    return rng.choice(["grid", "grid", "zip", "list", "random"])


def _mutate_study(rng: random.Random, data: dict, notes: list[str]) -> bool:
    """1-3 mutations of a study file; returns whether a clearly invalid value remains where
    validation must refuse it (a dry run that then succeeds is 'accepted')."""
    marks = _Marks()
    for _ in range(rng.choice([1, 1, 2, 3])):
        r = rng.random()
        paths = [p for p in _paths(data) if not p.startswith("base.")]
        if r < 0.3 and paths:  # any key: a bad value, deleted, or a typo
            path = rng.choice(paths)
            try:
                old = _get(data, path)
            except (KeyError, IndexError, TypeError):
                continue
            new = DELETE if rng.random() < 0.15 else copy.deepcopy(rng.choice(BAD_VALUES))
            if isinstance(old, str) and rng.random() < 0.3:
                new = old + "-bogus"
            _set(data, path, new)
            # an axis value or a study count: a number there made invalid must be refused
            marks.mark(path, _clearly_invalid(old, new) and (path in ("repeat", "axes.random.samples", "axes.random.seed")
                                                             or path.endswith((".count", ".step"))
                                                             or _scenario_number(path)))
            notes.append(f"{path}={'<deleted>' if new is DELETE else repr(new)[:40]}")
        elif r < 0.55:  # a new axis, valid or not
            group = _study_group(rng, data)
            key = rng.choice(sorted(STUDY_KEYS_OK)) if rng.random() < 0.6 else rng.choice(STUDY_KEYS_BAD)
            if rng.random() < 0.4 and key in STUDY_KEYS_OK:
                vals: Any = list(STUDY_KEYS_OK[key])
                note = "valid values"
            else:
                vals, note = _axis_value(rng)
            axes = data["axes"]
            marks.mark(f"axes.{group}", False)
            if group == "list":
                axes["list"] = [{key: v} for v in vals] if isinstance(vals, list) else [{key: vals}]
                if not isinstance(vals, list) or not vals:
                    axes["list"] = rng.choice([[], [{}], [{key: vals}], "x"])
            elif group == "random":
                axes["random"] = {"samples": rng.choice([1, 3, 0, -1, 10**9, 2.5, "3"]),
                                  "seed": rng.choice([0, 5, -1, 2**62, 1.5, "x"]), "keys": {key: vals}}
                note += f", random {axes['random']['samples']!r}/{axes['random']['seed']!r}"
            else:
                g = axes.get(group)
                if not isinstance(g, dict):
                    axes[group] = g = {}
                g[key] = vals
            notes.append(f"axes.{group}.{key}: {note}")
        elif r < 0.65:  # one key in two places
            key = rng.choice(sorted(STUDY_KEYS_OK))
            vals = list(STUDY_KEYS_OK[key])
            where = rng.sample(["grid", "zip", "variant", "set", "parent"], 2)
            for w in where:
                if w == "variant":
                    data["variants"] = {"v1": {key: vals[0]}, "v2": {key: vals[-1]}}
                elif w == "set":
                    s = data.get("set") if isinstance(data.get("set"), dict) else {}
                    data["set"] = {**s, key: vals[0]}
                elif w == "parent":
                    g = data.setdefault("axes", {}).setdefault("grid", {}) if isinstance(data.get("axes"), dict) else {}
                    if isinstance(g, dict):
                        g[key.rsplit(".", 1)[0] if "." in key else key] = [{"x": 1}]
                else:
                    axes = data.setdefault("axes", {}) if isinstance(data.get("axes"), dict) else {}
                    if isinstance(axes, dict):
                        grp = axes.get(w) if isinstance(axes.get(w), dict) else {}
                        grp[key] = vals
                        axes[w] = grp
            notes.append(f"{key} in {' and '.join(where)}")
            for w in where:
                marks.mark({"variant": "variants", "set": "set", "parent": "axes"}.get(w, f"axes.{w}"), False)
        elif r < 0.75:  # huge: refused or bounded quickly, never run
            which = rng.choice(["grid", "count", "samples", "repeat", "variants"])
            axes = data.setdefault("axes", {}) if isinstance(data.get("axes"), dict) else {}
            if which == "grid":
                axes["grid"] = {k: {"range": "1..1000", "count": 1000} for k in
                                ("plan.batching.max_num_seqs", "workload.synthetic.arrival.rate", "hardware.bandwidth_scale.hbm")}
            elif which == "count":
                axes["grid"] = {"workload.synthetic.arrival.rate": {"range": "1..100", "count": rng.choice([10**7, 10**9, 10**15])}}
            elif which == "samples":
                axes["random"] = {"samples": rng.choice([10**7, 10**9, 10**15]), "keys": {"seed": [1, 2]}}
            elif which == "repeat":
                data["repeat"] = rng.choice([10**7, 10**12])
            else:
                data["variants"] = {f"v{i}": {"plan.batching.max_num_seqs": i + 1} for i in range(2000)}
                axes["grid"] = {"workload.synthetic.arrival.rate": {"range": "1..1000", "count": 1000}}
            notes.append(f"huge {which}")
            marks.mark("axes", False)
            marks.mark("repeat", False)
            marks.mark("variants", False)
        elif r < 0.85:  # variants, baseline, repeat, keep
            which = rng.choice(["variant", "baseline", "repeat", "keep", "name"])
            if which == "variant":
                key = rng.choice([*STUDY_KEYS_BAD, *STUDY_KEYS_OK])
                val = copy.deepcopy(rng.choice(BAD_VALUES + [1, "x"]))
                name = rng.choice(["v", "", "x" * 300, "a/b", "..", 5])
                data["variants"] = {name: {key: val}, **({} if rng.random() < 0.5 else {"w": {}})}
                notes.append(f"variants.{name!r}.{key}={val!r}"[:80])
                marks.mark("variants", key in STUDY_KEYS_OK and _clearly_invalid(_scenario_value(key), val))
            elif which == "baseline":
                data["baseline"] = rng.choice(["bogus", "", 5, None, ["a"]])
                notes.append(f"baseline={data['baseline']!r}")
            elif which == "repeat":
                data["repeat"] = rng.choice([0, -1, 2, 3, 1.5, "2", True, None])
                if rng.random() < 0.5:
                    data.setdefault("set", {})["seed"] = 4 if isinstance(data.get("set"), dict) else None
                notes.append(f"repeat={data['repeat']!r}")
                marks.mark("repeat", _clearly_invalid(1, data["repeat"]) or data["repeat"] == 0)
            elif which == "keep":
                data["keep"] = rng.choice([{"tables": "yes"}, {"tables": 1}, {"bogus": True}, "all", None])
                notes.append(f"keep={data['keep']!r}")
            else:
                data["name"] = rng.choice(["", "x" * 300, "../escape", "a/b", 5, None, ["x"], "tab\there"])
                notes.append(f"name={data['name']!r}"[:60])
        elif r < 0.93:  # base
            data["base"] = rng.choice([str(ROOT / "workloads/scenarios/nope.yaml"), "nope.yaml", str(ROOT / "README.md"),
                                       str(ROOT / "workloads"), "", 5, None, [], {"model": "bogus"}, "x" * 300,
                                       {"hardware": "dgx-h100", "model": "llama-2-7b", "workload": {"trace": {"path": "missing.csv"}}},
                                       str(ROOT / "workloads/studies/pcie-what-if.yaml")])
            notes.append(f"base={repr(data['base'])[:50]}")
            marks.mark("base", False)
        else:  # set:
            key = rng.choice([*STUDY_KEYS_BAD, *STUDY_KEYS_OK, "workload.limit", "calibration"])
            val = copy.deepcopy(rng.choice([*BAD_VALUES, "bogus/profile.yaml"]))
            s = data.get("set") if isinstance(data.get("set"), dict) else {}
            data["set"] = {**s, key: val}
            notes.append(f"set.{key}={repr(val)[:30]}")
            if not isinstance(s, dict) or not s:
                marks.mark("set", False)
            marks.mark(f"set.{key}", _clearly_invalid(_scenario_value(key), val))
    return marks.any()


_SCENARIO_NUMBERS = {"plan.batching.max_num_seqs": 64, "plan.parallel.tp": 1, "hardware.bandwidth_scale.host_to_gpu": 1.0,
                     "workload.synthetic.arrival.rate": 1.0, "seed": 0, "workload.limit": 2}


def _scenario_value(key: str) -> Any:
    """A valid value of the scenario key ``key`` (None when it is not a numeric key)."""
    return _SCENARIO_NUMBERS.get(key)


def _scenario_number(path: str) -> bool:
    """``path`` holds a value of one of the numeric scenario keys (an axis value, a set: value)."""
    return any(f".{k}." in f".{path}." for k in _SCENARIO_NUMBERS) and not path.endswith((".count", ".step", ".range"))


def _study_case(rng: random.Random) -> dict:
    data = _study_source(rng)
    notes: list[str] = [str(data.get("name"))]
    resume = rng.random() < 0.25 and data.get("name") == "tiny"
    invalid = False
    if not resume:
        invalid = _mutate_study(rng, data, notes)
    text = yaml.safe_dump(data, allow_unicode=True).encode()
    if not resume and rng.random() < 0.06:  # the same key twice in one YAML mapping
        text += b"axes:\n  grid:\n    seed: [1, 2]\n"
        notes.append("axes given twice in the YAML text")
    sets = []
    if rng.random() < 0.1:
        sets = ["--set", rng.choice(["workload.limit=0", "noequals", "=3", "workload.limit=1", "bogus.key=1",
                                     "plan.parallel.tp=[1, 2]", "workload.limit=[&a [1], *a]"])]
        notes.append(" ".join(sets))
    steps: list[dict] = []
    if not resume:
        steps.append({"argv": ["study", "@DIR@/study.yaml", "--out", "@DIR@/out", "--dry-run", *sets]})
        return {"kind": "study", "files": {"study.yaml": text}, "steps": steps, "invalid": invalid, "notes": notes}
    # a tiny real study, a corruption of its folder, then the same study again (it resumes)
    run = ["study", "@DIR@/study.yaml", "--out", "@DIR@/out", "--jobs", "1", "--no-progress"]
    steps.append({"argv": run, "codes": [0]})
    steps += _corruptions(rng, "study", "out", notes)
    steps.append({"argv": run})
    if rng.random() < 0.5:
        steps.append({"argv": ["study", "show", "@DIR@/out", *rng.choice([[], ["--format", "json"], ["--metrics", "bogus,ttft_p90_s"],
                                                                     ["--format", "csv", "--metrics", ","]])]})
    if rng.random() < 0.3:
        steps.append({"argv": ["report", "@DIR@/out", "-o", "@DIR@/report.html"]})
    return {"kind": "study", "files": {"study.yaml": text}, "steps": steps, "invalid": False, "notes": notes}


# ---- search files --------------------------------------------------------------------------
SEARCH_SPACE_KEYS: dict[str, list[Any]] = {
    "gpu": [["h100-sxm", "l4"], ["bogus"], "all", [], "h100-sxm", [5], [None]],
    "layout": [{"max_gpus": 2}, {"max_gpus": 0}, {"max_gpus": 2**62}, {"max_gpus": 10**9, "tp": [1]}, {"tp": []}, "all",
               {"max_gpus": 2, "bogus": 1}, [1, 2], {"max_gpus": 2.5}, {"max_gpus": 4, "replicas": [0, -1]}],
    "precision": [["fp16", "fp8"], ["bogus"], "all", [], [["fp16"]]],
    "offload": [["none"], ["bogus"], "all", ["optimized"]],
    "fleet": [{"gpus": ["h100-sxm", "l4"], "max_gpus": 2}, {"gpus": "all", "max_gpus": 10**6}, {"gpus": ["l4"], "max_gpus": 2**62},
              {"gpus": ["l4", "l4"]}, {"gpus": []}, {"gpus": ["l4"], "tp": 0}, {"max_gpus": 2}, "all",
              {"gpus": ["l4"], "max_gpus": 3, "tp": 2.5}],
    "plan.batching.max_num_seqs": [[8, 16], {"from": 8, "to": 64, "times": 2}, {"from": 1, "to": 10**9, "step": 1},
                                   {"from": 1, "to": 1e300, "times": 1.0000001}, {"from": 64, "to": 8, "step": 1},
                                   {"from": float("nan"), "to": 8}, {"from": 1, "to": float("inf"), "step": 1},
                                   {"from": 1, "to": 8, "step": 0}, {"from": 1, "to": 8, "times": 1}, {"from": 1, "to": 8, "step": float("nan")},
                                   {"from": 0, "to": 8, "times": 2}, {"from": 1, "to": 8, "times": float("inf")}, {"from": "1", "to": 8},
                                   {"from": 1}, {"from": 1, "to": 2, "bogus": 1}, "all", [], [-1], [float("nan")]],
    "plan.parallel.tp": [[1, 2], "all", [0], {"from": 1, "to": 4, "times": 2}],
    "plan.batching.policy": ["all", ["bogus"], ["static", "continuous"]],
    "plan.kv_cache.preemption": ["all", ["swap"]],
    "plan.prefix_cache.enabled": ["all", [True]],
    "workload.synthetic.arrival.rate": [[1, 8], {"from": 0.5, "to": 4, "times": 2}, [float("inf")], [0]],
    "plan.batching.max_num_seq": [[8]],
    "bogus": [[1]],
    "plan..tp": [[1]],
    "hardware.bogus": [[1]],
    "plan.parallel.tp.x": [[1]],
    "calibration": [["none"], ["bogus/profile.yaml"]],
}
METRIC_NAMES = ["ttft_p90_s", "tpot_p90_s", "usd_per_million_output_tokens", "output_tokens_per_s", "gpus", "cost_per_hour_usd",
                "max_rate_rps", "bogus", "", "memory.hbm.used_bytes", "per_gpu", "bottleneck", "slo_attainment", "tokens_per_s_per_user"]


def _search_source(rng: random.Random) -> dict:
    base = yaml.safe_load(QUICKSTART.read_text())
    base["workload"]["limit"] = 2
    base["calibration"] = "none"
    if rng.random() < 0.35:
        return {"name": "tiny", "base": base, "space": {"plan.parallel.tp": [1, 2]},
                "constraints": {"ttft_p90_s": {"max": 0.5}}, "objective": {"minimize": "usd_per_million_output_tokens"}, "top": 2}
    src = rng.choice(SEARCHES)
    data = yaml.safe_load(src.read_text())
    data["base"] = base  # the shipped searches all start from quickstart: cut small, without calibration
    return data


def _mutate_search(rng: random.Random, data: dict, notes: list[str]) -> bool:
    marks = _Marks()
    for _ in range(rng.choice([1, 1, 2, 3])):
        r = rng.random()
        paths = [p for p in _paths(data) if not p.startswith("base.")]
        if r < 0.3 and paths:
            path = rng.choice(paths)
            try:
                old = _get(data, path)
            except (KeyError, IndexError, TypeError):
                continue
            new = DELETE if rng.random() < 0.15 else copy.deepcopy(rng.choice(BAD_VALUES))
            if isinstance(old, str) and rng.random() < 0.3:
                new = old + "-bogus"
            _set(data, path, new)
            # numbers of the search file itself must be refused: top and capacity rates when not > 0,
            # constraint bounds when not finite numbers (a negative bound is a valid, if odd, limit;
            # a boolean is read as 0 or 1)
            if path == "top" or path.startswith("capacity."):
                marks.mark(path, _clearly_invalid(old, new))
            elif path.startswith("constraints.") and _is_number(old) and new is not DELETE:
                marks.mark(path, isinstance(new, str | list | dict) or (isinstance(new, float) and not math.isfinite(new)))
            else:
                marks.mark(path, False)
            notes.append(f"{path}={'<deleted>' if new is DELETE else repr(new)[:40]}")
        elif r < 0.6:
            key = rng.choice(sorted(SEARCH_SPACE_KEYS))
            val = copy.deepcopy(rng.choice(SEARCH_SPACE_KEYS[key]))
            if not isinstance(data.get("space"), dict):
                data["space"] = {}
            if key in ("gpu", "layout", "fleet") and rng.random() < 0.7:  # keep the space small
                data["space"] = {k: v for k, v in data["space"].items() if k not in ("gpu", "layout", "fleet", "plan.parallel.tp")}
            data["space"][key] = val
            notes.append(f"space.{key}={json.dumps(val, default=repr)[:60]}")
        elif r < 0.75:
            m = rng.choice(METRIC_NAMES)
            c = copy.deepcopy(rng.choice([{"max": 1.0}, {"min": 0.5}, {"max": float("nan")}, {"max": "1"}, {}, {"between": 1},
                                          5, None, {"max": float("inf")}, {"max": True}, [1]]))
            if rng.random() < 0.5 or not isinstance(data.get("constraints"), dict):
                data["constraints"] = {m: c}
                marks.mark("constraints", False)
            else:
                data["constraints"][m] = c
            notes.append(f"constraints.{m}={c!r}")
            marks.mark(f"constraints.{m}", isinstance(c, dict) and any(isinstance(v, float) and not math.isfinite(v) for v in c.values()))
        elif r < 0.85:
            data["objective"] = copy.deepcopy(rng.choice([
                {"minimize": rng.choice(METRIC_NAMES)}, {"maximize": rng.choice(METRIC_NAMES)}, {"minimize": ["gpus"]},
                {"minimize": {"x": 1}}, {"minimize": "gpus", "maximize": "gpus"}, "gpus", None, {"bogus": "gpus"}, {"minimize": 5}]))
            notes.append(f"objective={data['objective']!r}")
        elif r < 0.92:
            which = rng.choice(["pareto", "capacity", "top", "name"])
            if which == "pareto":
                data["pareto"] = copy.deepcopy(rng.choice([[["gpus"]], [["bogus", "gpus"]], "x", [["gpus", "gpus"]], [],
                                                           [["bottleneck", "gpus"]], [[["gpus"], "gpus"]], [[5, 6]]]))
            elif which == "capacity":
                data["capacity"] = copy.deepcopy(rng.choice([
                    {"min_rate": 0.5, "max_rate": 8}, {"min_rate": 0.5, "max_rate": float("inf")}, {"min_rate": 0, "max_rate": 8},
                    {"min_rate": 1, "max_rate": 8, "tolerance": 1e-300}, {"min_rate": 1, "max_rate": 1e300, "tolerance": 0.5},
                    {"min_rate": 8, "max_rate": 1}, {"min_rate": 1e-300, "max_rate": 8}, {"max_rate": 8}, "yes",
                    {"min_rate": 1, "max_rate": 8, "tolerance": float("nan")}]))
                marks.mark("capacity", isinstance(data["capacity"], dict) and any(
                    isinstance(v, float) and not math.isfinite(v) for v in data["capacity"].values()))
            elif which == "top":
                data["top"] = rng.choice([0, -1, 10**9, "5", 2.5, True, None])
                marks.mark("top", _clearly_invalid(5, data["top"]) or data["top"] == 0)
            else:
                data["name"] = rng.choice(["", "x" * 300, "../escape", "a/b", 5, None, ["x"]])
            notes.append(f"{which}={data.get(which)!r}"[:80])
        else:
            data["base"] = copy.deepcopy(rng.choice([str(ROOT / "workloads/scenarios/nope.yaml"), "nope.yaml", str(ROOT / "README.md"),
                                                     str(ROOT / "workloads"), "", 5, None, [], {"model": "bogus"}, "x" * 300,
                                                     str(ROOT / "workloads/scenarios/opt175b-t4-offload.yaml")]))
            if data["base"] == str(ROOT / "workloads/scenarios/opt175b-t4-offload.yaml"):
                data["space"] = {"offload": ["optimized"], "calibration": ["none"]}
            notes.append(f"base={repr(data['base'])[:50]}")
    return marks.any()


def _search_case(rng: random.Random) -> dict:
    data = _search_source(rng)
    notes: list[str] = [str(data.get("name") or "search")]
    resume = rng.random() < 0.2 and data.get("name") == "tiny"
    invalid = False if resume else _mutate_search(rng, data, notes)
    text = yaml.safe_dump(data, allow_unicode=True).encode()
    run = ["search", "@DIR@/search.yaml", "--out", "@DIR@/out", "--no-progress"]
    if not resume and rng.random() < 0.15:
        run += rng.choice([["--top", "0"], ["--top", "-1"], ["--top", "x"], ["--jobs", "0"], ["--jobs", "-2"], ["--exhaustive"],
                           ["--top", "99999999999999999999"], ["--report", "@DIR@"]])
        notes.append(" ".join(run[5:]))
    steps: list[dict] = [{"argv": run, "codes": [0, 1, 2]}]  # 1: no plan meets the constraints
    if resume:
        steps[0]["codes"] = [0, 1]
        steps += _corruptions(rng, "search", "out", notes)
        steps.append({"argv": run, "codes": [0, 1, 2]})
        if rng.random() < 0.3:
            steps.append({"argv": ["report", "@DIR@/out", "-o", "@DIR@/report.html"]})
    return {"kind": "search", "files": {"search.yaml": text}, "steps": steps, "invalid": invalid, "notes": notes}


# ---- offload-plan command lines --------------------------------------------------------------
def _offload_case(rng: random.Random) -> dict:
    files: dict[str, bytes] = {}
    scen = rng.choice(["opt175b-t4-offload", "opt175b-t4-offload", "cxl-long-context", "quickstart", "bogus", "@DIR@/scenario.yaml", "@DIR@"])
    notes = [scen.replace("@DIR@/", "")]
    invalid = False
    if scen == "@DIR@/scenario.yaml":
        data = yaml.safe_load((ROOT / "workloads/scenarios/opt175b-t4-offload.yaml").read_text())
        data["workload"]["limit"] = 2
        invalid = _mutate_data(rng, data, notes)
        files["scenario.yaml"] = yaml.safe_dump(data).encode()
    argv = ["offload-plan", scen, "--set", "workload.limit=2", "--set", "calibration=none",
            "--confirm", rng.choice(["0", "1", "1", "2", "-1", "x", "1e3"])]
    for opt, choices in (("--prompt-len", ["1", "512", "0", "-1", "1e30", "nan", "x", "10000000", str(2**63), "99999999999999999999"]),
                         ("--gen-len", ["1", "32", "0", "-1", "inf", "x", "10000000", str(2**62)]),
                         ("--top", ["1", "3", "0", "-5", "x", "1000000"]),
                         ("--objective", ["throughput", "latency", "bogus", ""]),
                         ("--json", ["@DIR@/plans.json", "@DIR@", "@DIR@/no/such/dir/p.json", "", "@DIR@/scenario.yaml/x.json"])):
        if rng.random() < 0.35:
            argv += [opt, rng.choice(choices)]
    if rng.random() < 0.3:
        argv.append(rng.choice(["--compress-kv", "--compress-weights"]))
    if rng.random() < 0.4:
        argv += ["--set", rng.choice([
            "plan.offload.gpu_batch_size=-1", "hardware=bogus", "model=phi-2", "hardware=cpu-server", "plan.precision.weights=int4",
            "workload.batch.input_tokens=10000000", "plan.offload.weights={gpu: 2}", "plan.offload=null", "plan.batching.policy=continuous",
            "hardware.dram.capacity=1 GiB", "hardware.num_gpus=0", "model=mixtral-8x7b", "hardware=dgx-h100", "noequals",
            "plan.offload.num_gpu_batches=1000000", "workload.batch.num_prompts=1", "hardware.bandwidth_scale.host_to_gpu=1e-9",
            "plan.offload.kv_spill={after_tokens: 1, tier: disk}", "workload={synthetic: {num_requests: 2}}"])]
    notes.append(" ".join(argv[7:])[:100])
    return {"kind": "offload", "files": files, "steps": [{"argv": argv}], "invalid": invalid, "notes": notes}


# ---- report folders ----------------------------------------------------------------------------
CORRUPT_FILES: dict[str, list[str]] = {
    "run": ["summary.json", "requests.parquet", "iterations.parquet", "links.parquet", "scenario.yaml", "provenance.json"],
    "study": ["runs.parquet", "study.json", "runs/*/row.json", "runs/*/summary.json", "runs/*/scenario.yaml", "runs", "runs/*"],
    "search": ["candidates.parquet", "search.json", "pareto.parquet", "best.yaml", "best/summary.json", "runs/*/row.json",
               "runs/*/scenario.yaml", "runs", "best"],
}
CORRUPT_OPS = ["delete", "truncate", "empty", "garbage", "json-kind", "json-key", "dir", "tmp", "swap", "nan"]


def _corruptions(rng: random.Random, folder_kind: str, dest: str, notes: list[str]) -> list[dict]:
    out = []
    for _ in range(rng.choice([1, 1, 2])):
        target = rng.choice(CORRUPT_FILES[folder_kind])
        op = rng.choice(CORRUPT_OPS)
        step: dict[str, Any] = {"corrupt": f"{dest}/{target}", "op": op}
        if op == "json-key":
            step["value"] = copy.deepcopy(rng.choice(BAD_VALUES))
            step["pick"] = rng.random()
            if rng.random() < 0.2:
                step["value"] = "<deleted>"
        elif op == "json-kind":
            step["value"] = rng.choice(["[]", "{}", "null", "5", '"x"', "NaN", "{\"a\": Infinity}"])
        elif op == "swap":
            step["other"] = f"{dest}/{rng.choice(CORRUPT_FILES[folder_kind])}"
        out.append(step)
        notes.append(f"{op} {target}")
    return out


def _report_case(rng: random.Random) -> dict:
    notes: list[str] = []
    steps: list[dict] = []
    r = rng.random()
    out_opt = rng.choice(["@DIR@/r.html"] * 6 + ["@DIR@", "@DIR@/deep/er/r.html", "@DIR@/f/summary.json/r.html", "@DIR@/r.pdf"])
    if r < 0.15:
        folder = rng.choice(["@DIR@/none", "@DIR@/empty", "@DIR@/file.txt", str(ROOT), str(ROOT / "workloads/scenarios/quickstart.yaml"),
                             "", "x" * 300])
        notes.append(f"folder {folder.replace('@DIR@/', '')}"[:60])
        steps.append({"mkdir": "empty"})
        steps.append({"write": "file.txt", "data": "hello"})
        steps.append({"argv": ["report", folder, "-o", out_opt]})
        return {"kind": "report", "files": {}, "steps": steps, "invalid": False, "notes": notes}
    kind = rng.choice(["run", "run", "study", "search"])
    steps.append({"copy": kind, "to": "f"})
    notes.append(f"{kind} folder")
    if rng.random() < 0.85:
        steps += _corruptions(rng, kind, "f", notes)
    dirs = ["@DIR@/f"]
    if rng.random() < 0.2:
        other = rng.choice(["run", "study", "search"])
        steps.append({"copy": other, "to": "g"})
        dirs.append(rng.choice(["@DIR@/g", "@DIR@/f"]))
        notes.append(f"with a {other} folder" if dirs[-1].endswith("g") else "the folder twice")
    steps.append({"argv": ["report", *dirs, "-o", out_opt]})
    if kind == "study" and rng.random() < 0.4:
        steps.append({"argv": ["study", "show", "@DIR@/f"]})
    if kind == "run" and rng.random() < 0.3:  # rerun a half-written run folder's scenario
        steps.append({"argv": ["run", "@DIR@/f/scenario.yaml", "--out", "@DIR@/f2"]})
    notes.append(out_opt.replace("@DIR@/", ""))
    return {"kind": "report", "files": {}, "steps": steps, "invalid": False, "notes": notes}


# ---- calibration profiles (--kinds profile) ------------------------------------------------------
PROFILES = ROOT / "calibration" / "profiles"
CPU_SCENARIO_TEXT = """\
name: fuzz-cpu
hardware: ci-vm
model: llama-2-7b
workload: {batch: {num_prompts: 2, input_tokens: 64, output_tokens: 4}}
plan: {batching: {policy: static}, execution: {device: cpu}}
"""
"""A two-prompt run on the CI VM's CPU (catalog generic-2core-vm: the shipped ci-vm-cpu profile's)."""
GPU_SCENARIO_TEXT = """\
name: fuzz-gpu
hardware: dgx-h100
model: llama-2-7b
workload: {batch: {num_prompts: 2, input_tokens: 64, output_tokens: 4}}
plan: {batching: {policy: static}}
"""
PROFILE_NUMBERS = ("device.peak_flops.", "device.mem_bandwidth", "device.dram_bandwidth", "device.llc_bytes",
                   "device.threads", "device.logical_cpus", "device.sm_count", "launch_overhead.", "host_overhead.",
                   "threads", "device.speed_sentinel.slow_stretches.", "device.contention.")  # fmt: skip
"""Profile keys (prefixes) whose numbers the predictions read: a NaN, inf, negative, boolean or
string there must be refused, not run with."""
PROFILE_BASE_KEYS = ("launch_s", "compute_efficiency", "memory_efficiency", "sharpness")
PROFILE_FILES = ["profile.yaml"] * 6 + ["models.json"] * 2 + ["samples.csv"]
PROFILE_OPS = ["key"] * 10 + ["unknown-key", "truncate", "empty", "garbage", "latin1", "dir", "delete",
               "dangling", "loop", "json-kind"]  # fmt: skip
PROFILE_PATH_FORMS = ["@DIR@/p", "@DIR@/p/profile.yaml", "@DIR@/p/", "p", "@DIR@/p/models.json", "@DIR@/none",
                      "@DIR@/scenario.yaml", "@DIR@", ""]  # fmt: skip
VALIDATE_ARGS: dict[str, list[str]] = {
    "--layers": ["1", "2", "0", "-1", "x", "1e3", str(2**63)],
    "--hidden": ["128", "256", "100", "0", "-64", "x", "1000000000"],
    "--heads": ["2", "4", "3", "0", "-2", "x"],
    "--kv-heads": ["1", "2", "3", "0", "-1"],
    "--ffn": ["64", "352", "0", "-1", "nan"],
    "--vocab": ["256", "0", "-5", "10000000000"],
    "--batch-sizes": ["1", "1,3", "0", "-1", "1,,2", "", "x", "1e3", "1000000"],
    "--context-lens": ["16", "16,96", "0", "-3", "a,b", "100000000"],
    "--threads": ["1", "2", "0", "-1", "999", "x"],
    "--repeats": ["1", "0", "-1", "x"],
    "--phases": ["prefill", "decode", "prefill,decode", "", "bogus", "prefill,bogus"],
    "--dtype": ["fp32", "bf16", "fp16", "int8", ""],
    "--clock": ["wall", "cpu", "gpu"],
    "--json": ["@DIR@/v.json", "@DIR@", "@DIR@/scenario.yaml/v.json"],
}
CALIBRATE_ARGS: dict[str, list[str]] = {
    "--threads": ["1", "2", "0", "-1", "999", "x", "1.5"],
    "--dtypes": ["fp32", "bf16", "fp32,bf16", "fp16", "int8", "", ",", "fp32,,bf16", "FP32"],
    "--catalog": ["generic-2core-vm", "bogus", "h100-sxm", ""],
    "--name": ["mine", "", "   ", "x" * 300],
    "--out": ["@DIR@/cal", "@DIR@/scenario.yaml", "@DIR@/scenario.yaml/sub", ""],
    "--ssd-dir": ["@DIR@", "@DIR@/none", "@DIR@/scenario.yaml", ""],
    "--clock": ["wall", "cpu", "gpu"],
}
INVALID_ARG_VALUES = {"0", "-1", "-2", "-3", "-5", "-64", "x", "nan", "", "1e3", "a,b", "1,,2", "999", str(2**63), "1.5"}
"""Command-line values that are clearly wrong for the options above (a count, a size, a list of them)."""


RUN_RECORDS: dict[str, Any] = {
    "device.speed_sentinel": {"every_s": 5.0, "slow_stretches": {"samples": 790, "flagged": 40, "remeasured": 38, "replaced": 30,
                                                                 "kept_slow": 10, "kept_much_slower": 3, "threshold": 0.05,
                                                                 "warn_slowdown": 0.1, "spent_s": 12.0, "budget_s": 30.0}},
    "device.contention": {"samples_checked": 790, "contended": 12, "remeasured": 12, "still_contended": 2, "retry_s": 4.0},
    "device.openmp_env": {"OMP_WAIT_POLICY": "unset", "OMP_PROC_BIND": "unset", "GOMP_SPINCOUNT": "unset"},
    "device.thread_wakeup": {"threads": 2, "gaps_s": [0.0, 1e-4, 1e-3], "excess_s": [0.0, 1e-6, 2e-5]},
}
"""Sections a CPU calibration of the last rounds writes into ``device`` (the shipped CPU profile
predates them): a profile case may add them so that their readers are fuzzed too."""


def _profile_mutation(rng: random.Random, data: dict, notes: list[str]) -> tuple[str, Any]:
    """A dotted key of profile.yaml and the value to give it (DELETE to delete it): mostly the keys
    predictions read, the fingerprint and the device facts; any key now and then."""
    paths = _paths(data)
    r = rng.random()
    if r < 0.3:
        cls = rng.choice(["gemm", "attn_prefill", "attn_decode", "elementwise"])
        path = f"efficiency.{cls}." + rng.choice([f"model.base.{k}" for k in PROFILE_BASE_KEYS]
                                                 + ["measured", "model", "model.base", "fit_error", "model.residual.key",
                                                    "model.residual.features", "model.base_by_dtype", "model.base_inputs"])  # fmt: skip
    elif r < 0.5:
        path = rng.choice([p for p in paths if p.startswith(("device.fingerprint", "device.peak_flops", "device.kind",
                                                             "device.catalog", "device.threads", "device.clock",
                                                             "device.measured_at", "device.suite", "device.dtypes"))]  # fmt: skip
                          or paths)
    elif r < 0.7:
        path = rng.choice([p for p in paths if p.startswith(("links.", "memory.", "ssd.", "collectives.", "device.host_first_touch",
                                                             "device.thread_wakeup", "device.step_composition", "device.ssd"))]  # fmt: skip
                          or paths)
    elif r < 0.85:
        path = rng.choice(["launch_overhead", "launch_overhead.gemm", "launch_overhead.attn_decode", "host_overhead",
                           "host_overhead.per_iteration_s", "host_overhead.per_sequence_s", "threads", "simkit_profile",
                           "name", "samples", "models", "efficiency", "device", "links", "memory", "ssd", "collectives",
                           "device.mem_bandwidth", "device.dram_bandwidth", "device.llc_bytes", "device.logical_cpus",
                           "device.sm_count", "device.thread_wakeup", "device.step_composition", "device.fingerprint",
                           "device.speed_sentinel", "device.speed_sentinel.slow_stretches",
                           "device.speed_sentinel.slow_stretches.samples", "device.speed_sentinel.slow_stretches.kept_much_slower",
                           "device.speed_sentinel.slow_stretches.warn_slowdown", "device.contention",
                           "device.contention.still_contended", "device.contention.samples_checked", "device.openmp_env",
                           "device.thread_wakeup.threads", "device.thread_wakeup.excess_s", "device.gemm_timing"])  # fmt: skip
    else:
        path = rng.choice(paths)
    value: Any = "<deleted>" if rng.random() < 0.15 else copy.deepcopy(rng.choice(BAD_VALUES))  # (cases are pickled: no sentinel object)
    if path == "host_overhead" and value != "<deleted>" and rng.random() < 0.5:
        value = {"per_iteration_s": rng.choice([1e-4, -1e-4, float("nan"), "1 ms"]), "per_sequence_s": 0.0}
    notes.append(f"{path}={value if value == '<deleted>' else repr(value)[:30]}")
    return path, value


def _profile_corruptions(rng: random.Random, data: dict, notes: list[str]) -> tuple[list[dict], bool]:
    steps, invalid = [], False
    for _ in range(rng.choice([1, 1, 1, 2])):
        target = rng.choice(PROFILE_FILES)
        op = rng.choice(PROFILE_OPS)
        step: dict[str, Any] = {"pcorrupt": f"p/{target}", "op": op}
        if op in ("key", "unknown-key"):
            if target == "profile.yaml":
                if op == "unknown-key":
                    where = rng.choice(["", "device.", "device.fingerprint.", "efficiency.gemm.", "host_overhead.",
                                        "efficiency.gemm.model.base."])  # fmt: skip
                    step["path"], step["value"] = where + rng.choice(["bogus", "peak_flop", "fingerprints"]), 1
                    notes.append(f"unknown key {step['path']}")
                else:
                    step["path"], step["value"] = _profile_mutation(rng, data, notes)
                    old = _get(data, step["path"]) if _has(data, step["path"]) else None
                    if step["path"].startswith(PROFILE_NUMBERS) or step["path"].split(".")[-1] in PROFILE_BASE_KEYS:
                        invalid |= step["value"] != "<deleted>" and _clearly_invalid(old, step["value"])
            elif target == "models.json":
                step["path"] = rng.choice(["gemm.baseline", "gemm.depth", "gemm.trees", "gemm.trees.0", "attn_decode",
                                           "elementwise.trees.0.value", "gemm.trees.0.feature", "gemm.trees.0.left"])  # fmt: skip
                step["value"] = copy.deepcopy(rng.choice([*BAD_VALUES, "<deleted>"]))
                notes.append(f"models.json {step['path']}")
            else:
                step["column"] = rng.choice(["time_s", "op_class", "m", "dtype"])
                step["value"] = rng.choice(["", "nan", "-1", "abc", "<deleted>"])
                notes.append(f"samples.csv {step['column']}={step['value']}")
        elif op == "json-kind":
            step["value"] = rng.choice(["[]", "{}", "null", "5", '"x"', "NaN", "simkit_profile: 1\n", "- a\n- b\n"])
            notes.append(f"{target} := {step['value']!r}")
        else:
            notes.append(f"{op} {target}")
        steps.append(step)
    return steps, invalid


def _has(data: Any, path: str) -> bool:
    try:
        _get(data, path)
        return True
    except (KeyError, IndexError, ValueError, TypeError):
        return False


def _profile_case(rng: random.Random) -> dict:
    """A shipped profile folder copied to ``p``, corrupted (or not), then used: by ``simkit run``
    with ``calibration: <path>`` or ``auto`` (``SIMKIT_PROFILE_PATH`` and ``XDG_DATA_HOME``
    varied), by ``simkit calibrate list``, by ``simkit validate --profile`` (stopped where it
    would start timing torch); or a ``simkit calibrate``/``validate`` argument line (stopped where
    it would start measuring)."""
    notes: list[str] = []
    steps: list[dict] = []
    files = {"scenario.yaml": CPU_SCENARIO_TEXT.encode(), "gpu.yaml": GPU_SCENARIO_TEXT.encode()}
    invalid = False
    src = rng.choice(["ci-vm-cpu"] * 4 + ["h100-sxm-vidur"])
    use = rng.choices(["run", "auto", "list", "validate", "validate-args", "calibrate-args"], [30, 20, 10, 15, 13, 12])[0]
    notes.append(f"{use} {src}")
    env: dict[str, str | None] = {"SIMKIT_PROFILE_PATH": None, "XDG_DATA_HOME": "@DIR@/xdg", "SIMKIT_SPEED_PROBE": "0"}
    if use not in ("validate-args", "calibrate-args"):
        steps.append({"pcopy": src, "to": "p"})
        data = yaml.safe_load((PROFILES / src / "profile.yaml").read_text())
        if rng.random() < 0.85:
            more, invalid = _profile_corruptions(rng, data, notes)
            steps += more
        if src == "ci-vm-cpu" and rng.random() < 0.4:  # the run records newer CPU profiles carry (before any mutation)
            for path, value in RUN_RECORDS.items():
                steps.insert(1, {"pcorrupt": "p/profile.yaml", "op": "key", "path": path, "value": copy.deepcopy(value)})
            notes.append("with run records")
        if rng.random() < 0.15:  # a profile of another device: the catalog's fingerprint disagrees
            steps.append({"pcorrupt": "p/profile.yaml", "op": "key", "path": "device.fingerprint.logical_cpus", "value": 64})
            notes.append("fingerprint of another CPU")
    scen = "@DIR@/gpu.yaml" if src != "ci-vm-cpu" and rng.random() < 0.7 else "@DIR@/scenario.yaml"
    if use == "run":
        where = rng.choice(PROFILE_PATH_FORMS)
        invalid = invalid and where in ("@DIR@/p", "@DIR@/p/profile.yaml", "@DIR@/p/", "p")
        steps.append({"argv": ["run", scen, "--out", "@DIR@/out", "--set", f"calibration={where}"]})
    elif use in ("auto", "list"):
        invalid = False  # auto may pass the profile over: nothing says it was used
        sep = os.pathsep
        env["SIMKIT_PROFILE_PATH"] = rng.choice(["@DIR@", "@DIR@/p", "", " ", "rel", f"@DIR@{sep}@DIR@/none", f"@DIR@{sep}{sep}@DIR@",
                                                 "@DIR@/none", "@DIR@/scenario.yaml", f"{sep}", "~/no-such-simkit-folder", None])  # fmt: skip
        env["XDG_DATA_HOME"] = rng.choice(["@DIR@/xdg", "@DIR@/xdg", "rel-xdg", "", "@DIR@/scenario.yaml", "@DIR@"])
        notes.append(f"SIMKIT_PROFILE_PATH={env['SIMKIT_PROFILE_PATH']!r} XDG_DATA_HOME={env['XDG_DATA_HOME']!r}")
        if env["XDG_DATA_HOME"] == "@DIR@":
            steps.append({"pcopy": src, "to": "simkit/profiles/q"})
        if use == "auto":
            steps.append({"argv": ["run", scen, "--out", "@DIR@/out", "--set", "calibration=auto"]})
        else:
            steps.append({"argv": ["calibrate", "list", *rng.choice([[], [scen], ["@DIR@/none.yaml"], [scen, "--set", "hardware=bogus"]])]})
    elif use == "validate":
        argv = ["validate", "--profile", rng.choice(PROFILE_PATH_FORMS[:5] + ["@DIR@/none"]), "--layers", "1", "--hidden", "128",
                "--heads", "2", "--kv-heads", "1", "--ffn", "256", "--vocab", "256", "--batch-sizes", "1",
                "--context-lens", "16", "--repeats", "1", "--phases", "decode"]  # fmt: skip
        if rng.random() < 0.7:
            argv.append("--force")
        if rng.random() < 0.5:
            argv += ["--dtype", rng.choice(["fp32", "bf16"])]
        invalid = invalid and argv[2] != "@DIR@/none"
        steps.append({"argv": argv, "measures": True})
    elif use == "validate-args":
        argv = ["validate", "--profile", str(PROFILES / "ci-vm-cpu"), "--force"]
        for opt, vals in VALIDATE_ARGS.items():
            if rng.random() < 0.3:
                v = rng.choice(vals)
                argv += [opt, v]
                invalid |= v in INVALID_ARG_VALUES and opt not in ("--json", "--phases")
        if rng.random() < 0.1:
            argv.append(rng.choice(["--bogus", "--device=cuda", "--layers"]))
        notes.append(" ".join(argv[4:])[:120])
        steps.append({"argv": argv, "measures": True})
    else:
        argv = ["calibrate", "--device", rng.choice(["cpu", "cpu", "cpu", "cuda", "gpu", ""])]
        for opt, vals in CALIBRATE_ARGS.items():
            if rng.random() < 0.3:
                v = rng.choice(vals)
                argv += [opt, v]
                invalid |= v in INVALID_ARG_VALUES and opt in ("--threads", "--dtypes")
        if rng.random() < 0.3:
            argv.append(rng.choice(["--quick", "--tiny", "--quick --tiny"]))
            argv[-1:] = argv[-1].split()
        notes.append(" ".join(argv[1:])[:120])
        steps.append({"argv": argv, "measures": True})
    return {"kind": "profile", "files": files, "steps": steps, "env": env, "invalid": invalid, "notes": notes}


class _WouldMeasure(Exception):
    """Raised by the stand-ins of ``run_suite`` and the validation's speed probe: the command line
    and the profile were accepted and simkit would now start timing torch (not done in the fuzzer)."""


def _would_measure(*args: Any, **kwargs: Any) -> Any:
    raise _WouldMeasure


def _no_probe(profile: Any, *, threads: int | None = None, clock: str | None = None, **kwargs: Any) -> Any:
    """The validation's speed probe without timing anything (no rows: "as predicted"), so that what
    the validation reads of the profile after it (its notes on the run records) is fuzzed too."""
    from simkit.calibrate.probe import ProbeResult

    return ProbeResult((), int(threads or 1), str(clock or "wall"), 0.0)


@contextlib.contextmanager
def _no_measuring() -> Any:
    """``simkit calibrate`` and ``simkit validate`` stop where they would start measuring (the
    validation's speed probe reads "as predicted" without timing)."""
    import simkit.calibrate.bench as bench
    import simkit.calibrate.probe as probe
    import simkit.calibrate.validate as validate

    saved = (bench.run_suite, probe.speed_probe, validate.TorchLlama)
    bench.run_suite = validate.TorchLlama = _would_measure  # type: ignore[assignment]
    probe.speed_probe = _no_probe  # type: ignore[assignment]
    try:
        yield
    finally:
        bench.run_suite, probe.speed_probe, validate.TorchLlama = saved  # type: ignore[assignment]


@contextlib.contextmanager
def _environment(env: dict[str, str | None], workdir: Path) -> Any:
    saved = {k: os.environ.get(k) for k in env}
    try:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = _subst(v, workdir)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _overwrite(p: Path, raw: bytes, op: str, garbage: bytes) -> bool:
    """The corruptions every folder kind shares: ``truncate`` (the first half of ``raw``),
    ``empty``, ``garbage`` (``garbage`` then the first 7 bytes). False for any other ``op``."""
    if op == "truncate":
        p.write_bytes(raw[: len(raw) // 2])
    elif op == "empty":
        p.write_bytes(b"")
    elif op == "garbage":
        p.write_bytes(garbage + raw[:7])
    else:
        return False
    return True


def _corrupt_profile(workdir: Path, step: dict) -> None:
    """Apply one corruption to a copied profile folder's file."""
    p = workdir / step["pcorrupt"]
    op = step["op"]
    if not p.is_file():
        return
    raw = p.read_bytes()
    if _overwrite(p, raw, op, b"\x00\xff\xfegarbage: [\n"):
        pass
    elif op == "latin1":  # a non-UTF-8 byte in the middle
        p.write_bytes(raw[: len(raw) // 3] + b"\xe9\xff" + raw[len(raw) // 3:])
    elif op == "dir":
        p.unlink()
        p.mkdir()
    elif op == "delete":
        p.unlink()
    elif op == "dangling":
        p.unlink()
        p.symlink_to(workdir / "no-such-target")
    elif op == "loop":
        p.unlink()
        p.symlink_to(p)
    elif op == "json-kind":
        p.write_text(step["value"])
    elif op in ("key", "unknown-key"):
        if p.suffix == ".csv":
            import csv
            import io

            rows = list(csv.reader(io.StringIO(raw.decode())))
            if not rows or step["column"] not in rows[0]:
                return
            i = rows[0].index(step["column"])
            if step["value"] == "<deleted>":
                rows = [r[:i] + r[i + 1:] for r in rows]
            else:
                for r in rows[1::2]:
                    if i < len(r):
                        r[i] = step["value"]
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(rows)
            p.write_text(buf.getvalue())
            return
        try:
            data = yaml.safe_load(raw.decode()) if p.suffix == ".yaml" else json.loads(raw)
        except (ValueError, yaml.YAMLError, UnicodeDecodeError):
            return
        if not isinstance(data, dict):
            return
        _set(data, step["path"], DELETE if step["value"] == "<deleted>" else step["value"])
        if p.suffix == ".yaml":
            p.write_text(yaml.safe_dump(data, sort_keys=False))
        else:
            p.write_text(json.dumps(data))


FACE_KINDS = ("study", "search", "offload", "report")
INPUT_KINDS = ("scenario", "trace", "model", "yaml", "cli")
PROFILE_KINDS = ("profile",)
KIND_SETS = ("inputs", "faces", "profile", "all")
FACES_SHARE = 0.3
"""Share of face cases in a run of all kinds."""
PROFILE_SHARE = 0.1
"""Share of profile cases among the other cases of a run of all kinds (drawn from a stream of
their own, so the face cases of earlier runs of all kinds keep their indices)."""


def _face_case(seed: int, index: int) -> dict:
    rng = random.Random(f"simkit-fuzz-faces-{seed}-{index}")
    r = rng.random()
    if r < 0.4:
        case = _study_case(rng)
    elif r < 0.65:
        case = _search_case(rng)
    elif r < 0.8:
        case = _offload_case(rng)
    else:
        case = _report_case(rng)
    case["index"] = index
    return case


# ---- running a face case -----------------------------------------------------------------------
def _cli(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in this process: (exit code, what it printed)."""
    import io

    from simkit.cli import main

    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 2
    return int(code), buf.getvalue()


def _base_folder(kind: str, where: Path) -> Path:
    """A small finished run, study or search folder (made once per process under ``where``)."""
    dest = where / kind
    if (dest / ".complete").exists():
        return dest
    where.mkdir(parents=True, exist_ok=True)
    if kind == "run":
        argv = ["run", str(QUICKSTART), "--out", str(dest), "--set", "workload.limit=4", "--set", "calibration=none"]
    elif kind == "study":
        (where / "study.yaml").write_text(yaml.safe_dump(
            {"name": "tiny", "base": str(QUICKSTART), "set": {"workload.limit": 2, "calibration": "none"},
             "variants": {"a": {}, "b": {"plan.batching.max_num_seqs": 4}}, "axes": {"grid": {"plan.parallel.tp": [1, 2]}}}))
        argv = ["study", str(where / "study.yaml"), "--out", str(dest), "--jobs", "1", "--no-progress"]
    else:
        base = yaml.safe_load(QUICKSTART.read_text())
        base["workload"]["limit"] = 2
        base["calibration"] = "none"
        (where / "search.yaml").write_text(yaml.safe_dump(
            {"name": "tiny", "base": base, "space": {"plan.parallel.tp": [1, 2], "plan.batching.max_num_seqs": [8, 16]},
             "constraints": {"ttft_p90_s": {"max": 0.5}}, "objective": {"minimize": "usd_per_million_output_tokens"}, "top": 2}))
        argv = ["search", str(where / "search.yaml"), "--out", str(dest), "--no-progress"]
    code, text = _cli(argv)
    if code != 0:
        raise RuntimeError(f"making the {kind} folder failed ({code}): {text[-500:]}")
    (dest / ".complete").write_text("")
    return dest


def _target(workdir: Path, rel: str) -> Path | None:
    """``rel`` under ``workdir``; a ``*`` part picks the first match in name order."""
    node = workdir
    for part in rel.split("/"):
        if part == "*":
            if not node.is_dir():
                return None
            kids = sorted(node.iterdir())
            if not kids:
                return None
            node = kids[0]
        else:
            node = node / part
    return node if node.exists() else None


def _corrupt(workdir: Path, step: dict) -> str:
    """Apply one corruption; returns what was done (for the notes)."""
    import shutil

    p = _target(workdir, step["corrupt"])
    if p is None:
        return "nothing to corrupt"
    op = step["op"]
    if p.is_dir():
        if op in ("delete", "empty"):
            shutil.rmtree(p)
            if op == "empty":
                p.mkdir()
        elif op in ("garbage", "dir", "json-kind"):
            shutil.rmtree(p)
            p.write_bytes(b"\x00\xffnot a folder")
        else:
            (p / "part.tmp").write_bytes(b"{\"half")
        return f"{op} folder {p.name}"
    raw = p.read_bytes()
    if op == "delete":
        p.unlink()
    elif _overwrite(p, raw, op, b"\x00\xff\xfegarbage,{[\n"):
        pass
    elif op == "json-kind":
        p.write_text(step["value"])
    elif op == "dir":
        p.unlink()
        p.mkdir()
        (p / "x").write_text("x")
    elif op == "tmp":
        p.with_name(p.name + ".tmp").write_bytes(raw[: len(raw) // 3])
    elif op == "swap":
        other = _target(workdir, step["other"])
        if other is not None and other.is_file():
            p.write_bytes(other.read_bytes())
    elif op in ("json-key", "nan"):
        _edit_keys(p, raw, step)
    return f"{op} {p.name}"


def _edit_keys(p: Path, raw: bytes, step: dict) -> None:
    """Set one top-level key (or column) of a JSON, YAML or Parquet file to a bad value, delete
    it, or (op nan) set every number to NaN."""
    if p.suffix == ".parquet":
        import pandas as pd

        try:
            df = pd.read_parquet(p)
        except Exception:  # noqa: BLE001 - already corrupt: leave it
            return
        if not len(df.columns):
            return
        if step["op"] == "nan":
            for c in df.columns:
                if df[c].dtype.kind in "fi":
                    df[c] = float("nan")
        else:
            col = df.columns[int(step["pick"] * len(df.columns))]
            v = step["value"]
            if v == "<deleted>":
                df = df.drop(columns=[col])
            else:
                df[col] = [v if isinstance(v, int | float | str | bool) and not (isinstance(v, int) and abs(v) >= 2**63)
                           else json.dumps(v)] * len(df)
        with contextlib.suppress(Exception):
            df.to_parquet(p)
        return
    try:
        data = yaml.safe_load(raw.decode()) if p.suffix in (".yaml", ".yml") else json.loads(raw)
    except (ValueError, yaml.YAMLError, UnicodeDecodeError):
        return
    if not isinstance(data, dict) or not data:
        return
    if step["op"] == "nan":
        data = {k: float("nan") if _is_number(v) else v for k, v in data.items()}
    else:
        key = sorted(data)[int(step["pick"] * len(data))]
        if step["value"] == "<deleted>":
            del data[key]
        else:
            data[key] = step["value"]
    p.write_text(yaml.safe_dump(data) if p.suffix in (".yaml", ".yml") else json.dumps(data))


def _subst(x: str, workdir: Path) -> str:
    return x.replace("@DIR@", str(workdir))


def _named(message: str, workdir: Path, argv: list[str], also: tuple[str, ...] = ()) -> bool:
    """A clean error names a file (the case's own, a shipped one, one on the command line), an
    option, or what it was given (a token of the command line, quoted or not); ``also``: other
    names that count (a profile case's environment variables, a profile folder's file names
    given relative to the working folder)."""
    last = [ln for ln in message.strip().splitlines() if ln.strip()][-1:] or [""]
    line = last[0]
    given = {t for a in argv[1:] for t in (a, str(Path(a))) if len(t.strip()) > 2}
    if "" in argv and line.startswith("simkit: error: .:"):  # an empty path is the current folder
        return True
    quoted = {f"'{a}'" for a in argv[1:] if a}
    return any(s in line for s in (str(workdir), str(ROOT), "--", "argument ", *given, *quoted, *also))


def run_face_case(case: dict, workdir: Path, out: dict) -> None:
    """Run a face case's steps in ``workdir``; fills ``out`` (outcome, cause, message)."""
    import shutil

    for name, raw in (case.get("files") or {}).items():
        (workdir / name).write_bytes(raw.replace(b"@DIR@", str(workdir).encode()))
    bases = workdir.parent / f"_bases-{os.getpid()}"
    cwd = os.getcwd()
    os.chdir(workdir)
    codes: list[int] = []
    unnamed = []
    stack = contextlib.ExitStack()
    try:
        if "env" in case:
            stack.enter_context(_environment(case["env"], workdir))
        for step in case["steps"]:
            if "pcopy" in step:
                shutil.rmtree(workdir / step["to"], ignore_errors=True)  # (a folder a case of the same index left)
                shutil.copytree(PROFILES / step["pcopy"], workdir / step["to"])
            elif "pcorrupt" in step:
                _corrupt_profile(workdir, step)
            elif "copy" in step:
                shutil.copytree(_base_folder(step["copy"], bases), workdir / step["to"], ignore=shutil.ignore_patterns(".complete"))
            elif "corrupt" in step:
                _corrupt(workdir, step)
            elif "mkdir" in step:
                (workdir / step["mkdir"]).mkdir(exist_ok=True)
            elif "write" in step:
                (workdir / step["write"]).write_text(step["data"])
            else:
                argv = [_subst(x, workdir) for x in step["argv"]]
                if step.get("measures"):
                    try:
                        with _no_measuring():
                            code, text = _cli(argv)
                    except _WouldMeasure:
                        code, text = 0, "accepted: simkit would start measuring now"
                else:
                    code, text = _cli(argv)
                codes.append(code)
                shown = " ".join(a.replace(str(workdir) + "/", "").replace(str(workdir), ".") for a in argv[:3])
                if "internal error" in text:  # a study or search run that failed with a bug (recorded, not raised)
                    out["outcome"] = "traceback"
                    line = next(ln for ln in text.splitlines() if "internal error" in ln)
                    out["cause"] = f"internal error in a run of `{shown}`: " + line.split("internal error:", 1)[1].strip()[:80]
                    out["message"] = text[-300:]
                    return
                if code not in step.get("codes", [0, 2]):
                    out["outcome"] = "traceback"
                    out["cause"] = f"exit code {code} from `{shown}`"
                    out["message"] = text[-300:]
                    return
                if code == 2:
                    out["message"] = text.strip()[-300:]
                    also = (*case.get("env", {}), "p/profile.yaml", "p/models.json", "p/samples.csv") if "env" in case else ()
                    if not _named(text, workdir, argv, also):
                        unnamed.append(text.strip()[-200:])
    finally:
        stack.close()
        os.chdir(cwd)
    if 2 in codes:
        out["outcome"] = "clean"
        out["named"] = not unnamed
        out["cause"] = "exit 2"
    elif case.get("invalid"):
        out["outcome"] = "accepted"
        out["cause"] = "invalid value accepted: " + ", ".join(case["notes"][1:])[:120]
    else:
        out["outcome"] = "ok"


def make_case(seed: int, index: int, kinds: str = "all") -> dict:
    """Case ``index`` of the run seeded ``seed`` (deterministic). ``kinds``: ``inputs`` (scenarios,
    traces, model files, scenario text, command lines: the case streams of earlier runs,
    unchanged), ``faces`` (study and search files, offload-plan command lines, report folders),
    ``profile`` (calibration profile folders, where they are found, ``calibrate``/``validate``
    command lines), or ``all`` (a face case with probability FACES_SHARE, drawn from its own
    random stream, else a profile case with probability PROFILE_SHARE, from another, else the
    inputs case of that index)."""
    if kinds not in KIND_SETS:
        raise ValueError(f"kinds: expected one of {', '.join(KIND_SETS)}, got {kinds!r}")
    if kinds == "faces" or (kinds == "all" and random.Random(f"simkit-fuzz-pick-{seed}-{index}").random() < FACES_SHARE):
        return _face_case(seed, index)
    if kinds == "profile" or (kinds == "all" and random.Random(f"simkit-fuzz-pick-profile-{seed}-{index}").random() < PROFILE_SHARE):
        case = _profile_case(random.Random(f"simkit-fuzz-profile-{seed}-{index}"))
        case["index"] = index
        return case
    return _input_case(seed, index)


def _input_case(seed: int, index: int) -> dict:
    rng = random.Random(f"simkit-fuzz-{seed}-{index}")
    r = rng.random()
    if r < 0.55:
        case = _scenario_case(rng)
    elif r < 0.8:
        case = _trace_case(rng)
    elif r < 0.87:
        case = _model_case(rng)
    elif r < 0.9:
        case = _hf_case(rng)
    elif r < 0.96:
        case = _yaml_text_case(rng)
    else:
        case = _cli_case(rng)
    case["index"] = index
    return case


# ---------------------------------------------------------------------------------------------
# running one case
class _Timeout(Exception):
    pass


class _Slow(Exception):
    pass


GRACE_S = 40.0
"""After the time budget, how long a run gets to finish or to show that its simulated clock
still advances (tabulating a calibrated cost model for a 40k-token batch alone takes ~20 s)."""
_clock: dict[str, Any] = {}


def _sim_env(frame: Any) -> Any:
    """The SimPy environment running in the interrupted stack, if any."""
    import simpy

    while frame is not None:
        env = frame.f_locals.get("self")
        if isinstance(env, simpy.Environment):
            return env
        env = frame.f_locals.get("env")
        if isinstance(env, simpy.Environment):
            return env
        frame = frame.f_back
    return None


def _tabulating(frame: Any) -> str | None:
    """If the stack is inside a cost model's table growth (bounded work: one row per token count
    up to a known size), say so."""
    while frame is not None:
        if frame.f_code.co_name == "_grow" and frame.f_code.co_filename.endswith("iteration.py"):
            return f"tabulating the cost of {frame.f_locals.get('n')} token counts"
        frame = frame.f_back
    return None


def _alarm(signum: int, frame: Any) -> None:
    """First alarm: note the simulated clock and allow GRACE_S more. Second: a run whose clock
    moved, or that is tabulating a cost model (finite work of known size), is slow; one whose
    clock stood still, or that is not simulating, hangs."""
    env = _sim_env(frame)
    bounded = _tabulating(frame)
    if bounded:
        _clock["bounded"] = bounded
    if "now" not in _clock:
        _clock["now"] = env.now if env is not None else None
        signal.setitimer(signal.ITIMER_REAL, GRACE_S)
        return
    if env is not None and _clock["now"] is not None and env.now > _clock["now"]:
        raise _Slow(f"simulated {_clock['now']:.3g} s in the budget, {env.now:.3g} s after the grace")
    if "bounded" in _clock:
        raise _Slow(_clock["bounded"])
    raise _Timeout


def _substitute(node: Any, table: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, table) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, table) for v in node]
    if isinstance(node, str) and node in table:
        return table[node]
    return node


def check_invariants(res: Any) -> list[str]:
    """What a result must hold (each failure names the invariant)."""
    import numpy as np

    from simkit.specs.catalog import load_model
    from simkit.specs.node import resolve_node

    bad: list[str] = []
    s = res.summary
    t = res.table
    n = t.n
    done = np.isfinite(t.finish)
    if s["requests_completed"] + s["requests_rejected"] + s["requests_unfinished"] != n or s["requests_total"] != n:
        bad.append("completed + rejected + unfinished != submitted")
    if s["requests_unfinished"] != 0:
        bad.append("unfinished requests without a horizon")
    if (done & t.rejected).any():
        bad.append("a request both rejected and completed")
    if not np.all(np.isfinite(t.arrival)) or (t.arrival < 0).any():
        bad.append("negative or NaN arrival")
    ft, fin, arr = t.first_token[done], t.finish[done], t.arrival[done]
    if not (np.all(np.isfinite(ft)) and np.all(np.isfinite(fin))):
        bad.append("NaN first-token time of a completed request")
    eps = 1e-9
    if (ft < arr - eps).any():
        bad.append("first token before arrival")
    if (fin < ft - eps).any():
        bad.append("TTFT > E2E")
    if (t.gen[done] != t.output[done]).any():
        bad.append("completed request generated a different number of tokens")
    for k, v in s.items():
        if isinstance(v, float) and not isinstance(v, bool):
            if math.isinf(v):
                bad.append(f"infinite {k}")
            elif v < 0 and k != "sim_wall_s" and not k.endswith("_growth"):  # growth: a signed slope
                bad.append(f"negative {k}")
            elif math.isnan(v) and s["requests_completed"] and k.endswith("_s") and not k.startswith(("tpot", "tbt")):
                bad.append(f"NaN {k} with completed requests")
    for k in ("kv_utilization_peak", "kv_utilization_mean"):
        if s.get(k, 0) > 1 + 1e-9:
            bad.append(f"{k} > 1")
    for tier, m in (s.get("memory") or {}).items():
        cap = m.get("capacity_bytes", math.inf)
        if m.get("used_bytes", 0) > cap * (1 + 1e-9) or m.get("peak_bytes", 0) > cap * (1 + 1e-9):
            bad.append(f"memory over capacity in {tier}")
    # physical bound: each output token needs 2 FLOPs per active parameter, at most at peak
    sc = res.scenario
    node = resolve_node(sc.hardware, where=sc.source)
    model = load_model(sc.model, where=sc.source)
    if node.gpu is not None and sc.plan.execution.device == "gpu":
        pf = node.gpu.peak_flops
        peak = max(v for v in (pf.fp32, pf.tf32, pf.fp16, pf.bf16, pf.fp8, pf.int8) if v) * node.total_gpus
    else:
        pf = node.cpu.peak_flops
        peak = max(v for v in (pf.fp32, pf.tf32, pf.fp16, pf.bf16, pf.fp8, pf.int8) if v) * node.sockets * node.num_nodes
    bound = peak / (2.0 * model.num_active_params)
    if s["output_tokens_per_s"] > bound * 1.001:
        bad.append("output tok/s above the peak-FLOP/s bound")
    return bad


def run_case(case: dict, workdir: Path, timeout_s: float = 20.0) -> dict:
    """Run one case in this process (SIGALRM bounds it); returns its outcome."""
    import warnings

    from simkit.errors import SimkitError

    workdir.mkdir(parents=True, exist_ok=True)
    table = {}
    for name, raw in (case.get("files") or {}).items():
        p = workdir / name
        p.write_bytes(raw)
        table["@" + name.split(".")[0].upper() + "@"] = str(p)
    out: dict[str, Any] = {"index": case["index"], "kind": case["kind"], "notes": case["notes"]}
    old = signal.signal(signal.SIGALRM, _alarm)
    _clock.clear()
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if case["kind"] in FACE_KINDS or case["kind"] in PROFILE_KINDS:
                run_face_case(case, workdir, out)
                return out
            if case["kind"] == "cli":
                import contextlib
                import io

                from simkit.cli import main

                buf = io.StringIO()
                argv = [str(workdir / "out") if x == "@OUT@" else x for x in case["argv"]]
                try:
                    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                        code = main(argv)
                except SystemExit as e:
                    code = e.code
                out["outcome"] = "ok" if code == 0 else "clean" if code == 2 else "traceback"
                if code not in (0, 2):
                    out["cause"] = f"exit code {code}"
                out["message"] = buf.getvalue()[-300:]
                if code == 2:
                    out["named"] = True
                return out
            from simkit.scenario import load_scenario
            from simkit.simulate import simulate

            path = workdir / "scenario.yaml"
            if case["kind"] != "yaml":
                path.write_text(yaml.safe_dump(_substitute(case["data"], table)))
            sc = load_scenario(path, case.get("overrides") or None)
            res = simulate(sc, record_iterations=False)
            problems = check_invariants(res)
            if problems:
                out["outcome"] = "violation"
                out["cause"] = "; ".join(sorted(set(problems)))
            elif "now" in _clock:  # finished, but only in the grace period
                out["outcome"] = "slow"
                out["cause"] = ", ".join(case["notes"])[:120]
                out["message"] = "finished after the time budget"
            else:
                out["outcome"] = "accepted" if case.get("invalid") else "ok"
                if case.get("invalid"):
                    out["cause"] = "invalid value accepted: " + ", ".join(case["notes"][1:])
    except _Timeout:
        out["outcome"] = "hang"
        out["cause"] = "timeout: " + ", ".join(case["notes"])[:120]
    except _Slow as e:
        out["outcome"] = "slow"
        out["cause"] = ", ".join(case["notes"])[:120]
        out["message"] = str(e)
    except SimkitError as e:
        out["outcome"] = "clean"
        # SimPy re-raises an error from inside a process as a new instance of its class, built
        # from the message alone: the original (with where and key) is its __cause__
        orig = e.__cause__ if isinstance(e.__cause__, SimkitError) else e
        out["named"] = bool(orig.where or orig.key or "line" in orig.message)
        out["cause"] = type(e).__name__
        out["message"] = str(e)[:300]
    except RecursionError as e:
        out["outcome"] = "traceback"
        out["cause"] = f"RecursionError {e}"[:120]
    except Exception as e:  # noqa: BLE001 - classifying every failure is the point
        tb = traceback.extract_tb(e.__traceback__)
        frames = [f for f in tb if "/simkit/" in f.filename]
        at = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        out["outcome"] = "traceback"
        out["cause"] = f"{type(e).__name__} @ {at}"
        out["message"] = f"{type(e).__name__}: {e}"[:300]
        out["traceback"] = "".join(traceback.format_exception(e))[-3000:]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return out


# ---------------------------------------------------------------------------------------------
# the driver: worker processes, each case under a soft (SIGALRM) and a hard (kill) timeout
WORKER_MEMORY = 6 * 2**30
"""Address-space limit of a worker: a runaway allocation fails as MemoryError instead of
starving the machine."""


def _worker(conn: Any, workdir: str, timeout_s: float) -> None:
    import resource

    os.environ.pop("SIMKIT_DEBUG", None)
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    while True:
        case = conn.recv()
        if case is None:
            return
        try:
            res = run_case(case, Path(workdir) / str(case["index"]), timeout_s)
        except BaseException as e:  # noqa: BLE001 - report, never die silently
            res = {"index": case["index"], "kind": case["kind"], "notes": case["notes"], "outcome": "traceback",
                   "cause": f"{type(e).__name__} in the harness", "message": str(e)[:300]}
        conn.send(res)


def run_many(seed: int, indices: list[int], workers: int, timeout_s: float, progress: bool = True, kinds: str = "all") -> list[dict]:
    ctx = mp.get_context("fork")
    results: list[dict] = []
    todo = list(indices)
    hard = timeout_s + GRACE_S + 30
    with tempfile.TemporaryDirectory(prefix="simkit-fuzz-") as tmp:
        slots: list[dict] = []

        def spawn() -> dict:
            a, b = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(b, tmp, timeout_s), daemon=True)
            p.start()
            return {"proc": p, "conn": a, "case": None, "since": 0.0}

        slots = [spawn() for _ in range(max(1, workers))]
        t0 = time.perf_counter()
        shown = [0]
        while todo or any(s["case"] is not None for s in slots):
            for s in slots:
                if s["case"] is None and todo:
                    case = make_case(seed, todo.pop(0), kinds)
                    s["case"], s["since"] = case, time.perf_counter()
                    s["conn"].send(case)
            ready = mp.connection.wait([s["conn"] for s in slots if s["case"] is not None], timeout=1.0)
            for s in slots:
                if s["case"] is None:
                    continue
                if s["conn"] in ready:
                    try:
                        results.append(s["conn"].recv())
                    except EOFError:  # the worker died (e.g. killed for memory)
                        c = s["case"]
                        results.append({"index": c["index"], "kind": c["kind"], "notes": c["notes"], "outcome": "traceback",
                                        "cause": "worker died", "message": f"exit code {s['proc'].exitcode}"})
                        s.update(spawn())
                    s["case"] = None
                elif time.perf_counter() - s["since"] > hard:
                    c = s["case"]
                    s["proc"].kill()
                    s["proc"].join()
                    results.append({"index": c["index"], "kind": c["kind"], "notes": c["notes"], "outcome": "hang",
                                    "cause": "hard timeout: " + ", ".join(c["notes"])[:120]})
                    s.update(spawn())
                    s["case"] = None
            if progress and len(results) and len(results) % 250 == 0 and len(results) != shown[0]:
                shown[0] = len(results)
                bad = [f"{r['index']}:{r['outcome']}:{r.get('cause')}" for r in results if r["outcome"] not in ("ok", "clean")]
                print(f"  {len(results)} cases, {time.perf_counter() - t0:.0f} s; not clean/ok: {bad[-5:]}", file=sys.stderr, flush=True)
        for s in slots:
            s["conn"].send(None)
            s["proc"].join(timeout=5)
    return sorted(results, key=lambda r: r["index"])


def report(results: list[dict], show: int = 2) -> dict:
    counts = Counter(r["outcome"] for r in results)
    unnamed = sum(1 for r in results if r["outcome"] == "clean" and not r.get("named"))
    by_cause: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        if r["outcome"] in ("traceback", "hang", "slow", "violation", "accepted"):
            by_cause[r["outcome"]][r.get("cause", "?")].append(r["index"])
    return {
        "cases": len(results),
        "clean_errors": counts["clean"],
        "clean_errors_unnamed": unnamed,
        "successes": counts["ok"],
        "tracebacks": counts["traceback"],
        "hangs": counts["hang"],
        "slow": counts["slow"],
        "invariant_violations": counts["violation"],
        "invalid_accepted": counts["accepted"],
        "by_kind": dict(Counter(r["kind"] for r in results)),
        "causes": {o: {c: {"count": len(ix), "cases": ix[:show]} for c, ix in sorted(d.items(), key=lambda kv: -len(kv[1]))}
                   for o, d in by_cause.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--start", type=int, default=0, help="first case index")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--kinds", choices=KIND_SETS, default="all",
                    help="inputs: the cases of earlier runs (scenarios, traces, models, scenario text, command lines); "
                    "faces: study and search files, offload-plan, report folders; profile: calibration profile folders, "
                    "SIMKIT_PROFILE_PATH, calibrate/validate command lines; all: every kind (default)")
    ap.add_argument("--case", type=int, help="run this one case here and print everything about it")
    ap.add_argument("--json", help="write the report (and every non-clean outcome) here")
    ap.add_argument("--unnamed", type=int, default=0, help="also print this many clean errors that name nothing")
    a = ap.parse_args(argv)
    if a.case is not None:
        case = make_case(a.seed, a.case, a.kinds)
        print(json.dumps({k: v for k, v in case.items() if k != "files"}, indent=1, default=repr)[:4000])
        with tempfile.TemporaryDirectory() as tmp:
            res = run_case(case, Path(tmp), a.timeout)
        print(json.dumps(res, indent=1)[:6000])
        return 0
    t0 = time.perf_counter()
    results = run_many(a.seed, list(range(a.start, a.start + a.cases)), a.workers, a.timeout, kinds=a.kinds)
    rep = report(results)
    rep["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({k: v for k, v in rep.items() if k != "causes"}, indent=1))
    for outcome, causes in rep["causes"].items():
        print(f"{outcome}:")
        for cause, info in causes.items():
            print(f"  {info['count']:5d}  {cause}   (e.g. --case {info['cases'][0]})")
    if a.unnamed:
        for r in [r for r in results if r["outcome"] == "clean" and not r.get("named")][: a.unnamed]:
            print(f"  unnamed: case {r['index']}: {r.get('message')}")
    if a.json:
        Path(a.json).write_text(json.dumps({"report": rep, "problems": [r for r in results if r["outcome"] not in ("ok", "clean")]},
                                           indent=1, default=repr))
    bad = rep["tracebacks"] + rep["hangs"] + rep["invariant_violations"] + rep["invalid_accepted"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
