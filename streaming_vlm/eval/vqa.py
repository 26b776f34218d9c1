"""Video question answering with a streaming model: the core shared by the VLMEvalKit and lmms-eval adapters.

:class:`VideoQA` answers a question about a whole video. The video is always fed through the engine chunk by
chunk (``VideoReader.chunks()`` -> ``StreamSession``), and the question is asked in the user turn of the last
chunk. Two answer modes differ only in what the cache keeps:

- ``streaming``: the StreamingVLM cache policy (attention sinks, vision window, text window), as the model
  runs on an endless stream; the answer sees the last ``vision_window`` chunks of video;
- ``offline``: engine mode ``full``, nothing is ever evicted; the answer sees every sampled frame.

Frame sampling (:func:`plan_frames`): every chunk holds ``chunk_frames`` frames (2 = one temporal patch of the
vision tower; the engine needs a whole number of patches per chunk). At a dataset's ``fps`` a chunk therefore
covers ``chunk_frames / fps`` seconds: 1 s at the training rate of 2 fps, 2 s at Video-MME's and
LongVideoBench's 1 fps. For a fixed frame count (MVBench's 64 frames) the rate is ``nframe / duration``, so the
``nframe`` samples sit at the centres of ``nframe`` equal slices of the video (the reader samples chunk ``k`` at
``k*c + (j + 0.5) / fps``), in ``nframe / chunk_frames`` chunks. ``max_frames`` caps long videos the same way.

Answers: for a multiple-choice prompt the option letters are scored as whole answers at the end of the stream
(``StreamSession.choose``) and the best letter is returned, which is what the toolkits' scorers expect. This
replaces the reference's decoding restricted to an allowed-token set that was rebuilt from the whole
vocabulary on every call: nothing is decoded, nothing depends on the vocabulary. Other questions get a short
greedy answer. Options are read from the prompt text (:func:`parse_options`) when the toolkit gives only text.

Chunks before the question are silent by default (teacher-forced empty turns, the layout of seconds without
commentary in training); ``commentary=True`` lets the model comment on them as it would on a stream.

``streaming-vlm eval vqa`` runs a local JSONL of ``{id, video, question, options, answer}`` items (resumable,
rank-sharded with torchrun) and writes the accuracy per answer mode.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import re
import string
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

from streaming_vlm.layout import DEFAULT_SYSTEM_PROMPT

__all__ = [
    "ANSWER_MODES",
    "FramePlan",
    "ParsedOptions",
    "VQAAnswer",
    "VQAConfig",
    "VideoQA",
    "build_parser",
    "build_prompt",
    "main",
    "parse_options",
    "plan_frames",
]

logger = logging.getLogger(__name__)

ANSWER_MODES = {"streaming": "streaming", "offline": "full"}
"""Answer mode -> engine mode."""

MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."

ENV_DATA = "VQA_DATA"
ENV_VIDEO_ROOT = "VQA_VIDEO_ROOT"
ENV_MODEL = "STREAMING_VLM_MODEL"
DEFAULT_MODEL = "mit-han-lab/StreamingVLM"


# ------------------------------------------------------------------------------------------------------------
# configuration and frame plan
# ------------------------------------------------------------------------------------------------------------


@dataclass
class VQAConfig:
    """How a video is sampled and streamed, and how the question is answered."""

    answer_mode: str = "streaming"
    """streaming (the StreamingVLM cache policy) or offline (nothing evicted)."""
    fps: float | None = 1.0
    """Frames sampled per second of video (used when ``nframe`` is not set)."""
    nframe: int | None = None
    """A fixed number of frames spread evenly over the video (overrides ``fps``); rounded up to whole chunks."""
    max_frames: int | None = None
    """At most this many frames: longer videos are sampled more sparsely (evenly spread). None = no cap."""
    chunk_frames: int = 2
    """Frames per chunk, a multiple of the vision tower's temporal patch (2)."""
    commentary: bool = False
    """Let the model comment on the chunks before the question (otherwise they are silent turns)."""
    max_new_tokens: int = 16
    """Tokens of a free-form answer at most (multiple-choice answers are scored, not generated)."""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    query: str = ""
    """Instruction in the first chunk's user turn (the question itself goes in the last chunk's turn)."""
    vision_window: int | None = 16
    text_rounds: int | None = 16
    text_sink: int | None = 512
    text_window: int | None = 512
    seed: int = 0

    def __post_init__(self):
        if self.answer_mode not in ANSWER_MODES:
            raise ValueError(f"answer_mode must be one of {', '.join(ANSWER_MODES)}, got {self.answer_mode!r}")
        if self.nframe is not None and self.nframe < 1:
            raise ValueError(f"nframe must be >= 1, got {self.nframe}")
        if self.nframe is None and (self.fps is None or not self.fps > 0):
            raise ValueError(f"set fps > 0 or nframe >= 1 (got fps={self.fps}, nframe={self.nframe})")
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {self.chunk_frames}")
        if self.max_frames is not None and self.max_frames < self.chunk_frames:
            raise ValueError(f"max_frames must be >= chunk_frames ({self.chunk_frames}), got {self.max_frames}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class FramePlan:
    """Where a video is sampled: ``num_chunks`` chunks of ``chunk_seconds`` at ``fps`` from time 0."""

    fps: float
    chunk_seconds: float
    num_chunks: int
    chunk_frames: int

    @property
    def num_frames(self) -> int:
        return self.num_chunks * self.chunk_frames


def plan_frames(
    duration: float,
    *,
    fps: float | None = None,
    nframe: int | None = None,
    max_frames: int | None = None,
    chunk_frames: int = 2,
) -> FramePlan:
    """The sampling of a ``duration``-second video at ``fps``, or ``nframe`` frames evenly spread (see module doc)."""
    if not duration > 0:
        raise ValueError(f"video duration must be > 0 s, got {duration}")

    def even(n: int) -> FramePlan:
        chunks = max(1, math.ceil(n / chunk_frames))
        rate = chunks * chunk_frames / duration
        return FramePlan(rate, chunk_frames / rate, chunks, chunk_frames)

    if nframe is not None:
        plan = even(nframe)
    else:
        if fps is None or not fps > 0:
            raise ValueError("plan_frames needs fps > 0 or nframe >= 1")
        chunk_seconds = chunk_frames / fps
        # chunks start while their start is before the end, as VideoReader makes them (the last may be partial)
        plan = FramePlan(fps, chunk_seconds, max(1, math.ceil(duration / chunk_seconds - 1e-9)), chunk_frames)
    if max_frames is not None and plan.num_frames > max_frames:
        plan = even(max_frames // chunk_frames * chunk_frames)
    return plan


# ------------------------------------------------------------------------------------------------------------
# options in prompt text
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedOptions:
    letters: list[str]
    options: list[str]
    """Option texts without their labels."""


# "A. text", "A) text", "A: text", "(A) text", "[A] text" at the start of a line
_OPTION_LINE = re.compile(r"^\s*(?:\((?P<p>[A-Z])\)|\[(?P<b>[A-Z])\]|(?P<l>[A-Z])[.):])\s*(?P<text>.*?)\s*$")
_INLINE_OPTION = re.compile(r"\(([A-Z])\)\s*")


def parse_options(text: str) -> ParsedOptions | None:
    """The multiple-choice options listed in a prompt, or None when it lists none.

    Options are consecutive lines labelled ``A.``/``A)``/``A:``/``(A)``/``[A]``, starting at A with letters in
    order (at least two). When several such lists appear, the last one is taken (instructions and examples come
    first in the toolkits' prompts). A single line ``(A) x (B) y ...`` is accepted too.
    """
    best: ParsedOptions | None = None
    run_letters: list[str] = []
    run_texts: list[str] = []

    def close_run():
        nonlocal best
        if len(run_letters) >= 2:
            best = ParsedOptions(list(run_letters), list(run_texts))
        run_letters.clear()
        run_texts.clear()

    for line in text.splitlines():
        m = _OPTION_LINE.match(line)
        letter = m and (m.group("p") or m.group("b") or m.group("l"))
        expected = string.ascii_uppercase[len(run_letters)] if len(run_letters) < 26 else None
        if letter and letter == expected and m.group("text"):
            run_letters.append(letter)
            run_texts.append(m.group("text"))
            continue
        close_run()
        if letter == "A" and m.group("text"):  # a new list starts right after another line
            run_letters.append("A")
            run_texts.append(m.group("text"))
    close_run()
    if best is not None:
        return best
    for line in reversed(text.splitlines()):  # inline "(A) x (B) y"
        parts = _INLINE_OPTION.split(line)
        labels, texts = parts[1::2], [t.strip() for t in parts[2::2]]
        if len(labels) >= 2 and labels == list(string.ascii_uppercase[: len(labels)]) and all(texts):
            return ParsedOptions(labels, texts)
    return None


def build_prompt(question: str, options: Sequence[str] | None, instruction: str = MCQ_INSTRUCTION) -> str:
    """A multiple-choice prompt: the question, one ``A. option`` line per option, the instruction."""
    if not options:
        return question
    lines = [
        option if _own_label(option) == letter else f"{letter}. {option}"
        for letter, option in zip(string.ascii_uppercase, options, strict=False)
    ]
    return "\n".join([question, *lines, instruction])


def _own_label(option: str) -> str | None:
    """The letter an option is already labelled with ("B. text" -> "B"), else None."""
    m = _OPTION_LINE.match(option)
    return (m.group("p") or m.group("b") or m.group("l")) if m and m.group("text") else None


def _strip_label(option: str) -> str:
    m = _OPTION_LINE.match(option)
    return m.group("text") if m and m.group("text") else option


# ------------------------------------------------------------------------------------------------------------
# answering
# ------------------------------------------------------------------------------------------------------------


@dataclass
class VQAAnswer:
    text: str
    """What a toolkit receives: the option letter for a multiple-choice prompt, the answer text otherwise."""
    choice: int | None
    """Index of the chosen option (multiple choice), else None."""
    logprobs: list[float] | None
    """Log-probability of each scored answer given the stream (multiple choice / scoring), else None."""
    num_chunks: int
    num_frames: int
    fps: float
    chunk_seconds: float
    answer_mode: str
    latency_s: float
    commentary: list[str] = field(default_factory=list)
    """Commentary on the chunks before the question (``commentary=True`` only)."""


class VideoQA:
    """Answers questions about videos with one loaded model (see the module docstring).

    Args:
        model: an ``EvalModel`` (``streaming_vlm.eval.generate.load_eval_model``).
        config: ``VQAConfig``; per-call overrides go through :meth:`with_sampling`.
    """

    def __init__(self, model, config: VQAConfig | None = None):
        self.model = model
        self.config = config or VQAConfig()

    @classmethod
    def load(
        cls,
        model: str,
        config: VQAConfig | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        min_pixels: int = 100 * 28 * 28,
        max_pixels: int = 768 * 28 * 28,
    ) -> VideoQA:
        """Load ``model`` (hub id, directory or ``tiny``); raises ``ModelLoadError`` with a one-line message."""
        from streaming_vlm.eval.generate import load_eval_model

        loaded = load_eval_model(model, device=device, dtype=dtype, min_pixels=min_pixels, max_pixels=max_pixels)
        return cls(loaded, config)

    def with_sampling(self, *, fps: float | None = None, nframe: int | None = None) -> VideoQA:
        """The same model with another frame sampling (``nframe`` wins over ``fps``); self when unchanged."""
        if nframe is not None and nframe > 0:
            new = replace(self.config, nframe=int(nframe))
        elif fps is not None and fps > 0:
            new = replace(self.config, fps=float(fps), nframe=None)
        else:
            return self
        return self if new == self.config else VideoQA(self.model, new)

    def with_mode(self, answer_mode: str) -> VideoQA:
        return (
            self
            if answer_mode == self.config.answer_mode
            else VideoQA(self.model, replace(self.config, answer_mode=answer_mode))
        )

    def plan(self, video: str | os.PathLike[str]) -> FramePlan:
        """The frame plan for ``video``; raises ``VideoError`` for an unusable file."""
        from streaming_vlm.video import probe

        c = self.config
        return plan_frames(
            probe(video).duration, fps=c.fps, nframe=c.nframe, max_frames=c.max_frames, chunk_frames=c.chunk_frames
        )

    # ---- public API -----------------------------------------------------------------------------------------

    def answer(
        self,
        video: str | os.PathLike[str],
        prompt: str,
        *,
        letters: Sequence[str] | None = None,
        max_new_tokens: int | None = None,
        stop: Sequence[str] = (),
    ) -> VQAAnswer:
        """Answer ``prompt`` about ``video``: the best of ``letters`` when given, else a short greedy answer
        (cut at the first of ``stop``)."""
        if letters:
            return self._run(video, prompt, list(letters), scoring=True)
        result = self._run(video, prompt, None, max_new_tokens=max_new_tokens or self.config.max_new_tokens)
        for s in stop:
            if s and s in result.text:
                result.text = result.text[: result.text.index(s)]
        result.text = result.text.strip()
        return result

    def answer_prompt(
        self, video: str | os.PathLike[str], prompt: str, *, max_new_tokens: int | None = None, stop: Sequence[str] = ()
    ) -> VQAAnswer:
        """Answer a toolkit prompt: its option letter when the prompt lists options, else a short answer."""
        parsed = parse_options(prompt)
        return self.answer(
            video, prompt, letters=parsed.letters if parsed else None, max_new_tokens=max_new_tokens, stop=stop
        )

    def score(self, video: str | os.PathLike[str], prompt: str, continuations: Sequence[str]) -> VQAAnswer:
        """Log-probability of each continuation (followed by a newline, how answers end in training) as the
        answer to ``prompt`` at the end of the stream; one pass over the video for all of them."""
        return self._run(video, prompt, list(continuations), scoring=True)

    # ---- internals ------------------------------------------------------------------------------------------

    def _stream_config(self, plan: FramePlan):
        from streaming_vlm.engine import StreamConfig
        from streaming_vlm.sampling import SamplingConfig

        c = self.config
        return StreamConfig(
            mode=ANSWER_MODES[c.answer_mode],
            query=c.query,
            system_prompt=c.system_prompt,
            chunk_seconds=plan.chunk_seconds,
            fps=plan.fps,
            vision_window=c.vision_window,
            text_rounds=c.text_rounds,
            text_sink=c.text_sink,
            text_window=c.text_window,
            sampling=SamplingConfig(),
            seed=c.seed,
        )

    def _run(
        self,
        video: str | os.PathLike[str],
        prompt: str,
        options: list[str] | None,
        *,
        scoring: bool = False,
        max_new_tokens: int = 16,
    ) -> VQAAnswer:
        from streaming_vlm.eval.generate import new_session
        from streaming_vlm.sampling import SamplingConfig
        from streaming_vlm.video import VideoReader

        t0 = time.perf_counter()
        plan = self.plan(video)
        session = new_session(self.model, self._stream_config(plan))
        commentary: list[str] = []
        choice: int | None = None
        logprobs: list[float] | None = None
        text = ""
        with VideoReader(video, fps=plan.fps, chunk_seconds=plan.chunk_seconds) as reader:
            for chunk in islice(reader.chunks(), plan.num_chunks):
                if chunk.index < plan.num_chunks - 1:
                    if self.config.commentary:
                        commentary.append(session.step(chunk.frames, chunk.start, chunk.end).text)
                    else:
                        session.step(chunk.frames, chunk.start, chunk.end, force_text="")
                    continue
                if scoring:
                    result = session.choose(chunk.frames, chunk.start, chunk.end, prompt, options)
                    choice, logprobs, text = result.index, result.logprobs, result.option
                else:
                    # the answer is greedy and unpenalised, whatever the commentary sampling was
                    greedy = SamplingConfig(temperature=0.0, repetition_penalty=1.0, max_new_tokens=max_new_tokens)
                    session.config = replace(session.config, sampling=greedy)
                    text = session.step(chunk.frames, chunk.start, chunk.end, question=prompt).text
        return VQAAnswer(
            text=text,
            choice=choice,
            logprobs=logprobs,
            num_chunks=plan.num_chunks,
            num_frames=plan.num_frames,
            fps=plan.fps,
            chunk_seconds=plan.chunk_seconds,
            answer_mode=self.config.answer_mode,
            latency_s=time.perf_counter() - t0,
            commentary=commentary,
        )


# ------------------------------------------------------------------------------------------------------------
# the local JSONL benchmark
# ------------------------------------------------------------------------------------------------------------


class DataError(ValueError):
    """The VQA data cannot be used; str(e) is one line."""


def _answer_index(answer: Any, options: list[str], where: str) -> int:
    """The option index of ``answer``: a letter, an integer index or the option's text."""
    if isinstance(answer, bool):
        raise DataError(f"{where}: answer must be a letter, an index or an option, got {answer!r}")
    if isinstance(answer, int):
        if not 0 <= answer < len(options):
            raise DataError(f"{where}: answer index {answer} is out of range for {len(options)} options")
        return answer
    text = str(answer).strip()
    m = re.fullmatch(r"\(?([A-Z])\)?\.?", text)
    if m and string.ascii_uppercase.index(m.group(1)) < len(options):
        return string.ascii_uppercase.index(m.group(1))
    for i, option in enumerate(options):
        if text in (option, _strip_label(option)):
            return i
    raise DataError(f"{where}: answer {answer!r} is neither an option letter nor one of the options")


def load_items(path: str | os.PathLike[str], video_root: str | os.PathLike[str] | None = None) -> list[dict]:
    """Items of a VQA JSONL file, validated, with absolute video paths; raises ``DataError`` (one line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"VQA data not found: {path}")
    root = Path(video_root) if video_root else path.parent
    items: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(raw, dict):
                raise DataError(f"{where}: each line must be a JSON object")
            missing = [k for k in ("id", "video", "question") if k not in raw]
            if missing:
                raise DataError(f"{where}: missing {', '.join(missing)}")
            options = raw.get("options") or []
            if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
                raise DataError(f"{where}: options must be a list of strings")
            if len(options) > 26:
                raise DataError(f"{where}: at most 26 options")
            video = Path(raw["video"])
            video = video if video.is_absolute() else root / video
            if not video.is_file():
                raise DataError(f"{where}: video not found: {video}")
            item = dict(raw, video=str(video), options=options)
            if options and "answer" in raw:
                item["answer_index"] = _answer_index(raw["answer"], options, where)
            items.append(item)
    if not items:
        raise DataError(f"{path}: no items")
    ids = [it["id"] for it in items]
    if len(set(map(str, ids))) != len(ids):
        raise DataError(f"{path}: item ids are not unique")
    return items


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", str(text).lower()).split())


def evaluate_item(qa: VideoQA, item: dict) -> dict:
    """One item's record: prediction, correctness and the answer's timing."""
    options = item["options"]
    prompt = build_prompt(item["question"], options)
    if options:
        result = qa.answer(item["video"], prompt, letters=list(string.ascii_uppercase[: len(options)]))
        gold = item.get("answer_index")
        correct = None if gold is None else result.choice == gold
        record = {
            "prediction": result.text,
            "answer": None if gold is None else string.ascii_uppercase[gold],
            "logprobs": [round(x, 5) for x in result.logprobs],
        }
    else:
        result = qa.answer(item["video"], prompt)
        correct = None if "answer" not in item else _normalize(result.text) == _normalize(item["answer"])
        record = {"prediction": result.text, "answer": item.get("answer")}
    record.update(
        id=item["id"],
        correct=correct,
        category=item.get("category"),
        num_frames=result.num_frames,
        num_chunks=result.num_chunks,
        fps=round(result.fps, 6),
        latency_s=round(result.latency_s, 4),
    )
    return record


def summarize(records: list[dict]) -> dict[str, Any]:
    """Accuracy over the items with a known answer, overall and per category."""
    scored = [r for r in records if r.get("correct") is not None]
    correct = sum(bool(r["correct"]) for r in scored)
    out: dict[str, Any] = {
        "items": len(records),
        "scored": len(scored),
        "correct": correct,
        "accuracy": correct / len(scored) if scored else None,
        "mean_latency_s": sum(r["latency_s"] for r in records) / len(records) if records else None,
    }
    categories = sorted({r["category"] for r in scored if r.get("category") is not None}, key=str)
    if categories:
        out["per_category"] = {}
        for cat in categories:
            rows = [r for r in scored if r.get("category") == cat]
            ok = sum(bool(r["correct"]) for r in rows)
            out["per_category"][str(cat)] = {"scored": len(rows), "correct": ok, "accuracy": ok / len(rows)}
    return out


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in ANSWER_MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"answer modes are {', '.join(ANSWER_MODES)}; got {text!r}")
    return list(dict.fromkeys(modes))


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``streaming-vlm eval vqa`` options (added to ``parser`` when given)."""
    p = parser or argparse.ArgumentParser(
        prog="streaming-vlm eval vqa",
        description="Multiple-choice (or short-answer) video QA on a local JSONL of {id, video, question, options, "
        "answer} items, answered at the end of a stream (streaming) and/or with nothing evicted (offline); writes "
        "per-item records and a results JSON with the accuracy per answer mode. For Video-MME, MVBench and "
        "LongVideoBench use the VLMEvalKit / lmms-eval adapters (scripts/eval_VQA.sh).",
    )
    p.add_argument("--data", default=os.environ.get(ENV_DATA), help=f"the JSONL file (default: ${ENV_DATA})")
    p.add_argument(
        "--video-root",
        default=os.environ.get(ENV_VIDEO_ROOT),
        help=f"folder relative video paths are under (default: ${ENV_VIDEO_ROOT}, else the JSONL's folder)",
    )
    p.add_argument(
        "--model",
        default=os.environ.get(ENV_MODEL, DEFAULT_MODEL),
        help=f"model directory, hub id or 'tiny' (default: ${ENV_MODEL}, else {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--answer-modes",
        type=_modes,
        default=["streaming"],
        help="comma-separated: streaming, offline (default streaming)",
    )
    sampling = p.add_mutually_exclusive_group()
    sampling.add_argument("--fps", type=_positive_float, default=1.0, help="frames per second (default 1)")
    sampling.add_argument(
        "--nframe",
        type=_positive_int,
        default=None,
        help="a fixed number of frames spread evenly over each video (instead of --fps)",
    )
    p.add_argument("--max-frames", type=_positive_int, default=None, help="cap on frames per video (default none)")
    p.add_argument(
        "--commentary",
        action="store_true",
        help="let the model comment on the chunks before the question (default: silent chunks)",
    )
    p.add_argument("--max-new-tokens", type=_positive_int, default=16, help="short answers: tokens at most (16)")
    p.add_argument("--limit", type=_positive_int, default=None, help="evaluate only the first N items")
    p.add_argument("--out-dir", default="results/vqa", help="output folder (default results/vqa)")
    p.add_argument("--device", default="auto", help="auto (default), cuda, cpu, ...")
    p.add_argument("--dtype", default="auto", help="auto (default), bf16, fp16, fp32")
    p.add_argument("--min-pixels", type=_positive_int, default=100 * 28 * 28, help="min pixels per frame (100*28*28)")
    p.add_argument("--max-pixels", type=_positive_int, default=768 * 28 * 28, help="max pixels per frame (768*28*28)")
    p.add_argument("--seed", type=int, default=0, help="commentary sampling seed (default 0)")
    return p


def _fail(message: str) -> int:
    print(f"streaming-vlm eval vqa: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def main(argv: list[str] | argparse.Namespace | None = None) -> int:
    args = argv if isinstance(argv, argparse.Namespace) else build_parser().parse_args(argv)
    from streaming_vlm.eval.runner import format_table, rank_and_world, run_items, write_results
    from streaming_vlm.models import ModelLoadError
    from streaming_vlm.video import VideoError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not args.data:
        return _fail(f"no VQA data: pass --data FILE.jsonl or set {ENV_DATA}")
    if args.min_pixels > args.max_pixels:
        return _fail(f"--min-pixels ({args.min_pixels}) is above --max-pixels ({args.max_pixels})")
    try:
        items = load_items(args.data, args.video_root)[: args.limit]
        config = VQAConfig(
            answer_mode=args.answer_modes[0],
            fps=args.fps,
            nframe=args.nframe,
            max_frames=args.max_frames,
            commentary=args.commentary,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
        )
        qa = VideoQA.load(
            args.model,
            config,
            device=args.device,
            dtype=args.dtype,
            min_pixels=args.min_pixels,
            max_pixels=args.max_pixels,
        )
    except (DataError, ModelLoadError, ValueError, OSError) as exc:
        return _fail(str(exc))

    out_dir = Path(args.out_dir)
    modes: dict[str, Any] = {}
    for mode in args.answer_modes:
        runner = qa.with_mode(mode)
        try:
            records = run_items(f"vqa_{mode}", items, lambda item, r=runner: evaluate_item(r, item), out_dir)
        except VideoError as exc:
            return _fail(str(exc))
        if records is not None:
            modes[mode] = summarize(records)
    if rank_and_world()[0] != 0:
        return 0
    meta = {
        "data": str(args.data),
        "model": str(args.model),
        "answer_modes": args.answer_modes,
        "config": {k: v for k, v in asdict(config).items() if k != "answer_mode"},
        "device": str(qa.model.loaded.device),
        "dtype": str(qa.model.loaded.dtype).replace("torch.", ""),
        "min_pixels": args.min_pixels,
        "max_pixels": args.max_pixels,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = write_results(out_dir / "vqa_results.json", {"meta": meta, "modes": modes})
    print(f"wrote {path}")
    rows = [
        {"answer mode": m, "items": s["items"], "scored": s["scored"], "correct": s["correct"],
         "accuracy": "-" if s["accuracy"] is None else s["accuracy"],
         "s/item": "-" if s["mean_latency_s"] is None else s["mean_latency_s"]}
        for m, s in modes.items()
    ]  # fmt: skip
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
