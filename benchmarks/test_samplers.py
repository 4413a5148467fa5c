"""pytest-benchmark timings of the samplers and the likelihood on a small problem (issue 4).

CI runs each once, untimed (--benchmark-disable); `pytest benchmarks/test_samplers.py --benchmark-enable` times
them. Problem: a 3-component Gaussian mixture on 1x8x8 in GFF noise (NIVP), exact score, batch 64, float64.
The assertions only check that each call did its work (the mathematics is tested in tests/).
"""

from __future__ import annotations

import pytest
import torch

import samplers
from tests.gaussian_oracle import SHAPE, GaussianMixture, gff_cov, oracle_sde

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def problem():
    sde = oracle_sde("nivp", gff_cov())
    gmm = GaussianMixture.mixture(SHAPE, torch.Generator().manual_seed(0))
    return sde, gmm, gmm.score_fn(sde)


@pytest.mark.parametrize(
    "args",
    [
        {"method": "ddim", "steps": 50},
        {"method": "ddpm", "steps": 50},
        {"method": "dpm2m", "steps": 10},
        {"method": "unipc", "steps": 10},
    ],
    ids=["ddim-50", "ddpm-50", "dpm2m-10", "unipc-10"],
)
def test_sampling(benchmark, problem, args):
    sde, _, score = problem

    def run():
        g = torch.Generator().manual_seed(0)
        return samplers.sample(sde, score, (64, *SHAPE), generator=g, dtype=torch.float64, **args)

    x, nfe = benchmark(run)
    assert nfe == args["steps"] and torch.isfinite(x).all()


@pytest.mark.parametrize("divergence", ["rademacher", "exact"])
def test_log_likelihood(benchmark, problem, divergence):
    sde, gmm, score = problem
    x = gmm.sample(16, torch.Generator().manual_seed(1))

    def run():
        return samplers.log_likelihood(sde, score, x, divergence=divergence, generator=torch.Generator().manual_seed(2))

    logp, _, nfe = benchmark(run)
    assert logp.shape == (16,) and nfe > 0 and torch.isfinite(logp).all()
