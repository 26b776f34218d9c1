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
reachable and no task can answer with another task's label (the reference's two bugs). Both answer modes run
on the engine (``StreamSession``), so the model runs through one forward path:

- ``offline`` (the reference protocol, :func:`answer_offline`): the clip ``[start, end]`` is read at ``fps``
  (2), uniformly subsampled to at most ``max_frames`` (480) frames, resized under the one pixel budget of a clip
  of known length (``StreamSettings.frame_pixels``: ``total_pixels`` shared by its frames, within
  ``[min_pixels, max_pixels]``) and shown in one pass as a single video in a plain chat (system prompt, user
  turn = video then prompt, assistant turn opened with ``"The answer is:\\n"``: :func:`offline_prompt`); each
  choice is scored as ``choice + <|im_end|>`` (``StreamSession.score`` in engine mode ``full``).
- ``streaming`` (:func:`answer_streaming`, ``vqa.VideoQA``'s watch-then-answer loop): a session
  (``--cache-mode``, StreamingVLM's cache by default) watches ``[start, end]`` in 1-s chunks; the question is
  asked in the user turn of the last chunk, the one ending at the query time, and ``StreamSession.choose``
  scores each ``choice + "\\n"``. While watching, the model stays silent by default (every earlier second is an
  empty assistant turn, just the end marker, as in training data for seconds without speech);
  ``--commentary-tokens N`` lets it comment instead (at most N tokens a second).

Stream settings are the benchmark harness's (``eval/harness.py``), the protocol pinning no instruction and 1-s
chunks; ``max_new_tokens`` is ``--commentary-tokens`` (recorded only when it is set).

Results: per-item records (resumable, rank-sharded JSONL through the harness), ``results.json`` with per-task
accuracy (percent), the three category means (unweighted means over their tasks) and their mean (``overall``,
OVO-Bench's "Total Avg."), and a printed table. Run ``streaming-vlm eval ovobench --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import logging
import os
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streaming_vlm.argtypes import csv_choices, non_negative_int, positive_int
from streaming_vlm.eval import harness
from streaming_vlm.settings import DEFAULTS

if TYPE_CHECKING:
    from streaming_vlm.eval.vqa import VideoQA
    from streaming_vlm.layout import StreamLayout, TokenMeta
    from streaming_vlm.video import VideoReader

__all__ = [
    "ANNOTATION_FILE",
    "CATEGORIES",
    "Choice",
    "OvoBench",
    "OvoBenchError",
    "answer_offline",
    "answer_streaming",
    "choice_ids",
    "clip_window",
    "convert",
    "encode_clip",
    "load_items",
    "main",
    "offline_prompt",
    "subsample",
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


def subsample(total: int, max_frames: int):
    """Indices of the frames kept of a clip of ``total`` frames: all of them, or ``max_frames`` spread uniformly
    (``round(linspace(0, total - 1, max_frames))``, the reference's subsampling)."""
    import numpy as np

    if total <= max_frames:
        return np.arange(total)
    return np.round(np.linspace(0, total - 1, max_frames)).astype(int)


def encode_clip(reader: VideoReader, keep, preprocess) -> tuple[Any, Any]:
    """The frames of ``reader``'s window whose indices are in ``keep``, as one video: ``(pixel values, grid
    [[t, h, w]])``. Frames are encoded a temporal patch at a time as they are decoded (the patches of a video are
    laid out temporal patch by temporal patch, so this equals ``preprocess`` on all of them at once) and only pixel
    values are held, never the decoded frames of the whole clip. Raises ``VideoError`` when no frame was read."""
    import numpy as np
    import torch

    from streaming_vlm.video import VideoError

    tpatch = preprocess.spec.temporal_patch_size
    wanted = {int(k) for k in keep}
    parts, pending, grid_t, grid_hw = [], [], 0, None
    for chunk in reader.chunks():
        first = chunk.index * reader.frames_per_chunk
        pending += [f for j, f in enumerate(chunk.frames) if first + j in wanted]
        while len(pending) >= tpatch:
            pixels, grid = preprocess(np.stack(pending[:tpatch]))
            del pending[:tpatch]
            parts.append(pixels)
            grid_t += int(grid[0, 0])
            grid_hw = grid[0, 1:].tolist()
    if not parts:
        raise VideoError(f"{reader.path}: no frame read in [{reader.start:g}, {reader.end:g}) s")
    return torch.cat(parts), torch.tensor([[grid_t, *grid_hw]], dtype=torch.long)


def offline_prompt(layout: StreamLayout, llm_grid: tuple[int, int, int], prompt: str,
                   answer_prefix: str = ANSWER_PREFIX) -> TokenMeta:
    """The reference's plain chat up to where the answer starts, as tokens: the system turn, one user turn (a video
    block of ``llm_grid`` = (t, h, w) LLM tokens, then ``prompt``) and the assistant turn opened with
    ``answer_prefix``; all of round 0. The video block's positions follow ``layout.time_interval`` (the clip's own
    frame rate)."""
    from streaming_vlm.layout import Kind, TokenMeta

    turn_end = [layout.im_end, *layout.newline]
    return TokenMeta.cat([
        layout.system(),
        TokenMeta.text([layout.im_start, *layout.encode("user"), *layout.newline], Kind.USER, 0),
        layout.vision_block(0, llm_grid),
        TokenMeta.text([*layout.encode(prompt), *turn_end], Kind.USER, 0),
        layout.assistant_head(0),
        TokenMeta.text(layout.encode(answer_prefix), Kind.ASSIST_TEXT, 0),
    ])  # fmt: skip


def choice_ids(layout: StreamLayout, choice: str) -> list[int]:
    """A choice as the offline protocol scores it: its tokens, then ``<|im_end|>``."""
    return [*layout.encode(choice), layout.im_end]


def answer_offline(run: harness.Run, item: dict) -> Choice:
    """The reference's offline protocol on ``item["window"]`` (see the module doc), through the engine: a session
    in mode ``full`` whose vision spec is the settings' budget for the clip's frame count, prefilled with
    :func:`offline_prompt` and scoring :func:`choice_ids` of each choice (``StreamSession.score``)."""
    from streaming_vlm.video import VideoReader

    s = run.settings
    spec = run.model.spec
    tpatch = spec.temporal_patch_size
    max_frames = max(tpatch, s.max_frames - s.max_frames % tpatch)
    start, end = item["window"]
    with VideoReader(item["path"], fps=s.fps, chunk_seconds=tpatch / s.fps, start=start,
                     duration=end - start) as reader:
        total = reader.num_chunks() * reader.frames_per_chunk
        keep = subsample(total, max_frames)
        clip_fps = s.fps * len(keep) / total  # the rate the kept frames stand for: positions follow it
        config = run.stream_config("full", fps=clip_fps, chunk_seconds=tpatch / clip_fps)
        session = run.session(config, n_frames=len(keep))
        pixels, grid = encode_clip(reader, keep, session.preprocessor)
    t, h, w = (int(x) for x in grid[0])
    prefix = offline_prompt(session.layout, (t, h // spec.merge_size, w // spec.merge_size), item["question"])
    scores = session.score(prefix, [choice_ids(session.layout, c) for c in item["choices"]], pixels=pixels,
                           grid=grid)
    return Choice(_argmax(scores), scores, len(keep))


def answer_streaming(qa: VideoQA, item: dict) -> Choice:
    """Watch ``item["window"]`` chunk by chunk and ask at its last chunk (``VideoQA.score``)."""
    start, end = item["window"]
    answer = qa.score(item["path"], item["question"], item["choices"], start=start, end=end)
    return Choice(answer.choice, list(answer.logprobs), answer.num_frames)


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
            rows.append({"category": name, "task": task, "items": t["total"], "correct": t["correct"],
                         "accuracy %": t["accuracy"]})
        if cat["tasks"]:
            rows.append({"category": name, "task": "mean", "items": "", "correct": "", "accuracy %": cat["accuracy"]})
    if summary["overall"] is not None:
        rows.append({"category": "Overall (mean of categories)", "task": "", "items": "", "correct": "",
                     "accuracy %": summary["overall"]})
    return rows


# ------------------------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _duration(path: str) -> float:
    from streaming_vlm.video import probe

    return probe(path).duration


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


class OvoBench(harness.Benchmark):
    """``streaming-vlm eval ovobench``: the probe items are one group (``OUT/ovobench.jsonl``)."""

    name = "ovobench"
    description = (
        "OVO-Bench accuracy per task and per category (real-time perception, backward tracing, forward active "
        "responding), answering offline (the clip up to the query time in one pass) or while streaming. Resumable; "
        "data-parallel under torchrun.")
    settings_use = harness.SettingsUse(exclude=("max_new_tokens", "chunk_seconds"),
                                       protocol={"query": "", "chunk_seconds": 1.0}, fixed_chunks=False)
    errors = (OvoBenchError,)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from streaming_vlm.engine import MODES

        p.add_argument("--data-dir", default=None,
                       help=f"OVO-Bench directory holding {ANNOTATION_FILE} and the video folders "
                       f"(default ${DATASET_ENV}/{DATASET_SUBDIR})")
        p.add_argument("--annotation", default=None, help=f"annotation file (default DATA_DIR/{ANNOTATION_FILE})")
        p.add_argument("--video-dir", default=None,
                       help="root the datums' 'video' paths are relative to (default DATA_DIR)")
        p.add_argument("--answer-mode", choices=("offline", "streaming"), default="offline",
                       help="offline: the clip up to the query time in one pass (the reference protocol, default); "
                       "streaming: the model watches the stream chunk by chunk and is asked at the query time")
        p.add_argument("--tasks", type=csv_choices(TASKS, what="tasks", ignore_case=True), default=list(TASKS),
                       help=f"comma-separated tasks (default {','.join(TASKS)})")
        p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N items of each task")
        p.add_argument("--out", default=None,
                       help="output directory: per-item JSONL and results.json (default results/ovobench/MODEL-MODE)")
        p.add_argument("--skip-missing-videos", action="store_true",
                       help="drop the items whose video file is missing (default: stop with an error)")
        g = p.add_argument_group("streaming answer mode")
        g.add_argument("--cache-mode", choices=MODES, default="streaming",
                       help="engine mode that watches the stream (default streaming: StreamingVLM's cache)")
        g.add_argument("--commentary-tokens", type=non_negative_int, default=0,
                       help="commentary tokens per watched second at most (the max_new_tokens setting); 0 (default) "
                       "= watch silently")

    def items(self, run: harness.Run) -> dict[str, list[dict]]:
        args = run.args
        data_dir = _data_dir(args.data_dir)
        self.annotation = Path(args.annotation) if args.annotation else data_dir / ANNOTATION_FILE
        self.video_dir = Path(args.video_dir).expanduser() if args.video_dir else data_dir
        items = _select(load_items(self.annotation, args.tasks), args.limit)
        for it in items:
            it["path"] = str(self.video_dir / it["video"])
        missing = sorted({it["path"] for it in items if not os.path.isfile(it["path"])})
        if missing and not args.skip_missing_videos:
            raise OvoBenchError(f"{len(missing)} video file(s) missing under {self.video_dir} (first: {missing[0]}); "
                                "pass --video-dir or --skip-missing-videos")
        if missing:
            logger.warning("skipping the items of %d missing video file(s)", len(missing))
            gone = set(missing)
            items = [it for it in items if it["path"] not in gone]
        if not items:
            raise OvoBenchError(f"no items to evaluate in {self.annotation} for tasks {','.join(args.tasks)}")
        self.missing = len(missing)
        if args.answer_mode == "streaming":
            run.settings.check_chunks()  # an even number of frames per 1-s chunk
            if args.commentary_tokens:  # the commentary's length is this option: the results say so
                run.settings = dataclasses.replace(run.settings, max_new_tokens=args.commentary_tokens)
                run.sources["max_new_tokens"] = "flag"
                run.unused.discard("max_new_tokens")
        logger.info("OVO-Bench: %d items, answer mode %s, rank %d of %d", len(items), args.answer_mode, run.rank,
                    run.world)
        return {"ovobench": items}

    def records_dir(self, run: harness.Run) -> Path:
        if run.args.out:
            return Path(run.args.out)
        label = Path(str(run.args.model).rstrip("/")).name or str(run.args.model)
        return Path("results") / "ovobench" / f"{label}-{run.args.answer_mode}"

    def resume_record(self, run: harness.Run) -> dict:
        """The options that change per-item results (the keys of ``settings.json`` before the settings module, plus
        the settings added since when they are not at their default, so that older folders still resume)."""
        args, s = run.args, run.settings
        record: dict[str, Any] = {"model": args.model, "answer_mode": args.answer_mode}
        record.update({k: getattr(s, k) for k in ("fps", "min_pixels", "max_pixels")})
        if args.answer_mode == "offline":
            record.update(max_frames=s.max_frames, total_pixels=s.total_pixels)
            later = ["system_prompt"]
        else:
            record.update(cache_mode=args.cache_mode, commentary_tokens=args.commentary_tokens, query=s.query,
                          seed=s.seed)
            later = ["system_prompt", "vision_window", "text_rounds", "text_sink", "text_window", "reset_every"]
            later += ["temperature", "top_p", "top_k", "repetition_penalty"] if args.commentary_tokens else []
        record.update({k: getattr(s, k) for k in later if getattr(s, k) != getattr(DEFAULTS, k)})
        return record

    def run_item(self, run: harness.Run, group: str, item: dict) -> dict:
        if run.args.answer_mode == "offline":
            return _record(item, lambda it: answer_offline(run, it))
        return _record(item, lambda it: answer_streaming(self._qa(run), it))

    def _qa(self, run: harness.Run) -> VideoQA:
        if getattr(self, "qa", None) is None:
            from streaming_vlm.eval.vqa import VideoQA, VQAConfig

            s = run.settings
            config = VQAConfig(answer_mode="streaming", engine_mode=run.args.cache_mode, fps=s.fps,
                               chunk_frames=round(s.fps * s.chunk_seconds), commentary=run.args.commentary_tokens > 0)
            self.qa = VideoQA(run.model, config, s, run.sources)
        return self.qa

    def score(self, run: harness.Run, records: dict[str, list[dict]] | None) -> dict:
        args, rows = run.args, records["ovobench"]
        meta = {
            "benchmark": "OVO-Bench", "model": str(args.model), "answer_mode": args.answer_mode,
            "annotation": str(self.annotation), "video_dir": str(self.video_dir), "items": len(rows),
            "errors": sum(r.get("error") is not None for r in rows), "missing_videos_skipped": self.missing,
            "tasks": list(args.tasks), "limit_per_task": args.limit, "settings": self.resume_record(run),
            "world_size": run.world,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "notes": "accuracy in percent; category = unweighted mean of its tasks' accuracies; overall = mean of the "
            "category means. Each item is answered by scoring the task's own choices as whole sequences.",
        }  # fmt: skip
        return {"meta": meta, **summarize(rows)}

    def results_path(self, run: harness.Run) -> Path:
        return self.records_dir(run) / "results.json"

    def table(self, results: dict) -> str:
        from streaming_vlm.eval.runner import format_table

        return format_table(table_rows(results))


def main(argv: Sequence[str] | None = None) -> int:
    """``streaming-vlm eval ovobench ARGV``; the exit status."""
    return harness.run(OvoBench(), argv)
