"""OVO-Bench: multiple-choice questions asked at a time point of a video, answered offline or while streaming.

Data (``--data-dir``, default ``$EVAL_DATASET_PATH/ovobench``) is laid out as in the upstream README: the
annotation file ``ovo_bench_new.json`` next to the source-video folders (``COIN/``, ``Ego4D/``, ...); each
datum's ``video`` (e.g. ``COIN/xZecGPPhbHE.mp4``) is resolved against ``--video-dir`` (default: the data dir).

Conversion (:func:`convert`) turns the JSON list into flat *probe items*, one per question for EPM, ASI, HLD
(backward tracing) and OCR, ACR, ATR, STU, FPD, OJR (real-time perception), and one per ``test_info`` entry for
REC, SSR and CRR (forward active responding, probed at each test time). Each item has a unique ``id``, the
``task``, the prompt (``question``), the displayed ``options`` (multiple choice only), the scored ``choices``,
the ``answer`` and its ``answer_index``, the ``video`` and the window ``[start, end]`` whose end is the query
time. The window starts at 0, except for CRR, where it starts at the datum's ``ask_time`` (as in the
reference conversion). Choices are the task's own answers: the option letters for multiple choice, ``"0"`` to
``"10"`` for REC (further if a count in the file exceeds 10), ``"No"``/``"Yes"`` for SSR and CRR.

Answering never takes an argmax over a global candidate set: every choice of the item's own task is scored as
a whole sequence and the most likely one is the prediction, so multi-token answers (REC ``"10"``) are
reachable and no task can answer with another task's label (the reference's two bugs). Two answer modes:

- ``offline`` (the reference protocol): the clip ``[start, end]`` is read at 2 fps, uniformly subsampled to at
  most ``--max-frames`` (480) frames, resized under the reference's pixel budget (per frame
  ``max(min(max_pixels, total_pixels / frames * 2), 1.05 * min_pixels)``) and shown in one pass as a single
  video in a plain chat (system prompt, user turn = video then prompt, assistant turn opened with
  ``"The answer is:\\n"``); each choice is scored as ``choice + <|im_end|>`` (:class:`OfflineScorer`).
- ``streaming``: a :class:`~streaming_vlm.engine.StreamSession` (``--cache-mode``, StreamingVLM's cache by
  default) watches ``[start, end]`` in 1-s chunks; the question is asked in the user turn of the last chunk,
  the one ending at the query time, and ``StreamSession.choose`` scores each ``choice + "\\n"``. While
  watching, the model stays silent by default (every earlier second is an empty assistant turn, just the end
  marker, as in training data for seconds without speech); ``--commentary-tokens N`` lets it comment instead.

Results: per-item records (resumable, rank-sharded JSONL through :func:`~streaming_vlm.eval.runner.run_items`),
``results.json`` with per-task accuracy (percent), the three category means (unweighted means over their tasks)
and their mean (``overall``, OVO-Bench's "Total Avg."), and a printed table. Run
``streaming-vlm eval ovobench --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import logging
import math
import os
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from streaming_vlm.argtypes import non_negative_int, positive_int

__all__ = [
    "ANNOTATION_FILE",
    "CATEGORIES",
    "Clip",
    "OfflineScorer",
    "OvoBenchError",
    "build_parser",
    "clip_window",
    "convert",
    "load_items",
    "main",
    "summarize",
]

logger = logging.getLogger(__name__)

ANNOTATION_FILE = "ovo_bench_new.json"
DATASET_ENV = "EVAL_DATASET_PATH"
DATASET_SUBDIR = "ovobench"

BACKWARD = ("EPM", "ASI", "HLD")
REALTIME = ("OCR", "ACR", "ATR", "STU", "FPD", "OJR")
FORWARD = ("REC", "SSR", "CRR")
TASKS = BACKWARD + REALTIME + FORWARD
CATEGORIES = {
    "Real-Time Visual Perception": REALTIME,
    "Backward Tracing": BACKWARD,
    "Forward Active Responding": FORWARD,
}
TASK_CATEGORY = {task: name for name, tasks in CATEGORIES.items() for task in tasks}

REC_MAX_COUNT = 10
YES_NO = ("No", "Yes")
ANSWER_PREFIX = "The answer is:\n"
MIN_WINDOW_S = 1.0


class OvoBenchError(Exception):
    """Bad annotation data or paths; the message is one line naming the datum or file."""


# ------------------------------------------------------------------------------------------------------------
# conversion: ovo_bench_new.json -> flat probe items
# ------------------------------------------------------------------------------------------------------------


def mc_prompt(question: str, options: Sequence[str]) -> tuple[str, list[str], list[str]]:
    """(prompt, displayed options "A. ...", scored choices "A", "B", ...) of a multiple-choice question."""
    letters = [chr(ord("A") + k) for k in range(len(options))]
    shown = [f"{letter}. {option}" for letter, option in zip(letters, options, strict=True)]
    return f"{question}\n" + "\n".join(shown) + "\nPlease select the correct answer.", shown, letters


def rec_prompt(activity: str) -> str:
    return (
        "You're watching a video in which people may perform a certain action repeatedly; the people performing "
        "it are called 'they' below. Count how many times in total they have performed this action so far. One "
        f"complete motion counts as one.\nHow many times did they {activity}?\n"
        "Answer with a single number (0, 1, 2, ...)."
    )


def ssr_prompt(step: str) -> str:
    return (
        "You're watching a tutorial video made of a sequence of steps. One step of the procedure is:\n"
        f'{step}\nIs the person in the video performing this step right now? Answer only with "Yes" or "No".'
    )


def crr_prompt(question: str) -> str:
    return (
        "You're answering a question about the video. It concerns the latest frames, i.e. the end of the video:\n"
        f"{question}\nDo the frames seen so far, especially the latest ones, already contain enough information "
        'to answer it? Answer only with "Yes" or "No".'
    )


def _field(datum: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = datum.get(key)
    if value is None or (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise OvoBenchError(f"{where}: field {key!r} is missing or not a {names} (got {value!r})")
    return value


_NUMBER = (int, float)


def _yes_no(value: Any, where: str) -> int:
    if isinstance(value, bool) or value not in (0, 1):
        raise OvoBenchError(f"{where}: 'type' must be 0 (No) or 1 (Yes), got {value!r}")
    return int(value)


def convert(data: Iterable[dict], tasks: Sequence[str] | None = None) -> list[dict]:
    """Flat probe items (see the module docstring) from the parsed ``ovo_bench_new.json`` list.

    ``tasks`` keeps only those tasks (default: all twelve). Raises :class:`OvoBenchError` on a malformed datum
    or an unknown task.
    """
    data = list(data)
    keep = set(TASKS if tasks is None else tasks)
    rec_max = REC_MAX_COUNT
    for datum in data:
        if isinstance(datum, dict) and datum.get("task") == "REC":
            for info in datum.get("test_info") or []:
                if isinstance(info, dict) and isinstance(info.get("count"), int):
                    rec_max = max(rec_max, info["count"])
    if rec_max > REC_MAX_COUNT:
        logger.warning("a REC count exceeds %d: REC choices go from 0 to %d", REC_MAX_COUNT, rec_max)
    rec_choices = [str(n) for n in range(rec_max + 1)]

    items: list[dict] = []
    for pos, datum in enumerate(data):
        if not isinstance(datum, dict):
            raise OvoBenchError(f"entry {pos} is not an object")
        where = f"datum {datum.get('id', f'#{pos}')!r}"
        task = _field(datum, "task", str, where)
        if task not in TASK_CATEGORY:
            raise OvoBenchError(f"{where}: unknown task {task!r} (expected one of {', '.join(TASKS)})")
        if task not in keep:
            continue
        did = _field(datum, "id", (int, str), where)
        video = _field(datum, "video", str, where)
        base = {"task": task, "category": TASK_CATEGORY[task], "video": video}
        if task not in FORWARD:
            options = _field(datum, "options", list, where)
            gt = _field(datum, "gt", int, where)
            if not options or not 0 <= gt < len(options):
                raise OvoBenchError(f"{where}: 'gt' {gt} is not an index into its {len(options)} options")
            prompt, shown, letters = mc_prompt(_field(datum, "question", str, where), [str(o) for o in options])
            items.append({
                "id": f"{task}-{did}", **base, "question": prompt, "options": shown, "choices": letters,
                "answer": letters[gt], "answer_index": gt, "start": 0.0,
                "end": float(_field(datum, "realtime", _NUMBER, where)),
            })  # fmt: skip
            continue
        infos = _field(datum, "test_info", list, where)
        for k, info in enumerate(infos):
            at = f"{where} test_info[{k}]"
            if not isinstance(info, dict):
                raise OvoBenchError(f"{at}: not an object")
            end = float(_field(info, "realtime", _NUMBER, at))
            if task == "REC":
                count = _field(info, "count", int, at)
                if count < 0:
                    raise OvoBenchError(f"{at}: negative count {count}")
                prompt, choices, index = rec_prompt(_field(datum, "activity", str, where)), rec_choices, count
                start = 0.0
            elif task == "SSR":
                prompt, choices, start = ssr_prompt(_field(info, "step", str, at)), list(YES_NO), 0.0
                index = _yes_no(info.get("type"), at)
            else:  # CRR: the window starts when the question is asked
                prompt, choices = crr_prompt(_field(datum, "question", str, where)), list(YES_NO)
                index = _yes_no(info.get("type"), at)
                start = float(_field(datum, "ask_time", _NUMBER, where))
            items.append({
                "id": f"{task}-{did}-{k}", **base, "question": prompt, "options": [], "choices": list(choices),
                "answer": choices[index], "answer_index": index, "start": start, "end": end,
            })  # fmt: skip
    ids = [it["id"] for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise OvoBenchError(f"duplicate datum id: {dup!r} appears more than once")
    return items


def load_items(annotation: str | os.PathLike[str], tasks: Sequence[str] | None = None) -> list[dict]:
    """Read ``ovo_bench_new.json`` and :func:`convert` it."""
    path = Path(annotation)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise OvoBenchError(f"annotation file not found: {path}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OvoBenchError(f"cannot read {path}: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, list):
        raise OvoBenchError(f"{path}: expected a JSON list of data")
    return convert(data, tasks)


def clip_window(start: float, end: float, video_duration: float, min_seconds: float = MIN_WINDOW_S):
    """The window actually shown: the end clamped to the video, the window at least ``min_seconds`` long.

    A too-short window is extended backwards (never past the query time, which would show the future).
    """
    e = min(max(end, min_seconds), video_duration)
    s = max(0.0, min(start, e - min_seconds))
    return s, e


# ------------------------------------------------------------------------------------------------------------
# answering
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Choice:
    index: int
    logprobs: list[float]
    frames: int
    """Frames the model saw."""


def _argmax(scores: Sequence[float]) -> int:
    return max(range(len(scores)), key=scores.__getitem__)


@dataclasses.dataclass
class Clip:
    """A clip encoded for the vision tower as one video: pixel values, grid (t, h, w patches) and frame rate."""

    pixels: Any
    grid: Any
    fps: float
    frames: int


class OfflineScorer:
    """The reference's offline protocol: the whole clip in one pass, then each choice scored as a sequence.

    The clip is read at ``fps``, uniformly subsampled to at most ``max_frames`` and resized under the per-frame
    cap :meth:`frame_pixels`. The prompt is a plain chat, ``system``, ``user`` = one video block (all frames)
    then the prompt text, ``assistant`` opened with ``answer_prefix``; a choice's score is
    ``log p(choice + <|im_end|> | prompt)``. The prompt is prefilled once into an unlimited ``StreamingCache``;
    each choice's tokens are forwarded on top and rolled back. Positions follow ``positions.py`` with the
    clip's real frame rate.
    """

    def __init__(
        self,
        model,
        *,
        fps: float = 2.0,
        max_frames: int = 480,
        min_pixels: int = 100 * 28 * 28,
        max_pixels: int = 768 * 28 * 28,
        total_pixels: int = 24576 * 28 * 28,
        answer_prefix: str = ANSWER_PREFIX,
    ):
        from streaming_vlm.layout import DEFAULT_SYSTEM_PROMPT, StreamLayout

        self.model = model
        self.fps = fps
        tpatch = model.spec.temporal_patch_size
        self.max_frames = max(tpatch, max_frames - max_frames % tpatch)
        self.min_pixels, self.max_pixels, self.total_pixels = min_pixels, max_pixels, total_pixels
        self.answer_prefix = answer_prefix
        self.layout = StreamLayout(model.loaded.tokenizer, DEFAULT_SYSTEM_PROMPT)

    def frame_pixels(self, n_frames: int) -> int:
        """Per-frame pixel cap for a clip of ``n_frames`` (qwen_vl_utils' video budget, as the reference)."""
        share = self.total_pixels / max(n_frames, 1) * self.model.spec.temporal_patch_size
        return int(max(min(self.max_pixels, share), self.min_pixels * 1.05))

    def preprocessor(self, n_frames: int):
        from streaming_vlm.preprocess import VideoPreprocessor

        cap = self.frame_pixels(n_frames)
        spec = dataclasses.replace(self.model.spec, min_pixels=min(self.min_pixels, cap), max_pixels=cap)
        return VideoPreprocessor(spec, device=self.model.loaded.device, dtype=self.model.loaded.dtype)

    def encode(self, frames, fps: float) -> Clip:
        """All ``frames`` (uint8 [T, H, W, 3]) as one video shown at ``fps``."""
        pixels, grid = self.preprocessor(len(frames))(frames)
        return Clip(pixels, grid, fps, len(frames))

    def read(self, path: str, start: float, end: float) -> Clip:
        """``[start, end)`` at ``fps``, uniformly subsampled to at most ``max_frames``, encoded as one video.

        Frames are encoded a temporal patch at a time as they are decoded (the patches of a video are laid out
        temporal patch by temporal patch, so this equals :meth:`encode` on all frames at once) and only pixel
        values are held, never the decoded frames of the whole clip.
        """
        import numpy as np
        import torch

        from streaming_vlm.video import VideoReader

        tpatch = self.model.spec.temporal_patch_size
        parts, pending, grid_t, grid_hw = [], [], 0, None
        with VideoReader(
            path, fps=self.fps, chunk_seconds=tpatch / self.fps, start=start, duration=end - start
        ) as reader:
            total = reader.num_chunks() * reader.frames_per_chunk
            keep = np.arange(total)
            if total > self.max_frames:
                keep = np.round(np.linspace(0, total - 1, self.max_frames)).astype(int)
            wanted = set(keep.tolist())
            preprocess = self.preprocessor(len(keep))
            for chunk in reader.chunks():
                first = chunk.index * reader.frames_per_chunk
                pending += [f for j, f in enumerate(chunk.frames) if first + j in wanted]
                while len(pending) >= tpatch:
                    pixels, grid = preprocess(np.stack(pending[:tpatch]))
                    del pending[:tpatch]
                    parts.append(pixels)
                    grid_t += int(grid[0, 0])
                    grid_hw = grid[0, 1:].tolist()
        grid = torch.tensor([[grid_t, *grid_hw]], dtype=torch.long)
        return Clip(torch.cat(parts), grid, self.fps * len(keep) / total, len(keep))

    def _forward(self, cache, meta, pixels=None, grid=None, *, keep: bool, all_positions: bool = False):
        model = self.model.loaded.model
        device = self.model.loaded.device
        kwargs: dict[str, Any] = dict(
            input_ids=meta.ids.to(device).unsqueeze(0),
            position_ids=cache.append(meta).to(device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=0 if all_positions else 1,
        )
        if pixels is not None:
            kwargs.update(pixel_values_videos=pixels, video_grid_thw=grid.to(device))
        try:
            logits = model(**kwargs).logits[0]
        except BaseException:
            cache.abort_forward()
            raise
        cache.end_forward() if keep else cache.abort_forward()
        return logits if all_positions else logits[-1]

    def prompt_meta(self, clip: Clip, prompt: str):
        """Tokens of the prompt around the clip's video block, up to where the answer starts."""
        from streaming_vlm.layout import Kind, StreamLayout, TokenMeta

        spec = self.model.spec
        tps = getattr(self.model.loaded.model.config.vision_config, "tokens_per_second", 2)
        lay = StreamLayout(
            self.layout.tokenizer, self.layout.system_prompt, time_interval=tps * spec.temporal_patch_size / clip.fps
        )
        t, h, w = (int(x) for x in clip.grid[0])
        end = [lay.im_end, *lay.newline]
        return TokenMeta.cat([
            lay.system(),
            TokenMeta.text([lay.im_start, *lay.encode("user"), *lay.newline], Kind.USER, 0),
            lay.vision_block(0, (t, h // spec.merge_size, w // spec.merge_size)),
            TokenMeta.text([*lay.encode(prompt), *end], Kind.USER, 0),
            lay.assistant_head(0),
            TokenMeta.text(lay.encode(self.answer_prefix), Kind.ASSIST_TEXT, 0),
        ])  # fmt: skip

    def choice_ids(self, choice: str) -> list[int]:
        return [*self.layout.encode(choice), self.layout.im_end]

    def score(self, clip: Clip, prompt: str, choices: Sequence[str]) -> Choice:
        import torch

        from streaming_vlm.cache import StreamingCache
        from streaming_vlm.layout import Kind, TokenMeta
        from streaming_vlm.policy import CachePolicy

        meta = self.prompt_meta(clip, prompt)
        cache = StreamingCache.for_model(self.model.loaded.model, CachePolicy.unlimited())
        with torch.inference_mode():
            first = torch.log_softmax(self._forward(cache, meta, clip.pixels, clip.grid, keep=True).float(), dim=-1)
            scores = []
            for choice in choices:
                ids = self.choice_ids(choice)
                lp = float(first[ids[0]])
                if len(ids) > 1:
                    logits = self._forward(
                        cache, TokenMeta.text(ids[:-1], Kind.ASSIST_TEXT, 0), keep=False, all_positions=True
                    )
                    target = torch.tensor(ids[1:], device=logits.device)[:, None]
                    lp += float(torch.log_softmax(logits.float(), dim=-1).gather(1, target).sum())
                scores.append(lp)
        return Choice(_argmax(scores), scores, clip.frames)

    def __call__(self, item: dict) -> Choice:
        clip = self.read(item["path"], item["window"][0], item["window"][1])
        return self.score(clip, item["question"], item["choices"])


class StreamingAnswerer:
    """Watch ``[start, end]`` chunk by chunk with a ``StreamSession``; ask at the last chunk with ``choose``."""

    def __init__(self, model, config, *, commentary: bool):
        self.model = model
        self.config = config
        self.commentary = commentary

    def __call__(self, item: dict) -> Choice:
        from streaming_vlm.eval.generate import new_session
        from streaming_vlm.video import VideoReader

        start, end = item["window"]
        session = new_session(self.model, self.config)
        frames = 0
        with VideoReader(
            item["path"],
            fps=self.config.fps,
            chunk_seconds=self.config.chunk_seconds,
            start=start,
            duration=end - start,
        ) as reader:
            last = reader.num_chunks() - 1
            for chunk in reader.chunks():
                frames += len(chunk.frames)
                if chunk.index < last:
                    session.step(chunk.frames, chunk.start, chunk.end, force_text=None if self.commentary else "")
                else:
                    result = session.choose(
                        chunk.frames, chunk.start, chunk.end, item["question"], list(item["choices"])
                    )
        return Choice(result.index, list(result.logprobs), frames)


# ------------------------------------------------------------------------------------------------------------
# scores
# ------------------------------------------------------------------------------------------------------------


def summarize(records: Iterable[dict]) -> dict[str, Any]:
    """Per-task accuracy (percent), category means (unweighted over the tasks present) and their mean."""
    per_task: dict[str, dict[str, Any]] = {}
    for rec in records:
        t = per_task.setdefault(rec["task"], {"correct": 0, "total": 0, "errors": 0})
        t["total"] += 1
        t["correct"] += bool(rec.get("correct"))
        t["errors"] += rec.get("error") is not None
    tasks = {}
    for task in TASKS:
        if task in per_task:
            t = per_task[task]
            tasks[task] = {"category": TASK_CATEGORY[task], "accuracy": 100.0 * t["correct"] / t["total"], **t}
    categories = {}
    for name, members in CATEGORIES.items():
        present = [t for t in members if t in tasks]
        categories[name] = {
            "accuracy": statistics.fmean(tasks[t]["accuracy"] for t in present) if present else None,
            "tasks": present,
        }
    means = [c["accuracy"] for c in categories.values() if c["accuracy"] is not None]
    return {"tasks": tasks, "categories": categories, "overall": statistics.fmean(means) if means else None}


def table_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, cat in summary["categories"].items():
        for task in cat["tasks"]:
            t = summary["tasks"][task]
            rows.append(
                {
                    "category": name,
                    "task": task,
                    "items": t["total"],
                    "correct": t["correct"],
                    "accuracy %": t["accuracy"],
                }
            )
        if cat["tasks"]:
            rows.append({"category": name, "task": "mean", "items": "", "correct": "", "accuracy %": cat["accuracy"]})
    if summary["overall"] is not None:
        rows.append(
            {
                "category": "Overall (mean of categories)",
                "task": "",
                "items": "",
                "correct": "",
                "accuracy %": summary["overall"],
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------------------


def _tasks(text: str) -> list[str]:
    tasks = [t.strip().upper() for t in text.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASK_CATEGORY]
    if bad or not tasks:
        raise argparse.ArgumentTypeError(f"unknown task(s) {', '.join(bad) or '(none)'}; choose from {','.join(TASKS)}")
    return list(dict.fromkeys(tasks))


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``streaming-vlm eval ovobench`` options (added to ``parser`` when given)."""
    from streaming_vlm.engine import MODES

    p = parser or argparse.ArgumentParser(
        prog="streaming-vlm eval ovobench",
        description="OVO-Bench accuracy per task and per category (real-time perception, backward tracing, "
        "forward active responding), answering offline (the clip up to the query time in one pass) or while "
        "streaming. Resumable; data-parallel under torchrun.",
    )
    p.add_argument("--model", required=True, help="model directory, hub id or 'tiny'")
    p.add_argument(
        "--data-dir",
        default=None,
        help=f"OVO-Bench directory holding {ANNOTATION_FILE} and the video folders "
        f"(default ${DATASET_ENV}/{DATASET_SUBDIR})",
    )
    p.add_argument("--annotation", default=None, help=f"annotation file (default DATA_DIR/{ANNOTATION_FILE})")
    p.add_argument(
        "--video-dir", default=None, help="root the datums' 'video' paths are relative to (default DATA_DIR)"
    )
    p.add_argument(
        "--answer-mode",
        choices=("offline", "streaming"),
        default="offline",
        help="offline: the clip up to the query time in one pass (the reference protocol, default); "
        "streaming: the model watches the stream chunk by chunk and is asked at the query time",
    )
    p.add_argument(
        "--tasks", type=_tasks, default=list(TASKS), help=f"comma-separated tasks (default {','.join(TASKS)})"
    )
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N items of each task")
    p.add_argument(
        "--out",
        default=None,
        help="output directory: per-item JSONL and results.json (default results/ovobench/MODEL-MODE)",
    )
    p.add_argument(
        "--skip-missing-videos",
        action="store_true",
        help="drop the items whose video file is missing (default: stop with an error)",
    )
    p.add_argument("--device", default="auto", help="auto (default; cuda:LOCAL_RANK under torchrun), cuda, cpu")
    p.add_argument("--dtype", default="auto", help="auto (default), bf16, fp16, fp32")
    p.add_argument("--fps", type=float, default=2.0, help="frames sampled per second (default 2)")
    p.add_argument(
        "--min-pixels",
        type=positive_int,
        default=100 * 28 * 28,
        help="minimum pixels per frame after resizing (default 100*28*28)",
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=768 * 28 * 28,
        help="maximum pixels per frame after resizing (default 768*28*28)",
    )
    g = p.add_argument_group("offline answer mode")
    g.add_argument(
        "--max-frames",
        type=positive_int,
        default=480,
        help="frames per clip at most; longer clips are uniformly subsampled (default 480)",
    )
    g.add_argument(
        "--total-pixels",
        type=positive_int,
        default=24576 * 28 * 28,
        help="pixel budget of a whole clip, shared by its frames (default 24576*28*28)",
    )
    g = p.add_argument_group("streaming answer mode")
    g.add_argument(
        "--cache-mode",
        choices=MODES,
        default="streaming",
        help="engine mode that watches the stream (default streaming: StreamingVLM's cache)",
    )
    g.add_argument(
        "--commentary-tokens",
        type=non_negative_int,
        default=0,
        help="commentary tokens per watched second at most; 0 (default) = watch silently",
    )
    g.add_argument("--query", default="", help="instruction in the first chunk's user turn (default none)")
    g.add_argument("--seed", type=int, default=0, help="commentary sampling seed (default 0)")
    return p


def _fail(message: str) -> int:
    print(f"streaming-vlm eval ovobench: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def _data_dir(arg: str | None) -> Path:
    if arg:
        path = Path(arg).expanduser()
    elif os.environ.get(DATASET_ENV):
        path = Path(os.environ[DATASET_ENV]).expanduser() / DATASET_SUBDIR
    else:
        raise OvoBenchError(
            f"no data directory: pass --data-dir or set {DATASET_ENV} (data in ${DATASET_ENV}/{DATASET_SUBDIR})"
        )
    if not path.is_dir():
        raise OvoBenchError(f"data directory not found: {path}")
    return path


@functools.lru_cache(maxsize=4096)
def _duration(path: str) -> float:
    from streaming_vlm.video import probe

    return probe(path).duration


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Options that change per-item results: a rerun into the same --out must use the same ones."""
    keys = ["model", "answer_mode", "fps", "min_pixels", "max_pixels"]
    if args.answer_mode == "offline":
        keys += ["max_frames", "total_pixels"]
    else:
        keys += ["cache_mode", "commentary_tokens", "query", "seed"]
    return {k: getattr(args, k) for k in keys}


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    path = out / "settings.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
        if diff:
            raise OvoBenchError(
                f"{out} holds results made with other settings ({'; '.join(diff)}); use another --out or delete it"
            )


def _write_settings(out: Path, settings: dict[str, Any]) -> None:
    path = out / "settings.json"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def _select(items: list[dict], limit: int | None) -> list[dict]:
    if limit is None:
        return items
    seen: dict[str, int] = {}
    out = []
    for it in items:
        seen[it["task"]] = seen.get(it["task"], 0) + 1
        if seen[it["task"]] <= limit:
            out.append(it)
    return out


def _record(item: dict, answer) -> dict:
    """One item's result: the scored choice (or the error that prevented it)."""
    from streaming_vlm.video import VideoError

    base = {"id": item["id"], "task": item["task"], "answer": item["answer"]}
    try:
        duration = _duration(item["path"])
        item = {**item, "window": clip_window(item["start"], item["end"], duration)}
        choice = answer(item)
    except VideoError as exc:
        logger.warning("%s: %s", item["id"], exc)
        return {**base, "pred": None, "correct": False, "error": " ".join(str(exc).split())}
    pred = item["choices"][choice.index]
    return {
        **base,
        "pred": pred,
        "correct": choice.index == item["answer_index"],
        "logprobs": [round(x, 5) for x in choice.logprobs],
        "window": [round(x, 3) for x in item["window"]],
        "frames": choice.frames,
    }


def main(argv: list[str] | argparse.Namespace | None = None) -> int:
    args = argv if isinstance(argv, argparse.Namespace) else build_parser().parse_args(argv)
    from streaming_vlm.engine import StreamConfig
    from streaming_vlm.eval.generate import load_eval_model
    from streaming_vlm.eval.runner import format_table, rank_and_world, run_items, write_results
    from streaming_vlm.models import ModelLoadError
    from streaming_vlm.sampling import SamplingConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    rank, world = rank_and_world()
    model_label = Path(str(args.model).rstrip("/")).name or str(args.model)
    try:
        data_dir = _data_dir(args.data_dir)
        annotation = Path(args.annotation) if args.annotation else data_dir / ANNOTATION_FILE
        video_dir = Path(args.video_dir).expanduser() if args.video_dir else data_dir
        items = _select(load_items(annotation, args.tasks), args.limit)
        for it in items:
            it["path"] = str(video_dir / it["video"])
        missing = sorted({it["path"] for it in items if not os.path.isfile(it["path"])})
        if missing and not args.skip_missing_videos:
            raise OvoBenchError(
                f"{len(missing)} video file(s) missing under {video_dir} (first: {missing[0]}); "
                "pass --video-dir or --skip-missing-videos"
            )
        if missing:
            logger.warning("skipping the items of %d missing video file(s)", len(missing))
            gone = set(missing)
            items = [it for it in items if it["path"] not in gone]
        if not items:
            raise OvoBenchError(f"no items to evaluate in {annotation} for tasks {','.join(args.tasks)}")
        if not (args.fps > 0 and math.isfinite(args.fps)):
            raise OvoBenchError(f"--fps must be > 0, got {args.fps}")
        if args.answer_mode == "streaming" and (args.fps % 2 or args.fps != int(args.fps)):
            raise OvoBenchError(
                f"--fps must give an even number of frames per 1-s chunk when streaming, got {args.fps:g}"
            )
        out = Path(args.out) if args.out else Path("results") / "ovobench" / f"{model_label}-{args.answer_mode}"
        _check_settings(out, _settings(args))
        stream_config = None
        if args.answer_mode == "streaming":
            stream_config = StreamConfig(
                mode=args.cache_mode,
                query=args.query,
                fps=args.fps,
                chunk_seconds=1.0,
                seed=args.seed,
                sampling=SamplingConfig(max_new_tokens=max(1, args.commentary_tokens)),
            )
        model = load_eval_model(
            args.model,
            device=args.device,
            dtype=args.dtype,
            min_pixels=min(args.min_pixels, args.max_pixels),
            max_pixels=args.max_pixels,
        )
        if stream_config is not None:
            if args.commentary_tokens and model.loaded.generation_defaults:
                defaults = model.loaded.generation_defaults
                sampling = dataclasses.replace(
                    stream_config.sampling, top_p=defaults.get("top_p"), top_k=defaults.get("top_k")
                )
                stream_config = dataclasses.replace(stream_config, sampling=sampling)
            answer = StreamingAnswerer(model, stream_config, commentary=args.commentary_tokens > 0)
        else:
            answer = OfflineScorer(
                model,
                fps=args.fps,
                max_frames=args.max_frames,
                min_pixels=min(args.min_pixels, args.max_pixels),
                max_pixels=args.max_pixels,
                total_pixels=args.total_pixels,
            )
    except (OvoBenchError, ModelLoadError, ValueError, OSError) as exc:
        return _fail(str(exc))

    if rank == 0:
        _write_settings(out, _settings(args))
    logger.info("OVO-Bench: %d items, answer mode %s, rank %d of %d", len(items), args.answer_mode, rank, world)
    records = run_items("ovobench", items, lambda it: _record(it, answer), out)
    if records is None:
        return 0
    summary = summarize(records)
    doc = {
        "meta": {
            "benchmark": "OVO-Bench",
            "model": str(args.model),
            "answer_mode": args.answer_mode,
            "annotation": str(annotation),
            "video_dir": str(video_dir),
            "items": len(records),
            "errors": sum(r.get("error") is not None for r in records),
            "missing_videos_skipped": len(missing),
            "tasks": list(args.tasks),
            "limit_per_task": args.limit,
            "settings": _settings(args),
            "world_size": world,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "notes": "accuracy in percent; category = unweighted mean of its tasks' accuracies; overall = mean of "
            "the category means. Each item is answered by scoring the task's own choices as whole sequences.",
        },
        **summary,
    }
    print(f"wrote {write_results(out / 'results.json', doc)}")
    print(format_table(table_rows(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
