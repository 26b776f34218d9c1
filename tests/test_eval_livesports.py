"""LiveSports-3K-CC end to end: a tiny dataset in the real on-disk layout, the tiny model, a scripted local judge.

The fixture is a copy of ``stdKonjac/LiveSports-3K`` in miniature: ``LiveSports-3K-CC.json`` with the real
columns and ``videos/*.mp4`` generated here. The judge is ``tests/openai_stub.py``, scripted by which slot holds
the baseline's caption, so the verdicts and therefore every count and the win rate are known by hand.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("openai")

from streaming_vlm.eval import livesports  # noqa: E402
from streaming_vlm.eval.judge import LIVECC_RUBRIC, bootstrap_ci  # noqa: E402
from streaming_vlm.settings import SETTING_NAMES, resolve  # noqa: E402
from streaming_vlm.synthetic import write_synthetic_video  # noqa: E402
from tests.openai_stub import Answer, openai_stub  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VERDICT_A = LIVECC_RUBRIC.verdict_a
VERDICT_B = LIVECC_RUBRIC.verdict_b

# (video_id, event_id, begin, end, title, preasr_text, human commentary, class, baseline caption or None)
EVENTS = [
    ("vidA_000001", 3, 0.5, 2.5, "Opening goal", "Kick-off in the rain.", "REF one: he shoots, he scores!", "Soccer",
     "BASELINE strong: a shot and a goal."),
    ("vidA_000001", 7, 2.0, 4.0, "Corner kick", "One nil.", "REF two: corner swung in.", "Soccer",
     "BASELINE weak: people on grass."),
    ("vidB_000002", 1, 0.0, 2.0, "", "", "REF three: tip-off.", "Basketball",
     "BASELINE split: the game starts."),
    ("vidB_000002", 2, 1.2, 3.2, "Fast break", "Tip-off won by the home side.", "REF four: dunk!", "Basketball",
     "BASELINE garbage: slam dunk."),
    ("vidB_000002", 4, 2.5, 4.0, "Timeout", "Dunk.", "REF five: timeout called.", "Basketball", None),
]  # fmt: skip
BASELINE = {f"{v}_{e}": cap for v, e, *_, cap in EVENTS if cap is not None}
ROLE = {"strong": "baseline", "weak": "model", "split": "A", "garbage": "garbage"}
VIDEO_SECONDS = {"vidA_000001": 5, "vidB_000002": 4}
COMMON = ["--max-pixels", str(56 * 56), "--max-new-tokens", "3", "--device", "cpu", "--dtype", "fp32"]


def _row(video_id, event_id, begin, end, title, preasr, reference, sport):
    """One annotation row with every column of the real LiveSports-3K-CC.json (ASR fields are JSON strings)."""
    return {
        "video_id": video_id,
        "url": f"https://www.youtube.com/watch?v={video_id}",
        "event_id": event_id,
        "begin": begin,
        "end": end,
        "event_type": 1,
        "video": f"{video_id}.mp4",
        "class": sport,
        "event_title": title,
        "event_asr": json.dumps([[begin, end, reference]]),
        "event_asr_text": reference,
        "preasr": json.dumps([[0.0, begin, preasr]] if preasr else []),
        "preasr_text": preasr,
    }


ROWS = [_row(*ev[:8]) for ev in EVENTS]


def _slots(messages):
    """(Commentary A, Commentary B, Human Commentary) of a LiveCC judge prompt."""
    text = messages[-1]["content"]

    def block(name):
        return text.split(f"---{name}---\n", 1)[1].split("\n----------\n", 1)[0]

    return block("Commentary A"), block("Commentary B"), block("Human Commentary")


def scripted_judge(messages, body):
    """Prefers by which baseline caption is in the prompt; one garbage reply (see EVENTS)."""
    a, b, _ = _slots(messages)
    baseline_slot = "A" if a in BASELINE.values() else "B"
    caption = a if baseline_slot == "A" else b
    role = ROLE[caption.split()[1].rstrip(":")]
    if role == "A":  # a position-biased judge: always slot A
        return VERDICT_A
    if role == "garbage":
        return VERDICT_A if baseline_slot == "A" else "Both commentaries are equally good."
    winner = baseline_slot if role == "baseline" else {"A": "B", "B": "A"}[baseline_slot]
    return VERDICT_A if winner == "A" else VERDICT_B


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("LiveSports-3K")
    for i, (video_id, seconds) in enumerate(VIDEO_SECONDS.items()):
        write_synthetic_video(root / "videos" / f"{video_id}.mp4", seconds, fps=4, width=84, height=56, seed=i)
    (root / "LiveSports-3K-CC.json").write_text(json.dumps(ROWS, indent=1))
    baseline = root / "captions" / "GPT-4o.jsonl"
    baseline.parent.mkdir()
    with open(baseline, "w") as f:
        for video_id, event_id, begin, end, *_, cap in EVENTS:
            if cap is not None:
                f.write(json.dumps({"video_id": video_id, "event_id": event_id, "begin": begin, "end": end,
                                    "pred": cap}) + "\n")  # fmt: skip
    return root, baseline


def _run(argv, env_dir=None):
    """main(argv) with $LIVESPORTS3K_PATH set to ``env_dir`` (or unset); returns (rc, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if env_dir is None:
            mp.delenv(livesports.ENV_VAR, raising=False)
        else:
            mp.setenv(livesports.ENV_VAR, str(env_dir))
        mp.setenv("STUB_JUDGE_KEY", "sk-stub")
        rc = livesports.main(argv)
    return rc, out.getvalue(), err.getvalue()


def _argv(out, baseline, url, *extra):
    return [
        "--model", "tiny-ckpt", "--output-dir", str(out), "--baseline", str(baseline),
        "--judge-base-url", url, "--judge-model", "stub-judge", "--judge-api-key-env", "STUB_JUDGE_KEY", *COMMON,
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory, dataset, tiny_model_dir):
    """One full run (generate + judge) with the dataset found through $LIVESPORTS3K_PATH."""
    from streaming_vlm.eval import generate

    root, baseline = dataset
    out = tmp_path_factory.mktemp("results")
    spans = []

    def spy(model, video, config, *, start, end):  # records what each event's stream was given
        spans.append((Path(video), config.query, config.previous_text, start, end))
        return real_stream_span(model, video, config, start=start, end=end)

    real_stream_span = generate.stream_span
    with openai_stub(scripted_judge) as stub, pytest.MonkeyPatch.context() as mp:
        mp.setattr(generate, "stream_span", spy)
        argv = _argv(out, baseline, stub.base_url)
        argv[argv.index("tiny-ckpt")] = str(tiny_model_dir)
        rc, stdout, stderr = _run([*argv, "--model-name", "tiny"], env_dir=root)
    assert rc == 0, stderr
    return {"out": out, "requests": stub.requests, "stdout": stdout, "stderr": stderr, "argv": argv, "spans": spans}


def _results(out, name="tiny"):
    return json.loads((out / "judges" / f"GPT-4o_{name}.json").read_text())


def test_win_rate_over_2n_and_counts_match_the_hand_computed_verdicts(run):
    s = _results(run["out"])["summary"]
    # Per event (model wins, baseline wins, invalid): strong (0,2,0), weak (2,0,0), split (1,1,0), garbage (0,1,1).
    assert s["judged_events"] == 4 and s["judgements"] == 8
    assert (s["model_wins"], s["baseline_wins"], s["invalid"]) == (3, 4, 1)
    assert s["win_rate_over_2n"] == 3 / 8 and s["win_rate_over_2n_percent"] == 37.5
    assert s["win_rate_valid"] == pytest.approx(3 / 7)
    assert (s["model_wins_ab"], s["model_wins_ba"], s["baseline_wins_ab"], s["baseline_wins_ba"]) == (2, 1, 1, 3)
    assert (s["ties"], s["pairs_model_both"], s["pairs_baseline_both"], s["pairs_with_invalid"]) == (1, 1, 1, 1)
    lo, hi = bootstrap_ci([0.0, 1.0, 0.5, 0.0])
    assert s["win_rate_over_2n_ci"] == [lo, hi] and lo <= 0.375 <= hi


def test_invalid_and_unjudged_events_are_reported(run):
    res = _results(run["out"])
    assert res["unjudged"] == {"missing_model_pred": [], "missing_baseline_pred": ["vidB_000002_4"],
                               "missing_reference": []}  # fmt: skip
    assert res["invalid_examples"] == [
        {"id": "vidB_000002_2", "order": "ab", "reply": "Both commentaries are equally good."}
    ]
    assert res["by_class"]["Soccer"] == {"judged_events": 2, "model_wins": 2, "invalid": 0, "win_rate_over_2n": 0.5}
    assert res["by_class"]["Basketball"]["invalid"] == 1 and res["by_class"]["Basketball"]["model_wins"] == 1
    verdicts = [json.loads(line) for line in (run["out"] / "judges" / "GPT-4o_tiny.jsonl").read_text().splitlines()]
    assert [(v["id"], v["ab_winner"], v["ba_winner"]) for v in verdicts] == [
        ("vidA_000001_3", "GPT-4o", "GPT-4o"),
        ("vidA_000001_7", "tiny", "tiny"),
        ("vidB_000002_1", "tiny", "GPT-4o"),
        ("vidB_000002_2", "invalid", "GPT-4o"),
    ]
    assert "1 event(s) not judged" in run["stderr"]
    table = run["stdout"].splitlines()
    assert "win rate % (/2N)" in table[-3] and "37.5" in table[-1] and "2/1" in table[-1]


def test_both_orders_are_asked_with_livecc_prompt_and_deterministic_settings(run):
    preds = {f"{r['video_id']}_{r['event_id']}": r["pred"] for r in map(json.loads, _lines(run["out"] / "tiny.jsonl"))}
    asked = []
    for req in run["requests"]:
        body = req["body"]
        assert body["model"] == "stub-judge" and body["temperature"] == 0 and body["seed"] == 42
        assert [m["role"] for m in body["messages"]] == ["user"]  # LiveCC sends one user turn
        assert req["headers"]["authorization"] == "Bearer sk-stub"
        a, b, ref = _slots(body["messages"])
        model_first = b in BASELINE.values()
        asked.append(("model first" if model_first else "baseline first", a if model_first else b, ref))
    # 4 judged events x 2 orders, model in slot A first; nothing asked for the event without a baseline caption.
    keys = ["vidA_000001_3", "vidA_000001_7", "vidB_000002_1", "vidB_000002_2"]
    refs = {f"{v}_{e}": ref for v, e, _, _, _, _, ref, *_ in EVENTS}
    assert asked == [(o, preds[k], refs[k]) for k in keys for o in ("model first", "baseline first")]
    first = run["requests"][0]["body"]["messages"][0]["content"]
    assert first == LIVECC_RUBRIC.user_template.format(
        a=preds["vidA_000001_3"], b=BASELINE["vidA_000001_3"], reference=refs["vidA_000001_3"]
    )


def _lines(path):
    return path.read_text().splitlines()


def test_each_event_streams_its_span_with_title_and_pre_event_speech(run, dataset):
    root, _ = dataset
    instruction = livesports.COMMENTATOR_INSTRUCTION
    assert run["spans"] == [
        (root / "videos" / "vidA_000001.mp4", instruction + 'This is a video titled "Opening goal".\n',
         "Kick-off in the rain.", 0.5, 2.5),
        (root / "videos" / "vidA_000001.mp4", instruction + 'This is a video titled "Corner kick".\n', "One nil.",
         2.0, 4.0),
        (root / "videos" / "vidB_000002.mp4", instruction, "", 0.0, 2.0),
        (root / "videos" / "vidB_000002.mp4", instruction + 'This is a video titled "Fast break".\n',
         "Tip-off won by the home side.", 1.2, 3.2),
        (root / "videos" / "vidB_000002.mp4", instruction + 'This is a video titled "Timeout".\n', "Dunk.", 2.5,
         4.0),
    ]  # fmt: skip


def test_predictions_file_is_livecc_format_and_equals_a_direct_stream(run, dataset, tiny_model_dir):
    from streaming_vlm.eval.generate import load_eval_model, stream_span

    root, _ = dataset
    rows = [json.loads(line) for line in _lines(run["out"] / "tiny.jsonl")]
    assert [list(r) for r in rows] == [["video_id", "event_id", "begin", "end", "pred"]] * len(EVENTS)
    assert [(r["video_id"], r["event_id"], r["begin"], r["end"]) for r in rows] == [ev[:4] for ev in EVENTS]
    records = [json.loads(line) for line in _lines(run["out"] / "generate" / "tiny.jsonl")]
    assert [r["chunks"] for r in records] == [2, 2, 2, 2, 2]  # 1-s chunks over begin..end (the last may be partial)
    # The same event streamed directly: LiveCC's instruction + title as the query, the pre-event speech as context,
    # the settings of COMMON over the defaults (top_p/top_k from the checkpoint's generation config).
    settings, _ = resolve({"max_pixels": 56 * 56, "max_new_tokens": 3},
                          protocol=livesports.LiveSports.settings_use.protocol)
    model = load_eval_model(str(tiny_model_dir), settings, device="cpu", dtype="fp32")
    assert (model.spec.min_pixels, model.spec.max_pixels) == (56 * 56, 56 * 56)
    for ev, row in zip(livesports.load_events(root / "LiveSports-3K-CC.json"), rows, strict=True):
        config = livesports.stream_config(settings, ev, generation_defaults=model.loaded.generation_defaults)
        assert config.previous_text == ev.preasr_text and config.sampling.temperature == 0.9
        assert config.sampling.repetition_penalty == 1.05 and config.text_sink == config.text_window == 512
        assert config.query == livesports.build_query(ev.title) and config.sampling.max_new_tokens == 3
        chunks = stream_span(model, root / "videos" / ev.video, config, start=ev.begin, end=ev.end)
        assert row["pred"] == " ".join(c.text for c in chunks if c.text)
    assert livesports.build_query("Opening goal") == (
        livesports.COMMENTATOR_INSTRUCTION + 'This is a video titled "Opening goal".\n'
    )
    assert livesports.build_query("") == livesports.COMMENTATOR_INSTRUCTION


def test_rerun_asks_only_the_invalid_verdict_again_and_generates_nothing(run, dataset, monkeypatch):
    root, _ = dataset
    before = _results(run["out"])
    gen_lines = _lines(run["out"] / "generate" / "tiny.rank0.jsonl")

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded: every event is already generated")

    monkeypatch.setattr("streaming_vlm.eval.generate.load_eval_model", no_model)
    with openai_stub(scripted_judge) as stub:  # the same judge: its invalid reply comes back invalid
        argv = [*run["argv"], "--model-name", "tiny", "--judge-base-url", stub.base_url]
        rc, _, stderr = _run(argv, env_dir=root)
        assert rc == 0, stderr
        rc, _, stderr = _run([*argv, "--phase", "judge"], env_dir=root)
        assert rc == 0, stderr
        asked = [_slots(r["body"]["messages"]) for r in stub.requests]
    # Each rerun asks one request: the invalid verdict (vidB_000002_2, model in slot A); the valid ones are cached.
    model_pred = {f"{r['video_id']}_{r['event_id']}": r["pred"] for r in map(json.loads, _lines(run["out"] /
                                                                                              "tiny.jsonl"))}
    assert asked == [(model_pred["vidB_000002_2"], BASELINE["vidB_000002_2"], "REF four: dunk!")] * 2
    assert "1 of 8 verdict(s) invalid (not cached: a rerun asks them again)" in stderr
    after = _results(run["out"])
    assert after["summary"] == before["summary"] and after["invalid_examples"] == before["invalid_examples"]
    assert after["judge"]["requests"] == 1 and after["judge"]["cache_hits"] == 7
    assert _lines(run["out"] / "generate" / "tiny.rank0.jsonl") == gen_lines


def test_a_folder_generated_before_resumes_only_with_its_sampling(run, dataset, tmp_path, monkeypatch):
    """{model_name}.generation.json as the code before the harness wrote it (these keys, top_p/top_k never applied):
    a rerun resumes it with --top-k 0 --top-p 1 (what that code sampled with), and refuses it otherwise, since the
    checkpoint's generation config now applies where they are unset."""
    import shutil

    root, _ = dataset
    model = run["argv"][run["argv"].index("--model") + 1]
    out = tmp_path / "before"
    (out / "generate").mkdir(parents=True)
    shutil.copy(run["out"] / "generate" / "tiny.rank0.jsonl", out / "generate")
    (out / "tiny.generation.json").write_text(json.dumps({
        "model": model, "mode": "streaming", "instruction": livesports.COMMENTATOR_INSTRUCTION, "temperature": 0.9,
        "repetition_penalty": 1.05, "max_new_tokens": 3, "seed": 0, "max_pixels": 3136, "fps": 2.0,
        "chunk_seconds": 1.0, "vision_window": 16, "text_rounds": 16, "text_sink": 512, "text_window": 512}, indent=2))

    def no_model(*a, **k):
        raise AssertionError("every event is generated already")

    monkeypatch.setattr("streaming_vlm.eval.generate.load_eval_model", no_model)
    argv = ["--model", model, "--model-name", "tiny", "--output-dir", str(out), "--phase", "generate", *COMMON]
    rc, stdout, stderr = _run([*argv, "--top-k", "0", "--top-p", "1"], env_dir=root)
    assert rc == 0 and f"wrote {out / 'tiny.jsonl'} (5 events)" in stdout, stderr
    rc, _, stderr = _run(argv, env_dir=root)
    assert rc == 2 and "other settings (top_p, top_k)" in stderr and stderr.count("\n") == 1, stderr


def _judge_argv(run, baseline, out, url, *extra):
    """Phase judge only, on the run's predictions, into ``out``."""
    return ["--phase", "judge", "--predictions", str(run["out"] / "tiny.jsonl"), "--model-name", "tiny",
            "--baseline", str(baseline), "--output-dir", str(out), "--judge-base-url", url, "--judge-model",
            "stub-judge", "--judge-api-key-env", "STUB_JUDGE_KEY", *extra]  # fmt: skip


def test_invalid_verdicts_are_reported_and_asked_again_on_rerun(run, dataset, tmp_path):
    """First run: garbage for the baseline-in-slot-A order of both soccer events (plus the scripted one). A rerun
    with a judge that answers properly asks exactly those three again; the report counts what is invalid."""
    root, baseline = dataset
    out = tmp_path / "judged"

    def garbling(messages, body):
        a, _, ref = _slots(messages)
        soccer = ref.startswith(("REF one", "REF two"))
        return "Hmm, hard to say." if a in BASELINE.values() and soccer else scripted_judge(messages, body)

    def proper(messages, body):
        reply = scripted_judge(messages, body)
        return VERDICT_B if reply not in (VERDICT_A, VERDICT_B) else reply

    with openai_stub(garbling) as stub:
        rc, _, stderr = _run(_judge_argv(run, baseline, out, stub.base_url), env_dir=root)
        first = [r["body"] for r in stub.requests]
    assert rc == 0, stderr
    res = _results(out)
    assert (res["summary"]["invalid"], res["summary"]["pairs_with_invalid"]) == (3, 3)
    assert [(e["id"], e["order"]) for e in res["invalid_examples"]] == [
        ("vidA_000001_3", "ba"), ("vidA_000001_7", "ba"), ("vidB_000002_2", "ab")]
    assert "3 of 8 verdict(s) invalid (not cached: a rerun asks them again)" in stderr
    cache = [json.loads(line)["reply"] for line in _lines(out / "judge_cache.jsonl")]
    assert len(cache) == 5 and set(cache) <= {VERDICT_A, VERDICT_B}

    with openai_stub(proper) as stub:
        rc, _, stderr = _run(_judge_argv(run, baseline, out, stub.base_url), env_dir=root)
        again = [r["body"] for r in stub.requests]
    assert rc == 0, stderr
    assert again == [first[k] for k in (1, 3, 6)]  # the three invalid ones, nothing else
    res = _results(out)
    s = res["summary"]
    # now: strong (0,2), weak (2,0), split (1,1), garbage answered B with the model in slot A (0,2)
    assert (s["model_wins"], s["baseline_wins"], s["invalid"]) == (3, 5, 0) and res["invalid_examples"] == []
    assert res["judge"]["requests"] == 3 and res["judge"]["cache_hits"] == 5
    assert "verdict(s) invalid" not in stderr


def test_judge_timeout_flag(run, dataset, tmp_path):
    root, baseline = dataset
    state = {"n": 0}

    def slow_first(messages, body):
        state["n"] += 1
        return Answer(text=VERDICT_A, delay_s=1.5) if state["n"] == 1 else scripted_judge(messages, body)

    with openai_stub(slow_first) as stub:
        argv = _judge_argv(run, baseline, tmp_path / "j", stub.base_url, "--judge-timeout-s", "0.3")
        rc, _, stderr = _run(argv, env_dir=root)
        bodies = stub.bodies
    assert rc == 0, stderr
    assert len(bodies) == 9 and bodies[0] == bodies[1]  # the slow request abandoned and asked again
    assert _results(tmp_path / "j")["judge"]["timeout_s"] == 0.3


def test_the_checkpoints_stream_settings_apply_except_the_protocols_query(dataset, tiny_model_dir, tmp_path):
    """A checkpoint carrying streaming_vlm.json streams each event with its settings (a flag still wins; its query
    does not: LiveCC's instruction is the protocol), and the predictions and the judge's results say so."""
    import shutil

    from streaming_vlm.eval import generate

    root, baseline = dataset
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (model / "streaming_vlm.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 3136, "text_sink": 3, "max_new_tokens": 2, "temperature": 0.0,
        "query": "the checkpoint's own query"}))  # fmt: skip
    seen = []
    real_stream_span = generate.stream_span

    def spy(m, video, config, *, start, end):
        seen.append((config, m.spec.min_pixels, m.spec.max_pixels))
        return real_stream_span(m, video, config, start=start, end=end)

    out = tmp_path / "out"
    with openai_stub(scripted_judge) as stub, pytest.MonkeyPatch.context() as mp:
        mp.setattr(generate, "stream_span", spy)
        argv = ["--model", str(model), "--model-name", "ckpt", "--output-dir", str(out), "--baseline", str(baseline),
                "--judge-base-url", stub.base_url, "--judge-model", "stub-judge", "--judge-api-key-env",
                "STUB_JUDGE_KEY", "--device", "cpu", "--dtype", "fp32", "--limit", "1", "--text-window", "5"]
        rc, _, stderr = _run(argv, env_dir=root)
    assert rc == 0, stderr
    (config, low, high), = seen
    assert (low, high) == (3136, 3136)
    assert (config.text_sink, config.text_window, config.vision_window) == (3, 5, 16)
    assert (config.sampling.max_new_tokens, config.sampling.temperature, config.sampling.repetition_penalty) == (
        2, 0.0, 1.05)
    assert config.sampling.top_k == 50  # the checkpoint's generation config, where the settings leave it unset
    assert config.query == livesports.build_query("Opening goal")
    recorded = json.loads((out / "ckpt.stream_settings.json").read_text())
    stream, sources = recorded["stream_settings"], recorded["stream_settings_sources"]
    unused = ("total_pixels", "max_frames")  # excluded: not recorded (the excluded query is the protocol's)
    assert list(stream) == list(sources) == [k for k in SETTING_NAMES if k not in unused]
    assert {k: (stream[k], sources[k]) for k in ("min_pixels", "max_pixels", "text_sink", "max_new_tokens",
                                                 "temperature", "query", "text_window", "top_k", "fps")} == {
        "min_pixels": (3136, "checkpoint"), "max_pixels": (3136, "checkpoint"), "text_sink": (3, "checkpoint"),
        "max_new_tokens": (2, "checkpoint"), "temperature": (0.0, "checkpoint"),
        "query": (livesports.COMMENTATOR_INSTRUCTION, "protocol"), "text_window": (5, "flag"),
        "top_k": (None, "default"), "fps": (2.0, "default")}  # fmt: skip
    results = _results(out, "ckpt")
    assert {k: results[k] for k in recorded} == recorded
    generation = results["generation"]
    assert (generation["max_pixels"], generation["text_sink"], generation["temperature"]) == (3136, 3, 0.0)
    assert (generation["top_p"], generation["top_k"]) == ("generation config", "generation config")


def test_missing_dataset_path_is_a_one_line_error(tmp_path):
    rc, out, err = _run(["--model", "tiny", "--phase", "generate", "--output-dir", str(tmp_path)])
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("streaming-vlm eval livesports: error:")
    assert livesports.ENV_VAR in err and "--data-dir" in err


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_video", "video file(s) not found"),
        ("no_baseline_flag", "needs --baseline"),
        ("bad_baseline", "line 2 is not JSON"),
        ("bad_annotations", "missing column(s) begin"),
        ("changed_settings", "other settings (temperature)"),
        ("no_data_dir", "dataset directory not found"),
    ],
)
def test_bad_inputs_fail_before_any_work(case, message, dataset, tmp_path, run):
    root, baseline = dataset
    argv = ["--data-dir", str(root), "--model", "tiny", "--output-dir", str(tmp_path), "--baseline", str(baseline),
            *COMMON]  # fmt: skip
    if case == "no_video":
        argv += ["--video-dir", str(tmp_path)]
    elif case == "no_baseline_flag":
        argv = argv[: argv.index("--baseline")] + argv[argv.index("--baseline") + 2 :]
    elif case == "bad_baseline":
        bad = tmp_path / "bad.jsonl"
        bad.write_text(_lines(baseline)[0] + "\n{not json\n")
        argv += ["--baseline", str(bad), "--phase", "judge", "--predictions", str(baseline), "--model-name", "x"]
    elif case == "bad_annotations":
        ann = tmp_path / "ann.json"
        ann.write_text(json.dumps([{k: v for k, v in ROWS[0].items() if k != "begin"}]))
        argv += ["--annotations", str(ann)]
    elif case == "changed_settings":
        argv = [*run["argv"], "--model-name", "tiny", "--temperature", "0.5"]
    elif case == "no_data_dir":
        argv[argv.index(str(root))] = str(tmp_path / "absent")
    rc, _, err = _run(argv, env_dir=root)
    assert rc == 2 and message in err and err.count("\n") == 1, err


def test_annotations_in_every_real_layout_give_the_same_events(dataset, tmp_path):
    root, _ = dataset
    expected = livesports.load_events(livesports.find_annotations(root))
    assert [e.key for e in expected] == [f"{v}_{e}" for v, e, *_ in EVENTS]
    first = ("vidA_000001", 3, 0.5, 2.5, "vidA_000001.mp4", "Opening goal", "Kick-off in the rain.")
    assert expected[0] == livesports.Event(*first, "REF one: he shoots, he scores!", "Soccer")
    # The videos folder itself as the dataset path (the reference's LIVESPORTS3K_PATH) finds the annotations above.
    assert livesports.find_annotations(root / "videos") == [root / "LiveSports-3K-CC.json"]
    assert livesports.default_video_dir(root) == root / "videos"
    assert livesports.default_video_dir(root / "videos") == root / "videos"
    # JSON lines; pandas' default column-oriented JSON; event ids as strings or floats.
    jsonl = tmp_path / "cc.jsonl"
    jsonl.write_text("".join(json.dumps({**r, "event_id": str(r["event_id"])}) + "\n" for r in ROWS))
    columns = tmp_path / "cc.json"
    columns.write_text(json.dumps({k: {str(i): r[k] for i, r in enumerate(ROWS)} for k in ROWS[0]}))
    assert livesports.load_events(jsonl) == expected
    assert livesports.load_events(columns) == expected
    # The Hub's parquet conversion: LiveSports_3K_CC/test/0000.parquet, with nulls for empty text.
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    shard = tmp_path / "hub" / "LiveSports_3K_CC" / "test" / "0000.parquet"
    shard.parent.mkdir(parents=True)
    rows = [{**r, "event_id": float(r["event_id"]), "preasr_text": r["preasr_text"] or None} for r in ROWS]
    pq.write_table(pa.Table.from_pylist(rows), shard)
    assert livesports.find_annotations(tmp_path / "hub") == [shard]
    assert livesports.load_events([shard]) == expected


def test_prediction_files_key_by_video_and_event(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"video_id": "v", "event_id": 3, "begin": 0, "end": 1, "pred": "a"}\n'
        '{"video_id": "v", "event_id": "4", "begin": 0, "end": 1, "pred": null}\n\n'
        '{"video_id": "v", "event_id": 3.0, "begin": 0, "end": 1, "pred": "b"}\n'
    )
    assert livesports.read_predictions(path) == {"v_3": "b", "v_4": None}
    assert livesports.join_chunks([" Goal!", "", "  ", "What a strike. "]) == "Goal! What a strike."


def test_script_requires_the_dataset_path():
    env = {"PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "eval_LiveSports3k-cc.sh")], env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 2 and "LIVESPORTS3K_PATH" in proc.stderr
