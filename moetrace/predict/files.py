"""Predictor files: safetensors tensors plus a JSON header, never a pickle.

A saved path predictor or load forecaster is one safetensors file. Every piece of fitted state is a
tensor (count tables, popularity vectors, network weights, the token vocabulary); the settings go in
a JSON header carried in the file's safetensors metadata under the key `moetrace`:

    {"format": "moetrace-predictor", "format_version": 1, "kind": "path-predictor",
     "moetrace_version": "0.1.0", "method": "markov", "options": {...}, "model": {...}, ...}

Reading only parses that header and the tensors (`safetensors.safe_open`), so a file cannot run
code. A pickle (`torch.save`, `pickle.dump`), a safetensors file without our header, a truncated
file and a header of a newer format version are refused with a `PredictorFileError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moetrace.errors import PredictorFileError

if TYPE_CHECKING:
    from moetrace.trace.reader import Trace

FORMAT = "moetrace-predictor"
FORMAT_VERSION = 1
HEADER_KEY = "moetrace"
PATH_PREDICTOR = "path-predictor"
LOAD_FORECASTER = "load-forecaster"
_WHAT = {PATH_PREDICTOR: "path predictor", LOAD_FORECASTER: "load forecaster"}
_PICKLE_STARTS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
"""torch.save's zip archive and pickle protocols 2–5: named in the message when safetensors cannot read a file."""


def write_predictor_file(path: str | Path, kind: str, header: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    """Write `tensors` and `header` (plain JSON values) with the format fields added."""
    from safetensors.numpy import save_file

    from moetrace import __version__

    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "moetrace_version": __version__}
    full.update(header)
    try:
        text = json.dumps(full, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PredictorFileError(f"cannot save the {_WHAT[kind]}: its settings are not plain values ({exc})") from None
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata={HEADER_KEY: text})


def read_predictor_file(path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, tensors) of a file `write_predictor_file` wrote for `kind`; anything else is refused."""
    from safetensors import safe_open

    path = Path(path)
    what = _WHAT[kind]
    if not path.is_file():
        raise PredictorFileError(f"{what} file {path} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as file:
            metadata = file.metadata() or {}
            text = metadata.get(HEADER_KEY)
            names = file.keys() if text is not None else []
            tensors = {name: file.get_tensor(name) for name in names}
    except Exception as exc:  # safetensors raises SafetensorError, OSError, ... for a damaged file
        with path.open("rb") as raw:
            if raw.read(4).startswith(_PICKLE_STARTS):
                raise PredictorFileError(
                    f"{path} is not a saved moetrace {what}: it is a pickle (torch.save or pickle.dump), which "
                    f"moetrace never loads because loading one can run code; fit it again and --save it"
                ) from None
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise PredictorFileError(
            f"{path} is not a saved moetrace {what}: not a complete safetensors file ({reason})"
        ) from None
    if text is None:
        raise PredictorFileError(f"{path} is not a saved moetrace {what}: a safetensors file without a moetrace header")
    header = _parse_header(path, text, what)
    if header.get("kind") != kind:
        raise PredictorFileError(f"{path} is not a saved moetrace {what}: it holds a {header.get('kind')!r}")
    return header, tensors


def _parse_header(path: Path, text: str, what: str) -> dict[str, Any]:
    try:
        header = json.loads(text)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise PredictorFileError(f"{path} is not a saved moetrace {what}: its `{HEADER_KEY}` header is not ours")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PredictorFileError(f"{path} has an unknown moetrace predictor format version {version!r}")
    if version > FORMAT_VERSION:
        raise PredictorFileError(
            f"{path} has predictor format version {version}, written by moetrace {header.get('moetrace_version')}; "
            f"this moetrace reads version {FORMAT_VERSION} only: upgrade moetrace"
        )
    return header


def model_shape(trace: Trace) -> dict[str, Any]:
    """The header's `model`: the model a predictor was fitted for (name, MoE layers, experts, top-k)."""
    model = trace.meta.model
    return {
        "name": model.name,
        "moe_layers": [int(layer) for layer in model.moe_layers],
        "num_experts": int(model.num_experts),
        "top_k": int(model.top_k),
    }


def vocabulary_tensors(vocabulary: dict[str, int] | None) -> dict[str, np.ndarray]:
    """Token text -> id as three tensors: ids, UTF-8 bytes of all texts, and their offsets."""
    if vocabulary is None:
        return {}
    texts = [text.encode("utf-8") for text in vocabulary]
    offsets = np.zeros(len(texts) + 1, np.int64)
    offsets[1:] = np.cumsum([len(t) for t in texts])
    return {
        "vocabulary.ids": np.array(list(vocabulary.values()), np.int64),
        "vocabulary.text": np.frombuffer(b"".join(texts), np.uint8).copy(),
        "vocabulary.offsets": offsets,
    }


def vocabulary_from(tensors: dict[str, np.ndarray]) -> dict[str, int] | None:
    if "vocabulary.ids" not in tensors:
        return None
    data, offsets = tensors["vocabulary.text"].tobytes(), tensors["vocabulary.offsets"]
    texts = [data[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]
    return dict(zip(texts, (int(i) for i in tensors["vocabulary.ids"])))


def grouped(tensors: dict[str, np.ndarray], prefix: str) -> dict[int, dict[str, np.ndarray]]:
    """`prefix.<int>.<name>` tensors as {int: {name: tensor}} (e.g. one network per lookahead)."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        head, _, rest = key.partition(".")
        if head == prefix:
            number, _, name = rest.partition(".")
            out.setdefault(int(number), {})[name] = value
    return out
