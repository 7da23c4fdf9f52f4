"""The embedded GCS server (fake-gcs-server behind an HTTPS front) used when no bucket is given."""
