"""Loading a model and its tokenizer: a hub id, a local folder, or the built demo model.

Loading never trains: the demo model is built by `moetrace.demo.build` (`moetrace demo-model build`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moetrace.errors import InvalidArgumentError, ModelLoadError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    name: str


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES and not device.startswith("cuda:"):
        raise InvalidArgumentError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidArgumentError("--device cuda was asked for, but torch sees no CUDA GPU")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype | str:
    """`auto`: float32 on the CPU, the checkpoint's own dtype on a GPU."""
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else "auto"
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"--dtype must be one of auto, {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def looks_like_path(name: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else that is meant as a folder looks like a path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def load_model(
    name: str | None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    dtype_for: torch.device | None = None,
) -> LoadedModel:
    """Load `name` (hub id or local folder) with the Auto classes, or the built demo model when None
    (a `DemoModelNotBuiltError` when it is not built yet).
    `dtype_for`: the device whose `auto` dtype rule applies, when the model is loaded onto another
    (the offloader loads on the host for a GPU run)."""
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dtype_for or target)
    if name is None:
        loaded = load_demo_model()
        loaded.model.to(device=target, dtype=torch_dtype if isinstance(torch_dtype, torch.dtype) else None)
        return loaded
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()

    path = Path(name).expanduser()
    if not path.exists() and looks_like_path(name):
        raise ModelLoadError(f"model path {name} does not exist")
    source = str(path) if path.exists() else name
    if path.exists() and not (path / "config.json").is_file():
        raise ModelLoadError(f"model folder {name} has no config.json")
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"could not load model {name}: {_first_line(exc)}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"could not load the tokenizer of {name}: {_first_line(exc)}") from None
    model.to(target)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name)


def load_demo_model(spec: Any = None) -> LoadedModel:
    """The built demo model (of `spec`, a `DemoSpec`; the default when None) on the host, from its cache
    folder; a `DemoModelNotBuiltError` saying how to build it when it is not there."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from moetrace.models.demo_model import DEMO_NAME, built_demo_model_dir

    folder = built_demo_model_dir(spec)
    quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.eval()
    return LoadedModel(model=model, tokenizer=AutoTokenizer.from_pretrained(folder), name=DEMO_NAME)


def quiet_transformers() -> None:
    """No weight-loading or shard-writing bars from transformers: moetrace shows its own progress
    (hub downloads keep theirs)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
