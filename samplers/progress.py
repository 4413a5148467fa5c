"""Progress bars: tqdm (a declared dependency) when it is installed, else a silent stand-in, so that sampling and
training import and run with torch alone (e.g. on a bare GPU image)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["progress"]


class _Silent:
    """The part of tqdm's interface nidiff uses, doing nothing."""

    def __init__(self, iterable: Iterable | None = None, **kwargs):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable if self.iterable is not None else ())

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable: Iterable | None = None, **kwargs):
    """tqdm.auto.tqdm(iterable, **kwargs), or a silent bar when tqdm is not installed."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Silent(iterable, **kwargs)
    return tqdm(iterable, **kwargs)
