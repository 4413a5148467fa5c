"""`run.py sample`: sample a trained model into DIR/samples.npz (uint8, N x H x W x C) and a grid PNG."""

from __future__ import annotations

import argparse
import pathlib

import evaluation

from .common import EXIT_INTERRUPTED, add_common, provenance, read_run_config, resolve_config, write_json
from .flags import add_checkpoint, add_sampling
from .ranks import processes
from .runs import check_sampler, load_run
from .sampling import draw


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample a trained model: samples.npz and a grid PNG in --out")
    add_common(p, "run directory whose newest readable checkpoint is loaded (default: runs/digits_nivp)")
    add_checkpoint(p)
    add_sampling(p)
    p.add_argument("--out", type=pathlib.Path, default=None, help="output directory (default: <workdir>/samples)")


def run(args: argparse.Namespace) -> int:
    args.workdir = args.workdir or pathlib.Path("runs/digits_nivp")
    cfg = resolve_config(args, read_run_config(args.workdir))
    with processes(cfg) as ctx:
        source = args.checkpoint or args.workdir
        model, sde, run_cfg = load_run(source, cfg.device)
        check_sampler(cfg.sampling, sde, tuple(model.config.image_shape))
        x, nfe, stopped = draw(model, sde, run_cfg, cfg, ctx)
    if not ctx.is_main:
        return 0
    out = args.out or args.workdir / "samples"
    npz = evaluation.save_samples_npz(x, out / "samples.npz")
    s = cfg.sampling
    summary = {"interrupted": stopped is not None, "checkpoint": str(source), "method": s.method, "steps": s.steps,
               "options": s.options, "samples": len(x), "batch_size": s.batch_size, "nfe": nfe,
               "processes": ctx.world_size, **provenance(cfg)}  # fmt: skip
    write_json(out / "samples.json", summary)
    if len(x):
        grid = evaluation.save_grid(x, out / "grid.png", upscale=4 if x.shape[-1] < 32 else 1)
        print(f"{len(x)} samples from {source} ({s.method}, NFE {nfe:g} per image): {npz}, grid {grid}")
    if stopped:
        print(f"interrupted by {stopped}: {len(x)} of {s.num_samples} samples written to {npz}")
        return EXIT_INTERRUPTED if stopped == "SIGINT" else 0
    return 0
