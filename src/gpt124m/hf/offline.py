"""Is the Hugging Face Hub reachable? Asked before a download, so that an offline machine gets
one line at once rather than a minute of huggingface_hub's retries."""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse

PROBE_TIMEOUT_S = 3.0  # how long the check waits for the Hub


def hub_unreachable() -> str | None:
    """Why the Hub cannot be reached (offline mode, or no connection within a few seconds), or
    None. Behind a proxy the download itself finds out."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    outcome: list[OSError | None] = []

    def probe() -> None:  # in a thread, so that a stalled name lookup cannot hold us either
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    if not outcome:
        return f"no answer from {host} within {PROBE_TIMEOUT_S:g} s"
    if outcome[0] is not None:
        return f"no connection to {host}: {outcome[0].strerror or outcome[0]}"
    return None
