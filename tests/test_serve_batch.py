"""The server's batched turns: sessions with chunks ready at once go through ``batch.step_many`` together, and each
gets exactly the events it gets when served alone (in-process ``SessionManager`` on the tiny model, greedy)."""

from __future__ import annotations

import time

import pytest

from streaming_vlm.models import DEMO_VIDEO

pytest.importorskip("fastapi")

SETTINGS = {"min_pixels": 3136, "max_pixels": 3136, "max_new_tokens": 3, "temperature": 0.0}
CHUNK_FIELDS = ("type", "index", "round", "start", "end", "text", "new_tokens", "cache_tokens", "question_id",
                "question", "delta", "reason", "error")


def _wait(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _run(tiny, tmp_path, requests, question=None):
    """Serve ``requests`` (file sessions read as fast as taken) with every session's first chunks ready before the
    worker starts; ``question`` is asked of the first session before that. Returns each session's events without
    times, and the manager's batch counts."""
    from streaming_vlm.serve.messages import QuestionRequest, SessionRequest
    from streaming_vlm.serve.sessions import Limits, SessionManager

    manager = SessionManager(tiny, checkpoint={}, server_settings=SETTINGS, limits=Limits(),
                             media_root=str(tmp_path), demo_video=str(DEMO_VIDEO), model_name="tiny")
    try:
        sessions = [manager.create(SessionRequest(**r)) for r in requests]
        if question is not None:
            manager.ask(sessions[0], QuestionRequest(question, max_tokens=5))
        _wait(lambda: all(s.feed._queue.full() for s in sessions))
        manager.start()
        _wait(lambda: all(s.ended for s in sessions))
    finally:
        manager.close()
    events = [[{k: e[k] for k in CHUNK_FIELDS if k in e} for e in s.log.since(0)
               if e["type"] in ("commentary", "answer", "token", "end")] for s in sessions]
    return events, manager.batches


def test_two_file_sessions_batched_comment_as_each_alone(tiny, tmp_path):
    """Two file sessions on different spans of the demo clip, one answering a question on its first chunk (tokens
    streamed): served together (batches of two ran) each gets the commentary, answer and token events it gets alone."""
    requests = [dict(source="demo", realtime=False, start=0.0, duration=4),
                dict(source="demo", realtime=False, start=10.0, duration=5)]
    together, batches = _run(tiny, tmp_path, requests, question="what happens?")
    assert batches[2] >= 1, batches
    alone = [_run(tiny, tmp_path, [requests[0]], question="what happens?"), _run(tiny, tmp_path, [requests[1]])]
    assert all(not counts for _, counts in alone)  # one session: never batched
    for events, (expected, _) in zip(together, alone, strict=True):
        assert events == expected[0]
    first, second = together
    assert [e["index"] for e in first if e["type"] in ("commentary", "answer")] == [0, 1, 2, 3]
    assert [e["index"] for e in second if e["type"] in ("commentary", "answer")] == [0, 1, 2, 3, 4]
    assert first[0]["type"] == "token" and any(e["type"] == "answer" for e in first)
    assert first[-1] == second[-1] == {"type": "end", "reason": "end of stream", "error": False}
