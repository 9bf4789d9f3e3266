"""Progress of long library calls (the library reports through plain callbacks).

On a terminal, a rich bar. Where stderr is not a terminal (CI, `nohup`, a pipe into a log), a bar
cannot redraw, so the same state is printed as a plain line every few seconds, and once at the end:

    recording: 12/40 sequences, 3,200 tokens/s, 0:00:45

Every progress class below is a `LazyProgress`: it says what its line holds (`describe`) and which
rich columns its bar has; choosing between the two is done here once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TextIO, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from moetrace.cli.common import err_console

P = TypeVar("P", bound="LazyProgress")

PLAIN_INTERVAL = 5.0
"""Seconds between two plain progress lines."""


class LazyProgress:
    """A progress display that appears on the first update (after models and traces have loaded):
    a rich bar on a terminal, plain lines every `interval` seconds otherwise. An update with fewer
    units done than the last one starts a new pass (a new bar, on a terminal)."""

    def __init__(
        self,
        label: str,
        *columns: Any,
        stream: TextIO | None = None,
        interval: float = PLAIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.stream = stream
        """Where plain lines go (stderr when None); a bar is drawn only when it is a terminal."""
        self.plain = not (err_console.is_terminal if stream is None else stream.isatty())
        self.interval = interval
        self.clock = clock
        # on stderr, so that stdout stays clean for --json and pipes
        self.progress = None if self.plain else Progress(TextColumn(label), *columns, console=err_console)
        self.task: TaskID | None = None
        self.started: float | None = None
        self.state: tuple[int, int, dict[str, str]] | None = None
        self.printed: tuple[float, tuple[int, int, dict[str, str]]] | None = None

    _live: LazyProgress | None = None
    """The display whose bars are live on the terminal: rich draws one at a time, so the others pause."""

    def __enter__(self: P) -> P:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self._pause()
        elif self.progress is not None and LazyProgress._live is self:
            self.progress.stop()
        if LazyProgress._live is self:
            LazyProgress._live = None

    def _pause(self) -> None:
        """Leave the display as it stands: stop the bars, or print the plain line not printed yet."""
        if self.progress is not None:
            self.progress.stop()
        elif self.state is not None and (self.printed is None or self.printed[1] != self.state):
            self._print()

    def elapsed(self) -> float:
        """Seconds since the first update."""
        return 0.0 if self.started is None else self.clock() - self.started

    def describe(self, done: int, total: int, fields: dict[str, str]) -> str:
        """The plain line's text after the label (the elapsed time follows it)."""
        return f"{done}/{total}"

    def show(self, done: int, total: int, **fields: str) -> None:
        """Report `done` of `total` units, with the fields this display's columns and line name."""
        if self.started is None:
            self.started = self.clock()
        taking_over = LazyProgress._live is not self
        if taking_over:
            if LazyProgress._live is not None:
                LazyProgress._live._pause()
            LazyProgress._live = self
        if self.progress is not None:
            if taking_over:
                self.progress.start()
            if self.task is None or done < self.progress.tasks[-1].completed:  # a new pass: a new bar below
                self.task = self.progress.add_task("", total=total, **fields)  # type: ignore[arg-type]
            self.progress.update(self.task, total=total, completed=done, **fields)  # type: ignore[arg-type]
            return
        new_pass = self.state is not None and done < self.state[0]
        if new_pass:
            self._pause()
        self.state = (done, total, dict(fields))
        if taking_over or new_pass or self.printed is None or self.clock() - self.printed[0] >= self.interval:
            self._print()

    def _print(self) -> None:
        assert self.state is not None
        done, total, fields = self.state
        elapsed = timedelta(seconds=int(self.elapsed()))
        line = f"{self.label}: {self.describe(done, total, fields)}, {elapsed}"
        print(line, file=self.stream or sys.stderr, flush=True)
        self.printed = (self.clock(), self.state)


def _rate(count: float, seconds: float, unit: str) -> str:
    if seconds < 0.01:
        return "–"
    return f"{count / max(seconds, 1e-9):,.0f} {unit}/s"


class RecordProgress(LazyProgress):
    """Sequences done and tokens routed per second."""

    def __init__(self, label: str = "recording", **plain: Any) -> None:
        super().__init__(
            label, BarColumn(), MofNCompleteColumn(), TextColumn("sequences"),
            TextColumn("[cyan]{task.fields[rate]}"), TimeElapsedColumn(), **plain,
        )  # fmt: skip
        self.tokens = 0

    def update(self, done: int, total: int, tokens: int) -> None:
        if self.started is None:
            self.started = self.clock()
        self.tokens += tokens
        self.show(done, total, rate=_rate(self.tokens, self.elapsed(), "tokens"))

    def describe(self, done: int, total: int, fields: dict[str, str]) -> str:
        return f"{done}/{total} sequences, {fields['rate']}"


class TrainProgress(LazyProgress):
    """Optimizer steps done and the current loss."""

    def __init__(self, label: str, **plain: Any) -> None:
        super().__init__(
            label, BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
            TextColumn("[cyan]loss {task.fields[loss]}"), TimeElapsedColumn(), **plain,
        )  # fmt: skip

    def update(self, done: int, total: int, loss: float) -> None:
        self.show(done, total, loss=f"{loss:.3f}")

    def describe(self, done: int, total: int, fields: dict[str, str]) -> str:
        return f"{done}/{total} steps, loss {fields['loss']}"


class StageProgress(LazyProgress):
    """Units of work done, and which one is running."""

    def __init__(self, label: str, **plain: Any) -> None:
        super().__init__(
            label, BarColumn(), MofNCompleteColumn(), TextColumn("[cyan]{task.fields[stage]}"), TimeElapsedColumn(),
            **plain,
        )  # fmt: skip

    def update(self, done: int, total: int, stage: str) -> None:
        self.show(done, total, stage=stage)

    def describe(self, done: int, total: int, fields: dict[str, str]) -> str:
        return f"{done}/{total}, {fields['stage']}" if fields["stage"] else f"{done}/{total}"


class RowProgress(LazyProgress):
    """Rows of a table done in the current pass (a stage such as "checking" or "writing"), and rows per second."""

    def __init__(self, label: str, **plain: Any) -> None:
        super().__init__(
            label, TextColumn("{task.fields[stage]}"), BarColumn(), TextColumn("{task.fields[rows]} rows"),
            TextColumn("[cyan]{task.fields[rate]}"), TimeElapsedColumn(), **plain,
        )  # fmt: skip
        self.stage = ""
        self.stage_started = 0.0

    def update(self, done: int, total: int, stage: str = "") -> None:
        """`total` is 0 while unknown."""
        if self.started is None:
            self.started = self.clock()
        if stage != self.stage:
            self.stage, self.stage_started = stage, self.clock()
        rows = f"{done:,}/{total:,}" if total else f"{done:,}"
        rate = _rate(done, self.clock() - self.stage_started, "rows")
        self.show(done, total or done, stage=stage, rows=rows, rate=rate)

    def describe(self, done: int, total: int, fields: dict[str, str]) -> str:
        stage = f"{fields['stage']} " if fields["stage"] else ""
        return f"{stage}{fields['rows']} rows, {fields['rate']}"
