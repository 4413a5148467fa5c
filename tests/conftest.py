"""Fixtures shared by the test modules (benchmarks/conftest.py re-exports one_thread for benchmarks/)."""

import pytest
import torch

from tests.gaussian_oracle import gff_cov


@pytest.fixture(scope="module")
def one_thread():
    """Run the requesting module with one intra-op torch thread, then restore the setting.

    The tests use tiny tensors (and tiny networks), for which thread-pool synchronisation costs more than it gains;
    on a shared, busy 2-core machine it made autograd through the FFT operators 100x slower and the U-Net tests 3-4x.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`, a test or fixture by requesting it.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cov():
    """The GFF noise covariance (power 1) of the oracle problems on 1x8x8 images (tests.gaussian_oracle.SHAPE)."""
    return gff_cov()
