"""The CLI reference in docs/cli.md, generated from the commands themselves (a test keeps it current).

python -m moetrace.cli.reference > docs/cli.md
"""

from __future__ import annotations

from typing import Any

import typer


def cli_reference() -> str:
    from moetrace.cli.app import app

    group: Any = typer.main.get_command(app)
    lines = [
        "# CLI reference",
        "",
        "Generated from the commands by `python -m moetrace.cli.reference > docs/cli.md`; "
        "`tests/test_docs.py` fails when it is out of date. `moetrace COMMAND --help` shows the same.",
        "",
    ]
    for name, command in group.commands.items():
        lines += _command(name, command)
    return "\n".join(lines).rstrip() + "\n"


def _command(name: str, command: Any) -> list[str]:
    from moetrace.cli.options import fill_registry_help

    fill_registry_help(command)
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    usage = " ".join(["moetrace", name, *(p.name.upper() for p in arguments), "[OPTIONS]"])
    out = [f"## `moetrace {name}`", "", (command.help or "").strip(), "", f"```\n{usage}\n```", ""]
    out += ["| argument / option | default | meaning |", "| --- | --- | --- |"]
    for param in command.params:
        paragraphs = (getattr(param, "help", None) or "").split("\n\n")
        help_text = "<br>".join(" ".join(p.split()) for p in paragraphs).replace("|", "\\|").replace("\\[", "[")
        if param.param_type_name == "argument":
            out.append(f"| `{param.name.upper()}` | | {help_text} |")
            continue
        names = ", ".join(f"`{n}`" for n in param.opts + param.secondary_opts)
        label = names if param.is_flag else f"{names} {param.bare_type().upper()}"
        default = "" if param.default is None or param.is_flag else f"`{param.default}`"
        out.append(f"| {label} | {default} | {help_text} |")
    out.append("")
    return out


if __name__ == "__main__":
    print(cli_reference(), end="")
