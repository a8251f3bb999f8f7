"""The tier guard: which services a tier refuses (rules, pure) and the cgroup programs that refuse them (kernel)."""
