"""Errors a user can act on. Every one names where (file, key path) and what was expected."""

from __future__ import annotations


class SimkitError(Exception):
    """A user-facing error: printed as one line by the CLI, with a non-zero exit code.

    ``where`` is a file path (or other source), ``key`` a dotted key path inside it. ``args`` is
    ``(message, where, key)``, so a copy made as ``type(e)(*e.args)`` (SimPy re-raises an error
    from inside a process that way; pickling does too) keeps both.
    """

    def __init__(self, message: str, where: str | None = None, key: str | None = None) -> None:
        self.message = message
        self.where = where
        self.key = key
        super().__init__(message, where, key)

    def __str__(self) -> str:
        parts = []
        if self.where:
            parts.append(str(self.where))
        if self.key:
            parts.append(self.key)
        prefix = ": ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


class UnitError(SimkitError, ValueError):
    """A quantity that could not be parsed into SI units."""


class SpecError(SimkitError):
    """A hardware, model or profile description is invalid."""


class ScenarioError(SimkitError):
    """A scenario (or an override of it) is invalid."""


class CapacityError(SimkitError):
    """A plan does not fit in the memory it was given."""


class TraceError(SimkitError):
    """A trace file could not be read."""


class CalibrationError(SimkitError):
    """A calibration profile is missing, corrupt, or does not match the scenario."""


class ReportError(SimkitError):
    """A folder cannot be reported on: not a run, study or search folder, or a file in it is unreadable."""


class StudyError(SimkitError):
    """A study file (or its study folder) is invalid."""
