"""Scale: time and peak memory of import, inspect, simulate and predict load on DeepSeek-V3-shaped traces.

    python bench/scale.py [--tokens 100000,300000,1000000] [--workdir DIR] [--write]

A seeded route table shaped like DeepSeek-V3's routing: 58 MoE layers (decoder layers 3..60),
256 routed experts, top-8; no gate weights or token ids. Sequences are served in batches of 8: a
prompt of 200-2,000 tokens (the batch's prefill is one step), then 100-1,000 generated tokens (one
decode step per token position of the batch), so a million tokens make ~600 sequences and ~70k
steps. Each layer has its own Zipf-like expert popularity (exponent 0.8 over a random order of the
experts); each sequence draws a working set of 64 experts per layer from it, and each token picks
8 distinct experts from its sequence's working set in proportion to their popularity (Gumbel top-k),
so hot experts stay hot and a sequence keeps returning to the same ones. The table is written in
trace order, a bounded chunk at a time (memory does not grow with the table).

Each command runs as a fresh process under a small wrapper that reports wall time and the peak
resident memory (`ru_maxrss` of the wrapper's children: the command's process, or the largest of
its processes where it starts others), and its output is discarded. Tables and traces are kept in --workdir between runs (a table is made once per size).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command, write_section  # noqa: E402

LAYERS = tuple(range(3, 61))
EXPERTS, TOP_K, WORKING_SET, ZIPF = 256, 8, 64, 0.8
BATCH, PROMPT, DECODE = 8, (200, 2_000), (100, 1_000)
CHUNK_TOKENS = 1_024
SEED = 0

COMMANDS = {
    "import": "moetrace import {table} --out {trace} --num-experts 256 --model-name DeepSeek-V3-shaped --force",
    "inspect": "moetrace inspect {trace}",
    "simulate": "moetrace simulate {trace} --order token --policy lru --capacity 64",
    "predict load": "moetrace predict load {trace} --method window",
    "predict load bucketed": "moetrace predict load {trace} --method window --bucket 64",
}

WRAPPER = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
seconds = time.perf_counter() - started
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": done.returncode, "seconds": seconds, "peak_kb": peak_kb, "stderr": done.stderr[-2000:]}))
"""

SCHEMA = pa.schema(
    [
        ("seq_id", pa.int32()),
        ("pos", pa.int32()),
        ("step", pa.int32()),
        ("phase", pa.string()),
        ("layer", pa.int16()),
        ("experts", pa.list_(pa.int16(), TOP_K)),
    ]
)


def popularity(rng: np.random.Generator) -> np.ndarray:
    """(layers, experts) log-probabilities: Zipf-like, each layer over its own random order of the experts."""
    ranks = np.argsort(rng.random((len(LAYERS), EXPERTS)), axis=1) + 1
    weights = ranks.astype(np.float64) ** -ZIPF
    return np.log(weights / weights.sum(axis=1, keepdims=True))


def gumbel_top(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of k distinct choices per row, drawn without replacement in proportion to exp(logits)."""
    uniform = np.clip(rng.random(logits.shape, np.float32), 1e-7, 1 - 1e-7)
    noisy = logits - np.log(-np.log(uniform))
    top = np.argpartition(-noisy, k - 1, axis=-1)[..., :k]
    order = np.argsort(-np.take_along_axis(noisy, top, axis=-1), axis=-1)  # rank order, as a router gives
    return np.take_along_axis(top, order, axis=-1)


def schedule(tokens: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(seq_id, pos, step, is_decode) of every token, in trace order, `tokens` in all."""
    parts, seq, step, total = [], 0, 0, 0
    while total < tokens:
        prompts = rng.integers(*PROMPT, BATCH, endpoint=True)
        decodes = rng.integers(*DECODE, BATCH, endpoint=True)
        ids = np.arange(seq, seq + BATCH)
        parts.append((np.repeat(ids, prompts), np.concatenate([np.arange(p) for p in prompts]),
                      np.full(prompts.sum(), step), np.zeros(prompts.sum(), bool)))  # fmt: skip
        for d in range(decodes.max()):  # decode step d: the batch's sequences still generating
            alive = np.flatnonzero(decodes > d)
            parts.append((ids[alive], prompts[alive] + d, np.full(len(alive), step + 1 + d), np.ones(len(alive), bool)))
        seq, step = seq + BATCH, step + 1 + int(decodes.max())
        total += int(prompts.sum() + decodes.sum())
    seq_id, pos, steps, decode = (np.concatenate(column)[:tokens] for column in zip(*parts))
    return seq_id, pos, steps, decode


def write_table(path: Path, tokens: int) -> None:
    """The seeded DeepSeek-V3-shaped route table of `tokens` tokens, CHUNK_TOKENS tokens at a time."""
    rng = np.random.default_rng(SEED)
    log_pop = popularity(rng)
    seq_id, pos, step, decode = schedule(tokens, rng)
    working: dict[int, np.ndarray] = {}  # the working sets of the sequences being served
    layer_index = np.arange(len(LAYERS))
    tmp = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer:
        for start in range(0, tokens, CHUNK_TOKENS):
            chunk = slice(start, min(tokens, start + CHUNK_TOKENS))
            seqs = seq_id[chunk]
            for s in np.unique(seqs):
                if s not in working:
                    working[s] = gumbel_top(log_pop, WORKING_SET, rng).astype(np.int16)  # (layers, WORKING_SET)
            for s in [s for s in working if s < seqs.min()]:
                del working[s]
            sets = np.stack([working[s] for s in seqs])  # (tokens, layers, WORKING_SET)
            logits = log_pop[layer_index[None, :, None], sets].astype(np.float32)
            chosen = np.take_along_axis(sets, gumbel_top(logits, TOP_K, rng), axis=-1)  # (tokens, layers, TOP_K)
            n = len(seqs) * len(LAYERS)
            rows = {
                "seq_id": np.repeat(seqs, len(LAYERS)),
                "pos": np.repeat(pos[chunk], len(LAYERS)),
                "step": np.repeat(step[chunk], len(LAYERS)),
                "phase": np.where(np.repeat(decode[chunk], len(LAYERS)), "decode", "prefill"),
                "layer": np.tile(np.array(LAYERS), len(seqs)),
                "experts": pa.FixedSizeListArray.from_arrays(pa.array(chosen.reshape(-1), pa.int16()), TOP_K),
            }
            writer.write_table(pa.table(rows, schema=SCHEMA), row_group_size=n)
    tmp.replace(path)


def run(cmd: str) -> dict:
    """Wall time and peak RSS of `cmd` in a fresh process."""
    argv = cmd.split()
    argv[0] = str(Path(sys.executable).parent / argv[0])
    done = subprocess.run([sys.executable, "-c", WRAPPER, *argv], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    if result["rc"] != 0:
        print(f"  failed (exit {result['rc']}): {result['stderr'].strip()[-500:]}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="100000,300000,1000000", help="Comma-separated trace sizes in tokens.")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep tables and traces here (default: a temp dir).")
    parser.add_argument("--write", action="store_true", help="Write the results into docs/benchmarks.md.")
    parser.add_argument("--commands", default=None, help="Comma-separated names of COMMANDS to run (default: all); "
                        "the written section is then named after them.")  # fmt: skip
    args = parser.parse_args()
    sizes = [int(x) for x in args.tokens.split(",") if x.strip()]
    commands = {name: COMMANDS[name] for name in args.commands.split(",")} if args.commands else COMMANDS
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        results: dict[tuple[str, int], dict] = {}
        tables: dict[int, str] = {}
        for tokens in sizes:
            table = workdir / f"dsv3-shaped-{tokens}.parquet"
            if not table.exists():
                print(f"generating {table} ({tokens:,} tokens × {len(LAYERS)} layers)", flush=True)
                write_table(table, tokens)
            meta = pq.read_metadata(table)
            tables[tokens] = f"{meta.num_rows / 1e6:.1f} M rows, {table.stat().st_size / 1e6:,.0f} MB"
            for name, template in commands.items():
                cmd = template.format(table=table, trace=workdir / f"dsv3-shaped-{tokens}")
                results[(name, tokens)] = result = run(cmd)
                print(f"{tokens:>9,} tokens  {name:<22} {result['seconds']:8.1f} s  "
                      f"{result['peak_kb'] / 2**20:6.2f} GB  {'' if result['rc'] == 0 else 'FAILED'}", flush=True)  # fmt: skip
    body = report(sizes, results, tables, commands)
    print(body)
    if args.write:
        write_section("scale" if commands == COMMANDS else "scale-" + "-".join(commands).replace(" ", "-"), body)


def failure(result: dict) -> str:
    """A failed command's cell: its last error line, shortened."""
    lines = [line.strip() for line in result["stderr"].splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit {result['rc']}"
    return f"failed after {result['seconds']:,.0f} s: {last[:100]}".replace("|", "/")


def report(
    sizes: list[int], results: dict[tuple[str, int], dict], tables: dict[int, str], commands: dict[str, str]
) -> str:
    header = "| command | " + " | ".join(f"{t:,} tokens ({tables[t]})" for t in sizes) + " |"
    lines = [header, "|---" * (len(sizes) + 1) + "|"]
    for name, template in commands.items():
        cells = []
        for tokens in sizes:
            r = results[(name, tokens)]
            cells.append(f"{r['seconds']:,.1f} s, {r['peak_kb'] / 2**20:.2f} GB" if r["rc"] == 0 else failure(r))
        lines.append(f"| `{template.format(table='TABLE', trace='T')}` | " + " | ".join(cells) + " |")
    return (
        "## Scale: DeepSeek-V3-shaped traces (issue 12)\n\n"
        f"```\n{command()}\n```\n\n"
        f"A seeded route table shaped like DeepSeek-V3's routing ({len(LAYERS)} MoE layers, {EXPERTS} experts, "
        f"top-{TOP_K}; prefill then decode, batches of {BATCH} sequences; see bench/scale.py for the skew) at each "
        "size. Each command is a fresh process; wall time (process start included) and peak resident memory "
        "(ru_maxrss; the largest process where a command starts others). Targets: peak memory of import, inspect and simulate under 3 GB at a "
        "million tokens and within 1.3× of their peak at 100k tokens.\n\n" + "\n".join(lines) + "\n"
    )


if __name__ == "__main__":
    main()
