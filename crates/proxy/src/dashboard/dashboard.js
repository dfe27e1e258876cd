// The dashboard. Every piece of data (labels, reasons, provider names) goes
// into the page as text: elements are built with createElement and filled
// with append/textContent, never parsed as HTML. The access key, when the
// proxy has one, is asked for once, kept in sessionStorage for this tab and
// sent as the x-marathon-key header; it never goes into a URL.
'use strict';

const KEY_ITEM = 'marathon-access-key';
const STATES = ['ready', 'cooling', 'probing', 'needs_login', 'disabled'];
const LOG_LINES = 200;
const SVG = 'http://www.w3.org/2000/svg';
const COLORS = ['#2a7', '#37c', '#c70', '#a3a', '#088', '#b44', '#777', '#5a2'];
let needKey = false;
let events = null;
let last = null; // the last status report
let clockOffset = 0; // proxy clock - browser clock, ms
let activity = null;

function authHeaders() {
  const key = sessionStorage.getItem(KEY_ITEM);
  return key ? { 'x-marathon-key': key } : {};
}

// An element with text children (strings become text nodes, never markup).
function el(tag, className, ...children) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  e.append(...children.map((c) => (c instanceof Node ? c : String(c))));
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

function askForKey(refused) {
  needKey = true;
  if (refused) sessionStorage.removeItem(KEY_ITEM);
  document.getElementById('key-message').textContent = refused
    ? 'That access key was refused. Enter the proxy\u2019s access key.'
    : 'This proxy needs its access key to show its state. It is kept for this tab only.';
  document.getElementById('key-form').hidden = false;
  document.getElementById('key').focus();
}

function proxyNow() {
  return Date.now() + clockOffset;
}

// 45s, 3m05s, 2h10m, 1d04h: as the CLI writes durations.
function human(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  const pad = (n) => String(n).padStart(2, '0');
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d${pad(Math.floor((s % 86400) / 3600))}h`;
}

function until(at) {
  return at ? human(at - proxyNow()) : '';
}

// A live countdown: the ticker rewrites every [data-until] each second.
function countdown(className, at, prefix) {
  const e = el('span', className, '');
  e.dataset.until = String(at);
  e.dataset.prefix = prefix || '';
  e.textContent = `${e.dataset.prefix}${until(at)}`;
  return e;
}

function tick() {
  for (const e of document.querySelectorAll('[data-until]')) {
    e.textContent = `${e.dataset.prefix}${until(Number(e.dataset.until))}`;
  }
}

// One quota window: how full, when it resets, and where the forecast says it
// runs out (a red mark on the time bar, at its share of the time to reset).
function windowRow(w) {
  const used = Math.max(0, Math.min(1, Number(w.utilization) || 0));
  const fill = el('div', `fill${used >= 0.95 ? ' full' : used >= 0.8 ? ' warn' : ''}`);
  fill.style.width = `${used * 100}%`;
  const bar = el('div', 'bar', fill);
  const row = el('div', 'window', el('span', 'name', w.name), bar, el('span', '', `${Math.round(used * 100)}%`));
  if (w.resets_at) row.append(countdown('resets muted', w.resets_at, 'resets in '));
  if (w.runs_out_at && w.resets_at && w.runs_out_at < w.resets_at) {
    const share = (w.runs_out_at - proxyNow()) / (w.resets_at - proxyNow());
    const marker = el('div', 'marker');
    marker.style.left = `${Math.max(0, Math.min(1, share)) * 100}%`;
    marker.title = 'forecast: runs out here';
    bar.append(marker);
    row.append(countdown('forecast', w.runs_out_at, '\u26a0 runs out in '));
  }
  return row;
}

async function act(account, action, body) {
  const message = document.getElementById('action-message');
  message.hidden = true;
  let r;
  try {
    r = await fetch(`/_marathon/accounts/${encodeURIComponent(account.id)}/${action}`, {
      method: 'POST',
      headers: { ...authHeaders(), 'content-type': 'application/json' },
      body: JSON.stringify(body || {}),
    });
  } catch {
    r = null;
  }
  if (r && r.status === 401) {
    askForKey(true);
    return;
  }
  if (!r || !r.ok) {
    message.textContent = `${action} ${account.label}: ${r ? r.status : 'no answer'}`;
    message.hidden = false;
  }
  refresh();
}

function actions(a) {
  const toggle = a.enabled
    ? el('button', 'disable', 'disable')
    : el('button', 'enable', 'enable');
  toggle.type = 'button';
  toggle.addEventListener('click', () => act(a, a.enabled ? 'disable' : 'enable'));
  const priority = el('input', 'priority');
  priority.type = 'number';
  priority.value = String(a.priority);
  priority.setAttribute('aria-label', `priority of ${a.label}`);
  const set = el('button', 'set-priority', 'set');
  set.type = 'button';
  set.addEventListener('click', () => act(a, 'priority', { priority: Number(priority.value) }));
  return el('td', 'actions', toggle, el('span', 'muted', ' priority '), priority, set);
}

// `12.3k in · 4.1k out · 2.0k cached`: what the answers reported since the
// proxy started (token accounting); empty before any.
function shortCount(n) {
  if (n < 1e3) return String(n);
  if (n < 1e6) return `${(n / 1e3).toFixed(1)}k`;
  if (n < 1e9) return `${(n / 1e6).toFixed(1)}M`;
  return `${(n / 1e9).toFixed(1)}G`;
}

function tokensText(t) {
  if (!t) return '';
  const parts = [`${shortCount(t.input)} in`, `${shortCount(t.output)} out`];
  if (t.cache_read) parts.push(`${shortCount(t.cache_read)} cached`);
  if (t.cache_write) parts.push(`${shortCount(t.cache_write)} cache write`);
  return parts.join(' · ');
}

function accountRow(a) {
  const state = STATES.includes(a.state) ? a.state : '';
  const retry = a.cooling_until ? countdown('retry', a.cooling_until, '') : el('span', 'retry', '');
  const row = el('tr', 'account',
    el('td', 'label', a.label, el('div', 'muted', a.kind === 'oauth' ? 'oauth' : 'api key')),
    el('td', `state ${state}`, a.state || ''),
    el('td', '', retry),
    el('td', '', a.requests_per_minute == null ? '' : a.requests_per_minute),
    el('td', '', a.successes == null ? '' : a.successes, ' / ', a.failures == null ? '' : a.failures),
    el('td', 'tokens', tokensText(a.tokens)),
    el('td', '', a.last_reason || ''),
    el('td', 'windows', ...(a.windows || []).map(windowRow)),
    actions(a));
  row.dataset.label = a.label;
  row.dataset.state = a.state || '';
  return row;
}

// Requests (lines) and failovers (red bars) per minute, last hour, per account.
function chart(p) {
  const hour = activity && (activity.providers || []).find((x) => x.name === p.name);
  const box = el('div', 'activity');
  if (!hour) return box;
  const minutes = activity.minutes || 60;
  const accounts = hour.accounts || [];
  const max = Math.max(1, ...accounts.flatMap((a) => a.requests.concat(a.failovers)));
  const W = 600;
  const H = 100;
  const x = (i) => (i / (minutes - 1)) * W;
  const y = (n) => H - (n / max) * (H - 8);
  const chartSvg = svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img' });
  chartSvg.append(svg('title', {}));
  chartSvg.firstChild.textContent = `requests and failovers per minute, last hour (max ${max})`;
  const legend = el('div', 'legend');
  accounts.forEach((a, k) => {
    const color = COLORS[k % COLORS.length];
    a.failovers.forEach((n, i) => {
      if (n > 0) chartSvg.append(svg('rect', { x: x(i) - 2, y: y(n), width: 4, height: H - y(n), fill: '#c33', class: 'failover' }));
    });
    const points = a.requests.map((n, i) => `${x(i).toFixed(1)},${y(n).toFixed(1)}`).join(' ');
    chartSvg.append(svg('polyline', { points, fill: 'none', stroke: color, 'stroke-width': 2, class: 'requests' }));
    const swatch = el('span', 'swatch');
    swatch.style.background = color;
    const total = a.requests.reduce((s, n) => s + n, 0);
    const failed = a.failovers.reduce((s, n) => s + n, 0);
    legend.append(el('span', '', swatch, `${a.label}: ${total} requests, ${failed} failovers`));
  });
  const red = el('span', 'swatch');
  red.style.background = '#c33';
  legend.append(el('span', 'muted', red, 'failover away from the account'));
  box.append(chartSvg, legend);
  return box;
}

function providerSection(p) {
  const head = el('tr', '', ...['account', 'state', 'retry in', 'req/min', 'ok / failed', 'tokens', 'last error', 'quota windows', '']
    .map((h) => el('th', '', h)));
  const soonest = p.soonest_ready && p.soonest_ready > proxyNow()
    ? countdown('muted', p.soonest_ready, ' \u00b7 next account ready in ') : '';
  const section = el('section', 'provider',
    el('h2', '', `${p.name} `, el('small', '', `${p.strategy || ''} \u00b7 ${p.upstream || ''}`), soonest),
    el('table', '', head, ...(p.accounts || []).map(accountRow)),
    chart(p));
  section.dataset.provider = p.name;
  return section;
}

function render() {
  if (!last) return;
  // Not while someone types a priority: the rebuilt row would drop it.
  if (document.activeElement && document.activeElement.classList.contains('priority')) return;
  const providers = last.providers || [];
  const used = providers.filter((p) => (p.accounts || []).length > 0);
  const idle = providers.filter((p) => (p.accounts || []).length === 0);
  document.getElementById('providers').replaceChildren(...used.map(providerSection));
  document.getElementById('idle').hidden = idle.length === 0;
  document.getElementById('idle-summary').textContent = `${idle.length} providers without accounts`;
  document.getElementById('idle-list').replaceChildren(...idle.map((p) => el('li', '', `${p.name} (${p.upstream || ''})`)));
  document.getElementById('meta').textContent = `version ${last.version || '?'}`;
}

// GET a /_marathon/ JSON document with the key; null when there is none.
async function getJson(path) {
  let r;
  try {
    r = await fetch(`/_marathon/${path}`, { headers: authHeaders(), cache: 'no-store' });
  } catch {
    return null;
  }
  if (r.status === 401) {
    askForKey(Object.keys(authHeaders()).length > 0);
    return null;
  }
  return r.ok ? r.json() : null;
}

async function refresh() {
  if (needKey) return;
  const s = await getJson('status');
  if (!s) return;
  clockOffset = (Number(s.now) || Date.now()) - Date.now();
  last = s;
  render();
}

async function refreshActivity() {
  if (needKey) return;
  const a = await getJson('activity');
  if (a) {
    activity = a;
    render();
  }
}

function logLine(ev) {
  const log = document.getElementById('log');
  const when = ev.at ? new Date(Number(ev.at)).toLocaleTimeString() : new Date().toLocaleTimeString();
  const line = el('div', '', `${when} ${ev.summary || ev.type || ''}`);
  line.dataset.type = String(ev.type || '');
  log.prepend(line);
  while (log.childElementCount > LOG_LINES) log.lastElementChild.remove();
}

// What happened before the page opened.
async function loadRecent() {
  const r = await getJson('events/recent');
  if (!r) return;
  document.getElementById('log').replaceChildren();
  for (const ev of r.events || []) logLine(ev);
}

// One server-sent event block; only `marathon` events are shown.
function onBlock(block) {
  let type = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line === '' || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') type = value;
    else if (field === 'data') data.push(value);
  }
  if (type !== 'marathon' || data.length === 0) return;
  let ev;
  try {
    ev = JSON.parse(data.join('\n'));
  } catch {
    return;
  }
  logLine(ev);
  refresh();
  refreshActivity();
}

// The event stream, read with fetch so that the key travels in a header
// (EventSource cannot send one). Reconnects after a drop.
async function follow() {
  if (events) events.abort();
  const ctl = new AbortController();
  events = ctl;
  try {
    const r = await fetch('/_marathon/events', { headers: authHeaders(), signal: ctl.signal, cache: 'no-store' });
    if (r.status === 401) {
      askForKey(Object.keys(authHeaders()).length > 0);
      return;
    }
    if (!r.ok || !r.body) throw new Error(`events: ${r.status}`);
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value.replace(/\r/g, '');
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        onBlock(buf.slice(0, end));
        buf = buf.slice(end + 2);
      }
    }
  } catch {
    // Dropped or refused: try again below.
  }
  if (!ctl.signal.aborted && !needKey) setTimeout(follow, 3000);
}

async function begin() {
  await loadRecent();
  refresh();
  refreshActivity();
  follow();
}

function start() {
  document.getElementById('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = document.getElementById('key');
    sessionStorage.setItem(KEY_ITEM, input.value);
    input.value = '';
    document.getElementById('key-form').hidden = true;
    needKey = false;
    begin();
  });
  begin();
  setInterval(refresh, 2000);
  setInterval(refreshActivity, 15000);
  setInterval(tick, 1000);
}

document.addEventListener('DOMContentLoaded', start);
