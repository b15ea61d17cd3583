"""guardcal's exception tree.

    GuardcalError
     ├── ConfigError        bad flags, settings, or a config file
     ├── DataError          missing file/column, unknown label, empty text
     ├── ModelError         a model or adapter cannot be located or loaded
     ├── LabelSpecError     labels that cannot be told apart by their first token
     ├── BackendError       a scoring backend failed or returned unusable scores
     ├── InputTooLongError  an input needs more scoring windows than allowed (the server answers 413)
     └── CalibrationError   metrics or calibrators given unusable inputs
          └── NotFittedError  a calibrator used before ``fit``

Every message says what is wrong and how to fix it.
"""

from __future__ import annotations


class GuardcalError(Exception):
    """Base class of every error guardcal raises on purpose."""


class ConfigError(GuardcalError, ValueError):
    """A flag, setting or config file is invalid."""


class DataError(GuardcalError, ValueError):
    """A dataset file is missing or malformed."""


class ModelError(GuardcalError, RuntimeError):
    """A model or adapter cannot be located or loaded."""


class LabelSpecError(GuardcalError, ValueError):
    """The label set cannot be mapped to distinct decision tokens."""


class CalibrationError(GuardcalError, ValueError):
    """Inputs to a metric or calibrator are unusable."""


class NotFittedError(CalibrationError):
    """A calibrator was used (``predict``, ``to_dict``) before ``fit``."""


class BackendError(GuardcalError, RuntimeError):
    """A scoring backend raised, timed out or returned scores that cannot be used."""


class InputTooLongError(GuardcalError, ValueError):
    """An input needs more scoring windows than ``max_windows`` allows (``core.windows``); it is
    refused, never cut. ``tokens``, ``windows`` and ``max_windows`` say by how much."""

    def __init__(self, message: str, *, tokens: int, windows: int, max_windows: int | None) -> None:
        super().__init__(message)
        self.tokens, self.windows, self.max_windows = tokens, windows, max_windows
