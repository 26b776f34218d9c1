"""Streams of the synthetic world on disk: videos plus annotations in the training format, by split.

A stream is one mp4 (``videos/<split>_<seed>.mp4``) and one record in ``<split>.jsonl`` (the SFT annotation
format of ``docs/data.md``: ``video_start`` 0, ``video_end`` the length, the word-timestamped ``text_stream``).
Seeds come from fixed, disjoint ranges per split, so "test stream 3" is the same stream on every machine and
never overlaps training. ``make_training_set`` adds the SFT stages' window files (24-s windows every 12 s) with
their seek indexes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from streaming_vlm.data.annotations import StreamRecord, record_to_json
from streaming_vlm.data.windows import build_windows
from streaming_vlm.world.render import write_video
from streaming_vlm.world.script import DEFAULT_WORLD, WorldConfig, events, words

SPLIT_BASE = {"train": 0, "valid": 1_000_000, "test": 2_000_000}
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


def record(spec: StreamSpec) -> StreamRecord:
    ws = [w for e in events(spec.seed, spec.seconds, spec.config) for w in words(e)]
    return StreamRecord(spec.video, 0.0, float(spec.seconds), words=ws, title=f"Synthetic match {spec.seed}")


def write_stream(out_dir: str | Path, spec: StreamSpec) -> StreamRecord:
    """Write the stream's video under ``out_dir`` (skipped when it exists) and return its record."""
    out = Path(out_dir)
    video = out / spec.video
    if not video.exists():
        write_video(video, events(spec.seed, spec.seconds, spec.config), spec.seconds, spec.config)
    return record(spec)


def write_streams(out_dir: str | Path, specs: list[StreamSpec], annotation: str, progress: bool = True) -> Path:
    """Write every stream and one annotation file (``out_dir/annotation``, one record per stream, in order)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / annotation
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", encoding="utf-8") as f:
        for spec in tqdm(specs, desc=f"writing {annotation}", unit="stream", disable=not progress):
            f.write(json.dumps(record_to_json(write_stream(out, spec)), ensure_ascii=False) + "\n")
    tmp.replace(path)
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


def varied_specs(split: str, streams: int, minutes: float, config: WorldConfig = DEFAULT_WORLD,
                 first: int = 0) -> list[StreamSpec]:
    """Streams whose density and speed vary around ``config`` (x0.6 to x1.6 density, x0.5 to x1.7 speed)."""
    out = []
    for spec in split_specs(split, streams, minutes, config, first):
        rng = np.random.default_rng([spec.seed, 0xD1CE])
        density = min(config.density * rng.uniform(0.6, 1.6), 1 - config.whistle_rate)
        out.append(replace(spec, config=replace(config, density=float(density),
                                                speed=float(config.speed * rng.uniform(0.5, 1.7)))))
    return out


@dataclass(frozen=True)
class TrainingSetSpec:
    """The demo model's data: stage 1 on varied streams, stage 2 (annealing) on clean default-world streams.

    Stage 1 also holds a few long varied streams, so training windows carry the ``Time=`` stamps of a whole hour
    (a model that saw only the first minutes meets unseen stamps late in a long stream). Stage 2 also holds many
    one-minute streams: a stream's start (no earlier commentary, so the score is zero) is one window in thirty
    otherwise.
    """

    stage1_streams: int = 48
    stage1_long_streams: int = 8
    stage2_streams: int = 16
    stage2_short_streams: int = 64
    valid_streams: int = 2
    minutes: float = 6.0
    long_minutes: float = 60.0
    short_minutes: float = 1.0
    window: float = 24.0
    stride: float = 12.0


TRAINING_WORLD = replace(DEFAULT_WORLD, kickoff=False)
"""The demo's training world: the default world without the kick-off whistle. The shipped demo was trained so (a
stream starts mid-match, score zero but unannounced) and meets the kick-off of held-out streams like any whistle."""


def make_training_set(out_dir: str | Path, spec: TrainingSetSpec | None = None,
                      config: WorldConfig = TRAINING_WORLD, progress: bool = True) -> dict[str, Path]:
    """Write the streams and the stage files; returns the window files by name.

    ``stage1_windows.jsonl`` (streams varied around ``config``, 6 and 60 minutes), ``stage2_windows.jsonl``
    (``config`` itself, other seeds, 6 and 1 minutes) and ``valid_windows.jsonl`` (validation split), each with its
    ``*_seeks.jsonl`` index, paths relative to ``out_dir`` (use it as ``$DATASET_PATH``).
    """
    out = Path(out_dir)
    spec = spec or TrainingSetSpec()
    stage1 = varied_specs("train", spec.stage1_streams, spec.minutes, config)
    stage2 = split_specs("train", spec.stage2_streams, spec.minutes, config, first=spec.stage1_streams)
    stage1 += varied_specs("train", spec.stage1_long_streams, spec.long_minutes, config,
                           first=spec.stage1_streams + spec.stage2_streams)
    stage2 += split_specs("train", spec.stage2_short_streams, spec.short_minutes, config,
                          first=spec.stage1_streams + spec.stage2_streams + spec.stage1_long_streams)
    valid = split_specs("valid", spec.valid_streams, spec.minutes, config)
    files = {}
    for name, specs in (("stage1", stage1), ("stage2", stage2), ("valid", valid)):
        streams = write_streams(out, specs, f"{name}_streams.jsonl", progress)
        windows = out / f"{name}_windows.jsonl"
        build_windows(streams, windows, window=spec.window, stride=spec.stride, variant="overlap", resume=False)
        files[name] = windows
    return files


def iter_split(out_dir: str | Path, split: str) -> Iterator[tuple[Path, StreamRecord]]:
    """(video path, record) of each stream in ``out_dir/<split>.jsonl``."""
    from streaming_vlm.data.annotations import iter_records

    out = Path(out_dir)
    for _, rec in iter_records(out / f"{split}.jsonl"):
        if isinstance(rec, StreamRecord):
            yield out / rec.video, rec

