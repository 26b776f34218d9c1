"""Find the calls a trained demo checkpoint gets wrong, as the repair stage's training windows.

``python -m streaming_vlm.world.repair DATA_DIR CHECKPOINT --out FILE [--threshold 0.5]`` (``scripts/train_demo.sh``
runs it on the checkpoint stage 2 chose, then trains ``configs/demo_repair.yaml`` on FILE with stage 2's windows).

Each call of each stream in ``DATA_DIR/pool.jsonl`` (``make_training_set`` writes them: default-world streams of
the train split that no stage trains on, half with a whistle every 100 s on average) is read teacher-forced in the
window the streaming cache holds when the call is made: the ``text_rounds`` seconds ending with it (its verbatim
turns and vision window), the earlier commentary as previous text (:func:`select.cut`). A call is *hard* when the
checkpoint's most likely score word there is not the right one, or gives the right one less than ``threshold``.
FILE gets the window of each hard call (a window file with its seek index, video paths relative to ``DATA_DIR``),
and each hard call is printed. ``--streams NAME`` reads another annotation file of ``DATA_DIR`` instead of the pool:
``--streams heldout.jsonl`` on a held-out folder lists the held-out calls a checkpoint gets wrong by itself (a
streamed slip the reading does not list can come from the streaming cache instead: docs/demo_model.md).

Why: a demo model's remaining score errors are few and its own. A run's held-out slips are calls it gets wrong in
that window with the right commentary before it, and the same run gets calls of the same kind wrong in fresh
streams (seed 10 of the recipe: 7 of the 3,625 held-out 10-minute calls, all ``score two`` where it was ``one``;
29 of the pool's 6,618 calls, all one too high, 25 of them less than 40 s after a whistle with a goal since);
stage 2's windows, the same for every run, do not single them out, and a run's validation streams hold too few of
them to choose by (docs/demo_model.md, the repair stage).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from streaming_vlm.argtypes import positive_int
from streaming_vlm.world.workers import default_workers

POOL = "pool.jsonl"
"""The pool streams' annotation file in ``DATA_DIR``."""
THRESHOLD = 0.5
"""A call is hard below this probability of its right score word (or when another word is more likely)."""


@dataclass(frozen=True)
class CallReading:
    """One call read teacher-forced in the window the cache holds when it is made."""

    video: str
    t: int
    """The call's second."""
    truth: str
    said: str
    """The most likely score word."""
    p_truth: float
    """The probability of the right one."""

    def hard(self, threshold: float = THRESHOLD) -> bool:
        return self.said != self.truth or self.p_truth < threshold


def call_windows(record, rounds: int, text_sink: int | None, text_window: int | None):
    """``(second, window)`` per call of ``record`` (one per second with words), each window the ``rounds`` seconds
    ending with it, laid out as the streaming cache holds them then; calls in the first ``rounds - 1`` seconds
    are left out (the cache holds less than a window there)."""
    from streaming_vlm.world.select import call_seconds, cut

    record = replace(record, title="")
    return [(t, cut(record, float(t + 1 - rounds), float(t + 1), text_sink, text_window)) for t in call_seconds(record)
            if t + 1 - rounds >= record.video_start]


def read_stream_calls(model_dir: str | Path, data_dir: str | Path, record, batch_size: int = 16) -> list[CallReading]:
    """Every call of one pool stream (``record``, its video under ``data_dir``) read by the checkpoint ``model_dir``
    (module doc), ``batch_size`` windows at a time."""
    from streaming_vlm.world.workers import reader as teacher_forced

    reader = teacher_forced(str(model_dir), 1024)  # the stream decoded once for all its windows
    settings = reader.settings
    data = Path(data_dir)
    items = call_windows(record, settings.text_rounds, settings.text_sink, settings.text_window)
    out = []
    decode = reader.tokenizer.decode
    for i in range(0, len(items), batch_size):
        group = items[i:i + batch_size]
        for (t, _), (rows, truth) in zip(group, reader.score_logits([(w, data / record.video) for _, w in group]),
                                         strict=True):
            probs = rows[-1].softmax(-1)  # the window's last score word: the call's
            out.append(CallReading(record.video, t, decode(int(truth[-1])).strip(), decode(int(probs.argmax())).strip(),
                                   float(probs[truth[-1]])))
    return out


def read_calls(model_dir: str | Path, data_dir: str | Path, annotation: str = POOL, batch_size: int = 16,
               progress: bool = True, workers: int = 1) -> list[CallReading]:
    """Every call of ``data_dir/annotation``'s streams read by the checkpoint ``model_dir`` (module doc), in stream
    order; the streams shared out among ``workers`` processes (:mod:`streaming_vlm.world.workers`: the same
    readings as one process, sooner)."""
    from streaming_vlm.world.select import stream_records
    from streaming_vlm.world.workers import map_in_processes

    jobs = [(str(model_dir), str(data_dir), rec, batch_size) for rec in stream_records(Path(data_dir) / annotation)]
    per_stream = map_in_processes(read_stream_calls, jobs, workers, desc=f"reading the calls of {annotation}",
                                  unit="stream", progress=progress)
    return [reading for readings in per_stream for reading in readings]


def write_hard_windows(data_dir: str | Path, readings: list[CallReading], out: str | Path, rounds: int,
                       threshold: float = THRESHOLD, annotation: str = POOL) -> int:
    """Write the ``rounds``-second window of each hard call of ``readings`` to the window file ``out`` (with its seek
    index; the cut records beside it as ``<out>_calls.jsonl``); returns how many."""
    from streaming_vlm.data.windows import build_windows
    from streaming_vlm.world.dataset import write_records
    from streaming_vlm.world.select import stream_records

    records = {rec.video: rec for rec in stream_records(Path(data_dir) / annotation)}
    hard = [r for r in readings if r.hard(threshold)]
    cuts = [replace(records[r.video], title="", video_start=float(r.t + 1 - rounds), video_end=float(r.t + 1))
            for r in hard]
    out = Path(out)
    part = write_records(out.with_name(out.stem + "_calls.jsonl"), cuts)
    build_windows(part, out, window=rounds, stride=rounds, variant="overlap", resume=False)
    return len(hard)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streaming_vlm.world.repair",
                                description="Read every call of the pool streams (or --streams) teacher-forced in "
                                            "the window the streaming cache holds then, and write the window of each "
                                            "call the checkpoint gets wrong (or gives its right score less than "
                                            "--threshold).")
    p.add_argument("data_dir", help=f"folder holding {POOL} and its videos (make_training_set writes them)")
    p.add_argument("checkpoint", help="the checkpoint to read them with")
    p.add_argument("--out", required=True, help="the window file to write (JSONL; its seek index beside it)")
    p.add_argument("--streams", default=POOL, metavar="NAME",
                   help="the annotation file in data_dir whose streams to read (default %(default)s; heldout.jsonl "
                        "in a held-out folder: the held-out calls)")
    p.add_argument("--threshold", type=float, default=THRESHOLD,
                   help="hard below this probability of the right score word (default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--workers", type=positive_int, default=default_workers(),
                   help="processes that read the streams, each with torch's threads shared out (default: one per "
                        "CPU core, %(default)s here)")
    args = p.parse_args(argv)
    data, ckpt, out = Path(args.data_dir), Path(args.checkpoint), Path(args.out)
    streams = data / args.streams
    if not streams.is_file():
        print(f"streaming-vlm: error: {streams}: not found", file=sys.stderr)
        return 2
    if not ckpt.is_dir():
        print(f"streaming-vlm: error: {ckpt}: not a directory", file=sys.stderr)
        return 2
    if not 0.0 <= args.threshold <= 1.0:
        print(f"streaming-vlm: error: --threshold {args.threshold}: must be in [0, 1]", file=sys.stderr)
        return 2
    inputs = {data.resolve(), ckpt.resolve(), streams.resolve()}
    if out.is_dir() or out.resolve() in inputs or not out.resolve().parent.is_dir():
        print(f"streaming-vlm: error: --out {out}: must be a file in an existing folder, not an input",
              file=sys.stderr)
        return 2
    from streaming_vlm.world.workers import reader

    try:
        rounds = reader(str(ckpt), 1024).settings.text_rounds  # a checkpoint (loaded here first: nothing started)
        readings = read_calls(ckpt, data, args.streams, batch_size=args.batch_size, workers=args.workers)
    except (OSError, ValueError) as exc:  # not a checkpoint, a bad line or video: nothing written yet
        print(f"streaming-vlm: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    n = write_hard_windows(data, readings, out, rounds, args.threshold, args.streams)
    print(f"{n} hard call(s) of {len(readings)} ({ckpt}): {out}")
    for r in readings:
        if r.hard(args.threshold):
            print(f"  {r.video} second {r.t}: {r.truth}, read as {r.said} ({r.p_truth:.3f} for {r.truth})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
