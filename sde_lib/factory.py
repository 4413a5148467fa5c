"""Build an SDE from its name, as the CLI and the training configs spell it."""

from __future__ import annotations

from .covariance import Covariance, GFFCovariance, IdentityCovariance
from .sde import NIVESDE, NIVPSDE, SDE, SubVPSDE
from .spectral import BlurSDE, HeatSDE

__all__ = ["SDE_NAMES", "COLOURED_SDE_NAMES", "SPECTRAL_SDE_NAMES", "make_sde", "default_prediction"]

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


def default_prediction(name: str) -> str:
    """What a network of SDE `name` predicts unless told: "v" for blur and heat, "eps" otherwise.

    On the blurred frequencies of blur and heat a_k falls to d_min = 1e-3 of the noise scale, and an eps-network's
    error reaches the data prediction x0 = (y - s e) / a multiplied by s_k / a_k; the deterministic samplers
    (dpm2m, the probability-flow ODE) then diverge. v = (a e - s x0) / c keeps x0's error below v's (docs/math.md
    §11). Measured on the digits main job (600 steps, dpm2m at 100 evaluations): eps gave FD / floor 44, v 1.43.
    """
    if name not in SDE_NAMES:
        raise ValueError(f"unknown SDE {name!r}; choose one of {', '.join(SDE_NAMES)}")
    return "v" if name in SPECTRAL_SDE_NAMES else "eps"
