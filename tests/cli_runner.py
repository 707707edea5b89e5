"""Running the project's command-line entry points as a user would: in a fresh Python process."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_module(
    module: str, *args: object, cwd: Path = ROOT, timeout: int = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m module args...`` in ``cwd`` with text output captured; ``env`` entries are added to the
    current environment."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def one_line_error(out: subprocess.CompletedProcess) -> str:
    """The one stderr line of a command that failed as a user error (exit 2, ``error: ...``, nothing else)."""
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    return lines[0]
