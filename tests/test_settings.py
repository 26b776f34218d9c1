"""The stream settings (``streaming_vlm/settings.py``): defaults and help written once, the engine objects they
build, the flags, the layers and their order, the min_pixels clamp, 'unlimited', strict keys and the pixel
budget; plus the pieces landed with it (``argtypes.csv_choices``, model-path resolution in ``models``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass

import pytest

from streaming_vlm import models, settings
from streaming_vlm.argtypes import csv_choices
from streaming_vlm.data.sample import SampleConfig
from streaming_vlm.engine import StreamConfig
from streaming_vlm.policy import CachePolicy
from streaming_vlm.preprocess import VisionSpec
from streaming_vlm.sampling import SamplingConfig
from streaming_vlm.settings import (
    CHECKPOINT_FILE,
    CHECKPOINT_KEYS,
    DEFAULTS,
    SETTING_NAMES,
    SettingsError,
    StreamSettings,
    add_arguments,
    from_checkpoint,
    given,
    load_config,
    resolve,
)

# Today's values (commit 30ed1d6: infer.InferConfig, the engine's classes, data/sample.SampleConfig), written out.
TODAYS_DEFAULTS = {
    "fps": 2.0, "chunk_seconds": 1.0, "min_pixels": 78400, "max_pixels": 602112, "total_pixels": 19267584,
    "max_frames": 480, "query": "Commentate on this match", "system_prompt": "You are a helpful assistant.",
    "vision_window": 16, "text_rounds": 16, "text_sink": 512, "text_window": 512, "reset_every": 100.0,
    "refresh_every": 0, "max_new_tokens": 20, "temperature": 0.9, "top_p": None, "top_k": None,
    "repetition_penalty": 1.05, "seed": 0,
}  # fmt: skip
TODAYS_CHECKPOINT_KEYS = {
    "min_pixels", "max_pixels", "fps", "query", "system_prompt", "vision_window", "text_rounds", "text_sink",
    "text_window", "refresh_every", "max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty",
}  # fmt: skip
WINDOWS = ("vision_window", "text_rounds", "text_sink", "text_window")


def parser_with_settings(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prog", exit_on_error=True)
    add_arguments(parser, **kwargs)
    return parser


def write_checkpoint(directory, values) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CHECKPOINT_FILE).write_text(json.dumps(values), encoding="utf-8")
    return str(directory)


# ------------------------------------------------------------------------------------------------------------
# one home: leaf module, defaults, help, checkpoint keys
# ------------------------------------------------------------------------------------------------------------


def test_importing_settings_loads_no_framework():
    code = ("import sys, streaming_vlm.settings; "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_defaults_are_todays_values():
    assert DEFAULTS.as_record() == TODAYS_DEFAULTS
    assert list(DEFAULTS.as_record()) == list(SETTING_NAMES)
    assert (settings.MIN_PIXELS, settings.MAX_PIXELS, settings.TOTAL_PIXELS) == (78400, 602112, 19267584)
    assert settings.DEFAULT_QUERY == "Commentate on this match"
    assert settings.DEFAULT_SYSTEM_PROMPT == "You are a helpful assistant."


def test_every_setting_has_a_one_line_help_text_and_a_kind():
    for f in dataclasses.fields(StreamSettings):
        text = f.metadata.get("help")
        assert isinstance(text, str) and text.strip() and "\n" not in text, f.name
        assert f.metadata["kind"] in ("float", "float?", "int", "int?", "window", "str"), f.name
    helptext = " ".join(parser_with_settings().format_help().split())
    for f in dataclasses.fields(StreamSettings):
        flag = "--" + f.name.replace("_", "-")
        assert flag in helptext and " ".join(f.metadata["help"].split()) in helptext, f.name


def test_checkpoint_keys_are_the_14_of_today_listed_once():
    assert CHECKPOINT_KEYS == TODAYS_CHECKPOINT_KEYS
    assert CHECKPOINT_FILE == "streaming_vlm.json"
    for old_name in ("STREAM_DEFAULT_KEYS", "STREAM_DEFAULTS_FILE", "stream_defaults"):  # listed and read once
        assert not hasattr(models, old_name), old_name
    record = DEFAULTS.checkpoint_record()
    assert set(record) == TODAYS_CHECKPOINT_KEYS and record == {k: TODAYS_DEFAULTS[k] for k in record}


def test_layout_still_exports_the_default_texts():
    from streaming_vlm import layout

    assert layout.DEFAULT_QUERY is settings.DEFAULT_QUERY
    assert layout.DEFAULT_SYSTEM_PROMPT is settings.DEFAULT_SYSTEM_PROMPT


# ------------------------------------------------------------------------------------------------------------
# builders
# ------------------------------------------------------------------------------------------------------------


def test_builders_give_exactly_todays_default_engine_objects():
    policy = CachePolicy(vision_window=16, text_rounds=16, text_sink=512, text_window=512)
    sampling = SamplingConfig(temperature=0.9, top_p=None, top_k=None, repetition_penalty=1.05, max_new_tokens=20)
    spec = VisionSpec(patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=78400, max_pixels=602112)
    stream = StreamConfig(mode="streaming", query="Commentate on this match", previous_text="before",
                          system_prompt="You are a helpful assistant.", chunk_seconds=1.0, fps=2.0, vision_window=16,
                          text_rounds=16, text_sink=512, text_window=512, reset_every=100.0, refresh_every=0,
                          sampling=sampling, seed=0)
    assert DEFAULTS.cache_policy() == policy == CachePolicy()
    assert DEFAULTS.sampling() == sampling == SamplingConfig()
    assert DEFAULTS.vision_spec() == spec == VisionSpec()
    assert DEFAULTS.stream_config(previous_text="before") == stream == StreamConfig(previous_text="before")


def test_builders_carry_every_setting():
    s = StreamSettings(fps=4.0, chunk_seconds=0.5, min_pixels=784, max_pixels=3136, query="q", system_prompt="sys",
                       vision_window=None, text_rounds=3, text_sink=0, text_window=7, reset_every=9.0,
                       refresh_every=4, max_new_tokens=5, temperature=0.0, top_p=0.5, top_k=3, repetition_penalty=1.2,
                       seed=11)
    config = s.stream_config("sliding", previous_text="earlier")
    assert (config.mode, config.previous_text, config.query, config.system_prompt) == ("sliding", "earlier", "q", "sys")
    assert (config.fps, config.chunk_seconds, config.reset_every, config.refresh_every, config.seed) == (
        4.0, 0.5, 9.0, 4, 11)
    assert (config.vision_window, config.text_rounds, config.text_sink, config.text_window) == (None, 3, 0, 7)
    assert config.sampling == SamplingConfig(temperature=0.0, top_p=0.5, top_k=3, repetition_penalty=1.2,
                                             max_new_tokens=5)
    assert s.cache_policy() == CachePolicy(None, 3, 0, 7)
    base = VisionSpec(patch_size=14, temporal_patch_size=2, merge_size=2, image_mean=0.5, image_std=0.25)
    assert s.vision_spec(base) == dataclasses.replace(base, min_pixels=784, max_pixels=3136)


def test_sampling_takes_top_p_and_top_k_from_the_generation_config_only_when_unset():
    generation = {"top_p": 0.8, "top_k": 50, "temperature": 0.1}  # only top_p/top_k are ever taken from it
    assert DEFAULTS.sampling(generation) == SamplingConfig(top_p=0.8, top_k=50)
    assert StreamSettings(top_k=5).sampling(generation) == SamplingConfig(top_p=0.8, top_k=5)
    assert DEFAULTS.sampling(generation, max_new_tokens=16, top_p=0.3) == SamplingConfig(
        top_p=0.3, top_k=50, max_new_tokens=16)
    assert DEFAULTS.stream_config(generation_defaults=generation).sampling == SamplingConfig(top_p=0.8, top_k=50)


def test_per_stream_values_and_chunk_checks():
    vqa = StreamSettings(fps=1.0)  # a benchmark planning its own chunks may hold fps 1 ...
    with pytest.raises(SettingsError, match=r"even whole number of frames per chunk, got 1 \* 1 = 1"):
        vqa.check_chunks()  # ... but cannot stream it in 1-s chunks
    vqa.check_chunks(fps=1.0, chunk_seconds=2.0)
    config = vqa.stream_config(fps=0.5, chunk_seconds=4.0, query="")
    assert (config.fps, config.chunk_seconds, config.query) == (0.5, 4.0, "")
    for fps in (3.0, 2.5):
        with pytest.raises(SettingsError, match="frames per chunk"):
            DEFAULTS.stream_config(fps=fps)
    with pytest.raises(SettingsError, match="--fps and --chunk-seconds must be > 0"):
        DEFAULTS.check_chunks(chunk_seconds=0.0)
    with pytest.raises(SettingsError, match="temperature must be >= 0"):
        DEFAULTS.stream_config(temperature=-1.0)
    with pytest.raises(TypeError, match="not stream settings: vision"):
        DEFAULTS.stream_config(vision=3)


# ------------------------------------------------------------------------------------------------------------
# the pixel budget: R1 for streams, R2 (training's rule) for clips of known length
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bounds", [{}, {"min_pixels": 3136, "max_pixels": 3136}, {"min_pixels": 784,
                                    "max_pixels": 12544, "total_pixels": 100_000}, {"max_frames": 8}])
def test_frame_pixels_is_r1_for_streams_and_trainings_rule_for_clips(bounds):
    s = StreamSettings(**bounds)
    sample = SampleConfig(**{k: v for k, v in bounds.items() if k != "max_frames"})
    assert s.frame_pixels() == (s.min_pixels, s.max_pixels)
    for tp in (1, 2, 4):
        for n in [*range(1, 1200), 4801, 10_000, 123_457]:
            rule = max(min(s.max_pixels, int(s.total_pixels * tp / n)), s.min_pixels)  # written out independently
            assert s.frame_pixels(n, tp) == (s.min_pixels, rule) == (s.min_pixels, sample.frame_max_pixels(n, tp))
    with pytest.raises(ValueError, match="n_frames must be >= 1"):
        s.frame_pixels(0)


def test_frame_pixels_at_todays_pinned_points():
    assert DEFAULTS.frame_pixels(48) == (78400, 602112)  # a 24-s window: the per-frame cap
    assert DEFAULTS.frame_pixels(480) == (78400, 80281)  # 4 minutes: int(19267584 * 2 / 480)
    assert DEFAULTS.frame_pixels(10_000) == (78400, 78400)  # never below the minimum
    assert DEFAULTS.vision_spec(n_frames=480) == VisionSpec(min_pixels=78400, max_pixels=80281)


# ------------------------------------------------------------------------------------------------------------
# values: types, 'unlimited', checks agreeing with the engine's classes
# ------------------------------------------------------------------------------------------------------------


def test_values_are_normalised_or_refused_in_one_line():
    s = StreamSettings(fps=4, min_pixels=3136.0, max_pixels=3136, vision_window="Unlimited", text_sink="inf",
                       text_rounds="none", text_window=8.0)
    assert (s.fps, type(s.fps), s.min_pixels, type(s.min_pixels)) == (4.0, float, 3136, int)
    assert (s.vision_window, s.text_rounds, s.text_sink, s.text_window) == (None, None, None, 8)
    bad = {
        "fps": ("fast", "--fps must be a number, got 'fast'"), "temperature": (float("nan"), "finite"),
        "max_new_tokens": (3.5, "--max-new-tokens must be an integer, got 3.5"), "seed": (True, "--seed must be"),
        "vision_window": ("lots", "--vision-window must be an integer >= 0 or 'unlimited', got 'lots'"),
        "query": (3, "--query must be text, got 3"), "top_k": ("5", "--top-k must be a number"),
        "min_pixels": (0, "min_pixels must be >= 1, got 0"),
        "max_pixels": (1000, "--min-pixels (78400) is larger than --max-pixels (1000)"),
        "chunk_seconds": (0, "--fps and --chunk-seconds must be > 0, got 2 and 0"),
    }  # fmt: skip
    for name, (value, words) in bad.items():
        with pytest.raises(SettingsError) as caught:
            StreamSettings(**{name: value})
        assert words in str(caught.value) and "\n" not in str(caught.value), name


@pytest.mark.parametrize(("name", "value", "core"), [
    ("vision_window", 0, lambda v: CachePolicy(vision_window=v)),
    ("text_rounds", 0, lambda v: CachePolicy(text_rounds=v)),
    ("text_sink", -1, lambda v: CachePolicy(text_sink=v)),
    ("text_window", -2, lambda v: CachePolicy(text_window=v)),
    ("reset_every", 0.0, lambda v: StreamConfig(reset_every=v)),
    ("refresh_every", -1, lambda v: StreamConfig(refresh_every=v)),
    ("temperature", -1.0, lambda v: SamplingConfig(temperature=v)),
    ("top_p", 2.0, lambda v: SamplingConfig(top_p=v)),
    ("top_p", 0.0, lambda v: SamplingConfig(top_p=v)),
    ("top_k", -1, lambda v: SamplingConfig(top_k=v)),
    ("repetition_penalty", 0.0, lambda v: SamplingConfig(repetition_penalty=v)),
    ("max_new_tokens", 0, lambda v: SamplingConfig(max_new_tokens=v)),
])  # fmt: skip
def test_checks_say_what_the_engine_classes_say(name, value, core):
    with pytest.raises(ValueError) as engine:
        core(value)
    with pytest.raises(SettingsError) as ours:
        StreamSettings(**{name: value})
    assert str(ours.value) == str(engine.value)


# ------------------------------------------------------------------------------------------------------------
# flags: add_arguments / given
# ------------------------------------------------------------------------------------------------------------


def test_flags_round_trip_through_given_and_resolve():
    parser = parser_with_settings()
    assert given(parser.parse_args([])) == {}
    argv = ["--fps", "4", "--chunk-seconds", "0.5", "--min-pixels", "784", "--max-pixels", "3136", "--total-pixels",
            "9000", "--max-frames", "8", "--query", "q", "--system-prompt", "s", "--vision-window", "unlimited",
            "--text-rounds", "0", "--text-sink", "3", "--text-window", "NONE", "--reset-every", "9",
            "--refresh-every", "8", "--max-new-tokens", "5", "--temperature", "0", "--top-p", "0.5", "--top-k", "7",
            "--repetition-penalty", "1", "--seed", "12"]  # fmt: skip
    got = given(parser.parse_args(argv))
    expected = {"fps": 4.0, "chunk_seconds": 0.5, "min_pixels": 784, "max_pixels": 3136, "total_pixels": 9000,
                "max_frames": 8, "query": "q", "system_prompt": "s", "vision_window": None, "text_rounds": 0,
                "text_sink": 3, "text_window": None, "reset_every": 9.0, "refresh_every": 8, "max_new_tokens": 5,
                "temperature": 0.0, "top_p": 0.5, "top_k": 7, "repetition_penalty": 1.0, "seed": 12}  # fmt: skip
    assert got == expected and set(got) == set(SETTING_NAMES)
    with pytest.raises(SettingsError, match="text_rounds must be >= 1"):  # 0 parses; the policy refuses it
        resolve(got)
    s, sources = resolve(got | {"text_rounds": 2})
    assert s.as_record() == expected | {"text_rounds": 2}
    assert set(sources.values()) == {"flag"}


def test_flags_exclude_show_and_refuse():
    parser = parser_with_settings(exclude=("total_pixels", "max_frames"), shown={"query": "100% a protocol"},
                                  title="stream")
    helptext = parser.format_help()  # a '%' in a shown value does not break argparse's formatting
    assert "--total-pixels" not in helptext and "--max-frames" not in helptext
    assert "(default: '100% a protocol')" in " ".join(helptext.split())
    assert "(default: unlimited)" not in helptext and "(default: 16)" in helptext
    assert "(default: unlimited)" in parser_with_settings(shown={"vision_window": None}).format_help()
    for argv in (["--total-pixels", "5"], ["--vision-window", "-3"], ["--fps", "nan"], ["--seed", "x"]):
        with pytest.raises(SystemExit) as caught:
            parser.parse_args(argv)
        assert caught.value.code == 2
    with pytest.raises(ValueError, match="not stream settings: fpss"):
        parser_with_settings(exclude=("fpss",))


# ------------------------------------------------------------------------------------------------------------
# layers: order, sources, YAML null, unlimited, the min_pixels clamp, strict keys
# ------------------------------------------------------------------------------------------------------------

LAYERS = ("preset", "checkpoint", "protocol", "config", "flag")


@pytest.mark.parametrize("top", range(len(LAYERS)))
def test_each_layer_beats_the_ones_below(top):
    layers = {name: {"temperature": 0.1 * (i + 1), "max_new_tokens": i + 2} for i, name in enumerate(LAYERS)}
    used = {name: layers[name] for name in LAYERS[: top + 1]}
    s, sources = resolve(used.pop("flag", {}), **used)
    assert (s.temperature, s.max_new_tokens) == (0.1 * (top + 1), top + 2)
    assert sources["temperature"] == sources["max_new_tokens"] == LAYERS[top]
    assert {k: v for k, v in sources.items() if k not in ("temperature", "max_new_tokens")} == dict.fromkeys(
        set(SETTING_NAMES) - {"temperature", "max_new_tokens"}, "default")
    assert settings.SOURCES == ("default", *LAYERS)


def test_flags_beat_the_yaml_and_a_yaml_null_is_explicit(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("# a run\ntop_p: null\nvision_window: null\ntext_rounds: unlimited\ntext_sink: 4\nfps: 4\n"
                      "device: cpu\n", encoding="utf-8")
    checkpoint = from_checkpoint(write_checkpoint(tmp_path / "ckpt", {"top_p": 0.8, "vision_window": 2,
                                                                       "text_sink": 1, "temperature": 0.0}))
    values = load_config(config)
    assert values == {"top_p": None, "vision_window": None, "text_rounds": None, "text_sink": 4, "fps": 4.0,
                      "device": "cpu"}  # other options pass through untouched, for the entry point
    args = parser_with_settings().parse_args(["--text-sink", "unlimited", "--text-window", "3"])
    layer = {k: v for k, v in values.items() if k in SETTING_NAMES}
    s, sources = resolve(given(args), config=layer, checkpoint=checkpoint)
    assert (s.top_p, s.vision_window, s.text_rounds, s.text_sink, s.text_window, s.fps, s.temperature) == (
        None, None, None, None, 3, 4.0, 0.0)
    assert [sources[k] for k in ("top_p", "vision_window", "text_sink", "text_window", "temperature", "seed")] == [
        "config", "config", "flag", "flag", "checkpoint", "default"]


def test_the_checkpoint_fills_what_is_not_given_and_takes_unlimited(tmp_path):
    path = write_checkpoint(tmp_path / "ckpt", {"min_pixels": 3136, "max_pixels": 3136, "text_window": "unlimited",
                                                "max_new_tokens": 12})
    s, sources = resolve({"max_new_tokens": 4}, checkpoint=from_checkpoint(path))
    assert (s.min_pixels, s.max_pixels, s.text_window, s.max_new_tokens) == (3136, 3136, None, 4)
    assert (sources["min_pixels"], sources["text_window"], sources["max_new_tokens"]) == (
        "checkpoint", "checkpoint", "flag")
    assert from_checkpoint(tmp_path / "no-such-dir") == {}
    assert from_checkpoint("mit-han-lab/StreamingVLM") == {}  # a hub id: only a local directory is read
    (tmp_path / "plain").mkdir()
    assert from_checkpoint(tmp_path / "plain") == {}


def test_min_pixels_clamp():
    def pixels(given, **layers):
        s, sources = resolve(given, **layers)
        return s.min_pixels, s.max_pixels, sources["min_pixels"]

    assert pixels({"max_pixels": 1000}) == (1000, 1000, "flag")  # infer --max-pixels 1000 alone
    assert pixels({}, checkpoint={"max_pixels": 3136}) == (3136, 3136, "checkpoint")
    assert pixels({}, config={"max_pixels": 3136}) == (3136, 3136, "config")
    assert pixels({"max_pixels": 500}, preset={"min_pixels": 784, "max_pixels": 12544}) == (500, 500, "flag")
    assert pixels({"max_pixels": 5000}, preset={"min_pixels": 784}) == (784, 5000, "preset")  # not above: kept
    assert pixels({}, checkpoint={"min_pixels": 700_000}) == (602112, 602112, "default")
    assert pixels({}, protocol={"min_pixels": 700_000}, config={"max_pixels": 4000}) == (4000, 4000, "config")
    for given_, layers in (({"min_pixels": 200_000, "max_pixels": 1000}, {}),
                           ({"min_pixels": 5000}, {"checkpoint": {"max_pixels": 3136}}),
                           ({}, {"config": {"min_pixels": 700_000}})):  # fmt: skip
        with pytest.raises(SettingsError, match=r"--min-pixels \(\d+\) is larger than --max-pixels \(\d+\)"):
            resolve(given_, **layers)


def test_unknown_keys_fail_and_are_named(tmp_path):
    with pytest.raises(SettingsError, match="config: unknown stream setting.s. vison_window"):
        resolve({}, config={"vison_window": 4})
    with pytest.raises(SettingsError, match="checkpoint: unknown stream setting.s. reset_every"):
        resolve({}, checkpoint={"reset_every": 4.0})  # a setting, but not one a checkpoint may set
    with pytest.raises(SettingsError, match="preset: unknown stream setting.s. mode"):
        resolve({}, preset={"mode": "full"})
    config = tmp_path / "c.yaml"
    config.write_text("mode: streaming\nvison_window: 4\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=f"^config {config}: unknown option.s. vison_window$"):
        load_config(config, known=[*SETTING_NAMES, "mode"])
    for values, words in (({"vison_window": 4, "fps": 2.0}, "unknown stream setting(s) vison_window"),
                          ({"reset_every": 24.0}, "unknown stream setting(s) reset_every"),
                          ({"max_pixels": "big"}, "--max-pixels must be a number, got 'big'"),
                          (["fps", 2.0], "expected a mapping of stream settings, got list")):  # fmt: skip
        path = write_checkpoint(tmp_path / f"ckpt{len(words)}", values)
        with pytest.raises(SettingsError) as caught:
            from_checkpoint(path)
        assert str(caught.value).startswith(f"{path}/{CHECKPOINT_FILE}: ") and words in str(caught.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / CHECKPOINT_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(SettingsError, match=f"{CHECKPOINT_FILE}: cannot read"):
        from_checkpoint(broken)


def test_config_files_that_cannot_be_used(tmp_path):
    with pytest.raises(SettingsError, match="^cannot read config .*nothere.yaml: "):
        load_config(tmp_path / "nothere.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- fps\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="must be a mapping of option names to values"):
        load_config(listed)
    typo = tmp_path / "typo.yaml"
    typo.write_text("vision_window: lots\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=f"^config {typo}: --vision-window must be an integer >= 0"):
        load_config(typo)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n", encoding="utf-8")
    assert load_config(empty) == {}


def test_synth_settings_flags_then_checkpoint_then_its_preset():
    """Ported from tests/test_eval_synth.py (synth.resolve_settings): flag > json > benchmark preset."""
    from streaming_vlm.world.script import QUERY

    preset = {"query": QUERY, "temperature": 0.0, "repetition_penalty": 1.0, "reset_every": 24.0}
    args = parser_with_settings().parse_args(["--fps", "4", "--text-sink", "unlimited"])
    s, sources = resolve(given(args), checkpoint={"fps": 2.0, "max_new_tokens": 12, "temperature": 0.7},
                         preset=preset)
    assert (s.fps, s.text_sink, s.max_new_tokens, s.temperature) == (4.0, None, 12, 0.7)
    assert (s.repetition_penalty, s.text_window, s.query, s.reset_every) == (1.0, 512, "Commentate on this match", 24.0)
    assert [sources[k] for k in ("fps", "max_new_tokens", "repetition_penalty", "text_window")] == [
        "flag", "checkpoint", "preset", "default"]


# ------------------------------------------------------------------------------------------------------------
# an entry point's own config subclasses StreamSettings
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EntryConfig(StreamSettings):
    """An entry point's options on top of the settings (as ``InferConfig`` / ``SampleConfig`` will be)."""

    video: str = ""
    start: float = 0.0
    quiet: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.start < 0:
            raise ValueError(f"--start must be >= 0, got {self.start}")


def test_a_subclass_with_its_own_fields_resolves_and_parses(tmp_path):
    parser = parser_with_settings(exclude=("total_pixels", "max_frames"))
    parser.add_argument("video", nargs="?", default=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS)
    args = parser.parse_args(["a.mp4", "--fps", "4", "--quiet"])
    assert given(args) == {"fps": 4.0}
    assert given(args, EntryConfig) == {"fps": 4.0, "video": "a.mp4", "quiet": True}
    cfg, sources = resolve(given(args, EntryConfig), config={"start": 2.0, "text_sink": 3},
                           checkpoint={"temperature": 0.0, "max_pixels": 3136}, cls=EntryConfig)
    assert type(cfg) is EntryConfig and dataclasses.is_dataclass(cfg)
    assert (cfg.video, cfg.start, cfg.quiet, cfg.fps, cfg.text_sink, cfg.temperature, cfg.min_pixels) == (
        "a.mp4", 2.0, True, 4.0, 3, 0.0, 3136)
    assert (sources["video"], sources["start"], sources["fps"], sources["min_pixels"]) == (
        "flag", "config", "flag", "checkpoint")
    assert set(cfg.as_record()) == set(SETTING_NAMES)  # the stream settings only
    assert cfg.stream_config().text_sink == 3
    with pytest.raises(SettingsError, match="checkpoint: unknown stream setting.s. video"):
        resolve({}, checkpoint={"video": "b.mp4"}, cls=EntryConfig)
    with pytest.raises(ValueError, match="--start must be >= 0"):
        resolve({"start": -1.0}, cls=EntryConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.fps = 1.0  # type: ignore[misc]
    yaml_like = {"video": "b.mp4", "fps": 4.0, "vision_window": None}
    assert EntryConfig(**yaml_like).vision_window is None
    with pytest.raises(TypeError):
        resolve({}, cls=dict)  # type: ignore[arg-type]


def test_setting_field_brings_default_and_help_under_another_name():
    @dataclass
    class Arguments:
        text_sliding_window: int | None = settings.setting_field("text_window")

    (f,) = dataclasses.fields(Arguments)
    assert Arguments().text_sliding_window == 512
    assert dict(f.metadata) == {"help": "last previous-text tokens kept (or 'unlimited')"}


# ------------------------------------------------------------------------------------------------------------
# landed with the settings: argtypes.csv_choices, model paths and load options in models
# ------------------------------------------------------------------------------------------------------------


def test_csv_choices():
    modes = csv_choices(("streaming", "full", "sliding"), what="modes")
    assert modes("full, streaming,,full") == ["full", "streaming"]
    tasks = csv_choices(("EPM", "ASI"), what="tasks", ignore_case=True)
    assert tasks("asi,Epm") == ["ASI", "EPM"]
    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--modes", type=modes)
    for bad in ("", "full,bogus", "FULL"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"modes must be a comma-separated subset of "
                                                             f"streaming,full,sliding, got '{bad}'"):
            modes(bad)
        with pytest.raises(SystemExit) as caught:
            parser.parse_args(["--modes", bad])
        assert caught.value.code == 2


def test_model_paths_resolve_in_models(monkeypatch, tmp_path):
    from streaming_vlm import infer

    assert infer.resolve_model_path is models.resolve_model_path and infer.DEMO_MODEL == models.DEMO_MODEL
    monkeypatch.setattr(models, "ensure_tiny_model", lambda: tmp_path / "tiny")  # looked up when called
    assert models.resolve_model_path("tiny") == str(tmp_path / "tiny")
    assert models.resolve_model_path("org/model") == "org/model"
    monkeypatch.setattr(models, "DEMO_MODEL", tmp_path / "absent")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(models.ModelLoadError, match="the demo model is not in this install"):
        models.resolve_model_path("demo")
    (tmp_path / "demo").mkdir()  # a folder named demo is a path, not the alias
    assert models.resolve_model_path("demo") == "demo"


def test_load_arguments():
    parser = argparse.ArgumentParser()
    models.add_load_arguments(parser)
    assert vars(parser.parse_args([])) == {"device": "auto", "dtype": "auto"}
    assert vars(parser.parse_args(["--device", "cuda:1", "--dtype", "bf16"])) == {"device": "cuda:1", "dtype": "bf16"}
    bench = argparse.ArgumentParser()
    models.add_load_arguments(bench, device="cpu", dtype="fp32")
    assert "(default: cpu)" in bench.format_help() and vars(bench.parse_args([])) == {"device": "cpu", "dtype": "fp32"}
    quiet = argparse.ArgumentParser()
    models.add_load_arguments(quiet, device=argparse.SUPPRESS, dtype=argparse.SUPPRESS)
    assert vars(quiet.parse_args([])) == {}
    given_only = argparse.ArgumentParser()  # absent unless given (a config file may set it), the default still shown
    models.add_load_arguments(given_only, given_only=True)
    assert vars(given_only.parse_args([])) == {}
    assert vars(given_only.parse_args(["--dtype", "bf16"])) == {"dtype": "bf16"}
    assert "(default: auto)" in given_only.format_help()
