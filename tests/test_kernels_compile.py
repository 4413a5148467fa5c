"""The Triton kernels compile for a CUDA GPU (sm_80, sm_90) with triton's bundled ptxas, without a GPU.

The interpreter (tests/test_kernels_triton.py) checks the numbers; this checks what only a GPU compile checks:
tl.dot tile sizes (8 x 8 images padded to 16 x 16), float64 and tf32x3 dots, the noise layout (tl.join /
tl.reshape of uint64 Philox words) and bfloat16 loads/stores. It compiles the same kernels with the same
constexpr arguments that kernels.triton_ops launches. It also checks, with triton's own launch-time binder, that
the seed does not specialise the kernels (one compiled variant for every seed), and measures register use and
spills with ptxas -v: `python tests/test_kernels_compile.py` prints them for every spectral tile size.
"""

import os
import re
import subprocess
import sys
import tempfile

import pytest

if __name__ == "__main__":  # run as a script: this checkout's packages, not an installed copy
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiling needs the JIT kernels, not the interpreter", allow_module_level=True)
triton = pytest.importorskip("triton")
import torch  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import triton_ops  # noqa: E402

A100_SHARED_BYTES = 163 * 1024  # the most shared memory one block may use on sm_80

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


def compile_spectral(arch: int, op: str, data: str, compute: torch.dtype, side: int, num_warps: int | None = None):
    """The spectral kernel of `op` for side x side tiles, with triton_ops' constexprs and (default) num_warps."""
    constants = dict(HP=side, WP=side, PRECISION=triton_ops.dot_precision(compute), **_flags(op))
    noise = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16}[data]
    constants["RELOAD_NOISE"] = constants["STORE_NOISE"] and triton_ops.reload_noise(side, side, noise, compute)
    num_warps = num_warps or (8 if side >= 64 else 4)
    return compile_kernel(triton_ops._spectral_kernel, arch, data, compute, constants, num_warps=num_warps)


def ptxas_usage(compiled, arch: int) -> dict:
    """Registers, spill store / load bytes (per thread) and shared memory of a compiled kernel: its PTX through
    triton's bundled ptxas -v with the options triton uses."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        cmd = [get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}", ptx]
        log = subprocess.run([*cmd, "-o", ptx + ".o"], capture_output=True, text=True, check=True).stderr
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return dict(
        registers=int(re.search(r"Used (\d+) registers", log).group(1)),
        spill_stores=int(spills.group(1)),
        spill_loads=int(spills.group(2)),
        shared=compiled.metadata.shared,
    )


@pytest.mark.parametrize(
    "arch, op, data, compute, side",
    [
        (90, "ni_update", "fp32", torch.float32, 16),  # 8 x 8 .. 16 x 16 images
        (90, "perturb", "bf16", torch.float32, 32),
        (80, "gff_noise", "fp64", torch.float64, triton_ops.MAX_DFT_SIZE_FLOAT64),  # the largest float64 tile
    ],
)
def test_spectral_kernel_compiles_for_gpu(arch, op, data, compute, side):
    compiled = compile_spectral(arch, op, data, compute, side)
    assert len(compiled.asm["cubin"]) > 0
    assert f".target sm_{arch}" in compiled.asm["ptx"]
    # fits an A100 (a 64 x 64 float64 tile needs 196608 bytes: hence MAX_DFT_SIZE_FLOAT64 = 32)
    assert compiled.metadata.shared <= A100_SHARED_BYTES


@pytest.mark.parametrize(
    "op, side, bound",
    [("ni_update", 32, 1024), ("gff_noise", 64, 2560)],  # 64: the noise stored in row chunks (RELOAD_NOISE)
)
def test_spill_bytes_stay_bounded(op, side, bound):
    """ptxas -v on sm_90, noise-drawing kernels (triton 3.8: 255 registers; spill stores 396 bytes at 32 x 32,
    1680 at 64 x 64, where 3192 before RELOAD_NOISE); the module's __main__ prints every size. A regression
    guard, not a target."""
    usage = ptxas_usage(compile_spectral(90, op, "fp32", torch.float32, side), 90)
    print(usage)
    assert usage["registers"] <= 255 and usage["spill_stores"] <= bound


@pytest.mark.parametrize("kernel", ["_spectral_kernel", "_pointwise_kernel"])
def test_seed_and_row_count_do_not_specialise_the_kernel(kernel):
    """The key triton caches compiled variants by (the binder's specialisation) is the same for seeds 1, 32 (which
    an int argument would turn into a constant / a divisible-by-16 variant) and >= 2**31 (an i64)."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = getattr(triton_ops, kernel)
    binder = create_function_from_signature(fn.signature, fn.params, make_backend(GPUTarget("cuda", 90, 32)))
    t = torch.zeros(64)
    constants = dict(HAS_X=True, HAS_U=True, HAS_NOISE=True, STORE_NOISE=False, COMPUTE=tl.float32)
    keys = set()
    for seed, batch in [(1, 2), (32, 16), (7, 1), (2**40 + 17, 3), (2**62, 256)]:
        if kernel == "_spectral_kernel":
            args = [t] * 12 + [seed, 3, 32, 32, 4]
            constants.update(HP=32, WP=32, PRECISION="tf32x3", RELOAD_NOISE=False)
        else:
            args = [t] * 7 + [seed, batch * 3 * 32, 3 * 32, 32, 4]
            constants.update(BLOCK_R=16, BLOCK_W=128)
        _, specialization, _ = binder(*args, **constants)
        keys.add(str(specialization))
        assert specialization[fn.arg_names.index("seed")] == ("i64", None)
    assert len(keys) == 1, keys


@pytest.mark.parametrize("op, per_element", [("ni_update", False), ("score_scale", False), ("ni_update", True)])
def test_pointwise_kernel_compiles_for_gpu(op, per_element):
    """Per-sample coefficients, and per-element ones (kernels.spectral_update, the spectral family's step)."""
    BLOCK_W = 128
    constants = dict(BLOCK_R=triton_ops._POINTWISE_ELEMENTS // BLOCK_W, BLOCK_W=BLOCK_W, PER_ELEMENT=per_element,
                     **_flags(op))  # fmt: skip
    compiled = compile_kernel(triton_ops._pointwise_kernel, 90, "bf16", torch.float32, constants, num_warps=8)
    assert len(compiled.asm["cubin"]) > 0


if __name__ == "__main__":  # the table of the review: python tests/test_kernels_compile.py [sides...]
    sides = [int(a) for a in sys.argv[1:]] or [16, 32, 64]
    print("| arch | op | compute | tile | warps | registers | spill stores B | spill loads B | shared B |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for arch, data, compute in [(90, "fp32", torch.float32), (80, "fp64", torch.float64)]:
        for side in sides:
            if compute == torch.float64 and side > triton_ops.MAX_DFT_SIZE_FLOAT64:
                continue
            for op in FLAGS:
                u = ptxas_usage(compile_spectral(arch, op, data, compute, side), arch)
                warps = 8 if side >= 64 else 4
                print(f"| sm_{arch} | {op} | {data} | {side} | {warps} | {u['registers']} | {u['spill_stores']} | "
                      f"{u['spill_loads']} | {u['shared']} |", flush=True)  # fmt: skip
