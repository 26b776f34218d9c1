"""Inf-Streams-Eval end to end on a tiny fixture in the real on-disk format.

Two synthetic videos with word-timestamped transcripts (``eval_all_metadata.jsonl``) and scoring clips
(``score_all_clips.jsonl``); the tiny model generates from a 2-s start offset; the baseline and the judge are
real HTTP requests to local OpenAI-compatible stubs whose replies are scripted, so the win rate is known.
"""

from __future__ import annotations

import base64
import io
import json

import pytest

pytest.importorskip("openai")

from streaming_vlm.eval import generate as eval_generate  # noqa: E402
from streaming_vlm.eval import inf_stream  # noqa: E402
from streaming_vlm.eval.inf_stream import (  # noqa: E402
    INF_STREAM_QUERY,
    candidate_text,
    covered,
    merge_records,
    previous_text,
)
from streaming_vlm.eval.judge import bootstrap_ci  # noqa: E402
from streaming_vlm.eval.openai_baseline import BaselineConfig, BaselineError, OpenAIBaseline, Segment  # noqa: E402
from streaming_vlm.eval.runner import read_jsonl  # noqa: E402
from streaming_vlm.layout import DEFAULT_SYSTEM_PROMPT  # noqa: E402
from streaming_vlm.settings import SETTING_NAMES  # noqa: E402
from streaming_vlm.synthetic import write_synthetic_video  # noqa: E402
from tests.openai_stub import Answer, openai_stub  # noqa: E402

START = 2.0
# v0: 5 s of video, words "v0w<k>" on [0.5k, 0.5k + 0.4] for k < 10 (transcript ends at 4.9 s); v1: 4 s, 8 words.
VIDEOS = {"v0": (5, 10), "v1": (4, 8)}


def words(name: str, n: int) -> list[list]:
    return [[0.5 * k, round(0.5 * k + 0.4, 3), f"{name}w{k}"] for k in range(n)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("inf_stream_data")
    (root / "videos").mkdir()
    meta, clips = [], []
    for seed, (name, (seconds, n)) in enumerate(VIDEOS.items()):
        write_synthetic_video(root / "videos" / f"{name}.mp4", seconds, fps=4, width=84, height=56, seed=seed)
        meta.append({"video": f"videos/{name}.mp4", "content": words(name, n)})
    w0, w1 = words("v0", 10), words("v1", 8)
    clips = [
        {"video": "videos/v0.mp4", "title": "Match 0", "content": w0[4:7]},  # [2.0, 3.4]
        {"video": "videos/v0.mp4", "content": w0[7:10]},  # [3.5, 4.9]
        {"video": "videos/v1.mp4", "content": w1[4:8]},  # [2.0, 3.9]
        {"video": "videos/v0.mp4", "content": w0[1:3]},  # [0.5, 1.4]: before the start offset, covered by no one
        {"video": "videos/v0.mp4", "title": "again", "content": w0[4:7]},  # a duplicate, dropped
    ]
    for name, rows in (("eval_all_metadata.jsonl", meta), ("score_all_clips.jsonl", clips)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


# ------------------------------------------------------------------------------------------------------------
# pure helpers
# ------------------------------------------------------------------------------------------------------------


def test_previous_text_is_the_transcript_prefix_ending_by_t():
    ws = [(0.0, 0.5, "one"), (0.5, 1.0, " two "), (1.0, 2.5, "three"), (2.0, 2.2, "four")]
    assert previous_text(ws, 0.49) == ""
    assert previous_text(ws, 1.0) == "one two"
    assert previous_text(ws, 2.3) == "one two"  # stops at the first word not yet finished, as in the reference
    assert previous_text(ws, 3.0) == "one two three four"


def test_candidate_text_takes_responses_ending_inside_the_clip():
    items = [{"response": f"r{k}", "start_time": k - 1.0, "end_time": float(k)} for k in range(1, 7)]
    items[3]["response"] = "  "
    assert candidate_text(items, 2.0, 5.0) == "r3 r5"  # end in (2, 5]; r4 is blank
    assert candidate_text(items, 2.0, 2.9) == ""


def test_merge_keeps_the_longest_record_per_start_and_orders_by_time():
    recs = [
        {"video": "a.mp4", "chunk_start": 10, "chunk_end": 20, "items": [{"response": "late", "end_time": 20}]},
        {"video": "a.mp4", "chunk_start": 0, "chunk_end": 5, "items": [{"response": "short", "end_time": 5}]},
        {"video": "a.mp4", "chunk_start": 0, "chunk_end": 10, "items": [{"response": "full", "end_time": 10}]},
        {"video": "b.mp4", "chunk_start": 3, "chunk_end": 4, "items": []},
    ]
    a, b = merge_records(recs)
    assert (a["video"], a["chunk_start"], a["chunk_end"]) == ("a.mp4", 0.0, 20.0)
    assert [it["response"] for it in a["items"]] == ["full", "late"]
    assert a["segments"] == [[0.0, 10.0], [10.0, 20.0]] and b["segments"] == [[3.0, 4.0]]
    assert covered(a, 8.0, 12.0)  # touching segments form one span
    gap = {"chunk_start": 0, "chunk_end": 20, "segments": [[0, 5], [10, 20]]}
    assert covered(gap, 11, 19) and not covered(gap, 4, 11)
    assert covered({"chunk_start": 1000, "chunk_end": 2000, "items": []}, 1500, 2000)  # reference-format row


# ------------------------------------------------------------------------------------------------------------
# generate
# ------------------------------------------------------------------------------------------------------------


def gen_argv(root, out, *extra):
    return ["generate", "--model", str(root["model"]), "--dataset", str(root["data"]), "--out", str(out),
            "--start-offset", str(START), "--max-new-tokens", "3", "--max-pixels", str(56 * 56), "--device", "cpu",
            "--dtype", "fp32", "--text-sink", "3", "--text-window", "2", "--quiet", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def generated(tmp_path_factory, tiny_model_dir, dataset):
    out = tmp_path_factory.mktemp("answers") / "ours"
    root = {"model": tiny_model_dir, "data": dataset}
    calls: list = []
    real = eval_generate.stream_span

    def spy(model, video, config, *, start, end):
        calls.append((video.name, start, end, config))
        yield from real(model, video, config, start=start, end=end)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(eval_generate, "stream_span", spy)
        assert inf_stream.main(gen_argv(root, out)) == 0
        first = list(calls)
        assert inf_stream.main(gen_argv(root, out)) == 0  # the rerun resumes: nothing left to generate
    return {"out": out, "calls": first, "rerun_calls": calls[len(first):], "root": root}


def test_generate_streams_each_video_from_the_offset_with_the_transcript_so_far(generated):
    calls = generated["calls"]
    assert [(v, s, e) for v, s, e, _ in calls] == [("v0.mp4", 2.0, 4.9), ("v1.mp4", 2.0, 3.9)]
    for (name, _, _, config), n in zip(calls, (4, 4), strict=True):
        # words end at 0.4, 0.9, 1.4, 1.9 (<= 2 s); the next ends at 2.4
        assert config.previous_text == " ".join(f"{name[:2]}w{k}" for k in range(n))
        assert config.query == INF_STREAM_QUERY and config.mode == "streaming"
        assert (config.text_sink, config.text_window) == (3, 2)
        # the engine cuts the previous text with the policy: 3 head + 2 tail tokens
        assert config.policy().cut_previous(list(range(10))) == [0, 1, 2, 8, 9]
    assert generated["rerun_calls"] == []


def test_generate_writes_segment_records_and_merged_rows(generated):
    out = generated["out"]
    records = read_jsonl(out / "generate.jsonl")
    assert [(r["id"], r["video"], r["chunk_start"], r["chunk_end"], r["previous_words"]) for r in records] == [
        ("v0.mp4@2", "v0.mp4", 2.0, 4.9, 4), ("v1.mp4@2", "v1.mp4", 2.0, 3.9, 4)]
    merged = read_jsonl(out / "merged_result.jsonl")
    assert [m["video"] for m in merged] == ["v0.mp4", "v1.mp4"]
    v0 = merged[0]
    assert [(it["start_time"], it["end_time"]) for it in v0["items"]] == [(2.0, 3.0), (3.0, 4.0), (4.0, 4.9)]
    assert all(set(it) == {"response", "start_time", "end_time"} for it in v0["items"])
    assert v0["segments"] == [[2.0, 4.9]]


def test_generate_refuses_to_mix_settings(generated, capsys):
    rc = inf_stream.main(gen_argv(generated["root"], generated["out"], "--temperature", "0.5"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "other settings (sampling)" in err


def test_generate_takes_the_checkpoints_stream_settings_but_the_benchmarks_query(tiny_model_dir, dataset, tmp_path):
    """A checkpoint carrying streaming_vlm.json streams with its settings (a flag still wins; its query does not:
    the broadcaster instruction is the benchmark's protocol); stream_settings.json says where each came from."""
    import shutil

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (model / "streaming_vlm.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 3136, "text_sink": 3, "max_new_tokens": 2, "temperature": 0.0,
        "query": "the checkpoint's own query"}))  # fmt: skip
    seen = []
    real = eval_generate.stream_span

    def spy(m, video, config, *, start, end):
        seen.append((config, m.spec.min_pixels, m.spec.max_pixels))
        yield from real(m, video, config, start=start, end=end)

    out = tmp_path / "ours"
    argv = ["generate", "--model", str(model), "--dataset", str(dataset), "--out", str(out), "--start-offset",
            str(START), "--duration", "1", "--limit", "1", "--text-window", "2", "--device", "cpu", "--dtype", "fp32",
            "--quiet"]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(eval_generate, "stream_span", spy)
        assert inf_stream.main(argv) == 0
    (config, low, high), = seen
    assert (low, high) == (3136, 3136)
    assert (config.text_sink, config.text_window, config.vision_window, config.query) == (3, 2, 16, INF_STREAM_QUERY)
    assert (config.sampling.max_new_tokens, config.sampling.temperature, config.sampling.top_k) == (2, 0.0, 50)
    recorded = json.loads((out / "stream_settings.json").read_text())
    stream, sources = recorded["stream_settings"], recorded["stream_settings_sources"]
    unused = ("total_pixels", "max_frames", "reset_every")  # excluded by generate: not recorded
    assert list(stream) == list(sources) == [k for k in SETTING_NAMES if k not in unused]
    assert {k: (stream[k], sources[k]) for k in ("min_pixels", "max_pixels", "text_sink", "max_new_tokens",
                                                 "temperature", "query", "text_window", "top_k", "fps")} == {
        "min_pixels": (3136, "checkpoint"), "max_pixels": (3136, "checkpoint"), "text_sink": (3, "checkpoint"),
        "max_new_tokens": (2, "checkpoint"), "temperature": (0.0, "checkpoint"),
        "query": (INF_STREAM_QUERY, "protocol"), "text_window": (2, "flag"), "top_k": (None, "default"),
        "fps": (2.0, "default")}  # fmt: skip
    run_config = json.loads((out / "run_config.json").read_text())
    assert (run_config["min_pixels"], run_config["max_pixels"], run_config["text_sink"]) == (3136, 3136, 3)
    assert run_config["sampling"]["max_new_tokens"] == 2 and run_config["query"] == INF_STREAM_QUERY


# ------------------------------------------------------------------------------------------------------------
# baseline
# ------------------------------------------------------------------------------------------------------------


def base_reply(messages, body):
    text = messages[-1]["content"][0]["text"]
    span = text.split("Video from ", 1)[1].split(":", 1)[0]
    return f"Baseline calls the play ({span})"


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, dataset):
    out = tmp_path_factory.mktemp("answers") / "gpt"
    argv = ["baseline", "--model", "stub-vision", "--dataset", str(dataset), "--out", str(out), "--start-offset",
            str(START), "--fps", "2", "--max-frames-per-request", "2", "--max-height", "32", "--quiet"]
    with openai_stub(base_reply) as stub:
        argv += ["--base-url", stub.base_url, "--api-key-env", "STUB_BASELINE_KEY"]
        assert inf_stream.main(argv) == 0
        first = list(stub.requests)
        assert inf_stream.main(argv) == 0  # resumed: every clip is done
        assert len(stub.requests) == len(first)
    return {"out": out, "requests": first}


def image_parts(body):
    return [p for p in body["messages"][-1]["content"] if p["type"] == "image_url"]


def test_baseline_gets_our_instruction_and_the_frame_budget(baseline):
    from PIL import Image

    bodies = [r["body"] for r in baseline["requests"]]
    # clips at or after 2 s: [2, 3.4] -> 3 frames at 2 fps, [3.5, 4.9] -> 3, [2, 3.9] -> 4; 2 frames per request
    assert [len(image_parts(b)) for b in bodies] == [2, 1, 2, 1, 2, 2]
    for b in bodies:
        assert b["model"] == "stub-vision" and b["temperature"] == 0 and b["seed"] == 42
        assert b["messages"][0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
        text = b["messages"][-1]["content"][0]["text"]
        assert text.startswith(INF_STREAM_QUERY) and "at 2 frames per second" in text
    url = image_parts(bodies[0])[0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.format == "JPEG" and img.size == (48, 32)  # 84x56 scaled to 32 high
    # the second window of a clip is told the first window's commentary
    second = bodies[1]["messages"][-1]["content"][0]["text"]
    assert "Your commentary so far:\nBaseline calls the play (2.0 s to 3.0 s)" in second
    assert "Video from 3.0 s to 3.4 s: 1 frames" in second


def test_baseline_records_and_merge(baseline):
    merged = {m["video"]: m for m in read_jsonl(baseline["out"] / "merged_result.jsonl")}
    v0 = merged["v0.mp4"]
    assert v0["segments"] == [[2.0, 3.4], [3.5, 4.9]]
    assert [(it["start_time"], it["end_time"], it["frames"]) for it in v0["items"]] == [
        (2.0, 3.0, 2), (3.0, 3.4, 1), (3.5, 4.5, 2), (4.5, 4.9, 1)]
    assert merged["v1.mp4"]["items"][-1]["response"] == "Baseline calls the play (3.0 s to 3.9 s)"


def test_baseline_retries_with_backoff_then_fails_cleanly(dataset):
    state = {"n": 0}

    def flaky(messages, body):
        state["n"] += 1
        return (503, {"error": {"message": "busy", "type": "server_error"}}) if state["n"] == 1 else "ok"

    seg = Segment(str(dataset / "videos" / "v1.mp4"), 0.0, 1.0)
    waits: list[float] = []
    with openai_stub(flaky) as stub:
        cfg = BaselineConfig(model="m", base_url=stub.base_url, api_key_env="STUB_BASELINE_KEY", fps=4.0,
                             backoff_s=0.01, timeout_s=5.0)
        base = OpenAIBaseline(cfg, sleep=waits.append)
        assert base.commentary(seg) == "ok"
        assert base.stats == {"requests": 2, "retries": 1, "frames": 4} and waits == [0.01]
    with openai_stub(lambda m, b: (500, {"error": {"message": "down"}})) as stub:
        cfg = BaselineConfig(model="m", base_url=stub.base_url, api_key_env="STUB_BASELINE_KEY", max_retries=2,
                             backoff_s=0.01, timeout_s=5.0)
        with pytest.raises(BaselineError, match="after 3 attempts"):
            OpenAIBaseline(cfg, sleep=waits.append).describe(seg)
        assert len(stub.requests) == 3 and waits[1:] == [0.01, 0.02]


# ------------------------------------------------------------------------------------------------------------
# score
# ------------------------------------------------------------------------------------------------------------


def slots(messages):
    user = messages[-1]["content"]
    a = user.split("Commentary A:\n", 1)[1].split("\n\nCommentary B:\n", 1)[0]
    return a, user.split("\n\nCommentary B:\n", 1)[1].rsplit("\n\nWhich commentary", 1)[0]


def judge_reply(messages, body):
    """Scripted: clip v0 [2, 3.4] -> ours wins both orders; v0 [3.5, 4.9] -> always "A" (a position-biased tie);
    v1 [2, 3.9] -> the baseline wins with ours in slot A, and a non-verdict with the baseline in slot A."""
    a, _ = slots(messages)
    ours_in_a = not a.startswith("Baseline")
    reference = messages[-1]["content"]
    if "v0w4" in reference:
        return "A" if ours_in_a else "B"
    if "v0w7" in reference:
        return "A"
    return "B" if ours_in_a else "Both are fine."


def score_argv(dataset, generated, baseline, out, url):
    return ["score", "--a", str(generated["out"]), "--b", str(baseline["out"]), "--dataset", str(dataset),
            "--out", str(out), "--judge-model", "stub-judge", "--judge-base-url", url,
            "--judge-api-key-env", "STUB_JUDGE_KEY", "--backoff-s", "0.01", "--quiet"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory, dataset, generated, baseline):
    out = tmp_path_factory.mktemp("scores") / "ours_VS_gpt"
    capture = pytest.MonkeyPatch()
    printed: list[str] = []
    capture.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
    try:
        with openai_stub(judge_reply) as stub:
            assert inf_stream.main(score_argv(dataset, generated, baseline, out, stub.base_url)) == 0
            requests = list(stub.requests)
            # a rerun that lost its per-clip records asks only the invalid verdict again (v1, the baseline in slot
            # A): every valid reply is in the judge cache, invalid ones never are
            for f in out.glob("score*.jsonl"):
                f.unlink()
            assert inf_stream.main(score_argv(dataset, generated, baseline, out, stub.base_url)) == 0
            assert [r["body"] for r in stub.requests[len(requests):]] == [requests[5]["body"]]
    finally:
        capture.undo()
    return {"out": out, "requests": requests, "printed": "\n".join(printed)}


def test_score_win_rate_matches_the_scripted_verdicts(scored):
    doc = json.loads((scored["out"] / "score_results.json").read_text())
    o = doc["overall"]
    # votes: clip 1 A,A; clip 2 A,B; clip 3 B,invalid -> A 3, B 2, 1 invalid of 6
    assert (o["clips"], o["wins_a"], o["wins_b"], o["invalid"], o["judgements"]) == (3, 3, 2, 1, 6)
    assert o["win_rate_a"] == pytest.approx(3 / 5) and o["win_rate_a_over_2n"] == pytest.approx(3 / 6)
    assert o["win_rate_a_ci95"] == pytest.approx(list(bootstrap_ci([1.0, 0.5, 0.0], n=2000, seed=0)))
    assert (o["clips_won_a"], o["clips_won_b"], o["clips_tied"]) == (1, 1, 1)
    per_video = {v["video"]: v for v in doc["per_video"]}
    assert (per_video["v0.mp4"]["wins_a"], per_video["v0.mp4"]["wins_b"]) == (3, 1)
    assert per_video["v0.mp4"]["win_rate_a"] == pytest.approx(0.75)
    assert (per_video["v1.mp4"]["win_rate_a"], per_video["v1.mp4"]["invalid"]) == (0.0, 1)
    assert [i.split("#")[0] for i in doc["invalid_clips"]] == ["v1.mp4@2-3.9"]
    assert doc["skipped"] == {"missing_a": 0, "missing_b": 0, "not_covered_a": 1, "not_covered_b": 0,
                              "empty_clip": 0, "duplicate_clip": 1}
    assert doc["meta"]["rubric"] == "inf-stream" and doc["meta"]["judge_model"] == "stub-judge"
    # the rerun: 5 valid replies from the cache, the invalid one asked again (and invalid again)
    assert doc["judge_stats_this_run"] == {"calls": 1, "cache_hits": 5, "retries": 0, "invalid": 1}
    records = read_jsonl(scored["out"] / "score.jsonl")
    assert [(r["first"], r["second"], r["winner"]) for r in records] == [
        ("A", "A", "A"), ("A", "B", "tie"), ("B", "invalid", "B")]
    printed = scored["printed"]
    assert "win rate 60.00%" in printed and "1 of 6 verdicts invalid (not cached" in printed and "ALL" in printed


def test_judge_saw_both_orders_with_the_clip_texts(scored, generated, baseline):
    requests = scored["requests"]
    assert len(requests) == 6
    ours = {m["video"]: m for m in read_jsonl(generated["out"] / "merged_result.jsonl")}
    base = {m["video"]: m for m in read_jsonl(baseline["out"] / "merged_result.jsonl")}
    for k, (video, s, e) in enumerate([("v0.mp4", 2.0, 3.4), ("v0.mp4", 3.5, 4.9), ("v1.mp4", 2.0, 3.9)]):
        x, y = candidate_text(ours[video]["items"], s, e), candidate_text(base[video]["items"], s, e)
        first, second = (slots(requests[2 * k + j]["body"]["messages"]) for j in range(2))
        assert first == (x, y) and second == (y, x)
        body = requests[2 * k]["body"]
        assert body["temperature"] == 0 and body["seed"] == 42 and body["model"] == "stub-judge"
    # the reference is the clip's words joined by spaces (not one word per line)
    assert "Reference transcript (for the tone and the on-screen information):\nv0w4 v0w5 v0w6\n" in requests[0][
        "body"]["messages"][-1]["content"]


def test_invalid_verdicts_are_judged_again_on_rerun(tmp_path, dataset, generated, baseline, capsys):
    """First run: the judge answers garbage for clip v0 [3.5, 4.9] (both orders) and for v1 with the baseline in slot
    A. Rerun (records kept): a judge that answers properly is asked exactly those three judgements again."""
    out = tmp_path / "scores"

    def garbling(messages, body):
        reply = judge_reply(messages, body)
        return "Hard to say." if "v0w7" in messages[-1]["content"] else reply

    def proper(messages, body):
        reply = judge_reply(messages, body)
        return "B" if reply == "Both are fine." else reply  # ours, in slot B, wins

    with openai_stub(garbling) as stub:
        assert inf_stream.main(score_argv(dataset, generated, baseline, out, stub.base_url)) == 0
        first = list(stub.requests)
    doc = json.loads((out / "score_results.json").read_text())
    assert (doc["overall"]["invalid"], doc["overall"]["judgements"]) == (3, 6)
    assert [i.split("#")[0] for i in doc["invalid_clips"]] == ["v0.mp4@3.5-4.9", "v1.mp4@2-3.9"]
    assert "3 of 6 verdicts invalid (not cached: a rerun asks them again)" in capsys.readouterr().out
    cached = [json.loads(line)["reply"] for line in (out / "judge_cache.jsonl").read_text().splitlines()]
    assert sorted(cached) == ["A", "B", "B"]  # clip v0 [2, 3.4] both orders, v1 ours-in-A; no invalid reply

    with openai_stub(proper) as stub:
        assert inf_stream.main(score_argv(dataset, generated, baseline, out, stub.base_url)) == 0
        again = list(stub.requests)
    # requests 2, 3 (clip v0 [3.5, 4.9]) and 5 (v1, the baseline in slot A) of the first run, and nothing else
    assert [r["body"] for r in again] == [first[k]["body"] for k in (2, 3, 5)]
    doc = json.loads((out / "score_results.json").read_text())
    o = doc["overall"]
    assert (o["clips"], o["wins_a"], o["wins_b"], o["invalid"], o["judgements"]) == (3, 4, 2, 0, 6)
    assert doc["invalid_clips"] == []
    assert doc["judge_stats_this_run"] == {"calls": 3, "cache_hits": 1, "retries": 0, "invalid": 0}
    merged = read_jsonl(out / "score.jsonl")
    assert [(r["first"], r["second"]) for r in merged] == [("A", "A"), ("A", "B"), ("B", "A")]
    assert "0 of 6 verdicts invalid; " in capsys.readouterr().out
    # a third run has nothing left to ask
    with openai_stub(proper) as stub:
        assert inf_stream.main(score_argv(dataset, generated, baseline, out, stub.base_url)) == 0
        assert stub.requests == []


def first_request_fails(answer: Answer, then):
    """The first request gets ``answer``; every later one is answered by ``then``."""
    state = {"n": 0}

    def reply(messages, body):
        state["n"] += 1
        return answer if state["n"] == 1 else then(messages, body)

    return reply


@pytest.mark.parametrize("answer, extra", [
    (Answer(body="<html><body>502 Bad Gateway</body></html>"), []),  # a 200 whose body is not JSON
    (Answer(text="A", delay_s=1.5), ["--timeout-s", "0.3"]),  # slower than --timeout-s
], ids=["not-json", "timeout"])
def test_score_retries_a_broken_answer(answer, extra, tmp_path, dataset, generated, baseline):
    out = tmp_path / "scores"
    with openai_stub(first_request_fails(answer, judge_reply)) as stub:
        assert inf_stream.main([*score_argv(dataset, generated, baseline, out, stub.base_url), *extra]) == 0
        bodies = stub.bodies
    assert len(bodies) == 7 and bodies[0] == bodies[1]  # the broken request once more, then the other five
    doc = json.loads((out / "score_results.json").read_text())
    assert (doc["overall"]["wins_a"], doc["overall"]["wins_b"], doc["overall"]["invalid"]) == (3, 2, 1)
    assert doc["judge_stats_this_run"]["retries"] == 1


def test_baseline_timeout_flag(tmp_path, dataset):
    argv = ["baseline", "--model", "stub-vision", "--dataset", str(dataset), "--out", str(tmp_path / "gpt"),
            "--start-offset", str(START), "--max-frames-per-request", "4", "--max-height", "32", "--quiet",
            "--api-key-env", "STUB_BASELINE_KEY", "--backoff-s", "0.01", "--timeout-s", "0.3"]
    with openai_stub(first_request_fails(Answer(text="late", delay_s=1.5), base_reply)) as stub:
        assert inf_stream.main([*argv, "--base-url", stub.base_url]) == 0
        bodies = stub.bodies
    assert len(bodies) == 4 and bodies[0] == bodies[1]  # 3 clips of at most 4 frames; the first one asked twice
    merged = read_jsonl(tmp_path / "gpt" / "merged_result.jsonl")
    assert merged[0]["items"][0]["response"] == "Baseline calls the play (2.0 s to 3.4 s)"


def test_score_barrier_uses_the_runner_timeout(tmp_path, dataset, generated, baseline, monkeypatch):
    """Under torchrun (rank 1 of 2 here), the process group is the runner's, with the runner's timeout."""
    import datetime

    from tests.test_eval_runner import fake_process_group

    state: dict = {}
    calls = fake_process_group(monkeypatch, state)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("STREAMING_VLM_EVAL_BARRIER_TIMEOUT_S", "123")
    with openai_stub(judge_reply) as stub:
        assert inf_stream.main(score_argv(dataset, generated, baseline, tmp_path / "s", stub.base_url)) == 0
        assert len(stub.requests) == 2  # rank 1's one clip of three
    assert calls == [("gloo", {"timeout": datetime.timedelta(seconds=123)})]
    assert not state["up"]  # torn down at the end


# ------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------


def test_a_bad_barrier_timeout_is_one_line_exit_2(tmp_path, dataset, generated, baseline, monkeypatch, capsys):
    monkeypatch.setenv("STREAMING_VLM_EVAL_BARRIER_TIMEOUT_S", "1h")
    with openai_stub(judge_reply) as stub:
        assert inf_stream.main(score_argv(dataset, generated, baseline, tmp_path / "s", stub.base_url)) == 2
        assert stub.requests == []
    err = capsys.readouterr().err.strip()
    assert err == ("streaming-vlm eval inf-stream: error: STREAMING_VLM_EVAL_BARRIER_TIMEOUT_S must be a positive "
                   "number of seconds, got '1h'")


@pytest.mark.parametrize("phase", [["generate", "--model", "tiny"], ["baseline"],
                                   ["score", "--a", "x", "--b", "y", "--judge-model", "j"]])
def test_missing_dataset_is_one_line_exit_2(phase, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("EVAL_DATASET_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    assert inf_stream.main(phase) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("streaming-vlm eval inf-stream: error: no dataset") and "EVAL_DATASET_PATH" in err
    assert list(tmp_path.iterdir()) == []


def test_dataset_from_the_environment_and_missing_videos(monkeypatch, tmp_path, capsys):
    (tmp_path / "eval_all_metadata.jsonl").write_text(json.dumps({"video": "gone.mp4", "content": [[0, 1, "hi"]]}))
    monkeypatch.setenv("EVAL_DATASET_PATH", str(tmp_path))
    assert inf_stream.main(["generate", "--model", "tiny", "--out", str(tmp_path / "o"), "--start-offset", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"not found, first: {tmp_path / 'gone.mp4'}" in err
    (tmp_path / "eval_all_metadata.jsonl").write_text('{"video": "a.mp4", "content": [[0, "x", "hi"]]}\n')
    assert inf_stream.main(["generate", "--model", "tiny", "--start-offset", "0"]) == 2
    assert "eval_all_metadata.jsonl:1: bad word" in capsys.readouterr().err


def test_bad_frame_rate_fails_before_the_model_loads(dataset, tmp_path, capsys):
    argv = ["generate", "--model", "no/such-model", "--dataset", str(dataset), "--out", str(tmp_path / "o"),
            "--fps", "1"]
    assert inf_stream.main(argv) == 2
    assert "even whole number of frames per chunk, got 1 * 1 = 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_segments_restart_the_stream_every_segment_seconds():
    t = inf_stream.Transcript("a.mp4", inf_stream.Path("a.mp4"), [(0.0, 1.0, "x"), (4.0, 4.9, "y")])
    items, short = inf_stream._segments([t], 2.0, None, 1.0)
    assert [(i["id"], i["chunk_start"], i["span_end"]) for i in items] == [
        ("a.mp4@2", 2.0, 3.0), ("a.mp4@3", 3.0, 4.0), ("a.mp4@4", 4.0, 4.9)]
    assert [i["span_end"] for i in inf_stream._segments([t], 2.0, 1.5, None)[0]] == [3.5]  # --duration
    assert short == [] and inf_stream._segments([t], 5.0, None, None) == ([], ["a.mp4"])


def test_merge_command_reads_reference_shards(tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    rows = [{"video": "g.mp4", "chunk_start": 1000, "chunk_end": 1100, "items": [{"response": "b", "end_time": 1100}]},
            {"video": "g.mp4", "chunk_start": 900, "chunk_end": 1000, "items": [{"response": "a", "end_time": 1000}]}]
    for k, row in enumerate(rows):
        (shards / f"result_{k}.jsonl").write_text(json.dumps(row) + "\n")
    assert inf_stream.main(["merge", str(shards)]) == 0
    (merged,) = read_jsonl(shards / "merged_result.jsonl")
    assert (merged["chunk_start"], merged["chunk_end"], merged["segments"]) == (900.0, 1100.0, [[900.0, 1000.0],
                                                                                                [1000.0, 1100.0]])
    assert [it["response"] for it in merged["items"]] == ["a", "b"]
    (shards / "result_2.jsonl").write_text('{"video": "g.mp4"}\n')
    assert inf_stream.main(["merge", str(shards)]) == 2
    assert "result_2.jsonl: record 1 is not a generation record" in capsys.readouterr().err
