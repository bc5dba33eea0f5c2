"""Reading run, study and search folders (docs/report.md lists the files each needs), and the
time series a run report plots, derived from its request and iteration tables."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simkit.errors import ReportError, SimkitError

RUN_FILES = ("summary.json",)
STUDY_FILES = ("runs.parquet", "study.json")
SEARCH_FILES = ("candidates.parquet", "search.json")


def folder_kind(path: Path) -> str:
    """"run", "study" or "search", from the files the folder holds."""
    if not path.is_dir():
        raise ReportError("not a folder (expected the --out folder of simkit run, study or search)", where=str(path))
    if all((path / f).exists() for f in SEARCH_FILES):
        return "search"
    if all((path / f).exists() for f in STUDY_FILES):
        return "study"
    if all((path / f).exists() for f in RUN_FILES):
        return "run"
    raise ReportError(
        "not a run, study or search folder: expected summary.json (simkit run), runs.parquet + study.json "
        "(simkit study) or candidates.parquet + search.json (simkit search)",
        where=str(path),
    )


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError("file is missing", where=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"not valid JSON: {e}", where=str(path)) from None


def read_text(path: Path) -> str:
    """A text file shown on a page, even when it is not UTF-8 (undecodable bytes shown as U+FFFD;
    whoever parses the file says what is wrong with it)."""
    return path.read_bytes().decode("utf-8", errors="replace")


def read_parquet(path: Path, required: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    import pandas as pd

    try:
        df = pd.read_parquet(path)
    except FileNotFoundError:
        raise ReportError("file is missing", where=str(path)) from None
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise ReportError(f"not a readable Parquet file ({type(e).__name__}: {e})", where=str(path)) from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ReportError(f"missing column(s) {', '.join(missing)}", where=str(path))
    return df


REQUEST_COLS = ("replica", "arrival_s", "scheduled_s", "first_token_s", "finish_s", "output_tokens", "rejected", "ttft_s", "e2e_s")
ITERATION_COLS = ("replica", "start_s", "end_s", "steps", "prefill_tokens", "decode_seqs", "batch_size", "kv_blocks_used")


@dataclass
class Run:
    """One run folder as the report reads it; tables are None where the folder lacks them."""

    path: Path
    label: str
    summary: dict[str, Any]
    requests: Any = None
    iterations: Any = None
    links: Any = None
    """links.parquet: busy periods of every link direction, or None."""
    scenario_text: str | None = None
    scenario: Any = None
    """The validated Scenario of scenario.yaml, or None."""
    scenario_error: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


SUMMARY_COUNTS = ("requests_total", "requests_completed", "requests_rejected", "gpus", "tp", "pp", "replicas", "preemptions",
                  "kv_blocks_per_replica", "kv_blocks_total", "input_tokens", "output_tokens")
"""summary.json keys a report reads as whole numbers >= 0."""
SUMMARY_KINDS = {"resources": dict, "memory": dict, "link_busy_s": dict, "link_bytes": dict, "offload_compute_s": dict, "per_gpu": list}
"""summary.json keys a report reads as mappings or lists."""


def check_summary(summary: dict[str, Any], where: str) -> None:
    """Refuse a summary.json whose values a report reads are not of the kind simkit writes
    (a count that is not a whole number, a time or rate that is not a number >= 0, a mapping
    that is not one), naming the key, instead of failing while drawing."""
    for k, v in summary.items():
        if v is None:
            continue
        if k in SUMMARY_COUNTS:
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
            expected = "a whole number >= 0"
        elif k in SUMMARY_KINDS:
            ok = isinstance(v, SUMMARY_KINDS[k])
            expected = "a mapping" if SUMMARY_KINDS[k] is dict else "a list"
        elif k.endswith(("_s", "_per_s")) or k.startswith("kv_utilization"):
            ok = isinstance(v, int | float) and not isinstance(v, bool) and not v < 0
            expected = "a number >= 0 (or NaN)"
        else:
            continue
        if not ok:
            raise ReportError(f"expected {expected}, got {v!r} (not a summary simkit wrote)", where=where, key=k)


def check_table(df: Any, path: Path, ints: tuple[str, ...], finite: tuple[str, ...], replicas: bool = False) -> Any:
    """Refuse a table whose columns are not of the kind simkit writes (counts as integers, times
    finite, replica indices >= 0 where every row belongs to a replica), naming the column."""
    for c in ints:
        if df[c].dtype.kind not in "iu":
            raise ReportError(f"column {c} holds {df[c].dtype} values; simkit writes integers", where=str(path))
    for c in finite:
        if df[c].dtype.kind not in "iuf" or not np.isfinite(df[c].to_numpy(dtype=float)).all():
            raise ReportError(f"column {c} holds values that are not finite numbers", where=str(path))
    if replicas and len(df) and int(df["replica"].min()) < 0:
        raise ReportError("column replica holds negative values", where=str(path))
    return df


def load_run(path: Path, label: str | None = None) -> Run:
    summary = read_json(path / "summary.json")
    if not isinstance(summary, dict) or "requests_total" not in summary:
        raise ReportError("not a simkit summary (no requests_total)", where=str(path / "summary.json"))
    check_summary(summary, str(path / "summary.json"))
    run = Run(path, label or path.name, summary)
    if (path / "requests.parquet").exists():
        run.requests = check_table(read_parquet(path / "requests.parquet", REQUEST_COLS), path / "requests.parquet",
                                   ("replica", "output_tokens"), ())
    if (path / "iterations.parquet").exists():
        run.iterations = check_table(read_parquet(path / "iterations.parquet", ITERATION_COLS), path / "iterations.parquet",
                                     ("replica", "steps", "prefill_tokens", "decode_seqs", "batch_size", "kv_blocks_used"),
                                     ("start_s", "end_s"), replicas=True)
    if (path / "links.parquet").exists():
        run.links = check_table(read_parquet(path / "links.parquet", ("replica", "link", "start_s", "end_s")), path / "links.parquet",
                                ("replica",), ("start_s", "end_s"), replicas=True)
    sp = path / "scenario.yaml"
    if sp.exists():
        from simkit.scenario import load_scenario

        run.scenario_text = read_text(sp)
        try:
            run.scenario = load_scenario(sp)
        except SimkitError as e:
            run.scenario_error = str(e)
    if (path / "provenance.json").exists():
        prov = read_json(path / "provenance.json")
        run.provenance = prov if isinstance(prov, dict) else {}
        for k, kind in (("calibration", dict), ("warnings", list)):
            if run.provenance.get(k) is not None and not isinstance(run.provenance[k], kind):
                raise ReportError(f"expected {'a mapping' if kind is dict else 'a list'}, got {run.provenance[k]!r} "
                                  "(not a provenance.json simkit wrote)", where=str(path / "provenance.json"), key=k)
    return run


# ---- time series ------------------------------------------------------------------------------
def binned_integral(start: np.ndarray, end: np.ndarray, weight: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Per bin, the part of each interval's ``weight`` that falls in it, the weight spread
    uniformly over [start, end) (a zero-length interval puts all of it at its start). Intervals
    may overlap. O(n log n)."""
    s = np.asarray(start, dtype=np.float64)
    e = np.asarray(end, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    ok = np.isfinite(s) & np.isfinite(e) & np.isfinite(w)
    s, e, w = s[ok], e[ok], w[ok]
    point = e <= s
    out = np.histogram(s[point], bins=edges, weights=w[point])[0].astype(np.float64)
    s, e, w = s[~point], e[~point], w[~point]
    if s.size == 0:
        return out
    rate = w / (e - s)
    t = np.concatenate([s, e])
    dr = np.concatenate([rate, -rate])
    order = np.argsort(t, kind="stable")
    t, dr = t[order], dr[order]
    r = np.cumsum(dr)  # rate in force after each event
    cum = np.concatenate([[0.0], np.cumsum(r[:-1] * np.diff(t))])  # integral up to each event
    at = np.interp(edges, t, cum, left=0.0, right=cum[-1])
    return out + np.diff(at)


@dataclass
class Series:
    """A run's behaviour over simulated time, in ``bins`` equal bins from the first arrival to
    the last completion."""

    edges: np.ndarray
    output_tokens_per_s: np.ndarray
    queue_length: np.ndarray
    """Mean number of requests waiting for their first admission."""
    running: np.ndarray
    """Mean number of requests admitted and not finished."""
    kv_use: np.ndarray
    """Mean fraction of the KV blocks in use, over replicas."""
    busy: dict[int, np.ndarray]
    """Per replica, the fraction of time an iteration is in flight (clipped at 1)."""
    links: dict[str, np.ndarray]
    """Per link direction that moved data, its busy fraction averaged over replicas (links.parquet)."""

    @property
    def centers(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2

    def csv_rows(self) -> tuple[list[str], list[list[Any]]]:
        head = (["t_start_s", "t_end_s", "output_tokens_per_s", "queue_length", "running", "kv_use"] + [f"busy_replica_{r}" for r in self.busy]
                + [f"link_busy_{k}" for k in self.links])
        rows = []
        for i in range(len(self.edges) - 1):
            rows.append([float(self.edges[i]), float(self.edges[i + 1]), float(self.output_tokens_per_s[i]), float(self.queue_length[i]),
                         float(self.running[i]), float(self.kv_use[i])] + [float(b[i]) for b in self.busy.values()]
                        + [float(b[i]) for b in self.links.values()])
        return head, rows


def run_series(run: Run, bins: int = 160) -> Series | None:
    """The time series of a run with both tables, else None."""
    rq, it = run.requests, run.iterations
    if rq is None or it is None or len(rq) == 0:
        return None
    s = run.summary
    t0 = float(rq["arrival_s"].min())
    fin = rq["finish_s"].to_numpy(dtype=np.float64)
    t1 = float(np.nanmax(fin)) if np.isfinite(fin).any() else t0
    if len(it):
        t1 = max(t1, float(it["end_s"].max()))
    if t1 <= t0:
        t1 = t0 + 1e-9
    edges = np.linspace(t0, t1, bins + 1)
    width = np.diff(edges)
    # output tokens: decode steps produce one token per decoding sequence; prefill the first
    dec_tokens = it["decode_seqs"].to_numpy(np.float64) * it["steps"].to_numpy(np.float64)
    st, en = it["start_s"].to_numpy(np.float64), it["end_s"].to_numpy(np.float64)
    toks = binned_integral(st, en, dec_tokens, edges)
    ft = rq["first_token_s"].to_numpy(np.float64)
    toks += np.histogram(ft[np.isfinite(ft)], bins=edges)[0]
    live = ~rq["rejected"].to_numpy(bool)
    arr = rq["arrival_s"].to_numpy(np.float64)[live]
    sch = rq["scheduled_s"].to_numpy(np.float64)[live]
    fn = fin[live]
    sch_end = np.where(np.isfinite(sch), sch, t1)
    queue = binned_integral(arr, sch_end, sch_end - arr, edges) / width
    started = np.isfinite(sch)
    fin_end = np.where(np.isfinite(fn[started]), fn[started], t1)
    running = binned_integral(sch[started], fin_end, fin_end - sch[started], edges) / width
    n_rep = max(int(s.get("replicas", 1) or 1), 1)
    blocks = float(s.get("kv_blocks_per_replica") or 0)
    kv = it["kv_blocks_used"].to_numpy(np.float64)
    kv_use = binned_integral(st, en, kv * (en - st), edges) / width / (blocks * n_rep) if blocks > 0 else np.zeros(bins)
    busy: dict[int, np.ndarray] = {}
    reps = it["replica"].to_numpy()
    for r in sorted(set(reps.tolist())):
        m = reps == r
        busy[int(r)] = np.clip(binned_integral(st[m], en[m], (en - st)[m], edges) / width, 0.0, 1.0)
    links: dict[str, np.ndarray] = {}
    lk = run.links
    if lk is not None and len(lk):
        for name in sorted(set(lk["link"].astype(str))):
            d = lk[lk["link"].astype(str) == name]
            ls, le = d["start_s"].to_numpy(np.float64), d["end_s"].to_numpy(np.float64)
            links[name] = binned_integral(ls, le, le - ls, edges) / width / n_rep
    return Series(edges, toks / width, queue, running, kv_use, busy, links)


def cdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(values)])
    return v, (np.arange(1, v.size + 1) / v.size) if v.size else np.zeros(0)


def request_latencies(run: Run) -> dict[str, np.ndarray]:
    """Per completed request: TTFT, TPOT (requests with more than one output token) and E2E, in
    seconds, with the definitions of docs/metrics.md."""
    rq = run.requests
    done = np.isfinite(rq["finish_s"].to_numpy(np.float64)) & ~rq["rejected"].to_numpy(bool)
    d = rq[done]
    out = d["output_tokens"].to_numpy(np.float64)
    multi = out > 1
    tpot = ((d["finish_s"] - d["first_token_s"]).to_numpy(np.float64)[multi]) / (out[multi] - 1)
    return {"ttft": d["ttft_s"].to_numpy(np.float64), "tpot": tpot, "e2e": d["e2e_s"].to_numpy(np.float64)}
