"""The `modelshrink` command: thin Typer wrappers over the public API; the only place exit codes live.

Exit codes: 0 ok, 1 a recipe constraint failed (reports written), 2 bad input (nothing written),
3 an internal error (a bug of ours; nothing written; `--debug` shows the traceback).
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Annotated, Any

import typer

import modelshrink
from modelshrink.errors import ConstraintFailed, UserError, first_line
from modelshrink.outputs import Interrupted

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Make PyTorch models smaller and faster from a YAML recipe, and prove it with numbers.",
)
INTERNAL_ERROR = 3
_debug = False


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an internal error.")] = False,
) -> None:
    global _debug
    _debug = debug
    from modelshrink.quiet import hide_import_notices

    hide_import_notices()


SetOption = Annotated[
    list[str],
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a recipe key, e.g. --set model.checkpoint=x.pt or --set stages[0].amount=0.3 (repeatable).",
    ),
]
TrustOption = Annotated[
    list[str],
    typer.Option(
        "--trust",
        metavar="MODULE",
        help="Let a checkpoint's factory from this module run (imports and runs its code; repeatable).",
    ),
]


VerboseOption = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show libraries' warnings as they come (else counted in findings).")
]


@contextmanager
def _exit_codes(verbose: bool = False) -> Iterator[None]:
    """Exit codes from exceptions (one place for every command), and libraries' warnings counted rather
    than printed (`quiet.collected`): what no report took is summarized in `note:` lines on stderr."""
    from modelshrink.quiet import collected

    with collected(show=verbose) as notices:
        try:
            with _errors_to_exit_codes():
                yield
        except typer.Exit as exc:
            if exc.exit_code == ConstraintFailed.exit_code:  # an error is one line: no notes after it
                _notes(notices.take())
            raise
        _notes(notices.take())


@contextmanager
def _errors_to_exit_codes() -> Iterator[None]:
    try:
        yield
    except UserError as exc:
        for problem in exc.problems:
            _error(problem)
        raise typer.Exit(UserError.exit_code) from None
    except ConstraintFailed as exc:
        _error(str(exc))
        raise typer.Exit(ConstraintFailed.exit_code) from None
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM while outputs are claimed (`outputs.Interrupted`)
        code = 128 + (signal.SIGTERM if isinstance(exc, Interrupted) else signal.SIGINT)
        _error("interrupted: nothing was written (a run keeps its progress for --resume)")
        raise typer.Exit(code) from None
    except Exception as exc:  # a bug of ours: exit 1 must keep meaning "a gate failed"
        if _debug:
            traceback.print_exc()
        first = first_line(exc, default="")
        _error(f"internal error, please report it: {type(exc).__name__}: {first} (--debug shows the traceback)")
        raise typer.Exit(INTERNAL_ERROR) from None


def _say(message: str) -> None:
    """A command's one line of result on stdout; it names paths and stages from inputs, shown inert."""
    from modelshrink import escape

    print(escape.text(message, newlines=False))


def _notes(messages: list[str]) -> None:
    from modelshrink import escape

    if os.environ.get("RANK", "0") == "0":
        for message in messages:
            print(f"note: {escape.text(message, newlines=False)}", file=sys.stderr)


def _error(message: str) -> None:
    """One `error: ` line on stderr for one problem; messages embed paths and names from inputs, shown inert
    (`escape.text`, and a line break as `\\n`, so that a name cannot forge a line of its own)."""
    from modelshrink import escape

    if os.environ.get("RANK", "0") != "0":  # every rank of a multi-process run hits the same error: say it once
        return
    shown = escape.text(message).replace("\r", "\\r").replace("\n", "\\n")  # one line, however a name reads
    print(f"error: {shown}", file=sys.stderr)


@app.command()
def run(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML file.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output directory (overrides output.dir).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run of this recipe.")] = False,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Train with DDP in N processes on this machine.")] = 1,
    overrides: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json to stdout and nothing else.")] = False,
    trust: TrustOption = None,
    compare_to: Annotated[
        Path | None,
        typer.Option(
            "--compare-to",
            metavar="REPORT",
            help="Gate regressions against an earlier report.json "
            "(in place of constraints.compare_to; the recipe's max_regression says how much worse may pass).",
        ),
    ] = None,
    junit: Annotated[
        Path | None, typer.Option("--junit", metavar="FILE", help="Also write the gates as JUnit XML to FILE.")
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Compress a model as the recipe says; write the checkpoint, report.json and report.md."""
    if nproc > 1:
        from modelshrink.distributed import launch_local

        raise typer.Exit(launch_local(nproc, _command_line(ctx, without="nproc")))
    with _exit_codes(verbose):
        try:
            with _prints_to_stderr(as_json):
                report = modelshrink.run_recipe(
                    recipe, output_dir=output, force=force, resume=resume, overrides=overrides or [],
                    trust=trust or [], junit=junit, verbose=verbose, compare_to=compare_to,
                )  # fmt: skip
        except ConstraintFailed as exc:
            _print_report(exc.report, as_json)  # a failed gate still shows (and has written) its numbers
            raise
        if report is not None:  # None on the other ranks of a multi-process run
            _print_report(report, as_json)


def _command_line(ctx: typer.Context, without: str) -> list[str]:
    """This command's arguments, read back from what click parsed: every rank of `--nproc` runs the same
    command, and an option added to the command travels with no code here."""
    arguments, options = [], []
    for param in ctx.command.params:  # typer's own parameter classes: asked by duck type, not isinstance
        value = ctx.params.get(param.name or "")
        if param.name == without or value is None or value is False or value == []:
            continue
        if param.param_type_name == "argument":
            arguments.append(str(value))
        elif getattr(param, "is_flag", False):
            options.append(param.opts[0])
        else:
            options += [item for one in (value if param.multiple else [value]) for item in (param.opts[0], str(one))]
    return [ctx.info_name or "", *arguments, *options]


@contextmanager
def _prints_to_stderr(as_json: bool) -> Iterator[None]:
    """With --json, stdout carries the JSON alone: what the user's code (a factory, a metric) or a library
    prints meanwhile goes to stderr, where it cannot break a `| jq` downstream."""
    if not as_json:
        yield
        return
    with redirect_stdout(sys.stderr):
        yield


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        from modelshrink.report import to_json

        sys.stdout.write(to_json(report))
        return
    from modelshrink.tables import print_report

    print_report(report)


@app.command()
def validate(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML file.")],
    overrides: SetOption = None,
) -> None:
    """Check a recipe without running it (same checks as `run`; every value of a search space for `tune`)."""
    from modelshrink.recipe.parse import parse_raw, read_recipe_text, validate_raw
    from modelshrink.recipe.search import check_values, find_spaces

    with _exit_codes():
        raw = parse_raw(read_recipe_text(recipe), str(recipe), overrides or [])  # the file is read once
        spaces = find_spaces(raw)
        parsed = check_values(raw, spaces) if spaces else validate_raw(raw)
    searched = f"; {len(spaces)} search spaces for `modelshrink tune`" if spaces else ""
    count = f"{len(parsed.stages)} stage{'' if len(parsed.stages) == 1 else 's'}"
    _say(f"{recipe}: ok ({count}: {', '.join(parsed.stage_names()) or 'none'}{searched})")


@app.command()
def schema(
    markdown: Annotated[bool, typer.Option("--markdown", help="The recipes reference page instead.")] = False,
    tune: Annotated[bool, typer.Option("--tune", help="Allow search spaces in stages, as `tune` reads.")] = False,
) -> None:
    """Print the recipe's JSON Schema (for editors: `# yaml-language-server: $schema=...`), or its reference."""
    from modelshrink.recipe import reference

    sys.stdout.write(reference.markdown() if markdown else reference.to_json(searchable=tune))


@app.command()
def compare(
    reports: Annotated[list[Path], typer.Argument(help="Two or more report.json files, oldest first.")],
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(help="Fail (exit 1) when the last report's accuracy is this much below the one before."),
    ] = None,
    max_latency_ratio: Annotated[
        float | None, typer.Option(help="Fail when its batch-1 or batch-N latency is this many times the one before's.")
    ] = None,
    max_size_ratio: Annotated[
        float | None, typer.Option(help="Fail when its checkpoint is this many times bigger.")
    ] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print markdown instead of a table.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", metavar="PNG", help="Draw each metric across runs.")] = None,
    junit: Annotated[Path | None, typer.Option("--junit", metavar="FILE", help="Write the gates as JUnit XML.")] = None,
) -> None:
    """Final metrics of several runs side by side; exit 1 when the last one regresses beyond the limits.

    Latency is noise-aware: two runs whose median-to-p95 bands overlap count as equally fast."""
    from modelshrink import compare as comparing
    from modelshrink.constraints import failures

    flags = {"accuracy": max_accuracy_drop, "latency_b1_ms": max_latency_ratio, "latency_bn_ms": max_latency_ratio,
             "size_bytes": max_size_ratio}  # fmt: skip
    allowed = {name: limit for name, limit in flags.items() if limit is not None}
    with _exit_codes():
        from modelshrink import outputs

        targets = [*([outputs.picture_file(plot)] if plot else []), *([outputs.junit_file(junit)] if junit else [])]
        if plot is not None:
            _check_plots()
        with outputs.claim(targets, [("report", path) for path in reports]) as claim:
            result = comparing.compare(reports, allowed)
            files = {}
            if plot is not None:
                from modelshrink import plots

                files[plot] = plots.trend([comparing.read_report(r) for r in reports], result["labels"])
            if junit is not None:
                from modelshrink.junit import junit_xml

                files[junit] = junit_xml({"recipe": {"name": "compare"}, "constraints": result["regressions"]})
            claim.write(files=files)  # both or neither
    from modelshrink import escape

    for warning in result["warnings"]:
        print(f"warning: {escape.text(warning, newlines=False)}", file=sys.stderr)
    if as_json:
        print(escape.strict_json(result, indent=2, default=str))  # NaN -> null: every parser reads it
    elif markdown:
        sys.stdout.write(comparing.to_markdown(result, plot.name if plot else None))
    else:
        from modelshrink.tables import print_comparison

        print_comparison(result)
    if not result["passed"]:
        _error(f"regression: {failures(result['regressions'])}")
        raise typer.Exit(ConstraintFailed.exit_code)


def _check_plots() -> None:
    from modelshrink import plots

    if not plots.available():
        raise UserError("--plot needs the plots extra: pip install 'modelshrink[plots]'")


@app.command()
def analyze(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML file whose model and data to analyze.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Directory for sensitivity.* (default: <output.dir>_sensitivity)."),
    ] = None,
    budget_s: Annotated[
        float, typer.Option("--budget-s", min=0, help="Seconds after which no new layer starts.")
    ] = 600,
    batches: Annotated[int, typer.Option("--batches", min=1, help="Calibration batches each probe is scored on.")] = 4,
    max_drop: Annotated[
        float, typer.Option("--max-drop", min=0, max=1, help="Drop one layer alone may cost in the suggestions.")
    ] = 0.01,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier analysis in that directory.")] = False,
    overrides: SetOption = None,
    trust: TrustOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Per-layer sensitivity to pruning and quantization, with suggested layer_amounts and exclude lists."""
    from modelshrink.analyze import analyze as run_analysis

    with _exit_codes(verbose):
        out, result = run_analysis(
            recipe, output, overrides=overrides or [], trust=trust or [], budget_s=budget_s, batches=batches,
            max_drop=max_drop, force=force,
        )  # fmt: skip
    left = f"; {len(result['not_measured'])} layers not measured (budget)" if result["not_measured"] else ""
    measured = f"{len(result['layers'])} layers in {result['elapsed_s']} s{left}"
    _say(f"wrote {out}/ (sensitivity.json, sensitivity.md): {measured}")


@app.command()
def tune(
    recipe: Annotated[Path, typer.Argument(help="A recipe with search spaces ({search: [...]}) under stages.")],
    objective: Annotated[
        list[str] | None,
        typer.Option("--objective", help="What to minimize: latency_b1 | latency_bn | size | macs | accuracy_drop; "
                     "repeat it for several (a Pareto front, NSGA-II)."),
    ] = None,
    max_trials: Annotated[int, typer.Option("--max-trials", min=1, help="Candidates to run, by all workers.")] = 20,
    sampler: Annotated[
        str, typer.Option("--sampler", help="auto (grid when it fits in --max-trials, else tpe or nsga2) | tpe | "
                          "nsga2 | grid | random.")
    ] = "auto",
    pruner: Annotated[
        str, typer.Option("--pruner", help="hopeless (stop a candidate that cannot pass the accuracy gate, or that a "
                          "finished one beats on objectives its training cannot change) | gate (the first only) | "
                          "none.")
    ] = "hopeless",
    storage: Annotated[
        str | None, typer.Option("--storage", help="Where the study lives, shared by every worker: a journal file, "
                                 "sqlite:///, postgresql://, mysql:// or redis:// (default: <output>/study.journal).")
    ] = None,
    study: Annotated[str | None, typer.Option("--study", help="The study's name (default: the recipe's name).")] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Processes on this machine, each with its share of the cores.")
    ] = 1,
    worker: Annotated[bool, typer.Option("--worker", hidden=True)] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Directory for the search (default: <output.dir>_tune).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted search in that directory.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over in a directory of an earlier search.")] = False,
    overrides: SetOption = None,
    trust: TrustOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Search the recipe's spaces (Optuna); write tuned.yaml (the best candidate that passes) and run it into best/."""
    from modelshrink.tune import tune as run_tune

    with _exit_codes(verbose):
        summary = run_tune(
            recipe, output, objectives=objective or ["latency_b1"], max_trials=max_trials, sampler=sampler,
            pruner=pruner, storage=storage, study=study, workers=workers, worker=worker, resume=resume, force=force,
            overrides=overrides or [], trust=trust or [],
        )  # fmt: skip
    if summary["best"] is None:
        if not worker:
            ran = summary["ran"]
            _say(f"ran {ran} candidate{'' if ran == 1 else 's'}; another worker of the study writes the winner")
        return
    statuses = [t["status"] for t in summary["trials"]]
    stopped = f", {statuses.count('pruned')} stopped as hopeless" if "pruned" in statuses else ""
    _say(f"best: {summary['best']} ({statuses.count('passed')} of {len(statuses)} candidates passed{stopped})")


@app.command("export")
def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="A modelshrink checkpoint (float, except for pt2).")],
    format: Annotated[str, typer.Option("--format", help="onnx | openvino | pt2")] = "onnx",
    quantize: Annotated[
        str,
        typer.Option("--quantize", help="onnx: none | dynamic | static (ONNX Runtime); openvino: none | int8 (NNCF)"),
    ] = "none",
    data: Annotated[
        Path | None, typer.Option("--data", metavar="RECIPE", help="A recipe whose data calibrates and checks.")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="The file to write.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False,
    trust: TrustOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Export a checkpoint made earlier (ONNX, OpenVINO IR, a .pt2 package), checked against PyTorch."""
    from modelshrink.export.command import export_checkpoint

    with _exit_codes(verbose):
        written = export_checkpoint(
            checkpoint,
            format=format,
            quantize=quantize,
            data_recipe=data,
            output=output,
            force=force,
            trust=trust or [],
        )
    _say(
        f"wrote {written['file']} ({written['size_bytes']:,} bytes); against the PyTorch model: max abs error "
        f"{written['max_abs_error']:.3g}, cosine {written['cosine']:.4f}"
    )


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A modelshrink checkpoint, a state_dict (.pt/.pth) or .safetensors.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the inspection as JSON.")] = False,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Allow full unpickling (trusted files only).")
    ] = False,
    trust: TrustOption = None,
) -> None:
    """Per-layer name, type, shape, dtype, params, sparsity, bytes and bytes stored in the file; totals."""
    with _exit_codes(), _prints_to_stderr(as_json):
        info = modelshrink.inspect(path, allow_pickle=allow_pickle, trust=trust or [])
    if as_json:
        from modelshrink.escape import strict_json

        print(strict_json(info, indent=2))
        return
    from modelshrink.tables import print_inspection

    print_inspection(info)


if __name__ == "__main__":  # pragma: no cover
    app()
