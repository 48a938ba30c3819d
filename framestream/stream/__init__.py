"""framestream.stream: private; the public API is in :mod:`framestream`."""
