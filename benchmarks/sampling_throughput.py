"""Sampling throughput on the CPU (images/s) of this tree against another checkout of the project, in one run.

Workload: the `digits` U-Net (models.create_model("digits"), eval mode; weights drawn once from a fixed seed, its
zero-initialised layers from N(0, 1e-3^2), saved to a temporary file and loaded by both trees) as a "dsm" model
(training.score_fn_for) on the NIVP SDE with GFF noise (power 1), images 1x8x8, one batch of 256 in float32, drawn
by samplers.sample under torch.no_grad (as samplers.sample_batches, the main job's loop, does in both trees):

* dpm2m at 10 steps with each tree's defaults, and with schedule="logsnr" (the earlier default grid) in both;
* pc at 100 steps with its defaults (Euler-Maruyama predictor, no corrector, final denoising: the main job's sampler).

Each tree runs in a worker process of its own (cwd and PYTHONPATH at that tree, so it imports its own packages; the
worker's source is in this file and goes to the other tree's Python through `python -c`). The workers take turns:
each round runs every job once in "before" and then in "after", and there are `--rounds` rounds (untimed warm-up
first) for each torch thread count in `--threads`. The table gives the best and the median images/s of each tree,
the after/before ratios, and whether both trees drew the same samples from the same seed (first round, one thread).

The "score 0" rows time the samplers with a zero score function: the samplers' own work alone (time grid, noise,
updates, checks), the part of the time that the samplers' code decides. Where pc's samples differ, a further run of
the "after" tree with the earlier per-step seed rule (every noisy step draws its seed from the generator) says
whether the seeds are the only difference, and the network's outputs of both trees on one input say whether the
network itself rounds alike.

Run from the repository root, with the other checkout (e.g. a `git worktree add --detach` of an earlier commit):

    python -m benchmarks.sampling_throughput --before /path/to/other/tree [--rounds 3] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

import torch

from benchmarks.likelihood_cost import cpu_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHAPE = (1, 8, 8)
GFF_POWER = 1.0

# (label, method, steps, options, score: "net" for the U-Net, "zero" for score 0, which leaves the sampler's own work)
JOBS = (
    ("dpm2m, 10 steps, defaults", "dpm2m", 10, {}, "net"),
    ("dpm2m, 10 steps, schedule=logsnr", "dpm2m", 10, {"schedule": "logsnr"}, "net"),
    ("pc, 100 steps", "pc", 100, {}, "net"),
    ("score 0: dpm2m, 10 steps, schedule=logsnr", "dpm2m", 10, {"schedule": "logsnr"}, "zero"),
    ("score 0: pc, 100 steps", "pc", 100, {}, "zero"),
)

# The worker: reads one JSON line of set-up, then one JSON line per job; answers one JSON line each on its stdout
# (anything the libraries print goes to stderr). It uses only what both trees have: models.create_model,
# sde_lib.make_sde, training.score_fn_for and samplers.sample with the same signature.
WORKER = r"""
import json, sys, time
out, sys.stdout = sys.stdout, sys.stderr
import torch

def reply(obj):
    out.write(json.dumps(obj) + "\n")
    out.flush()

init = json.loads(sys.stdin.readline())
torch.set_num_threads(init["threads"])
import samplers, training
from samplers import common
from models import create_model
from sde_lib import make_sde

model = create_model("digits").eval()
model.load_state_dict(torch.load(init["weights"], weights_only=True))
shape = tuple(init["shape"])
sde = make_sde("nivp", shape, power=init["power"])
scores = {"net": training.score_fn_for(model, sde, "dsm"), "zero": lambda x, t: torch.zeros_like(x)}
reply({"samplers": samplers.__file__, "torch": torch.__version__, "threads": torch.get_num_threads()})

def legacy_seed(self):
    device = self.generator.device if self.generator is not None else None
    return int(torch.randint(0, common.SEED_HIGH, (), generator=self.generator, device=device))

own_seed = common.Run.seed
for line in sys.stdin:
    job = json.loads(line)
    if "net" in job:  # the network's eps on a saved input
        x, t = torch.load(job["net"])
        with torch.no_grad():
            torch.save(model(x, t), job["save"])
        reply({})
        continue
    common.Run.seed = legacy_seed if job["legacy_seeds"] else own_seed
    generator = torch.Generator().manual_seed(job["seed"])
    start, start_cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        x, nfe = samplers.sample(sde, scores[job["score"]], (job["batch"], *shape), job["method"], job["steps"],
                                 generator, **job["options"])
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    if job["save"]:
        torch.save(x, job["save"])
    reply({"wall": wall, "cpu": cpu, "nfe": nfe})
"""


class Worker:
    """One tree's worker process (see WORKER)."""

    def __init__(self, tree: pathlib.Path, weights: pathlib.Path, threads: int):
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.tree = tree
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], cwd=tree, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        self.info = self.ask({"weights": str(weights), "threads": threads, "shape": SHAPE, "power": GFF_POWER})
        imported = pathlib.Path(self.info["samplers"]).resolve()
        if tree.resolve() not in imported.parents:
            raise RuntimeError(f"the worker for {tree} imported samplers from {imported}")

    def ask(self, message: dict) -> dict:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker for {self.tree} stopped (exit code {self.proc.wait()})")
        return json.loads(line)

    def run(self, method: str, steps: int, options: dict, score: str, batch: int, seed: int, save=None,
            legacy_seeds=False):  # fmt: skip
        job = {"method": method, "steps": steps, "options": options, "score": score, "batch": batch, "seed": seed,
               "save": str(save) if save else None, "legacy_seeds": legacy_seeds}  # fmt: skip
        return self.ask(job)

    def net(self, inputs: pathlib.Path, save: pathlib.Path) -> None:
        """The network's output on the saved (x, t), saved to `save`."""
        self.ask({"net": str(inputs), "save": str(save)})

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def write_weights(path: pathlib.Path, seed: int) -> None:
    """The digits U-Net's state_dict from `seed`, its zero-initialised tensors drawn from N(0, 1e-3^2) so that the
    network's output is not identically zero."""
    from models import create_model

    torch.manual_seed(seed)
    net = create_model("digits")
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                torch.nn.init.normal_(p, std=1e-3)
    torch.save(net.state_dict(), path)


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def compare(a: pathlib.Path, b: pathlib.Path) -> str:
    """'equal' when the saved tensors are bitwise equal, else their largest absolute difference relative to the
    largest absolute value."""
    x, y = torch.load(a), torch.load(b)
    if torch.equal(x, y):
        return "equal"
    return f"differ (max abs diff / max abs {float((x - y).abs().max() / x.abs().max()):.1g})"


def measure(before: pathlib.Path, after: pathlib.Path, threads: int, args, weights, tmp) -> tuple[list, dict]:
    """Rows of the table for one thread count, and the sample comparisons (one thread only)."""
    trees = {"before": Worker(before, weights, threads), "after": Worker(after, weights, threads)}
    try:
        for worker in trees.values():  # warm-up: first calls, allocator, FFT plans
            for _, method, steps, options, score in JOBS:
                worker.run(method, min(steps, 3), options, score, args.batch, args.seed)
        wall = {(label, tree): [] for label, *_ in JOBS for tree in trees}
        cpu = {(label, tree): [] for label, *_ in JOBS for tree in trees}
        loads = []
        for r in range(args.rounds):
            for j, (label, method, steps, options, score) in enumerate(JOBS):
                for name, worker in trees.items():
                    save = tmp / f"{name}-{j}.pt" if r == 0 and threads == 1 else None
                    result = worker.run(method, steps, options, score, args.batch, args.seed, save)
                    wall[label, name].append(result["wall"])
                    cpu[label, name].append(result["cpu"])
            loads.append(os.getloadavg()[0])
            print(f"threads {threads}, round {r + 1}/{args.rounds} done (load {loads[-1]:.2f})", flush=True)
        same = {}
        if threads == 1:
            torch.manual_seed(args.seed + 1)
            inputs = (torch.randn(args.batch, *SHAPE), torch.rand(args.batch) * 999)
            torch.save(inputs, tmp / "net-in.pt")
            for name, worker in trees.items():
                worker.net(tmp / "net-in.pt", tmp / f"net-{name}.pt")
            same["network output"] = compare(tmp / "net-before.pt", tmp / "net-after.pt")
            for j, (label, method, steps, options, score) in enumerate(JOBS):
                same[label] = compare(tmp / f"before-{j}.pt", tmp / f"after-{j}.pt")
                if method == "pc" and same[label] != "equal":
                    legacy = tmp / "after-legacy.pt"
                    trees["after"].run(method, steps, options, score, args.batch, args.seed, legacy, legacy_seeds=True)
                    same[label] += f"; with the earlier seed rule: {compare(tmp / f'before-{j}.pt', legacy)}"
    finally:
        for worker in trees.values():
            worker.close()
    rows = []
    for label, *_ in JOBS:
        rate = {name: [args.batch / s for s in wall[label, name]] for name in trees}
        best = {name: max(v) for name, v in rate.items()}
        median = {name: statistics.median(v) for name, v in rate.items()}
        cpu_ratio = statistics.median(cpu[label, "before"]) / statistics.median(cpu[label, "after"])
        rows.append((label, threads, best["before"], median["before"], best["after"], median["after"],
                     best["after"] / best["before"], median["after"] / median["before"], cpu_ratio))  # fmt: skip
    return rows, {"same": same, "load_max": max(loads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=pathlib.Path, required=True, help="the other checkout's root")
    parser.add_argument("--after", type=pathlib.Path, default=ROOT, help="default: this checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    load_start = loadavg()
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}; load average {load_start}")
    rows, notes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        weights = tmp / "digits.pt"
        write_weights(weights, args.seed)
        for threads in args.threads:
            r, notes[threads] = measure(args.before.resolve(), args.after.resolve(), threads, args, weights, tmp)
            rows += r
    same = next((n["same"] for n in notes.values() if n["same"]), {})
    if same:
        print(f"network output on the same input (1 thread): {same['network output']}")
    print(f"load average before {load_start}, after {loadavg()}, highest 1-minute value between rounds "
          f"{max(n['load_max'] for n in notes.values()):.2f}")  # fmt: skip
    print(f"batch {args.batch}, {args.rounds} rounds per tree; images/s from wall time; the CPU ratio is the "
          "before/after ratio of the median CPU seconds of the worker process\n")  # fmt: skip
    print("| sampler | threads | before: best, median images/s | after: best, median images/s | after/before best "
          "| after/before median | after/before by CPU time | same samples (same seed, 1 thread) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for label, threads, b_best, b_med, a_best, a_med, r_best, r_med, r_cpu in rows:
        equal = same.get(label, "-") if threads == 1 else "-"
        print(f"| {label} | {threads} | {b_best:.1f}, {b_med:.1f} | {a_best:.1f}, {a_med:.1f} | {r_best:.2f} "
              f"| {r_med:.2f} | {r_cpu:.2f} | {equal} |")  # fmt: skip


if __name__ == "__main__":
    main()
