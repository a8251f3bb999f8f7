"""BPF C sources for the eBPF backend, shipped as package data (loaded by bcc at run time)."""
