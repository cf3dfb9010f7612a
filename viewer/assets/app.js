// The trace viewer's page: a live list of requests (server-sent events), a search, and a
// waterfall per request. Hand-written, no framework, no build step; served by `weft up`.
"use strict";

const $ = (selector) => document.querySelector(selector);
const rows = new Map(); // trace id -> summary
let current = null; // the trace shown in the waterfall
let pending = null; // an id asked for (by link) before its spans arrived
let query = "";

// --- formatting ---

function ms(nanos) {
  const value = nanos / 1e6;
  if (value >= 1000) return (value / 1000).toFixed(2) + " s";
  if (value >= 10) return value.toFixed(1) + " ms";
  return value.toFixed(2) + " ms";
}

// The end of a long id: the gateway's ids share a per-thread prefix, their ends differ.
function shortId(id) {
  return id.length > 14 ? "…" + id.slice(-12) : id;
}

function clock(nanos) {
  const date = new Date(nanos / 1e6);
  return date.toLocaleTimeString([], { hour12: false }) + "." + String(date.getMilliseconds()).padStart(3, "0");
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// A colour per service: a distinct one from a palette for each service seen on this page,
// starting from the name's hash so that a service tends to keep its colour across loads.
// No red: red marks failures.
const PALETTE = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#393b79"];
const assigned = new Map();
function colour(service) {
  if (assigned.has(service)) return assigned.get(service);
  let hash = 0;
  for (const c of service) hash = (hash * 31 + c.charCodeAt(0)) >>> 0;
  const used = new Set(assigned.values());
  let index = hash % PALETTE.length;
  for (let n = 0; n < PALETTE.length && used.has(PALETTE[index]); n++) index = (index + 1) % PALETTE.length;
  const chosen = used.size < PALETTE.length ? PALETTE[index] : `hsl(${hash % 360}, 60%, 45%)`;
  assigned.set(service, chosen);
  return chosen;
}

// --- the list ---

function matchesFilters(summary) {
  if ($("#failed-only").checked && !summary.failed) return false;
  return true;
}

function renderRow(summary) {
  const tr = el("tr", {
    class: "request" + (summary.failed ? " failed" : "") + (current && current.summary.trace_id === summary.trace_id ? " selected" : ""),
    "data-trace-id": summary.trace_id,
    "data-request-id": summary.request_id || "",
    "data-status": summary.status,
    "data-failed": String(summary.failed),
  },
    el("td", { class: "time" }, clock(summary.start_unix_nano)),
    el("td", { class: "method" }, summary.method),
    el("td", { class: "route" }, el("span", { title: summary.route }, summary.route)),
    el("td", { class: "status" }, summary.status || "…"),
    el("td", { class: "num duration" }, ms(summary.duration_nanos)),
    el("td", { class: "rid", title: summary.request_id || summary.trace_id }, shortId(summary.request_id || summary.trace_id)),
  );
  tr.addEventListener("click", () => { location.hash = "#/request/" + (summary.request_id || summary.trace_id); });
  return tr;
}

function upsert(summary, fresh) {
  const body = $("#requests tbody");
  const old = body.querySelector(`tr[data-trace-id="${summary.trace_id}"]`);
  rows.set(summary.trace_id, summary);
  if (!matchesFilters(summary)) {
    if (old) old.remove();
    return;
  }
  const row = renderRow(summary);
  if (old) {
    old.replaceWith(row);
  } else {
    if (fresh) row.classList.add("fresh");
    // Newest (largest seq) first.
    let before = null;
    for (const other of body.children) {
      const seq = rows.get(other.dataset.traceId)?.seq ?? -1;
      if (seq < summary.seq) { before = other; break; }
    }
    body.insertBefore(row, before);
  }
  $("#empty").hidden = body.children.length > 0;
}

function renderStats(stats) {
  if (!stats) return;
  let text = `${stats.traces} of ${stats.max_traces} requests kept`;
  text += ` · dropped: ${stats.dropped_traces} oldest requests, ${stats.dropped_spans} spans`;
  $("#stats").textContent = text;
  $("#stats").dataset.droppedTraces = stats.dropped_traces;
}

async function loadList() {
  const params = new URLSearchParams({ q: query, limit: "500" });
  if ($("#failed-only").checked) params.set("failed", "1");
  const response = await fetch("api/requests?" + params);
  if (!response.ok) return;
  const list = await response.json();
  const body = $("#requests tbody");
  body.replaceChildren();
  rows.clear();
  for (const summary of list.requests) {
    rows.set(summary.trace_id, summary);
    body.append(renderRow(summary));
  }
  $("#empty").hidden = list.requests.length > 0;
  $("#empty").textContent = query ? `No request matches “${query}”.` : $("#empty").textContent;
  renderStats(list.stats);
}

let statsTimer = null;
function refreshStatsSoon() {
  if (statsTimer) return;
  statsTimer = setTimeout(async () => {
    statsTimer = null;
    const response = await fetch("api/stats");
    if (response.ok) renderStats(await response.json());
  }, 500);
}

let reloadTimer = null;
function reloadSoon() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(loadList, 150);
}

function listen() {
  const events = new EventSource("api/events");
  events.onopen = () => { $("#live").textContent = "live"; $("#live").classList.add("on"); };
  events.onerror = () => { $("#live").textContent = "reconnecting…"; $("#live").classList.remove("on"); };
  events.addEventListener("request", (event) => {
    const summary = JSON.parse(event.data);
    if (query) reloadSoon(); else upsert(summary, !rows.has(summary.trace_id));
    refreshStatsSoon();
    if (current && current.summary.trace_id === summary.trace_id) showTrace(summary.trace_id, true);
    else if (pending && (pending === summary.request_id || pending === summary.trace_id)) showTrace(pending);
  });
  events.addEventListener("lagged", () => loadList());
}

// --- the waterfall ---

// The spans in tree order (each after its parent, siblings by start), with their depth. A span
// whose parent is missing is a root.
function tree(spans) {
  const ids = new Set(spans.map((s) => s.span_id));
  const children = new Map();
  const roots = [];
  for (const span of spans) {
    if (span.parent_span_id && ids.has(span.parent_span_id)) {
      if (!children.has(span.parent_span_id)) children.set(span.parent_span_id, []);
      children.get(span.parent_span_id).push(span);
    } else {
      roots.push(span);
    }
  }
  const byStart = (a, b) => a.start_unix_nano - b.start_unix_nano;
  const out = [];
  const visit = (span, depth) => {
    out.push({ span, depth });
    for (const child of (children.get(span.span_id) || []).sort(byStart)) visit(child, depth + 1);
  };
  for (const root of roots.sort(byStart)) visit(root, 0);
  return out;
}

function attr(span, key) {
  const found = span.attributes.find((a) => a.key === key);
  return found ? found.value : undefined;
}

function renderDetail(trace) {
  const s = trace.summary;
  const head = el("div", {},
    el("h2", {}, `${s.method} ${s.route} `, el("span", { class: s.failed ? "failed" : "" }, s.status || "…"), ` · ${ms(s.duration_nanos)}`),
    el("div", { class: "ids" },
      `request ${s.request_id || "—"} · trace ${s.trace_id} · ${clock(s.start_unix_nano)} · ${s.span_count} spans`,
      s.dropped_spans ? el("span", { class: "truncated" }, ` (${s.dropped_spans} more dropped)`) : null,
      trace.jaeger_url ? el("a", { href: trace.jaeger_url, target: "_blank", rel: "noopener", id: "open-in-jaeger" }, "open in Jaeger") : null,
    ),
  );
  $("#detail-head").replaceChildren(head);
  $("#detail-head").dataset.failed = String(s.failed);
  $("#legend").replaceChildren(...s.services.map((svc) => el("span", { style: `--c: ${colour(svc)}`, "data-service": svc }, svc)));

  const spans = trace.spans;
  const t0 = Math.min(...spans.map((x) => x.start_unix_nano));
  const t1 = Math.max(...spans.map((x) => x.end_unix_nano));
  const total = Math.max(t1 - t0, 1);
  const rowsOut = tree(spans).map(({ span, depth }) => {
    const left = ((span.start_unix_nano - t0) / total) * 100;
    const width = (Math.max(span.end_unix_nano - span.start_unix_nano, 0) / total) * 100;
    const db = attr(span, "db.system") !== undefined;
    const row = el("div", {
      class: "span" + (span.status === "error" ? " error" : "") + (db ? " db" : ""),
      style: `--c: ${colour(span.service)}`,
      role: "treeitem",
      "data-span-id": span.span_id,
      "data-parent-span-id": span.parent_span_id,
      "data-service": span.service,
      "data-name": span.name,
      "data-depth": String(depth),
      "data-status": span.status,
      title: `${span.service} ${span.name}`,
    },
      el("div", { class: "label", style: `padding-left: ${depth * 14}px` },
        el("span", { class: "svc" }, span.service), el("span", { class: "name" }, span.name)),
      el("div", { class: "track" }, el("div", { class: "bar", style: `left: ${left}%; width: ${width}%` })),
      el("div", { class: "dur" }, ms(span.end_unix_nano - span.start_unix_nano)),
    );
    row.addEventListener("click", () => {
      for (const other of document.querySelectorAll(".span.selected")) other.classList.remove("selected");
      row.classList.add("selected");
      showSpan(span, t0);
    });
    return row;
  });
  $("#waterfall").replaceChildren(...rowsOut);
}

function showSpan(span, t0) {
  const table = el("table", {});
  const add = (key, value) => table.append(el("tr", {}, el("td", {}, key), el("td", {}, value)));
  add("service", span.service);
  add("kind", span.kind);
  add("start", `+${ms(span.start_unix_nano - t0)}`);
  add("duration", ms(span.end_unix_nano - span.start_unix_nano));
  add("status", span.status + (span.status_message ? `: ${span.status_message}` : ""));
  add("span id", span.span_id);
  for (const a of span.attributes) add(a.key, a.value);
  const events = span.events.map((e) => el("li", {}, `+${ms(e.time_unix_nano - t0)} ${e.name}`,
    ...e.attributes.map((a) => el("div", {}, `  ${a.key} = ${a.value}`))));
  const parts = [el("h3", {}, `${span.service} · ${span.name}`), table];
  if (events.length) parts.push(el("h3", {}, "events"), el("ul", {}, ...events));
  if (span.truncated) parts.push(el("p", { class: "truncated" }, "Some attributes, events or values were cut to the viewer's bounds."));
  $("#span-detail").replaceChildren(...parts);
  $("#span-detail").hidden = false;
}

async function showTrace(id, quiet) {
  const response = await fetch("api/traces/" + encodeURIComponent(id));
  $("#detail-pane").hidden = false;
  if (!response.ok) {
    if (quiet) return;
    const error = await response.json().catch(() => ({ error: response.statusText }));
    current = null;
    pending = response.status === 404 ? id : null;
    $("#detail-head").replaceChildren(el("p", { class: "empty" }, error.error));
    $("#legend").replaceChildren();
    $("#waterfall").replaceChildren();
    $("#span-detail").hidden = true;
    return;
  }
  const trace = await response.json();
  pending = null;
  const changed = !current || current.summary.trace_id !== trace.summary.trace_id;
  current = trace;
  renderDetail(trace);
  if (changed) $("#span-detail").hidden = true;
  for (const row of document.querySelectorAll("tr.request")) {
    row.classList.toggle("selected", row.dataset.traceId === trace.summary.trace_id);
  }
}

function route() {
  const match = location.hash.match(/^#\/request\/([A-Za-z0-9._-]{1,128})$/);
  if (match) showTrace(match[1]);
}

// --- start ---

let searchTimer = null;
$("#search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => { query = $("#search").value.trim(); loadList(); }, 150);
});
$("#failed-only").addEventListener("change", loadList);
window.addEventListener("hashchange", route);
loadList().then(listen);
route();
