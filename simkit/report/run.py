"""Sections of a run report; each takes a list of runs so a comparison overlays the same figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from simkit.policies.batching import TokenBudgetOptions
from simkit.report import plots
from simkit.report.data import Run, cdf, request_latencies, run_series
from simkit.report.html import Page, csv_text, esc, table
from simkit.units import fmt_bandwidth, fmt_bytes, fmt_time

RESOURCE_NAMES = {
    "compute": "GPU compute",
    "h2d": "PCIe host->GPU",
    "d2h": "PCIe GPU->host",
    "nvme_read": "SSD read (NVMe)",
    "nvme_write": "SSD write (NVMe)",
    "cxl_read": "CXL read",
    "cxl_write": "CXL write",
    "nvlink": "NVLink GPU-GPU",
    "network": "network",
    "cpu_attention": "CPU attention",
    "collectives": "collectives (TP all-reduce, EP all-to-all)",
}

def trace_name(sc: Any, path: str) -> tuple[str, bool]:
    """(how the report names a trace, whether it is a shipped one): a shipped trace
    (``workloads/traces/``) by its bare file name, the name a scenario uses for it from any folder
    (docs/scenario.md); any other trace by the path the run's scenario.yaml gives (``path``; a
    relative one is relative to the run folder, where ``simkit run DIR/scenario.yaml`` reads it).
    The run folder's scenario.yaml holds a shipped trace as a path relative to the run folder,
    which for an installed simkit runs through site-packages."""
    from simkit.specs.catalog import repo_path

    try:
        f = Path(sc.resolve_path(path)).resolve()
        shipped = f.is_file() and f.parent == repo_path("workloads", "traces").resolve()
    except OSError:  # not a usable path: shown as written
        return path, False
    return (f.name, True) if shipped else (path, False)


def rname(key: Any, summary: dict[str, Any] | None = None) -> str:
    """A resource's name in words; compute is the CPUs' when the run computed on them."""
    if key == "compute" and summary is not None and not summary.get("gpus"):
        return "CPU compute"
    return RESOURCE_NAMES.get(str(key), str(key))


HEADLINE = [
    # (summary key, label, kind) kind: s = seconds (ms shown), r = rate, usd, j, frac, int
    ("ttft_p50_s", "TTFT p50", "s"), ("ttft_p90_s", "TTFT p90", "s"), ("ttft_p99_s", "TTFT p99", "s"),
    ("tpot_p50_s", "TPOT p50", "s"), ("tpot_p90_s", "TPOT p90", "s"), ("tpot_p99_s", "TPOT p99", "s"),
    ("e2e_p50_s", "E2E p50", "s"), ("e2e_p90_s", "E2E p90", "s"), ("e2e_p99_s", "E2E p99", "s"),
    ("queue_p99_s", "queueing p99", "s"),
    ("output_tokens_per_s", "throughput (output tok/s)", "r"),
    ("requests_per_s", "requests/s", "r"),
    ("goodput_requests_per_s", "goodput (req/s within SLO)", "r"),
    ("slo_attainment", "requests within SLO", "frac"),
    ("usd_per_million_output_tokens", "$ per million output tokens", "usd"),
    ("energy_per_output_token_j", "energy per output token (J)", "j"),
    ("kv_utilization_peak", "KV cache peak use", "frac"),
    ("requests_completed", "requests completed", "int"),
    ("requests_rejected", "requests rejected", "int"),
    ("preemptions", "preemptions", "int"),
]


def fmt_metric(v: Any, kind: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    v = float(v)
    if kind == "s":
        return f"{v * 1e3:,.1f} ms" if abs(v) < 1 else f"{v:,.2f} s"
    if kind == "frac":
        return f"{v * 100:.1f}%"
    if kind == "usd":
        return f"${v:,.3f}"
    if kind == "int":
        return f"{int(v):,}"
    return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.1f}"


def slo_bounds(run: Run) -> dict[str, float]:
    """The SLO bounds a run was held to: {summary key: bound}, from its scenario."""
    sc = run.scenario
    if sc is None:
        return {}
    return {k: float(v) for k, v in sc.slo.model_dump().items() if v is not None and k.endswith("_s") and k[:4] in ("ttft", "tpot")
            and ("_p" in k)}


def per_request_bounds(run: Run) -> dict[str, float]:
    """The per-request TTFT/TPOT bounds goodput used (docs/metrics.md)."""
    sc = run.scenario
    if sc is None:
        return {}
    slo = sc.slo
    out = {}
    ttft = slo.ttft_s or min([v for v in (slo.ttft_p90_s, slo.ttft_p99_s) if v] or [math.inf])
    tpot = slo.tpot_s or min([v for v in (slo.tpot_p90_s, slo.tpot_p99_s) if v] or [math.inf])
    if math.isfinite(ttft):
        out["ttft"] = ttft
    if math.isfinite(tpot):
        out["tpot"] = tpot
    return out


def bottleneck_sentence(s: dict[str, Any]) -> str:
    res = s.get("resources") or {}
    b = s.get("bottleneck")
    if not res or b not in res:
        return "No resource was busy (nothing ran)."
    span = float(s.get("makespan_s") or 0)
    ranked = sorted(res.items(), key=lambda kv: -float(kv[1].get("busy_s", 0)))
    name = rname(b, s) + (f" over {res[b]['link']}" if b == "collectives" and res[b].get("link") else "")
    u = float(res[b].get("utilization", 0))
    text = f"The bottleneck is {name}: busy {u * 100:.0f}% of the {span:,.2f} s makespan"
    if b == "compute" and "max_utilization" in res[b]:
        text += f" (busiest GPU group {float(res[b]['max_utilization']) * 100:.0f}%)"
    others = [(k, v) for k, v in ranked if k != b and float(v.get("busy_s", 0)) > 0]
    if others:
        k, v = others[0]
        text += f"; next is {rname(k, s)} at {float(v.get('utilization', 0)) * 100:.0f}%"
    else:
        text += "; no other resource was used"
    text += "."
    if b != "compute" and u > 0.5:
        text += f" Data movement over {name} limits the run: compute waits for it, so faster GPUs would not help."
    return text


def load_sentence(run: Run) -> str | None:
    """Whether the busy resource is saturated: busy time counts every iteration however small its
    batch, so judge by the batch size against its limit, the queue and the KV cache."""
    it, sc = run.iterations, run.scenario
    s = run.summary
    if it is None or len(it) == 0 or sc is None:
        return None
    judge = s.get("bottleneck") == "compute" and sc.workload.batch is None
    dur = (it["end_s"] - it["start_s"]).to_numpy(np.float64)
    if dur.sum() <= 0:
        return None
    batch = float(np.average(it["batch_size"].to_numpy(np.float64), weights=dur))
    limit = sc.plan.batching.max_num_seqs
    kv_peak = float(s.get("kv_utilization_peak") or 0.0)
    q99 = s.get("queue_p99_s")
    span = float(s.get("makespan_s") or 0.0)
    waiting = 0.0
    rq = run.requests
    if rq is not None and span > 0:
        w = (rq["scheduled_s"] - rq["arrival_s"]).to_numpy(np.float64)
        waiting = float(np.nansum(w)) / span  # mean number waiting (Little's law)
    queue_bound = waiting >= 1.0
    full = batch >= 0.9 * limit or kv_peak >= 0.9 or s.get("preemptions", 0) > 0
    words = (f"Iterations carried {batch:,.1f} sequences on average (time-weighted) of the {limit} allowed; KV-cache use peaked at "
             f"{kv_peak * 100:.0f}%; on average {waiting:,.2f} requests waited for admission (queueing p99 {fmt_metric(q99, 's')})")
    if not judge:
        if sc.workload.batch is not None:
            return words + ". Every request arrives at once (a fixed batch), so there is no arrival rate to saturate."
        return words + "."
    if full or queue_bound:
        limits = []
        if batch >= 0.9 * limit:
            limits.append(f"batch slots (plan.batching.max_num_seqs = {limit})")
        if kv_peak >= 0.9 or s.get("preemptions", 0) > 0:
            limits.append(f"KV-cache blocks ({s.get('preemptions', 0)} preemptions)")
        what = " and ".join(limits) or "the GPUs (iterations are long enough that arrivals pile up)"
        return words + (f". The deployment is saturated: requests wait for {what}; more capacity (a larger batch limit if "
                        "memory allows, more replicas or GPUs) would raise throughput and cut queueing.")
    return words + (". It is not saturated: the engine always had work but batches are small and little waiting happens, so "
                    "more load would raise throughput (at a higher TPOT) before anything queues.")


# ---- scenario --------------------------------------------------------------------------------
def scenario_rows(run: Run) -> list[tuple[str, str]]:
    s = run.summary
    rows = [("model", str(s.get("model"))), ("hardware", f"{s.get('hardware')} (compute device {s.get('device')})")]
    sc = run.scenario
    gpus = s.get("gpus")
    rows.append(("plan", f"tp={s.get('tp')} pp={s.get('pp')} replicas={s.get('replicas')}" + (f", {gpus} GPUs" if gpus else ", CPU compute")))
    if sc is not None:
        p = sc.plan
        b = p.batching
        rows.append(("batching", f"{b.policy}, max {b.max_num_seqs} sequences"
                     + (f", {b.max_num_batched_tokens} tokens per iteration" if isinstance(b, TokenBudgetOptions) else "")
                     + (f", chunks of {b.chunk_size}" if b.policy == "chunked_prefill" else "")))
        rows.append(("precision", f"weights {p.precision.weights}, activations {p.precision.activations}, KV {p.precision.kv_cache}"))
        if p.parallel.ep > 1:
            rows.append(("expert parallel", f"ep={p.parallel.ep}, routing {p.parallel.expert_routing.distribution}"))
        if not p.offload.is_trivial:
            o = p.offload
            rows.append(("offload", f"weights gpu/cpu/cxl/disk {o.weights.gpu:g}/{o.weights.cpu:g}/{o.weights.cxl:g}/{o.weights.disk:g}; "
                         f"KV {o.kv_cache.gpu:g}/{o.kv_cache.cpu:g}/{o.kv_cache.cxl:g}/{o.kv_cache.disk:g}"
                         + ("; CPU attention" if o.cpu_attention else "")))
        if p.prefix_cache.enabled:
            rows.append(("prefix cache", ", ".join(p.prefix_cache.tiers)))
        w = sc.workload
        if w.batch is not None:
            wl = f"fixed batch of {w.batch.num_prompts} prompts, {w.batch.input_tokens} in / {w.batch.output_tokens} out tokens"
        elif w.synthetic is not None:
            a = w.synthetic.arrival
            wl = f"synthetic: {w.synthetic.num_requests} requests, {a.process}" + (f" at {a.rate:g} req/s" if a.rate else "")
        else:
            assert w.trace is not None
            name, shipped = trace_name(sc, w.trace.path)
            wl = (f"trace {name} ({'shipped, ' if shipped else ''}{w.trace.format})"
                  + (f", rate x{w.trace.rate_scale:g}" if w.trace.rate_scale != 1 else ""))
        if w.limit:
            wl += f", first {w.limit}"
        rows.append(("workload", wl))
        slo = {k: v for k, v in sc.slo.model_dump().items() if v is not None}
        rows.append(("SLO", ", ".join(f"{k} <= {fmt_time(v)}" for k, v in slo.items()) or "none"))
        rows.append(("seed", str(sc.seed)))
    rows.append(("calibration", str(s.get("calibration"))))
    rows.append(("requests", f"{s.get('requests_total'):,} ({s.get('input_tokens', 0):,} input, {s.get('output_tokens', 0):,} output tokens completed)"))
    return rows


def topology_svg(run: Run) -> str | None:
    """A small diagram of the node(s): GPUs (coloured by replica, labelled with their pipeline
    stage), HBM, the GPU-GPU fabric, PCIe to the host, DRAM, CXL, SSD and the network."""
    sc = run.scenario
    if sc is None:
        return None
    from simkit.specs.node import resolve_node

    node = resolve_node(sc.hardware)
    s = run.summary
    owner: dict[int, tuple[int, int]] = {}
    for g in s.get("per_gpu") or []:
        for gpu in g.get("gpus") or []:
            owner[int(gpu)] = (int(g.get("replica", 0)), int(g.get("stage", 0)))
    per_row = 8
    gw, gh, gap = 96, 64, 10
    ng = node.num_gpus
    rows_g = max(math.ceil(ng / per_row), 1) if ng else 0
    shown_nodes = min(node.num_nodes, 2)
    inner_w = max(per_row * (gw + gap) + 20, 820)
    node_h = 36 + rows_g * (gh + gap) + (30 if ng else 0) + (96 if ng else 70)
    W = inner_w + 40
    H = shown_nodes * (node_h + 30) - 10 + (24 if node.num_nodes > 2 else 0)
    tiers = node.tiers()
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" aria-label="TITLE" font-family="sans-serif" font-size="11">',
           "<title>TITLE</title>"]

    def box(x: float, y: float, w: float, h: float, fill: str, lines: list[str], stroke: str = "#57606a") -> None:
        out.append(f'<rect x="{x:.0f}" y="{y:.0f}" width="{w:.0f}" height="{h:.0f}" rx="5" fill="{fill}" stroke="{stroke}"/>')
        for k, t in enumerate(lines):
            weight = ' font-weight="600"' if k == 0 else ""
            out.append(f'<text x="{x + w / 2:.0f}" y="{y + 15 + k * 13:.0f}" text-anchor="middle"{weight}>{esc(t)}</text>')

    def line(x1: float, y1: float, x2: float, y2: float, label: str, color: str = "#57606a") -> None:
        out.append(f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="{color}" stroke-width="2.5"/>')
        if label:
            vertical = abs(x1 - x2) < 1
            tx, ty = ((x1 + 6, (y1 + y2) / 2 + 4) if vertical else ((x1 + x2) / 2, y1 + 14))
            anchor = "start" if vertical else "middle"
            out.append(f'<text x="{tx:.0f}" y="{ty:.0f}" fill="{color}" font-size="10" text-anchor="{anchor}">{esc(label)}</text>')

    used_gpus = set(owner)
    for n in range(shown_nodes):
        y0 = 10 + n * (node_h + 30)
        out.append(f'<rect x="10" y="{y0}" width="{inner_w + 20}" height="{node_h}" rx="8" fill="#f6f8fa" stroke="#d0d7de"/>')
        out.append(f'<text x="22" y="{y0 + 18}" font-weight="600">{esc(node.name)}' + (f" - node {n}" if node.num_nodes > 1 else "") + "</text>")
        gy = y0 + 30
        for k in range(ng):
            gid = n * ng + k
            r, c = divmod(k, per_row)
            x = 20 + c * (gw + gap)
            y = gy + r * (gh + gap)
            if gid in owner:
                rep, stage = owner[gid]
                fill = plots.COLORS[rep % len(plots.COLORS)] + "33"
                tag = f"replica {rep}" + (f" stage {stage}" if int(s.get("pp", 1) or 1) > 1 else "")
            else:
                fill, tag = "#ffffff", "unused"
            assert node.gpu is not None
            box(x, y, gw, gh, fill, [f"GPU {gid}", node.gpu.name, f"HBM {fmt_bytes(tiers['hbm'].capacity, 3)}", tag][:4])
        hy = gy + rows_g * (gh + gap)
        if ng:
            gg = node.link("gpu_to_gpu")
            if gg is not None and ng > 1:
                line(20, hy - 4, 20 + min(ng, per_row) * (gw + gap) - gap, hy - 4, f"{gg.type} ({gg.name}) {fmt_bandwidth(gg.achieved_bandwidth, 3)} per direction", "#8250df")
            hy += 18
        host_y = hy + (34 if ng else 0)
        h2g = node.link("host_to_gpu")
        if ng and h2g is not None:
            line(60, hy, 60, host_y, f"PCIe {fmt_bandwidth(h2g.achieved_bandwidth, 3)} per GPU per direction", "#0969da")
        dram = tiers["dram"]
        cpu_compute = not owner and int(s.get("gpus", 0) or 0) == 0
        box(20, host_y, 250, 62, plots.COLORS[0] + "33" if cpu_compute else "#ffffff",
            [f"host: {node.sockets} x {node.cpu.name}", f"DRAM {fmt_bytes(dram.capacity, 3)} at {fmt_bandwidth(dram.read_bw, 3)}",
             "computes the model" if cpu_compute else ""])
        x = 300
        if "cxl" in tiers:
            t = tiers["cxl"]
            cx = node.link("cxl")
            box(x, host_y, 200, 62, "#ffffff", ["CXL memory", f"{fmt_bytes(t.capacity, 3)}", f"{fmt_bandwidth(t.read_bw, 3)} read"])
            line(270, host_y + 31, x, host_y + 31, f"{fmt_bandwidth(cx.achieved_bandwidth, 3)}" if cx else "", "#1a7f37")
            x += 230
        if "ssd" in tiers:
            t = tiers["ssd"]
            box(x, host_y, 200, 62, "#ffffff", [f"SSD x{len(node.ssd)}", f"{fmt_bytes(t.capacity, 3)}", f"{fmt_bandwidth(t.read_bw, 3)} read"])
            out.append(f'<line x1="270" y1="{host_y + 52}" x2="{x}" y2="{host_y + 52}" stroke="#9a6700" stroke-width="2.5"/>')
            x += 230
        net = node.link("network")
        if net is not None:
            box(x, host_y, max(min(inner_w - x + 10, 240), 150), 62, "#ffffff",
                ["network", f"{max(node.num_nics, 1)} x {net.name}", f"{fmt_bandwidth(net.achieved_bandwidth, 3)} each"])
        if n + 1 < shown_nodes:
            line(W / 2, y0 + node_h, W / 2, y0 + node_h + 30,
                 f"network {fmt_bandwidth(net.achieved_bandwidth, 3)} x {max(node.num_nics, 1)} per node" if net else "", "#bc4c00")
    if node.num_nodes > 2:
        out.append(f'<text x="20" y="{H - 8}">... {node.num_nodes} identical nodes in all, joined by the network</text>')
    out.append("</svg>")
    unused = node.total_gpus - len(used_gpus)
    title = (f"Hardware and placement. {node.name}: {node.num_nodes} node(s) of {ng} {node.gpu.name if node.gpu else ''} GPUs"
             + (f", {len(used_gpus)} used by the plan, {unused} unused" if ng else ", computing on the CPUs"))
    return "\n".join(out).replace("TITLE", esc(title))


def section_scenario(page: Page, runs: list[Run]) -> None:
    page.section("Scenario")
    if len(runs) == 1:
        run = runs[0]
        rows = scenario_rows(run)
        page.raw('<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows) + "</dl>")
        if run.scenario_error:
            page.callout(f"scenario.yaml could not be read: {run.scenario_error}", warn=True)
        svg = topology_svg(run)
        if svg is not None:
            page.figure(svg, "Hardware and placement: the compute devices coloured by the replica that uses them, memory tiers and the links "
                        "between them (achieved bandwidths the simulator uses).", csv_text(["field", "value"], rows), "scenario")
        return
    header = ["", *[r.label for r in runs]]
    keys = [k for k, _ in scenario_rows(runs[0])]
    per = [dict(scenario_rows(r)) for r in runs]
    rows = [[k, *[p.get(k, "-") for p in per]] for k in keys]
    page.raw(table(header, rows))


def scenario_differences(runs: list[Run]) -> list[list[Any]]:
    """Scenario keys whose values differ between runs (dotted keys of scenario.yaml)."""
    flat = []
    for r in runs:
        if r.scenario is None:
            flat.append({})
            continue
        from simkit.outputs import resolved_scenario_data

        flat.append(_flatten(resolved_scenario_data(r.scenario, r.path)))
    keys = sorted(set().union(*flat))
    return [[k, *[str(f.get(k, "-")) for f in flat]] for k in keys
            if k not in ("name", "description") and len({str(f.get(k, "-")) for f in flat}) > 1]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


# ---- headline -------------------------------------------------------------------------------
def section_headline(page: Page, runs: list[Run]) -> None:
    page.section("Headline metrics")
    bounds = slo_bounds(runs[0])
    if len(runs) == 1:
        s = runs[0].summary
        rows, classes = [], []
        for key, label, kind in HEADLINE:
            if key not in s:
                continue
            b = bounds.get(key)
            v = s.get(key)
            verdict = ""
            cls = ""
            if b is not None and v is not None and math.isfinite(float(v)):
                ok = float(v) <= b
                verdict, cls = ("met" if ok else "MISSED"), ("ok" if ok else "bad")
            rows.append([label, fmt_metric(v, kind), fmt_metric(b, kind) if b is not None else "", verdict])
            classes.append(["", "", "", cls])
        if "slo_met" in s:
            page.callout(f"SLO {'met' if s['slo_met'] else 'MISSED'}: {fmt_metric(s.get('slo_attainment'), 'frac')} of requests "
                         f"met their per-request TTFT and TPOT bounds (goodput {fmt_metric(s.get('goodput_requests_per_s'), 'r')} req/s).",
                         warn=not s["slo_met"])
        page.raw(table(["metric", "value", "SLO bound", "verdict"], rows, [False, True, True, False], classes))
        page.para("TTFT includes queueing; TPOT is (finish - first token) / (output tokens - 1) per request; definitions in docs/metrics.md.")
        return
    base = runs[0].summary
    header = ["metric", *[r.label for r in runs], *[f"{r.label} vs {runs[0].label}" for r in runs[1:]]]
    rows = []
    for key, label, kind in HEADLINE:
        if not any(key in r.summary for r in runs):
            continue
        vals = [r.summary.get(key) for r in runs]
        deltas = []
        for v in vals[1:]:
            b = base.get(key)
            if v is None or b is None or not math.isfinite(float(v)) or not math.isfinite(float(b)):
                deltas.append("-")
            elif float(b) == 0:
                deltas.append("same" if float(v) == 0 else f"{float(v) - float(b):+.3g}")
            elif abs(float(v) / float(b) - 1) > 1:
                deltas.append(f"x{float(v) / float(b):,.1f}")
            else:
                deltas.append(f"{(float(v) / float(b) - 1) * 100:+.1f}%")
        rows.append([label, *[fmt_metric(v, kind) for v in vals], *deltas])
    rows.append(["SLO met", *[("yes" if r.summary.get("slo_met") else "no") if "slo_met" in r.summary else "-" for r in runs],
                 *["" for _ in runs[1:]]])
    rows.append(["bottleneck", *[rname(r.summary.get("bottleneck"), r.summary) for r in runs],
                 *["" for _ in runs[1:]]])
    page.raw(table(header, rows, [False] + [True] * (len(header) - 1)))


# ---- latency --------------------------------------------------------------------------------
def section_latency(page: Page, runs: list[Run]) -> None:
    have = [r for r in runs if r.requests is not None]
    if not have:
        return
    page.section("Latency distributions")
    fig, axes = plots.figure(10.5, 3.3, ncols=3, left=0.65)
    bounds = per_request_bounds(have[0])
    pct = slo_bounds(have[0])
    rows: list[list[Any]] = []
    for k, (key, title) in enumerate((("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "E2E latency"))):
        ax = axes[k]
        lats = [request_latencies(r)[key] for r in have]
        top = max((float(np.nanmax(v)) for v in lats if np.isfinite(v).any()), default=0.0)
        scale, unit = (1.0, "s") if top >= 10 else (1e3, "ms")
        for i, r in enumerate(have):
            lat = lats[i]
            x, y = cdf(lat)
            if x.size:
                ax.step(np.concatenate([[x[0]], x]) * scale, np.concatenate([[0.0], y]), where="post",
                        color=plots.COLORS[i % len(plots.COLORS)], linewidth=1.4, label=r.label if len(have) > 1 else None)
            # the CSV holds each run's quantiles at 1% steps (the full per-request data is requests.parquet)
            if x.size:
                for q in range(1, 101):
                    rows.append([r.label, key, q / 100, float(np.quantile(lat[np.isfinite(lat)], q / 100))])
        for bk, b in pct.items():
            if bk.startswith(key):
                p = bk.split("_")[1]
                plots.mark_slo(ax, b * scale, f"SLO {p} {fmt_time(b)}")
                ax.axhline(int(p[1:]) / 100, color="#cf222e", linewidth=0.6, linestyle=":")
        if key in bounds and not any(bk.startswith(key) and abs(v - bounds[key]) < 1e-12 for bk, v in pct.items()):
            plots.mark_slo(ax, bounds[key] * scale, f"per-request bound {fmt_time(bounds[key])}")
        ax.set_title(title)
        ax.set_xlabel(unit)
        ax.set_ylim(0, 1.02)
        if k == 0:
            ax.set_ylabel("fraction of requests")
        if len(have) > 1 and k == 0:
            ax.legend(loc="lower right")
    alt = "; ".join(f"{r.label}: TTFT p90 {fmt_metric(r.summary.get('ttft_p90_s'), 's')}, TPOT p99 {fmt_metric(r.summary.get('tpot_p99_s'), 's')}, "
                    f"E2E p99 {fmt_metric(r.summary.get('e2e_p99_s'), 's')}" for r in have)
    svg = plots.to_svg(fig, "Latency CDFs (TTFT, TPOT, E2E) with the SLO marked", alt)
    page.figure(svg, "Cumulative distributions over completed requests; dashed red lines are the SLO bounds, dotted the percentile "
                "they bound. " + alt + ".", csv_text(["run", "metric", "quantile", "seconds"], rows), "latency-quantiles")


# ---- over time ------------------------------------------------------------------------------
def section_over_time(page: Page, runs: list[Run]) -> None:
    series = [(r, run_series(r)) for r in runs]
    series = [(r, s) for r, s in series if s is not None]
    if not series:
        page.section("Over time")
        page.para("The run folder has no requests.parquet/iterations.parquet, so no time series can be drawn.")
        return
    page.section("Over time")
    fig, axes = plots.figure(10.5, 6.4, nrows=3, sharex=True, hspace=0.12)
    rows: list[list[Any]] = []
    for i, (r, s) in enumerate(series):
        c = plots.COLORS[i % len(plots.COLORS)]
        t = s.centers
        lab = r.label if len(series) > 1 else None
        axes[0].plot(t, s.output_tokens_per_s, color=c, linewidth=1.2, label=lab)
        axes[1].plot(t, s.queue_length, color=c, linewidth=1.2, label=(f"{lab}: waiting" if lab else "waiting for admission"))
        axes[1].plot(t, s.running, color=c, linewidth=1.0, linestyle="--", label=(f"{lab}: running" if lab else "running"))
        axes[2].plot(t, s.kv_use * 100, color=c, linewidth=1.2, label=lab)
        head, rr = s.csv_rows()
        rows.extend([[r.label, *x] for x in rr])
    axes[0].set_ylabel("output tok/s")
    axes[0].set_title("Throughput, queue and KV-cache use over simulated time")
    axes[1].set_ylabel("requests")
    axes[1].legend(loc="upper right", ncols=2)
    axes[2].set_ylabel("KV blocks in use %")
    axes[2].set_xlabel("simulated time (s)")
    axes[2].set_ylim(bottom=0)
    if len(series) > 1:
        axes[0].legend(loc="upper right")
    alt = "; ".join(f"{r.label}: mean {r.summary.get('output_tokens_per_s', 0):,.0f} output tok/s, peak queue {float(np.max(s.queue_length)):.1f} "
                    f"requests, peak KV use {float(np.max(s.kv_use)) * 100:.0f}%" for r, s in series)
    svg = plots.to_svg(fig, "Throughput, queue length and KV-cache use over time", alt)
    page.figure(svg, f"Means over {len(series[0][1].edges) - 1} equal time bins: output tokens per second (decode steps plus first tokens), "
                "requests waiting for admission and running (from requests.parquet; a preempted request waiting again is counted as running), "
                "and the fraction of KV blocks in use (from iterations.parquet). " + alt + ".",
                csv_text(["run", *head], rows), "over-time")


# ---- utilisation ------------------------------------------------------------------------------
def section_utilisation(page: Page, runs: list[Run]) -> None:
    page.section("Utilisation and bottleneck")
    for r in runs:
        page.callout((f"{r.label}: " if len(runs) > 1 else "") + bottleneck_sentence(r.summary) + " " + (load_sentence(r) or ""))
    series = [(r, run_series(r)) for r in runs]
    series = [(r, s) for r, s in series if s is not None]
    if series:
        fig, ax = plots.figure(10.5, 2.8)
        rows: list[list[Any]] = []
        k = 0
        for r, s in series:
            for rep, b in s.busy.items():
                ax.plot(s.centers, b * 100, color=plots.COLORS[k % len(plots.COLORS)], linewidth=1.1,
                        label=(f"{r.label} " if len(series) > 1 else "") + f"replica {rep}")
                k += 1
                rows.extend([[r.label, rep, float(s.edges[i]), float(s.edges[i + 1]), float(b[i])] for i in range(len(b))])
        ax.set_ylabel("busy %")
        ax.set_ylim(0, 105)
        ax.set_xlabel("simulated time (s)")
        ax.set_title("Iterations in flight: share of each time bin, per GPU group (replica)")
        if k <= 12:
            ax.legend(loc="lower right", ncols=min(k, 6))
        alt = "; ".join(f"{r.label} replica {rep}: mean {float(np.mean(b)) * 100:.0f}%" for r, s in series for rep, b in list(s.busy.items())[:8])
        page.figure(plots.to_svg(fig, "Iterations in flight over time per GPU group", alt),
                    "Fraction of each time bin in which the replica has an iteration in flight (with pipeline stages, any stage). "
                    "An iteration in flight includes any wait for its transfers (offloading, layer-by-layer execution), so this can "
                    "exceed the compute utilisation in the totals below, which counts computing only. " + alt + ".",
                    csv_text(["run", "replica", "t_start_s", "t_end_s", "busy_fraction"], rows), "compute-over-time")
        section_links_over_time(page, series)
    # totals
    names: list[str] = []
    for r in runs:
        for key in (r.summary.get("resources") or {}):
            if key not in names:
                names.append(key)
    if not names:
        return
    fig, ax = plots.figure(10.5, 0.95 + 0.3 * len(names) * max(len(runs), 1) ** 0.6, left=1.6)
    h = 0.8 / len(runs)
    rows = []
    y = np.arange(len(names))
    for i, r in enumerate(runs):
        res = r.summary.get("resources") or {}
        vals = [float(res.get(n, {}).get("utilization", 0.0)) * 100 for n in names]
        ax.barh(y + (i - (len(runs) - 1) / 2) * h, vals, height=h, color=plots.COLORS[i % len(plots.COLORS)],
                label=r.label if len(runs) > 1 else None)
        for n in names:
            e = res.get(n, {})
            rows.append([r.label, n, rname(n, r.summary), e.get("busy_s"), e.get("utilization"), e.get("max_utilization"), e.get("bytes")])
        if len(runs) == 1:
            for yy, v, n in zip(y, vals, names):
                extra = ""
                if "bytes" in res.get(n, {}):
                    extra = f"  {fmt_bytes(float(res[n]['bytes']), 3)}"
                ax.text(v + 1, yy, f"{v:.1f}%{extra}", va="center", fontsize=8)
    ax.set_yticks(y, [rname(n, runs[0].summary) for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 118)
    ax.set_xlabel("busy % of makespan")
    ax.set_title("Utilisation of every resource over the whole run")
    if len(runs) > 1:
        ax.legend(loc="lower right")
    alt = "; ".join(f"{r.label}: bottleneck {rname(r.summary.get('bottleneck'), r.summary)}" for r in runs)
    page.figure(plots.to_svg(fig, "Resource utilisation totals", alt),
                "Busy time / makespan per resource: compute averaged over GPU groups; each link direction (one direction of a link "
                "counts separately) summed over replicas and divided by the replica count; bytes moved at the bar's end. " + alt + ".",
                csv_text(["run", "resource", "name", "busy_s", "utilization", "max_utilization", "bytes"], rows), "resources")
    page.para("HBM: its capacity use is under Memory per tier and KV-cache use over time; the bandwidth a typical iteration uses is "
              "under Where an iteration's time goes (the simulator times operators, it does not track HBM traffic as a resource).")
    if len(runs) == 1:
        pg = runs[0].summary.get("per_gpu") or []
        if pg:
            page.raw(table(["replica", "stage", "GPUs", "compute s", "collectives s", "idle s"],
                           [[g.get("replica"), g.get("stage"), ", ".join(str(x) for x in g.get("gpus") or []) or "CPU",
                             g.get("compute_s"), g.get("comm_s"), g.get("idle_s")] for g in pg[:64]],
                           [True, True, False, True, True, True], caption="Per GPU group"))


def section_links_over_time(page: Page, series: list[tuple[Run, Any]]) -> None:
    """Busy share over time of every link direction that moved data (from links.parquet)."""
    used = [(r, s) for r, s in series if s.links]
    if not used:
        missing = [r.label for r, _ in series if r.links is None]
        page.para("No link moved data in this run." if not missing else
                  f"{', '.join(missing)}: no links.parquet (a run folder from an older simkit), so link totals only.")
        return
    fig, ax = plots.figure(10.5, 2.8)
    rows: list[list[Any]] = []
    styles = ["-", "--", ":", "-."]
    k = 0
    for i, (r, s) in enumerate(used):
        for name, b in s.links.items():
            ax.plot(s.centers, b * 100, color=plots.COLORS[k % len(plots.COLORS)], linewidth=1.1, linestyle=styles[i % len(styles)],
                    label=(f"{r.label} " if len(used) > 1 else "") + rname(name))
            rows.extend([[r.label, name, float(s.edges[j]), float(s.edges[j + 1]), float(b[j])] for j in range(len(b))])
            k += 1
    ax.set_ylabel("busy %")
    ax.set_ylim(0, 105)
    ax.set_xlabel("simulated time (s)")
    ax.set_title("Links: share of each time bin with a transfer in flight, per link direction")
    ax.legend(loc="lower right", ncols=min(k, 4))
    alt = "; ".join(f"{r.label} {rname(n)}: mean {float(np.mean(b)) * 100:.0f}%, peak {float(np.max(b)) * 100:.0f}%"
                    for r, s in used for n, b in s.links.items())
    page.figure(plots.to_svg(fig, "Link utilisation over time", alt),
                "Busy share of each link direction that moved data (one direction of a link is one resource), averaged over "
                "replicas, from links.parquet. " + alt + ".",
                csv_text(["run", "link", "t_start_s", "t_end_s", "busy_fraction"], rows), "links-over-time")


# ---- memory ---------------------------------------------------------------------------------
def section_memory(page: Page, runs: list[Run]) -> None:
    page.section("Memory per tier")
    for run in runs:
        mem = run.summary.get("memory") or {}
        if not mem:
            continue
        tiers = list(mem)
        owners: list[str] = []
        for t in tiers:
            for o in (mem[t].get("by_owner") or {}):
                if o not in owners:
                    owners.append(o)
        fig, ax = plots.figure(10.5, 0.95 + 0.4 * len(tiers), left=0.7, right=2.3)
        left = np.zeros(len(tiers))
        rows = []
        for k, o in enumerate(owners):
            vals = np.array([float((mem[t].get("by_owner") or {}).get(o, 0.0)) / float(mem[t]["capacity_bytes"]) * 100
                             if mem[t].get("capacity_bytes") else 0.0 for t in tiers])
            ax.barh(range(len(tiers)), vals, left=left, color=plots.COLORS[k % len(plots.COLORS)], label=o, height=0.6)
            left += vals
        for i, t in enumerate(tiers):
            m = mem[t]
            ax.text(min(left[i], 100) + 1, i, f"{fmt_bytes(float(m.get('used_bytes', 0)), 3)} of {fmt_bytes(float(m.get('capacity_bytes', 0)), 3)}",
                    va="center", fontsize=8)
            for o, b in (m.get("by_owner") or {}).items():
                rows.append([run.label, t, o, b, m.get("capacity_bytes")])
            if not m.get("by_owner"):
                rows.append([run.label, t, "", 0.0, m.get("capacity_bytes")])
        ax.set_yticks(range(len(tiers)), [t.upper() for t in tiers])
        ax.invert_yaxis()
        ax.set_xlim(0, 125)
        ax.set_xlabel("% of the tier's capacity (whole deployment)")
        ax.set_title("Memory held per tier, by owner" + (f" - {run.label}" if len(runs) > 1 else ""))
        if owners:
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
        alt = "; ".join(f"{t}: {fmt_bytes(float(mem[t].get('used_bytes', 0)), 3)} of {fmt_bytes(float(mem[t].get('capacity_bytes', 0)), 3)}" for t in tiers)
        page.figure(plots.to_svg(fig, "Memory per tier", alt),
                    "Bytes each owner holds in each tier at the plan's allocation (KV cache = the blocks reserved, not only those in use; "
                    "its use over time is above). " + alt + ".",
                    csv_text(["run", "tier", "owner", "bytes", "capacity_bytes"], rows), f"memory-{run.label}")


# ---- operators --------------------------------------------------------------------------------
def representative_batches(run: Run) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, new tokens per sequence, cached tokens per sequence) of a typical decode iteration
    and a typical prefill iteration of the run, from its iteration log."""
    it = run.iterations
    out: list[tuple[str, np.ndarray, np.ndarray]] = []
    if it is None or len(it) == 0 or run.scenario is None:
        return out
    bs = run.scenario.plan.kv_cache.block_size
    dec = it[(it["prefill_tokens"] == 0) & (it["decode_seqs"] > 0)]
    if len(dec):
        w = (dec["steps"] * (dec["end_s"] - dec["start_s"])).to_numpy(np.float64)
        if w.sum() <= 0:
            w = dec["steps"].to_numpy(np.float64)
        b = max(int(round(float(np.average(dec["decode_seqs"], weights=w)))), 1)
        ctx = float(np.average(dec["kv_blocks_used"] * bs / dec["batch_size"].clip(lower=1), weights=w))
        out.append((f"decode: {b} sequences x 1 token over ~{ctx:,.0f} cached tokens each", np.ones(b), np.full(b, max(ctx, 1.0))))
    pre = it[it["prefill_tokens"] > 0]
    if len(pre):
        n = max(int(round(float(np.median(pre["prefill_tokens"])))), 1)
        out.append((f"prefill: {n:,} prompt tokens (median prefill per iteration)", np.array([n]), np.array([0])))
    return out


def operator_table(run: Run) -> tuple[list[dict[str, Any]], str, Any] | None:
    """Per-operator times of the representative batches on the run's device, with the run's
    calibration: rows, the device description and the device."""
    sc = run.scenario
    batches = representative_batches(run)
    if sc is None or not batches:
        return None
    from simkit.cost.ops import Precision, forward_ops
    from simkit.cost.roofline import time_ops
    from simkit.deployment import host_overhead, resolve_compute
    from simkit.specs.catalog import load_model
    from simkit.specs.node import resolve_node

    node = resolve_node(sc.hardware, where=sc.source)
    model = load_model(sc.model, where=sc.source)
    _, device, eff, _, _ = resolve_compute(sc, node)
    precision = sc.plan.precision
    prec = Precision(precision.weights, precision.activations, precision.kv_cache, precision.group_size)
    tp = sc.plan.parallel.tp if device.kind == "gpu" else 1
    rows = []
    for label, q, ctx in batches:
        ops = forward_ops(model, q, ctx, tp=tp, precision=prec)
        for ot in time_ops(ops, device, eff, prec.compute):
            rows.append({"batch": label, "op": ot.op.name, "class": ot.op.op_class, "count": ot.op.count, "flops": ot.op.flops,
                         "bytes": ot.op.bytes, "time_s": ot.time_s, "total_s": ot.time_s * ot.op.count, "bound": ot.bound,
                         "efficiency": ot.efficiency, "measured": bool(eff.is_measured(ot.op.op_class))})
        host = host_overhead(sc.plan.execution.iteration_overhead, eff)
        if host.time(len(q)) > 0:
            rows.append({"batch": label, "op": "host overhead", "class": "host", "count": 1, "flops": 0.0, "bytes": 0.0,
                         "time_s": host.time(len(q)), "total_s": host.time(len(q)), "bound": "host", "efficiency": float("nan"),
                         "measured": False, "source": host.source})
    desc = (f"{device.name}: {fmt_bandwidth(device.mem_bandwidth, 3)} memory bandwidth, "
            f"{device.peak_flops(prec.compute) / 1e12:,.0f} TFLOP/s {prec.compute}; tp={tp}, one GPU of the group")
    return rows, desc, (device, prec.compute)


def section_operators_compare(page: Page, runs: list[Run]) -> None:
    """The operator-class breakdown of each run's typical iterations, side by side."""
    page.section("Where an iteration's time goes")
    rows: list[dict[str, Any]] = []
    for r in runs:
        got = operator_table(r)
        if got is None:
            page.para(f"{r.label}: no scenario.yaml or iteration log, so no operator breakdown.")
            continue
        for row in got[0]:
            rows.append({**row, "batch": f"{r.label}, {row['batch']}"})
    if not rows:
        return
    fig, ax, batches, left, classes = _class_stack(rows, [b.split(":")[0] for b in dict.fromkeys(r["batch"] for r in rows)])
    alt = "; ".join(f"{b.split(':')[0]}: {left[i]:.2f} ms" for i, b in enumerate(batches))
    head = ["batch", "op", "class", "count", "flops", "bytes", "time_s", "total_s", "bound", "efficiency", "measured"]
    page.figure(plots.to_svg(fig, "Iteration time per operator class, per run", alt),
                "The cost model's time for each run's typical decode and prefill iteration (see the single-run report for the "
                "definition and the roofline). " + alt + ".", csv_text(head, [[r[h] for h in head] for r in rows]), "operators")


def _class_stack(rows: list[dict[str, Any]], labels: list[str]) -> tuple[Any, Any, list[str], Any, list[str]]:
    batches = list(dict.fromkeys(r["batch"] for r in rows))
    classes = list(dict.fromkeys(r["class"] for r in rows))
    longest = max(len(x) for x in labels)
    fig, ax = plots.figure(10.5, 1.0 + 0.5 * len(batches), left=min(0.3 + 0.065 * longest, 3.5), right=1.6)
    left = np.zeros(len(batches))
    for k, c in enumerate(classes):
        vals = np.array([sum(r["total_s"] for r in rows if r["batch"] == b and r["class"] == c) * 1e3 for b in batches])
        ax.barh(range(len(batches)), vals, left=left, color=plots.COLORS[k % len(plots.COLORS)], label=c, height=0.55)
        left += vals
    for i, t in enumerate(left):
        ax.text(t, i, f" {t:.2f} ms", va="center", fontsize=8)
    ax.set_yticks(range(len(batches)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, float(left.max()) * 1.2 if left.size and left.max() > 0 else 1)
    ax.set_xlabel("ms per forward pass (one GPU of the tensor-parallel group)")
    ax.set_title("Iteration time per operator class")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig, ax, batches, left, classes


def section_operators(page: Page, run: Run) -> None:
    page.section("Where an iteration's time goes")
    got = operator_table(run)
    if got is None:
        page.para("No scenario.yaml or iteration log in this folder: the operator breakdown needs both.")
        return
    rows, desc, (device, dtype) = got
    fig, ax, batches, left, classes = _class_stack(rows, [b.split(":")[0] for b in dict.fromkeys(r["batch"] for r in rows)])
    alt = "; ".join(f"{b}: {left[i]:.2f} ms, " + ", ".join(
        f"{c} {sum(r['total_s'] for r in rows if r['batch'] == b and r['class'] == c) / max(left[i] / 1e3, 1e-30) * 100:.0f}%" for c in classes)
        for i, b in enumerate(batches))
    head = ["batch", "op", "class", "count", "flops", "bytes", "time_s", "total_s", "bound", "efficiency", "measured"]
    data = csv_text(head, [[r[h] for h in head] for r in rows])
    page.figure(plots.to_svg(fig, "Iteration time per operator class", alt),
                f"The cost model's time for a typical iteration of this run ({'; '.join(batches)}), on {desc}; 'host' is the "
                "per-iteration host overhead (from plan.execution.iteration_overhead or the calibration profile). Collectives and "
                "expert all-to-alls are not included (their share is collective_share in summary.json). "
                + alt + ".", data, "operators")
    # roofline
    pf, bw = device.peak_flops(dtype), device.mem_bandwidth
    fig, ax = plots.figure(10.5, 4.2)
    ai = np.array([r["flops"] / r["bytes"] for r in rows if r["bytes"] > 0 and r["flops"] > 0])
    lo = min(float(ai.min()) / 3 if ai.size else 0.1, pf / bw / 10)
    hi = max(float(ai.max()) * 3 if ai.size else 1e4, pf / bw * 10)
    x = np.geomspace(lo, hi, 200)
    ax.loglog(x, np.minimum(x * bw, pf), color="#24292f", linewidth=1.6, label=f"roofline ({fmt_bandwidth(bw, 3)}, {pf / 1e12:,.0f} TFLOP/s)")
    markers = ["o", "s", "^", "D"]
    for bi, b in enumerate(batches):
        for k, c in enumerate(classes):
            pts = [r for r in rows if r["batch"] == b and r["class"] == c and r["bytes"] > 0 and r["flops"] > 0]
            if not pts:
                continue
            ax.scatter([p["flops"] / p["bytes"] for p in pts], [p["flops"] / p["time_s"] for p in pts], s=28,
                       marker=markers[bi % len(markers)], color=plots.COLORS[k % len(plots.COLORS)],
                       label=f"{c} ({b.split(':')[0]})", edgecolors="white", linewidths=0.5, zorder=3)
            for p in pts:
                if p["total_s"] >= 0.04 * sum(r["total_s"] for r in rows if r["batch"] == b):
                    ax.annotate(p["op"], (p["flops"] / p["bytes"], p["flops"] / p["time_s"]), fontsize=7, xytext=(4, -3),
                                textcoords="offset points", color="#57606a")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("achieved FLOP/s")
    ax.set_title(f"Operators on the {device.name} roofline ({dtype})")
    ax.legend(loc="lower right", fontsize=7)
    n_mem = sum(1 for r in rows if r["bound"] == "memory")
    alt = f"{n_mem} of {len(rows)} operators are memory-bound; ridge point {pf / bw:,.0f} FLOP/byte"
    page.figure(plots.to_svg(fig, "Operators on the device roofline", alt),
                "Each operator of the typical decode (circles) and prefill (squares) iteration at its FLOPs/bytes and the FLOP/s the "
                "cost model predicts (efficiency and launch overhead included); the distance below the roof is the efficiency. "
                + alt + ".", data, "roofline")
    use = []
    for b in batches:
        rb = [r for r in rows if r["batch"] == b and r["class"] != "host"]
        t = sum(r["total_s"] for r in rb)
        nbytes = sum(r["bytes"] * r["count"] for r in rb)
        flops = sum(r["flops"] * r["count"] for r in rb)
        if t > 0:
            use.append([b, fmt_time(t, 3), f"{fmt_bandwidth(nbytes / t, 3)} ({nbytes / t / bw * 100:.0f}% of {fmt_bandwidth(bw, 3)})",
                        f"{flops / t / 1e12:,.1f} TFLOP/s ({flops / t / pf * 100:.0f}% of peak)"])
    page.raw(table(["typical iteration", "time (operators, host excluded)", "HBM bandwidth used", "compute used"], use,
                   caption="Memory bandwidth and compute a typical iteration uses (bytes and FLOPs of its operators over their time)"))
    top = sorted(rows, key=lambda r: -r["total_s"])[:12]
    page.raw(table(["batch", "operator", "class", "x per pass", "time per pass", "bound", "efficiency", "efficiency source"],
                   [[r["batch"].split(":")[0], r["op"], r["class"], r["count"], fmt_time(r["total_s"], 3), r["bound"],
                     "-" if r["class"] == "host" else f"{r['efficiency'] * 100:.0f}%",
                     "host overhead: " + str(r["source"]).split(":")[0][:60] if r["class"] == "host" else
                     ("measured (profile)" if r["measured"] else "datasheet default")] for r in top],
                   [False, False, False, True, True, False, True, False], caption="The costliest operators"))


# ---- provenance -------------------------------------------------------------------------------
def fidelity_rows(cal: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for cls, f in (cal.get("fidelity") or {}).items():
        fe = f.get("fit_error") or {}
        cv = f.get("cross_validation") or {}
        med = cv.get("median_ape_range")
        p90 = cv.get("p90_ape_range")
        rows.append([cls, _pct(fe.get("median_ape")), _pct(fe.get("p90_ape")), fe.get("n", "-"),
                     f"{_pct(med[0])}-{_pct(med[1])}" if med else "not measured",
                     f"{_pct(p90[0])}-{_pct(p90[1])}" if p90 else "not measured"])
    return rows


def _pct(v: Any) -> str:
    return "-" if v is None else f"{float(v) * 100:.1f}%"


def calibration_info(run: Run) -> dict[str, Any]:
    """The run's calibration as provenance.json records it, or worked out again from its scenario."""
    cal = (run.provenance or {}).get("calibration")
    if cal:
        return dict(cal)
    if run.scenario is None:
        return {"description": run.summary.get("calibration")}
    from simkit.deployment import calibration_provenance, resolve_compute
    from simkit.specs.node import resolve_node

    _, _, eff, info, _ = resolve_compute(run.scenario, resolve_node(run.scenario.hardware))
    return calibration_provenance(run.scenario, eff, info)


def section_provenance(page: Page, run: Run, title: str = "Provenance", command: str | None = None) -> None:
    """Version, date, command, reproduce command, calibration with its measured fidelity, and the
    resolved scenario; ``command`` replaces the run's own reproduce command (a study's, say)."""
    page.section(title)
    prov = run.provenance or {}
    cal = calibration_info(run)
    items = [
        ("run folder", str(run.path)),
        ("simkit version", prov.get("simkit_version", "(no provenance.json)")),
        ("created (UTC)", prov.get("created_utc", "-")),
        ("command", prov.get("command") or "-"),
        ("reproduce", command or prov.get("reproduce") or (f"simkit run {run.path / 'scenario.yaml'}" if run.scenario_text else "-")),
        ("simulation wall time", f"{prov['sim_wall_s']:.3f} s" if isinstance(prov.get("sim_wall_s"), int | float) else "-"),
        ("calibration", cal.get("description") or str(run.summary.get("calibration"))),
    ]
    if cal.get("path"):
        items.append(("calibration profile", f"{cal.get('profile')} ({cal.get('path')})"))
    page.raw('<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>")
    fr = fidelity_rows(cal)
    if fr:
        page.raw(table(["operator class", "fit median error", "fit p90 error", "samples", "held-out median error", "held-out p90 error"],
                       fr, [False, True, True, True, True, True],
                       caption="Measured fidelity of the calibration profile (held out: leave-one-model-out, the figures of docs/fidelity.md)"))
        unmeasured = [c for c in ("gemm", "attn_prefill", "attn_decode", "elementwise") if c not in (cal.get("fidelity") or {})]
        if unmeasured:
            page.para(f"Not measured by this profile (datasheet default efficiencies, ~30% error per docs/fidelity.md): {', '.join(unmeasured)}.")
    elif cal.get("setting") is not None or cal.get("description"):
        page.para("No calibration profile: datasheet default efficiencies, whose error docs/fidelity.md measures at 6-12% median and "
                  "19-33% p90 for GEMMs (the ~30% roofline error).")
    warns = prov.get("warnings") or []
    if warns:
        page.callout("Warnings of the run: " + " | ".join(str(w) for w in warns), warn=True)
    if run.scenario_text:
        page.pre(run.scenario_text, "the resolved scenario (scenario.yaml)")
