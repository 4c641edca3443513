"""This process's share of the CPU: the cores it can get, how the model's threads and the decode
workers split them, and the process settings that keep those cores on the photos.

- ``import imgembed`` sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the environment says otherwise) before
  anything loads torch: OpenMP threads that wait for work sleep instead of spinning on a core that
  another thread, a decode worker or another program needs. OpenMP reads it once, when torch loads
  its runtime, so it cannot be set here, on first use.
- :func:`keep_freed_memory` runs when a model is built: glibc gives every block over 32 MB back to
  the kernel as soon as it is freed, and a CNN's activations (50 MB a layer for EfficientNet-Lite0
  at a batch of 32) are such blocks, so every layer of every batch mapped fresh pages and the kernel
  zeroed them: about 8,000 page faults a photo and a third of the CPU time in the kernel. Freed
  blocks now stay with the process for the next batch.
- :func:`budget` splits the cores that are free (the affinity mask, a cgroup quota, minus what other
  programs keep busy) between the model's threads and the decode workers.
- :func:`use_query_threads` budgets a process that answers one query at a time (the app, a server).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import sys
import time
from typing import NamedTuple

# glibc mallopt() parameters and the value for both: blocks up to 1 GiB come from the heap, and the
# heap's free top is given back to the kernel only once it exceeds 1 GiB.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_BYTES = 1 << 30
# How long to watch the cores to see how busy other programs keep them.
SAMPLE_SECONDS = 0.15
# A window of the cores' use older than this is started afresh before it is trusted.
STALE_SECONDS = 10.0
# A core counts as taken when other programs keep it at least this busy.
TAKEN = 0.5

_kept = False
_answering = False


def query_threads() -> int:
    """Model threads for answering one query at a time: ``OMP_NUM_THREADS`` when set, else half the
    cores, at most 4. One photo gains little from many threads, and on busy cores spinning threads
    starve each other; this stays fast on idle and loaded machines alike (README, "The Streamlit app")."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def use_query_threads() -> None:
    """Budget this process's model threads for answering single queries: torch's now if it is loaded,
    else when a torch model is built (:func:`answering_queries`). Query models on ONNX Runtime
    always take :func:`query_threads`."""
    global _answering
    _answering = True
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(query_threads())


def answering_queries() -> bool:
    return _answering


def keep_freed_memory() -> bool:
    """Keep large freed blocks in the process (glibc only); returns whether the setting took."""
    global _kept
    if _kept:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to set
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _kept = bool(mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES))
    return _kept


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """The cgroup v2 CPU quota in cores ("max 100000": none)."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _cpu_times(cpus: set[int]) -> tuple[float, float] | None:
    """(busy, total) jiffies of ``cpus`` since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = [float(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(values)
        busy += sum(values) - values[3] - values[4]
    return (busy, total) if total else None


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """How many of this process's cores other programs keep busy: over the time since the last look
    (since this module was imported, at first: the model build and the scan), this process's own
    work taken out; a window shorter than ``seconds`` is watched that long, and one older than
    :data:`STALE_SECONDS` is started afresh. Falls back to the load average where /proc cannot tell."""
    if time.monotonic() - _WATCH.since > STALE_SECONDS:  # says little about now
        _WATCH.others_busy()
    age = time.monotonic() - _WATCH.since
    if age < seconds:
        time.sleep(seconds - age)
    busy = _WATCH.others_busy()
    if busy is not None:
        return busy
    try:
        return min(float(usable_cores()), os.getloadavg()[0])
    except OSError:
        return 0.0


def _own_ticks() -> float | None:
    """Clock ticks of CPU this process has used: its threads, its live children (the decode workers)
    and the children it has reaped."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = sum(float(v) for v in fields[11:15])  # utime stime cutime cstime
        kids = set()
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/children") as f:
                kids.update(f.read().split())
    except (OSError, IndexError, ValueError):
        return None
    for pid in kids:
        with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{pid}/stat") as f:
            ticks += sum(float(v) for v in f.read().rsplit(")", 1)[1].split()[11:13])
    return ticks


class CoreWatch:
    """How many of this process's cores other programs kept busy since the last look, while this
    process works too (its own CPU time, decode workers included, is taken out)."""

    def __init__(self) -> None:
        try:
            self.cpus = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            self.cpus = set(range(os.cpu_count() or 1))
        self.cores = min(len(self.cpus), usable_cores())
        self.since = time.monotonic()  # start of the current window
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        times, own = _cpu_times(self.cpus), _own_ticks()
        return None if times is None or own is None else (*times, own)

    def others_busy(self) -> float | None:
        """Cores other programs kept busy since the last call (None where /proc cannot tell)."""
        now, last = self._sample(), self._last
        self._last, self.since = now, time.monotonic()
        if now is None or last is None or now[1] <= last[1]:
            return None
        others = (now[0] - last[0]) - (now[2] - last[2])
        return max(0.0, len(self.cpus) * others / (now[1] - last[1]))


class Budget(NamedTuple):
    threads: int  # the model's intra-op threads (torch.set_num_threads)
    workers: int  # decode worker processes
    cores: int  # cores this process may use
    free: int  # of those, the ones other programs leave free


def budget(cores: int | None = None, busy: float | None = None, workers: int = -1,
           model_on_cpu: bool = True) -> Budget:
    """Split the free cores between the model's threads and the decode workers.

    ``cores`` defaults to :func:`usable_cores`, ``busy`` to :func:`busy_cores`; ``workers`` >= 0 is
    the user's count and is kept. With the model on the CPU it gets one thread per free core (a
    thread per core it cannot get only waits for the slowest one at every layer), and the decode
    workers, a small share of the work, one per free core as well; they run while the model's
    threads sleep. With the model on a GPU the decode workers take every free core.
    """
    cores = usable_cores() if cores is None else max(1, cores)
    if busy is None:
        busy = busy_cores()
    taken = min(cores - 1, int(busy + (1 - TAKEN)))  # cores at least TAKEN busy
    free = max(1, cores - max(0, taken))
    threads = free if model_on_cpu else 1
    return Budget(threads, free if workers < 0 else workers, cores, free)


# Others' use of the cores is judged over the time since the last look (at first since import: the
# model build, the scan), at no wait.
_WATCH = CoreWatch()
