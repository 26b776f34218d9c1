"""The live server's capacity benchmark and its soak, through the real server over its public API.

``scripts/bench_serve.py`` runs this. It drives ``streaming-vlm serve`` as users would: the server is a subprocess
(``python -m streaming_vlm serve --model M`` on 127.0.0.1, a free port, stopped by its PID); each session is made
with ``POST /api/sessions`` on its own synthetic stream (``streaming-vlm synth --split test``) under the media
root, played at wall-clock pace (a file source with ``realtime``: with the demo model's 1-s chunks, one chunk per
second), its events are read on its WebSocket, and a question is sent on that socket every ``question_every_s``
seconds (the sessions' questions spread over that period). Two runs:

- **capacity** (:func:`run_capacity`): for each ``N`` of a ramp, a fresh server (so that its memory is that of
  ``N`` sessions alone), one warm-up session (the bundled clip, not paced, one question: the model's first calls;
  left out of every figure), the idle RSS, then ``N`` sessions started together (created back to back: their
  chunks complete at nearly the same instants, the worst phase for lag), each for the level's duration. The ramp
  stops after ``stop_after_failures`` consecutive levels not served in real time.
- **soak** (:func:`run_soak`): one session for an hour on a fresh server (after the same warm-up), the RSS
  sampled every ``sample_s`` seconds.

Definitions (also in docs/serve.md, "Capacity"). Chunk numbers are the server's event fields: ``latency_s`` (the
model's time for the chunk), ``lag_s`` (from the chunk being complete to the worker taking it) and ``delay_s``
(from complete to its commentary being done: lag plus model time; the lag a viewer sees, called *commentary lag*).

- **Time to first answer token** (``ttft_s``, the client's clock): from sending the question on the WebSocket to
  receiving its first ``token`` event, or its ``answer`` event when the answer streamed no token (an empty
  answer). It includes the wait for the next chunk (up to one chunk), the turns of other sessions and the prefill.
  The server's own ``first_token_s`` (from the answering step's start) and ``wait_s`` (from the question's
  arrival) are recorded beside it.
- **A session is served in real time** when it ended with ``end of stream``, every chunk of its stream was
  commented on (none skipped, none missing) and the 95th percentile of its commentary lag is below ``max_lag_s``
  (2 s). **A level is served in real time** when all its ``N`` sessions are. The capacity is the largest ``N``
  served in real time by a level of at least ``CAPACITY_MIN_S`` (10 minutes).
- **Steady RSS** of a level: the median of the server's RSS samples in the second half of the level (the caches
  are full long before). **Memory per extra session**: the least-squares slope of steady RSS against ``N`` over
  the levels (each on its own fresh server).
- **Soak**: warm-up = the first ``warmup_s`` (5 minutes); **RSS growth** = (median RSS of the last
  ``window_s`` of the run - median RSS of the first ``window_s`` after warm-up) / the latter, in percent (the
  target: < 1 %); the linear trend after warm-up in MB per hour beside it; latency flatness: the median chunk
  latency of the last window over that of the first window after warm-up.

Percentiles are nearest-rank (``eval.runner.percentile``). Each run's ``meta`` records the machine's state: load
averages, the CPU the whole machine, the server and other processes used (every process that used at least
``OTHER_PROCESS_MIN_CPU`` of one core, with its nice value and command line, cut to 120 characters), the server's
``OMP_NUM_THREADS`` and torch's resulting intra-op threads. Nothing here runs at import; :func:`main` is the entry.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streaming_vlm.argtypes import positive_float, positive_int
from streaming_vlm.eval import runner

CAPACITY_MIN_S = 600.0
"""A level counts towards the capacity when its sessions ran at least this long (10 minutes)."""
DEFAULT_LEVELS = (1, 2, 4, 6, 8, 10, 12, 16, 20, 24, 32)
QUESTION = "What is the score?"
OTHER_PROCESS_MIN_CPU = 0.05
"""Other processes are listed in the meta when they used at least this share of one core during the run."""
WARMUP_REQUEST = {"source": "demo", "realtime": False, "duration": 3}
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
END_SLACK_S = 60.0
"""How long after its stream's length a session may take to end before the benchmark stops it."""


class BenchError(Exception):
    """A benchmark that cannot run (a server that does not start, missing media), in one line."""


# ---- the machine -----------------------------------------------------------------------------------------------


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def process_stat(pid: int) -> tuple[float, int, int] | None:
    """``(cpu_s, nice, start_ticks)`` of process ``pid`` from ``/proc/PID/stat`` (user + system CPU seconds), or
    None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    rest = text[text.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    try:
        utime, stime, nice, start = int(rest[11]), int(rest[12]), int(rest[16]), int(rest[19])
    except (IndexError, ValueError):
        return None
    return (utime + stime) / _clock_ticks(), nice, start


def process_rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB (``/proc/PID/statm``), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cmdline(pid: int, limit: int = 120) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            text = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _machine_cpu() -> tuple[int, int, int]:
    """``(busy, niced, total)`` jiffies of the whole machine from ``/proc/stat``."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    total = sum(fields)
    return total - idle - iowait, nice, total


class MachineWatch:
    """CPU use of the machine, of one watched process (the server) and of every other process, from construction
    to each :meth:`sample`. Processes are seen only at samples: one that lived between two samples is missed."""

    def __init__(self, watched: Sequence[int] = ()) -> None:
        self.watched = set(watched) | {os.getpid()}
        self.started = time.monotonic()
        self._machine0 = self._machine_last = _machine_cpu()
        self._first: dict[tuple[int, int], float] = {}
        self._last: dict[tuple[int, int], tuple[float, int]] = {}
        self._commands: dict[tuple[int, int], str] = {}  # read when first seen: a process may be gone at the end
        self._scan()

    def _scan(self) -> None:
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            stat = process_stat(pid)
            if stat is None:
                continue
            cpu, nice, start = stat
            key = (pid, start)
            if key not in self._first:
                self._first[key] = cpu
                self._commands[key] = _cmdline(pid)
            self._last[key] = (cpu, nice)

    def sample(self) -> dict[str, float]:
        """Machine CPU since the previous sample: ``busy`` and ``niced`` (cores in use, of ``os.cpu_count()``),
        ``load1``."""
        self._scan()
        now = _machine_cpu()
        busy, niced, total = (a - b for a, b in zip(now, self._machine_last, strict=True))
        self._machine_last = now
        cores = os.cpu_count() or 1
        return {"busy_cores": round(cores * busy / total, 3) if total else 0.0,
                "niced_cores": round(cores * niced / total, 3) if total else 0.0,
                "load1": round(os.getloadavg()[0], 2)}

    def report(self) -> dict[str, Any]:
        """The whole span: the machine's mean busy and niced cores, and the other processes' CPU."""
        self._scan()
        wall = max(1e-9, time.monotonic() - self.started)
        busy, niced, total = (a - b for a, b in zip(_machine_cpu(), self._machine0, strict=True))
        cores = os.cpu_count() or 1
        others = []
        for key, (cpu, nice) in self._last.items():
            share = (cpu - self._first[key]) / wall
            if key[0] in self.watched or share < OTHER_PROCESS_MIN_CPU:
                continue
            others.append({"pid": key[0], "nice": nice, "cpu_cores": round(share, 3), "command": self._commands[key]})
        others.sort(key=lambda p: -p["cpu_cores"])
        return {"wall_s": round(wall, 1), "busy_cores": round(cores * busy / total, 3) if total else None,
                "niced_cores": round(cores * niced / total, 3) if total else None, "other_processes": others}


# ---- media -----------------------------------------------------------------------------------------------------


def prepare_streams(media_root: Path, count: int, minutes: float, *, quiet: bool = False) -> list[str]:
    """``count`` synthetic test streams of at least ``minutes`` each under ``media_root``: the first ``count`` of
    the shortest folder ``streams_<M>min`` (``M >= minutes``) that holds enough, else ``streams_<minutes>min``
    written by ``streaming-vlm synth --split test``. Their paths relative to ``media_root``."""
    folders = []
    for folder in media_root.glob("streams_*min"):
        try:
            folders.append((float(folder.name[len("streams_"):-len("min")]), folder))
        except ValueError:
            continue
    for _, folder in sorted(f for f in folders if f[0] >= minutes):
        found = _streams(folder)
        if len(found) >= count and all(length >= minutes * 60 - 1e-6 for _, length in found[:count]):
            return [str((folder / path).relative_to(media_root)) for path, _ in found[:count]]
    folder = media_root / f"streams_{minutes:g}min"
    if not quiet:
        print(f"writing {count} synthetic stream(s) of {minutes:g} min to {folder} ...", file=sys.stderr, flush=True)
    command = [sys.executable, "-m", "streaming_vlm", "synth", str(folder), "--split", "test", "--streams",
               str(count), "--minutes", f"{minutes:g}", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"streaming-vlm synth failed: {' '.join(done.stderr.strip().splitlines()[-1:])}")
    found = _streams(folder)
    if len(found) < count:
        raise BenchError(f"{folder}: synth wrote {len(found)} stream(s), {count} wanted")
    return [str((folder / path).relative_to(media_root)) for path, _ in found[:count]]


def _streams(folder: Path) -> list[tuple[str, float]]:
    """``(video path relative to folder, length s)`` of the streams in ``folder/test.jsonl`` that exist."""
    index = folder / "test.jsonl"
    if not index.is_file():
        return []
    out = []
    for line in index.read_text(encoding="utf-8").splitlines():
        try:
            video = json.loads(line)[0]["content"][0]
            path, length = video["video"], float(video["video_end"]) - float(video.get("video_start", 0.0))
        except (ValueError, LookupError, TypeError):
            continue
        if (folder / path).is_file():
            out.append((path, length))
    return out


# ---- the server ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(threads: int | None) -> dict[str, str]:
    """The server's environment: this one, with ``OMP_NUM_THREADS=threads`` when given (else as inherited)."""
    env = dict(os.environ)
    env.pop("STREAMING_VLM_TOKEN", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def torch_threads(env: dict[str, str]) -> int | None:
    """The intra-op threads torch takes in ``env`` (what the server's torch uses: it sets none of its own):
    ``OMP_NUM_THREADS`` when it is a whole number, else asked of torch in a subprocess."""
    if env.get("OMP_NUM_THREADS", "").isdigit() and int(env["OMP_NUM_THREADS"]) > 0:
        return int(env["OMP_NUM_THREADS"])
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                          capture_output=True, text=True)
    try:
        return int(done.stdout.strip())
    except ValueError:
        return None


class ServerProcess:
    """``python -m streaming_vlm serve`` on a free port of 127.0.0.1, its output in ``log``; stopped by PID."""

    def __init__(self, *, model: str, media_root: Path, max_sessions: int, log: Path, env: dict[str, str],
                 extra: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "streaming_vlm", "serve", "--model", model, "--host", "127.0.0.1",
                   "--port", str(self.port), "--media-root", str(media_root), "--max-sessions", str(max_sessions),
                   "--device", "cpu", *extra]
        with open(log, "w") as out:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Seconds until ``/health`` answered; :class:`BenchError` when the server exits or does not answer."""
        import httpx

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise BenchError(f"the server exited with {self.proc.returncode}: {self._tail()}")
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise BenchError(f"the server did not answer within {timeout:g} s: {self._tail()}")

    def _tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:]) or "(no output)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# ---- one session, as a client --------------------------------------------------------------------------------


@dataclasses.dataclass
class SessionRun:
    """What a client saw of one session."""

    request: dict[str, Any]
    id: str | None = None
    chunk_seconds: float = 1.0
    refused: str | None = None
    chunks: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    answers: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    skips: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    end: dict[str, Any] | None = None
    asked: int = 0
    created_at: float = 0.0  # time.monotonic() when the session was created
    _sent: dict[str, float] = dataclasses.field(default_factory=dict)  # ref -> monotonic time sent
    _refs: dict[str, str] = dataclasses.field(default_factory=dict)  # question_id -> ref
    _first: dict[str, float] = dataclasses.field(default_factory=dict)  # question_id -> first token seen

    def record(self, event: dict[str, Any], now: float, wall: float) -> None:
        """Take one event, received at ``now`` (monotonic) / ``wall`` (Unix time)."""
        kind = event.get("type")
        if kind == "question":
            if event.get("ref") in self._sent:
                self._refs[event["question_id"]] = event["ref"]
        elif kind == "token":
            self._first.setdefault(event["question_id"], now)
        elif kind in ("commentary", "answer"):
            row = {k: event[k] for k in ("index", "start", "latency_s", "lag_s", "delay_s", "cache_tokens",
                                         "new_tokens")}
            row["t"] = now - self.created_at
            row["delivery_s"] = wall - event["at"]
            self.chunks.append(row)
            if kind == "answer":
                qid = event["question_id"]
                first = self._first.setdefault(qid, now)
                ref = self._refs.get(qid)
                self.answers.append({"t": row["t"], "first_token_s": event["first_token_s"],
                                     "wait_s": event["wait_s"],
                                     "ttft_s": None if ref is None else first - self._sent[ref]})
        elif kind == "skipped":
            self.skips.append({"t": now - self.created_at, "start": event["start"], "count": event["count"]})
        elif kind == "error" and len(self.errors) < 20:
            self.errors.append(event.get("message", ""))
        elif kind == "end":
            self.end = {k: event.get(k) for k in ("reason", "error", "chunks", "skipped", "max_lag_s")}


async def drive_session(http, ws_base: str, run: SessionRun, *, duration_s: float, question_every_s: float | None,
                        question_offset_s: float) -> SessionRun:
    """Create ``run.request``'s session, read its events until ``end`` on its WebSocket, and ask ``QUESTION``
    at ``question_offset_s`` and every ``question_every_s`` after (none within the stream's last 5 s)."""
    import websockets

    reply = await http.post("/api/sessions", json=run.request)
    run.created_at = time.monotonic()
    if reply.status_code != 201:
        run.refused = f"{reply.status_code}: {reply.text[:200]}"
        return run
    body = reply.json()
    run.id, run.chunk_seconds = body["id"], float(body["settings"]["chunk_seconds"])
    async with websockets.connect(ws_base + body["ws"], max_size=None) as ws:

        async def ask() -> None:
            k = 0
            while question_every_s is not None:
                # the phase within a chunk spread by the golden-ratio sequence: a fixed period would ask at the
                # same point of every chunk and measure one wait for the next chunk only
                due = run.created_at + question_offset_s + k * question_every_s + (k * GOLDEN) % 1.0
                if due - run.created_at > duration_s - 5.0 and k > 0:
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                ref = f"b{k}"
                run._sent[ref] = time.monotonic()
                await ws.send(json.dumps({"type": "question", "text": QUESTION, "ref": ref}))
                run.asked += 1
                k += 1

        asker = asyncio.create_task(ask())
        try:
            async for message in ws:
                event = json.loads(message)
                run.record(event, time.monotonic(), time.time())
                if event.get("type") == "end":
                    break
        finally:
            asker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asker
    return run


async def _sampler(server: ServerProcess, watch: MachineWatch, samples: list[dict[str, Any]], t0: float,
                   every_s: float) -> None:
    while True:
        rss = process_rss_mb(server.pid)
        stat = process_stat(server.pid)
        if rss is not None and stat is not None:
            samples.append({"t": round(time.monotonic() - t0, 2), "rss_mb": round(rss, 2),
                            "server_cpu_s": round(stat[0], 2), **watch.sample()})
        await asyncio.sleep(every_s)


async def run_sessions(server: ServerProcess, requests: Sequence[dict[str, Any]], *, duration_s: float,
                       question_every_s: float | None, sample_s: float, watch: MachineWatch
                       ) -> tuple[list[SessionRun], list[dict[str, Any]], dict[str, Any]]:
    """Warm the server up, note its idle RSS, then run ``requests`` together (each for ``duration_s``) while
    sampling the server every ``sample_s``: ``(runs, samples, warmup)``. Samples' ``t`` counts from the sessions'
    start; a session not ended ``END_SLACK_S`` after its stream's length is stopped (and not served in real time)."""
    import httpx

    async with httpx.AsyncClient(base_url=server.base, timeout=30) as http:
        t0 = time.monotonic()
        warm = await drive_session(http, server.ws, SessionRun(dict(WARMUP_REQUEST)), duration_s=60.0,
                                   question_every_s=None, question_offset_s=0.0)
        if warm.refused or warm.end is None or warm.end["reason"] != "end of stream":
            raise BenchError(f"the warm-up session failed: {warm.refused or warm.end}")
        warmup = {"wall_s": round(time.monotonic() - t0, 2), "chunks": len(warm.chunks)}
        idle = []
        for _ in range(5):
            await asyncio.sleep(0.2)
            idle.append(process_rss_mb(server.pid) or math.nan)
        warmup["idle_rss_mb"] = round(statistics.median(idle), 2)
        n = len(requests)
        runs = [SessionRun(dict(r)) for r in requests]
        samples: list[dict[str, Any]] = []
        start = time.monotonic()
        sampler = asyncio.create_task(_sampler(server, watch, samples, start, sample_s))
        period = question_every_s or 0.0
        tasks = [asyncio.create_task(drive_session(http, server.ws, run, duration_s=duration_s,
                                                   question_every_s=question_every_s,
                                                   question_offset_s=min(5.0, duration_s / 4) + period * i / n))
                 for i, run in enumerate(runs)]
        _, pending = await asyncio.wait(tasks, timeout=duration_s + END_SLACK_S)
        for run in runs:  # stop what is still running: the server ends it, its client sees `end`
            if run.id is not None and run.end is None:
                await http.delete(f"/api/sessions/{run.id}")
        if pending:
            await asyncio.wait(pending, timeout=30)
        for task in tasks:
            if not task.done():
                task.cancel()
            elif task.exception() is not None:
                error = task.exception()
                raise BenchError(f"a session's client failed: {type(error).__name__}: {error}")
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    return runs, samples, warmup


# ---- summaries -------------------------------------------------------------------------------------------------


def _p(values: Sequence[float], q: float) -> float | None:
    value = runner.percentile([v for v in values if v is not None], q)
    return None if value is None else round(value, 4)


def _stats(values: Sequence[float | None], prefix: str) -> dict[str, float | None]:
    return {f"{prefix}_p50": _p(values, 50), f"{prefix}_p95": _p(values, 95)}


def session_summary(run: SessionRun, *, expected: int, max_lag_s: float) -> dict[str, Any]:
    """One session's numbers and verdict: ``served_realtime`` and, when not, ``why`` (see the module doc)."""
    chunks, answers = run.chunks, run.answers
    skipped = sum(s["count"] for s in run.skips)
    out: dict[str, Any] = {"id": run.id, "source": run.request.get("source"), "chunks": len(chunks),
                           "expected": expected, "skipped": skipped,
                           "missing": max(0, expected - len(chunks) - skipped),
                           **_stats([c["latency_s"] for c in chunks], "latency"),
                           **_stats([c["lag_s"] for c in chunks], "lag"),
                           **_stats([c["delay_s"] for c in chunks], "delay"),
                           "delay_max": _p([c["delay_s"] for c in chunks], 100),
                           **_stats([c["delivery_s"] for c in chunks], "delivery"),
                           "asked": run.asked, "answered": len(answers),
                           **_stats([a["ttft_s"] for a in answers], "ttft"),
                           **_stats([a["first_token_s"] for a in answers], "first_token"),
                           "cache_tokens_max": max((c["cache_tokens"] for c in chunks), default=None),
                           "end": (run.end or {}).get("reason") if not run.refused else f"refused {run.refused}"}
    why = []
    if out["end"] != "end of stream":
        why.append(f"ended: {out['end']}")
    if skipped:
        why.append(f"{skipped} chunk(s) skipped")
    if out["missing"]:
        why.append(f"{out['missing']} chunk(s) missing")
    if out["delay_p95"] is None or out["delay_p95"] >= max_lag_s:
        why.append(f"commentary lag p95 {out['delay_p95']} s >= {max_lag_s:g} s")
    out["served_realtime"] = not why
    out["why"] = why
    return out


def _steady(samples: Sequence[dict[str, Any]], duration_s: float, key: str = "rss_mb") -> float | None:
    late = [s[key] for s in samples if s["t"] >= duration_s / 2]
    return round(statistics.median(late), 2) if late else None


def _server_cores(samples: Sequence[dict[str, Any]], duration_s: float) -> float | None:
    """Mean cores the server used over the second half of a level (of ``samples`` from ``duration_s / 2``)."""
    late = [s for s in samples if s["t"] >= duration_s / 2]
    if len(late) < 2 or late[-1]["t"] <= late[0]["t"]:
        return None
    return round((late[-1]["server_cpu_s"] - late[0]["server_cpu_s"]) / (late[-1]["t"] - late[0]["t"]), 3)


def level_summary(n: int, runs: Sequence[SessionRun], samples: Sequence[dict[str, Any]], warmup: dict[str, Any],
                  *, duration_s: float, max_lag_s: float) -> dict[str, Any]:
    """A level of ``n`` sessions: per-session summaries, pooled percentiles over all its chunks and answers,
    fairness (the spread across sessions), the server's memory and CPU, and the verdict."""
    expected = math.ceil(duration_s / (runs[0].chunk_seconds if runs else 1.0) - 1e-9)
    sessions = [session_summary(r, expected=expected, max_lag_s=max_lag_s) for r in runs]
    chunks = [c for r in runs for c in r.chunks]
    answers = [a for r in runs for a in r.answers]
    steady = _steady(samples, duration_s)
    idle = warmup["idle_rss_mb"]
    p95s = [s["delay_p95"] for s in sessions if s["delay_p95"] is not None]
    return {
        "n": n, "duration_s": duration_s, "served_realtime": all(s["served_realtime"] for s in sessions),
        "sessions_served_realtime": sum(s["served_realtime"] for s in sessions),
        **_stats([c["latency_s"] for c in chunks], "latency"), **_stats([c["lag_s"] for c in chunks], "lag"),
        **_stats([c["delay_s"] for c in chunks], "delay"), "delay_max": _p([c["delay_s"] for c in chunks], 100),
        "worst_session_delay_p95": max(p95s, default=None), "best_session_delay_p95": min(p95s, default=None),
        **_stats([a["ttft_s"] for a in answers], "ttft"), **_stats([a["first_token_s"] for a in answers],
                                                                   "first_token"),
        **_stats([c["delivery_s"] for c in chunks], "delivery"),
        "chunks": len(chunks), "skipped": sum(s["skipped"] for s in sessions),
        "chunks_min": min((s["chunks"] for s in sessions), default=0),
        "chunks_max": max((s["chunks"] for s in sessions), default=0),
        "asked": sum(s["asked"] for s in sessions), "answered": len(answers),
        "idle_rss_mb": idle, "steady_rss_mb": steady,
        "peak_rss_mb": max((s["rss_mb"] for s in samples), default=None),
        "rss_per_session_mb": None if steady is None else round((steady - idle) / n, 3),
        "server_cores": _server_cores(samples, duration_s),
        "machine_busy_cores": _steady(samples, duration_s, "busy_cores"),
        "machine_niced_cores": _steady(samples, duration_s, "niced_cores"),
        "load1": _steady(samples, duration_s, "load1"),
        "warmup": warmup, "sessions": sessions, "samples": list(samples),
    }


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Least-squares ``(slope, intercept)``; None with fewer than two distinct x."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


def capacity_summary(levels: Sequence[dict[str, Any]], target: int = 8) -> dict[str, Any]:
    """Across every level of every run: the capacity (largest N served in real time by a level of at least
    ``CAPACITY_MIN_S``), the largest at any length, and memory per extra session."""
    def largest(ok) -> int:
        return max((lv["n"] for lv in levels if ok(lv)), default=0)

    full = largest(lambda lv: lv["served_realtime"] and lv["duration_s"] >= CAPACITY_MIN_S)
    points = [(lv["n"], lv["steady_rss_mb"]) for lv in levels if lv["steady_rss_mb"] is not None]
    fit = fit_line([p[0] for p in points], [p[1] for p in points])
    return {
        "capacity_sessions": full, "capacity_min_s": CAPACITY_MIN_S, "target_sessions": target,
        "meets_target": full >= target,
        "largest_served_any_length": largest(lambda lv: lv["served_realtime"]),
        "smallest_failed_any_length": min((lv["n"] for lv in levels if not lv["served_realtime"]), default=None),
        "rss_per_session_mb": None if fit is None else round(fit[0], 3),
        "rss_intercept_mb": None if fit is None else round(fit[1], 2),
    }


def soak_summary(run: SessionRun, samples: Sequence[dict[str, Any]], *, duration_s: float, warmup_s: float,
                 window_s: float, max_lag_s: float) -> dict[str, Any]:
    """RSS growth and latency flatness after warm-up (see the module doc), and the session's own summary."""
    expected = math.ceil(duration_s / run.chunk_seconds - 1e-9)
    session = session_summary(run, expected=expected, max_lag_s=max_lag_s)
    after = [s for s in samples if s["t"] >= warmup_s]
    end = max((s["t"] for s in samples), default=0.0)
    first = [s["rss_mb"] for s in after if s["t"] < warmup_s + window_s]
    last = [s["rss_mb"] for s in after if s["t"] >= end - window_s]
    base = statistics.median(first) if first else None
    final = statistics.median(last) if last else None
    growth = None if base is None or final is None else 100.0 * (final - base) / base
    trend = fit_line([s["t"] for s in after], [s["rss_mb"] for s in after])
    lat_first = [c["latency_s"] for c in run.chunks if warmup_s <= c["start"] < warmup_s + window_s]
    lat_last = [c["latency_s"] for c in run.chunks if c["start"] >= duration_s - window_s]
    m_first, m_last = _p(lat_first, 50), _p(lat_last, 50)
    return {
        "duration_s": duration_s, "warmup_s": warmup_s, "window_s": window_s,
        "rss_start_mb": samples[0]["rss_mb"] if samples else None,
        "rss_after_warmup_mb": None if base is None else round(base, 2),
        "rss_end_mb": None if final is None else round(final, 2),
        "rss_growth_pct": None if growth is None else round(growth, 3),
        "rss_growth_ok": growth is not None and growth < 1.0,
        "rss_trend_mb_per_h": None if trend is None else round(trend[0] * 3600, 3),
        "rss_min_after_warmup_mb": min((s["rss_mb"] for s in after), default=None),
        "rss_max_after_warmup_mb": max((s["rss_mb"] for s in after), default=None),
        "latency_p50_first_window": m_first, "latency_p50_last_window": m_last,
        "latency_ratio_last_vs_first": None if not m_first or m_last is None else round(m_last / m_first, 3),
        "server_cores": _server_cores(after, 0.0), "session": session,
    }


def per_minute(run: SessionRun) -> list[dict[str, Any]]:
    """The soak's chunks by minute of stream time: count, latency, lag and commentary lag percentiles, skips,
    answers' time to first token, and the largest cache."""
    minutes: dict[int, dict[str, list]] = {}
    for c in run.chunks:
        minutes.setdefault(int(c["start"] // 60), {"c": [], "a": [], "s": []})["c"].append(c)
    for a in run.answers:
        m = int(a["t"] // 60)
        if m in minutes:
            minutes[m]["a"].append(a)
    for s in run.skips:
        minutes.setdefault(int(s["start"] // 60), {"c": [], "a": [], "s": []})["s"].append(s)
    rows = []
    for m in sorted(minutes):
        c, a = minutes[m]["c"], minutes[m]["a"]
        rows.append({"minute": m, "chunks": len(c), "skipped": sum(s["count"] for s in minutes[m]["s"]),
                     **_stats([x["latency_s"] for x in c], "latency"), **_stats([x["lag_s"] for x in c], "lag"),
                     **_stats([x["delay_s"] for x in c], "delay"), **_stats([x["ttft_s"] for x in a], "ttft"),
                     "cache_tokens_max": max((x["cache_tokens"] for x in c), default=None)})
    return rows


# ---- runs ------------------------------------------------------------------------------------------------------


def run_meta(args: argparse.Namespace, env: dict[str, str], kind: str) -> dict[str, Any]:
    import importlib.metadata as md

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {
        "kind": kind, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python scripts/bench_serve.py " + " ".join(sys.argv[1:]) if sys.argv[0].endswith(
            "bench_serve.py") else None,
        "model": args.model, "device": "cpu", "max_lag_s": args.max_lag_s, "question": QUESTION,
        "question_every_s": args.question_every_s, "sample_s": args.sample_s,
        "server_extra_args": list(args.server_arg or []),
        "server_omp_num_threads": env.get("OMP_NUM_THREADS"), "server_torch_threads": torch_threads(env),
        "cpu_count": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "platform": platform.platform(), "torch": version("torch"),
        "transformers": version("transformers"), "uvicorn": version("uvicorn"), "fastapi": version("fastapi"),
    }


def _finish_meta(meta: dict[str, Any], watch: MachineWatch) -> None:
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["machine"] = watch.report()
    meta["shared_machine"] = bool(meta["machine"]["other_processes"])


def run_capacity(args: argparse.Namespace) -> dict[str, Any]:
    """The ramp (see the module doc): a run's document ``{"meta", "levels"}``."""
    media = Path(args.media).resolve()
    duration_s = round(args.minutes * 60.0, 3)
    sources = prepare_streams(media, max(args.levels), args.minutes, quiet=args.quiet)
    env = server_env(args.server_threads)
    meta = run_meta(args, env, "capacity") | {"minutes": args.minutes, "levels_asked": list(args.levels)}
    watch = MachineWatch()
    levels: list[dict[str, Any]] = []
    failures = 0
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as scratch:
        for n in args.levels:
            server = ServerProcess(model=args.model, media_root=media, max_sessions=n, env=env,
                                   log=Path(scratch) / f"server-{n}.log", extra=args.server_arg or ())
            watch.watched.add(server.pid)
            try:
                ready_s = server.wait_ready()
                requests = [{"source": src, "duration": duration_s} for src in sources[:n]]
                runs, samples, warmup = asyncio.run(run_sessions(
                    server, requests, duration_s=duration_s, question_every_s=args.question_every_s,
                    sample_s=args.sample_s, watch=watch))
            finally:
                server.stop()
            level = level_summary(n, runs, samples, warmup | {"server_ready_s": round(ready_s, 2)},
                                  duration_s=duration_s, max_lag_s=args.max_lag_s)
            levels.append(level)
            if not args.quiet:
                print(_level_line(level), file=sys.stderr, flush=True)
            failures = 0 if level["served_realtime"] else failures + 1
            if failures >= args.stop_after_failures:
                break
    _finish_meta(meta, watch)
    return {"meta": meta, "levels": levels}


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """One session for ``args.minutes`` (see the module doc): ``{"meta", "summary", "samples", "minutes"}``."""
    media = Path(args.media).resolve()
    duration_s = round(args.minutes * 60.0, 3)
    source = prepare_streams(media, 1, args.minutes, quiet=args.quiet)[0]
    env = server_env(args.server_threads)
    meta = run_meta(args, env, "soak") | {"minutes": args.minutes, "source": source}
    watch = MachineWatch()
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as scratch:
        server = ServerProcess(model=args.model, media_root=media, max_sessions=1, env=env,
                               log=Path(scratch) / "server.log", extra=args.server_arg or ())
        watch.watched.add(server.pid)
        try:
            ready_s = server.wait_ready()
            runs, samples, warmup = asyncio.run(run_sessions(
                server, [{"source": source, "duration": duration_s}], duration_s=duration_s,
                question_every_s=args.question_every_s, sample_s=args.sample_s, watch=watch))
        finally:
            server.stop()
    _finish_meta(meta, watch)
    meta["warmup"] = warmup | {"server_ready_s": round(ready_s, 2)}
    summary = soak_summary(runs[0], samples, duration_s=duration_s, warmup_s=args.warmup_minutes * 60.0,
                           window_s=args.window_minutes * 60.0, max_lag_s=args.max_lag_s)
    return {"meta": meta, "summary": summary, "minutes": per_minute(runs[0]), "samples": samples}


def _level_line(level: dict[str, Any]) -> str:
    return (f"N={level['n']:>3}  {'real time' if level['served_realtime'] else 'NOT real time':<13}  "
            f"latency p50/p95 {level['latency_p50']}/{level['latency_p95']} s  "
            f"commentary lag p50/p95 {level['delay_p50']}/{level['delay_p95']} s  skipped {level['skipped']}  "
            f"TTFT p50/p95 {level['ttft_p50']}/{level['ttft_p95']} s  RSS {level['steady_rss_mb']} MB")


# ---- tables and figures --------------------------------------------------------------------------------------


def capacity_table(doc: dict[str, Any]) -> str:
    """The README's table: one row per level (every run), markdown."""
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{1000 * x:.0f}"

    rows = ["| sessions | torch threads | minutes | real time | chunk latency p50 / p95 (ms) | lag p50 / p95 (ms) | "
            "commentary lag p50 / p95 (ms), worst session p95 | skipped | TTFT p50 / p95 (ms) | server RSS (MB) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for lv in sorted(_levels(doc), key=lambda lv: (str(lv["threads"]), lv["n"], lv["duration_s"])):
        rows.append(f"| {lv['n']} | {lv['threads']} | {lv['duration_s'] / 60:g} | "
                    f"{'yes' if lv['served_realtime'] else 'no'} | "
                    f"{ms(lv['latency_p50'])} / {ms(lv['latency_p95'])} | {ms(lv['lag_p50'])} / {ms(lv['lag_p95'])} | "
                    f"{ms(lv['delay_p50'])} / {ms(lv['delay_p95'])}, {ms(lv['worst_session_delay_p95'])} | "
                    f"{lv['skipped']} of {lv['chunks'] + lv['skipped']} | "
                    f"{ms(lv['ttft_p50'])} / {ms(lv['ttft_p95'])} | "
                    f"{lv['steady_rss_mb']:.0f} |")
    return "\n".join(rows)


def _levels(doc: dict[str, Any], threads: Any = "all") -> list[dict[str, Any]]:
    """Every level of every run, each with its run's ``threads`` (the server's torch threads); only those with
    ``threads`` when given."""
    return [lv | {"threads": run["meta"]["server_torch_threads"]} for run in doc["runs"] for lv in run["levels"]
            if threads == "all" or run["meta"]["server_torch_threads"] == threads]


def summarize_runs(doc: dict[str, Any], target: int = 8) -> dict[str, Any]:
    """The document's summary: :func:`capacity_summary` over the levels run with the last run's server threads
    (the headline setting, ``server_torch_threads``), and the same for every other thread setting measured."""
    headline = doc["runs"][-1]["meta"]["server_torch_threads"]
    others = sorted({run["meta"]["server_torch_threads"] for run in doc["runs"]} - {headline}, key=str)
    return {"server_torch_threads": headline, **capacity_summary(_levels(doc, headline), target=target),
            "other_threads": {str(t): capacity_summary(_levels(doc, t), target=target) for t in others}}


def capacity_figure(doc: dict[str, Any], path: Path) -> Path:
    """Against the number of sessions (the levels run with the headline server threads): commentary lag, skipped
    chunks, chunk latency and time to first answer token, and server RSS with its fit. Levels of 10 minutes or
    more drawn filled and solid, shorter (screening) ones hollow and dotted; levels not in real time crossed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = doc.get("summary") or summarize_runs(doc)
    levels = _levels(doc, summary["server_torch_threads"])
    fig, grid = plt.subplots(2, 2, figsize=(13, 9))
    lag_ax, skip_ax, time_ax, rss_ax = grid.flat
    crossed = False
    for full in (False, True):
        group = sorted((lv for lv in levels if (lv["duration_s"] >= CAPACITY_MIN_S) == full), key=lambda lv: lv["n"])
        if not group:
            continue
        ns = [lv["n"] for lv in group]
        style = {"marker": "o", "markerfacecolor": None if full else "none", "linestyle": "-" if full else ":"}
        tag = "10 min" if full else "screening"
        lag_ax.plot(ns, [lv["delay_p50"] for lv in group], color="tab:blue", label=f"p50 ({tag})", **style)
        lag_ax.plot(ns, [lv["delay_p95"] for lv in group], color="tab:orange", label=f"p95 ({tag})", **style)
        lag_ax.plot(ns, [lv["worst_session_delay_p95"] for lv in group], color="tab:red",
                    label=f"worst session's p95 ({tag})", **style)
        skip_ax.plot(ns, [100.0 * lv["skipped"] / max(1, lv["chunks"] + lv["skipped"]) for lv in group],
                     color="tab:red", label=f"skipped ({tag})", **style)
        for ax, key in ((lag_ax, "worst_session_delay_p95"), (skip_ax, None)):
            bad = [lv for lv in group if not lv["served_realtime"]]
            ys = [lv[key] or 0.0 for lv in bad] if key else [100.0 * lv["skipped"] / max(1, lv["chunks"] +
                                                                                          lv["skipped"]) for lv in bad]
            ax.scatter([lv["n"] for lv in bad], ys, marker="x", s=90, color="black", zorder=5,
                       label=None if crossed or not bad or ax is skip_ax else "not in real time")
        crossed = crossed or any(not lv["served_realtime"] for lv in group)
        time_ax.plot(ns, [lv["latency_p50"] for lv in group], color="tab:blue", label=f"chunk latency p50 ({tag})",
                     **style)
        time_ax.plot(ns, [lv["latency_p95"] for lv in group], color="tab:cyan", label=f"chunk latency p95 ({tag})",
                     **style)
        time_ax.plot(ns, [lv["ttft_p50"] for lv in group], color="tab:green", label=f"TTFT p50 ({tag})", **style)
        time_ax.plot(ns, [lv["ttft_p95"] for lv in group], color="tab:olive", label=f"TTFT p95 ({tag})", **style)
        rss_ax.plot(ns, [lv["steady_rss_mb"] for lv in group], color="tab:purple", label=f"steady RSS ({tag})",
                    **style)
    max_lag = doc["runs"][-1]["meta"]["max_lag_s"]
    lag_ax.axhline(max_lag, color="gray", linestyle="--", linewidth=1, label=f"{max_lag:g} s")
    lag_ax.set(title="commentary lag (chunk complete -> its commentary done)", ylabel="s", yscale="log")
    skip_ax.set(title="chunks skipped (real time needs none)", ylabel="% of the chunks")
    time_ax.set(title="chunk latency (model time) and time to first answer token", ylabel="s", yscale="log")
    if summary["rss_per_session_mb"] is not None:
        xs = sorted({lv["n"] for lv in levels})
        rss_ax.plot(xs, [summary["rss_intercept_mb"] + summary["rss_per_session_mb"] * x for x in xs],
                    color="gray", linestyle="--", label=f"fit: {summary['rss_per_session_mb']:.2f} MB per session")
    rss_ax.set(title="server resident memory (second half of each level)", ylabel="MiB")
    for ax in grid.flat:
        ax.set_xlabel("sessions")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    meta = doc["runs"][-1]["meta"]
    fig.suptitle(f"streaming-vlm serve, {meta['model']} on {meta['cpu_count']} CPU cores, "
                 f"{summary['server_torch_threads']} torch thread(s), sessions at 1 chunk/s: "
                 f"{summary['capacity_sessions']} served in real time for 10 minutes")
    fig.tight_layout()
    return runner.save_figure(fig, path)


def soak_figure(doc: dict[str, Any], path: Path) -> Path:
    """The soak: server RSS against time (warm-up shaded, +-1 % band around the RSS after warm-up) and the
    per-minute chunk latency and commentary lag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, samples, minutes = doc["summary"], doc["samples"], doc["minutes"]
    fig, axes = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    ax = axes[0]
    ax.plot([x["t"] / 60 for x in samples], [x["rss_mb"] for x in samples], color="tab:purple", label="server RSS")
    ax.axvspan(0, s["warmup_s"] / 60, color="gray", alpha=0.15, label="warm-up")
    if s["rss_after_warmup_mb"] is not None:
        base = s["rss_after_warmup_mb"]
        ax.axhspan(base * 0.99, base * 1.01, color="tab:green", alpha=0.12, label="+-1 % of the RSS after warm-up")
    ax.set(ylabel="MiB", title=f"server RSS: {s['rss_growth_pct']} % growth after warm-up "
                               f"(trend {s['rss_trend_mb_per_h']} MB/h)")
    ax = axes[1]
    xs = [m["minute"] + 0.5 for m in minutes]
    ax.plot(xs, [m["latency_p50"] for m in minutes], color="tab:blue", label="chunk latency p50")
    ax.plot(xs, [m["latency_p95"] for m in minutes], color="tab:cyan", label="chunk latency p95")
    ax.plot(xs, [m["delay_p95"] for m in minutes], color="tab:orange", label="commentary lag p95")
    ax.set(xlabel="minutes", ylabel="s (per minute of stream)", yscale="log", title="latency per minute")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    meta = doc["meta"]
    fig.suptitle(f"streaming-vlm serve soak: one session, {meta['minutes']:g} min, {meta['model']} on "
                 f"{meta['cpu_count']} CPU cores")
    fig.tight_layout()
    return runner.save_figure(fig, path)


# ---- entry -----------------------------------------------------------------------------------------------------


def _levels_arg(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be whole numbers separated by commas, got {text!r}") from None
    if not levels or any(n < 1 for n in levels) or levels != sorted(set(levels)):
        raise argparse.ArgumentTypeError(f"levels must be increasing whole numbers >= 1, got {text!r}")
    return levels


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_serve.py",
        description="The live server's capacity (sessions served in real time) and a one-session soak, through "
                    "the real server over its public API; writes a JSON file and a figure (docs/serve.md, Capacity).")
    sub = p.add_subparsers(dest="run", required=True, metavar="RUN")
    cap = sub.add_parser("capacity", help="ramp the number of sessions, one fresh server per level")
    soak = sub.add_parser("soak", help="one session for an hour: memory growth and latency over time")
    for q, out, minutes, sample in ((cap, "figures/serve_capacity", 10.0, 5.0), (soak, "figures/serve_soak", 60.0,
                                                                                   10.0)):
        q.add_argument("--model", default="demo", help="the server's --model (default: demo)")
        q.add_argument("--minutes", type=positive_float, default=minutes,
                       help=f"length of every session (default: {minutes:g})")
        q.add_argument("--media", default="results/serve_bench/media",
                       help="the server's media root; synthetic streams are written there unless present "
                            "(default: %(default)s)")
        q.add_argument("--question-every-s", type=positive_float, default=30.0,
                       help="each session asks a question this often (default: 30)")
        q.add_argument("--max-lag-s", type=positive_float, default=2.0,
                       help="a session is served in real time when its commentary lag p95 is below this "
                            "(and it skipped no chunk) (default: 2)")
        q.add_argument("--sample-s", type=positive_float, default=sample,
                       help=f"sample the server's RSS and CPU this often (default: {sample:g})")
        q.add_argument("--server-threads", type=positive_int, default=None,
                       help="OMP_NUM_THREADS for the server (default: as inherited; unset, torch takes one "
                            "thread per core)")
        q.add_argument("--server-arg", action="append", default=None, metavar="ARG",
                       help="one more argument for `streaming-vlm serve` (repeat; e.g. --server-arg=--step-delay-s "
                            "--server-arg=0.5)")
        q.add_argument("--out", default=f"{out}.json", help="results JSON (default: %(default)s)")
        q.add_argument("--figure", default=f"{out}.png", help="figure (default: %(default)s; '' for none)")
        q.add_argument("--replot", action="store_true", help="run nothing: redraw --figure from --out")
        q.add_argument("--quiet", action="store_true", help="no progress lines")
    cap.add_argument("--levels", type=_levels_arg, default=list(DEFAULT_LEVELS),
                     help="numbers of sessions, increasing (default: %(default)s)")
    cap.add_argument("--stop-after-failures", type=positive_int, default=1,
                     help="stop the ramp after this many consecutive levels not served in real time (default: 1)")
    cap.add_argument("--append", action="store_true",
                     help="add this run's levels to --out's runs (e.g. 10-minute levels after a short screening)")
    cap.add_argument("--target", type=positive_int, default=8, help="the sessions aimed at (default: 8)")
    soak.add_argument("--warmup-minutes", type=positive_float, default=5.0,
                      help="left out of the RSS growth (default: 5)")
    soak.add_argument("--window-minutes", type=positive_float, default=5.0,
                      help="RSS growth compares the medians of the first and last windows after warm-up "
                           "(default: 5)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.run == "soak" and args.warmup_minutes + args.window_minutes > args.minutes and not args.replot:
        parser.error(f"--warmup-minutes + --window-minutes ({args.warmup_minutes + args.window_minutes:g}) must "
                     f"not exceed --minutes ({args.minutes:g})")
    try:
        if args.replot:
            if not out.is_file():
                raise BenchError(f"--replot: {out} does not exist")
            doc = json.loads(out.read_text(encoding="utf-8"))
        elif args.run == "capacity":
            run = run_capacity(args)
            runs = []
            if args.append and out.is_file():
                runs = json.loads(out.read_text(encoding="utf-8"))["runs"]
            doc = {"runs": [*runs, run]}
            doc["summary"] = summarize_runs(doc, target=args.target)
            runner.write_json(doc, out)
        else:
            doc = run_soak(args)
            runner.write_json(doc, out)
    except BenchError as exc:
        print(f"bench_serve.py: error: {exc}", file=sys.stderr)
        return 1
    if args.run == "capacity":
        doc["summary"] = summarize_runs(doc, target=doc.get("summary", {}).get("target_sessions", args.target))
        print(capacity_table(doc))
        print(json.dumps(doc["summary"], indent=1))
        if args.figure:
            capacity_figure(doc, Path(args.figure))
    else:
        print(json.dumps({k: v for k, v in doc["summary"].items() if k != "session"}, indent=1))
        if args.figure:
            soak_figure(doc, Path(args.figure))
    return 0
