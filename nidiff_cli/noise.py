"""`run.py noise`: white noise next to GFF noise at several powers, data-matched noise and real images."""

from __future__ import annotations

import argparse
import pathlib

import torch

import evaluation
from sde_lib import GFFCovariance, SpectralCovariance

from .common import add_common, float_list, positive_int, resolve_config
from .flags import add_data
from .runs import data_split


def add_parser(sub) -> None:
    p = sub.add_parser("noise", help="PNG: white noise next to GFF noise at several powers and data-matched noise")
    add_common(p, "output directory (default: runs/noise)")
    add_data(p)
    g = p.add_argument_group("picture")
    g.add_argument("--powers", type=float_list, default=(0.5, 1.0, 1.5, 2.0), help="GFF powers")
    g.add_argument("--size", type=positive_int, default=64, help="side of the white / GFF noise images")
    g.add_argument("--count", type=positive_int, default=6, help="samples per row")
    g.add_argument("--out", type=pathlib.Path, default=None, help="output directory (default: --workdir)")


def run(args: argparse.Namespace) -> int:
    """Rows of the same white draws, coloured: g = Sigma^{1/2} eps (docs/math.md §1.4); noise shown at +-3 std."""
    cfg = resolve_config(args)
    data = data_split(cfg.data.dataset, cfg.data.root, "train", args.download).images()
    shape = (data.shape[1], args.size, args.size)
    generator = torch.Generator().manual_seed(cfg.seed)
    eps = torch.randn((args.count, *shape), generator=generator, dtype=torch.float64).to(cfg.device)
    eps_data = torch.randn((args.count, *data.shape[1:]), generator=generator, dtype=torch.float64).to(cfg.device)
    side, data_side = f"{shape[-2]}x{shape[-1]}", f"{data.shape[-2]}x{data.shape[-1]}"
    rows = [(f"white noise, Sigma = I ({side})", eps.cpu() / 3)]
    rows += [(f"GFF power {p:g} ({side})", GFFCovariance(shape, power=p).sqrt_mul(eps).cpu() / 3) for p in args.powers]
    spectral = SpectralCovariance.from_data(data.double())
    rows.append((f"{cfg.data.dataset}-matched spectrum ({data_side})", spectral.sqrt_mul(eps_data).cpu() / 3))
    rows.append((f"{cfg.data.dataset} images ({data_side})", data[: args.count]))
    out = (args.out or args.workdir or pathlib.Path("runs/noise")) / "noise.png"
    evaluation.render_rows(rows, out, cell=max(64, shape[-1], data.shape[-1]))
    print(f"noise picture {out}: rows {', '.join(label for label, _ in rows)}")
    return 0
