"""The webhook sender: ``python -m webhooks`` (``docs/webhooks.md``)."""
