"""The one progress printer of the package: a status line on stderr.

`StatusLine` either rewrites one line in place (`\\r`, on a terminal) or prints each status as
a line of its own (a log file), and ends an open line before other output follows.
`TrainingProgress` is training's step line on top of it; `nmt_kd.translate` (the bar with ETA)
and `nmt-kd translate` (lines translated) show theirs through a `StatusLine` too.
"""

from __future__ import annotations

import sys


class StatusLine:
    """One status line on stderr.

    `rewrite` (default: whether stderr is a terminal): each `show` rewrites the line in place,
    padded to `width` characters; otherwise each `show` prints a line of its own. `end` closes
    a line left open by a rewrite (and does nothing when none is open).
    """

    def __init__(self, rewrite: bool | None = None, width: int = 0):
        self.rewrite = sys.stderr.isatty() if rewrite is None else rewrite
        self.width = width
        self.open = False

    def show(self, text: str) -> None:
        if self.rewrite:
            print("\r" + text.ljust(self.width), end="", file=sys.stderr, flush=True)
            self.open = True
        else:
            print(text, file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.open:
            print(file=sys.stderr)
            self.open = False


def fmt_time(s: float) -> str:
    """`1h02m` from an hour on, `3m07s` below."""
    s = max(0, int(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class TrainingProgress:
    """Training's step line: rewritten every step on a terminal, printed every `every` steps
    otherwise, with an ETA from whichever budget (steps or seconds) is closest to running out."""

    def __init__(self, every: int, total_steps: int, total_seconds: float):
        self.every, self.total_steps, self.total_seconds = every, total_steps, total_seconds
        self.line = StatusLine(width=100)

    @property
    def tty(self) -> bool:
        return self.line.rewrite

    def update(self, step: int, info: dict, elapsed: float) -> None:
        if not self.tty and step % self.every:
            return
        eta = ""
        fractions = []
        if self.total_steps:
            fractions.append(step / self.total_steps)
        if self.total_seconds:
            fractions.append(elapsed / self.total_seconds)
        if fractions and max(fractions) > 0:
            left = elapsed / max(fractions) - elapsed
            eta = f" | ETA {fmt_time(left)}"
        self.line.show(
            f"step {step} | ep {info['epoch']} | loss {info['loss']:.3f} | lr {info['lr']:.2e} | "
            f"{info['tok_s']:,.0f} tgt tok/s | {fmt_time(elapsed)}{eta}")

    def newline(self) -> None:
        self.line.end()
