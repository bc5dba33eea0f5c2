"""The ``simkit`` command line: thin, parses arguments and prints; the layers do the work.

Every user error (bad YAML, unknown name, a plan that does not fit, a corrupt trace) is one
line on stderr naming the file and key, with exit code 2. ``SIMKIT_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from simkit.errors import SimkitError
from simkit.units import comma_items


def _fmt_ms(x: Any) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "-"
    return "-" if v != v else f"{v * 1e3:,.1f} ms"


def _pp_part(s: dict[str, Any]) -> str:
    """`` pp=N`` where the plan is pipelined (pp > 1), else nothing."""
    pp = s.get("pp")
    return f" pp={pp}" if isinstance(pp, int) and pp > 1 else ""


def print_summary(s: dict[str, Any], out: Any = None, wall_s: float | None = None) -> None:
    w = (out or sys.stdout).write
    w(f"simkit: {s.get('model')} on {s.get('hardware')} ({s.get('device')}), policy {s.get('policy')}, "
      f"tp={s.get('tp')}{_pp_part(s)} replicas={s.get('replicas')}\n")
    w(f"  calibration      {s.get('calibration')}\n")
    for g in s.get("fleet_groups") or []:
        w(f"  fleet group      {g['replicas']} x {g['gpu']} (tp={g['tp']}): {g['requests_completed']} requests, "
          f"${g['cost_per_hour_usd']:.2f}/h\n")
    w(f"  requests         {s['requests_completed']} completed, {s['requests_rejected']} rejected, "
      f"{s['requests_unfinished']} unfinished of {s['requests_total']}\n")
    w(f"  makespan         {s['makespan_s']:.3f} s\n")
    w(f"  TTFT p50/p90/p99 {_fmt_ms(s['ttft_p50_s'])} / {_fmt_ms(s['ttft_p90_s'])} / {_fmt_ms(s['ttft_p99_s'])}"
      "  (includes queueing)\n")
    w(f"  queue p50/p99    {_fmt_ms(s['queue_p50_s'])} / {_fmt_ms(s['queue_p99_s'])}\n")
    w(f"  TPOT p50/p99     {_fmt_ms(s['tpot_p50_s'])} / {_fmt_ms(s['tpot_p99_s'])}\n")
    w(f"  TBT p50/p99      {_fmt_ms(s['tbt_p50_s'])} / {_fmt_ms(s['tbt_p99_s'])}\n")
    w(f"  E2E p50/p99      {_fmt_ms(s['e2e_p50_s'])} / {_fmt_ms(s['e2e_p99_s'])}\n")
    w(f"  throughput       {s['output_tokens_per_s']:,.1f} output tok/s, {s['total_tokens_per_s']:,.1f} total tok/s\n")
    if "goodput_requests_per_s" in s:
        w(f"  goodput          {s['goodput_requests_per_s']:.3f} req/s within SLO "
          f"({s['slo_attainment'] * 100:.1f}% of requests; SLO {'met' if s['slo_met'] else 'MISSED'})\n")
    w(f"  KV cache         {s['kv_blocks_total']} blocks, mean use {s['kv_utilization_mean'] * 100:.1f}%, "
      f"peak {s['kv_utilization_peak'] * 100:.1f}%, {s['preemptions']} preemptions, {s['swaps']} swaps\n")
    if s.get("prefix_cache_hit_rate"):
        tiers = ", ".join(f"{k} {v * 100:.1f}%" for k, v in s["prefix_cache_hit_rate_by_tier"].items() if v)
        w(f"  prefix cache     {s['prefix_cache_hit_rate'] * 100:.1f}% of prompt tokens hit ({tiers})\n")
    w(f"  cost             ${s['usd_per_million_output_tokens']:.3f} per million output tokens "
      f"(${s['cost_per_hour_usd']:.2f}/h); energy {s['energy_per_output_token_j']:.3f} J/token\n")
    if wall_s is not None:
        w(f"  simulated in     {wall_s:.3f} s wall, engine path: {s['engine_path']}\n")
    else:
        w(f"  engine path      {s['engine_path']}\n")
    if note := slow_path_note(str(s.get("engine_path", ""))):
        w(f"  slower path      {note}\n")


def slow_path_note(path: str) -> str | None:
    """``engine_path`` in words for a run that left the fast path (the reference engine, or
    offloaded steps / pipeline stages simulated event by event); None on the fast path."""
    import re

    parts = []
    if path.startswith("reference ("):
        parts.append(f"the reference engine ran the serving loop ({path[len('reference ('):].split(')')[0]})")
    for what, why in re.findall(r"; (offloaded steps|pipeline stages) event by event \((.*?)\)(?:;|,|$)", path):
        parts.append(f"{what} were simulated event by event ({why})")
    for n in re.findall(r", event by event for steps of more sequences than gpu_batch_size \((\d+)\)", path):
        parts.append(f"offloaded steps of more than gpu_batch_size ({n}) sequences were simulated event by event")
    if not parts:
        return None
    return ("; ".join(parts) + ": the same results as the fast path, only slower to simulate "
            "(docs/metrics.md, engine_path, says what runs where)")


# ---- subcommands -------------------------------------------------------------------------------
def cmd_run(a: argparse.Namespace) -> int:
    import gc

    own = getattr(a, "own_process", False)
    collecting = gc.isenabled()
    if own:
        # the process ends with this run (``_exit_without_teardown``): what the imports make
        # (modules, classes, schemas) lives until then, so the collector is off while they are
        # made (~90 collections that would find ~570 objects to free: ~1% of the 16k case's
        # instructions), and it is frozen after, so that no later collection walks it again
        # (each full one cost ~20 ms). The collector stays off while the run is simulated and
        # its outputs written: simulate() pauses it for the run anyway, and resuming it there
        # would start one collection over every object the run left alive (the iteration log's
        # rows: ~36,000 tuples in the 16k case, ~0.024 G instructions) only to free the run's
        # world (a few hundred objects in reference cycles), which the exit frees moments later.
        # It resumes (if it was on) for --report. Not when called in a longer-lived process,
        # whose uncollected garbage would be frozen with it and whose runs' cycles must be
        # collected.
        gc.disable()
        _system_allocator_for_arrow()
    from simkit.cachedir import one_run
    from simkit.scenario import load_scenario
    from simkit.simulate import simulate, write_outputs

    if own:
        gc.freeze()
    with one_run():  # this run's YAML parses and validated scenario come from the cache folder
        sc = load_scenario(a.scenario, a.set or [])
        res = simulate(sc, trace=a.trace_out is not None, engine=a.engine)
        for wmsg in res.warnings:
            warn_line(wmsg)
        if "simkit.calibrate.probe" in sys.modules:  # a start-up speed probe ran (a CPU profile of this machine)
            for note in sys.modules["simkit.calibrate.probe"].take_notes():
                print(f"note: {note}", file=sys.stderr)
        out = a.out or os.path.join("reports", sc.name)
        paths = write_outputs(res, out, a.trace_out, command=_command_line(a))
    print_summary(res.summary, wall_s=res.sim_wall_s)
    print(f"  wrote            {', '.join(str(p) for p in paths)}")
    if a.report:
        if own and collecting:
            gc.enable()  # the report is rendered in this process: its garbage is collected
        _write_report([out], a.report)
    return 0


def _system_allocator_for_arrow() -> None:
    """pyarrow's memory from the C library's allocator in a `simkit run` process (unless the
    user chose one: ``ARROW_DEFAULT_MEMORY_POOL``): its default, mimalloc, keeps ~17 MB more
    resident while the run folder's Parquet tables are written (the 16k case: peak RSS 118-120
    -> 98-101 MB), for a few short-lived buffers; the bytes written do not depend on the allocator.
    Read by pyarrow when it first allocates, so set before it is imported (the outputs import
    it); ``pyarrow.set_memory_pool`` would not do: the Parquet writer's own buffers come from
    Arrow's C++ default pool, which only the variable chooses. Only in the run's own process,
    which ends with the run."""
    if "pyarrow" not in sys.modules:
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


def _command_line(a: argparse.Namespace) -> str:
    import shlex

    return "simkit " + " ".join(shlex.quote(x) for x in a.argv)


def _write_report(dirs: list[str], out: str) -> None:
    from simkit.report import write_report

    p = write_report(dirs, out)
    print(f"  report           {p}")


def cmd_report(a: argparse.Namespace) -> int:
    _write_report(a.dirs, a.output)
    return 0


def cmd_schema(a: argparse.Namespace) -> int:
    from simkit.scenario import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _parse_tokens(text: str) -> list[int]:
    try:
        vals = [int(x) for x in comma_items(text)]
    except ValueError:
        raise SimkitError(f"--tokens: expected a comma-separated list of integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise SimkitError(f"--tokens: expected integers >= 1, got {text!r}")
    return vals


def cmd_estimate_ops(a: argparse.Namespace) -> int:
    import numpy as np

    from simkit.cost.device import ComputeDevice
    from simkit.cost.ops import Precision, forward_ops
    from simkit.cost.profile import resolve_calibration
    from simkit.cost.roofline import time_ops
    from simkit.specs.catalog import default_catalog, load_model

    cat = default_catalog()
    gpu = cat.get("gpu", a.gpu, key="--gpu")
    model = load_model(a.model, key="--model")
    if model.num_heads % a.tp:
        raise SimkitError(f"--tp {a.tp} does not divide the {model.num_heads} heads of {model.name}")
    device = ComputeDevice.from_gpu(gpu)
    eff, info, warn = resolve_calibration(a.calibration, "gpu", gpu.name)
    device = device.for_profile(eff, {})  # the roofline the profile's efficiencies refer to
    if warn:
        warn_line(warn)
    prec = Precision(a.dtype, a.dtype if a.dtype not in ("int4",) else "fp16", a.dtype if a.dtype != "int4" else "fp16")
    rows = []
    for n in _parse_tokens(a.tokens):
        ops = forward_ops(model, np.array([n]), np.array([0]), tp=a.tp, precision=prec, logits_rows=1)
        for ot in time_ops(ops, device, eff, prec.compute):
            measured = eff.is_measured(ot.op.op_class)
            rows.append(
                {
                    "op": ot.op.name,
                    "num_tokens": n,
                    "tp": a.tp,
                    "time_s": ot.time_s,
                    "flops": ot.op.flops,
                    "bytes": ot.op.bytes,
                    "count": ot.op.count,
                    "bound": ot.bound,
                    "efficiency": ot.efficiency,
                    "source": "measured" if measured else "default",
                }
            )
    cols = ["op", "num_tokens", "tp", "time_s", "flops", "bytes"]
    if a.format == "csv":
        extra = ["count", "bound", "efficiency", "source"]
        print(",".join(cols + extra))
        for r in rows:
            print(",".join(f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in cols + extra))
    else:
        print(f"# {model.name} on {gpu.name}, tp={a.tp}, {a.dtype}; calibration: {info}")
        print("# time_s is one occurrence on one GPU; count = occurrences per forward pass; collectives excluded")
        print(f"{'op':<16}{'tokens':>8}{'tp':>4}{'time_us':>12}{'GFLOP':>12}{'MB':>11}{'count':>7}  {'bound':<8}{'eff':>6}  source")
        for r in rows:
            print(f"{r['op']:<16}{r['num_tokens']:>8}{r['tp']:>4}{r['time_s'] * 1e6:>12.2f}{r['flops'] / 1e9:>12.3f}"
                  f"{r['bytes'] / 1e6:>11.3f}{r['count']:>7}  {r['bound']:<8}{r['efficiency']:>6.2f}  {r['source']}")
        unmeasured = sorted({r["op"] for r in rows if r["source"] == "default"})
        if unmeasured:
            print(f"# not measured (documented default efficiency): {', '.join(unmeasured)}")
    return 0


def cmd_catalog(a: argparse.Namespace) -> int:
    from simkit.specs.catalog import default_catalog

    cat = default_catalog()
    if a.action == "list":
        kinds = [a.kind] if a.kind else list(cat.items)
        for k in kinds:
            if k not in cat.items:
                raise SimkitError(f"unknown kind {k!r} (expected one of {', '.join(cat.items)})")
            names = cat.names(k)
            if not names:
                continue
            print(f"{k} ({len(names)}):")
            for n in names:
                desc = getattr(cat.items[k][n], "description", "")
                print(f"  {n:<28} {desc}")
        return 0
    if not a.name:
        raise SimkitError("catalog show needs a NAME")
    kind, item = cat.find(a.name)
    from simkit.specs.yamlio import load_yaml

    path = cat.file_of(kind, a.name)
    print(f"# {kind} {a.name}  ({path})")
    raw = load_yaml(path)
    srcs = raw.get("sources", {}) or {}
    for k, v in raw.items():
        if k in ("sources", "kind", "name"):
            continue
        src = srcs.get(k)
        print(f"{k}: {json.dumps(v) if not isinstance(v, str) else v}" + (f"    # source: {src}" if src else ""))
    if kind == "model":
        print(f"# derived: {item.num_params / 1e9:.3f} B parameters ({item.num_active_params / 1e9:.3f} B active), "
              f"KV {item.kv_bytes_per_token(2.0, tp=1) / 1024:.1f} KiB/token in 16-bit, {item.attention_kind}")
    other = {k: v for k, v in srcs.items() if k not in raw}
    for k, v in other.items():
        print(f"# source for {k}: {v}")
    return 0


def _fractions_text(fr: dict[str, float]) -> str:
    """gpu/cpu/cxl/disk shares as 0.00/1.00/...; the LP's -0.0 and round-off below zero print as 0.00."""
    return "/".join(f"{max(fr[t], 0.0) + 0.0:.2f}" for t in ("gpu", "cpu", "cxl", "disk"))


def cmd_offload_plan(a: argparse.Namespace) -> int:
    from simkit.scenario import load_scenario
    from simkit.search.offload import compression_choices, optimize, workload_batch_limit

    sc = load_scenario(a.scenario, a.set or [])
    comp_w, comp_kv = compression_choices(sc)
    comp_w = (False, True) if a.compress_weights else comp_w
    comp_kv = (False, True) if a.compress_kv else comp_kv
    cands = optimize(sc, prompt_len=a.prompt_len, gen_len=a.gen_len, objective=a.objective, top=a.top, confirm=a.confirm,
                     compress=comp_w, compress_kv=comp_kv, max_batch=workload_batch_limit(sc))
    print(f"# offload plans for {sc.model} on {sc.hardware if isinstance(sc.hardware, str) else 'custom node'} "
          f"(objective: {a.objective}); LP = linear-program estimate, sim = simulated; tok/s at each plan's own batch "
          "of gbs x ngb sequences"
          + (f" (at most the workload's {workload_batch_limit(sc)} prompts)" if workload_batch_limit(sc) is not None else ""))
    not_searched = [what for what, choices in (("weights", comp_w), ("KV cache", comp_kv)) if True not in choices]
    if not_searched:
        print(f"# 4-bit {' and '.join(not_searched)} not searched (16-bit as plan.precision says; "
              f"{' / '.join(f for f, c in (('--compress-weights', comp_w), ('--compress-kv', comp_kv)) if True not in c)} "
              "to search the quality trade)")
    hdr = f"{'rank':>4} {'gbs':>5} {'ngb':>4} {'cpu_attn':>8} {'int4_w':>6} {'int4_kv':>7}  {'weights g/c/x/d':<22} {'kv g/c/x/d':<22} {'act g/c/x/d':<22} {'LP tok/s':>10} {'sim tok/s':>10}  bottleneck"
    print(hdr)
    for k, c in enumerate(cands, 1):
        f = c.fractions
        w, kv, act = _fractions_text(f["w"]), _fractions_text(f["c"]), _fractions_text(f["h"])
        sim = c.sim.get("output_tokens_per_s")
        bott = c.sim.get("bottleneck", c.lp_bottleneck) if c.sim else c.lp_bottleneck
        err = c.sim.get("error") if c.sim else None
        print(f"{k:>4} {c.gpu_batch_size:>5} {c.num_gpu_batches:>4} {str(c.cpu_attention):>8} {str(c.compress_weights):>6} {str(c.compress_kv):>7}  "
              f"{w:<22} {kv:<22} {act:<22} {c.lp_throughput:>10.3f} {(f'{sim:.3f}' if sim else '-'):>10}  {bott}"
              + (f"  (simulation: {err})" if err else ""))
    print("# fractions above are rounded to 2 decimals; a plan's exact plan.offload (the placement simulated, to put in a "
          "scenario for `simkit run`) is what --json FILE writes")
    batch = sc.workload.batch
    if batch is not None and any(c.gpu_batch_size * c.num_gpu_batches != batch.num_prompts for c in cands):
        warn_line(f"the workload is a fixed batch of {batch.num_prompts} prompts, but the tok/s above are for each plan's "
                  "own batch (gbs x ngb sequences): `simkit run` a plan on the workload for its throughput there")
    if a.json:
        from pathlib import Path

        Path(a.json).write_text(json.dumps([{"gpu_batch_size": c.gpu_batch_size, "num_gpu_batches": c.num_gpu_batches,
                                            "offload": c.offload_dict(), "lp_throughput": c.lp_throughput,
                                            "lp_bottleneck": c.lp_bottleneck, "sim": c.sim} for c in cands], indent=2))
    return 0


def cmd_search(a: argparse.Namespace) -> int:
    from simkit.search import load_spec, print_table, run_search, write_search
    from simkit.search.hints import vllm_hint
    from simkit.study.store import RunStore

    spec = load_spec(a.spec)
    if a.top is not None:
        spec.top = a.top
    out = a.out or os.path.join("reports", f"search-{spec.name}")
    if a.jobs < 1:
        raise SimkitError(f"--jobs: expected an integer >= 1, got {a.jobs}")
    if a.jobs > 1 and spec.capacity is not None:
        print(f"warning: --jobs {a.jobs} has no effect in capacity mode (each plan's bisection steps depend on "
              "each other); simulating one at a time", file=sys.stderr)
    res = run_search(spec, RunStore(out), exhaustive=a.exhaustive, progress=not a.no_progress, jobs=a.jobs)
    paths = write_search(res, out)
    print_table(res, sys.stdout)
    if res.best is not None:
        from simkit.scenario import load_scenario

        print(vllm_hint(load_scenario(os.path.join(out, "best.yaml"))), end="")
    print(f"wrote {', '.join(str(p) for p in paths if p.parent == paths[0].parent)} and {os.path.join(out, 'best')}/"
          if res.best is not None else f"wrote {', '.join(str(p) for p in paths)}")
    if a.report:
        _write_report([out], a.report)
    return 0 if res.best is not None else 1


def cmd_calibrate(argv: list[str]) -> int:
    if argv and argv[0] == "import-profiles":
        from simkit.calibrate.vidur import main_import_profiles

        return main_import_profiles(argv[1:])
    from simkit.calibrate.cli_calibrate import main as cal_main

    return cal_main(argv)


def cmd_validate(argv: list[str]) -> int:
    if "--offload" in argv:
        from simkit.calibrate.validate_offload import main as off_main

        return off_main([a for a in argv if a != "--offload"])
    from simkit.calibrate.validate import main as val_main

    return val_main(argv)


def cmd_study(argv: list[str]) -> int:
    from simkit.study.cli import main as study_main

    return study_main(argv)


def _count(minimum: int) -> Any:
    """An argparse type: an integer >= ``minimum`` (argparse turns the error into exit 2)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {v}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simkit", description="Performance simulator and cost-model analyzer for LLM inference.")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="simulate a scenario YAML")
    r.add_argument("scenario")
    r.add_argument("--out", help="output folder (default reports/<scenario name>)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a dotted key, e.g. plan.parallel.tp=2")
    r.add_argument("--trace-out", help="write a Chrome-trace/Perfetto timeline JSON here")
    r.add_argument("--engine", choices=["auto", "stepping", "reference"], default="auto",
                   help="reference: always the reference engine; stepping: the fast path without its fused loop "
                        "(default: the fast exact path where it applies)")
    r.add_argument("--report", metavar="FILE.html", help="also write an HTML report of the run here")
    r.set_defaults(func=cmd_run)

    rp = sub.add_parser("report", help="one self-contained HTML page for run, study or search folders")
    rp.add_argument("dirs", nargs="+", metavar="DIR", help="a run, study or search folder; two or more run folders compare")
    rp.add_argument("-o", "--output", required=True, metavar="FILE.html")
    rp.set_defaults(func=cmd_report)

    s = sub.add_parser("schema", help="print the scenario JSON Schema")
    s.set_defaults(func=cmd_schema)

    e = sub.add_parser("estimate", help="cost-model estimates")
    esub = e.add_subparsers(dest="what", required=True)
    eo = esub.add_parser("ops", help="per-operator times of one forward pass")
    eo.add_argument("--gpu", required=True)
    eo.add_argument("--model", required=True)
    eo.add_argument("--tp", type=_count(1), default=1)
    eo.add_argument("--tokens", default="1,16,512")
    eo.add_argument("--dtype", default="bf16", choices=["fp32", "fp16", "bf16", "fp8", "int8", "int4"])
    eo.add_argument("--format", default="table", choices=["table", "csv"])
    eo.add_argument("--calibration", default="auto", help="auto, none, or a profile path")
    eo.set_defaults(func=cmd_estimate_ops)

    c = sub.add_parser("catalog", help="list or show hardware and model catalog items")
    c.add_argument("action", choices=["list", "show"])
    c.add_argument("name", nargs="?")
    c.add_argument("--kind", help="list only this kind (gpu, cpu, memory, ssd, link, node, model)")
    c.set_defaults(func=cmd_catalog)

    o = sub.add_parser("offload-plan", help="rank offload placements for a scenario (LP + simulation)")
    o.add_argument("scenario", help="a scenario YAML or the name of a shipped scenario")
    o.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a dotted key, e.g. hardware=gcp-t4-vm")
    o.add_argument("--objective", choices=["throughput", "latency"], default="throughput",
                   help="rank by generated tokens per second (default) or by latency")
    o.add_argument("--prompt-len", type=_count(1), help="prompt tokens per sequence (default: the workload's mean)")
    o.add_argument("--gen-len", type=_count(1), help="generated tokens per sequence (default: the workload's mean)")
    o.add_argument("--top", type=_count(1), default=8, help="how many ranked plans to print (default 8)")
    o.add_argument("--confirm", type=_count(0), default=3, help="simulate this many of the best LP plans")
    o.add_argument("--json", help="write the ranked plans as JSON here")
    o.add_argument("--compress-weights", action="store_true",
                   help="also search group-wise 4-bit weights (FlexGen's --compress-weight; a quality trade "
                        "plan.precision did not ask for; also enabled by plan.offload.compress_weights: true)")
    o.add_argument("--compress-kv", action="store_true",
                   help="also search a 4-bit KV cache (FlexGen's --compress-cache; attended on the GPU; also "
                        "enabled by plan.offload.compress_kv: true)")
    o.set_defaults(func=cmd_offload_plan)

    se = sub.add_parser("search", help="find the best deployment plan over a space of scenarios (docs/search.md)")
    se.add_argument("spec", help="search YAML: base, space, constraints, objective")
    se.add_argument("--out", help="output folder (default reports/search-<name>); rerunning resumes")
    se.add_argument("--top", type=_count(1), help="rank this many plans (overrides the file's top)")
    se.add_argument("--exhaustive", action="store_true", help="simulate every candidate that passes screening (no pruning)")
    se.add_argument("--jobs", type=int, default=1, help="simulate this many candidates at once in worker processes")
    se.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    se.add_argument("--report", metavar="FILE.html", help="also write an HTML report of the search here")
    se.set_defaults(func=cmd_search)

    sub.add_parser("calibrate", help="run microbenchmarks (see simkit calibrate --help), `calibrate list` (the profiles "
                   "`calibration: auto` sees) or import-profiles", add_help=False)
    sub.add_parser("validate", help="compare real torch runs with predictions (see simkit validate --help)", add_help=False)
    sub.add_parser("study", help="run a what-if study YAML, or `study show DIR` (see simkit study --help)", add_help=False)
    return p


def _exit_without_teardown(code: int) -> None:
    """End the process of a finished ``simkit run`` now: its outputs are written and closed
    (``write_outputs``), so once stdout and stderr are flushed nothing is left to do but the
    interpreter's teardown (freeing every object of the run: 0.05-0.2 s), which is skipped. If
    flushing fails (the reader went away), the normal exit path handles it instead."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        return
    os._exit(code)


_SHOWN: set[str] = set()
"""The warnings this command has printed (each is printed once, as one line)."""


def warn_line(message: str) -> None:
    """Print a warning as ``warning: <message>`` on stderr (a message that starts ``WARNING: ``
    as it is), unless this command printed it already (a deployment warning is both a Python
    warning and a line of the result's warnings)."""
    if message in _SHOWN:
        return
    _SHOWN.add(message)
    # a loud warning (``WARNING: ...``) keeps its capitals, without a second prefix
    print(message if message.startswith("WARNING: ") else f"warning: {message}", file=sys.stderr)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """warnings.showwarning for the command line: one line naming the problem, not the Python
    source line that raised it."""
    warn_line(str(message))


def main(argv: Sequence[str] | None = None) -> int:
    _SHOWN.clear()
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _main(argv)


def _single_threaded_blas(command: str) -> None:
    """Simulation is single-threaded: numpy's OpenBLAS would start a thread per core when numpy is
    imported (about 0.1 s of another core's CPU per process, measured on a 2-vCPU VM) for no
    matrix work simkit does there, and those threads compete with `--jobs` workers. One thread
    unless the user chose otherwise; `calibrate` and `validate` keep the default (they time torch
    kernels, not numpy's). Takes effect only before numpy is imported (a `simkit` process)."""
    if command not in ("calibrate", "validate") and "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _main(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    _single_threaded_blas(args[0] if args else "")
    try:
        if args and args[0] == "calibrate":
            return cmd_calibrate(args[1:])
        if args and args[0] == "validate":
            return cmd_validate(args[1:])
        if args and args[0] == "study":
            return cmd_study(args[1:])
        ns = build_parser().parse_args(args)
        ns.argv = args
        ns.own_process = argv is None
        code = int(ns.func(ns))
        if argv is None and ns.func is cmd_run:
            _exit_without_teardown(code)
        return code
    except SimkitError as e:
        if os.environ.get("SIMKIT_DEBUG"):
            raise
        print(f"simkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (``simkit catalog list | head``): stop quietly, as a shell tool does;
        # stdout is pointed at /dev/null so the interpreter's final flush does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as e:  # a file the user named cannot be read or written (permissions, name too long, disk full)
        if os.environ.get("SIMKIT_DEBUG"):
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"simkit: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
