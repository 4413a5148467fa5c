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
    """A Markdown table of result rows {sde, sampler, steps, fd, fd_lo, fd_hi, precision, recall}: one line per
    (sampler, steps), for each value of `columns` (SDEs; `labels` their headings) the cells <score> (with its
    interval [fd_lo, fd_hi] where the row has one), P, R."""
    head = ["sampler", "steps"] + [f"{labels.get(c, c)} {name}" for c in columns for name in (score, "P", "R")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cells = {(r["sampler"], r["steps"], r["sde"]): r for r in rows}
    for sampler, steps in dict.fromkeys((r["sampler"], r["steps"]) for r in rows):
        out = [sampler, str(steps)]
        for c in columns:
            r = cells.get((sampler, steps, c))
            out += [_score(r), f"{r['precision']:.3f}", f"{r['recall']:.3f}"] if r else ["", "", ""]
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def _score(row: dict) -> str:
    """fd as "12.34", or "12.34 [11.02, 13.90]" with its interval."""
    text = f"{row['fd']:.2f}"
    return text if row.get("fd_lo") is None else f"{text} [{row['fd_lo']:.2f}, {row['fd_hi']:.2f}]"
