"""Import project packages on a machine without their optional dependencies (the GPU benchmark image).

`import_with_stand_ins("training")` imports a module; when the import fails only because one of OPTIONAL is not
installed, an inert stand-in module takes its place and the import is retried. Stand-ins serve what the GPU
benchmarks never use: progress bars (tqdm: a pass-through iterator whose methods do nothing), image files
(torchvision, PIL), weight exports (safetensors), event files (tensorboard), plots, TOML writing and clean-fid.
Any other use raises ModuleNotFoundError naming the missing package. Installed packages are never replaced, and
once the project imports those packages lazily no stand-in is made at all. `STOOD_IN` lists what was replaced.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types

__all__ = ["OPTIONAL", "STOOD_IN", "import_with_stand_ins"]

OPTIONAL = ("tqdm", "torchvision", "PIL", "safetensors", "tensorboard", "matplotlib", "tomli_w", "cleanfid")
STOOD_IN: list[str] = []


class _NoBar:
    """tqdm without output: iterates its iterable; update / close / set_postfix / ... do nothing."""

    def __init__(self, iterable=None, *args, **kwargs) -> None:
        self.iterable = iterable

    def __iter__(self):
        return iter(() if self.iterable is None else self.iterable)

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def _missing(module: str, attr: str) -> type:
    """A placeholder usable in `except` clauses; calling it raises ModuleNotFoundError. Dunder names (which
    inspect and pickle probe on every module) are absent, as on a real module."""
    if attr.startswith("__"):
        raise AttributeError(attr)

    def refuse(cls, *args, **kwargs):
        raise ModuleNotFoundError(f"{module}.{attr}: {module.split('.')[0]} is not installed", name=module)

    return type(attr, (Exception,), {"__new__": refuse})


def _stand_in(name: str) -> None:
    for depth in range(1, name.count(".") + 2):
        part = ".".join(name.split(".")[:depth])
        if part in sys.modules:
            continue
        module = types.ModuleType(part, f"stand-in for the missing package {part} (benchmarks/stand_ins.py)")
        module.__path__ = []  # a package, so that its submodules can be stood in too
        module.__spec__ = importlib.machinery.ModuleSpec(part, None, is_package=True)  # for importlib.util.find_spec
        if part.split(".")[0] == "tqdm":
            module.tqdm = _NoBar
        else:
            module.__getattr__ = lambda attr, _part=part: _missing(_part, attr)
        sys.modules[part] = module
        if depth > 1:
            setattr(sys.modules[".".join(part.split(".")[:-1])], part.rsplit(".", 1)[1], module)
        STOOD_IN.append(part)


def import_with_stand_ins(name: str) -> types.ModuleType:
    """importlib.import_module(name), standing in for missing OPTIONAL packages."""
    for _ in range(32):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as err:
            missing = err.name or ""
            if missing.split(".")[0] not in OPTIONAL or missing in sys.modules:
                raise
            _stand_in(missing)
    raise ImportError(f"could not import {name} with stand-ins for {OPTIONAL}")
