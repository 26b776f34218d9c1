"""The live page (``GET /``) in a real browser: Debian's Chromium, headless, driven by Playwright, against the real
server.

``streaming-vlm serve`` runs as a child process (the demo model, 127.0.0.1, a free port, an access token) and is
stopped by its PID. The page is opened as ``/?token=T`` and used as a person would: it starts a session on the
bundled clip from its form (its first 10 s, in real time), shows the video playing with live captions under it,
fills the transcript and the gauges, lists the session, streams the answer to a typed question, and reports the end
of the stream; and it starts a session from the browser's webcam (Chromium's fake camera), pushes its frames over
the frames WebSocket, captions them, stops the session with its Stop button, and shows the ended session again
when it is picked from the session list. Every request the page makes must
succeed, no script error may occur, and what the page shows must be what the server sent.

The screenshot goes to the test's temporary folder, or to ``figures/serve_page.png`` (the README's figure) with
``STREAMING_VLM_UPDATE_FIGURES=1``.

Chromium or Playwright missing is a failure naming the fix, not a skip: CI installs both (``scripts/setup.sh`` with
the dev extra), and a browser test that silently skips proves nothing. Only an install without the serve extra
(no server to test) skips, as ``test_serve.py`` does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

# Without the serve extra there is no server to test (as in test_serve.py); the browser is another matter (below).
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

REPO = Path(__file__).resolve().parents[1]
FIGURE = REPO / "figures" / "serve_page.png"
CHROMIUM = os.environ.get("STREAMING_VLM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 # a fake camera (a test pattern), allowed without asking, for the webcam session
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
TOKEN = "page-test-token-0123"
CLIP_SECONDS, SPEED = 10, 1.0  # the first 10 s of the bundled clip, in real time
SHOT_AT_CHUNK = 7  # the screenshot is taken while the stream runs, after this many chunks
TIMEOUT_MS = 20_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen, base: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(f"{base}/health", headers={"Authorization": f"Bearer {TOKEN}"})
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streaming-vlm serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    pytest.fail(f"streaming-vlm serve did not answer /health within {timeout:g} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def playwright_api():
    """Playwright's sync API, Chromium checked (before the server starts), or a failure saying how to install them."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: pip install -e '.[dev]' (or bash scripts/setup.sh)")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        hint = f" (one is at {found}: set STREAMING_VLM_CHROMIUM)" if found else ""
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium, which scripts/setup.sh does "
                    f"as root{hint}")
    return sync_playwright


@pytest.fixture(scope="module")
def server(playwright_api, tmp_path_factory):
    """The real server on a free loopback port; yields its base URL, stops it by PID."""
    folder = tmp_path_factory.mktemp("serve")
    port = _free_port()
    log = folder / "serve.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))  # this checkout
    env.pop("STREAMING_VLM_TOKEN", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streaming_vlm", "serve", "--model", "demo", "--host", "127.0.0.1",
             "--port", str(port), "--token", TOKEN, "--media-root", str(folder)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(proc, base, log)
        yield base
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


class Watched:
    """A page of a fresh headless Chromium, with what went wrong (``problems``: script errors, failed requests,
    HTTP errors) and the events the server sent it over session event WebSockets (``events``)."""

    def __init__(self, page) -> None:
        self.page = page
        self.problems: list[str] = []
        self.events: list[dict] = []
        page.on("pageerror", lambda exc: self.problems.append(f"script error: {exc}"))
        page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} ({r.failure})")
                if not r.url.split("?")[0].endswith("/media") else None)  # the video cancels range reads
        page.on("response", lambda r: self.problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
        page.on("websocket", self._on_websocket)

    def _on_websocket(self, ws) -> None:
        if ws.url.split("?")[0].endswith("/ws"):
            ws.on("framereceived", lambda payload: self.events.append(json.loads(payload)))

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


@pytest.fixture
def watched(playwright_api, tmp_path):
    """A :class:`Watched` page in headless Chromium with a fresh profile (closed after the test)."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    with playwright_api() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 820}, color_scheme="light")
        try:
            yield Watched(context.new_page())
        finally:
            context.close()


def _clean(text: str) -> str:
    """What the page shows of a commentary or answer: without the model's trailing `` ...`` marker."""
    return re.sub(r"\s*\.\.\.\s*$", "", text).strip()


def _span(event: dict) -> str:
    return f"{event['start']:.1f}s–{event['end']:.1f}s"


def test_page_streams_captions_and_answers_a_question(server, watched, tmp_path):
    from playwright.sync_api import expect

    shot = FIGURE if os.environ.get("STREAMING_VLM_UPDATE_FIGURES") == "1" else tmp_path / "serve_page.png"
    page, of_type = watched.page, watched.of_type
    page.goto(f"{server}/?token={TOKEN}")
    expect(page.locator("#health")).to_contain_text("demo on cpu")  # the API calls carry the token

    page.fill("#source", "demo")
    page.click("text=Settings")
    page.fill("#set-duration", str(CLIP_SECONDS))
    page.fill("#set-speed", str(SPEED))
    page.click("#start")
    page.click("text=Settings")  # folded again, for the screenshot

    # Live captions under the video, which plays the session's file.
    expect(page.locator("#caption")).to_have_text(re.compile(r"\w"))
    page.wait_for_function("() => { const v = document.getElementById('video');"
                           " return !v.hidden && !v.paused && v.currentTime > 0 && v.videoWidth > 0; }",
                           timeout=TIMEOUT_MS)
    expect(page.locator("#sessions tbody tr").first).to_contain_text("demo")

    # A question typed into the box: the answer the server streams is shown, then commentary goes on.
    page.fill("#question", "What is the score?")
    page.click("#ask")
    item = page.locator("#answers li").first
    expect(item.locator(".q")).to_have_text("What is the score?")
    expect(item.locator(".meta")).to_contain_text("first token")
    (answer,) = of_type("answer")
    (question,) = of_type("question")
    assert answer["question_id"] == question["question_id"] and question["text"] == "What is the score?"
    expect(item.locator(".a")).to_have_text(_clean(answer["text"]) or "(no answer)")
    if _clean(answer["text"]):  # streamed as it was generated, ending with the whole answer
        tokens = [e for e in of_type("token") if e["question_id"] == answer["question_id"]]
        assert tokens and tokens[-1]["text"] == _clean(answer["text"])
    page.wait_for_function(f"() => Number(document.getElementById('c-chunks').textContent) > "
                           f"{answer['round'] + 1}", timeout=TIMEOUT_MS)

    # Gauges show numbers and sparklines; the video plays in step with the session.
    for gauge in ("#g-latency", "#g-lag", "#g-cache", "#g-memory"):
        expect(page.locator(f"{gauge} .value")).to_have_text(re.compile(r"\d"))
        expect(page.locator(f"{gauge} polyline")).to_have_count(1)
    page.wait_for_function(f"() => Number(document.getElementById('c-chunks').textContent) >= {SHOT_AT_CHUNK}",
                           timeout=TIMEOUT_MS)
    video_time = page.evaluate("() => document.getElementById('video').currentTime")
    stream_time = max(e["end"] for e in of_type("commentary") + of_type("answer"))
    assert abs(video_time - stream_time) < 1.5, (video_time, stream_time)
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)

    # The clip's end ends the session; the page says so and no longer takes questions.
    expect(page.locator("#transcript")).to_contain_text("ended: end of stream")
    expect(page.locator("#question")).to_be_disabled()
    rows = page.evaluate("() => Array.from(document.querySelectorAll('#transcript li'), li =>"
                         " [li.children[0].textContent, li.children[1].className, li.children[1].textContent])")
    counters = {name: int(page.locator(f"#c-{name}").inner_text()) for name in ("chunks", "skipped")}
    caption = page.locator("#caption").inner_text()
    assert not watched.problems, watched.problems

    # Everything the page shows is what the server sent: every non-empty commentary in order, with its times, as a
    # transcript line; the answer in place of its chunk's commentary; the last commentary as the caption.
    said = [e for e in of_type("commentary") if _clean(e["text"])]
    assert [(t, text) for t, cls, text in rows if cls == ""] == [(_span(e), _clean(e["text"])) for e in said]
    assert [text for _, cls, text in rows if cls == "qa"] == [f"Q: What is the score? — A: {_clean(answer['text'])}"]
    assert caption == _clean(said[-1]["text"])
    assert counters["chunks"] == len(of_type("commentary")) + 1
    assert counters["chunks"] + counters["skipped"] == CLIP_SECONDS, counters
    assert shot.stat().st_size > 10_000


def test_page_pushes_the_webcam_and_stops_the_session(server, watched):
    from playwright.sync_api import expect

    page, of_type = watched.page, watched.of_type
    page.goto(f"{server}/?token={TOKEN}")
    page.check("input[name=kind][value=webcam]")
    expect(page.locator("#source")).to_be_hidden()
    page.click("#start")

    # The local camera is shown; its frames, pushed at the session's frame rate, come back as commentary.
    page.wait_for_function("() => { const v = document.getElementById('video');"
                           " return !v.hidden && v.srcObject !== null && !v.paused && v.videoWidth > 0; }",
                           timeout=TIMEOUT_MS)
    page.wait_for_function("() => Number(document.getElementById('c-chunks').textContent) >= 3", timeout=TIMEOUT_MS)
    (started,) = of_type("started")
    assert started["kind"] == "push"
    sid = started["session"]
    row = page.locator("#sessions tbody tr", has_text=sid)
    expect(row).to_contain_text("running")

    # Stop: the session ends with reason "stopped", the camera is released, questions are no longer taken.
    with page.expect_response(lambda r: r.request.method == "DELETE") as stopped:
        page.click("#stop")
    assert stopped.value.status == 200 and stopped.value.json()["end_reason"] == "stopped"
    expect(page.locator("#transcript")).to_contain_text("ended: stopped")
    expect(page.locator("#question")).to_be_disabled()
    expect(row).to_contain_text("ended")
    assert page.evaluate("() => { const v = document.getElementById('video'); return v.srcObject.getVideoTracks()"
                         ".every(t => t.readyState === 'ended'); }")
    assert not of_type("error"), of_type("error")
    chunks = len(of_type("commentary"))
    assert int(page.locator("#c-chunks").inner_text()) == chunks >= 3
    transcript = page.locator("#transcript").inner_text()

    # Reopened and watched from the session list: the ended session's history is replayed, its last frame shown.
    page.reload()
    row.get_by_role("button", name=f"watch session {sid}").click()
    expect(page.locator("#transcript")).to_contain_text("ended: stopped")
    assert page.locator("#transcript").inner_text() == transcript
    assert int(page.locator("#c-chunks").inner_text()) == chunks
    page.wait_for_function("() => { const f = document.getElementById('frame');"
                           " return !f.hidden && f.complete && f.naturalWidth > 0; }", timeout=TIMEOUT_MS)
    assert watched.problems == []
