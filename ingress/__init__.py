"""The ingress: a light Flask app that authenticates, validates, records and publishes jobs."""

from __future__ import annotations

from ingress.app import create_app

__all__ = ["create_app"]
