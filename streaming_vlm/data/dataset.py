"""The SFT dataset: annotation JSONL files (random access through their seek indexes) -> training samples.

Contract
--------
* :class:`StreamingSFTDataset` concatenates one or more annotation files in the order given. Listing a file
  twice upsamples it 2x (the reference's stage-1 mix lists ``train_s12w24_with_seeks.jsonl`` twice). Item ``k``
  seeks to its line, parses the record, resolves the video (as written, else under ``dataset_path``) and builds
  the sample with a :class:`~streaming_vlm.data.sample.SampleBuilder`. A windows file whose previous texts were
  cut shorter than the builder's ``text_sink``/``text_window`` read is refused on opening (``AnnotationError``;
  :func:`~streaming_vlm.data.windows.check_previous_kept`).
* **Bad data is skipped, counted and reported, never retried forever.** A record that cannot be used (malformed
  line, missing or undecodable video, empty transcript: any :class:`AnnotationError` or :class:`VideoError`)
  gives one warning line ``skipping FILE:LINE: ErrorType: problem``, one JSON line appended to the failure log
  (``<output_dir>/bad_samples.jsonl``; one short ``O_APPEND`` write per line, so ranks and DataLoader workers
  can share the file), and the next index is tried instead, at most ``max_attempts`` indexes in a row.
  Other exceptions are bugs and propagate.
* **Too much bad data stops training.** Once this process has tried ``min_attempts`` samples (20), a failure
  fraction above ``max_bad_sample_fraction`` raises :class:`BadDataError` naming the counts and the log. The
  counts are per process (each rank and each DataLoader worker counts what it reads).
* :class:`BadSampleReport` is a ``TrainerCallback`` that, at the end of training, reads the failures logged
  during the run and logs ``N samples skipped: ...`` on the main process.

Line numbers are found only when a record fails (by counting newlines up to its offset), so opening a
500k-line file costs one read of its seek index.
"""

from __future__ import annotations

import bisect
import collections
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from streaming_vlm.data.annotations import AnnotationError, load_seek_index, read_record_at, resolve_video
from streaming_vlm.data.sample import SampleBuilder, TrainingSample
from streaming_vlm.data.windows import check_previous_kept
from streaming_vlm.video import VideoError

__all__ = [
    "BadDataError",
    "BadSampleReport",
    "StreamingSFTDataset",
    "resolve_annotation_path",
    "summarize_failures",
]

logger = logging.getLogger(__name__)

SKIPPABLE_ERRORS: tuple[type[Exception], ...] = (AnnotationError, VideoError)
"""Problems of the data, not of the code: the sample is skipped."""


class BadDataError(RuntimeError):
    """Too many samples could not be built; the message says how many, why, and where the log is."""


def resolve_annotation_path(path: str | os.PathLike, dataset_path: str | os.PathLike | None) -> Path:
    """An annotation file as written if it exists (absolute or relative to the working directory), else
    under ``dataset_path``; ``FileNotFoundError`` naming every place tried."""
    as_written = Path(path).expanduser()
    if as_written.is_file():
        return as_written
    tried = [str(as_written)]
    if dataset_path and not as_written.is_absolute():
        joined = Path(dataset_path).expanduser() / as_written
        if joined.is_file():
            return joined
        tried.append(str(joined))
    hint = "" if dataset_path else " (set $DATASET_PATH or --dataset_path)"
    raise FileNotFoundError(f"annotation file not found: tried {', '.join(tried)}{hint}")


def _line_number(path: Path, offset: int, block: int = 1 << 22) -> int:
    """1-based number of the line starting at byte ``offset``."""
    newlines = 0
    with open(path, "rb") as f:
        left = offset
        while left > 0:
            data = f.read(min(block, left))
            if not data:
                break
            newlines += data.count(b"\n")
            left -= len(data)
    return newlines + 1


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class StreamingSFTDataset(torch.utils.data.Dataset):
    """Training samples from annotation files with seek indexes (see the module docstring).

    Args:
        annotation_paths: JSONL files, absolute or relative to ``dataset_path``; repeats upsample.
        builder: makes a ``TrainingSample`` from a record and its video file.
        dataset_path: root for relative annotation and video paths (``None``: ``$DATASET_PATH``).
        failure_log: JSONL file that failures are appended to (``None``: not written).
        max_bad_sample_fraction: stop with :class:`BadDataError` above this fraction of failed attempts.
        min_attempts: attempts before the fraction is checked.
        max_attempts: consecutive indexes tried for one item before giving up with :class:`BadDataError`.
        split: a name for messages and the log (``train``, ``eval``).
    """

    def __init__(
        self,
        annotation_paths: Sequence[str | os.PathLike],
        builder: SampleBuilder,
        *,
        dataset_path: str | os.PathLike | None = None,
        failure_log: str | os.PathLike | None = None,
        max_bad_sample_fraction: float = 0.05,
        min_attempts: int = 20,
        max_attempts: int = 32,
        split: str = "train",
    ):
        if not annotation_paths:
            raise ValueError("no annotation files given")
        if not 0.0 <= max_bad_sample_fraction <= 1.0:
            raise ValueError(f"max_bad_sample_fraction must be in [0, 1], got {max_bad_sample_fraction}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.builder = builder
        self.dataset_path = dataset_path if dataset_path is not None else os.environ.get("DATASET_PATH")
        self.failure_log = Path(failure_log) if failure_log is not None else None
        self.max_bad_sample_fraction = float(max_bad_sample_fraction)
        self.min_attempts = int(min_attempts)
        self.max_attempts = int(max_attempts)
        self.split = split

        # One offsets array per distinct file, shared by repeats: int64 arrays (not lists of ints) so that
        # forked DataLoader workers do not copy them page by page through reference counting.
        offsets_of: dict[Path, np.ndarray] = {}
        self.files: list[Path] = []
        self._offsets: list[np.ndarray] = []
        for path in annotation_paths:
            resolved = resolve_annotation_path(path, self.dataset_path)
            if resolved not in offsets_of:
                check_previous_kept(resolved, builder.config.text_sink, builder.config.text_window)
                offsets_of[resolved] = np.asarray(load_seek_index(resolved), dtype=np.int64)
            self.files.append(resolved)
            self._offsets.append(offsets_of[resolved])
        self._ends = np.cumsum([len(o) for o in self._offsets]).tolist()
        if not self._ends or self._ends[-1] == 0:
            raise ValueError(f"no records in {', '.join(str(f) for f in self.files)}")

        self.attempts = 0
        self.failures = 0
        self.failure_kinds: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return self._ends[-1]

    def locate(self, index: int) -> tuple[Path, int]:
        """``(annotation file, byte offset)`` of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        part = bisect.bisect_right(self._ends, index)
        start = self._ends[part - 1] if part else 0
        return self.files[part], int(self._offsets[part][index - start])

    def build(self, index: int) -> TrainingSample:
        """The sample of item ``index``; raises the data's error (no skipping)."""
        path, offset = self.locate(index)
        record = read_record_at(path, offset)
        video = resolve_video(record, self.dataset_path)
        return self.builder.build(record, video)

    def __getitem__(self, index: int) -> TrainingSample:
        n = len(self)
        last: str = ""
        for step in range(self.max_attempts):
            k = (index + step) % n
            self.attempts += 1
            try:
                return self.build(k)
            except SKIPPABLE_ERRORS as exc:
                last = self._record_failure(k, exc)
                self._check_fraction(last)
        raise BadDataError(
            f"{self.split} data: {self.max_attempts} consecutive samples from index {index} could not be built "
            f"(last: {last}); see {self.failure_log or 'the warnings above'}"
        )

    # ---- failures ------------------------------------------------------------------------------------------

    def _record_failure(self, index: int, exc: Exception) -> str:
        path, offset = self.locate(index)
        line = _line_number(path, offset)
        problem = str(exc)
        for prefix in (f"{path}@{offset}: ", f"{path}:{line}: "):  # messages already naming the record
            if problem.startswith(prefix):
                problem = problem[len(prefix) :]
        where = f"{path}:{line}"
        kind = type(exc).__name__
        message = _one_line(f"{where}: {kind}: {problem}")
        self.failures += 1
        self.failure_kinds[kind] += 1
        logger.warning("skipping %s", message)
        if self.failure_log is not None:
            entry = {
                "file": str(path),
                "line": line,
                "offset": offset,
                "error": kind,
                "message": _one_line(problem),
                "split": self.split,
                "rank": int(os.environ.get("RANK", 0)),
                "pid": os.getpid(),
                "time": round(time.time(), 3),
            }
            self.failure_log.parent.mkdir(parents=True, exist_ok=True)
            # one write() per line on an O_APPEND descriptor: concurrent writers never interleave within a line
            fd = os.open(self.failure_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (json.dumps(entry) + "\n").encode("utf-8"))
            finally:
                os.close(fd)
        return message

    def _check_fraction(self, last: str) -> None:
        if self.attempts < self.min_attempts:
            return
        fraction = self.failures / self.attempts
        if fraction > self.max_bad_sample_fraction:
            kinds = ", ".join(f"{n} {kind}" for kind, n in self.failure_kinds.most_common())
            raise BadDataError(
                f"{self.split} data: {self.failures} of {self.attempts} samples failed ({fraction:.0%}: {kinds}), "
                f"above max_bad_sample_fraction={self.max_bad_sample_fraction}; last: {last}; "
                f"see {self.failure_log or 'the warnings above'}"
            )


def summarize_failures(path: str | os.PathLike, start: int = 0) -> tuple[int, str]:
    """``(count, summary line)`` of the failures logged in ``path`` from byte ``start`` on."""
    path = Path(path)
    if not path.is_file():
        return 0, "0 samples skipped"
    kinds: collections.Counter[str] = collections.Counter()
    first = ""
    with open(path, "rb") as f:
        f.seek(start)
        for raw in f:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue  # a line cut by a crash mid-write
            kinds[str(entry.get("error", "?"))] += 1
            if not first:
                first = f"{entry.get('file')}:{entry.get('line')}: {entry.get('message')}"
    count = sum(kinds.values())
    if not count:
        return 0, "0 samples skipped"
    detail = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
    return count, f"{count} samples skipped: {detail} (first: {first}); details in {path}"


class BadSampleReport(TrainerCallback):
    """Logs the failures of this run (``N samples skipped: ...``) at the end of training, on the main process.

    Only lines appended after ``on_train_begin`` count, so a resumed run reports its own failures.
    """

    def __init__(self, failure_log: str | os.PathLike):
        self.failure_log = Path(failure_log)
        self.start = 0
        self.count = 0
        self.summary = ""

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.failure_log.stat().st_size if self.failure_log.is_file() else 0

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.count, self.summary = summarize_failures(self.failure_log, self.start)
        if self.count:
            logger.warning(self.summary)
        else:
            logger.info(self.summary)
