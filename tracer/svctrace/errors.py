"""svctrace's own exceptions; the CLI turns them into one sentence and an exit code."""


class SvctraceError(Exception):
    """Base for errors the CLI turns into one clear sentence."""


class BackendUnavailable(SvctraceError):
    """An explicitly requested backend cannot run here; the message says why and how to fix."""


class BackendFailed(SvctraceError):
    """A backend broke while tracing (after it had started)."""
