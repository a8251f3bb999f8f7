"""`python -m svctrace` entry point."""
from svctrace.cli import entry

entry()
