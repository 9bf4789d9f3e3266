"""What every command shares: the console, error handling, parsing of option values, JSON output.

The shared options themselves are in `moetrace.cli.options`."""

from __future__ import annotations

import functools
import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def handle_errors(command: F) -> F:
    """Turn library errors into one red line and exit code 1; show warnings as one yellow line each."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from moetrace.errors import MoetraceError

        def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)

        previous = warnings.showwarning
        warnings.showwarning = show
        try:
            return command(*args, **kwargs)
        except MoetraceError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted") from None
        finally:
            warnings.showwarning = previous

    return wrapper  # type: ignore[return-value]


_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_names(text: str) -> tuple[str, ...]:
    """'lru, fifo,,lfu' -> ('lru', 'fifo', 'lfu')."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """'1,2, 4' -> (1, 2, 4); one error line naming `option` for anything else."""
    from moetrace.errors import InvalidArgumentError

    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InvalidArgumentError(f"{option} takes comma-separated integers, got {text!r}") from None


def parse_size(text: str, option: str, per_second: bool = False) -> float:
    """'25GB/s', '8GiB', '17000000' -> a number of bytes (per second)."""
    from moetrace.errors import InvalidArgumentError

    match = re.fullmatch(r"\s*([0-9.]+(?:e[-+]?\d+)?)\s*([kmgt]i?)?b?(/s)?\s*", text.lower())
    if match is None or (match.group(3) and not per_second):
        raise InvalidArgumentError(f"{option} takes a size such as {'25GB/s' if per_second else '8GiB'}, got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


def parse_seconds(text: str, option: str) -> float:
    """'1.5ms', '20us', '0.002' -> seconds."""
    from moetrace.errors import InvalidArgumentError

    match = re.fullmatch(r"\s*([0-9.]+(?:e[-+]?\d+)?)\s*(s|ms|us|µs)?\s*", text)
    if match is None:
        raise InvalidArgumentError(f"{option} takes a time such as 1.5ms, got {text!r}")
    return float(match.group(1)) * {"s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, None: 1}[match.group(2)]


def ensure_demo_model() -> None:
    """Build the demo model with a progress bar if it is not cached yet (commands that default to it call this
    once every option has been checked)."""
    from moetrace.cli.progress import TrainProgress
    from moetrace.demo.build import build_demo_model
    from moetrace.models.demo_model import DemoSpec, is_built

    if is_built():
        return
    console.print(
        f"[bold]·[/bold] building the demo model once: {DemoSpec().steps} training steps on Python's own documentation "
        "and standard library (a few minutes on a CPU; cached afterwards)"
    )
    with TrainProgress("building demo model") as progress:
        build_demo_model(progress=progress.update, say=lambda s: console.print(f"[bold]·[/bold] {s}"))


def json_safe(value: Any) -> Any:
    """NaN and infinities become null, tuples lists: what strict JSON readers accept."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def print_json(data: dict[str, Any]) -> None:
    """The `--json` output: one strict JSON object on stdout."""
    print(json.dumps(json_safe(data), allow_nan=False))


def print_written(*files: tuple[Path | None, str]) -> None:
    """A line per file the command wrote (`figure → path`), skipping those not asked for."""
    for path, what in files:
        if path is not None:
            console.print(f"{what} → [bold]{path}[/bold]")
