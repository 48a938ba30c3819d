"""framestream.datasets: private; the public API is in :mod:`framestream`."""
