"""The shapes testbed world: a prompt grammar in GenEval's six categories, a train / held-out split of its
combinations, and a deterministic renderer of small RGB images of coloured shapes on a white background.

Images are (h, w, 3) float32 in [0, 1], HWC, default 32x32. Each prompt carries GenEval-layout metadata
(``tag``, ``include`` clauses with ``class`` / ``count`` / ``color`` / ``position``, ``exclude`` for counting)
as a ``slas_jax.data.geneval.PromptSpec``; ``slas_jax.testbed.ground_truth`` scores images against it from
pixels alone.

Split rule (``split_specs``): a prompt is HELD-OUT when it contains a held-out part, else TRAINING:
  * a colour-shape pairing in ``HELD_OUT_PAIRS`` (each shape has one colour it never wears in training), or
  * a (shape, relation, shape) triple in ``HELD_OUT_RELATIONS``, compared in canonical form ("A right of B" is
    "B left of A", "A below B" is "B above A").
So no held-out part ever appears in a training prompt, in any category. Each category is then capped
(``TRAIN_CAP`` / ``HELD_OUT_CAP`` prompts) by a hash of its combination key, which keeps the selection stable
across numpy versions and platforms.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slas_jax.data.geneval import RELATIONS, TAGS, Clause, PromptSpec
from slas_jax.tokenizers import WordTokenizer

IMAGE_SIZE = 32
BACKGROUND = (1.0, 1.0, 1.0)
# Colours chosen so that each colour stays >= 0.45 (RGB distance) away from the segment between the background
# and any other colour: anti-aliased and blurred edges (mixtures with the background) keep their colour.
PALETTE: Mapping[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1),
    "green": (0.1, 0.6, 0.2),
    "blue": (0.2, 0.35, 0.95),
    "yellow": (0.95, 0.8, 0.1),
    "purple": (0.65, 0.1, 0.7),
}
COLORS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "diamond")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds"}
NUMBERS = ("one", "two", "three", "four")

HELD_OUT_PAIRS = frozenset(
    {("yellow", "circle"), ("purple", "square"), ("red", "triangle"), ("blue", "diamond")}
)
HELD_OUT_RELATIONS = frozenset(
    {("circle", "left of", "triangle"), ("square", "above", "circle"), ("diamond", "left of", "square")}
)
TRAIN_CAP = 100
HELD_OUT_CAP = 50

# GenEval's relative-position rule: offsets shrink by POSITION_THRESHOLD * (sum of box sides) before the
# direction test, so touching neighbours are not "left of" each other.
POSITION_THRESHOLD = 0.1
# The renderer places related objects so that the direction test passes with this much to spare, which keeps
# the relation readable after a 1-pixel shift of the detected boxes.
RELATION_MARGIN = 0.2

MAX_CLAUSES = 3
CLAUSE_FIELDS = 6
MAX_TOKENS = 16


# ---------------------------------------------------------------------------------------------------------
# Grammar and split


def _object_phrase(color: str | None, shape: str) -> str:
    return f"a {color} {shape}" if color else f"a {shape}"


def _stable_hash(key: object) -> int:
    """A hash of repr(key) that does not change between processes (Python's hash() is salted, so keys must
    not contain sets, whose repr order follows it)."""
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little")


def canonical_relation(shape_a: str, relation: str, shape_b: str) -> tuple[str, str, str]:
    """The canonical form of a relation triple: "A right of B" becomes "B left of A", "A below B" becomes
    "B above A"; "left of" and "above" triples stay as they are."""
    flipped = {"right of": "left of", "below": "above"}
    return (shape_b, flipped[relation], shape_a) if relation in flipped else (shape_a, relation, shape_b)


def combination_parts(spec: PromptSpec) -> frozenset[tuple[str, ...]]:
    """The colour-shape pairs and canonical (shape, relation, shape) triples a prompt combines."""
    parts: set[tuple[str, ...]] = {(c.color, c.class_name) for c in spec.include if c.color is not None}
    for c in spec.include:
        if c.position is not None:
            target = spec.include[c.position[1]].class_name
            parts.add(canonical_relation(c.class_name, c.position[0], target))
    return frozenset(parts)


def combination_key(spec: PromptSpec) -> tuple[Any, ...]:
    """What a prompt asks for, independent of its wording: (tag, objects, relations, exclusions), each a sorted
    tuple (so that its repr, and the split's hash of it, is the same in every process). Objects are
    (shape, count, colour or ""); relations are canonical triples."""
    objects = tuple(sorted((c.class_name, c.count, c.color or "") for c in spec.include))
    relations = tuple(sorted(p for p in combination_parts(spec) if len(p) == 3))
    exclude = tuple(sorted((c.class_name, c.count, c.color or "") for c in spec.exclude))
    return (spec.tag, objects, relations, exclude)


def is_held_out(spec: PromptSpec) -> bool:
    """True when the prompt combines a held-out colour-shape pair or (shape, relation, shape) triple."""
    return bool(combination_parts(spec) & (HELD_OUT_PAIRS | HELD_OUT_RELATIONS))


def all_specs() -> tuple[PromptSpec, ...]:
    """Every prompt of the grammar, in a fixed order (before the split and the per-category caps).

    Where one combination has two wordings (object order in "A and B", "A left of B" vs "B right of A"), a
    stable hash picks one, so every combination appears once.
    """
    specs: list[PromptSpec] = []
    for shape in SHAPES:
        specs.append(PromptSpec(_object_phrase(None, shape), "single_object", (Clause(shape, 1),)))
    for a, b in itertools.combinations(SHAPES, 2):
        first, second = (a, b) if _stable_hash(("two_object", a, b)) % 2 else (b, a)
        specs.append(
            PromptSpec(
                f"{_object_phrase(None, first)} and {_object_phrase(None, second)}",
                "two_object",
                (Clause(first, 1), Clause(second, 1)),
            )
        )
    for shape, color in itertools.product(SHAPES, COLORS):
        specs.append(PromptSpec(_object_phrase(color, shape), "colors", (Clause(shape, 1, color),)))
    for count, shape, color in itertools.product(range(1, 5), SHAPES, COLORS):
        noun = shape if count == 1 else PLURALS[shape]
        specs.append(
            PromptSpec(
                f"{NUMBERS[count - 1]} {color} {noun}",
                "counting",
                (Clause(shape, count, color),),
                (Clause(shape, count + 1),),
            )
        )
    for (a, b), (color_a, color_b) in itertools.product(
        itertools.combinations(SHAPES, 2), itertools.permutations(COLORS, 2)
    ):
        objects = [(color_a, a), (color_b, b)]
        if _stable_hash(("color_attr", a, b, color_a, color_b)) % 2:
            objects.reverse()
        specs.append(
            PromptSpec(
                " and ".join(_object_phrase(c, s) for c, s in objects),
                "color_attr",
                tuple(Clause(s, 1, c) for c, s in objects),
            )
        )
    # Position: ordered pairs of different shapes, canonical relations only; the wording is either the
    # canonical one or its mirror ("B right of A"). GenEval lists the reference object first.
    for (a, b), relation, color_a, color_b in itertools.product(
        itertools.permutations(SHAPES, 2), ("left of", "above"), COLORS, COLORS
    ):
        subject, reference = (color_a, a), (color_b, b)
        if _stable_hash(("position", a, relation, b, color_a, color_b)) % 2:
            subject, reference = reference, subject
            relation = {"left of": "right of", "above": "below"}[relation]
        specs.append(
            PromptSpec(
                f"{_object_phrase(*subject)} {relation} {_object_phrase(*reference)}",
                "position",
                (Clause(reference[1], 1, reference[0]), Clause(subject[1], 1, subject[0], (relation, 0))),
            )
        )
    return tuple(specs)


@functools.cache
def split_specs(split: str) -> tuple[PromptSpec, ...]:
    """The "train" or "held_out" prompt set: the split rule of the module docstring, then at most TRAIN_CAP /
    HELD_OUT_CAP prompts per category chosen by a stable hash of their combination keys, in grammar order."""
    if split not in ("train", "held_out"):
        raise ValueError(f"unknown shapes split {split!r}; choose 'train' or 'held_out'")
    cap = TRAIN_CAP if split == "train" else HELD_OUT_CAP
    pool = [(i, s) for i, s in enumerate(all_specs()) if is_held_out(s) == (split == "held_out")]
    chosen: list[tuple[int, PromptSpec]] = []
    for tag in TAGS:
        in_tag = [(i, s) for i, s in pool if s.tag == tag]
        in_tag.sort(key=lambda item: _stable_hash(combination_key(item[1])))
        chosen.extend(in_tag[:cap])
    return tuple(s for _, s in sorted(chosen, key=lambda item: item[0]))


# ---------------------------------------------------------------------------------------------------------
# Tokenizer


VOCABULARY = tuple(
    dict.fromkeys(
        [
            "a",
            "and",
            *NUMBERS,
            *(w for r in RELATIONS for w in r.split()),
            *COLORS,
            *SHAPES,
            *PLURALS.values(),
        ]
    )
)


def make_tokenizer(max_length: int = MAX_TOKENS) -> WordTokenizer:
    """Word-level tokenizer over the grammar's words: (n,) prompts -> (n, max_length) int32 ids with
    0 pad, 1 bos, 2 unknown (never produced by the grammar), 3 eos, then VOCABULARY."""
    return WordTokenizer(VOCABULARY, max_length)


# ---------------------------------------------------------------------------------------------------------
# Integer encoding of specs, so that metadata can travel through jit as an array


def encode_spec(spec: PromptSpec) -> np.ndarray:
    """(MAX_CLAUSES, CLAUSE_FIELDS) int32 rows [kind (0 none, 1 include, 2 exclude), shape index, count,
    colour index or -1, relation index or -1, target include index or -1]. Only shapes-world classes."""
    clauses = [(1, c) for c in spec.include] + [(2, c) for c in spec.exclude]
    if len(clauses) > MAX_CLAUSES:
        raise ValueError(f"prompt {spec.prompt!r} has {len(clauses)} clauses; at most {MAX_CLAUSES} encode")
    out = np.zeros((MAX_CLAUSES, CLAUSE_FIELDS), np.int32)
    out[:, 3:] = -1
    for row, (kind, c) in enumerate(clauses):
        if c.class_name not in SHAPES or (c.color is not None and c.color not in COLORS):
            raise ValueError(f"clause {c} is outside the shapes world ({SHAPES}, {COLORS})")
        out[row, :3] = kind, SHAPES.index(c.class_name), c.count
        if c.color is not None:
            out[row, 3] = COLORS.index(c.color)
        if c.position is not None:
            out[row, 4:] = RELATIONS.index(c.position[0]), c.position[1]
    return out


def encode_specs(specs: Sequence[PromptSpec | Mapping[str, Any]]) -> np.ndarray:
    """(len(specs), MAX_CLAUSES, CLAUSE_FIELDS) int32: ``encode_spec`` of PromptSpecs or GenEval-layout dicts."""
    return np.stack(
        [encode_spec(s if isinstance(s, PromptSpec) else PromptSpec.from_geneval(s)) for s in specs]
    ).astype(np.int32)


def decode_spec(encoded: np.ndarray) -> PromptSpec:
    """Inverse of ``encode_spec`` (prompt and tag are not encoded and come back empty)."""
    clauses: dict[int, list[Clause]] = {1: [], 2: []}
    for kind, shape, count, color, relation, target in np.asarray(encoded).tolist():
        if kind:
            clauses[kind].append(
                Clause(
                    SHAPES[shape],
                    count,
                    COLORS[color] if color >= 0 else None,
                    (RELATIONS[relation], target) if relation >= 0 else None,
                )
            )
    return PromptSpec("", "", tuple(clauses[1]), tuple(clauses[2]))


# ---------------------------------------------------------------------------------------------------------
# Geometry shared by the renderer and the scorer


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels; x to the right, y downwards


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v) lie inside ``shape`` drawn in the box [-1, 1]^2 (v downwards; the triangle points
    up). u, v: broadcastable float arrays; returns bool of their broadcast shape."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 1.0
    if shape == "triangle":
        return (np.abs(v) <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")


def relation_directions(box_a: Box, box_b: Box) -> tuple[float, float]:
    """GenEval's normalised offset of box A from box B, (dx, dy): each |offset| component shrinks by
    POSITION_THRESHOLD * (sum of both boxes' sides), then is divided by the unshrunk offset's length."""
    a, b = np.asarray(box_a, np.float64), np.asarray(box_b, np.float64)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    sides = (a[2:] - a[:2]) + (b[2:] - b[:2])
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * sides, 0.0) * np.sign(offset)
    norm = float(np.linalg.norm(offset))
    if norm == 0.0:
        return 0.0, 0.0
    return float(revised[0] / norm), float(revised[1] / norm)


def relations(box_a: Box, box_b: Box, threshold: float = 0.5) -> frozenset[str]:
    """The relations of A to B that GenEval reports ("left of", "right of", "above", "below")."""
    dx, dy = relation_directions(box_a, box_b)
    found = {
        "left of": dx < -threshold,
        "right of": dx > threshold,
        "above": dy < -threshold,
        "below": dy > threshold,
    }
    return frozenset(name for name, holds in found.items() if holds)


# ---------------------------------------------------------------------------------------------------------
# Renderer


@dataclass(frozen=True)
class SceneObject:
    """A shape of side ``size`` pixels (its bounding box) centred at ``center`` = (x, y) pixels."""

    shape: str
    color: str
    center: tuple[float, float]
    size: float

    @property
    def box(self) -> Box:
        (x, y), half = self.center, self.size / 2
        return (x - half, y - half, x + half, y + half)


def _clear_relation(box_a: Box, box_b: Box, relation: str) -> bool:
    """``relation`` holds with RELATION_MARGIN to spare and no other relation comes near holding."""
    strong = relations(box_a, box_b, 0.5 + RELATION_MARGIN)
    weak = relations(box_a, box_b, 0.5 - RELATION_MARGIN)
    return strong == weak == {relation}


def _apart(box_a: Box, box_b: Box, gap: float) -> bool:
    return (
        box_a[2] + gap <= box_b[0]
        or box_b[2] + gap <= box_a[0]
        or box_a[3] + gap <= box_b[1]
        or box_b[3] + gap <= box_a[1]
    )


def sample_scene(
    spec: PromptSpec,
    rng: np.random.Generator,
    *,
    image_size: int = IMAGE_SIZE,
    min_size: float = 9.0,
    max_size: float = 12.0,
    gap: float = 2.0,
    tries_per_object: int = 50,
    max_restarts: int = 200,
) -> tuple[SceneObject, ...]:
    """Objects that satisfy ``spec``: ``count`` objects per include clause (a random palette colour where the
    clause names none), sides uniform in [min_size, max_size], at least ``gap`` pixels apart and 1 pixel from
    the border, positioned clearly in each clause's relation. Draws from ``rng`` only.

    Objects are placed one by one, each with up to ``tries_per_object`` random positions; a scene whose
    early objects leave no room starts over.
    """
    wanted = [(c.class_name, c.color, i) for i, c in enumerate(spec.include) for _ in range(c.count)]
    for _ in range(max_restarts):
        placed: list[tuple[SceneObject, int]] = []
        for shape, color, clause_index in wanted:
            color = color if color is not None else COLORS[int(rng.integers(len(COLORS)))]
            position = spec.include[clause_index].position
            for _ in range(tries_per_object):
                size = float(rng.uniform(min_size, max_size))
                low, high = size / 2 + 1.0, image_size - size / 2 - 1.0
                obj = SceneObject(
                    shape, color, (float(rng.uniform(low, high)), float(rng.uniform(low, high))), size
                )
                fits = all(_apart(obj.box, other.box, gap) for other, _ in placed)
                if fits and position is not None:
                    fits = all(
                        _clear_relation(obj.box, other.box, position[0])
                        for other, j in placed
                        if j == position[1]
                    )
                if fits:
                    placed.append((obj, clause_index))
                    break
            else:
                break
        else:
            return tuple(obj for obj, _ in placed)
    raise RuntimeError(f"could not place the objects of {spec.prompt!r} in {image_size}x{image_size} pixels")


def shape_coverage(
    shape: str, center: tuple[float, float], size: float, height: int, width: int, *, supersample: int = 4
) -> np.ndarray:
    """(height, width) float64 in [0, 1]: the fraction of each pixel that ``shape`` covers, averaged over
    supersample x supersample points per pixel. center = (x, y) in pixels, pixel (i, j) spans [j, j+1) x [i, i+1)."""
    (x, y), half = center, size / 2
    offsets = (np.arange(supersample) + 0.5) / supersample
    cols = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)
    rows = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1)
    inside = shape_mask(shape, (cols[None, :] - x) / half, (rows[:, None] - y) / half)
    return inside.reshape(height, supersample, width, supersample).mean(axis=(1, 3))


def draw_scene(
    scene: Sequence[SceneObject], *, image_size: int = IMAGE_SIZE, supersample: int = 4
) -> np.ndarray:
    """(image_size, image_size, 3) float32 in [0, 1]: the objects over the background, anti-aliased (a pixel's
    colour mixes shape and background by the shape's coverage of it)."""
    image = np.broadcast_to(np.asarray(BACKGROUND, np.float64), (image_size, image_size, 3))
    for obj in scene:
        alpha = shape_coverage(
            obj.shape, obj.center, obj.size, image_size, image_size, supersample=supersample
        )
        image = image * (1 - alpha[..., None]) + np.asarray(PALETTE[obj.color]) * alpha[..., None]
    return image.astype(np.float32)


def render(spec: PromptSpec, rng: np.random.Generator, *, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """(image_size, image_size, 3) float32 in [0, 1]: a random scene that satisfies ``spec``."""
    return draw_scene(sample_scene(spec, rng, image_size=image_size), image_size=image_size)


def render_batch(specs: Sequence[PromptSpec], seed: int, *, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """(len(specs), image_size, image_size, 3) float32; the same seed gives the same images."""
    rng = np.random.default_rng(seed)
    return np.stack([render(s, rng, image_size=image_size) for s in specs])
