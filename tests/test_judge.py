"""Pairwise LLM judging against a real local OpenAI-compatible endpoint (tests/openai_stub.py)."""

from __future__ import annotations

import argparse
import json

import pytest

pytest.importorskip("openai")

from streaming_vlm.eval.judge import (  # noqa: E402
    COMMENTARY_RUBRIC,
    LIVECC_RUBRIC,
    MAX_RETRY_AFTER_S,
    Judge,
    JudgeConfig,
    JudgeError,
    PairVerdict,
    Rubric,
    add_chat_arguments,
    bootstrap_ci,
    retry_after_s,
    win_rate,
)
from tests.openai_stub import Answer, openai_stub  # noqa: E402

GOOD, BAD, REF = "GOOD: Messi scores from the edge of the box!", "Nothing much happening.", "Messi scores, 1-0."


def slots(messages):
    """The texts in slot A and slot B of a rubric's user message."""
    user = messages[-1]["content"]
    if "---Commentary A---" in user:  # LiveCC's layout
        a = user.split("---Commentary A---\n", 1)[1].split("\n----------", 1)[0]
        b = user.split("---Commentary B---\n", 1)[1].split("\n----------", 1)[0]
        return a, b
    a = user.split("Commentary A:\n", 1)[1].split("\n\nCommentary B:", 1)[0]
    b = user.split("Commentary B:\n", 1)[1].split("\n\n", 1)[0]
    return a, b


def prefers_good(verdict_a="A", verdict_b="B"):
    def reply(messages, body):
        a, _ = slots(messages)
        return verdict_a if "GOOD" in a else verdict_b

    return reply


def config(url, **kw):
    kw.setdefault("api_key_env", "STUB_JUDGE_KEY")
    return JudgeConfig(model="stub-judge", base_url=url, backoff_s=0.001, timeout_s=5.0, **kw)


def make_judge(url, rubric=COMMENTARY_RUBRIC, **kw):
    return Judge(config(url, **kw), rubric)


def test_both_orders_are_asked_and_mapped_back():
    with openai_stub(prefers_good()) as stub:
        judge = make_judge(stub.base_url)
        good_x = judge.compare(GOOD, BAD, REF)
        good_y = judge.compare(BAD, GOOD, REF)
    assert (good_x.first, good_x.second, good_x.wins_x, good_x.wins_y, good_x.invalid) == ("A", "A", 2, 0, 0)
    assert (good_y.first, good_y.second, good_y.wins_x, good_y.wins_y, good_y.invalid) == ("B", "B", 0, 2, 0)
    # Each text was put in slot A once; the swapped comparison reused those two judgements from the cache.
    assert [slots(r["body"]["messages"])[0] for r in stub.requests] == [GOOD, BAD]
    assert judge.stats == {"calls": 2, "cache_hits": 2, "retries": 0, "invalid": 0}


def test_livecc_rubric_sentences_round_trip():
    with openai_stub(prefers_good(LIVECC_RUBRIC.verdict_a, LIVECC_RUBRIC.verdict_b + ".")) as stub:
        v = make_judge(stub.base_url, rubric=LIVECC_RUBRIC).compare(BAD, GOOD, REF)
    assert (v.wins_x, v.wins_y, v.invalid) == (0, 2, 0)
    # LiveCC's prompt is one user message: A, then B, then the human commentary
    messages = stub.requests[0]["body"]["messages"]
    assert [m["role"] for m in messages] == ["user"]
    text = messages[0]["content"]
    assert text.index(BAD) < text.index(GOOD) < text.index(REF)


def test_context_reaches_the_commentary_rubric():
    with openai_stub(prefers_good("A", "B")) as stub:
        make_judge(stub.base_url, rubric=COMMENTARY_RUBRIC).compare(BAD, GOOD, REF, context="kick-off")
    assert "kick-off" in stub.requests[0]["body"]["messages"][-1]["content"]


def test_position_biased_judge_ties():
    with openai_stub(lambda messages, body: "A") as stub:
        v = make_judge(stub.base_url).compare(GOOD, BAD, REF)
    assert (v.first, v.second, v.wins_x, v.wins_y) == ("A", "B", 1, 1)


@pytest.mark.parametrize("garbage", ["", "A and B", "Both are fine.", "Neither", "I think A", "A\nB", "C"])
def test_unclean_replies_are_invalid_and_reported(garbage):
    with openai_stub(lambda messages, body: garbage) as stub:
        judge = make_judge(stub.base_url)
        v = judge.compare(GOOD, BAD, REF)
    assert (v.first, v.second, v.wins_x, v.wins_y, v.invalid) == ("invalid", "invalid", 0, 0, 2)
    assert judge.stats["invalid"] == 2
    assert win_rate([v]) == {
        "wins_x": 0,
        "wins_y": 0,
        "invalid": 2,
        "judgements": 2,
        "win_rate_x": None,
        "win_rate_x_over_2n": 0.0,
    }


def flaky(status, failures, then="A"):
    state = {"n": 0}

    def reply(messages, body):
        state["n"] += 1
        if state["n"] <= failures:
            return status, {"error": {"message": f"scripted {status}", "type": "server_error", "code": None}}
        return then

    return reply


@pytest.mark.parametrize("status", [500, 429, 503])
def test_retries_with_backoff_then_success(status):
    waits = []
    with openai_stub(flaky(status, failures=3)) as stub:
        judge = Judge(config(stub.base_url, max_retries=5), COMMENTARY_RUBRIC, sleep=waits.append)
        assert judge.ask(COMMENTARY_RUBRIC.messages(GOOD, BAD, REF)) == "A"
    assert len(stub.requests) == 4
    assert waits == pytest.approx([0.001, 0.002, 0.004])
    assert judge.stats["retries"] == 3 and judge.stats["calls"] == 4


def test_real_sleep_backoff_is_used_by_default():
    with openai_stub(flaky(500, failures=1)) as stub:
        assert make_judge(stub.base_url).ask(COMMENTARY_RUBRIC.messages(GOOD, BAD, REF)) == "A"
    assert len(stub.requests) == 2


def test_gives_up_after_max_retries(tmp_path):
    cache = tmp_path / "cache.jsonl"
    with openai_stub(flaky(500, failures=10**6)) as stub:
        judge = make_judge(stub.base_url, max_retries=2, cache_path=str(cache))
        with pytest.raises(JudgeError) as err:
            judge.compare(GOOD, BAD, REF)
    assert len(stub.requests) == 3
    assert "3 attempts" in str(err.value) and "\n" not in str(err.value)
    assert not cache.exists() or cache.read_text() == ""  # failures are never cached


def test_client_errors_fail_fast():
    bad_request = (400, {"error": {"message": "bad model", "type": "invalid_request_error", "code": None}})
    with openai_stub(lambda messages, body: bad_request) as stub:
        with pytest.raises(JudgeError):
            make_judge(stub.base_url, max_retries=3).ask(COMMENTARY_RUBRIC.messages(GOOD, BAD, REF))
    assert len(stub.requests) == 1


def test_unreachable_endpoint_raises_judge_error():
    with openai_stub(lambda messages, body: "A") as stub:
        url = stub.base_url  # the server is gone once the block exits
    with pytest.raises(JudgeError):
        make_judge(url, max_retries=1).ask(COMMENTARY_RUBRIC.messages(GOOD, BAD, REF))


def first_then(answer, then="A"):
    """The first request gets ``answer``, every later one the text ``then``."""
    state = {"n": 0}

    def reply(messages, body):
        state["n"] += 1
        return answer if state["n"] == 1 else then

    return reply


@pytest.mark.parametrize("answer", [
    Answer(body="<html><body>502 Bad Gateway</body></html>"),  # JSON content type, HTML body
    Answer(body='{"id": "chatcmpl-1", "choi'),  # a body cut short
    Answer(body="<html/>", content_type="text/html"),
    Answer(body="[]"),
    Answer(body={"object": "error", "message": "overloaded"}),  # JSON, but no choices
    Answer(body={"choices": [{"index": 0}]}),  # a choice without a message
], ids=["html-as-json", "truncated", "html", "list", "no-choices", "no-message"])
def test_a_200_that_is_not_a_chat_completion_is_retried(answer):
    waits = []
    with openai_stub(first_then(answer)) as stub:
        judge = Judge(config(stub.base_url, max_retries=2), COMMENTARY_RUBRIC, sleep=waits.append)
        assert judge.ask(COMMENTARY_RUBRIC.messages(GOOD, BAD, REF)) == "A"
    assert len(stub.requests) == 2 and waits == [0.001]
    assert judge.stats["retries"] == 1


def test_a_body_that_is_never_json_fails_in_one_line(tmp_path):
    with openai_stub(lambda messages, body: Answer(body="<html>down</html>")) as stub:
        judge = make_judge(stub.base_url, max_retries=2, cache_path=str(tmp_path / "c.jsonl"))
        with pytest.raises(JudgeError) as err:
            judge.compare(GOOD, BAD, REF)
    message = str(err.value)
    assert len(stub.requests) == 3 and "\n" not in message
    assert message.startswith("judge request failed after 3 attempts: the answer's body is not JSON")


@pytest.mark.parametrize("status, headers, wait", [
    (429, {"Retry-After": "1"}, 1.0),
    (429, {"retry-after-ms": "250", "Retry-After": "1"}, 0.25),  # OpenAI's finer header wins
    (503, {"Retry-After": "2"}, 2.0),
    (429, {"Retry-After": "86400"}, MAX_RETRY_AFTER_S),  # capped
    (429, {"Retry-After": "Fri, 31 Dec 2100 23:59:59 GMT"}, MAX_RETRY_AFTER_S),  # an HTTP date, far away: capped
    (429, {"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"}, 0.0),  # an HTTP date already past
])
def test_retry_after_is_honoured(status, headers, wait):
    waits = []
    limited = Answer(status=status, body={"error": {"message": "slow down", "type": "rate_limit"}}, headers=headers)
    with openai_stub(first_then(limited)) as stub:
        judge = Judge(config(stub.base_url, max_retries=1), COMMENTARY_RUBRIC, sleep=waits.append)  # backoff 0.001
        assert judge.ask(COMMENTARY_RUBRIC.messages(GOOD, BAD, REF)) == "A"
    assert len(stub.requests) == 2 and waits == [wait]


def test_retry_after_parsing():
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert retry_after_s({"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}, now=lambda: now) == 30.0
    assert retry_after_s({"RETRY-AFTER": " 7 "}) == 7.0 and retry_after_s({"retry-after-ms": "1500"}) == 1.5
    for headers in (None, {}, {"Retry-After": "-5"}, {"Retry-After": "soon"}, {"Retry-After": "nan"},
                    {"Retry-After": ""}, {"retry-after-ms": "x"}):
        assert retry_after_s(headers) is None, headers


def test_invalid_replies_are_not_cached_so_a_rerun_asks_them_again(tmp_path):
    cache = tmp_path / "cache.jsonl"

    def garbles_good_in_b(messages, body):  # a clean verdict with GOOD in slot A, garbage with GOOD in slot B
        a, _ = slots(messages)
        return "A" if "GOOD" in a else "Both are fine."

    with openai_stub(garbles_good_in_b) as stub:
        judge = make_judge(stub.base_url, cache_path=str(cache))
        v = judge.compare(GOOD, BAD, REF)
        assert len(stub.requests) == 2
    assert (v.first, v.second, v.first_reply, v.second_reply) == ("A", "invalid", "A", "Both are fine.")
    assert judge.stats["invalid"] == 1
    assert [json.loads(line)["reply"] for line in cache.read_text().splitlines()] == ["A"]
    with openai_stub(prefers_good()) as stub:
        judge = make_judge(stub.base_url, cache_path=str(cache))
        v = judge.compare(GOOD, BAD, REF)
        assert [slots(r["body"]["messages"]) for r in stub.requests] == [(BAD, GOOD)]  # only the invalid one
    assert (v.first, v.second, judge.stats["cache_hits"], judge.stats["calls"]) == ("A", "A", 1, 1)
    assert len(cache.read_text().splitlines()) == 2


def test_an_invalid_reply_in_an_older_cache_is_asked_again(tmp_path):
    cache = tmp_path / "cache.jsonl"
    messages = COMMENTARY_RUBRIC.messages(GOOD, BAD, REF)
    with openai_stub(lambda messages, body: "A") as stub:
        judge = make_judge(stub.base_url, cache_path=str(cache))
        cache.write_text(json.dumps({"key": judge.cache_key(messages), "reply": "Both are fine."}) + "\n")
        judge = make_judge(stub.base_url, cache_path=str(cache))
        assert judge.ask(messages) == "A" and len(stub.requests) == 1


def test_cache_makes_reruns_free(tmp_path):
    cache = tmp_path / "judge" / "cache.jsonl"
    pairs = [(GOOD, BAD), ("meh", "GOOD too"), ("x GOOD", "y")]
    with openai_stub(prefers_good()) as stub:
        first = [make_judge(stub.base_url, cache_path=str(cache)).compare(x, y, REF) for x, y in pairs]
        assert len(stub.requests) == 6
    lines = cache.read_text().splitlines()
    assert len(lines) == 6 and all(set(json.loads(line)) == {"key", "reply"} for line in lines)
    with open(cache, "a") as f:
        f.write('{"key": "trunc')  # an interrupted write is ignored
    with openai_stub(prefers_good()) as stub:
        judge = make_judge(stub.base_url, cache_path=str(cache))
        again = [judge.compare(x, y, REF) for x, y in pairs]
        assert stub.requests == []
    assert again == first
    assert judge.stats == {"calls": 0, "cache_hits": 6, "retries": 0, "invalid": 0}
    # A different model or seed is a different judgement.
    with openai_stub(prefers_good()) as stub:
        make_judge(stub.base_url, cache_path=str(cache), seed=7).compare(GOOD, BAD, REF)
        assert len(stub.requests) == 2


def test_requests_are_deterministic_and_carry_model_seed_and_key(monkeypatch):
    monkeypatch.setenv("STUB_JUDGE_KEY", "sk-from-env")
    with openai_stub(lambda messages, body: "B") as stub:
        make_judge(stub.base_url, max_tokens=8).compare(GOOD, BAD, REF)
    for req in stub.requests:
        body = req["body"]
        assert body["model"] == "stub-judge"
        assert body["temperature"] == 0 and body["seed"] == 42 and body["max_tokens"] == 8
        assert body["messages"][0] == {"role": "system", "content": COMMENTARY_RUBRIC.system}
        assert req["headers"]["authorization"] == "Bearer sk-from-env"


@pytest.mark.parametrize("spelling", [
    ["--judge-max-retries", "2", "--judge-backoff-s", "0.5", "--judge-timeout-s", "9"],  # livesports' spelling
    ["--max-retries", "2", "--backoff-s", "0.5", "--timeout-s", "9"],  # inf-stream score's
], ids=["judge-prefixed", "plain"])
def test_chat_options_take_both_spellings_and_build_the_config(spelling, tmp_path):
    parser = argparse.ArgumentParser()
    add_chat_arguments(parser, "judge", flag_prefix="--judge-", model_default="m0", model_help="judge", timeout_s=60.0)
    parser.add_argument("--judge-seed", type=int, default=42)
    args = parser.parse_args(["--judge-model", "m1", "--judge-base-url", "http://x/v1", "--judge-api-key-env", "K",
                              "--judge-seed", "7", *spelling])
    got = JudgeConfig.from_args(args, "judge", cache_path=str(tmp_path / "c.jsonl"))
    assert got == JudgeConfig(model="m1", base_url="http://x/v1", api_key_env="K", seed=7, max_retries=2,
                              backoff_s=0.5, timeout_s=9.0, cache_path=str(tmp_path / "c.jsonl"))
    defaults = JudgeConfig.from_args(parser.parse_args([]), "judge")
    assert defaults == JudgeConfig(model="m0")
    with pytest.raises(SystemExit):  # a negative retry count is a usage error
        parser.parse_args([spelling[0], "-1"])


def test_missing_key_env_sends_empty(monkeypatch):
    monkeypatch.delenv("STUB_JUDGE_KEY", raising=False)
    with openai_stub(lambda messages, body: "A") as stub:
        make_judge(stub.base_url, seed=None).ask(COMMENTARY_RUBRIC.messages(GOOD, BAD, REF))
    assert stub.requests[0]["headers"]["authorization"] == "Bearer EMPTY"
    assert "seed" not in stub.requests[0]["body"]


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("A", "A"),
        (" b \n", "B"),
        ("A.", "A"),
        ('"B"', "B"),
        ("'A'.", "A"),
        ("", "invalid"),
        ("   ", "invalid"),
        (None, "invalid"),
        ("AB", "invalid"),
        ("A or B", "invalid"),
        ("Answer: A", "invalid"),
        ("A, because it is accurate", "invalid"),
        ("C", "invalid"),
    ],
)
def test_parse_letters(reply, expected):
    assert COMMENTARY_RUBRIC.parse(reply) == expected


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("Commentary A is better aligned with the human commentary", "A"),
        ("commentary b is better aligned with the human commentary.", "B"),
        ('  "Commentary B is better aligned with the human commentary"  ', "B"),
        ("A", "invalid"),
        ("Commentary A is better aligned with the human commentary. Commentary B is not.", "invalid"),
        (
            "Commentary A is better aligned with the human commentary\n"
            "Commentary B is better aligned with the human commentary",
            "invalid",
        ),
        ("Commentary C is better aligned with the human commentary", "invalid"),
    ],
)
def test_parse_livecc_sentences(reply, expected):
    assert LIVECC_RUBRIC.parse(reply) == expected


def test_rubric_template_fills_all_fields():
    r = Rubric("t", "sys", "{context}|{reference}|{a}|{b}", "yes", "no")
    assert r.messages("a {x}", "b", "ref")[-1]["content"] == "(none)|ref|a {x}|b"
    assert (r.parse("Yes."), r.parse("NO"), r.parse("maybe")) == ("A", "B", "invalid")


def test_win_rate_known_inputs():
    vs = [PairVerdict("A", "A"), PairVerdict("A", "B"), PairVerdict("B", "invalid"), PairVerdict("A", "A")]
    assert win_rate(vs) == {
        "wins_x": 5,
        "wins_y": 2,
        "invalid": 1,
        "judgements": 8,
        "win_rate_x": 5 / 7,
        "win_rate_x_over_2n": 5 / 8,
    }
    assert win_rate([])["win_rate_x"] is None


def test_bootstrap_ci():
    values = [0.0, 0.5, 1.0, 1.0, 0.5, 0.0, 1.0, 0.5, 1.0, 1.0]
    mean = sum(values) / len(values)
    lo, hi = bootstrap_ci(values, n=2000, seed=0)
    assert lo < mean < hi and 0.0 <= lo and hi <= 1.0
    assert bootstrap_ci(values, seed=0) == (lo, hi)  # seeded, reproducible
    lo99, hi99 = bootstrap_ci(values, level=0.99)
    assert lo99 <= lo and hi <= hi99
    assert bootstrap_ci([0.5] * 7) == (0.5, 0.5)
    with pytest.raises(ValueError):
        bootstrap_ci([])
