"""Views over a report: terminal summary, explain, drift (pure: a report dict in, text out)."""
