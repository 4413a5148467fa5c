"""The Triton kernels compile for a CUDA GPU (sm_80, sm_90) with triton's bundled ptxas, without a GPU.

The interpreter (tests/test_kernels_triton.py) checks the numbers; this checks what only a GPU compile checks:
tl.dot tile sizes (8 x 8 images padded to 16 x 16), float64 and tf32x3 dots, the noise layout (tl.join /
tl.reshape of uint64 Philox words) and bfloat16 loads/stores. It compiles the same kernels with the same
constexpr arguments that kernels.triton_ops launches.
"""

import os

import pytest

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiling needs the JIT kernels, not the interpreter", allow_module_level=True)
triton = pytest.importorskip("triton")
import torch  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import triton_ops  # noqa: E402

FLAGS = {  # (HAS_X, HAS_U, HAS_NOISE, STORE_NOISE) per operation, as launched by triton_ops
    "gff_noise": (False, False, True, True),
    "perturb": (True, False, True, True),
    "ni_update": (True, True, True, False),
    "score_scale": (False, True, False, False),
}


def compile_kernel(kernel, arch: int, data: str, compute: torch.dtype, constants: dict, num_warps: int):
    pointers = {"alpha_ptr", "beta_ptr", "gamma_ptr", "filter_ptr", "ch_ptr", "sh_ptr", "cps_ptr", "cms_ptr"}
    work = "fp64" if compute == torch.float64 else "fp32"
    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = f"*{work}" if name in pointers else f"*{data}"
        else:
            signature[name] = "i64" if name == "seed" else "i32"
    constants = {**constants, "COMPUTE": tl.float64 if compute == torch.float64 else tl.float32}
    source = ASTSource(kernel, signature, constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def _flags(op: str) -> dict:
    return dict(zip(("HAS_X", "HAS_U", "HAS_NOISE", "STORE_NOISE"), FLAGS[op]))


@pytest.mark.parametrize(
    "arch, op, data, compute, side",
    [
        (90, "ni_update", "fp32", torch.float32, 16),  # 8 x 8 .. 16 x 16 images
        (90, "perturb", "bf16", torch.float32, 32),
        (80, "gff_noise", "fp64", torch.float64, 16),
    ],
)
def test_spectral_kernel_compiles_for_gpu(arch, op, data, compute, side):
    constants = dict(HP=side, WP=side, PRECISION=triton_ops.dot_precision(compute), **_flags(op))
    compiled = compile_kernel(triton_ops._spectral_kernel, arch, data, compute, constants, num_warps=4)
    assert len(compiled.asm["cubin"]) > 0
    assert f".target sm_{arch}" in compiled.asm["ptx"]


@pytest.mark.parametrize("op", ["ni_update", "score_scale"])
def test_pointwise_kernel_compiles_for_gpu(op):
    BLOCK_W = 128
    constants = dict(BLOCK_R=triton_ops._POINTWISE_ELEMENTS // BLOCK_W, BLOCK_W=BLOCK_W, **_flags(op))
    compiled = compile_kernel(triton_ops._pointwise_kernel, 90, "bf16", torch.float32, constants, num_warps=8)
    assert len(compiled.asm["cubin"]) > 0
