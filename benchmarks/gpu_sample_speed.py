"""Sampling throughput on a GPU: images/s of a sampler with the cifar10 network, NI (GFF) and isotropic noise.

    python benchmarks/gpu_sample_speed.py [--config cifar10] [--method dpm2m] [--steps 10] [--batch 256]
                                          [--repeats 3] [--bf16] [--device cuda] [--json FILE]

samplers.sample draws `batch` images with `method` at `steps` steps from the untrained network of `config` (the
cost of a network evaluation does not depend on its weights) as an eps-model of the NIVP SDE (GFF noise: each step
one kernels.ni_update) and of the VP SDE, float32 (--bf16: the network under bf16 autocast). After one untimed
call per SDE (kernel compilation, cuDNN plans), `repeats` timed calls; images/s = batch * repeats / seconds. There
is no target: the line reports NI images/s and the NI / isotropic time ratio. The last line reads "SUMMARY: ...".

Imports only models, sde_lib, samplers and training.losses; missing optional packages (tqdm, ...) get inert
stand-ins (benchmarks/stand_ins.py). `--device cpu --config tiny --batch 2 --repeats 1` is a smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stand_ins import STOOD_IN, import_with_stand_ins  # noqa: E402


def _draw(samplers, sde, score, shape, method: str, steps: int, seed: int, bf16: bool, dev: torch.device) -> int:
    """One samplers.sample call; returns its number of network evaluations."""
    generator = torch.Generator(dev).manual_seed(seed)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        x, nfe = samplers.sample(sde, score, shape, method, steps, generator, device=dev)
    assert torch.isfinite(x).all(), "non-finite samples"
    return nfe


def measure(config: str, method: str, steps: int, batch: int, repeats: int, bf16: bool, device: str) -> dict:
    models = import_with_stand_ins("models")
    samplers = import_with_stand_ins("samplers")
    training = import_with_stand_ins("training")
    from sde_lib import make_sde

    dev = torch.device(device)
    model = models.create_model(config).to(dev).eval()
    shape = tuple(model.config.image_shape)
    result = {"config": config, "method": method, "steps": steps, "batch": batch, "repeats": repeats, "bf16": bf16}
    result["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    for name in ("nivp", "vp"):
        sde = make_sde(name, shape)
        args = (samplers, sde, training.score_fn_for(model, sde, "ddpm"), (batch, *shape), method, steps)
        _draw(*args, 0, bf16, dev)  # untimed
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        nfe = [_draw(*args, 1 + r, bf16, dev) for r in range(repeats)][-1]
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
        result[name] = {"images_per_s": batch * repeats / seconds, "seconds_per_batch": seconds / repeats, "nfe": nfe}
    result["ratio_ni_over_iso"] = result["nivp"]["seconds_per_batch"] / result["vp"]["seconds_per_batch"]
    result["stand_ins"] = list(STOOD_IN)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cifar10", help="model config [cifar10]")
    parser.add_argument("--method", default="dpm2m", help="sampler (samplers.METHODS) [dpm2m]")
    parser.add_argument("--steps", type=int, default=10, help="sampler steps [10]")
    parser.add_argument("--batch", type=int, default=256, help="images per call [256]")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per SDE [3]")
    parser.add_argument("--bf16", action="store_true", help="the network under bf16 autocast")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="[cuda if any]")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    r = measure(args.config, args.method, args.steps, args.batch, args.repeats, args.bf16, args.device)
    for name in ("nivp", "vp"):
        print(
            f"{name:5s} {r['config']} {r['method']} {r['steps']} steps ({r[name]['nfe']} evaluations), batch "
            f"{r['batch']}: {r[name]['images_per_s']:9.1f} images/s, {r[name]['seconds_per_batch']:.3f} s/batch"
        )
    if r["stand_ins"]:
        print(f"stand-ins for missing packages: {', '.join(r['stand_ins'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    print(
        f"SUMMARY: {r['config']} {r['method']} {r['steps']} steps batch {r['batch']} "
        f"{'bf16' if r['bf16'] else 'fp32'}: NI {r['nivp']['images_per_s']:.0f} img/s, isotropic "
        f"{r['vp']['images_per_s']:.0f} img/s, time ratio {r['ratio_ni_over_iso']:.3f} (no target)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
