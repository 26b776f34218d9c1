"""``streaming-vlm serve``: live sessions on one model over HTTP and WebSockets (docs/serve.md).

- ``security.py``: the access token, hosts and origins answered, the files a client may name;
- ``messages.py``: what clients send, parsed and checked;
- ``events.py``: a session's numbered event log (bounded, replayable, followed by many clients);
- ``sessions.py``: sessions, their sources and feeds, and the one model worker that serves them in turn;
- ``feeds.py``: a source that wakes the worker, and a feed that never drops (``realtime: false``);
- ``app.py``: the FastAPI routes; ``cli.py``: the command's options and start-up;
- ``static/``: the web page served at ``/``.

Importing this package loads nothing heavy.
"""
