"""Destinations for a checkpoint: a local folder, Google Cloud Storage, the embedded GCS server."""
