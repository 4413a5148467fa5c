"""Summaries of per-image results and of result tables."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

from torch import Tensor

__all__ = ["mean_and_sem", "table_markdown", "study_summary"]


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


def _over_seeds(values: dict[int, float], baseline: dict[int, float] | None, digits: int) -> tuple[str, str]:
    """("mean [lo, hi]" over the seeds, the same for the paired difference to `baseline` over the common seeds;
    "" where there is no baseline), Student-t 95% intervals (docs/math.md §10); one value has no interval."""
    from .stats import mean_interval, paired_interval

    def show(v: list[float], b: list[float] | None = None) -> str:
        if len(v) < 2:
            return f"{v[0] - (b[0] if b else 0.0):.{digits}f}"
        iv = paired_interval(v, b) if b else mean_interval(v)
        return f"{iv.value:.{digits}f} [{iv.lo:.{digits}f}, {iv.hi:.{digits}f}]"

    common = sorted(set(values) & set(baseline or {}))
    diff = show([values[s] for s in common], [baseline[s] for s in common]) if common else ""
    return show(list(values.values())), diff


def study_summary(
    rows: list[dict],
    configurations: Sequence[tuple[str, str, str]],
    baselines: Mapping[tuple[str, str, str], tuple[str, str, str]] | None = None,
) -> str:
    """Markdown of a study's CSV rows: for each configuration (sde, noise, loss) and cell (sampler, steps) the
    Frechet distance over seeds (mean and 95% Student-t interval) and its paired difference to the configuration's
    baseline (`baselines`, default the first configuration) over their common seeds; then bits/dim likewise
    (docs/math.md §10)."""
    configurations = [tuple(c) for c in configurations]
    base_of = {c: tuple((baselines or {}).get(c, configurations[0])) for c in configurations}
    fd, bpd, floor = defaultdict(dict), defaultdict(dict), {}
    for r in rows:
        config = (r["sde"], r["noise"], r["loss"])
        fd[config, r["sampler"], int(r["steps"])][int(r["seed"])] = float(r["fd"])
        if r["bpd"]:
            bpd[config][int(r["seed"])] = float(r["bpd"])
        floor[r["n"]] = f"{float(r['floor_fd']):.2f} +- {float(r['floor_sd']):.2f}"
    named = sorted(set(base_of.values()), key=configurations.index)
    lines = [f"Baseline{'s' if len(named) > 1 else ''}: {'; '.join(' '.join(b) for b in named)} (the column "
             "baseline names each row's); a paired difference uses the seeds both configurations have.", "",
             "| configuration | sampler | steps | seeds | FD, mean [95% CI] | baseline | FD - baseline, paired "
             "[95% CI] |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for sampler, steps in sorted({(s, n) for _, s, n in fd}, key=lambda c: (c[0], -c[1])):
        for config in (c for c in configurations if (c, sampler, steps) in fd):
            values, base = fd[config, sampler, steps], base_of[config]
            mean, diff = _over_seeds(values, fd.get((base, sampler, steps)) if config != base else None, 2)
            against = " ".join(base) if diff else ""
            lines.append(f"| {' '.join(config)} | {sampler} | {steps} | {len(values)} | {mean} | {against} | {diff} |")
    lines += ["", "Real-data floor (n train digits against the test digits, mean +- sd over 20 draws): "
              + "; ".join(f"n = {n}: {text}" for n, text in floor.items())]  # fmt: skip
    if bpd:
        lines += ["", "| configuration | seeds | bits/dim, mean [95% CI] | baseline | bits/dim - baseline, paired "
                  "[95% CI] |", "|---|---|---|---|---|"]  # fmt: skip
        for config in (c for c in configurations if c in bpd):
            base = base_of[config]
            mean, diff = _over_seeds(bpd[config], bpd.get(base) if config != base else None, 3)
            lines.append(f"| {' '.join(config)} | {len(bpd[config])} | {mean} | {' '.join(base) if diff else ''} | "
                         f"{diff} |")  # fmt: skip
    return "\n".join(lines)
