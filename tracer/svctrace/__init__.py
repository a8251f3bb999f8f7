"""svctrace: which external services does each pytest test really contact?"""

__version__ = "0.1.0"
REPORT_SCHEMA = "svctrace-report/1"
