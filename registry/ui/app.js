// The registry's status page. It reads only the public API of the node that served it, with
// the viewer's token (kept in this tab's sessionStorage), and updates live: a blocking query on
// /v1/services wakes it on every change, and lease timings are re-read every second and
// counted down in between. Everything is built with textContent: names and meta come from
// clients and are never parsed as HTML.
"use strict";

const TOKEN_KEY = "registry-token";
const SYNCERS = "_syncers";
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let view = { cluster: null, services: new Map(), removals: [], readAt: performance.now() };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "style") e.setAttribute("style", v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

class Unauthorized extends Error {}

async function api(path, signal) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const resp = await fetch(path, { headers, signal, cache: "no-store" });
  if (resp.status === 401 || resp.status === 403) {
    const body = await resp.json().catch(() => ({}));
    throw new Unauthorized(body.message || resp.statusText);
  }
  if (!resp.ok) {
    const body = await resp.json().catch(() => ({}));
    throw new Error(`${path}: ${resp.status} ${body.message || resp.statusText}`);
  }
  return resp.json();
}

function showError(e) {
  const footer = document.getElementById("error");
  if (e instanceof Unauthorized) {
    document.getElementById("token-form").hidden = false;
    document.getElementById("token-why").textContent = token ? `refused: ${e.message}` : "this cluster needs a token";
    footer.textContent = "";
  } else {
    footer.textContent = e ? String(e.message || e) : "";
  }
}

document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  document.getElementById("token-form").hidden = true;
  refresh();
});

// Everything the page shows, read once.
async function refresh() {
  try {
    // Removals need no leader: this node's replica will do. Instances are read through the
    // leader, which alone knows how long each lease has left.
    const [cluster, list, removals] = await Promise.all([api("/v1/cluster"), api("/v1/services"), api("/v1/removals?stale=true")]);
    const services = new Map();
    await Promise.all(list.services.map(async (s) => services.set(s.service, await api("/v1/services/" + encodeURIComponent(s.service)))));
    view = { cluster, services, removals: removals.removals, readAt: performance.now() };
    render();
    showError(null);
    return list.index;
  } catch (e) {
    showError(e);
    return null;
  }
}

// One read at a time: a slow cluster gets no pile of overlapping reads from an open tab.
let reading = null;
function refreshOnce() {
  if (!reading) reading = refresh().finally(() => { reading = null; });
  return reading;
}

// Wakes on every change: a blocking query that returns when a service changes after `index`.
async function follow() {
  let index = await refreshOnce();
  for (;;) {
    const live = document.getElementById("live");
    try {
      if (index === null) throw new Error("not read yet");
      const list = await api(`/v1/services?index=${index}&wait=30s`);
      live.classList.add("on");
      if (list.index !== index) index = (await refreshOnce()) ?? list.index;
    } catch (e) {
      live.classList.remove("on");
      showError(e);
      await new Promise((r) => setTimeout(r, 1000));
      index = await refreshOnce();
    }
  }
}

function lastChange(service) {
  const s = view.services.get(service);
  return s ? s.index : null;
}

function render() {
  const c = view.cluster;
  document.getElementById("node").textContent = `node ${c.node_id} (${c.role})`;
  document.getElementById("cluster-summary").replaceChildren(
    el("span", {}, `leader: ${c.leader == null ? "none" : `node ${c.leader}`}`),
    el("span", {}, ` · term ${c.term} · last log ${c.last_log_index} · committed ${c.commit_index} · applied ${c.applied_index}`),
    c.role === "leader" ? "" : el("span", { class: "muted" }, " · replication progress is known by the leader; open its /ui to see it"),
  );
  const members = document.querySelector("#members tbody");
  members.replaceChildren(...c.members.map((m) => {
    const role = m.id === c.node_id ? c.role : m.id === c.leader ? "leader" : m.voter ? "follower" : "learner";
    const behind = m.matched_index == null ? null : c.last_log_index - m.matched_index;
    const lag = behind == null ? el("span", { class: "muted" }, "—") : el("span", { class: behind > 100 ? "bad" : "ok" }, behind > 100 ? `${behind} entries (unreachable or slow)` : `${behind}`);
    return el("tr", { "data-member": m.id }, el("td", {}, m.id), el("td", {}, m.addr), el("td", {}, role), el("td", {}, m.voter ? "yes" : "no"),
      el("td", {}, m.matched_index == null ? "—" : m.matched_index), el("td", {}, lag));
  }));

  const flaps = new Map();
  for (const r of view.removals) {
    const k = `${r.service}/${r.instance}`;
    flaps.set(k, (flaps.get(k) || 0) + 1);
  }
  const services = document.getElementById("services");
  const names = [...view.services.keys()].filter((s) => !s.startsWith("_")).sort();
  if (names.length === 0) services.replaceChildren(el("p", { class: "muted" }, "no services registered"));
  else services.replaceChildren(...names.map((name) => {
    const s = view.services.get(name);
    const rows = s.instances.map((i) => el("tr", { "data-instance": `${name}/${i.instance}` },
      el("td", {}, i.instance), el("td", {}, `${i.address}:${i.port}`), el("td", { class: `state-${i.state}` }, i.state), el("td", {}, i.weight),
      el("td", {}, i.lease ? leaseBar(i.lease) : el("span", { class: "muted" }, i.lease_id ? `lease ${i.lease_id}` : "no lease")),
      el("td", {}, i.lease ? `${(i.lease.since_renewal_ms / 1000).toFixed(1)} s ago` : "—"),
      el("td", {}, flaps.get(`${name}/${i.instance}`) || 0),
      el("td", { class: "muted" }, Object.entries(i.meta || {}).map(([k, v]) => `${k}=${v}`).join(" "))));
    return el("div", { class: "service", "data-service": name },
      el("h3", {}, `${name} `, el("span", { class: "muted" }, `${s.instances.length} instance${s.instances.length === 1 ? "" : "s"} · changed at revision ${s.index}`)),
      el("table", {}, el("thead", {}, el("tr", {}, ...["instance", "address", "state", "weight", "TTL left", "last renewal", "removals (flaps)", "meta"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows)));
  }));

  const syncers = view.services.get(SYNCERS);
  const balancers = document.querySelector("#balancers tbody");
  const reportRows = [];
  for (const inst of (syncers ? syncers.instances : [])) {
    const meta = inst.meta || {};
    for (const [k, service] of Object.entries(meta)) {
      if (!k.startsWith("map.")) continue;
      const backend = k.slice(4);
      const applied = meta["rev." + backend] != null ? Number(meta["rev." + backend]) : null;
      const changed = lastChange(service);
      const state = applied == null ? el("span", { class: "bad" }, "not applied yet")
        : changed != null && applied < changed ? el("span", { class: "bad" }, `behind by ${changed - applied} revisions`)
        : el("span", { class: "ok" }, "current");
      reportRows.push(el("tr", { "data-balancer": `${inst.instance}/${backend}` }, el("td", {}, inst.instance), el("td", {}, backend), el("td", {}, service),
        el("td", {}, applied == null ? "—" : applied), el("td", {}, changed == null ? "—" : changed), el("td", {}, state)));
    }
  }
  balancers.replaceChildren(...(reportRows.length ? reportRows : [el("tr", {}, el("td", { colspan: 6, class: "muted" }, "no balancer reports (syncers report under _syncers)"))]));

  const removals = document.querySelector("#removals tbody");
  removals.replaceChildren(...view.removals.slice(-50).reverse().map((r) => el("tr", {},
    el("td", {}, r.at_ms ? new Date(r.at_ms).toLocaleTimeString() : "—"), el("td", {}, r.service), el("td", {}, r.instance),
    el("td", {}, `${r.address}:${r.port}`), el("td", {}, causeText(r.cause)), el("td", {}, r.revision))));
}

function causeText(c) {
  switch (c.kind) {
    case "expired": return `expired (lease ${c.lease_id}, term ${c.term})`;
    case "revoked": return `revoked (lease ${c.lease_id})`;
    case "replaced": return `replaced (now ${c.address}:${c.port})`;
    default: return c.kind;
  }
}

function leaseBar(lease) {
  const bar = el("span", { class: "bar", "data-ttl": lease.ttl_ms, "data-left": lease.remaining_ms }, el("i", {}));
  const label = el("span", { class: "left" });
  const wrap = el("span", {}, bar, " ", label);
  paintBar(bar, label, performance.now());
  return wrap;
}

function paintBar(bar, label, now) {
  const ttl = Number(bar.dataset.ttl);
  const left = Math.max(0, Number(bar.dataset.left) - (now - view.readAt));
  const frac = ttl > 0 ? left / ttl : 0;
  bar.firstChild.style.width = `${(frac * 100).toFixed(1)}%`;
  bar.classList.toggle("low", frac < 0.34);
  label.textContent = `${(left / 1000).toFixed(1)} s`;
}

// Lease bars count down between reads; the leader's figures are read again every second.
function animate(now) {
  for (const bar of document.querySelectorAll(".bar")) paintBar(bar, bar.parentElement.querySelector(".left"), now);
  requestAnimationFrame(animate);
}

// The lease figures again every second, while the tab is seen: a hidden tab reads only when
// something changes (`follow`), and catches up as soon as it is shown.
async function tick() {
  for (;;) {
    if (!document.hidden) await refreshOnce();
    await new Promise((r) => setTimeout(r, 1000));
  }
}
document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshOnce(); });

requestAnimationFrame(animate);
tick();
follow();
