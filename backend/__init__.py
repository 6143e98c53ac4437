"""tokengate backend."""
