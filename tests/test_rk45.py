"""samplers.rk45: Dormand-Prince 5(4) with scipy's RK45 step control (docs/math.md §5).

* Parity: on a non-linear system, the same number of evaluations and the same solution as scipy's solve_ivp RK45
  (same tableau, initial step, error norm and step-size rule), forward and backward in time.
* Accuracy: on ODEs with closed-form solutions the global error follows the tolerance (within a small factor of it
  and shrinking with it), and the number of steps grows like tol^(-1/5), the rate of a fifth-order method.
* f is only evaluated inside [t0, t1]; quadrature entries skip the second stage with bit-identical results;
  non-finite stages and a collapsing step size raise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from samplers.rk45 import rk45

F64 = torch.float64


def system(seed: int = 0, n: int = 12):
    """dy/dt = tanh(M y) cos(3t) - y / 2: numpy and torch versions of one non-linear system."""
    rng = np.random.default_rng(seed)
    M, y0 = rng.normal(size=(n, n)), rng.normal(size=n)
    Mt = torch.tensor(M)

    def f_np(t, y):
        return np.tanh(M @ y) * np.cos(3 * t) - 0.5 * y

    def f_torch(t, y, out, quadrature=True):
        out.copy_(torch.tanh(Mt @ y) * math.cos(3 * t) - 0.5 * y)

    return f_np, f_torch, y0


@pytest.mark.parametrize("tol", [1e-3, 1e-6, 1e-9])
@pytest.mark.parametrize("span", [(0.0, 5.0), (4.0, 0.25)])
def test_same_steps_and_solution_as_scipy_rk45(tol, span):
    f_np, f_torch, y0 = system()
    ref = solve_ivp(f_np, span, y0, method="RK45", rtol=tol, atol=tol)
    y, nfe, steps = rk45(f_torch, torch.tensor(y0), *span, tol, tol)
    assert nfe == ref.nfev and steps == len(ref.t) - 1
    np.testing.assert_allclose(y.numpy(), ref.y[:, -1], rtol=0, atol=1e-11)


def test_global_error_follows_the_tolerance_at_fifth_order():
    """y' = -2 t y + cos(t) y, y(0) = (1, 2): y = y(0) exp(sin t - t^2); and the harmonic oscillator."""
    rates, steps_at = [], {}
    for tol in (1e-4, 1e-6, 1e-8, 1e-10):

        def gauss(t, y, out, quadrature=True):
            out.copy_((math.cos(t) - 2 * t) * y)

        y, _, steps = rk45(gauss, torch.tensor([1.0, 2.0], dtype=F64), 0.0, 2.0, tol, tol)
        exact = torch.tensor([1.0, 2.0], dtype=F64) * math.exp(math.sin(2.0) - 4.0)
        assert float((y - exact).abs().max()) < 20 * tol

        def oscillator(t, y, out, quadrature=True):
            out[0], out[1] = y[1], -y[0]

        y, _, _ = rk45(oscillator, torch.tensor([1.0, 0.0], dtype=F64), 0.0, 10.0, tol, tol)
        assert float((y - torch.tensor([math.cos(10.0), -math.sin(10.0)], dtype=F64)).abs().max()) < 50 * tol
        steps_at[tol] = steps
    for tight, loose in ((1e-10, 1e-6), (1e-8, 1e-4)):
        rates.append(math.log(steps_at[tight] / steps_at[loose]) / math.log(loose / tight))
    assert all(0.13 < r < 0.3 for r in rates), (rates, steps_at)  # steps ~ tol^(-1/5)


@pytest.mark.parametrize("span", [(1e-3, 1.0), (1.0, 1e-3)])
def test_f_is_only_evaluated_inside_the_interval(span):
    _, f_torch, y0 = system(1)
    seen = []

    def recording(t, y, out, quadrature=True):
        seen.append(t)
        f_torch(t, y, out)

    _, nfe, _ = rk45(recording, torch.tensor(y0), *span, 1e-6, 1e-6)
    assert nfe == len(seen) and min(seen) >= min(span) and max(seen) <= max(span)
    assert seen[0] == span[0] and seen[-1] == span[1]  # starts at t0, the last step lands exactly on t1


def test_quadrature_entries_skip_the_second_stage_with_identical_results():
    """The last entries integrate |y|^2 (nothing depends on them): with quadrature=2 the second stage may leave
    them unset (here: NaN), and every number is the same as with the full derivative."""
    _, f_torch, y0 = system(2)
    n = len(y0)
    skipped = []

    def with_integral(t, y, out, quadrature=True):
        f_torch(t, y[:n], out[:n])
        if quadrature:
            out[n] = y[:n].square().sum()
            out[n + 1] = math.sin(t) * y[0]
        else:
            skipped.append(t)
            out[n:] = math.nan

    start = torch.cat([torch.tensor(y0), torch.zeros(2, dtype=F64)])
    full = rk45(with_integral, start, 0.0, 3.0, 1e-7, 1e-7)
    assert not skipped
    skip = rk45(with_integral, start, 0.0, 3.0, 1e-7, 1e-7, quadrature=2)
    assert len(skipped) == (skip[1] - 2) // 6  # once per attempted step (2 start-up evaluations, 6 per step)
    assert torch.equal(full[0], skip[0]) and full[1:] == skip[1:]


def test_errors():
    def blow_up(t, y, out, quadrature=True):  # y' = y^2, y(0) = 1: y = 1 / (1 - t)
        out.copy_(y * y)

    with pytest.raises(RuntimeError, match="step size"):
        rk45(blow_up, torch.ones(1, dtype=F64), 0.0, 2.0, 1e-6, 1e-6)

    def nan_after(t, y, out, quadrature=True):
        out.fill_(math.nan if t > 0.5 else 1.0)

    with pytest.raises(FloatingPointError, match="non-finite"):
        rk45(nan_after, torch.zeros(3, dtype=F64), 0.0, 1.0, 1e-6, 1e-6)
    with pytest.raises(ValueError, match="flat"):
        rk45(nan_after, torch.zeros(2, 3, dtype=F64), 0.0, 1.0, 1e-6, 1e-6)
    y, nfe, steps = rk45(nan_after, torch.ones(3, dtype=F64), 0.5, 0.5, 1e-6, 1e-6)
    assert torch.equal(y, torch.ones(3, dtype=F64)) and nfe == steps == 0


def test_float32_state():
    _, f_torch, y0 = system(3)
    y64, _, _ = rk45(f_torch, torch.tensor(y0), 0.0, 2.0, 1e-5, 1e-5)

    def f32(t, y, out, quadrature=True):
        out64 = torch.empty_like(y, dtype=F64)
        f_torch(t, y.double(), out64)
        out.copy_(out64)

    y32, _, _ = rk45(f32, torch.tensor(y0, dtype=torch.float32), 0.0, 2.0, 1e-5, 1e-5)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, rtol=0, atol=1e-4)
