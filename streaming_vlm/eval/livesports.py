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

Generation (phase ``generate``). Per event, one fresh stream from ``begin`` to ``end``, with LiveCC's
commentator instruction (the benchmark's protocol ``query``) and ``This is a video titled "{event_title}".`` as
the query and ``preasr_text`` as the previous text (cut by the policy's text sink and window, unlike the
reference, which never cut it). Every other stream setting (pixels, windows, sampling, fps) is the harness's
(:mod:`~streaming_vlm.eval.harness`). ``pred`` is the chunks' commentary (marker
removed, stripped) joined by single spaces, silent chunks skipped. Events are sharded over ``torchrun`` ranks
and resumable; the model is loaded only when an event is left to generate. Rank 0 writes
``{output_dir}/{model_name}.jsonl`` with rows ``{video_id, event_id, begin, end, pred}``, the format of LiveCC's
caption files, and ``{model_name}.stream_settings.json`` (the settings and where each came from), which the
judge's results repeat.

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
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streaming_vlm.argtypes import positive_int
from streaming_vlm.eval import harness
from streaming_vlm.eval.judge import (
    INVALID,
    LIVECC_RUBRIC,
    Judge,
    JudgeConfig,
    JudgeError,
    PairVerdict,
    add_chat_arguments,
    bootstrap_ci,
    win_rate,
)
from streaming_vlm.eval.runner import format_table, jsonl_rows, write_jsonl, write_results
from streaming_vlm.settings import DEFAULT_SYSTEM_PROMPT, DEFAULTS, MIN_PIXELS, StreamSettings

if TYPE_CHECKING:
    from streaming_vlm.engine import StreamConfig

__all__ = [
    "COMMENTATOR_INSTRUCTION",
    "DataError",
    "Event",
    "LiveSports",
    "build_query",
    "find_annotations",
    "join_chunks",
    "judge_events",
    "load_events",
    "generation_record",
    "main",
    "read_predictions",
    "stream_config",
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
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:  # JSON lines
        return [row for _, row in jsonl_rows(path, DataError)]
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
    out: dict[str, str | None] = {}
    for n, row in jsonl_rows(path, DataError, "prediction file"):
        if not all(k in row for k in ("video_id", "event_id", "pred")):
            raise DataError(f"{path}: line {n} needs video_id, event_id and pred")
        pred = row["pred"]
        out[event_key(row["video_id"], row["event_id"])] = None if pred is None else str(pred)
    return out


# ------------------------------------------------------------------------------------------------------------
# generation
# ------------------------------------------------------------------------------------------------------------


def build_query(title: str, instruction: str = COMMENTATOR_INSTRUCTION) -> str:
    """LiveCC's instruction, plus ``This is a video titled "{title}".`` when the event has a title."""
    return instruction + (f'This is a video titled "{title}".\n' if title else "")


def join_chunks(texts: list[str]) -> str:
    """A span's commentary: the chunks' texts stripped and joined by single spaces, silent chunks skipped."""
    return " ".join(t.strip() for t in texts if t and t.strip())


def stream_config(settings: StreamSettings, event: Event, mode: str = "streaming",
                  generation_defaults: Mapping[str, Any] | None = None) -> StreamConfig:
    """The ``StreamConfig`` of one event: the settings' instruction (LiveCC's) with the event's title as the query,
    the pre-event transcript as previous text; top_p/top_k from ``generation_defaults`` where the settings leave
    them unset."""
    return settings.stream_config(mode, previous_text=event.preasr_text, query=build_query(event.title, settings.query),
                                  generation_defaults=generation_defaults)


# What the generation record holds that it did not before the harness, with the value every run then used:
# written only where a run differs, so a folder generated before still resumes exactly when it would stream the
# same. Before, top_p/top_k were never applied (1.0 and 0 apply nothing); None now takes the checkpoint's
# generation config, recorded as such.
def _unrecorded_before(settings: StreamSettings) -> dict[str, Any]:
    return {"min_pixels": min(MIN_PIXELS, settings.max_pixels), "system_prompt": DEFAULT_SYSTEM_PROMPT,
            "reset_every": DEFAULTS.reset_every, "top_p": 1.0, "top_k": 0}


def generation_record(settings: StreamSettings, model: str, mode: str) -> dict[str, Any]:
    """What a folder's predictions were generated with (``{model_name}.generation.json``): a rerun with other
    values is refused."""
    s = settings
    record = {
        "model": model, "mode": mode, "instruction": s.query, "temperature": s.temperature,
        "repetition_penalty": s.repetition_penalty, "max_new_tokens": s.max_new_tokens, "seed": s.seed,
        "max_pixels": s.max_pixels, "fps": s.fps, "chunk_seconds": s.chunk_seconds, "vision_window": s.vision_window,
        "text_rounds": s.text_rounds, "text_sink": s.text_sink, "text_window": s.text_window,
    }  # fmt: skip
    for key, before in _unrecorded_before(s).items():
        if (value := getattr(s, key)) != before:
            record[key] = "generation config" if value is None else value
    return record


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
# the benchmark
# ------------------------------------------------------------------------------------------------------------


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


def _generates(args: argparse.Namespace) -> bool:
    return args.phase in ("all", "generate") and not args.predictions


def _validate(args: argparse.Namespace) -> None:
    judge = args.phase in ("all", "judge")
    if args.predictions and args.phase == "generate":
        raise DataError("--predictions is for judging; phase generate needs --model")
    if _generates(args) and not args.model:
        raise DataError("phase generate needs --model (or pass --predictions to judge an existing file)")
    if not args.model_name:
        raise DataError("name the predictions with --model-name (or pass --model or --predictions)")
    if judge and not args.baseline:
        raise DataError("phase judge needs --baseline, the baseline's captions in LiveCC's JSONL format")
    if judge and not Path(args.baseline).is_file():
        raise DataError(f"--baseline not found: {args.baseline}")


def _stream_settings_path(out: Path, model_name: str) -> Path:
    return out / f"{model_name}.stream_settings.json"


def _judge_phase(args: argparse.Namespace, events: list[Event], out: Path) -> dict[str, Any]:
    """Phase ``judge``: the verdicts file and the results document (written; also returned)."""
    pred_path = Path(args.predictions) if args.predictions else out / f"{args.model_name}.jsonl"
    if not pred_path.is_file():
        raise DataError(f"no predictions to judge: {pred_path} (run phase generate first, or pass --predictions)")
    model_preds = read_predictions(pred_path)
    baseline_preds = read_predictions(args.baseline)
    if args.model_name == args.baseline_name:
        raise DataError(f"the model and the baseline have the same name {args.model_name!r}; set --model-name")
    config = JudgeConfig.from_args(args, "judge", cache_path=args.judge_cache or str(out / "judge_cache.jsonl"))
    judge = Judge(config, LIVECC_RUBRIC)
    outcome = judge_events(judge, events, model_preds, baseline_preds, args.model_name, args.baseline_name,
                           progress=not args.quiet)
    stem = f"{args.baseline_name}_{args.model_name}"
    verdicts_path = write_jsonl(out / "judges" / f"{stem}.jsonl", outcome.records)

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
    if not args.predictions:  # generated here: with which settings
        generation = out / f"{args.model_name}.generation.json"
        if generation.is_file():
            results["generation"] = json.loads(generation.read_text(encoding="utf-8"))
        stream_settings = _stream_settings_path(out, args.model_name)
        if stream_settings.is_file():  # stream_settings and their sources (folders generated since the harness)
            results.update(json.loads(stream_settings.read_text(encoding="utf-8")))
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
    return results


class LiveSports(harness.Benchmark):
    """``streaming-vlm eval livesports``: the events are the items of the group ``{model_name}`` (in
    ``OUTPUT_DIR/generate``), generated unless ``--phase judge`` or ``--predictions``; scoring exports the LiveCC
    predictions and judges them. The stream settings go with the predictions
    (``{model_name}.stream_settings.json``) and into the judge's results."""

    name = "livesports"
    description = (
        "LiveSports-3K-CC: streaming commentary for every event (begin to end, with the event title and the "
        "transcript before it as context), then LiveCC's pairwise judging against a baseline's captions (both "
        "orders; win rate over 2N judgements). Writes LiveCC-format predictions, per-event verdicts and a results "
        "JSON, and prints a table. Under torchrun, events are split over ranks."
    )
    settings_use = harness.SettingsUse(exclude=("query", "total_pixels", "max_frames"),
                                       protocol={"query": COMMENTATOR_INSTRUCTION})
    model_required = False  # judging a file needs no model
    out_flag = "--output-dir"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        data = p.add_argument_group("data")
        data.add_argument(
            "--data-dir", default=None,
            help=f"local copy of {HF_DATASET} (default ${ENV_VAR}): holds {ANNOTATION_FILE} (or the parquet "
            f"conversion) and videos/",
        )  # fmt: skip
        data.add_argument("--annotations", default=None,
                          help="annotation file to use instead of the one in --data-dir")
        data.add_argument("--video-dir", default=None,
                          help="folder of the videos (default DATA_DIR/videos or DATA_DIR)")
        data.add_argument("--split", default="test", help="split of the parquet layout (default test)")
        data.add_argument("--limit", type=positive_int, default=None, help="only the first N events (smoke runs)")

        run = p.add_argument_group("run")
        run.add_argument("--phase", choices=("all", "generate", "judge"), default="all", help="default all")
        run.add_argument("--output-dir", default="results/livesports3k", help="default results/livesports3k")
        run.add_argument(
            "--model-name", default=None,
            help="name of the predictions and in the results (default: the --model or --predictions basename)",
        )  # fmt: skip
        run.add_argument(
            "--predictions", default=None,
            help="judge this LiveCC-format JSONL ({video_id, event_id, begin, end, pred}) instead of generating",
        )  # fmt: skip
        run.add_argument("--mode", choices=("streaming", "full", "sliding", "recompute"), default="streaming",
                         help="cache mode of every event's stream (default streaming)")

        jud = add_chat_arguments(p, "judge", flag_prefix="--judge-", model_default=LIVECC_JUDGE_MODEL,
                                 model_help=f"chat model of the judge (default {LIVECC_JUDGE_MODEL})", timeout_s=60.0)
        jud.add_argument("--baseline", default=None,
                         help="the baseline's captions, LiveCC-format JSONL (phase judge)")
        jud.add_argument("--baseline-name", default=None, help="default: the --baseline file's stem")
        jud.add_argument("--judge-seed", type=int, default=42, help="default 42, as LiveCC")
        jud.add_argument("--judge-max-tokens", type=positive_int, default=16, help="reply budget (default 16)")
        jud.add_argument("--judge-cache", default=None,
                         help="reply cache JSONL (default OUTPUT_DIR/judge_cache.jsonl)")

    def items(self, run: harness.Run) -> dict[str, list[dict]] | None:
        args = run.args
        _names(args)
        _validate(args)
        annotations, self.video_dir = _data_paths(args)
        self.events = load_events(annotations)[: args.limit]
        if not _generates(args):
            return None
        _check_videos(self.events, self.video_dir)
        self.by_key = {ev.key: ev for ev in self.events}
        return {args.model_name: [{"id": ev.key} for ev in self.events]}

    def records_dir(self, run: harness.Run) -> Path:
        return Path(run.args.output_dir) / "generate"

    def resume_path(self, run: harness.Run) -> Path:
        return Path(run.args.output_dir) / f"{run.args.model_name}.generation.json"

    def resume_record(self, run: harness.Run) -> dict:
        return generation_record(run.settings, str(run.args.model), run.args.mode)

    def run_item(self, run: harness.Run, group: str, item: dict) -> dict:
        ev = self.by_key[item["id"]]
        config = stream_config(run.settings, ev, run.args.mode, run.model.loaded.generation_defaults)
        chunks = list(run.stream(self.video_dir / ev.video, config, start=ev.begin, end=ev.end))
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

    def score(self, run: harness.Run, records: dict[str, list[dict]] | None) -> dict:
        args, out = run.args, Path(run.args.output_dir)
        if records is not None:
            predictions = out / f"{args.model_name}.jsonl"
            write_jsonl(predictions, ({k: r[k] for k in PRED_COLUMNS} for r in records[args.model_name]))  # LiveCC's
            write_results(_stream_settings_path(out, args.model_name), run.settings_record())
            print(f"wrote {predictions} ({len(records[args.model_name])} events)")
        return {} if args.phase == "generate" else _judge_phase(args, self.events, out)

    def table(self, results: dict) -> str:
        return format_table(table_rows(results)) if "summary" in results else ""

    def error_exit(self, exc: Exception) -> tuple[int, str] | None:
        if isinstance(exc, JudgeError):
            return 1, f"{exc} (judgements so far are cached; rerun to resume)"
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """``streaming-vlm eval livesports ARGV``; the exit status."""
    return harness.run(LiveSports(), argv)


if __name__ == "__main__":
    sys.exit(main())
