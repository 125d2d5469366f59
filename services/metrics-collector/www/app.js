// clawrelay dashboard: plain JS, no build step, no network but this
// collector's own JSON (/v1/metrics/..., /v1/traces/...). Charts are SVG.
// Every number shown carries its raw value in data-v, so a test can compare
// the page with the JSON API.
//
// At scale (1,000 agents, a day of history) every answer is bounded by the
// collector: series of at most 300 points, the busiest 12 queue series, a
// page of connectors and of pair-hours with their totals (the filter boxes
// ask the collector, they do not download everything). One refresh runs at
// a time: the next is scheduled 5 s after the last one ended, so a slow
// collector is never sent a pile of requests. <body> carries what the last
// refresh cost (data-refresh-ms, data-requests, data-bytes) and the most
// requests that were ever in flight at once (data-max-inflight).
'use strict';

const NS = 'http://www.w3.org/2000/svg';
const $ = (s) => document.querySelector(s);
const PAGE_CONN = 200, PAGE_PAIRS = 100, EVERY_MS = 5000, TIMEOUT_MS = 20000;
let timer = null, refreshes = 0, running = false, again = false, cost = { n: 0, bytes: 0 };
let inflight = 0, maxInflight = 0;

async function get(path) {
  inflight++;
  maxInflight = Math.max(maxInflight, inflight);
  try {
    // a request that hangs must not stop the refreshes for good
    const ac = new AbortController(), t = setTimeout(() => ac.abort(), TIMEOUT_MS);
    let txt;
    try {
      const r = await fetch(path, { cache: 'no-store', signal: ac.signal });
      if (!r.ok) throw new Error(path + ': ' + r.status);
      txt = await r.text();
    } finally {
      clearTimeout(t);
    }
    cost.n++;
    cost.bytes += txt.length;
    return JSON.parse(txt);
  } finally {
    inflight--;
  }
}

function pick(o, path) {
  return path.split('.').reduce((v, k) => (v == null ? v : v[k]), o);
}

function fmt(v, kind) {
  if (v == null) return '–';
  switch (kind) {
    case 'pct': return (v * 100).toFixed(1) + '%';
    case 'ms': return v >= 1000 ? (v / 1000).toFixed(2) + ' s' : (+v).toFixed(v < 10 ? 2 : 1) + ' ms';
    case 'rate': return (+v).toFixed(2) + '/s';
    case 'reasons': {
      const e = Object.entries(v);
      return e.length ? e.map(([k, n]) => k + ' ' + n).join(' · ') : 'none';
    }
    default: return String(v);
  }
}

function fillCards(sum) {
  document.querySelectorAll('[data-k]').forEach((el) => {
    const v = pick(sum, el.dataset.k);
    el.textContent = fmt(v, el.dataset.fmt);
    el.dataset.v = v == null ? '' : (typeof v === 'object' ? JSON.stringify(v) : String(v));
  });
}

function el(tag, attrs, parent, text) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text != null) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function hhmm(ms) {
  const d = new Date(ms);
  return String(d.getHours()).padStart(2, '0') + ':' + String(d.getMinutes()).padStart(2, '0');
}

// lines: [{name, color, values}] over t (ms); null values break a line
function chart(svg, t, lines, opts) {
  opts = opts || {};
  svg.replaceChildren();
  const W = svg.clientWidth || 600, H = svg.clientHeight || 180, L = 44, R = 8, T = 18, B = 18;
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  let max = opts.max || 0;
  lines.forEach((s) => s.values.forEach((v) => { if (v != null && v > max) max = v; }));
  if (max === 0) max = 1;
  const n = t.length, x = (i) => L + (n > 1 ? (i * (W - L - R)) / (n - 1) : 0);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  for (let g = 0; g <= 4; g++) {
    const v = (max * g) / 4;
    el('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid' }, svg);
    el('text', { x: L - 4, y: y(v) + 3, 'text-anchor': 'end' }, svg,
      opts.pct ? Math.round(v * 100) + '%' : (v >= 100 ? Math.round(v) : +v.toFixed(2)));
  }
  if (n > 0) {
    [0, Math.floor(n / 2), n - 1].forEach((i) => el('text', { x: x(i), y: H - 4,
      'text-anchor': i === 0 ? 'start' : (i === n - 1 ? 'end' : 'middle') }, svg, hhmm(t[i])));
  }
  let lx = L;
  lines.forEach((s) => {
    let d = '', pen = false;
    s.values.forEach((v, i) => {
      if (v == null) { pen = false; return; }
      d += (pen ? 'L' : 'M') + x(i).toFixed(1) + ' ' + y(v).toFixed(1);
      pen = true;
    });
    if (d) el('path', { d, fill: 'none', stroke: s.color, 'stroke-width': 1.6 }, svg);
    // a point with no neighbour draws no line: show it as a dot
    s.values.forEach((v, i) => {
      if (v != null && s.values[i - 1] == null && s.values[i + 1] == null)
        el('circle', { cx: x(i), cy: y(v), r: 2.5, fill: s.color }, svg);
    });
    el('rect', { x: lx, y: 4, width: 10, height: 4, fill: s.color }, svg);
    const tx = el('text', { x: lx + 13, y: 10, class: 'legend' }, svg, s.name);
    lx += 20 + s.name.length * 6;
    tx.setAttribute('data-series', s.name);
  });
}

const PALETTE = ['#2563eb', '#16a34a', '#dc2626', '#d97706', '#9333ea', '#0891b2', '#db2777',
  '#65a30d', '#7c3aed', '#ea580c', '#0d9488', '#4b5563'];

function charts(s) {
  chart($('#ch-rate'), s.t, [
    { name: 'in', color: 'var(--in)', values: s.inPerS },
    { name: 'delivered', color: 'var(--out)', values: s.outPerS },
    { name: 'failed', color: 'var(--fail)', values: s.failedPerS }]);
  chart($('#ch-success'), s.t, [{ name: 'success', color: 'var(--out)', values: s.successRate }],
    { max: 1, pct: true });
  chart($('#ch-latency'), s.t, [
    { name: 'p50', color: 'var(--p50)', values: s.p50Ms },
    { name: 'p95', color: 'var(--p95)', values: s.p95Ms },
    { name: 'p99', color: 'var(--p99)', values: s.p99Ms }]);
  chart($('#ch-queue'), s.t, [
    { name: 'critical', color: 'var(--fail)', values: s.queue_critical },
    { name: 'normal', color: 'var(--in)', values: s.queue_normal },
    { name: 'low', color: 'var(--muted)', values: s.queue_low }]);
  // a day of 1,000 agents' queues is still 16 partitions x 3 lanes: show the busiest 12
  const parts = Object.entries(s.queueSeries || {})
    .map(([k, v]) => [k, v, Math.max(0, ...v.filter((x) => x != null))])
    .sort((a, b) => b[2] - a[2]).slice(0, 12);
  chart($('#ch-parts'), s.t, parts.map(([k, v], i) => ({ name: k, color: PALETTE[i], values: v })));
}

function cell(tr, text, cls) {
  const td = document.createElement('td');
  if (cls) td.className = cls;
  if (text instanceof Node) td.appendChild(text); else td.textContent = text;
  tr.appendChild(td);
  return td;
}

function badge(state) {
  const s = document.createElement('span');
  s.className = 'st st-' + state;
  s.textContent = state;
  return s;
}

function dur(s) {
  if (s < 60) return Math.round(s) + ' s';
  if (s < 3600) return Math.round(s / 60) + ' min';
  if (s < 86400) return (s / 3600).toFixed(1) + ' h';
  return (s / 86400).toFixed(1) + ' d';
}

// the rows of a table; total: how many there are in all (the collector sends a page)
function rows(table, items, fill, total) {
  const tb = table.querySelector('tbody');
  const frag = document.createDocumentFragment();
  items.forEach((it) => {
    const tr = document.createElement('tr');
    fill(tr, it);
    frag.appendChild(tr);
  });
  tb.replaceChildren(frag);
  table.dataset.rows = String(items.length);
  table.dataset.total = String(total == null ? items.length : total);
}

function more(id, shown, total, what) {
  $(id).textContent = total > shown ? `${shown} of ${total} ${what} shown: filter to find the others` : '';
}

function traceLink(id) {
  const a = document.createElement('a');
  a.textContent = id;
  a.onclick = () => { location.hash = 'trace=' + encodeURIComponent(id); };
  return a;
}

function tables(brk, fails, conns, pairs) {
  rows($('#breakers'), brk.breakers, (tr, b) => {
    cell(tr, b.service); cell(tr, b.instance); cell(tr, b.name); cell(tr, badge(b.state));
    cell(tr, String(b.failures));
    cell(tr, b.next_probe_ms ? new Date(b.next_probe_ms).toLocaleTimeString() : '–');
  });
  rows($('#failures'), fails.failures, (tr, f) => {
    cell(tr, new Date(f.tsMs).toLocaleTimeString()); cell(tr, f.reason);
    cell(tr, f.sender + ' → ' + f.recipient); cell(tr, traceLink(f.correlationId));
    cell(tr, f.detail, 'wrap');
  });
  showConnectors(conns);
  showPairs(pairs);
}

function showConnectors(conns) {
  // disconnected first, then the most reconnects: the agents in trouble on top
  rows($('#connectors'), conns.connectors, (tr, c) => {
    cell(tr, c.agent); cell(tr, badge(c.connected ? 'connected' : 'disconnected'));
    cell(tr, c.connected ? dur(c.uptimeS) : '–'); cell(tr, c.uptimePct.toFixed(1) + '%');
    cell(tr, String(c.reconnects)); cell(tr, c.gateway);
  }, conns.total);
  more('#conn-more', conns.connectors.length, conns.total, 'connectors');
}

function showPairs(pairs) {
  rows($('#pairs'), pairs.pairs, (tr, p) => {
    cell(tr, hhmm(p.hourMs)); cell(tr, p.sender + ' → ' + p.recipient);
    cell(tr, String(p.delivered)); cell(tr, String(p.failed));
    cell(tr, (p.successRate * 100).toFixed(1) + '%');
  }, pairs.total);
  more('#pairs-more', pairs.pairs.length, pairs.total, 'pair-hours');
}

const connPath = () => `/v1/metrics/connectors?limit=${PAGE_CONN}&sort=${$('#conn-sort').value}` +
  `&q=${encodeURIComponent($('#conn-filter').value.trim())}`;
const pairsPath = () => `/v1/metrics/pairs?hours=24&limit=${PAGE_PAIRS}&sort=${$('#pairs-sort').value}` +
  `&q=${encodeURIComponent($('#pairs-filter').value.trim())}`;

async function refresh() {
  if (running) { again = true; return; }  // e.g. the window changed: once this one ends
  running = true;
  clearTimeout(timer);
  const w = $('#window').value, t0 = performance.now();
  // the collector makes the step fit 300 points; ask for what a chart can show
  const step = Math.max(60, Math.ceil(w / 300 / 60) * 60);
  cost = { n: 0, bytes: 0 };
  try {
    const [sum, ser, brk, fails, conns, pairs] = await Promise.all([
      get('/v1/metrics/summary?window=' + w), get(`/v1/metrics/series?window=${w}&step=${step}`),
      get('/v1/metrics/breakers'), get('/v1/metrics/failures?limit=50'),
      get(connPath()), get(pairsPath())]);
    fillCards(sum);
    charts(ser);
    tables(brk, fails, conns, pairs);
    refreshes++;
    $('#updated').textContent = 'updated ' + new Date().toLocaleTimeString();
    const b = document.body.dataset;
    b.refreshes = String(refreshes);
    b.refreshMs = String(Math.round(performance.now() - t0));
    b.requests = String(cost.n);
    b.bytes = String(cost.bytes);
    b.maxInflight = String(maxInflight);
    b.loaded = '1';
  } catch (e) {
    $('#updated').textContent = 'error: ' + e.message;
  } finally {
    running = false;
    if (again) { again = false; refresh(); } else schedule();
  }
}

// a filter box asks the collector once typing pauses
function debounce(fn, ms) {
  let t = null;
  return () => { clearTimeout(t); t = setTimeout(fn, ms); };
}
const refilterConn = debounce(async () => {
  try { showConnectors(await get(connPath())); } catch (e) { $('#updated').textContent = 'error: ' + e.message; }
}, 250);
const refilterPairs = debounce(async () => {
  try { showPairs(await get(pairsPath())); } catch (e) { $('#updated').textContent = 'error: ' + e.message; }
}, 250);

async function showTrace(id) {
  const head = $('#trace-head'), svg = $('#trace'), view = $('#trace-view');
  $('#trace-id').value = id;
  // a trace asked for goes to the top of the page
  document.body.insertBefore(view, $('#cards'));
  svg.replaceChildren();
  let tr;
  try {
    tr = await get('/v1/traces/' + encodeURIComponent(id));
  } catch (e) {
    head.textContent = 'no trace for ' + id;
    $('#trace-view').dataset.loaded = id;
    return;
  }
  const hops = tr.hops, total = Math.max(tr.totalMs, 0.001);
  head.innerHTML = '';
  head.append(`correlation ${tr.correlationId} · trace ID `);
  const tid = document.createElement('code');
  tid.id = 'trace-traceid';
  tid.textContent = tr.traceId || '–';
  head.append(tid, ` · ${hops.length} hops · ${tr.totalMs.toFixed(2)} ms end to end`);
  const W = svg.clientWidth || 900, row = 24, L = 330, R = 120;
  svg.setAttribute('viewBox', `0 0 ${W} ${hops.length * row + 24}`);
  svg.style.height = (hops.length * row + 24) + 'px';
  const x = (ms) => L + (ms / total) * (W - L - R);
  for (let g = 0; g <= 4; g++) {
    el('line', { x1: x((total * g) / 4), x2: x((total * g) / 4), y1: 0, y2: hops.length * row, class: 'grid' }, svg);
    el('text', { x: x((total * g) / 4), y: hops.length * row + 14, 'text-anchor': 'middle' }, svg,
      ((total * g) / 4).toFixed(1) + ' ms');
  }
  hops.forEach((h, i) => {
    const yy = i * row, err = h.outcome !== 'ok';
    const g = el('g', { class: 'hop', 'data-hop': h.hop, 'data-since': h.sinceStartMs, 'data-gap': h.gapMs }, svg);
    el('text', { x: 4, y: yy + 16, class: 'name' }, g, `${h.hop}`);
    el('text', { x: 150, y: yy + 16 }, g, `${h.service} ${h.instance}`.slice(0, 34));
    const x0 = x(h.sinceStartMs - h.gapMs), x1 = x(h.sinceStartMs);
    el('rect', { x: x0, y: yy + 7, width: Math.max(x1 - x0, 1), height: 10, class: 'bar' + (err ? ' err' : '') }, g);
    el('circle', { cx: x1, cy: yy + 12, r: 4, class: 'dot' + (err ? ' err' : '') }, g);
    el('text', { x: W - R + 6, y: yy + 16 }, g,
      `+${h.sinceStartMs.toFixed(2)} ms (gap ${h.gapMs.toFixed(2)})`);
    const title = el('title', {}, g);
    title.textContent = `${h.time} ${h.outcome} ${h.detail}`;
  });
  $('#trace-view').dataset.loaded = id;
}

function fromHash() {
  const m = location.hash.match(/trace=([^&]+)/);
  if (m) showTrace(decodeURIComponent(m[1]));
}

// the next refresh EVERY_MS after this one ended (never two at a time)
function schedule() {
  clearTimeout(timer);
  timer = $('#auto').checked && !running ? setTimeout(refresh, EVERY_MS) : null;
}

$('#window').onchange = refresh;
$('#auto').onchange = schedule;
$('#conn-filter').oninput = refilterConn;
$('#conn-sort').onchange = refilterConn;
$('#pairs-filter').oninput = refilterPairs;
$('#pairs-sort').onchange = refilterPairs;
$('#trace-form').onsubmit = (e) => {
  e.preventDefault();
  location.hash = 'trace=' + encodeURIComponent($('#trace-id').value.trim());
};
window.addEventListener('hashchange', fromHash);
const wq = new URLSearchParams(location.search).get('window');
if (wq) $('#window').value = wq;
refresh();
fromHash();
