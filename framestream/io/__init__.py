"""framestream.io: private; the public API is in :mod:`framestream`."""
