"""Each kind of report opened in headless Chromium (Debian's `chromium`; .ci/run installs it):
no console errors, no network requests, every figure drawn with a non-zero size, a screenshot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import report_folders as rf  # noqa: E402
from cdp import Browser, chromium  # noqa: E402

from simkit.report import write_report  # noqa: E402

EXE = chromium()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(EXE is None, reason="chromium is not installed (.ci/run installs it)")]

FIGURE_SIZES = """JSON.stringify([...document.querySelectorAll('figure')].map(f => {
  const s = f.querySelector('svg'); const r = s.getBoundingClientRect();
  return {label: s.getAttribute('aria-label'), w: r.width, h: r.height, shapes: s.querySelectorAll('path,rect,line,text,use').length};
}))"""


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser")
    run, run_b = rf.make_run(base / "run"), rf.make_run(base / "run_b", {"workload.synthetic.arrival.rate": 16})
    return {
        "run": write_report([run], base / "run.html"),
        "compare": write_report([run, run_b], base / "compare.html"),
        "study": write_report([rf.make_study(base / "study")], base / "study.html"),
        "search": write_report([rf.make_search(base / "search")], base / "search.html"),
        # folders written by the real commands
        "simkit-study": write_report([rf.make_real_study(base / "real_study")], base / "real_study.html"),
        "simkit-search": write_report([rf.make_real_search(base / "real_search")], base / "real_search.html"),
    }


@pytest.fixture(scope="module")
def browser():
    b = Browser(EXE)
    yield b
    b.close()


@pytest.mark.parametrize("kind", ["run", "compare", "study", "search", "simkit-study", "simkit-search"])
def test_report_renders_in_chromium(kind, reports, browser, tmp_path):
    page = reports[kind]
    browser.open(page.resolve().as_uri())
    figs = json.loads(browser.evaluate(FIGURE_SIZES))
    assert len(figs) >= 2
    for f in figs:
        assert f["w"] > 100 and f["h"] > 50 and f["shapes"] > 10, f
    assert browser.evaluate("document.title").startswith("simkit ")
    assert browser.evaluate("document.querySelectorAll('h2').length") >= 4
    problems = browser.problems()
    assert problems["console"] == [] and problems["exceptions"] == [] and problems["log"] == [], problems
    assert problems["requests"] == [page.resolve().as_uri()], problems["requests"]  # the page itself, nothing else
    shot = tmp_path / f"{kind}.png"
    browser.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    # printed: no navigation, figures still drawn, the folded YAML/JSON printed in full
    browser.send("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        assert browser.evaluate("getComputedStyle(document.querySelector('nav')).display") == "none"
        assert all(f["w"] > 100 and f["h"] > 50 for f in json.loads(browser.evaluate(FIGURE_SIZES)))
        assert browser.evaluate("[...document.querySelectorAll('details pre')].every(p => p.checkVisibility())")
    finally:
        browser.send("Emulation.setEmulatedMedia", {"media": ""})


def test_the_checks_catch_a_bad_page(browser, tmp_path):
    """The same checks see an external request and a console error (so a pass above means something)."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><title>x</title></head><body><img src="http://192.0.2.1/x.png">'
                   "<script>console.error('boom')</script></body></html>")
    browser.open(bad.resolve().as_uri())
    problems = browser.problems()
    assert any("192.0.2.1" in u for u in problems["requests"])
    assert any("boom" in c for c in problems["console"])
