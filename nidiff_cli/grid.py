"""The grid of `run.py study`: a TOML file of models and sampler cells, its checks, and the cost model of `--plan`.

    out = "runs/digits_study"    # output directory (--out overrides it)
    seeds = [0, 1, 2]            # seed s trains model s of every configuration and draws its samples (default [0])
    n = 1000                     # samples per cell (default: the configuration's sampling.num_samples)
    train_steps = 2000           # a model's optimiser steps (default: the configuration's training.steps)
    bpd = true                   # bits/dim of the held-out test digits for every model (default: false)
    bpd_images = 360             # the first this many of them (default: all)
    sigma_max = "data"           # ve / nive: "data" (docs/math.md §E.8, the default) or a number

    [config]                     # the base configuration: a preset and any section.key of the config tree
    preset = "digits"
    training.batch_size = 64

    [[group]]                    # one or more; the top-level sde / noise / loss / samplers / seeds / train_steps
                                 # are defaults
    sde = ["vp", "nivp"]
    noise = ["white", "gff:1"]   # each SDE takes the noises that fit it (nidiff_cli.results.Noise.fits)
    loss = ["ddpm"]
    samplers = { ddpm = [1000, 100, 50, 20, 10], dpm2m = [10, 20, 50] }
    train_steps = [500, 1000, 2000]  # optional: this group's budgets, one model each (default: the top-level one)
    baseline = "vp white ddpm"   # optional: the configuration this group's paired differences are taken against
                                 # (default: the grid's first configuration)

A model is (sde, noise, loss, seed, train_steps), trained once from scratch in <out>/models/<name> (each budget its
own run and lr schedule); a cell is a model with a sampler and a step count. The grid's own keys set the fields of
the configuration that vary or that the study fixes, so [config] may not set them.
"""

from __future__ import annotations

import copy
import difflib
import functools
import pathlib
import sys
from dataclasses import dataclass, field

import samplers as sampler_lib
from sde_lib import SDE_NAMES
from training import LOSS_NAMES, get_loss

from .common import UsageError
from .config import Config, ConfigError, SamplingSection, config_from_tree
from .results import Noise, parse_noise, set_noise
from .runs import check_sampler, sde_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Model", "Cell", "Grid", "load_grid", "GROUP_KEYS", "TOP_KEYS", "GRID_FIELDS"]

GROUP_KEYS = ("name", "sde", "noise", "loss", "samplers", "seeds", "train_steps", "baseline")
TOP_KEYS = ("out", "n", "bpd", "bpd_images", "sigma_max", "config", "group", *GROUP_KEYS[1:])
# Configuration fields the grid sets itself (its keys, or the cell).
GRID_FIELDS = {
    "sde.name": "sde",
    "noise.kind": "noise",
    "noise.power": "noise",
    "noise.dc": "noise",
    "training.loss": "loss",
    "seed": "seeds",
    "training.steps": "train_steps",
    "sampling.num_samples": "n",
    "sampling.method": "samplers",
    "sampling.steps": "samplers",
    "sampling.options": "samplers",
    "sde.sigma_max": "sigma_max",
}
VE_FAMILY = ("ve", "nive")


@dataclass(frozen=True)
class Model:
    """One trained model of the study."""

    sde: str
    noise: Noise
    loss: str
    seed: int
    train_steps: int  # its training budget (optimiser steps)

    @property
    def name(self) -> str:
        """Its run directory's name, e.g. nivp_gff-0.5-dc-zero_ddpm_seed1_steps2000."""
        slug = str(self.noise).replace(":", "-").replace("=", "-")
        return f"{self.sde}_{slug}_{self.loss}_seed{self.seed}_steps{self.train_steps}"


@dataclass(frozen=True)
class Cell:
    """One CSV row: a model sampled by `sampler` with `steps` steps."""

    model: Model
    sampler: str
    steps: int

    @property
    def key(self) -> tuple[str, ...]:
        """(sde, noise, loss, sampler, steps, seed, train_steps) as strings: nidiff_cli.results.row_key of its row."""
        m = self.model
        return (m.sde, str(m.noise), m.loss, self.sampler, str(self.steps), str(m.seed), str(m.train_steps))


@dataclass
class Grid:
    """A checked grid file: the base configuration, the study's settings and its cells in file order."""

    path: pathlib.Path
    out: pathlib.Path
    base: Config
    n: int
    train_steps: int  # the default budget of a model (a group's train_steps overrides it)
    bpd_images: int  # 0: no bits/dim
    sigma_max: float | None  # None: from the data (ve / nive)
    cells: list[Cell]
    # (sde, noise, loss) -> the configuration its paired differences are taken against (summary.md)
    baselines: dict[tuple[str, str, str], tuple[str, str, str]] = field(default_factory=dict)
    _nfe: dict = field(default_factory=dict, repr=False)

    @property
    def configurations(self) -> list[tuple[str, str, str]]:
        """(sde, noise, loss) of the models in order of first appearance."""
        return list(dict.fromkeys((m.sde, str(m.noise), m.loss) for m in self.models))

    @property
    def models(self) -> list[Model]:
        """The models in order of first appearance."""
        return list(dict.fromkeys(c.model for c in self.cells))

    def cells_of(self, model: Model) -> list[Cell]:
        """The model's cells in file order."""
        return [c for c in self.cells if c.model == model]

    def run_dir(self, model: Model) -> pathlib.Path:
        """<out>/models/<model name>."""
        return self.out / "models" / model.name

    def config(self, model: Model) -> Config:
        """The model's configuration (sigma_max of ve / nive left at the base value when it comes from the data)."""
        cfg = copy.deepcopy(self.base)
        cfg.sde.name, cfg.training.loss, cfg.seed = model.sde, model.loss, model.seed
        set_noise(cfg, model.noise)
        cfg.training.steps, cfg.sampling.num_samples = model.train_steps, self.n
        if self.sigma_max is not None and model.sde in VE_FAMILY:
            cfg.sde.sigma_max = self.sigma_max
        return cfg

    def cell_config(self, cell: Cell) -> Config:
        """The configuration of a cell: its model's, with the sampler and steps."""
        cfg = self.config(cell.model)
        cfg.sampling.method, cfg.sampling.steps = cell.sampler, cell.steps
        return cfg

    @functools.cached_property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the base configuration's network."""
        from models import MODEL_CONFIGS

        return tuple(MODEL_CONFIGS[self.base.model.name].image_shape)

    def nfe(self, sde: str, noise: Noise, sampler: str, steps: int) -> int:
        """Score evaluations of one sampler call: a run with a zero score on one image (runs.check_sampler, which
        raises UsageError for a sampler that does not apply to the SDE and noise, e.g. dpm2m to GFF noise with
        dc=zero); cached."""
        check = noise if noise.kind == "gff" else Noise("white")  # a data spectrum noises every coefficient
        if (sde, check, sampler, steps) not in self._nfe:
            cfg = self.config(Model(sde, check, "dsm", 0, self.train_steps))
            self._nfe[sde, check, sampler, steps] = check_sampler(
                SamplingSection(method=sampler, steps=steps), sde_of(cfg, self.image_shape), self.image_shape
            )
        return self._nfe[sde, check, sampler, steps]


def _suggest(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"


def _check_keys(table: dict, known: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in known:
            raise UsageError(f"{where}: unknown key {key!r}{_suggest(key, known)}")


def _ints(value: object, what: str, minimum: int) -> list[int]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in items):
        raise UsageError(f"{what} must be an integer >= {minimum} or a list of them, got {value!r}")
    return list(dict.fromkeys(items))


def _int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, list):
        raise UsageError(f"{what} must be one integer >= {minimum}, got {value!r}")
    return _ints(value, what, minimum)[0]


def _strings(value: object, what: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) for v in items):
        raise UsageError(f"{what} must be a string or a list of strings, got {value!r}")
    return list(dict.fromkeys(items))


def _base_config(tree: object, where: str) -> Config:
    if not isinstance(tree, dict):
        raise UsageError(f"{where}: [config] must be a table")
    for section, value in tree.items():
        for path in [f"{section}.{key}" for key in value] if isinstance(value, dict) else [section]:
            if path in GRID_FIELDS:
                raise UsageError(f"{where}: [config] may not set {path}; the grid's key {GRID_FIELDS[path]!r} sets it")
    try:
        return config_from_tree(tree, where)
    except ConfigError as err:
        raise UsageError(f"{where}: [config]: {err}") from None


def _group_cells(group: dict, grid: Grid, where: str) -> list[Cell]:
    """The cells of one group: sde x fitting noise x loss x seed x budget x sampler x steps, each checked."""
    for key in ("sde", "noise", "loss", "samplers"):
        if key not in group:
            raise UsageError(f"{where}: no {key!r} (give it in the group or at the top level)")
    sdes, losses = _strings(group["sde"], f"{where}: sde"), _strings(group["loss"], f"{where}: loss")
    noises = [parse_noise(s) for s in _strings(group["noise"], f"{where}: noise")]
    seeds = _ints(group.get("seeds", [0]), f"{where}: seeds", 0)
    budgets = _ints(group.get("train_steps", grid.train_steps), f"{where}: train_steps", 1)
    table = group["samplers"]
    if not isinstance(table, dict) or not table:
        raise UsageError(f"{where}: samplers must be a table of sampler = [steps, ...], got {table!r}")
    for sde in sdes:
        if sde not in SDE_NAMES:
            raise UsageError(f"{where}: unknown SDE {sde!r}{_suggest(sde, SDE_NAMES)}")
        if not any(noise.fits(sde) for noise in noises):
            raise UsageError(f"{where}: no noise of {[str(x) for x in noises]} fits {sde} (white: vp, subvp, ve; "
                             "gff / data: nivp, nive)")  # fmt: skip
    for noise in noises:
        if not any(noise.fits(sde) for sde in sdes):
            raise UsageError(f"{where}: noise {str(noise)!r} fits none of the SDEs {sdes}")
    for loss in losses:
        if loss not in LOSS_NAMES:
            raise UsageError(f"{where}: unknown loss {loss!r}{_suggest(loss, LOSS_NAMES)}")
    steps_of = {}
    for sampler, steps in table.items():
        if sampler not in sampler_lib.METHODS:
            raise UsageError(f"{where}: unknown sampler {sampler!r}{_suggest(sampler, tuple(sampler_lib.METHODS))}")
        steps_of[sampler] = _ints(steps, f"{where}: samplers.{sampler}", 1)
    cells = []
    for sde in sdes:
        for loss in losses:
            try:
                get_loss(loss).check_sde(
                    sde_of(grid.config(Model(sde, Noise("white"), loss, 0, grid.train_steps)), grid.image_shape)
                )
            except ValueError as err:
                raise UsageError(f"{where}: {err}") from None
            for sampler, counts in steps_of.items():
                for noise in noises:
                    try:
                        if noise.fits(sde):
                            grid.nfe(sde, noise, sampler, 1)
                    except UsageError as err:
                        raise UsageError(f"{where}: {sde} with noise {noise}: {err}") from None
                models = [Model(sde, noise, loss, seed, budget) for noise in noises if noise.fits(sde)
                          for seed in seeds for budget in budgets]  # fmt: skip
                cells += [Cell(model, sampler, steps) for model in models for steps in counts]
    return cells


def load_grid(path: str | pathlib.Path, out: pathlib.Path | None = None) -> Grid:
    """Read and check a grid file (module docstring); any problem is a UsageError naming the file."""
    path = pathlib.Path(path)
    where = str(path)
    try:
        tree = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"grid file {where!r} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"grid file {where!r} is not readable TOML: {err}") from None
    _check_keys(tree, TOP_KEYS, where)
    base = _base_config(tree.get("config", {}), where)
    if base.data.dataset != "digits":
        raise UsageError(f"{where}: the study scores digits (its feature space and held-out digits); "
                         f"data.dataset = {base.data.dataset!r} is not supported")  # fmt: skip
    sigma_max = tree.get("sigma_max", "data")
    if sigma_max != "data" and not (isinstance(sigma_max, (int, float)) and not isinstance(sigma_max, bool)
                                    and sigma_max > base.sde.sigma_min):  # fmt: skip
        raise UsageError(f'{where}: sigma_max must be "data" or a number > sigma_min, got {sigma_max!r}')
    bpd = tree.get("bpd", False)
    if not isinstance(bpd, bool):
        raise UsageError(f"{where}: bpd must be true or false, got {bpd!r}")
    bpd_images = _int(tree.get("bpd_images", 360), f"{where}: bpd_images", 1) if bpd else 0
    grid = Grid(
        path=path,
        out=pathlib.Path(out if out is not None else tree.get("out", pathlib.Path("runs") / path.stem)),
        base=base,
        n=_int(tree.get("n", base.sampling.num_samples), f"{where}: n", 2),
        train_steps=_int(tree.get("train_steps", base.training.steps), f"{where}: train_steps", 1),
        bpd_images=bpd_images,
        sigma_max=None if sigma_max == "data" else float(sigma_max),
        cells=[],
    )
    groups = tree.get("group", [{}])
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise UsageError(f"{where}: group must be an array of tables ([[group]])")
    defaults = {k: tree[k] for k in GROUP_KEYS[1:] if k in tree}
    wanted = {}
    for i, group in enumerate(groups):
        label = f"{where}: group {group.get('name', i + 1)!r}" if len(groups) > 1 else where
        _check_keys(group, GROUP_KEYS, label)
        cells = _group_cells({**defaults, **group}, grid, label)
        grid.cells += [c for c in cells if c not in grid.cells]
        for m in (c.model for c in cells):
            wanted.setdefault((m.sde, str(m.noise), m.loss), (group.get("baseline", defaults.get("baseline")), label))
    first = grid.configurations[0]
    for config, (baseline, label) in wanted.items():
        grid.baselines[config] = first if baseline is None else _configuration(baseline, grid, label)
    return grid


def _configuration(text: object, grid: Grid, where: str) -> tuple[str, str, str]:
    """The grid's configuration named by "sde noise loss" (a group's baseline)."""
    parts = tuple(text.split()) if isinstance(text, str) else ()
    if len(parts) == 3:
        parts = (parts[0], str(parse_noise(parts[1])), parts[2])
    if parts not in grid.configurations:
        named = ", ".join(f'"{" ".join(c)}"' for c in grid.configurations)
        raise UsageError(f'{where}: baseline must be "sde noise loss" of one of the grid\'s configurations '
                         f"({named}), got {text!r}")  # fmt: skip
    return parts
