"""Judges for MT-Bench and AlpacaEval behind one interface, and the OpenAI-compatible client.

No launch command of its own: `distill.eval.mtbench judge` and `distill.eval.alpaca annotate` build
a judge from a YAML (or JSON) mapping with `judge_from_config`, e.g. for an OpenAI-compatible one:

    kind: openai                 # the default kind
    model: gpt-4                 # the served model name (also the "judge" name in FastChat records)
    base_url: https://api.openai.com/v1    # or http://host:8000/v1 for a vLLM server
    api_key_env: OPENAI_API_KEY  # the *name* of the env var holding the key; null: no key
    cache_path: results/eval/judge_cache/gpt-4.jsonl
    max_concurrency: 8           # requests in flight at once
    max_retries: 6               # retries after the first try (429, 5xx, timeouts, no connection)
    timeout_s: 120
    backoff_base_s: 1.0          # retry k waits about base * 2**k seconds (jittered), at most:
    backoff_max_s: 60

The interface (`Judge`, a typed Protocol that both judges implement in full):
- `name`: the judge's model name, written into judgment records.
- `rating`: "generate" (the judge writes its verdict: FastChat's [[x]], alpaca_eval_gpt4's
  ranking) or "expected" (the verdict is read from its next-token probabilities; in-process only).
- `complete(messages, *, max_tokens, temperature) -> str`: the reply text to a chat
  (`messages` = [{"role": "system"|"user"|"assistant", "content": str}, ...]).
- `choice_logprobs(messages, choices) -> {choice: logprob}`: the log-probability that the next
  token is each single-token choice (-inf when the judge does not rank it among its top
  candidates). AlpacaEval's weighted protocol reads P("m") and P("M") from it.
- `continuation_logprobs(messages, prefill, continuations) -> {continuation: logprob}`: the
  log-probability of each whole continuation after the assistant's turn is prefilled with
  `prefill` (rating "expected" only: AlpacaEval 1.0 reads P("model_1") against P("model_2")).
- `rate(messages) -> (score, text)`: the expected MT-Bench rating (rating "expected" only).
- `map(fn, items) -> list`: `[fn(x) for x in items]` with the judge's own concurrency.
An OpenAI-compatible server cannot be prefilled: its `rate` and `continuation_logprobs` raise
JudgeRequestError, and `judge_from_config` refuses `rating: expected` for it.
`check_judge_ready(judge_config)` checks, before any job starts, what a judge needs from the
environment (the API key of kind openai).

Two judges (`judge_from_config` picks one by `kind`):
- `kind: openai` (OpenAIJudge below): any OpenAI-compatible server; MT-Bench ratings are parsed
  from the generated [[x]] (FastChat's protocol).
- `kind: transformers` (TransformersJudge): a model directory judged in this process, e.g.

      kind: transformers
      model_dir: results/models/teacher
      precision: bf16
      rating: expected             # or generate (parse [[x]] from generated text)
      name: teacher                # the "judge" name in records (default: the folder's name)
      max_new_tokens: 256          # cap on generated judgments (FastChat asks 2048)

  On 2 CPU cores the 135M teacher does not write FastChat's "Rating: [[x]]" when asked (it goes
  on with or repeats the answer it judges), so the embedded default reads `expected` ratings.

OpenAIJudge, the client for any OpenAI-compatible /v1/chat/completions server:
- every request is keyed by sha256 of (model, messages, params); a reply already in the on-disk
  cache (a jsonl file, one {"key", "request", "response"} a line) is returned without a request,
  so a rerun never pays twice. Each reply is appended and flushed (and fsynced) the moment it
  arrives, so a later failure loses nothing already paid for. The key leaves out base_url: give
  each judge model its own cache file.
- 429, 5xx, timeouts and connection errors are retried with exponential backoff and jitter
  (honouring Retry-After up to backoff_max_s); other statuses (400, 401, 404, ...) fail at once.
- a reply that is not JSON, or lacks choices[0].message.content (or the logprobs asked for),
  raises JudgeReplyError naming the endpoint: a proxy or a wrong base_url, not a passing fault.
- when retries run out, JudgeUnavailableError says how many requests succeeded in this run and
  are in the cache, and where; the rest of a `map` is cancelled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from distill.generation import chat_prompt
from distill.io import InputError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

Messages = list[dict[str, str]]
Rating = Literal["generate", "expected"]


@runtime_checkable
class Judge(Protocol):
    """What MT-Bench and AlpacaEval scoring need from a judge (see the module docstring)."""

    name: str
    rating: Rating

    def complete(self, messages: Messages, *, max_tokens: int, temperature: float) -> str: ...

    def choice_logprobs(self, messages: Messages, choices: list[str]) -> dict[str, float]: ...

    def continuation_logprobs(
        self, messages: Messages, prefill: str, continuations: list[str]
    ) -> dict[str, float]: ...

    def rate(self, messages: Messages) -> tuple[float, str]: ...

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]: ...


def check_judge_ready(judge_config: Mapping[str, Any]) -> None:
    """Raise InputError when the judge cannot run in this environment (before any job starts).

    judge_config: the config's `eval.judge` section. Kind openai with `api_key_env` set needs that
    environment variable to hold a key; an in-process judge needs nothing from the environment.
    """
    if judge_config.get("kind") != "openai" or not judge_config.get("api_key_env"):
        return
    name = judge_config["api_key_env"]
    if not os.environ.get(name, "").strip():
        base_url = judge_config.get("base_url") or "OpenAI's API"
        raise InputError(
            f"config eval.judge: the judge {judge_config.get('model')!r} at {base_url} reads its "
            f"API key from the environment variable {name} (eval.judge.api_key_env), which is "
            f"not set or empty, so every judging job would fail after the GPU jobs before it had "
            f"run. Fix: `export {name}=<your key>` in the shell that starts snakemake (SLURM jobs "
            "inherit it), or, for a server that needs no key (a local vLLM), set "
            "eval.judge.api_key_env: null."
        )


def judge_map(judge: Judge, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`[fn(x) for x in items]`, in order, run with the judge's own concurrency."""
    return judge.map(fn, items)


class JudgeError(RuntimeError):
    """A judge could not deliver; the message names the endpoint and what is kept.

    `msg` is what went wrong, `note` what was kept (replies paid for, where the cache is).
    """

    def __init__(self, msg: str, note: str = ""):
        super().__init__(f"{msg} {note}".strip())
        self.msg = msg
        self.note = note


class JudgeReplyError(JudgeError):
    """The server answered, but not with a usable chat completion."""


class JudgeRequestError(JudgeError):
    """The server refused the request with a status that retrying will not change."""


class JudgeUnavailableError(JudgeError):
    """Retries ran out (rate limits, server errors, timeouts or no connection)."""


# --- the on-disk cache -------------------------------------------------------------------------


def request_key(request: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a request (model, messages, params)."""
    canonical = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class JudgeCache:
    """Append-only jsonl of {"key", "request", "response"}; `path=None` keeps it in memory only.

    A line cut short by a kill is skipped (with a warning) when the file is read back.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, dict] = {}
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                        self._entries[row["key"]] = row["response"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        log.warning("%s:%d: unreadable cache line skipped", self.path, lineno)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict | None:
        return self._entries.get(key)

    def put(self, key: str, request: Mapping[str, Any], response: dict) -> None:
        line = json.dumps(
            {"key": key, "request": request, "response": response}, ensure_ascii=False
        )
        with self._lock:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # One write per line on an O_APPEND file: a paid reply is on disk before the
                # next request starts, and lines from parallel threads never interleave.
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            self._entries[key] = response


# --- reply parsing -----------------------------------------------------------------------------


def parse_chat_reply(text: str, endpoint: str, want_logprobs: bool) -> dict:
    """Check a /chat/completions reply body and keep what the judges use.

    Returns {"content": str, "finish_reason": str | None,
             "top_logprobs": [{"token": str, "logprob": float}, ...] | None  (first token only),
             "usage": dict | None}.
    """

    def bad(what: str) -> JudgeReplyError:
        return JudgeReplyError(
            f"{endpoint}: {what} (reply starts {text[:200]!r}). Fix: check that base_url points "
            "at an OpenAI-compatible /v1 server and the model name is one it serves."
        )

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(f"reply is not valid JSON ({e.msg} at character {e.pos})") from None
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise bad('reply has no "choices"[0]')
    choice = choices[0]
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise bad('reply has no string "choices"[0]."message"."content"')
    top = None
    if want_logprobs:
        lp = choice.get("logprobs")
        positions = lp.get("content") if isinstance(lp, dict) else None
        if not isinstance(positions, list) or not positions or not isinstance(positions[0], dict):
            raise bad('reply has no "choices"[0]."logprobs"."content" (logprobs were asked for)')
        raw_top = positions[0].get("top_logprobs")
        if not isinstance(raw_top, list):
            raise bad('reply has no "top_logprobs" for the first token')
        top = []
        for t in raw_top:
            ok = isinstance(t, dict) and isinstance(t.get("token"), str)
            if not ok or not isinstance(t.get("logprob"), int | float):
                raise bad(f"malformed top_logprobs entry {t!r}")
            top.append({"token": t["token"], "logprob": float(t["logprob"])})
    usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else None
    return {
        "content": content,
        "finish_reason": choice.get("finish_reason"),
        "top_logprobs": top,
        "usage": usage,
    }


def logprobs_of_choices(
    top_logprobs: Sequence[Mapping], choices: Sequence[str]
) -> dict[str, float]:
    """{choice: logprob} from a first-token top_logprobs list; -inf for a choice not listed.

    Tokens match exactly (as alpaca_eval's logprob_parser does); a token listed twice keeps its
    last entry, as alpaca_eval's dict comprehension does.
    """
    out = {c: -math.inf for c in choices}
    for t in top_logprobs:
        if t["token"] in out:
            out[t["token"]] = float(t["logprob"])
    return out


# --- the OpenAI-compatible judge ---------------------------------------------------------------

CONFIG_KEYS = {
    "model",
    "base_url",
    "api_key_env",
    "cache_path",
    "max_concurrency",
    "max_retries",
    "timeout_s",
    "backoff_base_s",
    "backoff_max_s",
    "top_logprobs",
}

_jitter = random.Random()  # jitter need not be reproducible; it only spreads retries apart


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds to wait before retry `attempt` (0-based): base * 2**attempt, capped, with jitter
    in [d/2, d]; at least Retry-After when the server sent one (still capped)."""
    d = min(cap, base * 2**attempt)
    d = d / 2 + _jitter.uniform(0, d / 2)
    if retry_after is not None:
        d = max(d, min(cap, retry_after))
    return d


class OpenAIJudge:
    """A judge served over OpenAI's /v1/chat/completions (OpenAI, vLLM, llama.cpp, ...)."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        cache_path: str | os.PathLike | None = None,
        max_concurrency: int = 8,
        max_retries: int = 6,
        timeout_s: float = 120.0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        top_logprobs: int = 20,
    ):
        import openai  # imported here so that judge-free code paths do not pay for it

        if api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise InputError(
                    f"judge config: api_key_env names {api_key_env}, which is not set. Fix: "
                    f"export {api_key_env}=<key>, or set api_key_env: null for a server that "
                    "needs no key."
                )
        else:
            api_key = "EMPTY"  # the client insists on a string; keyless servers ignore it
        if max_concurrency < 1 or max_retries < 0:
            raise InputError("judge config: max_concurrency must be >= 1 and max_retries >= 0.")
        self.name = model
        self.model = model
        self.rating: Rating = "generate"  # a server writes its verdicts (no prefill possible)
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.top_logprobs = top_logprobs
        self.cache = JudgeCache(cache_path)
        # The HTTP client logs every request at INFO; thousands of lines would bury the warnings.
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # Retries are ours (counted, jittered, stoppable), so the client's own are off.
        self._client = openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0
        )
        self.endpoint = str(self._client.base_url).rstrip("/") + "/chat/completions"
        self._openai = openai
        self._slots = threading.Semaphore(max_concurrency)
        self._stop = threading.Event()
        self._count_lock = threading.Lock()
        self.n_requests = 0  # HTTP requests sent, retries included
        self.n_paid = 0  # replies received and cached in this process
        self.n_cache_hits = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "judge") -> OpenAIJudge:
        """Build from a config mapping (keys as in the module docstring); `where` names it."""
        unknown = set(config) - CONFIG_KEYS - {"kind"}
        if unknown:
            raise InputError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))}. Fix: use only "
                f"{', '.join(sorted(CONFIG_KEYS))}."
            )
        if not isinstance(config.get("model"), str) or not config["model"]:
            raise InputError(f"{where}: `model` is missing. Fix: set model: <served model name>.")
        kwargs = {k: v for k, v in config.items() if k in CONFIG_KEYS and k != "model"}
        return cls(config["model"], **kwargs)

    # -- the Judge interface --

    def complete(self, messages: Messages, *, max_tokens: int, temperature: float) -> str:
        params = {"max_tokens": max_tokens, "temperature": temperature, "n": 1}
        return self._call(messages, params, want_logprobs=False)["content"]

    def choice_logprobs(self, messages: Messages, choices: list[str]) -> dict[str, float]:
        # One token is enough: only the first position's alternatives are read. temperature=1
        # as alpaca_eval sends it (servers report the logprobs of the unscaled distribution).
        params = {
            "max_tokens": 1,
            "temperature": 1.0,
            "n": 1,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
        }
        reply = self._call(messages, params, want_logprobs=True)
        return logprobs_of_choices(reply["top_logprobs"], choices)

    def continuation_logprobs(
        self, messages: Messages, prefill: str, continuations: list[str]
    ) -> dict[str, float]:
        raise JudgeRequestError(self._no_prefill("continuation log-probabilities"))

    def rate(self, messages: Messages) -> tuple[float, str]:
        raise JudgeRequestError(self._no_prefill("an expected rating"))

    def _no_prefill(self, what: str) -> str:
        return (
            f"{self.endpoint}: {what} needs a prefilled assistant turn, which a chat-completions "
            "server cannot continue. Fix: set eval.judge.rating: generate for kind openai."
        )

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """`[fn(x) for x in items]` with at most `max_concurrency` requests in flight.

        The first failure cancels what has not started; the error raised says how many replies
        were paid for and cached (a rerun resumes from the cache).
        """
        items = list(items)
        self._stop.clear()
        paid_before = self.n_paid
        results: list[Any] = [None] * len(items)
        errors: list[BaseException] = []

        def run(x: T) -> R:
            try:
                return fn(x)
            except Exception:
                # Set in the worker itself, before it takes the next item: nothing new starts.
                self._stop.set()
                raise

        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = {pool.submit(run, x): i for i, x in enumerate(items)}
            for fut in as_completed(futures):
                try:
                    results[futures[fut]] = fut.result()
                except Exception as e:  # re-raised below, once the others have stopped
                    errors.append(e)
                    self._stop.set()
                    for other in futures:
                        other.cancel()
        self._stop.clear()
        if errors:
            first = next((e for e in errors if not isinstance(e, _Stopped)), errors[0])
            if not isinstance(first, JudgeError):
                raise first
            n_ok = self.n_paid - paid_before
            cls = JudgeUnavailableError if isinstance(first, _Stopped) else type(first)
            raise cls(first.msg, self._kept_note(n_ok, len(items))) from first
        return results

    # -- internals --

    def _kept_note(self, n_ok: int | None = None, n_total: int | None = None) -> str:
        where = str(self.cache.path) if self.cache.path else "memory only (no cache_path set)"
        done = f"{n_ok} of {n_total} requests" if n_total is not None else f"{self.n_paid} requests"
        return (
            f"{done} succeeded in this run and are kept in the judge cache {where} "
            f"({len(self.cache)} replies in all); a rerun does not request them again."
        )

    def _call(self, messages: Messages, params: dict, want_logprobs: bool) -> dict:
        request = {"model": self.model, "messages": messages, "params": params}
        key = request_key(request)
        hit = self.cache.get(key)
        if hit is not None:
            with self._count_lock:
                self.n_cache_hits += 1
            return hit
        reply = self._post(messages, params, want_logprobs)
        self.cache.put(key, request, reply)
        with self._count_lock:
            self.n_paid += 1
        return reply

    def _post(self, messages: Messages, params: dict, want_logprobs: bool) -> dict:
        openai = self._openai
        last: str = ""
        for attempt in range(self.max_retries + 1):
            if self._stop.is_set():
                raise _Stopped(f"{self.endpoint}: cancelled after another request failed.")
            retry_after = None
            with self._slots:
                with self._count_lock:
                    self.n_requests += 1
                try:
                    raw = self._client.chat.completions.with_raw_response.create(
                        model=self.model, messages=messages, **params
                    )
                    text = raw.text
                except openai.APITimeoutError:
                    last = "timed out"
                except openai.APIConnectionError as e:
                    last = f"connection failed ({e.__cause__ or e})"
                except openai.APIStatusError as e:
                    status = e.status_code
                    body = (e.response.text or "")[:200]
                    if status != 429 and status < 500:
                        raise JudgeRequestError(
                            f"{self.endpoint}: HTTP {status} for model {self.model!r} ({body!r}). "
                            "Fix: check the model name, api_key_env and base_url in the judge "
                            "config.",
                            self._kept_note(),
                        ) from None
                    last = f"HTTP {status} ({body!r})"
                    retry_after = _retry_after_seconds(e.response.headers.get("retry-after"))
                else:
                    try:
                        return parse_chat_reply(text, self.endpoint, want_logprobs)
                    except JudgeReplyError as e:
                        raise JudgeReplyError(e.msg, self._kept_note()) from None
            if attempt < self.max_retries:
                delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_max_s, retry_after)
                log.warning(
                    "%s: %s; retry %d/%d in %.2fs",
                    self.endpoint,
                    last,
                    attempt + 1,
                    self.max_retries,
                    delay,
                )
                # Wake early when another request already gave up (map is cancelling).
                if self._stop.wait(delay):
                    raise _Stopped(f"{self.endpoint}: cancelled after another request failed.")
        raise JudgeUnavailableError(
            f"{self.endpoint}: gave up after {self.max_retries + 1} attempts (last: {last}). "
            f"Fix: check that the server is up (or wait out its rate limit) and rerun, or raise "
            "max_retries / timeout_s in the judge config.",
            self._kept_note(),
        )


# --- the in-process transformers judge ----------------------------------------------------------

RATING_PREFILL = "Rating: [["  # FastChat's judge prompts end their answer with "Rating: [[x]]"
RATINGS = tuple(range(1, 11))
TRANSFORMERS_KEYS = {"kind", "model_dir", "precision", "rating", "name", "max_new_tokens"}


def expected_rating(probs: Sequence[float]) -> float:
    """sum_r r * P(r) over ratings 1..10; probs (10,) need not sum to 1 (they are renormalised)."""
    total = sum(probs)
    if not total > 0:
        raise ValueError("no probability mass on any rating")
    return sum(r * p for r, p in zip(RATINGS, probs, strict=True)) / total


class TransformersJudge:
    """A causal LM judging in this process (the embedded default: the teacher), on CPU or GPU.

    - `complete` generates the judgment text (greedy at temperature 0) from the judge's chat
      template; at most `max_new_tokens` tokens whatever the caller asks (FastChat asks 2048).
    - `choice_logprobs` reads the next-token log-softmax after the chat template's generation
      prompt: the exact log-probability of each single-token choice (never -inf for a choice that
      is one token; a choice that is not one token is an error).
    - `rating_probs` / `rate` (used when `rating == "expected"`): the rating as the probability-
      weighted value over 1..10 at the point where the judge writes it. The assistant's turn is
      prefilled with the text "Rating: [[" (FastChat's prompts ask for "Rating: [[5]]"; the judge
      gives no explanation first), and:
        * ratings 2..9: P(r) = P(first token = "r");
        * rating 10: when the tokenizer writes "10" as one token, P(10) = P(first token = "10")
          and P(1) = P("1"); when it writes "1" "0" (SmolLM2, Llama 3 and most BPE tokenizers
          that split digits), one more step with "1" appended:
          P(10) = P("1") * P(next = "0" | "1") and P(1) = P("1") * (1 - P(next = "0" | "1")),
          i.e. a "1" followed by anything but "0" counts as 1;
        * the ten values are renormalised to sum to 1 (the mass on other tokens is reported as
          `rating_mass`, how much the judge meant to write a rating at all) and the score is
          sum_r r * P(r), a real number in [1, 10].
      A tokenizer that merges "[[" with the digit after it cannot be read this way: the judge
      refuses `expected` for it (use `generate`).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        precision: str = "bf16",
        mode: str = "expected",
        *,
        name: str | None = None,
        max_new_tokens: int = 256,
    ):
        from distill.generation import load_for_generation

        if mode not in ("generate", "expected"):
            raise InputError(f"judge rating mode {mode!r}: use `generate` or `expected`.")
        if not Path(model_dir, "config.json").is_file():
            raise InputError(
                f"{model_dir}: no model here (config.json missing). Fix: build the judge model "
                "first or point the judge at a save_pretrained directory."
            )
        self.model, self.tokenizer = load_for_generation(str(model_dir), precision)
        self.name = name or Path(model_dir).name
        self.rating: Rating = mode  # "generate": written verdicts; "expected": read from P(token)
        self.max_new_tokens = max_new_tokens
        self._rating_ids: tuple[list[int], int | tuple[int, int]] | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "judge") -> TransformersJudge:
        unknown = set(config) - TRANSFORMERS_KEYS
        if unknown:
            raise InputError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))} for kind: transformers. "
                f"Fix: use only {', '.join(sorted(TRANSFORMERS_KEYS))}."
            )
        if not config.get("model_dir"):
            raise InputError(f"{where}: `model_dir` is missing. Fix: set model_dir: <model dir>.")
        return cls(
            config["model_dir"],
            config.get("precision", "bf16"),
            config.get("rating", "expected"),
            name=config.get("name"),
            max_new_tokens=int(config.get("max_new_tokens", 256)),
        )

    # -- the Judge interface --

    def complete(self, messages: Messages, *, max_tokens: int, temperature: float) -> str:
        from distill.generation import generate

        n = min(max_tokens, self.max_new_tokens)
        return generate(self.model, self.tokenizer, [messages], n, temperature, batch_size=1)[0]

    def choice_logprobs(self, messages: Messages, choices: list[str]) -> dict[str, float]:
        logprobs, _ = self._next_token_logprobs(messages, "")
        return {c: float(logprobs[self._one_token(c)]) for c in choices}

    def continuation_logprobs(
        self, messages: Messages, prefill: str, continuations: list[str]
    ) -> dict[str, float]:
        """log P(continuation | chat template + prefill) for each continuation: the sum over the
        tokens of the whole text from where it leaves the prompt's own tokens (so a tokenizer
        that merges across the boundary is honoured).

        The prompt runs once; the tokens all continuations share next (for "model_1" against
        "model_2": "model_"), once; each one's own tokens then continue a copy of that KV cache
        (usually one token, read from the shared run's last position).
        """
        import copy

        text = chat_prompt(self.tokenizer, messages)
        head = self.tokenizer(text + prefill, add_special_tokens=False)["input_ids"]
        full = {
            c: self.tokenizer(text + prefill + c, add_special_tokens=False)["input_ids"]
            for c in continuations
        }
        start = _common_prefix_length([head, *full.values()])
        shared = _common_prefix_length(list(full.values()))
        if start == 0 or any(len(ids) == shared for ids in full.values()):
            raise ValueError(f"continuations {continuations} do not differ after a shared prompt")
        ids = full[continuations[0]]
        next_logprobs, cache = self._forward(ids[:start], cache=None)
        shared_logprob = 0.0
        if shared > start:  # the shared tokens: their log-probs, and the next one's distribution
            shared_logprob = float(next_logprobs[ids[start]])
            steps, cache = self._forward(ids[start:shared], cache=cache, all_positions=True)
            shared_logprob += sum(
                float(steps[k, ids[start + k + 1]]) for k in range(len(steps) - 1)
            )
            next_logprobs = steps[-1]
        out = {}
        for c, c_ids in full.items():
            own = c_ids[shared:]
            out[c] = shared_logprob + float(next_logprobs[own[0]])
            if len(own) > 1:
                steps, _ = self._forward(own[:-1], cache=copy.deepcopy(cache), all_positions=True)
                out[c] += sum(float(steps[k, own[k + 1]]) for k in range(len(own) - 1))
        return out

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """`[fn(x) for x in items]`: one model in one process judges one item at a time."""
        return [fn(x) for x in items]

    # -- the expected rating --

    def rating_probs(self, messages: Messages) -> tuple[list[float], float]:
        """(P(1..10) renormalised, rating_mass before renormalising); see the class docstring."""
        first, cache = self._next_token_logprobs(messages, RATING_PREFILL)
        digits, ten = self._rating_tokens()
        p = [math.exp(float(first[t])) for t in digits]  # P("1") .. P("9")
        if isinstance(ten, int):
            p.append(math.exp(float(first[ten])))
        else:  # "10" is "1" "0": one more step after "1", reusing the prompt's KV cache
            second, _ = self._forward([digits[0]], cache=cache)
            p_zero = math.exp(float(second[ten[1]]))
            p_one = p[0]
            p[0] = p_one * (1.0 - p_zero)
            p.append(p_one * p_zero)
        mass = sum(p)
        return [x / mass for x in p], mass

    def rate(self, messages: Messages) -> tuple[float, str]:
        """(expected rating in [1, 10], a judgment text recording how it was read)."""
        probs, mass = self.rating_probs(messages)
        score = expected_rating(probs)
        dist = ", ".join(f"{r}: {p:.3f}" for r, p in zip(RATINGS, probs, strict=True))
        text = (
            f"Rating: [[{score:.4f}]]\n(expected rating read from {self.name}'s next-token "
            f"probabilities after {RATING_PREFILL!r}; P(rating) = {{{dist}}}; "
            f"rating_mass = {mass:.4g})"
        )
        return score, text

    # -- internals --

    def _prompt_ids(self, messages: Messages, prefill: str):
        text = chat_prompt(self.tokenizer, messages)
        return self.tokenizer(text + prefill, add_special_tokens=False)["input_ids"], text

    def _next_token_logprobs(self, messages: Messages, prefill: str):
        """(log-softmax of the next token (V,) in fp32, the KV cache) after chat + prefill."""
        ids, _ = self._prompt_ids(messages, prefill)
        return self._forward(ids, cache=None)

    def _forward(self, ids: list[int], cache, all_positions: bool = False):
        """Run token ids (after `cache`, if any). -> (fp32 log-softmax of the next token (V,),
        or of every position (T, V) with all_positions; the KV cache after them)."""
        import torch

        kwargs = {} if cache is None else {self._cache_kwarg(): cache}
        with torch.no_grad():
            out = self.model(
                input_ids=torch.tensor([ids], device=self.model.device),
                use_cache=True,
                logits_to_keep=0 if all_positions else 1,  # 1: no (T, V) tensor for a prompt
                **kwargs,
            )
        logits = out.logits[0].float() if all_positions else out.logits[0, -1].float()
        # transformers 5.24 (pinned) names the returned KV cache `cache`, earlier 5.x releases
        # `past_key_values` (see _cache_kwarg): read whichever this version returns.
        returned = getattr(out, "cache", None)
        return torch.log_softmax(logits.cpu(), dim=-1), (
            returned if returned is not None else out.past_key_values
        )

    def _cache_kwarg(self) -> str:
        # transformers 5.24 (pinned) names the KV cache `cache` and warns on `past_key_values`;
        # earlier 5.x releases (seen: 5.17 on a GPU machine) know only `past_key_values`.
        import inspect

        names = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in names else "past_key_values"

    def _one_token(self, choice: str) -> int:
        ids = self.tokenizer.encode(choice, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"choice {choice!r} is {len(ids)} tokens for {self.name}, not one")
        return ids[0]

    def _rating_tokens(self) -> tuple[list[int], int | tuple[int, int]]:
        """Token ids of "1".."9" right after "Rating: [[", and of "10" (one id, or two)."""
        if self._rating_ids is not None:
            return self._rating_ids
        base = self.tokenizer.encode(RATING_PREFILL, add_special_tokens=False)

        def after_prefill(s: str) -> list[int]:
            ids = self.tokenizer.encode(RATING_PREFILL + s, add_special_tokens=False)
            if ids[: len(base)] != base:
                raise InputError(
                    f"judge {self.name}: its tokenizer merges {RATING_PREFILL!r} with the rating "
                    f"{s!r}, so the expected rating cannot be read token by token. Fix: set the "
                    "judge's rating mode to `generate`."
                )
            return ids[len(base) :]

        digits = []
        for d in range(1, 10):
            ids = after_prefill(str(d))
            if len(ids) != 1:
                raise InputError(
                    f"judge {self.name}: rating {d} is {len(ids)} tokens after "
                    f"{RATING_PREFILL!r}. Fix: set the judge's rating mode to `generate`."
                )
            digits.append(ids[0])
        ten_ids = after_prefill("10")
        if len(ten_ids) == 1:
            ten: int | tuple[int, int] = ten_ids[0]
        elif len(ten_ids) == 2 and ten_ids[0] == digits[0]:
            ten = (ten_ids[0], ten_ids[1])
        else:
            raise InputError(
                f"judge {self.name}: rating 10 is tokenized as {ten_ids} after "
                f"{RATING_PREFILL!r}. Fix: set the judge's rating mode to `generate`."
            )
        self._rating_ids = (digits, ten)
        return self._rating_ids


# -------------------------------------------------------------------------------------------------


def _common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence shares."""
    n = 0
    for column in zip(*sequences, strict=False):
        if len(set(column)) > 1:
            break
        n += 1
    return n


class _Stopped(JudgeUnavailableError):
    """A request abandoned because another one in the same map had already failed."""


def _retry_after_seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from these servers; plain backoff is fine


def judge_from_config(config: Mapping[str, Any], where: str = "judge") -> Judge:
    """Build the judge a config mapping describes (`kind: openai`, the default)."""
    kind = config.get("kind", "openai")
    if kind == "transformers":
        return TransformersJudge.from_config(config, where)
    if kind == "openai":
        config = dict(config)
        # A chat-completions server cannot be made to continue a prefilled "Rating: [[", so an
        # OpenAI judge rates MT-Bench answers by writing [[x]] (FastChat's protocol).
        if config.pop("rating", "generate") != "generate":
            raise InputError(
                f"{where}: rating `expected` needs an in-process judge (kind: transformers). "
                "Fix: set rating: generate for an OpenAI-compatible judge."
            )
        return OpenAIJudge.from_config(config, where)
    raise InputError(
        f"{where}: kind {kind!r} is not a known judge. Fix: use kind: openai or kind: transformers."
    )
