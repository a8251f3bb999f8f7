"""Entry point: `sudo .venv/bin/python -m benchmarks [--quick] [--rounds N] [--only LIST]`."""
import sys

from benchmarks.harness import main

sys.exit(main())
