"""The generation driver's pieces that need no model: hosts' prompt shares, file verification, pixels."""

from pathlib import Path

import numpy as np
from PIL import Image

from slas_jax.evaluate import driver
from slas_jax.evaluate.driver import ImageJob


def test_each_prompt_goes_to_one_process_with_all_its_images():
    jobs = [ImageJob(p, j, "x", Path(f"{p}_{j}.png")) for p in (7, 3, 9, 4, 5) for j in range(2)]
    shares = [driver.own_share(jobs, i, 3) for i in range(3)]
    assert sorted((j.prompt_index, j.image_index) for s in shares for j in s) == sorted(
        (j.prompt_index, j.image_index) for j in jobs
    )
    assert [sorted({j.prompt_index for j in s}) for s in shares] == [[4, 7], [3, 5], [9]]
    assert driver.own_share(jobs, 0, 1) == jobs


def test_image_problems(tmp_path):
    good = tmp_path / "good.png"
    driver.write_png(good, np.zeros((8, 8, 3), np.uint8))
    assert driver.image_problem(good, 8) is None
    assert "expected a 16x16 RGB PNG" in driver.image_problem(good, 16)
    Image.new("L", (8, 8)).save(tmp_path / "gray.png")
    assert "L 8x8" in driver.image_problem(tmp_path / "gray.png", 8)
    Image.new("RGB", (8, 8)).save(tmp_path / "jpeg.png", format="JPEG")
    assert driver.image_problem(tmp_path / "jpeg.png", 8).startswith("JPEG")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:-20])
    assert "does not decode" in driver.image_problem(tmp_path / "cut.png", 8)
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary that was renamed


def test_pixels_round_as_diffusers():
    values = np.array([-0.1, 0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, 1.2], np.float32)
    assert driver.to_uint8(values).tolist() == [0, 0, 0, 2, 128, 255, 255]
    keys = {tuple(np.asarray(driver.image_key(0, p, j)).tolist()) for p in range(3) for j in range(3)}
    assert len(keys) == 9
