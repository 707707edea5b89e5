"""The evaluate command's help and its one-line refusals before anything is sampled."""

from evaluate_runner import CONFIG

from slas_jax.evaluate.__main__ import main


def test_help_names_the_benchmarks_and_flags(capsys):
    assert main(["prog", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: python -m slas_jax.evaluate --config configs/<name>.py" in out
    for text in (
        "geneval",
        "unigenbench",
        "shapes",
        "--images_per_prompt",
        "--check_only",
        "config.sampler.num_steps",
    ):
        assert text in out


def test_missing_flags_end_in_one_line(capsys, tmp_path):
    assert main(["prog", "--config", CONFIG, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: --benchmark is required\n"
    assert main(["prog", "--config", CONFIG, "--benchmark", "unigenbench", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: --prompts is required for --benchmark unigenbench\n"
    prompts = tmp_path / "test_prompts_en.csv"
    prompts.write_text('index,prompt_en,sub_dims_en\n0,a circle,"{}"\n')
    assert (
        main(
            [
                "prog",
                "--config",
                CONFIG,
                "--benchmark",
                "unigenbench",
                "--prompts",
                str(prompts),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "--model_name is required" in capsys.readouterr().err
