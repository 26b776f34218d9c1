"""OVO-Bench on a tiny fixture in the real on-disk format: conversion, offline scoring vs a plain forward, both
answer modes end to end on the tiny model, resume, and the error paths."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from streaming_vlm.engine import StreamSession
from streaming_vlm.eval import ovobench
from streaming_vlm.eval.runner import read_jsonl
from streaming_vlm.synthetic import write_synthetic_video

# Real ovo_bench_new.json fields, one task of each kind (backward, real-time, the three forward ones).
ANNOTATION = [
    {"id": 0, "task": "EPM", "video": "Ego4D/clips/ec4a.mp4", "realtime": 3,
     "question": "Who did I talk to when chopping egg plants?", "answer": "a person with blue shirt",
     "options": ["a person with brown shirt", "a person with green shirt", "a person with blue shirt",
                 "a person with white shirt"], "gt": 2},
    {"id": 1319, "task": "OCR", "video": "AutoEvalMetaData/106.mp4", "realtime": 2.5,
     "question": "What is written on the lane?", "answer": "Markos", "options": ["Markos", "Lazor", "King"], "gt": 0},
    {"id": 1558, "task": "REC", "video": "perception_test/video_4017.mp4", "activity": "breaking something",
     "start_times": [1], "end_times": [4],
     "test_info": [{"realtime": 2, "count": 3}, {"realtime": 4.5, "count": 10}]},
    {"id": 1516, "task": "SSR", "video": "COIN/xZecGPPhbHE.mp4", "tutorial": "PutOnHairExtensions",
     "all_steps": ["pull up the hair", "put on the hair extensions"], "start_time": [1, 3], "end_time": [2, 4],
     "test_info": [{"realtime": 2, "step": "pull up the hair", "type": 1},
                   {"realtime": 3, "step": "put on the hair extensions", "type": 0}]},
    {"id": 1468, "task": "CRR", "video": "MovieNet/tt0048028.mp4",
     "question": "What does the woman do to the car?", "answer": "She walks past the car.",
     "ask_time": 1, "clue_time": 3, "test_info": [{"realtime": 1, "type": 0}, {"realtime": 4, "type": 1}]},
]  # fmt: skip
N_ITEMS = 8  # EPM 1 + OCR 1 + REC 2 + SSR 2 + CRR 2
SECONDS = {"Ego4D/clips/ec4a.mp4": 4, "AutoEvalMetaData/106.mp4": 3, "perception_test/video_4017.mp4": 5,
           "COIN/xZecGPPhbHE.mp4": 4, "MovieNet/tt0048028.mp4": 5}  # fmt: skip
SMALL = ["--device", "cpu", "--dtype", "fp32", "--min-pixels", "784", "--max-pixels", "3136",
         "--total-pixels", "12544"]  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ovobench")
    (root / ovobench.ANNOTATION_FILE).write_text(json.dumps(ANNOTATION, indent=2))
    for k, (rel, seconds) in enumerate(SECONDS.items()):
        write_synthetic_video(root / rel, seconds, fps=4, width=84, height=56, seed=k)
    return root


def _run(argv, monkeypatch=None):
    printed: list[str] = []
    patch = monkeypatch or pytest.MonkeyPatch()
    patch.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
    try:
        rc = ovobench.main(argv)
    finally:
        if monkeypatch is None:
            patch.undo()
    return rc, "\n".join(printed)


# ---- conversion -------------------------------------------------------------------------------------------


def test_conversion_of_the_real_format():
    items = ovobench.convert(ANNOTATION)
    assert [it["id"] for it in items] == [
        "EPM-0", "OCR-1319", "REC-1558-0", "REC-1558-1", "SSR-1516-0", "SSR-1516-1", "CRR-1468-0", "CRR-1468-1",
    ]  # fmt: skip
    by_id = {it["id"]: it for it in items}
    epm = by_id["EPM-0"]
    assert epm["category"] == "Backward Tracing" and epm["video"] == "Ego4D/clips/ec4a.mp4"
    assert epm["choices"] == ["A", "B", "C", "D"] and epm["answer"] == "C" and epm["answer_index"] == 2
    assert epm["options"][2] == "C. a person with blue shirt" and "C. a person with blue shirt" in epm["question"]
    assert (epm["start"], epm["end"]) == (0.0, 3.0)
    ocr = by_id["OCR-1319"]
    assert ocr["category"] == "Real-Time Visual Perception" and ocr["choices"] == ["A", "B", "C"]
    assert ocr["answer"] == "A" and ocr["end"] == 2.5
    rec = [by_id["REC-1558-0"], by_id["REC-1558-1"]]
    assert all(r["choices"] == [str(n) for n in range(11)] for r in rec)  # "10" is a choice
    assert [(r["answer"], r["answer_index"], r["end"]) for r in rec] == [("3", 3, 2.0), ("10", 10, 4.5)]
    assert "breaking something" in rec[0]["question"] and rec[0]["category"] == "Forward Active Responding"
    ssr = [by_id["SSR-1516-0"], by_id["SSR-1516-1"]]
    assert [(s["answer"], s["end"]) for s in ssr] == [("Yes", 2.0), ("No", 3.0)]
    assert ssr[0]["choices"] == ["No", "Yes"] and "pull up the hair" in ssr[0]["question"]
    crr = [by_id["CRR-1468-0"], by_id["CRR-1468-1"]]
    assert [(c["start"], c["end"], c["answer"]) for c in crr] == [(1.0, 1.0, "No"), (1.0, 4.0, "Yes")]
    assert "walks past" not in crr[0]["question"]  # the answer text is never shown
    assert [it["id"] for it in ovobench.convert(ANNOTATION, ["REC", "CRR"])] == [
        "REC-1558-0", "REC-1558-1", "CRR-1468-0", "CRR-1468-1",
    ]  # fmt: skip


def test_rec_choices_cover_counts_above_ten():
    data = [{"id": 1, "task": "REC", "video": "a.mp4", "activity": "jump", "test_info": [{"realtime": 2, "count": 12}]}]
    (item,) = ovobench.convert(data)
    assert item["choices"] == [str(n) for n in range(13)] and item["answer"] == "12"


@pytest.mark.parametrize(
    ("datum", "message"),
    [
        ({"id": 7, "task": "EPM", "video": "a.mp4", "realtime": 3, "question": "q", "options": ["x", "y"], "gt": 2},
         "datum 7: 'gt' 2 is not an index into its 2 options"),
        ({"id": 8, "task": "SSR", "video": "a.mp4", "test_info": [{"realtime": 2, "step": "s", "type": 2}]},
         "datum 8 test_info[0]: 'type' must be 0 (No) or 1 (Yes), got 2"),
        ({"id": 9, "task": "XYZ", "video": "a.mp4"}, "datum 9: unknown task 'XYZ'"),
        ({"id": 10, "task": "CRR", "video": "a.mp4", "question": "q", "test_info": [{"realtime": 2, "type": 1}]},
         "datum 10: field 'ask_time' is missing"),
    ],
)  # fmt: skip
def test_malformed_data_is_named(datum, message):
    with pytest.raises(ovobench.OvoBenchError, match=re.escape(message)):
        ovobench.convert([datum])


def test_clip_window():
    assert ovobench.clip_window(0.0, 3.0, 10.0) == (0.0, 3.0)
    assert ovobench.clip_window(4.0, 4.0, 10.0) == (3.0, 4.0)  # at least 1 s, extended backwards, never forwards
    assert ovobench.clip_window(0.0, 12.0, 10.0) == (0.0, 10.0)  # clamped to the video
    assert ovobench.clip_window(0.0, 0.0, 10.0) == (0.0, 1.0)
    assert ovobench.clip_window(0.0, 3.0, 0.5) == (0.0, 0.5)


def test_summary_means_are_unweighted_over_tasks():
    recs = [{"task": "EPM", "correct": c} for c in (1, 0, 0, 0)] + [{"task": "HLD", "correct": 1}]
    recs += [{"task": "OCR", "correct": 0}, {"task": "REC", "correct": 1, "error": "bad video"}]
    s = ovobench.summarize(recs)
    assert s["tasks"]["EPM"]["accuracy"] == 25.0 and s["tasks"]["HLD"]["accuracy"] == 100.0
    assert s["categories"]["Backward Tracing"] == {"accuracy": 62.5, "tasks": ["EPM", "HLD"]}
    assert s["categories"]["Real-Time Visual Perception"]["accuracy"] == 0.0
    assert s["tasks"]["REC"]["errors"] == 1
    assert s["overall"] == pytest.approx((62.5 + 0.0 + 100.0) / 3)
    assert ovobench.summarize([{"task": "EPM", "correct": 1}])["categories"]["Backward Tracing"]["tasks"] == ["EPM"]
    assert ovobench.summarize([{"task": "EPM", "correct": 1}])["categories"]["Forward Active Responding"] == {
        "accuracy": None,
        "tasks": [],
    }


# ---- offline scoring against a plain forward ---------------------------------------------------------------


def test_offline_scores_equal_a_plain_forward_of_each_choice(tiny):
    """The offline protocol through the engine (the prompt prefilled once + rolled-back choice forwards:
    ``StreamSession.score`` in mode full) == one cache-free stock forward of prompt + choice, for every choice (so
    "1" and "10" are different sequences), with a multi-temporal-patch video block at a clip's own frame rate."""
    from streaming_vlm.engine import StreamConfig
    from streaming_vlm.positions import assign_positions
    from streaming_vlm.preprocess import VisionSpec

    config = StreamConfig(mode="full", query="", fps=1.5, chunk_seconds=2 / 1.5)
    session = StreamSession(tiny.model, tiny.tokenizer, config, vision_spec=VisionSpec(min_pixels=784,
                                                                                       max_pixels=56 * 84))
    frames = torch.randint(0, 256, (6, 56, 84, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels, grid = session.preprocessor(frames.numpy())
    assert grid.tolist() == [[3, 4, 6]]  # three temporal patches, 56x84 -> 4x6 patches
    choices = ["1", "10", "A", "Yes"]
    prompt = "How many times did they jump?"
    meta = ovobench.offline_prompt(session.layout, (3, 2, 3), prompt)
    scores = session.score(meta, [ovobench.choice_ids(session.layout, c) for c in choices], pixels=pixels, grid=grid)

    assert session.layout.decode(meta.ids[-8:]).endswith("The answer is:\n")
    for choice, score in zip(choices, scores, strict=True):
        ids = torch.tensor(ovobench.choice_ids(session.layout, choice))
        seq = torch.cat([meta.ids, ids])
        group_start = torch.cat([meta.group_start, torch.ones(len(ids), dtype=torch.bool)])
        rel = torch.cat([meta.rel, torch.zeros(3, len(ids), dtype=torch.long)], dim=1)
        positions, _ = assign_positions(group_start, rel)
        with torch.inference_mode():
            logits = tiny.model(
                input_ids=seq[None], position_ids=positions[:, None], pixel_values_videos=pixels, video_grid_thw=grid,
            ).logits[0].float()  # fmt: skip
        lp = torch.log_softmax(logits[len(meta) - 1 : -1], dim=-1).gather(1, ids[:, None]).sum()
        assert abs(float(lp) - score) < 1e-4, (choice, float(lp), score)
    assert ovobench.choice_ids(session.layout, "10")[:2] == [16, 15]
    assert ovobench.choice_ids(session.layout, "1")[0] == 16  # shared first token
    assert len(set(scores)) == 4


def test_offline_reader_caps_frames_and_encodes_like_one_video(tiny_model_dir, data_dir):
    """A clip over ``max_frames`` is subsampled uniformly and encoded patch by patch exactly as at once; the answer
    is the engine path on those frames, at the clip's frame rate, under the settings' budget for that many frames."""
    from streaming_vlm.engine import StreamConfig
    from streaming_vlm.eval import harness
    from streaming_vlm.preprocess import VideoPreprocessor, VisionSpec
    from streaming_vlm.settings import StreamSettings
    from streaming_vlm.video import VideoReader

    path = str(data_dir / "perception_test/video_4017.mp4")
    keep = ovobench.subsample(10, 4)
    assert keep.tolist() == [0, 3, 6, 9] and ovobench.subsample(6, 8).tolist() == list(range(6))
    preprocess = VideoPreprocessor(VisionSpec(min_pixels=784, max_pixels=3136))
    with VideoReader(path, fps=2.0, chunk_seconds=1.0, duration=4.5) as reader:
        assert reader.num_chunks() * reader.frames_per_chunk == 10
        pixels, grid = ovobench.encode_clip(reader, keep, preprocess)
        frames = np.concatenate([c.frames for c in reader.chunks()])
    whole = preprocess(frames[keep])
    assert torch.equal(grid, whole[1]) and grid[0, 0] == 2 and torch.equal(pixels, whole[0])

    settings = StreamSettings(max_frames=5, min_pixels=784, max_pixels=3136, total_pixels=3136, query="")
    run = harness.Run(args=argparse.Namespace(device="cpu", dtype="fp32"), settings=settings, sources={},
                      model_path=str(tiny_model_dir))
    sessions = []

    def session(config, n_frames=None):  # the real one, kept for a look
        sessions.append(harness.Run.session(run, config, n_frames=n_frames))
        return sessions[-1]

    run.session = session
    item = {"path": path, "window": (0.0, 4.5), "question": "How many times?", "choices": ["1", "10", "3"]}
    choice = ovobench.answer_offline(run, item)
    (session,) = sessions
    assert choice.frames == 4 and session.config.fps == pytest.approx(2.0 * 4 / 10)  # 10 frames, capped to 4 (even)
    assert session.config.mode == "full" and session.config.system_prompt == settings.system_prompt
    assert session.preprocessor.spec.max_pixels == settings.frame_pixels(4)[1] == 1568  # 3136 * 2 / 4 frames

    loaded = run.model.loaded
    config = StreamConfig(mode="full", query="", fps=0.8, chunk_seconds=2.5)
    twin = StreamSession(loaded.model, loaded.tokenizer, config, vision_spec=session.preprocessor.spec)
    pixels, grid = twin.preprocessor(frames[keep])
    meta = ovobench.offline_prompt(twin.layout, (2, int(grid[0, 1]) // 2, int(grid[0, 2]) // 2), item["question"])
    scores = twin.score(meta, [ovobench.choice_ids(twin.layout, c) for c in item["choices"]], pixels=pixels, grid=grid)
    assert choice.logprobs == scores and choice.index == int(np.argmax(scores))


@pytest.mark.parametrize(
    ("min_pixels", "max_pixels", "total_pixels"),
    [(784, 3136, 12544), (100 * 28 * 28, 768 * 28 * 28, 24576 * 28 * 28)],  # the fixture's runs: tiny, demo legacy
)
def test_offline_pixel_budget_is_the_training_rule(min_pixels, max_pixels, total_pixels):
    """The retired offline rule (qwen_vl_utils': a 1.05 * min_pixels floor) gives the same bounds as the one rule
    (``StreamSettings.frame_pixels``, training's) on every clip length of the fixture (2 to 10 frames), so offline
    results are unchanged; where the two differ, the old rule went above max_pixels (min = max, the demo's)."""
    from streaming_vlm.settings import StreamSettings

    def retired(s, n):
        cap = int(max(min(s.max_pixels, s.total_pixels / n * 2), s.min_pixels * 1.05))
        return min(s.min_pixels, cap), cap

    s = StreamSettings(min_pixels=min_pixels, max_pixels=max_pixels, total_pixels=total_pixels)
    for n in (2, 4, 6, 10):
        assert s.frame_pixels(n) == retired(s, n), n
    demo = StreamSettings(min_pixels=3136, max_pixels=3136)
    assert demo.frame_pixels(6) == (3136, 3136) and retired(demo, 6)[1] == 3292 > demo.max_pixels


def test_rec_answer_ten_is_predicted_when_it_scores_best(data_dir):
    """The record maps the best-scoring choice back to its label: "10" (two tokens) is a reachable prediction."""
    item = next(it for it in ovobench.convert(ANNOTATION) if it["id"] == "REC-1558-1")
    item["path"] = str(data_dir / item["video"])
    seen = []

    def answer(it):
        seen.append((it["window"], it["choices"]))
        return ovobench.Choice(10, [-5.0] * 10 + [-0.5], 10)

    rec = ovobench._record(item, answer)
    assert rec["pred"] == "10" and rec["correct"] is True and rec["window"] == [0.0, 4.5]
    assert seen == [((0.0, 4.5), [str(n) for n in range(11)])]


# ---- end to end ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, data_dir):
    """Both answer modes on the fixture; the streaming run records every step/choose the engine receives."""
    out = {}
    calls: list[tuple] = []
    mp = pytest.MonkeyPatch()
    step, choose = StreamSession.step, StreamSession.choose

    def rec_step(self, frames, start, end, **kw):
        calls.append(("step", round(start, 3), round(end, 3), kw.get("force_text")))
        return step(self, frames, start, end, **kw)

    def rec_choose(self, frames, start, end, question, options):
        calls.append(("choose", round(start, 3), round(end, 3), question, tuple(options)))
        return choose(self, frames, start, end, question, options)

    mp.setattr(StreamSession, "step", rec_step)
    mp.setattr(StreamSession, "choose", rec_choose)
    try:
        for mode in ("offline", "streaming"):
            dest = tmp_path_factory.mktemp(mode)
            rc, printed = _run(
                [
                    "--model",
                    str(tiny_model_dir),
                    "--data-dir",
                    str(data_dir),
                    "--answer-mode",
                    mode,
                    "--out",
                    str(dest),
                    *SMALL,
                ],
                mp,
            )
            assert rc == 0
            out[mode] = (dest, printed)
    finally:
        mp.undo()
    return out, calls


@pytest.mark.parametrize("mode", ["offline", "streaming"])
def test_results_per_task_and_category(runs, mode):
    (dest, printed), items = runs[0][mode], {it["id"]: it for it in ovobench.convert(ANNOTATION)}
    records = read_jsonl(dest / "ovobench.jsonl")
    assert [r["id"] for r in records] == list(items) and len(records) == N_ITEMS
    for r in records:
        it = items[r["id"]]
        assert r.get("error") is None and len(r["logprobs"]) == len(it["choices"])
        best = max(range(len(it["choices"])), key=r["logprobs"].__getitem__)
        assert r["pred"] == it["choices"][best] and r["correct"] == (best == it["answer_index"])
    assert [len(r["logprobs"]) for r in records if r["task"] == "REC"] == [11, 11]
    doc = json.loads((dest / "results.json").read_text())
    assert doc["meta"]["items"] == N_ITEMS and doc["meta"]["answer_mode"] == mode
    assert list(doc["tasks"]) == ["EPM", "OCR", "REC", "SSR", "CRR"]
    for task, t in doc["tasks"].items():
        mine = [r for r in records if r["task"] == task]
        assert t["total"] == len(mine) and t["correct"] == sum(r["correct"] for r in mine)
        assert t["accuracy"] == pytest.approx(100.0 * t["correct"] / t["total"])
    cats = doc["categories"]
    assert cats["Backward Tracing"]["accuracy"] == pytest.approx(doc["tasks"]["EPM"]["accuracy"])
    assert cats["Real-Time Visual Perception"]["accuracy"] == pytest.approx(doc["tasks"]["OCR"]["accuracy"])
    fwd = statistics.fmean(doc["tasks"][t]["accuracy"] for t in ("REC", "SSR", "CRR"))
    assert cats["Forward Active Responding"]["accuracy"] == pytest.approx(fwd)
    assert doc["overall"] == pytest.approx(statistics.fmean(c["accuracy"] for c in cats.values()))
    assert "Forward Active Responding" in printed and "accuracy %" in printed and "REC" in printed


def test_offline_windows_and_frames(runs):
    records = {r["id"]: r for r in read_jsonl(runs[0]["offline"][0] / "ovobench.jsonl")}
    assert records["EPM-0"]["window"] == [0.0, 3.0] and records["EPM-0"]["frames"] == 6
    assert records["OCR-1319"]["window"] == [0.0, 2.5] and records["OCR-1319"]["frames"] == 6  # 3 chunks
    assert records["CRR-1468-0"]["window"] == [0.0, 1.0]  # asked at 1 s: a 1-s window before the query time
    assert records["CRR-1468-1"]["window"] == [1.0, 4.0] and records["CRR-1468-1"]["frames"] == 6
    assert records["REC-1558-1"]["window"] == [0.0, 4.5]


def test_streaming_watches_silently_then_asks_at_the_query_time(runs):
    calls = runs[1]
    chooses = [c for c in calls if c[0] == "choose"]
    assert len(chooses) == N_ITEMS and sum(c[0] == "step" for c in calls) == 22 - N_ITEMS  # 22 chunks
    assert all(c[3] == "" for c in calls if c[0] == "step")  # silent: empty assistant turns
    rec10 = [c for c in chooses if "breaking something" in c[3]]
    assert [c[1:3] for c in rec10] == [(1.0, 2.0), (4.0, 4.5)]  # the last (partial) chunk ends at the query time
    assert all(c[4] == tuple(str(n) for n in range(11)) for c in rec10)  # "10" is scored
    crr = [c for c in chooses if "woman" in c[3]]
    assert [c[1:3] for c in crr] == [(0.0, 1.0), (3.0, 4.0)]
    i = calls.index(crr[1])
    assert [c[1:3] for c in calls[i - 2 : i]] == [(1.0, 2.0), (2.0, 3.0)]  # CRR streams from its ask time


def test_rerun_resumes_without_new_work(runs, tiny_model_dir, data_dir, monkeypatch):
    dest = runs[0]["offline"][0]
    before = (dest / "results.json").read_text()
    calls = []
    monkeypatch.setattr(ovobench, "answer_offline", lambda run, item: calls.append(item["id"]))
    rc, _ = _run(["--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--out", str(dest), *SMALL])
    assert rc == 0 and calls == []
    after = json.loads((dest / "results.json").read_text())
    assert {k: after[k] for k in ("tasks", "categories", "overall")} == {
        k: json.loads(before)[k] for k in ("tasks", "categories", "overall")
    }
    # another answer mode into the same directory is refused
    rc, _ = _run(
        [
            "--model",
            str(tiny_model_dir),
            "--data-dir",
            str(data_dir),
            "--out",
            str(dest),
            "--answer-mode",
            "streaming",
            *SMALL,
        ]
    )
    assert rc == 2


def test_partial_rerun_does_only_the_missing_items(tmp_path, runs, tiny_model_dir, data_dir, monkeypatch):
    src = runs[0]["offline"][0]
    for name in ("settings.json", "ovobench.rank0.jsonl"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    lines = (tmp_path / "ovobench.rank0.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "ovobench.rank0.jsonl").write_text("".join(lines[:5]) + lines[5][:20])  # 5 done, a torn line
    done = []
    real = ovobench.answer_offline
    monkeypatch.setattr(ovobench, "answer_offline", lambda run, item: done.append(item["id"]) or real(run, item))
    rc, _ = _run(["--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--out", str(tmp_path), *SMALL])
    assert rc == 0 and done == ["SSR-1516-1", "CRR-1468-0", "CRR-1468-1"]
    merged = read_jsonl(tmp_path / "ovobench.jsonl")
    assert [r["id"] for r in merged] == [it["id"] for it in ovobench.convert(ANNOTATION)]


def test_checkpoint_settings_apply_and_are_recorded(tmp_path, tiny_model_dir, data_dir, monkeypatch):
    """A checkpoint's streaming_vlm.json sets what it names (the model is loaded with its pixels), the protocol pins
    the instruction and the chunk length above it, and results.json and settings.json say where each came from."""
    from streaming_vlm.eval import generate

    model = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, model)
    (model / "streaming_vlm.json").write_text(json.dumps(
        {"min_pixels": 3136, "max_pixels": 3136, "text_sink": 3, "query": "not asked: the protocol has none",
         "max_new_tokens": 5}))
    loaded, real = [], generate.load_eval_model

    def load(*args, **kwargs):
        loaded.append(real(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(generate, "load_eval_model", load)
    out = tmp_path / "out"
    rc, _ = _run(["--model", str(model), "--data-dir", str(data_dir), "--answer-mode", "streaming", "--tasks", "OCR",
                  "--out", str(out), "--device", "cpu", "--dtype", "fp32"], monkeypatch)
    assert rc == 0
    meta = json.loads((out / "results.json").read_text())["meta"]
    settings, sources = meta["stream_settings"], meta["stream_settings_sources"]
    expected = {
        "min_pixels": (3136, "checkpoint"), "max_pixels": (3136, "checkpoint"), "text_sink": (3, "checkpoint"),
        "query": ("", "protocol"), "chunk_seconds": (1.0, "protocol"), "text_window": (512, "default"),
    }  # fmt: skip
    assert {k: (settings[k], sources[k]) for k in expected} == expected
    assert "max_new_tokens" not in settings  # excluded (--commentary-tokens is 0): not the checkpoint's, not recorded
    (m,) = loaded
    assert (m.spec.min_pixels, m.spec.max_pixels) == (3136, 3136)
    saved = json.loads((out / "settings.json").read_text())
    assert saved == meta["settings"] and (saved["min_pixels"], saved["text_sink"], saved["query"]) == (3136, 3, "")


# ---- errors ----------------------------------------------------------------------------------------------------


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("streaming-vlm eval ovobench: error:"), err
    for needle in needles:
        assert needle in err, err


def test_missing_data_dir_is_one_line_exit_2(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.delenv("EVAL_DATASET_PATH", raising=False)
    assert ovobench.main(["--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "--data-dir", "EVAL_DATASET_PATH")
    monkeypatch.setenv("EVAL_DATASET_PATH", str(tmp_path))
    assert ovobench.main(["--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, f"data directory not found: {tmp_path / 'ovobench'}")
    (tmp_path / "ovobench").mkdir()
    assert ovobench.main(["--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "annotation file not found", "ovo_bench_new.json")
    assert not (tmp_path / "o").exists()


def test_missing_videos(tmp_path, data_dir, tiny_model_dir, monkeypatch, capsys):
    root = tmp_path / "ovobench"
    root.mkdir()
    (root / ovobench.ANNOTATION_FILE).write_text(json.dumps(ANNOTATION))
    monkeypatch.setenv("EVAL_DATASET_PATH", str(tmp_path))  # the default data dir: $EVAL_DATASET_PATH/ovobench
    argv = ["--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), "--tasks", "EPM,OCR", *SMALL]
    assert ovobench.main(argv) == 2
    _one_line_error(capsys, "2 video file(s) missing", "--video-dir")
    (root / "Ego4D").symlink_to(data_dir / "Ego4D")
    rc, _ = _run([*argv, "--skip-missing-videos"])
    assert rc == 0
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert list(doc["tasks"]) == ["EPM"] and doc["meta"]["missing_videos_skipped"] == 1


def test_script_checks_its_data_dir():
    script = Path(__file__).resolve().parents[1] / "scripts" / "eval_OVOBench.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "EVAL_DATASET_PATH" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
