"""One row per training run of the demo recipe, from each run's held-out report: does every seed meet the targets?

``python -m streaming_vlm.world.seeds REPORT [REPORT ...]`` (``scripts/train_demo_seeds.sh`` runs it on the
reports it writes). A report is what ``streaming-vlm eval synth --modes streaming`` writes for one checkpoint over
the held-out 10- and 60-minute streams (``--data DIR_10 DIR_60`` in one run, so that its ``targets`` cover both).
Each row: the run (the report's ``model``); event F1, running-score accuracy and the worst stream's accuracy on
the short (< 20 min) and on the long streams; the last/first 10-minute F1 of the long ones; the first score slips;
and ``pass`` when all four targets of the report pass (``fail`` when one fails, ``not measured`` otherwise;
``n/a``: a value that could not be measured). The last line says how many runs pass every target.
A missing or unreadable report is a one-line error (exit 2).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streaming_vlm.eval.runner import format_table
from streaming_vlm.eval.synth import LONG_STREAM_S
from streaming_vlm.world.score import Tally, rounded

COLUMNS = ("run", "F1 short", "F1 long", "score short", "worst short", "score long", "worst long",
           "last/first", "slips", "targets")


def _pooled(per_stream: dict[str, dict[str, Any]], names: Sequence[str]) -> Tally | None:
    """The scoring's own counts summed over ``names`` (None for no stream): event calls and matches as reported; the
    right scores back from each stream's rounded accuracy times its matched calls (exact below 5,000 calls)."""
    if not names:
        return None
    return Tally.pool(Tally(gt_calls=v["gt_calls"], pred_calls=v["pred_calls"], matched_gt=v["matched"],
                            matched_pred=v["matched"], fact_correct=round((v["fact_accuracy"] or 0.0) * v["matched"]))
                      for v in (per_stream[n] for n in names))


def seed_row(report: dict[str, Any]) -> dict[str, Any]:
    """The run's row (``COLUMNS``) from its report; a value that could not be measured is ``None``."""
    s = report["modes"]["streaming"]
    per_stream = s["per_stream"]
    short = [x["name"] for x in report["streams"] if x["duration_s"] < LONG_STREAM_S]
    long = [x["name"] for x in report["streams"] if x["duration_s"] >= LONG_STREAM_S]
    worst = {group: min((per_stream[n]["fact_accuracy"] for n in names
                         if per_stream[n]["fact_accuracy"] is not None), default=None)
             for group, names in (("short", short), ("long", long))}
    verdicts = [t["pass"] for t in report["targets"].values()]
    pooled = {group: _pooled(per_stream, names) for group, names in (("short", short), ("long", long))}
    f1 = {group: None if t is None else rounded(t.f1) for group, t in pooled.items()}
    score = {group: None if t is None else rounded(t.fact_accuracy) for group, t in pooled.items()}
    return {"run": report["model"], "F1 short": f1["short"], "F1 long": f1["long"],
            "score short": score["short"], "worst short": worst["short"],
            "score long": score["long"], "worst long": worst["long"],
            "last/first": s["last_vs_first_10_min"], "slips": s["score_slips"]["total"],
            "targets": "pass" if all(v is True for v in verdicts) else
            "fail" if any(v is False for v in verdicts) else "not measured"}


def load_report(path: str | Path) -> dict[str, Any]:
    """A held-out report with the streaming mode; ``ValueError`` naming the file otherwise."""
    try:
        report = json.loads(Path(path).read_text())
        report["modes"]["streaming"]["per_stream"], report["targets"], report["streams"]
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the report ({exc})") from exc
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a streaming `eval synth` report (no {exc})") from exc
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ if argv else "usage: python -m streaming_vlm.world.seeds REPORT [REPORT ...]",
              file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    try:
        rows = [seed_row(load_report(p)) for p in argv]
    except ValueError as exc:
        print(f"streaming-vlm: error: {exc}", file=sys.stderr)
        return 2
    print(format_table([{k: "n/a" if v is None else v for k, v in r.items()} for r in rows], COLUMNS))
    passed = sum(r["targets"] == "pass" for r in rows)
    print(f"{passed} of {len(rows)} run(s) meet every target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
