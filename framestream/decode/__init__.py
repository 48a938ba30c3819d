"""framestream.decode: private; the public API is in :mod:`framestream`."""
