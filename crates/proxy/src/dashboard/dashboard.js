// The dashboard. Every piece of data (labels, reasons, provider names) goes
// into the page as text: elements are built with createElement and filled
// with append/textContent, never parsed as HTML. The access key, when the
// proxy has one, is asked for once, kept in sessionStorage for this tab and
// sent as the x-marathon-key header; it never goes into a URL.
'use strict';

const KEY_ITEM = 'marathon-access-key';
const STATES = ['ready', 'cooling', 'probing', 'needs_login', 'disabled'];
const LOG_LINES = 200;
let needKey = false;
let events = null;

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

function askForKey(refused) {
  needKey = true;
  if (refused) sessionStorage.removeItem(KEY_ITEM);
  document.getElementById('key-message').textContent = refused
    ? 'That access key was refused. Enter the proxy\u2019s access key.'
    : 'This proxy needs its access key to show its state. It is kept for this tab only.';
  document.getElementById('key-form').hidden = false;
  document.getElementById('key').focus();
}

function percent(u) {
  return `${Math.round(Number(u) * 100)}%`;
}

function accountRow(a) {
  const state = a.state || '';
  const retry = a.retry_in_ms ? `${Math.ceil(a.retry_in_ms / 1000)}s` : '';
  const quota = (a.windows || []).map((w) => `${w.name} ${percent(w.utilization)}`).join(', ');
  return el('tr', '',
    el('td', '', a.label),
    el('td', STATES.includes(state) ? state : '', state),
    el('td', '', retry),
    el('td', '', a.successes),
    el('td', '', a.failures),
    el('td', '', a.last_reason || ''),
    el('td', '', quota));
}

function providerSection(p) {
  const head = el('tr', '', ...['account', 'state', 'retry in', 'ok', 'failed', 'last error', 'quota']
    .map((h) => el('th', '', h)));
  return [
    el('h2', '', `${p.name} `, el('small', '', `(${p.strategy}, ${p.upstream})`)),
    el('table', '', head, ...(p.accounts || []).map(accountRow)),
  ];
}

async function refresh() {
  if (needKey) return;
  let r;
  try {
    r = await fetch('/_marathon/status', { headers: authHeaders(), cache: 'no-store' });
  } catch {
    return;
  }
  if (r.status === 401) {
    askForKey(Object.keys(authHeaders()).length > 0);
    return;
  }
  if (!r.ok) return;
  const s = await r.json();
  document.getElementById('providers').replaceChildren(...(s.providers || []).flatMap(providerSection));
}

function logLine(text) {
  const log = document.getElementById('log');
  log.prepend(el('div', '', `${new Date().toLocaleTimeString()} ${text}`));
  while (log.childElementCount > LOG_LINES) log.lastElementChild.remove();
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
  logLine(ev.summary || ev.type || '');
  refresh();
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

function start() {
  document.getElementById('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = document.getElementById('key');
    sessionStorage.setItem(KEY_ITEM, input.value);
    input.value = '';
    document.getElementById('key-form').hidden = true;
    needKey = false;
    refresh();
    follow();
  });
  refresh();
  setInterval(refresh, 2000);
  follow();
}

document.addEventListener('DOMContentLoaded', start);
