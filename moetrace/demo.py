"""The demo job behind `make demo`: everything moetrace does, on the built-in model, with no download."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from moetrace.trace.reader import Trace
from moetrace.trace.stats import TraceStats

DEFAULT_OUT = Path("traces/demo")


@dataclass
class DemoResult:
    out: Path
    traces: dict[str, Trace] = field(default_factory=dict)
    stats: dict[str, TraceStats] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)


def run_demo(
    out: str | Path = DEFAULT_OUT,
    *,
    max_new_tokens: int = 24,
    progress: Callable[[int, int, int], None] | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> DemoResult:
    """Record a generation trace of the built-in model on the built-in prompts, summarise and plot it.

    The demo's own trace directories under `out` are replaced on every run.
    """
    from moetrace.report.plots import plot_load
    from moetrace.trace.record import record
    from moetrace.trace.stats import trace_stats

    result = DemoResult(out=Path(out))
    say("recording the built-in model's routing on the built-in prompts")
    trace = record(None, None, result.out / "generate", force=True, max_new_tokens=max_new_tokens, progress=progress)
    result.traces["generate"] = trace
    result.stats["generate"] = trace_stats(trace)
    result.figures.append(
        plot_load(trace.dense_load(), result.out / "generate-load.png", title="demo: generation load")
    )
    return result
