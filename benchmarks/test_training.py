"""Train-step time of NI-DDPM vs DDPM (pytest-benchmark): the price of non-isotropic noise in training.

For the `digits` and `cifar10` model configs, two training.loop.Trainer objects that differ only in the SDE
(NIVP with GFF noise vs the isotropic VP), both with the NI-DDPM / DDPM loss ("ddpm"), the same batch size and
the same data, take steps in alternation in one process (the order alternates every round, so slow drift of
a shared machine hits both). A step is the full loop step: batch, kernels.perturb, forward, backward, gradient
clipping, AdamW, EMA. `extra_info` records the median step times, their ratio NI-DDPM / DDPM (target <= 1.05)
and images/s; pytest-benchmark's own statistics time the pair of steps.

Untimed (CI runs benchmarks once with --benchmark-disable) the batch is 2 and one round is run.
Timed: `pytest benchmarks/test_training.py --benchmark-enable -s` prints one summary line per config.
"""

from __future__ import annotations

import math
import statistics
import time

import pytest
import torch

from training import TrainConfig
from training.loop import Trainer

TIMED = {"digits": {"batch": 128, "rounds": 20}, "cifar10": {"batch": 8, "rounds": 5}}
SHAPES = {"digits": (1, 8, 8), "cifar10": (3, 32, 32)}


def make_trainer(tmp_path, config: str, sde: str, batch: int) -> Trainer:
    data = torch.randn(4 * batch, *SHAPES[config], generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    cfg = TrainConfig(
        workdir=str(tmp_path / f"{config}_{sde}"),
        model=config,
        sde=sde,
        loss="ddpm",
        batch_size=batch,
        save_every=0,
        warmup=10,
    )
    return Trainer(cfg, dataset=data)


@pytest.mark.parametrize("config", ["digits", "cifar10"])
def test_train_step_ni_ddpm_vs_ddpm(benchmark, tmp_path, config):
    batch, rounds = (2, 1) if benchmark.disabled else (TIMED[config]["batch"], TIMED[config]["rounds"])
    trainers = {sde: make_trainer(tmp_path, config, sde, batch) for sde in ("vp", "nivp")}
    if not benchmark.disabled:
        for trainer in trainers.values():
            trainer.train_step()  # warm-up: allocator, first-call overheads
    times: dict[str, list[float]] = {"vp": [], "nivp": []}
    losses: dict[str, list[float]] = {"vp": [], "nivp": []}

    def pair() -> None:
        order = ("vp", "nivp") if len(times["vp"]) % 2 == 0 else ("nivp", "vp")
        for sde in order:
            start = time.perf_counter()
            loss, _, _ = trainers[sde].train_step()
            times[sde].append(time.perf_counter() - start)
            losses[sde].append(loss)

    benchmark.pedantic(pair, rounds=rounds, iterations=1)
    assert all(math.isfinite(v) for values in losses.values() for v in values)
    assert trainers["vp"].step == trainers["nivp"].step
    ddpm, ni = statistics.median(times["vp"]), statistics.median(times["nivp"])
    benchmark.extra_info.update(
        batch=batch,
        threads=torch.get_num_threads(),
        ddpm_step_s=ddpm,
        ni_ddpm_step_s=ni,
        ratio_ni_over_ddpm=ni / ddpm,
        ddpm_images_per_s=batch / ddpm,
        ni_ddpm_images_per_s=batch / ni,
    )
    print(
        f"\n{config}: batch {batch}, {len(times['vp'])} rounds, {torch.get_num_threads()} threads: "
        f"DDPM {ddpm * 1e3:.1f} ms/step ({batch / ddpm:.1f} img/s), NI-DDPM {ni * 1e3:.1f} ms/step "
        f"({batch / ni:.1f} img/s), ratio NI/DDPM {ni / ddpm:.3f}"
    )
