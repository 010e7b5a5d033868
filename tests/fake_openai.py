"""A real HTTP server on 127.0.0.1 that speaks OpenAI's /v1/chat/completions, for judge tests.

    with FakeOpenAI() as server:
        server.script += [("status", 429), ("status", 500), ("content", "Rating: [[8]]")]
        judge = OpenAIJudge("judge", base_url=server.base_url, api_key_env=None, ...)

Each request takes the next action from `script` (a deque, in arrival order), or `default` once
the script is empty. Actions:
    ("ok",)                       a reply from `responder(body)` (text) or, when the request
                                  asks for logprobs, from `logprobs_for(body)` ({token: logprob})
    ("content", text)             a reply with this text
    ("logprobs", {token: lp})     a reply whose first token has these top_logprobs
    ("status", code[, retry_after])  an error status with an OpenAI-style error body
    ("hang", seconds)             wait (longer than the client's timeout), then reply
    ("malformed",)                HTTP 200 whose body is not JSON
    ("no_choices",)               HTTP 200, JSON without "choices"
The server counts requests, keeps their JSON bodies, and records the most requests it had in
flight at once (`max_in_flight`); `delay_s` holds every request that long, so overlap shows.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def default_responder(body: dict) -> str:
    return "The answer is correct and helpful. Rating: [[8]]"


def default_logprobs(body: dict) -> dict[str, float]:
    return {"m": -0.1, "M": -2.4, "The": -6.0}


class FakeOpenAI:
    def __init__(self, delay_s: float = 0.0):
        self.script: deque[tuple] = deque()
        self.default: tuple = ("ok",)
        self.responder: Callable[[dict], str] = default_responder
        self.logprobs_for: Callable[[dict], dict[str, float]] = default_logprobs
        self.delay_s = delay_s
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                fake._handle(self)

            def log_message(self, *args):  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()  # wakes hanging handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def n_requests(self) -> int:
        with self._lock:
            return len(self.requests)

    # -- serving --

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length", 0))
        raw = h.rfile.read(length)
        if not h.path.endswith("/chat/completions"):
            self._send(h, 404, {"error": {"message": f"no route {h.path}"}})
            return
        body = json.loads(raw)
        with self._lock:
            self.requests.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            action = self.script.popleft() if self.script else self.default
        try:
            if self.delay_s:
                self._closing.wait(self.delay_s)
            self._act(h, body, action)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout); nothing to answer
        finally:
            with self._lock:
                self.in_flight -= 1

    def _act(self, h: BaseHTTPRequestHandler, body: dict, action: tuple) -> None:
        kind = action[0]
        if kind == "status":
            code = action[1]
            headers = {"Retry-After": str(action[2])} if len(action) > 2 else {}
            err = {"error": {"message": f"scripted {code}", "type": "test", "code": code}}
            self._send(h, code, err, headers)
        elif kind == "hang":
            self._closing.wait(action[1])
            self._send(h, 200, self._completion(body, "late reply", None))
        elif kind == "malformed":
            self._send_raw(h, 200, b'{"id": "x", "choices": [ {not json', "application/json")
        elif kind == "no_choices":
            self._send(h, 200, {"id": "x", "object": "chat.completion", "model": body["model"]})
        elif kind == "content":
            self._send(h, 200, self._completion(body, action[1], None))
        elif kind == "logprobs":
            self._send(h, 200, self._completion(body, None, action[1]))
        elif kind == "ok":
            if body.get("logprobs"):
                self._send(h, 200, self._completion(body, None, self.logprobs_for(body)))
            else:
                self._send(h, 200, self._completion(body, self.responder(body), None))
        else:
            raise ValueError(f"unknown scripted action {action!r}")

    @staticmethod
    def _completion(body: dict, text: str | None, top: dict[str, float] | None) -> dict:
        choice: dict = {"index": 0, "finish_reason": "stop", "logprobs": None}
        if top is not None:
            ranked = sorted(top.items(), key=lambda kv: -kv[1])
            text = ranked[0][0]
            entries = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in ranked]
            choice["logprobs"] = {
                "content": [
                    {"token": text, "logprob": ranked[0][1], "bytes": None, "top_logprobs": entries}
                ]
            }
            choice["finish_reason"] = "length"
        choice["message"] = {"role": "assistant", "content": text}
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [choice],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }

    def _send(self, h, code: int, obj: dict, headers: dict | None = None) -> None:
        self._send_raw(h, code, json.dumps(obj).encode(), "application/json", headers)

    @staticmethod
    def _send_raw(h, code: int, data: bytes, ctype: str, headers: dict | None = None) -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
