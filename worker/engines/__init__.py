"""Engines: how a task's model is fed, apart from what the task means.

A task adapter (``worker/tasks/``) turns jobs into model inputs and results; an engine runs the
model over those inputs as fast as its device allows. ``feed`` holds what any torch engine
shares and can be tested without torch or a GPU (device and dtype choice, length-bucketed batches,
the bounded prepare-ahead pipeline); ``sentence`` is the engine of sentence-transformers models
(``embed`` and ``similar``'s MiniLM). Heavy imports stay inside functions, as in the adapters.
"""
