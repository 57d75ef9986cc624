"""The dead-letter handler: ends jobs and chunks whose messages Pub/Sub gave up on (``main``)."""
