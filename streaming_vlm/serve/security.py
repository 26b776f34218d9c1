"""What the server lets a client reach: the access token, the hosts and origins it answers, the files it reads.

- :func:`check_bind`: a token is required to bind anywhere but a loopback address.
- :class:`AccessGuard`: ASGI middleware in front of every HTTP request and WebSocket. With a token set, a request
  must carry it (``Authorization: Bearer T``, ``?token=T``, or the ``streaming_vlm_token`` cookie that the page
  receives when it is opened with ``/?token=T``); otherwise 401 (a WebSocket is closed with code 1008). Without a
  token (loopback only) the ``Host`` header must name the loopback (``localhost``, ``127.0.0.1``, ``[::1]``),
  which defeats DNS rebinding. Always: a request whose ``Origin`` header names another host than ``Host``
  (another site's page) is refused for WebSockets and for anything but GET/HEAD, so a page elsewhere cannot drive
  the server through a visitor's browser.
- :func:`media_path`: a file source's path, only inside the media root: ``..`` anywhere, an absolute path outside
  the root and a symlink whose target is outside it are refused (realpath containment).
- :func:`classify_source`: what a client's ``source`` string names (the bundled clip, a camera, a URL of an allowed
  network protocol, a file under the media root) or :class:`AccessError` with the HTTP status to answer.

Nothing here runs at import; no model or torch is loaded.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path, PurePath
from urllib.parse import parse_qs, urlsplit

TOKEN_ENV = "STREAMING_VLM_TOKEN"
"""Environment variable holding the access token (the ``--token`` flag wins)."""
TOKEN_COOKIE = "streaming_vlm_token"
"""Cookie set when the page is opened with ``?token=``: the page's own requests then carry the token."""
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: "C:" is a Windows drive
_CAMERA = re.compile(r"^(?:camera:)?(/dev/video[0-9]+)$")


class AccessError(Exception):
    """A request the server refuses: ``status`` (HTTP) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` only listens on this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """``ValueError`` (one line) when binding to ``host`` without a token would expose the server."""
    if not is_loopback(host) and not token:
        raise ValueError(f"binding to {host} (not a loopback address) needs an access token: "
                         f"pass --token T or set {TOKEN_ENV}")


# --------------------------------------------------------------------------------------------------
# access to the server


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _host_name(netloc: str) -> str:
    """``example.com:8000`` -> ``example.com``; ``[::1]:8000`` -> ``::1``."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1:netloc.find("]")] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def request_token(scope) -> tuple[str | None, str]:
    """The token a request carries and how: ``(token, "header" | "query" | "cookie" | "none")``."""
    auth = _header(scope, b"authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip(), "header"
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0], "query"
    cookie = _header(scope, b"cookie")
    if cookie:
        jar = SimpleCookie()
        try:
            jar.load(cookie)
        except Exception:  # a malformed cookie header carries no token
            return None, "none"
        if TOKEN_COOKIE in jar:
            return jar[TOKEN_COOKIE].value, "cookie"
    return None, "none"


class AccessGuard:
    """ASGI middleware: the token, host and origin checks of the module doc, before the app sees a request.

    ``token``: the access token or None; ``loopback_only``: check ``Host`` against :data:`LOOPBACK_NAMES` (the
    server listens on a loopback address without a token). ``cookie_paths``: GET paths where a valid ``?token=``
    also sets the :data:`TOKEN_COOKIE` cookie (the page)."""

    def __init__(self, app, *, token: str | None, loopback_only: bool, cookie_paths: frozenset[str] = frozenset({"/"})):
        self.app = app
        self.token = token or None
        self.loopback_only = loopback_only
        self.cookie_paths = cookie_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        problem = self.refusal(scope)
        if problem is not None:
            status, message = problem
            if scope["type"] == "websocket":  # accepted, then closed: a browser sees the code and the reason
                if (await receive())["type"] == "websocket.connect":
                    await send({"type": "websocket.accept"})
                    await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
                return
            body = json.dumps({"error": message}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            if status == 401:
                headers.append((b"www-authenticate", b'Bearer realm="streaming-vlm"'))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        token, how = request_token(scope)
        if (self.token and how == "query" and scope["type"] == "http" and scope.get("method") == "GET"
                and scope.get("path") in self.cookie_paths):
            cookie = (f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict").encode("latin-1")

            async def send_with_cookie(message) -> None:
                if message["type"] == "http.response.start":
                    message = dict(message, headers=[*message.get("headers", []), (b"set-cookie", cookie)])
                await send(message)

            return await self.app(scope, receive, send_with_cookie)
        return await self.app(scope, receive, send)

    def refusal(self, scope) -> tuple[int, str] | None:
        """``(status, message)`` when the request must be refused, else None."""
        host = _header(scope, b"host") or ""
        if self.loopback_only and not self.token and _host_name(host) not in LOOPBACK_NAMES:
            return 403, f"host {host!r} is not this machine's loopback; use http://127.0.0.1 or set a token"
        origin = _header(scope, b"origin")
        unsafe = scope["type"] == "websocket" or scope.get("method") not in ("GET", "HEAD", "OPTIONS")
        if origin and unsafe:  # "null" (a sandboxed frame, a file) is another origin too
            if urlsplit(origin).netloc.lower() != host.lower():
                return 403, f"cross-origin request from {origin} refused"
        if self.token:
            given, _ = request_token(scope)
            if given is None:
                return 401, "this server needs an access token (Authorization: Bearer T, or ?token=T)"
            if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.token.encode()):
                return 401, "wrong access token"
        return None


# --------------------------------------------------------------------------------------------------
# sources a client may name


@dataclass(frozen=True)
class SourceSpec:
    """A client's ``source`` checked: ``kind`` (``file``, ``url``, ``camera``) and what to open (a real path, a URL
    or a device)."""

    kind: str
    target: str
    label: str
    """How the session names its source (what the client gave; the bundled clip is ``demo``)."""


def media_path(spec: str, root: str | os.PathLike[str]) -> Path:
    """The real path of file ``spec`` (relative to ``root``, or absolute) if it lies inside ``root``.

    Raises :class:`AccessError`: 403 for ``..`` in the path, a path (or a symlink's target, at any depth)
    outside the root; 404 when nothing is there; 400 for something that is not a regular file."""
    if not spec or "\x00" in spec:
        raise AccessError(400, "empty source path")
    pure = PurePath(spec)
    if ".." in pure.parts:
        raise AccessError(403, f"{spec}: '..' is not allowed in a source path")
    root_real = Path(os.path.realpath(root))
    candidate = pure if pure.is_absolute() else root_real / pure
    real = Path(os.path.realpath(candidate))
    if real != root_real and root_real not in real.parents:
        raise AccessError(403, f"{spec}: outside the media root")
    if not real.exists():
        raise AccessError(404, f"{spec}: no such file under the media root")
    if not real.is_file():
        raise AccessError(400, f"{spec}: not a regular file")
    return real


def classify_source(spec: str, *, media_root: str | os.PathLike[str], protocols: tuple[str, ...],
                    demo_video: str | os.PathLike[str]) -> SourceSpec:
    """What ``spec`` names: ``demo`` (the bundled clip), ``camera:/dev/videoN`` or ``/dev/videoN`` (a local
    camera), ``scheme:...`` (a URL; the scheme must be one of ``protocols``), else a file under ``media_root``
    (:func:`media_path`). :class:`AccessError` otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise AccessError(400, "source must be a non-empty string (a path under the media root, a URL, "
                               "camera:/dev/videoN or 'demo')")
    spec = spec.strip()
    if spec == "demo":
        return SourceSpec("file", str(demo_video), "demo")
    camera = _CAMERA.match(spec)
    if camera:
        return SourceSpec("camera", camera.group(1), spec)
    scheme = _SCHEME.match(spec)
    if scheme:
        name = scheme.group(1).lower()
        if name not in protocols:
            raise AccessError(400, f"protocol {name!r} is not allowed for a URL source (allowed: "
                                   f"{', '.join(sorted(protocols))}); name a file under the media root instead")
        return SourceSpec("url", spec, spec)
    return SourceSpec("file", str(media_path(spec, media_root)), spec)
