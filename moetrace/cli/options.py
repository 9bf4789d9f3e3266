"""Options that several commands share, defined once as `Annotated` aliases.

The `--policy` help lists the policy registry's own names and rules. The registry imports numba, so
it is read only when help is shown (`RegistryCommand`), never on an ordinary invocation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

POLICY_HELP = "{policy_help}"
"""Stands in an option's help for the registry's list of policies until help is shown."""

TraceArg = Annotated[
    Path, typer.Argument(help="A trace directory (made by `moetrace record` or `moetrace import`).", show_default=False)
]
OutDir = Annotated[
    Path, typer.Option("--out", "-o", help="Output trace directory (absent or empty; --force replaces a trace there).")
]
Force = Annotated[
    bool,
    typer.Option(
        "--force", help="Replace an existing trace at --out (the old one stays until the new one is complete)."
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
Plot = Annotated[Path | None, typer.Option(help="Write a PNG figure here.")]
Model = Annotated[str | None, typer.Option(help="Hub id or local folder; the built-in demo model when omitted.")]
Prompts = Annotated[
    Path | None,
    typer.Option(help=".txt (one prompt per line) or .jsonl (field prompt or text); built-in prompts when omitted."),
]
Device = Annotated[str, typer.Option(help="cpu, cuda (or cuda:N) or auto (cuda when torch sees a GPU).")]
Dtype = Annotated[
    str, typer.Option(help="auto (float32 on CPU, the checkpoint's dtype on GPU), float32, bfloat16, float16, float64.")
]
Seed = Annotated[int, typer.Option(help="Random seed.")]
TrustRemoteCode = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow a hub model's own Python code to run.")
]
Capacity = Annotated[
    str, typer.Option(help="Experts cached per layer (comma-separated for a sweep), or in all with --pool.")
]
Pool = Annotated[bool, typer.Option("--pool", help="One cache shared by all layers (capacity counts all its slots).")]
GpuMemory = Annotated[
    str | None,
    typer.Option(
        help="Instead of --capacity: device memory for experts, e.g. 8GiB, divided by the size of one expert."
    ),
]
Predictor = Annotated[
    Path | None,
    typer.Option(help="A path predictor saved by `moetrace predict path --save` (for lru+markov, lru+mlp)."),
]
PrefetchBudget = Annotated[int | None, typer.Option(help="Experts prefetched per layer at most.")]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="ADDRESS",
        help="Run the independent jobs on the Ray cluster at ADDRESS (host:port, ray://host:port or auto); "
        "`local` starts a Ray instance on this machine. Needs the ray extra: pip install 'moetrace\\[ray]'.",
        show_default=False,
    ),
]
Policies = Annotated[
    str, typer.Option("--policy", help=f"Comma-separated cache policies, or all.\n\n{POLICY_HELP}", show_default=True)
]
LivePolicy = Annotated[
    str,
    typer.Option(
        "--policy",
        help=f"Cache policy of the live run: an online policy, optionally +pregate, +markov or +mlp (with --predictor).\n\n{POLICY_HELP}",
    ),
]


def policy_help() -> str:
    """The registry's one line per policy (the cache engineer's `policy_help()`), as help paragraphs."""
    from moetrace.sim import policies

    lines = getattr(policies, "policy_help", None)
    if lines is None:  # an older registry: its names only
        names = getattr(policies, "policy_names", lambda: [p.name for p in policies.registered()])
        return "known: " + ", ".join(names())
    return "\n\n".join(line for line in lines().splitlines() if line.strip())


def fill_registry_help(command: Any) -> None:
    """Put the registry's policy list where an option's help holds `POLICY_HELP`."""
    for param in getattr(command, "params", ()):
        if isinstance(getattr(param, "help", None), str) and POLICY_HELP in param.help:
            param.help = param.help.replace(POLICY_HELP, policy_help())


class RegistryCommand(TyperCommand):
    """A command whose `--help` reads the policy registry (only then)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        fill_registry_help(self)
        super().format_help(ctx, formatter)
