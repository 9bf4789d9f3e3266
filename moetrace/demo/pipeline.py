"""The demo job behind `make demo`: what moetrace does, on the built-in demo model, with no download."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moetrace.models.demo_model import DemoSpec, is_built
from moetrace.trace.reader import Trace
from moetrace.trace.stats import TraceStats

DEFAULT_OUT = Path("traces/demo")


@dataclass
class DemoResult:
    out: Path
    traces: dict[str, Trace] = field(default_factory=dict)
    stats: dict[str, TraceStats] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    load_forecast: Any = None
    """The load backtest on the training trace."""
    paths: Any = None
    """The path-prediction evaluation on the generation trace."""
    simulation: Any = None
    """Cache policies replayed on the generation trace."""
    offload: Any = None
    """A live run with the experts offloaded (a `RunReport`), compared with the plain run."""


def run_demo(
    out: str | Path = DEFAULT_OUT,
    *,
    max_new_tokens: int = 24,
    spec: DemoSpec | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    build_progress: Callable[[int, int, float], None] | None = None,
    stage_progress: Callable[[int, int, str], None] | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> DemoResult:
    """Build the demo model (cached), keep its training-load trace, record a generation trace on the
    built-in prompts, and summarise and plot both. The demo's own traces under `out` are replaced.

    `progress` hears from the recording and the offloaded run (sequences, tokens), `build_progress`
    from the build's training (steps, loss), `stage_progress` from the backtest, the path evaluation
    and the replay (units done, what is running)."""
    from moetrace.demo.build import build_demo_model
    from moetrace.models.demo_model import TRAIN_TRACE, demo_model_dir
    from moetrace.models.loading import load_demo_model
    from moetrace.report.plots import plot_load
    from moetrace.trace.reader import open_trace
    from moetrace.trace.record import record
    from moetrace.trace.stats import trace_stats
    from moetrace.trace.writer import check_output_dir

    result = DemoResult(out=Path(out))
    for name in ("train", "generate"):
        check_output_dir(result.out / name, force=True)
    if not is_built(spec):
        say("the demo model is not built yet: building it once (a few minutes on a CPU)")
        build_demo_model(spec, progress=build_progress, say=say)
    loaded = load_demo_model(spec)

    say("the demo model's own training run, recorded while it trained: expert load of every optimizer step")
    shutil.rmtree(result.out / "train", ignore_errors=True)
    shutil.copytree(demo_model_dir(spec) / TRAIN_TRACE, result.out / "train")
    train = open_trace(result.out / "train")

    say(
        "recording the demo model's routing (and its pre-gating predictions) while it generates from the built-in prompts"
    )
    generate = record(
        loaded.model, None, result.out / "generate", tokenizer=loaded.tokenizer, name=loaded.name, force=True,
        max_new_tokens=max_new_tokens, progress=progress, pregate=True,
    )  # fmt: skip
    for name, trace in (("train", train), ("generate", generate)):
        result.traces[name] = trace
        result.stats[name] = trace_stats(trace)
        figure = plot_load(trace.dense_load(), result.out / f"{name}-load.png", title=f"demo model: {name} load")
        result.figures.append(figure)

    from moetrace.predict.load import LoadConfig, backtest_load
    from moetrace.predict.path import PathConfig, evaluate_paths
    from moetrace.report.plots import plot_load_backtest, plot_path_recall

    steps = result.stats["train"].steps
    horizons = (max(1, steps // 20), max(1, steps // 5))  # 100 and 400 steps for the 2,000-step demo run
    say(f"forecasting the training load {horizons[0]} and {horizons[1]} steps ahead (rolling-origin backtest)")
    methods = ("last", "mean", "window", "mlp") if steps >= 500 else ("last", "mean", "window")
    config = LoadConfig(
        methods=methods, horizons=horizons, warmup=max(1, steps // 2), window=min(100, max(1, steps // 4))
    )
    result.load_forecast = backtest_load(train, config, progress=_labelled(stage_progress, "forecasting"))
    result.figures.append(plot_load_backtest(result.load_forecast, result.out / "load-forecast.png"))

    say("predicting each token's experts one and two layers ahead on unseen prompts")
    result.paths = evaluate_paths(
        generate, PathConfig(methods=("popularity", "markov", "mlp", "pregate"), lookaheads=(1, 2)),
        predictor_options={"mlp": {"train_steps": 800, "hidden": 128}},
        progress=_labelled(stage_progress, "path prediction"),
    )  # fmt: skip
    result.figures.append(plot_path_recall(result.paths, result.out / "path-recall.png"))

    from moetrace.report.plots import plot_hit_rates
    from moetrace.sim.simulate import SimConfig, simulate

    say("replaying the generation trace against expert-cache policies (a quarter and half of the experts cached)")
    experts = generate.meta.model.num_experts
    capacities = tuple(
        sorted({max(generate.meta.model.top_k, experts // 4), max(generate.meta.model.top_k, experts // 2)})
    )
    policies = ("lru", "lfu", "belady", "static", "lru+pregate", "lru+oracle")
    result.simulation = simulate(
        generate, SimConfig(policies=policies, capacities=capacities, layer_time=50e-6),
        progress=_labelled(stage_progress, "replaying"),
    )  # fmt: skip
    result.figures.append(plot_hit_rates(result.simulation, result.out / "hit-rates.png"))

    from moetrace.models.prompts import builtin_prompts
    from moetrace.offload.run import run_model

    say(f"running the model with its experts in host memory, {capacities[0]} of {experts} per layer in slots, "
        "the next layer's experts prefetched by pre-gating; checked against the plain run")  # fmt: skip
    result.offload = run_model(str(demo_model_dir(spec)), builtin_prompts()[:8], offload=True, policy="lru+pregate",
                               capacity=capacities[0], compare=True, max_new_tokens=max_new_tokens, device="cpu",
                               progress=progress)  # fmt: skip
    return result


def _labelled(progress: Callable[[int, int, str], None] | None, label: str) -> Callable[[int, int, str], None] | None:
    """`progress` with `label` before each description, so one display can follow several stages."""
    if progress is None:
        return None
    report = progress
    return lambda done, total, what: report(done, total, f"{label}: {what}")
