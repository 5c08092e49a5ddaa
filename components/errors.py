"""Outcomes a stage signals to whatever runs it (Airflow, the CLI, a test), without importing it."""


class StageSkipped(Exception):
    """The stage has nothing to do for this day (e.g. not enough history); downstream is skipped."""


class PermanentStageFailure(Exception):
    """Retrying cannot help (e.g. the day's data failed validation); fail now, no retries."""


class LandingMissing(PermanentStageFailure, FileNotFoundError):
    """The day's landing partition has no files: a retry minutes later rarely helps; land it, then clear."""
