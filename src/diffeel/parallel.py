"""Running independent chunks of work in worker processes, results in chunk order."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context


def split(items: list, count: int) -> list[list]:
    """``count`` contiguous chunks (fewer if there are fewer items)."""
    size = max(1, -(-len(items) // max(count, 1)))
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_chunks(function, chunks: list, arguments: tuple, jobs: int, progress=None) -> list:
    """``function(chunk, *arguments, progress)`` for each chunk; with ``jobs > 1`` in processes.

    Workers get no progress bar; the parent advances ``progress`` by a chunk's length as each
    finishes. Results come back in chunk order, so merging them is deterministic.
    """
    if jobs <= 1 or len(chunks) <= 1:
        return [function(chunk, *arguments, progress) for chunk in chunks]
    results = [None] * len(chunks)
    # spawn, not fork: the parent may hold torch thread pools that a forked child must not inherit.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(function, chunk, *arguments, None): index for index, chunk in enumerate(chunks)}
        for future in futures:
            results[futures[future]] = future.result()
            if progress is not None:
                progress.update(len(chunks[futures[future]]))
    return results
