"""guardcal: a calibrated safety classifier for LLM products."""

__version__ = "0.1.0"

__all__ = ["__version__"]
