"""Rich progress bars for long library calls (the library reports through plain callbacks)."""

from __future__ import annotations

import time
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from moetrace.cli.common import err_console

P = TypeVar("P", bound="LazyProgress")


class LazyProgress:
    """A rich progress bar that appears on the first update (after models and traces have loaded)."""

    def __init__(self, *columns: object) -> None:
        # on stderr, so that stdout stays clean for --json and pipes
        self.progress = Progress(*columns, console=err_console)  # type: ignore[arg-type]
        self.task: TaskID | None = None
        self.started = 0.0

    def __enter__(self: P) -> P:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.progress.stop()

    def _task(self, total: int, **fields: str) -> TaskID:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("", total=total, **fields)  # type: ignore[arg-type]
            self.started = time.perf_counter()
        return self.task


class RecordProgress(LazyProgress):
    """Sequences done and tokens routed per second."""

    def __init__(self, label: str = "recording") -> None:
        super().__init__(
            TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("sequences"),
            TextColumn("[cyan]{task.fields[rate]}"), TimeElapsedColumn(),
        )  # fmt: skip
        self.tokens = 0

    def update(self, done: int, total: int, tokens: int) -> None:
        task = self._task(total, rate="")
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.progress.update(task, completed=done, rate=f"{self.tokens / elapsed:,.0f} tokens/s")


class TrainProgress(LazyProgress):
    """Optimizer steps done and the current loss."""

    def __init__(self, label: str) -> None:
        super().__init__(
            TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
            TextColumn("[cyan]loss {task.fields[loss]}"), TimeElapsedColumn(),
        )  # fmt: skip

    def update(self, done: int, total: int, loss: float) -> None:
        self.progress.update(self._task(total, loss="–"), completed=done, loss=f"{loss:.3f}")


class StageProgress(LazyProgress):
    """Units of work done, and which one is running."""

    def __init__(self, label: str) -> None:
        super().__init__(
            TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("[cyan]{task.fields[stage]}"),
            TimeElapsedColumn(),
        )  # fmt: skip

    def update(self, done: int, total: int, stage: str) -> None:
        self.progress.update(self._task(total, stage=""), completed=done, stage=stage)
