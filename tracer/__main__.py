"""`python -m svctrace` entry point."""
from svctrace.cli import main

main()
