"""framestream.format: private; the public API is in :mod:`framestream`."""
