"""``streaming-vlm serve``: the options, the checks made before anything is loaded, and the server's start.

Order of work: parse the flags; refuse (one line, exit 2) a non-loopback bind without a token, a bad token, a media
root that is not a folder, bad limits; resolve the server's stream settings over the checkpoint's
``streaming_vlm.json`` (exit 2 for a bad one); load the model (exit 2 when it cannot be loaded); then serve with
uvicorn until interrupted (SIGINT/SIGTERM end every session, then the process). Importing this module loads neither
torch nor the web stack.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from streaming_vlm.argtypes import finite_float

DEFAULT_MODEL = "demo"
DEFAULT_PORT = 8000
MIN_TOKEN_CHARS = 8
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]+$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from streaming_vlm import settings
    from streaming_vlm.models import add_load_arguments
    from streaming_vlm.serve.sessions import NOT_STREAMED, Limits

    d = Limits()
    parser.usage = "%(prog)s [--model M] [--host 127.0.0.1] [--port 8000] [options; see --help]"
    server = parser.add_argument_group("server")
    server.add_argument("--model", default=DEFAULT_MODEL,
                        help="hub id or local directory of a Qwen2.5-VL checkpoint; 'demo' = the bundled demo model, "
                             f"'tiny' = a random tiny model (default: {DEFAULT_MODEL})")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; anything but a loopback address needs --token (default: 127.0.0.1)")
    server.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    server.add_argument("--token", default=None,
                        help="access token every request must carry (Authorization: Bearer T, ?token=T); "
                             "default: $STREAMING_VLM_TOKEN, else none (loopback only)")
    server.add_argument("--media-root", default=None,
                        help="folder whose files clients may name as sources (default: the current directory)")
    server.add_argument("--max-sessions", type=int, default=d.max_sessions,
                        help=f"sessions served at once; one more is refused with 429 (default: {d.max_sessions})")
    server.add_argument("--answer-tokens", type=int, default=d.answer_tokens,
                        help=f"most tokens of a free-text answer to a question (default: {d.answer_tokens})")
    server.add_argument("--max-frame-bytes", type=int, default=d.max_frame_bytes,
                        help=f"largest frame a push client may send, in bytes (default: {d.max_frame_bytes})")
    server.add_argument("--max-push-fps", type=finite_float, default=d.max_push_fps,
                        help=f"frames per second a push session takes at most (default: {d.max_push_fps:g})")
    server.add_argument("--push-idle-s", type=finite_float, default=d.push_idle_s,
                        help=f"a push session without a frame for this long ends (default: {d.push_idle_s:g})")
    server.add_argument("--event-log", type=int, default=d.event_log,
                        help=f"events kept per session for replay (default: {d.event_log})")
    server.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                        help="uvicorn's log level (default: warning)")
    testing = parser.add_argument_group("testing aids")
    testing.add_argument("--step-delay-s", type=finite_float, default=0.0,
                         help="sleep this long after every model step, as if the model were slower (tests of the "
                              "pacing policy) (default: 0)")
    settings.add_arguments(parser, exclude=NOT_STREAMED,
                           title="stream settings: every session's defaults (over the checkpoint's streaming_vlm.json; "
                                 "a session's own settings win)")
    add_load_arguments(parser)


class UsageError(Exception):
    """A bad option, named in one line (exit status 2)."""


def check(args: argparse.Namespace) -> tuple[str | None, str]:
    """The checks that need nothing loaded: ``(token, media_root)`` or :class:`UsageError`."""
    from streaming_vlm.serve.security import TOKEN_ENV, check_bind

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if token is not None and (len(token) < MIN_TOKEN_CHARS or not _TOKEN.match(token)):
        raise UsageError(f"the token must be at least {MIN_TOKEN_CHARS} characters of A-Z a-z 0-9 . _ ~ + / = -")
    try:
        check_bind(args.host, token)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    root = os.path.realpath(args.media_root or os.getcwd())
    if not os.path.isdir(root):
        raise UsageError(f"--media-root {args.media_root}: not a folder")
    return token, root


def limits_from_args(args: argparse.Namespace):
    from streaming_vlm.serve.sessions import Limits

    try:
        return Limits(max_sessions=args.max_sessions, answer_tokens=args.answer_tokens,
                      max_frame_bytes=args.max_frame_bytes, max_push_fps=args.max_push_fps,
                      push_idle_s=args.push_idle_s, event_log=args.event_log, step_delay_s=args.step_delay_s)
    except ValueError as exc:
        raise UsageError("--" + str(exc).replace("_", "-", 2)) from None


def main(args: argparse.Namespace) -> int:
    try:
        token, media_root = check(args)
        limits = limits_from_args(args)
        return serve(args, token=token, media_root=media_root, limits=limits)
    except UsageError as exc:
        print(f"streaming-vlm serve: error: {exc}", file=sys.stderr)
        return 2


def serve(args: argparse.Namespace, *, token: str | None, media_root: str, limits) -> int:
    from streaming_vlm import settings
    from streaming_vlm.serve.sessions import NOT_STREAMED

    server_settings = {k: v for k, v in settings.given(args).items() if k not in NOT_STREAMED}
    import uvicorn

    from streaming_vlm.models import (
        DEMO_VIDEO,
        ModelLoadError,
        load_model,
        resolve_device,
        resolve_dtype,
        resolve_model_path,
    )
    from streaming_vlm.serve.app import build_app
    from streaming_vlm.serve.security import is_loopback
    from streaming_vlm.serve.sessions import SessionManager

    try:
        resolve_dtype(args.dtype, resolve_device(args.device))
        model_path = resolve_model_path(args.model)
        checkpoint = settings.from_checkpoint(model_path)
        resolved, _ = settings.resolve(server_settings, checkpoint=checkpoint)
        resolved.check_chunks()
    except (ValueError, ModelLoadError) as exc:
        raise UsageError(str(exc)) from None
    try:
        loaded = load_model(model_path, device=args.device, dtype=args.dtype)
    except ModelLoadError as exc:
        raise UsageError(str(exc)) from None
    manager = SessionManager(loaded, checkpoint=checkpoint, server_settings=server_settings, limits=limits,
                             media_root=media_root, demo_video=str(DEMO_VIDEO), model_name=args.model)
    app = build_app(manager, token=token, loopback_only=is_loopback(args.host))
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"streaming-vlm serve: {args.model} on {loaded.device}, http://{host}:{args.port}/ "
          f"(media root {media_root}; at most {limits.max_sessions} sessions"
          f"{'; token required' if token else ''})", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            ws_max_size=limits.max_frame_bytes + 4096, timeout_graceful_shutdown=3,
                            lifespan="on")

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # end the sessions first, so that their clients get the `end` event before connections close
            manager.stop_all("server shutting down")
            super().handle_exit(sig, frame)

    Server(config).run()
    return 0
