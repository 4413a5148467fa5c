"""Microbenchmarks of the kernels (pytest-benchmark): Triton vs the torch reference and vs the plain torch chain.

Implementations per operation, timed in one process so that their ratios are meaningful:

* ``reference``: kernels.reference (Philox noise drawn on the CPU, covariance operators with torch.fft);
* ``chain``: the unfused torch chain a non-isotropic step costs without these kernels: torch.randn, then
  rfft2 * lambda^p, irfft2 (the covariance operator) and the axpy;
* ``triton``: kernels.triton_ops (CUDA only);
* ``randn``: torch.randn of the output size alone (gff_noise only): the price of white noise.

CPU: the reference, the chain and randn at B in {64, 256} x 3x32x32 and B = 64 x 3x64x64, float32 (small, so that
the untimed CI run, ``--benchmark-disable``, takes seconds). CUDA: all of them at B in {64, 256, 1024},
3x32x32 and 3x64x64, float32 and bfloat16, with the peak device memory each call allocates beyond its
outputs (``extra_info["extra_mib"]``). ``python benchmarks/test_kernels.py --summary RESULT.json`` turns a
``--benchmark-json`` file into the markdown table of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable

import pytest
import torch

from kernels import reference
from sde_lib.covariance import GFFCovariance

CUDA = torch.cuda.is_available()
SHAPES = {"3x32x32": (3, 32, 32), "3x64x64": (3, 64, 64)}
OPS = ("gff_noise", "perturb", "ni_update", "score_scale")
SEED = 1234
# Peak memory bandwidth (GB/s) of cards by name, to express gff_noise's write rate as a fraction.
PEAK_BANDWIDTH_GBS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100-SXM4-80GB": 2039.0, "A100": 1555.0}


def _inputs(B: int, shape: tuple[int, int, int], dtype: torch.dtype, device: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    x, eps_theta = (torch.randn(B, *shape, generator=gen).to(device, dtype) for _ in range(2))
    work = torch.float64 if dtype == torch.float64 else torch.float32
    c = [torch.rand(B, generator=gen).to(device, work) + 0.5 for _ in range(3)]
    return dict(x=x, eps_theta=eps_theta, c_x=c[0], c_eps=c[1], c_z=c[2])


def _per_sample(c: torch.Tensor) -> torch.Tensor:
    return c[:, None, None, None]


def make_call(op: str, impl: str, B: int, shape: tuple[int, int, int], dtype: torch.dtype, device: str) -> Callable:
    """A zero-argument callable running `op` with implementation `impl` on a prepared batch."""
    cov = GFFCovariance(shape, power=1.0)
    a = _inputs(B, shape, dtype, device)
    x, e, c_x, c_eps, c_z = a["x"], a["eps_theta"], a["c_x"], a["c_eps"], a["c_z"]
    if impl == "randn":
        return lambda: torch.randn(B, *shape, device=device, dtype=dtype)
    if impl == "chain":

        def white() -> torch.Tensor:
            return torch.randn(B, *shape, device=device, dtype=dtype)

        chains = {
            "gff_noise": lambda: cov.sqrt_mul(white()),
            "perturb": lambda: (_per_sample(c_x) * x + cov.sqrt_mul(_per_sample(c_z) * white())).to(dtype),
            "ni_update": lambda: (
                _per_sample(c_x) * x + cov.sqrt_mul(_per_sample(c_eps) * e + _per_sample(c_z) * white())
            ).to(dtype),
            "score_scale": lambda: (-cov.inv_sqrt_mul(e) / _per_sample(c_z)).to(dtype),
        }
        return chains[op]
    if impl == "triton":
        from kernels import triton_ops as impl_module
    else:
        impl_module = reference
    calls = {
        "gff_noise": lambda: impl_module.gff_noise(cov, B, SEED, device=device, dtype=dtype),
        "perturb": lambda: impl_module.perturb(x, c_x, c_z, cov, SEED),
        "ni_update": lambda: impl_module.ni_update(x, e, c_x, c_eps, c_z, cov, SEED),
        "score_scale": lambda: impl_module.score_scale(e, c_z, cov),
    }
    return calls[op]


def _output_bytes(op: str, B: int, shape: tuple[int, int, int], dtype: torch.dtype) -> int:
    n = 2 if op in ("gff_noise", "perturb") else 1  # (eps, g), (x_t, eps)
    return n * B * math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def _cases() -> list:
    cases = []
    for device in ("cpu", "cuda"):
        batches = (64, 256) if device == "cpu" else (64, 256, 1024)
        dtypes = (torch.float32,) if device == "cpu" else (torch.float32, torch.bfloat16)
        impls = ("reference", "chain") if device == "cpu" else ("reference", "chain", "triton")
        marks = [] if device == "cpu" else [pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]
        for B in batches:
            for name, shape in SHAPES.items():
                if device == "cpu" and B * math.prod(shape) > 256 * 3 * 32 * 32:
                    continue  # keeps the untimed CPU run short
                for dtype in dtypes:
                    for op in OPS:
                        for impl in impls + (("randn",) if op == "gff_noise" else ()):
                            dt = str(dtype).removeprefix("torch.")
                            case_id = f"{device}-{op}-{impl}-B{B}-{name}-{dt}"
                            cases.append(pytest.param(device, op, impl, B, shape, dtype, marks=marks, id=case_id))
    return cases


@pytest.mark.parametrize("device, op, impl, B, shape, dtype", _cases())
def test_kernel_speed(benchmark, device, op, impl, B, shape, dtype):
    call = make_call(op, impl, B, shape, dtype, device)
    benchmark.group = f"{device} {op} B={B} {'x'.join(map(str, shape))} {str(dtype).removeprefix('torch.')}"
    benchmark.extra_info.update(device=device, op=op, impl=impl, B=B, shape=list(shape), dtype=str(dtype))
    benchmark.extra_info["output_bytes"] = _output_bytes(op, B, shape, dtype)
    if device == "cuda":
        call()  # compile / warm up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = call()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before - benchmark.extra_info["output_bytes"]
        benchmark.extra_info["extra_mib"] = max(extra, 0) / 2**20
        benchmark.extra_info["device_name"] = torch.cuda.get_device_name()
        del out

        def timed():
            result = call()
            torch.cuda.synchronize()
            return result

        result = benchmark(timed)
    else:
        result = benchmark(call)
    outputs = result if isinstance(result, tuple) else (result,)
    assert all(torch.isfinite(o.float()).all() for o in outputs)


# ---- summary ----------------------------------------------------------------------------------------------------
def _peak_bandwidth(name: str) -> float | None:
    for key, value in PEAK_BANDWIDTH_GBS.items():  # most specific names first
        if key in name:
            return value
    return None


def summarize(path: str) -> str:
    """Markdown table of a --benchmark-json file: mean times, ratios within each group, memory, bandwidth."""
    data = json.load(open(path, encoding="utf-8"))
    groups: dict[str, dict[str, dict]] = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench["group"], {})[bench["extra_info"]["impl"]] = bench
    lines = [
        "| case | impl | mean ms | speed-up vs chain | cost vs randn | extra MiB | write GB/s (% peak) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for group, impls in groups.items():
        chain = impls.get("chain", {}).get("stats", {}).get("mean")
        randn = impls.get("randn", {}).get("stats", {}).get("mean")
        for impl, bench in sorted(impls.items()):
            mean, info = bench["stats"]["mean"], bench["extra_info"]
            vs_chain = f"{chain / mean:.2f}" if chain and impl != "chain" else ""
            vs_randn = f"{mean / randn:.2f}" if randn and impl != "randn" else ""
            extra = f"{info['extra_mib']:.1f}" if "extra_mib" in info else ""
            rate = ""
            if info["op"] == "gff_noise" and info["device"] == "cuda":
                gbs = info["output_bytes"] / mean / 1e9
                peak = _peak_bandwidth(info.get("device_name", ""))
                rate = f"{gbs:.0f}" + (f" ({100 * gbs / peak:.0f}%)" if peak else "")
            lines.append(f"| {group} | {impl} | {1e3 * mean:.3f} | {vs_chain} | {vs_randn} | {extra} | {rate} |")
    machine = data.get("machine_info", {})
    lines.append("")
    cpu = machine.get("cpu", {}).get("brand_raw", "?")
    lines.append(f"Machine: {cpu}; python {machine.get('python_version', '?')}.")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", required=True, help="a pytest --benchmark-json file")
    print(summarize(parser.parse_args().summary))
