"""Training and sampling import and run with torch alone: the optional packages (progress bars, image files,
metrics, logs, weights files, config files) are imported only where they are used, as on a bare GPU image. The
command line starts without the packages that take seconds to import (they load in the commands that use them)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

BLOCKED = ("tqdm", "torchvision", "PIL", "cleanfid", "tensorboard", "safetensors", "matplotlib", "tomli_w")

SCRIPT = f"""
import sys, importlib.abc, importlib.machinery

class Absent(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError("not installed here: " + spec.name, name=spec.name)

    def exec_module(self, module):
        pass

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            return importlib.machinery.ModuleSpec(name, Absent())  # origin None: found nowhere, imports fail
        return None

sys.meta_path.insert(0, Block())
import tempfile, torch
import samplers, training
from sde_lib import NIVPSDE, GFFCovariance
sde = NIVPSDE(cov=GFFCovariance((1, 8, 8)))
x, nfe = samplers.sample(sde, lambda x, t: -x, (2, 1, 8, 8), "dpm2m", 5, progress=True)
assert x.shape == (2, 1, 8, 8) and nfe == 5
with tempfile.TemporaryDirectory() as d:
    cfg = training.TrainConfig(workdir=d, model="tiny", steps=2, batch_size=4, save_every=0, sample_every=0)
    result = training.train(cfg, progress=True)
assert result["step"] == 2
loaded = [m for m in sys.modules if m.split(".")[0] in {BLOCKED!r}]
assert not loaded, loaded
print("ok")
"""


def test_training_and_sampling_need_only_the_core_packages():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


# Imported only by the commands, or the parts of them, that use them: a process that imports the command line and
# builds its parser (what every `run.py COMMAND` does first, and all that `--help` and `config` need) loads none.
HEAVY = ("torchvision", "sklearn", "matplotlib", "cleanfid", "tensorboard", "torchdiffeq")

CLI_SCRIPT = f"""
import sys
import nidiff_cli
nidiff_cli.build_parser()
print(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} or m.startswith("torch.utils.tensorboard")))
"""


def test_the_command_line_and_its_parser_import_none_of_the_heavy_packages():
    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", CLI_SCRIPT], capture_output=True, text=True, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]", proc.stdout
