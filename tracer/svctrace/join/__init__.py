"""Join: backend events and the plugin's phase windows, attributed to tests (pure)."""
