"""The shapes ground-truth reward: exact on renders, robust to noise and blur, strict about mismatches."""

import dataclasses

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from slas_jax.rewards import build_reward
from slas_jax.testbed import ground_truth as reward
from slas_jax.testbed import shapes
from slas_jax.testbed.shapes import Clause, PromptSpec

NUM_RENDERS = 2000


@pytest.fixture(scope="module")
def rendered():
    """NUM_RENDERS random prompts of both splits, their renders and detections."""
    pool = shapes.split_specs("train") + shapes.split_specs("held_out")
    specs = [pool[i] for i in np.random.default_rng(0).integers(len(pool), size=NUM_RENDERS)]
    images = shapes.render_batch(specs, seed=1)
    return specs, images, reward.detect_batch(images)


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """(n, h, w, 3) blurred over h and w, edges replicated."""
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    h, w = images.shape[1:3]
    padded = np.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    rows = sum(t * padded[:, i : i + h] for i, t in enumerate(taps))
    return sum(t * rows[:, :, i : i + w] for i, t in enumerate(taps))


def test_every_render_scores_strict_one(rendered):
    specs, _, detections = rendered
    scores = np.array([reward.evaluate(d, s) for d, s in zip(detections, specs, strict=True)])
    failed = [s.prompt for s, (strict, _) in zip(specs, scores, strict=True) if strict < 1]
    assert scores.mean(axis=0).tolist() == [1.0, 1.0], failed
    assert {s.tag for s in specs} == set(shapes.TAGS)


def _other(values, current):
    return next(v for v in values if v != current)


def wrong_count(spec: PromptSpec) -> PromptSpec | None:
    if spec.tag != "counting":
        return None
    (clause,) = spec.include
    count = clause.count + 1 if clause.count < 4 else clause.count - 1
    return dataclasses.replace(
        spec,
        include=(dataclasses.replace(clause, count=count),),
        exclude=(Clause(clause.class_name, count + 1),),
    )


def wrong_color(spec: PromptSpec) -> PromptSpec | None:
    index = next((i for i, c in enumerate(spec.include) if c.color is not None), None)
    if index is None:
        return None
    clause = spec.include[index]
    used = {c.color for c in spec.include}
    changed = dataclasses.replace(clause, color=next(c for c in shapes.COLORS if c not in used))
    return dataclasses.replace(spec, include=(*spec.include[:index], changed, *spec.include[index + 1 :]))


def wrong_shape(spec: PromptSpec) -> PromptSpec:
    clause = spec.include[0]
    used = {c.class_name for c in spec.include}
    shape = next(s for s in shapes.SHAPES if s not in used)
    exclude = tuple(dataclasses.replace(c, class_name=shape) for c in spec.exclude)
    return dataclasses.replace(
        spec, include=(dataclasses.replace(clause, class_name=shape), *spec.include[1:]), exclude=exclude
    )


def swapped_relation(spec: PromptSpec) -> PromptSpec | None:
    if spec.tag != "position":
        return None
    target, subject = spec.include
    opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    return dataclasses.replace(
        spec, include=(target, dataclasses.replace(subject, position=(opposite[subject.position[0]], 0)))
    )


def swapped_binding(spec: PromptSpec) -> PromptSpec | None:
    if spec.tag != "color_attr":
        return None
    a, b = spec.include
    return dataclasses.replace(
        spec, include=(dataclasses.replace(a, color=b.color), dataclasses.replace(b, color=a.color))
    )


@pytest.mark.parametrize("mutate", [wrong_count, wrong_color, wrong_shape, swapped_relation, swapped_binding])
def test_mismatched_prompts_score_zero(rendered, mutate):
    """Render prompt A, score against prompt B that differs in one respect: never strict, never full partial."""
    specs, _, detections = rendered
    pairs = [(d, mutate(s)) for d, s in zip(detections, specs, strict=True)]
    scores = np.array([reward.evaluate(d, wrong) for d, wrong in pairs if wrong is not None])
    assert len(scores) >= 100
    assert scores[:, 0].max() == 0.0 and scores[:, 1].max() < 1.0


@pytest.mark.parametrize(("noise", "blur"), [(0.05, 1.0), (0.1, 0.0)])
def test_noise_and_blur_keep_scores_exact(rendered, noise, blur):
    """Gaussian pixel noise of std ``noise`` after a Gaussian blur of std ``blur`` pixels."""
    specs, images, _ = rendered
    specs, images = specs[:1000], images[:1000]
    rng = np.random.default_rng(2)
    blurred = gaussian_blur(images, blur) if blur else images
    degraded = np.clip(blurred + rng.normal(0.0, noise, images.shape), 0.0, 1.0)
    strict, partial = reward.score_batch(degraded.astype(np.float32), specs)
    failed = [s.prompt for s, k in zip(specs, strict, strict=True) if k < 1]
    assert strict.mean() == 1.0 and partial.mean() == 1.0, failed


def test_scoring_in_chunks_gives_the_scores_of_one_batch(rendered):
    """Large labelled samples are scored a chunk at a time (one batch of ~110k pairs ran out of 24 GB)."""
    specs, images, _ = rendered
    wrong = [specs[(i + 1) % 300] for i in range(300)]
    whole = reward.score_batch(images[:300], wrong, chunk=300)
    chunked = reward.score_batch(images[:300], wrong, chunk=7)
    np.testing.assert_array_equal(chunked, whole)
    assert 0 < whole[1].mean() < 1, "the sample must mix right and wrong"


def test_noise_specks_are_ignored():
    spec = shapes.split_specs("train")[40]
    image = shapes.render_batch([spec], seed=5)[0]
    rng = np.random.default_rng(0)
    for y, x in rng.integers(0, 31, size=(12, 2)):
        image[y : y + 2, x : x + 2] = shapes.PALETTE[shapes.COLORS[int(rng.integers(5))]]
    assert reward.score(image, spec) == (1.0, 1.0)


def test_partial_score_counts_satisfied_conditions():
    three = PromptSpec("three red circles", "counting", (Clause("circle", 3, "red"),), (Clause("circle", 4),))
    image = shapes.render_batch([three], seed=0)[0]

    def counting(n: int) -> PromptSpec:
        return PromptSpec("", "counting", (Clause("circle", n, "red"),), (Clause("circle", n + 1),))

    # Count term max(0, 1 - |3 - n| / n) and colour term min(3, n) / n; the exclude clause only gates strict.
    assert reward.score(image, counting(4)) == pytest.approx((0.0, (0.75 + 0.75) / 2))
    assert reward.score(image, counting(2)) == pytest.approx((0.0, (0.5 + 1.0) / 2))
    assert reward.score(np.ones_like(image), counting(3)) == (0.0, 0.0)
    blue = PromptSpec("", "colors", (Clause("circle", 3, "blue"),))
    assert reward.score(image, blue) == pytest.approx((0.0, 0.5))
    assert reward.score(image, three.to_geneval()) == (1.0, 1.0)


def test_off_palette_colours_and_non_shapes_match_no_clause():
    image = np.ones((32, 32, 3), np.float32)
    image[4:14, 4:14] = 0.0  # a black square
    image[20:25, 10:24] = shapes.PALETTE["red"]  # a red bar, 14 x 5: no shape of the world
    black, bar = reward.detect_batch(image[None])[0]  # largest first
    assert (black.shape, black.color) == ("square", reward.OTHER_COLOR)
    assert (bar.shape, bar.color) == (None, "red")
    assert reward.score(image, PromptSpec("", "colors", (Clause("square", 1, "red"),)))[0] == 0.0


def test_connected_components_match_a_flood_fill():
    labels = np.random.default_rng(0).integers(-1, 3, size=(3, 12, 12)).astype(np.int32)
    components = reward.connected_components(labels)
    for n in range(3):
        seen = np.zeros((12, 12), bool)
        for y, x in zip(*np.nonzero(labels[n] >= 0), strict=True):
            if seen[y, x]:
                continue
            stack, members = [(y, x)], []
            seen[y, x] = True
            while stack:
                cy, cx = stack.pop()
                members.append((cy, cx))
                for dy, dx in reward.NEIGHBOURS:
                    ny, nx = cy + dy, cx + dx
                    if (
                        0 <= ny < 12
                        and 0 <= nx < 12
                        and not seen[ny, nx]
                        and labels[n, ny, nx] == labels[n, y, x]
                    ):
                        seen[ny, nx] = True
                        stack.append((ny, nx))
            ids = {int(components[n, my, mx]) for my, mx in members}
            assert ids == {n * 144 + min(my * 12 + mx for my, mx in members)}
        assert np.all((components[n] < 0) == (labels[n] < 0))


def test_registered_reward_runs_inside_jit_on_sharded_images(rendered):
    """As in the train step: images sharded over the batch, the reward consumed inside the same jit."""
    specs, images, _ = rendered
    specs, images = specs[:8], images[:8]
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    sharded = jax.device_put(images, NamedSharding(mesh, PartitionSpec("data")))
    wrong_specs = [swapped_binding(s) or wrong_shape(s) for s in specs]
    strict, partial = reward.score_batch(images, wrong_specs)
    for kind, expected in (("strict", strict), ("partial", partial)):
        reward_fn = build_reward("shapes", {"kind": kind}).fn

        @jax.jit
        def centred(images, encoded, reward_fn=reward_fn):
            rewards = reward_fn(None, images, {"shapes_spec": encoded})
            return rewards - rewards.mean(), rewards

        right = centred(sharded, shapes.encode_specs(specs))
        wrong = centred(sharded, shapes.encode_specs(wrong_specs))
        np.testing.assert_array_equal(right[1], np.ones(8, np.float32))
        np.testing.assert_array_equal(wrong[1], expected)
        np.testing.assert_allclose(wrong[0], expected - expected.mean(), atol=1e-6)
        assert expected.max() < 1.0
    with pytest.raises(
        ValueError, match=r"config\.reward\.options\.kind: must be one of 'partial', 'strict'"
    ):
        build_reward("shapes", {"kind": "best"})
