"""A hub request's failure read as a lab cause: unreachable, timed out, reset, or 5xx.

Why apart: the download must tell the hub's failures (the lab's: nothing about the worker
under test) from its own findings (a file that fails its hash, an unsafe name, a 404 for
a model that is not there), so the gate reports the first as "could not check (lab: …)"
and retries the transient ones once (`labretry`). Read by the exception's class name and
its response's status, so neither huggingface_hub's nor httpx's classes are imported here.
"""

from __future__ import annotations

from llorch_harness.pool.hubdeadline import HubStalled

HUB_UNREACHABLE = "hub unreachable"
HUB_TIMEOUT = "hub timeout"
HUB_RESET = "hub connection reset"
HUB_5XX = "hub 5xx"
_RESET_NAMES = ("RemoteProtocolError", "ConnectionResetError", "ReadError", "WriteError",
                "IncompleteRead", "ChunkedEncodingError", "BrokenPipeError")


def hub_cause(exc: BaseException) -> tuple[str, bool] | None:
    """(cause, transient) of a failed hub request, its chain walked; None when the failure
    is not the hub's availability (a 404, bad JSON, a hash)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        found = _one(e)
        if found is not None:
            return found
        e = e.__cause__ or e.__context__
    return None


def _one(e: BaseException) -> tuple[str, bool] | None:
    if isinstance(e, HubStalled):  # our own progress deadline: its wait was the retry
        return HUB_TIMEOUT, False
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(status, int) and 500 <= status <= 599:
        return HUB_5XX, True
    name = type(e).__name__
    if "Timeout" in name or isinstance(e, TimeoutError):
        return HUB_TIMEOUT, True
    if name in ("ConnectError", "ConnectionRefusedError") or isinstance(
            e, ConnectionRefusedError):
        return HUB_UNREACHABLE, False
    if name in _RESET_NAMES or isinstance(e, ConnectionResetError | BrokenPipeError):
        return HUB_RESET, True
    return None
