// The ssi dashboard: plain JavaScript, no build step. Everything the page
// shows comes from the daemon's live stream (/api/stream, server-sent
// events read through fetch so that the token travels in the
// Authorization header, never in a URL or a cookie). Text from the cluster
// (commands, names) is only ever set as textContent.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { token: "", session: null, snap: null, events: [], history: {}, search: "", armed: null, abort: null };

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k === "style") e.style.cssText = v; // through the CSSOM: the CSP allows no style attributes
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
}

function fmtBytes(b) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return b.toFixed(i ? 1 : 0) + " " + u[i];
}
function fmtTime(ms) { return new Date(ms).toLocaleTimeString(); }
function fmtDur(ms) {
  const s = Math.floor(ms / 1000);
  return s >= 3600 ? Math.floor(s / 3600) + "h" + String(Math.floor(s / 60) % 60).padStart(2, "0") : Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + state.token } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw Object.assign(new Error(data.error || r.statusText), { status: r.status });
  return data;
}

// --- signing in ---------------------------------------------------------

function showLogin(msg) {
  if (state.abort) state.abort.abort();
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#logout").hidden = true;
  $("#who").textContent = "";
  $("#login-error").textContent = msg || "";
  setLive(false, "not signed in");
}

async function signIn(tok) {
  state.token = tok.trim();
  try {
    state.session = await api("GET", "/api/session");
  } catch (e) {
    sessionStorage.removeItem("ssi-token");
    state.token = "";
    showLogin(e.message);
    return;
  }
  sessionStorage.setItem("ssi-token", state.token);
  const s = state.session;
  document.body.classList.toggle("readonly", !s.admin);
  $("#who").textContent = (s.user || "uid " + s.uid) + (s.admin ? " (admin)" : " (read-only)") + " · node " + s.node;
  $("#who").dataset.role = s.admin ? "admin" : "read-only";
  $("#cluster-name").textContent = s.cluster;
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = false;
  stream();
}

// --- the live stream ----------------------------------------------------

function setLive(on, text) {
  const l = $("#live");
  l.className = "live " + (on ? "on" : "off");
  l.textContent = text;
}

async function stream() {
  if (state.abort) state.abort.abort();
  const ctl = new AbortController();
  state.abort = ctl;
  while (!ctl.signal.aborted) {
    try {
      const r = await fetch("/api/stream", { headers: { Authorization: "Bearer " + state.token }, signal: ctl.signal });
      if (r.status === 401) {
        const d = await r.json().catch(() => ({}));
        showLogin(d.error || "signed out");
        return;
      }
      if (!r.ok) throw new Error(r.statusText);
      setLive(true, "live");
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          handle(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    setLive(false, "reconnecting…");
    await new Promise((res) => setTimeout(res, 1000));
  }
}

function handle(block) {
  let kind = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) kind = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  const v = JSON.parse(data);
  if (kind === "snapshot") {
    if (v.history) state.history = v.history;
    else for (const n of v.nodes) {
      if (!n.has_load) continue;
      const h = (state.history[n.num] = state.history[n.num] || []);
      if (!h.length || v.time - h[h.length - 1].t >= 1900) h.push({ t: v.time, load: n.load, mem: n.mem_free });
      if (h.length > 300) h.shift();
    }
    state.snap = v;
    render();
  } else if (kind === "events") {
    for (const e of v) state.events.push(e);
    if (state.events.length > 500) state.events.splice(0, state.events.length - 500);
    renderTimeline();
  }
}

// --- rendering ----------------------------------------------------------

function render() {
  const s = state.snap;
  const banner = $("#banner");
  const problems = (s.errors || []).concat((s.unreachable || []).map((u) => "not listed: " + u));
  banner.hidden = problems.length === 0;
  banner.textContent = problems.join("; ");
  renderGrid(s);
  renderProcs(s);
  renderNodes(s);
}

function renderGrid(s) {
  const grid = $("#grid");
  const cards = [];
  for (const n of s.nodes) {
    const pct = Math.min(100, Math.round(n.load * 100));
    const canvas = el("canvas", { width: "200", height: "50", "data-chart": String(n.num) });
    cards.push(el("div", { class: "card", "data-node": String(n.num), "data-state": n.state },
      el("div", { class: "title" }, el("span", { text: "node " + n.num + " · " + n.name }), el("span", { class: "state " + n.state, text: n.state })),
      el("div", { class: "muted", text: n.role + (n.num === s.leader && n.role !== "leader" ? " · leader" : "") + " · " + n.ipaddr }),
      n.has_load ? el("div", {}, el("div", { text: "load " + n.load.toFixed(2) + " · run queue " + n.run_queue.toFixed(1) + " · " + n.ncpu + " CPUs" }),
        el("div", { class: "bar" }, el("div", { style: "width:" + pct + "%" })),
        el("div", { text: "memory free " + fmtBytes(n.mem_free) + " · " + n.procs + " processes" })) : el("div", { class: "muted", text: "no load (" + n.state + ")" }),
      canvas));
    drawChart(canvas, state.history[n.num] || []);
  }
  grid.replaceChildren(...cards);
}

function drawChart(c, pts) {
  const g = c.getContext("2d");
  const w = c.width, h = c.height;
  g.clearRect(0, 0, w, h);
  g.strokeStyle = "#d0d7de";
  g.strokeRect(0.5, 0.5, w - 1, h - 1);
  if (pts.length < 2) return;
  const t0 = pts[0].t, t1 = pts[pts.length - 1].t;
  const top = Math.max(1, ...pts.map((p) => p.load));
  g.strokeStyle = "#0969da";
  g.beginPath();
  pts.forEach((p, i) => {
    const x = ((p.t - t0) / Math.max(1, t1 - t0)) * (w - 2) + 1;
    const y = h - 2 - (p.load / top) * (h - 4);
    i ? g.lineTo(x, y) : g.moveTo(x, y);
  });
  g.stroke();
  g.fillStyle = "#656d76";
  g.font = "10px sans-serif";
  g.fillText("load, last " + fmtDur(t1 - t0) + " (max " + top.toFixed(2) + ")", 4, 11);
}

function renderProcs(s) {
  const q = state.search.toLowerCase();
  const admin = state.session && state.session.admin;
  const up = s.nodes.filter((n) => n.state === "UP");
  const rows = [];
  let jobs = 0;
  for (const p of s.procs || []) {
    if (!p.child) jobs++;
    const text = [p.cpid, "node" + p.node, p.node, p.user, p.cmd, p.state].join(" ").toLowerCase();
    if (q && !text.includes(q)) continue;
    const actions = el("td", { class: "admin-only" });
    if (admin && !p.child) {
      const armed = state.armed === p.cpid;
      actions.append(el("button", { class: "kill", "data-cpid": String(p.cpid), text: armed ? "confirm kill" : "kill", onclick: () => kill(p.cpid) }));
      if (p.migratable) {
        const sel = el("select", { class: "target" }, ...up.filter((n) => n.num !== p.node).map((n) => el("option", { value: String(n.num), text: "node " + n.num })));
        actions.append(" ", sel, el("button", { class: "migrate", text: "migrate", onclick: () => migrate(p.cpid, sel.value) }));
      }
    }
    rows.push(el("tr", p.child ? { "data-child-of": String(p.cpid), class: "child" } : { "data-cpid": String(p.cpid) },
      el("td", { text: String(p.cpid) }), el("td", { text: String(p.node) }), el("td", { text: String(p.pid) }),
      el("td", { text: p.user }), el("td", { text: p.state }), el("td", { text: p.cpu.toFixed(1) }),
      el("td", { text: fmtBytes(p.rss) }), el("td", { text: fmtDur(p.time_ms) }), el("td", { class: "cmd", title: p.cmd, text: p.cmd }), actions));
  }
  $("#procs tbody").replaceChildren(...rows);
  $("#procs-note").textContent = jobs + " jobs, " + (s.procs || []).length + " processes" + (q ? ", " + rows.length + " shown" : "");
}

function renderNodes(s) {
  $("#nodes tbody").replaceChildren(...s.nodes.map((n) => el("tr", { "data-node": String(n.num) },
    el("td", { text: String(n.num) }), el("td", { text: n.name }), el("td", { text: n.hwaddr }), el("td", { text: n.ipaddr }),
    el("td", {}, el("span", { class: "state " + n.state, text: n.state })), el("td", { text: n.since ? fmtTime(n.since) : "" }), el("td", { text: n.role }))));
}

function renderTimeline() {
  const items = state.events.slice().reverse().map((e) => el("li", { "data-kind": e.kind, "data-node": String(e.node) },
    el("span", { class: "muted", text: new Date(e.time).toLocaleString() + " " }),
    el("span", { class: "kind " + e.kind, text: e.kind }), " ",
    el("span", { text: "node " + e.node + (e.name ? " (" + e.name + ")" : "") + ": " + (e.kind === "membership" ? e.from + " → " + e.to + " " : "") + (e.reason || "") })));
  $("#timeline").replaceChildren(...items);
}

// --- actions (admin tokens only; the server checks again) -------------------

function flash(msg) {
  const b = $("#banner");
  b.hidden = false;
  b.textContent = msg;
}

async function kill(cpid) {
  if (state.armed !== cpid) {
    state.armed = cpid; // the first click arms, the second kills
    render();
    setTimeout(() => { if (state.armed === cpid) { state.armed = null; render(); } }, 5000);
    return;
  }
  state.armed = null;
  try {
    await api("POST", "/api/kill", { cpid, signal: "TERM" });
    flash("sent TERM to " + cpid);
  } catch (e) {
    flash("kill " + cpid + ": " + e.message);
  }
}

async function migrate(cpid, node) {
  if (!node) return;
  flash("migrating " + cpid + " to node " + node + "…");
  try {
    const r = await api("POST", "/api/migrate", { cpid, node });
    flash(cpid + " moved from node " + r.from + " to node " + r.to);
  } catch (e) {
    flash("migrate " + cpid + ": " + e.message);
  }
}

async function addNode(ev) {
  ev.preventDefault();
  const out = $("#add-result");
  out.textContent = "";
  try {
    const r = await api("POST", "/api/nodes", { hwaddr: $("#add-mac").value, ipaddr: $("#add-ip").value, name: $("#add-name").value });
    out.replaceChildren(el("span", { text: "node " + r.num + " (" + r.name + ") registered; join it with: " }),
      el("code", { text: "ssi join --server " + location.hostname + " --token " + r.token }));
  } catch (e) {
    out.replaceChildren(el("span", { class: "error", text: e.message }));
  }
}

// --- start --------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("#token").value); });
  $("#logout").addEventListener("click", () => { sessionStorage.removeItem("ssi-token"); state.token = ""; showLogin(""); });
  $("#search").addEventListener("input", (e) => { state.search = e.target.value; if (state.snap) renderProcs(state.snap); });
  $("#addnode").addEventListener("submit", addNode);
  let tok = "";
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    tok = decodeURIComponent(m[1]);
    history.replaceState(null, "", location.pathname); // the token leaves the address bar
  } else {
    tok = sessionStorage.getItem("ssi-token") || "";
  }
  if (tok) signIn(tok);
  else showLogin("");
});
