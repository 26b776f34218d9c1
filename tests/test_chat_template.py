"""The stream layout against Qwen2.5-VL's own chat template, rendered by transformers' ``apply_chat_template``.

The template below is data: the ``chat_template`` of Qwen/Qwen2.5-VL-7B-Instruct's ``chat_template.json``
(Qwen2-VL's template, unchanged), as published in the Qwen2.5-VL checkpoints on the Hugging Face hub, e.g. the
mirrors https://huggingface.co/optimum-intel-internal-testing/tiny-random-qwen2.5-vl/blob/main/chat_template.json
and https://huggingface.co/MBZUAI/Video-R2/blob/175473da6b1166b664ab1d4044e375e2d2acf344/chat_template.json.
It renders every message as ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` for any role string, text items
verbatim and each video item as ``<|vision_start|><|video_pad|><|vision_end|>``; the processor later expands
the single pad to one per merged video token, which the tests do on the rendered string.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoTokenizer

from streaming_vlm.engine import StreamConfig, StreamSession
from streaming_vlm.layout import StreamLayout
from streaming_vlm.models import build_tiny_tokenizer
from streaming_vlm.sampling import SamplingConfig
from tests.conftest import SMALL_SPEC, random_frames

QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in "
    "messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}{% if "
    "content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = "
    "image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>"
    "assistant\n{% endif %}"
)
VIDEO_PAD = "<|video_pad|>"
PREVIOUS = "Earlier: the home side scored twice and the crowd is loud."
QUERY = "Commentate on this match"


def _with_template(tokenizer):
    tokenizer = copy.deepcopy(tokenizer)  # never touch a tokenizer other tests share
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module", params=["tiny", "demo"])
def tokenizer(request):
    """The tiny test tokenizer and the shipped demo model's tokenizer, each with Qwen2.5-VL's template."""
    if request.param == "tiny":
        return _with_template(build_tiny_tokenizer())
    from importlib.resources import files

    return _with_template(AutoTokenizer.from_pretrained(str(files("streaming_vlm") / "assets" / "demo_model")))


def _template_ids(tokenizer, messages, n_pads: int = 0, add_generation_prompt: bool = False) -> list[int]:
    """Render with the template, expand each video pad to ``n_pads`` pads, tokenize as one string."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    if n_pads:
        text = text.replace(VIDEO_PAD, VIDEO_PAD * n_pads)
    return tokenizer.encode(text, add_special_tokens=False)


def _user(time_text: str, query: str | None = None) -> dict:
    """A user turn as the engine lays it out: the ``Time=`` text, the chunk's video, then the query if any."""
    content = [{"type": "text", "text": time_text}, {"type": "video", "video": "chunk.mp4"}]
    if query:
        content.append({"type": "text", "text": query})
    return {"role": "user", "content": content}


def test_template_renders_what_the_engine_expects(tokenizer):
    """Sanity check of the template data: the documented rendering, system prompt inserted when missing."""
    text = tokenizer.apply_chat_template([_user("Time=0.0-1.0s")], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nTime=0.0-1.0s<|vision_start|><|video_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_each_turn_matches_the_template(tokenizer):
    """System turn, previous-text turn (a custom role), user turn with a video and assistant turn, one by one."""
    layout = StreamLayout(tokenizer)
    system = {"role": "system", "content": "You are a helpful assistant."}
    grid = (1, 2, 3)
    n = 6
    # system turn (the template's default prompt is the layout's default prompt)
    assert layout.system().ids.tolist() == _template_ids(tokenizer, [system])
    head = len(_template_ids(tokenizer, [system]))

    def turn(message, n_pads=0):
        return _template_ids(tokenizer, [system, message], n_pads)[head:]

    # previous text: rendered as the template renders any role
    cut = layout.encode(PREVIOUS)
    assert layout.previous_text(cut).ids.tolist() == turn({"role": "previous text", "content": PREVIOUS})
    assert layout.previous_text([]).ids.tolist() == turn({"role": "previous text", "content": ""})
    # user turn with a video: Time text before the video, the query after it (first chunk only)
    assert layout.user_turn(0, 12.0, 13.0, grid, QUERY).ids.tolist() == turn(_user("Time=12.0-13.0s", QUERY), n)
    assert layout.user_turn(5, 17.0, 18.0, grid).ids.tolist() == turn(_user("Time=17.0-18.0s"), n)
    # assistant turn: header, commentary with the end marker, <|im_end|>\n
    for commentary in ("goal for the home side", ""):
        ours = [*layout.assistant_head(0).ids.tolist(), *layout.assistant_content(commentary),
                *layout.assistant_close(0).ids.tolist()]
        assert ours == turn({"role": "assistant", "content": commentary + " ..."}), commentary
    # the generation prompt the engine prefills before sampling
    gen = _template_ids(tokenizer, [system], add_generation_prompt=True)[head:]
    assert layout.assistant_head(0).ids.tolist() == gen


def test_engine_stream_equals_the_rendered_conversation(tiny):
    """What the engine actually fed (full mode: nothing evicted) = the template's rendering of the stream."""
    tokenizer = _with_template(tiny.tokenizer)
    config = StreamConfig(mode="full", previous_text=PREVIOUS, query=QUERY,
                          sampling=SamplingConfig(temperature=0.0, max_new_tokens=4))
    session = StreamSession(tiny.model, tiny.tokenizer, config, vision_spec=SMALL_SPEC)
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "previous text", "content": PREVIOUS}]
    # teacher-forced commentary: sampled ids need not be the tokenizer's own encoding of their text
    with torch.inference_mode():
        for k, forced in enumerate(["goal for the home side", "What a save! It's 2-1 now.", "", "a long pass"]):
            session.step(random_frames(k), float(k), float(k + 1), force_text=forced)
            messages.append(_user(f"Time={k:.1f}-{k + 1:.1f}s", QUERY if k == 0 else None))
            messages.append({"role": "assistant", "content": forced + " ..."})
    n_pads = 6  # 56x84 frames: 2x3 merged tokens per chunk
    assert session.cache.meta.ids.tolist() == _template_ids(tokenizer, messages, n_pads)
