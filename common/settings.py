"""What every service's settings share: the one ``ConfigError`` and the shared defaults.

Each service reads its environment once into its own frozen settings object (``ingress/settings``,
``worker/settings``, ``reconciler/settings``, ``webhooks/settings``); a value that does not describe
a runnable service raises ``ConfigError``, which each ``__main__`` (and gunicorn's config) turns
into one line on stderr and exit status 2.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_PROJECT = "omni-local"
"""The Google Cloud project when ``GOOGLE_CLOUD_PROJECT`` is unset: the emulators' project."""


class ConfigError(ValueError):
    """The environment does not describe a runnable service."""


def project_from(env: Mapping[str, str]) -> str:
    """``GOOGLE_CLOUD_PROJECT``, or ``DEFAULT_PROJECT`` when it is unset or empty."""
    return env.get("GOOGLE_CLOUD_PROJECT") or DEFAULT_PROJECT
