"""The HTTP and WebSocket API of ``streaming-vlm serve`` (FastAPI), over a :class:`SessionManager`.

Routes (docs/serve.md is the reference, with examples):

- ``GET /`` the page (``static/index.html``; a placeholder until it exists), ``GET /static/...`` its files;
- ``GET /health``, ``GET /api/settings`` (the server's settings and limits);
- ``GET|POST /api/sessions``, ``GET|DELETE /api/sessions/{id}``, ``POST /api/sessions/{id}/questions``;
- ``GET /api/sessions/{id}/events`` (SSE), ``WS /api/sessions/{id}/ws`` (events out, questions and stop in);
- ``WS /api/sessions/{id}/frames`` (a push session's frames);
- ``GET /api/sessions/{id}/transcript.vtt|transcript.jsonl``, ``/frame.jpg``, ``/media``.

Every error is ``{"error": "one line"}`` with its status; a bad WebSocket message becomes an ``error`` event and
the session goes on. Access control (token, host, origin) is :class:`~streaming_vlm.serve.security.AccessGuard`'s,
in front of every route. Nothing here runs at import; :func:`build_app` builds the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect

from streaming_vlm.outputs import vtt_cue_text, vtt_timestamp
from streaming_vlm.serve.messages import (
    BadMessage,
    QuestionRequest,
    RawFrameHeader,
    client_message,
    end_time,
    frames_message,
    jpeg_frame,
)
from streaming_vlm.serve.security import AccessError, AccessGuard
from streaming_vlm.serve.sessions import STREAMED_NAMES, Session, SessionManager, parse_session_request
from streaming_vlm.sources import NETWORK_PROTOCOLS, FrameError

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1 << 20
HEARTBEAT_S = 15.0
# WebSocket close codes of the API (4000-4999 are the application's)
CLOSE_NO_SESSION = 4404
CLOSE_NOT_PUSH = 4409

PLACEHOLDER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>streaming-vlm</title></head>
<body><h1>streaming-vlm serve</h1>
<p>The server is running; its web page is not installed. The API is described in docs/serve.md:
<a href="/health">/health</a>, <a href="/api/sessions">/api/sessions</a>.</p></body></html>
"""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json_body(request: Request) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise AccessError(415, "send a JSON body with Content-Type: application/json")
    body = b""
    async for part in request.stream():  # read no further than the limit
        body += part
        if len(body) > MAX_BODY_BYTES:
            raise AccessError(413, f"the body is over the limit of {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AccessError(400, f"the body is not valid JSON ({' '.join(str(exc).split())})") from None


def _since(value: str | None) -> int:
    if value in (None, ""):
        return 0
    try:
        since = int(value)
    except ValueError:
        raise AccessError(400, f"since must be a whole number (an event's seq), got {value!r}") from None
    if since < 0:
        raise AccessError(400, f"since must be >= 0, got {since}")
    return since


def _encode_jpeg(rgb) -> bytes:
    import av

    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuvj444p")
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = frame.width, frame.height, "yuvj444p"
    codec.time_base = Fraction(1, 25)
    packets = list(codec.encode(frame)) + list(codec.encode(None))
    return b"".join(bytes(p) for p in packets)


def build_app(manager: SessionManager, *, token: str | None, loopback_only: bool,
              static_dir: Path = STATIC_DIR) -> FastAPI:
    """The application serving ``manager``'s sessions; starts its worker on startup and ends every session on
    shutdown. ``token``/``loopback_only``: see :class:`AccessGuard`."""

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        manager.start()
        try:
            yield
        finally:
            await run_in_threadpool(manager.close)

    app = FastAPI(title="streaming-vlm", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(AccessGuard, token=token, loopback_only=loopback_only)
    app.mount("/static", StaticFiles(directory=static_dir, check_dir=False), name="static")

    @app.exception_handler(AccessError)
    async def access_error(_request, exc: AccessError):
        return _error(exc.status, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(400, f"{where}: {first.get('msg', 'invalid request')}")

    # ---- page and server ------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index():
        page = static_dir / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return HTMLResponse(PLACEHOLDER_PAGE)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": manager.model_name, "device": str(manager.device),
                "sessions": manager.running(), "max_sessions": manager.limits.max_sessions, "steps": manager.steps}

    @app.get("/api/settings")
    async def server_settings():
        record = manager.base_settings.as_record()
        limits = manager.limits
        return {
            "settings": {k: record[k] for k in STREAMED_NAMES},
            "sources": {k: {"flag": "server", "config": "server"}.get(manager.base_sources[k], manager.base_sources[k])
                        for k in STREAMED_NAMES},
            "limits": {"max_sessions": limits.max_sessions, "answer_tokens": limits.answer_tokens,
                       "max_frame_bytes": limits.max_frame_bytes, "max_frame_width": limits.max_frame_width,
                       "max_frame_height": limits.max_frame_height, "max_push_fps": limits.max_push_fps,
                       "push_idle_s": limits.push_idle_s, "max_pending_questions": limits.max_pending_questions,
                       "event_log": limits.event_log},
            "protocols": list(NETWORK_PROTOCOLS),
        }

    # ---- sessions -------------------------------------------------------------------------------------------

    @app.get("/api/sessions")
    async def list_sessions():
        return [s.summary() for s in manager.sessions()]

    @app.post("/api/sessions", status_code=201)
    async def create_session(request: Request):
        body = parse_session_request(await _json_body(request))
        session = await run_in_threadpool(manager.create, body)
        base = f"/api/sessions/{session.id}"
        out = {"id": session.id, "events": f"{base}/events", "ws": f"{base}/ws",
               "settings": session.settings_record(), "setting_sources": session.setting_sources,
               "summary": session.summary()}
        if session.kind == "push":
            out["frames"] = f"{base}/frames"
        if session.kind == "file":
            out["media"] = f"{base}/media"
        return JSONResponse(out, status_code=201)

    @app.get("/api/sessions/{sid}")
    async def get_session(sid: str):
        session = manager.get(sid)
        return session.summary() | {"settings": session.settings_record(),
                                    "setting_sources": session.setting_sources}

    @app.delete("/api/sessions/{sid}")
    async def stop_session(sid: str):
        session = manager.stop(sid)
        for _ in range(100):  # the worker ends it between two steps
            if session.ended:
                break
            await asyncio.sleep(0.05)
        return session.summary()

    @app.post("/api/sessions/{sid}/questions", status_code=202)
    async def ask(sid: str, request: Request):
        session = manager.get(sid)
        try:
            question = QuestionRequest.from_json(await _json_body(request), max_tokens=manager.limits.answer_tokens)
        except BadMessage as exc:
            raise AccessError(400, str(exc)) from None
        queued = manager.ask(session, question)
        return JSONResponse({"question_id": queued.id}, status_code=202)

    @app.get("/api/sessions/{sid}/events")
    async def events(sid: str, request: Request, since: str | None = None):
        session = manager.get(sid)
        start = _since(since if since is not None else request.headers.get("last-event-id"))

        async def stream():
            yield b"retry: 2000\n\n"
            async for event in session.log.follow(start, heartbeat=HEARTBEAT_S):
                if event is None:
                    yield b": keepalive\n\n"
                else:
                    yield f"id: {event['seq']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/api/sessions/{sid}/transcript.vtt")
    async def transcript_vtt(sid: str):
        session = manager.get(sid)
        cues = [f"{i}\n{vtt_timestamp(r['start'])} --> {vtt_timestamp(r['end'])}\n{vtt_cue_text(r['text'])}\n"
                for i, r in enumerate(list(session.transcript), 1)]
        return Response("WEBVTT\n\n" + "\n".join(cues), media_type="text/vtt; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{sid}.vtt"'})

    @app.get("/api/sessions/{sid}/transcript.jsonl")
    async def transcript_jsonl(sid: str):
        session = manager.get(sid)
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in list(session.transcript))
        return Response(body, media_type="application/jsonl; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{sid}.jsonl"'})

    @app.get("/api/sessions/{sid}/frame.jpg")
    async def last_frame(sid: str):
        session = manager.get(sid)
        frame = session.last_frame
        if frame is None:
            raise AccessError(404, f"session {sid} has no frame yet")
        return Response(await run_in_threadpool(_encode_jpeg, frame), media_type="image/jpeg",
                        headers={"Cache-Control": "no-store"})

    @app.get("/api/sessions/{sid}/media")
    async def media(sid: str):
        session = manager.get(sid)
        if session.kind != "file" or not session.target:
            raise AccessError(404, f"session {sid} does not read a file")
        return FileResponse(session.target)

    # ---- WebSockets -----------------------------------------------------------------------------------------

    async def _open(ws: WebSocket, sid: str) -> Session | None:
        await ws.accept()
        try:
            return manager.get(sid)
        except AccessError as exc:
            await ws.close(code=CLOSE_NO_SESSION, reason=str(exc)[:120])
            return None

    @app.websocket("/api/sessions/{sid}/ws")
    async def events_ws(ws: WebSocket, sid: str):
        session = await _open(ws, sid)
        if session is None:
            return
        try:
            since = _since(ws.query_params.get("since"))
        except AccessError as exc:
            session.report_error(str(exc))
            since = 0

        async def sender() -> None:
            async for event in session.log.follow(since, heartbeat=HEARTBEAT_S):
                if event is not None:
                    await ws.send_text(json.dumps(event, ensure_ascii=False))

        async def receiver() -> None:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                try:
                    if message.get("text") is None:
                        raise BadMessage("send JSON text messages on this socket (binary frames go to /frames)")
                    try:
                        obj = json.loads(message["text"])
                    except ValueError as exc:
                        raise BadMessage(f"not JSON ({' '.join(str(exc).split())})") from None
                    kind, question = client_message(obj, max_tokens=manager.limits.answer_tokens)
                    if kind == "question":
                        manager.ask(session, question)
                    elif kind == "stop":
                        manager.stop(session.id)
                except (BadMessage, AccessError) as exc:
                    session.report_error(f"bad message: {exc}")

        await _run_both(ws, sender(), receiver())

    @app.websocket("/api/sessions/{sid}/frames")
    async def frames_ws(ws: WebSocket, sid: str):
        session = await _open(ws, sid)
        if session is None:
            return
        if session.kind != "push":
            await ws.close(code=CLOSE_NOT_PUSH, reason=f"session {sid} is not a push session")
            return
        header: RawFrameHeader | None = None
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                try:
                    if message.get("text") is not None:
                        if header is not None:
                            header = None
                            raise BadMessage("a frame header must be followed by its binary frame; header dropped")
                        try:
                            obj = json.loads(message["text"])
                        except ValueError as exc:
                            raise BadMessage(f"not JSON ({' '.join(str(exc).split())})") from None
                        parsed = frames_message(obj)
                        if parsed == "end":
                            await run_in_threadpool(manager.finish_push, session, end_time(obj))
                            await ws.close(code=1000)
                            return
                        if isinstance(parsed, RawFrameHeader):
                            header = parsed
                        continue
                    data = message.get("bytes") or b""
                    if header is not None:
                        head, header = header, None
                        await run_in_threadpool(manager.push, session, data, head.t, format="rgb",
                                                width=head.width, height=head.height)
                    else:
                        t, jpeg = jpeg_frame(data)
                        await run_in_threadpool(manager.push, session, jpeg, t)
                except (BadMessage, FrameError) as exc:
                    session.report_error(f"frame refused: {exc}")
                    await ws.send_text(json.dumps({"type": "error", "message": str(exc)}))
                except AccessError as exc:  # the session ended
                    await ws.close(code=CLOSE_NOT_PUSH, reason=str(exc)[:120])
                    return
        except WebSocketDisconnect:
            return

    return app


async def _run_both(ws: WebSocket, sender, receiver) -> None:
    """Run a socket's sender and receiver until either ends; close the socket after the sender (the session's
    ``end`` was sent), drop it after the receiver (the client left)."""
    tasks = [asyncio.ensure_future(sender), asyncio.ensure_future(receiver)]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if tasks[0] in done:
            with contextlib.suppress(Exception):
                await ws.close(code=1000)
    finally:
        for task in tasks:
            task.cancel()
