"""svctrace's benchmark harness: `sudo .venv/bin/python -m benchmarks` (see harness.py)."""
