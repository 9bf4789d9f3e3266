from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tiny_models

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DSV2_ROUTES = SHARED_DATA / "dsv2-lite-prefill-routes.parquet"


@pytest.fixture(scope="session")
def stand_in_trace(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A generation trace of the random-weight stand-in model on five built-in prompts (once per session)."""
    import moetrace
    from moetrace.models.builtin import stand_in_model
    from moetrace.models.prompts import builtin_prompts

    out = tmp_path_factory.mktemp("stand_in") / "trace"
    loaded = stand_in_model()
    return moetrace.record(
        loaded.model, builtin_prompts()[:5], out, tokenizer=loaded.tokenizer, max_new_tokens=6, batch_size=3
    )
