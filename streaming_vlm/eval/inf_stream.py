"""Inf-Streams-Eval: commentary on long videos, judged pairwise against a baseline by an LLM.

Four phases, one subcommand each (``streaming-vlm eval inf-stream PHASE --help``):

``generate``
    Our model comments on every video of the metadata file (``eval_all_metadata.jsonl``, rows
    ``{video, content: [[start_s, end_s, word], ...]}``) from ``--start-offset`` (default 1000 s) to the end of the
    transcript. The work item is a *segment* ``(video, segment start)``: one stream over ``--segment-seconds``
    (default: the whole span, one continuous stream per video), started with the ground-truth words that end
    at or before the segment start as previous text. The engine cuts that text to the policy's
    ``--text-sink`` head and ``--text-window`` tail tokens, exactly as it keeps retired commentary. A shorter
    ``--segment-seconds`` makes resuming finer but restarts the stream at every segment start (the reference's
    "duration per restart"), which changes what is evaluated. Records
    ``{video, chunk_start, chunk_end, items: [{response, start_time, end_time}]}`` are appended per segment
    (rank-sharded under torchrun, resumable); rank 0 merges them into ``merged_result.jsonl`` and writes the
    stream settings and where each came from to ``stream_settings.json``. The settings are the harness's
    (:mod:`~streaming_vlm.eval.harness`), the protocol pinning the instruction (:data:`INF_STREAM_QUERY`).
``baseline``
    An OpenAI-compatible vision model (:mod:`streaming_vlm.eval.openai_baseline`) comments on every scoring
    clip at or after ``--start-offset``, with our system prompt and instruction and an explicit frame budget
    (``--fps``, default our 2 fps). Same record format, same resume, same merge.
``merge``
    Merges generation records (files or folders of ``*.jsonl``, e.g. another implementation's shards) into
    one line per video: per ``(video, chunk_start)`` the record reaching furthest, items concatenated in time
    order, ``chunk_start``/``chunk_end`` the extremes and ``segments`` the spans actually covered.
``score``
    For every scoring clip (``score_all_clips.jsonl``, rows ``{video, title?, content}``) covered by both
    sides' segments, candidate text = responses whose ``end_time`` lies in ``(clip start, clip end]``,
    reference = the clip's words joined by spaces. A :class:`~streaming_vlm.eval.judge.Judge` compares A
    with B in both orders under a fixed rubric (:data:`INF_STREAM_RUBRIC` by default), caching every valid
    reply. The win rate of A is vote-level (A's share of the valid verdicts, two per clip); its 95 % interval is
    a percentile bootstrap over clips of the per-clip share. Replies that are not a clean verdict are counted
    as invalid and reported, never given to a side, and not cached: a rerun judges those clips again. Writes
    ``score.jsonl`` (one record per clip), ``score_results.json`` (overall, per video, skipped clips, invalid
    verdicts) and prints a table.

Paths come from flags or ``EVAL_DATASET_PATH`` (the folder holding the two JSONL files; relative video paths
are resolved against it). It owns no model, cache, judging or command-line plumbing: each phase is a
:class:`~streaming_vlm.eval.harness.Benchmark` (``merge`` a plain command) wiring the shared pieces together.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streaming_vlm import settings as settings_mod
from streaming_vlm.argtypes import non_negative_float, non_negative_int, positive_float, positive_int
from streaming_vlm.eval import harness
from streaming_vlm.eval.judge import COMMENTARY_RUBRIC, Judge, JudgeConfig, Rubric, add_chat_arguments
from streaming_vlm.eval.runner import format_table, jsonl_rows, read_jsonl, write_jsonl, write_results
from streaming_vlm.settings import DEFAULTS, SETTING_NAMES

__all__ = [
    "INF_STREAM_QUERY",
    "INF_STREAM_RUBRIC",
    "Clip",
    "Baseline",
    "Generate",
    "InfStreamError",
    "Score",
    "Transcript",
    "candidate_text",
    "covered",
    "load_clips",
    "load_transcripts",
    "main",
    "merge_records",
    "previous_text",
    "summarize_scores",
]

log = logging.getLogger(__name__)

PROG = "streaming-vlm eval inf-stream"
DATASET_ENV = "EVAL_DATASET_PATH"
METADATA_NAME = "eval_all_metadata.jsonl"
CLIPS_NAME = "score_all_clips.jsonl"
MERGED_NAME = "merged_result.jsonl"
RUN_CONFIG_NAME = "run_config.json"
STREAM_SETTINGS_NAME = "stream_settings.json"
DEFAULT_START = 1000.0
EPS = 1e-3  # seconds: times in the files are rounded to milliseconds

# The live-broadcaster instruction of the benchmark, given to our model and to the baseline alike.
INF_STREAM_QUERY = (
    "Act as a live sports broadcaster: in short present-tense lines, call the play on screen first, then add one "
    "brief courtside insight; match your energy to the moment and mention the score and clock when they are "
    "visible.\nDescribe only what you can see and never invent names or facts (refer to players by position or "
    "number when unsure); if the scoreboard contradicts you, correct yourself at once."
)

# The benchmark's judging protocol: tone and pacing first, then consistency with the reference, one letter.
INF_STREAM_RUBRIC = Rubric(
    name="inf-stream",
    system=(
        "You are a strict A/B judge of live sports video commentary. You are given the reference transcript of "
        "the human broadcast of a video segment, which shows the expected tone and the on-screen information, "
        "and two candidate commentaries, A and B, for the same segment. Judge them by these criteria, in this "
        "order; a later criterion only decides when the earlier one does not:\n"
        "1. Broadcast tone and pacing: a live broadcaster's voice with varied emotion, calling the play as it "
        "happens or giving brief in-the-moment analysis, rather than a flat description of the scene.\n"
        "2. Consistency and accuracy: every detail agrees with what happens on screen as the reference "
        "transcript reports it (players, teams, score, actions, timing); nothing is invented or contradicted.\n"
        "Do not favour a candidate for its position or its length. Answer with exactly one letter, A or B, and "
        "nothing else."
    ),
    user_template=(
        "Reference transcript (for the tone and the on-screen information):\n{reference}\n\n"
        "Commentary A:\n{a}\n\n"
        "Commentary B:\n{b}\n\n"
        "Which commentary is better? Answer with exactly one letter: A or B."
    ),
    verdict_a="A",
    verdict_b="B",
)
RUBRICS = {"inf-stream": INF_STREAM_RUBRIC, "commentary": COMMENTARY_RUBRIC}


class InfStreamError(ValueError):
    """Bad input (a missing file, a malformed row, conflicting outputs); the message is one line."""


# ------------------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------------------

Word = tuple[float, float, str]


@dataclass(frozen=True)
class Transcript:
    """One metadata row: the video (``key`` = its file name, which names it in every output) and its words."""

    key: str
    path: Path
    words: list[Word]

    @property
    def end(self) -> float:
        return max(e for _, e, _ in self.words)


@dataclass(frozen=True)
class Clip:
    """One scoring clip: ``[start, end]`` spans its words; ``reference`` is them joined by spaces."""

    key: str
    path: Path
    start: float
    end: float
    reference: str
    title: str = ""

    @property
    def id(self) -> str:
        return f"{self.key}@{self.start:g}-{self.end:g}"


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _words(row: dict, where: str) -> list[Word]:
    content = row.get("content")
    if not isinstance(content, list):
        raise InfStreamError(f"{where}: 'content' must be a list of [start_s, end_s, word]")
    words = []
    for w in content:
        if not (isinstance(w, (list, tuple)) and len(w) >= 3 and _is_number(w[0]) and _is_number(w[1])
                and isinstance(w[2], str) and w[1] >= w[0] >= 0):
            raise InfStreamError(f"{where}: bad word {json.dumps(w)[:80]} (expected [start_s, end_s, word])")
        words.append((float(w[0]), float(w[1]), w[2]))
    return sorted(words, key=lambda w: (w[0], w[1]))  # stable: the file order within equal times


def _video(row: dict, root: Path, where: str) -> tuple[str, Path]:
    video = row.get("video")
    if not isinstance(video, str) or not video:
        raise InfStreamError(f"{where}: 'video' must be a non-empty path")
    path = Path(video)
    return path.name, path if path.is_absolute() else root / path


def load_transcripts(path: str | os.PathLike, root: str | os.PathLike) -> list[Transcript]:
    """Metadata rows (file order); videos relative to ``root``. Rows without words are left out."""
    path, out, seen = Path(path), [], {}
    for n, row in jsonl_rows(path, InfStreamError):
        where = f"{path}:{n}"
        key, video = _video(row, Path(root), where)
        if key in seen:
            raise InfStreamError(f"{where}: video file name {key!r} also on line {seen[key]} (names must be unique)")
        seen[key] = n
        words = _words(row, where)
        if words:
            out.append(Transcript(key, video, words))
    return out


def load_clips(path: str | os.PathLike, root: str | os.PathLike) -> tuple[list[Clip], dict[str, int]]:
    """Scoring clips (file order, duplicates of ``(video, start, end)`` dropped) and counts of what was dropped."""
    path, clips, ids = Path(path), [], set()
    dropped = {"empty": 0, "duplicate": 0}
    for n, row in jsonl_rows(path, InfStreamError):
        where = f"{path}:{n}"
        key, video = _video(row, Path(root), where)
        words = _words(row, where)
        if not words or not any(w.strip() for _, _, w in words):
            dropped["empty"] += 1
            continue
        title = row.get("title") or ""
        clip = Clip(key, video, words[0][0], max(e for _, e, _ in words),
                    " ".join(w.strip() for _, _, w in words if w.strip()), title if isinstance(title, str) else "")
        if clip.id in ids:
            dropped["duplicate"] += 1
            continue
        ids.add(clip.id)
        clips.append(clip)
    return clips, dropped


def previous_text(words: list[Word], t: float) -> str:
    """The transcript up to ``t``: the leading words that end at or before ``t``, joined by spaces."""
    out = []
    for _, end, word in words:
        if end > t:
            break
        if word.strip():
            out.append(word.strip())
    return " ".join(out)


def candidate_text(items: list[dict], start: float, end: float) -> str:
    """The responses whose ``end_time`` lies in ``(start, end]``, in order, joined by spaces."""
    out = []
    for it in items:
        t = it.get("end_time")
        text = it.get("response", it.get("text"))
        if _is_number(t) and start + EPS < t <= end + EPS and isinstance(text, str) and text.strip():
            out.append(text.strip())
    return " ".join(out)


def _spans(row: dict) -> list[tuple[float, float]]:
    """The covered spans of a merged row, overlapping or touching ones joined."""
    raw = row.get("segments") or [[row["chunk_start"], row["chunk_end"]]]
    spans: list[list[float]] = []
    for s, e in sorted((float(s), float(e)) for s, e in raw):
        if spans and s <= spans[-1][1] + EPS:
            spans[-1][1] = max(spans[-1][1], e)
        else:
            spans.append([s, e])
    return [(s, e) for s, e in spans]


def covered(row: dict, start: float, end: float) -> bool:
    """Whether ``[start, end]`` lies inside one covered span of the merged row."""
    return any(s <= start + EPS and end <= e + EPS for s, e in _spans(row))


def merge_records(records: Iterable[dict]) -> list[dict]:
    """One row per video (sorted by name): per ``(video, chunk_start)`` the record with the largest
    ``chunk_end``; items concatenated by ``chunk_start``; ``segments`` lists the kept ``[start, end]`` spans."""
    by_video: dict[str, dict[float, dict]] = {}
    for r in records:
        s, e = float(r["chunk_start"]), float(r["chunk_end"])
        kept = by_video.setdefault(r["video"], {})
        if s not in kept or e > kept[s]["chunk_end"]:
            kept[s] = {"chunk_start": s, "chunk_end": e, "items": list(r.get("items") or [])}
    rows = []
    for video in sorted(by_video):
        segs = sorted(by_video[video].values(), key=lambda g: (g["chunk_start"], g["chunk_end"]))
        rows.append({
            "video": video,
            "chunk_start": segs[0]["chunk_start"],
            "chunk_end": max(g["chunk_end"] for g in segs),
            "items": [it for g in segs for it in g["items"]],
            "segments": [[g["chunk_start"], g["chunk_end"]] for g in segs],
        })
    return rows


def _read_records(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Generation records from files and folders (every ``*.jsonl`` in a folder except merged results)."""
    records = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.glob("*.jsonl") if f.name != MERGED_NAME and f.name != "judge_cache.jsonl")
        elif p.is_file():
            files = [p]
        else:
            raise InfStreamError(f"not found: {p}")
        for f in files:
            for n, r in enumerate(read_jsonl(f), 1):
                if not (isinstance(r, dict) and isinstance(r.get("video"), str) and _is_number(r.get("chunk_start"))
                        and _is_number(r.get("chunk_end")) and isinstance(r.get("items", []), list)):
                    raise InfStreamError(f"{f}: record {n} is not a generation record "
                                         "{video, chunk_start, chunk_end, items}")
                records.append(r)
    return records


def _load_merged(path: str | os.PathLike) -> tuple[Path, dict[str, dict]]:
    p = Path(path)
    if p.is_dir():
        p = p / MERGED_NAME
    rows = {}
    for n, row in jsonl_rows(p, InfStreamError):
        if not (isinstance(row.get("video"), str) and _is_number(row.get("chunk_start"))
                and _is_number(row.get("chunk_end")) and isinstance(row.get("items"), list)):
            raise InfStreamError(f"{p}:{n}: not a merged row {{video, chunk_start, chunk_end, items}}")
        rows[Path(row["video"]).name] = row
    return p, rows


# ------------------------------------------------------------------------------------------------------------
# scoring summary
# ------------------------------------------------------------------------------------------------------------


def _share(wins: int, losses: int) -> float | None:
    return wins / (wins + losses) if wins + losses else None


def summarize_scores(records: list[dict], *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Overall and per-video win rates of A from per-clip score records (see the module docstring)."""
    from streaming_vlm.eval.judge import PairVerdict, bootstrap_ci, win_rate

    def block(recs: list[dict]) -> dict[str, Any]:
        wr = win_rate([PairVerdict(r["first"], r["second"]) for r in recs])
        shares = [s for r in recs if (s := _share(r["wins_a"], r["wins_b"])) is not None]
        ci = list(bootstrap_ci(shares, n=n_boot, seed=seed)) if shares else None
        return {
            "clips": len(recs),
            "wins_a": wr["wins_x"],
            "wins_b": wr["wins_y"],
            "invalid": wr["invalid"],
            "judgements": wr["judgements"],
            "win_rate_a": wr["win_rate_x"],
            "win_rate_a_ci95": ci,
            "win_rate_a_over_2n": wr["win_rate_x_over_2n"],
            "clips_won_a": sum(r["winner"] == "A" for r in recs),
            "clips_won_b": sum(r["winner"] == "B" for r in recs),
            "clips_tied": sum(r["winner"] == "tie" for r in recs),
        }

    videos: dict[str, list[dict]] = {}
    for r in records:
        videos.setdefault(r["video"], []).append(r)
    return {
        "overall": block(records),
        "per_video": [{"video": v, **block(rs)} for v, rs in sorted(videos.items())],
        "invalid_clips": [r["id"] for r in records if r["invalid"]],
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def score_table(summary: dict[str, Any]) -> str:
    def row(name: str, b: dict) -> dict:
        ci = b["win_rate_a_ci95"]
        return {"video": name, "clips": b["clips"], "A votes": b["wins_a"], "B votes": b["wins_b"],
                "invalid": b["invalid"], "win rate A": _pct(b["win_rate_a"]),
                "95% CI": "-" if ci is None else f"{_pct(ci[0])} - {_pct(ci[1])}"}

    rows = [row(v["video"], v) for v in summary["per_video"]]
    return format_table([*rows, row("ALL", summary["overall"])])


# ------------------------------------------------------------------------------------------------------------
# phases
# ------------------------------------------------------------------------------------------------------------


def _dataset_root(args) -> Path | None:
    root = args.dataset or os.environ.get(DATASET_ENV) or None
    return Path(root) if root else None


def _input(args, explicit: str | None, name: str, flag: str) -> tuple[Path, Path]:
    """(JSONL file, root for relative video paths) from ``flag`` or the dataset folder."""
    root = _dataset_root(args)
    if explicit:
        path = Path(explicit)
        return path, root or path.parent
    if root is None:
        raise InfStreamError(f"no dataset: pass --dataset DIR (or {flag} FILE) or set {DATASET_ENV}")
    return root / name, root


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name).strip("/")) or "model"


def _segments(transcripts: list[Transcript], start: float, duration: float | None,
              segment_seconds: float | None) -> tuple[list[dict], list[str]]:
    """Work items ``{id, video, chunk_start, span_end}`` and the videos whose transcript ends before ``start``."""
    items, too_short = [], []
    for t in transcripts:
        end = t.end if duration is None else min(t.end, start + duration)
        if end <= start + EPS:
            too_short.append(t.key)
            continue
        step = segment_seconds or (end - start)
        k = 0
        while start + k * step < end - EPS:
            s = start + k * step
            items.append({"id": f"{t.key}@{s:g}", "video": t.key, "chunk_start": s, "span_end": min(s + step, end)})
            k += 1
    return items, too_short


def _label(path: str, given: str | None) -> str:
    if given:
        return given
    p = Path(path)
    return (p if p.is_dir() else p.parent).name or str(p)


class _Phase(harness.Benchmark):
    """What the phases share: the name, the dataset options, ``--out`` as the records' folder."""

    name = "inf-stream"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", default=None,
                       help=f"folder with {METADATA_NAME}, {CLIPS_NAME} and the videos (default: ${DATASET_ENV})")
        p.add_argument("--limit", type=positive_int, default=None, help="only the first N videos / clips (quick runs)")

    def records_dir(self, run: harness.Run) -> Path:
        return self.out

    def resume_path(self, run: harness.Run) -> Path:
        return self.out / RUN_CONFIG_NAME


class _Commentary(_Phase):
    """A phase that comments on the videos from ``--start-offset``: records ``{video, chunk_start, chunk_end,
    items}`` merged into ``merged_result.jsonl`` and a table."""

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        p.add_argument("--start-offset", type=non_negative_float, default=DEFAULT_START,
                       help="start offset in seconds; earlier video is not commented on (default %(default)g)")

    def score(self, run: harness.Run, records: dict[str, list[dict]] | None) -> dict:
        merged = merge_records(records[self.group])
        print(f"wrote {write_jsonl(self.out / MERGED_NAME, merged)}")
        return {"merged": merged}


class Generate(_Commentary):
    """``inf-stream generate``: our model's segments (group ``generate``)."""

    help = "our model's commentary on every video (resumable; torchrun shards)"
    description = ("Stream commentary on every video of the metadata file from --start-offset, with the transcript "
                   "before each segment as previous text; merge into merged_result.jsonl.")
    group = "generate"
    settings_use = harness.SettingsUse(exclude=("total_pixels", "max_frames", "reset_every"),
                                       protocol={"query": INF_STREAM_QUERY})

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        p.add_argument("--metadata", default=None, help=f"metadata JSONL (default: DATASET/{METADATA_NAME})")
        p.add_argument("--out", default=None, help="output folder (default results/inf_stream/answers/<model>)")
        p.add_argument("--duration", type=positive_float, default=None,
                       help="seconds per video after --start-offset at most (default: to the end of the transcript)")
        p.add_argument("--segment-seconds", type=positive_float, default=None,
                       help="restart the stream (with the transcript so far) every this many seconds; finer resume, "
                       "but a different evaluation (default: one continuous stream per video)")

    def items(self, run: harness.Run) -> dict[str, list[dict]]:
        args = run.args
        metadata, root = _input(args, args.metadata, METADATA_NAME, "--metadata")
        transcripts = load_transcripts(metadata, root)[: args.limit]
        missing = [str(t.path) for t in transcripts if not t.path.is_file()]
        if missing:
            raise InfStreamError(f"{len(missing)} video(s) not found, first: {missing[0]}")
        items, too_short = _segments(transcripts, args.start_offset, args.duration, args.segment_seconds)
        for key in too_short:
            log.warning("%s: the transcript ends before --start-offset %g s; skipped", key, args.start_offset)
        self.out = Path(args.out or f"results/inf_stream/answers/{_safe(args.model)}")
        self.by_key = {t.key: t for t in transcripts}
        return {"generate": items}

    def resume_record(self, run: harness.Run) -> dict:
        args, s = run.args, run.settings
        return {
            "phase": "generate", "model": args.model, "start": args.start_offset, "duration": args.duration,
            "segment_seconds": args.segment_seconds, "query": s.query, "system_prompt": s.system_prompt,
            "fps": s.fps, "chunk_seconds": s.chunk_seconds, "vision_window": s.vision_window,
            "text_rounds": s.text_rounds, "text_sink": s.text_sink, "text_window": s.text_window,
            "min_pixels": _asked_min_pixels(run), "max_pixels": s.max_pixels, "seed": s.seed,
            "sampling": dataclasses.asdict(s.sampling()),
        }  # fmt: skip

    def run_item(self, run: harness.Run, group: str, item: dict) -> dict:
        from tqdm import tqdm

        t = self.by_key[item["video"]]
        s = item["chunk_start"]
        prev = previous_text(t.words, s)
        config = run.stream_config(previous_text=prev)
        results, end = [], s
        n = math.ceil((item["span_end"] - s) / config.chunk_seconds - 1e-9)
        for r in tqdm(run.stream(t.path, config, start=s, end=item["span_end"]), total=n, desc=f"{t.key} @ {s:g} s",
                      unit="chunk", leave=False, disable=not run.progress):
            results.append({"response": r.text, "start_time": round(r.start, 3), "end_time": round(r.end, 3)})
            end = r.end
        return {"video": t.key, "chunk_start": s, "chunk_end": round(end, 3), "items": results,
                "previous_words": len(prev.split())}

    def score(self, run: harness.Run, records: dict[str, list[dict]] | None) -> dict:
        # the settings every segment streamed with (run_config.json holds what a resume must match)
        write_results(self.out / STREAM_SETTINGS_NAME, run.settings_record())
        return super().score(run, records)

    def table(self, results: dict) -> str:
        return format_table([{
            "video": m["video"], "start s": m["chunk_start"], "end s": m["chunk_end"], "segments": len(m["segments"]),
            "chunks": len(m["items"]), "words": sum(len(it["response"].split()) for it in m["items"]),
        } for m in results["merged"]])


def _asked_min_pixels(run: harness.Run) -> int:
    """``min_pixels`` as ``run_config.json`` has always recorded it: the value asked for (flag, ``--config``, the
    checkpoint, the default), before ``settings.resolve`` lowers one above ``max_pixels`` to it, so that folders
    written before still resume."""
    args = run.args
    explicit = settings_mod.given(args) | (settings_mod.load_config(args.config) if args.config else {})
    if "min_pixels" in explicit:
        return explicit["min_pixels"]
    return settings_mod.from_checkpoint(run.model_path).get("min_pixels", DEFAULTS.min_pixels)


class Baseline(_Commentary):
    """``inf-stream baseline``: an OpenAI-compatible vision model's commentary per scoring clip (group
    ``baseline``); of the stream settings it takes only the instruction and the system prompt."""

    help = "baseline commentary per scoring clip from an OpenAI-compatible model"
    description = ("Commentary on every scoring clip at or after --start-offset by an OpenAI-compatible vision chat "
                   "model, given our instruction and an explicit frame budget.")
    group = "baseline"
    settings_use = harness.SettingsUse(exclude=tuple(n for n in SETTING_NAMES if n not in ("query", "system_prompt")),
                                       protocol={"query": INF_STREAM_QUERY}, fixed_chunks=False)
    model_default = harness.NO_MODEL

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        p.add_argument("--clips", default=None, help=f"scoring clips JSONL (default: DATASET/{CLIPS_NAME})")
        p.add_argument("--metadata", default=None, help="metadata JSONL, for --previous-words")
        p.add_argument("--out", default=None, help="output folder (default results/inf_stream/answers/<model>)")
        p.add_argument("--previous-words", type=non_negative_int, default=0,
                       help="also give the last N transcript words before --start-offset (default 0, as the reference)")
        api = add_chat_arguments(p, "baseline", flag_prefix="--", model_default="gpt-4o-mini",
                                 model_help="chat model name (default gpt-4o-mini)", timeout_s=120.0)
        api.add_argument("--fps", dest="baseline_fps", metavar="FPS", type=positive_float, default=DEFAULTS.fps,
                         help=f"frames per second of video sent (default {DEFAULTS.fps:g}, as our model sees)")
        api.add_argument("--max-frames-per-request", type=positive_int, default=64,
                         help="longer clips are asked in consecutive windows of this many frames (default 64)")
        api.add_argument("--max-height", type=positive_int, default=360,
                         help="frame height cap in pixels (default 360)")
        api.add_argument("--jpeg-quality", type=positive_int, default=85, help="default 85")
        api.add_argument("--detail", choices=("low", "high", "auto"), default=None,
                         help="image_url detail (default unset)")
        api.add_argument("--temperature", dest="baseline_temperature", metavar="T", type=non_negative_float,
                         default=0.0, help="default 0")
        api.add_argument("--seed", dest="baseline_seed", metavar="SEED", type=int, default=42,
                         help="request seed (default 42)")
        api.add_argument("--max-tokens", dest="baseline_max_tokens", metavar="N", type=positive_int, default=300,
                         help="reply tokens per request (default 300)")

    def items(self, run: harness.Run) -> dict[str, list[dict]]:
        from streaming_vlm.eval.openai_baseline import BaselineConfig

        args = run.args
        clips_path, root = _input(args, args.clips, CLIPS_NAME, "--clips")
        clips, _ = load_clips(clips_path, root)
        early = [c for c in clips if c.start < args.start_offset - EPS]
        clips = [c for c in clips if c.start >= args.start_offset - EPS][: args.limit]
        missing = sorted({str(c.path) for c in clips if not c.path.is_file()})
        if missing:
            raise InfStreamError(f"{len(missing)} video(s) not found, first: {missing[0]}")
        self.previous: dict[str, str] = {}
        if args.previous_words:
            metadata, mroot = _input(args, args.metadata, METADATA_NAME, "--metadata")
            for t in load_transcripts(metadata, mroot):
                words = previous_text(t.words, args.start_offset).split()
                self.previous[t.key] = " ".join(words[-args.previous_words:])
        self.config = BaselineConfig.from_args(
            args, "baseline", system_prompt=run.settings.system_prompt, query=run.settings.query, fps=args.baseline_fps,
            max_frames_per_request=args.max_frames_per_request, max_height=args.max_height,
            jpeg_quality=args.jpeg_quality, detail=args.detail)
        self.out = Path(args.out or f"results/inf_stream/answers/{_safe(args.baseline_model)}")
        if early:
            log.info("%d clip(s) start before --start-offset %g s and are left out", len(early), args.start_offset)
        return {"baseline": [{"id": c.id, "video": c.key, "path": str(c.path), "start": c.start, "end": c.end}
                             for c in clips]}

    def resume_record(self, run: harness.Run) -> dict:
        kept = {k: v for k, v in dataclasses.asdict(self.config).items()
                if k not in ("api_key_env", "max_retries", "backoff_s", "timeout_s")}
        return {"phase": "baseline", "start": run.args.start_offset, "previous_words": run.args.previous_words, **kept}

    @functools.cached_property
    def baseline(self):
        from streaming_vlm.eval.openai_baseline import OpenAIBaseline

        return OpenAIBaseline(self.config)

    def run_item(self, run: harness.Run, group: str, item: dict) -> dict:
        from streaming_vlm.eval.openai_baseline import Segment

        got = self.baseline.describe(Segment(item["path"], item["start"], item["end"],
                                             self.previous.get(item["video"], "")))
        return {"video": item["video"], "chunk_start": item["start"],
                "chunk_end": got[-1]["end_time"] if got else item["end"], "items": got}

    def table(self, results: dict) -> str:
        return format_table([{
            "video": m["video"], "clips": len(m["segments"]), "requests": len(m["items"]),
            "frames": sum(it.get("frames", 0) for it in m["items"]),
            "words": sum(len(it["response"].split()) for it in m["items"]),
        } for m in results["merged"]])


class Score(_Phase):
    """``inf-stream score``: pairwise judging of A against B per covered scoring clip (group ``score``); a clip with
    an invalid verdict is unfinished, so a rerun judges it again. It streams nothing: no stream settings."""

    help = "pairwise LLM judging of A against B over the scoring clips"
    description = ("Judge A's commentary against B's on every scoring clip both cover, in both orders; win rate of A "
                   "with a bootstrap 95% interval and a per-video breakdown.")
    settings_use = harness.SettingsUse(exclude=SETTING_NAMES, fixed_chunks=False)
    model_default = harness.NO_MODEL

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        p.add_argument("--a", required=True, help=f"model A: output folder or {MERGED_NAME} (ours)")
        p.add_argument("--b", required=True, help=f"model B: output folder or {MERGED_NAME} (the baseline)")
        p.add_argument("--label-a", default=None, help="name of A in the results (default: its folder name)")
        p.add_argument("--label-b", default=None, help="name of B in the results (default: its folder name)")
        p.add_argument("--clips", default=None, help=f"scoring clips JSONL (default: DATASET/{CLIPS_NAME})")
        p.add_argument("--out", default=None, help="output folder (default results/inf_stream/scores/<A>_VS_<B>)")
        p.add_argument("--rubric", choices=sorted(RUBRICS), default="inf-stream",
                       help="inf-stream (tone and pacing first, then accuracy; default) or commentary")
        p.add_argument("--max-chars", type=positive_int, default=8000,
                       help="texts shown to the judge are cut to this many characters (default 8000)")
        p.add_argument("--bootstrap", type=positive_int, default=2000, help="bootstrap resamples (default 2000)")
        p.add_argument("--seed", dest="bootstrap_seed", metavar="SEED", type=int, default=0,
                       help="bootstrap seed (default 0)")
        add_chat_arguments(p, "judge", flag_prefix="--judge-", model_default=os.environ.get("JUDGE_MODEL"),
                           model_help="judge chat model ($JUDGE_MODEL)", timeout_s=60.0)

    def items(self, run: harness.Run) -> dict[str, list[dict]]:
        args = run.args
        self.clips_path, root = _input(args, args.clips, CLIPS_NAME, "--clips")
        if not args.judge_model:
            raise InfStreamError("no judge model: pass --judge-model (e.g. gpt-4o) or set JUDGE_MODEL")
        clips, dropped = load_clips(self.clips_path, root)
        self.a_path, a_rows = _load_merged(args.a)
        self.b_path, b_rows = _load_merged(args.b)
        self.labels = _label(args.a, args.label_a), _label(args.b, args.label_b)
        rubric = RUBRICS[args.rubric]
        self.out = Path(args.out or f"results/inf_stream/scores/{_safe(self.labels[0])}_VS_{_safe(self.labels[1])}")
        self.skipped = {"missing_a": 0, "missing_b": 0, "not_covered_a": 0, "not_covered_b": 0,
                        **{f"{k}_clip": v for k, v in dropped.items()}}
        items = []
        for c in clips[: args.limit]:
            a, b = a_rows.get(c.key), b_rows.get(c.key)
            reason = ("missing_a" if a is None else "missing_b" if b is None else
                      "not_covered_a" if not covered(a, c.start, c.end) else
                      "not_covered_b" if not covered(b, c.start, c.end) else None)
            if reason:
                self.skipped[reason] += 1
                continue
            m = args.max_chars
            text_a = candidate_text(a["items"], c.start, c.end)[:m]
            text_b = candidate_text(b["items"], c.start, c.end)[:m]
            reference = c.reference[:m]
            # The id carries a digest of what is judged: changed outputs or settings are judged anew on a rerun.
            digest = hashlib.sha256(json.dumps([text_a, text_b, reference, args.judge_model, rubric.name]).encode())
            items.append({"id": f"{c.id}#{digest.hexdigest()[:12]}", "video": c.key, "title": c.title,
                          "start": c.start, "end": c.end, "a": text_a, "b": text_b, "reference": reference})
        self.out.mkdir(parents=True, exist_ok=True)
        self.judge = Judge(JudgeConfig.from_args(args, "judge", cache_path=str(self.out / "judge_cache.jsonl")),
                           rubric)
        return {"score": items}

    def run_item(self, run: harness.Run, group: str, item: dict) -> dict:
        v = self.judge.compare(item["a"], item["b"], item["reference"])
        winner = "A" if v.wins_x > v.wins_y else "B" if v.wins_y > v.wins_x else "tie"
        return {"video": item["video"], "title": item["title"], "start": item["start"], "end": item["end"],
                "a_chars": len(item["a"]), "b_chars": len(item["b"]), "first": v.first, "second": v.second,
                "wins_a": v.wins_x, "wins_b": v.wins_y, "invalid": v.invalid, "winner": winner}

    def finished(self, record: dict) -> bool:
        return not record["invalid"]  # the judge does not cache invalid replies: a rerun asks them again

    def score(self, run: harness.Run, records: dict[str, list[dict]] | None) -> dict:
        args, (label_a, label_b) = run.args, self.labels
        summary = summarize_scores(records["score"], n_boot=args.bootstrap, seed=args.bootstrap_seed)
        doc = {
            "meta": {
                "a": label_a, "b": label_b, "a_results": str(self.a_path), "b_results": str(self.b_path),
                "clips": str(self.clips_path), "judge_model": args.judge_model, "judge_base_url": args.judge_base_url,
                "rubric": args.rubric, "max_chars": args.max_chars, "bootstrap": args.bootstrap,
                "seed": args.bootstrap_seed,
                "win_rate": "vote-level: A's share of the valid verdicts (each clip judged in both orders); the 95% "
                            "interval is a percentile bootstrap over clips of the per-clip share",
            },
            **summary,
            "skipped": self.skipped,
            "judge_stats_this_run": self.judge.stats,  # a resumed run only counts the clips it judged itself
        }  # fmt: skip
        # written here, not by the harness: judging streams nothing, so its results carry no stream settings
        print(f"wrote {write_results(self.out / 'score_results.json', doc)}")
        return doc

    def table(self, results: dict) -> str:
        o, skipped = results["overall"], results["skipped"]
        ci = o["win_rate_a_ci95"]
        counts = ", ".join(f"{k} {v}" for k, v in skipped.items() if v) or "-"
        return (f"{score_table(results)}\n{results['meta']['a']} vs {results['meta']['b']}: win rate "
                f"{_pct(o['win_rate_a'])}" + (f" (95% CI {_pct(ci[0])} - {_pct(ci[1])})" if ci else "")
                + f" over {o['clips']} clips; {o['invalid']} of {o['judgements']} verdicts invalid"
                + (" (not cached: a rerun asks them again); " if o["invalid"] else "; ")
                + f"skipped clips: {sum(skipped.values())} ({counts})")


def _add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="record files or folders")
    p.add_argument("--out", default=None, help=f"output file (default: <first input folder>/{MERGED_NAME})")


def run_merge(args: argparse.Namespace) -> int:
    """``inf-stream merge``: generation records (files or folders) merged into one line per video."""
    merged = merge_records(_read_records(args.inputs))
    out = Path(args.out) if args.out else (Path(args.inputs[0]) if Path(args.inputs[0]).is_dir()
                                           else Path(args.inputs[0]).parent) / MERGED_NAME
    print(f"wrote {write_jsonl(out, merged)}")
    print(format_table([{"video": m["video"], "start s": m["chunk_start"], "end s": m["chunk_end"],
                         "segments": len(m["segments"]), "items": len(m["items"])} for m in merged]))
    return 0


MERGE = harness.Command(help="merge generation records into merged_result.jsonl", add_arguments=_add_merge_arguments,
                        main=run_merge, description="Merge generation records (files, or folders of *.jsonl) into "
                        "one line per video.")


def main(argv: Sequence[str] | None = None) -> int:
    """``streaming-vlm eval inf-stream PHASE ARGV``; the exit status."""
    return harness.run({"generate": Generate(), "baseline": Baseline(), "score": Score()}, argv,
                       commands={"merge": MERGE},
                       description="Inf-Streams-Eval: commentary on long videos from a start offset, judged pairwise "
                       "against a baseline by an LLM (win rate with a bootstrap 95% interval, per-video breakdown).")


if __name__ == "__main__":
    sys.exit(main())
