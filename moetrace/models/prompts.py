"""Prompt sources: a `.txt` file (one prompt per line), a `.jsonl` file, or the built-in set."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from moetrace.errors import PromptsError

BUILTIN = "built-in"


def builtin_prompts() -> list[str]:
    """A fixed set of short, varied prompts (prose, code, maths, questions) shipped with moetrace."""
    text = resources.files("moetrace.data").joinpath("prompts.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def load_prompts(source: str | Path | None) -> list[str]:
    """Prompts from `source`; `seq_id` in a trace is the 0-based index into this list.

    A `.txt` file holds one prompt per line (blank lines are not prompts); a `.jsonl` file one JSON
    object per line with a `prompt` or `text` field.
    """
    if source is None or str(source) == BUILTIN:
        return builtin_prompts()
    path = Path(source)
    if not path.is_file():
        raise PromptsError(f"prompts file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PromptsError(f"prompts file {path} is not UTF-8 text") from None
    prompts = _jsonl(text, path) if path.suffix == ".jsonl" else [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise PromptsError(f"prompts file {path} holds no prompts")
    return prompts


def _jsonl(text: str, path: Path) -> list[str]:
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise PromptsError(f"{path}, line {number}: not valid JSON") from None
        value = record.get("prompt", record.get("text")) if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise PromptsError(f"{path}, line {number}: no string field 'prompt' or 'text'")
        prompts.append(value)
    return prompts
