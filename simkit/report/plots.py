"""matplotlib -> inline SVG, imported only when a report is drawn (never on ``simkit run``'s path).

Figures use the object-oriented API (no pyplot state) and the SVG backend; text stays text
(``svg.fonttype: none``, the browser's own sans-serif), ids are salted per figure so several
SVGs share a page without clashes, and no date is embedded, so the same data give the same SVG.
"""

from __future__ import annotations

import io
import re
from typing import Any

from simkit.report.html import esc

COLORS = ["#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bc4c00", "#1b7c83", "#6e7781", "#bf3989", "#4d2d00"]


def figure(width: float = 9.5, height: float = 3.2, ncols: int = 1, nrows: int = 1, sharex: bool = False, *,
           left: float = 0.75, right: float = 0.2, top: float = 0.35, bottom: float = 0.5,
           wspace: float = 0.25, hspace: float = 0.2) -> tuple[Any, Any]:
    """A new (Figure, axes): one Axes, a 1-D array for a row or column, a 2-D array for a grid.
    Margins are in inches and fixed (no layout engine: it doubles the drawing time)."""
    import matplotlib

    matplotlib.rcParams.update({
        "svg.fonttype": "none",
        "font.family": "sans-serif",
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.color": "#e6e8eb",
        "grid.linewidth": 0.6,
        "legend.fontsize": 8,
        "legend.frameon": False,
        "path.simplify": True,
    })
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasSVG(fig)
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                        wspace=wspace, hspace=hspace)
    axes = fig.subplots(nrows, ncols, sharex=sharex, squeeze=False)
    if nrows * ncols == 1:
        return fig, axes[0, 0]
    if nrows == 1 or ncols == 1:
        return fig, axes.ravel()
    return fig, axes


def to_svg(fig: Any, title: str, alt: str) -> str:
    """The figure as an inline ``<svg>``: role=img, an aria-label and a <title> (the alt text),
    scaled by CSS, without the XML prologue."""
    import hashlib

    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "simkit"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)  # RDF boilerplate
    label = f"{title}. {alt}"
    # matplotlib numbers its ids per figure (axes_1, ...): prefix them so SVGs can share a page
    p = "f" + hashlib.sha1((label + text).encode()).hexdigest()[:8] + "-"
    text = re.sub(r'(\sid=")([^"]+")', lambda m: m.group(1) + p + m.group(2), text)
    text = re.sub(r"url\(#", f"url(#{p}", text)
    text = re.sub(r'href="#', f'href="#{p}', text)
    # drop the fixed size (CSS scales the figure to the page) but never wider than drawn
    text = re.sub(
        r"<svg([^>]*?)\swidth=\"([\d.]+)pt\"\s+height=\"[^\"]*\"",
        lambda m: f'<svg{m.group(1)} style="max-width: {float(m.group(2)) * 4 / 3:.0f}px" role="img" aria-label="{esc(label)}"',
        text,
        count=1,
    )
    head_end = text.index(">") + 1
    return text[:head_end] + f"<title>{esc(label)}</title>" + text[head_end:]


def mark_slo(ax: Any, x: float, label: str, vertical: bool = True) -> None:
    if vertical:
        ax.axvline(x, color="#cf222e", linestyle="--", linewidth=1.1)
        ax.annotate(label, (x, 0.02), xycoords=("data", "axes fraction"), rotation=90, fontsize=7.5, color="#cf222e",
                    ha="right", va="bottom")
    else:
        ax.axhline(x, color="#cf222e", linestyle="--", linewidth=1.1)
        ax.annotate(label, (0.01, x), xycoords=("axes fraction", "data"), fontsize=7.5, color="#cf222e", va="bottom")
