"""A small generated dataset laid out like Inf-Stream-Train, so both SFT stages run end to end anywhere.

``make_toy_dataset(out_dir)`` writes synthetic videos (``synthetic.py``) with a word-timestamped transcript
per video, then derives, with the real windows builder, the files the stage configs name (relative to
``$DATASET_PATH``):

- ``train_s12w24_with_seeks.jsonl`` / ``valid_s12w24_with_seeks.jsonl``: 24-s windows every 12 s;
- ``train_livecc_with_seeks.jsonl`` / ``valid_livecc_with_seeks.jsonl``: whole clips, LiveCC style;
- ``fg/train_fg_with_seeks.jsonl`` / ``fg/valid_fg_with_seeks.jsonl``: the stage-2 annealing subset;

each with its seek index. The transcript is mechanical (which shape moves where), not a language model's
training signal: it exercises the pipeline, not quality (a later synthetic world does that).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from streaming_vlm.data.annotations import StreamRecord, Word, build_seek_index, record_to_json
from streaming_vlm.data.windows import build_windows
from streaming_vlm.synthetic import COLORS, write_synthetic_video

PHRASES = ["moves left", "moves right", "goes up", "comes down", "stops", "turns around"]


def _transcript(seconds: float, rng: np.random.Generator) -> list[Word]:
    words, t = [], 0.5
    colors = list(COLORS)
    while t < seconds - 1.0:
        phrase = [colors[rng.integers(len(colors))], "square", *PHRASES[rng.integers(len(PHRASES))].split()]
        for w in phrase:
            words.append(Word(round(t, 2), round(t + 0.3, 2), w))
            t += 0.35
        t += float(rng.uniform(0.5, 3.0))
    return words


def _write(records: list[StreamRecord], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(record_to_json(r), ensure_ascii=False) + "\n")
    build_seek_index(path)
    return path


def make_toy_dataset(out_dir: str | Path, *, videos: int = 3, seconds: float = 60.0, seed: int = 0,
                     width: int = 112, height: int = 84) -> Path:
    """Write the toy dataset into ``out_dir`` (use it as ``$DATASET_PATH``); returns ``out_dir``."""
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    longs = []
    for i in range(videos):
        name = f"videos/toy_{i:03d}.mp4"
        write_synthetic_video(out / name, seconds, fps=4, width=width, height=height, seed=seed + i)
        longs.append(StreamRecord(name, 0.0, seconds, words=_transcript(seconds, rng), title=f"Toy match {i}",
                                  source=f"toy:{i}"))
    splits = {"train": longs[:-1] or longs, "valid": longs[-1:]}
    for split, recs in splits.items():
        src = _write(recs, out / "raw" / f"{split}_long.jsonl")
        build_windows(src, out / f"{split}_s12w24_with_seeks.jsonl", window=24.0, stride=12.0, resume=False)
        clips = [StreamRecord(r.video, 6.0, min(r.video_end, 36.0), words=r.words, title=r.title) for r in recs]
        clip_src = _write(clips, out / "raw" / f"{split}_clips.jsonl")
        build_windows(clip_src, out / f"{split}_livecc_with_seeks.jsonl", variant="livecc", resume=False)
        build_windows(src, out / "fg" / f"{split}_fg_with_seeks.jsonl", window=24.0, stride=24.0, resume=False)
    return out
