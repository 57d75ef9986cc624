"""The job pipeline's roles, one module each; ``worker.processor`` puts them together.

- ``delivery``: a received message (``Message``, ``Delivery``), a claimed job (``InFlight``), and
  the job store they are settled against (``Store``).
- ``lanes``: one lane per task; its gather thread batches deliveries, its run thread runs them.
- ``claimer``: stage 1, claim a micro-batch; jobs another attempt holds come back later.
- ``runner``: stage 2, one model call per micro-batch; a failed call split job by job.
- ``settler``: stage 3, terminal writes, releases and backoff, then each message settled.
- ``hold``: Firestore calls held through outages; the shutdown's two stages.
"""
