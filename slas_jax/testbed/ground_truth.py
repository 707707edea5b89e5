"""Ground-truth reward of the shapes testbed, from pixels alone: GenEval's checks on detected coloured shapes.

Detection (``detect_batch``), for images (n, h, w, 3) float32 in [0, 1] on the world's white background:
  1. Pixel colours. Anti-aliasing and blur mix an object's colour with the background, so a pixel lies near the
     segment from the background to its palette colour; each pixel takes the palette colour whose segment is
     nearest, with coverage alpha = its position along that segment. Pixels with alpha >= 0.5 are foreground;
     foreground far from every segment is an off-palette colour ("other", matching no colour clause). Each
     foreground pixel then takes the majority colour of its 3x3 neighbourhood, so noise does not split objects.
  2. Connected components (8-connected, same colour label), by vectorised min-label propagation with pointer
     jumping (numpy only); components under MIN_AREA pixels are noise specks and are dropped.
  3. Fringe: each component also takes the faint (coverage < 0.5) pixels of its own colour around it, up to
     FRINGE pixels deep, so that a blurred object keeps all of its coverage.
  4. Shape, by analysis by synthesis: every shape is drawn with the object's total coverage (its area) and
     centroid, which blur leaves unchanged, blurred by each of BLUR_SIGMAS, and compared with the observed
     coverage; the best fit wins unless its relative error exceeds SHAPE_TOLERANCE (the blob is then no shape).
     The fitted shape's box is the object's box for relations.

Scoring (``evaluate``) follows GenEval's metadata semantics with exact counts, as in Flow-GRPO's reward:
  strict  = 1 when every include clause has exactly ``count`` objects of its class, at least ``count`` of them in
            the clause's colour, the clause's relation holds between its objects and its target clause's
            objects (GenEval's relative-position rule), and every exclude clause finds fewer than ``count``.
  partial = the mean of per-condition terms (Flow-GRPO's GenEval training reward): per include clause
            max(0, 1 - |found - count| / count), plus min(coloured, count) / count when it names a colour,
            plus 1 / 0 for its relation. Exclude clauses enter only strict (as in Flow-GRPO: counting's exclude
            restates the exact count, and an empty image must not earn it), so strict == 1 exactly when
            partial == 1 for GenEval-style metadata.
Objects of classes a prompt does not mention are not penalised (as in GenEval).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from slas_jax.rewards.registry import Reward, register
from slas_jax.scorers import SCORERS, Scorer
from slas_jax.testbed.shapes import (
    BACKGROUND,
    COLORS,
    PALETTE,
    SHAPES,
    Box,
    PromptSpec,
    decode_spec,
    relations,
    shape_coverage,
    shape_mask,
)

SPEC_KEY = "shapes_spec"
MIN_AREA = 10
# A pixel whose colour is farther than this from its nearest background-to-colour segment is off-palette.
# Each palette colour is >= 0.45 from every other colour's segment; Gaussian pixel noise of sigma 0.05 moves a
# pixel ~0.07 off its own, and the 3x3 majority vote absorbs the rare pixels that noise pushes farther.
MAX_COLOR_RESIDUAL = 0.25
FRINGE = 3
BLUR_SIGMAS = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5)
SHAPE_TOLERANCE = 0.3

OTHER_COLOR = "other"
NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


@dataclass(frozen=True)
class DetectedObject:
    """A connected component: ``shape`` None when no shape fits; ``color`` a palette name or "other"; ``box``
    (x0, y0, x1, y1) in pixels, of the best-fitting shape; ``area`` in pixels of coverage >= 0.5;
    ``shape_error`` the best fit's summed absolute coverage difference over the object's coverage."""

    shape: str | None
    color: str
    box: Box
    area: int
    shape_error: float


def segment(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """images: (n, h, w, 3) float32 in [0, 1]. Returns labels (n, h, w) int32 (-1 background, i for COLORS[i],
    len(COLORS) for off-palette colours), nearest (n, h, w) int64: the index of each pixel's nearest colour
    segment, whatever its coverage, and coverage (n, h, w) float32 in [0, 1]: its position along that segment."""
    background = np.asarray(BACKGROUND, np.float32)
    directions = np.asarray([PALETTE[c] for c in COLORS], np.float32) - background  # (k, 3)
    offset = np.asarray(images, np.float32) - background  # (n, h, w, 3)
    coverage = np.clip(offset @ directions.T / np.sum(directions**2, axis=1), 0.0, 1.0)  # (n, h, w, k)
    # Distance of each pixel from each colour's segment: (n, h, w, k).
    residual = np.linalg.norm(offset[..., None, :] - coverage[..., None] * directions, axis=-1)
    nearest = np.argmin(residual, axis=-1)
    best_coverage = np.take_along_axis(coverage, nearest[..., None], axis=-1)[..., 0]
    best_residual = np.take_along_axis(residual, nearest[..., None], axis=-1)[..., 0]
    on_palette = (best_coverage >= 0.5) & (best_residual <= MAX_COLOR_RESIDUAL)
    # Off-palette foreground: as far from the background as a half-covered pixel of the nearest colour.
    far = np.linalg.norm(offset, axis=-1) >= 0.5 * np.linalg.norm(directions, axis=1).min()
    off_palette = far & (best_residual > MAX_COLOR_RESIDUAL)
    labels = np.where(on_palette, nearest, np.where(off_palette, len(COLORS), -1))
    return majority_labels(labels).astype(np.int32), nearest, best_coverage


def majority_labels(labels: np.ndarray) -> np.ndarray:
    """labels: (n, h, w) int, -1 background, else 0 .. len(COLORS). Each foreground pixel takes the most common
    foreground label of its 3x3 neighbourhood (ties keep its own), so that pixel noise pushing a few pixels to
    a wrong colour does not split an object into fragments."""
    h, w = labels.shape[1:]
    onehot = (labels[..., None] == np.arange(len(COLORS) + 1)).astype(np.float32)  # (n, h, w, k + 1)
    padded = np.pad(onehot, ((0, 0), (1, 1), (1, 1), (0, 0)))
    votes = sum(padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in NEIGHBOURS) + 1.5 * onehot
    return np.where(labels >= 0, np.argmax(votes, axis=-1), -1)


def connected_components(labels: np.ndarray) -> np.ndarray:
    """labels: (n, h, w) int, -1 for background. Returns (n, h, w) int64: for each foreground pixel the
    smallest flat index (into the whole batch) of its 8-connected component of equal labels; -1 elsewhere."""
    n, h, w = labels.shape
    none = n * h * w
    padded_labels = np.pad(labels, ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    same = [
        (padded_labels[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] == labels) & (labels >= 0)
        for dy, dx in NEIGHBOURS
    ]
    ids = np.where(labels >= 0, np.arange(none).reshape(n, h, w), none)
    while True:
        padded = np.pad(ids, ((0, 0), (1, 1), (1, 1)), constant_values=none)
        new = ids.copy()
        for (dy, dx), linked in zip(NEIGHBOURS, same, strict=True):
            np.minimum(
                new, np.where(linked, padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w], none), out=new
            )
        # Pointer jumping: a pixel's id names a pixel of the same component, whose own id is at least as small;
        # following it makes long components converge in O(log length) sweeps instead of O(length).
        foreground = new < none
        new[foreground] = new.reshape(-1)[new[foreground]]
        if np.array_equal(new, ids):
            return np.where(ids < none, ids, -1)
        ids = new


@functools.cache
def shape_statistics() -> dict[str, tuple[float, float]]:
    """Per shape drawn in a box of side 1: (area, its centroid's y offset from the box centre)."""
    points = (np.arange(1024) + 0.5) / 1024 - 0.5
    stats = {}
    for shape in SHAPES:
        inside = shape_mask(shape, 2 * points[None, :], 2 * points[:, None])
        rows = inside.sum(axis=1)
        stats[shape] = (float(inside.mean()), float(rows @ points / rows.sum()))
    return stats


def claim_fringe(components: np.ndarray, labels: np.ndarray, nearest: np.ndarray, steps: int) -> np.ndarray:
    """Grows components into their faint fringe. components, labels, nearest: (n, h, w) from
    ``connected_components`` and ``segment``. A background pixel whose nearest colour is a neighbouring
    component's colour joins it, ``steps`` pixels deep (ties: the smaller id). Returns (n, h, w) int64 ids, -1
    where unclaimed. Blurred edges fall below 0.5 coverage; this gives them to their own object, never to a
    neighbour of the same colour."""
    n, h, w = components.shape
    none = n * h * w
    owner = np.where(components >= 0, components, none)
    component_label = np.append(labels.reshape(-1), -2)  # indexed by owner; "none" maps to no colour
    for _ in range(steps):
        padded = np.pad(owner, ((0, 0), (1, 1), (1, 1)), constant_values=none)
        claim = np.full_like(owner, none)
        for dy, dx in NEIGHBOURS:
            neighbour = padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            np.minimum(claim, np.where(component_label[neighbour] == nearest, neighbour, none), out=claim)
        owner = np.where((owner == none) & (labels < 0), claim, owner)
    return np.where(owner < none, owner, -1)


@functools.cache
def _gaussian_matrices(length: int) -> np.ndarray:
    """(len(BLUR_SIGMAS), length, length) float64: Gaussian blurs along one axis (identity for sigma 0),
    zero outside the window, each tap row normalised over the full kernel."""
    offsets = np.arange(length)[:, None] - np.arange(length)[None, :]
    out = []
    for sigma in BLUR_SIGMAS:
        if sigma == 0:
            out.append(np.eye(length))
            continue
        radius = np.arange(-int(np.ceil(4 * sigma)), int(np.ceil(4 * sigma)) + 1)
        out.append(np.exp(-0.5 * (offsets / sigma) ** 2) / np.exp(-0.5 * (radius / sigma) ** 2).sum())
    return np.stack(out)


def fit_shape(coverage: np.ndarray) -> tuple[str, float, Box]:
    """Which shape best explains one object's coverage of a pixel window.

    coverage: (h, w) float in [0, 1], zero away from the object. Each shape is drawn with the observed area and
    centroid (blur leaves both unchanged), blurred by each of BLUR_SIGMAS, and compared with the observation
    (summed absolute difference over the area). Returns (best shape, its error, its box in window pixels).
    """
    h, w = coverage.shape
    area = float(coverage.sum())
    xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
    cx, cy = float(coverage.sum(axis=0) @ xs) / area, float(coverage.sum(axis=1) @ ys) / area
    blur_rows, blur_cols = _gaussian_matrices(h), _gaussian_matrices(w)
    fits = []
    for shape, (fill, centroid_y) in shape_statistics().items():
        size = float(np.sqrt(area / fill))
        center = (cx, cy - centroid_y * size)
        models = blur_rows @ shape_coverage(shape, center, size, h, w) @ blur_cols.transpose(0, 2, 1)
        error = float(np.abs(coverage - models).sum(axis=(1, 2)).min()) / area
        half = size / 2
        fits.append((error, shape, (center[0] - half, center[1] - half, center[0] + half, center[1] + half)))
    error, shape, box = min(fits)
    return shape, error, box


DETECT_CHUNK = 4096


def detect_batch(images: np.ndarray) -> list[list[DetectedObject]]:
    """images: (n, h, w, 3) float32 in [0, 1]. Returns the detected objects of each image, largest first."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (n, h, w, 3) float in [0, 1], got shape {images.shape}")
    labels, nearest, coverage = segment(images)
    components = connected_components(labels)
    owners = claim_fringe(components, labels, nearest, FRINGE)
    colors = (*COLORS, OTHER_COLOR)
    height, width = images.shape[1:3]
    found: list[list[DetectedObject]] = []
    for image_components, image_owners, image_labels, image_coverage in zip(
        components, owners, labels, coverage, strict=True
    ):
        ys, xs = np.nonzero(image_components >= 0)
        ids, inverse, areas = np.unique(image_components[ys, xs], return_inverse=True, return_counts=True)
        objects = []
        for k in np.flatnonzero(areas >= MIN_AREA):
            members = inverse == k
            label = int(image_labels[ys[members][0], xs[members][0]])
            y0, y1 = max(ys[members].min() - FRINGE, 0), min(ys[members].max() + 1 + FRINGE, height)
            x0, x1 = max(xs[members].min() - FRINGE, 0), min(xs[members].max() + 1 + FRINGE, width)
            if label < len(COLORS):
                soft = np.where(image_owners[y0:y1, x0:x1] == ids[k], image_coverage[y0:y1, x0:x1], 0.0)
            else:
                soft = (image_components[y0:y1, x0:x1] == ids[k]).astype(np.float64)
            shape, error, (bx0, by0, bx1, by1) = fit_shape(soft)
            objects.append(
                DetectedObject(
                    shape if error <= SHAPE_TOLERANCE else None,
                    colors[label],
                    (x0 + bx0, y0 + by0, x0 + bx1, y0 + by1),
                    int(areas[k]),
                    error,
                )
            )
        found.append(sorted(objects, key=lambda o: -o.area))
    return found


def evaluate(objects: Sequence[DetectedObject], spec: PromptSpec) -> tuple[float, float]:
    """(strict in {0, 1}, partial in [0, 1]) of detected objects against a prompt's clauses (module docstring)."""
    terms: list[float] = []
    groups: list[list[DetectedObject] | None] = []
    for clause in spec.include:
        of_class = [o for o in objects if o.shape == clause.class_name]
        terms.append(max(0.0, 1.0 - abs(len(of_class) - clause.count) / clause.count))
        chosen = of_class
        if clause.color is not None:
            chosen = [o for o in of_class if o.color == clause.color]
            terms.append(min(len(chosen), clause.count) / clause.count)
        # Objects are sorted largest first: the most salient ones stand for the clause, as GenEval's most
        # confident detections do.
        group = chosen[: clause.count] if len(chosen) >= clause.count else None
        if clause.position is not None:
            relation, target = clause.position
            others = groups[target]
            holds = (
                group is not None
                and others is not None
                and all(relation in relations(o.box, t.box) for o in group for t in others)
            )
            terms.append(float(holds))
        groups.append(group)
    partial = float(np.mean(terms))
    excluded = all(
        sum(o.shape == c.class_name and c.color in (None, o.color) for o in objects) < c.count
        for c in spec.exclude
    )
    return float(partial == 1.0 and excluded), partial


def _as_spec(metadata: PromptSpec | Mapping[str, Any]) -> PromptSpec:
    return metadata if isinstance(metadata, PromptSpec) else PromptSpec.from_geneval(metadata)


def score(image: np.ndarray, metadata: PromptSpec | Mapping[str, Any]) -> tuple[float, float]:
    """image: (h, w, 3) float32 in [0, 1]; metadata: a PromptSpec or GenEval-layout dict. Returns
    (strict in {0, 1}, partial in [0, 1])."""
    return evaluate(detect_batch(np.asarray(image)[None])[0], _as_spec(metadata))


def score_batch(
    images: np.ndarray, metadata: Sequence[PromptSpec | Mapping[str, Any]], chunk: int = DETECT_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """images: (n, h, w, 3) float32 in [0, 1]; one metadata per image. Returns strict (n,) and partial (n,)
    float32. Detection runs ``chunk`` images at a time: its per-pixel intermediates grow with the batch
    (the proxy's labelled sample of ~110k pairs needed more than 24 GB in one go)."""
    if len(metadata) != len(images):
        raise ValueError(f"got {len(images)} images but {len(metadata)} metadata entries")
    detected = [
        o for start in range(0, len(images), chunk) for o in detect_batch(images[start : start + chunk])
    ]
    results = [evaluate(o, _as_spec(m)) for o, m in zip(detected, metadata, strict=True)]
    strict, partial = np.asarray(results, np.float32).reshape(-1, 2).T
    return strict, partial


@register("shapes")
def shapes_reward(kind: Literal["partial", "strict"] = "partial") -> Reward:
    """The shapes testbed reward, "partial" (training) or "strict"; needs ``shapes_spec`` (b, MAX_CLAUSES,
    CLAUSE_FIELDS) int32 in the batch (``slas_jax.testbed.shapes.encode_spec``). Runs on the host through
    ``jax.pure_callback``, so it works inside the jitted train step."""
    if kind not in ("partial", "strict"):
        raise ValueError(f"shapes reward kind must be 'partial' or 'strict', got {kind!r}")

    def host_score(images: np.ndarray, encoded: np.ndarray) -> np.ndarray:
        strict, partial = score_batch(images, [decode_spec(e) for e in encoded])
        return strict if kind == "strict" else partial

    def fn(_params: None, images: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
        return jax.pure_callback(
            host_score,
            jax.ShapeDtypeStruct(images.shape[:1], jnp.float32),
            images.astype(jnp.float32),
            batch[SPEC_KEY],
        )

    return Reward(fn=fn, reads=(SPEC_KEY,))


def shapes_scorer(images: np.ndarray, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ground truth as an evaluation scorer: strict and partial (n,) float32 of images (n, h, w, 3)
    float32 in [0, 1] against ``arrays["shapes_spec"]`` (n, MAX_CLAUSES, CLAUSE_FIELDS) int32."""
    strict, partial = score_batch(np.asarray(images, np.float32), [decode_spec(e) for e in arrays[SPEC_KEY]])
    return {"strict": strict, "partial": partial}


SCORERS.register("shapes")(Scorer(fn=shapes_scorer, reads=(SPEC_KEY,)))
