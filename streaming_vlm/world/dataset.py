"""Streams of the synthetic world on disk: videos plus annotations in the training format, by split.

A stream is one mp4 (``videos/<split>_<seed>.mp4``) and one record in ``<split>.jsonl`` (the SFT annotation
format of ``docs/data.md``: ``video_start`` 0, ``video_end`` the length, the word-timestamped ``text_stream``).
Seeds come from fixed, disjoint ranges per split, so "test stream 3" is the same stream on every machine and
never overlaps training. ``heldout`` is the demo's held-out evaluation set (:data:`HELDOUT`), on seeds that no
training, validation or test stream uses. ``make_training_set`` adds the SFT stages' window files (24-s windows
every 12 s) with their seek indexes, and the validation streams that choose the shipped checkpoint.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from streaming_vlm.data.annotations import StreamRecord, record_to_json
from streaming_vlm.data.windows import build_windows
from streaming_vlm.settings import DEFAULTS
from streaming_vlm.world.render import write_video
from streaming_vlm.world.script import DEFAULT_WORLD, GOAL, WHISTLE, WorldConfig, events, words
from streaming_vlm.world.workers import default_workers, map_in_processes

SPLIT_BASE = {"train": 0, "valid": 1_000_000, "test": 2_000_000, "heldout": 3_000_000}
"""Seed of stream ``i`` of a split = base + i. The ranges never meet (a split holds < 1,000,000 streams)."""


def split_seed(split: str, index: int) -> int:
    if split not in SPLIT_BASE:
        raise ValueError(f"unknown split {split!r} (choose from {', '.join(SPLIT_BASE)})")
    if not 0 <= index < 1_000_000:
        raise ValueError(f"stream index must be in 0..999999, got {index}")
    return SPLIT_BASE[split] + index


@dataclass(frozen=True)
class StreamSpec:
    """One stream to write: its seed, length, world settings and names."""

    seed: int
    seconds: int
    config: WorldConfig = DEFAULT_WORLD
    name: str = ""

    @property
    def video(self) -> str:
        return f"videos/{self.name or self.seed}.mp4"


def record(spec: StreamSpec, titled: bool = True) -> StreamRecord:
    """The stream's annotation; ``titled``: with the title ``Synthetic match <seed>`` (window builders put a title at
    the start of every window's previous text, where inference, which starts with an empty one, has none)."""
    ws = [w for e in events(spec.seed, spec.seconds, spec.config) for w in words(e)]
    return StreamRecord(spec.video, 0.0, float(spec.seconds), words=ws,
                        title=f"Synthetic match {spec.seed}" if titled else "")


def write_stream(out_dir: str | Path, spec: StreamSpec, titled: bool = True) -> StreamRecord:
    """Write the stream's video under ``out_dir`` (skipped when it exists) and return its record."""
    out = Path(out_dir)
    video = out / spec.video
    if not video.exists():
        write_video(video, events(spec.seed, spec.seconds, spec.config), spec.seconds, spec.config)
    return record(spec, titled)


def _render(out_dir: Path, spec: StreamSpec) -> None:
    write_video(out_dir / spec.video, events(spec.seed, spec.seconds, spec.config), spec.seconds, spec.config)


def render_videos(out_dir: str | Path, specs: list[StreamSpec], workers: int | None = None,
                  progress: bool = True) -> int:
    """Write the videos of ``specs`` that ``out_dir`` lacks, in ``workers`` processes (default: one per CPU core;
    1: in this one), the longest first; returns how many were written. Each appears whole or not at all (written
    beside, then renamed). Which process writes a video does not matter, but libx264 itself is not always
    deterministic on long streams: of two writings of the 298 training-set videos (one process each time), 2 files
    differed, in at most 5 frames by at most 8 levels."""
    out = Path(out_dir)
    todo = sorted({spec.video: spec for spec in specs if not (out / spec.video).exists()}.values(),
                  key=lambda spec: -spec.seconds)
    map_in_processes(_render, [(out, spec) for spec in todo], workers or default_workers(), threads=0,
                     desc="writing videos", unit="video", progress=progress)
    return len(todo)


def write_records(path: Path, records: Iterable[StreamRecord]) -> Path:
    """Write ``records`` to the annotation file ``path``, one per line, in order (whole or not at all)."""
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(record_to_json(rec), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def write_streams(out_dir: str | Path, specs: list[StreamSpec], annotation: str, progress: bool = True,
                  titled: bool = True, workers: int | None = 1) -> Path:
    """Write every stream and one annotation file (``out_dir/annotation``, one record per stream, in order); the
    videos in ``workers`` processes (:func:`render_videos`; ``None``: one per core)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if workers != 1:
        render_videos(out, specs, workers, progress)
    path = write_records(out / annotation, (write_stream(out, spec, titled) for spec in tqdm(
        specs, desc=f"writing {annotation}", unit="stream", disable=not progress)))
    (out / (Path(annotation).stem + "_world.json")).write_text(
        json.dumps([asdict(s) | {"video": s.video} for s in specs], indent=1) + "\n", encoding="utf-8")
    return path


def split_specs(split: str, streams: int, minutes: float, config: WorldConfig = DEFAULT_WORLD,
                first: int = 0) -> list[StreamSpec]:
    seconds = int(round(minutes * 60))
    if seconds < 1:
        raise ValueError(f"minutes must give at least one second, got {minutes}")
    seeds = [split_seed(split, first + i) for i in range(streams)]
    return [StreamSpec(s, seconds, config, f"{split}_{s}") for s in seeds]


def _drawn_specs(specs: list[StreamSpec], key: int,
                 draw: Callable[[np.random.Generator], dict[str, float]]) -> list[StreamSpec]:
    """``specs`` with each stream's world settings replaced by ``draw(rng)``, ``rng`` seeded by its seed and ``key``
    (so a stream's world is a pure function of its seed)."""
    return [replace(spec, config=replace(spec.config, **draw(np.random.default_rng([spec.seed, key]))))
            for spec in specs]


def varied_specs(split: str, streams: int, minutes: float, config: WorldConfig = DEFAULT_WORLD,
                 first: int = 0) -> list[StreamSpec]:
    """Streams whose density and speed vary around ``config`` (x0.6 to x1.6 density, x0.5 to x1.7 speed)."""
    return _drawn_specs(split_specs(split, streams, minutes, config, first), 0xD1CE, lambda rng: {
        "density": float(min(config.density * rng.uniform(0.6, 1.6), 1 - config.whistle_rate)),
        "speed": float(config.speed * rng.uniform(0.5, 1.7))})


@dataclass(frozen=True)
class HeldOutSpec:
    """The demo's held-out evaluation set (``scripts/eval_synth.sh``): default-world streams of the ``heldout``
    split, ``short_streams`` of ``short_minutes`` (indexes ``0 ..``), then ``long_streams`` of ``long_minutes`` (the
    next indexes, so no long stream starts as a short one). The defaults are written by
    ``streaming-vlm synth DIR/heldout_10min --split heldout --streams 20 --minutes 10`` and
    ``streaming-vlm synth DIR/heldout_60min --split heldout --streams 3 --minutes 60 --first 20``."""

    short_streams: int = 20
    short_minutes: float = 10.0
    long_streams: int = 3
    long_minutes: float = 60.0

    def specs(self) -> list[StreamSpec]:
        return (split_specs("heldout", self.short_streams, self.short_minutes)
                + split_specs("heldout", self.long_streams, self.long_minutes, first=self.short_streams))


HELDOUT = HeldOutSpec()


def quiet_specs(split: str, streams: int, minutes: float, config: WorldConfig = DEFAULT_WORLD, first: int = 0,
                low: float = 0.04, high: float = 0.15) -> list[StreamSpec]:
    """Quiet streams: density uniform in ``[low, high]``, speed x0.5 to x1.7 of ``config``'s.

    Their long quiet stretches are what a model must carry the score across: once the last call is more than the
    cache's text rounds (16) back, the score survives only in the previous text. At the default density that happens
    before about one call in 200; at 0.1, before one in five.
    """
    return _drawn_specs(split_specs(split, streams, minutes, config, first), 0x5A5E, lambda rng: {
        "density": float(rng.uniform(low, high)), "speed": float(config.speed * rng.uniform(0.5, 1.7))})


def reset_specs(split: str, streams: int, minutes: float, config: WorldConfig = DEFAULT_WORLD, first: int = 0,
                whistle_rate: float = 1 / 60) -> list[StreamSpec]:
    """Quiet streams (:func:`quiet_specs`) with a whistle every ``1 / whistle_rate`` seconds on average instead of
    every 300: the score is often zero after a whistle when a quiet stretch begins, the case where a model that
    half-learnt to read the last score falls back on the score before the whistle (``score eight`` where the
    calls since the whistle said ``zero``)."""
    return quiet_specs(split, streams, minutes, replace(config, whistle_rate=whistle_rate), first)


def whistle_goal_specs(split: str, streams: int, minutes: float, config: WorldConfig = DEFAULT_WORLD, first: int = 0,
                       density: tuple[float, float] = (0.3, 0.6),
                       whistle_rate: tuple[float, float] = (1 / 30, 1 / 12)) -> list[StreamSpec]:
    """Busy streams with frequent whistles: density and whistle rate uniform in ``density`` and ``whistle_rate``
    (a whistle every 12 to 30 s on average), so that many goals come a few seconds after a whistle, the context of
    :func:`reset_goal_records` (in the default world one goal in 27, about five an hour: 31 of the held-out set's
    848 goals in 380 minutes)."""
    return _drawn_specs(split_specs(split, streams, minutes, config, first), 0x7E5E, lambda rng: {
        "density": float(rng.uniform(*density)), "whistle_rate": float(rng.uniform(*whistle_rate))})


def gap_records(spec: StreamSpec, rounds: int, min_gap: int) -> list[StreamRecord]:
    """One record per call of ``spec`` whose previous call is at least ``min_gap`` seconds back: its video from
    ``rounds`` seconds before the call's second to the end of that second, so that the call is the record's last
    and (when the gap is at least ``rounds``) the score it must carry is only in the previous text, as in the
    streaming cache, whose verbatim turns are the last ``rounds`` seconds. Calls in the first ``rounds - 1``
    seconds are left out."""
    ends, last = [], None
    for event in events(spec.seed, spec.seconds, spec.config):
        if last is not None and event.second - last >= min_gap:
            ends.append(event.second)
        last = event.second
    return _windows_ending_at(spec, ends, rounds)


def goal_records(spec: StreamSpec, rounds: int, calls_after: tuple[int, int]) -> list[StreamRecord]:
    """Records of ``spec`` cut to ``rounds`` seconds (as :func:`gap_records` cuts them) ending with each goal or black
    bar that comes less than ``rounds`` seconds after a goal, with the last call less than ``rounds`` seconds after
    each goal, and with every call ``calls_after[0]`` to less than ``calls_after[1]`` seconds after the latest goal
    (no whistle between, each end once, in time order). A goal then sits in the streaming cache's vision window and
    verbatim turns while the window's later calls are made: a second goal must add one to the last score, a black
    bar or any other call nothing, whatever the earlier goal already added; the free-running score's other weak
    point is an extra increment while the goal's frames leave the vision window (10 to 16 s after it) or just after
    they have left it, when the goal is only in the verbatim turns. Calls in the first ``rounds - 1`` seconds are
    left out."""
    first, last = calls_after
    # tails: each goal's last call so far; goals: those less than ``rounds`` s back; latest: since the last whistle
    ends, tails, goals, latest = set(), {}, [], None
    for event in events(spec.seed, spec.seconds, spec.config):
        if event.kind == WHISTLE:
            goals, latest = [], None
            continue
        if latest is not None and first <= event.second - latest < last:
            ends.add(event.second)
        goals = [g for g in goals if event.second - g < rounds]
        if goals and event.colour == GOAL[0]:
            ends.add(event.second)
        tails.update((g, event.second) for g in goals)
        if (event.colour, event.shape) == GOAL:
            goals.append(event.second)
            latest = event.second
    return _windows_ending_at(spec, sorted(ends | set(tails.values())), rounds)


def reset_goal_records(spec: StreamSpec, rounds: int, goal_within: int) -> list[StreamRecord]:
    """Records of ``spec`` cut to ``rounds`` seconds (as :func:`gap_records` cuts them) ending with each call less
    than ``rounds`` seconds after a goal that is the first since a whistle and at most ``goal_within`` seconds after
    it (the goal's own call included; a later whistle ends the run). The score such a goal makes is one, and the
    window's turns hold the whistle's zero and often the score before the whistle too, a context default-world
    streams hold about five times an hour (:func:`whistle_goal_specs` makes it common), where the free-running score
    still slipped after the other windows were learnt. Calls in the first ``rounds - 1`` seconds are left out."""
    ends, whistle, goal = [], None, None
    for event in events(spec.seed, spec.seconds, spec.config):
        if event.kind == WHISTLE:
            whistle, goal = event.second, None
            continue
        if (goal is None and whistle is not None and (event.colour, event.shape) == GOAL
                and event.second - whistle <= goal_within):
            goal = event.second
        if goal is not None and event.second - goal < rounds:
            ends.append(event.second)
    return _windows_ending_at(spec, ends, rounds)


def _windows_ending_at(spec: StreamSpec, seconds: list[int], rounds: int) -> list[StreamRecord]:
    """The stream's record cut to ``rounds`` seconds ending with each of ``seconds`` (those in the first
    ``rounds - 1`` seconds left out), without the words after its end (no window of it reads them: the file is
    half the size, and the windows built from it the same)."""
    whole = record(spec, titled=False)
    ends = [w.end for w in whole.words]
    return [replace(whole, video_start=float(t + 1 - rounds), video_end=float(t + 1),
                    words=whole.words[:bisect.bisect_right(ends, float(t + 1))])
            for t in seconds if t + 1 >= rounds]


@dataclass(frozen=True)
class TrainingSetSpec:
    """The demo model's data: stage 1 on varied and quiet streams, stage 2 (annealing) on default-world and quiet
    streams, and validation streams for choosing the checkpoint.

    Stage 1 also holds a few long varied streams, so training windows carry the ``Time=`` stamps of a whole hour
    (a model that saw only the first minutes meets unseen stamps late in a long stream). Stage 2 also holds many
    one-minute streams: a stream's start is one window in thirty otherwise. Both stages hold quiet streams
    (:func:`quiet_specs`), so the score is often read from the previous text after a long quiet stretch, and
    quiet streams with frequent whistles (:func:`reset_specs`), so that score is often the zero after a whistle.
    Each stage also trains on *gap windows* (:func:`gap_records`): ``gap_window`` seconds ending with each call
    whose previous call is ``gap_min`` or more seconds back, the free-running score's weak point (a model that
    misreads one such score is wrong until the next whistle): with the defaults 1,437 of stage 1's 9,730 windows
    and 397 of stage 2's 2,295; and on *goal windows* (:func:`goal_records`): as many seconds ending with each goal
    or black bar less than that after a goal, with each goal's last call less than that after it, and with every
    call ``goal_calls_after`` (10 to 23) seconds after the latest goal (5,564 of stage 1's 12,460 windows and 1,005
    of stage 2's 2,765). Stage 1 also has *reset-goal windows* (:func:`reset_goal_records`): as many seconds ending
    with each call less than that after the first goal since a whistle, when that goal is at most
    ``reset_goal_within`` (5) seconds after the whistle: 332 from stage 1's streams and 1,068 from
    ``stage1_reset_goal_streams`` busy streams with frequent whistles (:func:`whistle_goal_specs`; no stage trains on
    their 24-s windows).
    ``select`` (validation split, after the ``valid`` streams): default-world and quiet streams whose score accuracy
    (teacher-forced by default, or streamed) chooses the checkpoint (``world/select.py``).
    ``pool`` (train split, indexes from ``pool_first``, which no stage takes): default-world streams, then as many
    with a whistle every ``1 / pool_whistle_rate`` s on average, whose calls the chosen model reads for the repair
    stage (``world/repair.py``).
    """

    stage1_streams: int = 48
    stage1_long_streams: int = 8
    stage1_quiet_streams: int = 32
    stage2_streams: int = 16
    stage2_short_streams: int = 64
    stage2_quiet_streams: int = 16
    valid_streams: int = 2
    select_streams: int = 4
    select_quiet_streams: int = 2
    stage1_reset_streams: int = 32
    stage2_reset_streams: int = 8
    select_reset_streams: int = 2
    pool_streams: int = 32
    pool_whistle_streams: int = 32
    pool_whistle_rate: float = 1 / 100
    stage1_reset_goal_streams: int = 48
    pool_first: int = 300
    gap_window: int = DEFAULTS.text_rounds  # 16: the verbatim turns of the cache
    gap_min: int = 10
    goal_calls_after: tuple[int, int] = (10, 24)
    reset_goal_within: int = 5
    minutes: float = 6.0
    long_minutes: float = 60.0
    short_minutes: float = 1.0
    select_minutes: float = 10.0
    window: float = 24.0
    stride: float = 12.0


TRAINING_WORLD = DEFAULT_WORLD
"""The demo's training world: the default world (every stream opens with the kick-off whistle), varied around in
stage 1. Training windows carry no title in their previous text: inference starts with an empty one."""


def training_specs(spec: TrainingSetSpec, config: WorldConfig = TRAINING_WORLD) -> dict[str, list[StreamSpec]]:
    """The streams of each part of the training set: ``stage1``, ``stage2``, ``valid``, ``select`` and ``pool``.
    Training seeds are the ``train`` split's ``0, 1, ...`` in a fixed order (parts added later take the next seeds,
    so the older parts keep theirs); ``valid`` and ``select`` come from the ``valid`` split; ``pool`` from the
    ``train`` split's ``pool_first, ...``, past every stage's."""
    taken = 0

    def take(n: int) -> int:
        nonlocal taken
        taken += n
        return taken - n

    stage1 = varied_specs("train", spec.stage1_streams, spec.minutes, config, take(spec.stage1_streams))
    stage2 = split_specs("train", spec.stage2_streams, spec.minutes, config, take(spec.stage2_streams))
    stage1 += varied_specs("train", spec.stage1_long_streams, spec.long_minutes, config,
                           take(spec.stage1_long_streams))
    stage2 += split_specs("train", spec.stage2_short_streams, spec.short_minutes, config,
                          take(spec.stage2_short_streams))
    stage1 += quiet_specs("train", spec.stage1_quiet_streams, spec.minutes, config, take(spec.stage1_quiet_streams))
    stage2 += quiet_specs("train", spec.stage2_quiet_streams, spec.minutes, config, take(spec.stage2_quiet_streams))
    stage1 += reset_specs("train", spec.stage1_reset_streams, spec.minutes, config, take(spec.stage1_reset_streams))
    stage2 += reset_specs("train", spec.stage2_reset_streams, spec.minutes, config, take(spec.stage2_reset_streams))
    # streams only stage 1's reset-goal windows are cut from (no 24-s windows)
    resets = whistle_goal_specs("train", spec.stage1_reset_goal_streams, spec.minutes, config,
                                take(spec.stage1_reset_goal_streams))
    valid = split_specs("valid", spec.valid_streams, spec.minutes, config)
    select = split_specs("valid", spec.select_streams, spec.select_minutes, config, first=spec.valid_streams)
    select += quiet_specs("valid", spec.select_quiet_streams, spec.select_minutes, config,
                          first=spec.valid_streams + spec.select_streams, low=0.1, high=0.1)
    select += reset_specs("valid", spec.select_reset_streams, spec.select_minutes, config,
                          first=spec.valid_streams + spec.select_streams + spec.select_quiet_streams)
    if taken > spec.pool_first:
        raise ValueError(f"the training streams take train indexes up to {taken - 1}: pool_first must be >= {taken}")
    pool = split_specs("train", spec.pool_streams, spec.minutes, config, spec.pool_first)
    pool += split_specs("train", spec.pool_whistle_streams, spec.minutes,
                        replace(config, whistle_rate=spec.pool_whistle_rate), spec.pool_first + spec.pool_streams)
    return {"stage1": stage1, "stage2": stage2, "valid": valid, "select": select, "pool": pool,
            "stage1_resets": resets}


def make_training_set(out_dir: str | Path, spec: TrainingSetSpec | None = None,
                      config: WorldConfig = TRAINING_WORLD, progress: bool = True,
                      workers: int | None = None) -> dict[str, Path]:
    """Write the streams and the stage files (:func:`training_specs`); returns the files by name.

    ``stage1_windows.jsonl``, ``stage2_windows.jsonl`` and ``valid_windows.jsonl`` (24-s windows every 12 s, those
    with no words left out, previous text without a title), ``stage{1,2}_gaps_windows.jsonl`` and
    ``stage{1,2}_goals_windows.jsonl`` (the stages' gap and goal windows) and ``stage1_resets_windows.jsonl`` (stage
    1's reset-goal windows, :func:`reset_goal_records`), each with its ``*_seeks.jsonl`` index,
    paths relative to ``out_dir`` (use it as ``$DATASET_PATH``); ``select`` is ``select.jsonl``, the whole
    validation streams for ``world/select.py``; ``pool`` is ``pool.jsonl``, the whole pool streams for
    ``world/repair.py``. The videos are written first, in ``workers`` processes (:func:`render_videos`; default:
    one per CPU core).
    """
    out = Path(out_dir)
    spec = spec or TrainingSetSpec()
    parts = training_specs(spec, config)
    render_videos(out, [s for part in parts.values() for s in part], workers, progress)
    gaps = partial(gap_records, rounds=spec.gap_window, min_gap=spec.gap_min)
    goals = partial(goal_records, rounds=spec.gap_window, calls_after=spec.goal_calls_after)
    resets = partial(reset_goal_records, rounds=spec.gap_window, goal_within=spec.reset_goal_within)
    # each stage's short windows: (kind, how a stream is cut, the streams cut); stage 1's reset-goal windows come
    # from its streams and its whistle-and-goal streams (whose 24-s windows no stage trains on)
    short = {"stage1": [("gaps", gaps, parts["stage1"]), ("goals", goals, parts["stage1"]),
                        ("resets", resets, parts["stage1"] + parts["stage1_resets"])],
             "stage2": [("gaps", gaps, parts["stage2"]), ("goals", goals, parts["stage2"])]}
    files = {}
    for name in ("stage1", "stage2", "valid"):
        streams = write_streams(out, parts[name], f"{name}_streams.jsonl", progress, titled=False)
        windows = out / f"{name}_windows.jsonl"
        build_windows(streams, windows, window=spec.window, stride=spec.stride, variant="overlap", resume=False,
                      drop_empty=True)
        files[name] = windows
    write_streams(out, parts["stage1_resets"], "stage1_resets_streams.jsonl", progress, titled=False)
    for name, cuts in short.items():
        for kind, records, specs in cuts:
            part = write_records(out / f"{name}_{kind}.jsonl", (rec for s in specs for rec in records(s)))
            windows = out / f"{name}_{kind}_windows.jsonl"
            build_windows(part, windows, window=spec.gap_window, stride=spec.gap_window, variant="overlap",
                          resume=False)
            files[f"{name}_{kind}"] = windows
    files["select"] = write_streams(out, parts["select"], "select.jsonl", progress)
    files["pool"] = write_streams(out, parts["pool"], "pool.jsonl", progress, titled=False)
    return files


def iter_split(out_dir: str | Path, split: str) -> Iterator[tuple[Path, StreamRecord]]:
    """(video path, record) of each stream in ``out_dir/<split>.jsonl``."""
    from streaming_vlm.data.annotations import iter_records

    out = Path(out_dir)
    for _, rec in iter_records(out / f"{split}.jsonl"):
        if isinstance(rec, StreamRecord):
            yield out / rec.video, rec

