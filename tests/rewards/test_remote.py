"""The "remote" reward against the reference server (``slas_jax.rewards.serve``) on 127.0.0.1: scores equal
the served reward's in process, requests are batched and in flight at once, and every fault (timeout, 500
after the retries, wrong number of scores, NaN, not JSON, a closed connection, nothing listening) becomes
one line naming the reward, the URL and what went wrong."""

import contextlib
import socket
import threading
import time

import numpy as np
import pytest
from cli_runner import one_line_error, run_module
from reward_server import served
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from slas_jax.cli import one_line
from slas_jax.config import ConfigError, load_config
from slas_jax.errors import RewardError
from slas_jax.rewards import Reward, build_reward
from slas_jax.rewards.serve import listen, make_app
from slas_jax.train import nonfinite_line

IMAGES = np.random.default_rng(0).random((8, 16, 16, 3), dtype=np.float32)
REGIONS = np.arange(8, dtype=np.int32) % 5
PROMPTS = [f"bright {i}" for i in range(8)]


def host_reward(fn):
    """A host Reward from ``fn(images, prompts, arrays) -> scores``, to serve."""
    return Reward(fn=None, host=lambda images, prompts, arrays: (fn(images, prompts, arrays), ()))


def remote(url, **options):
    return build_reward("remote", {"url": url, "retries": 1, "backoff_s": 0.01, **options})


@pytest.mark.parametrize(
    ("image_format", "atol"),
    [("npy", 0.0), ("png", 1e-6), ("jpeg", 0.02)],
)
def test_scores_equal_the_served_reward_in_process(image_format, atol):
    """npy is lossless; PNG scores are the reward of the 8-bit images; JPEG is close. batch_size 3 splits 8
    images into 3 requests."""
    brightness = build_reward("brightness", {})
    app = make_app(brightness, "brightness", concurrency=2)
    with served(app) as url:
        reward = remote(url, batch_size=3, image_format=image_format)
        scores, failures = reward.host(IMAGES, PROMPTS, {"region": REGIONS})
    assert failures == () and reward.reads == ("region",) and app.state.requests == 3
    images = IMAGES if image_format != "png" else np.rint(IMAGES * 255) / 255
    expected = np.asarray(brightness.fn(None, images.astype(np.float32), {"region": REGIONS}))
    np.testing.assert_allclose(scores, expected, rtol=0, atol=atol)


def test_requests_are_in_flight_at_once():
    """Four requests of one image, each scored only once all four are being scored together (a barrier): the
    client sends them concurrently and the server scores them concurrently, whatever the machine's load."""
    barrier = threading.Barrier(4, timeout=30)

    def together(images, _prompts, _arrays):
        barrier.wait()
        return images.mean(axis=(1, 2, 3))

    with served(make_app(host_reward(together), "together", concurrency=4)) as url:
        reward = remote(url, batch_size=1, max_in_flight=4, timeout_s=60)
        scores, failures = reward.host(IMAGES[:4], PROMPTS[:4], {})
    assert failures == ()
    np.testing.assert_allclose(scores, IMAGES[:4].mean(axis=(1, 2, 3)), atol=1 / 255)  # PNG: 8-bit images


def _info_app(score):
    async def info(_request):
        return JSONResponse({"reward": "fake", "reads": []})

    return Starlette(routes=[Route("/info", info), Route("/score", score, methods=["POST"])])


def _reply(response):
    async def score(_request):
        return response

    return _info_app(score)


def _reference(fn):
    return make_app(host_reward(fn), "fake", concurrency=2)


def _crash(images, prompts, arrays):
    raise RuntimeError("detector crashed")


def _sleep(images, prompts, arrays):
    time.sleep(1.5)
    return images.mean(axis=(1, 2, 3))


def _nan(images, prompts, arrays):
    return np.where(np.arange(len(images)) == 2, np.nan, 0.5)


@contextlib.contextmanager
def closing_server():
    """Answers /info, then closes every other connection after reading its request, without a reply."""
    sock = listen("127.0.0.1", 0)
    stop = threading.Event()
    info = b'{"reward": "fake", "reads": []}'
    canned = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(info),
        info,
    )

    def loop():
        sock.settimeout(0.2)
        for _ in range(20):
            if stop.is_set():
                break
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, body = data.split(b"\r\n\r\n", 1)
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.lower().split(b"\r\n")
                        if line.startswith(b"content-length")
                    ),
                    0,
                )
                while len(body) < length:
                    body += conn.recv(65536)
                if head.startswith(b"GET /info"):
                    conn.sendall(canned)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()


FAULTS = {
    "times out": (lambda: served(_reference(_sleep)), {"timeout_s": 0.3}, "no reply within timeout_s=0.3"),
    "500 after the retries": (
        lambda: served(_reference(_crash)),
        {},
        "server error 500: RuntimeError: detector crashed after 2 attempts",
    ),
    "wrong number of scores": (
        lambda: served(_reply(JSONResponse({"scores": [0.5]}))),
        {},
        "expected {'scores': [4 numbers]} for 4 images, got 1 scores",
    ),
    "NaN (null from the reference server)": (
        lambda: served(_reference(_nan)),
        {},
        "non-finite score nan for sample 2 (prompt 'bright 2')",
    ),
    "NaN (literal)": (
        lambda: served(_reply(Response('{"scores": [1, NaN, 1, 1]}', media_type="application/json"))),
        {},
        "non-finite score nan for sample 1",
    ),
    "not JSON": (
        lambda: served(_reply(Response("<html>busy</html>", media_type="text/html"))),
        {},
        "the reply is not JSON: '<html>busy</html>'",
    ),
    "closes the connection": (closing_server, {}, "the server closed the connection without a reply"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults_end_the_run_with_one_line(fault):
    """Each fault: the host reward returns NaN for the request's samples and a failure line; the loop's
    error (train.nonfinite_line) is one line naming the reward, the URL and what went wrong."""
    make_server_for, options, what = FAULTS[fault]
    with make_server_for() as url:
        reward = remote(url, batch_size=4, **options)
        scores, failures = reward.host(IMAGES[:4], PROMPTS[:4], {})
    assert np.isnan(scores).any() and len(failures) == 1
    config = load_config({"reward": {"name": "brightness"}})
    error = RewardError(nonfinite_line(config, {"reward_nonfinite": 4.0}, 3, failures))
    line = one_line(error)
    assert line == str(error) and "\n" not in line
    assert line.startswith(f"step 3: reward 'remote' at {url}") and what in line, line
    assert "reward.on_failure='drop_group'" in line


def test_unreachable_server_fails_when_the_reward_is_built():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(RewardError) as caught:
        remote(url)
    line = one_line(caught.value)
    assert line.startswith(f"reward 'remote' at {url}: /info failed: cannot connect"), line
    assert "after 2 attempts" in line


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match=r"config.reward.options: url must start with http"):
        build_reward("remote", {"url": "127.0.0.1:8000"})
    with pytest.raises(ConfigError, match=r"config.reward.options.image_format: must be one of"):
        build_reward("remote", {"url": "http://x", "image_format": "gif"})


def test_server_refuses_a_request_without_the_arrays_its_reward_reads():
    with served(make_app(build_reward("brightness", {}), "brightness", 1)) as url:
        reward = remote(url)
        _, failures = reward.host(IMAGES[:2], PROMPTS[:2], {})
    assert len(failures) == 1
    assert "request refused (400): the reward reads region, which the request lacks" in failures[0]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_serves_a_bounded_number_of_requests():
    """``python -m slas_jax.rewards.serve --reward brightness`` in a fresh process, bounded to 2 requests
    (/info and one /score) and 60 s; the summary names the reward and its URL."""
    import subprocess
    import sys

    from cli_runner import ROOT

    port = _free_port()
    args = ["--reward", "brightness", "--port", str(port), "--max_requests", "2", "--max_seconds", "60"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "slas_jax.rewards.serve", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == f"serving reward 'brightness' on http://127.0.0.1:{port}"
        reward = remote(f"http://127.0.0.1:{port}", image_format="npy")
        scores, failures = reward.host(IMAGES[:2], PROMPTS[:2], {"region": REGIONS[:2]})
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert failures == () and proc.returncode == 0, err[-2000:]
    assert out.strip() == f"served reward 'brightness' on http://127.0.0.1:{port}: 1 requests"
    expected = build_reward("brightness", {}).fn(None, IMAGES[:2], {"region": REGIONS[:2]})
    np.testing.assert_array_equal(scores, np.asarray(expected))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--reward", "nope"], "error: config.reward.name: unknown reward 'nope'; choose one of"),
        (["--reward", "brightness", "--concurrency", "0"], "error: --concurrency must be >= 1, got 0"),
        (
            ["--reward", "brightness", "--config.reward.options.kind=x"],
            "error: unknown config key 'reward.options.kind'",
        ),
    ],
)
def test_serve_command_errors_are_one_line(args, expected):
    line = one_line_error(run_module("slas_jax.rewards.serve", *args, "--port", _free_port(), timeout=60))
    assert line.startswith(expected), line


def test_serve_command_port_in_use_is_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = run_module("slas_jax.rewards.serve", "--reward", "brightness", "--port", port, timeout=60)
    line = one_line_error(out)
    assert line.startswith(f"error: --host/--port: cannot listen on 127.0.0.1:{port}"), line


def test_train_command_with_nothing_listening_is_one_line(tmp_path):
    """The train CLI with a remote reward whose server is down: exit 2 and one line naming the URL, before
    anything compiles."""
    from cli_runner import ROOT

    url = f"http://127.0.0.1:{_free_port()}"
    config_file = tmp_path / "remote_cpu.py"
    config_file.write_text(
        "import runpy\n"
        "def get_config():\n"
        f"    c = runpy.run_path({str(ROOT / 'configs' / 'brightness_cpu.py')!r})['get_config']()\n"
        "    c.reward.name = 'remote'\n"
        f"    c.reward.options = {{'url': {url!r}, 'retries': 0}}\n"
        "    return c\n"
    )
    out = run_module(
        "slas_jax.train", "--config", config_file, f"--config.train.output_dir={tmp_path}", timeout=120
    )
    line = one_line_error(out)
    assert line.startswith(f"error: reward 'remote' at {url}: /info failed: cannot connect"), line


@pytest.mark.parametrize(
    ("reward", "expected"),
    [
        ({"host_chunks": 3}, r"config.reward.host_chunks: must divide train.prompts_per_step = 4, got 3"),
        ({"host_chunks": 0}, r"config.reward.host_chunks: must be >= 1, got 0"),
        (
            {"on_failure": "skip"},
            r"config.reward.on_failure: must be one of 'error', 'drop_group', got 'skip'",
        ),
    ],
)
def test_host_reward_fields_are_validated(reward, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config({"reward": reward, "train": {"prompts_per_step": 4}})
