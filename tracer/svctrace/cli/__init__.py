"""The `svctrace` command line: the only place that turns errors into messages and exit codes."""
