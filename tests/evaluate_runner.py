"""Running ``python -m slas_jax.evaluate`` in this process on the shipped shapes flow base model (the cheapest
model that runs the real sampling path: 32x32 pixels, 8 flow steps), and reading back what it wrote."""

from pathlib import Path

from slas_jax.evaluate.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "shapes_cpu.py")
POLICY = str(ROOT / "checkpoints" / "shapes_flow")


def evaluate(*args: object) -> int:
    """The command's exit code for ``--config configs/shapes_cpu.py`` and ``args``."""
    return main(["slas_jax.evaluate", "--config", CONFIG, *map(str, args)])


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """{relative path: (mtime in ns, bytes)} of every file under ``folder`` but the manifest."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
