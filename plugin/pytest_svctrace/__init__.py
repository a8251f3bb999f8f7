"""pytest_svctrace: the pytest side of svctrace (phase markers, in-process tracing, tier selection)."""
