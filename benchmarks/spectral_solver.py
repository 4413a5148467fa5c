"""Per-frequency DPM-Solver++(2M) against the scalar-lambda step on the spectral family (docs/math.md §11).

Gaussian data diagonal in the SDE's basis (tests.gaussian_oracle.DiagonalGaussian: exact eps model, exact
probability-flow map), 64 samples of 1x8x8, float64; the error is the RMS over the spectral coefficients of dpm2m's
state at t = 1e-3 against the exact map of the same x_T, for each grid and step count, with the observed order
log2(e_K / e_2K). Run from the repository root:

    python -m benchmarks.spectral_solver
"""

from __future__ import annotations

import math

import torch

from samplers import sample
from samplers.common import Run
from sde_lib import make_sde
from tests.gaussian_oracle import DiagonalGaussian

STEPS = (10, 20, 40, 80, 160)


def flow_error(sde, data: DiagonalGaussian, steps: int, schedule: str, per_frequency: bool, batch: int = 64) -> float:
    shape = (batch, *sde.cov.shape)
    model = data.model(sde)
    prior = Run(sde, model, shape, torch.Generator().manual_seed(5), False, None, torch.float64).prior()
    x, _ = sample(sde, model, shape, "dpm2m", steps, torch.Generator().manual_seed(5), dtype=torch.float64,
                  schedule=schedule, denoise=False, per_frequency=per_frequency)  # fmt: skip
    exact = data.flow(sde, sde.to_spectral(prior), 1e-3)
    return float((sde.to_spectral(x) - exact).square().mean().sqrt())


def main() -> None:
    print(f"| SDE | grid | step | {' | '.join(f'{k} steps' for k in STEPS)} | orders |")
    print("|---|---|---|" + "---|" * len(STEPS) + "---|")
    for name in ("blur", "heat"):
        sde = make_sde(name, (1, 8, 8))
        data = DiagonalGaussian.random(sde, seed=3)
        for schedule in ("logsnr", "signal"):
            for per_frequency in (True, False):
                errors = [flow_error(sde, data, k, schedule, per_frequency) for k in STEPS]
                orders = [math.log2(errors[i] / errors[i + 1]) for i in range(len(STEPS) - 1)]
                step = "per frequency" if per_frequency else "scalar lambda"
                print(f"| {name} | {schedule} | {step} | {' | '.join(f'{e:.1e}' for e in errors)} | "
                      f"{', '.join(f'{o:.2f}' for o in orders)} |")  # fmt: skip


if __name__ == "__main__":
    main()
