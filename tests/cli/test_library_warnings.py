"""Libraries' warnings are counted into one finding each instead of burying the progress on stderr;
`--verbose` shows them as they come."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
from typer.testing import CliRunner

from modelshrink.cli import app

NOISE = "a library's notice that repeats on every call"
FORGED = "a notice naming a layer \x1b[2J\x1b]0;pwned\x07 from the model"


def noisy_metric(model, loader) -> dict[str, float]:
    """A user's metric whose libraries warn on every call, as torch.ao and NNCF do."""
    for _ in range(40):
        warnings.warn(NOISE, UserWarning, stacklevel=1)
        logging.getLogger("somelibrary.module").warning("a logged notice")
    warnings.warn(FORGED, UserWarning, stacklevel=1)
    logging.getLogger("somelibrary.module").warning("logged: %s", FORGED)
    return {"noisy": 1.0}


def test_library_warnings_become_one_finding_each_and_verbose_shows_them(recipe_file, caplog) -> None:
    recipe = recipe_file(evaluate={"metrics": ["tests.cli.test_library_warnings:noisy_metric"],
                                   "latency": {"batch_size": 2, "warmup": 0, "iterations": 2}})  # fmt: skip
    result = CliRunner().invoke(app, ["run", str(recipe), "--json"])
    assert result.exit_code == 0, result.stderr
    assert NOISE not in result.stderr and "a logged notice" not in result.stderr
    findings = json.loads(result.stdout)["findings"]
    assert f"UserWarning warned 80 times (--verbose shows them): {NOISE}" in findings  # baseline and the stage
    assert "somelibrary (warning) warned 80 times (--verbose shows them): a logged notice" in findings
    assert len(result.stderr.splitlines()) <= 30
    assert not [r for r in caplog.records if r.name.startswith("somelibrary")], "nothing reached the log handlers"

    shown = CliRunner().invoke(app, ["run", str(recipe), "--force", "--verbose"])
    assert shown.exit_code == 0, shown.stderr
    assert shown.stderr.count(f"UserWarning: {NOISE}") == 80
    assert len([r for r in caplog.records if r.name.startswith("somelibrary")]) == 82  # the log handlers there were


def test_verbose_shows_a_librarys_warnings_inert(recipe_file, capsys) -> None:
    recipe = recipe_file(evaluate={"metrics": ["tests.cli.test_library_warnings:noisy_metric"],
                                   "latency": {"batch_size": 2, "warmup": 0, "iterations": 2}})  # fmt: skip
    shown = CliRunner().invoke(app, ["run", str(recipe), "--verbose"])
    assert shown.exit_code == 0, shown.stderr
    everything = shown.stderr + shown.stdout + capsys.readouterr().err
    assert "\x1b" not in everything and "\x07" not in everything, "no escape sequence reaches the terminal"
    assert "a notice naming a layer \\x1b[2J" in shown.stderr, "shown visibly instead"
    assert "logged: a notice naming a layer \\x1b[2J" in everything


def chatty_metric(model, loader) -> dict[str, float]:
    print("epoch 1/1 done, loss 0.25")  # a user's code that prints, as research code does
    return {"chatty": 1.0}


def test_json_output_is_the_report_alone_while_the_users_code_prints(recipe_file) -> None:
    recipe = recipe_file(evaluate={"metrics": ["tests.cli.test_library_warnings:chatty_metric"],
                                   "latency": {"batch_size": 2, "warmup": 0, "iterations": 2}})  # fmt: skip
    result = CliRunner().invoke(app, ["run", str(recipe), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["final"]["custom"]["chatty"] == 1.0, "stdout parses as report.json"
    assert "epoch 1/1 done" in result.stderr, "what the user printed is still shown"


@pytest.mark.slow
def test_a_static_int8_run_with_exports_writes_at_most_30_lines_to_stderr(recipe_file) -> None:
    """Issue #25: one such run printed 365 lines of library warnings around 10 lines of progress. Whatever
    the libraries say in this run, plus a metric whose libraries warn on every call (for each model and
    export), is summed up."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    recipe = recipe_file(
        model={"factory": "modelshrink.models.zoo:small_cnn", "kwargs": {"in_channels": 1, "width": 8}},
        stages=[{"kind": "quantize", "mode": "static", "calibration_batches": 2}],
        export=[{"format": "onnx", "quantize": "static"}, {"format": "openvino", "quantize": "int8"}],
        evaluate={"metrics": ["tests.cli.test_library_warnings:noisy_metric"],
                  "latency": {"batch_size": 2, "warmup": 0, "iterations": 2}},
    )  # fmt: skip
    result = CliRunner().invoke(app, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    assert len(result.stderr.splitlines()) <= 30, result.stderr
    findings = [line for line in result.stderr.splitlines() if "warned" in line]
    assert all("(--verbose shows them)" in line for line in findings), "each library's warnings summed up"
