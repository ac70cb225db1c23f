"""Deadlines for everything read from the hub, and a bound on listing pages (issue 20 #11).

Why: huggingface_hub's timeouts are per read (10 s), so a hub that trickles one byte
every 0.1 s never trips them, and its tree pagination follows `Link: rel="next"` for as
long as the hub sends one; either way `models download` hung forever holding the model
lock. The rule here is the harness's one deadline rule for data from outside, enforced by
the watchdog the worker client uses too (`deadlines`: it shuts the socket down when a
deadline passes):

* an API answer (revision info, a tree page, a file's HEAD) must be complete within
  `stall_s` seconds, as a whole call;
* a file body must deliver at least `STALL_MIN_BYTES` (or its end) every `stall_s`
  seconds: slow links pass, a trickle or a silence does not;
* a listing may not revisit a page it already fetched (a `Link` to itself, or a cycle),
  and may have at most `MAX_LISTING_PAGES` pages.

It hooks in as huggingface_hub's client factory (installed once per process): every
request goes through `_DeadlineTransport`, whatever transport or proxy httpx picked.
Outside `hub_deadlines()` the deadlines still apply with the defaults, without page
bookkeeping. A stall raises `HubStalled`, which huggingface_hub does not retry.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2

from llorch_harness.deadlines import Watchdog  # the one whole-call deadline mechanism

DEFAULT_STALL_S = 60.0
STALL_MIN_BYTES = 64 * 1024  # per stall window: ~1 KB/s at the default, any real link does more
MAX_LISTING_PAGES = 10_000  # 10 million files at the hub's 1000 per page

_local = threading.local()
_install_lock = threading.Lock()
_installed = False


class HubStalled(Exception):
    """The hub missed a deadline, or its listing loops. Not an httpx error on purpose:
    huggingface_hub retries those, and a retry would start the wait all over again."""


@dataclass
class HubPolicy:
    """Deadlines and listing bookkeeping for one download (one thread)."""

    stall_s: float = DEFAULT_STALL_S
    min_bytes: int = STALL_MIN_BYTES
    max_pages: int | None = None  # None: MAX_LISTING_PAGES, read when the policy is used
    track_pages: bool = True
    fired: str | None = None  # once set, every further request fails at once
    pages: int = 0
    seen_pages: set[str] = field(default_factory=set)

    def page_limit(self) -> int:
        return self.max_pages if self.max_pages is not None else MAX_LISTING_PAGES

    def fail(self, message: str) -> HubStalled:
        self.fired = self.fired or message
        return HubStalled(message)


def _current() -> HubPolicy:
    policy = getattr(_local, "policy", None)
    return policy if policy is not None else HubPolicy(track_pages=False)


def _is_file_body(request: httpx2.Request) -> bool:
    return request.method == "GET" and "/resolve/" in request.url.path


def _is_listing(request: httpx2.Request) -> bool:
    return request.method == "GET" and "/tree/" in request.url.path and \
        request.url.path.startswith("/api/")


class _Counted(httpx2.SyncByteStream):
    """A response body that tells the watchdog about progress and stops it when closed."""

    def __init__(self, inner: Any, wd: Watchdog, policy: HubPolicy, what: str) -> None:
        self.inner = inner
        self.wd = wd
        self.policy = policy
        self.what = what
        self.count = 0
        self.mark = 0
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.inner:
                self.count += len(chunk)
                if self.count - self.mark >= self.policy.min_bytes:
                    self.mark = self.count
                    self.wd.event_seen()
                yield chunk
        except Exception as exc:
            if self.wd.fired is not None:
                raise self.policy.fail(_stall_message(self.policy, self.what, self.wd)) \
                    from None
            raise exc
        if self.wd.fired is not None:  # the socket was shut down: the body is short
            raise self.policy.fail(_stall_message(self.policy, self.what, self.wd))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.inner.close()
        finally:
            self.wd.__exit__(None, None, None)


def _stall_message(policy: HubPolicy, what: str, wd: Watchdog) -> str:
    fired = wd.fired.kind if wd.fired is not None else "deadline"
    if fired == "deadline":
        return (f"the hub did not complete {what} within {policy.stall_s:g} s "
                "(a trickling or hung answer)")
    return (f"the hub sent less than {policy.min_bytes // 1024} KiB of {what} in "
            f"{policy.stall_s:g} s (stalled or trickling)")


class _DeadlineTransport(httpx2.BaseTransport):
    """Wraps whichever transport httpx chose for a URL (direct or through a proxy)."""

    def __init__(self, inner: httpx2.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        policy = _current()
        if policy.fired is not None:
            raise HubStalled(policy.fired)
        url = str(request.url)
        what = f"{request.method} {request.url.path}"
        if _is_file_body(request):  # progress rule: min_bytes per window, no total limit
            wd = Watchdog(policy.stall_s, policy.stall_s, float("inf"))
        else:  # an API answer: the whole call within the deadline
            wd = Watchdog(policy.stall_s, float("inf"), policy.stall_s)
        request.extensions = {**request.extensions, "trace": _chain(
            request.extensions.get("trace"), wd.trace)}
        wd.__enter__()
        try:
            response = self.inner.handle_request(request)
        except Exception as exc:
            wd.__exit__(None, None, None)
            if wd.fired is not None:
                raise policy.fail(_stall_message(policy, what, wd)) from None
            raise exc
        if policy.track_pages and _is_listing(request) and response.status_code == 200:
            try:
                self._check_page(policy, request, response, url)
            except HubStalled:
                response.close()
                wd.__exit__(None, None, None)
                raise
        response.stream = _Counted(response.stream, wd, policy, what)
        return response

    @staticmethod
    def _check_page(policy: HubPolicy, request: httpx2.Request, response: httpx2.Response,
                    url: str) -> None:
        policy.seen_pages.add(_norm(url))
        policy.pages += 1
        nxt = response.links.get("next", {}).get("url")
        if not nxt:
            return
        target = _norm(str(request.url.join(nxt)))
        if target in policy.seen_pages:
            raise policy.fail("the hub's tree listing links back to a page it already sent "
                              "(a Link: rel=\"next\" loop)")
        if policy.pages >= policy.page_limit():
            raise policy.fail(f"the hub's tree listing goes on past {policy.page_limit()} "
                              "pages")

    def close(self) -> None:
        self.inner.close()


def _norm(url: str) -> str:
    try:
        return str(httpx2.URL(url))
    except Exception:  # a malformed link is compared as text
        return url


def _chain(first: Any, second: Any) -> Any:
    if first is None:
        return second

    def both(name: str, info: dict[str, Any]) -> None:
        first(name, info)
        second(name, info)

    return both


class _DeadlineClient(httpx2.Client):
    def _transport_for_url(self, url: httpx2.URL) -> httpx2.BaseTransport:
        return _DeadlineTransport(super()._transport_for_url(url))


def _client_factory() -> httpx2.Client:
    """huggingface_hub's default client, every request under the deadline rule."""
    from huggingface_hub.utils._http import hf_request_event_hook

    # no keep-alive: the watchdog stops a call by shutting down the socket it saw connect,
    # and a reused connection is never seen connecting
    return _DeadlineClient(event_hooks={"request": [hf_request_event_hook]},
                           follow_redirects=True, timeout=None,
                           limits=httpx2.Limits(max_keepalive_connections=0))


def install() -> None:
    """Make huggingface_hub's shared client ours (once per process; idempotent)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        from huggingface_hub import set_client_factory

        set_client_factory(_client_factory)
        _installed = True


@contextlib.contextmanager
def hub_deadlines(stall_s: float = DEFAULT_STALL_S, *,
                  max_pages: int | None = None) -> Iterator[HubPolicy]:
    """Every hub request of this thread inside the block follows one policy."""
    install()
    policy = HubPolicy(stall_s=stall_s, max_pages=max_pages)
    previous = getattr(_local, "policy", None)
    _local.policy = policy
    try:
        yield policy
    finally:
        _local.policy = previous
