"""`run.py fid`: FID, KID, precision and recall (clean-fid) of sampled or given images."""

from __future__ import annotations

import argparse
import pathlib

import evaluation

from .common import (
    EXIT_INTERRUPTED,
    UsageError,
    add_common,
    positive_int,
    provenance,
    read_run_config,
    resolve_config,
    write_json,
)
from .flags import add_checkpoint, add_data, add_sampling
from .ranks import processes
from .runs import check_sampler, data_split, digits_metric, load_run
from .sampling import draw

METRICS = ("digits", "inception")


def add_parser(sub) -> None:
    p = sub.add_parser("fid", help="FID, KID, precision and recall of samples (clean-fid)")
    add_common(p, "run directory whose newest readable checkpoint is loaded (default: runs/digits_nivp)")
    add_checkpoint(p)
    add_sampling(p)
    add_data(p)
    g = p.add_argument_group("metric")
    g.add_argument("--images", type=pathlib.Path, default=None, help="score this folder instead of sampling")
    g.add_argument("--ref", type=pathlib.Path, default=None, help="reference image folder (default: the test split)")
    g.add_argument("--ref-stats", default=None, help="clean-fid reference statistics name, e.g. cifar10")
    g.add_argument("--ref-res", type=positive_int, default=32, help="resolution of --ref-stats")
    g.add_argument("--ref-split", default="train", help="split of --ref-stats")
    g.add_argument("--metric", choices=METRICS, default=None, help="feature space (default: digits for digits)")
    g.add_argument("--mode", choices=evaluation.MODES, default="clean", help="clean-fid mode")
    g.add_argument("--out", type=pathlib.Path, default=None, help="directory of fid.json (default: <workdir>/fid)")


def fresh_png_folder(folder: pathlib.Path, images) -> pathlib.Path:
    """Write images as folder/000000.png ... after removing the folder's old PNGs (a smaller n leaves none)."""
    if folder.is_dir():
        for old in folder.glob("*.png"):
            old.unlink()
    evaluation.save_png_folder(images, folder)
    return folder


def run(args: argparse.Namespace) -> int:
    args.workdir = args.workdir or pathlib.Path("runs/digits_nivp")
    cfg = resolve_config(args, read_run_config(args.workdir))
    with processes(cfg) as ctx:
        return _run(args, cfg, ctx)


def _run(args: argparse.Namespace, cfg, ctx) -> int:
    """Samples are drawn by every rank; rank 0 gathers them, computes the features of all n samples and the
    metrics (it holds n x C x H x W samples and n x d features, d = 2048 for Inception, 64 for digits)."""
    out_dir = args.out or args.workdir / "fid"
    for flag, folder in (("--images", args.images), ("--ref", args.ref)):
        if folder is not None and not folder.is_dir():
            raise UsageError(f"{flag} {str(folder)!r} is not a directory")
    if args.ref is not None and args.ref_stats is not None:
        raise UsageError("give either --ref DIR or --ref-stats NAME, not both")
    nfe, stopped, source = None, None, None
    if args.images is None:
        source = args.checkpoint or args.workdir
        model, sde, run_cfg = load_run(source, cfg.device)
        check_sampler(cfg.sampling, sde, tuple(model.config.image_shape))
        x, nfe, stopped = draw(model, sde, run_cfg, cfg, ctx)
        if not ctx.is_main:
            return 0
        images = fresh_png_folder(out_dir / "samples", x)
        print(f"{len(x)} samples from {source} ({cfg.sampling.method}, NFE {nfe:g}) in {images}")
        if stopped:
            write_json(out_dir / "fid.json", {"interrupted": True, "stopped_by": stopped, "samples": len(x),
                                              **provenance(cfg)})  # fmt: skip
            print(f"interrupted by {stopped}: {len(x)} samples written, nothing scored")
            return EXIT_INTERRUPTED if stopped == "SIGINT" else 0
    elif not ctx.is_main:
        return 0
    else:
        images = args.images
    dataset = cfg.data.dataset
    metric = args.metric or ("digits" if dataset == "digits" else "inception")
    if args.ref_stats is not None:
        if metric != "inception":
            raise UsageError("--ref-stats are clean-fid's Inception statistics: use --metric inception")
        reference = f"clean-fid statistics {args.ref_stats}/{args.ref_res}/{args.ref_split}/{args.mode}"
        scores = evaluation.compare_to_reference(images, args.ref_stats, args.ref_res, args.ref_split,
                                                 mode=args.mode, device=cfg.device, verbose=True)  # fmt: skip
    else:
        extractor, native = None, False
        if metric == "digits":
            if dataset != "digits":
                raise UsageError(f"--metric digits scores 8x8 digits; use --metric inception for {dataset}")
            extractor, native = evaluation.cleanfid_extractor(digits_metric(args.workdir, cfg.seed)[0].classifier), True
        ref = args.ref or fresh_png_folder(out_dir / f"reference_{dataset}_test",
                                           data_split(dataset, cfg.data.root, "test").images())  # fmt: skip
        reference = str(ref)
        scores = evaluation.compare_folders(images, ref, mode=args.mode, feature_extractor=extractor,
                                            native_size=native, device=cfg.device, verbose=True)  # fmt: skip
    result = {"interrupted": False, "images": str(images), "checkpoint": None if source is None else str(source),
              "reference": reference, "metric": metric, "mode": args.mode, "nfe": nfe, **scores,
              **provenance(cfg)}  # fmt: skip
    path = write_json(out_dir / "fid.json", result)
    name = "FID" if metric == "inception" else "FD (digits features)"
    print(f"{name} {scores['fid']:.4f}  KID {scores['kid']:.5f}  precision {scores['precision']:.3f}  "
          f"recall {scores['recall']:.3f}  vs {reference}; {path}")  # fmt: skip
    return 0
