"""Querying a suspect that answers over HTTP: MLflow model serving and the Open Inference Protocol v2.

A stolen model is rarely handed over as a file; it answers queries behind an API. IPGuard needs
only the suspect's labels (SAC its logits), so a prediction service is a suspect like a file.
Two protocols are spoken:

- ``mlflow``: ``mlflow models serve`` (POST ``/invocations`` with ``{"inputs": [...]}``, answer
  ``{"predictions": [...]}``; GET ``/ping`` or ``/health``);
- ``v2``: the Open Inference Protocol of KServe, Triton and Seldon MLServer (POST
  ``/v2/models/{name}/infer``, model metadata at ``/v2/models/{name}``, GET ``/v2/health/ready``).

Every answer is checked (status, JSON shape, one prediction per image, labels in range or finite
logits of the right width): a malformed answer is a :class:`ServiceError` naming what was wrong,
never a label. Requests time out and are retried with backoff on connection errors and on
408/429/5xx (honouring ``Retry-After``; a POST of fingerprint points changes nothing on the
server, so it is safe to repeat) by urllib3's ``Retry``; every attempt counts against the query
budget, and a budget that runs out raises :class:`BudgetExhausted` (the verdict is then
``inconclusive``, not an error).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import requests
import torch
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ipguard.errors import IpguardError

PROTOCOLS = ("mlflow", "v2")
# Statuses worth another try: a timeout on the server's side, too many requests, a server error.
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)


class ServiceError(IpguardError):
    """A prediction service that cannot be used: unreachable, refusing, or answering malformed."""


class BudgetExhausted(Exception):
    """The query budget ran out before every point was answered (a verdict of ``inconclusive``)."""


@dataclass(frozen=True)
class ServiceSpec:
    """Where a suspect answers and how to ask it.

    ``url``: the server's base address, or the full endpoint (``.../invocations`` or
    ``.../v2/models/NAME[/infer]``). ``protocol``: ``mlflow`` or ``v2``; None asks the server
    (``/v2/health/ready``, then ``/ping``). ``batch_size``: images per request. ``timeout``:
    seconds to connect and to read each answer. ``retries``: further attempts per request after a
    connection error or a retryable status, ``backoff`` seconds doubled each time (a server's
    ``Retry-After`` wins, up to ``retry_after_max`` seconds). ``rate``: at most this many requests
    per second (0: no limit). ``max_queries``: images sent at most, retries included (None: no
    limit). ``mean``/``std``: send normalised inputs, ``(x - mean) / std``, for services that expect
    them; ``uint8``: send 8-bit pixels (0-255) for services that take images.
    """

    url: str
    protocol: str | None = None
    model_name: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    batch_size: int = 100
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.5
    retry_after_max: int = 60
    rate: float = 0.0
    max_queries: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    uint8: bool = False

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"--url: must be an http:// or https:// address, got {self.url!r}")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ValueError(f"--protocol: must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        checks = [
            ("--batch-size", isinstance(self.batch_size, int) and self.batch_size >= 1, "an integer >= 1"),
            ("--timeout", self.timeout > 0, "> 0 seconds"),
            ("--retries", isinstance(self.retries, int) and self.retries >= 0, "an integer >= 0"),
            ("--backoff", self.backoff >= 0, ">= 0 seconds"),
            ("--rate", self.rate >= 0, ">= 0 requests per second"),
            ("--max-queries", self.max_queries is None or self.max_queries >= 1, "an integer >= 1"),
        ]
        for flag, ok, want in checks:
            if not ok:
                raise ValueError(f"{flag}: must be {want}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("--mean and --std: give both or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("--std: every value must be > 0")
        if self.uint8 and self.mean is not None:
            raise ValueError("--uint8 sends raw 8-bit pixels; it cannot be combined with --mean/--std")


@dataclass(frozen=True)
class Answers:
    """A service's answers to a batch: labels always, logits where it returned scores."""

    labels: torch.Tensor
    logits: torch.Tensor | None


def split_url(url: str) -> tuple[str, str | None, str | None]:
    """The server's base address, and the protocol and model name the URL itself names, if any."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    base = lambda p: urlunsplit((parts.scheme, parts.netloc, p, "", ""))  # noqa: E731
    if "/v2/models/" in path:
        head, _, tail = path.partition("/v2/models/")
        name = tail.split("/")[0]
        return base(head), "v2", name or None
    if path.endswith("/invocations"):
        return base(path.removesuffix("/invocations")), "mlflow", None
    return base(path), None, None


def encode(x: torch.Tensor, spec: ServiceSpec) -> np.ndarray:
    """Pixels in [0, 1] as the service takes them: float32 (normalised if asked) or uint8."""
    if spec.uint8:
        return (x * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    x = x.to(torch.float32)
    if spec.mean is not None and spec.std is not None:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        x = (x - torch.tensor(spec.mean).view(shape)) / torch.tensor(spec.std).view(shape)
    return x.numpy()


def answers_from(values: Any, n: int, num_classes: int, where: str) -> Answers:
    """Check a service's predictions for ``n`` images: ``n`` integer labels in range, or an
    ``n`` x ``num_classes`` array of finite logits. Anything else is a :class:`ServiceError`."""
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise ServiceError(f"{where}: predictions are not a rectangular array ({exc})") from exc
    if arr.dtype == object or arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ServiceError(f"{where}: predictions are not numbers (got {arr.dtype} values)")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 0 or arr.shape[0] != n:
        got = "a single value" if arr.ndim == 0 else f"{arr.shape[0]}"
        raise ServiceError(f"{where}: {got} predictions for {n} images")
    if arr.ndim == 1:
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ServiceError(f"{where}: labels must be integers, got {arr[:5].tolist()}...")
        labels = arr.astype(np.int64)
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            raise ServiceError(f"{where}: label {int(labels[bad][0])} is outside 0..{num_classes - 1}")
        return Answers(torch.from_numpy(labels), None)
    if arr.ndim == 2 and arr.shape[1] == num_classes:
        if not np.all(np.isfinite(arr)):
            raise ServiceError(f"{where}: logits are not all finite")
        logits = torch.from_numpy(arr.astype(np.float32))
        return Answers(logits.argmax(1), logits)
    raise ServiceError(f"{where}: predictions shaped {list(arr.shape)} for {n} images; expected {n} labels "
                       f"or {n} x {num_classes} scores")


_V2_DATATYPES = {"float32": "FP32", "uint8": "UINT8"}


class PredictionService:
    """A suspect behind an HTTP prediction service (see the module's docstring).

    ``queries`` counts images sent (every attempt, retries included), ``retries`` the repeated
    attempts, ``requests`` the requests made; ``sleep`` and ``clock`` are replaceable for tests.
    """

    def __init__(self, spec: ServiceSpec, num_classes: int, input_shape: Sequence[int],
                 session: requests.Session | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.num_classes = int(num_classes)
        self.input_shape = [int(s) for s in input_shape]
        self.base, url_protocol, url_name = split_url(spec.url)
        if spec.protocol and url_protocol and spec.protocol != url_protocol:
            raise ValueError(f"--protocol {spec.protocol}: the URL {spec.url} is a {url_protocol} endpoint")
        self.protocol = spec.protocol or url_protocol
        self.model_name = spec.model_name or url_name
        self.input_name = "input"
        self.session = session or requests.Session()
        self._adapter = HTTPAdapter()
        self.session.mount("http://", self._adapter)
        self.session.mount("https://", self._adapter)
        self.queries = self.retries = self.requests = 0
        self._sleep, self._clock, self._last = sleep, clock, -math.inf

    # -- connection ---------------------------------------------------------------------------

    def _get(self, path: str) -> requests.Response | None:
        try:
            return self.session.get(self.base + path, headers=dict(self.spec.headers), timeout=self.spec.timeout)
        except requests.RequestException:
            return None

    def open(self) -> PredictionService:
        """Find the protocol where the server says (if not given) and, for v2, the model's input."""
        if self.protocol is None:
            ready = self._get("/v2/health/ready")
            if ready is not None and ready.status_code == 200:
                self.protocol = "v2"
            else:
                for path in ("/ping", "/health"):
                    r = self._get(path)
                    if r is not None and r.status_code == 200:
                        self.protocol = "mlflow"
                        break
            if self.protocol is None:
                raise ServiceError(f"{self.spec.url}: no answer from /v2/health/ready, /ping or /health; "
                                   "is the server up? (give --protocol to skip this check)")
        if self.protocol == "v2":
            if not self.model_name:
                raise ServiceError(f"{self.spec.url}: a v2 server needs --model-name (or a URL .../v2/models/NAME)")
            meta = self._get(f"/v2/models/{self.model_name}")
            if meta is not None and meta.status_code == 200:
                self._read_v2_metadata(meta)
            elif meta is not None and meta.status_code == 404:
                raise ServiceError(f"{self.spec.url}: the server has no model '{self.model_name}' (404 from its metadata)")
        return self

    def _read_v2_metadata(self, response: requests.Response) -> None:
        where = f"{self.base}/v2/models/{self.model_name} (metadata)"
        try:
            inputs = response.json()["inputs"]
            first = inputs[0]
            self.input_name = str(first["name"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ServiceError(f"{where}: no 'inputs' with a 'name' ({exc.__class__.__name__})") from exc
        shape = first.get("shape")
        if isinstance(shape, list) and len(shape) == 1 + len(self.input_shape):
            fixed = [int(s) for s in shape[1:]]
            if any(s not in (-1, want) for s, want in zip(fixed, self.input_shape)):
                raise ServiceError(f"{where}: the model takes inputs {shape}, the fingerprints are "
                                   f"[N, {', '.join(map(str, self.input_shape))}]")

    # -- queries ------------------------------------------------------------------------------

    def _throttle(self) -> None:
        if self.spec.rate > 0:
            wait = self._last + 1.0 / self.spec.rate - self._clock()
            if wait > 0:
                self._sleep(wait)
        self._last = self._clock()

    def _payload(self, x: np.ndarray) -> tuple[str, dict[str, Any]]:
        if self.protocol == "v2":
            body = {"inputs": [{"name": self.input_name, "shape": list(x.shape),
                                "datatype": _V2_DATATYPES[str(x.dtype)], "data": x.reshape(-1).tolist()}]}
            return f"/v2/models/{self.model_name}/infer", body
        return "/invocations", {"inputs": x.tolist()}

    def _predictions(self, response: requests.Response, where: str) -> Any:
        try:
            body = response.json()
        except ValueError as exc:
            raise ServiceError(f"{where}: the answer is not JSON ({response.text[:80]!r})") from exc
        if self.protocol == "mlflow":
            if not isinstance(body, dict) or "predictions" not in body:
                raise ServiceError(f"{where}: the answer has no 'predictions' (keys: {list(body)[:5] if isinstance(body, dict) else type(body).__name__})")
            return body["predictions"]
        try:
            out = body["outputs"][0]
            data, shape = out["data"], [int(s) for s in out["shape"]]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ServiceError(f"{where}: the answer has no 'outputs' with 'data' and 'shape'") from exc
        arr = np.asarray(data, dtype=object).reshape(-1)
        if arr.size != math.prod(shape):
            raise ServiceError(f"{where}: {arr.size} values for the shape {shape} it declares")
        try:
            return np.asarray(arr.tolist()).reshape(shape)
        except (ValueError, TypeError) as exc:
            raise ServiceError(f"{where}: output data are not numbers") from exc

    def predict(self, x: torch.Tensor) -> Answers:
        """The service's answers to the images ``x`` (pixels in [0, 1]), in batches."""
        if self.protocol is None:
            self.open()
        labels, logits = [], []
        for i in range(0, x.shape[0], self.spec.batch_size):
            a = self.ask(x[i : i + self.spec.batch_size])
            labels.append(a.labels)
            logits.append(a.logits)
        all_logits = None if any(t is None for t in logits) else torch.cat(logits)  # type: ignore[arg-type]
        return Answers(torch.cat(labels) if labels else torch.empty(0, dtype=torch.long), all_logits)

    def ask(self, x: torch.Tensor) -> Answers:
        n = int(x.shape[0])
        budget_left = math.inf if self.spec.max_queries is None else self.spec.max_queries - self.queries
        if budget_left < n:
            raise BudgetExhausted(f"the query budget ({self.spec.max_queries}) ran out after {self.queries} queries")
        # Retries count against the budget: never allow more attempts than it can pay for.
        allowed = int(min(self.spec.retries, budget_left // n - 1))
        limited = allowed < self.spec.retries
        self._adapter.max_retries = Retry(
            total=allowed, status_forcelist=RETRY_STATUSES, allowed_methods=None, backoff_factor=self.spec.backoff,
            respect_retry_after_header=True, retry_after_max=self.spec.retry_after_max, raise_on_status=False,
        )
        path, body = self._payload(encode(x, self.spec))
        where = f"{self.base}{path}"
        self._throttle()
        self.requests += 1
        try:
            response = self.session.post(where, data=json.dumps(body), timeout=self.spec.timeout,
                                         headers={"Content-Type": "application/json", **dict(self.spec.headers)})
        except requests.RequestException as exc:
            self.queries += n * (1 + allowed)
            self.retries += allowed
            if limited:
                raise BudgetExhausted(f"the query budget ({self.spec.max_queries}) ran out while retrying "
                                      f"({exc.__class__.__name__})") from exc
            timed_out = isinstance(exc, requests.Timeout) or "timed out" in str(exc).lower()
            why = (f"Timeout: no answer within {self.spec.timeout:g} s" if timed_out
                   else f"{exc.__class__.__name__}: {str(exc)[:160]}")
            raise ServiceError(f"{where}: no usable answer after {1 + allowed} attempts ({why})") from exc
        history = len(response.raw.retries.history) if getattr(response.raw, "retries", None) else 0
        self.queries += n * (1 + history)
        self.retries += history
        if response.status_code in RETRY_STATUSES and limited:
            raise BudgetExhausted(f"the query budget ({self.spec.max_queries}) ran out while retrying "
                                  f"(status {response.status_code})")
        if response.status_code in (401, 403):
            raise ServiceError(f"{where}: refused ({response.status_code}); does it need --header with a token?")
        if not 200 <= response.status_code < 300:
            raise ServiceError(f"{where}: status {response.status_code} after {1 + history} attempts "
                               f"({response.text[:120]!r})")
        return answers_from(self._predictions(response, where), n, self.num_classes, where)

    def describe(self) -> dict[str, Any]:
        """What the verdict's JSON says of the service (never its headers: they may hold a token)."""
        return {"url": self.spec.url, "protocol": self.protocol, "model_name": self.model_name,
                "queries": self.queries, "retries": self.retries, "requests": self.requests}


def query_plan(n: int, batch_size: int, repeat_share: float, seed: int) -> list[int]:
    """The order in which the ``n`` points go to a service, with about ``repeat_share`` of them
    asked a second time: shuffled with ``seed`` (a service cannot tell the points by their
    position), and each repeat placed in another batch than its first asking (so a service that
    answers a fingerprint query at random is caught changing its answer). Indices into the set."""
    if n < 0 or batch_size < 1 or not 0 <= repeat_share <= 1:
        raise ValueError(f"query_plan: n >= 0, batch_size >= 1 and repeat_share in [0, 1], got {n}, {batch_size}, {repeat_share}")
    gen = torch.Generator().manual_seed(seed)
    repeats = torch.randperm(n, generator=gen)[: math.ceil(repeat_share * n)].tolist() if n else []
    order = [int(i) for i in torch.randperm(n, generator=gen)] + repeats
    perm = torch.randperm(len(order), generator=gen).tolist()
    order = [order[p] for p in perm]
    if len(order) <= batch_size:
        return order
    # Separate twins that landed in one batch by swapping one of them into another batch.
    for _ in range(4):
        moved = False
        for pos, idx in enumerate(order):
            batch = pos // batch_size
            twins = [q for q in range(batch * batch_size, min(len(order), (batch + 1) * batch_size)) if order[q] == idx]
            if len(twins) < 2 or pos != twins[1]:
                continue
            for cand in torch.randperm(len(order), generator=gen).tolist():
                other = cand // batch_size
                lo, hi = other * batch_size, min(len(order), (other + 1) * batch_size)
                if other != batch and idx not in order[lo:hi] and order[cand] not in order[batch * batch_size : (batch + 1) * batch_size]:
                    order[pos], order[cand] = order[cand], order[pos]
                    moved = True
                    break
        if not moved:
            break
    return order


@dataclass(frozen=True)
class Survey:
    """A service's answers to a fingerprint set asked along a :func:`query_plan`.

    ``answers``: one per point in the set's order (its first asking), for the first ``asked``
    points of the plan that were answered before any budget ran out (``complete`` False then;
    ``answered`` marks which). ``repeated``: points asked twice; ``changed``: those whose label
    changed between the two askings (a deterministic model never changes it).
    """

    answers: Answers
    answered: torch.Tensor
    complete: bool
    repeated: int
    changed: tuple[int, ...]
    stopped: str = ""


# A label may flip between two askings only where the suspect's own logit margin is within
# float noise of batch-dependent arithmetic; such points are not held against the service.
TIE_MARGIN = 1e-3


def _margin(logits: torch.Tensor) -> torch.Tensor:
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def survey(service: PredictionService, inputs: torch.Tensor, plan: Sequence[int]) -> Survey:
    """Ask ``service`` the points of ``inputs`` in the order of ``plan`` (see :func:`query_plan`),
    batch by batch, and compare the answers of repeated points."""
    n = int(inputs.shape[0])
    labels = torch.full((n,), -1, dtype=torch.long)
    logits: torch.Tensor | None = None
    seen = torch.zeros(n, dtype=torch.bool)
    repeated: set[int] = set()
    changed: list[int] = []
    complete, stopped = True, ""
    size = service.spec.batch_size
    for start in range(0, len(plan), size):
        idx = torch.tensor(plan[start : start + size], dtype=torch.long)
        try:
            got = service.ask(inputs[idx])
        except BudgetExhausted as exc:
            complete, stopped = False, str(exc)
            break
        if got.logits is not None and logits is None and not seen.any():
            logits = torch.zeros(n, got.logits.shape[1])
        for j, i in enumerate(idx.tolist()):
            if seen[i]:
                repeated.add(i)
                if int(got.labels[j]) != int(labels[i]):
                    ties = logits is not None and got.logits is not None and bool(
                        min(_margin(logits[i : i + 1]), _margin(got.logits[j : j + 1])) < TIE_MARGIN)
                    if not ties:
                        changed.append(i)
                continue
            seen[i] = True
            labels[i] = got.labels[j]
            if logits is not None:
                if got.logits is None:
                    raise ServiceError(f"{service.base}: answered some batches with scores and others with labels only")
                logits[i] = got.logits[j]
    return Survey(Answers(labels, logits), seen, complete and bool(seen.all()), len(repeated), tuple(sorted(changed)), stopped)
