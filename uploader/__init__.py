"""The uploader: HTTP API, ingest (clone, archive, upload, enqueue) and site serving."""
