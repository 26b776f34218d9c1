"""LiveSports-3K-CC (LiveCC's closed-caption track): streaming commentary per event, judged against a baseline.

Data. A local copy of the Hugging Face dataset ``stdKonjac/LiveSports-3K`` (config ``LiveSports_3K_CC``,
split ``test``), found with ``--data-dir`` or ``$LIVESPORTS3K_PATH``. The annotations are the repository's
``LiveSports-3K-CC.json`` (a JSON array or JSON lines), the Hub's parquet conversion
(``LiveSports_3K_CC/test/*.parquet``) or any ``--annotations`` file (.json, .jsonl, .parquet, .csv) with the
dataset's columns: ``video_id``, ``event_id``, ``begin``, ``end``, ``video`` (a file name such as
``LEsNbpDKrbM.mp4``), ``event_title``, ``preasr_text`` (the transcript before the event), ``event_asr_text``
(the human commentary of the event, the judge's reference) and ``class`` (the sport). Videos resolve against
``--video-dir``, else ``DATA_DIR/videos`` (where the repository's ``videos.tar.part.*`` extract), else
``DATA_DIR``; a ``DATA_DIR`` that is the videos folder itself finds the annotations in its parent.

Generation (phase ``generate``). Per event, one fresh stream from ``begin`` to ``end`` through
:func:`~streaming_vlm.eval.generate.stream_span`, with LiveCC's commentator instruction and
``This is a video titled "{event_title}".`` as the query and ``preasr_text`` as the previous text (cut by
the policy's text sink and window, unlike the reference, which never cut it). ``pred`` is the chunks'
commentary (marker removed, stripped) joined by single spaces, silent chunks skipped. Events are sharded
over ``torchrun`` ranks and resumable (:func:`~streaming_vlm.eval.runner.run_items`); the model is loaded
only when an event is left to generate. Rank 0 writes ``{output_dir}/{model_name}.jsonl`` with rows
``{video_id, event_id, begin, end, pred}``, the format of LiveCC's caption files.

Judging (phase ``judge``, rank 0). LiveCC's protocol: the judge sees the two commentaries and the human
commentary and names the one better aligned with it, semantic alignment first and style only if that does
not decide (:data:`LIVECC_RUBRIC`, LiveCC's prompt as a single user turn). Each event is asked in both
orders (model in slot A, then the baseline in slot A). The headline is LiveCC's win rate over all 2N
judgements; unlike LiveCC, a reply that is not exactly one of the two verdict sentences is counted as
invalid and reported (LiveCC counted any reply containing "Commentary A" for A), and split pairs (each side
won one order) are reported as ties. Events without a prediction on either side, or without a reference,
are not judged and are counted; empty predictions are judged as they are and counted. Valid replies are cached
by content, so a rerun, or a rerun after an interruption, sends only the requests not yet answered with a
verdict: invalid replies are not cached, so a rerun asks exactly those again.

Run ``streaming-vlm eval livesports --help``; see ``docs/eval_livesports.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from streaming_vlm.argtypes import non_negative_float, positive_float, positive_int
from streaming_vlm.eval.judge import (
    INVALID,
    LIVECC_RUBRIC,
    Judge,
    JudgeConfig,
    JudgeError,
    PairVerdict,
    bootstrap_ci,
    win_rate,
)
from streaming_vlm.eval.runner import format_table, rank_and_world, run_items, write_results

__all__ = [
    "COMMENTATOR_INSTRUCTION",
    "DataError",
    "Event",
    "build_parser",
    "build_query",
    "find_annotations",
    "join_chunks",
    "judge_events",
    "load_events",
    "main",
    "read_predictions",
    "summarize",
]

ENV_VAR = "LIVESPORTS3K_PATH"
HF_DATASET = "stdKonjac/LiveSports-3K"
ANNOTATION_FILE = "LiveSports-3K-CC.json"
PARQUET_DIR = "LiveSports_3K_CC"
REQUIRED_COLUMNS = ("video_id", "event_id", "begin", "end", "video")
PRED_COLUMNS = ("video_id", "event_id", "begin", "end", "pred")

# LiveCC's instruction for instruct models (evaluation/livesports3kcc), also used by the reference.
COMMENTATOR_INSTRUCTION = (
    "You are an expert video commentator providing real-time, insightful, and engaging commentary on visual content.\n"
)
LIVECC_JUDGE_MODEL = "gpt-4o-2024-08-06"


class DataError(ValueError):
    """The dataset, a prediction file or a path is missing or malformed (one-line message)."""


# ------------------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One LiveSports-3K-CC event: a span of a video with its context and its human commentary."""

    video_id: str
    event_id: int | str
    begin: float
    end: float
    video: str
    """The video file name as the dataset gives it (resolved against the videos folder)."""
    title: str = ""
    preasr_text: str = ""
    reference: str = ""
    """``event_asr_text``: the human commentary during the event."""
    sport: str = ""

    @property
    def key(self) -> str:
        """LiveCC's id: ``{video_id}_{event_id}``."""
        return event_key(self.video_id, self.event_id)


def _event_id(value: Any) -> int | str:
    """Integral ids (7, 7.0, "7") as int, like LiveCC's caption files; anything else as a string."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    return int(text) if text.isdigit() else text


def event_key(video_id: Any, event_id: Any) -> str:
    return f"{video_id}_{_event_id(event_id)}"


def _text(value: Any) -> str:
    """A text field; None and NaN (empty cells of pandas-written files) are empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _columns_to_rows(obj: dict) -> list[dict]:
    """A column-oriented JSON object (``{col: [...]}`` or pandas' ``{col: {row: value}}``) as rows."""
    columns = {k: (list(v.values()) if isinstance(v, dict) else v) for k, v in obj.items()}
    if not columns or not all(isinstance(v, list) for v in columns.values()):
        raise DataError("a JSON object of annotations must map each column to a list")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise DataError("the annotation columns have different lengths")
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def _read_json_rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {n} is not JSON ({exc.msg})") from exc
        return rows
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get("video_id"), str):  # a single event (JSON lines of one line)
        return [obj]
    if isinstance(obj, dict):
        return _columns_to_rows(obj)
    raise DataError(f"{path}: expected a list of events, got {type(obj).__name__}")


def _read_parquet_rows(paths: list[Path]) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError("reading parquet annotations needs pyarrow (pip install pyarrow)") from exc
    rows: list[dict] = []
    for path in paths:
        rows += pq.read_table(path).to_pylist()
    return rows


def read_rows(paths: Path | list[Path]) -> list[dict]:
    """Annotation rows from a .json/.jsonl file, a .csv file or parquet shard(s)."""
    paths = [paths] if isinstance(paths, Path) else list(paths)
    suffix = paths[0].suffix.lower()
    try:
        if suffix == ".parquet":
            rows = _read_parquet_rows(paths)
        elif suffix == ".csv":
            with open(paths[0], encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
        elif suffix in (".json", ".jsonl"):
            rows = _read_json_rows(paths[0])
        else:
            raise DataError(f"{paths[0]}: unsupported annotation format (use .json, .jsonl, .parquet or .csv)")
    except OSError as exc:
        raise DataError(f"cannot read {paths[0]}: {exc.strerror or exc}") from exc
    if not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{paths[0]}: every event must be a JSON object")
    return rows


def find_annotations(data_dir: Path, split: str = "test") -> list[Path]:
    """The annotation file(s) of a local copy of the dataset: ``LiveSports-3K-CC.json``, else the parquet
    conversion's ``LiveSports_3K_CC/{split}/*.parquet``, in ``data_dir`` or (when ``data_dir`` is the videos
    folder) its parent."""
    for root in (data_dir, data_dir.parent):
        if (root / ANNOTATION_FILE).is_file():
            return [root / ANNOTATION_FILE]
        shards = sorted((root / PARQUET_DIR / split).glob("*.parquet"))
        if shards:
            return shards
    raise DataError(
        f"no annotations in {data_dir}: expected {ANNOTATION_FILE} or {PARQUET_DIR}/{split}/*.parquet "
        f"(a local copy of {HF_DATASET}), or pass --annotations"
    )


def default_video_dir(data_dir: Path) -> Path:
    return data_dir / "videos" if (data_dir / "videos").is_dir() else data_dir


def load_events(paths: Path | list[Path]) -> list[Event]:
    """The events of the annotation file(s), in file order; raises :class:`DataError` on bad rows."""
    paths = [paths] if isinstance(paths, Path) else list(paths)
    rows = read_rows(paths)
    if not rows:
        raise DataError(f"{paths[0]}: no events")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
    if missing:
        raise DataError(f"{paths[0]}: missing column(s) {', '.join(missing)} (have {', '.join(rows[0])})")
    events: list[Event] = []
    seen: set[str] = set()
    for n, row in enumerate(rows):
        try:
            begin, end = float(row["begin"]), float(row["end"])
        except (TypeError, ValueError) as exc:
            raise DataError(f"{paths[0]}: event {n}: begin/end are not numbers") from exc
        if not (math.isfinite(begin) and math.isfinite(end) and 0 <= begin < end):
            raise DataError(f"{paths[0]}: event {n}: need 0 <= begin < end, got begin {begin:g}, end {end:g}")
        ev = Event(
            video_id=_text(row["video_id"]),
            event_id=_event_id(row["event_id"]),
            begin=begin,
            end=end,
            video=_text(row["video"]),
            title=_text(row.get("event_title", row.get("video_title"))),
            preasr_text=_text(row.get("preasr_text")),
            reference=_text(row.get("event_asr_text")),
            sport=_text(row.get("class")),
        )
        if not ev.video_id or not ev.video:
            raise DataError(f"{paths[0]}: event {n}: empty video_id or video")
        if ev.key in seen:
            raise DataError(f"{paths[0]}: duplicate event {ev.key}")
        seen.add(ev.key)
        events.append(ev)
    return events


def read_predictions(path: str | os.PathLike[str]) -> dict[str, str | None]:
    """``{video_id}_{event_id} -> pred`` of a LiveCC-format JSONL (``{video_id, event_id, begin, end, pred}``).

    A null ``pred`` maps to None (treated as missing); a later line for the same event wins, as in LiveCC.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prediction file not found: {path}")
    out: dict[str, str | None] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {n} is not JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or not all(k in row for k in ("video_id", "event_id", "pred")):
                raise DataError(f"{path}: line {n} needs video_id, event_id and pred")
            pred = row["pred"]
            out[event_key(row["video_id"], row["event_id"])] = None if pred is None else str(pred)
    return out


# ------------------------------------------------------------------------------------------------------------
# generation
# ------------------------------------------------------------------------------------------------------------


def build_query(title: str) -> str:
    """LiveCC's instruction, plus ``This is a video titled "{title}".`` when the event has a title."""
    return COMMENTATOR_INSTRUCTION + (f'This is a video titled "{title}".\n' if title else "")


def join_chunks(texts: list[str]) -> str:
    """A span's commentary: the chunks' texts stripped and joined by single spaces, silent chunks skipped."""
    return " ".join(t.strip() for t in texts if t and t.strip())


def _generation_settings(args: argparse.Namespace) -> dict[str, Any]:
    from streaming_vlm.engine import StreamConfig

    return {
        "model": str(args.model),
        "mode": args.mode,
        "instruction": COMMENTATOR_INSTRUCTION,
        "temperature": args.temperature,
        "repetition_penalty": args.repetition_penalty,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "max_pixels": args.max_pixels,
        "fps": StreamConfig.fps,
        "chunk_seconds": StreamConfig.chunk_seconds,
        "vision_window": StreamConfig.vision_window,
        "text_rounds": StreamConfig.text_rounds,
        "text_sink": StreamConfig.text_sink,
        "text_window": StreamConfig.text_window,
    }


def stream_config(event: Event, args: argparse.Namespace):
    """The ``StreamConfig`` of one event: LiveCC's query with its title, the pre-event transcript as context."""
    from streaming_vlm.engine import StreamConfig
    from streaming_vlm.sampling import SamplingConfig

    sampling = SamplingConfig(
        temperature=args.temperature, repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens
    )
    return StreamConfig(
        mode=args.mode,
        query=build_query(event.title),
        previous_text=event.preasr_text,
        sampling=sampling,
        seed=args.seed,
    )


def _generate(events: list[Event], video_dir: Path, args: argparse.Namespace, out: Path) -> list[dict] | None:
    """Phase ``generate``: per-event records (rank 0: all of them, merged; other ranks: None)."""
    from streaming_vlm.eval.generate import load_eval_model, stream_span

    model = None

    def fn(item: dict) -> dict:
        nonlocal model
        if model is None:  # loaded only when something is left to generate
            model = load_eval_model(
                args.model, device=args.device, dtype=args.dtype,
                min_pixels=min(100 * 28 * 28, args.max_pixels), max_pixels=args.max_pixels,
            )  # fmt: skip
        ev: Event = item["event"]
        chunks = list(stream_span(model, video_dir / ev.video, stream_config(ev, args), start=ev.begin, end=ev.end))
        return {
            "id": ev.key,
            "video_id": ev.video_id,
            "event_id": ev.event_id,
            "begin": ev.begin,
            "end": ev.end,
            "pred": join_chunks([c.text for c in chunks]),
            "chunks": len(chunks),
            "new_tokens": sum(c.new_tokens for c in chunks),
        }

    items = [{"id": ev.key, "event": ev} for ev in events]
    return run_items(args.model_name, items, fn, out / "generate")


# ------------------------------------------------------------------------------------------------------------
# judging and scores
# ------------------------------------------------------------------------------------------------------------


@dataclass
class JudgeOutcome:
    """Per-event judgement records and the events left unjudged, by reason."""

    records: list[dict]
    missing_model: list[str]
    missing_baseline: list[str]
    missing_reference: list[str]


def judge_events(
    judge: Judge,
    events: list[Event],
    model_preds: dict[str, str | None],
    baseline_preds: dict[str, str | None],
    model_name: str,
    baseline_name: str,
    progress: bool = True,
) -> JudgeOutcome:
    """Ask the judge about every event in both orders (model in slot A first); see the module docstring."""
    from tqdm import tqdm

    names = {"A": model_name, "B": baseline_name, INVALID: INVALID}
    out = JudgeOutcome([], [], [], [])
    for ev in tqdm(events, desc="livesports judge", disable=not progress):
        model_pred, baseline_pred = model_preds.get(ev.key), baseline_preds.get(ev.key)
        if model_pred is None:
            out.missing_model.append(ev.key)
            continue
        if baseline_pred is None:
            out.missing_baseline.append(ev.key)
            continue
        if not ev.reference:
            out.missing_reference.append(ev.key)
            continue
        v = judge.compare(model_pred, baseline_pred, ev.reference)
        record = {
            "id": ev.key,
            "video_id": ev.video_id,
            "event_id": ev.event_id,
            "class": ev.sport,
            "ab_winner": names[v.first],
            "ba_winner": names[v.second],
            "model_wins": v.wins_x,
            "baseline_wins": v.wins_y,
            "invalid": v.invalid,
            "empty_model_pred": not model_pred.strip(),
            "empty_baseline_pred": not baseline_pred.strip(),
        }
        # The raw reply of a non-verdict, for the report.
        if v.first == INVALID:
            record["ab_reply"] = v.first_reply
        if v.second == INVALID:
            record["ba_reply"] = v.second_reply
        out.records.append(record)
    return out


def _verdicts(records: list[dict], model_name: str, baseline_name: str) -> list[PairVerdict]:
    back = {model_name: "A", baseline_name: "B"}
    return [PairVerdict(back.get(r["ab_winner"], INVALID), back.get(r["ba_winner"], INVALID)) for r in records]


def summarize(records: list[dict], model_name: str, baseline_name: str, ci_level: float = 0.95) -> dict[str, Any]:
    """Win rate over 2N (LiveCC's number), wins per order, ties, invalid judgements and a bootstrap interval.

    ``win_rate_over_2n`` = model wins / (2 x judged events), invalid judgements counting as non-wins; its
    interval resamples events (per-event score = model wins / 2). ``win_rate_valid`` leaves invalid ones out.
    ``ties`` are pairs split 1-1 between the orders.
    """
    verdicts = _verdicts(records, model_name, baseline_name)
    totals = win_rate(verdicts)
    n = len(verdicts)
    scores = [v.wins_x / 2 for v in verdicts]
    ci = bootstrap_ci(scores, level=ci_level) if scores else None
    rate = totals["win_rate_x_over_2n"]
    return {
        "judged_events": n,
        "judgements": totals["judgements"],
        "model_wins": totals["wins_x"],
        "baseline_wins": totals["wins_y"],
        "invalid": totals["invalid"],
        "model_wins_ab": sum(v.first == "A" for v in verdicts),
        "model_wins_ba": sum(v.second == "A" for v in verdicts),
        "baseline_wins_ab": sum(v.first == "B" for v in verdicts),
        "baseline_wins_ba": sum(v.second == "B" for v in verdicts),
        "ties": sum(v.wins_x == 1 and v.wins_y == 1 for v in verdicts),
        "pairs_model_both": sum(v.wins_x == 2 for v in verdicts),
        "pairs_baseline_both": sum(v.wins_y == 2 for v in verdicts),
        "pairs_with_invalid": sum(v.invalid > 0 for v in verdicts),
        "win_rate_over_2n": rate,
        "win_rate_over_2n_percent": None if rate is None else round(100 * rate, 2),
        "win_rate_over_2n_ci": None if ci is None else [ci[0], ci[1]],
        "ci_level": ci_level,
        "win_rate_valid": totals["win_rate_x"],
    }


def _by_class(records: list[dict], model_name: str, baseline_name: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r.get("class") or "unknown", []).append(r)
    out = {}
    for sport in sorted(groups):
        totals = win_rate(_verdicts(groups[sport], model_name, baseline_name))
        out[sport] = {
            "judged_events": len(groups[sport]),
            "model_wins": totals["wins_x"],
            "invalid": totals["invalid"],
            "win_rate_over_2n": totals["win_rate_x_over_2n"],
        }
    return out


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row for ``runner.format_table``: percentages, wins per order, ties, invalid and unjudged events."""
    s = results["summary"]
    ci = s["win_rate_over_2n_ci"]
    unjudged = results["unjudged"]
    return [
        {
            "model": results["model"],
            "baseline": results["baseline"],
            "judged": s["judged_events"],
            "win rate % (/2N)": "-" if s["win_rate_over_2n"] is None else 100 * s["win_rate_over_2n"],
            f"{round(100 * s['ci_level'])}% CI": "-" if ci is None else f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}",
            "wins ab/ba": f"{s['model_wins_ab']}/{s['model_wins_ba']}",
            "baseline wins": s["baseline_wins"],
            "ties": s["ties"],
            "invalid": s["invalid"],
            "unjudged": sum(len(v) for v in unjudged.values()),
        }
    ]


# ------------------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------------------


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``streaming-vlm eval livesports`` options (added to ``parser`` when given)."""
    p = parser or argparse.ArgumentParser(
        prog="streaming-vlm eval livesports",
        description="LiveSports-3K-CC: streaming commentary for every event (begin to end, with the event title "
        "and the transcript before it as context), then LiveCC's pairwise judging against a baseline's captions "
        "(both orders; win rate over 2N judgements). Writes LiveCC-format predictions, per-event verdicts and "
        "a results JSON, and prints a table. Under torchrun, events are split over ranks.",
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--data-dir", default=None,
        help=f"local copy of {HF_DATASET} (default ${ENV_VAR}): holds {ANNOTATION_FILE} (or the parquet "
        f"conversion) and videos/",
    )  # fmt: skip
    data.add_argument("--annotations", default=None, help="annotation file to use instead of the one in --data-dir")
    data.add_argument("--video-dir", default=None, help="folder of the videos (default DATA_DIR/videos or DATA_DIR)")
    data.add_argument("--split", default="test", help="split of the parquet layout (default test)")
    data.add_argument("--limit", type=positive_int, default=None, help="only the first N events (smoke runs)")

    run = p.add_argument_group("run")
    run.add_argument("--phase", choices=("all", "generate", "judge"), default="all", help="default all")
    run.add_argument("--output-dir", default="results/livesports3k", help="default results/livesports3k")
    run.add_argument("--model", default=None, help="model directory, hub id or 'tiny' (phase generate)")
    run.add_argument(
        "--model-name", default=None,
        help="name of the predictions and in the results (default: the --model or --predictions basename)",
    )  # fmt: skip
    run.add_argument(
        "--predictions", default=None,
        help="judge this LiveCC-format JSONL ({video_id, event_id, begin, end, pred}) instead of generating",
    )  # fmt: skip

    gen = p.add_argument_group("generation")
    gen.add_argument("--mode", choices=("streaming", "full", "sliding", "recompute"), default="streaming")
    gen.add_argument("--temperature", type=non_negative_float, default=0.9, help="default 0.9 (0 = greedy)")
    gen.add_argument("--repetition-penalty", type=float, default=1.05, help="default 1.05")
    gen.add_argument("--max-new-tokens", type=positive_int, default=20, help="per 1-s chunk (default 20)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed of every event's stream (default 0)")
    gen.add_argument("--max-pixels", type=positive_int, default=768 * 28 * 28, help="per frame (default 768*28*28)")
    gen.add_argument("--device", default="auto", help="auto (default; this rank's GPU under torchrun), cuda, cpu")
    gen.add_argument("--dtype", default="auto", help="auto (default), bf16, fp16, fp32")

    jud = p.add_argument_group("judge")
    jud.add_argument("--baseline", default=None, help="the baseline's captions, LiveCC-format JSONL (phase judge)")
    jud.add_argument("--baseline-name", default=None, help="default: the --baseline file's stem")
    jud.add_argument(
        "--judge-model", default=LIVECC_JUDGE_MODEL, help=f"chat model of the judge (default {LIVECC_JUDGE_MODEL})"
    )
    jud.add_argument(
        "--judge-base-url", default=None,
        help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (default $OPENAI_BASE_URL or OpenAI)",
    )  # fmt: skip
    jud.add_argument(
        "--judge-api-key-env", default="OPENAI_API_KEY",
        help="environment variable holding the API key (default OPENAI_API_KEY; unset: 'EMPTY')",
    )  # fmt: skip
    jud.add_argument("--judge-seed", type=int, default=42, help="default 42, as LiveCC")
    jud.add_argument("--judge-max-tokens", type=positive_int, default=16, help="reply budget (default 16)")
    jud.add_argument("--judge-max-retries", type=int, default=5, help="retries with backoff per request (default 5)")
    jud.add_argument(
        "--judge-timeout-s", type=positive_float, default=60.0,
        help="seconds one judge request may take before it is abandoned and retried (default 60)",
    )  # fmt: skip
    jud.add_argument("--judge-cache", default=None, help="reply cache JSONL (default OUTPUT_DIR/judge_cache.jsonl)")
    return p


def _fail(message: str, code: int = 2) -> int:
    print(f"streaming-vlm eval livesports: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def _data_paths(args: argparse.Namespace) -> tuple[list[Path], Path | None]:
    """(annotation files, videos folder or None when only --annotations was given without a data dir)."""
    data_dir = args.data_dir or os.environ.get(ENV_VAR)
    if args.annotations:
        ann = Path(args.annotations)
        if not ann.is_file():
            raise DataError(f"--annotations not found: {ann}")
        annotations = [ann]
    elif not data_dir:
        raise DataError(
            f"no dataset: pass --data-dir or set {ENV_VAR} to a local copy of the Hugging Face dataset {HF_DATASET} "
            f"(see docs/eval_livesports.md)"
        )
    else:
        if not Path(data_dir).is_dir():
            raise DataError(f"dataset directory not found: {data_dir} (from --data-dir or {ENV_VAR})")
        annotations = find_annotations(Path(data_dir), args.split)
    if args.video_dir:
        return annotations, Path(args.video_dir)
    return annotations, default_video_dir(Path(data_dir) if data_dir else annotations[0].parent)


def _check_videos(events: list[Event], video_dir: Path | None) -> None:
    if video_dir is None or not video_dir.is_dir():
        raise DataError(f"videos folder not found: {video_dir} (use --video-dir)")
    missing = [ev.video for ev in events if not (video_dir / ev.video).is_file()]
    if missing:
        raise DataError(f"{len(set(missing))} video file(s) not found under {video_dir} (first: {missing[0]})")


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume predictions made with other generation settings."""
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in settings.keys() | before.keys() if before.get(k) != settings.get(k))
        if changed:
            raise DataError(
                f"{path} records predictions made with other settings ({', '.join(changed)}); use another "
                f"--output-dir or --model-name, or delete it to start over"
            )
    elif rank_and_world()[0] == 0:
        write_results(path, settings)


def _export_predictions(records: list[dict], path: Path) -> None:
    """LiveCC's caption format, one line per event, written whole then renamed into place."""
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({k: r[k] for k in PRED_COLUMNS}, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _stem(path: str) -> str:
    """``captions/GPT-4o.jsonl`` -> ``GPT-4o``; ``mit-han-lab/StreamingVLM`` -> ``StreamingVLM``."""
    name = Path(path.rstrip("/")).name
    for suffix in (".jsonl", ".json"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _names(args: argparse.Namespace) -> None:
    if args.model_name is None:
        source = args.predictions or args.model
        args.model_name = _stem(source) if source else None
    if args.baseline and args.baseline_name is None:
        args.baseline_name = _stem(args.baseline)


def _validate(args: argparse.Namespace) -> None:
    generate = args.phase in ("all", "generate") and not args.predictions
    judge = args.phase in ("all", "judge")
    if args.predictions and args.phase == "generate":
        raise DataError("--predictions is for judging; phase generate needs --model")
    if generate and not args.model:
        raise DataError("phase generate needs --model (or pass --predictions to judge an existing file)")
    if not args.model_name:
        raise DataError("name the predictions with --model-name (or pass --model or --predictions)")
    if judge and not args.baseline:
        raise DataError("phase judge needs --baseline, the baseline's captions in LiveCC's JSONL format")
    if judge and not Path(args.baseline).is_file():
        raise DataError(f"--baseline not found: {args.baseline}")
    if args.judge_max_retries < 0:
        raise DataError("--judge-max-retries must be >= 0")


def _judge_phase(args: argparse.Namespace, events: list[Event], out: Path) -> int:
    pred_path = Path(args.predictions) if args.predictions else out / f"{args.model_name}.jsonl"
    if not pred_path.is_file():
        raise DataError(f"no predictions to judge: {pred_path} (run phase generate first, or pass --predictions)")
    model_preds = read_predictions(pred_path)
    baseline_preds = read_predictions(args.baseline)
    if args.model_name == args.baseline_name:
        raise DataError(f"the model and the baseline have the same name {args.model_name!r}; set --model-name")
    judge = Judge(
        JudgeConfig(
            model=args.judge_model,
            base_url=args.judge_base_url,
            api_key_env=args.judge_api_key_env,
            seed=args.judge_seed,
            max_tokens=args.judge_max_tokens,
            max_retries=args.judge_max_retries,
            timeout_s=args.judge_timeout_s,
            cache_path=args.judge_cache or str(out / "judge_cache.jsonl"),
        ),
        LIVECC_RUBRIC,
    )
    outcome = judge_events(judge, events, model_preds, baseline_preds, args.model_name, args.baseline_name)
    stem = f"{args.baseline_name}_{args.model_name}"
    verdicts_path = out / "judges" / f"{stem}.jsonl"
    verdicts_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = verdicts_path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in outcome.records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(verdicts_path)

    summary = summarize(outcome.records, args.model_name, args.baseline_name)
    invalid_examples = [
        {"id": r["id"], "order": order, "reply": r[f"{order}_reply"]}
        for r in outcome.records
        for order in ("ab", "ba")
        if f"{order}_reply" in r
    ][:20]
    results = {
        "benchmark": "LiveSports-3K-CC",
        "model": args.model_name,
        "baseline": args.baseline_name,
        "summary": summary,
        "events": len(events),
        "unjudged": {
            "missing_model_pred": outcome.missing_model,
            "missing_baseline_pred": outcome.missing_baseline,
            "missing_reference": outcome.missing_reference,
        },
        "empty_model_preds": sum(r["empty_model_pred"] for r in outcome.records),
        "empty_baseline_preds": sum(r["empty_baseline_pred"] for r in outcome.records),
        "invalid_examples": invalid_examples,
        "by_class": _by_class(outcome.records, args.model_name, args.baseline_name),
        "judge": {
            **{k: v for k, v in asdict(judge.config).items() if k != "api_key_env"},
            "rubric": judge.rubric.name,
            "protocol": "LiveCC LiveSports-3K-CC: both orders, win rate over 2N; strict verdicts",
            "requests": judge.stats["calls"],
            "cache_hits": judge.stats["cache_hits"],
            "retries": judge.stats["retries"],
        },
        "files": {"predictions": str(pred_path), "baseline": str(args.baseline), "verdicts": str(verdicts_path)},
    }
    settings_path = out / f"{args.model_name}.generation.json"
    if not args.predictions and settings_path.is_file():
        results["generation"] = json.loads(settings_path.read_text(encoding="utf-8"))
    results_path = write_results(out / "judges" / f"{stem}.json", results)
    unjudged = sum(len(v) for v in results["unjudged"].values())
    if unjudged:
        print(
            f"warning: {unjudged} event(s) not judged (missing model prediction: {len(outcome.missing_model)}, "
            f"missing baseline prediction: {len(outcome.missing_baseline)}, no reference: "
            f"{len(outcome.missing_reference)}); see {results_path}",
            file=sys.stderr,
        )
    if summary["invalid"]:
        print(
            f"warning: {summary['invalid']} of {summary['judgements']} verdict(s) invalid (not cached: a rerun asks "
            f"them again); see invalid_examples in {results_path}",
            file=sys.stderr,
        )
    print(f"wrote {verdicts_path}")
    print(f"wrote {results_path}")
    print(format_table(table_rows(results)))
    return 0


def main(argv: list[str] | argparse.Namespace | None = None) -> int:
    args = argv if isinstance(argv, argparse.Namespace) else build_parser().parse_args(argv)
    from streaming_vlm.models import ModelLoadError
    from streaming_vlm.video import VideoError

    # Our own progress notes (resumes, judge retries) at INFO; third-party INFO chatter (one line per HTTP request)
    # stays off.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("streaming_vlm").setLevel(logging.INFO)
    out = Path(args.output_dir)
    _names(args)
    try:
        _validate(args)
        annotations, video_dir = _data_paths(args)
        events = load_events(annotations)
        if args.limit:
            events = events[: args.limit]
        if args.phase in ("all", "generate") and not args.predictions:
            _check_videos(events, video_dir)
            out.mkdir(parents=True, exist_ok=True)
            _check_settings(out / f"{args.model_name}.generation.json", _generation_settings(args))
            records = _generate(events, video_dir, args, out)
            if records is None:  # other ranks: rank 0 exports and judges
                return 0
            _export_predictions(records, out / f"{args.model_name}.jsonl")
            print(f"wrote {out / f'{args.model_name}.jsonl'} ({len(records)} events)")
        if args.phase == "generate" or rank_and_world()[0] != 0:
            return 0
        return _judge_phase(args, events, out)
    except (DataError, ModelLoadError, VideoError, ValueError, OSError) as exc:
        return _fail(str(exc))
    except JudgeError as exc:
        return _fail(f"{exc} (judgements so far are cached; rerun to resume)", code=1)


if __name__ == "__main__":
    sys.exit(main())
