"""The docs that can be checked are checked."""

from __future__ import annotations

from pathlib import Path

from moetrace.cli.reference import cli_reference
from moetrace.trace.schema import LOAD_COLUMNS, ROUTE_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current() -> None:
    assert (ROOT / "docs" / "cli.md").read_text() == cli_reference(), (
        "docs/cli.md is out of date: python -m moetrace.cli.reference > docs/cli.md"
    )


def test_trace_format_doc_names_every_column() -> None:
    text = (ROOT / "docs" / "trace-format.md").read_text()
    for column in ROUTE_COLUMNS + LOAD_COLUMNS:
        assert f"| `{column.name}` |" in text, column.name


def test_readme_gives_the_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
