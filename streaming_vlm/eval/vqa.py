"""Video question answering with a streaming model: the "watch, then answer" routine of every QA benchmark.

:class:`VideoQA` answers a question about a video (or a window ``[start, end)`` of one). The video is always fed
through the engine chunk by chunk (``VideoReader.chunks()`` -> ``StreamSession``), and the question is asked in the
user turn of the last chunk. Two answer modes differ only in what the cache keeps:

- ``streaming``: the StreamingVLM cache policy (attention sinks, vision window, text window), as the model
  runs on an endless stream; the answer sees the last ``vision_window`` chunks of video;
- ``offline``: engine mode ``full``, nothing is ever evicted; the answer sees every sampled frame.

(``VQAConfig.engine_mode`` picks any engine mode instead: OVO-Bench's ``--cache-mode``.)

Frame sampling (:func:`plan_frames`) is the benchmark's protocol, not a stream setting: every chunk holds
``chunk_frames`` frames (2 = one temporal patch of the vision tower; the engine needs a whole number of patches
per chunk). At a dataset's ``fps`` a chunk therefore covers ``chunk_frames / fps`` seconds: 1 s at the training
rate of 2 fps, 2 s at Video-MME's and LongVideoBench's 1 fps. For a fixed frame count (MVBench's 64 frames) the
rate is ``nframe / duration``, so the ``nframe`` samples sit at the centres of ``nframe`` equal slices of the video
(the reader samples chunk ``k`` at ``k*c + (j + 0.5) / fps``), in ``nframe / chunk_frames`` chunks.
``max_frames`` caps long videos the same way.

Stream settings (``settings.StreamSettings``, resolved as everywhere, a keyword counting as a flag): the pixel
bounds per frame, the system prompt, the cache windows and the commentary's sampling and seed. :data:`PROTOCOL`
pins the instruction ``query`` to none: the question is the instruction. The settings in :data:`EXCLUDED` are
neither given nor taken from the checkpoint, and the results leave them out: the plan and ``VQAConfig`` decide the
rate, chunks and frame cap, and ``VQAConfig.max_new_tokens`` is a free-form answer's length. With ``commentary`` the
commentary before the question is as long as the default ``max_new_tokens`` (then recorded).

Answers: for a multiple-choice prompt the option letters are scored as whole answers at the end of the stream
(``StreamSession.choose``) and the best letter is returned, which is what the toolkits' scorers expect. This
replaces the reference's decoding restricted to an allowed-token set that was rebuilt from the whole
vocabulary on every call: nothing is decoded, nothing depends on the vocabulary. Other questions get a short
greedy answer. Options are read from the prompt text (:func:`parse_options`) when the toolkit gives only text.

Chunks before the question are silent by default (teacher-forced empty turns, the layout of seconds without
commentary in training); ``commentary=True`` lets the model comment on them as it would on a stream.

``streaming-vlm eval vqa`` (:class:`VQA` on the benchmark harness) runs a local JSONL of ``{id, video, question,
options, answer}`` items (resumable, rank-sharded with torchrun) and writes the accuracy per answer mode.
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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

from streaming_vlm.argtypes import csv_choices, positive_float, positive_int
from streaming_vlm.eval import harness
from streaming_vlm.eval.runner import jsonl_rows
from streaming_vlm.settings import DEFAULTS, SETTING_NAMES, StreamSettings

__all__ = [
    "ANSWER_MODES",
    "EXCLUDED",
    "PROTOCOL",
    "VQA",
    "FramePlan",
    "ParsedOptions",
    "VQAAnswer",
    "VQAConfig",
    "VideoQA",
    "build_prompt",
    "main",
    "parse_options",
    "plan_frames",
    "resolve_settings",
    "toolkit_class",
    "unused_settings",
]

logger = logging.getLogger(__name__)

ANSWER_MODES = {"streaming": "streaming", "offline": "full"}
"""Answer mode -> engine mode."""

MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."

ENV_DATA = "VQA_DATA"
ENV_VIDEO_ROOT = "VQA_VIDEO_ROOT"
ENV_MODEL = "STREAMING_VLM_MODEL"
DEFAULT_MODEL = "mit-han-lab/StreamingVLM"

PROTOCOL: Mapping[str, Any] = {"query": ""}
"""Stream settings the QA protocol pins (above the checkpoint): no instruction, the question is asked at the end."""
EXCLUDED = ("fps", "chunk_seconds", "max_new_tokens", "reset_every", "total_pixels", "max_frames")
"""Stream settings a QA run does not take (from a flag, keyword or the checkpoint): its frame plan sets the rate and
chunks, its own ``--max-new-tokens`` is the answer's length, ``--max-frames`` its own cap."""
_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "seed")


# ------------------------------------------------------------------------------------------------------------
# configuration and frame plan
# ------------------------------------------------------------------------------------------------------------


@dataclass
class VQAConfig:
    """How a video is sampled and the question answered (the protocol; the stream settings are separate)."""

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
    engine_mode: str | None = None
    """Engine mode that watches the video (streaming, full, sliding, recompute); None: the answer mode's."""

    def __post_init__(self):
        from streaming_vlm.engine import MODES

        if self.answer_mode not in ANSWER_MODES:
            raise ValueError(f"answer_mode must be one of {', '.join(ANSWER_MODES)}, got {self.answer_mode!r}")
        if self.engine_mode is not None and self.engine_mode not in MODES:
            raise ValueError(f"engine_mode must be one of {', '.join(MODES)}, got {self.engine_mode!r}")
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

    @property
    def mode(self) -> str:
        """The engine mode that watches the video."""
        return self.engine_mode or ANSWER_MODES[self.answer_mode]


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


def resolve_settings(model_path: str | os.PathLike[str], given: Mapping[str, Any] | None = None
                     ) -> tuple[StreamSettings, dict[str, str]]:
    """The stream settings of a QA run on checkpoint ``model_path`` (already resolved: a directory or hub id):
    ``given`` (explicit, e.g. an adapter's keyword arguments) > :data:`PROTOCOL` > the checkpoint's
    ``streaming_vlm.json`` (but :data:`EXCLUDED`) > defaults; ``(settings, sources)`` as ``settings.resolve``.
    Raises ``SettingsError`` for a bad value or a name in ``given`` that is not a setting or is one of
    :data:`EXCLUDED`."""
    from streaming_vlm.settings import SettingsError, from_checkpoint, resolve

    given = dict(given or {})
    excluded = sorted(set(given) & set(EXCLUDED))
    if excluded:
        raise SettingsError(f"not stream settings of a QA run (its protocol sets them): {', '.join(excluded)}")
    checkpoint = {k: v for k, v in from_checkpoint(model_path).items() if k not in EXCLUDED}
    return resolve(given, checkpoint=checkpoint, protocol=PROTOCOL)


def unused_settings(commentary: bool) -> set[str]:
    """The settings a QA run does not use: :data:`EXCLUDED`, but ``max_new_tokens`` with ``commentary``."""
    return set(EXCLUDED) - ({"max_new_tokens"} if commentary else set())


def _toolkit_value(name: str, value: Any) -> Any:
    """A setting's value as a toolkit passes it: ``none``/``null``/empty text is None (but for a text setting)."""
    text = isinstance(value, str) and not isinstance(getattr(DEFAULTS, name), str)
    return None if text and value.strip().lower() in {"", "none", "null"} else value


def toolkit_class(name: str, body: type, base: type, finish: Callable[[type], type] | None = None) -> type:
    """An adapter's class ``name``: its ``body`` mixed into a toolkit's ``base`` class (``finish``, e.g. the toolkit's
    registration, applied once), made once per (body, base): a toolkit imported anew gets a class of its own."""
    key = (body, base)
    if key not in _TOOLKIT_CLASSES:
        cls = type(name, (body, base), {"__module__": body.__module__, "__doc__": body.__doc__})
        _TOOLKIT_CLASSES[key] = finish(cls) if finish else cls
    return _TOOLKIT_CLASSES[key]


_TOOLKIT_CLASSES: dict[tuple[type, type], type] = {}


class VideoQA:
    """Answers questions about videos with one loaded model (see the module docstring).

    Args:
        model: an ``EvalModel`` (``streaming_vlm.eval.generate.load_eval_model``); its vision spec gives the pixel
            bounds per frame (set from the settings when it was loaded).
        config: ``VQAConfig``, the protocol; per-call variants go through :meth:`with_sampling` / :meth:`with_mode`.
        settings: the stream settings (default: the defaults with :data:`PROTOCOL`).
        sources: where each setting came from (``settings.resolve``), when known.
    """

    def __init__(self, model, config: VQAConfig | None = None, settings: StreamSettings | None = None,
                 sources: Mapping[str, str] | None = None):
        self.model = model
        self.config = config or VQAConfig()
        self.settings = settings if settings is not None else StreamSettings(**PROTOCOL)
        self.sources = dict(sources) if sources is not None else None

    @classmethod
    def load(cls, model: str, config: VQAConfig | None = None, *, device: str = "auto", dtype: str = "auto",
             **settings: Any) -> VideoQA:
        """Load ``model`` (hub id, directory, ``demo`` or ``tiny``) with the stream settings of
        :func:`resolve_settings` (``settings`` are setting names, e.g. ``min_pixels=784``, given explicitly: the
        checkpoint's ``streaming_vlm.json`` applies to the others). Raises ``ModelLoadError`` or ``SettingsError``
        with a one-line message."""
        from streaming_vlm.eval.generate import load_eval_model
        from streaming_vlm.models import resolve_model_path

        path = resolve_model_path(model)
        resolved, sources = resolve_settings(path, settings)
        return cls(load_eval_model(path, resolved, device=device, dtype=dtype), config, resolved, sources)

    @classmethod
    def for_toolkit(cls, who: str, model: str, config: VQAConfig, options: Mapping[str, Any], *,
                    device: str = "auto", dtype: str = "auto") -> VideoQA:
        """:meth:`load` for a toolkit adapter (``who`` names it in the log): the stream settings are the model
        ``options`` named as settings (``none``, ``null`` or empty text is None, as a toolkit's argument string
        writes it), the other options are logged as ignored; logs the settings used and where each came from."""
        given = {k: _toolkit_value(k, v) for k, v in options.items() if k in SETTING_NAMES}
        ignored = sorted(set(options) - set(given))
        if ignored:
            logger.warning("%s ignores %s", who, ", ".join(ignored))
        qa = cls.load(model, config, device=device, dtype=dtype, **given)
        record = harness.settings_record(qa.settings, qa.sources, unused_settings(config.commentary))
        logger.info("%s %s: %s", who, config.answer_mode, json.dumps(record))
        return qa

    def _with(self, config: VQAConfig) -> VideoQA:
        return self if config == self.config else VideoQA(self.model, config, self.settings, self.sources)

    def with_sampling(self, *, fps: float | None = None, nframe: int | None = None) -> VideoQA:
        """The same model with another frame sampling (``nframe`` wins over ``fps``); self when unchanged."""
        if nframe is not None and nframe > 0:
            return self._with(replace(self.config, nframe=int(nframe)))
        if fps is not None and fps > 0:
            return self._with(replace(self.config, fps=float(fps), nframe=None))
        return self

    def with_mode(self, answer_mode: str) -> VideoQA:
        return self._with(replace(self.config, answer_mode=answer_mode))

    def plan(self, video: str | os.PathLike[str], start: float = 0.0, end: float | None = None) -> FramePlan:
        """The frame plan for ``[start, end)`` of ``video`` (``end`` None: the video's end, probed); raises
        ``VideoError`` for an unusable file."""
        if end is None:
            from streaming_vlm.video import probe

            end = probe(video).duration
        c = self.config
        return plan_frames(end - start, fps=c.fps, nframe=c.nframe, max_frames=c.max_frames,
                           chunk_frames=c.chunk_frames)

    # ---- public API -----------------------------------------------------------------------------------------

    def answer(
        self,
        video: str | os.PathLike[str],
        prompt: str,
        *,
        letters: Sequence[str] | None = None,
        max_new_tokens: int | None = None,
        stop: Sequence[str] = (),
        start: float = 0.0,
        end: float | None = None,
    ) -> VQAAnswer:
        """Answer ``prompt`` about ``[start, end)`` of ``video`` (default: all of it): the best of ``letters`` when
        given, else a short greedy answer (cut at the first of ``stop``)."""
        if letters:
            return self._run(video, prompt, list(letters), start=start, end=end)
        result = self._run(video, prompt, None, max_new_tokens=max_new_tokens or self.config.max_new_tokens,
                           start=start, end=end)
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

    def score(self, video: str | os.PathLike[str], prompt: str, continuations: Sequence[str], *, start: float = 0.0,
              end: float | None = None) -> VQAAnswer:
        """Log-probability of each continuation (followed by a newline, how answers end in training) as the
        answer to ``prompt`` at the end of ``[start, end)`` of the stream; one pass over the video for all of them
        (``choice`` is the best one's index)."""
        return self._run(video, prompt, list(continuations), start=start, end=end)

    # ---- internals ------------------------------------------------------------------------------------------

    def _run(self, video: str | os.PathLike[str], prompt: str, options: list[str] | None, *,
             max_new_tokens: int | None = None, start: float = 0.0, end: float | None = None) -> VQAAnswer:
        """Watch the planned chunks of ``[start, end)`` (silent turns, or commentary), then ask ``prompt`` in the
        last one: ``choose`` among ``options`` when given, else a greedy answer."""
        from streaming_vlm.eval.generate import new_session
        from streaming_vlm.sampling import SamplingConfig
        from streaming_vlm.video import VideoError, VideoReader

        t0 = time.perf_counter()
        plan = self.plan(video, start, end)
        config = self.settings.stream_config(self.config.mode, fps=plan.fps, chunk_seconds=plan.chunk_seconds,
                                             generation_defaults=self.model.loaded.generation_defaults)
        session = new_session(self.model, config)
        commentary: list[str] = []
        choice: int | None = None
        logprobs: list[float] | None = None
        text: str | None = None
        with VideoReader(video, fps=plan.fps, chunk_seconds=plan.chunk_seconds, start=start,
                         duration=None if end is None else end - start) as reader:
            last = min(plan.num_chunks, reader.num_chunks()) - 1
            for chunk in islice(reader.chunks(), last + 1):
                if chunk.index < last:
                    if self.config.commentary:
                        commentary.append(session.step(chunk.frames, chunk.start, chunk.end).text)
                    else:
                        session.step(chunk.frames, chunk.start, chunk.end, force_text="")
                elif options is not None:
                    result = session.choose(chunk.frames, chunk.start, chunk.end, prompt, options)
                    choice, logprobs, text = result.index, result.logprobs, result.option
                else:
                    # the answer is greedy and unpenalised, whatever the commentary sampling was
                    greedy = SamplingConfig(temperature=0.0, repetition_penalty=1.0,
                                            max_new_tokens=max_new_tokens or self.config.max_new_tokens)
                    session.config = replace(session.config, sampling=greedy)
                    text = session.step(chunk.frames, chunk.start, chunk.end, question=prompt).text
        if text is None:
            raise VideoError(f"{video}: the video ended before chunk {last + 1} of {last + 1}, where the question "
                             "is asked")
        return VQAAnswer(
            text=text,
            choice=choice,
            logprobs=logprobs,
            num_chunks=last + 1,
            num_frames=(last + 1) * plan.chunk_frames,
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
    root = Path(video_root) if video_root else path.parent
    items: list[dict] = []
    for n, raw in jsonl_rows(path, DataError, "VQA data"):
        where = f"{path}:{n}"
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


class VQA(harness.Benchmark):
    """``streaming-vlm eval vqa``: each answer mode is one group of items (``OUT_DIR/vqa_<mode>.jsonl``)."""

    name = "vqa"
    description = (
        "Multiple-choice (or short-answer) video QA on a local JSONL of {id, video, question, options, answer} "
        "items, answered at the end of a stream (streaming) and/or with nothing evicted (offline); writes per-item "
        "records and a results JSON with the accuracy per answer mode. For Video-MME, MVBench and LongVideoBench "
        "use the VLMEvalKit / lmms-eval adapters (scripts/eval_VQA.sh).")
    settings_use = harness.SettingsUse(exclude=EXCLUDED, protocol=PROTOCOL, fixed_chunks=False)
    out_flag = "--out-dir"
    errors = (DataError,)

    @property
    def model_default(self) -> str:  # type: ignore[override]  # read when the parser is built, not at import
        return os.environ.get(ENV_MODEL, DEFAULT_MODEL)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", default=os.environ.get(ENV_DATA), help=f"the JSONL file (default: ${ENV_DATA})")
        p.add_argument("--video-root", default=os.environ.get(ENV_VIDEO_ROOT),
                       help=f"folder relative video paths are under (default: ${ENV_VIDEO_ROOT}, else the JSONL's "
                       "folder)")
        p.add_argument("--answer-modes", type=csv_choices(tuple(ANSWER_MODES), what="answer modes"),
                       default=["streaming"], help="comma-separated: streaming, offline (default streaming)")
        sampling = p.add_mutually_exclusive_group()
        sampling.add_argument("--fps", type=positive_float, default=VQAConfig.fps,
                              help=f"frames sampled per second of each video (default {VQAConfig.fps:g}; the "
                              "protocol's rate)")
        sampling.add_argument("--nframe", type=positive_int, default=None,
                              help="a fixed number of frames spread evenly over each video (instead of --fps)")
        p.add_argument("--max-frames", type=positive_int, default=None, help="cap on frames per video (default none)")
        p.add_argument("--commentary", action="store_true",
                       help="let the model comment on the chunks before the question (default: silent chunks)")
        p.add_argument("--max-new-tokens", type=positive_int, default=VQAConfig.max_new_tokens,
                       help=f"short answers: tokens at most ({VQAConfig.max_new_tokens})")
        p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N items")
        p.add_argument("--out-dir", default="results/vqa", help="output folder (default results/vqa)")

    def items(self, run: harness.Run) -> dict[str, list[dict]]:
        args = run.args
        if not args.data:
            raise DataError(f"no VQA data: pass --data FILE.jsonl or set {ENV_DATA}")
        self.items_ = load_items(args.data, args.video_root)[: args.limit]
        self.config = VQAConfig(answer_mode=args.answer_modes[0], fps=args.fps, nframe=args.nframe,
                                max_frames=args.max_frames, commentary=args.commentary,
                                max_new_tokens=args.max_new_tokens)
        run.unused = unused_settings(args.commentary)
        self.qa: VideoQA | None = None
        return {f"vqa_{mode}": self.items_ for mode in args.answer_modes}

    def records_dir(self, run: harness.Run) -> Path:
        return Path(run.args.out_dir)

    def resume_record(self, run: harness.Run) -> dict:
        """The protocol, the model and the settings a record depends on (sampling and seed only with commentary)."""
        s = run.settings
        used = [k for k in SETTING_NAMES if k not in EXCLUDED and (self.config.commentary or k not in _SAMPLING_KEYS)]
        record = {"model": run.args.model, **{k: v for k, v in asdict(self.config).items() if k != "answer_mode"}}
        record.update({k: getattr(s, k) for k in used})
        if self.config.commentary:
            record["commentary_max_new_tokens"] = s.max_new_tokens
        return record

    def run_item(self, run: harness.Run, group: str, item: dict) -> dict:
        if self.qa is None:
            self.qa = VideoQA(run.model, self.config, run.settings, run.sources)
        return evaluate_item(self.qa.with_mode(group.removeprefix("vqa_")), item)

    def score(self, run: harness.Run, records: dict[str, list[dict]] | None) -> dict:
        from streaming_vlm.eval.runner import rank_device
        from streaming_vlm.models import resolve_device, resolve_dtype

        args, s = run.args, run.settings
        device = resolve_device(rank_device(args.device))  # the model's, without loading it when all is done
        config = {k: v for k, v in asdict(self.config).items() if k not in ("answer_mode", "engine_mode")}
        config.update({k: getattr(s, k) for k in ("system_prompt", "query", "vision_window", "text_rounds",
                                                  "text_sink", "text_window", "seed")})
        meta = {
            "data": str(args.data), "model": str(args.model), "answer_modes": args.answer_modes, "config": config,
            "device": str(device), "dtype": str(resolve_dtype(args.dtype, device)).replace("torch.", ""),
            "min_pixels": s.min_pixels, "max_pixels": s.max_pixels,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }  # fmt: skip
        return {"meta": meta, "modes": {m: summarize(records[f"vqa_{m}"]) for m in args.answer_modes}}

    def results_path(self, run: harness.Run) -> Path:
        return Path(run.args.out_dir) / "vqa_results.json"

    def table(self, results: dict) -> str:
        from streaming_vlm.eval.runner import format_table

        return format_table([
            {"answer mode": m, "items": s["items"], "scored": s["scored"], "correct": s["correct"],
             "accuracy": "-" if s["accuracy"] is None else s["accuracy"],
             "s/item": "-" if s["mean_latency_s"] is None else s["mean_latency_s"]}
            for m, s in results["modes"].items()
        ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """``streaming-vlm eval vqa ARGV``; the exit status."""
    return harness.run(VQA(), argv)
