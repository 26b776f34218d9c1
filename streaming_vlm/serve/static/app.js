// streaming-vlm live page: plain JavaScript, no external resources.
//
// Talks to the server's API (docs/serve.md): creates sessions (a source path/URL, or a push session fed
// from the browser's webcam or screen over the frames WebSocket), follows one session's events over its
// WebSocket (captions, transcript, answers, gauges), asks questions and lists/stops sessions. A `?token=`
// in the page's URL is passed on to every request (as a Bearer header where possible, else as `?token=`).
"use strict";

(() => {
  const TOKEN = new URLSearchParams(location.search).get("token") || "";
  const HISTORY = 90;           // points kept per sparkline
  const POLL_MS = 2000;         // session list and health refresh
  const MAX_BUFFERED = 2 << 20; // frames are dropped while this much is unsent (no queue builds up)
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- API

  function url(path, query = {}) {
    const u = new URL(path, document.baseURI);
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null) u.searchParams.set(k, v);
    if (TOKEN) u.searchParams.set("token", TOKEN);
    return u;
  }

  function wsUrl(path, query) {
    const u = url(path, query);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    return u.href;
  }

  function errorText(data, fallback) {
    if (!data) return fallback;
    if (typeof data.error === "string") return data.error;
    if (typeof data.detail === "string") return data.detail;
    if (Array.isArray(data.detail) && data.detail.length) return data.detail.map((d) => d.msg || String(d)).join("; ");
    return fallback;
  }

  async function api(method, path, body) {
    const headers = {};
    if (TOKEN) headers.Authorization = `Bearer ${TOKEN}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(new URL(path, document.baseURI), {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch { /* not JSON */ }
    if (!response.ok) throw new Error(errorText(data, `${method} ${path}: HTTP ${response.status}`));
    return data;
  }

  // ---------------------------------------------------------------- formatting

  const fmtTime = (s) => {
    if (!Number.isFinite(s)) return "";
    const m = Math.floor(s / 60), sec = s - 60 * m;
    return m ? `${m}:${sec.toFixed(1).padStart(4, "0")}` : `${sec.toFixed(1)}s`;
  };
  const fmtSpan = (a, b) => `${fmtTime(a)}–${fmtTime(b)}`;
  const fmtSeconds = (s) => !Number.isFinite(s) ? "–" : s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`;
  const fmtInt = (n) => Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "–";
  const fmtMB = (mb) => !Number.isFinite(mb) ? "–" : mb >= 1024 ? `${(mb / 1024).toFixed(2)} GB` : `${Math.round(mb)} MB`;
  // The model marks commentary that goes on in the next chunk with a trailing " ..."; captions drop it.
  const cleanText = (t) => (t || "").replace(/\s*\.\.\.\s*$/, "").trim();

  function setStatus(text, isError = false) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", isError);
  }

  // ---------------------------------------------------------------- gauges

  /** A number and a sparkline of its last HISTORY values; `fromZero`: the sparkline's scale starts at 0 (else it
   * spans the values' range, for quantities whose changes are small next to their size). */
  class Gauge {
    constructor(id, format, fromZero = true) {
      this.fromZero = fromZero;
      this.el = $(id);
      this.value = this.el.querySelector(".value");
      this.svg = this.el.querySelector("svg");
      this.format = format;
      this.reset();
    }
    reset() {
      this.points = [];
      this.value.textContent = "–";
      this.svg.replaceChildren();
    }
    push(v) {
      if (!Number.isFinite(v)) return;
      this.points.push(v);
      if (this.points.length > HISTORY) this.points.shift();
      this.value.textContent = this.format(v);
      this.draw();
    }
    draw() {
      const ns = "http://www.w3.org/2000/svg", w = 120, h = 32, pad = 2;
      const n = this.points.length, max = Math.max(...this.points);
      let low = this.fromZero ? 0 : Math.min(...this.points), span = max - low;
      if (!(span > 0) && this.fromZero) span = 1; // all zero: a line along the bottom
      else if (!(span > 0)) { span = Math.abs(max) || 1; low = max - span / 2; } // flat: a line across the middle
      const xy = this.points.map((v, i) => [n === 1 ? w : (i * w) / (n - 1), h - pad - ((h - 2 * pad) * (v - low)) / span]);
      const base = document.createElementNS(ns, "line");
      Object.entries({ class: "base", x1: 0, x2: w, y1: h - pad, y2: h - pad }).forEach(([k, v]) => base.setAttribute(k, v));
      const area = document.createElementNS(ns, "polygon");
      area.setAttribute("class", "area");
      area.setAttribute("points", [[xy[0][0], h - pad], ...xy, [xy[n - 1][0], h - pad]].map((p) => p.join(",")).join(" "));
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("points", xy.map((p) => p.join(",")).join(" "));
      const title = document.createElementNS(ns, "title");
      title.textContent = `latest ${this.format(this.points[n - 1])}, min ${this.format(Math.min(...this.points))}, `
        + `max ${this.format(max)}`;
      this.svg.replaceChildren(title, base, area, line);
    }
  }

  const gauges = {
    latency: new Gauge("g-latency", fmtSeconds),
    lag: new Gauge("g-lag", fmtSeconds),
    cache: new Gauge("g-cache", fmtInt, false),
    memory: new Gauge("g-memory", fmtMB, false),
  };

  // ---------------------------------------------------------------- the watched session

  let current = null; // {id, kind, ws, lastSeq, ended, counts, answers: Map, capture}

  function resetViews() {
    Object.values(gauges).forEach((g) => g.reset());
    $("transcript").replaceChildren();
    $("answers").replaceChildren();
    $("caption").textContent = "";
    $("caption-time").textContent = "";
    $("caption-box").classList.remove("stale");
    ["c-chunks", "c-skipped", "c-questions"].forEach((id) => { $(id).textContent = "0"; });
    $("c-first-token").textContent = "–";
    const video = $("video");
    video.pause();
    video.removeAttribute("src");
    video.srcObject = null;
    video.controls = false;
    video.load();
    video.hidden = true;
    $("frame").hidden = true;
    $("frame").removeAttribute("src");
    $("placeholder").hidden = false;
  }

  function detach() {
    if (!current) return;
    current.closed = true;
    if (current.ws) current.ws.close();
    stopCapture(current);
    current = null;
    $("session-label").textContent = "";
    $("downloads").hidden = true;
    setControls();
  }

  function setControls() {
    const live = Boolean(current && !current.ended);
    $("stop").disabled = !live;
    $("question").disabled = !live;
    $("ask").disabled = !live;
  }

  /** Follow session `summary` ({id, kind, source, state, events, ...}); `capture`: the local stream we push to it.
   * `fresh`: we just created it. Otherwise the events it logged before now (`summary.events`) are history: they
   * fill the transcript and gauges but do not drive the video. The page pushes one capture at most: following
   * another session ends it. */
  function attach(summary, capture = null, fresh = false) {
    detach();
    resetViews();
    current = {
      id: summary.id, kind: summary.kind, source: summary.source, ws: null, lastSeq: 0, ended: false,
      closed: false, chunks: 0, skipped: 0, questions: 0, answers: new Map(), capture, playing: false,
      realtime: summary.realtime !== false, speed: summary.speed || 1, history: fresh ? 0 : summary.events || 0,
    };
    const label = capture ? `${capture.kind} (pushed)` : summary.source || summary.kind;
    $("session-label").textContent = `${summary.id} · ${label}`;
    $("dl-vtt").href = url(`api/sessions/${summary.id}/transcript.vtt`).href;
    $("dl-jsonl").href = url(`api/sessions/${summary.id}/transcript.jsonl`).href;
    $("downloads").hidden = false;
    showMedia(current);
    if (summary.state === "ended") current.ended = true;
    setControls();
    connect(current);
    refreshSessions();
  }

  function showMedia(s) {
    const video = $("video"), frame = $("frame");
    $("placeholder").hidden = true;
    if (s.capture) {
      video.srcObject = s.capture.stream;
      video.hidden = false;
      video.play().catch(() => {});
    } else if (s.kind === "file") {
      video.src = url(`api/sessions/${s.id}/media`).href;
      video.hidden = false;
    } else {
      frame.hidden = false;
    }
  }

  function connect(s) {
    const ws = new WebSocket(wsUrl(`api/sessions/${s.id}/ws`, s.lastSeq ? { since: s.lastSeq } : {}));
    s.ws = ws;
    ws.onmessage = (msg) => {
      let ev;
      try { ev = JSON.parse(msg.data); } catch { return; }
      if (Number.isFinite(ev.seq)) {
        if (ev.seq <= s.lastSeq) return; // replayed after a reconnection
        s.lastSeq = ev.seq;
      }
      handleEvent(s, ev);
    };
    ws.onclose = (e) => {
      if (s.closed || s !== current) return;
      if (e.code === 1008) { setStatus("the server refused the event stream (token?)", true); return; }
      if (e.code === 4404) { // the server no longer keeps this session
        s.ended = true;
        setControls();
        setStatus(e.reason || `session ${s.id} is gone`, true);
        return;
      }
      if (!s.ended) setTimeout(() => { if (!s.closed && s === current && !s.ended) connect(s); }, 1000);
    };
  }

  // ---------------------------------------------------------------- events

  function handleEvent(s, ev) {
    if (s !== current) return;
    ev.live = !(ev.seq <= s.history);
    dispatch(s, ev);
    if (ev.seq === s.history && s.lastChunk && !s.capture && s.kind !== "file") { // history done: the latest frame
      $("frame").src = url(`api/sessions/${s.id}/frame.jpg`, { chunk: s.lastChunk.index }).href;
    }
  }

  function dispatch(s, ev) {
    switch (ev.type) {
      case "started": return onStarted(s, ev);
      case "commentary": return onCommentary(s, ev);
      case "skipped": return onSkipped(s, ev);
      case "question": return onQuestion(s, ev);
      case "token": return onToken(s, ev);
      case "answer": return onAnswer(s, ev);
      case "issue": return addLine("", `source: ${ev.message}`, "note");
      case "error": return onError(s, ev);
      case "end": return onEnd(s, ev);
      default: return undefined;
    }
  }

  function onStarted(s, ev) {
    setStatus(`session ${s.id} running`);
    if (typeof ev.realtime === "boolean") s.realtime = ev.realtime;
    if (Number.isFinite(ev.speed)) s.speed = ev.speed;
    if (ev.live && s.kind === "file" && !s.capture && s.realtime) playVideo(s, null);
  }

  /** Play the file source's video in step with the session (`at`: seek there first; null: from where it is). */
  function playVideo(s, at) {
    const video = $("video");
    if (Number.isFinite(at)) {
      try { video.currentTime = at; } catch { /* not seekable yet */ }
    }
    video.playbackRate = Math.min(16, s.speed);
    s.playing = true;
    video.play().catch(() => {});
  }

  /** A chunk went through the model (a `commentary`, or an `answer` given in its place). */
  function onChunk(s, ev) {
    s.chunks += 1;
    $("c-chunks").textContent = fmtInt(s.chunks);
    gauges.latency.push(ev.latency_s);
    gauges.lag.push(ev.lag_s);
    gauges.cache.push(ev.cache_tokens);
    gauges.memory.push(ev.memory_mb);
    s.lastChunk = ev;
    if (ev.live && performance.now() - lastListed > 1000) refreshSessions(); // keep the list's row in step
    if (s.capture || !ev.live) return; // history: the media catches up with the next live chunk
    if (s.kind === "file") {
      const video = $("video");
      if (!s.realtime) { // chunks come as fast as the model goes: show the chunk's last moment
        video.pause();
        video.currentTime = Math.max(0, ev.end - 0.05);
        return;
      }
      // When the event was sent, the stream stood at the chunk's end plus its delay (stream seconds).
      const now = ev.end + (Number.isFinite(ev.delay_s) ? ev.delay_s : (ev.lag_s || 0) + (ev.latency_s || 0) * s.speed);
      if (!s.playing || Math.abs(video.currentTime - now) > 1.5 * Math.max(1, s.speed)) playVideo(s, now);
    } else {
      $("frame").src = url(`api/sessions/${s.id}/frame.jpg`, { chunk: ev.index }).href;
    }
  }

  function onCommentary(s, ev) {
    onChunk(s, ev);
    const text = cleanText(ev.text);
    $("caption-box").classList.toggle("stale", !text);
    if (text) {
      $("caption").textContent = text;
      $("caption-time").textContent = fmtSpan(ev.start, ev.end);
      addLine(fmtSpan(ev.start, ev.end), text);
    }
  }

  function onSkipped(s, ev) {
    s.skipped += ev.count || 0;
    $("c-skipped").textContent = fmtInt(s.skipped);
    addLine(fmtSpan(ev.start, ev.end), `skipped ${ev.count} chunk${ev.count === 1 ? "" : "s"} (the model fell behind)`, "note");
  }

  function answerItem(s, qid, text) {
    let item = s.answers.get(qid);
    if (!item) {
      const li = document.createElement("li");
      const q = document.createElement("div");
      q.className = "q";
      const a = document.createElement("p");
      a.className = "a pending";
      a.textContent = "waiting for the next chunk…";
      const meta = document.createElement("div");
      meta.className = "meta";
      li.append(q, a, meta);
      $("answers").prepend(li);
      item = { li, q, a, meta, text: "" };
      s.answers.set(qid, item);
    }
    if (text) item.q.textContent = text;
    return item;
  }

  function onQuestion(s, ev) {
    answerItem(s, ev.question_id, ev.text); // queued: it joins the next chunk
  }

  function onToken(s, ev) {
    const item = answerItem(s, ev.question_id);
    item.a.classList.remove("pending");
    item.a.textContent = ev.text; // the answer so far
  }

  function onAnswer(s, ev) {
    onChunk(s, ev);
    const item = answerItem(s, ev.question_id, ev.question);
    item.a.classList.remove("pending");
    item.li.classList.add("done");
    item.a.textContent = cleanText(ev.text) || "(no answer)";
    const parts = [`at ${fmtSpan(ev.start, ev.end)}`];
    if (Number.isFinite(ev.first_token_s)) parts.push(`first token ${fmtSeconds(ev.first_token_s)}`);
    if (Number.isFinite(ev.latency_s)) parts.push(`answered in ${fmtSeconds(ev.latency_s)}`);
    item.meta.textContent = parts.join(" · ");
    if (Number.isFinite(ev.first_token_s)) $("c-first-token").textContent = fmtSeconds(ev.first_token_s);
    addLine(fmtSpan(ev.start, ev.end), `Q: ${item.q.textContent} — A: ${cleanText(ev.text)}`, "qa");
  }

  function onError(s, ev) {
    if (ev.question_id && s.answers.has(ev.question_id)) {
      const item = s.answers.get(ev.question_id);
      item.a.textContent = ev.message;
      item.a.classList.add("pending");
    }
    addLine("", ev.message, "err");
  }

  function onEnd(s, ev) {
    s.ended = true;
    stopCapture(s);
    if (s.kind === "file" && !s.capture) { // the file can be watched again at leisure
      $("video").pause();
      $("video").controls = true;
    }
    addLine("", `ended: ${ev.reason}`, ev.error ? "err" : "end");
    setStatus(`session ${s.id} ended: ${ev.reason}`, Boolean(ev.error));
    for (const item of s.answers.values()) {
      if (!item.li.classList.contains("done") && item.a.classList.contains("pending")) {
        item.a.textContent = "not answered: the session ended";
      }
    }
    setControls();
    refreshSessions();
  }

  function addLine(time, text, cls = "") {
    const list = $("transcript");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const li = document.createElement("li");
    const t = document.createElement("span");
    t.className = "t";
    t.textContent = time;
    const body = document.createElement("span");
    if (cls) body.className = cls;
    body.textContent = text;
    li.append(t, body);
    list.append(li);
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  // ---------------------------------------------------------------- pushing webcam / screen frames

  async function openCapture(kind) {
    const media = navigator.mediaDevices;
    if (!media) throw new Error("this browser gives no camera or screen access here (it needs https or localhost)");
    const stream = kind === "screen"
      ? await media.getDisplayMedia({ video: true, audio: false })
      : await media.getUserMedia({ video: true, audio: false });
    const video = document.createElement("video");
    video.muted = true;
    video.playsInline = true;
    video.srcObject = stream;
    await video.play();
    return { kind, stream, video, ws: null, timer: null, lastT: -Infinity };
  }

  /** Send the capture's frames to session `id` at `fps`: 8-byte little-endian float64 time + JPEG each. */
  function startPushing(s, framesPath, fps, maxPixels) {
    const cap = s.capture;
    const canvas = document.createElement("canvas");
    const ctx = canvas.getContext("2d");
    cap.ws = new WebSocket(wsUrl(framesPath));
    cap.ws.binaryType = "arraybuffer";
    cap.ws.onclose = () => { if (cap.timer) clearInterval(cap.timer); cap.timer = null; };
    const send = () => {
      const { video, ws } = cap;
      if (ws.readyState !== WebSocket.OPEN || !video.videoWidth) return;
      if (ws.bufferedAmount > MAX_BUFFERED || cap.encoding) return; // behind: drop this frame
      const t = performance.now() / 1000;
      if (t <= cap.lastT) return;
      cap.lastT = t;
      // Send no more pixels than the model takes (it resizes to at most max_pixels anyway).
      const scale = Math.min(1, Math.sqrt((maxPixels || 1e12) / (video.videoWidth * video.videoHeight)));
      canvas.width = Math.max(1, Math.round(video.videoWidth * scale));
      canvas.height = Math.max(1, Math.round(video.videoHeight * scale));
      ctx.drawImage(video, 0, 0, canvas.width, canvas.height);
      cap.encoding = true; // one encode at a time, so frames leave in the order of their timestamps
      canvas.toBlob(async (blob) => {
        try {
          if (!blob || ws.readyState !== WebSocket.OPEN) return;
          const jpeg = new Uint8Array(await blob.arrayBuffer());
          const message = new Uint8Array(8 + jpeg.length);
          new DataView(message.buffer).setFloat64(0, t, true);
          message.set(jpeg, 8);
          ws.send(message.buffer);
        } finally {
          cap.encoding = false;
        }
      }, "image/jpeg", 0.85);
    };
    cap.ws.onopen = () => { cap.timer = setInterval(send, 1000 / fps); };
    for (const track of cap.stream.getVideoTracks()) {
      track.addEventListener("ended", () => endPushing(cap)); // the user stopped sharing
    }
  }

  function endPushing(cap) {
    if (cap.timer) clearInterval(cap.timer);
    cap.timer = null;
    if (cap.ws && cap.ws.readyState === WebSocket.OPEN) {
      cap.ws.send(JSON.stringify({ type: "end" }));
      cap.ws.close();
    }
  }

  function stopCapture(s) {
    const cap = s && s.capture;
    if (!cap) return;
    endPushing(cap);
    cap.stream.getTracks().forEach((t) => t.stop());
  }

  // ---------------------------------------------------------------- start / stop / ask

  function settingsFromForm() {
    const settings = {};
    const text = (id, key) => { const v = $(id).value.trim(); if (v) settings[key] = v; };
    const num = (id, key) => { const v = $(id).value.trim(); if (v) settings[key] = Number(v); };
    text("set-query", "query");
    num("set-temperature", "temperature");
    num("set-fps", "fps");
    num("set-max-new-tokens", "max_new_tokens");
    return settings;
  }

  async function start(event) {
    event.preventDefault();
    const kind = new FormData($("start-form")).get("kind");
    const body = { settings: settingsFromForm() };
    const previous = $("set-previous").value.trim();
    if (previous) body.previous_text = previous;
    $("start").disabled = true;
    let capture = null;
    try {
      if (kind === "source") {
        const source = $("source").value.trim();
        if (!source) throw new Error("give a path or URL to start from");
        body.source = source;
        const num = (id, key) => { const v = $(id).value.trim(); if (v) body[key] = Number(v); };
        num("set-start", "start");
        num("set-duration", "duration");
        num("set-speed", "speed");
        if ($("set-fast").checked) body.realtime = false;
        setStatus(`starting ${source}…`);
      } else {
        setStatus(kind === "screen" ? "choose a screen or window to share…" : "allow the camera…");
        capture = await openCapture(kind);
        body.push = true;
      }
      const created = await api("POST", "api/sessions", body);
      attach(created.summary || { id: created.id, kind: body.push ? "push" : "file", source: body.source }, capture,
        true);
      if (capture) {
        // Frames go at the session's frame rate (what the model samples), within the server's limit.
        const resolved = created.settings || {};
        const limit = (serverInfo && serverInfo.limits && serverInfo.limits.max_push_fps) || Infinity;
        startPushing(current, `api/sessions/${created.id}/frames`,
          Math.min(resolved.fps || 2, limit), resolved.max_pixels);
      }
      setStatus(`session ${created.id} started`);
    } catch (err) {
      if (capture) capture.stream.getTracks().forEach((t) => t.stop());
      setStatus(err.message || String(err), true);
    } finally {
      $("start").disabled = false;
    }
  }

  async function stopSession(id) {
    try {
      await api("DELETE", `api/sessions/${id}`);
      if (current && current.id === id) stopCapture(current);
    } catch (err) {
      setStatus(err.message || String(err), true);
    }
    refreshSessions();
  }

  async function ask(event) {
    event.preventDefault();
    const input = $("question");
    const text = input.value.trim();
    if (!text || !current || current.ended) return;
    const s = current;
    try {
      const { question_id: qid } = await api("POST", `api/sessions/${s.id}/questions`, { text });
      answerItem(s, qid, text);
      s.questions += 1;
      $("c-questions").textContent = fmtInt(s.questions);
      input.value = "";
    } catch (err) {
      setStatus(err.message || String(err), true);
    }
  }

  // ---------------------------------------------------------------- sessions list and health

  let lastListed = -Infinity;

  async function refreshSessions() {
    lastListed = performance.now();
    let list;
    try { list = await api("GET", "api/sessions"); } catch { return; }
    const body = $("sessions").querySelector("tbody");
    const rows = list.map((s) => {
      const tr = document.createElement("tr");
      if (current && current.id === s.id) tr.className = "current";
      const cell = (text, cls = "") => {
        const td = document.createElement("td");
        if (cls) td.className = cls;
        td.textContent = text;
        tr.append(td);
        return td;
      };
      cell(s.id);
      cell(s.source || s.kind, "src").title = s.source || s.kind;
      cell(s.end_reason ? `${s.state} (${s.end_reason})` : s.state, `state-${s.state}`);
      cell(fmtInt(s.chunks), "num");
      cell(fmtInt(s.skipped), "num");
      cell(fmtSeconds(s.last_lag_s), "num");
      const acts = cell("", "acts");
      if (!current || current.id !== s.id) {
        const watch = document.createElement("button");
        watch.type = "button";
        watch.className = "small";
        watch.textContent = "Watch";
        watch.setAttribute("aria-label", `watch session ${s.id}`);
        watch.onclick = () => attach(s);
        acts.append(watch);
      }
      if (s.state !== "ended") {
        const stop = document.createElement("button");
        stop.type = "button";
        stop.className = "small";
        stop.textContent = "Stop";
        stop.setAttribute("aria-label", `stop session ${s.id}`);
        stop.onclick = () => stopSession(s.id);
        acts.append(stop);
      }
      return tr;
    });
    body.replaceChildren(...rows);
    $("no-sessions").hidden = rows.length > 0;
  }

  let serverInfo = null; // GET api/settings: the server's default stream settings and limits

  async function loadServerInfo() {
    try {
      serverInfo = await api("GET", "api/settings");
    } catch {
      return;
    }
    const defaults = serverInfo.settings || {};
    const hint = (id, key) => { if (defaults[key] !== undefined && defaults[key] !== null) $(id).placeholder = String(defaults[key]); };
    hint("set-query", "query");
    hint("set-temperature", "temperature");
    hint("set-fps", "fps");
    hint("set-max-new-tokens", "max_new_tokens");
  }

  async function refreshHealth() {
    const el = $("health");
    try {
      const h = await api("GET", "health");
      el.className = "health ok";
      el.replaceChildren(Object.assign(document.createElement("span"), { className: "dot" }),
        `${h.model} on ${h.device} · ${h.sessions}/${h.max_sessions} sessions`);
    } catch (err) {
      el.className = "health";
      el.replaceChildren(Object.assign(document.createElement("span"), { className: "dot" }),
        `server unreachable: ${err.message || err}`);
    }
  }

  // ---------------------------------------------------------------- wiring

  function init() {
    $("start-form").addEventListener("submit", start);
    $("ask-form").addEventListener("submit", ask);
    $("stop").addEventListener("click", () => { if (current) stopSession(current.id); });
    const sourceRow = $("source-row");
    for (const radio of document.querySelectorAll('input[name="kind"]')) {
      radio.addEventListener("change", () => {
        sourceRow.hidden = $("file-options").hidden = radio.value !== "source";
      });
    }
    resetViews();
    setControls();
    refreshHealth();
    refreshSessions();
    loadServerInfo();
    setInterval(() => { refreshHealth(); refreshSessions(); }, POLL_MS);
  }

  init();
})();
