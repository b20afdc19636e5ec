// The Freshet console: plain JavaScript over the server's JSON endpoints (/v1/ui/..., /v1/spec, /v1/features,
// /v1/explain). Charts are hand-drawn SVG; nothing is loaded from anywhere but this server.
"use strict";

const REFRESH_MS = 2000;
let spec = null;
let timer = null;
// With several feature sets (`freshet run --spec a --spec b`), the set whose features and explanations are shown
// (the lookup paths then need it); null with one set.
let featureSet = null;

// "?feature_set=S" (or "&..." after other parameters) when a set is chosen.
function setParameter(separator) {
  return featureSet ? separator + "feature_set=" + encodeURIComponent(featureSet) : "";
}

function $(selector, root) { return (root || document).querySelector(selector); }
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}
function get(path, obj) { return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj); }

// Numbers as shown; the browser test compares these texts with the API's figures, formatted the same way.
function format(value, unit) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value !== "number") return String(value);
  if (unit === "B") {
    const units = ["B", "KiB", "MiB", "GiB"];
    let v = value, u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    return (u === 0 ? String(Math.round(v)) : v.toFixed(1)) + " " + units[u];
  }
  if (unit === "s") return (Math.abs(value) < 10 ? value.toFixed(3) : value.toFixed(1)) + " s";
  return Number.isInteger(value) ? String(value) : value.toFixed(3);
}

async function fetchJson(path) {
  const response = await fetch(path, {cache: "no-store"});
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// A line chart: series [{name, color, points: [[x, y], ...], dashed}], x in ms.
function lineChart(container, series, options) {
  const width = (options && options.width) || 460, height = (options && options.height) || 160, pad = 34;
  const xs = series.flatMap(s => s.points.map(p => p[0]));
  const ys = series.flatMap(s => s.points.map(p => p[1])).filter(y => y !== null && isFinite(y));
  const svgNs = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("width", width); svg.setAttribute("height", height);
  container.replaceChildren(svg);
  if (xs.length === 0) {
    const t = document.createElementNS(svgNs, "text");
    t.setAttribute("x", 10); t.setAttribute("y", 20); t.textContent = "no data yet";
    svg.append(t);
    return;
  }
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const y0 = Math.min(0, ...ys), y1 = Math.max(1e-9, ...ys) * 1.1;
  const sx = x => pad + (x - x0) / (x1 - x0) * (width - pad - 6);
  const sy = y => height - 18 - (y - y0) / (y1 - y0) * (height - 28);
  const axis = document.createElementNS(svgNs, "path");
  axis.setAttribute("d", `M${pad},6 V${height - 18} H${width - 6}`);
  axis.setAttribute("stroke", "#99a"); axis.setAttribute("fill", "none");
  svg.append(axis);
  for (const [y, label] of [[y1 / 1.1, format(y1 / 1.1)], [y0, format(y0)]]) {
    const t = document.createElementNS(svgNs, "text");
    t.setAttribute("x", 2); t.setAttribute("y", sy(y) + 4); t.setAttribute("font-size", 10);
    t.textContent = label;
    svg.append(t);
  }
  for (const s of series) {
    const pts = s.points.filter(p => p[1] !== null && isFinite(p[1]));
    if (pts.length === 0) continue;
    const path = document.createElementNS(svgNs, "path");
    path.setAttribute("d", pts.map((p, k) => (k ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(""));
    path.setAttribute("stroke", s.color); path.setAttribute("fill", "none"); path.setAttribute("stroke-width", 1.6);
    if (s.dashed) path.setAttribute("stroke-dasharray", "5,4");
    if (options && options.dots) {
      for (const p of pts) {
        const c = document.createElementNS(svgNs, "circle");
        c.setAttribute("cx", sx(p[0])); c.setAttribute("cy", sy(p[1])); c.setAttribute("r", 2.5);
        c.setAttribute("fill", s.color);
        svg.append(c);
      }
    }
    svg.append(path);
  }
  if (options && options.noLegend) return;
  const legend = el("div", {class: "legend"});
  for (const s of series) legend.append(el("span", {style: `color:${s.color}`}, "— " + s.name));
  container.append(legend);
}

function showHealth(health) {
  const box = $("#health");
  box.className = "health " + (health.ok ? "ok" : "degraded");
  box.replaceChildren(health.ok ? "Healthy" : "Degraded");
  box.dataset.status = health.ok ? "ok" : "degraded";
  if (!health.ok) {
    const list = el("ul");
    for (const r of health.reasons) list.append(el("li", {}, r));
    box.append(list);
  }
}

async function showPipeline() {
  const p = await fetchJson("/v1/ui/pipeline");
  showHealth(p.health);
  for (const cell of document.querySelectorAll("#page-pipeline [data-figure]")) {
    cell.textContent = format(get(cell.dataset.figure, p), cell.dataset.unit);
  }
  const h = p.history;
  const series = key => h.map(s => [s.t_ms, s[key]]);
  lineChart($("#chart-rates"), [
    {name: "in", color: "#888", points: series("in")},
    {name: "accepted", color: "#1a7", points: series("accepted")},
    {name: "rejected", color: "#c33", points: series("rejected")},
    {name: "late", color: "#e90", points: series("late")},
    {name: "duplicates", color: "#85c", points: series("duplicates")}]);
  lineChart($("#chart-lag"), [{name: "watermark lag", color: "#37c", points: series("watermark_lag_seconds")}]);
  const fresh = [
    {name: "p50", color: "#1a7", points: series("freshness_p50_seconds")},
    {name: "p99", color: "#c33", points: series("freshness_p99_seconds")}];
  if (p.freshness.slo_p99_seconds !== null && h.length > 0) {
    fresh.push({name: "SLO p99", color: "#c33", dashed: true,
                points: [[h[0].t_ms, p.freshness.slo_p99_seconds], [h[h.length - 1].t_ms, p.freshness.slo_p99_seconds]]});
  }
  lineChart($("#chart-freshness"), fresh);
  const kafka = $("#kafka");
  kafka.replaceChildren();
  if (p.kafka.length > 0) {
    const table = el("table", {class: "list"}, el("tr", {}, el("th", {}, "partition"), el("th", {}, "consumed"),
                                                   el("th", {}, "committed"), el("th", {}, "lag (messages)")));
    for (const k of p.kafka) {
      table.append(el("tr", {}, el("td", {}, k.partition), el("td", {}, k.consumed), el("td", {}, k.committed),
                      el("td", {}, format(k.lag))));
    }
    kafka.append(el("h3", {}, "Kafka partitions"), table);
  }
}

function histogramSvg(bins) {
  const svgNs = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNs, "svg");
  const width = 180, height = 40;
  svg.setAttribute("width", width); svg.setAttribute("height", height);
  const max = Math.max(1, ...bins.map(b => b.count));
  const w = width / Math.max(1, bins.length);
  bins.forEach((b, k) => {
    const r = document.createElementNS(svgNs, "rect");
    const h = b.count / max * (height - 2);
    r.setAttribute("x", k * w + 1); r.setAttribute("y", height - h); r.setAttribute("width", w - 2);
    r.setAttribute("height", h); r.setAttribute("fill", "#37c");
    const title = document.createElementNS(svgNs, "title");
    title.textContent = (b.value !== undefined ? b.value : `${format(b.from)} .. ${format(b.to)}`) + ": " + b.count;
    r.append(title);
    svg.append(r);
  });
  return svg;
}

// The latest skew check (mismatch rate, PSI) and the mismatch rate over the checks kept.
function skewCell(checks, intervalMs) {
  if (checks.length === 0) {
    return el("td", {"data-col": "skew"}, intervalMs > 0 ? "no check yet" : "– (skew.interval not set)");
  }
  const last = checks[checks.length - 1];
  const cell = el("td", {"data-col": "skew", class: last.breached ? "disagree" : ""},
                  el("span", {"data-skew": "mismatch"}, (100 * last.mismatch_rate).toFixed(2) + " %"),
                  " of " + last.compared + ", PSI ",
                  el("span", {"data-skew": "psi"}, last.psi === null ? "–" : last.psi.toFixed(4)));
  const chart = el("div", {class: "chart"});
  cell.append(chart);
  lineChart(chart, [{name: "mismatch rate", color: "#c33", points: checks.map(c => [c.t_ms, c.mismatch_rate])}],
            {width: 200, height: 56, noLegend: true});
  return cell;
}

async function showFeatures() {
  const f = await fetchJson("/v1/ui/features" + setParameter("?"));
  $("#features-summary").textContent =
    `${f.entities} entities; values as of now over a sample of ${f.sampled}.`;
  const body = $("#features-table tbody");
  body.replaceChildren();
  for (const x of f.features) {
    body.append(el("tr", {"data-feature": x.name},
      el("td", {}, x.name), el("td", {}, x.aggregation), el("td", {}, x.field || "–"), el("td", {}, x.where || "–"),
      el("td", {}, x.window),
      el("td", {"data-col": "share"}, (100 * x.share_with_value).toFixed(1) + " %"),
      el("td", {"data-col": "skipped"}, x.skipped_fields),
      skewCell(x.skew, f.skew_interval_ms),
      el("td", {}, histogramSvg(x.histogram))));
  }
}

async function showDeadLetters() {
  const d = await fetchJson("/v1/ui/dead-letters");
  for (const cell of document.querySelectorAll("[data-dl]")) cell.textContent = format(get(cell.dataset.dl, d));
  const reasons = $("#dl-reasons");
  reasons.replaceChildren();
  for (const [reason, count] of Object.entries(d.recent_by_reason)) {
    reasons.append(el("tr", {}, el("th", {}, reason), el("td", {}, count)));
  }
  const series = key => d.history.map(s => [s.t_ms, s[key]]);
  lineChart($("#chart-dead"), [
    {name: "rejected", color: "#c33", points: series("rejected")},
    {name: "late", color: "#e90", points: series("late")},
    {name: "duplicates", color: "#85c", points: series("duplicates")}]);
  const body = $("#dl-latest tbody");
  body.replaceChildren();
  for (const l of d.latest.slice().reverse()) {
    body.append(el("tr", {}, el("td", {}, l.line === null ? "–" : l.line), el("td", {}, l.reason),
                    el("td", {class: "raw"}, l.raw)));
  }
}

// The entity page: current values, then the explanation of one feature with its events and value over time.
async function explainEntity() {
  const entity = $("#entity-input").value.trim();
  const feature = $("#feature-select").value;
  const at = $("#at-input").value.trim();
  if (!entity) return;
  location.hash = "#entity/" + encodeURIComponent(entity) + "/" + encodeURIComponent(feature) +
                  (at ? "/" + encodeURIComponent(at) : "");
  const out = $("#explain");
  const values = $("#entity-values");
  out.replaceChildren("explaining…");
  try {
    const atQuery = at ? "&at=" + encodeURIComponent(at) : "";
    const setPath = featureSet ? encodeURIComponent(featureSet) + "/" : "";
    const current = await fetchJson("/v1/features/" + setPath + encodeURIComponent(entity) +
                                    (at ? "?at=" + encodeURIComponent(at) : ""));
    const table = el("table", {class: "list", id: "current-values"},
                     el("tr", {}, el("th", {}, "feature"), el("th", {}, `value as of ${current.as_of}`)));
    for (const [name, value] of Object.entries(current.features)) {
      table.append(el("tr", {"data-feature": name}, el("td", {}, name), el("td", {class: "v"}, JSON.stringify(value))));
    }
    values.replaceChildren(el("h3", {}, `${entity}: ${current.known ? "known" : "unknown"} entity`), table);
    const x = await fetchJson("/v1/explain/" + encodeURIComponent(entity) + "?feature=" + encodeURIComponent(feature) +
                              atQuery + setParameter("&"));
    const rows = x.events.map(e => el("tr", {class: "verdict-" + e.verdict, "data-verdict": e.verdict},
      el("td", {}, e.number), el("td", {}, e.time), el("td", {class: "verdict"}, e.verdict.replace(/_/g, " ")),
      el("td", {}, e.field === null ? "–" : JSON.stringify(e.field)), el("td", {}, e.detail), el("td", {class: "raw"}, e.raw)));
    const agreement = x.agrees
      ? el("span", {class: "agree"}, "agrees with the served value")
      : el("span", {class: "disagree"}, `served value ${JSON.stringify(x.served)} differs: ` + (x.served_exact
          ? `${x.covers}`
          : "the lookup is not exact as of a time before the entity's newest event (its state holds later " +
            "events); this explanation replays the events in time order and is exact"));
    const series = el("div", {class: "chart", id: "chart-series"});
    const timeline = el("div", {class: "chart", id: "chart-timeline"});
    out.replaceChildren(
      el("h2", {}, `${x.feature} as of ${x.at}`),
      el("div", {}, el("span", {class: "value", id: "explained-value"}, JSON.stringify(x.value)), " ", agreement),
      el("p", {}, `${x.aggregation}${x.field ? " of '" + x.field + "'" : ""}${x.where ? " where " + x.where : ""}; ${x.window}`),
      el("div", {class: "arith", id: "arithmetic"}, x.arithmetic),
      el("p", {}, `${x.counted} counted, ${x.excluded} excluded, of ${x.events.length} events of ${x.entity} (from ${x.source}).`),
      el("figure", {}, el("figcaption", {}, "Value over time (exact, as of each event)"), series),
      el("figure", {}, el("figcaption", {}, "Events: counted (green) and excluded (orange) by time"), timeline),
      el("table", {class: "list", id: "explain-events"},
         el("tr", {}, el("th", {}, "#"), el("th", {}, "time"), el("th", {}, "verdict"), el("th", {}, x.field || "field"),
            el("th", {}, "why"), el("th", {}, "raw")), ...rows));
    const numeric = x.series.filter(p => typeof p.value === "number");
    lineChart(series, [{name: x.feature, color: "#37c", points: numeric.map(p => [p.at_ms, p.value])}],
              {width: 700, dots: true});
    lineChart(timeline, [
      {name: "counted", color: "#1a7", points: x.events.filter(e => e.verdict === "counted").map(e => [e.time_ms, 1])},
      {name: "excluded", color: "#e90", points: x.events.filter(e => e.verdict !== "counted").map(e => [e.time_ms, 0])}],
      {width: 700, dots: true});
    out.dataset.loaded = "true";
  } catch (error) {
    out.replaceChildren(el("p", {class: "error"}, error.message));
  }
}

async function refresh() {
  const page = currentPage();
  try {
    if (page === "pipeline") await showPipeline();
    if (page === "features") await showFeatures();
    if (page === "dead-letters") await showDeadLetters();
    if (page !== "pipeline") showHealth((await fetchJson("/v1/ui/pipeline")).health);
    $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = page;
  } catch (error) {
    $("#updated").textContent = "error: " + error.message;
  }
}

function currentPage() {
  const page = (location.hash || "#pipeline").slice(1).split("/")[0];
  return ["pipeline", "features", "entity", "dead-letters"].includes(page) ? page : "pipeline";
}

function route() {
  const page = currentPage();
  for (const s of document.querySelectorAll(".page")) s.classList.toggle("active", s.id === "page-" + page);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  const parts = location.hash.slice(1).split("/");
  if (page === "entity" && parts.length >= 3 && $("#entity-input").value !== decodeURIComponent(parts[1])) {
    $("#entity-input").value = decodeURIComponent(parts[1]);
    $("#feature-select").value = decodeURIComponent(parts[2]);
    $("#at-input").value = parts[3] ? decodeURIComponent(parts[3]) : "";
    explainEntity();
  }
  clearInterval(timer);
  refresh();
  if (page !== "entity") timer = setInterval(refresh, REFRESH_MS);
}

// The chosen set's spec: its name in the header and its features in the explorer's list.
async function loadSpec() {
  spec = await fetchJson("/v1/spec" + setParameter("?"));
  $("#spec-name").textContent = spec.name;
  $("#feature-select").replaceChildren(...spec.features.map(f => el("option", {value: f.name}, f.name)));
}

async function start() {
  const sets = (await fetchJson("/v1/ui/pipeline")).feature_sets || [];
  if (sets.length > 1) {
    const select = $("#set-select");
    select.replaceChildren(...sets.map(name => el("option", {value: name}, name)));
    select.hidden = false;
    featureSet = sets[0];
    select.addEventListener("change", async () => {
      featureSet = select.value;
      await loadSpec();
      refresh();
    });
  }
  await loadSpec();
  $("#entity-form").addEventListener("submit", e => { e.preventDefault(); explainEntity(); });
  window.addEventListener("hashchange", route);
  route();
}

start();
