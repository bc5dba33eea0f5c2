"""GPU calibration profiles from public measurements: the Vidur project's operator and collective timings.

Vidur (Microsoft, MIT licence; Agrawal et al., "Vidur: A Large-Scale Simulation Framework for LLM
Inference", MLSys 2024) publishes per-operator CUDA timings of five models on H100, A100 and A40
(fp16, ``compute/<gpu>/<org>/<model>/mlp.csv``) and NCCL collective timings per node type
(``network/<node>/{all_reduce,send_recv}.csv``). This module turns them into simkit samples and
fits the shipped profiles ``calibration/profiles/{h100-sxm,a100-80gb-sxm,a40}-vidur``::

    simkit calibrate import-profiles --root ../shared/data/gpu-profiles --gpu h100 \\
        --out calibration/profiles/h100-sxm-vidur
    python -m simkit.calibrate.vidur --root ../shared/data/gpu-profiles --gpu all --out calibration/profiles

Operator mapping (each row of ``mlp.csv`` is one (num_tokens, TP degree); times are medians in
ms). Every Vidur operator becomes the canonical simkit operator with the per-GPU shape and
FLOPs/bytes that :func:`simkit.cost.ops.token_ops` produces for the model at that TP degree
(Megatron sharding; the data confirm it: every projection and the activation halve from TP1 to
TP2, norms, residual add and the embedding do not):

==========================  ===============  =======================================================
Vidur                       simkit           per-GPU shape
==========================  ===============  =======================================================
attn_pre_proj               qkv_proj         m=T, k=h, n=(heads + 2 kv_heads) d / tp
attn_post_proj              o_proj           m=T, k=heads d / tp, n=h
mlp_up_proj                 mlp_up           m=T, k=h, n=(2 if gated else 1) ffn / tp
mlp_down_proj               mlp_down         m=T, k=ffn / tp, n=h
mlp_act                     mlp_act          numel=T ffn / tp
attn_rope                   rope             numel=T (heads + kv_heads) d / tp (partial RoPE too)
input_layernorm             input_norm       numel=T h
post_attention_layernorm    post_attn_norm   numel=T h
add                         residual_add     numel=T h (parallel block: 2 additions' bytes)
emb                         embedding        numel=T h
==========================  ===============  =======================================================

The ``kernel`` column names the kernel where the model's config makes it differ from the
Llama-style one (:func:`simkit.cost.ops.elementwise_kernels`): phi-2's norms are ``layernorm``,
its activation ``gelu_new`` (not gated), its residual add ``add3`` (parallel attention/MLP
block) and its RoPE ``partial_rope``; the fit treats each as a kernel kind of its own.

Vidur has no attention timings in these files: the attention classes of the imported profiles
stay on the datasheet defaults, ``measured: false``, and say so.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simkit.errors import CalibrationError, SimkitError
from simkit.specs.calibration import HostOverhead, make_fingerprint
from simkit.units import comma_items

GPU_CATALOG = {"h100": "h100-sxm", "a100": "a100-80gb-sxm", "a40": "a40"}
GPU_DEVICE_NAME = {"h100": "NVIDIA H100 80GB HBM3", "a100": "NVIDIA A100-SXM4-80GB", "a40": "NVIDIA A40"}
"""The names torch/nvidia-smi report for the products Vidur measured (H100 SXM 80 GB, A100 SXM 80 GB, A40)."""
GPU_HOST_OVERHEAD = HostOverhead(
    4e-3,
    0.0,
    "published, not measured by simkit: a synchronous serving engine (vLLM <= 0.5, which schedules, prepares "
    "inputs and processes outputs between GPU steps) leaves the GPU idle ~4 ms per decode iteration on an H100 "
    "(vLLM RFC 'Multi-Step Scheduling', github.com/vllm-project/vllm/issues/6854, 2024: 5-13 ms GPU bubbles, ~4 ms "
    "per decode step in its trace; the vLLM v0.6.0 blog, 2024-09-05, profiles Llama-3-8B on one H100 at 29% of the "
    "time in scheduling vs 38% on the GPU, ~3.8 ms per ~5 ms GPU step). No per-sequence slope is published: 0. "
    "Engines that overlap host work with the GPU (vLLM >= 0.6 async output/multi-step, vLLM V1, SGLang's overlap "
    "scheduler) hide most of it: set plan.execution.iteration_overhead for them",
)
"""Host time per iteration the Vidur GPU profiles carry (the Vidur data times operators only)."""
GPU_DESCRIPTION = {
    "h100": "NVIDIA H100 80GB HBM3 (SXM), as measured by the Vidur project",
    "a100": "NVIDIA A100 80GB (SXM), as measured by the Vidur project",
    "a40": "NVIDIA A40 48GB, as measured by the Vidur project",
}
NETWORK_NODES = {
    "h100": {"h100_dgx": "nvswitch", "h100_pairwise_nvlink": "pairwise_nvlink"},
    "a100": {"a100_dgx": "nvswitch", "a100_pairwise_nvlink": "pairwise_nvlink"},
    "a40": {"a40_pairwise_nvlink": "pairwise_nvlink"},
}
VIDUR_OPS = {
    "emb": "embedding",
    "input_layernorm": "input_norm",
    "attn_pre_proj": "qkv_proj",
    "attn_rope": "rope",
    "attn_post_proj": "o_proj",
    "post_attention_layernorm": "post_attn_norm",
    "mlp_up_proj": "mlp_up",
    "mlp_act": "mlp_act",
    "mlp_down_proj": "mlp_down",
    "add": "residual_add",
}
LINEAR = ("qkv_proj", "o_proj", "mlp_up", "mlp_down")
CATALOG_MODELS = {
    "microsoft/phi-2": "phi-2",
    "meta-llama/Llama-2-7b-hf": "llama-2-7b",
    "meta-llama/Llama-2-70b-hf": "llama-2-70b",
    "codellama/CodeLlama-34b-Instruct-hf": "codellama-34b",
    "Qwen/Qwen-72B": "qwen-72b",
}
LICENSE = (
    "MIT (the Vidur project, Copyright (c) Microsoft Corporation; see calibration/LICENSE-vidur-MIT.txt). "
    "The fitted parameters are derived from those measurements."
)
SOURCE = (
    "Vidur GPU profiling data (github.com/microsoft/vidur, data/profiling/{compute,network}): per-operator "
    "CUDA timings of phi-2, Llama-2-7B/70B, CodeLlama-34B and Qwen-72B at 1-4096 tokens and TP 1/2/4/8, "
    "fp16, and NCCL all_reduce/send_recv timings; imported with `simkit calibrate import-profiles`"
)
TARGET = {"median_ape": 0.05, "p90_ape": 0.12}
"""The leave-one-model-out goal for linear layers (each left-out model, each GPU)."""


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def _model_spec(name: str, r0: Any) -> Any:
    """The catalog ModelSpec of a Vidur model when its dims match the data, else one built from them."""
    from simkit.specs.catalog import default_catalog
    from simkit.specs.model import ModelSpec

    cat_name = CATALOG_MODELS.get(name)
    dims = dict(
        hidden_size=int(r0["n_embd"]), num_heads=int(r0["n_head"]), num_kv_heads=int(r0["n_kv_head"]),
        ffn_size=int(r0["n_expanded_embd"]), gated_mlp=bool(r0["use_gated_mlp"]),
    )  # fmt: skip
    if cat_name:
        try:
            spec = default_catalog().get("model", cat_name)
        except SimkitError:
            spec = None
        if spec is not None and all(getattr(spec, k) == v for k, v in dims.items()):
            return spec
    return ModelSpec(
        name=name.replace("/", "-"), family="vidur", num_layers=1, vocab_size=int(r0.get("vocab_size", 32000)),
        max_context=4096, **dims,
    )  # fmt: skip


def compute_samples(root: str | Path, gpu: str) -> Any:
    """Every (model, tokens, TP, operator) of ``compute/<gpu>/*/*/mlp.csv`` as simkit sample rows."""
    import pandas as pd

    from simkit.cost.ops import Precision, token_ops

    base = Path(root) / "compute" / gpu
    files = sorted(base.glob("*/*/mlp.csv"))
    if not files:
        raise CalibrationError(f"no Vidur compute profiles (compute/{gpu}/<org>/<model>/mlp.csv)", where=str(base))
    prec = Precision("fp16", "fp16", "fp16")
    rows: list[dict[str, Any]] = []
    for f in files:
        name = f"{f.parent.parent.name}/{f.parent.name}"
        try:
            d = pd.read_csv(f)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise CalibrationError(f"unreadable Vidur profile ({e.__class__.__name__})", where=str(f)) from None
        need = {"n_head", "n_kv_head", "n_embd", "n_expanded_embd", "use_gated_mlp", "num_tokens", "num_tensor_parallel_workers"}
        if missing := need - set(d.columns):
            raise CalibrationError(f"missing columns {sorted(missing)}", where=str(f))
        spec = _model_spec(name, d.iloc[0])
        src = f"vidur/{name}"
        for (T, tp), g in d.groupby(["num_tokens", "num_tensor_parallel_workers"]):
            ops = {o.name: o for o in token_ops(spec, float(T), 0.0, int(tp), prec)}
            for vop, cop in VIDUR_OPS.items():
                col = f"time_stats.{vop}.median"
                if col not in g.columns or cop not in ops:
                    continue
                o = ops[cop]
                for t_ms in g[col].values:
                    if not np.isfinite(t_ms) or t_ms <= 0:
                        continue
                    rows.append(
                        {
                            "op_class": o.op_class, "op": cop, "dtype": "fp16",
                            "m": o.shape.get("m"), "n": o.shape.get("n"), "k": o.shape.get("k"),
                            "numel": o.shape.get("numel"), "tokens": float(T),
                            "flops": o.flops, "bytes_moved": o.bytes, "time_s": float(t_ms) * 1e-3,
                            "source": src, "tp": int(tp), "vidur_op": vop, "kernel": o.kernel,
                        }
                    )  # fmt: skip
    return _frame(rows)


def network_samples(root: str | Path, gpu: str) -> Any:
    """Collective timings of the node types of ``gpu`` (``size`` fp16 elements -> bytes = 2 size)."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for node, topo in NETWORK_NODES.get(gpu, {}).items():
        for kind in ("all_reduce", "send_recv"):
            f = Path(root) / "network" / node / f"{kind}.csv"
            if not f.exists():
                continue
            try:
                d = pd.read_csv(f)
            except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
                raise CalibrationError(f"unreadable Vidur profile ({e.__class__.__name__})", where=str(f)) from None
            col = f"time_stats.{kind}.median"
            for c in (col, "size", "num_workers", "devices_per_node"):
                if c not in d.columns:
                    raise CalibrationError(f"missing column {c!r}", where=str(f))
            for _, r in d.iterrows():
                p, dpn = int(r["num_workers"]), int(r["devices_per_node"])
                t = float(r[col]) * 1e-3
                if not np.isfinite(t) or t <= 0:
                    continue
                rows.append(
                    {
                        "op_class": "collective", "op": kind, "dtype": "fp16", "numel": float(r["size"]),
                        "bytes": 2.0 * float(r["size"]), "time_s": t, "source": f"vidur/network/{node}",
                        "num_gpus": p, "devices_per_node": dpn,
                        "topology": topo if dpn >= p else f"{topo}_internode",
                    }
                )  # fmt: skip
    return _frame(rows)


SAMPLE_COLUMNS = (
    "op_class", "op", "dtype", "m", "n", "k", "numel", "batch", "tokens", "ctx", "heads", "kv_heads",
    "head_dim", "bytes", "flops", "bytes_moved", "time_s", "time_s_p10", "time_s_p90", "reps", "source", "tp",
)  # fmt: skip
EXTRA_COLUMNS = ("num_gpus", "devices_per_node", "topology", "vidur_op", "kernel")


def _frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    df = pd.DataFrame(rows)
    for c in (*SAMPLE_COLUMNS, *EXTRA_COLUMNS):
        if c not in df.columns:
            df[c] = np.nan
    return df[[*SAMPLE_COLUMNS, *EXTRA_COLUMNS]]


def samples(root: str | Path, gpu: str) -> Any:
    import pandas as pd

    return pd.concat([compute_samples(root, gpu), network_samples(root, gpu)], ignore_index=True)


def device_facts(gpu: str) -> dict[str, Any]:
    if gpu not in GPU_CATALOG:
        raise CalibrationError(f"unknown Vidur GPU {gpu!r} (expected one of {', '.join(GPU_CATALOG)})")
    from simkit.calibrate.fit import roof_from_device

    facts: dict[str, Any] = {
        "kind": "gpu",
        "catalog": GPU_CATALOG[gpu],
        "description": GPU_DESCRIPTION[gpu],
        "measured_by": "the Vidur project (not by simkit); clocks, driver and torch versions not published",
        "dtypes": ["fp16"],
    }
    roof = roof_from_device(facts)
    facts["peak_flops"] = dict(roof.peak_flops)
    facts["mem_bandwidth"] = roof.mem_bandwidth
    facts["sm_count"] = roof.sm_count
    facts["roofline_source"] = f"datasheet peaks of catalog GPU {GPU_CATALOG[gpu]} (hw_specs/gpus)"
    from simkit.specs.catalog import default_catalog

    item = default_catalog().get("gpu", GPU_CATALOG[gpu])
    # what is known of the measured GPUs (the product, hence its SM count and memory); Vidur does not
    # publish clocks, driver, CUDA or torch versions: those stay unknown
    facts["fingerprint"] = make_fingerprint(
        "gpu", {"name": GPU_DEVICE_NAME[gpu], "sm_count": item.sm_count, "memory_bytes": int(item.memory)}
    )
    return facts


# ---------------------------------------------------------------------------------------------
# Leave-one-model-out
# ---------------------------------------------------------------------------------------------
def model_of(source: str) -> str:
    return str(source).split("/")[-1]


def lomo_table(samples_df: Any, device: dict[str, Any], op_class: str, ops: Sequence[str] | None = None) -> Any:
    """Leave-one-model-out error of ``op_class`` (fit on the other models, predict every ``ops``
    row of the left-out one), with the datasheet defaults' error on the same rows."""
    from simkit.calibrate.fit import leave_one_out

    df = samples_df[samples_df.op_class == op_class]
    df = df.assign(model=df.source.astype(str).map(model_of))
    return leave_one_out(df, "model", op_class=op_class, device=device, ops=ops, datasheet=True)


def _cv_entry(table: Any, what: str) -> dict[str, Any]:
    per = {
        str(r["group"]): {
            "median_ape": round(float(r["median_ape"]), 4),
            "p90_ape": round(float(r["p90_ape"]), 4),
            "n": int(r["n"]),
            "datasheet_median_ape": round(float(r["datasheet_median_ape"]), 4),
            "datasheet_p90_ape": round(float(r["datasheet_p90_ape"]), 4),
        }
        for _, r in table.iterrows()
    }
    return {
        "method": "leave-one-model-out: fit on the other models' samples, predict every row of the left-out model",
        "scored": what,
        "per_model": per,
    }


def import_vidur(root: str | Path, gpu: str, out_dir: str | Path | None = None, *, cross_validate: bool = True,
                 progress: Any = None) -> Any:  # fmt: skip
    """Read Vidur's data for ``gpu`` (h100, a100, a40), fit a profile and (with ``out_dir``) save it."""
    from simkit.calibrate.fit import fit_profile

    say = progress or (lambda s: print(s, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    df = samples(root, gpu)
    dev = device_facts(gpu)
    say(f"{gpu}: {len(df)} samples read in {time.perf_counter() - t0:.1f} s")
    cv: dict[str, Any] = {}
    if cross_validate:
        t1 = time.perf_counter()
        cv["gemm"] = _cv_entry(lomo_table(df, dev, "gemm", LINEAR), "linear layers (qkv_proj, o_proj, mlp_up, mlp_down), every token count and TP degree")
        cv["elementwise"] = _cv_entry(lomo_table(df, dev, "elementwise"), "norms, activation, RoPE, residual add, embedding; every token count and TP degree")
        say(f"{gpu}: leave-one-model-out in {time.perf_counter() - t1:.1f} s")
    notes = {
        "gemm": "fitted on the Vidur projections (qkv, o, mlp up/down) of five models at TP 1/2/4/8",
        "elementwise": "fitted on the Vidur norms, activation, RoPE, residual add and embedding of five models",
        "attn_prefill": "no attention timings in the source data: datasheet default efficiency, not a measurement",
        "attn_decode": "no attention timings in the source data: datasheet default efficiency, not a measurement",
    }
    name = f"{GPU_CATALOG[gpu]}-vidur"
    prof = fit_profile(df, dev, name=name, source=SOURCE, license=LICENSE, notes=notes, cross_validation=cv)
    prof.host = GPU_HOST_OVERHEAD
    say(f"{gpu}: fitted in {time.perf_counter() - t0:.1f} s")
    if out_dir is not None:
        from simkit.calibrate.store import save_profile

        path = save_profile(prof, out_dir)
        say(f"{gpu}: wrote {path}")
    return prof


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simkit calibrate import-profiles",
        description="Import the Vidur project's public H100/A100/A40 measurements as calibration profiles.",
    )
    p.add_argument("--root", required=True, help="folder with compute/ and network/ (Vidur data/profiling)")
    p.add_argument("--gpu", required=True, help="h100, a100, a40, or 'all'")
    p.add_argument("--out", required=True, help="profile folder (with --gpu all: the parent folder, one <gpu>-vidur each)")
    p.add_argument("--no-cv", action="store_true", help="skip the leave-one-model-out evaluation stored in the profile")
    return p


def main_import_profiles(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        gpus = list(GPU_CATALOG) if args.gpu == "all" else comma_items(args.gpu)
    except ValueError:
        parser.error(f"--gpu takes a comma-separated list of {', '.join(GPU_CATALOG)} or all, got {args.gpu!r}")
    try:
        for g in gpus:
            if g not in GPU_CATALOG:
                raise CalibrationError(f"unknown GPU {g!r} (expected one of {', '.join(GPU_CATALOG)} or all)")
            out = Path(args.out) / f"{GPU_CATALOG[g]}-vidur" if args.gpu == "all" or len(gpus) > 1 else Path(args.out)
            import_vidur(args.root, g, out, cross_validate=not args.no_cv)
    except SimkitError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main_import_profiles(sys.argv[1:]))
