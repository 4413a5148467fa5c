"""`run.py main` (the default): train a digits model, sample it, score the samples, write metrics.json."""

from __future__ import annotations

import argparse
import time

import evaluation
from training import load_model, log_scalars, train

from .common import (
    EXIT_INTERRUPTED,
    UsageError,
    add_common,
    limit_cpu_threads,
    non_negative_int,
    provenance,
    resolve_run,
    write_config,
    write_json,
)
from .config import train_config
from .flags import add_experiment, add_sampling
from .runs import check_sampler, digits_metric, sde_of
from .sampling import draw

# dopri5 tolerance of bits/dim: 1e-3 moves the mean of the 64 digits by about 0.006 bits against 1e-4 (a sixth of
# its standard error) at half the score evaluations (benchmarks/RESULTS.md, main job levers).
BPD_TOL = 1e-3


def add_parser(sub) -> None:
    p = sub.add_parser("main", help="train digits, sample, metrics.json and samples.png (the default command)")
    p.description = (
        "Train (or continue) a digits model, sample it, and write samples.png, samples.npz and metrics.json: "
        "Frechet distance and precision/recall against held-out digits in a digits classifier's feature space, "
        "the train-vs-test floor, and bits/dim of held-out digits (probability-flow ODE, 17 grey levels)."
    )
    add_common(p, "run directory (default: runs/digits_<sde>[...])")
    add_experiment(p)
    add_sampling(p)
    p.add_argument("--bpd-images", type=non_negative_int, default=64, help="held-out digits for bits/dim")


def interrupted(workdir, cfg, signal_name: str, **facts) -> int:
    """Write metrics.json saying the job was cut short; exit code 130 after SIGINT, 0 after SIGTERM."""
    path = write_json(workdir / "metrics.json", {"interrupted": True, "stopped_by": signal_name, **facts,
                                                 **provenance(cfg)})  # fmt: skip
    print(f"interrupted by {signal_name}: {', '.join(f'{k} {v}' for k, v in facts.items())}; {path}")
    return EXIT_INTERRUPTED if signal_name == "SIGINT" else 0


def run(args: argparse.Namespace) -> int:
    cfg, workdir = resolve_run(args)
    if cfg.data.dataset != "digits":
        raise UsageError("the main job scores digits; for other data use train, then sample / fid / likelihood")
    limit_cpu_threads(cfg.device)
    check_sampler(cfg.sampling, sde_of(cfg, evaluation.DIGITS_SHAPE), evaluation.DIGITS_SHAPE)
    write_config(cfg, workdir)
    started = time.perf_counter()
    result = train(train_config(cfg, workdir), progress=True)
    if result["stopped_by"]:
        return interrupted(workdir, cfg, result["stopped_by"], train_steps=result["step"],
                           checkpoint=str(result["checkpoint"]))  # fmt: skip
    model, sde, run_cfg = load_model(workdir, ema=True, device=cfg.device)
    t0 = time.perf_counter()
    x, nfe, stopped = draw(model, sde, run_cfg, cfg)
    sample_seconds = time.perf_counter() - t0
    grid = evaluation.save_grid(x, workdir / "samples.png", upscale=4) if len(x) else None
    evaluation.save_samples_npz(x, workdir / "samples.npz")
    if stopped:
        return interrupted(workdir, cfg, stopped, train_steps=result["step"], samples=len(x))
    metric, test_set = digits_metric(workdir, cfg.seed)
    scores = metric.evaluate(x)
    s = cfg.sampling
    floor = metric.real_floor(len(x), cfg.seed)
    metrics = {
        "interrupted": False,
        "dataset": "digits (scikit-learn load_digits, 8x8, 17 grey levels 0..16)",
        "sde": cfg.sde.name,
        "noise": cfg.noise.kind if cfg.sde.name in ("nivp", "nive") else "white (isotropic)",
        "gff_power": cfg.noise.power,
        "model_config": cfg.model.name,
        "train_steps": result["step"],
        "train_seconds_this_call": round(result["seconds"], 1),
        "sampler": {"method": s.method, "steps": s.steps, "nfe": nfe, "n": len(x), "options": s.options},
        "sample_seconds": round(sample_seconds, 1),
        "feature_space": f"penultimate layer (64-d) of a digits CNN classifier, test accuracy {metric.accuracy:.4f}",
        "classifier_test_accuracy": metric.accuracy,
        "frechet_distance": scores["frechet_distance"],
        "frechet_distance_real_floor": floor.mean,
        "frechet_distance_real_floor_sd": floor.sd,
        "frechet_distance_real_floor_note": f"mean (and sd) over {floor.draws} draws of {len(x)} train digits vs the "
        "held-out test digits, same features",
        "fd_over_floor": scores["frechet_distance"] / floor.mean,
        "precision": scores["precision"],
        "recall": scores["recall"],
        "precision_recall_k": 3,
        "sample_class_histogram": scores["class_histogram"],
        "reference": f"{len(test_set)} held-out test digits",
    }
    if args.bpd_images:
        from .likelihood import bits_per_dim

        held_out = test_set.pixels[: args.bpd_images]
        bpd, stopped = bits_per_dim(model, sde, run_cfg, cfg, held_out, test_set.levels, divergence="rademacher",
                                    rtol=BPD_TOL, atol=BPD_TOL)  # fmt: skip
        if stopped:
            return interrupted(workdir, cfg, stopped, train_steps=result["step"], samples=len(x))
        metrics["bits_per_dim"] = {
            **bpd,
            "dequantization": "uniform u ~ U[0,1) per pixel, bin width 2/17 in [-1, 1]: y = (n + u) 2/17 - 1",
            "estimator": f"probability-flow ODE (rk45, rtol = atol = {BPD_TOL:g}), Hutchinson divergence "
            "(one Rademacher probe per image)",
        }
    metrics["total_seconds_this_call"] = round(time.perf_counter() - started, 1)
    metrics.update(provenance(cfg))
    scalars = {f"eval/{k}": metrics[k] for k in ("frechet_distance", "fd_over_floor", "precision", "recall")}
    if "bits_per_dim" in metrics:
        scalars["eval/bits_per_dim"] = metrics["bits_per_dim"]["mean"]
    log_scalars(workdir, scalars, result["step"])
    write_json(workdir / "metrics.json", metrics)
    print_summary(workdir, grid, metrics)
    return 0


def print_summary(workdir, grid, m: dict) -> None:
    """The main job's closing summary: paths and the headline numbers."""
    lines = [
        f"run directory   {workdir}",
        f"samples         {grid}  ({m['sampler']['n']} images, {m['sampler']['method']}, NFE {m['sampler']['nfe']:g})",
        f"metrics         {workdir / 'metrics.json'}",
        f"Frechet dist.   {m['frechet_distance']:.3f}  (real-data floor {m['frechet_distance_real_floor']:.3f} "
        f"+- {m['frechet_distance_real_floor_sd']:.3f}, ratio {m['fd_over_floor']:.2f})",
        f"precision       {m['precision']:.3f}   recall {m['recall']:.3f}  (k = 3)",
        f"classifier acc. {m['classifier_test_accuracy']:.4f} (held-out digits; its features define the metric)",
    ]
    if "bits_per_dim" in m:
        b = m["bits_per_dim"]
        lines.append(f"bits/dim        {b['mean']:.3f} +- {b['standard_error']:.3f}  ({b['images']} held-out digits, "
                     "17 levels, PF ODE)")  # fmt: skip
    lines.append(f"time            {m['total_seconds_this_call']:.0f} s")
    print("\n".join(lines))
