"""Check an annotation JSONL file: malformed lines, missing videos, word and question times.

Counts (see :class:`ValidationReport`):

- ``records``: lines that parse into a record; ``malformed``: non-blank lines that do not;
- ``missing_videos``: records whose video cannot be found (:func:`resolve_video`; existence only, not probed);
- ``words_outside``: words ending before ``video_start`` (1e-6 tolerance) or starting after ``video_end``;
- ``non_monotonic``: words starting before the previous word's start, or ending before their own start;
- ``qa_outside``: questions whose ask time is outside ``[video_start, video_end]``.

Word and question counts are per item; each record adds at most one problem line per kind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from streaming_vlm.data.annotations import AnnotationError, StreamRecord, iter_records, resolve_video

EPS = 1e-6


@dataclass
class ValidationReport:
    path: str
    records: int = 0
    malformed: int = 0
    missing_videos: int = 0
    words_outside: int = 0
    non_monotonic: int = 0
    qa_outside: int = 0
    problems: list[str] = field(default_factory=list)
    """``file:line: problem``, at most ``max_problems`` of them (``problem_count`` counts all)."""
    problem_count: int = 0
    max_problems: int = 20

    @property
    def ok(self) -> bool:
        return not (self.malformed or self.missing_videos or self.words_outside or self.non_monotonic
                    or self.qa_outside)

    def add(self, problem: str) -> None:
        self.problem_count += 1
        if len(self.problems) < self.max_problems:
            self.problems.append(problem)

    def lines(self) -> list[str]:
        """A summary line, then the kept problems (and how many were left out)."""
        head = (f"{self.path}: {self.records} records, {self.malformed} malformed lines, "
                f"{self.missing_videos} missing videos, {self.words_outside} words outside the clip, "
                f"{self.non_monotonic} non-monotonic word times, {self.qa_outside} questions outside the clip: "
                + ("ok" if self.ok else "PROBLEMS"))
        out = [head, *(f"  {p}" for p in self.problems)]
        if self.problem_count > len(self.problems):
            out.append(f"  ... and {self.problem_count - len(self.problems)} more")
        return out


def _check_times(record: StreamRecord, report: ValidationReport) -> None:
    where = record.source
    lo, hi = record.video_start, record.video_end
    outside = [w for w in record.words if w.end < lo - EPS or w.start > hi]
    if outside:
        report.words_outside += len(outside)
        first = outside[0]
        report.add(f"{where}: {len(outside)} words outside the clip [{lo}, {hi}] "
                   f"(first {first.text!r} at {first.start}-{first.end})")
    bad = []
    for i, w in enumerate(record.words):
        if w.end < w.start or (i > 0 and w.start < record.words[i - 1].start):
            bad.append(i)
    if bad:
        report.non_monotonic += len(bad)
        w = record.words[bad[0]]
        report.add(f"{where}: {len(bad)} non-monotonic word times (first: word {bad[0]} {w.text!r} at "
                   f"{w.start}-{w.end})")
    late = [q for q in record.qa if q.ask_time < lo - EPS or q.ask_time > hi + EPS]
    if late:
        report.qa_outside += len(late)
        report.add(f"{where}: {len(late)} questions outside the clip [{lo}, {hi}] "
                   f"(first asked at {late[0].ask_time})")


def validate_file(path: str | os.PathLike, dataset_path: str | os.PathLike | None = None,
                  check_videos: bool = True, max_problems: int = 20) -> ValidationReport:
    """Read every line of ``path`` once and count its problems. Raises ``OSError`` only if the file is unreadable."""
    report = ValidationReport(path=str(path), max_problems=max_problems)
    for _, item in iter_records(path):
        if isinstance(item, AnnotationError):
            report.malformed += 1
            report.add(str(item))
            continue
        report.records += 1
        if check_videos:
            try:
                resolve_video(item, dataset_path)
            except AnnotationError as exc:
                report.missing_videos += 1
                report.add(str(exc))
        _check_times(item, report)
    return report
