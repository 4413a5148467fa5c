"""`run.py table`: the paper's Table 1 protocol, SDEs x sampler steps x samplers -> Frechet distance, P, R."""

from __future__ import annotations

import argparse
import copy
import pathlib
import time
from collections.abc import Sequence

from tqdm.auto import tqdm

import evaluation
from sde_lib import SDE_NAMES
from training import load_model, train

from .common import (
    EXIT_INTERRUPTED,
    UsageError,
    add_common,
    choice_list,
    flag_settings,
    int_list,
    positive_int,
    provenance,
    resolve_config,
    write_config,
)
from .config import parse_setting, train_config
from .flags import SAMPLERS, add_data, add_experiment, add_sampling
from .ranks import processes
from .results import FIELDS, cell_row, digits_scores, write_rows
from .runs import check_data_args, check_sampler, data_split, digits_metric, sde_of
from .sampling import draw

LABELS = {"vp": "VP (white)", "nivp": "NIVP (GFF)", "subvp": "subVP", "ve": "VE (white)", "nive": "NI-VE (GFF)"}
# The samplers of NI-DDPM's discrete chain, which the paper samples with the model trained by NI-DDPM's own loss.
DISCRETE_SAMPLERS = ("ddpm", "ddim")
SHOWN = FIELDS[FIELDS.index("nfe") : FIELDS.index("recall") + 1]  # the columns printed after each cell


def protocol_loss(sde: str, samplers: Sequence[str], configured: str) -> str:
    """The loss matched to the samplers: "ddpm" (NI-DDPM's loss) for vp / nivp sampled by ddpm or ddim, as the
    paper trains them; otherwise the configured loss."""
    return "ddpm" if sde in ("vp", "nivp") and set(samplers) & set(DISCRETE_SAMPLERS) else configured


def add_parser(sub) -> None:
    p = sub.add_parser("table", help="the paper's Table 1: SDEs x steps x samplers -> Frechet distance, P, R")
    p.description = (
        "The paper's Table 1 protocol: each SDE trained with the loss matched to its samplers (NI-DDPM's loss "
        "for ddpm / ddim on vp and nivp; --loss or --set training.loss=... overrides it for every SDE), then "
        "sampled at each step count by each sampler and scored (Frechet distance with its bootstrap interval, "
        "the real-data floor, precision, recall); table1.md and table1.csv (the columns of run.py study)."
    )
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
    with processes(cfg) as ctx:
        return _run(args, cfg, ctx)


def _run(args: argparse.Namespace, cfg, ctx) -> int:
    """Every rank trains (DDP) and draws its share of each cell's samples; rank 0 scores and writes."""
    workdir = args.workdir or pathlib.Path("runs") / f"table1_{cfg.data.dataset}"
    metric = args.metric or ("digits" if cfg.data.dataset == "digits" else "inception")
    check_data_args(cfg.data.dataset, cfg.data.root)
    from models import MODEL_CONFIGS

    shape = tuple(MODEL_CONFIGS[cfg.model.name].image_shape)
    explicit_loss = "training.loss" in flag_settings(args) or any(
        parse_setting(s)[0] == "training.loss" for s in args.settings
    )
    cells = {}
    for name in args.sdes:
        cells[name] = copy.deepcopy(cfg)
        cells[name].sde.name = name
        if not explicit_loss:
            cells[name].training.loss = protocol_loss(name, args.samplers, cfg.training.loss)
        for method in args.samplers:
            cells[name].sampling.method = method
            check_sampler(cells[name].sampling, sde_of(cells[name], shape), shape, steps=1)
    if metric == "digits" and cfg.data.dataset != "digits":
        raise UsageError(f"--metric digits scores 8x8 digits; use --metric inception for {cfg.data.dataset}")
    if not ctx.is_main:
        pass
    elif metric == "digits":
        digits, _ = digits_metric(workdir, cfg.seed)
        floor = digits.real_floor(cfg.sampling.num_samples, cfg.seed)
    elif args.ref_stats is None:
        ref_dir = workdir / "reference_test"
        evaluation.save_png_folder(data_split(cfg.data.dataset, cfg.data.root, "test").images(), ref_dir)
    rows, started, origin = [], time.perf_counter(), provenance(cfg)
    csv_path, md_path = workdir / "table1.csv", workdir / "table1.md"
    for name in args.sdes:
        run_dir = workdir / name
        if ctx.is_main:
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
                x, nfe, signal_name = draw(model, sde, run_cfg, cell, ctx)
                if signal_name:
                    return stopped(signal_name, f"sampling {name} {method} {steps} was cut short", csv_path)
                if not ctx.is_main:
                    continue
                if metric == "digits":
                    scores = digits_scores(digits, x, floor)
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
                    tqdm.write(f"{name} {method} {steps}: KID {scores['kid']:.4g}")
                    scores = {"fd": scores["fid"], "precision": scores["precision"], "recall": scores["recall"]}
                row = cell_row(cell, nfe, len(x), scores, origin)
                rows.append(row)
                shown = ", ".join(f"{k} {row[k]:.4g}" for k in SHOWN if row.get(k) is not None)
                tqdm.write(f"{name} {method} {steps}: {shown}, {time.perf_counter() - t0:.1f} s")
                write_rows(csv_path, rows)
    if not ctx.is_main:
        return 0
    score = "FID" if metric == "inception" else "FD"
    table = evaluation.table_markdown(rows, args.sdes, LABELS, score)
    space = f"Inception-v3 (clean-fid, {args.mode})" if metric == "inception" else "digits-classifier"
    note = (
        f"{score}: Frechet distance in the {space} feature space, {cfg.sampling.num_samples} samples per cell; P, R: "
        f"precision / recall (k = 3); {cfg.training.steps} training steps per SDE, losses "
        + ", ".join(f"{name} {cells[name].training.loss}" for name in args.sdes)
        + f"; {time.perf_counter() - started:.0f} s in total; commit {provenance(cfg)['commit'][:12]}."
    )
    if metric == "digits":
        note += (
            f" [lo, hi]: bootstrap 95% interval of the cell (docs/math.md §10). Real-data floor (train vs test, "
            f"{cfg.sampling.num_samples} images, mean +- sd over {floor.draws} draws): {floor.mean:.2f} +- "
            f"{floor.sd:.2f}."
        )
    md_path.write_text(table + "\n\n" + note + "\n")
    print(table + "\n\n" + note + f"\n\nCSV {csv_path}\nmarkdown {md_path}")
    return 0


def stopped(signal_name: str, what: str, csv_path: pathlib.Path) -> int:
    """SIGINT / SIGTERM: the rows finished so far are in the CSV; exit 130 after SIGINT, 0 after SIGTERM."""
    print(f"interrupted by {signal_name}: {what}; the finished rows are in {csv_path}")
    return EXIT_INTERRUPTED if signal_name == "SIGINT" else 0
