"""`run.py table`: the paper's Table 1 protocol, SDEs x sampler steps x samplers -> Frechet distance, P, R."""

from __future__ import annotations

import argparse
import copy
import csv
import pathlib
import time

from tqdm.auto import tqdm

import evaluation
from sde_lib import SDE_NAMES
from training import load_model, train

from .common import (
    EXIT_INTERRUPTED,
    UsageError,
    add_common,
    choice_list,
    int_list,
    positive_int,
    provenance,
    resolve_config,
    write_config,
)
from .config import train_config
from .flags import SAMPLERS, add_data, add_experiment, add_sampling
from .runs import check_data_args, check_sampler, data_split, digits_metric, sde_of
from .sampling import draw

LABELS = {"vp": "VP (white)", "nivp": "NIVP (GFF)", "subvp": "subVP", "ve": "VE (white)", "nive": "NI-VE (GFF)"}
FIELDS = ["sde", "sampler", "steps", "nfe", "fid", "kid", "precision", "recall", "seconds", "commit", "torch"]


def add_parser(sub) -> None:
    p = sub.add_parser("table", help="the paper's Table 1: SDEs x steps x samplers -> Frechet distance, P, R")
    add_common(p, "run directory (default: runs/table1_<dataset>); one sub-directory per SDE")
    add_data(p)
    add_experiment(p, sde=False)
    add_sampling(p, single=False)
    g = p.add_argument_group("table")
    g.add_argument("--sde", dest="sdes", type=choice_list(SDE_NAMES), default=("vp", "nivp"), help="SDEs (rows)")
    g.add_argument("--samplers", type=choice_list(SAMPLERS), default=("ddpm", "dpm2m"), help="samplers")
    g.add_argument("--sample-steps", dest="step_counts", type=int_list, default=(1000, 100, 50, 20, 10),
                   help="sampler step counts")  # fmt: skip
    g.add_argument("--metric", choices=("digits", "inception"), default=None, help="default: digits for digits")
    g.add_argument("--mode", choices=evaluation.MODES, default="clean", help="clean-fid mode (inception metric)")
    g.add_argument("--ref-stats", default=None, help="inception metric: clean-fid reference statistics name")
    g.add_argument("--ref-res", type=positive_int, default=32, help="resolution of --ref-stats")
    g.add_argument("--ref-split", default="train", help="split of --ref-stats")


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    workdir = args.workdir or pathlib.Path("runs") / f"table1_{cfg.data.dataset}"
    metric = args.metric or ("digits" if cfg.data.dataset == "digits" else "inception")
    check_data_args(cfg.data.dataset, cfg.data.root)
    from models import MODEL_CONFIGS

    shape = tuple(MODEL_CONFIGS[cfg.model.name].image_shape)
    cells = {}
    for name in args.sdes:
        cells[name] = copy.deepcopy(cfg)
        cells[name].sde.name = name
        for method in args.samplers:
            cells[name].sampling.method = method
            check_sampler(cells[name].sampling, sde_of(cells[name], shape), shape, steps=1)
    if metric == "digits":
        if cfg.data.dataset != "digits":
            raise UsageError(f"--metric digits scores 8x8 digits; use --metric inception for {cfg.data.dataset}")
        digits, _ = digits_metric(workdir, cfg.seed)
    elif args.ref_stats is None:
        ref_dir = workdir / "reference_test"
        evaluation.save_png_folder(data_split(cfg.data.dataset, cfg.data.root, "test").images(), ref_dir)
    rows, started, origin = [], time.perf_counter(), provenance(cfg)
    csv_path, md_path = workdir / "table1.csv", workdir / "table1.md"
    for name in args.sdes:
        run_dir = workdir / name
        write_config(cells[name], run_dir)
        trained = train(train_config(cells[name], run_dir), progress=True)
        if trained["stopped_by"]:
            return stopped(trained["stopped_by"], f"training {name} stopped at step {trained['step']}", csv_path)
        model, sde, run_cfg = load_model(run_dir, ema=True, device=cfg.device)
        for steps in args.step_counts:
            for method in args.samplers:
                t0 = time.perf_counter()
                cell = cells[name]
                cell.sampling.method, cell.sampling.steps = method, steps
                x, nfe, signal_name = draw(model, sde, run_cfg, cell)
                if signal_name:
                    return stopped(signal_name, f"sampling {name} {method} {steps} was cut short", csv_path)
                if metric == "digits":
                    s = digits.evaluate(x)
                    scores = {"fid": s["frechet_distance"], "kid": float("nan"), **s}
                else:
                    folder = run_dir / "samples" / f"{method}_{steps}"
                    evaluation.save_png_folder(x, folder)
                    scores = (
                        evaluation.compare_folders(folder, ref_dir, mode=args.mode, device=cfg.device)
                        if args.ref_stats is None
                        else evaluation.compare_to_reference(
                            folder, args.ref_stats, args.ref_res, args.ref_split, mode=args.mode, device=cfg.device
                        )  # fmt: skip
                    )
                row = {"sde": name, "sampler": method, "steps": steps, "nfe": nfe}
                row.update({k: scores[k] for k in ("fid", "kid", "precision", "recall")})
                row["seconds"] = round(time.perf_counter() - t0, 1)
                row.update({k: origin[k] for k in ("commit", "torch")})
                rows.append(row)
                tqdm.write(f"{name} {method} {steps}: " + ", ".join(f"{k} {row[k]:.4g}" for k in FIELDS[3:9]))
                write_csv(csv_path, rows)
    score = "FID" if metric == "inception" else "FD"
    table = evaluation.table_markdown(rows, args.sdes, LABELS, score)
    space = f"Inception-v3 (clean-fid, {args.mode})" if metric == "inception" else "digits-classifier"
    note = (
        f"{score}: Frechet distance in the {space} feature space, {cfg.sampling.num_samples} samples per cell; P, R: "
        f"precision / recall (k = 3); {cfg.training.steps} training steps per SDE; "
        f"{time.perf_counter() - started:.0f} s in total; commit {provenance(cfg)['commit'][:12]}."
    )
    if metric == "digits":
        floor = digits.real_floor(cfg.sampling.num_samples, cfg.seed)
        note += (
            f" Real-data floor (train vs test, {cfg.sampling.num_samples} images, mean +- sd over {floor.draws} "
            f"draws): {floor.mean:.2f} +- {floor.sd:.2f}."
        )
    md_path.write_text(table + "\n\n" + note + "\n")
    print(table + "\n\n" + note + f"\n\nCSV {csv_path}\nmarkdown {md_path}")
    return 0


def stopped(signal_name: str, what: str, csv_path: pathlib.Path) -> int:
    """SIGINT / SIGTERM: the rows finished so far are in the CSV; exit 130 after SIGINT, 0 after SIGTERM."""
    print(f"interrupted by {signal_name}: {what}; the finished rows are in {csv_path}")
    return EXIT_INTERRUPTED if signal_name == "SIGINT" else 0


def write_csv(path: pathlib.Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
