"""The stream layout: how a video stream and its commentary become tokens.

This module is the single definition of the context a StreamingVLM model sees, shared by inference (the
engine feeds these segments, the cache keeps per-token bookkeeping derived from them) and training (samples
are built from the same segments). Token ids are built per segment from the tokenizer and its special
tokens; nothing is ever found by scanning ids or by cutting rendered strings at character offsets.

A stream renders as::

    <|im_start|>system\\n{system prompt}<|im_end|>\\n                      SYSTEM
    <|im_start|>previous text\\n                                          PREV_HEAD
    {earlier commentary or context}                                        PREV_TEXT
    <|im_end|>\\n                                                          PREV_END
    for each chunk r (seconds a..b):
      <|im_start|>user\\n                                                 USER
      Time=a-bs                                                            TIME
      <|vision_start|><|video_pad|>*N<|vision_end|>                        VISION
      {query, first chunk of a stream only}<|im_end|>\\n                  USER
      <|im_start|>assistant\\n                                            ASSIST_HEAD
      {commentary}                                                         ASSIST_TEXT
       ...<|im_end|>\\n                                                    ASSIST_END

Every assistant turn ends with the marker `` ...`` before ``<|im_end|>``; empty seconds are just the marker.
It does not know about caches or eviction: see ``cache.py`` and ``policy.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch

from streaming_vlm.positions import vision_offsets
from streaming_vlm.settings import DEFAULT_QUERY as DEFAULT_QUERY  # re-exported: layout.DEFAULT_QUERY
from streaming_vlm.settings import DEFAULT_SYSTEM_PROMPT

END_MARKER = " ..."
PREVIOUS_TEXT_ROLE = "previous text"


class Kind(IntEnum):
    """What a token is in the stream; the cache policy acts on kinds and rounds."""

    SYSTEM = 0
    PREV_HEAD = 1
    PREV_TEXT = 2
    PREV_END = 3
    USER = 4
    TIME = 5
    VISION = 6
    ASSIST_HEAD = 7
    ASSIST_TEXT = 8
    ASSIST_END = 9


NO_ROUND = -1  # round of tokens that belong to no chunk (system prompt, previous text)


@dataclass
class TokenMeta:
    """Per-token bookkeeping for a run of tokens, all tensors on the CPU.

    ids: long (L,); kind: long (L,) of ``Kind``; round: long (L,), chunk index or ``NO_ROUND``;
    group_start: bool (L,) and rel: long (3, L), the position-rule description (see ``positions.py``).
    """

    ids: torch.Tensor
    kind: torch.Tensor
    round: torch.Tensor
    group_start: torch.Tensor
    rel: torch.Tensor

    def __len__(self) -> int:
        return self.ids.numel()

    @staticmethod
    def empty() -> TokenMeta:
        z = torch.zeros(0, dtype=torch.long)
        return TokenMeta(z, z.clone(), z.clone(), torch.zeros(0, dtype=torch.bool), torch.zeros(3, 0, dtype=torch.long))

    @staticmethod
    def text(ids: list[int] | torch.Tensor, kind: Kind, round: int = NO_ROUND) -> TokenMeta:
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        n = ids.numel()
        return TokenMeta(
            ids,
            torch.full((n,), int(kind), dtype=torch.long),
            torch.full((n,), round, dtype=torch.long),
            torch.ones(n, dtype=torch.bool),
            torch.zeros(3, n, dtype=torch.long),
        )

    @staticmethod
    def cat(parts: list[TokenMeta]) -> TokenMeta:
        parts = [p for p in parts if len(p)]
        if not parts:
            return TokenMeta.empty()
        if len(parts) == 1:
            return parts[0]
        return TokenMeta(
            torch.cat([p.ids for p in parts]),
            torch.cat([p.kind for p in parts]),
            torch.cat([p.round for p in parts]),
            torch.cat([p.group_start for p in parts]),
            torch.cat([p.rel for p in parts], dim=1),
        )

    def select(self, index: torch.Tensor) -> TokenMeta:
        return TokenMeta(
            self.ids[index], self.kind[index], self.round[index], self.group_start[index], self.rel[:, index]
        )


class StreamLayout:
    """Builds the token segments of a stream for one tokenizer and vision geometry.

    Args:
        tokenizer: a Qwen2/Qwen2.5-VL tokenizer (any ``PreTrainedTokenizerBase`` with the Qwen special tokens).
        system_prompt: text of the system turn.
        time_interval: positions advanced per temporal patch of a vision block
            (``tokens_per_second * temporal_patch_size / fps``); irrelevant for 2-frame chunks.
    """

    def __init__(self, tokenizer, system_prompt: str = DEFAULT_SYSTEM_PROMPT, time_interval: float = 2.0):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.time_interval = time_interval
        sid = self._special_id
        self.im_start, self.im_end = sid("<|im_start|>"), sid("<|im_end|>")
        self.vision_start, self.vision_end = sid("<|vision_start|>"), sid("<|vision_end|>")
        self.video_pad = sid("<|video_pad|>")
        self.newline = self.encode("\n")
        self.marker = self.encode(END_MARKER)
        self._user_head = [self.im_start, *self.encode("user"), *self.newline]
        self._assistant_head = [self.im_start, *self.encode("assistant"), *self.newline]
        self._turn_end = [self.im_end, *self.newline]
        # tokens commentary may never contain: they would break the turn structure or the vision blocks
        self.forbidden_ids = sorted(
            {self.im_start, self.vision_start, self.vision_end, self.video_pad}
            | {i for i in (self._optional_id("<|image_pad|>"), self._optional_id("<|vision_pad|>")) if i is not None}
        )
        self.stop_ids = {self.im_end}
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is not None:
            self.stop_ids.add(int(eos))
        for extra in ("<|endoftext|>",):
            tid = tokenizer.convert_tokens_to_ids(extra)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
                self.stop_ids.add(tid)

    def _special_id(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or (self.tokenizer.unk_token_id is not None and tid == self.tokenizer.unk_token_id):
            raise ValueError(f"the tokenizer has no special token {token}: is this a Qwen2.5-VL tokenizer?")
        return int(tid)

    def _optional_id(self, token: str) -> int | None:
        try:
            return self._special_id(token)
        except ValueError:
            return None

    def encode(self, text: str) -> list[int]:
        """Plain-text ids, no special tokens added."""
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @staticmethod
    def time_text(start: float, end: float) -> str:
        return f"Time={start:.1f}-{end:.1f}s"

    # ---- segments -------------------------------------------------------------------------------------------

    def system(self) -> TokenMeta:
        ids = [self.im_start, *self.encode("system"), *self.newline, *self.encode(self.system_prompt), *self._turn_end]
        return TokenMeta.text(ids, Kind.SYSTEM)

    def previous_text(self, content_ids: list[int]) -> TokenMeta:
        """The previous-text turn around already-encoded (and already cut) content ids."""
        head = [self.im_start, *self.encode(PREVIOUS_TEXT_ROLE), *self.newline]
        return TokenMeta.cat(
            [
                TokenMeta.text(head, Kind.PREV_HEAD),
                TokenMeta.text(content_ids, Kind.PREV_TEXT),
                TokenMeta.text(self._turn_end, Kind.PREV_END),
            ]
        )

    def vision_block(self, round: int, grid_thw: tuple[int, int, int]) -> TokenMeta:
        """``<|vision_start|>`` + pads + ``<|vision_end|>`` for one chunk; ``grid_thw`` in LLM tokens (merged)."""
        t, h, w = grid_thw
        n = t * h * w
        rel = torch.zeros(3, n + 2, dtype=torch.long)
        rel[:, 1 : n + 1] = vision_offsets(t, h, w, self.time_interval)
        group_start = torch.ones(n + 2, dtype=torch.bool)
        group_start[2 : n + 1] = False
        ids = torch.full((n + 2,), self.video_pad, dtype=torch.long)
        ids[0], ids[-1] = self.vision_start, self.vision_end
        return TokenMeta(
            ids,
            torch.full((n + 2,), int(Kind.VISION), dtype=torch.long),
            torch.full((n + 2,), round, dtype=torch.long),
            group_start,
            rel,
        )

    def user_turn(
        self, round: int, start: float, end: float, grid_thw: tuple[int, int, int], query: str | None = None
    ) -> TokenMeta:
        """User turn of chunk ``round`` covering [start, end) s; ``query`` joins it after the vision block."""
        return TokenMeta.cat(
            [
                TokenMeta.text(self._user_head, Kind.USER, round),
                TokenMeta.text(self.encode(self.time_text(start, end)), Kind.TIME, round),
                self.vision_block(round, grid_thw),
                TokenMeta.text([*self.encode(query or ""), *self._turn_end], Kind.USER, round),
            ]
        )

    @staticmethod
    def user_text(query: str | None, question: str | None) -> str | None:
        """Text after a chunk's vision block: the query (first chunk of a stream) and/or a question asked in it."""
        return "\n".join(t for t in (query, question) if t) or None

    def assistant_head(self, round: int) -> TokenMeta:
        return TokenMeta.text(self._assistant_head, Kind.ASSIST_HEAD, round)

    def assistant_content(self, text: str) -> list[int]:
        """Ids of a complete assistant content: commentary then the end marker (training / teacher forcing)."""
        return [*self.encode(text), *self.marker]

    def assistant_close(self, round: int) -> TokenMeta:
        """``<|im_end|>\\n`` closing the assistant turn of ``round`` (the marker is part of the content)."""
        return TokenMeta.text(self._turn_end, Kind.ASSIST_END, round)

    def split_marker(self, content: list[int]) -> tuple[list[int], list[int]]:
        """Split generated content into (commentary, marker) where the marker is a trailing `` ...``."""
        m = len(self.marker)
        if m and len(content) >= m and content[-m:] == self.marker:
            return content[:-m], content[-m:]
        return content, []

    def content_meta(self, round: int, content: list[int]) -> TokenMeta:
        """Assistant content with the trailing marker (if any) labelled ``ASSIST_END``."""
        text, marker = self.split_marker(content)
        return TokenMeta.cat(
            [TokenMeta.text(text, Kind.ASSIST_TEXT, round), TokenMeta.text(marker, Kind.ASSIST_END, round)]
        )
