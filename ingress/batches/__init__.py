"""Batches: submission and parts (``routes``), reads, results, cancel and retry (``reads``), the
event stream (``events``), the line-by-line input (``input``), the batch document (``store``) and
its chunks (``chunkwriter`` at acceptance, ``chunkstore`` after; ``chunkretry``,
``chunkcancel``)."""
