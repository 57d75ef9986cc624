"""The worker: streaming pull from Pub/Sub, inference on real models, results to Firestore."""
