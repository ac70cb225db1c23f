"""HTTP clients for workers: one construction, so every caller gets the same two choices.

`trust_env=False`: an `HTTP_PROXY` in a lab's environment must never route requests for
127.0.0.1 through a proxy. A cached TLS context: httpx loads the CA bundle for every new
client (about 16 ms), although workers speak plain http; the gate builds dozens of clients.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

import httpx


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def local_client(timeout: Any, **kwargs: Any) -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=timeout, verify=_tls_context(), **kwargs)
