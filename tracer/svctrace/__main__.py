"""`python -m svctrace` entry point."""
from svctrace.cli.main import entry

entry()
