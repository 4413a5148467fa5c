"""run.py study: the noise strings, the grid file's checks, --plan, the results CSV, training budgets and their plots,
and a tiny study that is stopped after its first models, resumed, and finished without training any model twice."""

import csv
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import run
from evaluation.plots import main_budget, plot_table, plot_training_curve, training_curve_cells
from evaluation.report import study_summary
from evaluation.stats import paired_interval
from nidiff_cli.common import UsageError
from nidiff_cli.grid import Model, load_grid
from nidiff_cli.plan import ModelCost, assign, estimate
from nidiff_cli.results import FIELDS, KEY, Noise, append_row, cell_row, parse_noise, read_rows, row_key
from nidiff_cli.study import STOP_AFTER_ENV

ROOT = pathlib.Path(__file__).resolve().parents[1]
# clean-fid's frechet_distance passes scipy's deprecated sqrtm(disp=...) argument.
pytestmark = pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
STEPS = (4, 2)
TINY_GRID = """
out = "{out}"
seeds = [0, 1]
n = 16
train_steps = 20
bpd = true
bpd_images = 2
sde = ["vp", "nivp"]
noise = ["white", "gff:1"]
loss = ["ddpm"]
samplers = {{ ddpm = [4, 2] }}

[config]
preset = "tiny"
training.save_every = 10
"""


def tiny_grid(tmp_path, body: str = TINY_GRID):
    path = tmp_path / "grid.toml"
    path.write_text(body.format(out=tmp_path / "out"))
    return path


def in_process(args, capsys) -> tuple[int, str, str]:
    try:
        code = run.main(args)
    except SystemExit as stop:  # argparse errors exit from inside parse_args
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


# ---- noise strings and the results CSV ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["white", "data", "gff:1", "gff:0.5", "gff:2:dc=zero", "gff:1.5", "gff:0"])
def test_noise_strings_round_trip(text):
    noise = parse_noise(text)
    assert str(noise) == text and parse_noise(str(noise)) == noise


def test_noise_strings_read_non_canonical_forms_and_fit_their_sdes():
    assert parse_noise("gff:1.0:dc=one") == Noise("gff", 1.0, "one") and str(parse_noise("gff:2.50")) == "gff:2.5"
    assert parse_noise("gff:0.5:dc=zero") == Noise("gff", 0.5, "zero")
    assert Noise("white").fits("vp") and Noise("white").fits("ve") and not Noise("white").fits("nivp")
    assert Noise("gff").fits("nive") and Noise("data").fits("nivp") and not Noise("data").fits("vp")


@pytest.mark.parametrize("text", ["gff", "gff:x", "gff:-1", "gff:inf", "gff:1:dc=two", "gff:1:dc=zero:x", "pink",
                                  "white:1", ""])  # fmt: skip
def test_bad_noise_strings_are_refused(text):
    with pytest.raises(UsageError, match="expected white, data, gff:<power> or gff:<power>:dc=zero"):
        parse_noise(text)


def test_a_row_cut_short_is_dropped_and_appends_continue(tmp_path):
    path = tmp_path / "study.csv"
    row = {k: i for i, k in enumerate(FIELDS)} | {"bpd": None}
    append_row(path, row)
    with open(path, "a") as f:
        f.write("vp,white,ddpm,ddpm,4,4.0")  # a writer killed mid-line
    assert len(read_rows(path)) == 1  # read-only: the partial line is ignored
    assert len(read_rows(path, repair=True)) == 1 and path.read_text().endswith("\n")
    append_row(path, row)
    rows = read_rows(path)
    assert len(rows) == 2 and rows[0] == rows[1] and rows[0]["bpd"] == "" and list(rows[0]) == FIELDS


def test_worker_shares_are_balanced_and_fixed():
    costs = {Model("vp", Noise("white"), "ddpm", s, 20): ModelCost(c, 0.0, {}) for s, c in enumerate([3, 5, 3, 4, 3])}
    share = assign(costs, 2)
    # Longest first to the least loaded (a tie to the lower index): 5 -> 0 (0 = 0), 4 -> 1, seed 0's 3 -> 1 (4 < 5),
    # seed 2's 3 -> 0 (5 < 7), seed 4's 3 -> 1 (7 < 8): loads 8 and 10.
    assert [share[m] for m in costs] == [1, 0, 0, 1, 1]
    assert assign(costs, 2) == share and set(assign(costs, 1).values()) == {0}


# ---- the grid file -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit, words",
    [
        (("samplers = ", "sampler = "), ["unknown key 'sampler'", "did you mean 'samplers'"]),
        (('"gff:1"', '"gff:one"'), ["noise 'gff:one'", "gff:<power>"]),
        (('noise = ["white", "gff:1"]', 'noise = ["gff:1"]'), ["no noise", "fits vp"]),
        (("training.save_every", "training.steps"), ["may not set training.steps", "'train_steps'"]),
        (("training.save_every", "training.lrr"), ["training.lrr", "did you mean 'training.lr'"]),
        (('sde = ["vp", "nivp"]', 'sde = ["ve", "nive"]'), ["loss 'ddpm' does not apply to"]),
        (("ddpm = [4, 2]", "als = [4]"), ["--sampler als"]),
        # The sampler is checked against each noise: dpm2m needs every coefficient noised, dc=zero never noises DC.
        (
            (
                '"gff:1"]\nloss = ["ddpm"]\nsamplers = {{ ddpm = [4, 2] }}',
                '"gff:1:dc=zero"]\nloss = ["ddpm"]\nsamplers = {{ ddpm = [4, 2], dpm2m = [2] }}',
            ),
            ["nivp with noise gff:1:dc=zero", "dpm2m", "never noised"],
        ),
        (("ddpm = [4, 2]", "ddpm = [4, 0]"), ["samplers.ddpm", ">= 1"]),
        (("seeds = [0, 1]", "seeds = [0, -1]"), ["seeds", ">= 0"]),
        (("n = 16", "n = [16, 32]"), ["n must be one integer"]),
        (('loss = ["ddpm"]', 'loss = ["ddpm"]\nbaseline = "ve white dsm"'), ["baseline must be", '"vp white ddpm"']),
        (('preset = "tiny"', 'preset = "tiny"\ndata.dataset = "cifar10"'), ["scores digits"]),
    ],
)
def test_bad_grid_files_end_with_one_line(edit, words, tmp_path, capsys):
    path = tiny_grid(tmp_path, TINY_GRID.replace(*edit))
    code, _, err = in_process(["study", str(path), "--plan"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]


def test_a_missing_grid_file_is_named(tmp_path, capsys):
    code, _, err = in_process(["study", str(tmp_path / "none.toml")], capsys)
    assert code == 2 and "none.toml" in err and "does not exist" in err


def test_plan_lists_every_cell_with_its_cost_and_runs_nothing(tmp_path, capsys):
    path = tiny_grid(tmp_path)
    code, out, _ = in_process(["study", str(path), "--plan", "--workers", "2"], capsys)
    assert code == 0
    lines = out.splitlines()
    models = [
        f"{sde}_{noise}_ddpm_seed{seed}_steps20"
        for sde, noise in (("vp", "white"), ("nivp", "gff-1"))
        for seed in (0, 1)
    ]
    listed = [line.split()[0] for line in lines if line.split() and line.split()[0] in models]
    assert listed == models
    cells = [line.split() for line in lines if line.startswith("  ddpm ")]
    assert [(int(c[1]), int(c[2])) for c in cells] == [(s, s) for _ in models for s in STEPS]  # (steps, nfe)
    assert all(float(c[3]) > 0 for c in cells)
    shares = {line.split()[-1] for line in lines if line.split() and line.split()[0] in models}
    assert shares == {"1/2", "2/2"}
    assert any(line.startswith("estimated CPU time:") for line in lines)
    assert any("with 2 workers" in line for line in lines)
    assert not (tmp_path / "out").exists()


# ---- training budgets ---------------------------------------------------------------------------------------------

BUDGET_GROUPS = """
[[group]]
name = "curve"
sde = ["vp"]
noise = ["white"]
train_steps = [10, 20]

[[group]]
name = "default budget"
sde = ["vp", "nivp"]
noise = ["white", "gff:1"]
"""


def test_a_group_trains_one_model_per_budget(tmp_path):
    grid = load_grid(tiny_grid(tmp_path, TINY_GRID + BUDGET_GROUPS))
    vp = [Model("vp", Noise("white"), "ddpm", seed, budget) for seed in (0, 1) for budget in (10, 20)]
    nivp = [Model("nivp", Noise("gff", 1.0), "ddpm", seed, 20) for seed in (0, 1)]
    assert grid.train_steps == 20 and grid.models == vp + nivp  # the vp models at 20 steps are not repeated
    assert len(grid.cells) == len(grid.models) * len(STEPS)
    names = [m.name for m in grid.models]
    assert names[:2] == ["vp_white_ddpm_seed0_steps10", "vp_white_ddpm_seed0_steps20"]
    assert len(set(names)) == len({grid.run_dir(m) for m in grid.models}) == 6
    assert [grid.config(m).training.steps for m in grid.models] == [10, 20, 10, 20, 20, 20]
    assert {c.key[-1] for c in grid.cells} == {"10", "20"}
    costs = estimate(grid)
    assert costs[vp[1]].train_s == pytest.approx(2 * costs[vp[0]].train_s)


@pytest.mark.parametrize("value", ["0", '"x"', "[1.5]", "[]", "[10, 0]", "true"])
def test_a_bad_group_budget_is_named(value, tmp_path):
    path = tiny_grid(tmp_path, TINY_GRID + BUDGET_GROUPS.replace("[10, 20]", value))
    with pytest.raises(UsageError, match=r"group 'curve': train_steps must be an integer >= 1"):
        load_grid(path)


def test_the_top_level_budget_is_one_integer(tmp_path):
    with pytest.raises(UsageError, match="train_steps must be one integer"):
        load_grid(tiny_grid(tmp_path, TINY_GRID.replace("train_steps = 20", "train_steps = [10, 20]")))


def test_a_row_holds_its_budget_in_its_key(tmp_path):
    assert FIELDS[FIELDS.index("seed") + 1] == "train_steps" and "train_steps" in KEY
    grid = load_grid(tiny_grid(tmp_path, TINY_GRID + BUDGET_GROUPS))
    cell = grid.cells[0]
    row = cell_row(grid.cell_config(cell), 4, 16, {"fd": 1.0}, {"commit": "c", "torch": "t"})
    assert row["train_steps"] == cell.model.train_steps == 10 and row_key(row) == cell.key
    assert cell.key == tuple(str(row[k]) for k in KEY)
    append_row(tmp_path / "study.csv", row)
    assert row_key(read_rows(tmp_path / "study.csv")[0]) == cell.key


def budget_rows(budgets: dict[str, tuple[int, ...]]) -> list[dict]:
    """Synthetic rows: per sampler its budgets, two configurations, two seeds; FD falls with the budget."""
    rows = []
    for sampler, counts in budgets.items():
        for budget in counts:
            for i, (sde, noise) in enumerate((("vp", "white"), ("nivp", "gff:1"))):
                for seed in (0, 1):
                    fd = 10.0 + 1000.0 / budget + i + 0.1 * seed
                    rows.append({"sde": sde, "noise": noise, "loss": "ddpm", "sampler": sampler, "steps": 4, "nfe": 4,
                                 "seed": seed, "train_steps": budget, "n": 16, "fd": fd, "fd_lo": fd - 1,
                                 "fd_hi": fd + 1, "floor_fd": 2.0, "floor_sd": 0.5, "precision": 0.5, "recall": 0.5,
                                 "commit": "c", "torch": "t"})  # fmt: skip
    return rows


def test_fd_against_the_training_budget_is_plotted(tmp_path):
    path = tmp_path / "study.csv"
    for row in budget_rows({"ddpm": (10, 20, 40), "dpm2m": (20,)}):
        append_row(path, row)
    assert training_curve_cells(read_rows(path)) == [("ddpm", 4)]
    assert main_budget(read_rows(path)) == ("20", ["10", "20", "40"])  # 8 rows of 20, 4 of 10 and of 40
    for plot, name in ((plot_training_curve, "fd_vs_training.png"), (plot_table, "fd_vs_steps.png")):
        out = plot(path, tmp_path / name)
        assert out == tmp_path / name and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_table_takes_one_budget_and_no_curve_without_two(tmp_path):
    path = tmp_path / "study.csv"
    for row in budget_rows({"ddpm": (10, 40), "dpm2m": (40,)}):
        append_row(path, row)
    assert main_budget(read_rows(path)) == ("40", ["10", "40"])
    assert main_budget(read_rows(path)[:8]) == ("40", ["10", "40"])  # a tie: the larger budget
    assert plot_table(path, tmp_path / "fd.png").is_file()
    single = tmp_path / "single.csv"
    for row in budget_rows({"ddpm": (10,), "dpm2m": (40,)}):
        append_row(single, row)
    assert training_curve_cells(read_rows(single)) == []
    with pytest.raises(ValueError, match="two or more train_steps"):
        plot_training_curve(single, tmp_path / "none.png")


# ---- a tiny study, stopped and resumed ---------------------------------------------------------------------------


def study_process(*args: str, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "study", *args], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def training_log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "study.log").read_text().splitlines()]


@pytest.mark.subprocess
def test_a_stopped_study_resumes_without_training_any_model_twice(tmp_path, capsys, monkeypatch, one_thread):
    path, out = tiny_grid(tmp_path), tmp_path / "out"
    # Two worker processes, each stopped by SIGTERM right after it has trained its first model.
    study_process(str(path), "--workers", "2", env={**ENV, STOP_AFTER_ENV: "1"})
    first = training_log(out)
    assert sorted(e["model"] for e in first) == ["vp_white_ddpm_seed0_steps20", "vp_white_ddpm_seed1_steps20"]
    assert all((e["from"], e["to"]) == (0, 20) for e in first)
    assert sorted(e["share"] for e in first) == ["1/2", "2/2"]
    checkpoints = {
        p: p.stat().st_mtime_ns for e in first for p in (out / "models" / e["model"] / "checkpoints").iterdir()
    }
    assert checkpoints

    monkeypatch.delenv(STOP_AFTER_ENV, raising=False)
    assert in_process(["study", str(path)], capsys)[0] == 0  # the rerun, in this process
    log = training_log(out)
    assert log[:2] == first and len(log) == 4  # the two new models only, each once, from step 0 to 20
    assert sorted(e["model"] for e in log[2:]) == ["nivp_gff-1_ddpm_seed0_steps20", "nivp_gff-1_ddpm_seed1_steps20"]
    assert all((e["from"], e["to"]) == (0, 20) for e in log[2:])
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints  # not written again

    with open(out / "study.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == FIELDS
    keys = [(r["sde"], r["noise"], r["loss"], r["sampler"], r["steps"], r["seed"], r["train_steps"]) for r in rows]
    expected = {(sde, noise, "ddpm", "ddpm", str(s), str(seed), "20")
                for sde, noise in (("vp", "white"), ("nivp", "gff:1")) for s in STEPS for seed in (0, 1)}  # fmt: skip
    assert len(keys) == len(set(keys)) == 8 and set(keys) == expected
    for r in rows:
        values = {k: float(r[k]) for k in ("nfe", "fd", "fd_lo", "fd_hi", "floor_fd", "floor_sd", "precision", "recall",
                                           "bpd")}  # fmt: skip
        assert all(math.isfinite(v) for v in values.values()), r
        assert values["fd_lo"] <= values["fd"] <= values["fd_hi"] and values["floor_fd"] > 0
        assert 0 <= values["precision"] <= 1 and 0 <= values["recall"] <= 1
        assert values["nfe"] == float(r["steps"]) and r["n"] == "16"
        per_image = np.load(
            out / "models" / f"{r['sde']}_{r['noise'].replace(':', '-')}_ddpm_seed{r['seed']}_steps20" / "bpd.npz"
        )
        assert per_image["bpd"].shape == (2,) and values["bpd"] == pytest.approx(per_image["bpd"].mean())

    assert in_process(["study", str(path)], capsys)[0] == 0  # nothing left: no training, no row
    assert len(training_log(out)) == 4 and len(read_rows(out / "study.csv")) == 8
    code, plan, _ = in_process(["study", str(path), "--plan"], capsys)
    assert code == 0 and "left to do: 0.0 min" in plan
    code, _, _ = in_process(["study", str(path), "--plots"], capsys)
    written = {p.name for p in out.iterdir()}
    assert code == 0 and {"fd_vs_steps.png", "loss_curves.png", "summary.md"} <= written
    assert "fd_vs_training.png" not in written  # one budget: no training curve
    assert "| nivp gff:1 ddpm | ddpm | 4 | 2 |" in (out / "summary.md").read_text()
    # The loss curves outlive the run directories: losses.csv keeps every model's, the plots read it.
    kept = (out / "losses.csv").read_text()
    with open(out / "losses.csv", newline="") as f:
        assert {r["model"] for r in csv.DictReader(f)} == {m.name for m in load_grid(path).models}
    shutil.rmtree(out / "models")
    assert in_process(["study", str(path), "--plots"], capsys)[0] == 0
    assert (out / "losses.csv").read_text() == kept


def test_the_digits_study_grid_holds_both_tiers_and_plans_at_most_about_five_hours():
    grid = load_grid(ROOT / "benchmarks" / "digits_study.toml")
    cells = {c.key for c in grid.cells}
    seeds, budget = [str(s) for s in range(3)], str(grid.train_steps)
    # Tier 1: VP / white against NIVP / gff:1, NI-DDPM's loss, >= 3 paired seeds, the paper's step counts.
    for sde, noise in (("vp", "white"), ("nivp", "gff:1")):
        for sampler, counts in (("ddpm", (1000, 100, 50, 20, 10)), ("dpm2m", (10, 20, 50))):
            assert {(sde, noise, "ddpm", sampler, str(s), seed, budget) for s in counts for seed in seeds} <= cells
    # Tier 2: GFF powers, the DC rule and the data spectrum (ddpm 100 / 10, dpm2m 10), NI-VE against VE.
    for noise in ("gff:0.5", "gff:2", "gff:1:dc=zero", "data"):
        wanted = {("ddpm", "100"), ("ddpm", "10")} | ({("dpm2m", "10")} if "dc=zero" not in noise else set())
        assert {("nivp", noise, "ddpm", *c, seed, budget) for c in wanted for seed in seeds} <= cells
    for sde, noise in (("ve", "white"), ("nive", "gff:1")):
        assert {(sde, noise, "dsm", "dpm2m", "10", seed, budget) for seed in seeds} <= cells
    assert grid.n == 1000 and grid.bpd_images == 360 and grid.sigma_max is None
    costs = estimate(grid)
    share = assign(costs, 2)
    wall = max(sum(c.total for m, c in costs.items() if share[m] == k) for k in (0, 1))
    assert wall < 5.5 * 3600  # two one-thread workers, by the cost model of nidiff_cli/plan.py


def test_each_group_pairs_its_configurations_with_its_baseline(tmp_path):
    body = (
        TINY_GRID
        + """
[[group]]
name = "vp family"

[[group]]
name = "ve family"
sde = ["ve", "nive"]
loss = ["dsm"]
samplers = {{ pc = [4] }}
baseline = "ve white dsm"
"""
    )
    grid = load_grid(tiny_grid(tmp_path, body))
    vp, nivp, ve, nive = (
        ("vp", "white", "ddpm"),
        ("nivp", "gff:1", "ddpm"),
        ("ve", "white", "dsm"),
        ("nive", "gff:1", "dsm"),
    )
    assert grid.configurations == [vp, nivp, ve, nive]
    assert grid.baselines == {vp: vp, nivp: vp, ve: ve, nive: ve}

    def row(config, sampler, seed, fd, bpd):
        return dict(zip(("sde", "noise", "loss"), config), sampler=sampler, steps="4", seed=str(seed), fd=str(fd),
                    bpd=str(bpd), n="16", floor_fd="1.0", floor_sd="0.1")  # fmt: skip

    fds = {vp: [10.0, 12.0, 11.0], nivp: [11.0, 14.0, 12.5], ve: [20.0, 21.0, 25.0], nive: [19.0, 22.5, 24.0]}
    bpds = {vp: [2.1, 2.2, 2.15], nivp: [2.3, 2.25, 2.4], ve: [3.0, 3.1, 3.2], nive: [2.9, 3.0, 3.3]}
    rows = [row(c, "pc" if c[2] == "dsm" else "ddpm", s, fds[c][s], bpds[c][s]) for c in fds for s in range(3)]
    lines = study_summary(rows, grid.configurations, grid.baselines).splitlines()
    assert lines[0].startswith("Baselines: vp white ddpm; ve white dsm")

    def cells(prefix):
        (line,) = [x for x in lines if x.startswith(prefix)]
        return [c.strip() for c in line.strip("|").split("|")]

    checks = [("| nive gff:1 dsm | pc | 4 |", nive, ve, 5, 2, fds),
              ("| nivp gff:1 ddpm | ddpm | 4 |", nivp, vp, 5, 2, fds),
              ("| nive gff:1 dsm | 3 |", nive, ve, 3, 3, bpds)]  # fmt: skip
    for prefix, config, base, column, digits, values in checks:
        diff = paired_interval(values[config], values[base])
        got = cells(prefix)
        assert got[column] == " ".join(base)
        assert got[column + 1] == f"{diff.value:.{digits}f} [{diff.lo:.{digits}f}, {diff.hi:.{digits}f}]"
    assert cells("| ve white dsm | pc | 4")[5:] == ["", ""]  # a baseline has no difference to itself


def test_the_readme_grid_example_loads(tmp_path):
    text = (ROOT / "README.md").read_text()
    start = text.index("```toml\nout = ")
    example = text[start + len("```toml\n") : text.index("```", start + 7)]
    path = tmp_path / "example.toml"
    path.write_text(example)
    grid = load_grid(path, out=tmp_path / "out")
    assert ("nivp", "gff:1:dc=zero", "ddpm") in grid.configurations and grid.cells
