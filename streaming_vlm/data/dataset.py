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
  line, missing or undecodable video, empty transcript, longer than ``max_sample_tokens``: any
  :class:`AnnotationError` or :class:`VideoError`) gives one warning line ``skipping FILE:LINE: ErrorType:
  problem``, one JSON line appended to the failure log (``<output_dir>/bad_samples.jsonl``; one short
  ``O_APPEND`` write per line, so ranks and DataLoader workers can share the file), and another index is tried
  instead (about 0.618 x the dataset length further on, so a run of bad lines such as the windows of one
  missing video is left at once), at most ``max_attempts`` indexes for one item. The sample finally returned
  carries the records of the lines skipped for it (``TrainingSample.skipped``), so the counts reach the trainer
  through the batch whatever process built it. Other exceptions are bugs and propagate.
* **Too much bad data stops training, whatever the sampling order.** Bad data is counted in *distinct lines*
  (``(file, line)``; a line tried again, or listed twice to upsample, counts once) by a :class:`BadLineTracker`,
  and training stops with :class:`BadDataError` once the distinct bad lines exceed
  ``max_bad_sample_fraction`` x the dataset's distinct lines (known up front from the seek indexes). Over an
  epoch every line is drawn, so whether a run stops depends only on the data, never on the order of the draws;
  a dataset under the threshold never stops (a fraction of the attempts so far, from the 20th draw on, could).
  In training the trainer keeps the trackers: it gathers the records of every rank at every micro-batch
  (:func:`gather_records`), so all ranks count the same lines and stop at the same step. A dataset used on its
  own keeps a tracker of its own (``max_bad_sample_fraction=None`` turns its stop off, as the trainer does).
* :class:`BadSampleReport` is a ``TrainerCallback`` that logs ``N distinct lines skipped (M attempts): ...`` per
  split on the main process at the end of training.
* Errors for the entry point derive from :class:`DataError`: one line, an exit status, and whether every rank
  raises it at once.

Line numbers are found only when a record fails (by counting newlines up to its offset), so opening a
500k-line file costs one read of its seek index.
"""

from __future__ import annotations

import bisect
import collections
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from transformers import TrainerCallback

from streaming_vlm.data.annotations import AnnotationError, load_seek_index, read_record_at, resolve_video
from streaming_vlm.data.sample import SampleBuilder, TrainingSample
from streaming_vlm.data.windows import check_previous_kept
from streaming_vlm.video import VideoError

__all__ = [
    "BadDataError",
    "BadLineTracker",
    "BadSampleReport",
    "DataError",
    "DatasetSetupError",
    "StreamingSFTDataset",
    "gather_records",
    "resolve_annotation_path",
]

logger = logging.getLogger(__name__)

SKIPPABLE_ERRORS: tuple[type[Exception], ...] = (AnnotationError, VideoError)
"""Problems of the data, not of the code: the sample is skipped."""


class DataError(Exception):
    """Training data that cannot be used; ``str()`` is one line.

    ``exit_status``: what the entry point exits with (1: the data is bad; 2: the paths given do not work).
    ``every_rank``: raised identically by every rank at the same point, so the entry point prints it once (rank 0).
    """

    exit_status = 1

    def __init__(self, message: str = "", *, every_rank: bool = False):
        super().__init__(message)
        self.every_rank = every_rank


class BadDataError(DataError, RuntimeError):
    """Too many samples could not be built; the message says how many, why, and where the log is."""


class DatasetSetupError(DataError, ValueError):
    """The annotation files cannot be opened (missing file or seek index, no records): a usage error."""

    exit_status = 2


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


def _lines(n: int) -> str:
    return f"{n} distinct line{'' if n == 1 else 's'}"


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BadLineTracker:
    """Distinct bad lines of one split and the stop rule (see the module docstring).

    Args:
        total_lines: distinct lines (records) of the split's annotation files.
        max_fraction: stop with :class:`BadDataError` once the distinct bad lines exceed
            ``max_fraction * total_lines``; ``None``: count only.
        split: a name for messages (``train``, ``eval``).
        failure_log: where the details are, for messages.

    ``add`` takes failure records (dicts with at least ``file``, ``line``, ``error`` and ``message``).
    """

    def __init__(self, total_lines: int, max_fraction: float | None, split: str = "train",
                 failure_log: str | os.PathLike | None = None):
        if max_fraction is not None and not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_bad_sample_fraction must be in [0, 1], got {max_fraction}")
        self.total_lines = int(total_lines)
        self.max_fraction = max_fraction
        self.split = split
        self.failure_log = failure_log
        self.first: dict[tuple[str, int], dict] = {}  # (file, line) -> its first failure record, in arrival order
        self.attempts = 0
        self.kinds: collections.Counter[str] = collections.Counter()  # per distinct line

    @property
    def distinct(self) -> int:
        return len(self.first)

    def add(self, records: Sequence[dict], *, every_rank: bool = False) -> None:
        """Count ``records`` in order; :class:`BadDataError` (``every_rank`` passed on) at the first distinct line
        over the threshold."""
        for record in records:
            self.attempts += 1
            key = (str(record["file"]), int(record["line"]))
            if key in self.first:
                continue
            self.first[key] = record
            self.kinds[str(record["error"])] += 1
            if self.max_fraction is not None and self.distinct > self.max_fraction * self.total_lines:
                raise self._stop(every_rank)

    def _stop(self, every_rank: bool) -> BadDataError:
        return BadDataError(
            f"{self.split} data: {_lines(self.distinct)} of {self.total_lines} could not be used "
            f"({self._details()}), more than max_bad_sample_fraction={self.max_fraction} allows "
            f"({self.max_fraction * self.total_lines:g} lines); {self._first()}; "
            f"see {self.failure_log or 'the warnings above'}",
            every_rank=every_rank,
        )

    def _details(self) -> str:
        return ", ".join(f"{n} {kind}" for kind, n in self.kinds.most_common())

    def _first(self) -> str:
        r = next(iter(self.first.values()))
        return _one_line(f"first: {r['file']}:{r['line']}: {r['message']}", 400)

    def summary(self) -> str:
        """``N distinct lines skipped (M attempts): kinds (first: ...); details in LOG``."""
        if not self.first:
            return f"{self.split} data: 0 lines skipped"
        where = f"; details in {self.failure_log}" if self.failure_log else ""
        return (f"{self.split} data: {_lines(self.distinct)} skipped ({self.attempts} attempts): "
                f"{self._details()} ({self._first()}){where}")


def gather_records(records: list[dict], device: torch.device | str) -> list[dict]:
    """Every rank's ``records``, rank after rank, on every rank (a collective: all ranks call it in step).

    One all-reduce of the count (on ``device``, the backend's); the objects are all-gathered only when some rank
    has any. Without a process group of several ranks: ``records`` as given.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return list(records)
    count = torch.tensor([len(records)], dtype=torch.long, device=device)
    dist.all_reduce(count)
    if int(count.item()) == 0:
        return []
    gathered: list[list[dict] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(records))
    return [record for part in gathered for record in part or []]


def _retry_stride(n: int) -> int:
    """The step between the indexes tried for one item: about 0.618 n and coprime with n, so the first n tries
    visit every index once and consecutive tries land far apart. Windows of one video sit on consecutive lines,
    so one missing hour-long video is a run of hundreds of bad lines that stepping by 1 could not leave within
    ``max_attempts``."""
    stride = max(1, round(n * 0.6180339887))
    while math.gcd(stride, n) != 1:
        stride += 1
    return stride


class StreamingSFTDataset(torch.utils.data.Dataset):
    """Training samples from annotation files with seek indexes (see the module docstring).

    Args:
        annotation_paths: JSONL files, absolute or relative to ``dataset_path``; repeats upsample.
        builder: makes a ``TrainingSample`` from a record and its video file.
        dataset_path: root for relative annotation and video paths (``None``: ``$DATASET_PATH``).
        failure_log: JSONL file that failures are appended to (``None``: not written).
        max_bad_sample_fraction: stop with :class:`BadDataError` once the distinct bad lines this process has
            seen exceed this fraction of :attr:`total_lines`; ``None``: never (the trainer counts across
            processes instead).
        max_attempts: indexes tried for one item (spread over the data, see :func:`_retry_stride`) before giving
            up with :class:`BadDataError`.
        split: a name for messages and the log (``train``, ``eval``).
    """

    def __init__(
        self,
        annotation_paths: Sequence[str | os.PathLike],
        builder: SampleBuilder,
        *,
        dataset_path: str | os.PathLike | None = None,
        failure_log: str | os.PathLike | None = None,
        max_bad_sample_fraction: float | None = 0.05,
        max_attempts: int = 32,
        split: str = "train",
    ):
        if not annotation_paths:
            raise ValueError("no annotation files given")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.builder = builder
        self.dataset_path = dataset_path if dataset_path is not None else os.environ.get("DATASET_PATH")
        self.failure_log = Path(failure_log) if failure_log is not None else None
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
            raise AnnotationError(f"no records in {', '.join(str(f) for f in self.files)}")
        # distinct lines (records) of the distinct files: the denominator of the bad-line fraction
        self.total_lines = sum(len(o) for o in offsets_of.values())

        self.attempts = 0  # this process's, for its own statistics
        self.failures = 0
        self.bad_lines = BadLineTracker(self.total_lines, max_bad_sample_fraction, split, self.failure_log)

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
        skipped: list[dict] = []
        stride = _retry_stride(n)
        for step in range(self.max_attempts):
            k = (index + step * stride) % n
            self.attempts += 1
            try:
                sample = self.build(k)
            except SKIPPABLE_ERRORS as exc:
                record = self._record_failure(k, exc)
                last = f"{record['file']}:{record['line']}: {record['error']}: {record['message']}"
                skipped.append(record)
                self.bad_lines.add([record])
                continue
            sample.skipped = skipped
            return sample
        raise BadDataError(
            f"{self.split} data: {self.max_attempts} samples tried for index {index} could not be built "
            f"(last: {last}); see {self.failure_log or 'the warnings above'}"
        )

    # ---- failures ------------------------------------------------------------------------------------------

    def _record_failure(self, index: int, exc: Exception) -> dict:
        """Warn, append to the failure log, and return the failure's record."""
        path, offset = self.locate(index)
        line = _line_number(path, offset)
        problem = str(exc)
        for prefix in (f"{path}@{offset}: ", f"{path}:{line}: "):  # messages already naming the record
            if problem.startswith(prefix):
                problem = problem[len(prefix) :]
        where = f"{path}:{line}"
        kind = type(exc).__name__
        self.failures += 1
        logger.warning("skipping %s", _one_line(f"{where}: {kind}: {problem}"))
        record = {"file": str(path), "line": line, "offset": offset, "error": kind, "message": _one_line(problem),
                  "split": self.split}
        if self.failure_log is not None:
            rank = int(os.environ.get("RANK", 0))
            entry = {**record, "rank": rank, "pid": os.getpid(), "time": round(time.time(), 3)}
            self.failure_log.parent.mkdir(parents=True, exist_ok=True)
            # one write() per line on an O_APPEND descriptor: concurrent writers never interleave within a line
            fd = os.open(self.failure_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (json.dumps(entry) + "\n").encode("utf-8"))
            finally:
                os.close(fd)
        return record


class BadSampleReport(TrainerCallback):
    """Logs each split's :meth:`BadLineTracker.summary` (``N distinct lines skipped (M attempts): ...``) at the end
    of training, on the main process; a warning when lines were skipped. ``lines`` maps splits to the trackers
    that counted them (the trainer's, which hold every rank's lines)."""

    def __init__(self, lines: Mapping[str, BadLineTracker]):
        self.lines = lines
        self.summaries: list[str] = []

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.summaries = [tracker.summary() for tracker in self.lines.values()]
        for tracker, summary in zip(self.lines.values(), self.summaries, strict=True):
            logger.log(logging.WARNING if tracker.distinct else logging.INFO, summary)
