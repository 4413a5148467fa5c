"""The white-noise rule shared by both backends: counter-based Philox4x64-10 + Box-Muller (docs/math.md §1.4).

Noise is a pure function of (seed, sample index, position): a sample's noise does not depend on the batch it
is drawn in, and the torch reference and the Triton kernels produce the same numbers. The rule, for B samples
of shape (C, H, W), with Wo = ceil(W / 8) counters per image row (each counter gives 8 normals):

* element (i, c, h, w) uses counter ``n = i * (C * H * Wo) + (c * H + h) * Wo + w // 8`` and its normal
  number ``w % 8``;
* ``(w0, w1, w2, w3) = Philox4x64-10(counter=(n, 0, 0, 0), key=(seed, 0))`` (Salmon et al. 2011, the
  Random123 / numpy ``Philox`` bit generator; triton's ``tl.random.philox(seed, n, 0, 0, 0)`` with uint64
  counters);
* the eight uint32 halves ``(lo(w0), hi(w0), lo(w1), hi(w1), ...)`` become uniforms
  ``u = x' * SCALE`` with ``x'`` the int32 bit pattern of the half, complemented (``~x``) when negative
  (triton's ``uint_to_uniform_float``); pairs ``(u_{2k}, u_{2k+1})`` become normals by Box-Muller,
  ``(r cos t, r sin t)`` with ``r = sqrt(-2 log max(u_{2k}, CLAMP))`` and ``t = TWO_PI * u_{2k+1}``
  (triton's ``pair_uniform_to_normal``).

Box-Muller runs in float32, or in float64 for float64 outputs with the same (float32-exact) constants, so
float64 noise equals float32 noise to float32 rounding. The integers are exact in both backends; log, sqrt,
cos and sin may differ between math libraries by a few units in the last place.

Seeds are Python ints with 0 <= seed < 2**63.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["SEED_LIMIT", "NORMALS_PER_COUNTER", "SCALE", "TWO_PI", "CLAMP", "check_seed", "philox_words", "white_noise"]

SEED_LIMIT = 2**63
NORMALS_PER_COUNTER = 8
# The float32 constants of triton's uint_to_uniform_float and pair_uniform_to_normal, written exactly.
SCALE = 4.6566125955216364e-10  # float32(4.6566127342e-10)
TWO_PI = 6.2831854820251465  # float32(2 pi)
CLAMP = 1.0000000116860974e-07  # float32(1e-7)
_CHUNK = 1 << 13  # counters per pass (65536 normals): the temporaries stay in cache


def check_seed(seed: object, name: str = "seed") -> int:
    """Validate a noise seed: a Python int (or an integer 1-element tensor) with 0 <= seed < 2**63."""
    if isinstance(seed, Tensor) and seed.numel() == 1 and not (seed.is_floating_point() or seed.is_complex()):
        seed = int(seed.item())
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"{name} must be a Python int in [0, 2**63), got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{name} must satisfy 0 <= {name} < 2**63, got {seed}")
    return seed


def philox_words(seed: int, first: int) -> np.random.Philox:
    """A Philox4x64-10 stream with key (seed, 0) whose next block is the one of counter `first`.

    ``random_raw(4 * m)`` then returns the words (w0, w1, w2, w3) of counters first, ..., first + m - 1.
    (numpy increments the counter before each block, hence the start at first - 1 modulo 2^256.)
    """
    start = (first - 1) % 2**256
    counter = np.array([(start >> (64 * k)) & (2**64 - 1) for k in range(4)], dtype=np.uint64)
    return np.random.Philox(key=np.array([check_seed(seed), 0], dtype=np.uint64), counter=counter)


def _normals(words: np.ndarray, out: np.ndarray) -> None:
    """Box-Muller of the uint32 halves of Philox words (m, 4) into out (m, 8), in out's dtype.

    numpy on purpose: single-threaded vectorised loops, so the cost does not depend on thread contention.
    """
    real = out.dtype.type
    half = words.view(np.int32)  # little-endian: lo(w0), hi(w0), lo(w1), ...
    half ^= half >> 31  # x' = ~x where x < 0
    u = half.astype(out.dtype).reshape(-1, 4, 2)
    u *= real(SCALE)
    r = np.maximum(u[..., 0], real(CLAMP))
    np.log(r, out=r)
    r *= real(-2.0)
    np.sqrt(r, out=r)
    t = u[..., 1]
    t *= real(TWO_PI)
    pairs = out.reshape(-1, 4, 2)
    np.cos(t, out=pairs[..., 0])
    pairs[..., 0] *= r
    np.sin(t, out=pairs[..., 1])
    pairs[..., 1] *= r


def white_noise(
    seed: int,
    n: int,
    shape: tuple[int, int, int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """N(0, I) noise of shape (n, C, H, W) by the rule of this module, samples 0..n-1 of the seed's stream.

    Computed on the CPU in float32 (float64 for float64), then cast to `dtype` and moved to `device`.
    """
    C, H, W = shape
    Wo = -(-W // NORMALS_PER_COUNTER)
    total = n * C * H * Wo
    out = np.empty((total, NORMALS_PER_COUNTER), dtype=np.float64 if dtype == torch.float64 else np.float32)
    stream = philox_words(seed, 0)
    for start in range(0, total, _CHUNK):
        stop = min(start + _CHUNK, total)
        _normals(stream.random_raw(4 * (stop - start)).reshape(-1, 4), out[start:stop])
    noise = torch.from_numpy(out).view(n, C, H, NORMALS_PER_COUNTER * Wo)[..., :W]
    return noise.to(device=device, dtype=dtype, memory_format=torch.contiguous_format)
