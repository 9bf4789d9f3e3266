"""`meta.json`: what model and run produced a trace, and whether the run finished."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from moetrace.errors import TraceFormatError
from moetrace.trace.schema import META_FILE, SCHEMA_VERSION


@dataclass(frozen=True)
class ModelInfo:
    """The routed-expert shape of the model a trace was recorded from."""

    num_experts: int
    """Routed experts per MoE layer."""
    top_k: int
    """Experts chosen per token per layer."""
    moe_layers: tuple[int, ...]
    """Decoder layer indices that hold an MoE block, ascending."""
    name: str | None = None
    """Hub id, local folder or built-in model name."""
    model_type: str | None = None
    """`config.model_type` of the model."""
    num_hidden_layers: int | None = None
    """Decoder layers in all, dense ones included."""
    expert_bytes: int | None = None
    """Bytes of one routed expert's weights at the recorded dtype."""
    dtype: str | None = None
    """Parameter dtype the model ran in."""

    def __post_init__(self) -> None:
        if self.num_experts < 1:
            raise TraceFormatError(f"model.num_experts must be at least 1, got {self.num_experts}")
        if not 1 <= self.top_k <= self.num_experts:
            raise TraceFormatError(f"model.top_k must be in 1..num_experts ({self.num_experts}), got {self.top_k}")
        if not self.moe_layers:
            raise TraceFormatError("model.moe_layers is empty")
        if list(self.moe_layers) != sorted(set(self.moe_layers)):
            raise TraceFormatError("model.moe_layers must be ascending and unique")


@dataclass(frozen=True)
class TraceMeta:
    """The parsed `meta.json` of a trace."""

    model: ModelInfo
    run: dict[str, Any] = field(default_factory=dict)
    complete: bool = True
    schema_version: int = SCHEMA_VERSION
    moetrace_version: str | None = None
    created_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Top-level keys this version does not know, kept as they were."""

    @property
    def num_layers(self) -> int:
        return len(self.model.moe_layers)

    def layer_index(self) -> dict[int, int]:
        """Decoder layer index -> position in `moe_layers` (the layer axis of dense arrays)."""
        return {layer: i for i, layer in enumerate(self.model.moe_layers)}

    def to_dict(self) -> dict[str, Any]:
        model = {k: v for k, v in asdict(self.model).items()}
        model["moe_layers"] = list(self.model.moe_layers)
        return {
            "schema_version": self.schema_version,
            "moetrace_version": self.moetrace_version,
            "created_at": self.created_at,
            "complete": self.complete,
            "model": model,
            "run": self.run,
            **self.extra,
        }

    def finished(self, **run_updates: Any) -> TraceMeta:
        return replace(self, complete=True, run={**self.run, **run_updates})

    @classmethod
    def new(cls, model: ModelInfo, run: dict[str, Any]) -> TraceMeta:
        from moetrace import __version__

        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return cls(model=model, run=run, complete=False, moetrace_version=__version__, created_at=created)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TraceMeta:
        if not isinstance(data, dict):
            raise TraceFormatError(f"{where}: meta.json must hold a JSON object")
        version = data.get("schema_version")
        if version is None:
            raise TraceFormatError(f"{where}: meta.json has no 'schema_version'")
        if not isinstance(version, int) or version < 1:
            raise TraceFormatError(f"{where}: 'schema_version' must be a positive integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise TraceFormatError(
                f"{where}: trace has schema_version {version}; this moetrace reads up to {SCHEMA_VERSION}, upgrade it"
            )
        model = data.get("model")
        if not isinstance(model, dict):
            raise TraceFormatError(f"{where}: meta.json has no 'model' object")
        for key in ("num_experts", "top_k", "moe_layers"):
            if key not in model:
                raise TraceFormatError(f"{where}: meta.json 'model' has no '{key}'")
        try:
            info = ModelInfo(
                num_experts=_int(model["num_experts"], "num_experts"),
                top_k=_int(model["top_k"], "top_k"),
                moe_layers=tuple(_int(x, "moe_layers") for x in model["moe_layers"]),
                name=model.get("name"),
                model_type=model.get("model_type"),
                num_hidden_layers=model.get("num_hidden_layers"),
                expert_bytes=model.get("expert_bytes"),
                dtype=model.get("dtype"),
            )
        except TypeError as exc:
            raise TraceFormatError(f"{where}: {exc}") from None
        except TraceFormatError as exc:
            raise TraceFormatError(f"{where}: {exc}") from None
        known = {"schema_version", "moetrace_version", "created_at", "complete", "model", "run"}
        return cls(
            model=info,
            run=dict(data.get("run") or {}),
            complete=bool(data.get("complete", True)),
            schema_version=version,
            moetrace_version=data.get("moetrace_version"),
            created_at=data.get("created_at"),
            extra={k: v for k, v in data.items() if k not in known},
        )


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"meta.json 'model.{name}' must hold integers, got {value!r}")
    return value


def read_meta(trace_dir: Path) -> TraceMeta:
    path = trace_dir / META_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TraceFormatError(f"{trace_dir} is not a moetrace trace: it has no {META_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TraceFormatError(f"{path} is not valid JSON: {exc}") from None
    return TraceMeta.from_dict(data, str(trace_dir))


def write_meta(trace_dir: Path, meta: TraceMeta) -> None:
    """Write meta.json atomically: a reader sees the old file or the new one, never half of one."""
    path = trace_dir / META_FILE
    tmp = path.with_name(f".{META_FILE}.tmp")
    tmp.write_text(json.dumps(meta.to_dict(), indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in meta.json")
