"use strict";
// The console: polls this node's read-only JSON and renders it. Everything that comes from peers
// (hostnames, names, errors) is set as text, never as HTML.

const POLL_MS = 1000;
const PANEL_MS = 2000;

function human(n) {
  if (n === null || n === undefined || isNaN(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(Math.round(n))) + " " + units[i];
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  return s < 60 ? s.toFixed(1) + " s" : Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function fillRows(table, rows) {
  const body = table.tBodies[0];
  body.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
    return tr;
  }));
}

function cell(text, cls, title) {
  const td = el("td", text, cls);
  if (title) td.title = title;
  return td;
}

function progress(job) {
  const td = el("td");
  const bar = el("div", null, "bar");
  const fill = el("div");
  const pct = job.total ? Math.min(100, (100 * job.bytes) / job.total) : 0;
  fill.style.width = pct.toFixed(1) + "%";
  bar.appendChild(fill);
  td.appendChild(bar);
  td.appendChild(el("span", " " + human(job.bytes) + (job.total ? " / " + human(job.total) : "")));
  return td;
}

function render(s) {
  document.getElementById("node-name").textContent =
    (s.node.hostname || "") + " · " + s.node.uuid.slice(0, 8) + " · " + s.node.version;
  document.getElementById("status-line").textContent =
    "updated " + new Date(s.time * 1000).toLocaleTimeString() + " · up " + seconds(s.node.uptime);
  const online = s.nodes.filter((n) => n.status === "online" || n.self).length;
  document.getElementById("nodes-online").textContent = online + " / " + s.nodes.length;
  const b = s.bytes.by_source;
  document.getElementById("bytes-local").textContent = human(b.local || 0);
  document.getElementById("bytes-peer").textContent = human(b.peer || 0);
  document.getElementById("bytes-origin").textContent = human(b.origin || 0);
  document.getElementById("bytes-saved").textContent = human(s.bytes.saved);
  document.getElementById("bytes-served").textContent = human(s.bytes.served_to_peers);

  fillRows(document.getElementById("nodes"), s.nodes.map((n) => [
    cell(n.uuid, "mono uuid"), n.hostname, cell(n.url, "mono"),
    cell(n.status, "state state-" + n.status),
    cell(String(n.blobs) + (n.downloading ? " (+" + n.downloading + ")" : ""), "num"),
    cell(human(n.bytes), "num"), n.version, (n.plugins || []).join(", "),
  ]));

  fillRows(document.getElementById("transfers"), s.transfers.map((t) => [
    t.what || "–", cell(t.digest.slice(0, 19), "mono", t.digest), progress(t),
    cell((t.from || "").replace(/^peer:(.{8}).*/, "peer $1"), "mono"), cell(seconds(t.elapsed), "num"),
  ]));
  document.getElementById("transfers-empty").hidden = s.transfers.length > 0;

  fillRows(document.getElementById("plugins"), s.plugins.map((p) => {
    const status = p.status === "ready" && p.degraded ? "degraded" : p.status;
    return [p.name, p.kind, p.version, cell(status, "state state-" + status), p.error || p.degraded || ""];
  }));
  syncPanels(s.panels);
}

// Plugins' own panels: each is a JSON table at a URL the plugin declared; the page knows none of them.
const panels = new Map();

function syncPanels(list) {
  const host = document.getElementById("panels");
  for (const p of list) {
    if (panels.has(p.url)) continue;
    const section = el("section");
    section.id = "panel-" + p.plugin + "-" + panels.size;
    section.appendChild(el("h2", p.title));
    const table = el("table");
    table.appendChild(el("thead"));
    table.appendChild(el("tbody"));
    section.appendChild(table);
    const note = el("p", "", "muted");
    section.appendChild(note);
    host.appendChild(section);
    panels.set(p.url, { table, note });
    loadPanel(p.url);
  }
}

function renderPanel(url, data) {
  const { table, note } = panels.get(url);
  const head = document.createElement("tr");
  data.columns.forEach((c, i) => head.appendChild(el("th", c, data.kinds && data.kinds[i] === "bytes" ? "num" : "")));
  table.tHead.replaceChildren(head);
  fillRows(table, data.rows.map((r) => r.map((v, i) => {
    const kind = data.kinds ? data.kinds[i] : "text";
    if (kind === "bytes") return cell(human(v), "num");
    if (kind === "mono") return cell(Array.isArray(v) ? v.join(", ") : v, "mono");
    return cell(Array.isArray(v) ? v.join(", ") : v);
  })));
  note.textContent = data.rows.length ? (data.note || "") : (data.empty || "Nothing yet.");
}

async function loadPanel(url) {
  try {
    const r = await fetch(url, { cache: "no-store" });
    if (r.ok) renderPanel(url, await r.json());
    else panels.get(url).note.textContent = "panel unavailable (" + r.status + ")";
  } catch (e) {
    panels.get(url).note.textContent = "panel unavailable";
  }
}

async function poll() {
  try {
    const r = await fetch("/ui/state", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
  } catch (e) {
    document.getElementById("status-line").textContent = "cannot reach the node: " + e.message;
  }
}

poll();
setInterval(poll, POLL_MS);
setInterval(() => { for (const url of panels.keys()) loadPanel(url); }, PANEL_MS);
