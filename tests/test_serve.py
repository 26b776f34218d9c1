"""``streaming-vlm serve`` end to end, through real servers on 127.0.0.1 started as subprocesses (stopped by PID).

Two servers run for the module, both on the bundled demo model (CPU, greedy): A with an access token, a media root
and small limits (3 sessions, 64 KiB frames, 40 frames/s); B without a token and with the ``--step-delay-s``
testing aid (a model slower than a sped-up source). What is checked:

- a file played at wall-clock pace yields exactly ``streaming-vlm infer``'s commentary on the same seconds;
  frames pushed over the WebSocket (raw RGB, the file's own frames and timestamps) yield it too;
- a question mid-stream is answered by the next chunk (tokens streamed, time to first token, a per-question token
  limit; options through ``choose``) and commentary resumes;
- two sessions at once each get every chunk, with identical commentary (their caches are their own);
- a model slower than the source: every chunk is delivered or reported skipped, lag stays bounded;
- access: the token (header, query, cookie; 401 otherwise, WebSocket close 1008), loopback hosts and origins,
  traversal (``..``, absolute, symlink out) refused, URL protocols limited, oversized and over-rate frames and
  garbage messages answered with error events while the session goes on, the session limit (429), a source that
  dies ends its session with a reason and the server goes on, a non-loopback bind without a token refused;
- in-process: a model error ends only its session, and the worker serves ready sessions in turn (round robin);
  ``StreamSession.step``'s ``on_token``/``max_new_tokens``;
- the curl and Python examples of docs/serve.md run as written.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
websockets = pytest.importorskip("websockets")

from streaming_vlm.cli import main as cli_main  # noqa: E402
from streaming_vlm.models import DEMO_VIDEO  # noqa: E402
from tests.test_sources import jpeg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "serve.md"
TOKEN = "test-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FRAME_LIMIT = 64 * 1024
SLOW_STEP_S = 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m streaming_vlm serve`` on a free port of 127.0.0.1, its output in a log file."""

    def __init__(self, name: str, args: list[str], workdir: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}"
        self.log = workdir / f"server-{name}.log"
        env = dict(os.environ, OMP_NUM_THREADS="1", STREAMING_VLM_TOKEN="")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streaming_vlm", "serve", "--port", str(self.port), "--device", "cpu",
                 "--log-level", "info", *args], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, headers: dict[str, str], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.base + "/health", headers=headers, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"server not up after {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """A media root with the demo clip, a subfolder and a symlink to a file outside the root."""
    base = tmp_path_factory.mktemp("serve")
    root, outside = base / "media", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(DEMO_VIDEO, root / "clip.mp4")
    shutil.copy(DEMO_VIDEO, outside / "secret.mp4")
    (root / "link.mp4").symlink_to(outside / "secret.mp4")
    (root / "notes.txt").write_text("not a video\n")
    return {"base": base, "root": root, "outside": outside}


@pytest.fixture(scope="module")
def launched(media):
    """The two servers, started (not yet ready)."""
    a = Server("a", ["--token", TOKEN, "--media-root", str(media["root"]), "--max-sessions", "3",
                     "--max-frame-bytes", str(FRAME_LIMIT), "--max-push-fps", "40"], media["base"])
    b = Server("b", ["--media-root", str(media["root"]), "--step-delay-s", str(SLOW_STEP_S)], media["base"])
    try:
        yield {"a": a, "b": b}
    finally:
        a.stop()
        b.stop()
        for server in (a, b):  # a clean shutdown on SIGTERM (uvicorn re-raises the signal once it is done)
            assert server.proc.returncode in (0, -signal.SIGTERM), server.log.read_text()[-2000:]
            assert "Application shutdown complete" in server.log.read_text()


@pytest.fixture(scope="module")
def infer_texts(launched, media) -> list[str]:
    """``streaming-vlm infer demo --duration 4``: the reference commentary (greedy), while the servers start."""
    out = media["base"] / "infer.jsonl"
    assert cli_main(["infer", "demo", "--duration", "4", "--quiet", "--device", "cpu", "--jsonl", str(out),
                     "--output", str(media["base"] / "infer.vtt")]) == 0
    return [json.loads(line)["text"] for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def servers(launched, infer_texts):
    launched["a"].wait_ready(AUTH)
    launched["b"].wait_ready({})
    return launched


def _client(server: Server, headers=AUTH) -> httpx.Client:
    return httpx.Client(base_url=server.base, headers=headers, timeout=30)


def _events(server: Server, sid: str, *, headers=AUTH, on_event=None, timeout: float = 60.0) -> list[dict]:
    """Every event of session ``sid`` over its WebSocket, until the server closes it after ``end``;
    ``on_event(ws, event)`` (async) may send messages."""

    async def run() -> list[dict]:
        events = []
        async with websockets.connect(f"{server.ws}/api/sessions/{sid}/ws", additional_headers=headers) as ws:
            async for message in ws:
                event = json.loads(message)
                events.append(event)
                if on_event is not None:
                    await on_event(ws, event)
        return events

    return asyncio.run(asyncio.wait_for(run(), timeout))


def _start(client: httpx.Client, **body) -> str:
    reply = client.post("/api/sessions", json=body)
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def _of(events: list[dict], *types: str) -> list[dict]:
    return [e for e in events if e["type"] in types]


def _check_log(events: list[dict], sid: str) -> None:
    """Numbered 1, 2, ... for this session, ``started`` first, one ``end`` last."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["session"] == sid for e in events)
    assert events[0]["type"] == "started" and events[-1]["type"] == "end"
    assert len(_of(events, "end")) == 1


# --------------------------------------------------------------------------------------------------
# commentary


def test_file_at_wall_clock_pace_matches_infer(servers, infer_texts):
    a = servers["a"]
    with _client(a) as client:
        sid = _start(client, source="demo", duration=4)
        t0 = time.monotonic()
        events = _events(a, sid)
        wall = time.monotonic() - t0
        _check_log(events, sid)
        commentary = _of(events, "commentary")
        assert [e["text"] for e in commentary] == infer_texts
        assert [(e["index"], e["start"], e["end"]) for e in commentary] == [(k, k, k + 1) for k in range(4)]
        assert not _of(events, "skipped", "error")
        assert all(0 <= e["lag_s"] < 0.5 and e["latency_s"] > 0 and e["cache_tokens"] > 0 and e["memory_mb"] > 0
                   for e in commentary)
        assert events[-1]["reason"] == "end of stream" and events[-1]["error"] is False
        assert 3.5 <= wall < 20  # paced: the last chunk is complete 4 s after the start
        started = events[0]
        assert started["settings"]["max_new_tokens"] == 12 and started["setting_sources"]["max_new_tokens"] == \
            "checkpoint"
        # the transcript: infer's JSONL records, WebVTT
        lines = client.get(f"/api/sessions/{sid}/transcript.jsonl").text.splitlines()
        assert [json.loads(line)["text"] for line in lines] == infer_texts
        vtt = client.get(f"/api/sessions/{sid}/transcript.vtt").text
        assert vtt.startswith("WEBVTT\n\n1\n00:00:00.000 --> 00:00:01.000\n")
        summary = client.get(f"/api/sessions/{sid}").json()
        assert summary["state"] == "ended" and summary["chunks"] == 4 and summary["end_reason"] == "end of stream"
        # SSE replays the same log; `since` skips what a client has
        with client.stream("GET", f"/api/sessions/{sid}/events", params={"since": 2}) as sse:
            data = [json.loads(line[6:]) for line in sse.iter_lines() if line.startswith("data: ")]
        assert data == events[2:]

        async def replay(since: int) -> list[dict]:
            url = f"{a.ws}/api/sessions/{sid}/ws?since={since}"
            async with websockets.connect(url, additional_headers=AUTH) as ws:
                return [json.loads(m) async for m in ws]

        assert asyncio.run(asyncio.wait_for(replay(3), 10)) == events[3:]
        assert client.get(f"/api/sessions/{sid}/frame.jpg").content[:2] == b"\xff\xd8"
        assert client.get(f"/api/sessions/{sid}/media", headers={"Range": "bytes=0-99"}).status_code == 206


def test_question_mid_stream_is_answered_and_commentary_resumes(servers):
    a = servers["a"]
    asked = []

    async def ask(ws, event):
        if event["type"] == "commentary" and not asked:
            asked.append(event["index"])
            await ws.send(json.dumps({"type": "question", "text": "What is the score?", "max_tokens": 3,
                                      "ref": "mine"}))
            await ws.send(json.dumps({"type": "question", "text": "Which colour?", "options": ["red", "blue"]}))

    with _client(a) as client:
        sid = _start(client, source="demo", duration=6, speed=3)
        events = _events(a, sid, on_event=ask)
    _check_log(events, sid)
    questions = _of(events, "question")
    assert [q["text"] for q in questions] == ["What is the score?", "Which colour?"]
    assert questions[0]["ref"] == "mine" and "ref" not in questions[1]
    free, choice = _of(events, "answer")
    assert (free["question_id"], choice["question_id"]) == (questions[0]["question_id"], questions[1]["question_id"])
    # free text: the next chunk's generation, streamed token by token, within the question's own token limit
    tokens = [e for e in _of(events, "token") if e["question_id"] == free["question_id"]]
    assert tokens and tokens[-1]["text"] == free["text"] and "".join(t["delta"] for t in tokens) == free["text"]
    assert max(e["seq"] for e in tokens) < free["seq"]
    assert 1 <= free["new_tokens"] <= 3
    assert 0 < free["first_token_s"] <= free["latency_s"] and free["wait_s"] >= free["first_token_s"]
    # options: choose's pick, on the chunk after
    assert choice["choice"] in (0, 1) and choice["text"] == ["red", "blue"][choice["choice"]]
    assert len(choice["logprobs"]) == 2 and choice["index"] == free["index"] + 1
    assert free["index"] > asked[0]
    # every chunk once, commentary resumes after the answers
    commentary = _of(events, "commentary")
    assert sorted(e["index"] for e in commentary + [free, choice]) == list(range(6))
    assert any(e["index"] > choice["index"] for e in commentary)
    with _client(a) as client:
        records = [json.loads(line) for line in client.get(f"/api/sessions/{sid}/transcript.jsonl").text.splitlines()]
    assert records[free["index"]]["question_id"] == free["question_id"]


def _demo_frames(seconds: float) -> list[tuple[float, np.ndarray]]:
    """The demo clip's frames (RGB) and timestamps (s from its first frame), up to ``seconds``."""
    out = []
    with av.open(str(DEMO_VIDEO)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base)
            if t >= seconds:
                out.append((t, frame.to_ndarray(format="rgb24")))  # completes the last chunk
                break
            out.append((t, frame.to_ndarray(format="rgb24")))
    t0 = out[0][0]
    return [(t - t0, img) for t, img in out]


def test_push_session_over_websocket_matches_infer(servers, infer_texts):
    a = servers["a"]
    frames = _demo_frames(4.0)[:-1]  # up to 3.875 s; the end message ends the stream at 4 s

    async def run(sid: str) -> list[dict]:
        events = []
        async with websockets.connect(f"{a.ws}/api/sessions/{sid}/ws", additional_headers=AUTH) as ev_ws, \
                websockets.connect(f"{a.ws}/api/sessions/{sid}/frames", additional_headers=AUTH) as frames_ws:
            async def expect_commentary(index: int) -> None:  # lockstep: no chunk is ever skipped
                while not any(e["type"] == "commentary" and e["index"] == index for e in events):
                    events.append(json.loads(await ev_ws.recv()))

            done = -1
            for t, img in frames:
                h, w = img.shape[:2]
                await frames_ws.send(json.dumps({"type": "frame", "t": t, "format": "rgb", "width": w, "height": h}))
                await frames_ws.send(img.tobytes())
                if int(t) - 1 > done:  # a frame of chunk k+1 completes chunk k
                    done = int(t) - 1
                    await expect_commentary(done)
            await frames_ws.send(json.dumps({"type": "end", "t": 4.0}))
            async for message in ev_ws:
                events.append(json.loads(message))
        return events

    with _client(a) as client:
        reply = client.post("/api/sessions", json={"push": True})
        assert reply.status_code == 201 and reply.json()["frames"].endswith("/frames")
        sid = reply.json()["id"]
        events = asyncio.run(asyncio.wait_for(run(sid), 60))
    _check_log(events, sid)
    commentary = _of(events, "commentary")
    assert [e["text"] for e in commentary] == infer_texts
    assert [(e["start"], e["end"]) for e in commentary] == [(k, k + 1) for k in range(4)]
    assert not _of(events, "skipped", "error") and events[-1]["reason"] == "end of stream"


def test_two_sessions_at_once_each_get_every_chunk(servers, infer_texts):
    a = servers["a"]
    with _client(a) as client:
        sids = [_start(client, source=source, duration=4, speed=4) for source in ("demo", "clip.mp4")]
        results = {}

        def follow(sid):
            results[sid] = _events(a, sid)

        threads = [threading.Thread(target=follow, args=(sid,)) for sid in sids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    for sid in sids:
        events = results[sid]
        _check_log(events, sid)
        assert [e["index"] for e in _of(events, "commentary")] == [0, 1, 2, 3]
        assert [e["text"] for e in _of(events, "commentary")] == infer_texts  # each its own cache
        assert not _of(events, "skipped") and events[-1]["reason"] == "end of stream"
    spans = [(_of(results[s], "commentary")[0]["at"], _of(results[s], "commentary")[-1]["at"]) for s in sids]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # they ran at the same time


def test_model_slower_than_the_source_skips_chunks_and_bounds_lag(servers):
    b = servers["b"]  # every step takes 0.5 s more: 2 s of a clip played at 4x, whose chunks come every 0.25 s
    with _client(b, {}) as client:
        sid = _start(client, source="demo", duration=12, speed=4)
        events = _events(b, sid, headers={})
        lossless = _start(client, source="demo", duration=2, realtime=False)
        lossless_events = _events(b, lossless, headers={})
    _check_log(events, sid)
    done = _of(events, "commentary")
    skipped = _of(events, "skipped")
    seen = sorted([e["index"] for e in done] + [k for s in skipped for k in range(s["first"], s["last"] + 1)])
    assert seen == list(range(12))  # each chunk delivered or reported skipped, once
    assert sum(s["count"] for s in skipped) == events[-1]["skipped"] >= 4
    # lag (on the clip's clock) stays under one chunk while the source runs and one step more after its end,
    # where a queue that never drops would be ~12 * (1 - 1/2) = 6 s behind at the end
    step = 4 * SLOW_STEP_S
    assert all(e["lag_s"] <= 1.0 + step + 1.0 for e in done), [e["lag_s"] for e in done]
    assert all(e["lag_s"] <= 2.0 for e in done if e["end"] <= done[-1]["end"] - 2), [e["lag_s"] for e in done]
    # realtime: false never skips (every chunk, as fast as the model takes them)
    assert [e["index"] for e in _of(lossless_events, "commentary")] == [0, 1]
    assert not _of(lossless_events, "skipped")


# --------------------------------------------------------------------------------------------------
# access and bad input


def test_token_required_everywhere(servers):
    a = servers["a"]
    for path in ("/health", "/api/sessions", "/", "/static/index.html"):
        reply = httpx.get(a.base + path)
        assert reply.status_code == 401 and "token" in reply.json()["error"]
    assert httpx.get(a.base + "/health", headers={"Authorization": "Bearer wrong-token-0"}).status_code == 401
    assert httpx.post(a.base + "/api/sessions", json={"source": "demo"}).status_code == 401
    assert httpx.get(a.base + "/health", params={"token": TOKEN}).status_code == 200
    # the page opened with ?token= gets a cookie that its own requests carry
    page = httpx.get(a.base + "/", params={"token": TOKEN})
    assert page.status_code == 200 and "HttpOnly" in page.headers["set-cookie"]
    with httpx.Client(base_url=a.base, cookies=page.cookies) as browser:
        assert browser.get("/api/sessions").status_code == 200

    async def refused(headers) -> tuple[int, str]:
        async with websockets.connect(f"{a.ws}/api/sessions/x/ws", additional_headers=headers) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return ws.close_code, ws.close_reason

    code, reason = asyncio.run(refused({}))
    assert code == 1008 and "token" in reason
    code, reason = asyncio.run(refused(AUTH))
    assert code == 4404 and "no session" in reason


def test_loopback_host_and_origin_checks(servers):
    b = servers["b"]  # no token: loopback names only, no cross-site writes
    assert httpx.get(b.base + "/health").status_code == 200
    assert httpx.get(b.base + "/health", headers={"Host": "evil.example:80"}).status_code == 403
    reply = httpx.post(b.base + "/api/sessions", json={"source": "demo"}, headers={"Origin": "http://evil.example"})
    assert reply.status_code == 403 and "cross-origin" in reply.json()["error"]
    reply = httpx.post(b.base + "/api/sessions", content=b'{"source": "demo"}', headers={"Content-Type": "text/plain"})
    assert reply.status_code == 415

    async def refused(origin: str) -> int:
        async with websockets.connect(f"{b.ws}/api/sessions/x/ws", origin=origin) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return ws.close_code

    assert asyncio.run(refused("http://evil.example")) == 1008
    assert asyncio.run(refused("null")) == 1008  # a sandboxed frame of any site
    assert asyncio.run(refused(b.base)) == 4404  # the server's own page: past the guard (no such session)


@pytest.mark.parametrize("source, status, words", [
    ("../outside/secret.mp4", 403, "'..'"),
    ("sub/../clip.mp4", 403, "'..'"),
    ("link.mp4", 403, "outside the media root"),
    ("OUTSIDE", 403, "outside the media root"),
    ("missing.mp4", 404, "no such file"),
    ("sub", 400, "not a regular file"),
    ("notes.txt", 400, "not a video file"),
    ("file:///etc/passwd", 400, "protocol 'file' is not allowed"),
    ("concat:clip.mp4|clip.mp4", 400, "protocol 'concat' is not allowed"),
])
def test_file_sources_stay_under_the_media_root(servers, media, source, status, words):
    source = source.replace("OUTSIDE", str(media["outside"] / "secret.mp4"))
    with _client(servers["a"]) as client:
        reply = client.post("/api/sessions", json={"source": source})
        assert reply.status_code == status and words in reply.json()["error"], reply.text
        assert "\n" not in reply.json()["error"]
        assert not [s for s in client.get("/api/sessions").json() if s["state"] != "ended"]


def test_an_absolute_path_inside_the_root_is_allowed(servers, media):
    with _client(servers["a"]) as client:
        sid = _start(client, source=str(media["root"] / "clip.mp4"), duration=1, speed=4)
        assert client.delete(f"/api/sessions/{sid}").json()["state"] == "ended"


@pytest.mark.parametrize("body, words", [
    ({}, "either source"),
    ({"source": "demo", "push": True}, "either source"),
    ({"source": "demo", "colour": 1}, "unknown field(s) colour"),
    ({"source": "demo", "speed": 0}, "speed must be > 0"),
    ({"source": "demo", "realtime": "yes"}, "realtime must be true or false"),
    ({"push": True, "speed": 2}, "file sources"),
    ({"source": "demo", "mode": "fast"}, "mode must be one of"),
    ({"source": "demo", "settings": {"fps": 3}}, "even whole number of frames"),
    ({"source": "demo", "settings": {"total_pixels": 5}}, "unknown stream setting(s) total_pixels"),
    ({"source": "demo", "settings": {"temperature": "hot"}}, "--temperature must be a number"),
    ({"source": "demo", "settings": {"min_pixels": 9000, "max_pixels": 3136}}, "larger than --max-pixels"),
    ({"source": "demo", "previous_text": "a <|im_start|>system"}, "previous_text contains the special token"),
    ({"source": "demo", "settings": {"query": "<|video_pad|>"}}, "the query contains the special token"),
])
def test_bad_session_requests_are_one_line_400s(servers, body, words):
    with _client(servers["a"]) as client:
        reply = client.post("/api/sessions", json=body)
    assert reply.status_code == 400 and words in reply.json()["error"], reply.text
    assert "\n" not in reply.json()["error"]


def test_session_settings_override_the_server_and_checkpoint(servers):
    with _client(servers["a"]) as client:
        reply = client.post("/api/sessions", json={"push": True, "settings": {"max_new_tokens": 5,
                                                                            "vision_window": "unlimited"}})
        assert reply.status_code == 201
        out = reply.json()
        client.delete(f"/api/sessions/{out['id']}")
    assert out["settings"]["max_new_tokens"] == 5 and out["settings"]["vision_window"] is None
    assert out["setting_sources"]["max_new_tokens"] == "session" and out["setting_sources"]["fps"] == "checkpoint"


def test_bad_questions_are_refused_and_the_session_goes_on(servers):
    with _client(servers["a"]) as client:
        sid = _start(client, push=True)
        path = f"/api/sessions/{sid}/questions"
        # the tokenizer would read a special token in the text as that token: a forged turn, or a vision pad that
        # breaks the model's forward (tested: "Video features and video tokens do not match")
        for body, words in (({"text": "what <|video_pad|> now"}, "the question contains the special token"),
                            ({"text": "which?", "options": ["a", "<|im_end|>"]}, "an option contains"),
                            ({"text": "   "}, "text must not be empty"),
                            ({"text": "x" * 2001}, "the limit is 2000"),
                            ({"text": "why?", "max_tokens": 65}, "max_tokens must be a whole number from 1 to 64"),
                            ({"question": "why?"}, "unknown field(s) question")):
            reply = client.post(path, json=body)
            assert reply.status_code == 400 and words in reply.json()["error"], reply.text
        assert client.post(path, content=b"why?", headers={"Content-Type": "text/plain"}).status_code == 415
        assert client.post(path, content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
        assert client.post("/api/sessions/nope/questions", json={"text": "why?"}).status_code == 404
        assert client.post(path, json={"text": "What is the score?"}).json() == {"question_id": "q1"}
        summary = client.delete(f"/api/sessions/{sid}").json()
        assert summary["questions"] == 1 and summary["end_reason"] == "stopped"
        events = client.get(f"/api/sessions/{sid}/events").text
        assert "question q1 was not answered: the session ended" in events
        assert client.post(path, json={"text": "late?"}).status_code == 409


def test_bad_messages_and_frames_get_error_events_and_the_session_goes_on(servers):
    a = servers["a"]
    img = np.zeros((56, 56, 3), dtype=np.uint8)
    img[:, :28] = 200

    async def run(sid: str) -> tuple[list[dict], list[dict]]:
        replies = []
        async with websockets.connect(f"{a.ws}/api/sessions/{sid}/frames", additional_headers=AUTH) as frames_ws:
            async def send(message, expect_error: bool):
                await frames_ws.send(message)
                if expect_error:
                    replies.append(json.loads(await asyncio.wait_for(frames_ws.recv(), 10)))

            await send(struct.pack("<d", 0.0) + jpeg(img), False)
            await send(struct.pack("<d", 0.5) + b"\x00" * (FRAME_LIMIT + 1), True)  # oversized
            await send(struct.pack("<d", 0.6) + b"not a jpeg", True)
            await send(b"\x01", True)  # no timestamp
            await send("{nope", True)
            await send(json.dumps({"type": "frame", "t": 0.7, "width": 2, "height": 2}), False)
            await send(b"\x00" * 5, True)  # raw RGB of the wrong length
            await send(struct.pack("<d", 0.0) + jpeg(img), True)  # not after the previous frame
            for k in range(1, 5):  # good frames: the session goes on
                await send(struct.pack("<d", 0.5 * k) + jpeg(img), False)
        async with websockets.connect(f"{a.ws}/api/sessions/{sid}/frames", additional_headers=AUTH) as frames_ws:
            await frames_ws.send(b"\x00" * (FRAME_LIMIT + 8192))  # past the socket's own limit: closed, 1009
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(frames_ws.recv(), 10)
            replies.append({"type": "closed", "code": frames_ws.close_code})
        async with websockets.connect(f"{a.ws}/api/sessions/{sid}/frames", additional_headers=AUTH) as frames_ws:
            await frames_ws.send(json.dumps({"type": "end"}))  # a client may come back; the session went on
        async with websockets.connect(f"{a.ws}/api/sessions/{sid}/ws", additional_headers=AUTH) as ws:
            await ws.send("garbage")
            await ws.send(json.dumps({"type": "dance"}))
            await ws.send(json.dumps({"type": "question", "text": ""}))
            await ws.send(b"\x00\x01")
            events = [json.loads(m) async for m in ws]
        return replies, events

    with _client(a) as client:
        sid = _start(client, push=True)
        replies, events = asyncio.run(asyncio.wait_for(run(sid), 60))
    assert [r["type"] for r in replies] == ["error"] * 6 + ["closed"] and replies[-1]["code"] == 1009
    assert "over the limit of 65536" in replies[0]["message"] and "not a JPEG" in replies[1]["message"]
    assert "not after the previous frame" in replies[5]["message"]
    errors = [e["message"] for e in _of(events, "error")]
    assert sum(m.startswith("frame refused") for m in errors) == 6
    assert any("unknown message type 'dance'" in m for m in errors) and any("not JSON" in m for m in errors)
    assert any("text must not be empty" in m for m in errors) and any("binary" in m for m in errors)
    # the stream goes on to its end, 2.5 s (pushed faster than real time: a chunk may be skipped, never lost)
    done = [e["index"] for e in _of(events, "commentary")]
    dropped = [k for e in _of(events, "skipped") for k in range(e["first"], e["last"] + 1)]
    assert done and sorted(done + dropped) == [0, 1, 2] and events[-1]["reason"] == "end of stream"


def test_pushed_frames_are_rate_limited(servers):
    a = servers["a"]
    data = jpeg(np.full((28, 28, 3), 90, dtype=np.uint8))

    sent = 150

    async def run(sid: str) -> tuple[list[dict], float]:
        replies = []
        async with websockets.connect(f"{a.ws}/api/sessions/{sid}/frames", additional_headers=AUTH) as ws:
            t0 = time.monotonic()
            for k in range(sent):  # as fast as possible: one second's burst (40) is taken, then 40 per second
                await ws.send(struct.pack("<d", k / 100) + data)
            await ws.send(json.dumps({"type": "end"}))
            with pytest.raises(websockets.ConnectionClosedOK):
                while True:
                    replies.append(json.loads(await ws.recv()))
            return replies, time.monotonic() - t0  # the server took the frames within this time

    with _client(a) as client:
        sid = _start(client, push=True)
        replies, elapsed = asyncio.run(asyncio.wait_for(run(sid), 30))
        client.delete(f"/api/sessions/{sid}")
    assert all("over the limit of 40 frames per second" in r["message"] for r in replies)
    assert len(replies) >= max(1, sent - (40 + 40 * elapsed) - 1), (len(replies), elapsed)


def test_max_sessions_refusal(servers):
    with _client(servers["a"]) as client:
        sids = [_start(client, push=True) for _ in range(3)]
        reply = client.post("/api/sessions", json={"source": "demo"})
        assert reply.status_code == 429
        assert reply.json()["error"] == "the server runs its maximum of 3 sessions; stop one or try later"
        assert client.get("/health").json()["sessions"] == 3
        stopped = client.delete(f"/api/sessions/{sids[0]}").json()
        assert stopped["state"] == "ended" and stopped["end_reason"] == "stopped"
        sids[0] = _start(client, push=True)
        for sid in sids:
            client.delete(f"/api/sessions/{sid}")
        assert client.get("/health").json()["sessions"] == 0


class _Forbidden(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_error(403)

    def log_message(self, *args):
        pass


def test_a_dying_source_ends_its_session_with_a_reason(servers):
    a = servers["a"]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Forbidden)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with _client(a) as client:
            sid = _start(client, source=f"http://127.0.0.1:{httpd.server_address[1]}/live.ts")
            events = _events(a, sid)
            assert client.get("/health").json()["status"] == "ok"
    finally:
        httpd.shutdown()
    end = events[-1]
    assert end["type"] == "end" and end["error"] is True and "403" in end["reason"] and "\n" not in end["reason"]


def test_non_loopback_bind_needs_a_token(capsys, monkeypatch):
    monkeypatch.delenv("STREAMING_VLM_TOKEN", raising=False)
    assert cli_main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("streaming-vlm serve: error: binding to 0.0.0.0 (not a loopback address) needs an access token: "
                   "pass --token T or set STREAMING_VLM_TOKEN")
    assert cli_main(["serve", "--token", "short"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err


def test_shutdown_ends_every_session_with_a_reason(servers):
    a = servers["a"]  # the last test of server A: it stops it
    with _client(a) as client:
        sid = _start(client, source="demo")
        got = []

        def read_sse():
            with client.stream("GET", f"/api/sessions/{sid}/events") as sse:
                got.extend(json.loads(line[6:]) for line in sse.iter_lines() if line.startswith("data: "))

        reader = threading.Thread(target=read_sse)
        reader.start()
        _wait(lambda: client.get(f"/api/sessions/{sid}").json()["chunks"] >= 1, 30)
        a.stop()
        reader.join(15)
    assert got[-1]["type"] == "end" and got[-1]["reason"] == "server shutting down"
    assert a.proc.returncode in (0, -signal.SIGTERM)


# --------------------------------------------------------------------------------------------------
# the documentation's examples


def _doc_block(marker: str, language: str) -> str:
    text = DOC.read_text()
    match = re.search(rf"<!-- {marker}: run by tests/test_serve.py -->\n```{language}\n(.*?)```", text, re.S)
    assert match, f"no {marker} block in {DOC}"
    return match.group(1)


def test_python_client_example_runs(servers, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(_doc_block("python-example", "python"))
    env = dict(os.environ, BASE=servers["b"].base, STREAMING_VLM_TOKEN="")
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Q: What is the score?" in out.stdout and "end:" in out.stdout and "WEBVTT" in out.stdout


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("bash") is None, reason="needs curl and bash")
def test_curl_example_runs(servers):
    env = dict(os.environ, BASE=servers["b"].base)
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", _doc_block("curl-example", "bash")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"status":"ok"' in out.stdout and '"question_id":"q1"' in out.stdout
    assert '"type": "answer"' in out.stdout and "WEBVTT" in out.stdout and '"state":"ended"' in out.stdout


# --------------------------------------------------------------------------------------------------
# in process: the worker and the engine's hooks


def _wait(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_round_robin_and_a_model_error_ends_only_its_session(tiny, tmp_path):
    from streaming_vlm.engine import StreamSession
    from streaming_vlm.serve.messages import SessionRequest
    from streaming_vlm.serve.sessions import Limits, SessionManager

    order: list[str] = []

    class Recording:  # the real engine; the first session's fails on its second chunk
        def __init__(self, engine, tag):
            self.engine, self.tag = engine, tag

        def step(self, *args, **kwargs):
            order.append(self.tag)
            if self.tag == "bad" and self.engine.round == 1:
                raise RuntimeError("boom\non two lines")
            return self.engine.step(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.engine, name)

    tags = iter(["bad", "one", "two"])

    def factory(config, vision_spec):
        return Recording(StreamSession(tiny.model, tiny.tokenizer, config, vision_spec=vision_spec), next(tags))

    manager = SessionManager(tiny, checkpoint={}, server_settings={"min_pixels": 3136, "max_pixels": 3136,
                                                                   "max_new_tokens": 2},
                             limits=Limits(), media_root=str(tmp_path), demo_video=str(DEMO_VIDEO),
                             model_name="tiny", engine_factory=factory)
    try:
        # every chunk of every session as fast as the model takes them; all three ready before the worker starts
        sessions = [manager.create(SessionRequest(source="demo", realtime=False, duration=4)) for _ in range(3)]
        _wait(lambda: all(s.feed._queue.qsize() == 2 for s in sessions))
        manager.start()
        _wait(lambda: all(s.ended for s in sessions))
    finally:
        manager.close()
    assert order == ["bad", "one", "two", "bad", "one", "two", "one", "two", "one", "two"]  # in turn
    bad, one, two = ([e for e in s.log.since(0)] for s in sessions)
    assert bad[-1]["reason"] == "model error: RuntimeError: boom on two lines" and bad[-1]["error"] is True
    assert sessions[0].engine is None and sessions[0].state == "ended"
    for events in (one, two):
        assert [e["index"] for e in events if e["type"] == "commentary"] == [0, 1, 2, 3]
        assert events[-1]["reason"] == "end of stream"


def test_a_push_session_without_frames_ends(tiny, tmp_path):
    from streaming_vlm.serve.messages import SessionRequest
    from streaming_vlm.serve.sessions import Limits, SessionManager

    manager = SessionManager(tiny, checkpoint={}, server_settings={}, limits=Limits(push_idle_s=0.3),
                             media_root=str(tmp_path), demo_video=str(DEMO_VIDEO), model_name="tiny")
    manager.start()
    try:
        session = manager.create(SessionRequest(push=True))
        _wait(lambda: session.ended, 10)
        assert manager.running() == 0
    finally:
        manager.close()
    assert session.log.since(0)[-1]["reason"] == "no frame for 0.3 s"


def test_event_log_keeps_the_last_events_and_wakes_its_followers():
    from streaming_vlm.serve.events import EventLog

    log = EventLog("s", capacity=3)
    for k in range(5):
        log.append("commentary", index=k)
    assert [e["seq"] for e in log.since(0)] == [3, 4, 5] and [e["seq"] for e in log.since(4)] == [5]
    assert log.since(5) == [] and log.since(99) == []

    async def follow() -> list:
        return [e if e is None else e["seq"] async for e in log.follow(4, heartbeat=0.05)]

    def later() -> None:  # from another thread, as the model worker does
        time.sleep(0.15)
        log.append("commentary", index=5)
        log.append("end", reason="end of stream")

    threading.Thread(target=later).start()
    seen = asyncio.run(asyncio.wait_for(follow(), 5))
    assert seen[0] == 5 and seen[-2:] == [6, 7] and None in seen  # heartbeats while it waited
    assert log.ended and log.append("commentary", index=6) is None and log.last_seq == 7
    assert asyncio.run(asyncio.wait_for(follow(), 5)) == [5, 6, 7]  # an ended log: replay, then done


def test_step_streams_its_tokens_and_takes_a_token_limit(tiny):
    from streaming_vlm.engine import StreamConfig, StreamSession
    from streaming_vlm.sampling import SamplingConfig
    from tests.conftest import SMALL_SPEC, random_frames

    config = StreamConfig(sampling=SamplingConfig(temperature=0.0, max_new_tokens=6, repetition_penalty=1.0))
    plain, hooked = (StreamSession(tiny.model, tiny.tokenizer, config, vision_spec=SMALL_SPEC) for _ in range(2))
    for k in range(2):  # defaults: the same commentary, every content token seen as it is selected
        seen: list[int] = []
        a = plain.step(random_frames(k), k, k + 1)
        b = hooked.step(random_frames(k), k, k + 1, on_token=seen.append)
        assert b.token_ids == a.token_ids and seen == b.token_ids and b.new_tokens == 6
    longer = hooked.step(random_frames(2), 2, 3, max_new_tokens=9)  # an answer's budget, this chunk only
    assert longer.new_tokens == 9
    assert hooked.step(random_frames(3), 3, 4, max_new_tokens=2).new_tokens == 2
    assert hooked.step(random_frames(4), 4, 5).new_tokens == 6
    round_before = hooked.round
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        hooked.step(random_frames(5), 5, 6, max_new_tokens=0)
    assert hooked.round == round_before
