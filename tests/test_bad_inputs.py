"""Bad inputs: one red line and a non-zero exit, before any long work starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import save_tiny_model
from typer.testing import CliRunner

from moetrace.cli.app import app

EXAMPLES = Path(__file__).resolve().parents[1] / "traces" / "examples"


def run(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_error_line(result, contains: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and contains in lines[0], lines[0]


@pytest.fixture
def no_demo_build(monkeypatch):  # type: ignore[no-untyped-def]
    """Fail the test if a command starts building the demo model."""
    import moetrace.cli.common

    def refuse() -> None:
        raise AssertionError("the demo model was built before the options were checked")

    monkeypatch.setattr(moetrace.cli.common, "ensure_demo_model", refuse)


def test_predict_load_bad_phase() -> None:
    assert_one_error_line(run("predict", "load", EXAMPLES / "train", "--phase", "bogus"), "--phase")


def test_predict_bad_method() -> None:
    assert_one_error_line(run("predict", "load", EXAMPLES / "train", "--method", "bogus"), "bogus")
    assert_one_error_line(run("predict", "path", EXAMPLES / "generate", "--method", "bogus"), "bogus")


def test_inspect_negative_hottest() -> None:
    assert_one_error_line(run("inspect", EXAMPLES / "generate", "--hottest", -1), "--hottest")


def test_simulate_batch_size_needs_token_order() -> None:
    started = time.perf_counter()
    result = run("simulate", EXAMPLES / "generate", "--order", "step", "--batch-size", 4)
    assert_one_error_line(result, "--order token")
    assert time.perf_counter() - started < 5, "refused only after the replay"


@pytest.mark.parametrize("command", [["record"], ["record", "--train"], ["run"]])
@pytest.mark.parametrize(("option", "value"), [("--device", "tpu"), ("--dtype", "int7")])
def test_bad_device_or_dtype_before_the_demo_model(command, option, value, no_demo_build, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = ["--out", tmp_path / "T"] if command[0] == "record" else []
    assert_one_error_line(run(*command, option, value, *out), option)
    assert not (tmp_path / "T").exists()


def test_missing_prompts_or_data_before_the_demo_model(no_demo_build, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert_one_error_line(run("record", "--prompts", tmp_path / "none.txt", "--out", tmp_path / "T"), "none.txt")
    assert_one_error_line(
        run("record", "--train", "--data", tmp_path / "none.txt", "--out", tmp_path / "T"), "none.txt"
    )


def test_run_bad_policy_before_the_demo_model(no_demo_build) -> None:  # type: ignore[no-untyped-def]
    assert_one_error_line(run("run", "--offload", "--capacity", 4, "--policy", "nope"), "nope")


def test_simulate_policy_help_comes_from_the_registry() -> None:
    from moetrace.sim.policies import registered

    result = CliRunner().invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for policy in registered():
        assert f"{policy.name}:" in result.stdout, policy.name


@pytest.mark.slow  # a subprocess that loads torch and transformers, then is killed mid-run
def test_force_keeps_the_old_trace_until_the_new_one_is_complete(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = save_tiny_model("mixtral", tmp_path / "model")
    short = tmp_path / "short.txt"
    short.write_text("one prompt\n")
    out = tmp_path / "T"
    result = run("record", "--model", model, "--prompts", short, "--max-new-tokens", 2, "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    before = json.loads((out / "meta.json").read_text())

    many = tmp_path / "many.txt"
    many.write_text("".join(f"prompt number {i} about experts and routing\n" for i in range(400)))
    command = [sys.executable, "-m", "moetrace.cli.app", "record", "--model", str(model), "--prompts", str(many),
               "--max-new-tokens", "200", "--batch-size", "1", "--device", "cpu", "--out", str(out), "--force"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    staging = out.with_name(f".{out.name}.moetrace-partial")
    deadline = time.monotonic() + 120
    try:
        while not (staging / "meta.json").is_file():  # the new recording has started
            assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the new recording did not start in time"
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    assert json.loads((out / "meta.json").read_text()) == before
    result = run("inspect", out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sequences"] == 1

    # the next --force run replaces it, and leaves no staging directory behind
    result = run("record", "--model", model, "--prompts", short, "--max-new-tokens", 3, "--device", "cpu", "--out", out,
                 "--force")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((out / "meta.json").read_text())["run"]["max_new_tokens"] == 3
    assert not staging.exists()
