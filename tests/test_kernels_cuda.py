"""GPU-readiness checks that need CUDA (skipped without it; benchmarks/gpu_check.sh runs them on a GPU).

* The Triton kernels run on their tensors' device, not the current one (kernels.triton_ops._on_device): with two or
  more GPUs, noise drawn on the last one while cuda:0 is current equals the same draw on cuda:0.
* The seed does not specialise the kernels: new seeds (1, multiples of 16, >= 2**31) reuse the compiled variant.
* Attention (models.layers.AttnBlock) runs on CUDA's fused scaled-dot-product kernels, the math kernel disabled.
The numbers of the kernels against the reference are tests/kernels_triton/triton_cases.py's.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from models.layers import AttnBlock  # noqa: E402
from sde_lib.covariance import GFFCovariance  # noqa: E402


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_kernels_run_on_the_tensors_device_not_the_current_one():
    from kernels import triton_ops

    cov = GFFCovariance((3, 16, 16))
    last = torch.device("cuda", torch.cuda.device_count() - 1)
    with torch.cuda.device(0):
        eps, g = triton_ops.gff_noise(cov, 4, 11, device=last)
        x = torch.randn(4, 3, 16, 16, device=last)
        update = triton_ops.ni_update(x, x, 0.9, 0.1, 0.2, cov, 11)
        torch.cuda.synchronize(last)
    eps0, g0 = triton_ops.gff_noise(cov, 4, 11, device="cuda:0")
    assert eps.device == g.device == update.device == last
    torch.testing.assert_close(eps.cpu(), eps0.cpu(), rtol=0, atol=0)
    torch.testing.assert_close(g.cpu(), g0.cpu())
    want = triton_ops.ni_update(x.to("cuda:0"), x.to("cuda:0"), 0.9, 0.1, 0.2, cov, 11)
    torch.testing.assert_close(update.cpu(), want.cpu())


def test_cuda_new_seeds_reuse_the_compiled_kernels():
    from kernels import triton_ops

    kernels = (triton_ops._spectral_kernel, triton_ops._pointwise_kernel)
    if not all(hasattr(fn, "device_caches") for fn in kernels):
        pytest.skip("this triton version keeps its compiled kernels elsewhere")
    device = torch.cuda.current_device()

    def compiled() -> int:
        return sum(len(fn.device_caches[device][0]) for fn in kernels)

    cov = GFFCovariance((3, 32, 32))  # the spectral kernel
    x = torch.randn(8, 3, 32, 32, device="cuda")
    triton_ops.ni_update(x, x, 0.9, 0.1, 0.2, cov, 7)  # compiles the variant
    before = compiled()
    for seed in (1, 32, 48, 2**31 + 5, 2**40 + 17, 2**62):
        triton_ops.ni_update(x, x, 0.9, 0.1, 0.2, cov, seed)
    assert compiled() == before

    big_cov = GFFCovariance((1, 72, 80))  # the pointwise kernels around torch.fft; the row count follows the batch
    big = torch.randn(16, 1, 72, 80, device="cuda")
    triton_ops.gff_noise(big_cov, 8, 7, device="cuda")
    triton_ops.perturb(big[:8], 0.5, 0.5, big_cov, 7)
    before = compiled()
    for seed, batch in [(1, 1), (32, 16), (2**40 + 1, 3), (48, 2)]:
        triton_ops.gff_noise(big_cov, batch, seed, device="cuda")
        triton_ops.perturb(big[:batch], 0.5, 0.5, big_cov, seed)
    torch.cuda.synchronize()
    assert compiled() == before


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_attention_runs_on_fused_sdpa_kernels(dtype):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    block = AttnBlock(256, num_groups=32, skip_rescale=False).cuda().eval()
    with torch.no_grad():
        torch.nn.init.normal_(block.proj.weight, std=0.05)
    x = torch.randn(16, 256, 16, 16, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        with sdpa_kernel([SDPBackend.MATH]):
            want = block(x)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):  # raises if neither applies
            got = block(x)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
