"""Tests for the annotation data tools: parsing and writing records, seek indexes, validation, the window
builder and the ``streaming-vlm data`` commands. Every file is written here; nothing needs a model or video."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from streaming_vlm.cli import main
from streaming_vlm.data.annotations import (
    QA,
    AnnotationError,
    StreamRecord,
    Word,
    build_seek_index,
    iter_records,
    load_seek_index,
    parse_record,
    read_record_at,
    record_to_json,
    resolve_video,
    seeks_path,
)
from streaming_vlm.data.validate import validate_file
from streaming_vlm.data.windows import (
    build_settings_path,
    build_windows,
    check_previous_kept,
    keep_ends,
    window_bounds,
)


def conversation(video="clip.mp4", start=0.0, end=60.0, words=(), qa=None, previous=None, **extra) -> list:
    text = {"type": "text", "text": "Commentate."}
    if previous is not None:
        text["previous"] = previous
    text.update(extra)
    stream = {"type": "text_stream", "text_stream": [list(w) for w in words]}
    if qa is not None:
        stream["qa_stream"] = [list(q) for q in qa]
    return [{"role": "user", "content": [{"type": "video", "video": video, "video_start": start, "video_end": end},
                                         text]},
            {"role": "assistant", "content": [stream]}]


def write_lines(path: Path, lines: list) -> Path:
    """Each item: bytes or a str written as is (no newline added), else JSON plus a newline."""
    with open(path, "wb") as f:
        for line in lines:
            if isinstance(line, str):
                line = line.encode("utf-8")
            elif not isinstance(line, bytes):
                line = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
            f.write(line)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# parse_record / record_to_json


def test_parse_inf_stream_record_with_qa():
    obj = conversation(start=12, end=36.5, previous="Earlier talk.",
                       words=[(12.5, 13.0, "Hello"), (13, 14.25, "world")],
                       qa=[[0, 20.0, "Who scored?", "Nobody yet."]])
    r = parse_record(obj, "f.jsonl:3")
    assert r == StreamRecord(video="clip.mp4", video_start=12.0, video_end=36.5, previous="Earlier talk.",
                             words=[Word(12.5, 13.0, "Hello"), Word(13.0, 14.25, "world")],
                             qa=[QA(20.0, "Who scored?", "Nobody yet.")], title="", source="f.jsonl:3")
    assert isinstance(r.video_start, float)
    back = record_to_json(r)
    assert parse_record(json.loads(json.dumps(back)), r.source) == r
    assert back[0]["content"][1] == {"type": "text", "text": "", "previous": "Earlier talk."}
    assert back[1]["content"][0]["text_stream"] == [[12.5, 13.0, "Hello"], [13.0, 14.25, "world"]]
    assert back[1]["content"][0]["qa_stream"] == [[20.0, 20.0, "Who scored?", "Nobody yet."]]


def test_parse_livecc_record_title_category_and_missing_types():
    obj = [{"role": "user", "content": [
        {"video": "/abs/v.mp4", "video_start": 0.0, "video_end": 8.0},  # no "type": found by its video key
        {"type": "text", "text": "Describe.", "title": "Cooking pasta", "category": "Howto & Style"}]},
        {"role": "assistant", "content": [{"text_stream": [[0.1, 0.4, "Boil"], [0.5, 0.9, "water"]]}]}]
    r = parse_record(obj, "livecc.jsonl:1")
    assert (r.video, r.title, r.previous, r.qa) == ("/abs/v.mp4", "Cooking pasta", "", [])
    assert [w.text for w in r.words] == ["Boil", "water"]
    back = record_to_json(r)
    assert parse_record(back, r.source) == r
    assert "previous" not in back[0]["content"][1] and back[0]["content"][1]["title"] == "Cooking pasta"
    assert "qa_stream" not in back[1]["content"][0]


def test_previous_on_any_user_element_and_defaults():
    obj = conversation(words=[])
    obj[0]["content"][0]["previous"] = "on the video element"
    assert parse_record(obj).previous == "on the video element"
    bare = [{"role": "user", "content": [{"type": "video", "video": "v.mp4", "video_start": 0, "video_end": 1}]}]
    r = parse_record(bare)
    assert (r.previous, r.words, r.qa, r.title, r.source) == ("", [], [], "", "")
    assert parse_record(record_to_json(r)) == r


def _bad_records() -> dict[str, object]:
    def with_video(**changes):
        obj = conversation(words=[(1, 2, "a")])
        obj[0]["content"][0].update(changes)
        return obj

    def without(key):
        obj = conversation(words=[(1, 2, "a")])
        del obj[0]["content"][0][key]
        return obj

    return {
        "dict": {"role": "user"},
        "empty list": [],
        "list of strings": ["user", "assistant"],
        "no user video": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "user content is a string": [{"role": "user", "content": "a video"}],
        "video only in assistant": [{"role": "assistant", "content": [{"type": "video", "video": "v.mp4",
                                                                        "video_start": 0, "video_end": 1}]}],
        "no video_start": without("video_start"),
        "no video_end": without("video_end"),
        "string start": with_video(video_start="12"),
        "bool end": with_video(video_end=True),
        "nan end": with_video(video_end=math.nan),
        "end == start": with_video(video_start=5.0, video_end=5.0),
        "end < start": with_video(video_start=5.0, video_end=4.0),
        "video path not a string": with_video(video=7),
        "empty video path": with_video(video=""),
        "previous not a string": conversation(previous=["a", "b"]),
        "text_stream not a list": [conversation()[0], {"role": "assistant", "content": [
            {"type": "text_stream", "text_stream": "Hello world"}]}],
        "word of two items": conversation(words=[(1, 2)]),
        "word with string time": conversation(words=[(1, "2", "a")]),
        "word with number text": conversation(words=[(1, 2, 3)]),
        "word as a dict": [conversation()[0], {"role": "assistant", "content": [
            {"text_stream": [{"start": 1, "end": 2, "word": "a"}]}]}],
        "qa of three items": conversation(qa=[(0, 1.0, "q?")]),
        "qa with string time": conversation(qa=[(0, "1.0", "q?", "a")]),
        "qa with missing answer": conversation(qa=[(0, 1.0, "q?", None)]),
        "qa_stream not a list": [conversation()[0], {"role": "assistant", "content": [
            {"text_stream": [], "qa_stream": {"q": "a"}}]}],
    }


@pytest.mark.parametrize("case", list(_bad_records()))
def test_malformed_records_raise_one_line_errors(case):
    obj = _bad_records()[case]
    with pytest.raises(AnnotationError) as info:
        parse_record(obj, "data/train.jsonl:7")
    message = str(info.value)
    assert message.startswith("data/train.jsonl:7: ") and len(message) > len("data/train.jsonl:7: ")
    assert "\n" not in message and len(message) < 300
    assert isinstance(info.value, ValueError)


def test_resolve_video(tmp_path, monkeypatch):
    (tmp_path / "videos").mkdir()
    video = tmp_path / "videos" / "a.mp4"
    video.write_bytes(b"")
    r = StreamRecord(video="videos/a.mp4", video_start=0.0, video_end=1.0, source="x.jsonl:2")
    monkeypatch.delenv("DATASET_PATH", raising=False)
    assert resolve_video(r, tmp_path) == video
    monkeypatch.setenv("DATASET_PATH", str(tmp_path))
    assert resolve_video(r) == video
    absolute = StreamRecord(video=str(video), video_start=0.0, video_end=1.0)
    assert resolve_video(absolute, "/nowhere") == video
    monkeypatch.chdir(tmp_path)
    assert resolve_video(r, "/nowhere") == Path("videos/a.mp4")  # relative to the working directory first
    missing = StreamRecord(video="videos/b.mp4", video_start=0.0, video_end=1.0, source="x.jsonl:2")
    with pytest.raises(AnnotationError, match=r"^x\.jsonl:2: video not found: tried videos/b\.mp4, .*videos/b\.mp4$"):
        resolve_video(missing, tmp_path)
    monkeypatch.delenv("DATASET_PATH")
    with pytest.raises(AnnotationError, match="DATASET_PATH"):
        resolve_video(missing)


# ---------------------------------------------------------------------------------------------------------------------
# files and seek indexes


def test_seeks_path_naming():
    assert seeks_path("d/live_with_seeks.jsonl") == Path("d/live_seeks.jsonl")
    assert seeks_path(Path("/x/Inf-Stream-Train_with_seeks.jsonl")) == Path("/x/Inf-Stream-Train_seeks.jsonl")
    assert seeks_path("d/windows.jsonl") == Path("d/windows_seeks.jsonl")
    assert seeks_path("d/with_seeks.json") == Path("d/with_seeks_seeks.jsonl")


@pytest.fixture
def mixed_file(tmp_path) -> Path:
    good = conversation(words=[(1, 2, "café"), (2, 3, "足球⚽")], previous="¿qué?", title="Ünïcode")
    return write_lines(tmp_path / "mixed_with_seeks.jsonl", [
        good,
        "\n",
        conversation(video="b.mp4", start=3, end=9, words=[(4, 5, "x")], qa=[(0, 6, "q", "a")]),
        "   \n",
        "{not json\n",
        json.dumps(conversation(video="crlf.mp4")) + "\r\n",
        b'["\xff\xfe not UTF-8"]\n',
        {"not": "a conversation"},
        json.dumps(conversation(video="last.mp4", words=[(1, 2, "end")])),  # no final newline
    ])


def test_iter_records_line_numbers_and_errors(mixed_file):
    items = list(iter_records(mixed_file))
    assert [n for n, _ in items] == [1, 3, 5, 6, 7, 8, 9]
    kinds = [type(item).__name__ for _, item in items]
    assert kinds == ["StreamRecord", "StreamRecord", "AnnotationError", "StreamRecord", "AnnotationError",
                     "AnnotationError", "StreamRecord"]
    assert str(items[2][1]).startswith(f"{mixed_file}:5: malformed JSON")
    assert str(items[5][1]).startswith(f"{mixed_file}:8: not a list of conversation turns")
    assert items[0][1].source == f"{mixed_file}:1" and items[0][1].words[1].text == "足球⚽"
    assert items[3][1].video == "crlf.mp4"


def test_seek_index_round_trip(mixed_file):
    out = build_seek_index(mixed_file)
    assert out == mixed_file.with_name("mixed_seeks.jsonl")
    offsets = load_seek_index(mixed_file)
    assert json.loads(out.read_text()) == offsets
    items = list(iter_records(mixed_file))
    assert len(offsets) == len(items) == 7
    data = mixed_file.read_bytes()
    for offset, (number, item) in zip(offsets, items, strict=True):
        assert offset == 0 or data[offset - 1:offset] == b"\n"
        if isinstance(item, StreamRecord):
            assert read_record_at(mixed_file, offset, number) == item
        else:
            with pytest.raises(AnnotationError) as info:
                read_record_at(mixed_file, offset, number)
            assert str(info.value) == str(item)
    with pytest.raises(AnnotationError, match="not at a line start"):
        read_record_at(mixed_file, offsets[1] + 3)
    custom = build_seek_index(mixed_file, mixed_file.parent / "custom.json")
    assert json.loads(custom.read_text()) == offsets


def test_load_seek_index_errors(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", [conversation(), conversation()])
    with pytest.raises(FileNotFoundError, match=r"run: streaming-vlm data index .*a\.jsonl"):
        load_seek_index(path)
    build_seek_index(path)
    write_lines(path, [conversation()])  # shorter now: the index is stale
    with pytest.raises(AnnotationError, match="stale"):
        load_seek_index(path)
    seeks_path(path).write_text('{"offsets": [0]}')
    with pytest.raises(AnnotationError, match="not a JSON array"):
        load_seek_index(path)


# ---------------------------------------------------------------------------------------------------------------------
# validation


@pytest.fixture
def problem_file(tmp_path) -> Path:
    (tmp_path / "clip.mp4").write_bytes(b"")
    clip = {"video": "clip.mp4", "start": 10.0, "end": 20.0}
    return write_lines(tmp_path / "problems.jsonl", [
        conversation(**clip, words=[(10.5, 11.0, "fine"), (11.0, 11.0, "zero-length")], qa=[(0, 15.0, "q", "a")]),
        "{broken\n",
        "\n",
        conversation(video="nope.mp4", start=10.0, end=20.0, words=[(12, 13, "a")]),
        # outside: ends before the start (1), starts after the end (1); ending exactly at the start is inside
        conversation(**clip, words=[(1, 2, "early"), (9.0, 10.0, "edge"), (19.5, 20.5, "over"), (25, 26, "late")]),
        # non-monotonic: starts before the previous start (1), ends before its own start (1)
        conversation(**clip, words=[(11, 12, "a"), (10.5, 11.5, "b"), (13, 12.5, "c"), (14, 15, "d")]),
        conversation(**clip, qa=[(0, 5.0, "q1", "a"), (0, 15.0, "q2", "a"), (0, 25.0, "q3", "a")]),
        [{"role": "user", "content": []}],
    ])


def test_validate_counts(problem_file, monkeypatch):
    monkeypatch.delenv("DATASET_PATH", raising=False)
    report = validate_file(problem_file, dataset_path=problem_file.parent)
    counts = (report.records, report.malformed, report.missing_videos, report.words_outside, report.non_monotonic,
              report.qa_outside)
    assert counts == (5, 2, 1, 2, 2, 2)
    assert not report.ok and report.problem_count == 6
    lines = [p.split(": ")[0] for p in report.problems]
    assert lines == [f"{problem_file}:{n}" for n in (2, 4, 5, 6, 7, 8)]
    summary = report.lines()
    assert summary[0] == (f"{problem_file}: 5 records, 2 malformed lines, 1 missing videos, 2 words outside the clip, "
                          "2 non-monotonic word times, 2 questions outside the clip: PROBLEMS")
    assert len(summary) == 7
    capped = validate_file(problem_file, dataset_path=problem_file.parent, max_problems=2)
    assert capped.problems == report.problems[:2] and capped.lines()[-1] == "  ... and 4 more"
    no_videos = validate_file(problem_file, check_videos=False)
    assert (no_videos.missing_videos, no_videos.problem_count) == (0, 5)
    monkeypatch.setenv("DATASET_PATH", str(problem_file.parent))
    assert validate_file(problem_file).missing_videos == 1


def test_validate_cli_exit_codes(problem_file, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DATASET_PATH", raising=False)
    root = str(problem_file.parent)
    assert main(["data", "validate", str(problem_file), "--dataset-path", root]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith(f"{problem_file}: 5 records, 2 malformed lines, 1 missing videos")
    assert len(out.splitlines()) == 7 and err == ""

    clean = write_lines(tmp_path / "clean.jsonl", [conversation(video="clip.mp4", words=[(1, 2, "ok")]), "\n"])
    assert main(["data", "validate", str(clean), "--dataset-path", root]) == 0
    out, _ = capsys.readouterr()
    assert out.strip().endswith(": ok")
    assert main(["data", "validate", str(clean)]) == 1  # the relative video is not found without a root
    capsys.readouterr()
    assert main(["data", "validate", str(clean), "--no-videos"]) == 0
    capsys.readouterr()

    assert main(["data", "validate", str(tmp_path / "absent.jsonl")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("streaming-vlm: error: ") and "absent.jsonl" in err
    assert main(["data", "validate", str(tmp_path)]) == 2  # a directory
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("streaming-vlm: error: ")


def test_index_cli(mixed_file, tmp_path, capsys):
    other = write_lines(tmp_path / "other.jsonl", [conversation(), conversation()])
    assert main(["data", "index", str(mixed_file), str(other)]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines() == [f"{mixed_file}: 7 records -> {tmp_path / 'mixed_seeks.jsonl'}",
                                f"{other}: 2 records -> {tmp_path / 'other_seeks.jsonl'}"]
    offsets = load_seek_index(other)
    assert offsets == [0, len(json.dumps(conversation())) + 1]
    assert main(["data", "index", str(tmp_path / "missing.jsonl")]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("streaming-vlm: error: ")


# ---------------------------------------------------------------------------------------------------------------------
# window builder

TOY_WORDS = [(0.5, 1.0, "a"), (11.0, 12.0, "b"), (12.0, 13.5, "c"), (23.0, 24.0, "d"), (30.0, 31.0, "e"),
             (35.5, 36.5, "f"), (47.0, 48.0, "g"), (59.0, 60.0, "h")]
TOY_QA = [(0, 20.0, "q1?", "a1"), (0, 40.0, "q2?", "a2")]


def toy(**changes) -> list:
    kwargs = {"video": "match.mp4", "start": 0, "end": 60, "words": TOY_WORDS, "qa": TOY_QA,
              "previous": "Earlier.", "title": "Match"}
    kwargs.update(changes)
    return conversation(**kwargs)


def read_windows(path: Path) -> list[StreamRecord]:
    items = [item for _, item in iter_records(path)]
    assert all(isinstance(item, StreamRecord) for item in items)
    return items


def test_window_bounds_and_tail_rule():
    assert window_bounds(0, 60) == [(0, 24, False), (12, 36, False), (24, 48, False), (36, 60, False)]
    assert window_bounds(0, 65) == window_bounds(0, 60)  # 5 s tail < stride/2: no tail window
    assert window_bounds(0, 66)[-1] == (42, 66, True) and len(window_bounds(0, 66)) == 5
    assert window_bounds(100, 130) == [(100, 124, False), (106, 130, True)]
    assert window_bounds(0, 10) == [(0, 10, True)]  # shorter than a window but >= stride/2: the whole video
    assert window_bounds(0, 5) == []
    assert window_bounds(0, 1.0, window=0.3, stride=0.1)[:3] == [(0, 0.3, False), (0.1, 0.4, False),
                                                                   (0.2, 0.5, False)]
    with pytest.raises(ValueError):
        window_bounds(0, 60, stride=0)


def test_overlap_windows_exact(tmp_path):
    src = write_lines(tmp_path / "long.jsonl", [toy()])
    stats = build_windows(src, tmp_path / "w.jsonl")
    assert (stats.inputs, stats.windows, stats.written, stats.resumed, stats.skipped, stats.tails) == (1, 4, 4, 0, 0, 0)
    windows = read_windows(tmp_path / "w.jsonl")
    assert [(w.video_start, w.video_end) for w in windows] == [(0, 24), (12, 36), (24, 48), (36, 60)]
    assert [[x.text for x in w.words] for w in windows] == [["a", "b", "c", "d"], ["c", "d", "e"], ["e", "f", "g"],
                                                            ["f", "g", "h"]]
    assert [w.previous for w in windows] == ["Match\nEarlier.", "Match\nEarlier. a b", "Match\nEarlier. a b c d",
                                             "Match\nEarlier. a b c d e"]
    assert [[q.question for q in w.qa] for w in windows] == [["q1?"], ["q1?"], ["q2?"], ["q2?"]]
    assert all(w.video == "match.mp4" and w.title == "Match" for w in windows)
    assert windows[0].words[0] == Word(0.5, 1.0, "a")
    assert stats.index == tmp_path / "w_seeks.jsonl"
    lengths = [len(line) for line in (tmp_path / "w.jsonl").read_bytes().splitlines(True)]
    assert load_seek_index(tmp_path / "w.jsonl") == [0, lengths[0], sum(lengths[:2]), sum(lengths[:3])]


def test_drop_empty_leaves_out_windows_with_nothing_to_supervise(tmp_path, capsys):
    # 12-s windows over 60 s: words only in the first, a question only in the last
    src = write_lines(tmp_path / "sparse.jsonl", [toy(words=[(1, 2, "a")], qa=[(0, 50.0, "q?", "x")])])
    kept = build_windows(src, tmp_path / "all.jsonl", window=12, stride=12)
    assert (kept.windows, kept.empty, kept.dropped) == (5, 4, 0)
    assert main(["data", "windows", str(src), str(tmp_path / "d.jsonl"), "--window", "12", "--stride", "12",
                 "--drop-empty"]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'd.jsonl'}: 2 windows (2 written, 0 already there, "
                                              "4 without words, 3 of them dropped, 0 tail windows)")
    dropped = build_windows(src, tmp_path / "d.jsonl", window=12, stride=12, drop_empty=True)  # resumes: all there
    assert (dropped.windows, dropped.resumed, dropped.empty, dropped.dropped) == (2, 2, 4, 3)
    assert [(w.video_start, [x.text for x in w.words], [q.question for q in w.qa])
            for w in read_windows(tmp_path / "d.jsonl")] == [(0, ["a"], []), (48, [], ["q?"])]
    assert len(load_seek_index(tmp_path / "d.jsonl")) == 2


def test_previous_composition_without_title_or_previous(tmp_path):
    words = [(1, 2, " Hello"), (3, 4, "there "), (13, 14, "later")]
    src = write_lines(tmp_path / "plain.jsonl", [conversation(start=0, end=24, words=words)])
    build_windows(src, tmp_path / "w.jsonl", window=12, stride=12)
    # each earlier word keeps the leading space it has in its assistant turn (the tokens the cache retires)
    assert [w.previous for w in read_windows(tmp_path / "w.jsonl")] == ["", " Hello there"]
    src = write_lines(tmp_path / "titled.jsonl", [conversation(start=0, end=24, words=words, title="T")])
    build_windows(src, tmp_path / "t.jsonl", window=12, stride=12)
    assert [w.previous for w in read_windows(tmp_path / "t.jsonl")] == ["T", "T Hello there"]


def test_livecc_variant(tmp_path, capsys):
    src = write_lines(tmp_path / "clips.jsonl", [toy(start=12, end=36), toy(video="other.mp4", start=0, end=30,
                                                                          previous=None, title="Other", qa=None)])
    assert main(["data", "windows", str(src), str(tmp_path / "l.jsonl"), "--variant", "livecc"]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'l.jsonl'}: 2 windows (2 written")
    first, second = read_windows(tmp_path / "l.jsonl")
    assert (first.video_start, first.video_end, first.previous) == (12.0, 36.0, "Match\nEarlier. a b")
    assert [w.text for w in first.words] == ["c", "d", "e"] and [q.question for q in first.qa] == ["q1?"]
    assert (second.video_start, second.video_end, second.previous) == (0.0, 30.0, "Other")
    assert [w.text for w in second.words] == ["a", "b", "c", "d"] and second.qa == []
    assert seeks_path(tmp_path / "l.jsonl").exists()


def long_inputs(tmp_path) -> Path:
    return write_lines(tmp_path / "many.jsonl", [
        toy(),
        "not json at all\n",
        toy(video="b.mp4", end=66, title=None),  # adds a tail window
        toy(video="c.mp4", end=30, previous=None),  # one regular window and a tail window
        "\n",
        toy(video="d.mp4", start=3, end=5),  # too short: no window
        toy(video="e.mp4", end=90,  # 6 regular windows (0..60) and a tail window [66, 90]
            words=[(w[0] + 30, w[1] + 30, w[2] + "²") for w in TOY_WORDS]),
    ])


def test_builder_skips_malformed_and_is_deterministic(tmp_path):
    src = long_inputs(tmp_path)
    a = build_windows(src, tmp_path / "a.jsonl")
    build_windows(src, tmp_path / "b.jsonl")
    assert (a.inputs, a.skipped, a.windows, a.tails) == (5, 1, 4 + 5 + 2 + 0 + 7, 3)
    assert a.errors and a.errors[0].startswith(f"{src}:2: malformed JSON")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert a.empty == sum(not w.words for w in read_windows(tmp_path / "a.jsonl")) > 0
    again = build_windows(src, tmp_path / "a.jsonl", resume=False)
    assert again.written == again.windows and (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


@pytest.mark.parametrize("keep_lines", [0, 1, 4, 7, 17, 18])
@pytest.mark.parametrize("partial", [False, True])
def test_builder_resumes_to_identical_bytes(tmp_path, keep_lines, partial):
    src = long_inputs(tmp_path)
    build_windows(src, tmp_path / "clean.jsonl")
    clean = (tmp_path / "clean.jsonl").read_bytes()
    lines = clean.splitlines(True)
    assert len(lines) == 18
    cut = b"".join(lines[:keep_lines])
    if partial and keep_lines < len(lines):
        cut += lines[keep_lines][: len(lines[keep_lines]) // 2]  # interrupted mid-line
    (tmp_path / "out.jsonl").write_bytes(cut)
    stats = build_windows(src, tmp_path / "out.jsonl")
    assert (tmp_path / "out.jsonl").read_bytes() == clean
    assert (stats.resumed, stats.written, stats.windows) == (keep_lines, 18 - keep_lines, 18)
    assert seeks_path(tmp_path / "out.jsonl").read_bytes() == seeks_path(tmp_path / "clean.jsonl").read_bytes()


def test_resume_refuses_other_settings(tmp_path, capsys):
    src = long_inputs(tmp_path)
    out = tmp_path / "out.jsonl"
    build_windows(src, out)
    before = out.read_bytes()
    with pytest.raises(ValueError, match="differs"):
        build_windows(src, out, stride=6)
    assert out.read_bytes() == before
    assert main(["data", "windows", str(src), str(out), "--stride", "6"]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("streaming-vlm: error: ") and "resume" in err
    assert main(["data", "windows", str(src), str(out), "--stride", "6", "--no-resume"]) == 0
    assert out.read_bytes() != before
    build_windows(src, out, resume=False)
    assert out.read_bytes() == before
    one = write_lines(tmp_path / "one.jsonl", [toy()])
    with pytest.raises(ValueError, match="gives only 4"):
        build_windows(one, out)
    with pytest.raises(ValueError, match="variant"):
        build_windows(src, tmp_path / "x.jsonl", variant="sliding")
    assert main(["data", "windows", str(tmp_path / "absent.jsonl"), str(tmp_path / "y.jsonl")]) == 2
    assert not (tmp_path / "y.jsonl").exists()


# ---------------------------------------------------------------------------------------------------------------------
# window builder: previous text kept only at its ends (O(N) output, the same training tokens)

ODD_WORDS = ["Goal!", "it's", "'s", "3.5", "1,000", "12th", "2-1", "(2)", "naïve", "nai\u0308ve", "e\u0301",
             "\u0301x", "東京", "⚽⚽", "🏳️\u200d🌈", "Ω", "ﬁne", "¿qué?", "مرحبا", "—", "...", "C++", "$8", "#6",
             "a\u00a0b", "tab\there", "line\nbreak", "two  spaces", "end \n", "\u200bzw", "<|im_end|>",
             "x<|im_end|>y", "  padded ", "", "   "]
PLAIN_WORDS = "the ball goes wide and the keeper saves it what a shot from the edge of the box".split()


def long_transcript(seconds: float, seed: int = 0, odd: bool = True, **extra) -> list:
    """A record with 2.5 words per second over ``seconds``: plain words, and with ``odd`` one odd word in four
    (punctuation, digits, unicode, inner whitespace, special-token text, blanks)."""
    import random

    rng = random.Random(seed)
    n = int(seconds * 2.5)
    words = [(round(i * 0.4, 3), round(i * 0.4 + 0.3, 3),
              rng.choice(ODD_WORDS if odd and rng.random() < 0.25 else PLAIN_WORDS)) for i in range(n)]
    return conversation(video="long.mp4", start=0, end=seconds, words=words, **extra)


@pytest.fixture(scope="module")
def tokenizers():
    """The tiny tokenizer, the same with Qwen2's NFC normalizer, and the demo model's tokenizer."""
    from tokenizers import normalizers
    from transformers import AutoTokenizer

    from streaming_vlm.models import build_tiny_tokenizer

    tiny = build_tiny_tokenizer()
    nfc = build_tiny_tokenizer()
    nfc.backend_tokenizer.normalizer = normalizers.NFC()
    demo = AutoTokenizer.from_pretrained(Path(__file__).resolve().parents[1] / "streaming_vlm/assets/demo_model")
    assert nfc("nai\u0308ve").input_ids == nfc("naïve").input_ids != tiny("nai\u0308ve").input_ids
    return {"tiny": tiny, "tiny+NFC": nfc, "demo": demo}


@pytest.mark.parametrize("kept", [(24, 40), (3, 5), (0, 7)])
def test_kept_ends_give_training_the_same_previous_tokens(tmp_path, tokenizers, kept):
    from streaming_vlm.data.sample import SampleBuilder, SampleConfig

    sink, window = kept
    records = [long_transcript(400, seed=1, title="Final: Reds vs. Blues (2-1) — naïve ⚽",
                               previous="Earlier:\n\n  first half,  two goals.\tEnd."),
               long_transcript(300, seed=2), long_transcript(120, seed=3, odd=False, title="Short")]
    src = write_lines(tmp_path / "long.jsonl", records)
    full = build_windows(src, tmp_path / "full.jsonl", text_sink=None, text_window=None)
    cut = build_windows(src, tmp_path / "cut.jsonl", text_sink=sink, text_window=window)
    pairs = list(zip(read_windows(tmp_path / "full.jsonl"), read_windows(tmp_path / "cut.jsonl"), strict=True))
    assert (full.windows, full.cut) == (len(pairs), 0) and cut.cut == sum(a.previous != b.previous for a, b in pairs)
    assert cut.cut > len(pairs) * 0.8 and all(len(b.previous) <= len(a.previous) for a, b in pairs)
    assert all((a.video_start, a.words, a.qa) == (b.video_start, b.words, b.qa) for a, b in pairs)
    smaller = [(sink // 2, window), (sink, window // 2), (0, window), (sink, 0), (0, 0)]  # also read the same
    for name, tok in tokenizers.items():
        builder = SampleBuilder(tok, config=SampleConfig(text_sink=sink, text_window=window))
        policies = [SampleBuilder(tok, config=SampleConfig(text_sink=s, text_window=w)).policy for s, w in smaller]
        for a, b in pairs:
            assert builder.previous_ids(b.previous) == builder.previous_ids(a.previous), (name, a.video_start)
            ids_a, ids_b = builder.layout.encode(a.previous), builder.layout.encode(b.previous)
            assert len(ids_b) >= min(len(ids_a), sink + window)  # the cut text holds the ends the sample reads
            for policy in policies:  # = SampleBuilder.previous_ids with these settings
                assert policy.cut_previous(ids_b) == policy.cut_previous(ids_a), (name, policy, a.video_start)


def test_windows_file_grows_linearly_with_the_video(tmp_path):
    def size(seconds: float, **keep) -> int:
        src = write_lines(tmp_path / f"t{seconds}.jsonl", [long_transcript(seconds, odd=False)])
        out = tmp_path / f"w{seconds}_{keep['text_sink']}.jsonl"
        build_windows(src, out, **keep)
        return out.stat().st_size

    # 64 + 64 pieces are 51 s of speech: both lengths are far past it
    kept = size(2400, text_sink=64, text_window=64) / size(1200, text_sink=64, text_window=64)
    whole = size(2400, text_sink=None, text_window=None) / size(1200, text_sink=None, text_window=None)
    assert 1.9 < kept < 2.2  # O(N): twice the video, twice the file (and 2.01 times the windows)
    assert whole > 3.5  # the whole transcript in every window (as before): O(N^2), 3.66 here


def test_keep_ends_pieces():
    assert keep_ends("a b c d e", 1, 2) == "a d e"
    assert keep_ends("a b c d e", 0, 2) == " d e" and keep_ends("a b c d e", 2, 0) == "a b"
    assert keep_ends("a b c d e", 3, 2) == "a b c d e" and keep_ends("a b c d e", None, 1) == "a b c d e"
    assert keep_ends("T\nx  y\tz w v", 1, 1) == "T\nx v"  # pieces start only at a space after a non-space
    assert keep_ends(" a b c", 1, 1) == " a c" and keep_ends("", 0, 0) == "" and keep_ends("a b", 0, 0) == ""


def test_keep_ends_reads_the_same_tokens_on_random_text(tokenizers):
    import random

    from streaming_vlm.models import build_tiny_tokenizer
    from streaming_vlm.policy import CachePolicy

    chars = [*"abxyZ.,!?'\"-0123456789", "\u0301", "é", "e\u0301", "東", "⚽", "\u200b", "<|im_end|>", "'s", "\x1c",
             "ﬁ", "\U0001F3F3", "\u200d"]
    spaces = [" ", " ", " ", "  ", " \n", "\n", "\t", " \t", "\u00a0", "\u3000", "\r\n", "\u0085", "\u2028", " \n\n"]
    rng = random.Random(0)

    def random_text(units: int) -> str:
        return "".join(rng.choice(spaces) if rng.random() < 0.45 else "".join(rng.choices(chars, k=rng.randint(1, 2)))
                       for _ in range(units))

    # also a tokenizer that learned merges on such text (runs of spaces, newlines after punctuation, ...): a wrong
    # piece rule (cutting at every space, or at every whitespace after a non-space) fails here
    trained = build_tiny_tokenizer([random_text(100) for _ in range(150)], vocab_size=768)
    for _ in range(600):
        text = random_text(rng.randint(0, 40))
        sink, window = rng.randint(0, 8), rng.randint(0, 8)
        kept = keep_ends(text, sink, window)
        for tok in [*tokenizers.values(), trained]:
            for policy in (CachePolicy(None, None, sink, window), CachePolicy(None, None, sink // 2, window // 3)):
                assert (policy.cut_previous(tok.encode(kept, add_special_tokens=False))
                        == policy.cut_previous(tok.encode(text, add_special_tokens=False))), (text, sink, window)

def test_build_settings_and_the_training_check(tmp_path):
    src = write_lines(tmp_path / "long.jsonl", [long_transcript(300, odd=False, title="Match")])
    out = tmp_path / "train_s12w24_with_seeks.jsonl"
    stats = build_windows(src, out, text_sink=16, text_window=32)
    assert stats.settings == build_settings_path(out) == tmp_path / "train_s12w24_build.json"
    assert build_settings_path(tmp_path / "w.jsonl") == tmp_path / "w_build.json"
    assert json.loads(stats.settings.read_text()) == {
        "variant": "overlap", "window": 24.0, "stride": 12.0, "drop_empty": False, "text_sink": 16,
        "text_window": 32, "windows": stats.windows, "previous_cut": stats.cut}
    assert stats.cut > 0 and stats.lines()[1] == f"previous text: first 16 and last 32 pieces; {stats.cut} windows cut"
    for sink, window in [(16, 32), (0, 0), (8, 32)]:
        check_previous_kept(out, sink, window)
    for sink, window in [(17, 32), (16, 33), (None, 32), (16, None), (512, 512)]:
        with pytest.raises(ValueError, match="keep only the first 16 and last 32 pieces") as info:
            check_previous_kept(out, sink, window)
        assert "--text-sink" in str(info.value) and "\n" not in str(info.value)
    check_previous_kept(tmp_path / "long.jsonl", None, None)  # no settings beside it: not made by the builder
    short = build_windows(write_lines(tmp_path / "s.jsonl", [toy()]), tmp_path / "short.jsonl",
                          text_sink=1, text_window=1)
    assert short.cut == 3
    assert build_windows(write_lines(tmp_path / "s2.jsonl", [toy()]), tmp_path / "short2.jsonl").cut == 0
    check_previous_kept(tmp_path / "short2.jsonl", None, None)  # nothing cut: any setting reads the same text


def test_build_settings_follow_interruptions_and_refused_resumes(tmp_path, monkeypatch, capsys):
    import streaming_vlm.data.windows as windows

    src = write_lines(tmp_path / "long.jsonl", [long_transcript(300, odd=False)])
    out = tmp_path / "w.jsonl"
    build_windows(src, out, text_sink=None, text_window=None)
    whole = json.loads(build_settings_path(out).read_text())
    assert whole["previous_cut"] == 0
    check_previous_kept(out, None, None)
    # a resume with other settings is refused and leaves the file and its settings alone
    before = build_settings_path(out).read_bytes()
    with pytest.raises(ValueError, match="differs"):
        build_windows(src, out, text_sink=8, text_window=8)
    assert build_settings_path(out).read_bytes() == before
    # a run cut short: its settings say so before its first window is written, with the count unknown
    encode, calls = windows._encode, []

    def interrupted(record):
        calls.append(1)
        if len(calls) > 10:
            raise KeyboardInterrupt
        return encode(record)

    monkeypatch.setattr(windows, "_encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_windows(src, out, resume=False, text_sink=8, text_window=8)
    assert json.loads(build_settings_path(out).read_text())["previous_cut"] is None
    with pytest.raises(ValueError, match=r"\(some windows cut"):
        check_previous_kept(out, None, None)
    monkeypatch.setattr(windows, "_encode", encode)
    stats = build_windows(src, out, text_sink=8, text_window=8)  # resumes the 10 written
    assert stats.resumed == 10 and json.loads(build_settings_path(out).read_text())["previous_cut"] == stats.cut > 0
    assert main(["data", "windows", str(src), str(out), "--no-resume", "--text-sink", "unlimited",
                 "--text-window", "unlimited"]) == 0
    assert "previous text: whole; 0 windows cut" in capsys.readouterr().out
    assert json.loads(build_settings_path(out).read_text()) == whole
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "windows", str(src), str(out), "--text-sink", "-1"])
    assert exit_info.value.code == 2


def test_training_dataset_refuses_a_file_cut_shorter_than_it_reads(tmp_path, tokenizers):
    from streaming_vlm.data.dataset import StreamingSFTDataset
    from streaming_vlm.data.sample import SampleBuilder, SampleConfig

    src = write_lines(tmp_path / "long.jsonl", [long_transcript(300, odd=False)])
    build_windows(src, tmp_path / "w_with_seeks.jsonl", text_sink=16, text_window=32)

    def dataset(sink, window):
        builder = SampleBuilder(tokenizers["tiny"], config=SampleConfig(text_sink=sink, text_window=window))
        return StreamingSFTDataset(["w_with_seeks.jsonl", "w_with_seeks.jsonl"], builder, dataset_path=tmp_path)

    assert len(dataset(16, 32)) == 2 * len(load_seek_index(tmp_path / "w_with_seeks.jsonl"))
    with pytest.raises(ValueError, match="text_sink=512, text_sliding_window=512"):
        dataset(512, 512)


def test_toy_dataset_has_the_stage_files_and_validates(tmp_path):
    from streaming_vlm.cli import main

    assert main(["data", "toy", str(tmp_path / "toy"), "--videos", "2", "--seconds", "40"]) == 0
    root = tmp_path / "toy"
    names = ["train_s12w24", "valid_s12w24", "train_livecc", "valid_livecc", "fg/train_fg", "fg/valid_fg"]
    for name in names:
        path = root / f"{name}_with_seeks.jsonl"
        assert path.is_file() and (root / f"{name}_seeks.jsonl").is_file()
        assert main(["data", "validate", str(path), "--dataset-path", str(root)]) == 0
