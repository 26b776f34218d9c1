"""Stream settings: the one place where each setting of a stream, its default and its help text are written.

:class:`StreamSettings` holds how a video is sampled and resized, what a stream's cache keeps and how its
commentary is sampled. It builds the engine's value objects (cache policy, sampling, vision spec, stream config),
adds its options to any parser, and :func:`resolve` combines the places settings come from. Every entry point
(``infer``, the benchmarks, training samples) takes its settings from here, so a checkpoint streams and is
evaluated with the same ones; the engine's classes (``CachePolicy``, ``SamplingConfig``, ``VisionSpec``,
``StreamConfig``) read their defaults from :data:`DEFAULTS`.

Resolution order, lowest priority first (:func:`resolve`)::

    defaults < benchmark preset < checkpoint streaming_vlm.json < benchmark protocol < --config YAML < flags

- Flags come from :func:`add_arguments` with ``default=argparse.SUPPRESS``: a name present in the namespace was
  given (:func:`given`). A window given as ``unlimited`` is ``None``, and given all the same.
- A key of the YAML (:func:`load_config`) is given even when its value is ``null``: ``top_p: null`` means "from
  the checkpoint's generation config", ``vision_window: null`` means unlimited.
- The checkpoint's ``streaming_vlm.json`` (:func:`from_checkpoint`) may set only :data:`CHECKPOINT_KEYS`.
- The *preset* is a benchmark's own defaults (below the checkpoint); its *protocol* is what it defines, such as
  its instruction (above the checkpoint: only a flag or the YAML change it).
- A ``min_pixels`` that does not come from a flag or the YAML and is above the resolved ``max_pixels`` is lowered
  to it. Given both explicitly with min > max is an error.

Windows take ``None`` for unlimited; YAML and JSON may also write ``"unlimited"`` (or ``none``, ``inf``).
Bad values raise :class:`SettingsError`, one line naming the setting (and the file, for a file's value).

This module is a leaf: it imports the standard library and ``argtypes`` (``yaml`` when a config is read, the
engine's classes inside the builders that return them), so any module may import it. Nothing runs at import
but building :data:`DEFAULTS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streaming_vlm.argtypes import UNLIMITED_WORDS, count_or_unlimited, finite_float

if TYPE_CHECKING:
    from streaming_vlm.engine import StreamConfig
    from streaming_vlm.policy import CachePolicy
    from streaming_vlm.preprocess import VisionSpec
    from streaming_vlm.sampling import SamplingConfig

MIN_PIXELS = 100 * 28 * 28
"""Per-frame minimum after resizing (Qwen2.5-VL's ``VIDEO_MIN_PIXELS``)."""
MAX_PIXELS = 768 * 28 * 28
"""Per-frame maximum after resizing (StreamingVLM's per-frame cap: 768 vision tokens before merging)."""
TOTAL_PIXELS = 24576 * 28 * 28
"""Pixel budget of a whole clip of known length (Qwen's ``VIDEO_MAX_PIXELS``, read as a total)."""
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_QUERY = "Commentate on this match"
CHECKPOINT_FILE = "streaming_vlm.json"
"""Optional file in a checkpoint directory: the stream settings it was trained for (a subset of
:data:`CHECKPOINT_KEYS`), applied to every setting not given on the command line or in ``--config``."""

SOURCES = ("default", "preset", "checkpoint", "protocol", "config", "flag")
"""Where a resolved setting came from, lowest priority first."""
EXPLICIT_SOURCES = frozenset({"config", "flag"})
"""The sources a user sets (the others are defaults of the code, a benchmark or a checkpoint)."""


class SettingsError(ValueError):
    """A bad setting, config file or checkpoint file; the message is one line naming it."""


# Each field's metadata: "help" (one line, lower case, as shown by --help), "kind" (the value type, see _KINDS)
# and "checkpoint" (whether a checkpoint's streaming_vlm.json may set it).
_KINDS = {
    "float": finite_float,
    "float?": finite_float,  # None allowed (not from the command line)
    "int": int,
    "int?": int,
    "window": count_or_unlimited,  # an int >= 0, or None for unlimited
    "str": str,
}


def _setting(default: Any, help_text: str, kind: str, *, checkpoint: bool = False) -> Any:
    return field(default=default, metadata={"help": help_text, "kind": kind, "checkpoint": checkpoint})


@dataclass(frozen=True, kw_only=True)
class StreamSettings:
    """The settings of a stream (see the module doc for where each comes from). Frozen; keyword arguments only.

    Construction normalises each value (an ``int`` for a float setting becomes a ``float``, an integral float
    for an int setting an ``int``, ``"unlimited"`` for a window ``None``) and checks every setting alone and
    ``min_pixels <= max_pixels``, raising :class:`SettingsError`. Frames per chunk are checked separately
    (:meth:`check_chunks`), since a benchmark that plans its own chunks may use other rates.

    A subclass may add fields (with defaults) of its own, e.g. an entry point's options; its ``__post_init__``
    must call ``super().__post_init__()``. :func:`resolve` and :func:`given` then take ``cls=`` the subclass.
    """

    fps: float = _setting(2.0, "frames sampled per second of video", "float", checkpoint=True)
    chunk_seconds: float = _setting(1.0, "seconds of video per step", "float")
    min_pixels: int = _setting(MIN_PIXELS, "minimum pixels per frame after resizing", "int", checkpoint=True)
    max_pixels: int = _setting(MAX_PIXELS, "maximum pixels per frame after resizing", "int", checkpoint=True)
    total_pixels: int = _setting(
        TOTAL_PIXELS, "pixel budget of a whole clip whose length is known in advance (a training sample, an "
        "offline answer), shared by its frames", "int")
    max_frames: int = _setting(480, "most frames of a clip whose length is known in advance", "int")
    query: str = _setting(DEFAULT_QUERY, "instruction given with the first chunk", "str", checkpoint=True)
    system_prompt: str = _setting(DEFAULT_SYSTEM_PROMPT, "system prompt", "str", checkpoint=True)
    vision_window: int | None = _setting(
        16, "chunks whose vision tokens stay in the cache (or 'unlimited')", "window", checkpoint=True)
    text_rounds: int | None = _setting(
        16, "assistant turns kept verbatim before retiring into previous text (or 'unlimited')", "window",
        checkpoint=True)
    text_sink: int | None = _setting(512, "first previous-text tokens kept (or 'unlimited')", "window",
                                     checkpoint=True)
    text_window: int | None = _setting(512, "last previous-text tokens kept (or 'unlimited')", "window",
                                       checkpoint=True)
    reset_every: float = _setting(100.0, "seconds between context restarts in sliding mode", "float")
    refresh_every: int = _setting(
        0, "re-prefill the kept context from scratch every this many chunks in streaming mode, so that its deeper "
        "layers match a training sample's (0 = never)", "int", checkpoint=True)
    max_new_tokens: int = _setting(20, "tokens generated per chunk at most", "int", checkpoint=True)
    temperature: float = _setting(0.9, "sampling temperature; 0 = greedy", "float", checkpoint=True)
    top_p: float | None = _setting(None, "nucleus sampling (default: the checkpoint's generation config)", "float?",
                                   checkpoint=True)
    top_k: int | None = _setting(None, "top-k sampling (default: the checkpoint's generation config)", "int?",
                                 checkpoint=True)
    repetition_penalty: float = _setting(1.05, "penalty on tokens of the commentary in context (1 = off)", "float",
                                         checkpoint=True)
    seed: int = _setting(0, "random seed of the sampler", "int")

    def __post_init__(self) -> None:
        for f in fields(StreamSettings):
            object.__setattr__(self, f.name, _normalise(f, getattr(self, f.name)))
        if not (self.fps > 0 and self.chunk_seconds > 0):
            raise SettingsError(f"--fps and --chunk-seconds must be > 0, got {self.fps:g} and {self.chunk_seconds:g}")
        for name in ("min_pixels", "max_pixels", "total_pixels", "max_frames"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_pixels > self.max_pixels:
            raise SettingsError(f"--min-pixels ({self.min_pixels}) is larger than --max-pixels ({self.max_pixels})")
        # the same bounds, and words, as CachePolicy, StreamConfig and SamplingConfig (tests/test_settings.py)
        for name, least in (("vision_window", 1), ("text_rounds", 1), ("text_sink", 0), ("text_window", 0)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise SettingsError(f"{name} must be >= {least} or None (unlimited), got {value}")
        if self.reset_every <= 0:
            raise SettingsError(f"reset_every must be > 0, got {self.reset_every}")
        if self.refresh_every < 0:
            raise SettingsError(f"refresh_every must be >= 0, got {self.refresh_every}")
        if self.temperature < 0:
            raise SettingsError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SettingsError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise SettingsError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise SettingsError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise SettingsError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    def check_chunks(self, fps: float | None = None, chunk_seconds: float | None = None) -> None:
        """Raise :class:`SettingsError` unless a chunk holds an even whole number of frames (Qwen2.5-VL encodes
        frames in pairs): of ``fps * chunk_seconds``, each defaulting to this object's value."""
        fps = self.fps if fps is None else fps
        chunk_seconds = self.chunk_seconds if chunk_seconds is None else chunk_seconds
        if not (fps > 0 and chunk_seconds > 0):
            raise SettingsError(f"--fps and --chunk-seconds must be > 0, got {fps:g} and {chunk_seconds:g}")
        frames = fps * chunk_seconds
        n = round(frames)
        if n < 2 or n % 2 or abs(frames - n) > 1e-9 * frames:
            raise SettingsError(f"--fps * --chunk-seconds must be an even whole number of frames per chunk, "
                                f"got {fps:g} * {chunk_seconds:g} = {frames:g}")

    # ---- builders (the engine's classes are imported here, so this module stays a leaf) ----------------------

    def cache_policy(self) -> CachePolicy:
        """The streaming cache policy of the four windows (the engine uses an unlimited one in full and sliding
        modes: see ``StreamConfig.policy``)."""
        from streaming_vlm.policy import CachePolicy

        return CachePolicy(vision_window=self.vision_window, text_rounds=self.text_rounds, text_sink=self.text_sink,
                           text_window=self.text_window)

    def sampling(self, generation_defaults: Mapping[str, Any] | None = None, **override: Any) -> SamplingConfig:
        """The sampling settings, with ``override`` (``SamplingConfig`` field names) on top; a ``top_p``/``top_k``
        still ``None`` is then taken from ``generation_defaults`` (``LoadedModel.generation_defaults``: the
        checkpoint's ``generation_config.json``) when it has one."""
        from streaming_vlm.sampling import SamplingConfig

        values = {name: getattr(self, name) for name in _SAMPLING_NAMES} | override
        for name in ("top_p", "top_k"):
            if values[name] is None:
                values[name] = (generation_defaults or {}).get(name)
        return SamplingConfig(**values)

    def frame_pixels(self, n_frames: int | None = None, temporal_patch_size: int = 2) -> tuple[int, int]:
        """Per-frame pixel bounds ``(min, max)`` after resizing: the one pixel-budget rule.

        - ``n_frames`` None, a stream (its length is unknown): ``(min_pixels, max_pixels)``.
        - A clip of ``n_frames`` frames known in advance (a training sample, an offline answer) shares
          ``total_pixels`` among its frames: the cap is ``int(total_pixels * temporal_patch_size / n_frames)``,
          kept within ``[min_pixels, max_pixels]``. This is training's rule, unchanged.
        """
        if n_frames is None:
            return self.min_pixels, self.max_pixels
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        budget = int(self.total_pixels * temporal_patch_size / n_frames)
        return self.min_pixels, max(min(self.max_pixels, budget), self.min_pixels)

    def vision_spec(self, base: VisionSpec | str | os.PathLike[str] | None = None,
                    n_frames: int | None = None) -> VisionSpec:
        """``base`` (a ``VisionSpec``; a model directory or hub id, read by ``VisionSpec.from_pretrained``; None:
        the default geometry) with the pixel bounds of :meth:`frame_pixels` for ``n_frames``."""
        from streaming_vlm.preprocess import VisionSpec

        spec = base if isinstance(base, VisionSpec) else VisionSpec.from_pretrained(base)
        low, high = self.frame_pixels(n_frames, spec.temporal_patch_size)
        return dataclasses.replace(spec, min_pixels=low, max_pixels=high)

    def stream_config(self, mode: str = "streaming", *, previous_text: str = "",
                      generation_defaults: Mapping[str, Any] | None = None, **per_stream: Any) -> StreamConfig:
        """The engine's config of one stream: these settings with ``per_stream`` (setting names, e.g. a stream's
        own ``query``, ``fps``, ``chunk_seconds``) on top, in ``mode`` with ``previous_text``. Sampling as
        :meth:`sampling`. Raises :class:`SettingsError` for a bad per-stream value or frames per chunk that are not
        an even whole number (:meth:`check_chunks`), ``ValueError`` for an unknown mode; ``TypeError`` for a name
        that is not a setting."""
        from streaming_vlm.engine import StreamConfig

        unknown = sorted(set(per_stream) - set(SETTING_NAMES))
        if unknown:
            raise TypeError(f"not stream settings: {', '.join(unknown)}")
        s = StreamSettings(**(self.as_record() | per_stream)) if per_stream else self
        s.check_chunks()
        return StreamConfig(
            mode=mode, query=s.query, previous_text=previous_text, system_prompt=s.system_prompt,
            chunk_seconds=s.chunk_seconds, fps=s.fps, vision_window=s.vision_window, text_rounds=s.text_rounds,
            text_sink=s.text_sink, text_window=s.text_window, reset_every=s.reset_every,
            refresh_every=s.refresh_every,
            sampling=s.sampling(generation_defaults), seed=s.seed,
        )  # fmt: skip

    def as_record(self) -> dict[str, Any]:
        """Every stream setting (not a subclass's own fields) by name, in field order; JSON-able (windows
        unlimited as ``None``)."""
        return {name: getattr(self, name) for name in SETTING_NAMES}

    def checkpoint_record(self) -> dict[str, Any]:
        """The settings a checkpoint's ``streaming_vlm.json`` holds (:data:`CHECKPOINT_KEYS`), in field order."""
        return {name: getattr(self, name) for name in SETTING_NAMES if name in CHECKPOINT_KEYS}


SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in fields(StreamSettings))
"""Every stream setting, in field order."""
CHECKPOINT_KEYS: frozenset[str] = frozenset(f.name for f in fields(StreamSettings) if f.metadata["checkpoint"])
"""The settings a checkpoint's ``streaming_vlm.json`` may set."""
_SAMPLING_NAMES = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")
_FIELDS = {f.name: f for f in fields(StreamSettings)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _normalise(f: dataclasses.Field, value: Any) -> Any:
    """``value`` of setting ``f`` in its canonical type; :class:`SettingsError` when it has the wrong type."""
    kind = f.metadata["kind"]
    if kind == "str":
        if not isinstance(value, str):
            raise SettingsError(f"{_flag(f.name)} must be text, got {value!r}")
        return value
    if value is None and kind in ("float?", "int?", "window"):
        return None
    if kind == "window" and isinstance(value, str) and value.lower() in UNLIMITED_WORDS:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        expected = "an integer >= 0 or 'unlimited'" if kind == "window" else "a number"
        raise SettingsError(f"{_flag(f.name)} must be {expected}, got {value!r}")
    if not math.isfinite(value):
        raise SettingsError(f"{_flag(f.name)} must be a finite number, got {value}")
    if kind.startswith("float"):
        return float(value)
    if value != int(value):
        raise SettingsError(f"{_flag(f.name)} must be an integer, got {value!r}")
    return int(value)


DEFAULTS = StreamSettings()
"""The defaults of every setting; the engine's classes read theirs from here."""


def setting_field(name: str, **metadata: Any) -> Any:
    """A ``dataclasses.field`` with the default and help text of setting ``name`` (``metadata`` added), for a
    dataclass that keeps its own name for a setting (``DataArguments.text_sliding_window``). The metadata holds
    only ``help`` and what is passed, so ``HfArgumentParser`` can hand it to ``add_argument``."""
    f = _FIELDS[name]
    return field(default=f.default, metadata={"help": f.metadata["help"], **metadata})


def add_arguments(parser: argparse.ArgumentParser, *, exclude: Iterable[str] = (),
                  shown: Mapping[str, Any] | None = None, title: str = "stream settings"):
    """Add one flag per setting (``--min-pixels`` for ``min_pixels``, dest the setting's name) to a new argument
    group of ``parser`` titled ``title``, and return the group.

    Every flag has ``default=argparse.SUPPRESS``: a setting left off the command line is absent from the
    namespace (see :func:`given`). Numbers must be finite; windows take an integer >= 0 or ``unlimited``
    (``none``, ``inf``: ``None``). ``exclude`` names settings the entry point has no flag for; ``shown`` maps
    settings to the default the help should show (a benchmark's preset or protocol value) instead of
    :data:`DEFAULTS`'. ``ValueError`` for a name in either that is not a setting.
    """
    exclude, shown = set(exclude), dict(shown or {})
    unknown = sorted((exclude | set(shown)) - set(SETTING_NAMES))
    if unknown:
        raise ValueError(f"not stream settings: {', '.join(unknown)}")
    group = parser.add_argument_group(title)
    for f in fields(StreamSettings):
        if f.name in exclude:
            continue
        default = shown.get(f.name, f.default)
        if default is None:
            suffix = " (default: unlimited)" if f.metadata["kind"] == "window" else ""
        else:
            suffix = f" (default: {default!r})" if isinstance(default, str) else f" (default: {default})"
        group.add_argument(_flag(f.name), dest=f.name, type=_KINDS[f.metadata["kind"]], default=argparse.SUPPRESS,
                           help=(f.metadata["help"] + suffix).replace("%", "%%"))
    return group


def given(args: argparse.Namespace, cls: type[StreamSettings] = StreamSettings) -> dict[str, Any]:
    """The fields of ``cls`` present in ``args`` (a namespace parsed with SUPPRESS defaults: given on the command
    line), by name; a window given as ``unlimited`` is there as ``None``."""
    present = vars(args)
    return {f.name: present[f.name] for f in fields(cls) if f.init and f.name in present}


def load_config(path: str | os.PathLike[str], known: Iterable[str] | None = None) -> dict[str, Any]:
    """The mapping in YAML file ``path`` (an empty file: ``{}``), settings' values normalised.

    :class:`SettingsError` with one line naming the file when it cannot be read (``cannot read config PATH:
    ...``), is not a mapping, has a key that is not in ``known`` (when given: ``unknown option(s) ...``) or a
    setting of the wrong type. Keys are not otherwise checked: an entry point may keep options of its own there.
    """
    import yaml

    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"cannot read config {path}: {str(exc).splitlines()[0]}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SettingsError(f"config {path} must be a mapping of option names to values")
    if known is not None:
        unknown = sorted(str(key) for key in set(loaded) - set(known))
        if unknown:
            raise SettingsError(f"config {path}: unknown option(s) {', '.join(unknown)}")
    return _normalised(loaded, f"config {path}")


def from_checkpoint(model_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The stream settings in ``streaming_vlm.json`` of the local checkpoint directory ``model_path``; ``{}`` when
    it has none or ``model_path`` is not a local directory (a hub id). :class:`SettingsError` naming the file when
    it cannot be read, is not a mapping, sets a key outside :data:`CHECKPOINT_KEYS` or a value of the wrong type.
    """
    file = Path(model_path) / CHECKPOINT_FILE
    if not (Path(model_path).is_dir() and file.is_file()):
        return {}
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{file}: cannot read: {' '.join(str(exc).split())}") from None
    if not isinstance(values, dict):
        raise SettingsError(f"{file}: expected a mapping of stream settings, got {type(values).__name__}")
    unknown = sorted(set(values) - CHECKPOINT_KEYS)
    if unknown:
        raise SettingsError(f"{file}: unknown stream setting(s) {', '.join(unknown)} "
                            f"(a checkpoint may set {', '.join(k for k in SETTING_NAMES if k in CHECKPOINT_KEYS)})")
    return _normalised(values, str(file))


def _normalised(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = dict(values)
    for name in out.keys() & _FIELDS.keys():
        try:
            out[name] = _normalise(_FIELDS[name], out[name])
        except SettingsError as exc:
            raise SettingsError(f"{where}: {exc}") from None
    return out


def resolve(
    given: Mapping[str, Any],
    *,
    config: Mapping[str, Any] | None = None,
    checkpoint: Mapping[str, Any] | None = None,
    protocol: Mapping[str, Any] | None = None,
    preset: Mapping[str, Any] | None = None,
    cls: type[StreamSettings] = StreamSettings,
) -> tuple[StreamSettings, dict[str, str]]:
    """Settings from every layer: ``(settings, sources)``.

    Each argument maps field names of ``cls`` to values; later in this order wins: defaults (``cls``'s), ``preset``,
    ``checkpoint`` (only :data:`CHECKPOINT_KEYS`), ``protocol``, ``config`` (the ``--config`` YAML), ``given``
    (the flags, :func:`given`). A key present counts, whatever its value (``None`` included). A ``min_pixels``
    from neither ``config`` nor ``given`` that is above the resolved ``max_pixels`` is lowered to it, and then takes
    ``max_pixels``' source. ``sources`` maps every field of ``cls`` to one of :data:`SOURCES`.

    Returns an instance of ``cls``. Raises :class:`SettingsError` for a key a layer may not set and for any value
    ``cls`` refuses (``cls``'s own checks may raise other ``ValueError``\\ s).
    """
    if not (isinstance(cls, type) and issubclass(cls, StreamSettings)):
        raise TypeError(f"cls must be StreamSettings or a subclass, got {cls!r}")
    names = [f.name for f in fields(cls) if f.init]
    values: dict[str, Any] = {}
    sources = dict.fromkeys(names, "default")
    for source, layer in (("preset", preset), ("checkpoint", checkpoint), ("protocol", protocol),
                          ("config", config), ("flag", given)):
        layer = layer or {}
        allowed = CHECKPOINT_KEYS if source == "checkpoint" else names
        unknown = sorted(str(key) for key in set(layer) - set(allowed))
        if unknown:
            raise SettingsError(f"{source}: unknown stream setting(s) {', '.join(unknown)}")
        values.update(layer)
        sources.update(dict.fromkeys(layer, source))
    if sources["min_pixels"] not in EXPLICIT_SOURCES:
        low, high = (_normalise(_FIELDS[name], values.get(name, _default(cls, name)))
                     for name in ("min_pixels", "max_pixels"))
        if low > high:
            values["min_pixels"] = high
            sources["min_pixels"] = sources["max_pixels"]
    return cls(**values), sources


def _default(cls: type, name: str) -> Any:
    f = next(f for f in fields(cls) if f.name == name)
    return f.default_factory() if f.default is MISSING else f.default
