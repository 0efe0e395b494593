"""How much of the machine other processes used while something was being timed.

A speed measured while other processes compete for the CPU is not the model's speed, and a
ratio of two such speeds is only as good as the two loads were alike. Linux counts every
CPU's busy and idle time in /proc/stat; this process's own CPU time (`os.times`, all of its
threads) is subtracted from the busy time, and what is left, divided by all CPUs' time, is
the share of the machine that *other* processes used during the measurement: about 0.0 on an
idle machine, 0.5 when one core of two was busy elsewhere the whole time. Where /proc/stat
does not exist (macOS, Windows) the share is None: not measured, never a guess.
"""

from __future__ import annotations

import os
from pathlib import Path

# a timed pass during which other processes used more than this share of the machine is
# reported as measured on a busy machine
BUSY_SHARE = 0.05


def read_proc_stat(path: str | Path = "/proc/stat") -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, or None where there is no such file.

    Busy: user, nice, system, irq, softirq, steal (guest time is already inside user);
    total adds idle and iowait."""
    try:
        with open(path) as f:
            first = f.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu" or len(first) < 8:
        return None
    user, nice, system, idle, iowait, irq, softirq = (int(x) for x in first[1:8])
    steal = int(first[8]) if len(first) > 8 else 0
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def own_cpu_seconds() -> float:
    """CPU seconds this process (every thread) has used: user plus system."""
    t = os.times()
    return t.user + t.system


class OtherLoad:
    """`with OtherLoad() as load: ...`; then `load.share` is the share of all CPUs' time that
    other processes used inside the block (None where it cannot be measured).

    `stat` and `own` read the machine's and this process's counters (tests pass fakes)."""

    def __init__(self, stat=read_proc_stat, own=own_cpu_seconds, ticks_per_second: int | None = None):
        self._stat, self._own = stat, own
        self._hz = ticks_per_second or _clock_ticks()
        self.share: float | None = None

    def __enter__(self) -> OtherLoad:
        self._s0, self._o0 = self._stat(), self._own()
        return self

    def __exit__(self, *exc) -> None:
        s1, o1 = self._stat(), self._own()
        if self._s0 is None or s1 is None or not self._hz:
            return
        busy, total = s1[0] - self._s0[0], s1[1] - self._s0[1]
        if total <= 0:  # shorter than one clock tick: nothing to say
            return
        mine = (o1 - self._o0) * self._hz
        self.share = round(min(1.0, max(0.0, (busy - mine) / total)), 3)


def _clock_ticks() -> int | None:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return None


def caveat(shares: list[float | None]) -> str | None:
    """A short qualifier for a speed claim drawn from these timed passes; None when every
    pass recorded the load and none was busy."""
    known = [s for s in shares if s is not None]
    if any(s > BUSY_SHARE for s in known):
        return "timed on a busy machine"
    if len(known) < len(shares):
        return "machine load during timing not recorded"
    return None


def describe(shares: list[float | None]) -> str:
    """One sentence for a report: how busy the machine was during the timed passes."""
    known = [s for s in shares if s is not None]
    if not shares:
        return ""
    missing = len(shares) - len(known)
    if not known:
        return ("How busy the machine was during the timed passes was not recorded (evaluated "
                "before nmt-kd measured it): treat the speeds as unverified.")
    worst = max(known)
    text = (f"While the timed passes ran, other processes used {100 * min(known):.0f}-"
            f"{100 * worst:.0f}% of the CPU")
    if worst > BUSY_SHARE:
        text += (": **timed on a busy machine**, so these speeds and their ratios are not "
                 "idle-machine figures (`nmt-kd bench` on an idle machine gives those)")
    text += "."
    if missing:
        text += f" {missing} of {len(shares)} timed passes did not record it."
    return text
