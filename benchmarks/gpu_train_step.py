"""Training throughput of NI-DDPM vs DDPM on a GPU: the full train step, bf16 autocast, random data.

    python benchmarks/gpu_train_step.py [--config cifar10] [--batch 128] [--steps 30] [--block 10] [--warmup 3]
                                        [--device cuda] [--json FILE]

The set-up of benchmarks/test_training.py: one training.loop.Trainer (loss "ddpm", bf16 autocast on CUDA) takes
steps with the NIVP SDE (GFF noise through kernels.perturb: NI-DDPM) and with the isotropic VP SDE (DDPM), same
network, optimiser, batch and data (random images in [-1, 1], held on the host like a data set), in alternating
blocks of `block` steps so that drift of the machine hits both. A step is the loop's whole step: batch to the device,
perturbation, forward, backward, clipping, AdamW, EMA. Reported per SDE: images/s, ms/step and the peak device
memory allocated; and the ratio of step times NI-DDPM / DDPM (target <= 1.03). The last line reads
"SUMMARY: ..."; exit status 0 when the ratio meets the target, 3 when it does not.

Imports only training and models; missing optional packages (tqdm, torchvision, ...) get inert stand-ins
(benchmarks/stand_ins.py). `--device cpu --config tiny --batch 2 --steps 1 --block 1 --warmup 0` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stand_ins import STOOD_IN, import_with_stand_ins  # noqa: E402

RATIO_TARGET = 1.03


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0  # 0: not measured


def measure(config: str, batch: int, steps: int, block: int, warmup: int, device: str) -> dict:
    training = import_with_stand_ins("training")
    from training.build import build_sde
    from training.loop import Trainer

    models = import_with_stand_ins("models")
    shape = tuple(models.MODEL_CONFIGS[config].image_shape)
    data = torch.randn(max(4 * batch, 8), *shape, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    with tempfile.TemporaryDirectory() as workdir:  # a Trainer writes no files; its config needs a workdir
        cfg = training.TrainConfig(
            workdir=workdir, model=config, sde="nivp", loss="ddpm", batch_size=batch, save_every=0, device=device
        )
        trainer = Trainer(cfg, dataset=data)
    sdes = {"ddpm": build_sde(replace(cfg, sde="vp"), shape), "ni_ddpm": trainer.sde}
    dev = torch.device(device)
    for sde in sdes.values():  # warm-up: kernel compilation, cuDNN plans, the allocator
        trainer.sde = sde
        for _ in range(warmup):
            trainer.train_step()
    seconds = {name: [] for name in sdes}
    peak = dict.fromkeys(sdes, 0.0)
    rounds = max(1, steps // block)
    for r in range(rounds):
        for name in sdes if r % 2 == 0 else reversed(list(sdes)):
            trainer.sde = sdes[name]
            _sync(dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            start = time.perf_counter()
            for _ in range(block):
                loss, _, _ = trainer.train_step()
            _sync(dev)
            seconds[name].append((time.perf_counter() - start) / block)
            peak[name] = max(peak[name], _peak_mib(dev))
            assert loss == loss, f"{name}: the loss is NaN"
    step = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "config": config,
        "batch": batch,
        "steps_per_sde": rounds * block,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "bf16": cfg.bf16 and dev.type == "cuda",
        "ms_per_step": {name: 1e3 * s for name, s in step.items()},
        "images_per_s": {name: batch / s for name, s in step.items()},
        "peak_mib": peak,
        "ratio_ni_over_ddpm": step["ni_ddpm"] / step["ddpm"],
        "stand_ins": list(STOOD_IN),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cifar10", help="model config (models.MODEL_CONFIGS) [cifar10]")
    parser.add_argument("--batch", type=int, default=128, help="training batch [128]")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per SDE [30]")
    parser.add_argument("--block", type=int, default=10, help="steps per timed block [10]")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per SDE first [3]")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="[cuda if any]")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    r = measure(args.config, args.batch, args.steps, min(args.block, args.steps), args.warmup, args.device)
    for name in ("ddpm", "ni_ddpm"):
        print(
            f"{name:8s} {r['config']} batch {r['batch']}: {r['images_per_s'][name]:8.1f} images/s, "
            f"{r['ms_per_step'][name]:7.2f} ms/step, peak {r['peak_mib'][name]:.0f} MiB (0: not measured off CUDA)"
        )
    if r["stand_ins"]:
        print(f"stand-ins for missing packages: {', '.join(r['stand_ins'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    ratio = r["ratio_ni_over_ddpm"]
    print(
        f"SUMMARY: {r['config']} bf16={r['bf16']} batch {r['batch']}: NI-DDPM {r['images_per_s']['ni_ddpm']:.0f} "
        f"img/s, DDPM {r['images_per_s']['ddpm']:.0f} img/s, ratio {ratio:.3f} (target <= {RATIO_TARGET}), "
        f"peak {max(r['peak_mib'].values()):.0f} MiB"
    )
    return 0 if ratio <= RATIO_TARGET else 3


if __name__ == "__main__":
    raise SystemExit(main())
