"""The run page and the comparison page of two or more runs."""

from __future__ import annotations

from simkit.report import run as sections
from simkit.report.data import Run
from simkit.report.html import Page, csv_text, table


def run_sections(page: Page, run: Run) -> None:
    """Every section of a run report (also the winner's part of a search report)."""
    sections.section_scenario(page, [run])
    sections.section_headline(page, [run])
    sections.section_latency(page, [run])
    sections.section_over_time(page, [run])
    sections.section_utilisation(page, [run])
    sections.section_memory(page, [run])
    sections.section_operators(page, run)


def run_page(run: Run) -> str:
    s = run.summary
    page = Page(f"simkit run report: {run.scenario.name if run.scenario is not None else run.label}",
                f"{s.get('model')} on {s.get('hardware')} - {s.get('requests_total'):,} requests, policy {s.get('policy')}, "
                f"tp={s.get('tp')} pp={s.get('pp')} replicas={s.get('replicas')} - folder {run.path}")
    run_sections(page, run)
    sections.section_provenance(page, run)
    return page.render()


def compare_page(runs: list[Run]) -> str:
    page = Page(f"simkit comparison: {' vs '.join(r.label for r in runs)}",
                f"{len(runs)} runs; differences are relative to the first, {runs[0].label}.")
    page.section("What differs")
    diffs = sections.scenario_differences(runs)
    if diffs:
        page.raw(table(["scenario key", *[r.label for r in runs]], diffs))
        page.raw("<p>" + csv_link(diffs, runs) + "</p>")
    else:
        page.para("The scenarios are identical (or their scenario.yaml is missing).")
    sections.section_headline(page, runs)
    sections.section_scenario(page, runs)
    sections.section_latency(page, runs)
    sections.section_over_time(page, runs)
    sections.section_utilisation(page, runs)
    sections.section_memory(page, runs)
    sections.section_operators_compare(page, runs)
    for r in runs:
        sections.section_provenance(page, r, title=f"Provenance - {r.label}")
    return page.render()


def csv_link(rows: list[list[str]], runs: list[Run]) -> str:
    from simkit.report.html import data_link

    return data_link(csv_text(["key", *[r.label for r in runs]], rows), "scenario-differences.csv", "differences (CSV)")
