"""GenEval's prompt metadata (evaluation_metadata.jsonl): a prompt's category (``tag``) and the objects an image
must (``include``) or must not (``exclude``) contain, with counts, colours and relative positions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RELATIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
TAG_KEY = "geneval_tag"
"""The per-prompt array a source with GenEval metadata may provide: (n,) int32 indices into :data:`TAGS`, by
which benchmarks break scores down per category."""


@dataclass(frozen=True)
class Clause:
    """One GenEval include / exclude entry: ``count`` objects of ``class_name``.

    color: the colour each of them must have (None: any). position: (relation, index of the include clause it
    is relative to), e.g. ("left of", 0); GenEval's metadata stores it as a two-element list.
    """

    class_name: str
    count: int
    color: str | None = None
    position: tuple[str, int] | None = None


@dataclass(frozen=True)
class PromptSpec:
    """A prompt and its GenEval-layout metadata. Include clauses combine with AND; an image passes an exclude
    clause when it has fewer than ``count`` objects of the class."""

    prompt: str
    tag: str
    include: tuple[Clause, ...]
    exclude: tuple[Clause, ...] = ()

    def to_geneval(self) -> dict[str, Any]:
        """The JSON-ready dict in GenEval's evaluation_metadata.jsonl layout."""

        def entry(c: Clause) -> dict[str, Any]:
            out: dict[str, Any] = {"class": c.class_name, "count": c.count}
            if c.color is not None:
                out["color"] = c.color
            if c.position is not None:
                out["position"] = [c.position[0], c.position[1]]
            return out

        out: dict[str, Any] = {"tag": self.tag, "include": [entry(c) for c in self.include]}
        if self.exclude:
            out["exclude"] = [entry(c) for c in self.exclude]
        out["prompt"] = self.prompt
        return out

    @classmethod
    def from_geneval(cls, metadata: Mapping[str, Any]) -> PromptSpec:
        """Parses GenEval-layout metadata; raises ValueError with one line naming what is wrong."""
        include = metadata.get("include")
        if not isinstance(include, list) or not include:
            raise ValueError(f"metadata needs a non-empty 'include' list, got {metadata!r}")

        def clause(entry: Any, where: str, index: int) -> Clause:
            if not isinstance(entry, Mapping) or "class" not in entry:
                raise ValueError(f"{where}[{index}] needs a 'class', got {entry!r}")
            count = entry.get("count", 1)
            if not isinstance(count, int) or count < 1:
                raise ValueError(f"{where}[{index}] 'count' must be a positive integer, got {count!r}")
            position = entry.get("position")
            if position is not None:
                if len(position) != 2 or not 0 <= int(position[1]) < index:
                    raise ValueError(
                        f"{where}[{index}] 'position' must be [relation, index of an earlier include], "
                        f"got {position!r}"
                    )
                if position[0] not in RELATIONS:
                    raise ValueError(f"{where}[{index}] relation {position[0]!r} is not one of {RELATIONS}")
                position = (str(position[0]), int(position[1]))
            return Clause(str(entry["class"]), count, entry.get("color"), position)

        return cls(
            prompt=str(metadata.get("prompt", "")),
            tag=str(metadata.get("tag", "")),
            include=tuple(clause(e, "include", i) for i, e in enumerate(include)),
            exclude=tuple(clause(e, "exclude", i) for i, e in enumerate(metadata.get("exclude", []))),
        )
