"""Exceptions the library raises; the CLI turns each into one red line and a non-zero exit."""

from __future__ import annotations


class MoetraceError(Exception):
    """Base class: a problem the user can act on, described in one sentence."""


class TraceFormatError(MoetraceError):
    """A trace directory or Parquet file does not follow trace format v1."""


class TraceNotFoundError(MoetraceError):
    """The trace path does not exist."""


class OutputExistsError(MoetraceError):
    """The output path already holds something that moetrace refuses to overwrite."""


class ModelLoadError(MoetraceError):
    """A model could not be found or loaded."""


class NotAMoEModelError(MoetraceError):
    """The model has no mixture-of-experts layers that moetrace can trace."""


class DemoModelNotBuiltError(ModelLoadError):
    """The built-in demo model was asked for but has not been built (`moetrace demo-model build`)."""


class RecordingError(MoetraceError):
    """The routing a model produced cannot be mapped to tokens."""


class PromptsError(MoetraceError):
    """The prompts source is missing, unreadable or empty."""


class InvalidArgumentError(MoetraceError, ValueError):
    """An option has a value outside what it accepts."""


class PredictorFileError(MoetraceError):
    """A predictor file is not one moetrace saved (a pickle, a foreign or truncated file) or is from a newer format."""


class QueryError(MoetraceError):
    """SQL over a trace failed (a syntax error, an unknown table or column, a failed cast)."""
