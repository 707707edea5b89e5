"""The "remote" reward: images scored by an HTTP reward server (``slas_jax.rewards.serve`` is the
reference; the protocol is in ``slas_jax.rewards.protocol``), for rewards that cannot run in JAX such as
GenEval's detector or a VLM judge. It is a host reward: the train step runs it between its two compiled
halves (``slas_jax.rewards.host``), never as a callback inside the devices' program.

A step's images are split into requests of at most ``batch_size``, up to ``max_in_flight`` of them in flight
at once (the server scores several concurrently). Connection failures, timeouts and 5xx replies are
retried ``retries`` times with exponential backoff (tenacity); what still fails, a reply that is not JSON or
holds the wrong number of scores, and non-finite scores become NaN rewards with one failure line naming the
reward, the URL and what went wrong: the run then ends with that line or drops the groups
(``reward.on_failure``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import tenacity

from slas_jax.errors import RewardError
from slas_jax.rewards.protocol import (
    IMAGES_FIELD,
    INFO_PATH,
    META_FIELD,
    SCORE_PATH,
    ImageFormat,
    encode_image,
)
from slas_jax.rewards.registry import HostScores, Reward, register


class _ServerError(Exception):
    """A 5xx reply: retried."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"server error {response.status_code}: {_reply_text(response)}")


class _BadReply(Exception):
    """A reply that cannot be used (4xx, not JSON, wrong shape): not retried, the server would answer the
    same again."""


def _reply_text(response: httpx.Response) -> str:
    """The server's own explanation (``{"error": ...}`` or the body), on one line, at most 200 characters."""
    try:
        body = response.json()
        text = body["error"] if isinstance(body, dict) and "error" in body else response.text
    except ValueError:
        text = response.text
    return " ".join(str(text).split())[:200] or "(empty body)"


@dataclass(frozen=True)
class RemoteClient:
    """Talks to one reward server; thread-safe (one pooled httpx client). Options as :func:`remote_reward`."""

    url: str
    timeout_s: float
    retries: int
    backoff_s: float
    batch_size: int
    max_in_flight: int
    image_format: ImageFormat
    jpeg_quality: int
    client: httpx.Client

    def label(self, served: str | None = None) -> str:
        """How errors name this reward: ``reward 'remote' at URL`` and, once known, what it serves."""
        return f"reward 'remote' at {self.url}" + (f" (serving {served!r})" if served else "")

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call with bounded retries of transport errors and 5xx replies; a 4xx reply is a _BadReply."""

        def send() -> httpx.Response:
            response = self.client.request(method, self.url + path, **kwargs)
            if response.status_code >= 500:
                raise _ServerError(response)
            if response.status_code >= 400:
                raise _BadReply(f"request refused ({response.status_code}): {_reply_text(response)}")
            return response

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=tenacity.wait_exponential(multiplier=self.backoff_s, max=60.0),
            retry=tenacity.retry_if_exception_type((httpx.TransportError, _ServerError)),
            reraise=True,
        )
        return retrying(send)

    def describe(self, error: Exception) -> str:
        """What went wrong, in words, for a failure line."""
        tries = f"after {self.retries + 1} attempt{'s' * (self.retries > 0)}"
        if isinstance(error, httpx.TimeoutException):
            return f"no reply within timeout_s={self.timeout_s} ({type(error).__name__}) {tries}"
        if isinstance(error, httpx.ConnectError):
            return f"cannot connect ({' '.join(str(error).split())}) {tries}; is the server running?"
        if isinstance(error, httpx.RemoteProtocolError):
            return f"the server closed the connection without a reply ({error}) {tries}"
        if isinstance(error, httpx.TransportError):
            return f"{type(error).__name__}: {error} {tries}"
        if isinstance(error, _ServerError):
            return f"{error} {tries}"
        return str(error)

    def info(self) -> dict[str, Any]:
        """The server's ``/info``: ``{"reward": name, "reads": [names]}``; RewardError if it cannot be had."""
        try:
            body = self._request("GET", INFO_PATH).json()
        except (httpx.TransportError, _ServerError, _BadReply, ValueError) as e:
            raise RewardError(f"{self.label()}: {INFO_PATH} failed: {self.describe(e)}") from e
        if not (
            isinstance(body, dict)
            and isinstance(body.get("reward"), str)
            and isinstance(body.get("reads"), list)
        ):
            raise RewardError(
                f"{self.label()}: {INFO_PATH} replied {body!r}, not {{'reward': name, 'reads': [...]}}"
            )
        return body

    def score_request(
        self, images: np.ndarray, prompts: Sequence[str], arrays: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        """Scores (n,) float32 of one request's images (n, h, w, 3); raises on a failure after the retries."""
        meta = {"prompts": list(prompts), "arrays": {k: np.asarray(v).tolist() for k, v in arrays.items()}}
        files = [
            (IMAGES_FIELD, encode_image(image, self.image_format, self.jpeg_quality)) for image in images
        ]
        response = self._request("POST", SCORE_PATH, data={META_FIELD: json.dumps(meta)}, files=files)
        try:
            body = response.json()
        except ValueError:
            raise _BadReply(f"the reply is not JSON: {_reply_text(response)!r}") from None
        scores = body.get("scores") if isinstance(body, dict) else None
        if not isinstance(scores, list) or len(scores) != len(images):
            got = f"{len(scores)} scores" if isinstance(scores, list) else f"{_reply_text(response)!r}"
            raise _BadReply(
                f"expected {{'scores': [{len(images)} numbers]}} for {len(images)} images, got {got}"
            )
        if not all(s is None or (isinstance(s, int | float) and not isinstance(s, bool)) for s in scores):
            raise _BadReply(f"the scores are not all numbers or null: {str(scores)[:200]}")
        return np.asarray([math.nan if s is None else s for s in scores], np.float32)

    def score(
        self, images: np.ndarray, prompts: Sequence[str], arrays: Mapping[str, np.ndarray], served: str
    ) -> HostScores:
        """The host reward: images (n, h, w, 3) float32 in [0, 1] in requests of at most ``batch_size``,
        ``max_in_flight`` at once. Returns scores (n,) float32, NaN for samples whose request failed or whose
        score is not finite, and one failure line per such request."""
        starts = range(0, len(images), self.batch_size)

        def one(start: int) -> tuple[np.ndarray, str | None]:
            part = slice(start, start + self.batch_size)
            try:
                scores = self.score_request(
                    images[part], prompts[part], {k: v[part] for k, v in arrays.items()}
                )
            except (httpx.TransportError, _ServerError, _BadReply) as e:
                return np.full(len(images[part]), np.nan, np.float32), self.describe(e)
            bad = np.flatnonzero(~np.isfinite(scores))
            if bad.size:
                i = int(bad[0])
                return scores, (
                    f"non-finite score {scores[i]} for sample {start + i} (prompt {prompts[start + i]!r}), "
                    f"{bad.size} of the request's {len(scores)}"
                )
            return scores, None

        with ThreadPoolExecutor(self.max_in_flight) as pool:
            results = list(pool.map(one, starts))
        scores = np.concatenate([s for s, _ in results]) if results else np.zeros(0, np.float32)
        failures = tuple(f"{self.label(served)}: {line}" for _, line in results if line is not None)
        return scores, failures


@register("remote")
def remote_reward(
    url: str,
    timeout_s: float = 60.0,
    retries: int = 3,
    backoff_s: float = 0.5,
    batch_size: int = 16,
    max_in_flight: int = 4,
    image_format: ImageFormat = "png",
    jpeg_quality: int = 95,
) -> Reward:
    """A reward server at ``url`` (e.g. ``http://127.0.0.1:8000``), asked for its ``/info`` at once (an
    unreachable server fails here, before anything compiles; the arrays it reads are checked against the
    prompt source). timeout_s: per request; retries: extra attempts after a connection failure, timeout or
    5xx, waiting backoff_s x 2^i between them; batch_size: images per request; max_in_flight: requests at
    once; image_format: "png" / "jpeg" (8-bit, what detectors read) or "npy" (float32, lossless)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url must start with http:// or https://, got {url!r}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if batch_size < 1 or max_in_flight < 1:
        raise ValueError(f"batch_size and max_in_flight must be >= 1, got {batch_size} and {max_in_flight}")
    if retries < 0 or backoff_s < 0:
        raise ValueError(f"retries and backoff_s must be >= 0, got {retries} and {backoff_s}")
    if not 1 <= jpeg_quality <= 95:
        raise ValueError(f"jpeg_quality must be in [1, 95], got {jpeg_quality}")
    client = RemoteClient(
        url=url.rstrip("/"),
        timeout_s=timeout_s,
        retries=retries,
        backoff_s=backoff_s,
        batch_size=batch_size,
        max_in_flight=max_in_flight,
        image_format=image_format,
        jpeg_quality=jpeg_quality,
        # max_in_flight connections in all, also when several rollout chunks are scored at once; waiting
        # for a free connection is not a timeout.
        client=httpx.Client(
            timeout=httpx.Timeout(timeout_s, pool=None), limits=httpx.Limits(max_connections=max_in_flight)
        ),
    )
    info = client.info()

    def host(images: np.ndarray, prompts: Sequence[str], arrays: Mapping[str, np.ndarray]) -> HostScores:
        return client.score(images, prompts, arrays, info["reward"])

    return Reward(fn=None, host=host, reads=tuple(info["reads"]))
