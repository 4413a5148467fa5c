"""Build an SDE from its name, as the CLI and the training configs spell it."""

from __future__ import annotations

from .covariance import Covariance, GFFCovariance, IdentityCovariance
from .sde import NIVESDE, NIVPSDE, SDE, SubVPSDE

__all__ = ["SDE_NAMES", "COLOURED_SDE_NAMES", "make_sde"]

SDE_NAMES = ("vp", "subvp", "ve", "nivp", "nive")
COLOURED_SDE_NAMES = ("nivp", "nive")  # the names whose covariance is chosen (GFF, data-matched); the rest are white


def make_sde(
    name: str,
    shape: tuple[int, int, int],
    cov: Covariance | None = None,
    power: float = 1.0,
    dc: str = "one",
    N: int = 1000,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    sigma_min: float = 0.01,
    sigma_max: float = 50.0,
) -> SDE:
    """The SDE `name` in {vp, subvp, ve, nivp, nive} on images of `shape` (C, H, W).

    vp / subvp / ve are isotropic (Sigma = I). nivp / nive use `cov` if given (e.g. a data-matched
    SpectralCovariance), else GFF noise GFFCovariance(shape, power, dc) (docs/math.md §1).
    """
    if name not in SDE_NAMES:
        raise ValueError(f"unknown SDE {name!r}; choose one of {', '.join(SDE_NAMES)}")
    if name not in COLOURED_SDE_NAMES:
        if cov is not None:
            raise ValueError(f"SDE {name!r} is isotropic; use {'ni' + name.removeprefix('sub')!r} for a covariance")
        cov = IdentityCovariance(shape)
    elif cov is None:
        cov = GFFCovariance(shape, power=power, dc=dc)
    if name in ("vp", "nivp"):
        return NIVPSDE(beta_min, beta_max, N, cov=cov)
    if name == "subvp":
        return SubVPSDE(beta_min, beta_max, N, cov=cov)
    return NIVESDE(sigma_min, sigma_max, N, cov=cov)
