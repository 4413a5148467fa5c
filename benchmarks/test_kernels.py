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

``python benchmarks/test_kernels.py --gpu-check update|bandwidth`` is the quick CUDA check of benchmarks/gpu_check.sh
(CUDA-event timing, median of repeats, no pytest): ``update``: the fused ni_update against the torch chain at
B = 256, 3x32x32, float32 (target: >= 3x faster); ``bandwidth``: gff_noise at large batch, bytes written / time as a
fraction of the card's peak memory bandwidth (target: >= 60%; the peak from PEAK_BANDWIDTH_GBS by GPU name, or the
environment variable NIDIFF_PEAK_GBS in GB/s). It prints details, then one ``SUMMARY: ...`` line; exit status 0
when the target is met, 3 when it is missed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections.abc import Callable

import pytest
import torch

if __name__ == "__main__":  # run as a script: this checkout's packages, not an installed copy
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels import reference  # noqa: E402
from sde_lib.covariance import GFFCovariance  # noqa: E402

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


# ---- quick CUDA check (benchmarks/gpu_check.sh) -----------------------------------------------------------------
UPDATE_TARGET = 3.0  # fused ni_update at least 3x faster than the torch chain
BANDWIDTH_TARGET = 0.60  # gff_noise writes at >= 60% of the peak memory bandwidth


def peak_bandwidth_gbs(name: str) -> float | None:
    """Peak memory bandwidth of the card `name` in GB/s: NIDIFF_PEAK_GBS if set, else PEAK_BANDWIDTH_GBS."""
    env = os.environ.get("NIDIFF_PEAK_GBS")
    return float(env) if env else _peak_bandwidth(name)


def cuda_seconds(call: Callable, repeats: int = 25, warmup: int = 3) -> float:
    """Median seconds of call() between two CUDA events (launch overheads included), after `warmup` calls."""
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def gpu_check(what: str) -> int:
    name = torch.cuda.get_device_name()
    if what == "update":
        B, shape = 256, SHAPES["3x32x32"]
        impls = ("chain", "triton")
        t = {impl: cuda_seconds(make_call("ni_update", impl, B, shape, torch.float32, "cuda")) for impl in impls}
        for impl, sec in t.items():
            print(f"ni_update {impl:9s} B={B} 3x32x32 float32: {sec * 1e6:9.1f} us")
        speedup = t["chain"] / t["triton"]
        print(f"SUMMARY: ni_update B={B} 3x32x32 fp32 triton {speedup:.2f}x vs torch chain (target >= 3x)")
        return 0 if speedup >= UPDATE_TARGET else 3
    peak = peak_bandwidth_gbs(name)
    key = None
    for B, shape_name in [(4096, "3x32x32"), (1024, "3x64x64")]:
        shape = SHAPES[shape_name]
        for impl in ("triton", "randn"):
            sec = cuda_seconds(make_call("gff_noise", impl, B, shape, torch.float32, "cuda"), repeats=15)
            gbs = _output_bytes("gff_noise" if impl == "triton" else "randn", B, shape, torch.float32) / sec / 1e9
            share = f"{100 * gbs / peak:.0f}% of {peak:.0f} GB/s" if peak else "peak unknown (set NIDIFF_PEAK_GBS)"
            print(
                f"gff_noise {impl:6s} B={B} {shape_name} float32: {sec * 1e3:.3f} ms, {gbs:.0f} GB/s written, {share}"
            )
            if impl == "triton" and key is None:
                key = (B, shape_name, gbs)
    B, shape_name, gbs = key
    share = f"{100 * gbs / peak:.0f}% of peak {peak:.0f} GB/s" if peak else "peak unknown"
    print(f"SUMMARY: gff_noise B={B} {shape_name} fp32 {gbs:.0f} GB/s = {share} on {name} (target >= 60%)")
    return 0 if peak and gbs / peak >= BANDWIDTH_TARGET else 3


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--summary", help="a pytest --benchmark-json file: print its markdown table")
    group.add_argument("--gpu-check", choices=("update", "bandwidth"), help="the quick CUDA check of gpu_check.sh")
    args = parser.parse_args()
    if args.summary:
        print(summarize(args.summary))
    else:
        if not CUDA:
            raise SystemExit("--gpu-check needs a CUDA GPU")
        raise SystemExit(gpu_check(args.gpu_check))
