"""The skeleton every ``python -m slas_jax.<command>`` runs on: flag parsing, ``--config`` files with
``--config.section.key=value`` overrides, ``--verbose`` and ``--help``, and one policy for errors.

A user error (:class:`slas_jax.errors.UserError`: bad config, damaged checkpoint, bad prompt file; a missing
file; a loss that became non-finite) ends with ``error: <one line>`` on stderr and exit code 2, or with the
traceback under ``--verbose``. Success prints the command's one-line summary and exits 0; a command can
instead end with an :class:`Exit` of its own code, e.g. :data:`EXIT_STOPPED` for a run stopped by a signal.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from absl import flags
from ml_collections import ConfigDict, config_flags
from tqdm import tqdm

from slas_jax.errors import ConfigError, UserError

USER_ERRORS = (UserError, FileNotFoundError, FloatingPointError)
EXIT_STOPPED = 75
"""Exit code of a command a signal (SIGTERM, SIGINT) stopped early after saving what it needs to resume:
sysexits' EX_TEMPFAIL ("try again"), neither success (0) nor a user error (2), so a scheduler restarts it."""


@dataclass(frozen=True)
class Exit:
    """A command's last line and exit code, for an end other than success (0)."""

    line: str
    code: int


def warn(line: str) -> None:
    """One line on stderr about something the command did in the user's stead (``warning: <line>``)."""
    print(f"warning: {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Parsed:
    """What a command line says: ``flags`` (the parsed absl flags), ``config`` (the ``--config`` ConfigDict
    with overrides applied, None for commands without one) and ``args`` (positional arguments)."""

    flags: flags.FlagValues
    config: ConfigDict | None
    args: list[str]


@dataclass(frozen=True)
class Command:
    """One command line tool.

    name: the module after ``slas_jax.`` (``train``, ``testbed.pretrain``); doc: what ``--help`` prints
    first (the module docstring); config_hint: the config files to pass (e.g. ``configs/<name>.py``), None
    for commands that take no ``--config``; positionals: names of required positional arguments;
    define_flags: adds the command's own flags to a fresh FlagValues; config_help: the config fields'
    documentation for ``--help``; config_default: a config file read when ``--config`` is not given (then
    it is optional).
    """

    name: str
    doc: str
    config_hint: str | None = None
    positionals: Sequence[str] = ()
    define_flags: Callable[[flags.FlagValues], None] | None = None
    config_help: Callable[[], str] | None = field(default=None)
    config_default: str | None = None

    @property
    def prog(self) -> str:
        return f"python -m slas_jax.{self.name}"

    def _flag_values(self) -> flags.FlagValues:
        values = flags.FlagValues()
        if self.config_hint is not None:
            config_flags.DEFINE_config_file(
                "config",
                self.config_default,
                f"Path to a config file with get_config(): {self.config_hint}",
                flag_values=values,
            )
        flags.DEFINE_bool("verbose", False, "Show the traceback of an error.", flag_values=values)
        if self.define_flags is not None:
            self.define_flags(values)
        return values

    def help(self) -> str:
        """The ``--help`` text: usage, description, flags and (for config commands) every config field."""
        usage = " ".join(
            [self.prog, *self.positionals, *(["--config", self.config_hint] if self.config_hint else [])]
        )
        parts = [
            f"usage: {usage} [flags]",
            self.doc.strip(),
            "flags:",
            self._flag_values().get_help().strip(),
        ]
        if self.config_help is not None:
            parts += [
                "config fields (override any with --config.<section>.<field>=<value>):",
                self.config_help(),
            ]
        return "\n\n".join(parts) + "\n"

    def parse(self, argv: Sequence[str]) -> Parsed:
        """Parses ``argv`` (program name first); ConfigError with one line on any bad flag or override."""
        # ml_collections registers the --config.<path> override flags from sys.argv, not from the argv it is
        # given, so a caller passing its own argv (tests, a notebook) must see it there while parsing (and
        # while defining the flags: it applies them to a default config file there).
        saved, sys.argv = sys.argv, list(argv)
        try:
            values = self._flag_values()
            rest = values(list(argv))
            config = values["config"].value if self.config_hint is not None else None
            if config is not None:
                config.to_dict()
        except flags.Error as e:
            raise ConfigError(_flag_error_line(e)) from e
        except (AttributeError, KeyError, TypeError, OSError, ValueError) as e:
            # ml_collections reports an override of a key the file lacks as one of these, without the key.
            if isinstance(e, UserError):
                raise
            raise ConfigError(_explain_override_error(argv, self.config_default)) from e
        finally:
            sys.argv = saved
        if self.config_hint is not None and config is None:
            raise ConfigError(f"missing --config; pass --config {self.config_hint}")
        args = rest[1:]
        if len(args) != len(self.positionals):
            raise ConfigError(
                f"expected {len(self.positionals)} arguments ({' '.join(self.positionals) or 'none'}), got "
                f"{len(args)}; see {self.prog} --help"
            )
        return Parsed(values, config, args)

    def main(self, body: Callable[[Parsed], str | Exit], argv: Sequence[str] | None = None) -> int:
        """Runs ``body`` on the parsed command line and prints its summary (or its :class:`Exit` line);
        returns the exit code."""
        argv = list(sys.argv if argv is None else argv)
        if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
            print(self.help(), end="")
            return 0
        verbose = _verbose(argv)
        try:
            summary = body(self.parse(argv))
        except USER_ERRORS as e:
            if verbose:
                raise
            print(f"error: {one_line(e)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            if verbose:
                raise
            print("error: interrupted (Ctrl-C)", file=sys.stderr)
            return 130
        if isinstance(summary, Exit):
            print(summary.line)
            return summary.code
        print(summary)
        return 0


class StopSignals:
    """Turns SIGTERM (what a preempted TPU VM / Kubernetes pod receives) and SIGINT (Ctrl-C) into a checked
    flag, ``raised`` (the signal's name; "" while none came), so a training loop (RL, pretraining) finishes
    the step in flight, saves and exits instead of dying mid-write and losing the steps since the last
    checkpoint. A second signal ends the process at once, as it would have without this handler. The
    previous handlers come back on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self) -> StopSignals:
        self.raised = ""
        self.previous = {sig: signal.signal(sig, self._set) for sig in self.SIGNALS}
        return self

    def __exit__(self, *_: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _set(self, signum: int, _frame: object) -> None:
        if self.raised:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.raised = signal.Signals(signum).name
        tqdm.write(f"{self.raised}: stopping after this step and saving (send it again to stop now, unsaved)")


def define_multihost_flags(values: flags.FlagValues) -> None:
    """The flags of a command that can join a multi-host run (``jax.distributed``)."""
    flags.DEFINE_bool(
        "multihost",
        False,
        "Join a multi-host run (Cloud TPU pods: addresses are auto-detected).",
        flag_values=values,
    )
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0, when not auto-detected.", flag_values=values
    )
    flags.DEFINE_integer("num_processes", 1, "Processes in the run.", flag_values=values)
    flags.DEFINE_integer("process_id", 0, "This process's index.", flag_values=values)


def one_line(error: BaseException) -> str:
    """The error's message on one line (its lines joined)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def _verbose(argv: Sequence[str]) -> bool:
    """``--verbose`` as absl reads it (``--verbose``, ``--verbose=true``, ``--noverbose``), even when the rest
    of the command line is bad."""
    values = flags.FlagValues()
    flags.DEFINE_bool("verbose", False, "", flag_values=values)
    try:
        values(list(argv), known_only=True)
    except flags.Error:
        return False
    return bool(values["verbose"].value)


def _flag_error_line(error: flags.Error) -> str:
    """One line for a flag error. An exception raised inside a config file's ``get_config`` reaches us as a
    flag error holding its traceback; the line keeps the flag and the exception's own last line."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        return f"{lines[0].split(': ')[0]}: {lines[-1]}"
    return lines[0]


def _explain_override_error(argv: Sequence[str], default: str | None = None) -> str:
    """Names the first ``--config.a.b=v`` override whose key path the config file (``default`` without
    ``--config``) does not have."""
    argv = list(argv)
    config_path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_path is None and "--config" in argv and argv.index("--config") + 1 < len(argv):
        config_path = argv[argv.index("--config") + 1]
    config_path = config_path or default
    if config_path is None:
        return "missing --config; pass --config configs/<name>.py"
    if not Path(config_path.split(":")[0]).is_file():
        return f"config file {config_path} does not exist; pass --config configs/<name>.py"
    try:
        values = runpy.run_path(config_path.split(":")[0])["get_config"]()
    except Exception:  # the file's own error was reported by the flag parser already
        return "could not parse the command line; check the --config overrides"
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config.") :].split("=", 1)[0]
        node = values
        for i, key in enumerate(path.split(".")):
            if not hasattr(node, "keys") or key not in node:
                where = ".".join(path.split(".")[:i]) or "the top level"
                keys = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none (not a section)"
                return f"unknown config key {path!r} in {arg}; keys at {where}: {keys}"
            node = node[key]
    return "could not parse the command line; check the --config overrides"
