"""Choose a demo checkpoint by its score accuracy on the validation streams, teacher-forced or free-running.

``python -m streaming_vlm.world.select VALID_DIR CHECKPOINT [CHECKPOINT ...] [--by teacher-forced|streamed]
[--out DIR] [--report FILE]`` (``scripts/train_demo.sh`` runs it on the stage-2 checkpoints and ships the one it
prints last).

``VALID_DIR/select.jsonl`` holds validation streams (``make_training_set`` writes them, from the ``valid`` split:
never trained on, never held out). Two ways to read them:

- **teacher-forced** (the default): each checkpoint reads the streams teacher-forced, in two kinds of window
  built with the training sample's own layout and the checkpoint's stream settings (``streaming_vlm.json``):

  - *tiles*: windows of ``window`` seconds every ``window`` seconds, so every call of every stream once (those
    without a call are left out);
  - *quiet stretches*: for every call whose previous call is at least ``text_rounds`` seconds back, the window of
    the ``text_rounds`` seconds ending with it. Its last second is exactly what the streaming cache holds then:
    the last score has left the verbatim turns and survives only in the previous text, behind
    ``text_rounds - 1`` quiet turns.

  The quantity is the share of calls, in both kinds pooled, whose score word is the model's most likely next
  token after the ground truth before it (``... score`` -> ``two``); then the lowest mean negative
  log-likelihood of the right score words.
- **streamed**: each checkpoint streams them as a user would, in the evaluation's streaming mode
  (``streaming-vlm eval synth --modes streaming``: greedy, the bounded cache, its own commentary fed back), and
  the quantity is that evaluation's running-score accuracy (the share of matched calls with the right score),
  then its worst stream. This is what the held-out targets measure: a slip (a goal not counted, a score misread
  from the previous text) costs every call until the next whistle. The per-chunk records go to ``--out`` (one
  folder per checkpoint; an interrupted choice resumes).

The chosen checkpoint has the highest quantity; among equals, the later one in the argument order (the one
trained longer). Teacher forcing never sees a slip, the streamed reading does: on the 20 stage-2 checkpoints of
five demo runs the teacher-forced accuracy spanned 0.978-0.997 and the streamed one 0.861-1.000. But 80 streamed
minutes see too few slips to rank good checkpoints: where the two readings chose differently (three runs), the
streamed choice was not better on the held-out streams as a rule (10-minute streams 0.982 vs 0.984, 0.998 vs
0.997 and 0.973 vs 0.974, worst stream 0.829 vs 0.830, 0.969 vs 0.946 and 0.726 vs 0.726; 60-minute streams
0.928 vs 0.970, 0.991 vs 0.991 and 0.966 vs 0.966), and it takes longer (four checkpoints, one thread beside
another job: 6 min 47 s against about 5 min), so the default is teacher-forced.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from streaming_vlm.argtypes import positive_int
from streaming_vlm.world.workers import default_workers, map_in_processes

ANNOTATION = "select.jsonl"
"""The validation streams' annotation file in ``VALID_DIR``."""
BY = ("teacher-forced", "streamed")
"""The ways to read the validation streams (module doc); the first is the default."""


@dataclass
class Accuracy:
    """Score words right / score words, per kind of window."""

    tiles: int = 0
    tiles_right: int = 0
    quiet: int = 0
    quiet_right: int = 0
    nll: float = 0.0
    """Sum over the score words of the negative log-likelihood of the right one."""

    @property
    def calls(self) -> int:
        return self.tiles + self.quiet

    @property
    def value(self) -> float | None:
        return (self.tiles_right + self.quiet_right) / self.calls if self.calls else None

    @property
    def mean_nll(self) -> float | None:
        return self.nll / self.calls if self.calls else None

    @property
    def key(self) -> tuple[float, ...] | None:
        """What :func:`choose` ranks by (higher is better): the accuracy, then the lower mean NLL."""
        return None if self.value is None else (self.value, -self.mean_nll)

    def as_dict(self) -> dict:
        def ratio(right: int, n: int) -> float | None:
            return round(right / n, 5) if n else None

        return {"score_accuracy": None if self.value is None else round(self.value, 5),
                "tiles_accuracy": ratio(self.tiles_right, self.tiles),
                "quiet_accuracy": ratio(self.quiet_right, self.quiet),
                "mean_nll": None if self.mean_nll is None else round(self.mean_nll, 6),
                **asdict(self), "nll": round(self.nll, 6)}


@dataclass
class Streamed:
    """The streamed validation of one checkpoint: the synth evaluation's streaming-mode numbers."""

    score_accuracy: float | None
    """Running-score accuracy over the matched calls of every stream, pooled."""
    worst_stream: float | None
    """The lowest running-score accuracy of one stream."""
    slips: int
    """First slips of the running score (each costs its stream the calls until the next whistle)."""
    event_f1: float | None

    @property
    def key(self) -> tuple[float, ...] | None:
        """What :func:`choose` ranks by (higher is better): the pooled accuracy, then the worst stream's."""
        if self.score_accuracy is None:
            return None
        return (self.score_accuracy, -1.0 if self.worst_stream is None else self.worst_stream)

    def as_dict(self) -> dict:
        return asdict(self)


def streamed_accuracy(model_dir: str | Path, valid_dir: str | Path, out_dir: str | Path,
                      threads: int | None = None) -> Streamed:
    """Stream ``valid_dir``'s validation streams with the checkpoint ``model_dir`` through ``streaming-vlm eval
    synth`` (streaming mode, its defaults), records and report in ``out_dir`` (resumable); its table goes to
    stderr. :class:`ValueError` when the evaluation fails (it has said why on stderr)."""
    from streaming_vlm.eval import synth

    out = Path(out_dir)
    report = out / "report.json"
    argv = ["--data", str(valid_dir), "--split", Path(ANNOTATION).stem, "--modes", "streaming",
            "--model", str(model_dir), "--report", str(report), "--figure", "", "--out", str(out / "records"),
            "--quiet"]
    if threads is not None:
        argv += ["--threads", str(threads)]
    with contextlib.redirect_stdout(sys.stderr):
        status = synth.main(argv)
    if status:
        raise ValueError(f"streaming the validation streams with {model_dir} failed (exit status {status})")
    s = json.loads(report.read_text(encoding="utf-8"))["modes"]["streaming"]
    worst = s["fact_accuracy_worst"]
    return Streamed(s["fact_accuracy"], worst["fact_accuracy"] if worst else None, s["score_slips"]["total"],
                    s["event_f1"])


def cut(record, a: float, b: float, text_sink: int | None, text_window: int | None):
    """``record`` from ``a`` to ``b`` s as a window, laid out as the streaming cache holds it: the earlier commentary
    as previous text (cut to the sink and window), the words ending in ``(a, b]`` as its turns, no title
    (inference starts with an empty previous text)."""
    from streaming_vlm.data.annotations import StreamRecord
    from streaming_vlm.data.windows import cut_previous_text

    previous, _ = cut_previous_text(record, [w for w in record.words if w.end <= a], text_sink, text_window)
    return StreamRecord(record.video, a, b, previous=previous, words=[w for w in record.words if a < w.end <= b],
                        source=record.source)


def call_seconds(record) -> list[int]:
    """The seconds of ``record`` that hold a call (a word ends in them), in order."""
    return sorted({int(w.end - 1e-6) for w in record.words})


def windows(record, window: float, rounds: int, text_sink: int | None, text_window: int | None):
    """``(kind, window record)`` of one stream: the tiles, then the quiet-stretch windows (see the module doc)."""
    record = replace(record, title="")
    out = []
    a = record.video_start
    while a + window <= record.video_end + 1e-9:
        tile = cut(record, a, a + window, text_sink, text_window)
        if tile.words:  # a window without calls has no score word (and no sample)
            out.append(("tiles", tile))
        a += window
    seconds = call_seconds(record)
    for before, s in zip(seconds, seconds[1:], strict=False):
        if s - before >= rounds and s + 1 - rounds >= record.video_start:
            out.append(("quiet", cut(record, s + 1 - rounds, s + 1, text_sink, text_window)))
    return out


def score_positions(sample, score_id: int) -> list[int]:
    """Positions of the supervised score words of ``sample`` (the token after each `` score``)."""
    from streaming_vlm.data.sample import IGNORE_INDEX

    ids, labels = sample.input_ids, sample.labels
    return [p for p in range(1, len(ids)) if labels[p] != IGNORE_INDEX and int(ids[p - 1]) == score_id]


def stream_records(path: Path):
    """The stream records of the annotation file ``path`` (:class:`ValueError` on a line that is not one)."""
    from streaming_vlm.data.annotations import StreamRecord, iter_records

    for _, rec in iter_records(path):
        if not isinstance(rec, StreamRecord):
            raise ValueError(str(rec))
        yield rec


class TeacherForced:
    """A checkpoint that reads windows teacher-forced: each window built as a training sample (the project's layout,
    the checkpoint's stream settings from ``streaming_vlm.json``), the logits before each score word."""

    def __init__(self, model_dir: str | Path, frame_cache_mb: int = 0):
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        from streaming_vlm.data.collator import StreamingCollator
        from streaming_vlm.data.frames import FrameCache
        from streaming_vlm.data.sample import SampleBuilder
        from streaming_vlm.preprocess import VisionSpec

        self.settings = self.stream_settings(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).eval()
        self.spec = VisionSpec.from_pretrained(model_dir)
        self.builder = SampleBuilder(self.tokenizer, self.spec, self.settings,
                                     tokens_per_second=self.model.config.vision_config.tokens_per_second,
                                     frame_cache=FrameCache(frame_cache_mb * 2**20) if frame_cache_mb else None)
        self.collate = StreamingCollator(self.tokenizer.pad_token_id)
        self.score_id = self.tokenizer.convert_tokens_to_ids("Ġscore")

    @staticmethod
    def stream_settings(model_dir: str | Path):
        """The checkpoint's sample settings (its ``streaming_vlm.json`` over the defaults)."""
        from streaming_vlm.data.sample import SampleConfig
        from streaming_vlm.settings import from_checkpoint, resolve

        return resolve({}, checkpoint=from_checkpoint(model_dir), cls=SampleConfig)[0]

    def score_logits(self, group: list[tuple[object, Path]]) -> list[tuple[object, object]]:
        """For each ``(window record, video file)`` of ``group`` (one batch): the logits (float32) predicting each of
        its score words, one row per word in order, and those words' token ids."""
        import torch

        from streaming_vlm.data.sample import video_pixel_values

        samples = [self.builder.build(w, video) for w, video in group]
        batch = self.collate(samples)
        batch["pixel_values_videos"] = video_pixel_values(batch.pop("video_frames"), batch["video_grid_thw"],
                                                          self.spec)
        batch.pop("labels")
        with torch.inference_mode():
            logits = self.model(**batch).logits.float()
        out = []
        for b, sample in enumerate(samples):
            positions = score_positions(sample, self.score_id)
            out.append((logits[b, [p - 1 for p in positions]], sample.input_ids[positions]))
        return out


def validation_accuracy(model_dir: str | Path, valid_dir: str | Path, batch_size: int = 8,
                        window: float = 24.0) -> Accuracy:
    """Teacher-forced score accuracy of the checkpoint ``model_dir`` on ``valid_dir``'s streams (module doc)."""
    import torch

    reader = TeacherForced(model_dir)
    settings = reader.settings
    valid = Path(valid_dir)
    items = [(kind, w, valid / rec.video) for rec in stream_records(valid / ANNOTATION)
             for kind, w in windows(rec, window, settings.text_rounds, settings.text_sink, settings.text_window)]
    acc = Accuracy()
    for i in range(0, len(items), batch_size):
        group = items[i:i + batch_size]
        for (kind, _, _), (rows, truth) in zip(group, reader.score_logits([(w, v) for _, w, v in group]),
                                               strict=True):
            if kind == "quiet":  # only its last second is the cache's state after the quiet stretch
                rows, truth = rows[-1:], truth[-1:]
            right = int((rows.argmax(-1) == truth).sum())
            acc.nll += float(torch.nn.functional.cross_entropy(rows, truth, reduction="sum")) if len(truth) else 0.0
            if kind == "quiet":
                acc.quiet += len(truth)
                acc.quiet_right += right
            else:
                acc.tiles += len(truth)
                acc.tiles_right += right
    return acc


def choose(results: list[tuple[str, Accuracy | Streamed]]) -> str:
    """The checkpoint with the highest ``key`` (the accuracy, then its tie-breaker); among equals, the later one."""
    best = None
    for name, acc in results:
        key = acc.key
        if key is None:
            continue
        if best is None or key >= best[1]:
            best = (name, key)
    if best is None:
        raise ValueError("no checkpoint read a score word (the validation streams hold no calls)")
    return best[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streaming_vlm.world.select",
                                description="Print each checkpoint's validation score accuracy, then the best "
                                            "checkpoint (ties: the later one) on the last line.")
    p.add_argument("valid_dir", help=f"folder holding {ANNOTATION} and its videos (make_training_set writes it)")
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders, earliest first")
    p.add_argument("--by", choices=BY, default=BY[0],
                   help="read the validation streams teacher-forced, or stream them free-running (default %(default)s)")
    p.add_argument("--out", default=None,
                   help="--by streamed: folder of the per-chunk records, one folder per checkpoint, resumable "
                        "(default: a temporary folder)")
    p.add_argument("--threads", type=positive_int, default=None, help="--by streamed: CPU threads (default: torch's)")
    p.add_argument("--workers", type=positive_int, default=default_workers(),
                   help="--by teacher-forced: processes that read the checkpoints, each with torch's threads shared "
                        "out (the same accuracies as one process, sooner; default: one per CPU core, %(default)s "
                        "here)")
    p.add_argument("--report", default=None, help="also write the accuracies and the choice to this JSON file")
    args = p.parse_args(argv)
    for path in [args.valid_dir, *args.checkpoints]:
        if not Path(path).is_dir():
            print(f"streaming-vlm: error: {path}: not a directory", file=sys.stderr)
            return 2
    if not (Path(args.valid_dir) / ANNOTATION).is_file():
        print(f"streaming-vlm: error: {Path(args.valid_dir) / ANNOTATION}: not found", file=sys.stderr)
        return 2
    inputs = {Path(p).resolve() for p in [args.valid_dir, *args.checkpoints]}
    for flag, path, want_dir in (("--out", args.out, True), ("--report", args.report, False)):
        if path is None:
            continue
        target = Path(path)
        wrong = target.is_file() if want_dir else target.is_dir()
        if wrong or target.resolve() in inputs or not target.resolve().parent.is_dir():
            kind = "a folder" if want_dir else "a file"
            print(f"streaming-vlm: error: {flag} {path}: must be {kind} in an existing folder, not an input",
                  file=sys.stderr)
            return 2
    results: list[tuple[str, Accuracy | Streamed]] = []
    with contextlib.ExitStack() as stack:
        out = args.out
        if args.by == "streamed" and out is None:  # teacher forcing writes no records
            out = stack.enter_context(tempfile.TemporaryDirectory(prefix="select-"))
        try:
            if args.by == "streamed":  # one at a time, each printed when done
                accuracies = (streamed_accuracy(ckpt, args.valid_dir, Path(out) / f"{i:02d}_{Path(ckpt).name}",
                                                args.threads) for i, ckpt in enumerate(args.checkpoints))
            else:
                accuracies = map_in_processes(validation_accuracy, [(c, args.valid_dir) for c in args.checkpoints],
                                              args.workers)
            for ckpt, acc in zip(args.checkpoints, accuracies, strict=True):
                results.append((ckpt, acc))
                print(f"{ckpt}: " + json.dumps(acc.as_dict()), flush=True)
        except ValueError as exc:
            print(f"streaming-vlm: error: {exc}", file=sys.stderr)
            return 2
    try:
        best = choose(results)
    except ValueError as exc:
        print(f"streaming-vlm: error: {exc}", file=sys.stderr)
        return 2
    if args.report:
        Path(args.report).write_text(json.dumps({"by": args.by, "checkpoints": {c: a.as_dict() for c, a in results},
                                                 "best": best}, indent=1) + "\n", encoding="utf-8")
    print(best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
