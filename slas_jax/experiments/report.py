"""``<out>/report.md`` and its plots from a grid's run folders: per cell group (every axis but the seed)
the mean and a 95% bootstrap interval over seeds (and over evaluation prompts where per-prompt scores
exist) of each measure, and the paper's claims, one by one, as treatment-minus-control effects with their
intervals, the smallest effect the seeds could detect, and a verdict.

Only finished cells (``done.json``) count. Where a run holds them, the measures read:

- ``metrics.jsonl``: ``reward_mean`` (the training reward of each step's rollouts, the proxy on the shapes
  testbed), ``truth/partial`` (their ground truth), and every ``eval.every`` steps ``<set>/reward`` and
  ``<set>/partial`` on the fixed sets (``report.train_set``, ``report.held_out_set``). These are means
  over the set, so their intervals are over seeds only;
- ``eval_scores.jsonl`` (the same evaluations per prompt), or else ``final_eval/`` (the shapes benchmark of
  the final checkpoint, its PNGs rescored here into per-prompt scores, cached in
  ``final_eval/per_prompt.json``): the ground truth per prompt after the last step, for the intervals over
  seeds and prompts and the per-category breakdown.

The report config (the grid config's ``report``): ``method_axis`` ("method"), ``seed_axis`` ("seed"),
``size_axis`` ("size"), ``control`` (the baseline's method label, "dance_grpo"), ``treatments`` (method
labels compared with it), ``target_reward`` (None: per context, the cells sharing every label but the
method and the seed, halfway from their mean reward over the first ``window`` steps to their median over
the last), ``window`` (steps of the moving average on per-step curves, 5), ``n_boot`` (2000),
``fidelity_margin`` (claim 5's non-inferiority margin on the truth metric, 0.05).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slas_jax.data.geneval import TAG_KEY, TAGS
from slas_jax.evaluate.fixed_sets import repeat_rows
from slas_jax.evaluate.shapes_benchmark import benchmark_sets, read_images
from slas_jax.experiments import stats
from slas_jax.experiments.plots import save_categories, save_curves
from slas_jax.experiments.runner import FINAL_EVAL, Plan, attempts, is_done
from slas_jax.metrics import read_metrics
from slas_jax.resume import EVAL_SCORES_FILE
from slas_jax.scorers import SCORERS

REPORT = "report.md"
SITTINGS = "sittings.jsonl"
PER_PROMPT = "per_prompt.json"
DEFAULTS = {
    "method_axis": "method",
    "seed_axis": "seed",
    "size_axis": "size",
    "control": "dance_grpo",
    "treatments": (),
    "target_reward": None,
    "window": 5,
    "n_boot": 2000,
    "train_set": "train",
    "held_out_set": "held_out",
    "truth_metric": "partial",
    "fidelity_margin": 0.05,
}


@dataclass
class Run:
    """A finished cell's data: ``records`` (metrics.jsonl) and, from its final benchmark, ``per_prompt``:
    set -> {"truth": {metric: (prompts,) float64 ground truth per prompt}, "tags": (prompts,) int category}."""

    plan: Plan
    records: list[dict[str, Any]]
    per_prompt: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    before: dict[str, float] = field(default_factory=dict)
    """The fixed sets' scores before the first step (step 0 of the series), when known."""

    def curve(self, key: str) -> np.ndarray:
        """(num_steps,) float64 of ``key`` per step, NaN where not logged."""
        out = np.full(self.plan.num_steps, np.nan)
        for record in self.records:
            if record.get(key) is not None and record["step"] < len(out):
                out[record["step"]] = record[key]
        return out

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps done after the evaluation, values) of a key logged only at some steps."""
        points = [(0, self.before[key])] if key in self.before else []
        points += [(r["step"] + 1, r[key]) for r in self.records if r.get(key) is not None]
        return np.array([p[0] for p in points], np.int64), np.array([p[1] for p in points], np.float64)


def per_prompt_scores(plan: Plan) -> dict[str, dict[str, np.ndarray]]:
    """The ground truth per prompt of each fixed set after the last step: from the training run's last
    evaluation (``eval_scores.jsonl``), else from the PNGs of ``<cell>/final_eval`` scored by the cell's
    scorer (cached in ``final_eval/per_prompt.json``); empty when there is neither."""
    evaluations = plan.run_dir / EVAL_SCORES_FILE
    last = read_metrics(evaluations)[-1:] if evaluations.is_file() else []
    if last and last[0]["step"] == plan.num_steps:
        return {
            name: _set_scores(scores)
            for name, scores in last[0].items()
            if name != "step" and scores["scores"]
        }
    folder = plan.run_dir / FINAL_EVAL
    if not plan.final_eval or not (folder / "shapes.json").is_file():
        return {}
    cache = folder / PER_PROMPT
    if not cache.is_file():
        config = plan.config
        spp = config.eval.samples_per_prompt
        scorer = SCORERS.get(config.eval.scorer)
        result = {}
        for bench in benchmark_sets(config, folder, config.eval.num_prompts, spp):
            images = read_images([job.path for job in bench.jobs])
            scores = scorer.fn(images, repeat_rows(bench.arrays, spp))
            tags = bench.arrays.get(TAG_KEY, np.zeros(len(bench.prompts), np.int64))
            result[bench.name] = {
                "truth": {
                    k: np.asarray(v, np.float64).reshape(-1, spp).mean(1).tolist() for k, v in scores.items()
                },
                "tags": np.asarray(tags).tolist(),
            }
        cache.write_text(json.dumps(result) + "\n")
    loaded = json.loads(cache.read_text())
    return {
        name: {"truth": {k: np.asarray(v) for k, v in s["truth"].items()}, "tags": np.asarray(s["tags"])}
        for name, s in loaded.items()
    }


def _set_scores(scores: Mapping[str, Any]) -> dict[str, Any]:
    """One set of an ``eval_scores.jsonl`` record as {"truth": {metric: (prompts,)}, "tags": (prompts,)}."""
    truth = {k: np.asarray(v, np.float64) for k, v in scores["scores"].items()}
    prompts = len(next(iter(truth.values())))
    tags = np.asarray(scores["tags"], np.int64) if scores["tags"] else np.zeros(prompts, np.int64)
    return {"truth": truth, "tags": tags}


def scores_before(plan: Plan) -> dict[str, float]:
    """The fixed sets' scores of the untrained model: ``final.json``'s "before" (written by the train run's
    last process) when that process started at step 0; a resumed process's "before" is the resumed state,
    so then none (its section of train.log says "resumed from step")."""
    path = plan.run_dir / "final.json"
    trains = [output for phase, output in attempts(plan.run_dir) if phase == "train"]
    if not path.is_file() or not trains or "resumed from step" in trains[-1]:
        return {}
    return {k: float(v) for k, v in json.loads(path.read_text()).get("before", {}).items()}


def load_runs(plans: Sequence[Plan]) -> list[Run]:
    """The finished cells' data."""
    return [
        Run(plan, read_metrics(plan.run_dir / "metrics.jsonl"), per_prompt_scores(plan), scores_before(plan))
        for plan in plans
        if is_done(plan)
    ]


def group_name(labels: Mapping[str, str], seed_axis: str) -> str:
    return "__".join(f"{axis}-{label}" for axis, label in labels.items() if axis != seed_axis) or "all"


def context_of(labels: Mapping[str, str], settings: Mapping[str, Any]) -> str:
    """The labels but the method and the seed: the cells a method is compared within."""
    kept = {k: v for k, v in labels.items() if k != settings["method_axis"]}
    return group_name(kept, settings["seed_axis"])


def _halfway(runs: Sequence[Run], window: int) -> float:
    """Halfway from the runs' mean training reward over the first ``window`` steps to their median over the
    last ``window`` (one step's rollouts are a few prompts, too noisy a start)."""
    first = np.mean([np.nanmean(run.curve("reward_mean")[:window]) for run in runs])
    last = np.median([_last_window(run.curve("reward_mean"), window) for run in runs])
    return float(first + 0.5 * (last - first))


def _last_window(curve: np.ndarray, window: int) -> float:
    values = curve[np.isfinite(curve)]
    return float(np.mean(values[-window:])) if len(values) else float("nan")


class Measures:
    """Each measure of a run, as a (prompts,) array when per-prompt scores exist, else a float."""

    def __init__(self, settings: Mapping[str, Any], targets: Mapping[str, float]):
        self.s = settings
        self.targets = targets
        """Target training reward by context (:func:`context_of`)."""

    def steps_to_target(self, run: Run) -> float:
        """Steps until the moving average of the rollout reward reaches the target; a run that never does
        counts as its length (censored: the estimate is then a lower bound)."""
        target = self.targets[context_of(run.plan.cell.labels, self.s)]
        reached = stats.steps_to_target(run.curve("reward_mean"), target, self.s["window"])
        return float(run.plan.num_steps if reached is None else reached)

    def final_reward(self, run: Run) -> float:
        """The training reward at the end: on the training fixed set's last evaluation, else the last
        ``window`` rollouts."""
        _, values = run.series(f"{self.s['train_set']}/reward")
        return float(values[-1]) if len(values) else _last_window(run.curve("reward_mean"), self.s["window"])

    def truth(self, run: Run, which: str) -> np.ndarray | float:
        """Final ground truth on the ``which`` set: per prompt from the final benchmark, else the last
        in-training evaluation, else (training set) the last rollouts' truth."""
        name, metric = self.s[f"{which}_set"], self.s["truth_metric"]
        if name in run.per_prompt:
            return run.per_prompt[name]["truth"][metric]
        _, values = run.series(f"{name}/{metric}")
        if len(values):
            return float(values[-1])
        if which == "train":
            return _last_window(run.curve(f"truth/{metric}"), self.s["window"])
        return float("nan")

    def gap(self, run: Run) -> tuple[np.ndarray, np.ndarray]:
        """The proxy-truth gap over steps: (steps, training reward - ground truth), on the training fixed
        set's evaluations where the run has them, else on the rollouts (moving average)."""
        name, metric = self.s["train_set"], self.s["truth_metric"]
        steps, reward = run.series(f"{name}/reward")
        _, truth = run.series(f"{name}/{metric}")
        if len(steps) and len(truth) == len(steps):
            return steps, reward - truth
        rollout = run.curve("reward_mean") - run.curve(f"truth/{metric}")
        return np.arange(1, len(rollout) + 1), stats.moving_average(rollout, self.s["window"])

    def hacking(self, run: Run) -> float:
        """How much the gap grew from the first evaluation to the last (positive: the proxy ran ahead)."""
        _, gap = self.gap(run)
        gap = gap[np.isfinite(gap)]
        return float(gap[-1] - gap[0]) if len(gap) >= 2 else float("nan")


MEASURES = (
    ("steps to target", "steps_to_target", "less", "claim 1: trains faster"),
    ("final training reward", "final_reward", "greater", None),
    ("training-prompt truth", "train_truth", "greater", None),
    ("held-out truth", "held_out_truth", "greater", "claim 2: scores better out of domain"),
    ("hacking: gap growth", "hacking", "less", "claim 4: hacks the reward less"),
)


def _value(measures: Measures, run: Run, key: str) -> np.ndarray | float:
    if key == "train_truth":
        return measures.truth(run, "train")
    if key == "held_out_truth":
        return measures.truth(run, "held_out")
    return getattr(measures, key)(run)


def _stack(values: Sequence[np.ndarray | float]) -> np.ndarray | None:
    """Per-seed values -> (seeds,) or (seeds, prompts); None when any is missing."""
    arrays = [np.atleast_1d(np.asarray(v, np.float64)) for v in values]
    if not arrays or any(not np.all(np.isfinite(a)) for a in arrays):
        return None
    if len({a.shape for a in arrays}) != 1:
        arrays = [np.array([a.mean()]) for a in arrays]
    stacked = np.stack(arrays)
    return stacked[:, 0] if stacked.shape[1] == 1 else stacked


def _fmt(interval: stats.Interval | None, digits: int = 3) -> str:
    if interval is None:
        return "—"
    return f"{interval.estimate:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


@dataclass
class Comparison:
    """One claim's row: treatment group vs control group on a measure."""

    claim: str
    treatment: str
    control: str
    measure: str
    effect: stats.Interval | None
    mde: float
    verdict: str
    seeds: tuple[int, int]


def _per_seed(values: np.ndarray) -> np.ndarray:
    """(seeds,) or (seeds, prompts) -> (seeds,): each seed's mean over the prompts."""
    return values.mean(1) if values.ndim == 2 else values


def compare(
    claim: str, measure: str, direction: str, treat: np.ndarray | None, ctrl: np.ndarray | None, names, n_boot
) -> Comparison:
    """The treatment-minus-control row of a claim; with fewer than 2 seeds in an arm the seed-to-seed spread
    is unmeasured, so the interval (over prompts at most) gets no verdict."""
    if treat is None or ctrl is None or treat.ndim != ctrl.ndim:
        return Comparison(claim, *names, measure, None, float("nan"), "not tested", (0, 0))
    seeds = (len(treat), len(ctrl))
    effect = stats.bootstrap_difference(treat, ctrl, n_boot=n_boot)
    per_seed = (_per_seed(treat), _per_seed(ctrl))
    mde = stats.minimum_detectable_effect(stats.pooled_std(*per_seed), *seeds)
    verdict = stats.verdict(effect, direction) if min(seeds) >= 2 else "not tested (one seed)"
    return Comparison(claim, *names, measure, effect, mde, verdict, seeds)


def git_commit() -> str:
    """The checkout's short commit hash ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record_sitting(out: Path, command: str, outcome: Mapping[str, Any]) -> None:
    """Appends one sitting of the grid (``outcome``: its commit and start, minutes and cells finished) with
    its command to ``out/sittings.jsonl``, which the report sums into the grid's wall time."""
    record = {"command": command, **outcome}
    with (out / SITTINGS).open("a") as f:
        f.write(json.dumps(record) + "\n")


def _sittings(out: Path) -> str:
    path = out / SITTINGS
    records = (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )
    if not records:
        return "No sitting of the runner is recorded."
    minutes = sum(r["minutes"] for r in records)
    commits = ", ".join(f"`{c}`" for c in dict.fromkeys(r["commit"] for r in records))
    return (
        f"The cells ran in {len(records)} sitting(s) of `{records[-1]['command']}`, {minutes / 60:.1f} h of wall "
        f"time in all (from {records[0]['started']} to the last sitting's end), at commit(s) {commits}."
    )


def write_report(
    out: Path,
    plans: Sequence[Plan],
    report_config: Mapping[str, Any],
    command: str,
    report_dir: Path | None = None,
) -> Path:
    """Writes ``report.md`` (and ``curves.png``, ``categories.png``, and with a ``report_dir`` other than
    ``out`` each group's sample grid in ``samples/``) from the finished cells of the grid in ``out`` into
    ``report_dir`` (default ``out``); returns the report's path. ``command``: the command line that wrote
    it, quoted in the report."""
    report_dir = out if report_dir is None else report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    settings = {**DEFAULTS, **dict(report_config)}
    runs = load_runs(plans)
    seed_axis, method_axis = settings["seed_axis"], settings["method_axis"]
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(group_name(run.plan.cell.labels, seed_axis), []).append(run)
    contexts: dict[str, list[Run]] = {}
    for run in runs:
        contexts.setdefault(context_of(run.plan.cell.labels, settings), []).append(run)
    targets = {
        context: _halfway(members, settings["window"])
        if settings["target_reward"] is None
        else float(settings["target_reward"])
        for context, members in contexts.items()
    }
    measures = Measures(settings, targets)
    values = {
        name: {key: _stack([_value(measures, run, key) for run in members]) for _, key, _, _ in MEASURES}
        for name, members in groups.items()
    }
    lines = [
        f"# Experiment report: {out.name}",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at commit `{git_commit()}` by "
        f"`{command}`. {len(runs)} of {len(plans)} cells finished; only finished cells count. "
        + _sittings(out),
        "",
        "Target training reward for 'steps to target' (moving average over "
        f"{settings['window']} steps; a run that never reaches it counts as its length): "
        + (", ".join(f"{context} {target:.4f}" for context, target in targets.items()) or "none")
        + ".",
        "",
        "## Per group: mean [95% interval] over seeds",
        "",
        "| group | seeds | " + " | ".join(label for label, *_ in MEASURES) + " |",
        "| --- | --- | " + " | ".join("---" for _ in MEASURES) + " |",
    ]
    n_boot = settings["n_boot"]
    for name, members in groups.items():
        cells = []
        for _, key, _, _ in MEASURES:
            v = values[name][key]
            cells.append(
                "—" if v is None else _fmt(stats.bootstrap_mean(v, n_boot=n_boot), 1 if "steps" in key else 3)
            )
        lines.append(f"| {name} | {len(members)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Truth intervals are over seeds and evaluation prompts where per-prompt scores exist (the last "
        "evaluation's eval_scores.jsonl, or a final benchmark's final_eval/), over seeds only otherwise "
        "(metrics.jsonl holds set means).",
        "",
    ]
    comparisons = _claims(groups, values, settings, method_axis)
    lines += [
        "## The paper's claims (treatment − control, 95% interval; MDE: smallest true effect the seeds "
        "detect with 80% power, two-sided t-test at 5%)",
        "",
        "| claim | treatment | control | measure | seeds | effect | MDE | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in comparisons:
        mde = "—" if not np.isfinite(c.mde) else f"{c.mde:.3f}"
        lines.append(
            f"| {c.claim} | {c.treatment} | {c.control} | {c.measure} | {c.seeds[0]} vs {c.seeds[1]} | "
            f"{_fmt(c.effect)} | {mde} | {c.verdict} |"
        )
    if not comparisons:
        lines.append(
            f"| — | {', '.join(settings['treatments']) or 'no treatments named'} | {settings['control']} | "
            "no finished treatment and control groups to compare yet | | | | not tested |"
        )
    lines += ["", *_untested_claims(groups, settings), ""]
    lines += _category_section(groups, settings, n_boot)
    save_curves(report_dir / "curves.png", groups, measures)
    lines += ["## Curves", "", "![reward, held-out truth and gap over steps](curves.png)", ""]
    if save_categories(report_dir / "categories.png", groups, settings):
        lines += ["![per-category ground truth](categories.png)", ""]
    lines += ["## Samples after training (first seed of each group)", ""]
    for name, members in groups.items():
        sample = members[0].plan.run_dir / "samples_after.png"
        if not sample.is_file():
            continue
        if report_dir != out:
            (report_dir / "samples").mkdir(exist_ok=True)
            sample = Path(shutil.copyfile(sample, report_dir / "samples" / f"{name}.png"))
        lines += [f"**{name}**", "", f"![{name}]({sample.relative_to(report_dir)})", ""]
    path = report_dir / REPORT
    path.write_text("\n".join(lines))
    return path


def _claims(groups, values, settings, method_axis) -> list[Comparison]:
    """Claims 1, 2, 4 and 5 for every treatment group against its control (same labels but the method)."""
    comparisons = []
    for name, members in groups.items():
        labels = dict(members[0].plan.cell.labels)
        labels.pop(settings["seed_axis"], None)
        if labels.get(method_axis) not in settings["treatments"]:
            continue
        control = group_name({**labels, method_axis: settings["control"]}, settings["seed_axis"])
        if control not in groups:
            continue
        for label, key, direction, claim in MEASURES:
            if claim is None:
                continue
            comparisons.append(
                compare(
                    claim,
                    label,
                    direction,
                    values[name][key],
                    values[control][key],
                    (name, control),
                    settings["n_boot"],
                )
            )
        for tag, treat, ctrl in _category_arrays(groups[name], groups[control], settings):
            row = compare(
                "claim 5: keeps compositional fidelity",
                f"training truth, {tag}",
                "greater",
                treat,
                ctrl,
                (name, control),
                settings["n_boot"],
            )
            comparisons.append(_non_inferiority(row, settings["fidelity_margin"]))
    return comparisons + _scaling(groups, values, settings)


def _scaling(groups, values, settings) -> list[Comparison]:
    """Claim 3 for each treatment at a size other than the first, against the same comparison at the first
    size (sizes in the order the grid's cells list them): how the treatment-minus-control effect changes,
    (T_big - C_big) - (T_small - C_small), with its interval and MDE (that of the two-arm test scaled by the
    contrast's larger variance, sum of 1/seeds over the four arms)."""
    size_axis, seed_axis, method_axis = settings["size_axis"], settings["seed_axis"], settings["method_axis"]
    sizes = list(
        dict.fromkeys(
            m[0].plan.cell.labels[size_axis] for m in groups.values() if size_axis in m[0].plan.cell.labels
        )
    )
    if not sizes:
        return []
    rows = []
    for name, members in groups.items():
        labels = {k: v for k, v in members[0].plan.cell.labels.items() if k != seed_axis}
        if (
            labels.get(method_axis) not in settings["treatments"]
            or labels.get(size_axis, sizes[0]) == sizes[0]
        ):
            continue
        arms = {
            "tb": name,
            "cb": group_name({**labels, method_axis: settings["control"]}, seed_axis),
            "ts": group_name({**labels, size_axis: sizes[0]}, seed_axis),
            "cs": group_name({**labels, size_axis: sizes[0], method_axis: settings["control"]}, seed_axis),
        }
        if not all(arm in groups for arm in arms.values()):
            continue
        for label, key, direction, claim in MEASURES:
            if claim is None:
                continue
            data = [values[arms[arm]][key] for arm in ("tb", "cb", "ts", "cs")]
            measure = f"{label}: effect at {labels[size_axis]} − at {sizes[0]}"
            names = (name, f"{arms['cb']}; {arms['ts']} − {arms['cs']}")
            if any(d is None for d in data) or len({d.ndim for d in data}) != 1:
                rows.append(
                    Comparison(
                        "claim 3: more robust to model scaling",
                        *names,
                        measure,
                        None,
                        float("nan"),
                        "not tested",
                        (0, 0),
                    )
                )
                continue
            seeds = [len(d) for d in data]
            effect = stats.bootstrap_contrast(data, (1.0, -1.0, -1.0, 1.0), n_boot=settings["n_boot"])
            per_seed = [_per_seed(d) for d in data]
            spread = np.sqrt(
                np.mean(
                    [
                        stats.pooled_std(per_seed[0], per_seed[1]) ** 2,
                        stats.pooled_std(per_seed[2], per_seed[3]) ** 2,
                    ]
                )
            )
            two_arm = 1 / seeds[0] + 1 / seeds[1]
            mde = stats.minimum_detectable_effect(spread, seeds[0], seeds[1]) * np.sqrt(
                sum(1 / n for n in seeds) / two_arm
            )
            verdict = stats.verdict(effect, direction) if min(seeds) >= 2 else "not tested (one seed)"
            rows.append(
                Comparison(
                    "claim 3: more robust to model scaling",
                    *names,
                    measure,
                    effect,
                    mde,
                    verdict,
                    (seeds[0], seeds[1]),
                )
            )
    return rows


def _non_inferiority(row: Comparison, margin: float) -> Comparison:
    """Claim 5 says SLAS keeps fidelity: supported when the category is not worse by more than ``margin``
    (the interval's low end above -margin), contradicted when it is worse (the interval below 0). A fixed
    margin, not the MDE: a category of few prompts has a wide interval, which must not pass for support."""
    if row.effect is None or min(row.seeds) < 2:
        return row
    if row.effect.high < 0:
        verdict = "contradicted"
    elif row.effect.low > -margin:
        verdict = f"supported (not worse by {margin:g})"
    else:
        verdict = "inconclusive"
    return Comparison(
        row.claim, row.treatment, row.control, row.measure, row.effect, row.mde, verdict, row.seeds
    )


def _category_arrays(treat_runs, ctrl_runs, settings):
    """(category, treatment (seeds, prompts of it), control (seeds, prompts of it)) on the training set."""
    name, metric = settings["train_set"], settings["truth_metric"]
    if not all(name in run.per_prompt for run in (*treat_runs, *ctrl_runs)):
        return []
    tags = treat_runs[0].per_prompt[name]["tags"]
    rows = []
    for t in np.unique(tags):
        chosen = tags == t
        treat = np.stack([run.per_prompt[name]["truth"][metric][chosen] for run in treat_runs])
        ctrl = np.stack([run.per_prompt[name]["truth"][metric][chosen] for run in ctrl_runs])
        rows.append((TAGS[int(t)] if int(t) < len(TAGS) else str(t), treat, ctrl))
    return rows


def _untested_claims(groups, settings) -> list[str]:
    """Claim 3 (model scaling) needs a size axis with two values; claim 5 needs the final benchmark."""
    lines = []
    sizes = {
        run.plan.cell.labels.get(settings["size_axis"]) for members in groups.values() for run in members
    }
    sizes.discard(None)
    if len(sizes) < 2:
        lines.append(
            "- claim 3 (more robust to model scaling): not tested: the grid has "
            f"{'one model size' if sizes else 'no model-size axis'} among its finished cells; it needs cells of "
            "the same backbone at a second size."
        )
    else:
        lines.append(
            f"- claim 3 (more robust to model scaling): the claim-3 rows give how each treatment's effect changes "
            f"from one size to another ({', '.join(sorted(sizes))}): supported where SLAS's advantage grows with "
            "size, contradicted where it shrinks; the rows of each size's own context say whether it holds there."
        )
    has_categories = any(run.per_prompt for members in groups.values() for run in members)
    if not has_categories:
        lines.append(
            "- claim 5 (keeps compositional fidelity): not tested: no cell has a final benchmark with per-prompt "
            "categories (final_eval/; the shapes testbed's runs have one)."
        )
    return lines


def _category_section(groups, settings, n_boot) -> list[str]:
    lines = []
    metric = settings["truth_metric"]
    rows = []
    for name, members in groups.items():
        for set_name in (settings["train_set"], settings["held_out_set"]):
            if not all(set_name in run.per_prompt for run in members):
                continue
            tags = members[0].per_prompt[set_name]["tags"]
            for t in np.unique(tags):
                chosen = tags == t
                values = np.stack([run.per_prompt[set_name]["truth"][metric][chosen] for run in members])
                tag = TAGS[int(t)] if int(t) < len(TAGS) else str(t)
                rows.append(
                    f"| {name} | {set_name} | {tag} | {int(chosen.sum())} | "
                    f"{_fmt(stats.bootstrap_mean(values, n_boot=n_boot))} |"
                )
    if rows:
        lines += [
            f"## Per category: final ground truth ({metric}), mean [95% interval] over seeds and prompts",
            "",
            "| group | set | category | prompts | truth |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
    return lines
