"""The built-in demo model: a small Mixtral-shaped MoE language model trained on text every Python has.

Its corpus is Python's own documentation (`pydoc_data.topics`) and the source of the standard
library, so it needs no download. Built on first use (or by `moetrace demo-model build`) in a few
minutes on two CPU cores and cached in the user's cache directory as a normal model folder
(config, safetensors, tokenizer) that `record --model` also accepts. Its own training run is
recorded while it trains, into `train-trace/` inside that folder: train once, keep both.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sysconfig
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEMO_NAME = "moetrace/demo-moe"
TRAIN_TRACE = "train-trace"
BUILD_FILE = "moetrace-build.json"

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


def demo_corpus(max_chars: int = DemoSpec.corpus_chars) -> list[str]:
    """Documents: every `pydoc_data.topics` entry, then standard-library modules in path order."""
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


def build_demo_model(
    spec: DemoSpec | None = None,
    *,
    force: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> Path:
    """Train the demo model (recording its training run) and cache it; return its folder.

    Built in a temporary folder beside the final one and renamed when complete, so an interrupted
    build leaves nothing that looks finished.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from moetrace.models.loading import quiet_transformers
    from moetrace.models.tokenizer import train_bpe_tokenizer
    from moetrace.trace.train import TrainConfig, tokenize_text, train_and_record

    spec = spec or DemoSpec()
    final = demo_model_dir(spec)
    if is_built(spec) and not force:
        return final
    started = time.perf_counter()
    final.parent.mkdir(parents=True, exist_ok=True)
    work = final.with_name(final.name + f".building-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    say("collecting the corpus: Python's documentation and standard library")
    documents = demo_corpus(spec.corpus_chars)
    corpus_hash = hashlib.sha256("\n\n".join(documents).encode()).hexdigest()[:16]
    say(f"training a {spec.vocab_size}-token BPE tokenizer on {sum(map(len, documents)):,} characters")
    tokenizer = train_bpe_tokenizer(documents, spec.vocab_size)
    tokens = tokenize_text(tokenizer, "\n\n".join(documents), tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(spec.model_config())
    model.config._name_or_path = DEMO_NAME
    params = sum(p.numel() for p in model.parameters())
    say(f"training {DEMO_NAME} ({params / 1e6:.1f}M parameters, {spec.num_experts} experts, top-{spec.top_k}) "
        f"for {spec.steps} steps on {len(tokens):,} tokens, recording its expert load")  # fmt: skip
    config = TrainConfig(
        steps=spec.steps, batch_size=spec.batch_size, seq_len=spec.seq_len, lr=spec.lr,
        aux_loss_coef=spec.aux_loss_coef, routes_every=spec.routes_every, routes_sample=spec.routes_sample,
        seed=spec.seed,
    )  # fmt: skip
    run = {"data": "demo corpus", "data_tokens": len(tokens), "corpus_sha256": corpus_hash}
    train_and_record(model, tokens, work / TRAIN_TRACE, config, name=DEMO_NAME, run=run, progress=progress)
    quiet_transformers()
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    build = {"spec": asdict(spec), "corpus_sha256": corpus_hash, "seconds": round(time.perf_counter() - started, 1)}
    (work / BUILD_FILE).write_text(json.dumps(build, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)
    return final


def load_demo_model(
    spec: DemoSpec | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> Any:
    """The demo model and its tokenizer, built first if it is not cached yet."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from moetrace.models.loading import LoadedModel, quiet_transformers

    quiet_transformers()
    if not is_built(spec):
        say("the demo model is not built yet: building it once (a few minutes on a CPU)")
    folder = build_demo_model(spec, progress=progress, say=say)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.eval()
    return LoadedModel(model=model, tokenizer=AutoTokenizer.from_pretrained(folder), name=DEMO_NAME)


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
