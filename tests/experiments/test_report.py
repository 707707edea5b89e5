"""report.md from synthetic run folders whose answers are known: a treatment that reaches the target in
half the steps and whose proxy-truth gap stays flat while the control's grows."""

import json
from pathlib import Path

import numpy as np

from slas_jax.experiments.grid import Cell
from slas_jax.experiments.report import record_sitting, write_report
from slas_jax.experiments.runner import DONE, Plan

STEPS = 20
SETTINGS = {"control": "dance", "treatments": ("slas",), "target_reward": 0.4775, "window": 1, "n_boot": 500}


def finished_cell(
    out: Path, method: str, seed: int, reward: np.ndarray, truth: np.ndarray, size: str | None = None
) -> Plan:
    labels = {"method": method, "seed": str(seed)} | ({"size": size} if size else {})
    name = "__".join(f"{axis}-{label}" for axis, label in labels.items())
    cell = Cell(name, labels, "configs/brightness_cpu.py", ())
    run_dir = out / cell.name
    run_dir.mkdir(parents=True)
    records = [
        {"step": s, "reward_mean": float(r), "truth/partial": float(t)}
        for s, (r, t) in enumerate(zip(reward, truth, strict=True))
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / DONE).write_text("{}\n")
    return Plan(cell, run_dir, None, STEPS)


def test_claims_read_from_the_run_folders(tmp_path):
    rng = np.random.default_rng(0)
    steps = np.arange(STEPS)
    plans = []
    for seed in range(3):
        noise = rng.normal(0, 1e-4, size=(2, STEPS))
        # control: reward 0.40 -> 0.495 (target 0.4775 after 17 steps), truth flat: the gap grows by ~0.095
        plans.append(finished_cell(tmp_path, "dance", seed, 0.4 + 0.005 * steps + noise[0], 0.4 + noise[1]))
        # treatment: twice as fast (9 steps), truth follows the reward: the gap stays flat
        reward = 0.4 + 0.01 * steps + noise[0]
        plans.append(finished_cell(tmp_path, "slas", seed, reward, reward - 0.02 + noise[1]))
    plans.append(
        Plan(
            Cell("method-slas__seed-9", {"method": "slas", "seed": "9"}, "x", ()),
            tmp_path / "none",
            None,
            STEPS,
        )
    )
    path = write_report(tmp_path, plans, SETTINGS, "python -m slas_jax.experiments --config grid.py")
    report = path.read_text()
    assert "6 of 7 cells finished" in report and "`python -m slas_jax.experiments --config grid.py`" in report
    rows = {line.split(" | ")[3]: line for line in report.splitlines() if line.startswith("| claim")}
    claim1 = rows["steps to target"].split(" | ")
    assert claim1[5] == "-8.000 [-8.000, -8.000]"
    assert claim1[-1] == "supported |"
    hacking = rows["hacking: gap growth"].split(" | ")
    assert -0.1 < float(hacking[5].split()[0]) < -0.09
    assert hacking[-1] == "supported |"
    assert rows["held-out truth"].endswith("| not tested |")
    assert "| method-slas | 3 | 9.0 [9.0, 9.0] |" in report
    assert "| method-dance | 3 | 17.0 [17.0, 17.0] |" in report
    assert (tmp_path / "curves.png").is_file() and not (tmp_path / "categories.png").exists()


def test_model_scaling_is_the_change_of_the_effect_between_sizes(tmp_path):
    """At the small size the treatment reaches the target in 9 steps against 17; at the large size both take
    9: the advantage shrinks by 8 steps with size, which contradicts claim 3."""
    steps = np.arange(STEPS)
    rng = np.random.default_rng(1)
    plans = []
    for seed in range(3):
        for size, control_slope in (("small", 0.005), ("large", 0.01)):
            noise = rng.normal(0, 1e-4, size=(2, STEPS))
            plans.append(
                finished_cell(
                    tmp_path, "dance", seed, 0.4 + control_slope * steps + noise[0], 0.4 + noise[1], size
                )
            )
            reward = 0.4 + 0.01 * steps + noise[0]
            plans.append(finished_cell(tmp_path, "slas", seed, reward, reward + noise[1], size))
    report = write_report(tmp_path, plans, SETTINGS, "grid").read_text()
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith("| claim 3")]
    by_measure = {row[3]: row for row in rows}
    scaling = by_measure["steps to target: effect at large − at small"]
    assert scaling[1] == "method-slas__size-large" and scaling[4] == "3 vs 3"
    assert scaling[5] == "8.000 [8.000, 8.000]" and scaling[-1] == "contradicted |"
    assert "the claim-3 rows give how each treatment's effect changes" in report


def test_per_prompt_scores_of_the_last_evaluation_give_categories_and_the_report_goes_to_its_folder(tmp_path):
    """eval_scores.jsonl's last evaluation (after the last step) gives per-prompt truth: the category table
    and intervals over prompts; with a report_dir the report, plots and sample grids go there, and the
    sittings' wall time and commits are quoted."""
    out, published = tmp_path / "grid", tmp_path / "docs"
    plans = []
    for seed in range(2):
        for method, level in (("dance", 0.4), ("slas", 0.6)):
            plan = finished_cell(out, method, seed, np.full(STEPS, 0.5), np.full(STEPS, 0.5))
            # counting (tag 2): +0.2 on average, but the seeds disagree by 0.6
            counting = level + 0.2 + (0.3 if (method == "dance") == (seed == 0) else -0.3)
            evaluation = {
                "scores": {"partial": [level, level, counting, counting]},
                "rewards": {"reward": [0.5] * 4},
                "tags": [1, 1, 2, 2],
            }
            early = {"step": 0, "train": {**evaluation, "scores": {"partial": [0.0] * 4}}}
            lines = [early, {"step": STEPS, "train": evaluation}]
            (plan.run_dir / "eval_scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
            (plan.run_dir / "samples_after.png").write_bytes(b"png")
            plans.append(plan)
    record_sitting(
        out,
        "python -m slas_jax.experiments --config grid.py",
        {"commit": "abc1234", "started": "2026-12-03 10:00 UTC", "minutes": 90.0, "finished": 4},
    )
    settings = {"control": "dance", "treatments": ("slas",), "window": 1, "n_boot": 200}
    path = write_report(out, plans, settings, "grid", report_dir=published)
    assert path == published / "report.md" and (published / "curves.png").is_file()
    report = path.read_text()
    assert "1 sitting(s) of `python -m slas_jax.experiments --config grid.py`, 1.5 h of wall time" in report
    assert "at commit(s) `abc1234`" in report
    assert "| method-dance | train | two_object | 2 | 0.400 [0.400, 0.400] |" in report
    assert "| method-slas | train | counting | 2 | 0.800 [0.500, 1.100] |" in report
    rows = {line.split(" | ")[3]: line for line in report.splitlines() if line.startswith("| claim 5")}
    assert rows["training truth, two_object"].endswith(
        "| 2 vs 2 | 0.200 [0.200, 0.200] | — | supported (not worse by 0.05) |"
    )
    # a category whose interval reaches below -0.05 supports nothing, however wide the MDE
    assert rows["training truth, counting"].endswith("| inconclusive |")
    assert (published / "samples" / "method-slas.png").read_bytes() == b"png"
    assert "![method-slas](samples/method-slas.png)" in report
