"""What loading needs to know about the built-in demo model: its recipe, its shape, and where it is cached.

The demo model is a small Mixtral-shaped MoE language model trained on text every Python has
(Python's own documentation and the source of the standard library), so it needs no download. It
is built by `moetrace.demo.build` (`moetrace demo-model build`, or the commands that use it) in a
few minutes on two CPU cores and cached in the user's cache directory as a normal model folder
(config, safetensors, tokenizer) that `record --model` also accepts. Its own training run is
recorded while it trains, into `train-trace/` inside that folder: train once, keep both.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moetrace.errors import DemoModelNotBuiltError

DEMO_NAME = "moetrace/demo-moe"
TRAIN_TRACE = "train-trace"
BUILD_FILE = "moetrace-build.json"


@dataclass(frozen=True)
class DemoSpec:
    """Shape and training recipe of the demo model; its hash names the cache folder."""

    hidden_size: int = 96
    intermediate_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    num_experts: int = 16
    top_k: int = 2
    vocab_size: int = 2048
    corpus_chars: int = 4_000_000
    steps: int = 2000
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 3e-3
    aux_loss_coef: float = 0.01
    routes_every: int = 100
    routes_sample: int = 2
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]

    def model_config(self) -> Any:
        from transformers import MixtralConfig

        return MixtralConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            num_local_experts=self.num_experts,
            num_experts_per_tok=self.top_k,
            max_position_embeddings=1024,
            router_aux_loss_coef=self.aux_loss_coef,
            tie_word_embeddings=True,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )


def cache_root() -> Path:
    """`$MOETRACE_CACHE`, else `$XDG_CACHE_HOME/moetrace`, else `~/.cache/moetrace`."""
    if os.environ.get("MOETRACE_CACHE"):
        return Path(os.environ["MOETRACE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "moetrace"


def demo_model_dir(spec: DemoSpec | None = None) -> Path:
    return cache_root() / f"demo-moe-{(spec or DemoSpec()).key()}"


def is_built(spec: DemoSpec | None = None) -> bool:
    return (demo_model_dir(spec) / BUILD_FILE).is_file()


def built_demo_model_dir(spec: DemoSpec | None = None) -> Path:
    """The built demo model's folder; a `DemoModelNotBuiltError` saying how to build it when it is not there."""
    if not is_built(spec):
        raise DemoModelNotBuiltError(
            f"the demo model is not built yet (expected in {demo_model_dir(spec)}): build it once with "
            "`moetrace demo-model build` (a few minutes on a CPU), or pass --model"
        )
    return demo_model_dir(spec)


def random_weight_model(spec: DemoSpec | None = None, seed: int = 0) -> Any:
    """A model of the demo model's shape with untrained, seeded weights (the baseline for routing)."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = spec or DemoSpec()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(spec.model_config())
    model.eval()
    return model
