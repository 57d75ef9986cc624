"""Webhooks at the edge: the submit-time URL check (``check``), the delivery ledger's reads and
redelivery (``store``, ``routes``). The sender itself is ``python -m webhooks`` (``webhooks/``)."""
