"""One piece of work per pool, all at once (`llorch pools ...`, `gate run`).

Threads are enough: ssh does the work. A Ctrl-C (or SIGTERM turned into KeyboardInterrupt)
in the waiting thread ends every remote command of the run (transport.interrupt_all) and
lets their threads return before it propagates, so no ssh and no remote command is left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from llorch_harness.remote import transport

T = TypeVar("T")
R = TypeVar("R")
MAX_THREADS = 16


def fan_out(
    items: Sequence[T],
    work: Callable[[T], R],
    name: Callable[[T], str],
    *,
    on_done: Callable[[R], None] | None = None,
    on_wait: Callable[[list[str], float], None] | None = None,
    every: float = 30.0,
) -> list[R]:
    """`work` on every item at once (one thread each), results in the order of `items`.

    on_done fires as each finishes; on_wait every `every` seconds with the names still
    running and the seconds since the start.
    """
    start = time.monotonic()
    results: dict[int, R] = {}
    ex = ThreadPoolExecutor(max_workers=max(1, min(len(items), MAX_THREADS)),
                            thread_name_prefix="llorch-pool")
    try:
        futures: dict[Future[R], int] = {ex.submit(work, it): i for i, it in enumerate(items)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=every, return_when=FIRST_COMPLETED)
            for fut in done:
                result = fut.result()
                results[futures[fut]] = result
                if on_done is not None:
                    on_done(result)
            if not done and pending and on_wait is not None:
                on_wait(sorted(name(items[futures[f]]) for f in pending),
                        time.monotonic() - start)
    except BaseException:
        transport.interrupt_all()  # remote commands end; their threads return soon
        raise
    finally:
        try:
            ex.shutdown(wait=True, cancel_futures=True)
        finally:
            transport.clear_interrupt()
    return [results[i] for i in range(len(items))]
