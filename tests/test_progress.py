"""Progress where stderr is not a terminal (CI, nohup, a pipe): plain lines every few seconds and one at the end."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from moetrace.cli.app import app
from moetrace.cli.progress import RecordProgress, StageProgress, TrainProgress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_interval_and_one_at_the_end() -> None:
    clock, stream = Clock(), io.StringIO()
    with TrainProgress("building demo model", stream=stream, clock=clock) as progress:
        for step in range(1, 101):  # half a second a step
            clock.now += 0.5
            progress.update(step, 100, 3.0 - step / 100)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "building demo model: 1/100 steps, loss 2.990, 0:00:00"
    assert [line.split(":")[1].split()[0] for line in lines] == [f"{s}/100" for s in (1, *range(11, 100, 10), 100)]
    assert lines[-1] == "building demo model: 100/100 steps, loss 2.000, 0:00:49"


def test_rates_passes_and_displays_taking_turns() -> None:
    clock, stream = Clock(), io.StringIO()
    with (
        RecordProgress(stream=stream, clock=clock) as record,
        StageProgress("demo", stream=stream, clock=clock) as stage,
    ):
        record.update(0, 4, 0)
        clock.now += 2
        record.update(4, 4, 6_400)
        stage.update(1, 2, "forecasting")  # recording's last state is printed before the next display's first
        stage.update(2, 2, "forecasting")
        stage.update(1, 3, "replaying")  # a new pass
    assert stream.getvalue().splitlines() == [
        "recording: 0/4 sequences, –, 0:00:00",
        "recording: 4/4 sequences, 3,200 tokens/s, 0:00:02",
        "demo: 1/2, forecasting, 0:00:00",
        "demo: 2/2, forecasting, 0:00:00",
        "demo: 1/3, replaying, 0:00:00",
    ]


def test_nothing_is_printed_without_updates_or_after_an_error() -> None:
    stream = io.StringIO()
    with StageProgress("replaying", stream=stream):
        pass
    try:
        with TrainProgress("training", stream=stream, interval=60) as progress:
            progress.update(1, 10, 1.0)
            progress.update(2, 10, 1.0)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert stream.getvalue() == "training: 1/10 steps, loss 1.000, 0:00:00\n"


def test_import_prints_progress_lines_to_a_pipe(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "routes.parquet"
    pq.write_table(pa.table({"seq_id": [0, 0, 1], "pos": [0, 1, 0], "layer": [0, 0, 0], "experts": [[1, 2]] * 3}), src)
    result = CliRunner().invoke(app, ["import", str(src), "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("importing: checking 3/3 rows, ")
    assert lines[-1].startswith("importing: writing 3/3 rows, ") and lines[-1].endswith("0:00:00")
    assert "imported 3 rows" in result.stdout
