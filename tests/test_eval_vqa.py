"""VQA: option parsing, frame plans, answers against a hand-written engine loop, the VLMEvalKit and lmms-eval
adapters against stand-ins of their interfaces, and ``streaming-vlm eval vqa`` end to end on the tiny model."""

from __future__ import annotations

import abc
import importlib
import json
import mimetypes
import os
import subprocess
import sys
import types
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from streaming_vlm.engine import StreamConfig, StreamSession
from streaming_vlm.eval import harness, vqa
from streaming_vlm.eval.vqa import VideoQA, VQAConfig, parse_options, plan_frames
from streaming_vlm.sampling import SamplingConfig
from streaming_vlm.settings import DEFAULTS, SETTING_NAMES
from streaming_vlm.synthetic import write_synthetic_video
from streaming_vlm.video import VideoReader

REPO = Path(__file__).resolve().parents[1]
PIXELS = {"min_pixels": 28 * 28, "max_pixels": 56 * 84}  # 56x84 frames -> 6 LLM tokens per chunk
LOAD = {"device": "cpu", "dtype": "fp32", **PIXELS}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa_videos")
    return {
        "4s": write_synthetic_video(root / "a.mp4", 4, fps=4, width=84, height=56, seed=1),
        "6s": write_synthetic_video(root / "b.mp4", 6, fps=4, width=84, height=56, seed=2),
    }


@pytest.fixture(scope="module")
def qa(tiny_model_dir):
    # vision_window=1 (a stream setting): in streaming mode the answer sees only the last chunk, so the modes differ
    return VideoQA.load(str(tiny_model_dir), VQAConfig(fps=1.0), vision_window=1, **LOAD)


def reference_choice(qa: VideoQA, video, prompt: str, options: list[str], mode: str, fps: float, chunk_s: float):
    """The obviously-correct loop: read chunks, silent turns, ``choose`` on the last chunk."""
    loaded = qa.model.loaded
    config = StreamConfig(mode=mode, query="", fps=fps, chunk_seconds=chunk_s, vision_window=1)
    session = StreamSession(loaded.model, loaded.tokenizer, config, vision_spec=qa.model.spec)
    with VideoReader(video, fps=fps, chunk_seconds=chunk_s) as reader:
        chunks = list(reader.chunks())
    for c in chunks[:-1]:
        session.step(c.frames, c.start, c.end, force_text="")
    last = chunks[-1]
    return session.choose(last.frames, last.start, last.end, prompt, options), len(chunks)


# ------------------------------------------------------------------------------------------------------------
# option parsing and frame plans
# ------------------------------------------------------------------------------------------------------------

# The prompts as the toolkits build them (VLMEvalKit: vlmeval/dataset/{videomme,MVBench,longvideobench}.py,
# texts joined with newlines; lmms-eval: lmms_eval/tasks/{videomme,mvbench}/utils.py doc_to_text).
VLMEVAL_VIDEOMME = (
    "\nThese are the frames of a video. Select the best answer to the following multiple-choice question based on "
    "the video. Respond with only the letter (A, B, C, or D) of the correct option.\n\nQuestion: What is shown?\n"
    "A. A red car.\nB. Two dogs.\nC. A boat.\nD. Nothing.\nAnswer: "
)
VLMEVAL_MVBENCH = (
    "Carefully watch the video and pay attention to the cause and sequence of events.\nQuestion: Where does it go?"
    "\nOptions:\n(A) left\n(B) right\n(C) up\n\nOnly give the best option.\nBest option:("
)
LMMS_VIDEOMME = (
    "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter (A, B, C, or D) of the correct option.\nHow many?\nA. 1\nB. 2\nC. 3\nD. 4\n"
    "Answer with the option's letter from the given choices directly."
)
LMMS_MVBENCH = "Question:What happens?\nOption:\n(A) it falls\n(B) it rises\nOnly give the best option.\n"


@pytest.mark.parametrize(
    ("text", "letters", "options"),
    [
        (VLMEVAL_VIDEOMME, "ABCD", ["A red car.", "Two dogs.", "A boat.", "Nothing."]),
        (VLMEVAL_MVBENCH, "ABC", ["left", "right", "up"]),
        (LMMS_VIDEOMME, "ABCD", ["1", "2", "3", "4"]),
        (LMMS_MVBENCH, "AB", ["it falls", "it rises"]),
        ("Which?\nA) x\nB) y\nC: z\n", "ABC", ["x", "y", "z"]),
        ("Which?\n[A] x\n[B] y", "AB", ["x", "y"]),
        ("Example:\nA. a\nB. b\nNow the question:\nA. first\nB. second\nC. third", "ABC", ["first", "second", "third"]),
        ("Pick one: (A) cat (B) dog (C) bird", "ABC", ["cat", "dog", "bird"]),
    ],
)
def test_parse_options_reads_the_toolkits_prompts(text, letters, options):
    parsed = parse_options(text)
    assert parsed is not None and parsed.letters == list(letters) and parsed.options == options


@pytest.mark.parametrize(
    "text",
    ["Describe the video.", "A. only one option", "A. x\nC. skipped B", "B. x\nC. y", "A man walks.\nA dog runs."],
)
def test_parse_options_finds_none_where_there_is_no_list(text):
    assert parse_options(text) is None


def test_build_prompt_labels_options_once():
    assert vqa.build_prompt("Q?", ["red", "B. blue"]) == f"Q?\nA. red\nB. blue\n{vqa.MCQ_INSTRUCTION}"
    assert parse_options(vqa.build_prompt("Q?", ["red", "blue", "green"])).options == ["red", "blue", "green"]


def test_plan_frames_numbers():
    p = plan_frames(5.0, fps=1.0)  # 1 fps: two-frame chunks of 2 s, the last one partial
    assert (p.fps, p.chunk_seconds, p.num_chunks, p.num_frames) == (1.0, 2.0, 3, 6)
    p = plan_frames(4.0, fps=2.0)  # the training rate: 1-s chunks
    assert (p.chunk_seconds, p.num_chunks) == (1.0, 4)
    p = plan_frames(10.0, nframe=64)
    assert (p.num_chunks, p.num_frames) == (32, 64) and p.fps == pytest.approx(6.4)
    assert plan_frames(10.0, nframe=7).num_frames == 8  # rounded up to whole chunks
    p = plan_frames(100.0, fps=1.0, max_frames=17)  # capped: 16 frames spread over the 100 s
    assert (p.num_frames, p.num_chunks) == (16, 8) and p.fps == pytest.approx(0.16)
    with pytest.raises(ValueError):
        plan_frames(0.0, fps=1.0)


def test_nframe_samples_sit_at_the_centres_of_equal_slices(videos):
    """MVBench-style 64 frames through the real reader: sample k at (k + 0.5) * duration / 64."""
    from streaming_vlm.video import probe

    duration = probe(videos["4s"]).duration
    plan = plan_frames(duration, nframe=64)
    with VideoReader(videos["4s"], fps=plan.fps, chunk_seconds=plan.chunk_seconds) as reader:
        times = np.concatenate([c.times for c in islice(reader.chunks(), plan.num_chunks)])
    np.testing.assert_allclose(times, (np.arange(64) + 0.5) * duration / 64, atol=1e-9)


# ------------------------------------------------------------------------------------------------------------
# answers vs a hand-written engine loop
# ------------------------------------------------------------------------------------------------------------


def test_answers_equal_the_reference_loop_in_both_modes(qa, videos):
    prompt = vqa.build_prompt("What moves?", ["a square", "a circle", "nothing"])
    got = {}
    for mode, engine_mode in (("streaming", "streaming"), ("offline", "full")):
        ans = qa.with_mode(mode).answer_prompt(videos["4s"], prompt)
        ref, n_chunks = reference_choice(qa, videos["4s"], prompt, ["A", "B", "C"], engine_mode, 1.0, 2.0)
        assert ans.logprobs == ref.logprobs  # bit-identical: same frames, same turns, same scoring
        assert ans.choice == ref.index == int(np.argmax(ans.logprobs)) and ans.text == "ABC"[ref.index]
        assert (ans.num_chunks, ans.num_frames, ans.chunk_seconds, ans.answer_mode) == (n_chunks, 4, 2.0, mode)
        got[mode] = ans.logprobs
    # 2 chunks with a 1-chunk vision window: streaming answers from the last chunk only, offline from both
    assert max(abs(a - b) for a, b in zip(got["streaming"], got["offline"], strict=True)) > 1e-4


def test_free_form_answer_is_greedy_and_cut_at_stop(qa, videos):
    loaded = qa.model.loaded
    greedy = SamplingConfig(temperature=0.0, repetition_penalty=1.0, max_new_tokens=6)
    config = StreamConfig(mode="full", query="", fps=1.0, chunk_seconds=2.0, sampling=greedy)
    session = StreamSession(loaded.model, loaded.tokenizer, config, vision_spec=qa.model.spec)
    with VideoReader(videos["4s"], fps=1.0, chunk_seconds=2.0) as reader:
        first, last = list(reader.chunks())
    session.step(first.frames, first.start, first.end, force_text="")
    expected = session.step(last.frames, last.start, last.end, question="Describe it.").text
    assert len(expected) >= 3
    stop = expected[1:3]
    ans = qa.with_mode("offline").answer(videos["4s"], "Describe it.", max_new_tokens=6, stop=["@@", stop])
    assert ans.choice is None and ans.logprobs is None and ans.num_chunks == 2
    assert ans.text == expected[: expected.index(stop)].strip()


# ------------------------------------------------------------------------------------------------------------
# VLMEvalKit stand-in: vlmeval/vlm/base.py (BaseModel), vlmeval/smp/file.py (parse_file), vlmeval/config.py
# (supported_VLM) and the fps/nframe rule of vlmeval/inference_video.py (_sync_video_model_sampling),
# open-compass/VLMEvalKit, reduced to what a video model meets.
# ------------------------------------------------------------------------------------------------------------


def _parse_file(s):
    if os.path.exists(s) and s != ".":
        assert os.path.isfile(s)
        return mimetypes.types_map.get(os.path.splitext(s)[1].lower(), "unknown"), s
    return None, s


class FakeBaseModel:
    INTERLEAVE = False
    allowed_types = ["text", "image", "video"]

    def __init__(self):
        self.dump_image_func = None

    def use_custom_prompt(self, dataset):
        return False

    @abc.abstractmethod
    def build_prompt(self, line, dataset):
        raise NotImplementedError

    @abc.abstractmethod
    def generate_inner(self, message, dataset=None):
        raise NotImplementedError

    def preproc_content(self, inputs):
        for item in inputs:
            assert "type" in item and "value" in item
            mime, s = _parse_file(item["value"])
            if mime is None:
                assert item["type"] == "text"
            else:
                assert mime.split("/")[0] == item["type"]
                item["value"] = s
        return inputs

    def generate(self, message, dataset=None):
        message = self.preproc_content(message)
        for item in message:
            assert item["type"] in self.allowed_types, f"Invalid input type: {item['type']}"
        return self.generate_inner(message, dataset)


def sync_video_model_sampling(model, dataset):
    """vlmeval/inference_video.py: the dataset's fps / nframe replace the model's before inference."""
    if getattr(model, "nframe", None) is not None and getattr(model, "nframe", 0) > 0:
        if dataset.nframe > 0:
            if getattr(model, "nframe", 0) != dataset.nframe:
                model.nframe = dataset.nframe
        elif getattr(model, "fps", 0) == 0:
            raise ValueError("fps is not suitable")
        else:
            model.nframe = None
    if getattr(model, "fps", None) is not None and getattr(model, "fps", 0) > 0:
        if dataset.fps > 0:
            if getattr(model, "fps", 0) != dataset.fps:
                model.fps = dataset.fps
        elif getattr(model, "nframe", 0) == 0:
            raise ValueError("nframe is not suitable")
        else:
            model.fps = None


@pytest.fixture
def vlmeval(monkeypatch):
    pkg, vlm, base, config = (
        types.ModuleType(n) for n in ("vlmeval", "vlmeval.vlm", "vlmeval.vlm.base", "vlmeval.config")
    )
    base.BaseModel = FakeBaseModel
    config.supported_VLM = {"Qwen2.5-VL-7B-Instruct": object()}
    pkg.vlm, pkg.config, vlm.base = vlm, config, base
    for m in (pkg, vlm, base, config):
        monkeypatch.setitem(sys.modules, m.__name__, m)
    return pkg


@dataclass
class FakeVideoDataset:
    nframe: int = 0
    fps: float = -1


def test_vlmevalkit_adapter_is_a_video_base_model_answering_letters(vlmeval, tiny_model_dir, qa, videos):
    from streaming_vlm.eval import vlmevalkit

    entries = vlmevalkit.register(str(tiny_model_dir), **LOAD)
    cls = vlmevalkit.StreamingVLMChat  # lazily built on the (stand-in) BaseModel
    assert issubclass(cls, FakeBaseModel) and cls.VIDEO_LLM is True and cls.INTERLEAVE is False
    assert set(entries) == {"StreamingVLM", "StreamingVLM-offline"} <= set(vlmeval.config.supported_VLM)
    assert vlmeval.vlm.StreamingVLMChat is cls and entries["StreamingVLM-offline"].keywords["max_frames"] == 256

    # MVBench_64frame-like dataset (nframe 8 here): the toolkit keeps nframe and clears fps
    model = vlmeval.config.supported_VLM["StreamingVLM-offline"]()
    assert isinstance(model, FakeBaseModel) and model.use_custom_prompt("MVBench") is False
    sync_video_model_sampling(model, FakeVideoDataset(nframe=4))
    assert (model.nframe, model.fps) == (4, None)
    message = [  # vlmeval/dataset/MVBench.py MVBench_MP4.build_prompt(video_llm=True)
        {"type": "text", "value": "Carefully watch the video."},
        {"type": "text", "value": "Question: Where does it go?\nOptions:\n(A) left\n(B) right\n(C) up"},
        {"type": "video", "value": str(videos["4s"])},
        {"type": "text", "value": "\nOnly give the best option."},
        {"type": "text", "value": "Best option:("},
    ]
    prompt = "\n".join(m["value"] for m in message if m["type"] == "text")
    answer = model.generate(message, dataset="MVBench_MP4")
    ref = qa.with_mode("offline").with_sampling(nframe=4).answer_prompt(videos["4s"], prompt)
    assert answer == ref.text and answer in "ABC" and len(answer) == 1
    assert (model.last_answer.num_frames, model.last_answer.logprobs) == (4, ref.logprobs)

    # Video-MME_1fps-like dataset on a fresh streaming model: fps kept, nframe cleared
    model = entries["StreamingVLM"]()
    sync_video_model_sampling(model, FakeVideoDataset(fps=1.0))
    assert (model.nframe, model.fps) == (None, 1.0)
    message = [  # vlmeval/dataset/videomme.py VideoMME.build_prompt(video_llm=True)
        {"type": "text", "value": ""},
        {"type": "video", "value": str(videos["4s"])},
        {"type": "text", "value": VLMEVAL_VIDEOMME.split("Question:")[0]},
        {"type": "text", "value": "Question: " + VLMEVAL_VIDEOMME.split("Question: ")[1]},
    ]
    answer = model.generate(message, dataset="Video-MME")
    assert answer in "ABCD" and len(answer) == 1
    assert (model.last_answer.num_chunks, model.last_answer.fps, model.last_answer.answer_mode) == (2, 1.0, "streaming")
    with pytest.raises(ValueError, match="has none"):
        model.generate([{"type": "text", "value": "no video"}], dataset="Video-MME")


FAKE_RUN_PY = """
import json, sys
from vlmeval.config import supported_VLM
out = sys.argv[sys.argv.index("--out") + 1]
entry = supported_VLM["StreamingVLM-offline"]
json.dump({"argv": sys.argv[1:], "models": sorted(supported_VLM), "keywords": entry.keywords}, open(out, "w"))
"""


def test_vlmevalkit_launcher_registers_and_runs_run_py(vlmeval, tmp_path, monkeypatch):
    from streaming_vlm.eval import vlmevalkit

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "run.py").write_text(FAKE_RUN_PY)
    out = tmp_path / "seen.json"
    argv = ["--vlmevalkit-root", str(tmp_path), "--model-path", "ckpt", "--max-pixels", "4704", "--verbose", "--",
            "--data", "MVBench_64frame", "--model", "StreamingVLM-offline", "--out", str(out)]  # fmt: skip
    assert vlmevalkit.main(argv) == 0
    seen = json.loads(out.read_text())
    assert seen["argv"] == ["--verbose", "--data", "MVBench_64frame", "--model", "StreamingVLM-offline", "--out",
                            str(out)]  # fmt: skip
    assert {"StreamingVLM", "StreamingVLM-offline", "Qwen2.5-VL-7B-Instruct"} == set(seen["models"])
    kw = seen["keywords"]
    assert (kw["model_path"], kw["answer_mode"], kw["max_frames"], kw["max_pixels"]) == ("ckpt", "offline", 256, 4704)


# ------------------------------------------------------------------------------------------------------------
# lmms-eval stand-in: lmms_eval/api/{model,instance,registry}.py and lmms_eval/models (MODEL_REGISTRY_V2,
# registry_v2.ModelManifest) of lmms-eval 0.7.3, reduced to what a simple model meets.
# ------------------------------------------------------------------------------------------------------------


def _handle_arg_string(arg):
    if arg.lower() in ("true", "false"):
        return arg.lower() == "true"
    if arg.isnumeric():
        return int(arg)
    try:
        return float(arg)
    except ValueError:
        return arg


class FakeCacheHook:
    def __init__(self):
        self.partials = []

    def add_partial(self, attr, req, res):
        self.partials.append((attr, req, res))


class FakeLmms(abc.ABC):
    is_simple: bool = True

    def __init__(self) -> None:
        self._rank = 0
        self._world_size = 1
        self.cache_hook = FakeCacheHook()
        self.task_dict = {}

    @abc.abstractmethod
    def loglikelihood(self, requests):
        pass

    @abc.abstractmethod
    def generate_until(self, requests):
        pass

    @abc.abstractmethod
    def generate_until_multi_round(self, requests):
        pass

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        args = {k: _handle_arg_string(v) for k, v in (a.split("=", 1) for a in arg_string.split(",") if a)}
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**args, **extra)

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size


@dataclass
class FakeInstance:
    request_type: str
    arguments: tuple
    idx: int
    metadata: dict = field(default_factory=dict)
    resps: list = field(default_factory=list)

    def __post_init__(self):
        self.task_name, self.doc_id, self.repeats = self.metadata["task"], self.metadata["doc_id"], 1

    @property
    def args(self):
        return self.arguments if isinstance(self.arguments, tuple) else (self.arguments,)


@dataclass(frozen=True)
class FakeManifest:
    model_id: str
    simple_class_path: str | None = None
    chat_class_path: str | None = None


class FakeRegistryV2:
    def __init__(self):
        self.manifests = {}

    def register_manifest(self, manifest, *, overwrite=False):
        assert overwrite or manifest.model_id not in self.manifests
        self.manifests[manifest.model_id] = manifest

    def get_model_class(self, name):
        module, cls_name = self.manifests[name].simple_class_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), cls_name)
        assert issubclass(cls, FakeLmms) and cls.is_simple
        return cls


@pytest.fixture
def lmms_eval(monkeypatch):
    names = (
        "lmms_eval",
        "lmms_eval.api",
        "lmms_eval.api.model",
        "lmms_eval.api.instance",
        "lmms_eval.api.registry",
        "lmms_eval.models",
        "lmms_eval.models.registry_v2",
    )
    mods = {n: types.ModuleType(n) for n in names}
    mods["lmms_eval.api.model"].lmms = FakeLmms
    mods["lmms_eval.api.instance"].Instance = FakeInstance
    registry = mods["lmms_eval.api.registry"]
    registry.MODEL_REGISTRY = {}

    def register_model(*aliases):
        def decorate(cls):
            for name in aliases:
                assert issubclass(cls, FakeLmms), f"Model '{name}' ({cls.__name__}) must extend lmms class"
                registry.MODEL_REGISTRY[name] = cls
            return cls

        return decorate

    registry.register_model = register_model
    mods["lmms_eval.models"].MODEL_REGISTRY_V2 = FakeRegistryV2()
    mods["lmms_eval.models"].AVAILABLE_MODELS = {}
    mods["lmms_eval.models.registry_v2"].ModelManifest = FakeManifest
    main = types.ModuleType("lmms_eval.__main__")

    def cli_evaluate():  # lmms_eval/__main__.py: parses sys.argv, resolves --model through the registry
        model = sys.argv[sys.argv.index("--model") + 1]
        main.seen = (list(sys.argv), mods["lmms_eval.models"].MODEL_REGISTRY_V2.get_model_class(model))

    main.cli_evaluate = cli_evaluate
    mods["lmms_eval.__main__"] = main
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    return mods


def test_lmms_eval_model_generates_letters_and_scores_continuations(lmms_eval, tiny_model_dir, qa, videos):
    from streaming_vlm.eval import lmms_eval_plugin

    cls = lmms_eval_plugin.register()
    assert issubclass(cls, FakeLmms) and not getattr(cls, "__abstractmethods__", None)
    assert lmms_eval["lmms_eval.api.registry"].MODEL_REGISTRY["streaming_vlm"] is cls
    assert lmms_eval["lmms_eval.models"].MODEL_REGISTRY_V2.get_model_class("streaming_vlm") is cls

    args = f"pretrained={tiny_model_dir},answer_mode=offline,fps=1,dtype=fp32,min_pixels=784,max_pixels=4704"
    lm = cls.create_from_arg_string(args, {"batch_size": 1, "device": "cpu", "max_batch_size": None})
    lm.task_dict = {
        "videomme": {"test": {0: {"video": str(videos["4s"])}}},
        "mvbench_x": {"train": {3: {"video": str(videos["4s"])}}},
    }

    def doc_to_visual(doc):
        return [doc["video"]]

    gen = {"max_new_tokens": 16, "temperature": 0, "until": ["\n\n"]}
    requests = [
        FakeInstance(
            "generate_until",
            (LMMS_VIDEOMME, gen, doc_to_visual, 0, "videomme", "test"),
            0,
            {"task": "videomme", "doc_id": 0},
        ),
        FakeInstance(
            "generate_until",
            (LMMS_MVBENCH, gen, doc_to_visual, 3, "mvbench_x", "train"),
            1,
            {"task": "mvbench_x", "doc_id": 3},
        ),
    ]
    out = lm.generate_until(requests)
    ref = qa.with_mode("offline").answer_prompt(videos["4s"], LMMS_VIDEOMME)  # scores the letters A-D
    assert out[0] == ref.text and out[0] in "ABCD" and out[1] in "AB" and len(out[1]) == 1
    assert [p[2] for p in lm.cache_hook.partials] == out

    # loglikelihood: the four options of one question (lmms-eval's multiple_choice requests) share one pass;
    # a continuation may be a callable of the doc (doc_to_target)
    conts = ["A", "B", lambda doc: "C", "D"]
    ll_requests = [
        FakeInstance(
            "loglikelihood",
            (LMMS_VIDEOMME, c, doc_to_visual, 0, "videomme", "test"),
            i,
            {"task": "videomme", "doc_id": 0},
        )
        for i, c in enumerate(conts)
    ]
    ll = lm.loglikelihood(ll_requests)
    assert [x[0] for x in ll] == ref.logprobs
    assert [x[1] for x in ll] == [i == ref.choice for i in range(4)]
    with pytest.raises(NotImplementedError):
        lm.generate_until_multi_round(requests)


def test_lmms_eval_launcher_registers_and_runs_the_cli(lmms_eval, monkeypatch):
    from streaming_vlm.eval import lmms_eval_plugin

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert lmms_eval_plugin.main(["--model", "streaming_vlm", "--tasks", "mvbench"]) == 0
    argv, cls = lmms_eval["lmms_eval.__main__"].seen
    assert argv == ["lmms_eval", "--model", "streaming_vlm", "--tasks", "mvbench"]
    assert cls is lmms_eval_plugin.StreamingVLM and cls.__name__ == "StreamingVLM"


# ------------------------------------------------------------------------------------------------------------
# streaming-vlm eval vqa, errors, script
# ------------------------------------------------------------------------------------------------------------


def test_eval_vqa_cli_end_to_end(tiny_model_dir, qa, videos, tmp_path, capsys):
    items = [
        {
            "id": "q1",
            "video": videos["4s"].name,
            "question": "Which shape?",
            "options": ["square", "circle"],
            "category": "shape",
        },
        {
            "id": "q2",
            "video": videos["6s"].name,
            "question": "Color?",
            "options": ["A. red", "B. blue", "C. green"],
            "category": "color",
        },
        {
            "id": "q3",
            "video": videos["4s"].name,
            "question": "Count?",
            "options": ["1", "2", "3", "4"],
            "category": "count",
        },
    ]
    # expected predictions, straight from VideoQA; answers: q1 and q3 right, q2 wrong
    preds, reference = {}, VideoQA(qa.model, VQAConfig(nframe=2))  # the CLI's defaults
    for it in items:
        ans = reference.answer(
            videos["4s"].parent / it["video"],
            vqa.build_prompt(it["question"], it["options"]),
            letters=list("ABCD"[: len(it["options"])]),
        )
        preds[it["id"]] = ans.text
    wrong = "ABC"[("ABC".index(preds["q2"]) + 1) % 3]
    items[0]["answer"], items[1]["answer"], items[2]["answer"] = preds["q1"], wrong, "ABCD".index(preds["q3"])
    data = tmp_path / "data" / "vqa.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(it) + "\n" for it in items))

    out = tmp_path / "out"
    argv = [
        "--data",
        str(data),
        "--video-root",
        str(videos["4s"].parent),
        "--model",
        str(tiny_model_dir),
        "--nframe",
        "2",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--min-pixels",
        "784",
        "--max-pixels",
        "4704",
        "--out-dir",
        str(out),
    ]
    assert vqa.main(argv) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "vqa_results.json").read_text())
    s = doc["modes"]["streaming"]
    assert (s["items"], s["scored"], s["correct"]) == (3, 3, 2) and s["accuracy"] == pytest.approx(2 / 3)
    assert s["per_category"]["color"] == {"scored": 1, "correct": 0, "accuracy": 0.0}
    records = [json.loads(line) for line in (out / "vqa_streaming.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in records] == [preds["q1"], preds["q2"], preds["q3"]]
    assert [r["correct"] for r in records] == [True, False, True] and {r["num_frames"] for r in records} == {2}
    assert "accuracy" in printed and "0.6667" in printed and doc["meta"]["config"]["nframe"] == 2


def test_checkpoint_settings_apply_and_are_recorded(tmp_path, tiny_model_dir, videos):
    """A checkpoint's streaming_vlm.json sets what it names, below a flag and the protocol's empty instruction; the
    results and settings.json record each setting and its source; the adapters' VideoQA.load resolves the same."""
    import shutil

    model = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, model)
    (model / "streaming_vlm.json").write_text(json.dumps({"min_pixels": 3136, "max_pixels": 3136, "text_sink": 3,
                                                          "query": "not asked", "max_new_tokens": 5, "fps": 4.0}))
    data = tmp_path / "vqa.jsonl"
    data.write_text(json.dumps({"id": "q", "video": str(videos["4s"]), "question": "Which?", "options": ["a", "b"],
                                "answer": "A"}) + "\n")
    config = tmp_path / "vqa.yaml"  # fps is VQA's own option (its protocol rate), text_window a setting
    config.write_text("fps: 0.5\ntext_window: 7\n")
    out = tmp_path / "out"
    argv = ["--data", str(data), "--model", str(model), "--device", "cpu", "--dtype", "fp32", "--vision-window", "2",
            "--config", str(config), "--out-dir", str(out)]  # fmt: skip
    assert vqa.main(argv) == 0
    meta = json.loads((out / "vqa_results.json").read_text())["meta"]
    settings, sources = meta["stream_settings"], meta["stream_settings_sources"]
    expected = {
        "min_pixels": (3136, "checkpoint"), "max_pixels": (3136, "checkpoint"), "text_sink": (3, "checkpoint"),
        "query": ("", "protocol"), "vision_window": (2, "flag"), "text_window": (7, "config"),
    }  # fmt: skip
    assert {k: (settings[k], sources[k]) for k in expected} == expected
    # the protocol's own rate, chunks, answer length and frame cap: not taken from the checkpoint, not recorded
    assert list(settings) == list(sources) == [k for k in SETTING_NAMES if k not in vqa.EXCLUDED]
    record = json.loads((out / "vqa_streaming.jsonl").read_text())
    assert (meta["config"]["fps"], record["fps"], record["num_frames"]) == (0.5, 0.5, 2)  # one 4-s chunk of 2 frames
    assert (meta["min_pixels"], meta["max_pixels"], meta["config"]["text_sink"], meta["config"]["vision_window"]) == (
        3136, 3136, 3, 2)
    assert meta["config"]["max_new_tokens"] == 16  # the answer's length is the protocol's, not the commentary's
    saved = json.loads((out / "settings.json").read_text())
    assert (saved["model"], saved["min_pixels"], saved["text_sink"], saved["vision_window"]) == (str(model), 3136, 3, 2)

    qa = VideoQA.load(str(model), device="cpu", dtype="fp32", vision_window=2, text_window=7)  # the adapters' path
    assert harness.settings_record(qa.settings, qa.sources, vqa.unused_settings(False)) == {
        "stream_settings": settings, "stream_settings_sources": sources | {"text_window": "flag"}}
    assert (qa.settings.fps, qa.settings.max_new_tokens) == (DEFAULTS.fps, DEFAULTS.max_new_tokens)  # not 4.0, 5
    assert (qa.model.spec.min_pixels, qa.model.spec.max_pixels) == (3136, 3136)


def test_eval_vqa_one_line_errors(tmp_path, videos, capsys, monkeypatch):
    monkeypatch.delenv(vqa.ENV_DATA, raising=False)
    assert vqa.main(["--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streaming-vlm eval vqa: error: no VQA data") and err.count("\n") == 1

    cases = {
        "missing.jsonl": None,
        "novideo.jsonl": {"id": 1, "video": "nope.mp4", "question": "q", "options": ["a", "b"], "answer": "A"},
        "badanswer.jsonl": {"id": 1, "video": str(videos["4s"]), "question": "q", "options": ["a", "b"], "answer": "E"},
    }
    messages = {
        "missing.jsonl": "VQA data not found",
        "novideo.jsonl": "video not found",
        "badanswer.jsonl": "neither an option letter",
    }
    for name, item in cases.items():
        path = tmp_path / name
        if item is not None:
            path.write_text(json.dumps(item) + "\n")
        assert vqa.main(["--data", str(path), "--model", "tiny"]) == 2
        err = capsys.readouterr().err
        assert messages[name] in err and err.count("\n") == 1


def test_launchers_fail_in_one_line_without_their_toolkit(monkeypatch, capsys):
    from streaming_vlm.eval import lmms_eval_plugin, vlmevalkit

    monkeypatch.delenv(vlmevalkit.ENV_ROOT, raising=False)
    assert vlmevalkit.main(["--", "--data", "MVBench_64frame"]) == 2
    assert "no VLMEvalKit checkout" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "lmms_eval", None)  # not importable
    assert lmms_eval_plugin.main(["--model", "streaming_vlm"]) == 2
    err = capsys.readouterr().err
    assert "needs lmms-eval" in err and err.count("\n") == 1


def test_eval_vqa_script_checks_toolkit_and_data(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("VLMEVALKIT_ROOT", "LMUData", "HF_HOME")}
    run = subprocess.run(["bash", str(REPO / "scripts" / "eval_VQA.sh")], env=env, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "VLMEVALKIT_ROOT" in run.stderr
    env.update(TOOLKIT="lmms-eval", PYTHON=sys.executable)
    run = subprocess.run(["bash", str(REPO / "scripts" / "eval_VQA.sh")], env=env, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "lmms-eval" in run.stderr


def test_eval_vqa_script_passes_settings_to_both_toolkits(tmp_path):
    """SETTINGS reaches the VLMEvalKit launcher as setting flags and lmms-eval as model arguments (a stand-in
    Python records what the script launches)."""
    from streaming_vlm.eval import vlmevalkit

    log = tmp_path / "launched.txt"
    fake = tmp_path / "python"
    fake.write_text('#!/bin/bash\n'  # the environment checks pass; anything else is logged
                    'if [[ "$1" == -c ]]; then [[ "$2" == *sysconfig* ]] && echo /nonexistent; exit 0; fi\n'
                    'printf "%s\\n" "$*" >> "$LOG"\n')
    fake.chmod(0o755)
    (tmp_path / "run.py").write_text("")
    env = {"PATH": os.environ["PATH"], "LOG": str(log), "PYTHON": str(fake), "TOOLKIT": "both", "MODES": "offline",
           "NPROC": "1", "MODEL": "ckpt", "VLMEVALKIT_ROOT": str(tmp_path), "LMUData": str(tmp_path),
           "HF_HOME": str(tmp_path), "VLMEVAL_DATASETS": "MVBench_64frame", "LMMS_TASKS": "mvbench:nframe=64",
           "SETTINGS": "max_pixels=3136,vision_window=unlimited"}  # fmt: skip
    run = subprocess.run(["bash", str(REPO / "scripts" / "eval_VQA.sh")], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    ours, theirs = (line.split() for line in log.read_text().splitlines())
    i = ours.index("streaming_vlm.eval.vlmevalkit") + 1
    args, rest = vlmevalkit.build_parser().parse_known_args(ours[i : ours.index("--")])
    assert (args.model_path, args.max_pixels, args.vision_window, rest) == ("ckpt", 3136, None, [])
    model_args = theirs[theirs.index("--model_args") + 1]
    assert model_args == "pretrained=ckpt,answer_mode=offline,nframe=64,max_pixels=3136,vision_window=unlimited," \
                         "max_frames=256"  # fmt: skip
    env["SETTINGS"] = "max_pixels=3136,bogus"
    run = subprocess.run(["bash", str(REPO / "scripts" / "eval_VQA.sh")], env=env, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "SETTINGS" in run.stderr
