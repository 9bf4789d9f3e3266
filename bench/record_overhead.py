"""Recording overhead: traced ÷ untraced greedy generation, same model and prompts, one process.

    python bench/record_overhead.py [--repeats 7] [--max-new-tokens 32] [--write]

Runs are interleaved (untraced, traced, untraced, ...) so that machine noise hits both alike; the
ratio of medians is reported, for the random-weight stand-in (the smallest model, where the hooks
weigh most) and the demo model. Target (issue 2): ≤ 1.10 on a tiny CPU model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command, write_section  # noqa: E402

import moetrace  # noqa: E402
from moetrace.models.builtin import stand_in_model  # noqa: E402
from moetrace.models.generation import generate, left_pad  # noqa: E402
from moetrace.models.loading import load_demo_model  # noqa: E402
from moetrace.models.prompts import builtin_prompts  # noqa: E402


def measure(loaded, args) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    model, tokenizer = loaded.model, loaded.tokenizer
    prompts = [tokenizer(p)["input_ids"] for p in builtin_prompts()]
    batches = [
        left_pad(prompts[i : i + args.batch_size], 0, torch.device("cpu"))
        for i in range(0, len(prompts), args.batch_size)
    ]
    eos = [tokenizer.eos_token_id]

    def run_all() -> None:
        with torch.inference_mode():
            for input_ids, mask in batches:
                generate(model, input_ids, mask, args.max_new_tokens, 0, eos)

    def untraced() -> float:
        started = time.perf_counter()
        run_all()
        return time.perf_counter() - started

    def traced() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            with moetrace.tracing(model, Path(tmp) / "t", eos_token_ids=eos):
                run_all()
            return time.perf_counter() - started  # includes writing and closing the trace

    run_all()  # warm-up: lazy imports, allocator
    plain, hooked = [], []
    for _ in range(args.repeats):
        plain.append(untraced())
        hooked.append(traced())
    return statistics.median(plain), statistics.median(hooked), len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--write", action="store_true", help="write the result into docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the 2-core machine is shared; one thread keeps the two runs comparable

    rows = [
        "| model | prompts | new tokens | untraced (median s) | traced (median s) | traced ÷ untraced |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for loaded in (stand_in_model(), load_demo_model()):
        plain, hooked, prompts = measure(loaded, args)
        rows.append(
            f"| {loaded.name} | {prompts} built-in, batch {args.batch_size} | {args.max_new_tokens} | "
            f"{plain:.3f} | {hooked:.3f} | **{hooked / plain:.3f}** |"
        )
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(f"{args.repeats} interleaved repeats; target ≤ 1.10")
    if args.write:
        body = (
            "## Recording overhead (issue 2)\n\n"
            "Traced ÷ untraced greedy generation of the same model on the same prompts, interleaved in one "
            "process, one torch thread; the traced time includes writing and closing the trace. Target ≤ 1.10.\n\n"
            f"```\n{command()}\n```\n\n{table}"
        )
        write_section("record_overhead", body)


if __name__ == "__main__":
    main()
