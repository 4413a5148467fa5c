"""Forward + backward time of the U-Net configs on the CPU (pytest-benchmark): the network's share of a train step.

One call is the forward pass at random times t, an MSE against a fixed target, and the backward pass, at the
batch of TIMED (digits 128, cifar10 8); no optimizer. `extra_info` records the parameter count, the forward
multiply-accumulates per image (torch.utils.flop_counter), the median time per call, images/s and the achieved
GFLOP/s (forward + backward = 3 x forward FLOPs). Untimed (CI runs benchmarks once with --benchmark-disable) the
batch is 2. Timed: `pytest benchmarks/test_models.py --benchmark-enable -s` prints one summary line per config.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models import MODEL_CONFIGS, count_parameters, create_model

TIMED = {"digits": {"batch": 128, "rounds": 30}, "cifar10": {"batch": 8, "rounds": 5}}


def forward_macs_per_image(net: torch.nn.Module) -> float:
    """Multiply-accumulates of one forward pass on one image (FlopCounterMode counts 2 FLOPs per MAC)."""
    x = torch.zeros(1, *net.config.image_shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, torch.full((1,), 0.5))
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("config", ["digits", "cifar10"])
def test_forward_backward(benchmark, config):
    batch, rounds = (2, 1) if benchmark.disabled else (TIMED[config]["batch"], TIMED[config]["rounds"])
    torch.manual_seed(0)
    net = create_model(config)
    x = torch.randn(batch, *MODEL_CONFIGS[config].image_shape)
    t = torch.rand(batch)
    times: list[float] = []

    def step() -> None:
        start = time.perf_counter()
        net.zero_grad(set_to_none=True)
        ((net(x, t) - x) ** 2).mean().backward()
        times.append(time.perf_counter() - start)

    if not benchmark.disabled:
        step()  # warm-up: oneDNN primitive creation, allocator
        times.clear()
    benchmark.pedantic(step, rounds=rounds, iterations=1)
    assert all(p.grad is not None for p in net.parameters())
    macs = forward_macs_per_image(net)
    median = statistics.median(times)
    gflops = 3 * 2 * macs * batch / median / 1e9
    benchmark.extra_info.update(
        batch=batch,
        threads=torch.get_num_threads(),
        parameters=count_parameters(net),
        forward_mmac_per_image=macs / 1e6,
        median_s=median,
        images_per_s=batch / median,
        gflops=gflops,
    )
    print(
        f"\n{config}: {count_parameters(net) / 1e6:.2f}M parameters, {macs / 1e6:.1f} MMAC/image forward; batch "
        f"{batch}, {torch.get_num_threads()} threads: forward+backward {median * 1e3:.1f} ms median of "
        f"{len(times)} ({batch / median:.0f} images/s, {gflops:.0f} GFLOP/s)"
    )
