"""Training text: a file, or the built-in corpus (text every Python has), as one token stream."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Any

import torch

from moetrace.errors import MoetraceError
from moetrace.models.demo_model import DemoSpec

#: stdlib folders left out of the corpus: tests, GUI demos, vendored data
_SKIP = {
    "site-packages",
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "pydoc_data",
    "encodings",
}


def demo_corpus(max_chars: int = DemoSpec.corpus_chars) -> list[str]:
    """The built-in corpus (the demo model's, and `record --train`'s default data): every `pydoc_data.topics`
    entry, then standard-library modules in path order, up to about `max_chars` characters."""
    import pydoc_data.topics

    documents = [pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics)]
    size = sum(map(len, documents))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP and not d.startswith("__"))
        for name in sorted(files):
            if not name.endswith(".py") or size >= max_chars:
                continue
            text = (Path(root) / name).read_text(encoding="utf-8", errors="replace")
            documents.append(text)
            size += len(text)
    return documents


def tokenize_text(tokenizer: Any, text: str, eos_id: int | None) -> torch.Tensor:
    """One token stream for a whole text: paragraphs tokenized in batches, joined by end-of-sequence."""
    documents = [d for d in text.split("\n\n") if d.strip()]
    ids: list[int] = []
    for start in range(0, len(documents), 512):
        encoded = tokenizer(documents[start : start + 512], add_special_tokens=False)["input_ids"]
        for document in encoded:
            ids.extend(document)
            if eos_id is not None:
                ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)


def read_training_text(data: str | Path | None) -> tuple[str, str]:
    """(text, source name): a .txt file, the `text`/`prompt` fields of a .jsonl file, or the demo corpus."""
    if data is None:
        return "\n\n".join(demo_corpus()), "demo corpus"
    path = Path(data)
    if not path.is_file():
        raise MoetraceError(f"data file {path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.suffix == ".jsonl":
        from moetrace.models.prompts import load_prompts

        return "\n\n".join(load_prompts(path)), str(path)
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except UnicodeDecodeError:
        raise MoetraceError(f"data file {path} is not UTF-8 text") from None
