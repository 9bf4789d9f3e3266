"""moetrace: record, forecast, simulate and offload Mixture-of-Experts routing.

The public API is imported lazily so that `import moetrace` (and `moetrace --help`) stays fast:

    import moetrace
    trace = moetrace.record(prompts=["Hello"], out="traces/hello")
    with moetrace.tracing(model, "traces/mine"):
        model.generate(**inputs)
    trace = moetrace.open_trace("traces/mine")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "open_trace": ("moetrace.trace.reader", "open_trace"),
    "Trace": ("moetrace.trace.reader", "Trace"),
    "record": ("moetrace.trace.record", "record"),
    "RecordConfig": ("moetrace.trace.record", "RecordConfig"),
    "tracing": ("moetrace.trace.recorder", "tracing"),
    "import_routes": ("moetrace.trace.importer", "import_routes"),
    "trace_stats": ("moetrace.trace.stats", "trace_stats"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'moetrace' has no attribute {name!r}")
