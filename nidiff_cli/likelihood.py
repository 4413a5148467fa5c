"""`run.py likelihood`: bits/dim of a data split through the probability-flow ODE (docs/math.md §5)."""

from __future__ import annotations

import argparse
import pathlib

import torch
from torch import Tensor, nn

import evaluation
import samplers
from samplers.progress import progress
from sde_lib import SDE
from training import TrainConfig, loss_for, score_fn_for
from training.distributed import DistContext

from .common import (
    EXIT_INTERRUPTED,
    Interrupted,
    add_common,
    add_setting,
    interruptible,
    positive_float,
    positive_int,
    provenance,
    read_run_config,
    resolve_config,
    write_json,
)
from .config import Config
from .flags import add_checkpoint, add_data
from .ranks import SINGLE, gather_batches, my_batches, processes
from .runs import data_split, load_run

DIVERGENCES = ("rademacher", "gaussian", "exact")


def add_parser(sub) -> None:
    p = sub.add_parser("likelihood", help="bits/dim of a data split through the probability-flow ODE")
    add_common(p, "run directory whose newest readable checkpoint is loaded (default: runs/digits_nivp)")
    add_checkpoint(p)
    add_data(p)
    g = p.add_argument_group("likelihood")
    g.add_argument("--split", choices=("train", "test"), default="test", help="data split")
    g.add_argument("--num-images", type=positive_int, default=None, help="first N images (default: the whole split)")
    add_setting(g, "--sample-batch-size", "sampling.batch_size", "images per ODE solve", type=positive_int)
    g.add_argument("--divergence", choices=DIVERGENCES, default="rademacher", help="divergence estimator")
    g.add_argument("--rtol", type=positive_float, default=1e-5, help="ODE relative tolerance")
    g.add_argument("--atol", type=positive_float, default=1e-5, help="ODE absolute tolerance")
    g.add_argument("--solver", choices=samplers.likelihood.SOLVERS, default="rk45",
                   help="rk45 (samplers.rk45, scipy RK45 step control) or an adaptive torchdiffeq method")  # fmt: skip
    g.add_argument("--no-dequantize", action="store_true", help="evaluate at bin centres instead of U[0,1) noise")
    g.add_argument("--out", type=pathlib.Path, default=None, help="directory for likelihood.json (default: --workdir)")


def bits_per_dim(
    model: nn.Module,
    sde: SDE,
    run: TrainConfig,
    cfg: Config,
    pixels: Tensor,
    levels: int,
    ctx: DistContext = SINGLE,
    **options,
) -> tuple[dict | None, str | None]:
    """({mean, standard_error, images, levels, nfe, per_image} on rank 0, None elsewhere; the signal that stopped
    it or None): bits/dim of integer `pixels` in batches of cfg.sampling.batch_size (samplers.bits_per_dim), each
    rank taking its share of the batches; batch j's dequantisation and probe come from samplers.batch_seed(seed, j),
    so the result does not depend on the number of processes. SIGINT / SIGTERM stop after the batches done."""
    score_fn = score_fn_for(model, sde, loss_for(run))
    batch = cfg.sampling.batch_size
    mine, stopped = [], None
    with interruptible():
        try:
            count = -(-len(pixels) // batch)
            for j in progress(my_batches(count, ctx), desc="bits/dim", leave=False, disable=not ctx.is_main):
                images = pixels[j * batch : (j + 1) * batch].to(cfg.device)
                generator = torch.Generator(cfg.device).manual_seed(samplers.batch_seed(cfg.seed, j))
                bpd, nfe = samplers.bits_per_dim(sde, score_fn, images, levels=levels, generator=generator, **options)
                mine.append((j, (bpd.detach().double().cpu(), nfe)))
        except Interrupted as err:
            stopped = err.signal_name
    batches = gather_batches(ctx, mine)
    if batches is None:
        return None, stopped
    values = torch.cat([v for v, _ in batches]) if batches else torch.zeros(0, dtype=torch.float64)
    mean, sem = evaluation.mean_and_sem(values) if len(values) else (float("nan"), float("nan"))
    summary = {"mean": mean, "standard_error": sem, "images": len(values), "levels": levels,
               "nfe": sum(n for _, n in batches) / max(len(batches), 1), "per_image": values.tolist()}  # fmt: skip
    return summary, stopped


def run(args: argparse.Namespace) -> int:
    args.workdir = args.workdir or pathlib.Path("runs/digits_nivp")
    cfg = resolve_config(args, read_run_config(args.workdir))
    with processes(cfg) as ctx:
        return _run(args, cfg, ctx)


def _run(args: argparse.Namespace, cfg: Config, ctx: DistContext) -> int:
    source = args.checkpoint or args.workdir
    model, sde, run_cfg = load_run(source, cfg.device)
    split = data_split(cfg.data.dataset, cfg.data.root, args.split)
    pixels = split.pixels[: args.num_images]
    result, stopped = bits_per_dim(
        model, sde, run_cfg, cfg, pixels, split.levels, ctx, dequantize=not args.no_dequantize,
        divergence=args.divergence, rtol=args.rtol, atol=args.atol, solver=args.solver,
    )  # fmt: skip
    if not ctx.is_main:
        return 0
    out = {
        "interrupted": stopped is not None,
        "checkpoint": str(source),
        "dataset": cfg.data.dataset,
        "split": args.split,
        "dequantization": "bin centre" if args.no_dequantize else f"uniform, bin width 2/{split.levels}",
        "divergence": args.divergence,
        "rtol": args.rtol,
        "atol": args.atol,
        "solver": args.solver,
        "processes": ctx.world_size,
        "bits_per_dim": result.pop("mean"),
        **result,
        **provenance(cfg),
    }
    path = write_json((args.out or args.workdir) / "likelihood.json", out)
    print(
        f"bits/dim {out['bits_per_dim']:.4f} +- {out['standard_error']:.4f} (standard error, {out['images']} "
        f"{cfg.data.dataset} {args.split} images, {split.levels} levels, NFE {out['nfe']:g}); {path}"
    )
    if stopped:
        print(f"interrupted by {stopped} after {out['images']} of {len(pixels)} images")
        return EXIT_INTERRUPTED if stopped == "SIGINT" else 0
    return 0
