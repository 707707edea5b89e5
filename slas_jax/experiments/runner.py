"""Running a grid's cells: each cell is the real training CLI in its own process (``python -m
slas_jax.train``, its output in ``<cell>/train.log``), so cells run side by side and one crash does not end
the grid, followed for the shapes testbed by the shapes benchmark of its final checkpoint (``python -m
slas_jax.evaluate --benchmark shapes --run_dir <cell>``, per-image scores for the report).

A cell is finished once ``<cell>/done.json`` exists, which is written only after its processes exited 0 with
its metrics reaching ``train.num_steps``; it is never run again. A half-done cell reruns the same command,
which resumes from ``<cell>/checkpoints``. A budget (``max_minutes``) or a signal to the runner stops
starting cells and sends SIGTERM to the running ones, which finish their step, checkpoint and exit (the
train loop's preemption flag). A cell dies with the runner (``PR_SET_PDEATHSIG``: SIGTERM on Linux), so a
killed runner leaves no orphan writing into a folder a later sitting resumes.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from slas_jax.errors import ConfigError, UserError
from slas_jax.experiments.grid import Cell

DONE = "done.json"
PID = "cell.pid"
LOG = "train.log"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
FINAL_EVAL = "final_eval"
LOCK = ".runner.lock"
CACHE = "jax_cache"
"""JAX's persistent compilation cache of a grid, shared by its cells (cells differing only in seed compile
the same program)."""
POLL_S = 0.2
REFRESH_S = 1.0
"""Seconds between re-reads of the run folders for the progress bar."""


@dataclass(frozen=True)
class Plan:
    """A cell with what its config says: ``run_dir`` (its folder), ``config`` (its validated training
    Config), ``num_steps``, and the evaluate CLI's arguments for its final benchmark (empty: none; runs
    without a scorer and fixed sets have none)."""

    cell: Cell
    run_dir: Path
    config: Any
    num_steps: int
    final_eval: tuple[str, ...] = ()

    def commands(self) -> list[tuple[str, list[str]]]:
        """(phase, argv) of each process the cell runs, in order."""
        phases = [("train", [sys.executable, "-m", "slas_jax.train", *self.cell.train_args(self.run_dir)])]
        if self.final_eval:
            phases.append(("final_eval", [sys.executable, "-m", "slas_jax.evaluate", *self.final_eval]))
        return phases


def plan_cells(
    cells: Sequence[Cell], out: Path, parse: Callable[[list[str]], object], final_eval: bool = True
) -> list[Plan]:
    """Each cell's :class:`Plan`; ``parse`` turns train CLI argv into a validated Config (the train CLI's
    own parser), so a bad override stops the grid before anything runs, naming the cell."""
    plans = []
    for cell in cells:
        run_dir = out / cell.name
        try:
            config = parse(["slas_jax.train", *cell.train_args(run_dir)])
        except UserError as e:
            raise ConfigError(f"grid cell {cell.name}: {e}") from e
        if config.train.checkpoint_every < 1:
            raise ConfigError(
                f"grid cell {cell.name}: train.checkpoint_every is 0, so a stopped cell could not resume; add "
                "'train.checkpoint_every=<steps>' to the grid's overrides"
            )
        evaluation = ()
        if final_eval and config.eval.scorer and config.eval.sets:
            evaluation = (
                "--benchmark=shapes",
                *cell.train_args(run_dir),
                f"--out={run_dir / FINAL_EVAL}",
                f"--run_dir={run_dir}",
                f"--num_prompts={config.eval.num_prompts}",
                f"--images_per_prompt={config.eval.samples_per_prompt}",
            )
        plans.append(Plan(cell, run_dir, config, config.train.num_steps, evaluation))
    return plans


def last_logged_step(run_dir: Path) -> int:
    """The last step in ``run_dir/metrics.jsonl`` (-1: none), reading a file a run may be appending to (an
    unfinished last line is skipped)."""
    path = run_dir / METRICS
    if not path.is_file():
        return -1
    last = -1
    for line in path.read_text().splitlines():
        try:
            last = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return last


def attempts(run_dir: Path) -> list[tuple[str, str]]:
    """(phase, output) of each process the runner started for a cell, oldest first: the sections of its
    train.log, each under a ``=== <date> <time> <phase>: <argv>`` line."""
    path = run_dir / LOG
    if not path.is_file():
        return []
    found = []
    for part in path.read_text().split("\n=== ")[1:]:
        header, _, output = part.partition("\n")
        found.append((header.split(" ")[2].rstrip(":"), output))
    return found


def is_done(plan: Plan) -> bool:
    return (plan.run_dir / DONE).is_file()


def steps_done(plan: Plan) -> int:
    """Training steps the cell has logged (all of them once done)."""
    return plan.num_steps if is_done(plan) else min(last_logged_step(plan.run_dir) + 1, plan.num_steps)


def trained(plan: Plan) -> bool:
    """Whether the cell's metrics reached its last step and its final train state is saved (Orbax names a
    committed checkpoint folder by its step; one still being written has a longer name)."""
    final = plan.run_dir / CHECKPOINTS / str(plan.num_steps)
    return last_logged_step(plan.run_dir) >= plan.num_steps - 1 and final.is_dir()


def _die_with_parent() -> None:
    """In the child before exec: its own session (the runner's terminal signals do not reach it; the runner
    forwards them as SIGTERM) and SIGTERM when the runner dies."""
    os.setsid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Job:
    """A cell's running process: ``phase`` of ``plan``, its ``process`` and open log."""

    plan: Plan
    phase: str
    process: subprocess.Popen
    log: IO[str]
    started: float = field(default_factory=time.monotonic)


@dataclass
class Outcome:
    """What one sitting did: cells finished (in all, and in this sitting), half done, failed (name -> the
    last line of its log), and why it stopped early (None: it worked the grid off)."""

    total: int
    done: int = 0
    finished_now: int = 0
    half: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    stopped: str | None = None
    seconds: float = 0.0


@contextmanager
def grid_lock(out: Path) -> Iterator[None]:
    """One runner per grid folder: UserError when another process holds ``out/.runner.lock`` (released by
    the kernel when its holder dies, however)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / LOCK).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            handle.seek(0)
            raise UserError(
                f"another runner is working on {out} (pid {handle.read().strip() or '?'}); wait for it or stop it"
            ) from e
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield


class Runner:
    """Works off ``plans`` with up to ``parallel`` cells at a time, within ``max_minutes`` (None: no budget),
    starting cells only within the first ``start_within`` minutes (None: until the budget; the running
    cells then finish, so a sitting on a machine that will not outlive it ends between cells and wastes no
    half-done cell). ``env``: extra environment of the cells."""

    def __init__(
        self,
        plans: Sequence[Plan],
        *,
        parallel: int = 1,
        max_minutes: float | None = None,
        start_within: float | None = None,
        env: dict[str, str] | None = None,
    ):
        if parallel < 1:
            raise ConfigError(f"--parallel must be >= 1, got {parallel}")
        for flag, minutes in (("max-minutes", max_minutes), ("start-within", start_within)):
            if minutes is not None and minutes < 0:
                raise ConfigError(f"--{flag} must be >= 0, got {minutes}")
        self.plans = list(plans)
        self.parallel = parallel
        self.max_minutes = max_minutes
        self.start_within = start_within
        self.env = {**os.environ, **(env or {})}
        self.stop_reason: str | None = None
        self.kill = False

    def _signal(self, signum: int, _frame: object) -> None:
        """The first signal stops the grid cleanly, a second one kills its cells."""
        self.kill = self.stop_reason is not None
        self.stop_reason = self.stop_reason or f"stopped by {signal.Signals(signum).name}"

    def _start(self, plan: Plan, phase: str, argv: list[str]) -> Job:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        log = (plan.run_dir / LOG).open("a")
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {phase}: {' '.join(argv[1:])}\n")
        log.flush()
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, preexec_fn=_die_with_parent
        )
        (plan.run_dir / PID).write_text(str(process.pid))
        return Job(plan, phase, process, log)

    def _next_phase(self, plan: Plan, after: str | None) -> tuple[str, list[str]] | None:
        """The phase to run after ``after`` (None: the cell's first unfinished one), None when all are."""
        phases = plan.commands()
        names = [name for name, _ in phases]
        start = 0 if after is None else names.index(after) + 1
        if after is None and trained(plan):
            start = 1
        return phases[start] if start < len(phases) else None

    def _finish(self, plan: Plan, seconds: float) -> None:
        record = {"cell": plan.cell.name, "steps": plan.num_steps, "last_wall_s": round(seconds, 1)}
        (plan.run_dir / DONE).write_text(json.dumps(record) + "\n")

    def run(self, progress: bool = True) -> Outcome:
        """Runs until every cell is done, the budget is spent or a signal arrives; returns the outcome."""
        started = time.monotonic()
        deadline = None if self.max_minutes is None else started + 60 * self.max_minutes
        last_start = None if self.start_within is None else started + 60 * self.start_within
        outcome = Outcome(total=len(self.plans))
        pending = [plan for plan in self.plans if not is_done(plan)]
        running: list[Job] = []
        stopping = False
        refreshed = 0.0
        total_steps = sum(plan.num_steps for plan in self.plans)
        bar = tqdm(
            total=total_steps,
            initial=sum(steps_done(plan) for plan in self.plans),
            unit="step",
            desc="grid",
            dynamic_ncols=True,
            disable=not progress,
        )
        handlers = {sig: signal.signal(sig, self._signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while pending or running:
                if not stopping and deadline is not None and time.monotonic() >= deadline:
                    self.stop_reason = f"stopped at the {self.max_minutes:g}-minute budget"
                if self.stop_reason and not stopping:
                    stopping = True
                    for job in running:
                        job.process.terminate()
                if self.kill:
                    for job in running:
                        job.process.kill()
                if stopping and not running:
                    break
                starting = last_start is None or time.monotonic() < last_start
                if not starting and not running:
                    self.stop_reason = (
                        self.stop_reason or f"started no cell after {self.start_within:g} minutes"
                    )
                    break
                while not stopping and starting and pending and len(running) < self.parallel:
                    plan = pending.pop(0)
                    phase = self._next_phase(plan, None)
                    if phase is None:
                        self._finish(plan, 0.0)
                        outcome.finished_now += 1
                        continue
                    running.append(self._start(plan, *phase))
                for job in list(running):
                    code = job.process.poll()
                    if code is None:
                        continue
                    running.remove(job)
                    job.log.close()
                    (job.plan.run_dir / PID).unlink(missing_ok=True)
                    seconds = time.monotonic() - job.started
                    if code != 0 and not stopping:
                        outcome.failed[job.plan.cell.name] = (
                            f"{job.phase} exit {code}: {_last_line(job.plan)}"
                        )
                        continue
                    if code != 0 or (job.phase == "train" and not trained(job.plan)):
                        continue  # stopped before its end: half done, resumed in a later sitting
                    following = None if stopping else self._next_phase(job.plan, job.phase)
                    if following is not None:
                        running.append(self._start(job.plan, *following))
                    elif not stopping or job.phase == job.plan.commands()[-1][0]:
                        self._finish(job.plan, seconds)
                        outcome.finished_now += 1
                if time.monotonic() - refreshed >= REFRESH_S or not running:
                    refreshed = time.monotonic()
                    # update(), not n =, so that tqdm's rate and ETA follow the steps of this sitting
                    bar.update(sum(steps_done(plan) for plan in self.plans) - bar.n)
                    done = sum(is_done(plan) for plan in self.plans)
                    bar.set_postfix_str(
                        f"cells {done} done, {len(running)} running, {outcome.total - done - len(running)} left"
                    )
                if running:
                    time.sleep(POLL_S)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            for job in running:  # an exception in the loop itself: leave no cell behind
                job.process.terminate()
                job.process.wait()
            bar.close()
        outcome.done = sum(is_done(plan) for plan in self.plans)
        outcome.half = sum(
            1 for plan in self.plans if not is_done(plan) and last_logged_step(plan.run_dir) >= 0
        )
        outcome.stopped = self.stop_reason if outcome.done < outcome.total else None
        outcome.seconds = time.monotonic() - started
        return outcome


def _last_line(plan: Plan) -> str:
    lines = [line.strip() for line in (plan.run_dir / LOG).read_text().splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "no output"
