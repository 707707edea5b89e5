"""The README's public API is importable from ``slas_jax`` as the README writes it."""

import re
from pathlib import Path

import slas_jax

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_name_the_readme_imports_from_slas_jax_exists():
    names = {
        name.strip()
        for line in re.findall(r"^from slas_jax import ([\w, ]+)", README.read_text(), re.MULTILINE)
        for name in line.split(",")
    }
    assert names, "the README shows no `from slas_jax import ...` line"
    for name in names:
        assert getattr(slas_jax, name) is not None, name


def test_every_export_resolves():
    for name in slas_jax.__all__:
        assert getattr(slas_jax, name) is not None, name
