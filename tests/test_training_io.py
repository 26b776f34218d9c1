"""Training that survives a real multi-GPU run: what a sample carries through the DataLoader workers (uint8 frames,
made into pixels on the training device, bit for bit), the cap on a sample's tokens, bad lines counted once each
across workers and ranks with a stop that does not depend on the sampling order, one-line data errors from the
entry point, and parameter counts under ZeRO-3.

Everything runs on the CPU with the tiny random Qwen2.5-VL and synthetic videos written here.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from streaming_vlm.data.collator import StreamingCollator
from streaming_vlm.data.sample import SampleBuilder, SampleConfig, TrainingSample
from streaming_vlm.synthetic import write_synthetic_video
from tests.test_train import record, write_jsonl

REPO = Path(__file__).resolve().parents[1]
WORDS = [[0.2, 0.6, "red"], [1.1, 1.5, "ball"], [2.2, 2.5, "goal"]]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("io_videos")
    write_synthetic_video(root / "wide.mp4", 4, width=160, height=112)  # resized: 12 LLM tokens per chunk
    write_synthetic_video(root / "small.mp4", 4, width=84, height=56, seed=1)  # another size: 6 per chunk
    return root


@pytest.fixture(scope="module")
def spec(tiny_model_dir):
    from streaming_vlm.preprocess import VisionSpec

    return VisionSpec.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def builder(tiny_model_dir, spec) -> SampleBuilder:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return SampleBuilder(tokenizer, spec, SampleConfig(min_pixels=3136, max_pixels=12544), tokens_per_second=2)


def _stream_record(path: Path, start: float = 0.0, end: float = 4.0, words=None):
    from streaming_vlm.data.annotations import QA, StreamRecord, Word

    words = words if words is not None else [Word(0.2, 0.6, "red"), Word(1.1, 1.5, "ball"), Word(2.2, 2.5, "goal")]
    return StreamRecord(str(path), start, end, previous="earlier words", words=words,
                        qa=[QA(1.5, "Which colour?", "Red.")], source=f"{path.name}:1")


def _one_go_pixels(builder: SampleBuilder, path: Path, start: float, end: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixels of 30ed1d6's samples: each chunk through one VideoPreprocessor call, float32, on the CPU."""
    from streaming_vlm.preprocess import VideoPreprocessor
    from streaming_vlm.video import VideoReader

    cfg = builder.config
    with VideoReader(path, fps=cfg.fps, chunk_seconds=cfg.chunk_seconds, start=start, duration=end - start) as reader:
        chunks = list(reader.chunks())
    frame_max = cfg.frame_max_pixels(len(chunks) * builder.frames_per_chunk, builder.spec.temporal_patch_size)
    pre = VideoPreprocessor(dataclasses.replace(builder.spec, min_pixels=min(cfg.min_pixels, frame_max),
                                                max_pixels=frame_max))
    out = [pre(chunk.frames) for chunk in chunks]
    return torch.cat([p for p, _ in out]), torch.cat([g for _, g in out])


# ------------------------------------------------------------------------------------------------------------
# 1. uint8 frames through the workers, pixels on the training device
# ------------------------------------------------------------------------------------------------------------


def test_pixels_made_on_the_training_side_equal_the_one_go_preprocessing(builder, videos, spec, tiny_model_dir,
                                                                          tmp_path):
    """Two samples of different frame sizes in one batch: the trainer's pixel_values_videos equal, to the bit, the
    float32 pixels samples used to carry (each chunk preprocessed in one go), and a training step's loss on the
    new batch equals its loss on the old batch."""
    from transformers import Qwen2_5_VLForConditionalGeneration, TrainingArguments

    from streaming_vlm.train.trainer import StreamingSFTTrainer

    wide = builder.build(_stream_record(videos / "wide.mp4"), videos / "wide.mp4")
    small = builder.build(_stream_record(videos / "small.mp4", 1.0, 4.0), videos / "small.mp4")
    ref_wide, grid_wide = _one_go_pixels(builder, videos / "wide.mp4", 0.0, 4.0)
    ref_small, grid_small = _one_go_pixels(builder, videos / "small.mp4", 1.0, 4.0)
    assert wide.video_frames.dtype == torch.uint8 and wide.video_frames.shape == (8, 84, 112, 3)  # resized: 160x112
    assert torch.equal(wide.video_grid_thw, grid_wide) and torch.equal(small.video_grid_thw, grid_small)
    assert (wide.pixel_values_videos(spec) - ref_wide).abs().max().item() == 0.0

    batch = StreamingCollator(pad_token_id=0)([wide, small])
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    trainer = StreamingSFTTrainer(model=model, args=args, vision_spec=spec)
    prepared = trainer._prepare_inputs(batch)
    reference = torch.cat([ref_wide, ref_small])
    assert "video_frames" not in prepared and prepared["pixel_values_videos"].dtype == torch.float32
    assert prepared["pixel_values_videos"].shape == reference.shape
    assert (prepared["pixel_values_videos"] - reference).abs().max().item() == 0.0

    old_batch = {k: v for k, v in batch.items() if k != "video_frames"} | {"pixel_values_videos": reference}
    torch.manual_seed(0)
    new_loss = trainer.training_step(model, batch)
    torch.manual_seed(0)
    old_loss = trainer.training_step(model, old_batch)
    assert torch.equal(new_loss, old_loss) and new_loss.item() > 0


def test_a_batch_crosses_the_worker_boundary_as_uint8_frames(builder, videos, tmp_path):
    """What a DataLoader worker hands over: uint8 frames, a quarter of the float32 pixels' bytes."""
    from streaming_vlm.data.dataset import StreamingSFTDataset

    path = write_jsonl(tmp_path / "two_with_seeks.jsonl", [record("wide.mp4", WORDS), record("small.mp4", WORDS)])
    ds = StreamingSFTDataset([path], builder, dataset_path=videos)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=StreamingCollator(0))
    batch = next(iter(loader))  # built and collated in the worker process
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    assert not any(t.is_floating_point() for t in tensors.values())
    frames = tensors["video_frames"]
    assert frames.dtype == torch.uint8 and frames.nbytes == 8 * 84 * 112 * 3  # 4 s at 2 fps, resized to 112x84
    grid = tensors["video_grid_thw"]
    patch_values = 3 * 2 * 14 * 14
    float_pixels_bytes = int(grid.prod(dim=1).sum()) * patch_values * 4  # what 30ed1d6 carried
    assert float_pixels_bytes == 4 * frames.nbytes
    text_bytes = sum(t.nbytes for k, t in tensors.items() if k != "video_frames")
    assert sum(t.nbytes for t in tensors.values()) == frames.nbytes + text_bytes


# ------------------------------------------------------------------------------------------------------------
# 2. max_sample_tokens
# ------------------------------------------------------------------------------------------------------------


def test_a_sample_over_max_sample_tokens_is_rejected_before_its_frames_are_decoded(builder, videos, monkeypatch):
    from streaming_vlm.data.annotations import Word
    from streaming_vlm.data.sample import SampleTooLongError
    from streaming_vlm.layout import Kind
    from streaming_vlm.video import VideoReader

    path = videos / "wide.mp4"
    normal = builder.build(_stream_record(path), path)
    length = normal.input_ids.numel()
    vision = int((normal.meta.kind == Kind.VISION).sum())  # 4 chunks x (12 pads + start + end)
    assert vision == 56
    at_cap = SampleBuilder(builder.layout.tokenizer, builder.spec,
                           dataclasses.replace(builder.config, max_sample_tokens=length), tokens_per_second=2)
    assert torch.equal(at_cap.build(_stream_record(path), path).input_ids, normal.input_ids)  # the cap is inclusive

    decoded = []
    real_chunks = VideoReader.chunks
    monkeypatch.setattr(VideoReader, "chunks", lambda self: decoded.append(1) or real_chunks(self))
    below = SampleBuilder(builder.layout.tokenizer, builder.spec,
                          dataclasses.replace(builder.config, max_sample_tokens=length - 1), tokens_per_second=2)
    with pytest.raises(SampleTooLongError, match=rf"wide.mp4:1: {length} tokens \({vision} vision, {length - vision} "
                                                 rf"text; 3 words\), above max_sample_tokens={length - 1}"):
        below.build(_stream_record(path), path)
    # a flood of words (at least a token each) in a 4-s clip: rejected by the default cap, no frame decoded
    flood = [Word(0.1 + 3.8 * i / 45_000, 0.1 + 3.8 * i / 45_000, "word") for i in range(45_000)]
    with pytest.raises(SampleTooLongError, match=r"45000 words\), above max_sample_tokens=40960"):
        builder.build(_stream_record(path, words=flood), path)
    assert decoded == []


def test_max_sample_tokens_is_a_training_argument_with_a_documented_default(tmp_path):
    from streaming_vlm.train.args import ConfigError, DataArguments, parse_args

    field = {f.name: f for f in dataclasses.fields(DataArguments)}["max_sample_tokens"]
    assert field.default == 40_960 and "40960" in field.metadata["help"]
    base = ["--pretrained_model_name_or_path", "m", "--train_annotation_paths", "a.jsonl", "--output_dir", "o",
            "--report_to", "none"]
    _, data_args, _ = parse_args(base)
    assert data_args.sample_config().max_sample_tokens == 40_960
    _, data_args, _ = parse_args([*base, "--max_sample_tokens", "1000"])
    assert data_args.sample_config().max_sample_tokens == 1000
    cfg = tmp_path / "run.yaml"
    cfg.write_text("max_sample_tokens: null\n")
    _, data_args, _ = parse_args(["--config", str(cfg), *base])
    assert data_args.sample_config().max_sample_tokens is None
    with pytest.raises(ConfigError, match="max_sample_tokens must be >= 1 or null, got 0"):
        parse_args([*base, "--max_sample_tokens", "0"])
    for name in ("sft_stage1.yaml", "sft_stage2.yaml"):
        _, data_args, _ = parse_args(["--config", str(REPO / "configs" / name), "--deepspeed", "none"])
        assert data_args.max_sample_tokens == 40_960


# ------------------------------------------------------------------------------------------------------------
# 3. bad lines: distinct, across workers and ranks, order-independent stop, one-line errors
# ------------------------------------------------------------------------------------------------------------


class _CheapBuilder:
    """Builds a one-token sample for any record whose video exists (so that thousands of draws take no time)."""

    config = SampleConfig()

    def build(self, record, video_path) -> TrainingSample:
        one = torch.ones(1, dtype=torch.long)
        return TrainingSample(one, one, torch.zeros(3, 1, dtype=torch.long),
                              torch.zeros(0, 28, 28, 3, dtype=torch.uint8), torch.zeros(0, 3, dtype=torch.long))


def _mixed_file(root: Path, name: str, bad_at: set[int], n: int) -> Path:
    """``n`` lines; those in ``bad_at`` (1-based) are malformed JSON, the others good records of an existing video."""
    (root / "v.mp4").write_bytes(b"not decoded by the cheap builder")
    lines = ["{broken" if i in bad_at else record("v.mp4", WORDS) for i in range(1, n + 1)]
    return write_jsonl(root / name, lines)


def test_bad_lines_are_counted_once_each_across_dataloader_workers(tmp_path):
    """11 bad lines (runs that retries walk into again and again, in a file listed twice) are 11 distinct lines,
    whatever the number of attempts and whichever worker made them."""
    from streaming_vlm.data.dataset import BadLineTracker, StreamingSFTDataset

    bad = {3, 4, 5, 6, 7, 20, 21, 22, 30, 31, 40}
    path = _mixed_file(tmp_path, "m_with_seeks.jsonl", bad, 40)
    log = tmp_path / "bad_samples.jsonl"
    ds = StreamingSFTDataset([path, path], _CheapBuilder(), dataset_path=tmp_path, failure_log=log,
                             max_bad_sample_fraction=None)
    assert len(ds) == 80 and ds.total_lines == 40
    tracker = BadLineTracker(ds.total_lines, None, "train", log)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=True, num_workers=2,
                                         generator=torch.Generator().manual_seed(0), collate_fn=StreamingCollator(0))
    for batch in loader:
        tracker.add(batch.get("bad_lines", []))
    attempts = len(log.read_text().splitlines())
    assert {line for _, line in tracker.first} == bad and tracker.distinct == 11
    assert tracker.attempts == attempts > 11  # every attempt reached the main process once
    assert tracker.summary().startswith(f"train data: 11 distinct lines skipped ({attempts} attempts): 11 "
                                        f"AnnotationError (first: {path}:")


@pytest.mark.parametrize("n_bad, stops", [(4, False), (6, True)])
def test_the_bad_data_stop_does_not_depend_on_the_sampling_order(tmp_path, n_bad, stops):
    """100 lines, max_bad_sample_fraction 0.05: 4 bad lines never stop a run, 6 always do, in every order,
    including the worst one for a fraction of the attempts checked from the 20th on (19 good draws, then the bad
    lines: 2 failures in 22 attempts already looked like 9 %)."""
    from streaming_vlm.data.dataset import BadDataError, StreamingSFTDataset

    bad = set(range(50, 50 + 2 * n_bad, 2))
    path = _mixed_file(tmp_path, "o_with_seeks.jsonl", bad, 100)
    good = [i for i in range(100) if i + 1 not in bad]
    orders = [good[:19] + [b - 1 for b in sorted(bad)] + good[19:], [b - 1 for b in sorted(bad)] + good]
    orders += [list(range(100))] + [random.Random(seed).sample(range(100), 100) for seed in range(3)]
    for order in orders:
        ds = StreamingSFTDataset([path], _CheapBuilder(), dataset_path=tmp_path, max_bad_sample_fraction=0.05)
        if stops:
            with pytest.raises(BadDataError, match=r"6 distinct lines of 100 could not be used .* allows \(5 lines\)"):
                for i in order:
                    ds[i]
        else:
            for i in order:
                ds[i]
            assert ds.bad_lines.distinct == n_bad


def _count_on_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One rank of a gloo group: count this rank's bad-line records the way the trainer does, micro-batch by
    micro-batch (gather every rank's records, add them to the tracker as an every-rank count)."""
    import torch.distributed as dist

    from streaming_vlm.data.dataset import BadDataError, BadLineTracker, gather_records

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    tracker = BadLineTracker(10, 0.25, "train")
    lines = {0: [[], [1], [2]], 1: [[], [2], [3]]}[rank]  # this rank's bad lines in three micro-batches
    result: dict = {"gathered": []}
    try:
        for batch in lines:
            records = gather_records([{"file": "f", "line": n, "error": "AnnotationError", "message": "m"}
                                      for n in batch], "cpu")
            result["gathered"].append([r["line"] for r in records])
            tracker.add(records, every_rank=True)
    except BadDataError as exc:
        result.update(error=str(exc), every_rank=exc.every_rank)
    result["distinct"], result["attempts"] = tracker.distinct, tracker.attempts
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def test_every_rank_counts_every_ranks_bad_lines_and_stops_at_the_same_step(tmp_path):
    """Two gloo processes: rank 0 skips lines 1 and 2, rank 1 lines 2 and 3. Both count 3 distinct lines in 4
    attempts, and both raise the same every-rank error at the same micro-batch (10 lines x 0.25 = 2.5 allowed)."""
    import torch.multiprocessing as mp

    mp.start_processes(_count_on_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == results[1]  # the same counts and the same error on both ranks
    assert results[0]["gathered"] == [[], [1, 2], [2, 3]]
    assert results[0]["distinct"] == 3 and results[0]["attempts"] == 4 and results[0]["every_rank"] is True
    assert results[0]["error"].startswith("train data: 3 distinct lines of 10 could not be used (3 AnnotationError)")


def _argv(tiny_model_dir, data_dir, out, *extra) -> list[str]:
    return [
        "--pretrained_model_name_or_path", str(tiny_model_dir), "--dataset_path", str(data_dir),
        "--output_dir", str(out), "--report_to", "none", "--disable_tqdm", "true", "--max_steps", "2",
        "--min_pixels", "3136", "--max_pixels", "12544", "--save_strategy", "no", *extra,
    ]  # fmt: skip


def test_too_much_bad_data_is_one_line_and_exit_status_1_from_the_entry_point(tiny_model_dir, videos, tmp_path,
                                                                                capfd):
    """Through the real entry point with two DataLoader workers: the stop is one line on stderr, no traceback."""
    from streaming_vlm.train.cli import main

    lines = [record(str(videos / "wide.mp4"), WORDS)] + ["{broken"] * 9
    path = write_jsonl(tmp_path / "bad_with_seeks.jsonl", lines)
    status = main(_argv(tiny_model_dir, tmp_path, tmp_path / "out", "--train_annotation_paths", str(path),
                        "--dataloader_num_workers", "2", "--per_device_train_batch_size", "2",
                        "--max_bad_sample_fraction", "0.2"))
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("streaming-vlm train: error")]
    assert status == 1 and "Traceback" not in err, err[-3000:]
    assert len(errors) == 1 and errors[0].startswith("streaming-vlm train: error: train data: 3 distinct lines of "
                                                     "10 could not be used (3 AnnotationError), more than "
                                                     "max_bad_sample_fraction=0.2 allows (2 lines)"), errors


def test_missing_annotation_file_is_a_usage_error_from_the_entry_point(tiny_model_dir, tmp_path, capsys):
    from streaming_vlm.train.cli import main

    status = main(_argv(tiny_model_dir, tmp_path, tmp_path / "out", "--train_annotation_paths", "nope.jsonl"))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("streaming-vlm train: error")]
    assert status == 2 and "Traceback" not in err and len(errors) == 1, err[-3000:]
    assert errors[0].startswith("streaming-vlm train: error: train data: annotation file not found: tried nope.jsonl")


def test_a_run_of_bad_lines_longer_than_max_attempts_is_left_at_once(tmp_path):
    """The windows of one missing hour-long video are hundreds of consecutive bad lines: an item inside the run
    finds a good sample within max_attempts instead of failing (stepping by one index could not leave it)."""
    from streaming_vlm.data.dataset import StreamingSFTDataset

    run = set(range(101, 401))  # 300 consecutive bad lines of 1,000
    path = _mixed_file(tmp_path, "run_with_seeks.jsonl", run, 1000)
    ds = StreamingSFTDataset([path], _CheapBuilder(), dataset_path=tmp_path, max_bad_sample_fraction=None,
                             max_attempts=4)
    for index in (100, 150, 250, 399):  # line index + 1 is bad: inside the run, its start, its end
        sample = ds[index]
        assert 1 <= len(sample.skipped) < 4
        assert all(r["line"] in run for r in sample.skipped)


def test_a_worker_error_is_printed_as_its_own_line_by_its_rank_and_an_every_rank_error_once(tmp_path, capsys,
                                                                                            monkeypatch):
    from streaming_vlm.data.dataset import BadDataError, StreamingSFTDataset
    from streaming_vlm.train.cli import error_line, report_error

    path = _mixed_file(tmp_path, "all_bad_with_seeks.jsonl", {1, 2, 3, 4}, 4)
    ds = StreamingSFTDataset([path], _CheapBuilder(), dataset_path=tmp_path, max_bad_sample_fraction=None,
                             max_attempts=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=StreamingCollator(0))
    with pytest.raises(BadDataError) as caught:
        next(iter(loader))
    assert "Traceback" in str(caught.value)  # the DataLoader wraps the worker's traceback into the message
    line = error_line(caught.value)
    assert line.startswith("train data: 3 samples tried for index 0 could not be built (last: ")
    assert "\n" not in line and "Traceback" not in line

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    report_error(caught.value, every_rank=caught.value.every_rank)  # one rank's error: that rank prints it
    report_error(BadDataError("all ranks", every_rank=True), every_rank=True)  # rank 1 stays quiet
    monkeypatch.setenv("RANK", "0")
    report_error(BadDataError("all ranks", every_rank=True), every_rank=True)
    assert capsys.readouterr().err.splitlines() == [
        f"streaming-vlm train: error (rank 1): {line}",
        "streaming-vlm train: error: all ranks",
    ]


# ------------------------------------------------------------------------------------------------------------
# 4. parameter counts under ZeRO-3
# ------------------------------------------------------------------------------------------------------------


def test_parameter_counts_use_the_full_sizes_of_zero3_partitioned_parameters():
    from streaming_vlm.train.trainer import count_parameters

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[1].requires_grad_(False)
    assert count_parameters(model) == (15, 23)
    for p in model.parameters():  # what deepspeed.zero.Init leaves on a rank: an empty tensor, the size aside
        p.ds_numel = p.numel()
        p.data = torch.empty(0)
    assert sum(p.numel() for p in model.parameters()) == 0
    assert count_parameters(model) == (15, 23)

