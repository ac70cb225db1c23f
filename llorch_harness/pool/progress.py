"""Download progress for huggingface_hub's `tqdm_class` hook: a bar on a terminal, lines elsewhere.

Why: a pool operator watches a tqdm bar, but CI logs and `ssh pool llorch-pool ...`
captures need a few readable lines, not thousands of carriage returns. huggingface_hub
instantiates the class with tqdm keyword arguments and calls `update(n)` (n may be
negative when a resume restarts a file), so both classes accept that interface.
"""

from __future__ import annotations

import io
import os
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm as _tqdm

from llorch_harness.pool.units import human_bytes

PLAIN_INTERVAL_S = 5.0


def _ratio(done: float, total: float) -> str:
    """`0.45/1.00 GB`: both numbers in the unit of the total."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if total >= scale:
            return f"{done / scale:.2f}/{total / scale:.2f} {unit}"
    return f"{int(done)}/{int(total)} B"


class PlainProgress:
    """tqdm-compatible sink that prints `Downloading NAME: 40% (0.40/1.00 GB)` at every 10 %
    step of a file of known size, and at least every `interval_s` seconds otherwise (a CI
    log or a pipe sees progress without a terminal)."""

    out: TextIO = sys.stdout
    label: str = "file"
    interval_s: float = PLAIN_INTERVAL_S

    def __init__(self, *_args: Any, total: float | None = None, initial: float = 0,
                 **_kwargs: Any) -> None:
        self.total = total
        self.n = float(initial or 0)
        self._last = time.monotonic()
        self._closed = False
        self._decile = self._tenth()  # the last 10 % step printed (resumes start past 0)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float | None = 1) -> None:
        self.n += float(n or 0)
        now = time.monotonic()
        tenth = self._tenth()
        if now - self._last >= self.interval_s or tenth > self._decile:
            self._last = now
            self._decile = max(self._decile, tenth)
            self._print(final=False)

    def _tenth(self) -> int:
        """Whole 10 % steps done of a known total, 0..9 (100 % is close()'s line)."""
        if not self.total:
            return 0
        return max(0, min(9, int(10 * self.n / self.total)))

    def _print(self, final: bool) -> None:
        if final:
            line = f"Downloaded {self.label} ({human_bytes(self.n)})"
        elif self.total:
            pct = int(100 * self.n / self.total)
            line = f"Downloading {self.label}: {pct}% ({_ratio(self.n, self.total)})"
        else:
            line = f"Downloading {self.label}: {human_bytes(self.n)}"
        print(line, file=self.out, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.total is None or self.n >= self.total:
            self._print(final=True)

    # huggingface_hub calls these on some paths; nothing to show for them.
    def set_postfix_str(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    def refresh(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def _terminal_columns(out: TextIO) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return 0


class BarProgress(_tqdm):
    """A plain tqdm bar labelled `Downloading NAME` (the CP3 look), written to `out`."""

    out: TextIO = sys.stdout
    label: str = "file"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("name", None)  # huggingface_hub's own tqdm option; vanilla tqdm rejects it
        kwargs["desc"] = f"Downloading {self.label}"
        kwargs.setdefault("unit", "B")
        kwargs.setdefault("unit_scale", True)
        kwargs["file"] = self.out
        kwargs["disable"] = False
        if not _terminal_columns(self.out):
            kwargs.setdefault("ncols", 80)  # a pty without a size would draw an empty bar
            kwargs.setdefault("nrows", 24)
        super().__init__(*args, **kwargs)


def progress_class(label: str, out: TextIO, *, tty: bool | None = None) -> type:
    """A tqdm class bound to one file name and stream: a bar if `out` is a terminal."""
    if tty is None:
        isatty = getattr(out, "isatty", None)
        tty = bool(isatty and isatty())
    base: type = BarProgress if tty else PlainProgress
    return type(f"{base.__name__}_{abs(hash(label)) % 10_000}", (base,),
                {"out": out, "label": label})
