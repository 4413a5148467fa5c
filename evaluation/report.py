"""Summaries of per-image results and of result tables."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

__all__ = ["mean_and_sem", "table_markdown"]


def mean_and_sem(values: Tensor) -> tuple[float, float]:
    """(mean, standard error std / sqrt(n)) of per-image values (the standard error is nan for one value)."""
    values = values.double()
    sem = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(values.mean()), sem


def table_markdown(rows: list[dict], columns: Sequence[str], labels: dict[str, str], score: str) -> str:
    """A Markdown table of result rows {column, sampler, steps, fid, precision, recall}: one line per (sampler,
    steps), for each value of `columns` (e.g. SDEs; `labels` their headings) the cells <score>, P, R."""
    head = ["sampler", "steps"] + [f"{labels.get(c, c)} {name}" for c in columns for name in (score, "P", "R")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cells = {(r["sampler"], r["steps"], r["sde"]): r for r in rows}
    for sampler, steps in dict.fromkeys((r["sampler"], r["steps"]) for r in rows):
        out = [sampler, str(steps)]
        for c in columns:
            r = cells.get((sampler, steps, c))
            out += [f"{r['fid']:.2f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}"] if r else ["", "", ""]
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)
