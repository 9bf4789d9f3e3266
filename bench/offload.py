"""Live offloading: decode time per token against the transfer bound, and prefetching against none.

    python bench/offload.py [--write] [--shape olmoe|qwen3] [--layers 4] [--resident 0.25] [--device auto]

A model with a published config's expert sizes and random weights (OLMoE-1B-7B: hidden 2048,
64 experts of 2048→1024→2048, top-8; Qwen3-30B-A3B: hidden 2048, 128 experts of 2048→768→2048,
top-8), fewer layers, bfloat16 on a GPU. In one process:

1. the pinned host-to-device bandwidth (a 512 MiB pinned buffer, median of 10 copies);
2. the plain run, every expert on the device (its decode time is the compute floor);
3. `lru` without prefetching and `lru+pregate`, `--resident` of each layer's experts in slots.

Transfer bound of a run's decode = its decode bytes ÷ bandwidth + the plain run's decode time
(the same tokens: outputs are checked identical). Target (issue 7): `lru+pregate` within 1.5× of
its bound, and faster than `lru` at equal memory. `--device cpu` (with `--hidden`/`--intermediate`
to shrink the shape) runs the same code with host tensors as slots; such numbers say nothing about
a GPU and are labelled so.
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

from moetrace.models.prompts import builtin_prompts  # noqa: E402
from moetrace.offload.run import run_model  # noqa: E402

SHAPES = {  # from the published config.json files
    "olmoe": {"kind": "olmoe", "hidden_size": 2048, "intermediate_size": 1024, "num_experts": 64,
              "num_experts_per_tok": 8, "num_attention_heads": 16, "num_key_value_heads": 16},
    "qwen3": {"kind": "qwen3_moe", "hidden_size": 2048, "moe_intermediate_size": 768, "intermediate_size": 6144,
              "num_experts": 128, "num_experts_per_tok": 8, "num_attention_heads": 32, "num_key_value_heads": 4,
              "head_dim": 128, "norm_topk_prob": True},
}  # fmt: skip


def build_model(args: argparse.Namespace, folder: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    from moetrace.models.tokenizer import byte_level_tokenizer

    shape = dict(SHAPES[args.shape])
    kind = shape.pop("kind")
    if args.hidden:
        shape["hidden_size"] = args.hidden
    if args.intermediate:
        shape["moe_intermediate_size" if "moe_intermediate_size" in shape else "intermediate_size"] = args.intermediate
    config = AutoConfig.for_model(
        kind, num_hidden_layers=args.layers, vocab_size=259, pad_token_id=0, bos_token_id=1, eos_token_id=300, **shape
    )  # fmt: skip  (eos out of vocabulary: full-length decodes)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.device != "cpu" else torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)
    return folder


def bandwidth(device: torch.device) -> float:
    """Host-to-device bytes per second from a pinned buffer (host-to-host on the CPU)."""
    size = 512 * 2**20
    pinned = device.type == "cuda"
    host = torch.empty(size, dtype=torch.uint8, pin_memory=pinned)
    target = torch.empty(size, dtype=torch.uint8, device=device)
    times = []
    for _ in range(11):
        if pinned:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            target.copy_(host, non_blocking=True)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            started = time.perf_counter()
            target.copy_(host)
            times.append(time.perf_counter() - started)
    return size / statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="olmoe")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--resident", type=float, default=0.25, help="share of each layer's experts in slots")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--intermediate", type=int, default=None)
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cpu" and args.hidden is None and args.intermediate is None:
        args.hidden, args.intermediate, args.layers = 512, 256, 2  # a real-size model would take hours on a CPU
    prompts = builtin_prompts()[: args.prompts]
    experts = SHAPES[args.shape]["num_experts"]
    capacity = max(int(round(args.resident * experts)), SHAPES[args.shape]["num_experts_per_tok"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(args, Path(tmp) / "model")
        measured_bw = bandwidth(device)
        expert_mib = _expert_bytes(folder, "bfloat16" if device.type == "cuda" else "float32") / 2**20
        common = {"max_new_tokens": args.new_tokens, "device": args.device, "dtype": "auto"}
        plain = run_model(str(folder), prompts, **common)
        runs = {policy: run_model(str(folder), prompts, offload=True, policy=policy, capacity=capacity, **common)
                for policy in ("lru", "lru+pregate")}  # fmt: skip
        # every expert in a slot: no decode misses once warm, so this isolates the offloaded path's own cost
        resident = run_model(str(folder), prompts, offload=True, policy="lru", capacity=experts, **common)
    rows = []
    decode_tokens = plain.decode_tokens  # the library's count: tokens computed by decode forwards
    for policy, report in runs.items():
        assert report.generated == plain.generated, f"{policy}: offloading changed the output"
        bound = report.decode_bytes / measured_bw + plain.decode_s
        rows.append((policy, report, bound))
        print(f"{policy}: decode {report.decode_s:.3f} s, bound {bound:.3f} s, ratio {report.decode_s / bound:.2f}, "
              f"hit rate {report.hit_rate:.3f}", flush=True)  # fmt: skip
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (host tensors as slots)"
    lines = [
        "## Live offloading (issue 7)\n", f"```\n{command()}\n```\n",
        f"Device: **{name}**. Model: {args.shape}'s config{' shrunk to hidden ' + str(args.hidden) if args.hidden else ''}"
        f"{', expert intermediate ' + str(args.intermediate) if args.intermediate else ''}, {args.layers} layers, "
        f"random weights in {'bfloat16' if device.type == 'cuda' else 'float32'}, {expert_mib:.1f} MiB per expert; "
        f"{len(prompts)} built-in prompts "
        f"at batch size 1, {args.new_tokens} new tokens each ({decode_tokens} decode tokens); "
        f"{capacity} of {experts} experts per layer in slots ({capacity / experts:.0%}). "
        f"Measured {'pinned host-to-device' if device.type == 'cuda' else 'host-to-host'} bandwidth: "
        f"{measured_bw / 1e9:.1f} GB/s.\n",
        "| run | decode ms/token | hit rate | decode GB moved | transfer bound ms/token | ÷ bound | peak device memory |",
        "|---|---|---|---|---|---|---|",
        f"| every expert on the device | {1e3 / plain.decode_tokens_per_s:.2f} | – | – | – | – | "
        f"{_gib(plain.peak_memory_bytes)} |",
    ]  # fmt: skip
    lines.append(
        f"| lru, all {experts} experts in slots | {1e3 / resident.decode_tokens_per_s:.2f} | "
        f"{resident.hit_rate:.3f} | {resident.decode_bytes / 1e9:.2f} | – | – | {_gib(resident.peak_memory_bytes)} |"
    )
    for policy, report, bound in rows:
        lines.append(
            f"| {policy}, {capacity} slots per layer | {1e3 / report.decode_tokens_per_s:.2f} | "
            f"{report.hit_rate:.3f} | {report.decode_bytes / 1e9:.2f} | {1e3 * bound / report.decode_tokens:.2f} | "
            f"{report.decode_s / bound:.2f} | {_gib(report.peak_memory_bytes)} |"
        )
    lru, ahead = runs["lru"], runs["lru+pregate"]
    lines.append(
        f"\n`lru+pregate` decodes {lru.decode_s / ahead.decode_s:.2f}× as fast as `lru` without prefetching; "
        f"outputs identical to the plain run in both. With every expert resident the offloaded path decodes at "
        f"{resident.decode_s / plain.decode_s:.2f}× the plain run's time: its per-expert loop (kept in the eager "
        f"implementation's order so that outputs stay identical) against the plain run's grouped kernel."
    )
    if device.type != "cuda":
        lines.append(
            "\nNo GPU was available for this run: copies are host-to-host and synchronous, so prefetching cannot "
            "overlap compute here. The issue's target (within 1.5× of the transfer bound, faster than `lru` at "
            "equal memory, on a CUDA GPU) is not measured by these numbers."
        )
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("offload", text)


def _expert_bytes(folder: Path, dtype: str) -> int:
    from moetrace.models.adapters import find_moe_blocks
    from moetrace.models.loading import load_model

    return find_moe_blocks(load_model(str(folder), device="cpu", dtype=dtype).model)[0].expert_bytes


def _gib(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**30:.2f} GiB"


if __name__ == "__main__":
    main()
