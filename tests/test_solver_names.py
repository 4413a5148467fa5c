"""samplers.ode keeps torchdiffeq's method names in two public tuples instead of importing torchdiffeq's private
registry. This test (and only this test) reads that registry, so a torchdiffeq upgrade that adds, removes or
reclassifies a method fails here rather than in a user's run."""

from __future__ import annotations

import pytest

from samplers.ode import ADAPTIVE_SOLVERS, FIXED_GRID_SOLVERS, check_solver


def test_the_solver_tuples_match_torchdiffeqs_registry():
    from torchdiffeq._impl.odeint import SOLVERS
    from torchdiffeq._impl.solvers import FixedGridODESolver

    assert len(set(FIXED_GRID_SOLVERS)) == len(FIXED_GRID_SOLVERS)
    assert len(set(ADAPTIVE_SOLVERS)) == len(ADAPTIVE_SOLVERS)
    assert not set(FIXED_GRID_SOLVERS) & set(ADAPTIVE_SOLVERS)
    assert sorted(FIXED_GRID_SOLVERS + ADAPTIVE_SOLVERS) == sorted(SOLVERS)
    for name, cls in SOLVERS.items():
        assert issubclass(cls, FixedGridODESolver) == (name in FIXED_GRID_SOLVERS), name


@pytest.mark.parametrize("name", FIXED_GRID_SOLVERS)
def test_check_solver_fixed_grid(name):
    assert check_solver(name) is True


@pytest.mark.parametrize("name", ADAPTIVE_SOLVERS)
def test_check_solver_adaptive(name):
    assert check_solver(name) is False


@pytest.mark.parametrize("name", ["rk99", "", "DOPRI5", "Euler"])
def test_check_solver_refuses_unknown_names_listing_the_known_ones(name):
    with pytest.raises(ValueError, match=r"solver must be a torchdiffeq method, one of \[.*'dopri5'.*'rk4'.*\]"):
        check_solver(name)
