"""Runtime helpers every Omni service shares (the contract itself is ``schemas/``).

- ``googleapi``: the one way to call Firestore (and the few Pub/Sub calls that can fail): error
  translation into each service's own error, and ``run_transaction`` with one contention policy.
- ``firestoreupdates``: Firestore update writes built from protobuf, for the worker's hot commits.
- ``settings``: the one ``ConfigError`` and the shared defaults.
- ``jsonlog``, ``tracing``, ``errortracking``: logs, traces and error reports, alike in every
process.
- ``healthserver``: a small HTTP server for the health routes of processes without a web framework.
"""
