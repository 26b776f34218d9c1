"""The synthetic world: deterministic script, frames that show it, annotations the SFT validator accepts."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from streaming_vlm.cli import main as cli_main
from streaming_vlm.data.annotations import iter_records
from streaming_vlm.data.validate import validate_file
from streaming_vlm.data.windows import build_settings_path, window_bounds, windows_of
from streaming_vlm.video import VideoReader
from streaming_vlm.world import dataset
from streaming_vlm.world.render import FLASH, RGB, pitch
from streaming_vlm.world.script import (
    COLOURS,
    DEFAULT_WORLD,
    GOAL,
    SHAPES,
    WHISTLE,
    Call,
    WorldConfig,
    corpus,
    events,
    parse_commentary,
    score_word,
    words,
)


def test_script_is_deterministic_lazy_and_seed_dependent():
    a = list(events(7, 600))
    assert a == list(events(7, 600))
    assert a != list(events(8, 600))
    # lazily generated: the first events of a 30-year stream come at once, and are the same events
    assert list(itertools.islice(events(7, 10**9), 20)) == a[:20]
    # a prefix of a longer stream is the shorter stream
    assert list(events(7, 300)) == [e for e in a if e.second < 300]


def test_the_score_is_the_goals_since_the_last_whistle():
    cfg = WorldConfig(max_score=3, density=0.5)
    score, goals, forced = 0, 0, 0
    for e in events(3, 4000, cfg):
        if e.kind == WHISTLE:
            forced += score == cfg.max_score
            score = 0
        elif (e.colour, e.shape) == GOAL:
            score += 1
            goals += 1
        assert e.score == score <= cfg.max_score
    assert goals > 150 and forced > 10  # a whistle always follows the goal that reaches max_score


def test_every_stream_opens_with_the_kickoff_whistle_unless_turned_off():
    for seed in range(50):
        first = next(events(seed, 60))
        assert (first.second, first.kind, first.text) == (0, WHISTLE, "whistle! score zero")
    no_kickoff = [next(events(seed, 60, WorldConfig(kickoff=False))) for seed in range(50)]
    assert sum(e.second == 0 and e.kind == WHISTLE for e in no_kickoff) < 5
    # after the kick-off, whistles come at the configured rate (no forced ones: max_score 99)
    cfg = WorldConfig(max_score=99)
    assert abs(sum(e.kind == WHISTLE for e in events(3, 30000, cfg)) / 30000 - cfg.whistle_rate) < 0.001


def test_density_and_whistle_rate_are_what_the_config_says():
    cfg = WorldConfig(density=0.3, whistle_rate=0.02, max_score=99)
    ev = list(events(11, 20000, cfg))
    objects = sum(e.kind == "object" for e in ev) / 20000
    whistles = sum(e.kind == WHISTLE for e in ev) / 20000
    assert abs(objects - 0.3) < 0.015 and abs(whistles - 0.02) < 0.005


def test_words_belong_to_their_second_and_parse_back():
    for e in events(5, 300):
        ws = words(e)
        assert all(e.second < w.start < w.end <= e.second + 1 for w in ws)
        reading = parse_commentary(" " + " ".join(w.text for w in ws) + " ...")
        assert reading.calls == (Call(e.label, e.score),) and not reading.garbled


def test_grammar():
    for line in corpus():
        r = parse_commentary(line)
        assert len(r.calls) == 1 and r.calls[0].score is not None and not r.garbled
    r = parse_commentary(" red ball! blue bar! score three")
    assert r.calls == (Call("red ball", None), Call("blue bar", 3)) and not r.garbled
    assert parse_commentary("red ball! score four what a goal").garbled
    assert parse_commentary("green ball! score one").garbled  # not a colour of this world
    assert parse_commentary("red ball! score 4").garbled  # scores are words
    assert parse_commentary("red ball! score fourteen").calls == (Call("red ball", 14),)
    assert parse_commentary("red ball! score twenty-four").calls == (Call("red ball", 24),)
    assert [score_word(n) for n in (0, 9, 19, 20, 21, 99)] == [
        "zero", "nine", "nineteen", "twenty", "twenty-one", "ninety-nine"]
    assert parse_commentary("  ...").calls == () and not parse_commentary(" ...").garbled


def test_frames_show_the_script(tmp_path):
    cfg = WorldConfig()
    spec = dataset.StreamSpec(4, 40, cfg, "s")
    rec = dataset.write_stream(tmp_path, spec)
    by_second = {e.second: e for e in events(4, 40, cfg)}
    assert any(e.kind == "object" for e in by_second.values())
    empty = pitch(cfg.size).astype(int)
    with VideoReader(tmp_path / spec.video) as reader:
        assert reader.info.width == reader.info.height == cfg.size
        for chunk in reader.chunks():
            f = chunk.frames.astype(int)
            e = by_second.get(chunk.index)
            if e is None:  # quiet: the empty pitch up to compression noise
                assert np.abs(f - empty).mean() < 6
            elif e.kind == WHISTLE:
                assert np.abs(f - np.array(FLASH)).mean() < 6
            else:  # the object's colour covers a good part of the frame, in both frames of the second
                near = (np.abs(f - np.array(RGB[e.colour])).sum(-1) < 80).sum(axis=(1, 2))
                assert (near > 0.05 * cfg.size**2).all(), (chunk.index, e, near)
    assert rec.video_end == 40.0 and rec.words == [w for e in events(4, 40, cfg) for w in words(e)]


def test_rewriting_a_stream_gives_the_same_video_frames(tmp_path):
    spec = dataset.StreamSpec(9, 6, WorldConfig(), "s")
    dataset.write_stream(tmp_path / "a", spec)
    dataset.write_stream(tmp_path / "b", spec)

    def frames(root):
        with VideoReader(root / spec.video) as r:
            return np.concatenate([c.frames for c in r.chunks()])

    assert np.array_equal(frames(tmp_path / "a"), frames(tmp_path / "b"))


def test_videos_are_written_byte_for_byte_the_same_every_time(tmp_path):
    """With macroblock-tree rate control, libx264 encoded the synthetic test videos' frames differently from run to
    run (2-6 different files in 12 writes), which decode to different frames: they turn it off. The world's flat
    pictures encode the same every time with it (and the bundled clip was encoded with it, so it stays on there);
    six-minute streams rarely do not (dataset.render_videos)."""
    from streaming_vlm.synthetic import write_synthetic_video

    spec = dataset.StreamSpec(9, 20, WorldConfig(), "s")
    worlds = {(dataset.write_stream(tmp_path / f"w{i}", spec), (tmp_path / f"w{i}" / spec.video).read_bytes())[1]
              for i in range(6)}
    synthetic = {write_synthetic_video(tmp_path / f"s{i}.mp4", 8, fps=8, width=96, height=64).read_bytes()
                 for i in range(6)}
    assert len(worlds) == 1 and len(synthetic) == 1


def test_videos_written_by_several_processes_are_the_files_one_process_writes(tmp_path):
    specs = [dataset.StreamSpec(9, 6, WorldConfig(), "a"), dataset.StreamSpec(10, 12, WorldConfig(), "b"),
             dataset.StreamSpec(11, 3, replace(WorldConfig(), density=0.5), "c")]
    for spec in specs:
        dataset.write_stream(tmp_path / "one", spec)
    dataset.write_stream(tmp_path / "two", specs[1])  # there already: left as it is
    stamp = (tmp_path / "two" / specs[1].video).stat().st_mtime_ns
    assert dataset.render_videos(tmp_path / "two", specs + specs[:1], workers=2, progress=False) == 2
    assert (tmp_path / "two" / specs[1].video).stat().st_mtime_ns == stamp
    for spec in specs:
        assert (tmp_path / "two" / spec.video).read_bytes() == (tmp_path / "one" / spec.video).read_bytes()
    assert not list((tmp_path / "two").rglob("*.part"))
    assert dataset.render_videos(tmp_path / "two", specs, workers=2, progress=False) == 0


def test_splits_never_share_seeds():
    assert set(dataset.SPLIT_BASE) == {"train", "valid", "test", "heldout"}
    ranges = sorted((dataset.split_seed(s, 0), dataset.split_seed(s, 999_999)) for s in dataset.SPLIT_BASE)
    assert all(hi < lo for (_, hi), (lo, _) in itertools.pairwise(ranges))  # disjoint ranges
    with pytest.raises(ValueError, match="unknown split"):
        dataset.split_seed("dev", 0)


def test_the_held_out_set_shares_no_seed_with_any_stream_the_demo_trains_or_is_chosen_on(tmp_path):
    held = dataset.HELDOUT.specs()
    assert [(s.seconds, s.config) for s in held] == [(600, WorldConfig())] * 20 + [(3600, WorldConfig())] * 3
    seeds = [s.seed for s in held]
    assert seeds == list(range(3_000_000, 3_000_023))
    parts = dataset.training_specs(dataset.TrainingSetSpec())
    used = {s.seed for specs in parts.values() for s in specs}
    assert len(used) == sum(len(specs) for specs in parts.values())  # no part reuses another's stream
    assert not used & set(seeds)
    assert not {dataset.split_seed("test", i) for i in range(1000)} & set(seeds)  # nor the older test streams
    # the documented commands (scripts/eval_synth.sh runs them) write exactly these streams
    for out, extra in (("short", ["--streams", "20"]), ("long", ["--streams", "3", "--first", "20"])):
        assert cli_main(["synth", str(tmp_path / out), "--split", "heldout", "--minutes", "0.05", "--quiet",
                         *extra]) == 0
    written = [w["seed"] for out in ("short", "long")
               for w in json.loads((tmp_path / out / "heldout_world.json").read_text())]
    assert written == seeds
    script = (Path(__file__).parents[1] / "scripts" / "eval_synth.sh").read_text()
    assert all(f"{name}:-{value}}}" in script for name, value in (
        ("SHORT_STREAMS", 20), ("SHORT_MIN", 10), ("LONG_STREAMS", 3), ("LONG_MIN", 60)))
    assert '--split heldout' in script and '--first "$SHORT_STREAMS"' in script


def test_split_files_pass_the_sft_validator(tmp_path):
    path = dataset.write_streams(tmp_path, dataset.split_specs("test", 2, 0.5), "test.jsonl", progress=False)
    report = validate_file(path, dataset_path=tmp_path)
    assert report.ok and report.records == 2, report.lines()
    recs = [r for _, r in iter_records(path)]
    assert [r.video for r in recs] == ["videos/test_2000000.mp4", "videos/test_2000001.mp4"]


def test_training_set_windows(tmp_path):
    spec = dataset.TrainingSetSpec(stage1_streams=2, stage1_long_streams=1, stage1_quiet_streams=1, stage2_streams=1,
                                   stage2_short_streams=2, stage2_quiet_streams=1, valid_streams=1, select_streams=1,
                                   select_quiet_streams=1, stage1_reset_streams=1, stage2_reset_streams=1,
                                   select_reset_streams=1, minutes=1.0, long_minutes=1.5, short_minutes=0.5,
                                   select_minutes=0.5, pool_streams=1, pool_whistle_streams=1, pool_first=20,
                                   stage1_reset_goal_streams=2)
    files = dataset.make_training_set(tmp_path, spec, progress=False)
    assert set(files) == {"stage1", "stage2", "valid", "select", "stage1_gaps", "stage2_gaps", "stage1_goals",
                          "stage2_goals", "stage1_resets", "pool"}
    n = {}
    for name, path in files.items():
        report = validate_file(path, dataset_path=tmp_path)
        assert report.ok, report.lines()
        n[name] = report.records
        if name not in ("select", "pool"):  # whole streams, not windows
            assert path.with_name(path.stem + "_seeks.jsonl").is_file()
    worlds = {name: json.loads((tmp_path / f"{name}_streams_world.json").read_text()) for name in ("stage1", "stage2")}
    # train seeds in a fixed order: stage 1 varied 0-1, stage 2 default 2, long 3, short 4-5, quiet 6 and 7, quiet
    # with frequent whistles 8 and 9 (parts added later take the next seeds: the older parts keep theirs)
    assert [w["seed"] for w in worlds["stage1"]] == [0, 1, 3, 6, 8] and worlds["stage1"][2]["seconds"] == 90
    assert [(w["seed"], w["seconds"]) for w in worlds["stage2"]] == [(2, 60), (4, 30), (5, 30), (7, 60), (9, 60)]
    # stage 1 varies around the default world; the quiet streams are sparse; every stream opens with the kick-off
    assert len({w["config"]["density"] for w in worlds["stage1"]}) == 5
    assert worlds["stage2"][0]["config"] == json.loads(json.dumps(WorldConfig().__dict__))
    quiet = [worlds[stage][i]["config"] for stage in ("stage1", "stage2") for i in (3, 4)]
    assert all(0.04 <= c["density"] <= 0.15 for c in quiet)
    assert [c["whistle_rate"] for c in quiet] == [WorldConfig().whistle_rate, 1 / 60] * 2
    assert all(w["config"]["kickoff"] for ws in worlds.values() for w in ws)
    # windows without words are left out, and only those (60-s streams: 0, 12, 24, 36; 90 s: 0 .. 60 and 66; the
    # stage-2 quiet stream's at 12 s has none)
    windows = {name: [r for _, r in iter_records(files[name])] for name in ("stage1", "stage2", "valid")}
    assert json.loads(build_settings_path(files["stage1"]).read_text())["drop_empty"] is True
    for name in ("stage1", "stage2"):
        expected = [(f"videos/train_{w['seed']}.mp4", a) for w in worlds[name]
                    for a, _, _ in window_bounds(0.0, w["seconds"])
                    if any(a <= e.second < a + 24 for e in events(w["seed"], w["seconds"], WorldConfig(**w["config"])))]
        assert [(r.video, r.video_start) for r in windows[name]] == expected
    assert (len(windows["stage1"]), len(windows["stage2"]), n["valid"]) == (2 * 4 + 7 + 4 + 4, 4 + 2 * 2 + 3 + 4, 4)
    # the previous text starts with the commentary, no title: inference starts with an empty previous text
    later = [r for r in windows["stage2"] if r.video == "videos/train_2.mp4" and r.video_start == 36.0][0]
    earlier = [e for e in events(2, 36) if e.second < 36]
    assert later.previous == " " + " ".join(e.text for e in earlier) and not later.title
    assert later.previous.startswith(" whistle! score zero")
    # the validation streams that choose the checkpoint: whole streams of the valid split, after the valid ones
    select = [r for _, r in iter_records(files["select"])]
    assert [r.video for r in select] == [f"videos/valid_{1_000_001 + i}.mp4" for i in range(3)]
    select_worlds = [w["config"] for w in json.loads((tmp_path / "select_world.json").read_text())]
    assert select_worlds[1]["density"] == 0.1 and select_worlds[2]["whistle_rate"] == 1 / 60
    # the repair stage's pool: whole default-world train streams from pool_first on (no stage takes them), the
    # second with a whistle every 100 s on average, no title
    pool = [r for _, r in iter_records(files["pool"])]
    assert [r.video for r in pool] == ["videos/train_20.mp4", "videos/train_21.mp4"] and not any(r.title for r in pool)
    pool_worlds = [w["config"] for w in json.loads((tmp_path / "pool_world.json").read_text())]
    assert pool_worlds == [json.loads(json.dumps(WorldConfig().__dict__)),
                           json.loads(json.dumps(replace(WorldConfig(), whistle_rate=1 / 100).__dict__))]
    with pytest.raises(ValueError, match="pool_first must be >= 12"):
        dataset.training_specs(replace(spec, pool_first=11))
    # gap windows: 16 s ending with each call whose previous call is >= 10 s back, in every stream of the stage
    for name in ("stage1", "stage2"):
        gaps = [r for _, r in iter_records(files[f"{name}_gaps"])]
        expected = []
        for w in worlds[name]:
            seconds = [e.second for e in events(w["seed"], w["seconds"], WorldConfig(**w["config"]))]
            expected += [(f"videos/train_{w['seed']}.mp4", b + 1 - 16.0, b + 1.0)
                         for a, b in itertools.pairwise(seconds) if b - a >= 10 and b >= 15]
        assert [(r.video, r.video_start, r.video_end) for r in gaps] == expected
        assert json.loads(build_settings_path(files[f"{name}_gaps"]).read_text())["window"] == 16
    assert sum(len([r for _, r in iter_records(files[f"{s}_gaps"])]) for s in ("stage1", "stage2")) >= 4
    # goal windows: 16 s ending with each goal or black bar less than 16 s after a goal, with the last call less
    # than 16 s after each goal, and with every call 10 to 23 s after the latest goal (no whistle between)
    tails = late = 0
    for name in ("stage1", "stage2"):
        goals = [r for _, r in iter_records(files[f"{name}_goals"])]
        expected = []
        for w in worlds[name]:
            evs = list(events(w["seed"], w["seconds"], WorldConfig(**w["config"])))
            ends = set()
            for i, e in enumerate(evs):
                before = [p for p in evs[:i] if e.second - p.second < 16]
                goal_seconds = [p.second for p in before if p.label == "black ball"]
                if (e.colour == "black" and goal_seconds
                        and not any(p.label == WHISTLE and p.second > goal_seconds[-1] for p in before)):
                    ends.add(e.second)
                if e.label == "black ball":  # this goal's calls: those before the next whistle, < 16 s on
                    after = list(itertools.takewhile(lambda p: p.label != WHISTLE, evs[i + 1:]))
                    ends.update([p.second for p in after if p.second - e.second < 16][-1:])
                # any call 10 to 23 s after the latest goal, no whistle between
                latest = next((p for p in reversed(evs[:i]) if p.label in ("black ball", WHISTLE)), e)
                if WHISTLE not in (e.label, latest.label) and 10 <= e.second - latest.second < 24:
                    ends.add(e.second)
            colours = {e.second: e.colour for e in evs}
            goal_at = [e.second for e in evs if e.label == "black ball"]
            tails += sum(colours[t] != "black" for t in ends if t >= 15)
            late += sum(16 <= t - max(g for g in goal_at if g < t) < 24 for t in ends if t >= 15)
            expected += [(f"videos/train_{w['seed']}.mp4", t + 1 - 16.0, t + 1.0) for t in sorted(ends) if t >= 15]
        assert [(r.video, r.video_start, r.video_end) for r in goals] == expected
        assert json.loads(build_settings_path(files[f"{name}_goals"]).read_text())["window"] == 16
    assert sum(len([r for _, r in iter_records(files[f"{s}_goals"])]) for s in ("stage1", "stage2")) >= 2
    assert tails >= 1  # some end with a call that is not black (a goal's last call, or one 10 to 23 s on)
    assert late >= 1  # some end 16 to 23 s after a goal: only its call is left in the window, not its frames
    # reset-goal windows (stage 1 only): 16 s ending with each call less than 16 s after the first goal since a
    # whistle, when that goal is at most 5 s after the whistle, cut from stage 1's streams, then from the
    # whistle-and-goal streams (train seeds 10 and 11, after every other stage's), whose 24-s windows no stage has
    busy = json.loads((tmp_path / "stage1_resets_streams_world.json").read_text())
    assert [w["seed"] for w in busy] == [10, 11]
    assert all(0.3 <= w["config"]["density"] <= 0.6 and 1 / 30 <= w["config"]["whistle_rate"] <= 1 / 12 for w in busy)
    assert not {w["seed"] for w in busy} & {w["seed"] for ws in worlds.values() for w in ws}
    expected = [(f"videos/train_{w['seed']}.mp4", t + 1 - 16.0, t + 1.0) for w in worlds["stage1"] + busy
                for t in _reset_goal_call_seconds(events(w["seed"], w["seconds"], WorldConfig(**w["config"])), 16, 5)
                if t >= 15]
    assert [(r.video, r.video_start, r.video_end) for _, r in iter_records(files["stage1_resets"])] == expected
    assert len(expected) >= 2 and {v for v, _, _ in expected} & {f"videos/train_{w['seed']}.mp4" for w in busy}
    assert json.loads(build_settings_path(files["stage1_resets"]).read_text())["window"] == 16
    # the demo recipe's stages train on exactly these files (stage 1 also on its reset-goal windows)
    for stage in ("stage1", "stage2"):
        config = yaml.safe_load((Path(__file__).parents[1] / "configs" / f"demo_{stage}.yaml").read_text())
        kinds = ("", "_gaps", "_goals", "_resets") if stage == "stage1" else ("", "_gaps", "_goals")
        assert config["train_annotation_paths"] == [files[stage + kind].name for kind in kinds]
        assert config["eval_annotation_paths"] == [files["valid"].name]
    # the repair stage trains on stage 2's windows (train_demo.sh adds the hard calls' windows after them)
    repair = yaml.safe_load((Path(__file__).parents[1] / "configs" / "demo_repair.yaml").read_text())
    assert repair["train_annotation_paths"] == [files["stage2"].name, files["stage2_gaps"].name,
                                                files["stage2_goals"].name]


def _reset_goal_call_seconds(evs, rounds, within):
    """Oracle of ``dataset.reset_goal_records``, per call: its latest whistle, the first goal since, the gaps."""
    evs = list(evs)
    out = []
    for i, e in enumerate(evs):
        whistles = [p for p in evs[:i] if p.label == WHISTLE]
        if e.label == WHISTLE or not whistles:
            continue
        goals = [p for p in evs[:i + 1] if p.second > whistles[-1].second and p.label == "black ball"]
        if goals and goals[0].second - whistles[-1].second <= within and e.second - goals[0].second < rounds:
            out.append(e.second)
    return out


def test_reset_goal_windows_end_with_each_call_just_after_a_goal_that_follows_a_whistle_closely():
    specs = dataset.whistle_goal_specs("train", 2, 10.0, first=500)
    assert all(0.3 <= s.config.density <= 0.6 and 1 / 30 <= s.config.whistle_rate <= 1 / 12 for s in specs)
    assert specs == dataset.whistle_goal_specs("train", 2, 10.0, first=500)  # a pure function of the seed
    carried = 0
    for spec in specs:
        evs = list(events(spec.seed, spec.seconds, spec.config))
        recs = dataset.reset_goal_records(spec, rounds=16, goal_within=5)
        ends = [t for t in _reset_goal_call_seconds(evs, 16, 5) if t >= 15]
        assert [(r.video_start, r.video_end) for r in recs] == [(t - 15.0, t + 1.0) for t in ends] and len(ends) >= 10
        by_second = {e.second: e for e in evs}
        for rec in recs:
            win, _, _ = next(windows_of(rec, window=16, stride=16))
            assert " ".join(w.text for w in win.words).endswith(by_second[int(rec.video_end) - 1].text)
            turns = " ".join(w.text for w in win.words)
            assert "black ball" in turns  # the goal is in the window (and in its vision window for 16 s)
            # the goal's score is one more than the whistle's zero: one, or more after later goals
            assert by_second[int(rec.video_end) - 1].score >= 1
            # when the whistle is in the turns too, the previous text may end with the score before it
            carried += "whistle!" in turns and win.previous.rsplit("score ", 1)[-1].split()[:1] not in ([], ["zero"])
        # every record is a cut of the whole stream's, without what follows its end
        whole = dataset.record(spec, titled=False)
        assert all(rec.words == [w for w in whole.words if w.end <= rec.video_end] for rec in recs)
    assert carried >= 1  # some windows' previous text ends with the score before the whistle, not zero
    # in the default world the context is rare: the held-out set's 380 minutes hold 144 such calls past their first
    # 15 s (after 31 goals)
    held = [dataset.reset_goal_records(s, 16, 5) for s in dataset.HELDOUT.specs()]
    assert sum(len(r) for r in held) == 144


def test_the_demo_recipe_weighs_the_score_words_then_also_every_call_word_each_one_demo_token():
    from transformers import AutoTokenizer

    from streaming_vlm.train.trainer import word_token_weights

    scores = [score_word(n) for n in range(DEFAULT_WORLD.max_score + 1)]  # every score a demo stream can hold
    tokenizer = AutoTokenizer.from_pretrained(Path(__file__).parents[1] / "streaming_vlm" / "assets" / "demo_model")
    calls = [f"{c} {s}!" for c in COLOURS for s in SHAPES] + [f"{WHISTLE}!"]  # every event a call can name
    said = {tokenizer.encode(f" black ball! score {w}", add_special_tokens=False)[-1] for w in scores}
    # every token of a call's name but its "!", in the context a stream holds it (after the previous call)
    named = {t for call in calls for t in tokenizer.encode(f" score two {call}", add_special_tokens=False)[2:-1]}
    assert len(said) == len(scores) and len(named) == len(COLOURS) + len(SHAPES) + 1 and not said & named
    heavy = {}
    for stage in ("stage1", "stage2"):
        config = yaml.safe_load((Path(__file__).parents[1] / "configs" / f"demo_{stage}.yaml").read_text())
        assert config["word_loss_weight"] > 1
        weights = word_token_weights(tokenizer, config["weighted_words"], config["word_loss_weight"], len(tokenizer))
        heavy[stage] = set((weights > 1).nonzero().squeeze(-1).tolist())
    # stage 1: exactly the tokens a call's score is written with; stage 2 (the annealing): those and exactly the
    # tokens a call names its event with, so a goal called as something else (or missed) weighs as much
    assert heavy["stage1"] == said
    assert heavy["stage2"] == said | named


def test_a_gap_window_ends_with_the_call_and_holds_the_last_score_in_its_previous_text_as_the_cache_does():
    spec = dataset.reset_specs("train", 1, 10.0, first=500)[0]
    assert spec.config.whistle_rate == 1 / 60 and 0.04 <= spec.config.density <= 0.15
    evs = list(events(spec.seed, spec.seconds, spec.config))
    recs = dataset.gap_records(spec, rounds=16, min_gap=10)
    long_gaps = 0
    for rec in recs:
        i = next(i for i, e in enumerate(evs) if e.second + 1 == rec.video_end)
        call, before = evs[i], evs[i - 1]
        assert call.second - before.second >= 10 and rec.video_end - rec.video_start == 16
        assert " ".join(w.text for w in rec.words if rec.video_start < w.end <= rec.video_end).endswith(call.text)
        win, _, _ = next(windows_of(rec, window=16, stride=16))
        assert (win.video_start, win.video_end) == (rec.video_start, rec.video_end)
        if call.second - before.second >= 16:  # the last score has left the window's turns for its previous text
            long_gaps += 1
            assert win.previous.endswith(" " + before.text) and " ".join(w.text for w in win.words) == call.text
    assert long_gaps >= 3 and len(recs) >= 10
    # the records stop at their end: the windows are those of the whole stream's record cut there
    whole = dataset.record(spec, titled=False)
    for rec in recs + dataset.goal_records(spec, 16, (10, 23)):
        assert rec.words and rec.words[-1].end <= rec.video_end < whole.words[-1].end
        assert rec.words == [w for w in whole.words if w.end <= rec.video_end]
        uncut = replace(whole, video_start=rec.video_start, video_end=rec.video_end)
        assert list(windows_of(rec, window=16, stride=16)) == list(windows_of(uncut, window=16, stride=16))
    # a whistle every minute on average: some of those long gaps follow a whistle, the score to carry is its zero
    assert any(evs[i - 1].score == 0 and evs[i].kind != WHISTLE and evs[i].second + 1 in {r.video_end for r in recs}
               for i in range(1, len(evs)))


def test_synth_cli(tmp_path, capsys):
    assert cli_main(["synth", str(tmp_path / "one"), "--seed", "3", "--minutes", "0.2", "--quiet"]) == 0
    assert (tmp_path / "one" / "videos" / "stream_3.mp4").is_file()
    assert validate_file(tmp_path / "one" / "stream.jsonl", dataset_path=tmp_path / "one").ok
    assert json.loads((tmp_path / "one" / "stream_world.json").read_text())[0]["config"]["kickoff"] is True
    assert cli_main(["synth", str(tmp_path / "nk"), "--seed", "3", "--minutes", "0.2", "--no-kickoff", "--quiet"]) == 0
    assert json.loads((tmp_path / "nk" / "stream_world.json").read_text())[0]["config"]["kickoff"] is False
    assert cli_main(["synth", str(tmp_path / "x"), "--density", "0.999", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["streaming-vlm: error: density and whistle_rate must be probabilities with a sum <= 1"]
    assert not (tmp_path / "x" / "stream.jsonl").exists()
    assert cli_main(["synth", str(tmp_path / "f"), "--split", "heldout", "--first", "2", "--minutes", "0.05",
                     "--quiet"]) == 0
    assert [r.video for _, r in iter_records(tmp_path / "f" / "heldout.jsonl")] == ["videos/heldout_3000002.mp4"]


def test_synth_cli_cuts_the_training_windows_it_is_told_to(tmp_path, capsys, monkeypatch):
    written = []
    monkeypatch.setattr(dataset, "make_training_set", lambda out, spec, config, progress, workers: written.append(
        (out, spec)) or {})
    assert cli_main(["synth", str(tmp_path / "w"), "--training-set", "--window", "16", "--stride", "8"]) == 0
    assert cli_main(["synth", str(tmp_path / "d"), "--training-set", "--minutes", "3"]) == 0
    assert written == [(str(tmp_path / "w"), replace(dataset.TrainingSetSpec(), minutes=10.0, window=16.0,
                                                      stride=8.0)),
                       (str(tmp_path / "d"), replace(dataset.TrainingSetSpec(), minutes=3.0))]
    capsys.readouterr()
    # without --training-set they have nothing to cut: refused before anything is written
    assert cli_main(["synth", str(tmp_path / "s"), "--split", "test", "--window", "16", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "streaming-vlm: error: --window and --stride cut the training set's windows: use them with --training-set"]
    assert not (tmp_path / "s").exists()
    for flag in ("--window", "--stride"):
        with pytest.raises(SystemExit) as exc:
            cli_main(["synth", str(tmp_path / "z"), "--training-set", flag, "0"])
        assert exc.value.code == 2 and f"argument {flag}: must be a positive number" in capsys.readouterr().err
    assert not (tmp_path / "z").exists() and len(written) == 2
    # the help states the spec's defaults
    spec = dataset.TrainingSetSpec()
    with pytest.raises(SystemExit):
        cli_main(["synth", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"main training windows (default {spec.window:g})" in help_text
    assert f"between their starts (default {spec.stride:g})" in help_text
