"""The device code of the fused Triton kernels (launched by kernels.triton_ops, which documents the algorithm).

`_normals` reproduces `kernels.noise` (Philox4x64-10 + Box-Muller) inside a kernel; `_pointwise_kernel` computes
alpha x + beta u + gamma z elementwise; `_spectral_kernel` applies Sigma^p by 2-D Hartley transforms (`_dht`) with
noise, scaling and axpy fused (docs/math.md §1.3, 1.4).

Integer arguments that change from call to call (the seed; the row count, which follows the batch size) are
declared `do_not_specialize` and the seed `tl.int64`: otherwise Triton compiles a new variant whenever such a value
is 1, divisible by 16, or (for the seed) crosses 2**31, i.e. in the middle of a run. Sizes fixed by the covariance
(C, H, W) stay specialised.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.noise import CLAMP, SCALE, TWO_PI

_SCALE: tl.constexpr = tl.constexpr(SCALE)
_TWO_PI: tl.constexpr = tl.constexpr(TWO_PI)
_CLAMP: tl.constexpr = tl.constexpr(CLAMP)
_LOW32: tl.constexpr = tl.constexpr(0xFFFFFFFF)


# ---- noise ---------------------------------------------------------------------------------------------------
@triton.jit
def _uniform(half, COMPUTE: tl.constexpr):
    """triton's uint_to_uniform_float of a uint32, in COMPUTE precision."""
    x = half.to(tl.int32, bitcast=True)
    x = tl.where(x < 0, ~x, x)
    return x.to(COMPUTE) * _SCALE


@triton.jit
def _box_muller(word, COMPUTE: tl.constexpr):
    """Two normals from the (low, high) uint32 halves of a uint64 Philox word."""
    u0 = _uniform((word & _LOW32).to(tl.uint32), COMPUTE)
    u1 = _uniform((word >> 32).to(tl.uint32), COMPUTE)
    r = tl.sqrt(-2.0 * tl.log(tl.maximum(u0, _CLAMP)))
    t = _TWO_PI * u1
    return r * tl.cos(t), r * tl.sin(t)


@triton.jit
def _normals(seed, rows, Wo, q0, BLOCK_W: tl.constexpr, COMPUTE: tl.constexpr):
    """(len(rows), BLOCK_W) normals of image rows `rows` (int64), columns 8 q0 .. 8 q0 + BLOCK_W - 1.

    Column w of row r takes normal w % 8 of counter r * Wo + w // 8 (the rule of kernels.noise).
    """
    q = q0 + tl.arange(0, BLOCK_W // 8)
    n = (rows[:, None] * Wo + q[None, :]).to(tl.uint64)
    zero = n * 0
    w0, w1, w2, w3 = tl.random.philox(seed, n, zero, zero, zero)
    c0, s0 = _box_muller(w0, COMPUTE)
    c1, s1 = _box_muller(w1, COMPUTE)
    c2, s2 = _box_muller(w2, COMPUTE)
    c3, s3 = _box_muller(w3, COMPUTE)
    # [..., a, b] of join(join(x0, x2), join(x1, x3)) is x_{2a + b}; the last join puts (cos, sin) innermost.
    cosines = tl.join(tl.join(c0, c2), tl.join(c1, c3))
    sines = tl.join(tl.join(s0, s2), tl.join(s1, s3))
    return tl.reshape(tl.join(cosines, sines), (rows.shape[0], BLOCK_W))


# ---- kernels -------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["seed", "n_rows"])
def _pointwise_kernel(
    out_ptr,
    noise_ptr,
    x_ptr,
    u_ptr,
    alpha_ptr,
    beta_ptr,
    gamma_ptr,
    seed: tl.int64,
    n_rows,
    rows_per_sample,
    W,
    Wo,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
    HAS_X: tl.constexpr,
    HAS_U: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    STORE_NOISE: tl.constexpr,
    COMPUTE: tl.constexpr,
    PER_ELEMENT: tl.constexpr = False,
):
    """out = alpha x + beta u + gamma z on the (B C H, W) row view; coefficients per sample = row // (C H), or per
    element (PER_ELEMENT: alpha, beta, gamma have out's layout; the spectral family's per-coefficient steps)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols < W)[None, :]
    offs = rows[:, None] * W + cols[None, :]
    sample = rows // rows_per_sample
    out = tl.zeros((BLOCK_R, BLOCK_W), dtype=COMPUTE)
    if HAS_X:
        alpha = _coefficient(alpha_ptr, sample, row_ok, offs, mask, BLOCK_R, BLOCK_W, PER_ELEMENT)
        out += alpha * tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    if HAS_U:
        beta = _coefficient(beta_ptr, sample, row_ok, offs, mask, BLOCK_R, BLOCK_W, PER_ELEMENT)
        out += beta * tl.load(u_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    if HAS_NOISE:
        z = _normals(seed, rows, Wo, tl.program_id(1) * (BLOCK_W // 8), BLOCK_W, COMPUTE)
        if STORE_NOISE:
            tl.store(noise_ptr + offs, z.to(noise_ptr.dtype.element_ty), mask=mask)
        out += _coefficient(gamma_ptr, sample, row_ok, offs, mask, BLOCK_R, BLOCK_W, PER_ELEMENT) * z
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _coefficient(ptr, sample, row_ok, offs, mask, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
                 PER_ELEMENT: tl.constexpr):  # fmt: skip
    """The (BLOCK_R, BLOCK_W) coefficients of a tile: per element, or the sample's, broadcast over its row."""
    if PER_ELEMENT:
        c = tl.load(ptr + offs, mask=mask, other=0.0)
    else:
        c = tl.broadcast_to(tl.load(ptr + sample, mask=row_ok, other=0.0)[:, None], (BLOCK_R, BLOCK_W))
    return c


@triton.jit
def _dht(v, ch, sh, cps, cms, PRECISION: tl.constexpr):
    """Unnormalised 2-D discrete Hartley transform C_H v (C_W + S_W) + S_H v (C_W - S_W) of a padded tile."""
    a = tl.dot(ch, v, input_precision=PRECISION)
    b = tl.dot(sh, v, input_precision=PRECISION)
    return tl.dot(a, cps, input_precision=PRECISION) + tl.dot(b, cms, input_precision=PRECISION)


@triton.jit(do_not_specialize=["seed"])
def _spectral_kernel(
    out_ptr,
    noise_ptr,
    x_ptr,
    u_ptr,
    alpha_ptr,
    beta_ptr,
    gamma_ptr,
    filter_ptr,
    ch_ptr,
    sh_ptr,
    cps_ptr,
    cms_ptr,
    seed: tl.int64,
    C,
    H,
    W,
    Wo,
    HP: tl.constexpr,
    WP: tl.constexpr,
    HAS_X: tl.constexpr,
    HAS_U: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    STORE_NOISE: tl.constexpr,
    RELOAD_NOISE: tl.constexpr,
    COMPUTE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """out = alpha x + Sigma^p (beta u + gamma z) for one (sample, channel) image, padded to (HP, WP).

    filter_ptr: (C, HP, WP) = lambda^p / (H W), zero-padded; ch/sh: (HP, HP) and cps/cms: (WP, WP) = C_W +- S_W.
    RELOAD_NOISE (STORE_NOISE with noise in the COMPUTE dtype, large tiles: triton_ops.reload_noise): z is drawn and
    stored 16 rows at a time and read back as a tile, which halves the register spills of 64 x 64 tiles.
    """
    image = tl.program_id(0).to(tl.int64)  # = sample * C + channel
    sample = image // C
    channel = image % C
    h = tl.arange(0, HP)
    w = tl.arange(0, WP)
    mask = (h < H)[:, None] & (w < W)[None, :]
    offs = image * H * W + h[:, None] * W + w[None, :]
    v = tl.zeros((HP, WP), dtype=COMPUTE)
    if HAS_U:
        v += tl.load(beta_ptr + sample) * tl.load(u_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    if HAS_NOISE:
        if RELOAD_NOISE:  # 16 rows at a time to noise_ptr, then the tile read back: fewer live registers
            for r in tl.static_range(0, HP, 16):
                rows = r + tl.arange(0, 16)
                z = _normals(seed, image * H + rows, Wo, 0, WP, COMPUTE)
                chunk = (rows < H)[:, None] & (w < W)[None, :]
                tl.store(noise_ptr + image * H * W + rows[:, None] * W + w[None, :], z, mask=chunk)
            tl.debug_barrier()  # the block's global writes are visible to all its threads after the barrier
            z = tl.load(noise_ptr + offs, mask=mask, other=0.0)
        else:
            z = tl.where(mask, _normals(seed, image * H + h, Wo, 0, WP, COMPUTE), 0.0)
            if STORE_NOISE:
                tl.store(noise_ptr + offs, z.to(noise_ptr.dtype.element_ty), mask=mask)
        v += tl.load(gamma_ptr + sample) * z
    square_h = h[:, None] * HP + h[None, :]
    square_w = w[:, None] * WP + w[None, :]
    ch = tl.load(ch_ptr + square_h)
    sh = tl.load(sh_ptr + square_h)
    cps = tl.load(cps_ptr + square_w)
    cms = tl.load(cms_ptr + square_w)
    lam = tl.load(filter_ptr + channel * HP * WP + h[:, None] * WP + w[None, :])
    spectrum = _dht(v, ch, sh, cps, cms, PRECISION) * lam
    out = _dht(spectrum, ch, sh, cps, cms, PRECISION)
    if HAS_X:
        out += tl.load(alpha_ptr + sample) * tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


# ---- host side -----------------------------------------------------------------------------------------------
