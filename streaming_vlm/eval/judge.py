"""Pairwise LLM judging through an OpenAI-compatible chat API.

A :class:`Judge` asks a chat model which of two commentaries is better, under a fixed :class:`Rubric`, with
deterministic settings (temperature 0, a fixed seed, a short token budget). :meth:`Judge.compare` asks both
answer orders, so a judge that always picks the first slot scores a tie, not a win. Replies are parsed
strictly: only the rubric's exact verdict strings count; anything else is ``"invalid"`` and is counted and
reported, never mapped to a side. Connection errors, timeouts (``timeout_s`` per request), rate limits,
408/409/5xx answers and 200 answers that are not a chat completion (a body that is not JSON, another JSON) are
retried a bounded number of times, then raise :class:`JudgeError`; the wait is a capped exponential backoff, or
what the server asks for in ``Retry-After`` (capped at :data:`MAX_RETRY_AFTER_S`). Every reply that parses as a
verdict is cached in a JSONL file keyed by a hash of (model, messages, settings), so a rerun of the same
comparisons makes no API calls for them; an invalid reply is not cached (nor taken from an older cache), so a
rerun asks it again.

The ``openai`` package (the ``eval`` extra) is imported only when a :class:`Judge` is built without a client.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streaming_vlm.argtypes import non_negative_int, positive_float
from streaming_vlm.eval.runner import append_jsonl, read_jsonl

log = logging.getLogger(__name__)

VERDICTS = ("A", "B")
INVALID = "invalid"
MAX_BACKOFF_S = 60.0
MAX_RETRY_AFTER_S = 300.0
"""The longest wait a ``Retry-After`` header is honoured for; a longer one is cut to this."""


class JudgeError(RuntimeError):
    """The judge API could not be reached or kept failing after the allowed retries."""


@dataclass(frozen=True)
class ChatConfig:
    """How to reach an OpenAI-compatible chat model and how to ask it (the judge's and the baseline's common part).

    ``base_url`` None uses the client's default (``OPENAI_BASE_URL`` or api.openai.com). The key is read from
    the environment variable named by ``api_key_env``; when it is unset the client gets ``"EMPTY"``, which is
    what a local endpoint (vLLM, SGLang) expects. Requests are deterministic by default (temperature 0, a fixed
    seed; ``seed`` None sends none). ``max_retries`` is the number of retries after the first attempt; the wait
    before retry ``k`` (0-based) is ``min(backoff_s * 2**k, 60)`` seconds, or the server's ``Retry-After`` when it
    sends one. ``timeout_s`` bounds each request. Bad values raise ``ValueError`` (one line).
    """

    model: str = "gpt-4o-mini"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0
    seed: int | None = 42
    max_tokens: int = 16
    max_retries: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {self.timeout_s}")
        if not (math.isfinite(self.backoff_s) and self.backoff_s >= 0):
            raise ValueError(f"backoff_s must be a number of seconds >= 0, got {self.backoff_s}")
        if self.temperature < 0 or self.max_tokens < 1 or self.max_retries < 0:
            raise ValueError("temperature must be >= 0, max_tokens >= 1 and max_retries >= 0, got "
                             f"{self.temperature}, {self.max_tokens} and {self.max_retries}")

    @classmethod
    def from_args(cls, args: argparse.Namespace, who: str, **values: Any):
        """A config from the options :func:`add_chat_arguments` added for ``who`` (and any other field of ``cls``
        found in ``args`` as ``{who}_{field}``, e.g. ``judge_seed``), with ``values`` on top."""
        found = {f.name: getattr(args, f"{who}_{f.name}") for f in dataclasses.fields(cls)
                 if hasattr(args, f"{who}_{f.name}")}
        return cls(**(found | values))

    def request_settings(self) -> dict[str, Any]:
        """The sampling settings sent with every request."""
        out: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.seed is not None:
            out["seed"] = self.seed
        return out

    def client(self):
        """An ``openai.OpenAI`` client for this endpoint with its own retries off (:meth:`chat` retries); the key is
        read from ``api_key_env``, ``"EMPTY"`` when unset (what local endpoints expect)."""
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=os.environ.get(self.api_key_env) or "EMPTY",
                             timeout=self.timeout_s, max_retries=0)

    def chat(self, client: Any, messages: list[dict], *, sleep: Callable[[float], None], stats: dict[str, int],
             what: str, error: type[Exception], calls_key: str = "calls") -> str:
        """The reply text of one chat completion under this config ("" when it has no choice or no content).

        Retryable failures (see :func:`_retryable`; a 200 whose body is not JSON or not a chat completion is one)
        are retried ``max_retries`` times. The wait before retry ``k`` (0-based) is the server's ``Retry-After`` when
        the failed answer carries one (see :func:`retry_after_s`; at most :data:`MAX_RETRY_AFTER_S`), else
        ``min(backoff_s * 2**k, 60)`` s. After the last attempt (or at once for a non-retryable failure) ``error`` is
        raised with a one-line message naming ``what``. ``stats[calls_key]`` and ``stats["retries"]`` count the
        attempts and retries.
        """
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            stats[calls_key] += 1
            try:
                return _reply_text(client.chat.completions.create(model=self.model, messages=messages,
                                                                  **self.request_settings()))
            except Exception as exc:
                if not _retryable(exc):
                    raise error(f"{what} request failed: {_describe(exc)}") from exc
                if attempt + 1 >= attempts:
                    raise error(f"{what} request failed after {attempts} attempts: {_describe(exc)}") from exc
                asked = retry_after_s(_headers(exc))
                wait = (min(self.backoff_s * 2**attempt, MAX_BACKOFF_S) if asked is None
                        else min(asked, MAX_RETRY_AFTER_S))
                log.warning("%s request failed (%s); retry %d/%d in %.2fs%s", what, type(exc).__name__, attempt + 1,
                            self.max_retries, wait, "" if asked is None else " (the server's Retry-After)")
                stats["retries"] += 1
                sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class JudgeConfig(ChatConfig):
    """How to reach the judge model and with which settings (:class:`ChatConfig`), and where its replies are cached
    (``cache_path``; None: in memory only)."""

    cache_path: str | None = None


def add_chat_arguments(parser: argparse.ArgumentParser, who: str, *, flag_prefix: str, model_default: str | None,
                       model_help: str, timeout_s: float):
    """Add the options that reach a chat model to a new group of ``parser`` titled ``who``, and return the group:
    ``{flag_prefix}model``, ``base-url``, ``api-key-env``, ``max-retries``, ``backoff-s`` and ``timeout-s`` (default
    ``timeout_s``), each stored as ``{who}_<field>`` for :meth:`ChatConfig.from_args`. With a prefix (``--judge-``)
    the three retry options also take their plain spelling (``--judge-max-retries`` or ``--max-retries``): the two
    judged benchmarks spelled them each their own way."""
    group = parser.add_argument_group(who)

    def add(name: str, plain_alias: bool = False, **kwargs: Any) -> None:
        flags = [flag_prefix + name] + ([f"--{name}"] if plain_alias and flag_prefix != "--" else [])
        group.add_argument(*flags, dest=f"{who}_{name.replace('-', '_')}", metavar=name.upper().replace("-", "_"),
                           **kwargs)

    add("model", default=model_default, help=model_help)
    add("base-url", default=None,
        help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (default $OPENAI_BASE_URL, else OpenAI)")
    add("api-key-env", default="OPENAI_API_KEY",
        help="environment variable holding the API key (default OPENAI_API_KEY; unset: 'EMPTY')")
    add("max-retries", True, type=non_negative_int, default=5, help="retries per request (default 5)")
    add("backoff-s", True, type=positive_float, default=1.0,
        help="first retry wait in seconds, doubled each time (default 1; the server's Retry-After wins)")
    add("timeout-s", True, type=positive_float, default=timeout_s,
        help=f"seconds one request may take before it is abandoned and retried (default {timeout_s:g})")
    return group


def _normalise(text: str) -> str:
    """Whitespace collapsed, surrounding quotes/backticks and trailing periods removed, lower case."""
    text = " ".join(text.split())
    prev = None
    while text != prev:
        prev = text
        text = text.strip().strip("\"'`").rstrip(".").strip()
    return text.lower()


@dataclass(frozen=True)
class Rubric:
    """A fixed judging rubric: the system prompt, the user prompt template and the exact verdict strings.

    ``user_template`` is filled with ``str.format`` using ``reference``, ``a``, ``b`` and ``context``
    (an unused placeholder is simply ignored).
    """

    name: str
    system: str
    user_template: str
    verdict_a: str
    verdict_b: str

    def parse(self, reply: str | None) -> str:
        """``"A"``, ``"B"`` or ``"invalid"``.

        A clean verdict is the whole reply equal to ``verdict_a`` or ``verdict_b``, ignoring case, surrounding
        whitespace and quotes, and a trailing period. Anything else (both verdicts, neither, extra prose, an
        empty reply) is invalid.
        """
        if reply is None:
            return INVALID
        got = _normalise(reply)
        if not got:
            return INVALID
        if got == _normalise(self.verdict_a):
            return "A"
        if got == _normalise(self.verdict_b):
            return "B"
        return INVALID

    def messages(self, a: str, b: str, reference: str, context: str = "") -> list[dict[str, str]]:
        """The chat messages asking to judge ``a`` (slot A) against ``b`` (slot B); no system message when
        ``system`` is empty."""
        user = self.user_template.format(reference=reference, a=a, b=b, context=context or "(none)")
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, {"role": "user", "content": user}]


# Inf-Streams-Eval style: a strict single-letter A/B judge for live sports commentary.
COMMENTARY_RUBRIC = Rubric(
    name="commentary",
    system=(
        "You are a strict evaluator of live sports commentary. You are given a reference transcript of what "
        "happened on screen and two candidate commentaries, A and B, for the same video segment. Decide which "
        "candidate is better, applying these criteria in order; a later criterion only breaks a tie on the "
        "earlier ones:\n"
        "1. Consistency and accuracy: agreement with the on-screen information in the reference transcript "
        "(players, teams, scores, actions, timing). Invented or contradicted facts weigh heavily against a "
        "candidate.\n"
        "2. Broadcast tone and pacing: sounds like a live broadcaster, follows the action as it happens, "
        "neither silent through key moments nor rambling.\n"
        "Ignore length except where it affects the criteria above. Do not favour a candidate for its position. "
        "Answer with exactly one letter, A or B, and nothing else."
    ),
    user_template=(
        "Earlier context:\n{context}\n\n"
        "Reference transcript:\n{reference}\n\n"
        "Commentary A:\n{a}\n\n"
        "Commentary B:\n{b}\n\n"
        "Which commentary is better? Answer with exactly one letter: A or B."
    ),
    verdict_a="A",
    verdict_b="B",
)

# LiveCC's judge prompt (showlab/livecc evaluation/livesports3kcc/llm_judge.py), kept word for word and sent as one
# user message, as LiveCC sends it, so that win rates are comparable with LiveCC's published ones: semantic
# alignment with the human commentary first, style second; A and B, then the human commentary.
LIVECC_RUBRIC = Rubric(
    name="livecc-livesports3kcc",
    system="",
    user_template=(
        "You are an expert in video commentary. Your task is to review two commentaries (Commentary A and "
        "Commentary B), and select the one that better aligns with the human commentary. You should consider the "
        "criteria:\n"
        "1. Semantic Alignment: The commentary should convey the same meaning, details, and key points as the human "
        "commentary.\n"
        "If the above criteria is not enough to judge, then consider:\n"
        "2. Stylistic Consistency: The commentary should maintain a tone, word choice, and structure similar to the "
        "human commentary.\n"
        "\n---Commentary A---\n{a}\n----------\n"
        "\n---Commentary B---\n{b}\n----------\n"
        "\n---Human Commentary---\n{reference}\n----------\n"
        '\nYour response should be "Commentary A is better aligned with the human commentary" or "Commentary B is '
        'better aligned with the human commentary".\n'
    ),
    verdict_a="Commentary A is better aligned with the human commentary",
    verdict_b="Commentary B is better aligned with the human commentary",
)


@dataclass
class PairVerdict:
    """Verdicts for one pair (x, y) asked in both orders, both expressed so that ``"A"`` means x won.

    ``first`` was asked with x in slot A and y in slot B; ``second`` with y in slot A and x in slot B, then
    mapped back. Each is ``"A"``, ``"B"`` or ``"invalid"``. ``first_reply`` and ``second_reply`` are the judge's
    raw replies (None when not known), to quote invalid ones; they take no part in comparisons.
    """

    first: str
    second: str
    first_reply: str | None = field(default=None, compare=False)
    second_reply: str | None = field(default=None, compare=False)

    @property
    def wins_x(self) -> int:
        return (self.first == "A") + (self.second == "A")

    @property
    def wins_y(self) -> int:
        return (self.first == "B") + (self.second == "B")

    @property
    def invalid(self) -> int:
        return (self.first == INVALID) + (self.second == INVALID)


def _swap(verdict: str) -> str:
    return {"A": "B", "B": "A"}.get(verdict, INVALID)


@dataclass
class _Cache:
    """Append-only JSONL of ``{"key": ..., "reply": ...}``; a truncated last line is ignored."""

    path: Path | None
    entries: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for rec in read_jsonl(self.path) if self.path is not None else []:
            if isinstance(rec, dict) and isinstance(rec.get("key"), str) and isinstance(rec.get("reply"), str):
                self.entries[rec["key"]] = rec["reply"]

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def put(self, key: str, reply: str) -> None:
        self.entries[key] = reply
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_jsonl(self.path, {"key": key, "reply": reply})


class MalformedResponseError(ValueError):
    """A 200 answer that is not a chat completion (retried like a 5xx)."""


def _reply_text(resp: Any) -> str:
    """The assistant text of a chat completion; "" for no choice or no content. Raises
    :class:`MalformedResponseError` when ``resp`` has no list of choices or its first choice has no message (the
    ``openai`` client hands back whatever a 200 answer held, e.g. the text of an HTML page)."""
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, (list, tuple)):
        raise MalformedResponseError(f"the answer is not a chat completion: {_one_line(resp)[:80]!r}")
    if not choices:
        return ""
    message = getattr(choices[0], "message", None)
    if message is None:
        raise MalformedResponseError("the answer's first choice has no message")
    content = getattr(message, "content", None)
    return content if isinstance(content, str) else ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"the answer's body is not JSON ({exc.msg})"
    return f"{type(exc).__name__}: {_one_line(exc)}"


def _retryable(exc: BaseException) -> bool:
    """Connection errors, timeouts, rate limits, 408/409/5xx statuses and 200 answers that are not a chat
    completion (not JSON, or other JSON); other 4xx errors fail at once."""
    import openai

    if isinstance(exc, (json.JSONDecodeError, MalformedResponseError)):
        return True
    if isinstance(exc, (openai.APIConnectionError, openai.RateLimitError)):  # APITimeoutError is a connection error
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409) or exc.status_code >= 500
    return isinstance(exc, openai.APIError)  # e.g. a body that fails the client's own validation


def _headers(exc: BaseException) -> Mapping[str, str] | None:
    """The HTTP headers of the answer that failed (``openai.APIStatusError.response``), None without one."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    return headers if isinstance(headers, Mapping) else None


def retry_after_s(headers: Mapping[str, str] | None, now: Callable[[], float] = time.time) -> float | None:
    """The wait in seconds an answer asks for, uncapped: ``retry-after-ms`` (milliseconds, OpenAI's), else
    ``Retry-After`` as seconds or as an HTTP date (relative to ``now()``, 0 when past). None when neither is there
    or parses; names are matched without regard to case."""
    if not headers:
        return None
    lower = {str(k).lower(): str(v).strip() for k, v in headers.items()}
    ms = _non_negative(lower.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    value = lower.get("retry-after")
    if not value:
        return None
    seconds = _non_negative(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now())


def _non_negative(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


class Judge:
    """Asks a chat model for pairwise verdicts under one rubric; see the module docstring.

    ``client`` is any object with ``client.chat.completions.create(...)`` like ``openai.OpenAI``; when None an
    ``openai.OpenAI`` is built from the config with the client's own retries disabled (retries happen here).
    ``stats`` counts ``calls`` (requests sent, failed ones included), ``cache_hits``, ``retries`` and
    ``invalid`` (unparseable verdicts seen by :meth:`compare`).
    """

    def __init__(
        self, config: JudgeConfig, rubric: Rubric, client: Any = None, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.config = config
        self.rubric = rubric
        self.client = client if client is not None else config.client()
        self._sleep = sleep
        self._cache = _Cache(Path(config.cache_path) if config.cache_path else None)
        self.stats: dict[str, int] = {"calls": 0, "cache_hits": 0, "retries": 0, "invalid": 0}

    def cache_key(self, messages: list[dict[str, str]]) -> str:
        """SHA-256 of the model, the messages and the sampling settings."""
        blob = json.dumps(
            {"model": self.config.model, "messages": messages, "settings": self.config.request_settings()},
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def ask(self, messages: list[dict[str, str]]) -> str:
        """The reply text of one deterministic chat completion (retried, see :meth:`ChatConfig.chat`).

        Only a reply the rubric parses as a verdict is cached and answered from the cache: an invalid one (also
        one cached by an older version) is asked again on every call, so a rerun retries exactly those.
        """
        key = self.cache_key(messages)
        cached = self._cache.get(key)
        if cached is not None and self.rubric.parse(cached) != INVALID:
            self.stats["cache_hits"] += 1
            return cached
        reply = self.config.chat(self.client, messages, sleep=self._sleep, stats=self.stats, what="judge",
                                 error=JudgeError)
        if self.rubric.parse(reply) != INVALID:
            self._cache.put(key, reply)
        return reply

    def _verdict(self, a: str, b: str, reference: str, context: str) -> tuple[str, str]:
        """(verdict, raw reply) with ``a`` in slot A and ``b`` in slot B; an invalid verdict is counted."""
        reply = self.ask(self.rubric.messages(a, b, reference, context))
        verdict = self.rubric.parse(reply)
        if verdict == INVALID:
            self.stats["invalid"] += 1
        return verdict, reply

    def compare(self, x: str, y: str, reference: str, context: str = "") -> PairVerdict:
        """Judge x against y in both orders; both verdicts are returned with ``"A"`` meaning x won, with the
        raw replies."""
        first, first_reply = self._verdict(x, y, reference, context)
        second, second_reply = self._verdict(y, x, reference, context)
        return PairVerdict(first=first, second=_swap(second), first_reply=first_reply, second_reply=second_reply)


def _one_line(obj: object) -> str:
    return " ".join(str(obj).split())[:300]


def win_rate(verdicts: list[PairVerdict]) -> dict[str, Any]:
    """Totals over pairs judged in both orders.

    ``win_rate_x`` is x's share of the valid judgements (None when none is valid); ``win_rate_x_over_2n`` is
    LiveCC's definition, x's wins over all ``2N`` judgements, invalid ones counting as non-wins.
    """
    wins_x = sum(v.wins_x for v in verdicts)
    wins_y = sum(v.wins_y for v in verdicts)
    invalid = sum(v.invalid for v in verdicts)
    total = 2 * len(verdicts)
    valid = wins_x + wins_y
    return {
        "wins_x": wins_x,
        "wins_y": wins_y,
        "invalid": invalid,
        "judgements": total,
        "win_rate_x": wins_x / valid if valid else None,
        "win_rate_x_over_2n": wins_x / total if total else None,
    }


def bootstrap_ci(values: list[float], n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (``n`` resamples, seeded)."""
    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    rng = random.Random(seed)
    k = len(values)
    means = sorted(sum(rng.choices(values, k=k)) / k for _ in range(n))
    alpha = (1.0 - level) / 2.0
    return _quantile(means, alpha), _quantile(means, 1.0 - alpha)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted values (numpy's default method)."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)
