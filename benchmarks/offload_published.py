"""simkit against published offloaded-inference throughputs (FlexGen, ZeRO-Inference).

    python benchmarks/offload_published.py [--rows SUBSTRING] [--no-docs] [--breakdown]
    python benchmarks/offload_published.py --policies

``--policies`` simulates, instead, the policies FlexGen published for its prompt-256 T4 rows
(``FLEXGEN_POLICIES``) exactly as configured, against the same published throughputs: it
separates simkit's costs from its search (docs/offloading.md).

Reads ``../shared/data/published/offload_results.yaml`` (see ../shared/data/README.md) and, for
every row:

- FlexGen on the GCP T4 VM (``flexgen_t4_*``): the policy is not published, so simkit's placement
  optimiser (``simkit offload-plan``) searches the same machine (``gcp-t4-vm``) and workload
  (prompt/generation length), uncompressed for "FlexGen" and, for "FlexGen (c)", with the KV
  cache in 4 bits and the weights in 4 bits or 16 as the search finds best (FlexGen
  benchmark/flexgen/bench_suite.py: every published (c) policy runs --compress-cache, OPT-6.7B's
  and OPT-175B's --compress-weight too), and simkit's best confirmed plan's simulated throughput
  is compared with the published best. FlexGen's runtime is described by ``dequant: unfused`` (its PyTorch int4
  kernels) and ``decode_overlap: false`` (its decode copies follow compute: docs/offloading.md).
- ZeRO-Inference and FlexGen on one RTX A6000 (``zeroinf_a6000_*``): simulated as configured on
  ``lambda-a6000-workstation``: the stated batch (one GPU batch), weights on CPU or disk, 4-bit
  weights (group 64) or not, KV cache on the GPU or offloaded to the CPU (attention where the KV
  lives), the pinning the published runs used (``run_*_a6000.sh``: FlexGen ``--pin-weight 0``;
  ZeRO-Inference ``--pin-memory 1`` for OPT-30B, OPT-66B and LLaMA-2-70B without KV offload,
  0 for OPT-175B and BLOOM-176B and for every run with KV offload: ``ZERO_PINNED``).

Throughput = generated tokens / (prefill + decode time), as both systems report it. Prints the
table, the median and p90 absolute % error per system and overall, and the Spearman rank
correlation of simkit's throughputs with the published ones; rewrites the section
"Offloading against published systems" of docs/fidelity.md (other sections are left alone).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "published" / "offload_results.yaml"
DOC = ROOT / "docs" / "fidelity.md"
SECTION = "## Offloading against published systems (FlexGen, ZeRO-Inference)"
T4_NODE = "gcp-t4-vm"
A6000_NODE = "lambda-a6000-workstation"
GROUP_SIZE_A6000 = 64
"""Quantisation group of both systems' 4-bit weights (ZeRO-Inference README: default 64;
FlexGen CompressionConfig(num_bits=4, group_size=64))."""
TARGET_MEDIAN, TARGET_P90, TARGET_SPEARMAN = 0.15, 0.30, 0.9
FLEXGEN_T4_EXECUTION = {"cuda_module_loading": "eager"}
"""FlexGen's T4 VM stack (FMInference/FlexGen docs/gcp_setup.md: CUDA 11.6, driver 510.39.01,
PyTorch cu116 wheels) loads CUDA modules eagerly (lazy loading needs CUDA 11.7): a 667 MB context."""
ZERO_PINNED = frozenset({"opt-30b", "opt-66b", "llama-2-70b"})
"""Models whose ZeRO-Inference run without KV offload pinned its weights (``--pin-memory 1`` in
DeepSpeedExamples zero_inference run_opt30b/run_opt66b/run_llama2_70b_a6000.sh); the OPT-175B
and BLOOM-176B runs (run_opt175b/run_bloom175b_a6000.sh) and every KV-offload run used
``--pin-memory 0`` (the script's default: pageable host memory)."""


FLEXGEN_POLICIES: dict[str, dict[str, Any]] = {
    "flexgen_t4_s256_n32_flexgen_opt-6.7b": {"percent": (100, 0, 100, 0, 100, 0), "gbs": 4, "ngb": 1, "overlap": False},
    "flexgen_t4_s256_n32_flexgen_c_opt-6.7b": {"percent": (100, 0, 100, 0, 100, 0), "gbs": 128, "ngb": 1, "overlap": False,
                                               "compress_weight": True, "compress_cache": True},
    "flexgen_t4_s256_n32_flexgen_opt-30b": {"percent": (10, 90, 0, 100, 0, 100), "gbs": 160, "ngb": 2, "cpu": True},
    "flexgen_t4_s256_n32_flexgen_c_opt-30b": {"percent": (0, 100, 0, 100, 0, 100), "gbs": 128, "ngb": 8, "compress_cache": True},
    "flexgen_t4_s256_n32_flexgen_opt-175b": {"percent": (0, 50, 0, 0, 0, 100), "gbs": 64, "ngb": 8, "cpu": True, "pin_weight": False},
    "flexgen_t4_s256_n32_flexgen_c_opt-175b": {"percent": (0, 100, 0, 100, 0, 100), "gbs": 96, "ngb": 3, "pin_weight": False,
                                               "compress_weight": True, "compress_cache": True},
}
"""FlexGen's published policies for its prompt-256 / generation-32 T4 rows (FMInference/FlexGen
benchmark/flexgen/bench_suite.py, whose comments give the rows' throughputs; OPT-30B (c)'s is
commented out there). ``percent``: weights, KV cache and activations on the GPU and the CPU, the
rest on disk (``--percent``); ``cpu``: ``--cpu-cache-compute`` (attention on the CPU);
``pin_weight``: ``--pin-weight`` (default true); ``overlap``: ``--overlap`` (default true)."""


def flexgen_policy_offload(pol: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """plan.offload of a FlexGen policy (FLEXGEN_POLICIES), run with FlexGen's kernels and decode
    schedule; an all-GPU policy still runs layer by layer in the offloading runtime, as the
    optimiser's all-GPU plans do (offload_opt.Candidate.offload_dict)."""
    wg, wc, cg, cc, hg, hc = (v / 100.0 for v in pol["percent"])

    def share(g: float, c: float) -> dict[str, float]:
        return {"gpu": g, "cpu": c, "disk": round(1.0 - g - c, 6)}

    off: dict[str, Any] = {
        "weights": share(wg, wc),
        "kv_cache": share(cg, cc),
        "activations": share(hg, hc),
        "gpu_batch_size": pol["gbs"],
        "num_gpu_batches": pol["ngb"],
        "cpu_attention": pol.get("cpu", False),
        "compress_weights": pol.get("compress_weight", False),
        "compress_kv": pol.get("compress_cache", False),
        "pinned": pol.get("pin_weight", True),
        "overlap": pol.get("overlap", True),
        "dequant": "unfused",
        "kv_dequant": "allocated",
        "lm_head_copy": True,
        "decode_overlap": False,
        "disk_relay": "fp16",
    }
    if wg == 1.0:
        off["resident_layers"] = num_layers
    return off


def run_policies() -> str:
    """FlexGen's published policies simulated as configured, against the published throughputs."""
    import yaml

    from simkit.scenario import scenario_from_dict
    from simkit.simulate import simulate
    from simkit.specs.catalog import load_model

    rows = {r["id"]: r for r in yaml.safe_load(DATA.read_text())["rows"]}
    lines = [f"{'row (FlexGen policy as published)':64s} {'published':>10s} {'simkit':>9s} {'error':>8s}", "-" * 96]
    for rid, pol in FLEXGEN_POLICIES.items():
        row = rows[rid]
        w = row["workload"]
        data = _base(T4_NODE, model_name(row), pol["gbs"] * pol["ngb"], int(w["prompt_len"]), int(w["gen_len"]), 64)
        data["plan"]["offload"] = flexgen_policy_offload(pol, load_model(model_name(row)).num_layers)
        data["plan"]["execution"] = dict(FLEXGEN_T4_EXECUTION)
        tps = float(simulate(scenario_from_dict(data, where=f"<{rid}>")).summary["output_tokens_per_s"])
        pub = float(row["metric"]["value"])
        lines.append(f"{rid:64s} {pub:10.3f} {tps:9.3f} {100 * (tps / pub - 1.0):+7.1f}%")
    return "\n".join(lines)


def model_name(row: dict[str, Any]) -> str:
    return str(row["model"]["name"]).lower()


def _base(hardware: str, model: str, batch: int, prompt: int, gen: int, group: int) -> dict[str, Any]:
    return {
        "name": "published-offload",
        "hardware": hardware,
        "model": model,
        "workload": {"batch": {"num_prompts": batch, "input_tokens": prompt, "output_tokens": gen}},
        "plan": {
            "batching": {"policy": "static"},
            "precision": {"weights": "fp16", "activations": "fp16", "kv_cache": "fp16", "group_size": group},
        },
        "calibration": "none",
        "seed": 0,
    }


def a6000_offload(row: dict[str, Any]) -> dict[str, Any]:
    """The plan.offload a ZeRO-Inference / FlexGen A6000 row ran (from its policy string, system and model)."""
    pol = str(row["policy"])
    batch = int(row["workload"]["batch"])
    flexgen = row["system"] == "FlexGen"
    quant = pol.startswith("4-bit weights")
    kv_off = "+ KV offload" in pol or pol.startswith("no weight quant, KV offload")
    wtier = "disk" if pol.endswith("offloaded to disk") else "cpu"
    off: dict[str, Any] = {
        "weights": {"gpu": 0.0, wtier: 1.0},
        "kv_cache": {"gpu": 0.0, "cpu": 1.0} if kv_off else {"gpu": 1.0},
        "gpu_batch_size": batch,
        "num_gpu_batches": 1,
        "cpu_attention": kv_off,
        "compress_weights": quant,
        "overlap": True,
        # FlexGen (de)compresses int4 with its PyTorch kernels; ZeRO-Inference's are not known
        # to us, so its dequantisation stays the fused pass
        "dequant": "unfused" if flexgen else "fused",
        # FlexGen decompresses its whole GPU-resident compressed KV cache (no A6000 row compresses it)
        # and holds its own copy of OPT's tied LM head
        "kv_dequant": "allocated" if flexgen else "filled",
        "lm_head_copy": flexgen,
        # FlexGen's copy threads relay disk reads through fp16 buffers (copy_worker_func);
        # DeepSpeed's swap buffers keep the tensors' own type
        "disk_relay": "fp16" if flexgen else "native",
        # FlexGen's decode step copies the next layer after computing this one (its cost model,
        # fitted to its runs: T_gen = ctog + max(other terms)); ZeRO-Inference prefetches
        "decode_overlap": not flexgen,
        # FlexGen ran --pin-weight 0; ZeRO-Inference as its scripts set --pin-memory (ZERO_PINNED)
        "pinned": (not flexgen) and not kv_off and model_name(row) in ZERO_PINNED,
    }
    if kv_off and not flexgen and not model_name(row).startswith("bloom"):
        # ZeRO-Inference's Hugging Face fork (tjruwase/transformers kvcache-offload-cpu) allocates
        # the host KV buffer of OPT and LLaMA with torch.empty (fp32, the default dtype) and
        # attends it in fp32 in place; BLOOM's buffer takes the model's dtype (fp16) and is
        # upcast at every step (key_layer.float()), as FlexGen's is
        off["host_kv_dtype"] = "fp32"
    if kv_off and not flexgen:
        # the fork's attention writes its copies of the cached KV (BLOOM's .float(), LLaMA's
        # repeat_kv) into new tensors every layer and step; FlexGen's --cpu-cache-compute copies
        # into a workspace allocated once (flex_opt.py load_cache, path 1); OPT's fork reads its
        # fp32 buffer in place and writes none
        off["host_temporaries"] = "fresh"
    if flexgen:
        # FlexGen's runs (run_*_a6000.sh) keep the KV cache and activations on the CPU
        # (--percent 0 100 0 100 0 100; a batch of 280 has 209 GB of OPT-30B KV): its "KV cache
        # offload" column is --cpu-cache-compute, attention on the CPU where the KV lives;
        # without it the KV is fetched to the GPU for every layer
        off["kv_cache"] = {"gpu": 0.0, "cpu": 1.0}
        off["activations"] = {"gpu": 0.0, "cpu": 1.0}
    return off


def simulate_row(row: dict[str, Any]) -> dict[str, Any]:
    from simkit.policies.offload import static_kv_blocks
    from simkit.scenario import scenario_from_dict
    from simkit.search.offload import optimize
    from simkit.simulate import simulate

    w = row["workload"]
    prompt, gen = int(w["prompt_len"]), int(w["gen_len"])
    if row["id"].startswith("flexgen_t4"):
        comp = row["system"] == "FlexGen (c)"
        data = _base(T4_NODE, model_name(row), 1, prompt, gen, 64)
        # FlexGen (de)compresses int4 with its PyTorch kernels (plan.offload.dequant: unfused)
        # and its decode step copies the next layer after computing this one (decode_overlap)
        # and decompresses its whole GPU-resident KV cache at every decode step (kv_dequant), holds its
        # own copy of OPT's tied LM head (lm_head_copy), relays disk reads through fp16 buffers
        # (disk_relay) and ran on CUDA 11.6 (FLEXGEN_T4_EXECUTION)
        data["plan"]["offload"] = {"weights": {"gpu": 0.0, "cpu": 1.0}, "dequant": "unfused", "kv_dequant": "allocated",
                                   "lm_head_copy": True, "decode_overlap": False, "disk_relay": "fp16"}
        data["plan"]["execution"] = dict(FLEXGEN_T4_EXECUTION)
        sc = scenario_from_dict(data, where=f"<{row['id']}>")
        # FlexGen (c): the KV cache compressed, the weights as the search finds best (every
        # published (c) policy runs --compress-cache; OPT-6.7B and OPT-175B's --compress-weight too)
        cands = optimize(sc, prompt_len=prompt, gen_len=gen, compress=(False, True) if comp else (False,),
                         compress_kv=(True,) if comp else (False,))
        best = next((c for c in cands if c.sim.get("output_tokens_per_s")), None)
        if best is None:
            errs = "; ".join(str(c.sim.get("error")) for c in cands[:3])
            return {"throughput": float("nan"), "plan": f"no confirmed plan ({errs})"}
        fr = best.fractions
        plan = (
            f"gbs={best.gpu_batch_size}x{best.num_gpu_batches} w={_frac(fr['w'])} kv={_frac(fr['c'])} "
            f"act={_frac(fr['h'])}{' cpu-attn' if best.cpu_attention else ''}{' int4' if best.compress_weights else ''}"
            f"{' kv-int4' if best.compress_kv else ''}"
        )
        return {"throughput": float(best.sim["output_tokens_per_s"]), "plan": plan,
                "breakdown": breakdown(best.sim["makespan_s"], best.sim["busy_s"], best.sim["offload_compute_s"])}
    data = _base(A6000_NODE, model_name(row), int(w["batch"]), prompt, gen, GROUP_SIZE_A6000)
    data["plan"]["offload"] = a6000_offload(row)
    from simkit.errors import SimkitError

    try:
        sc = scenario_from_dict(data, where=f"<{row['id']}>")
        res = simulate(sc)
    except SimkitError as e:
        return {"throughput": float("nan"), "plan": f"refused: {e}"}
    kvp = sc.plan.kv_cache
    blocks = static_kv_blocks(int(w["batch"]), prompt, gen, kvp.block_size, kvp.watermark)
    if res.summary["kv_blocks_total"] < blocks:
        # the batch would run as several static batches: not the configuration published
        return {"throughput": float("nan"), "plan": f"KV for the batch does not fit ({res.summary['kv_blocks_total']} < {blocks} blocks)"}
    s = res.summary
    return {"throughput": float(s["output_tokens_per_s"]), "plan": _a6000_plan(data["plan"]["offload"]),
            "breakdown": breakdown(s["makespan_s"], {k: v["busy_s"] for k, v in s["resources"].items()}, s["offload_compute_s"])}


BREAKDOWN_LINKS = (("h2d", "h2d"), ("d2h", "d2h"), ("nvme_read", "disk-r"), ("nvme_write", "disk-w"))
BREAKDOWN_COMPUTE = (("linear", "lin"), ("gpu_attention", "gattn"), ("dequant", "deq"), ("cpu_attention", "cattn"))


def breakdown(span: float, busy: dict[str, float], compute: dict[str, float]) -> str:
    """Where a simulated run's time goes, in seconds: the run's span, each link direction's busy
    time, the compute parts (engine/offload.COMPUTE_PARTS), and how much of the work overlapped
    (1 - span / sum of the busy times of links, GPU compute and host attention)."""
    parts = [f"span {span:.3g}s"]
    parts += [f"{name} {busy[k]:.3g}" for k, name in BREAKDOWN_LINKS if busy.get(k)]
    parts += [f"{name} {compute[k]:.3g}" for k, name in BREAKDOWN_COMPUTE if compute.get(k)]
    total = sum(busy.get(k, 0.0) for k, _ in BREAKDOWN_LINKS) + sum(compute.values())
    if total > 0:
        parts.append(f"overlap {100 * max(1.0 - span / total, 0.0):.0f}%")
    return " ".join(parts)


def _frac(f: dict[str, float]) -> str:
    return "/".join(f"{t}{round(100 * v)}" for t, v in f.items() if v > 0)


def _a6000_plan(off: dict[str, Any]) -> str:
    w = "disk" if off["weights"].get("disk") else "cpu"
    kv = "cpu" if off["kv_cache"].get("cpu") else "gpu"
    return (
        f"b={off['gpu_batch_size']} w={w} kv={kv}{' cpu-attn' if off['cpu_attention'] else ''}"
        f"{' int4' if off['compress_weights'] else ''}{' pinned' if off['pinned'] else ' pageable'}"
    )


def system_of(row: dict[str, Any]) -> str:
    where = "T4" if row["id"].startswith("flexgen_t4") else "A6000"
    return f"{row['system']} ({where})"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def run(rows_filter: str | None = None, breakdown_out: bool = False) -> tuple[str, dict[str, Any]]:
    import yaml

    d = yaml.safe_load(DATA.read_text())
    rows = [r for r in d["rows"] if rows_filter is None or rows_filter in r["id"]]
    out = []
    for r in rows:
        t0 = time.perf_counter()
        s = simulate_row(r)
        pub = float(r["metric"]["value"])
        err = s["throughput"] / pub - 1.0
        out.append({"id": r["id"], "system": system_of(r), "published": pub, "simkit": s["throughput"], "error": err,
                    "plan": s["plan"], "breakdown": s.get("breakdown", ""), "seconds": time.perf_counter() - t0})
        print(f"{r['id']:64s} {pub:9.3f} {s['throughput']:9.3f} {100 * err:+7.1f}%  {s['plan']}", file=sys.stderr, flush=True)
        if breakdown_out:
            print(f"{'':64s} {s.get('breakdown', '')}", file=sys.stderr, flush=True)
    return render(out), {"rows": out}


INFERRED_FROM = (
    "zeroinf_a6000_zero_no_weight_quant_KV_offload_llama-2-70b",
    "zeroinf_a6000_zero_4-bit_weights_plus_KV_offload_llama-2-70b",
    "zeroinf_a6000_zero_4-bit_weights_plus_KV_offload_bloom-176b",
)
"""The rows the A6000 preset's ``host_first_touch_bandwidth`` (20 GB/s, an estimate: no
measurement of that host exists) was inferred from (hw_specs/nodes/lambda-a6000-workstation.yaml,
docs/offloading.md "Fresh host temporaries"): they are no independent check of it, so the summary
also reports the rows without them."""


def _stats(errs: list[float]) -> tuple[float, float]:
    a = np.abs(np.asarray(errs, dtype=np.float64))
    a = np.where(np.isnan(a), np.inf, a)
    return float(np.median(a)), float(np.quantile(a, 0.9, method="inverted_cdf"))


def render(out: list[dict[str, Any]]) -> str:
    lines = [
        f"{'row':64s} {'published':>10s} {'simkit':>9s} {'error':>8s}  plan",
        "-" * 120,
    ]
    for o in out:
        lines.append(f"{o['id']:64s} {o['published']:10.3f} {o['simkit']:9.3f} {100 * o['error']:+7.1f}%  {o['plan']}")
    lines.append("-" * 120)
    systems = sorted({o["system"] for o in out})
    for s in systems:
        e = [o["error"] for o in out if o["system"] == s]
        med, p90 = _stats(e)
        lines.append(f"{s:30s} n={len(e):2d}  median |error| {100 * med:6.1f}%  p90 |error| {100 * p90:6.1f}%")
    med, p90 = _stats([o["error"] for o in out])
    pub = np.array([o["published"] for o in out])
    sim = np.array([o["simkit"] for o in out])
    ok = ~np.isnan(sim)
    rho = spearman(pub[ok], sim[ok]) if ok.sum() > 2 else float("nan")
    lines.append(
        f"{'all rows':30s} n={len(out):2d}  median |error| {100 * med:6.1f}%  p90 |error| {100 * p90:6.1f}%  "
        f"Spearman {rho:.3f}  (targets: median <= {100 * TARGET_MEDIAN:.0f}%, p90 <= {100 * TARGET_P90:.0f}%, "
        f"Spearman >= {TARGET_SPEARMAN})"
    )
    held = [o["error"] for o in out if o["id"] not in INFERRED_FROM]
    if len(held) < len(out):
        med, p90 = _stats(held)
        lines.append(
            f"{'rows no rate was inferred from':30s} n={len(held):2d}  median |error| {100 * med:6.1f}%  p90 |error| {100 * p90:6.1f}%  "
            "(the A6000's host_first_touch_bandwidth was inferred from those rows)"
        )
    return "\n".join(lines)


def write_doc(table: str) -> None:
    text = DOC.read_text()
    body = (
        f"{SECTION}\n\n"
        "Generated by `python benchmarks/offload_published.py` (re-running replaces this section; about\n"
        "6-12 minutes on a loaded 2-core machine, most of it the OPT-175B plan searches). Published\n"
        "throughputs from `../shared/data/published/offload_results.yaml`: FlexGen on a GCP T4 VM (simkit's\n"
        "best `offload-plan` on `gcp-t4-vm` vs FlexGen's best after its own policy search) and\n"
        "ZeRO-Inference / FlexGen on one RTX A6000 (`lambda-a6000-workstation`, simulated as configured).\n"
        "Error = simkit / published - 1. How the offload model works, and what the remaining error comes\n"
        "from: docs/offloading.md.\n\n"
        f"```\n{table}\n```\n"
    )
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1 :] if nxt >= 0 else ""
        text = head + body + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", help="only rows whose id contains this")
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/fidelity.md")
    ap.add_argument("--breakdown", action="store_true",
                    help="print where each row's simulated time goes (link busy times, compute parts, overlap)")
    ap.add_argument("--policies", action="store_true",
                    help="simulate FlexGen's published T4 policies as configured instead (FLEXGEN_POLICIES)")
    ns = ap.parse_args(argv)
    t0 = time.perf_counter()
    if ns.policies:
        print(run_policies())
        print(f"({time.perf_counter() - t0:.0f} s)")
        return 0
    table, _ = run(ns.rows, ns.breakdown)
    print(table)
    print(f"({time.perf_counter() - t0:.0f} s)")
    if not ns.no_docs and ns.rows is None:
        write_doc(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
