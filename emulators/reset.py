"""Wipe an emulator's data between tests, through each emulator's own reset endpoint."""

from __future__ import annotations

import urllib.request

RESET_TIMEOUT_S = 30.0
"""Seconds a reset may take (Firestore: ~0.6 s for 45,000 documents)."""


def _call(method: str, url: str) -> None:
    request = urllib.request.Request(url, method=method)  # noqa: S310 - loopback emulator only
    with urllib.request.urlopen(request, timeout=RESET_TIMEOUT_S) as response:  # noqa: S310
        if response.status != 200:
            raise RuntimeError(f"{method} {url} answered {response.status}")


def reset_firestore(address: str, project: str) -> None:
    """Delete every document of the default database (listeners receive REMOVED)."""
    _call(
        "DELETE", f"http://{address}/emulator/v1/projects/{project}/databases/(default)/documents"
    )


def reset_pubsub(address: str) -> None:
    """Drop every topic and subscription; provision again afterwards.

    A subscriber streaming from a dropped subscription sees its stream fail, so never reset Pub/Sub
    under a running worker.
    """
    _call("POST", f"http://{address}/reset")
