"""The kernel toolkit: bcc from the distribution, BPF images kept per boot, BTF, PID namespaces."""
