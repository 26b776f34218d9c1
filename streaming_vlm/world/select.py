"""Choose a demo checkpoint by its validation score accuracy, teacher-forced.

``python -m streaming_vlm.world.select VALID_DIR CHECKPOINT [CHECKPOINT ...] [--report FILE]``
(``scripts/train_demo.sh`` runs it on the stage-2 checkpoints and ships the one it prints last).

``VALID_DIR/select.jsonl`` holds validation streams (``make_training_set`` writes them, from the ``valid`` split:
never trained on, never held out). Each checkpoint reads them teacher-forced, in two kinds of window, built with
the training sample's own layout and the checkpoint's stream settings (``streaming_vlm.json``):

- **tiles**: windows of ``window`` seconds every ``window`` seconds, so every call of every stream once (those
  without a call are left out);
- **quiet stretches**: for every call whose previous call is at least ``text_rounds`` seconds back, the window of
  the ``text_rounds`` seconds ending with it. Its last second is exactly what the streaming cache holds then: the
  last score has left the verbatim turns and survives only in the previous text, behind ``text_rounds - 1`` quiet
  turns. This is where a model's running score slips on long streams.

The quantity is the **score accuracy**: the share of calls, in both kinds pooled, whose score word is the model's
most likely next token after the ground truth before it (``... score`` -> ``two``). The chosen checkpoint has the
highest; among equals, the lowest mean negative log-likelihood of the right score words (how sure it is where it
is right), then the later one in the argument order (the one trained longer).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ANNOTATION = "select.jsonl"
"""The validation streams' annotation file in ``VALID_DIR``."""


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

    def as_dict(self) -> dict:
        def ratio(right: int, n: int) -> float | None:
            return round(right / n, 5) if n else None

        return {"score_accuracy": None if self.value is None else round(self.value, 5),
                "tiles_accuracy": ratio(self.tiles_right, self.tiles),
                "quiet_accuracy": ratio(self.quiet_right, self.quiet),
                "mean_nll": None if self.mean_nll is None else round(self.mean_nll, 6),
                **asdict(self), "nll": round(self.nll, 6)}


def windows(record, window: float, rounds: int, text_sink: int | None, text_window: int | None):
    """``(kind, window record)`` of one stream: the tiles, then the quiet-stretch windows (see the module doc).
    The title is left out of the previous text, as inference starts with an empty one."""
    from streaming_vlm.data.annotations import StreamRecord
    from streaming_vlm.data.windows import cut_previous_text

    record = replace(record, title="")

    def clip(a: float, b: float) -> StreamRecord:
        previous, _ = cut_previous_text(record, [w for w in record.words if w.end <= a], text_sink, text_window)
        return StreamRecord(record.video, a, b, previous=previous, words=[w for w in record.words if a < w.end <= b],
                            source=record.source)

    out = []
    a = record.video_start
    while a + window <= record.video_end + 1e-9:
        tile = clip(a, a + window)
        if tile.words:  # a window without calls has no score word (and no sample)
            out.append(("tiles", tile))
        a += window
    call_seconds = sorted({int(w.end - 1e-6) for w in record.words})
    for before, s in zip(call_seconds, call_seconds[1:], strict=False):
        if s - before >= rounds and s + 1 - rounds >= record.video_start:
            out.append(("quiet", clip(s + 1 - rounds, s + 1)))
    return out


def score_positions(sample, score_id: int) -> list[int]:
    """Positions of the supervised score words of ``sample`` (the token after each `` score``)."""
    from streaming_vlm.data.sample import IGNORE_INDEX

    ids, labels = sample.input_ids, sample.labels
    return [p for p in range(1, len(ids)) if labels[p] != IGNORE_INDEX and int(ids[p - 1]) == score_id]


def validation_accuracy(model_dir: str | Path, valid_dir: str | Path, batch_size: int = 8,
                        window: float = 24.0) -> Accuracy:
    """Teacher-forced score accuracy of the checkpoint ``model_dir`` on ``valid_dir``'s streams (module doc)."""
    import torch
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from streaming_vlm.data.annotations import StreamRecord, iter_records
    from streaming_vlm.data.collator import StreamingCollator
    from streaming_vlm.data.sample import SampleBuilder, SampleConfig, video_pixel_values
    from streaming_vlm.preprocess import VisionSpec
    from streaming_vlm.settings import from_checkpoint, resolve

    settings, _ = resolve({}, checkpoint=from_checkpoint(model_dir), cls=SampleConfig)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).eval()
    spec = VisionSpec.from_pretrained(model_dir)
    builder = SampleBuilder(tokenizer, spec, settings,
                            tokens_per_second=model.config.vision_config.tokens_per_second)
    collate = StreamingCollator(tokenizer.pad_token_id)
    score_id = tokenizer.convert_tokens_to_ids("Ġscore")
    valid = Path(valid_dir)
    items = []
    for _, rec in iter_records(valid / ANNOTATION):
        if not isinstance(rec, StreamRecord):
            raise ValueError(str(rec))
        items += [(kind, w, valid / rec.video) for kind, w in
                  windows(rec, window, settings.text_rounds, settings.text_sink, settings.text_window)]
    acc = Accuracy()
    with torch.inference_mode():
        for i in range(0, len(items), batch_size):
            group = items[i:i + batch_size]
            samples = [builder.build(w, video) for _, w, video in group]
            batch = collate(samples)
            batch["pixel_values_videos"] = video_pixel_values(batch.pop("video_frames"), batch["video_grid_thw"], spec)
            batch.pop("labels")
            logits = model(**batch).logits.float()
            for b, ((kind, _, _), sample) in enumerate(zip(group, samples, strict=True)):
                positions = score_positions(sample, score_id)
                if kind == "quiet":  # only its last second is the cache's state after the quiet stretch
                    positions = positions[-1:]
                rows = logits[b, [p - 1 for p in positions]]
                truth = sample.input_ids[positions]
                right = int((rows.argmax(-1) == truth).sum())
                acc.nll += float(torch.nn.functional.cross_entropy(rows, truth, reduction="sum")) if positions else 0.0
                if kind == "quiet":
                    acc.quiet += len(positions)
                    acc.quiet_right += right
                else:
                    acc.tiles += len(positions)
                    acc.tiles_right += right
    return acc


def choose(results: list[tuple[str, Accuracy]]) -> str:
    """The checkpoint with the highest accuracy; among equals, the lowest mean NLL, then the later one."""
    best = None
    for name, acc in results:
        if acc.value is None:
            continue
        key = (acc.value, -acc.mean_nll)
        if best is None or key >= best[1]:
            best = (name, key)
    if best is None:
        raise ValueError("no checkpoint read a score word (the validation streams hold no calls)")
    return best[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streaming_vlm.world.select",
                                description="Print each checkpoint's teacher-forced validation score accuracy, then "
                                            "the best checkpoint (ties: the later one) on the last line.")
    p.add_argument("valid_dir", help=f"folder holding {ANNOTATION} and its videos (make_training_set writes it)")
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders, earliest first")
    p.add_argument("--report", default=None, help="also write the accuracies and the choice to this JSON file")
    args = p.parse_args(argv)
    for path in [args.valid_dir, *args.checkpoints]:
        if not Path(path).is_dir():
            print(f"streaming-vlm: error: {path}: not a directory", file=sys.stderr)
            return 2
    if not (Path(args.valid_dir) / ANNOTATION).is_file():
        print(f"streaming-vlm: error: {Path(args.valid_dir) / ANNOTATION}: not found", file=sys.stderr)
        return 2
    results = []
    for ckpt in args.checkpoints:
        acc = validation_accuracy(ckpt, args.valid_dir)
        results.append((ckpt, acc))
        print(f"{ckpt}: " + json.dumps(acc.as_dict()), flush=True)
    try:
        best = choose(results)
    except ValueError as exc:
        print(f"streaming-vlm: error: {exc}", file=sys.stderr)
        return 2
    if args.report:
        Path(args.report).write_text(json.dumps({"checkpoints": {c: a.as_dict() for c, a in results}, "best": best},
                                                indent=1) + "\n", encoding="utf-8")
    print(best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
