"""Build an SDE from its name, as the CLI and the training configs spell it."""

from __future__ import annotations

from .covariance import Covariance, GFFCovariance, IdentityCovariance
from .sde import NIVESDE, NIVPSDE, SDE, SubVPSDE
from .spectral import BlurSDE, HeatSDE

__all__ = ["SDE_NAMES", "COLOURED_SDE_NAMES", "SPECTRAL_SDE_NAMES", "make_sde"]

SDE_NAMES = ("vp", "subvp", "ve", "nivp", "nive", "blur", "heat")
COLOURED_SDE_NAMES = ("nivp", "nive")  # the names whose covariance is chosen (GFF, data-matched); the rest are white
SPECTRAL_SDE_NAMES = ("blur", "heat")  # per-frequency signal schedules in the DCT-II basis, white noise (§11)


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
    """The SDE `name` in {vp, subvp, ve, nivp, nive, blur, heat} on images of `shape` (C, H, W).

    vp / subvp / ve are isotropic (Sigma = I). nivp / nive use `cov` if given (e.g. a data-matched
    SpectralCovariance), else GFF noise GFFCovariance(shape, power, dc) (docs/math.md §1). blur / heat decay each
    frequency of the signal in the DCT-II basis with white noise (docs/math.md §11): blur on the VP schedule
    (beta_min, beta_max), heat with noise from 0.01 to 50; a covariance is refused (DCT-II does not diagonalise
    GFF or data-spectrum noise).
    """
    if name not in SDE_NAMES:
        raise ValueError(f"unknown SDE {name!r}; choose one of {', '.join(SDE_NAMES)}")
    if name in SPECTRAL_SDE_NAMES:
        if cov is not None:
            raise ValueError(f"SDE {name!r} takes white noise only: its DCT-II basis does not diagonalise GFF or "
                             "data-spectrum noise (use nivp / nive for those)")  # fmt: skip
        return BlurSDE(shape, beta_min, beta_max, N) if name == "blur" else HeatSDE(shape, N)
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
