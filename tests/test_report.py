"""`simkit report`: run, comparison, study and search pages from folders laid out as the contract
says (made from real simulations by tests/report_folders.py)."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simkit.cli import main
from simkit.errors import ReportError
from simkit.report import build_report, write_report

sys.path.insert(0, str(Path(__file__).parent))
import report_folders as rf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    out = {
        "run": rf.make_run(base / "run"),
        "run_b": rf.make_run(base / "run_b", {"plan.batching.max_num_seqs": 4}),
        "offload": rf.make_offload_run(base / "offload"),
        "study": rf.make_study(base / "study"),
        "search": rf.make_search(base / "search"),
    }
    return out


def check_single_file(html: str) -> None:
    """No scripts, stylesheets, fonts, frames or images from elsewhere; every link is a fragment or data: URL."""
    low = html.lower()
    for bad in ("<script", "<link", "<iframe", "<img", "<object", "<embed", "@import", "@font-face"):
        assert bad not in low, bad
    assert not re.search(r"url\(\s*(?!#)", html), "url() to something other than an element of the page"
    # several SVGs share the page: every id is unique and every url(#id) / href="#id" resolves on the page
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1][:5]
    for ref in re.findall(r"url\(#([^)]+)\)", html) + re.findall(r'href="#([^"]+)"', html):
        assert ref in set(ids), ref
    for attr in re.findall(r"""(?:href|src|xlink:href)\s*=\s*["']([^"']*)["']""", html):
        assert attr.startswith(("#", "data:")), attr
    assert not re.search(r"https?://(?!www\.w3\.org/)", html), re.search(r"https?://\S+", html)


def figures(html: str) -> list[str]:
    return re.findall(r"<figure.*?</figure>", html, flags=re.S)


def check_figures(html: str, at_least: int) -> None:
    figs = figures(html)
    assert len(figs) >= at_least
    for f in figs:
        svg = re.search(r"<svg[^>]*>", f)
        assert svg and 'role="img"' in svg.group(0) and "aria-label=" in svg.group(0), f[:300]
        title = re.search(r"<svg[^>]*>\s*<title>([^<]{20,})</title>", f)
        assert title, f[:300]
        link = re.search(r'href="data:text/csv;base64,([^"]+)"', f)
        assert link, f"figure without its data: {title.group(1)[:80]}"
        rows = list(csv.reader(io.StringIO(base64.b64decode(link.group(1)).decode())))
        assert len(rows) >= 2 and all(len(r) == len(rows[0]) for r in rows), title.group(1)[:80]


def test_run_report(folders, tmp_path):
    out = write_report([folders["run"]], tmp_path / "r.html")
    html = out.read_text()
    check_single_file(html)
    check_figures(html, 8)  # topology, CDFs, over time, compute over time, totals, memory, op classes, roofline
    for section in ("Scenario", "Headline metrics", "Latency distributions", "Over time", "Utilisation and bottleneck",
                    "Memory per tier", "Where an iteration&#x27;s time goes", "Provenance"):
        assert f">{section}</h2>" in html, section
    assert "The bottleneck is GPU compute" in html
    assert "SLO met" in html and "500.0 ms" in html  # the quickstart SLO: TTFT p90 <= 0.5 s
    import simkit

    assert f"simkit {simkit.__version__}" in html
    assert f"simkit run {folders['run'] / 'scenario.yaml'} --out {folders['run']}" in html  # reproduce
    assert "held-out median error" in html and "h100-sxm-vidur" in html  # fidelity of the profile
    assert "model: llama-2-7b" in html  # the resolved scenario YAML
    assert "@media print" in html
    assert "HBM bandwidth used" in html and "% of 3.35 TB/s" in html  # H100 SXM datasheet bandwidth


def test_offloaded_run_report_shows_links_over_time(folders):
    s = json.loads((folders["offload"] / "summary.json").read_text())
    html = build_report([folders["offload"]])
    check_single_file(html)
    check_figures(html, 9)
    fig = [f for f in figures(html) if "Link utilisation over time" in f]
    assert len(fig) == 1
    data = base64.b64decode(re.search(r'href="data:text/csv;base64,([^"]+)"', fig[0]).group(1)).decode()
    rows = list(csv.DictReader(io.StringIO(data)))
    for link in {r["link"] for r in rows}:  # the binned busy shares integrate back to the link's busy seconds
        busy = sum(float(r["busy_fraction"]) * (float(r["t_end_s"]) - float(r["t_start_s"])) for r in rows if r["link"] == link)
        assert busy == pytest.approx(s["link_busy_s"][link], rel=1e-6)
    assert s["bottleneck"] == "nvme_read" and "The bottleneck is SSD read (NVMe)" in html
    assert "Every request arrives at once" in html


def test_run_report_numbers_match_the_summary(folders, tmp_path):
    s = json.loads((folders["run"] / "summary.json").read_text())
    html = build_report([folders["run"]])
    assert f"{s['ttft_p90_s'] * 1e3:,.1f} ms" in html
    assert f"${s['usd_per_million_output_tokens']:,.3f}" in html
    # the over-time CSV integrates back to the run's output tokens
    link = [f for f in figures(html) if "Throughput, queue length" in f][0]
    data = base64.b64decode(re.search(r'href="data:text/csv;base64,([^"]+)"', link).group(1)).decode()
    rows = list(csv.DictReader(io.StringIO(data)))
    toks = sum(float(r["output_tokens_per_s"]) * (float(r["t_end_s"]) - float(r["t_start_s"])) for r in rows)
    assert toks == pytest.approx(s["output_tokens"], rel=1e-9)


def test_report_is_deterministic_but_for_its_date(folders):
    a = build_report([folders["run"]])
    b = build_report([folders["run"]])
    strip = re.compile(r"Generated by simkit \S+ on [^.]+\.")
    assert strip.sub("", a) == strip.sub("", b)


def test_comparison_report(folders, tmp_path):
    html = write_report([folders["run"], folders["run_b"]], tmp_path / "c.html").read_text()
    check_single_file(html)
    check_figures(html, 5)
    assert ">What differs</h2>" in html
    row = re.search(r"<tr><td[^>]*>plan\.batching\.max_num_seqs</td><td[^>]*>(\d+)</td><td[^>]*>(\d+)</td>", html)
    assert row and row.groups() == ("128", "4")
    assert "run_b vs run" in html.replace("<wbr>", "")


def test_study_report(folders, tmp_path):
    html = write_report([folders["study"]], tmp_path / "s.html").read_text()
    check_single_file(html)
    check_figures(html, 2)
    assert ">Metrics against each axis</h2>" in html and ">Deltas against the baseline (continuous)</h2>" in html
    assert "Why runs failed" in html and "does not divide" in html
    assert "simkit study studies/seqs-and-tp.yaml --out" in html
    assert "held-out median error" in html


def test_search_report(folders, tmp_path):
    import pandas as pd

    meta = json.loads((folders["search"] / "search.json").read_text())
    html = write_report([folders["search"]], tmp_path / "x.html").read_text()
    check_single_file(html)
    check_figures(html, 8)
    for section in ("Pareto front", "Ranked plans", "Rejected plans", f"The winner&#x27;s run ({meta['best_candidate_id']})",
                    "Winner: Latency distributions", "Provenance"):
        assert f">{section}</h2>" in html, section
    for reason, n in meta["rejected_by_reason"].items():
        assert f"{reason}: {n}" in html
    # plans pruned before simulation are not in rejected_by_reason: counted from their own reasons
    cands = pd.read_parquet(folders["search"] / "candidates.parquet")
    fig = [f for f in figures(html) if "Rejected plans by reason" in f][0]
    counts = list(csv.DictReader(io.StringIO(base64.b64decode(re.search(r'base64,([^"]+)"', fig).group(1)).decode())))
    assert sum(int(r["count"]) for r in counts) == int((~cands["feasible"]).sum())
    assert any(r["reason"].startswith("invalid plan: tp=3 does not divide") for r in counts)
    tpot_max = meta["constraints"]["tpot_p99_s"]["max"]
    assert f"TTFT p90 &lt;= 5.00 s; TPOT p99 &lt;= {tpot_max * 1e3:,.1f} ms" in html
    assert f"simkit run {folders['search'] / 'best.yaml'}" in html
    assert f"simkit search searches/seqs.yaml --out {folders['search']}" in html


def test_cli_report_and_run_report(folders, tmp_path, capsys):
    assert main(["report", str(folders["study"]), "-o", str(tmp_path / "s.html")]) == 0
    assert (tmp_path / "s.html").stat().st_size > 10_000
    rc = main(["run", str(rf.QUICK), "--out", str(tmp_path / "run"), "--set", "workload.synthetic.num_requests=20",
               "--report", str(tmp_path / "run.html")])
    assert rc == 0, capsys.readouterr().err
    assert "simkit run report: quickstart" in (tmp_path / "run.html").read_text()


@pytest.mark.parametrize("case", ["missing", "not_a_folder", "empty", "bad_json", "mixed", "bad_objective", "file_out"])
def test_report_errors_are_one_line(case, folders, tmp_path, capsys):
    out = tmp_path / "o.html"
    if case == "missing":
        args = [str(tmp_path / "nope")]
    elif case == "not_a_folder":
        (tmp_path / "f.txt").write_text("x")
        args = [str(tmp_path / "f.txt")]
    elif case == "empty":
        (tmp_path / "e").mkdir()
        args = [str(tmp_path / "e")]
    elif case == "bad_json":
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "summary.json").write_text("{not json")
        args = [str(tmp_path / "b")]
    elif case == "mixed":
        args = [str(folders["run"]), str(folders["study"])]
    elif case == "bad_objective":
        import shutil

        d = tmp_path / "s"
        shutil.copytree(folders["search"], d)
        meta = json.loads((d / "search.json").read_text())
        meta["objective"] = {"shrink": "cost"}
        (d / "search.json").write_text(json.dumps(meta))
        args = [str(d)]
    else:
        out = tmp_path
        args = [str(folders["run"])]
    rc = main(["report", *args, "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("simkit: error: ")
    with pytest.raises(ReportError):
        write_report(args, out)


def test_run_does_not_import_matplotlib(tmp_path):
    code = (
        "import sys; from simkit.cli import main; "
        f"rc = main(['run', {str(rf.QUICK)!r}, '--out', {str(tmp_path / 'o')!r}, '--set', 'workload.synthetic.num_requests=5']); "
        "print('MPL', any(m == 'matplotlib' or m.startswith('matplotlib.') for m in sys.modules), rc)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.stdout.strip().splitlines()[-1] == "MPL False 0"


def test_run_report_time(folders):
    """docs/report.md: a run report takes about a second of CPU here (under 3 s wall when idle)."""
    code = (
        "import time; t = time.process_time(); from simkit.report import build_report; "
        f"build_report([{str(folders['run'])!r}]); print(time.process_time() - t)"
    )
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    wall = time.perf_counter() - t0
    cpu = float(r.stdout.strip())
    print(f"run report: {cpu:.2f} s CPU, {wall:.2f} s wall (with interpreter start)")
    assert cpu < 3.0


def test_study_report_edge_cases(folders, tmp_path):
    """A study without axes (variants only), and axes holding lists and unset values."""
    import shutil

    import pandas as pd

    d = tmp_path / "variants_only"
    shutil.copytree(folders["study"], d)
    df = pd.read_parquet(d / "runs.parquet")
    df = df[(df["plan.parallel.tp"] == 1) & (df["plan.batching.max_num_seqs"] == 16)]
    df.to_parquet(d / "runs.parquet", index=False)
    meta = json.loads((d / "study.json").read_text())
    meta["axes"] = []
    (d / "study.json").write_text(json.dumps(meta))
    html = build_report([d])
    check_single_file(html)
    check_figures(html, 2)
    assert ">Deltas against the baseline (continuous)</h2>" in html

    e = tmp_path / "odd_axes"
    shutil.copytree(folders["study"], e)
    df = pd.read_parquet(e / "runs.parquet")
    df["plan.parallel.layer_split"] = [[16, 16] if k % 2 else None for k in range(len(df))]
    df.to_parquet(e / "runs.parquet", index=False)
    meta = json.loads((e / "study.json").read_text())
    meta["axes"].append("plan.parallel.layer_split")
    (e / "study.json").write_text(json.dumps(meta))
    html = build_report([e])
    check_figures(html, 2)
    assert "[16, 16]" in html and "(unset)" in html


def test_run_folder_with_summary_only(folders, tmp_path):
    """A run folder from before scenario.yaml/provenance.json existed, or a study's run without tables."""
    import shutil

    d = tmp_path / "old"
    d.mkdir()
    shutil.copy(folders["run"] / "summary.json", d / "summary.json")
    html = build_report([d])
    check_single_file(html)
    check_figures(html, 2)  # resources and memory, from summary.json alone
    assert "no requests.parquet/iterations.parquet" in html
    assert "needs both" in html  # the operator breakdown says what it lacks
    assert "(no provenance.json)" in html


def test_search_winner_without_scenario_yaml_uses_best_yaml(folders, tmp_path):
    import shutil

    d = tmp_path / "search"
    shutil.copytree(folders["search"], d)
    for f in ("scenario.yaml", "provenance.json"):
        (d / "best" / f).unlink()
    html = build_report([d])
    check_figures(html, 9)  # the winner's topology and operator figures come from best.yaml
    assert "Hardware and placement" in html and "Iteration time per operator class" in html


def test_reports_of_folders_made_by_simkit_study_and_search(tmp_path, capsys):
    """The real commands' folders, reported through their own --report option and `simkit report`."""
    study = rf.make_real_study(tmp_path / "study", report=tmp_path / "study.html")
    html = (tmp_path / "study.html").read_text()
    check_single_file(html)
    check_figures(html, 2)
    assert ">Metrics against each axis</h2>" in html and ">Deltas against the baseline (continuous)</h2>" in html
    assert "held-out median error" in html  # the runs' calibration, from runs/<run_id>/
    search = rf.make_real_search(tmp_path / "search", report=tmp_path / "search.html")
    html = (tmp_path / "search.html").read_text()
    check_single_file(html)
    check_figures(html, 8)
    meta = json.loads((search / "search.json").read_text())
    assert f"The winner&#x27;s run ({meta['best_candidate_id']})" in html and ">Ranked plans</h2>" in html
    assert "Hardware and placement" in html  # the winner's best/ carries its scenario.yaml
    out = capsys.readouterr().out
    assert f"report           {tmp_path / 'study.html'}" in out and f"report           {tmp_path / 'search.html'}" in out
    for d in (study, search):
        assert main(["report", str(d), "-o", str(tmp_path / "again.html")]) == 0


def test_run_folder_with_a_scenario_yaml_that_is_not_utf8(folders, tmp_path):
    """Found by benchmarks/fuzz.py: a scenario.yaml that is not UTF-8 raised UnicodeDecodeError.
    The page is drawn; its scenario section says what is wrong with the file."""
    import shutil

    d = tmp_path / "r"
    shutil.copytree(folders["run"], d)
    (d / "scenario.yaml").write_bytes(b"\x00\xff\xfegarbage,{[\n")
    html = build_report([d])
    check_single_file(html)
    assert "not UTF-8 text" in html


@pytest.mark.parametrize("key, value", [("pp", float("nan")), ("replicas", "2"), ("gpus", -1), ("makespan_s", "x"),
                                        ("resources", [1]), ("ttft_p90_s", [])])
def test_run_summary_with_values_simkit_does_not_write(folders, tmp_path, capsys, key, value):
    """Found by benchmarks/fuzz.py: summary.json with pp NaN raised ValueError (int of NaN) while
    drawing the topology; such values are refused on load, naming the key."""
    import shutil

    d = tmp_path / "r"
    shutil.copytree(folders["run"], d)
    s = json.loads((d / "summary.json").read_text())
    s[key] = value
    (d / "summary.json").write_text(json.dumps(s))
    assert main(["report", str(d), "-o", str(tmp_path / "o.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"summary.json: {key}: expected" in err, err


def test_search_folder_with_a_best_yaml_that_is_not_utf8(folders, tmp_path):
    """Found by benchmarks/fuzz.py: best.yaml that is not UTF-8 raised UnicodeDecodeError."""
    import shutil

    d = tmp_path / "s"
    shutil.copytree(folders["search"], d)
    if (d / "best" / "scenario.yaml").exists():
        (d / "best" / "scenario.yaml").unlink()
    (d / "best.yaml").write_bytes(b"\xff\xfe not UTF-8")
    html = build_report([d])
    check_single_file(html)
    assert "not UTF-8 text" in html


@pytest.mark.parametrize("table, column", [("iterations", "replica"), ("iterations", "start_s"), ("links", "end_s"),
                                           ("requests", "replica")])
def test_run_tables_with_values_simkit_does_not_write(folders, tmp_path, capsys, table, column):
    """Found by benchmarks/fuzz.py: iterations.parquet with NaN replicas raised ValueError (int of
    NaN) while binning; such tables are refused on load, naming the file and the column."""
    import shutil

    import pandas as pd

    d = tmp_path / "r"
    shutil.copytree(folders["offload"], d)
    df = pd.read_parquet(d / f"{table}.parquet")
    df[column] = float("nan")
    df.to_parquet(d / f"{table}.parquet")
    assert main(["report", str(d), "-o", str(tmp_path / "o.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{table}.parquet: column {column}" in err, err


def test_run_provenance_that_simkit_did_not_write(folders, tmp_path, capsys):
    """Found by benchmarks/fuzz.py: summary.json copied over provenance.json (calibration: "none")
    raised ValueError in dict(); the key is named instead."""
    import shutil

    d = tmp_path / "r"
    shutil.copytree(folders["run"], d)
    shutil.copy(d / "summary.json", d / "provenance.json")
    assert main(["report", str(d), "-o", str(tmp_path / "o.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "provenance.json: calibration: expected a mapping" in err, err


@pytest.mark.parametrize("key", ["pareto_axes", "space", "pareto", "rejected_by_reason"])
def test_search_json_that_simkit_did_not_write(folders, tmp_path, capsys, key):
    """Found by benchmarks/fuzz.py: search.json with pareto_axes: 5 raised TypeError (not iterable)."""
    import shutil

    d = tmp_path / "s"
    shutil.copytree(folders["search"], d)
    meta = json.loads((d / "search.json").read_text())
    meta[key] = 5
    (d / "search.json").write_text(json.dumps(meta))
    assert main(["report", str(d), "-o", str(tmp_path / "o.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"search.json: {key}: expected" in err, err


def test_workload_line_names_a_shipped_trace_by_its_file_name(tmp_path):
    """An installed simkit (its data under site-packages; here SIMKIT_HOME) writes a shipped
    trace into the run folder's scenario.yaml as a path relative to the run folder, through
    site-packages: the report names it by its bare file name (the name a scenario uses for it
    from any folder), and a user's own trace by the path scenario.yaml gives."""
    home = tmp_path / "site-packages" / "simkit" / "_data"
    (home / "workloads" / "traces").mkdir(parents=True)
    for d in ("hw_specs", "calibration", "workloads/models"):
        (home / d).symlink_to(ROOT / d)
    rows = "arrival_s,input_tokens,output_tokens\n0.0,100,10\n0.5,200,20\n1.0,50,5\n"
    (home / "workloads" / "traces" / "tiny_shipped.csv").write_text(rows)
    user = tmp_path / "user"
    (user / "data").mkdir(parents=True)
    (user / "data" / "t.csv").write_text(rows)
    for name, path in (("shipped", "tiny_shipped.csv"), ("own", "data/t.csv")):
        (user / f"{name}.yaml").write_text(f"name: {name}\nhardware: dgx-h100\nmodel: llama-2-7b\n"
                                           f"workload:\n  trace: {{path: {path}, format: native}}\n")  # fmt: skip
    code = ("import sys\nfrom simkit.cli import main\n"
            "for name in ('shipped', 'own'):\n"
            "    assert main(['run', name + '.yaml', '--out', 'runs/' + name, '--report', name + '.html']) == 0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMKIT_")}
    env.update(PYTHONPATH=str(ROOT), SIMKIT_HOME=str(home), SIMKIT_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], cwd=user, env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    written = (user / "runs" / "shipped" / "scenario.yaml").read_text()
    assert "path: ../../../site-packages/simkit/_data/workloads/traces/tiny_shipped.csv" in written, written
    assert "<dt>workload</dt><dd>trace tiny_shipped.csv (shipped, native)</dd>" in (user / "shipped.html").read_text()
    assert "path: ../../data/t.csv" in (user / "runs" / "own" / "scenario.yaml").read_text()
    assert "<dt>workload</dt><dd>trace ../../data/t.csv (native)</dd>" in (user / "own.html").read_text()
