"""The command line: wiring, output, and one clear line for each bad input."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_models import save_tiny_model
from typer.testing import CliRunner

from moetrace.cli.app import app


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_error_line(result, contains: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code != 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and contains in lines[0], lines[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):  # type: ignore[no-untyped-def]
    return save_tiny_model("mixtral", tmp_path_factory.mktemp("models") / "tiny-mixtral")


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("The cat sat on the mat.\n\nA much longer prompt about experts and routing.\nHi\n")
    return path


def test_record_then_inspect(model_dir, prompts_file, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "T"
    result = run(
        "record",
        "--model",
        model_dir,
        "--prompts",
        prompts_file,
        "--max-new-tokens",
        8,
        "--out",
        out,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "recorded" in result.stdout
    result = run("inspect", out)
    assert result.exit_code == 0, result.output
    assert "temporal locality" in result.stdout and "per layer" in result.stdout
    result = run("inspect", out, "--json", "--plot", tmp_path / "load.png")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["sequences"] == 3  # the blank line is not a prompt
    assert summary["num_experts"] == 4 and summary["top_k"] == 2
    assert [layer["layer"] for layer in summary["layers"]] == [0, 1]
    assert (tmp_path / "load.png").read_bytes()[:4] == b"\x89PNG"


def test_record_jsonl_prompts(model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "one"}\n{"text": "two", "id": 2}\n')
    result = run("record", "--model", model_dir, "--prompts", prompts, "--max-new-tokens", 2, "--out", tmp_path / "T")
    assert result.exit_code == 0, result.output


def test_import_then_inspect(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "routes.parquet"
    pq.write_table(
        pa.table(
            {
                "seq_id": [0, 0, 0, 0],
                "pos": [0, 0, 1, 1],
                "layer": [1, 2, 1, 2],
                "experts": [[0, 1], [2, 3], [1, 2], [3, 0]],
            }
        ),
        src,
    )
    result = run("import", src, "--out", tmp_path / "T")
    assert result.exit_code == 0, result.output
    assert "imported 4 rows" in result.stdout
    assert run("inspect", tmp_path / "T", "--json").exit_code == 0


def test_missing_model_path(prompts_file, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run("record", "--model", tmp_path / "no-such-model", "--prompts", prompts_file, "--out", tmp_path / "T")
    assert_one_error_line(result, "does not exist")
    assert not (tmp_path / "T").exists()


def test_non_moe_model(prompts_file, tmp_path) -> None:  # type: ignore[no-untyped-def]
    llama = save_tiny_model("llama", tmp_path / "llama")
    result = run("record", "--model", llama, "--prompts", prompts_file, "--out", tmp_path / "T")
    assert_one_error_line(result, "no MoE layers")
    assert not (tmp_path / "T").exists()


def test_empty_prompts_file(model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    result = run("record", "--model", model_dir, "--prompts", empty, "--out", tmp_path / "T")
    assert_one_error_line(result, "holds no prompts")


def test_existing_output_directory_is_not_touched(model_dir, prompts_file, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "T"
    out.mkdir()
    (out / "results.csv").write_text("precious")
    result = run("record", "--model", model_dir, "--prompts", prompts_file, "--out", out)
    assert_one_error_line(result, "already exists")
    result = run("record", "--model", model_dir, "--prompts", prompts_file, "--out", out, "--force")
    assert_one_error_line(result, "not a moetrace trace")
    assert [p.name for p in out.iterdir()] == ["results.csv"]
    assert (out / "results.csv").read_text() == "precious"


def test_corrupt_parquet_given_to_inspect(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = tmp_path / "T"
    (trace / "routes").mkdir(parents=True)
    (trace / "meta.json").write_text(
        '{"schema_version": 1, "model": {"num_experts": 4, "top_k": 2, "moe_layers": [0]}}'
    )
    (trace / "routes" / "part-00000.parquet").write_bytes(b"PAR1garbagePAR1")
    assert_one_error_line(run("inspect", trace), "not a readable Parquet file")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"garbage")
    assert_one_error_line(run("inspect", bad), "not a moetrace trace directory")


def test_foreign_parquet_given_to_inspect(tmp_path) -> None:  # type: ignore[no-untyped-def]
    foreign = tmp_path / "sales.parquet"
    pq.write_table(pa.table({"region": ["north"], "revenue": [1.5]}), foreign)
    assert_one_error_line(run("inspect", foreign), "moetrace import")
    trace = tmp_path / "T"
    (trace / "routes").mkdir(parents=True)
    (trace / "meta.json").write_text(
        '{"schema_version": 1, "model": {"num_experts": 4, "top_k": 2, "moe_layers": [0]}}'
    )
    pq.write_table(pa.table({"region": ["north"], "revenue": [1.5]}), trace / "routes" / "part-00000.parquet")
    assert_one_error_line(run("inspect", trace), "required column 'seq_id'")


def test_bad_option_values(model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert_one_error_line(
        run("record", "--model", model_dir, "--batch-size", 0, "--out", tmp_path / "T"), "--batch-size"
    )
    assert_one_error_line(run("record", "--model", model_dir, "--device", "tpu", "--out", tmp_path / "T"), "--device")
    assert not (tmp_path / "T").exists()


def test_every_command_has_help() -> None:
    for command in ("record", "inspect", "import", "demo"):
        result = run(command, "--help")
        assert result.exit_code == 0 and "Usage" in result.stdout
