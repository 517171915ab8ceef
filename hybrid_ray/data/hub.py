"""Is the Hugging Face hub usable right now? Answered fast, so an offline machine fails in seconds, not minutes."""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

_TRUE = {"1", "on", "yes", "true"}


def offline_flag() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (the libraries read them once, at import)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.cache
def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False


def hub_available() -> bool:
    """False when offline mode is set or the endpoint does not answer a TCP connect within 3 s.

    Without this check huggingface_hub retries an unreachable host with backoff for ~50 s per file.
    """
    if offline_flag():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return _reachable(url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))
