"""Path prediction: recall@k of popularity, markov, mlp (and pregate) on real and demo routing.

    python bench/path_predict.py [--write] [--train-steps 3000]

1. DeepSeek-V2-Lite prefill routing from ../shared/data (imported with `moetrace import`): 64
   experts, top-6, 26 MoE layers; split 80/20 by sequence; lookahead 1, 2, 3.
2. The demo model's generation trace on the built-in prompts, recorded with --pregate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command, write_section  # noqa: E402

import moetrace  # noqa: E402
from moetrace.predict.path import PathConfig, evaluate_paths  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DSV2 = ROOT.parent / "shared" / "data" / "dsv2-lite-prefill-routes.parquet"


def table(result) -> str:  # type: ignore[no-untyped-def]
    lookaheads = sorted({r["lookahead"] for r in result.results})
    rows = ["| method | " + " | ".join(f"lookahead {d}" for d in lookaheads) + " | µs per prediction |",
            "|---" * (len(lookaheads) + 2) + "|"]  # fmt: skip
    for method in dict.fromkeys(r["method"] for r in result.results):
        cells, cost = [], []
        for d in lookaheads:
            row = next((r for r in result.results if r["method"] == method and r["lookahead"] == d), None)
            cells.append("–" if row is None else f"{row['recall']:.3f}")
            if row is not None:
                cost.append(row["us_per_prediction"])
        rows.append(f"| {method} | " + " | ".join(cells) + f" | {sum(cost) / len(cost):.2f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--train-steps", type=int, default=3000)
    args = parser.parse_args()
    options = {"mlp": {"train_steps": args.train_steps}}
    parts = ["## Path prediction (issue 5)\n", f"```\n{command()}\n```\n"]
    with tempfile.TemporaryDirectory() as tmp:
        if DSV2.exists():
            trace = moetrace.import_routes(DSV2, Path(tmp) / "dsv2")
            started = time.perf_counter()
            result = evaluate_paths(trace, PathConfig(methods=("popularity", "markov", "mlp"), lookaheads=(1, 2, 3)),
                                    predictor_options=options)  # fmt: skip
            seconds = time.perf_counter() - started
            print(table(result), flush=True)
            parts.append(
                "### DeepSeek-V2-Lite prefill routing (real), split 80/20 by sequence\n\n"
                f"`moetrace import ../shared/data/dsv2-lite-prefill-routes.parquet`, then recall@6 on "
                f"{result.test.tokens:,} tokens of {len(set(result.test.seq_id.tolist()))} unseen prompts "
                f"(trained on {result.train.tokens:,} tokens; {seconds:.0f} s in all):\n\n{table(result)}\n"
            )
        from moetrace.models.loading import load_demo_model

        loaded = load_demo_model()
        demo = moetrace.record(loaded.model, None, Path(tmp) / "demo", tokenizer=loaded.tokenizer, name=loaded.name,
                               max_new_tokens=24, pregate=True)  # fmt: skip
        result = evaluate_paths(demo, PathConfig(methods=("popularity", "markov", "mlp", "pregate"), lookaheads=(1, 2, 3)),
                                predictor_options=options)  # fmt: skip
        print(table(result), flush=True)
        parts.append(
            "### Demo model generation trace (recorded with --pregate), split 80/20 by sequence\n\n"
            f"52 built-in prompts, 24 new tokens; recall@2 on {result.test.tokens:,} test tokens "
            f"(trained on {result.train.tokens:,}):\n\n{table(result)}\n"
        )
    if args.write:
        write_section("path_predict", "\n".join(parts))


if __name__ == "__main__":
    main()
