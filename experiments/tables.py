"""Result tables: mean ± std over seeds, written as markdown and CSV side by side."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``"m ± s"`` of ``values * scale`` (sample std over seeds; ``"m"`` for one value)."""
    v = np.asarray([x for x in values if x is not None], float) * scale
    if v.size == 0:
        return "—"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def write_table(path_stem: Path, header: Sequence[str], rows: Sequence[Sequence[str]],
                title: str = "", notes: str = "") -> str:
    """Write ``<stem>.md`` and ``<stem>.csv``; returns the markdown."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    if notes:
        lines += ["", notes]
    markdown = "\n".join(lines) + "\n"
    path_stem.with_suffix(".md").write_text(markdown)
    with path_stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return markdown
