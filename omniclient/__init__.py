"""omniclient: a Python client for Omni's HTTP API, and the ``omni`` command (docs/cli.md).

    from omniclient import OmniClient

    with OmniClient("http://127.0.0.1:8080", "dev-key-123") as omni:
        job = omni.submit("embed", {"texts": ["hello"]})
        for event in omni.job_events(job["id"]):
            print(event.name)

The ``cli`` extra installs what it needs: ``pip install -e '.[cli]'``.
"""

from __future__ import annotations

from omniclient.client import BatchEvent, JobEvent, OmniClient, UploadProgress
from omniclient.errors import MissingApiKey, OmniClientError, OmniConnectionError, OmniError

__all__ = [
    "BatchEvent",
    "JobEvent",
    "MissingApiKey",
    "OmniClient",
    "OmniClientError",
    "OmniConnectionError",
    "OmniError",
    "UploadProgress",
]
