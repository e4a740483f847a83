"""Whether the Hugging Face hub can be reached, decided once and fast.

Offline, the hub client retries each request for tens of seconds before it gives up, and its message ends in a
cut-off sentence. Every maedet path that reaches the hub (``hf-hub:`` folders, timm's pretrained weights) runs inside
:func:`offline_when_unreachable`: when ``HF_HUB_OFFLINE`` is set, or the hub's host does not accept a connection within
:data:`CONNECT_TIMEOUT_S`, the client is switched to its own offline mode for the call, so cached files still load
and a missing one fails at once, in the sentence :func:`offline_sentence` writes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlparse

__all__ = ["CONNECT_TIMEOUT_S", "hub_offline_reason", "offline_sentence", "offline_when_unreachable"]

CONNECT_TIMEOUT_S = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _resolve(host: str, port: int) -> list | str:
    """``host``'s addresses, or why not, within CONNECT_TIMEOUT_S (the system resolver has no timeout of its own)."""
    found: list = []

    def lookup() -> None:
        with contextlib.suppress(OSError):
            found.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(CONNECT_TIMEOUT_S)
    if worker.is_alive():
        return f"{host} did not resolve within {CONNECT_TIMEOUT_S:.0f} s: no network or no DNS"
    return found or f"{host} cannot be resolved: no network or no DNS"


@functools.lru_cache(maxsize=1)
def _unreachable(host: str, port: int) -> str | None:
    """Why ``host`` cannot be reached directly, or None; asked once per process."""
    addresses = _resolve(host, port)
    if isinstance(addresses, str):
        return addresses
    family, kind, proto, _, address = addresses[0]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(address)
            return None
    except TimeoutError:
        return f"{host} did not answer within {CONNECT_TIMEOUT_S:.0f} s"
    except OSError as exc:
        return f"{host} did not accept a connection: {(exc.strerror or type(exc).__name__).lower()}"


def hub_offline_reason() -> str | None:
    """Why the hub is offline for this process (``HF_HUB_OFFLINE``, or no connection), or None when it is online.

    Behind a proxy the direct probe says nothing, so only ``HF_HUB_OFFLINE`` counts there.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    url = urlparse(constants.ENDPOINT)
    return _unreachable(url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80))


@contextlib.contextmanager
def offline_when_unreachable() -> Iterator[str | None]:
    """Run the body with the hub client in offline mode when the hub cannot be reached; yields the reason (or None)."""
    from huggingface_hub import constants

    reason = hub_offline_reason()
    saved = constants.HF_HUB_OFFLINE
    if reason is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield reason
    finally:
        constants.HF_HUB_OFFLINE = saved


def offline_sentence(what: str, reason: str) -> str:
    """The middle of an error sentence: ``what`` is not cached and the hub is offline, and why."""
    return f"{what} is not in the local Hugging Face cache and the hub cannot be reached ({reason})"
