"""The shapes world: grammar, split, metadata, tokenizer and renderer."""

import hashlib

import numpy as np
import pytest

from slas_jax.testbed import shapes
from slas_jax.testbed.shapes import PromptSpec


def test_grammar_covers_every_geneval_category_in_both_splits():
    train, held_out = shapes.split_specs("train"), shapes.split_specs("held_out")
    assert {s.tag for s in train} == set(shapes.TAGS)
    # Category-free prompts ("a circle", "a circle and a square") have no combination to hold out.
    assert {s.tag for s in held_out} == {"colors", "counting", "color_attr", "position"}
    assert 200 <= len(train) <= 400 and len(held_out) >= 100


def test_metadata_follows_geneval_layout_and_round_trips():
    for spec in shapes.all_specs():
        entry = spec.to_geneval()
        assert entry["tag"] == spec.tag and entry["prompt"] == spec.prompt
        assert all({"class", "count"} <= set(c) for c in entry["include"])
        assert PromptSpec.from_geneval(entry) == spec
        for clause in spec.include:
            assert clause.class_name in spec.prompt or shapes.PLURALS[clause.class_name] in spec.prompt
            assert clause.color is None or clause.color in spec.prompt
            if clause.position is not None:
                assert clause.position[0] in spec.prompt and clause.position[1] == 0
        if spec.tag == "counting":
            (clause,) = spec.include
            assert spec.exclude == (shapes.Clause(clause.class_name, clause.count + 1),)
            assert spec.prompt.split()[0] == shapes.NUMBERS[clause.count - 1]
    position = next(s for s in shapes.all_specs() if s.tag == "position").to_geneval()
    assert position["include"][1]["position"][1] == 0 and len(position["include"][1]["position"]) == 2


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"tag": "colors"}, "non-empty 'include'"),
        ({"include": [{"count": 1}]}, "needs a 'class'"),
        ({"include": [{"class": "circle", "count": 0}]}, "positive integer"),
        ({"include": [{"class": "circle", "position": ["left of", 0]}]}, "earlier include"),
        ({"include": [{"class": "a"}, {"class": "b", "position": ["inside", 0]}]}, "is not one of"),
    ],
)
def test_bad_metadata_is_one_clear_line(metadata, message):
    with pytest.raises(ValueError, match=message) as e:
        PromptSpec.from_geneval(metadata)
    assert "\n" not in str(e.value)


def test_held_out_combinations_never_appear_in_training():
    train, held_out = shapes.split_specs("train"), shapes.split_specs("held_out")
    train_keys = {shapes.combination_key(s) for s in train}
    assert not train_keys & {shapes.combination_key(s) for s in held_out}
    train_parts = set().union(*(shapes.combination_parts(s) for s in train))
    held_out_parts = shapes.HELD_OUT_PAIRS | shapes.HELD_OUT_RELATIONS
    assert not train_parts & held_out_parts
    assert all(shapes.combination_parts(s) & held_out_parts for s in held_out)
    # Both kinds of novelty are represented: unseen colour-shape pairs and unseen relation triples alone.
    seen_pairs = set().union(*(shapes.combination_parts(s) for s in held_out))
    assert seen_pairs >= shapes.HELD_OUT_PAIRS
    assert any(not (shapes.combination_parts(s) & shapes.HELD_OUT_PAIRS) for s in held_out)
    # Held-out prompts are new combinations of words that training prompts use.
    train_words = set().union(*(set(s.prompt.split()) for s in train))
    assert set().union(*(set(s.prompt.split()) for s in held_out)) <= train_words


def test_relations_are_compared_in_canonical_form():
    assert shapes.canonical_relation("square", "right of", "circle") == ("circle", "left of", "square")
    assert shapes.canonical_relation("square", "below", "circle") == ("circle", "above", "square")
    assert shapes.canonical_relation("square", "above", "circle") == ("square", "above", "circle")


def test_split_is_pinned():
    """The prompt sets define every experiment: change them only deliberately, and update these digests."""
    digests = {
        split: hashlib.sha256("\n".join(s.prompt for s in shapes.split_specs(split)).encode()).hexdigest()[
            :16
        ]
        for split in ("train", "held_out")
    }
    assert digests == {"train": "eb0f5ee12927ab5d", "held_out": "982ddc4db6251bba"}


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="choose 'train' or 'held_out'"):
        shapes.split_specs("test")


def test_tokenizer_covers_the_grammar():
    tokenizer = shapes.make_tokenizer()
    prompts = [s.prompt for s in shapes.all_specs()]
    ids = tokenizer(prompts)
    assert ids.shape == (len(prompts), shapes.MAX_TOKENS) and ids.dtype == np.int32
    assert np.all(ids[:, 0] == tokenizer.BOS) and not np.any(ids == tokenizer.UNK)
    assert ids.max() == len(shapes.VOCABULARY) + 3
    lengths = (ids != tokenizer.PAD).sum(axis=1)
    assert np.all(ids[np.arange(len(prompts)), lengths - 1] == tokenizer.EOS)
    assert all(n == len(p.split()) + 2 for n, p in zip(lengths, prompts, strict=True))


def test_specs_encode_to_integers_and_back():
    specs = shapes.all_specs()
    encoded = shapes.encode_specs(specs)
    assert (
        encoded.shape == (len(specs), shapes.MAX_CLAUSES, shapes.CLAUSE_FIELDS) and encoded.dtype == np.int32
    )
    for spec, row in zip(specs, encoded, strict=True):
        decoded = shapes.decode_spec(row)
        assert (decoded.include, decoded.exclude) == (spec.include, spec.exclude)
    with pytest.raises(ValueError, match="outside the shapes world"):
        shapes.encode_spec(PromptSpec("a dog", "single_object", (shapes.Clause("dog", 1),)))


def test_renderer_is_deterministic_for_a_seed():
    specs = shapes.split_specs("train")[::10]
    images = shapes.render_batch(specs, seed=3)
    assert images.shape == (len(specs), 32, 32, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_array_equal(images, shapes.render_batch(specs, seed=3))
    assert not np.array_equal(images, shapes.render_batch(specs, seed=4))
    # Corners stay background: objects keep a pixel from the border.
    np.testing.assert_array_equal(images[:, 0, 0], np.broadcast_to(shapes.BACKGROUND, (len(specs), 3)))


def test_scenes_satisfy_their_prompts():
    rng = np.random.default_rng(0)
    for spec in shapes.split_specs("train") + shapes.split_specs("held_out"):
        scene = shapes.sample_scene(spec, rng)
        assert len(scene) == sum(c.count for c in spec.include)
        assert all(9.0 <= o.size <= 12.0 for o in scene)
        for i, a in enumerate(scene):
            for b in scene[i + 1 :]:
                gap_x = max(b.box[0] - a.box[2], a.box[0] - b.box[2])
                gap_y = max(b.box[1] - a.box[3], a.box[1] - b.box[3])
                assert max(gap_x, gap_y) >= 2.0
            assert min(a.box) >= 1.0 and max(a.box) <= 31.0
        start = 0
        for clause in spec.include:
            objects = scene[start : start + clause.count]
            start += clause.count
            assert all(o.shape == clause.class_name for o in objects)
            assert clause.color is None or all(o.color == clause.color for o in objects)
            if clause.position is not None:
                (target,) = [o for o in scene if o.shape == spec.include[clause.position[1]].class_name]
                assert shapes.relations(objects[0].box, target.box) == {clause.position[0]}


def test_geneval_relative_position_rule():
    left, right = (0.0, 10.0, 10.0, 20.0), (20.0, 12.0, 30.0, 22.0)
    assert shapes.relations(left, right) == {"left of"}
    assert shapes.relations(right, left) == {"right of"}
    assert shapes.relations((0.0, 0.0, 10.0, 10.0), (0.0, 20.0, 10.0, 30.0)) == {"above"}
    # Offsets within POSITION_THRESHOLD * (sum of sides) do not count: touching boxes are not "left of".
    assert shapes.relations((0.0, 0.0, 10.0, 10.0), (1.0, 1.0, 11.0, 11.0)) == frozenset()
