"""What every command shares: the console, error handling, option types."""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

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


TraceArg = Annotated[
    Path, typer.Argument(help="A trace directory (made by `moetrace record` or `moetrace import`).", show_default=False)
]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output trace directory.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing trace at --out.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
Device = Annotated[str, typer.Option(help="cpu, cuda or auto (cuda when torch sees a GPU).")]
Dtype = Annotated[
    str, typer.Option(help="auto (float32 on CPU, the checkpoint's dtype on GPU), float32, bfloat16, float16, float64.")
]
Seed = Annotated[int, typer.Option(help="Random seed.")]
TrustRemoteCode = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow a hub model's own Python code to run.")
]


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
