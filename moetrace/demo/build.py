"""Building the demo model: train it on the built-in corpus (recording its training run) and cache it.

Loading never builds (`moetrace.models.loading.load_model(None)` raises until the model is built);
`moetrace demo-model build`, and the commands that use the demo model, call `build_demo_model` here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from moetrace.models.demo_model import BUILD_FILE, DEMO_NAME, TRAIN_TRACE, DemoSpec, demo_model_dir, is_built


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
    from moetrace.train.data import demo_corpus, tokenize_text
    from moetrace.train.loop import TrainConfig, train_and_record

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
