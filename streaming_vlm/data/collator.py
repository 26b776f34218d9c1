"""Batches of :class:`~streaming_vlm.data.sample.TrainingSample` for the Qwen2.5-VL forward.

Contract: :class:`StreamingCollator` turns a list of samples into the keyword arguments of
``Qwen2_5_VLForConditionalGeneration.forward``, right-padded to the longest sample:

* ``input_ids`` long ``(B, L)``, padded with the tokenizer's ``pad_token_id``;
* ``labels`` long ``(B, L)``, padded with ``-100`` (pads are never supervised);
* ``attention_mask`` long ``(B, L)``, 1 on real tokens and 0 on pads;
* ``position_ids`` long ``(3, B, L)``, the sample's own M-RoPE positions, pads set to ``position_pad``
  (default 0). Pads sit after every real token and are masked out, so a real token never attends to them and
  their positions never reach a real token; 0 is just a fixed, harmless value;
* ``video_frames`` uint8 ``(sum_i T_i * H'_i * W'_i * 3,)`` and ``video_grid_thw`` long ``(sum K_i, 3)``: the
  samples' resized frames, flattened and concatenated in batch order, and their grid rows in the same order
  (the order the model scatters vision rows into the ``<|video_pad|>`` tokens). The grid rows fix every chunk's
  frame count and size, so :func:`~streaming_vlm.data.sample.video_pixel_values` turns the pair into the
  model's ``pixel_values_videos`` on the training device (the trainer does). Frames stay uint8 until then: a
  quarter of the bytes of float pixels through the DataLoader workers' shared memory. Both keys are left out
  when no sample holds a video.
* ``bad_lines``: the records of the bad lines the samples' dataset skipped to find them (``TrainingSample.skipped``,
  a list of dicts), present only when there are some; not a model input (the trainer pops it and counts them).

``None`` entries (samples a dataset could not build) are dropped; an empty batch raises :class:`EmptyBatchError`.
The collator does not tokenize, truncate or compute positions: samples arrive complete.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from streaming_vlm.data.sample import IGNORE_INDEX, TrainingSample

__all__ = ["EmptyBatchError", "StreamingCollator"]


class EmptyBatchError(ValueError):
    """Every sample of a batch was missing (``None``)."""


class StreamingCollator:
    """Right-pads :class:`TrainingSample`\\ s into one model batch (see the module docstring)."""

    def __init__(self, pad_token_id: int, position_pad: int = 0):
        if pad_token_id is None:
            raise ValueError("pad_token_id is required (the tokenizer has no pad token)")
        self.pad_token_id = int(pad_token_id)
        self.position_pad = int(position_pad)

    def __call__(self, samples: Sequence[TrainingSample | None]) -> dict[str, torch.Tensor]:
        kept = [s for s in samples if s is not None]
        if not kept:
            raise EmptyBatchError(f"all {len(samples)} sample(s) of the batch are missing (None); nothing to collate")
        for i, s in enumerate(kept):
            if s.video_grid_thw.numel() and s.video_frames.dtype != torch.uint8:
                raise ValueError(f"sample {i} ({s.source or 'no source'}): video_frames must be uint8 resized frames, "
                                 f"got {s.video_frames.dtype}")
            n = s.input_ids.numel()
            if s.labels.shape != (n,) or s.position_ids.shape != (3, n):
                raise ValueError(
                    f"sample {i} ({s.source or 'no source'}): input_ids {tuple(s.input_ids.shape)}, labels "
                    f"{tuple(s.labels.shape)} and position_ids {tuple(s.position_ids.shape)} disagree; "
                    "expected (L,), (L,) and (3, L)"
                )

        batch, length = len(kept), max(s.input_ids.numel() for s in kept)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        position_ids = torch.full((3, batch, length), self.position_pad, dtype=torch.long)
        for b, s in enumerate(kept):
            n = s.input_ids.numel()
            input_ids[b, :n] = s.input_ids
            labels[b, :n] = s.labels
            attention_mask[b, :n] = 1
            position_ids[:, b, :n] = s.position_ids

        out = {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
        }
        with_video = [s for s in kept if s.video_grid_thw.numel()]
        if with_video:
            out["video_frames"] = torch.cat([s.video_frames.reshape(-1) for s in with_video])
            out["video_grid_thw"] = torch.cat([s.video_grid_thw.reshape(-1, 3) for s in with_video]).long()
        bad_lines = [record for s in kept for record in s.skipped]
        if bad_lines:
            out["bad_lines"] = bad_lines
        return out
