"""Command line: ``python -m slas_jax.experiments --config configs/experiments/<name>.py [--max-minutes M]
[--start-within S] [--parallel N] [--report-only] [--allow-changed-grid] [--config.out=DIR]``.

Runs a grid of training runs (method x gamma x seed x backbone x model size x learning rate, as the grid
config says: :mod:`slas_jax.experiments.grid`), one folder per cell under ``config.out``, each cell the
training CLI in its own process, then writes ``report.md`` with its plots from the run folders (into
``config.report_dir``, default ``config.out``); each sitting is logged in ``<out>/sittings.jsonl``.
Rerun the same command to continue: finished cells are kept, half-done ones resume from their checkpoints.
``--max-minutes`` stops starting cells after the budget and stops the running ones cleanly (they
checkpoint), so a long grid is worked off in several sittings; Ctrl-C does the same (twice: kill them).
``--start-within`` starts cells only in the sitting's first S minutes and lets the running ones finish, so
that a sitting ends between cells (a machine that does not outlive the sitting keeps no half-done cell).
The grid's cells are written to ``<out>/grid.json`` on the first run; a later run of a changed grid is
refused unless ``--allow-changed-grid``. ``--report-only`` writes the report from what is there.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from absl import flags

from slas_jax.cli import Command, Parsed
from slas_jax.errors import UserError
from slas_jax.experiments import report
from slas_jax.experiments.grid import check_record, expand, grid_record
from slas_jax.experiments.runner import CACHE, Runner, grid_lock, plan_cells


def define_flags(values: flags.FlagValues) -> None:
    """The experiments command's own flags."""
    flags.DEFINE_float(
        "max-minutes",
        None,
        "Budget of this sitting in minutes (none: until the grid is done).",
        flag_values=values,
    )
    flags.DEFINE_float(
        "start-within",
        None,
        "Start cells only in the first S minutes of this sitting; the running ones then finish.",
        flag_values=values,
    )
    flags.DEFINE_integer("parallel", 1, "Cells running at once, each in its own process.", flag_values=values)
    flags.DEFINE_bool(
        "report-only", False, "Run nothing; write the report from the run folders.", flag_values=values
    )
    flags.DEFINE_bool(
        "allow-changed-grid",
        False,
        "Continue a grid whose cells changed since grid.json.",
        flag_values=values,
    )
    flags.DEFINE_bool("progress", True, "Show the progress bar over the grid.", flag_values=values)


CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
"""The cells share the grid's compilation cache unless the environment names one."""

COMMAND = Command(
    "experiments", __doc__, config_hint="configs/experiments/<name>.py", define_flags=define_flags
)


def parse_cell_config(argv: list[str]) -> object:
    """Train CLI argv -> validated Config (the train command's own parser; imported here, not at start, so
    that ``--help`` stays quick)."""
    from slas_jax.train import parse_config

    return parse_config(argv)


def experiments_command(parsed: Parsed, argv: list[str]) -> str:
    """The command's body: grid config -> cells -> (run) -> report -> summary line."""
    grid = parsed.config.to_dict()
    if not grid.get("out"):
        raise UserError("config.out: name the grid's folder, e.g. runs/experiments/<name>")
    out = Path(grid["out"])
    cells = expand(grid)
    plans = plan_cells(cells, out, parse_cell_config, final_eval=bool(grid.get("final_eval", True)))
    flag = parsed.flags
    summary = ""
    if not flag["report-only"].value:
        started, commit = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), report.git_commit()
        with grid_lock(out):
            check_record(out, grid_record(grid, cells), flag["allow-changed-grid"].value)
            runner = Runner(
                plans,
                parallel=flag["parallel"].value,
                max_minutes=flag["max-minutes"].value,
                start_within=flag["start-within"].value,
                env=None if CACHE_VARIABLE in os.environ else {CACHE_VARIABLE: str((out / CACHE).absolute())},
            )
            outcome = runner.run(progress=flag["progress"].value)
        summary = (
            f"{outcome.done} of {outcome.total} cells done ({outcome.finished_now} in this sitting of "
            f"{outcome.seconds / 60:.1f} min, {outcome.half} half done)"
        )
        if outcome.stopped:
            summary = f"{outcome.stopped}: {summary}; rerun the same command to continue"
    command = shlex.join(["python", "-m", *argv])
    if not flag["report-only"].value:
        report.record_sitting(
            out,
            command,
            {
                "commit": commit,
                "started": started,
                "minutes": round(outcome.seconds / 60, 2),
                "finished": outcome.finished_now,
            },
        )
    report_dir = Path(grid["report_dir"]) if grid.get("report_dir") else None
    written = report.write_report(out, plans, grid.get("report") or {}, command, report_dir)
    if not flag["report-only"].value and outcome.failed:
        name, line = next(iter(outcome.failed.items()))
        raise UserError(
            f"{len(outcome.failed)} of {outcome.total} cells failed (first: {name}, {line}); see "
            f"{out / name / 'train.log'}; rerun to retry them (report so far in {written})"
        )
    return f"done: {summary + '; ' if summary else ''}report in {written}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    return COMMAND.main(
        lambda parsed: experiments_command(parsed, [COMMAND.prog.split()[-1], *argv[1:]]), argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
