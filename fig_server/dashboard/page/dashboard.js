// Fig Platform Health: polls /api/health and draws the figures, the tables and the last hour.
// Everything comes from this server; nothing is loaded from elsewhere.
"use strict";

const POLL_MS = 3000;
const charts = {};
const CHARTS = {
  "chart-hot": [["p50", "hot_p50_ms", "#2b7bb9"], ["p95", "hot_p95_ms", "#e08a1e"],
                ["p99", "hot_p99_ms", "#c0392b"]],
  "chart-cdc": [["lag s", "cdc_lag_s", "#8e44ad"], ["rows/s", "cdc_rows_per_s", "#27ae60"]],
  "chart-cold": [["avg s", "cold_avg_s", "#2b7bb9"], ["skipped %", "pruned_pct", "#16a085"]],
  "chart-workers": [["busy", "workers_busy", "#d35400"], ["cost $", "cost_today_usd", "#7f8c8d"]],
};

function fmt(value, digits) {
  if (value === null || value === undefined) return "-";
  if (typeof value !== "number") return String(value);
  return value.toLocaleString("en-US", {maximumFractionDigits: digits === undefined ? 3 : digits});
}

function setText(id, text) {
  document.getElementById(id).textContent = text;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
}

function drawChart(id, points) {
  const series = CHARTS[id];
  const data = [points.map(p => p.t)];
  for (const [, key] of series) data.push(points.map(p => p[key]));
  const holder = document.getElementById(id);
  if (typeof uPlot === "undefined") {
    holder.textContent = "charts need uPlot (make fig_server/dashboard/page/vendor)";
    return;
  }
  if (!charts[id]) {
    // the second and later series have units of their own: a right-hand scale
    const own = series.length === 2;
    const width = Math.max(holder.clientWidth, 300);
    charts[id] = new uPlot({
      width: width, height: 180,
      series: [{}].concat(series.map(([label, , color], i) => ({
        label, stroke: color, width: 1.5, spanGaps: true,
        scale: own && i === 1 ? "right" : "y"}))),
      axes: [{}, {size: 60, scale: "y"}].concat(
        own ? [{side: 1, size: 60, scale: "right", grid: {show: false}}] : []),
    }, data, holder);
  } else {
    charts[id].setData(data);
  }
}

function render(health) {
  const s = health.summary;
  setText("updated", "updated " + new Date(health.generated_at * 1000).toLocaleTimeString() +
          " · window " + fmt(s.window_s / 60, 1) + " min · " + s.connections + " connections");
  const error = document.getElementById("error");
  error.hidden = !health.error && !s.cdc_error;
  error.textContent = [health.error, s.cdc_error && ("CDC: " + s.cdc_error),
                       s.paused_tables && ("paused: " + s.paused_tables)]
    .filter(Boolean).join(" · ");
  setText("hot-fast", s.hot_fast_pct === null ? "-" : fmt(s.hot_fast_pct, 1) + "%");
  setText("hot-p50", fmt(s.hot_p50_ms, 2));
  setText("hot-p95", fmt(s.hot_p95_ms, 2));
  setText("hot-p99", fmt(s.hot_p99_ms, 2));
  setText("hot-count", fmt(s.hot_statements, 0));
  setText("cdc-lag", fmt(s.cdc_lag_s, 2));
  setText("cdc-lag-bytes", fmt(s.cdc_lag_bytes, 0));
  setText("cdc-rate", fmt(s.cdc_rows_per_s, 1));
  setText("cold-avg", fmt(s.cold_avg_s, 3));
  setText("cold-count", fmt(s.cold_statements, 0));
  setText("pruned", s.pruned_pct === null ? "-" : fmt(s.pruned_pct, 2) + "%");
  setText("workers", s.workers_busy + " / " + s.workers);
  setText("cost", "$" + fmt(s.cost_today_usd, 4));

  const tables = document.querySelector("#tables tbody");
  tables.replaceChildren();
  for (const t of health.tables) {
    const row = document.createElement("tr");
    row.dataset.table = t.table_name;
    cell(row, t.table_name);
    cell(row, t.state);
    cell(row, t.tier_boundary);
    cell(row, t.hot_retention);
    cell(row, fmt(t.hot_rows, 0), "num");
    cell(row, fmt(t.cold_rows, 0), "num");
    cell(row, fmt(t.cold_files, 0), "num");
    cell(row, fmt(t.cold_bytes, 0), "num");
    cell(row, t.last_commit_at || "");
    cell(row, t.last_error || "");
    tables.appendChild(row);
  }
  const slowest = document.querySelector("#slowest tbody");
  slowest.replaceChildren();
  for (const q of health.slowest) {
    const row = document.createElement("tr");
    cell(row, fmt(q.duration_ms, 1), "num");
    cell(row, q.route);
    cell(row, q.user_name);
    cell(row, q.files_kept + " / " + q.files_total, "num");
    cell(row, q.row_groups_kept + " / " + q.row_groups_total, "num");
    cell(row, fmt(q.bytes_scanned, 0) + " / " + fmt(q.bytes_total, 0), "num");
    cell(row, q.sqlstate ? q.outcome + " " + q.sqlstate : q.outcome);
    cell(row, q.statement, "sql");
    slowest.appendChild(row);
  }
  for (const id of Object.keys(CHARTS)) drawChart(id, health.history);
  document.body.dataset.state = "ready";
}

async function poll() {
  try {
    const response = await fetch("/api/health", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (error) {
    const box = document.getElementById("error");
    box.hidden = false;
    box.textContent = "cannot reach fig serve: " + error.message;
  }
  setTimeout(poll, POLL_MS);
}

poll();
