"""StreamingVLM as a VLMEvalKit model: ``StreamingVLMChat``, a ``vlmeval.vlm.base.BaseModel`` for video datasets.

VLMEvalKit is imported only when the class is first asked for (``from streaming_vlm.eval.vlmevalkit import
StreamingVLMChat``, :func:`chat_class` or :func:`register`), so importing this package never needs it.

Contract with VLMEvalKit (``vlmeval/vlm/base.py``, ``vlmeval/inference_video.py``):

- ``VIDEO_LLM = True``: video datasets hand ``generate_inner(message, dataset)`` a message list of
  ``{'type': 'text' | 'video', 'value': ...}`` dicts, the video as a file path; the texts are joined with
  newlines into the prompt, as ``BaseModel.message_to_promptvideo`` does.
- The toolkit sets the model's ``fps`` / ``nframe`` attributes from the dataset (``Video-MME_1fps`` -> fps 1,
  ``MVBench_64frame`` -> nframe 64) before inference; both start positive so that the toolkit's rule keeps the
  dataset's value and clears the other one. With ``nframe`` alone left set the video gets that many frames,
  otherwise it is sampled at ``fps`` (the constructor's ``fps`` when the toolkit cleared both).
- The checkpoint is loaded by our loader, which reads its architecture from its config: no model-name matching
  (the reference's case-sensitive name test sent StreamingVLM to the Qwen2-VL classes), no vocabulary scan.
- Multiple-choice prompts ("A. ..." / "(A) ..." lines) are answered with the option letter, which every
  VLMEvalKit video MCQ scorer accepts; other prompts get a short greedy answer.
- Stream settings (``settings.StreamSettings``: pixels per frame, cache windows, system prompt, commentary sampling)
  are keyword arguments of the model (``max_pixels=...``, ``vision_window=...``; the launcher's ``--max-pixels``,
  ``--vision-window``, ...); the checkpoint's ``streaming_vlm.json`` gives the others, so a checkpoint is evaluated
  with the settings it streams with (``vqa.resolve_settings``: no instruction, the frame rate is the dataset's).

Registration without editing VLMEvalKit: ``python -m streaming_vlm.eval.vlmevalkit --vlmevalkit-root DIR
[our options] -- [run.py options]`` adds ``StreamingVLM`` (streaming answers) and ``StreamingVLM-offline`` to
``vlmeval.config.supported_VLM`` and runs the toolkit's ``run.py`` in the same process (works under torchrun).
See docs/eval_vqa.md for the ``config.py`` snippet instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import runpy
import sys
from functools import partial
from pathlib import Path
from typing import Any

from streaming_vlm.eval.harness import fail
from streaming_vlm.eval.vqa import DEFAULT_MODEL, ENV_MODEL, EXCLUDED, PROTOCOL, VideoQA, VQAConfig, toolkit_class
from streaming_vlm.settings import add_arguments as add_settings_arguments
from streaming_vlm.settings import given

__all__ = ["MODEL_NAMES", "build_parser", "chat_class", "main", "register"]

logger = logging.getLogger(__name__)

MODEL_NAMES = {"StreamingVLM": "streaming", "StreamingVLM-offline": "offline"}
"""Names registered in ``supported_VLM`` -> answer mode."""
ENV_ROOT = "VLMEVALKIT_ROOT"
PROG = "python -m streaming_vlm.eval.vlmevalkit"
ERROR_PREFIX = "streaming_vlm.eval.vlmevalkit"
OFFLINE_MAX_FRAMES = 256
"""Default frame cap of the offline entry: 128 two-frame chunks, at most ~100k visual tokens at 768*28*28 px."""

class _Chat:
    """The body of ``StreamingVLMChat``; :func:`chat_class` mixes it into VLMEvalKit's ``BaseModel``."""

    INTERLEAVE = False
    VIDEO_LLM = True
    allowed_types = ["text", "video"]

    def __init__(
        self,
        model_path: str = DEFAULT_MODEL,
        answer_mode: str = "streaming",
        fps: float = VQAConfig.fps,
        nframe: int = 64,
        max_frames: int | None = None,
        commentary: bool = False,
        max_new_tokens: int = VQAConfig.max_new_tokens,
        device: str = "auto",
        dtype: str = "auto",
        **kwargs: Any,
    ):
        super().__init__()
        if not (fps and fps > 0 and nframe and nframe > 0):
            raise ValueError(f"StreamingVLMChat needs fps > 0 and nframe > 0 (got fps={fps}, nframe={nframe})")
        # VLMEvalKit's inference loop rewrites these two from the dataset (see the module docstring)
        self.fps: float | None = float(fps)
        self.nframe: int | None = int(nframe)
        self.default_fps = float(fps)
        config = VQAConfig(
            answer_mode=answer_mode,
            fps=float(fps),
            max_frames=max_frames,
            commentary=commentary,
            max_new_tokens=max_new_tokens,
        )
        # kwargs: stream settings (max_pixels=..., vision_window=...)
        self.qa = VideoQA.for_toolkit("StreamingVLMChat", model_path, config, kwargs, device=device, dtype=dtype)
        self.model_path = model_path
        self.answer_mode = answer_mode
        self.last_answer = None

    def use_custom_prompt(self, dataset: str) -> bool:
        return False

    def _sampler(self) -> VideoQA:
        """The sampling the toolkit left set: nframe alone (a fixed-frame dataset), else fps, else the default."""
        fps_set, nframe_set = bool(self.fps and self.fps > 0), bool(self.nframe and self.nframe > 0)
        if nframe_set and not fps_set:
            return self.qa.with_sampling(nframe=self.nframe)
        return self.qa.with_sampling(fps=self.fps if fps_set else self.default_fps)

    def generate_inner(self, message: list[dict], dataset: str | None = None) -> str:
        """The answer to ``message`` (text items and one video path): an option letter for MCQ prompts."""
        texts = [str(m["value"]) for m in message if m["type"] == "text"]
        videos = [m["value"] for m in message if m["type"] == "video"]
        if not videos:
            raise ValueError(f"StreamingVLMChat answers questions about a video; the {dataset} message has none")
        if len(videos) > 1:
            logger.warning("StreamingVLMChat: %d videos in one message, answering about the first", len(videos))
        prompt = "\n".join(t for t in texts if t.strip())
        answer = self._sampler().answer_prompt(videos[0], prompt)
        self.last_answer = answer
        return answer.text


def chat_class() -> type:
    """``StreamingVLMChat``: a subclass of VLMEvalKit's ``BaseModel`` (imports ``vlmeval``)."""
    try:
        from vlmeval.vlm.base import BaseModel
    except ImportError as exc:
        raise ImportError(f"StreamingVLMChat needs VLMEvalKit (`pip install -e VLMEvalKit`): {exc}") from exc
    return toolkit_class("StreamingVLMChat", _Chat, BaseModel)


def __getattr__(name: str):
    if name == "StreamingVLMChat":
        return chat_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(
    model_path: str = DEFAULT_MODEL, *, offline_max_frames: int | None = OFFLINE_MAX_FRAMES, **kwargs: Any
) -> dict[str, partial]:
    """Add ``StreamingVLM`` and ``StreamingVLM-offline`` to ``vlmeval.config.supported_VLM`` (and the class to
    ``vlmeval.vlm`` for ``run.py --config``); returns the added entries.

    ``kwargs`` (the model's options, stream settings included) go to both; the offline entry keeps at most
    ``offline_max_frames`` frames per video unless ``max_frames`` is given (nothing is evicted offline, so an hour
    at 1 fps would not fit in memory).
    """
    import vlmeval.config
    import vlmeval.vlm

    cls = chat_class()
    entries = {}
    for name, mode in MODEL_NAMES.items():
        options = dict(kwargs)
        if mode == "offline" and options.get("max_frames") is None:
            options["max_frames"] = offline_max_frames
        entries[name] = partial(cls, model_path=model_path, answer_mode=mode, **options)
    vlmeval.config.supported_VLM.update(entries)
    vlmeval.vlm.StreamingVLMChat = cls
    return entries


# ------------------------------------------------------------------------------------------------------------
# launcher
# ------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Register StreamingVLM in VLMEvalKit and run its run.py; arguments after our own (or after "
        "'--') go to run.py, e.g. -- --data Video-MME_1fps --model StreamingVLM --judge exact_matching --reuse",
        allow_abbrev=False,
    )
    p.add_argument(
        "--vlmevalkit-root",
        default=os.environ.get(ENV_ROOT),
        help=f"the VLMEvalKit checkout holding run.py (default: ${ENV_ROOT})",
    )
    p.add_argument(
        "--model-path",
        default=os.environ.get(ENV_MODEL, DEFAULT_MODEL),
        help=f"checkpoint (default: ${ENV_MODEL}, else {DEFAULT_MODEL})",
    )
    p.add_argument("--max-frames", type=int, default=None, help="cap on frames per video, both entries (default none)")
    p.add_argument(
        "--offline-max-frames",
        type=int,
        default=OFFLINE_MAX_FRAMES,
        help=f"cap of the StreamingVLM-offline entry when --max-frames is not given ({OFFLINE_MAX_FRAMES})",
    )
    p.add_argument("--commentary", action="store_true", help="comment on the chunks before the question")
    add_settings_arguments(p, exclude=EXCLUDED, shown=PROTOCOL,
                           title="stream settings (flag > the QA protocol > the checkpoint's streaming_vlm.json > "
                           "the default shown)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, rest = argv, []
    if "--" in argv:
        i = argv.index("--")
        ours, rest = argv[:i], argv[i + 1 :]
    args, unknown = build_parser().parse_known_args(ours)
    rest = unknown + rest
    if not args.vlmevalkit_root:
        return fail(ERROR_PREFIX, f"no VLMEvalKit checkout: pass --vlmevalkit-root DIR or set {ENV_ROOT}")
    run_py = Path(args.vlmevalkit_root) / "run.py"
    if not run_py.is_file():
        return fail(ERROR_PREFIX, f"{run_py} not found: --vlmevalkit-root must be a VLMEvalKit checkout")
    sys.path.insert(0, str(run_py.parent))
    try:
        settings = {k: v for k, v in given(args).items() if k not in EXCLUDED}  # --max-frames is our own
        register(args.model_path, offline_max_frames=args.offline_max_frames, max_frames=args.max_frames,
                 commentary=args.commentary, **settings)
    except ImportError as exc:
        return fail(ERROR_PREFIX, exc)
    sys.argv = [str(run_py), *rest]
    runpy.run_path(str(run_py), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
