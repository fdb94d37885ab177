// The qm dashboard: polls /api/state and renders it; actions go to
// /api/actions after a confirmation. No library, no build step. Every
// text from the master goes through textContent, never innerHTML.
"use strict";

const POLL_MS = 2000;
const $ = (sel) => document.querySelector(sel);

// el builds an element: el("td", {class: "num"}, "text", child, ...).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function ago(t, now) {
  const s = Math.max(0, (now - new Date(t)) / 1000);
  return dur(s);
}

function dur(s) {
  if (s < 1) return "<1s";
  if (s < 60) return Math.floor(s) + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + Math.floor((s % 86400) / 3600) + "h";
}

// spark draws series ([values, color] pairs) as lines in a small SVG.
function spark(series, title) {
  const W = 140, H = 30, NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  let max = 0, n = 0;
  for (const [vals] of series) {
    n = Math.max(n, vals.length);
    for (const v of vals) max = Math.max(max, v);
  }
  const t = document.createElementNS(NS, "title");
  t.textContent = title + (n ? "" : " (no samples yet)");
  svg.append(t);
  if (n < 2) return svg;
  const peak = document.createElementNS(NS, "text"); // the scale: the chart's top
  peak.setAttribute("x", W - 3);
  peak.setAttribute("y", 9);
  peak.setAttribute("text-anchor", "end");
  peak.setAttribute("class", "peak");
  peak.textContent = max >= 10 || Number.isInteger(max) ? String(Math.round(max)) : max.toFixed(1);
  svg.append(peak);
  for (const [vals, color] of series) {
    const pts = vals.map((v, i) => {
      const x = (i / (n - 1)) * (W - 2) + 1;
      const y = H - 2 - (max > 0 ? (v / max) * (H - 4) : 0);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    const pl = document.createElementNS(NS, "polyline");
    pl.setAttribute("points", pts.join(" "));
    pl.setAttribute("fill", "none");
    pl.setAttribute("stroke", color);
    pl.setAttribute("stroke-width", "1.5");
    svg.append(pl);
  }
  return svg;
}

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
const last = (a) => (a && a.length ? a[a.length - 1] : 0);
const fmtRate = (r) => (r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2));

// delayedTitle says when a queue's first delayed task is due.
function delayedTitle(q, now) {
  if (!q.delayed || !q.next_due) return "no task waiting for its time";
  const secs = Math.max(0, (Date.parse(q.next_due) - now) / 1000);
  return `next due in ${dur(secs)}; ${q.retrying} of them retrying after a failure`;
}

function renderQueues(st, now) {
  const body = $("#queues tbody");
  const rows = [];
  for (const q of st.queues.filter((q) => !q.is_dead)) {
    const h = q.history || { ready: [], leased: [], put_rate: [], ack_rate: [] };
    const state = q.paused ? el("span", { class: "badge paused" }, "paused") : el("span", { class: "badge" }, "running");
    const toggle = q.paused
      ? el("button", { class: "resume", onclick: () => act("resume", q.queue, null, `Resume queue “${q.queue}”? Workers get its tasks again.`) }, "Resume")
      : el("button", { class: "pause", onclick: () => act("pause", q.queue, null, `Pause queue “${q.queue}”? It hands out no task until resumed; puts still go in.`) }, "Pause");
    const purge = el("button", {
      class: "purge danger",
      onclick: () => act("purge", q.queue, null, `Purge queue “${q.queue}”? Its ${q.ready} ready and ${q.delayed} delayed task(s) are dropped for good (through a cluster's gateway, those leased to workers too).`),
    }, "Purge");
    rows.push(el("tr", { "data-queue": q.queue },
      el("td", {}, el("code", {}, q.queue)),
      el("td", {}, state),
      el("td", { class: "num ready" }, q.ready),
      el("td", { class: "num delayed", title: delayedTitle(q, now) }, q.retrying ? `${q.delayed} (${q.retrying} retrying)` : q.delayed),
      el("td", { class: "num leased" }, q.leased),
      el("td", { class: "num dead" }, q.dead),
      el("td", { class: "num" }, q.consumers),
      el("td", { class: "num" }, q.ready ? dur(q.oldest_ready_age_ns / 1e9) : "–"),
      el("td", { class: "num" }, q.done),
      el("td", {}, spark([[h.ready, css("--ready")], [h.leased, css("--leased")]],
        `ready ${last(h.ready)}, leased ${last(h.leased)}`)),
      el("td", {}, spark([[h.put_rate, css("--put")], [h.ack_rate, css("--ack")]],
        `put ${fmtRate(last(h.put_rate))}/s, ack ${fmtRate(last(h.ack_rate))}/s`)),
      el("td", {}, el("div", { class: "actions" }, toggle, purge)),
    ));
  }
  body.replaceChildren(...rows);
  const unlisted = $("#queues-error");
  unlisted.textContent = st.queues_error ? `The queues could not be listed: ${st.queues_error}` : "";
  unlisted.hidden = !st.queues_error;
  $("#no-queues").hidden = rows.length > 0 || Boolean(st.queues_error);
}

function renderClients(st, now) {
  const rows = st.clients.map((c) => {
    const work = c.tasks.length
      ? el("td", { class: "wrap" }, ...c.tasks.slice(0, 5).flatMap((t, i) => [
          i ? ", " : "",
          el("code", {}, `#${t.id}`), ` ${t.queue} (try ${t.attempt}, ${ago(t.since, now)})`,
        ]), c.tasks.length > 5 ? ` and ${c.tasks.length - 5} more` : "")
      : el("td", { class: "muted" }, c.in_flight ? `${c.in_flight} task(s)` : "idle");
    return el("tr", { "data-client": c.gateway ? `${c.gateway}/${c.id}` : c.id },
      el("td", { class: "num" }, c.id),
      el("td", {}, c.name || "–"),
      el("td", {}, c.role || "–"),
      el("td", {}, c.key || "–"),
      el("td", {}, c.gateway ? `${c.addr} via ${c.gateway}` : c.addr),
      el("td", {}, ago(c.connected_since, now)),
      el("td", {}, ago(c.last_seen, now) + " ago"),
      el("td", { class: "num" }, c.in_flight),
      work,
    );
  });
  $("#clients tbody").replaceChildren(...rows);
  $("#no-clients").hidden = rows.length > 0;
  const partial = $("#clients-note");
  partial.textContent = st.clients_note ? `Only some clients are listed: ${st.clients_note}` : "";
  partial.hidden = !st.clients_note;
}

function renderDead(st, now) {
  const blocks = st.dead.map((d) => {
    const rows = d.tasks.map((t) => el("tr", { "data-dead-task": t.id },
      el("td", { class: "num" }, t.id),
      el("td", { class: "num" }, t.attempt),
      el("td", { class: "wrap" }, t.last_error || "–"),
      el("td", {}, ago(t.enqueued, now) + " ago"),
      el("td", { class: "wrap" }, el("code", {}, t.payload)),
      el("td", {}, el("div", { class: "actions" },
        el("button", { class: "requeue", onclick: () => act("requeue", d.queue, [t.id], `Requeue dead task #${t.id} to “${d.queue}”? It gets its attempts anew.`) }, "Requeue"),
        el("button", { class: "drop danger", onclick: () => act("drop", d.queue, [t.id], `Drop dead task #${t.id} for good?`) }, "Drop"),
      )),
    ));
    const more = d.count > d.tasks.length ? el("p", { class: "muted" }, `…and ${d.count - d.tasks.length} more`) : null;
    return el("div", { "data-dead-queue": d.dead_queue },
      el("h3", {}, el("code", {}, d.dead_queue), el("span", { class: "muted" }, `${d.count} task(s) that failed in “${d.queue}”`),
        el("button", { class: "requeue-all", onclick: () => act("requeue", d.queue, null, `Requeue all ${d.count} dead task(s) of “${d.queue}”?`) }, "Requeue all"),
        el("button", { class: "purge-dead danger", onclick: () => act("purge", d.dead_queue, null, `Drop all ${d.count} dead task(s) of “${d.queue}” for good?`) }, "Drop all")),
      el("table", {},
        el("thead", {}, el("tr", {}, el("th", { class: "num" }, "ID"), el("th", { class: "num" }, "Attempts"), el("th", {}, "Last error"),
          el("th", {}, "Enqueued"), el("th", {}, "Payload"), el("th", {}))),
        el("tbody", {}, ...rows)),
      more);
  });
  $("#dead").replaceChildren(...blocks);
  $("#no-dead").hidden = blocks.length > 0;
}

let timer = null;

async function refresh() {
  clearTimeout(timer);
  try {
    const r = await fetch("/api/state", { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) { location.reload(); return; }
    if (!r.ok) throw new Error(`${r.status} ${await r.text()}`);
    const st = await r.json();
    const now = new Date(st.now);
    renderQueues(st, now);
    renderClients(st, now);
    renderDead(st, now);
    $("#updated").textContent = "updated " + now.toLocaleTimeString();
    document.body.dataset.loaded = "1";
  } catch (e) {
    $("#updated").textContent = "master unreachable: " + e.message;
  }
  timer = setTimeout(refresh, POLL_MS);
}

function confirmAction(text) {
  const d = $("#confirm");
  $("#confirm-text").textContent = text;
  return new Promise((resolve) => {
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.returnValue = "";
    d.showModal();
  });
}

function toast(text, isErr) {
  const t = $("#toast");
  t.textContent = text;
  t.className = isErr ? "err" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

async function act(action, queue, ids, question) {
  if (!(await confirmAction(question))) return;
  try {
    const r = await fetch("/api/actions", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-QM-Dashboard": "1" },
      body: JSON.stringify({ action, queue, ids: ids || undefined }),
    });
    const res = await r.json();
    if (!r.ok) throw new Error(res.error || r.status);
    const counted = { purge: "dropped", requeue: "requeued", drop: "dropped" }[action];
    toast(counted ? `${queue}: ${res.count} task(s) ${counted}` : `${queue}: ${action}d`);
  } catch (e) {
    toast(`${action} ${queue}: ${e.message}`, true);
  }
  refresh();
}

refresh();
