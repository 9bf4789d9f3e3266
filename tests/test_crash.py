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


def test_killed_recording_reads_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "trace"
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(out)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while len(list((out / "routes").glob("part-*.parquet"))) < 3:
            assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "recording wrote no parts in time"
            time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
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
