"""The mathematical core of nidiff: noise covariances and SDEs (docs/math.md §1-4)."""

from .covariance import Covariance, GFFCovariance, IdentityCovariance, SpectralCovariance, frequency_norm
from .factory import COLOURED_SDE_NAMES, SDE_NAMES, SPECTRAL_SDE_NAMES, default_prediction, make_sde
from .prediction import PREDICTIONS, eps_from_prediction, tweedie_coefficients
from .quantization import dequantize, nats_to_bpd
from .reverse import ReverseSDE
from .schedules import DDPMSchedule, cas_noise_scale, ddpm_schedule, geometric_sigmas, largest_pairwise_distance
from .sde import NIVESDE, NIVPSDE, SDE, VESDE, VPSDE, NotApplicableError, SubVPSDE
from .spectral import BlurSDE, DCTBasis, HeatSDE, SpectralSDE

__all__ = [
    "Covariance",
    "IdentityCovariance",
    "SpectralCovariance",
    "GFFCovariance",
    "frequency_norm",
    "SDE",
    "ReverseSDE",
    "NotApplicableError",
    "PREDICTIONS",
    "eps_from_prediction",
    "tweedie_coefficients",
    "NIVPSDE",
    "VPSDE",
    "SubVPSDE",
    "NIVESDE",
    "VESDE",
    "DDPMSchedule",
    "ddpm_schedule",
    "geometric_sigmas",
    "cas_noise_scale",
    "largest_pairwise_distance",
    "SpectralSDE",
    "BlurSDE",
    "HeatSDE",
    "DCTBasis",
    "SDE_NAMES",
    "SPECTRAL_SDE_NAMES",
    "COLOURED_SDE_NAMES",
    "make_sde",
    "default_prediction",
    "dequantize",
    "nats_to_bpd",
]
