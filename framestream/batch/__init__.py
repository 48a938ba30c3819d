"""framestream.batch: private; the public API is in :mod:`framestream`."""
