"""Commentary outputs: WebVTT subtitles and JSON lines, one record per chunk, flushed as they come.

Both writers open their file once, write each chunk as soon as it is produced and flush it, so an
interrupted run keeps everything it wrote. They know nothing about models or videos beyond a chunk's
start, end and text. Opening a writer creates (or empties) its file: the caller checks the paths first
(``infer.check_outputs``). A failed write raises ``OSError`` naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def vtt_timestamp(seconds: float) -> str:
    """``HH:MM:SS.mmm`` (hours grow past 99 for very long streams)."""
    ms = max(0, int(round(seconds * 1000)))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def one_line(text: str) -> str:
    """Printable single-line text: control characters and runs of whitespace become one space."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def vtt_cue_text(text: str) -> str:
    """Commentary as a WebVTT cue payload: one line, with ``&``, ``<`` and ``>`` escaped as ``&amp;``, ``&lt;``
    and ``&gt;`` (WebVTT cue text, like HTML, reads them as entities and tags; escaped, the payload can hold
    no blank line, which would end the cue, and no ``-->``, which would start a timing line)."""
    return one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _LineFile:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _write(self, text: str) -> None:
        try:
            self._f.write(text)
            self._f.flush()
        except OSError as exc:
            raise self._named(exc) from exc

    def close(self) -> None:
        if not self._f.closed:
            try:
                self._f.close()
            except OSError as exc:  # what a failed write left in the buffer fails again
                raise self._named(exc) from exc

    def _named(self, exc: OSError) -> OSError:
        return OSError(exc.errno, exc.strerror or str(exc), str(self.path))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VttWriter(_LineFile):
    """WebVTT: a header, then one cue per chunk with its commentary (without the `` ...`` marker)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        self._write("WEBVTT\n\n")
        self._cue = 0

    def write(self, start: float, end: float, text: str) -> None:
        self._cue += 1
        self._write(f"{self._cue}\n{vtt_timestamp(start)} --> {vtt_timestamp(end)}\n{vtt_cue_text(text)}\n\n")


class JsonlWriter(_LineFile):
    """One JSON object per chunk."""

    def write(self, record: dict[str, Any]) -> None:
        self._write(json.dumps(record, ensure_ascii=False) + "\n")
