"""Result tables: mean ± std over seeds, paired differences, pooled samples, the paper's numbers
beside ours; written as markdown and CSV side by side.

Small pure functions of per-seed numbers, so every experiment's table logic is one composition
of them, testable on synthetic results (``tests/test_tables.py``).
"""

from __future__ import annotations

import csv
from collections.abc import Hashable, Iterable, Mapping, Sequence
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


def paired_differences(values: Mapping[Hashable, float], baseline: Mapping[Hashable, float]
                       ) -> dict[Hashable, float]:
    """``values[k] - baseline[k]`` for every key (seed) in both, in ``values``' order.

    Pairing by seed is what makes a difference meaningful (same init, mask and data order);
    a seed missing on either side is left out, never paired with another seed's run."""
    return {k: v - baseline[k] for k, v in values.items() if k in baseline}


def pooled(per_seed: Iterable[float | Sequence[float]]) -> list[float]:
    """One sample list from per-seed entries that are a number or a list of numbers (several
    runs of one seed, e.g. sign transfers to two fresh inits): every run is a sample."""
    out: list[float] = []
    for entry in per_seed:
        if isinstance(entry, list | tuple):
            out.extend(float(x) for x in entry)
        else:
            out.append(float(entry))
    return out


def per_seed_mean(per_seed: Iterable[float | Sequence[float]]) -> list[float]:
    """One number per seed: the mean of its runs (the alternative to :func:`pooled`)."""
    return [float(np.mean(e)) if isinstance(e, list | tuple) else float(e) for e in per_seed]


def paper_cell(paper: float | None, digits: int = 2) -> str:
    """The paper's number (already in table units), ``"—"`` where the paper has none."""
    return "—" if paper is None else f"{paper:.{digits}f}"


def paper_gap(values: Sequence[float], paper: float | None, scale: float = 100.0,
              digits: int = 2) -> str:
    """``ours − paper``: the signed gap of our mean (``values * scale``) to the paper's number;
    ``"—"`` where either is missing."""
    vals = [x for x in values if x is not None]
    if paper is None or not vals:
        return "—"
    return f"{scale * float(np.mean(vals)) - paper:+.{digits}f}"


def paper_columns(values: Sequence[float], paper: float | None, scale: float = 100.0,
                  digits: int = 2) -> list[str]:
    """``[paper, ours − paper]`` cells (:func:`paper_cell`, :func:`paper_gap`) of a row we
    have runs for; ``["—", "—"]`` where either side is missing."""
    if paper is None or not [x for x in values if x is not None]:
        return ["—", "—"]
    return [paper_cell(paper, digits), paper_gap(values, paper, scale, digits)]


def wins(differences: Iterable[float]) -> str:
    """``"k/n"``: how many of ``n`` paired differences are positive (``"—"`` for none)."""
    d = list(differences)
    return f"{sum(x > 0 for x in d)}/{len(d)}" if d else "—"


def _cell(value: object) -> str:
    # A "|" inside a cell would split it into two columns in markdown.
    return str(value).replace("|", "\\|")


def write_table(path_stem: Path, header: Sequence[str], rows: Sequence[Sequence[str]],
                title: str = "", notes: str = "") -> str:
    """Write ``<stem>.md`` and ``<stem>.csv``; returns the markdown."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(_cell(h) for h in header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    if notes:
        lines += ["", notes]
    markdown = "\n".join(lines) + "\n"
    path_stem.with_suffix(".md").write_text(markdown)
    with path_stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return markdown
