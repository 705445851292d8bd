"""Running independent chunks of work in worker processes, results in chunk order."""

from __future__ import annotations

import os
import signal
import sys
import threading
from multiprocessing import get_context


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def worker_count(jobs: int, warn: bool = True) -> int:
    """``jobs`` capped at :func:`available_cpus`: more workers than CPUs only cost memory.

    ``jobs`` must be positive (the CLI checks it too); with ``warn`` the cap is said on stderr.
    """
    if isinstance(jobs, bool) or int(jobs) != jobs or jobs < 1:
        raise ValueError(f"jobs must be a positive whole number, got {jobs!r}")
    cpus = available_cpus()
    if jobs > cpus:
        if warn:
            print(f"diffeel: using {cpus} worker process(es), the number of available CPUs, not {jobs}", file=sys.stderr)
        return cpus
    return int(jobs)


def split(items: list, count: int) -> list[list]:
    """``count`` contiguous chunks (fewer if there are fewer items)."""
    size = max(1, -(-len(items) // max(count, 1)))
    return [items[i : i + size] for i in range(0, len(items), size)]


def _ignore_interrupts() -> None:
    # Ctrl-C reaches the whole process group; only the parent reacts to it (it stops the workers),
    # so that workers neither print tracebacks nor die half-way through a pipe write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_chunks(function, chunks: list, arguments: tuple, jobs: int, progress=None) -> list:
    """``function(chunk, *arguments, progress)`` for each chunk; with ``jobs > 1`` in processes.

    Workers get no progress bar; the parent advances ``progress`` by a chunk's length as each
    finishes. Results come back in chunk order, so merging them is deterministic. On an error or
    an interrupt in the parent the workers are terminated at once, never waited for.
    """
    if jobs <= 1 or len(chunks) <= 1:
        return [function(chunk, *arguments, progress) for chunk in chunks]
    # spawn, not fork: the parent may hold torch thread pools that a forked child must not inherit.
    # Workers start with SIGINT ignored (inherited through exec), so that a Ctrl-C while they are
    # still importing cannot interrupt them either.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
    try:
        pool = get_context("spawn").Pool(min(jobs, len(chunks)), initializer=_ignore_interrupts)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
    try:
        pending = [pool.apply_async(function, (chunk, *arguments, None)) for chunk in chunks]
        results = []
        for chunk, result in zip(chunks, pending):
            results.append(result.get())
            if progress is not None:
                progress.update(len(chunk))
        pool.close()
        return results
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
