"""Run outputs: the metrics log keeps exactly one record per step across fresh starts and resumes."""

from slas_jax.metrics import MetricsWriter, read_metrics


def test_a_fresh_run_starts_a_new_log_and_a_resumed_run_drops_the_steps_it_repeats(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)
    for step in range(5):
        writer.write(step, {"reward_mean": float(step)})
    # Preempted after step 4, last checkpoint at step 3: steps 3 and 4 run again.
    resumed = MetricsWriter(path, start_step=3)
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]
    for step in (3, 4, 5):
        resumed.write(step, {"reward_mean": 10.0 + step})
    assert [(r["step"], r["reward_mean"]) for r in read_metrics(path)] == [
        (0, 0.0),
        (1, 1.0),
        (2, 2.0),
        (3, 13.0),
        (4, 14.0),
        (5, 15.0),
    ]
    MetricsWriter(path)
    assert read_metrics(path) == []


def test_nan_metrics_are_logged_as_null(tmp_path):
    path = tmp_path / "metrics.jsonl"
    MetricsWriter(path).write(0, {"policy_loss": float("nan")})
    assert read_metrics(path) == [{"step": 0, "policy_loss": None}]
