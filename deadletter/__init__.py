"""The dead-letter handler: ends jobs whose messages Pub/Sub gave up on (see ``main``)."""
