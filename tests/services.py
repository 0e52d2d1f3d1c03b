"""Prediction services of the tests' own, speaking MLflow serving's or the Open Inference
Protocol v2's JSON over real HTTP on a loopback port, with faults to inject.

A service wraps a model (pixels in [0, 1] in, logits out) and can: answer labels or logits;
fail its first requests with 503 (and ``Retry-After``); answer too slowly; answer too few
predictions; answer garbage; answer at random (so a point asked twice may change its label);
answer a wrong label wherever its own confidence is low (an OOD-detecting copy);
refuse requests without the right ``Authorization`` header. It counts requests and images.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import torch


@dataclass
class Faults:
    fail_first: int = 0          # this many POSTs answer 503 first
    retry_after: str | None = "0"
    delay: float = 0.0           # seconds before each POST's answer
    drop: int = 0                # answer this many predictions fewer
    garbage: bool = False        # answer a body that is not JSON
    random_share: float = 0.0    # answer a random label for this share of images
    token: str | None = None     # require 'Authorization: Bearer <token>'
    labels_only: bool = False    # answer labels instead of logits
    msp_below: float = 0.0       # an OOD-detecting copy: a wrong label where its top softmax is below this
    seed: int = 0


@dataclass
class Stats:
    requests: int = 0
    images: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)


def _handler(model: torch.nn.Module, protocol: str, name: str, model_shape: tuple[int, ...], faults: Faults,
             stats: Stats, lock: threading.Lock) -> type[BaseHTTPRequestHandler]:
    gen = np.random.default_rng(faults.seed)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if protocol == "v2" and self.path == "/v2/health/ready":
                return self._send(200, {})
            if protocol == "v2" and self.path == f"/v2/models/{name}":
                return self._send(200, {"name": name, "platform": "test", "inputs": [
                    {"name": "images", "datatype": "FP32", "shape": [-1, *model_shape]}],
                    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, -1]}]})
            if protocol == "mlflow" and self.path in ("/ping", "/health"):
                return self._send(200, {})
            return self._send(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                stats.requests += 1
                stats.headers.append(dict(self.headers))
                attempt = stats.requests
            if faults.token is not None and self.headers.get("Authorization") != f"Bearer {faults.token}":
                return self._send(401, {"error": "unauthorized"})
            if attempt <= faults.fail_first:
                return self._send(503, {"error": "busy"}, {"Retry-After": faults.retry_after} if faults.retry_after else None)
            if faults.delay:
                time.sleep(faults.delay)
            payload = json.loads(body)
            if protocol == "v2":
                if self.path != f"/v2/models/{name}/infer":
                    return self._send(404, {"error": f"no route {self.path}"})
                inp = payload["inputs"][0]
                if inp["name"] != "images":
                    return self._send(400, {"error": f"unknown input {inp['name']}"})
                dtype = np.uint8 if inp["datatype"] == "UINT8" else np.float32
                x = np.asarray(inp["data"], dtype=dtype).reshape(inp["shape"])
            else:
                if self.path != "/invocations":
                    return self._send(404, {"error": f"no route {self.path}"})
                x = np.asarray(payload["inputs"])
            x = torch.from_numpy(x.astype(np.float32) / (255.0 if np.issubdtype(x.dtype, np.integer) else 1.0))
            with lock:
                stats.images += x.shape[0]
            with torch.no_grad():
                logits = model(x)
            labels = logits.argmax(1).numpy()
            if faults.msp_below:
                flagged = (logits.softmax(1).max(1).values < faults.msp_below).numpy()
                labels = np.where(flagged, (labels + 1) % logits.shape[1], labels)
            if faults.random_share:
                flip = gen.random(len(labels)) < faults.random_share
                labels = np.where(flip, gen.integers(0, logits.shape[1], len(labels)), labels)
            out: np.ndarray = labels if faults.labels_only else logits.numpy()
            if (faults.random_share or faults.msp_below) and not faults.labels_only:
                out = np.eye(logits.shape[1], dtype=np.float32)[labels] * 10
            if faults.drop:
                out = out[: -faults.drop]
            if faults.garbage:
                return self._send(200, b"<html>oops</html>")
            if protocol == "v2":
                return self._send(200, {"model_name": name, "outputs": [{
                    "name": "logits", "shape": list(out.shape), "datatype": "INT64" if out.ndim == 1 else "FP32",
                    "data": out.reshape(-1).tolist()}]})
            return self._send(200, {"predictions": out.tolist()})

    return Handler


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (a timeout test) breaks the pipe; not the test's business


@contextmanager
def serve(model: torch.nn.Module, protocol: str = "mlflow", input_shape: tuple[int, ...] = (1, 8, 8),
          name: str = "suspect", faults: Faults | None = None) -> Iterator[tuple[str, Stats]]:
    """A running service on a free loopback port: yields its base URL and its counters; shut down
    on leaving, whatever happens."""
    stats, lock = Stats(), threading.Lock()
    handler = _handler(model.eval(), protocol, name, tuple(input_shape), faults or Faults(), stats, lock)
    server = _QuietServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", stats
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
