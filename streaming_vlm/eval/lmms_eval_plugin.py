"""StreamingVLM as an lmms-eval model: ``StreamingVLM``, an ``lmms_eval.api.model.lmms`` registered as
``streaming_vlm``.

lmms-eval is imported only when the class is first asked for (``from streaming_vlm.eval.lmms_eval_plugin import
StreamingVLM``, :func:`model_class`, :func:`register`), so importing this package never needs it.

Contract with lmms-eval (``lmms_eval/api/model.py``, ``lmms_eval/api/instance.py``; a "simple" model):

- ``generate_until(requests)``: each ``Instance.args`` is ``(context, gen_kwargs, doc_to_visual, doc_id, task,
  split)``; the video path is ``doc_to_visual(self.task_dict[task][split][doc_id])[0]``. A context listing
  options ("A. ..." / "(A) ..." lines) is answered with the option letter, which the Video-MME, MVBench and
  LongVideoBench scorers accept; other contexts get a greedy answer of at most ``gen_kwargs['max_new_tokens']``
  tokens cut at the first ``gen_kwargs['until']`` string.
- ``loglikelihood(requests)``: ``(context, continuation, doc_to_visual, doc_id, task, split)`` (the continuation
  may be a callable of the doc); returns ``(log P(continuation + newline | video, context), is_greedy)``: the
  answer as the model lays answers out in training. The requests of one context (the options of one
  question) share one pass over the video, and ``is_greedy`` means "the best of that context's continuations".
- ``generate_until_multi_round`` is not supported (raises ``NotImplementedError``).

Frame sampling comes from the model arguments (``fps=1`` for Video-MME and LongVideoBench, ``nframe=64`` for
MVBench): ``--model streaming_vlm --model_args pretrained=...,answer_mode=streaming,fps=1``. Stream settings are
model arguments too (``max_pixels=...``, ``vision_window=unlimited``); the checkpoint's ``streaming_vlm.json``
gives the others (``vqa.resolve_settings``: no instruction, the frame rate is the task's).

Registration: :func:`manifest` is the payload of the ``lmms_eval.models`` entry-point group read by lmms-eval
>= 0.5 (a ``pyproject.toml`` entry, see docs/eval_vqa.md). Without it, ``python -m
streaming_vlm.eval.lmms_eval_plugin [lmms-eval options]`` registers the model in the running process and runs
lmms-eval's command line (works under ``accelerate launch`` / ``torchrun``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from streaming_vlm.eval.vqa import DEFAULT_MODEL, VideoQA, VQAConfig, toolkit_class

__all__ = ["CLASS_PATH", "MODEL_NAME", "main", "manifest", "model_class", "register"]

logger = logging.getLogger(__name__)

MODEL_NAME = "streaming_vlm"
CLASS_PATH = f"{__name__}.StreamingVLM"

def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def _optional(value: Any, kind: Callable[[Any], Any]) -> Any:
    if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none", "null"}):
        return None
    return kind(value)


class _Model:
    """The body of ``StreamingVLM``; :func:`model_class` mixes it into lmms-eval's ``lmms``."""

    is_simple = True

    def __init__(
        self,
        pretrained: str = DEFAULT_MODEL,
        answer_mode: str = "streaming",
        fps: float | None = VQAConfig.fps,
        nframe: int | None = None,
        max_frames: int | None = None,
        commentary: bool = False,
        max_new_tokens: int = VQAConfig.max_new_tokens,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str | None = 1,
        **kwargs: Any,
    ):
        super().__init__()
        kwargs.pop("max_batch_size", None)
        if batch_size not in (None, 1, "1"):
            logger.warning("streaming_vlm answers one request at a time (batch_size %s ignored)", batch_size)
        self._rank = int(os.environ.get("RANK", 0))
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        if not device or device == "cuda":
            device = "auto"
        if device == "auto" and self._world_size > 1:
            import torch

            if torch.cuda.is_available():
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        config = VQAConfig(
            answer_mode=str(answer_mode),
            fps=_optional(fps, float),
            nframe=_optional(nframe, int),
            max_frames=_optional(max_frames, int),
            commentary=_as_bool(commentary),
            max_new_tokens=int(max_new_tokens),
        )
        # kwargs: stream settings (max_pixels=..., vision_window=unlimited, top_p=none)
        self.qa = VideoQA.for_toolkit(MODEL_NAME, str(pretrained), config, kwargs, device=device, dtype=str(dtype))
        self.pretrained = str(pretrained)

    @property
    def device(self):
        return self.qa.model.loaded.device

    @property
    def batch_size(self) -> int:
        return 1

    def _video(self, doc_to_visual, doc_id, task: str, split: str) -> str:
        doc = self.task_dict[task][split][doc_id]
        visuals = doc_to_visual(doc) if callable(doc_to_visual) else doc_to_visual
        if isinstance(visuals, (str, os.PathLike)):
            visuals = [visuals]
        paths = [os.fspath(v) for v in (visuals or []) if isinstance(v, (str, os.PathLike))]
        if not paths:
            raise ValueError(
                f"streaming_vlm needs a video file per request; task {task} doc {doc_id} gave "
                f"{type(visuals).__name__} (use the video variant of the task)"
            )
        if len(paths) > 1:
            logger.warning("task %s doc %s: %d videos, answering about the first", task, doc_id, len(paths))
        return paths[0]

    def generate_until(self, requests) -> list[str]:
        from tqdm import tqdm

        out: list[str] = []
        for request in tqdm(requests, desc="streaming_vlm", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            answer = self.qa.answer_prompt(
                self._video(doc_to_visual, doc_id, task, split),
                context,
                max_new_tokens=gen_kwargs.get("max_new_tokens"),
                stop=until,
            )
            out.append(answer.text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), answer.text)
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        from tqdm import tqdm

        groups: dict[tuple, list[tuple[int, str]]] = {}
        videos: dict[tuple, str] = {}
        for i, request in enumerate(requests):
            context, target, doc_to_visual, doc_id, task, split = request.args
            continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            key = (context, task, split, doc_id)
            if key not in groups:
                videos[key] = self._video(doc_to_visual, doc_id, task, split)
            groups.setdefault(key, []).append((i, str(continuation)))
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        for key, members in tqdm(groups.items(), desc="streaming_vlm", disable=self.rank != 0):
            scored = self.qa.score(videos[key], key[0], [c for _, c in members])
            best = max(scored.logprobs)
            for (i, _), lp in zip(members, scored.logprobs, strict=True):
                out[i] = (float(lp), lp == best)
        return out  # type: ignore[return-value]

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("streaming_vlm does not implement multi-round generation")


def model_class() -> type:
    """``StreamingVLM``: a subclass of lmms-eval's ``lmms``, registered as ``streaming_vlm`` (imports lmms_eval)."""
    try:
        from lmms_eval.api.model import lmms
        from lmms_eval.api.registry import register_model
    except ImportError as exc:
        raise ImportError(
            f"the streaming_vlm lmms-eval model needs lmms-eval (`pip install lmms-eval`): {exc}"
        ) from exc
    return toolkit_class("StreamingVLM", _Model, lmms, register_model(MODEL_NAME))


def __getattr__(name: str):
    if name == "StreamingVLM":
        return model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def manifest():
    """The ``lmms_eval.models`` entry-point payload: a ``ModelManifest`` for ``streaming_vlm`` (lmms-eval >= 0.5)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=CLASS_PATH)


def register() -> type:
    """Make ``--model streaming_vlm`` resolve in this process, for the lmms-eval versions with a model-name table
    (``MODEL_REGISTRY_V2`` from 0.5, ``AVAILABLE_MODELS`` before); returns the class."""
    cls = model_class()
    import lmms_eval.models as models

    registry = getattr(models, "MODEL_REGISTRY_V2", None)
    if registry is not None:
        registry.register_manifest(manifest(), overwrite=True)
    available = getattr(models, "AVAILABLE_MODELS", None)
    if isinstance(available, dict):
        available[MODEL_NAME] = CLASS_PATH if registry is None else cls.__name__
    return cls


def main(argv: list[str] | None = None) -> int:
    """Register ``streaming_vlm`` and run lmms-eval's command line with ``argv``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        register()
        from lmms_eval.__main__ import cli_evaluate
    except ImportError as exc:
        print(f"streaming_vlm.eval.lmms_eval_plugin: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    sys.argv = ["lmms_eval", *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
