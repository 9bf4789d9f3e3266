"""A recording killed midway leaves a trace that reads back with all its complete parts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from moetrace.trace.reader import IncompleteTraceWarning, open_trace

SCRIPT = """
import sys, moetrace
from moetrace.models.builtin import stand_in_model
loaded = stand_in_model()
moetrace.record(loaded.model, None, sys.argv[1], tokenizer=loaded.tokenizer, max_new_tokens=200, batch_size=4, flush_rows=400)
"""


def run_until_parts(script: str, out, parts: int, seconds: float) -> None:  # type: ignore[no-untyped-def]
    """Run `script` (given `out`) in a process, SIGKILL it once `parts` routes parts exist."""
    process = subprocess.Popen([sys.executable, "-c", script, str(out)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + seconds
    try:
        while len(list((out / "routes").glob("part-*.parquet"))) < parts:
            assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"no {parts} parts written in {seconds:.0f} s"
            time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def test_killed_recording_reads_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "trace"
    run_until_parts(SCRIPT, out, 3, 240)
    parts = sorted((out / "routes").glob("part-*.parquet"))
    with pytest.warns(IncompleteTraceWarning, match="incomplete"):
        trace = open_trace(out)
    assert not trace.meta.complete
    assert len(trace.route_parts) == len(parts) >= 3
    routes = trace.routes_arrays(["seq_id", "pos", "layer", "experts"])
    assert len(routes["seq_id"]) == sum(pq.read_metadata(p).num_rows for p in parts)
    assert routes["experts"].min() >= 0 and routes["experts"].max() < trace.meta.model.num_experts
    assert np.isin(routes["layer"], trace.meta.model.moe_layers).all()
    assert trace.dense_load().tokens.sum() > 0


WRITER_SCRIPT = """
import sys, time
import numpy as np
from moetrace.trace.meta import ModelInfo, TraceMeta
from moetrace.trace.writer import TraceWriter

info = ModelInfo(num_experts=8, top_k=2, moe_layers=(0, 1))
writer = TraceWriter(sys.argv[1], TraceMeta.new(info, {"mode": "generate"}), flush_rows=10**9, flush_seconds=0.2)
for step in range(10**6):  # one token per step on both layers, far fewer rows than flush_rows
    experts = np.array([[step % 8, (step + 1) % 8]] * 2, np.int16)
    writer.write_routes(seq_id=np.zeros(2, np.int32), pos=np.full(2, step, np.int32), step=step, phase="decode",
                        layer=np.array([0, 1], np.int16), experts=experts)
    writer.write_load(step=step, phase="decode", layer=np.array([0, 0, 1, 1], np.int16),
                      expert=experts.reshape(-1), tokens=np.ones(4, np.int32))
    time.sleep(0.01)
"""


def test_killed_writer_keeps_what_waited_flush_seconds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Parts are written by time as well as by rows: a run killed long before a part fills keeps its rows."""
    out = tmp_path / "trace"
    run_until_parts(WRITER_SCRIPT, out, 3, 60)
    with pytest.warns(IncompleteTraceWarning, match="incomplete"):
        trace = open_trace(out)
    routes = trace.routes_arrays(["step", "layer", "experts"])
    steps = len(routes["step"]) // 2
    assert steps > 0 and list(routes["step"]) == [s for s in range(steps) for _ in (0, 1)]  # every row, in order
    np.testing.assert_array_equal(routes["experts"][::2, 0], np.arange(steps) % 8)
    load = trace.load(["step", "tokens"])
    load_steps = np.unique(load.column("step").to_numpy())
    assert len(load_steps) > 0 and list(load_steps) == list(range(len(load_steps)))
    assert load.column("tokens").to_numpy().sum() == 4 * len(load_steps)


SLOW_RECORD = """
import sys, moetrace
from moetrace.models.builtin import stand_in_model
import moetrace.trace.recorder as recorder
recorder._QUEUE_FORWARDS = 10**9  # only time sends the queued forwards to the writer
loaded = stand_in_model()
moetrace.record(loaded.model, None, sys.argv[1], tokenizer=loaded.tokenizer, max_new_tokens=200, batch_size=4,
                flush_rows=10**9, flush_seconds=0.6)
"""


def test_a_recording_that_never_fills_a_part_still_writes_one_by_time(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The recorder's host queue and the writer both flush by time, so a killed run keeps what waited."""
    out = tmp_path / "trace"
    run_until_parts(SLOW_RECORD, out, 2, 240)
    with pytest.warns(IncompleteTraceWarning, match="incomplete"):
        trace = open_trace(out)
    assert len(trace.route_parts) >= 2
    assert len(trace.routes(["seq_id"])) > 0
