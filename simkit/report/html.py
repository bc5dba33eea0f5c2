"""The page: one self-contained HTML file (inline CSS and SVG, no scripts, fonts or links out).

:class:`Page` collects sections; each figure carries alt text and the data behind it as a CSV
embedded in a ``data:`` download link, so the page opens from a mail attachment and prints.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import io
import math
import re
from collections.abc import Sequence
from typing import Any

CSS = """
:root { --fg:#1b1f24; --muted:#57606a; --line:#d0d7de; --bg:#ffffff; --soft:#f6f8fa; --ok:#1a7f37; --bad:#cf222e; --accent:#0969da; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0 auto; max-width: 1120px; padding: 24px 28px 64px; line-height: 1.45; font-size: 15px; }
h1 { font-size: 1.6em; margin: 0 0 4px; } h2 { font-size: 1.25em; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05em; margin: 22px 0 8px; }
p.lead { color: var(--muted); margin: 0 0 14px; }
nav { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; margin: 14px 0 0; font-size: .92em; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; white-space: nowrap; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: .9em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; } td.num { white-space: nowrap; }
.wide { overflow-x: auto; max-width: 100%; }
.ok { color: var(--ok); font-weight: 600; } .bad { color: var(--bad); font-weight: 600; }
.callout { border-left: 4px solid var(--accent); background: var(--soft); padding: 8px 12px; margin: 10px 0 14px; }
.callout.warn { border-left-color: var(--bad); }
figure { margin: 10px 0 22px; break-inside: avoid; page-break-inside: avoid; }
figure svg { display: block; width: 100%; height: auto; max-width: 1060px; }
figure.half { display: inline-block; width: 49%; vertical-align: top; margin-right: 1%; }
figcaption { font-size: .88em; color: var(--muted); margin-top: 4px; }
figcaption a { color: var(--accent); }
pre { background: var(--soft); border: 1px solid var(--line); padding: 10px; font-size: .82em; overflow-x: auto; white-space: pre-wrap; }
details { margin: 6px 0 14px; } summary { cursor: pointer; color: var(--accent); }
.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; font-size: .92em; }
.kv dt { color: var(--muted); } .kv dd { margin: 0; }
footer { margin-top: 40px; color: var(--muted); font-size: .85em; border-top: 1px solid var(--line); padding-top: 8px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11pt; }
  nav, figcaption a, details > summary { display: none; }
  details::details-content { content-visibility: visible; display: block; }
  a { color: inherit; text-decoration: none; }
  h2 { break-after: avoid; page-break-after: avoid; }
  table { break-inside: avoid; page-break-inside: avoid; }
  figure.half { width: 49%; }
}
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def fmt_num(v: Any, digits: int = 4) -> str:
    """A number for a table cell: integers as integers, others to ``digits`` significant figures."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "inf"
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.{digits - 1}e}"
        if v == int(v) and abs(v) < 1e6:
            return f"{int(v):,}"
        return f"{v:,.{max(digits - 1 - int(math.floor(math.log10(abs(v)))), 0) if v else 0}f}"
    return str(v)


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if (isinstance(x, float) and math.isnan(x)) else (repr(x) if isinstance(x, float) else x) for x in r])
    return buf.getvalue()


def data_link(csv_data: str, filename: str, label: str = "data (CSV)") -> str:
    b64 = base64.b64encode(csv_data.encode()).decode()
    return f'<a download="{esc(filename)}" href="data:text/csv;base64,{b64}">{esc(label)}</a>'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] | None = None,
          classes: Sequence[Sequence[str]] | None = None, caption: str | None = None) -> str:
    """An HTML table; cells are escaped, numbers formatted, numeric columns right-aligned."""
    numeric = list(numeric) if numeric is not None else [False] * len(header)
    out = ['<div class="wide"><table>']
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    # long dotted/underscored keys may break after their separators
    heads = [re.sub(r"([._|])", r"\1<wbr>", esc(h)) for h in header]
    out.append("<thead><tr>" + "".join(f'<th class="{"num" if n else ""}">{h}</th>' for h, n in zip(heads, numeric)) + "</tr></thead><tbody>")
    for i, r in enumerate(rows):
        cells = []
        for j, v in enumerate(r):
            cls = ["num"] if numeric[j] else []
            if classes is not None and classes[i][j]:
                cls.append(classes[i][j])
            text = fmt_num(v) if isinstance(v, int | float) and not isinstance(v, bool) else (fmt_num(v) if isinstance(v, bool) or v is None else str(v))
            cells.append(f'<td class="{" ".join(cls)}">{esc(text)}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


class Page:
    """Sections of one report page, rendered to a single HTML string."""

    def __init__(self, title: str, subtitle: str) -> None:
        self.title = title
        self.subtitle = subtitle
        self.parts: list[str] = []
        self.toc: list[tuple[str, str]] = []
        self._fig = 0
        self._ids: set[str] = set()
        self.prefix = ""
        """Put before every section title (a search page's winner sections)."""

    def uid(self, base: str) -> str:
        k = anchor(base)
        i, cand = 1, k
        while cand in self._ids:
            i += 1
            cand = f"{k}-{i}"
        self._ids.add(cand)
        return cand

    def section(self, title: str, toc: bool = True) -> None:
        title = self.prefix + title
        a = self.uid(title)
        if toc and not self.prefix:
            self.toc.append((a, title))
        self.parts.append(f'<h2 id="{a}">{esc(title)}</h2>')

    def h3(self, title: str) -> None:
        self.parts.append(f"<h3>{esc(title)}</h3>")

    def para(self, text: str, cls: str = "") -> None:
        self.parts.append(f'<p class="{cls}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>")

    def callout(self, text: str, warn: bool = False) -> None:
        self.parts.append(f'<div class="callout{" warn" if warn else ""}">{esc(text)}</div>')

    def raw(self, html_text: str) -> None:
        self.parts.append(html_text)

    def pre(self, text: str, summary: str | None = None) -> None:
        body = f"<pre>{esc(text)}</pre>"
        self.parts.append(f"<details><summary>{esc(summary)}</summary>{body}</details>" if summary else body)

    def figure(self, svg: str, caption: str, csv_data: str | None, name: str, half: bool = False) -> None:
        """An inline SVG figure (its <title>/aria-label set by plots.to_svg) with its caption
        and the data behind it as a CSV download."""
        self._fig += 1
        link = f" {data_link(csv_data, f'{anchor(name)}.csv')}" if csv_data is not None else ""
        cls = ' class="half"' if half else ""
        self.parts.append(
            f'<figure{cls} data-figure="{self._fig}">{svg}<figcaption>Figure {self._fig}. {esc(caption)}{link}</figcaption></figure>'
        )

    def render(self) -> str:
        from simkit import __version__

        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in self.toc)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(self.title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(self.title)}</h1><p class=\"lead\">{esc(self.subtitle)}</p><nav>{nav}</nav></header>"
            f"<main>{''.join(self.parts)}</main>"
            f"<footer>Generated by simkit {esc(__version__)} on {esc(now)}. One self-contained file: no scripts, "
            "fonts or network access; each figure's data is a CSV download under it.</footer></body></html>\n"
        )
