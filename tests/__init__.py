"""svctrace's own tests."""
