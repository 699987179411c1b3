/**
 * The experiment web page (`GET /experiments/:id`): one self-contained HTML document with inline CSS
 * and JS, no build step. It is a public shell holding no data: the script reads
 * `/v1/experiments/:id` like any client. When the API answers 401 (API_KEYS is set) the page asks for
 * a key in a password field and keeps it in sessionStorage (never in the URL, where keys leak into
 * logs, history and referrers).
 *
 * The page lives in a .ts module rather than an .html file so `tsc` carries it into dist/ (the
 * container image ships dist/ only). The script builds the DOM with textContent only: prompts,
 * variant names and error messages are never parsed as HTML. A Content-Security-Policy admits exactly
 * this script and this style (by hash), images from http(s) (the presigned URLs) and fetches to the
 * page's own origin.
 */
import { createHash } from 'node:crypto';

const STYLE = String.raw`
:root { color-scheme: light; --ink: #1d2430; --muted: #5d6878; --line: #dde2ea; --bg: #f5f7fa; --card: #fff;
  --accent: #2f5bd3; --ok: #1f7a45; --bad: #b3261e; --warn: #8a5a00; --win: #f2b705; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: var(--bg); }
header.top { padding: 20px 28px 12px; background: var(--card); border-bottom: 1px solid var(--line); }
header.top h1 { margin: 0 0 4px; font-size: 20px; font-weight: 600; }
header.top .id { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; color: var(--muted); }
main { padding: 20px 28px 40px; }
.facts { display: flex; flex-wrap: wrap; gap: 6px 22px; margin: 8px 0 0; color: var(--muted); font-size: 13px; }
.facts b { color: var(--ink); font-weight: 600; }
.prompt { margin: 10px 0 0; max-width: 80ch; white-space: pre-wrap; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px; font-weight: 600; background: #e8ecf3; color: var(--muted); vertical-align: middle; }
.badge.completed { background: #e1f3e8; color: var(--ok); }
.badge.running { background: #fff3d6; color: var(--warn); }
.badge.win { background: var(--win); color: #3a2c00; }
#message { margin: 0 0 14px; color: var(--muted); }
#message:empty { display: none; }
#message.error { color: var(--bad); }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(280px, 1fr)); gap: 18px; align-items: start; }
.variant { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px; display: flex; flex-direction: column; gap: 10px; }
.variant.winner { border-color: var(--win); box-shadow: 0 0 0 2px var(--win); }
.variant h2 { margin: 0; font-size: 16px; font-weight: 600; display: flex; gap: 8px; align-items: center; }
.variant .meta { margin: 0; color: var(--muted); font-size: 13px; }
.variant details { font-size: 13px; color: var(--muted); }
.variant details p { margin: 4px 0 0; white-space: pre-wrap; color: var(--ink); }
.runs { display: grid; gap: 10px; }
figure.run { margin: 0; border: 1px solid var(--line); border-radius: 8px; overflow: hidden; background: #fafbfd; }
figure.run img { display: block; width: 100%; height: auto; background: #eef1f6; }
figure.run .placeholder { display: flex; align-items: center; justify-content: center; min-height: 120px; padding: 12px; text-align: center; color: var(--muted); font-size: 13px; }
figure.run.failed .placeholder, figure.run.canceled .placeholder, figure.run.removed .placeholder { color: var(--bad); }
figcaption { padding: 8px 10px; font-size: 13px; }
figcaption dl { margin: 0; display: grid; grid-template-columns: auto 1fr; gap: 1px 10px; }
figcaption dt { color: var(--muted); }
figcaption dd { margin: 0; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
figcaption .error { margin: 6px 0 0; color: var(--bad); overflow-wrap: anywhere; }
.summary { margin: 0; font-size: 13px; color: var(--muted); }
button { font: inherit; border-radius: 7px; border: 1px solid var(--accent); background: var(--accent); color: #fff; padding: 7px 12px; cursor: pointer; }
button:hover:not(:disabled) { filter: brightness(1.08); }
button:disabled { cursor: not-allowed; background: #c9d0dc; border-color: #c9d0dc; }
button.pick.chosen { background: var(--win); border-color: var(--win); color: #3a2c00; }
#auth { max-width: 420px; background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 16px; margin-bottom: 18px; }
#auth label { display: block; font-weight: 600; margin-bottom: 6px; }
#auth input { width: 100%; font: inherit; padding: 7px 9px; border: 1px solid var(--line); border-radius: 7px; margin-bottom: 10px; }
#auth .hint { color: var(--muted); font-size: 13px; margin: 8px 0 0; }
[hidden] { display: none !important; }
`;

// Plain ES2017 without template literals (this file embeds it in one).
const SCRIPT = String.raw`
(function () {
  'use strict';
  var KEY_STORE = 'pixelmill.apiKey';
  var POLL_MS = 2000;
  var parts = location.pathname.split('/').filter(Boolean);
  var id = decodeURIComponent(parts[parts.length - 1] || '');
  var apiPath = '/v1/experiments/' + encodeURIComponent(id);
  var $ = function (sel) { return document.getElementById(sel); };
  var images = new Map();
  var pollTimer = null;
  var note = '';

  function el(tag, props, children) {
    var e = document.createElement(tag);
    if (props) {
      Object.keys(props).forEach(function (k) {
        var v = props[k];
        if (v === undefined || v === null || v === false) return;
        if (k === 'text') e.textContent = String(v);
        else if (k === 'className') e.className = v;
        else e.setAttribute(k, String(v));
      });
    }
    (children || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }

  function say(text, isError) {
    var m = $('message');
    m.textContent = text || '';
    m.className = isError ? 'error' : '';
  }

  function requestHeaders(json) {
    var h = { accept: 'application/json' };
    if (json) h['content-type'] = 'application/json';
    var key = sessionStorage.getItem(KEY_STORE);
    if (key) h.authorization = 'Bearer ' + key;
    return h;
  }

  function call(method, path, body) {
    return fetch(path, {
      method: method,
      headers: requestHeaders(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store'
    }).then(function (res) {
      return res.json().catch(function () { return null; }).then(function (json) { return { status: res.status, body: json }; });
    });
  }

  function errorText(r) {
    var e = r.body && r.body.error;
    return e && e.message ? e.message : 'The API answered ' + r.status + '.';
  }

  function askForKey(note) {
    $('auth').hidden = false;
    $('auth-note').textContent = note || '';
    $('api-key').focus();
    say('');
  }

  function fmtLatency(ms) {
    if (ms === null || ms === undefined) return '–';
    return ms < 1000 ? Math.round(ms) + ' ms' : (ms / 1000).toFixed(1) + ' s';
  }

  function fmtCost(usd) {
    if (usd === null || usd === undefined) return '–';
    return '$' + usd.toFixed(4);
  }

  function fmtTime(iso) {
    if (!iso) return '–';
    var d = new Date(iso);
    return isNaN(d.getTime()) ? iso : d.toLocaleString();
  }

  function imageFor(variant, run) {
    // Reuse the element across refreshes: every GET presigns a new URL, and a new src would reload it.
    var img = images.get(run.jobId);
    if (!img) {
      img = el('img', {
        src: run.output.url,
        alt: variant.name + ', run ' + run.repeat,
        width: run.output.width,
        height: run.output.height,
        decoding: 'async',
        'data-job-id': run.jobId
      });
      img.referrerPolicy = 'no-referrer';
      images.set(run.jobId, img);
    }
    return img;
  }

  function runFigure(variant, run) {
    var visual;
    if (run.output) {
      visual = imageFor(variant, run);
    } else {
      var label = run.status === 'succeeded' ? 'no image' : run.status;
      visual = el('div', { className: 'placeholder', text: run.error ? label + ' · ' + run.error.code : label + '…' });
    }
    var rows = [
      ['Model', run.model || '–'],
      ['Latency', fmtLatency(run.latencyMs)],
      ['Cost', fmtCost(run.costUsd)],
      ['Status', run.status + (run.attempts > 1 ? ' (' + run.attempts + ' attempts)' : '')]
    ];
    var dl = el('dl', null, []);
    rows.forEach(function (row) {
      dl.appendChild(el('dt', { text: row[0] }));
      dl.appendChild(el('dd', { text: row[1], className: 'v-' + row[0].toLowerCase() }));
    });
    var caption = el('figcaption', null, [dl, run.error ? el('p', { className: 'error', text: run.error.code + ': ' + run.error.message }) : null]);
    return el('figure', { className: 'run ' + run.status, 'data-run': run.repeat, 'data-status': run.status }, [visual, caption]);
  }

  function variantCard(exp, variant) {
    var isWinner = exp.winner && exp.winner.variant === variant.name;
    var title = el('h2', null, [
      el('span', { text: variant.name }),
      isWinner ? el('span', { className: 'badge win', text: 'Winner' }) : null
    ]);
    var pinned = variant.model ? 'model ' + variant.model : 'tier ' + variant.tier;
    var meta = el('p', { className: 'meta', text: [pinned, variant.size, variant.aspectRatio].join(' · ') });
    var prompt = el('details', null, [el('summary', { text: 'Prompt' }), el('p', { text: variant.prompt })]);
    var runs = el('div', { className: 'runs' }, variant.runs.map(function (run) { return runFigure(variant, run); }));
    var s = variant.summary;
    var summary = el('p', {
      className: 'summary',
      text: s.succeeded + '/' + s.runs + ' succeeded' + (s.failed ? ' · ' + s.failed + ' failed' : '') +
        (s.canceled ? ' · ' + s.canceled + ' cancelled' : '') +
        ' · mean ' + fmtLatency(s.meanLatencyMs) + ' · ' + fmtCost(s.totalCostUsd) + ' total'
    });
    var button = el('button', {
      type: 'button',
      className: 'pick' + (isWinner ? ' chosen' : ''),
      text: isWinner ? 'Winner ✓' : 'Pick winner',
      title: s.succeeded === 0 ? 'No run of this variant made an image yet' : null
    });
    button.disabled = s.succeeded === 0;
    button.addEventListener('click', function () { pickWinner(variant.name, button); });
    return el('article', { className: 'variant' + (isWinner ? ' winner' : ''), 'data-variant': variant.name }, [title, meta, prompt, runs, summary, button]);
  }

  function render(exp) {
    $('auth').hidden = true;
    $('overview').hidden = false;
    var status = $('status');
    status.textContent = exp.status;
    status.className = 'badge ' + exp.status;
    $('prompt').textContent = exp.prompt;
    $('repeats').textContent = String(exp.repeats);
    $('created').textContent = fmtTime(exp.createdAt);
    $('finished').textContent = fmtTime(exp.finishedAt);
    $('progress').textContent = (exp.counts.runs - exp.counts.pending) + '/' + exp.counts.runs;
    $('winner').textContent = exp.winner ? exp.winner.variant + ' (' + fmtTime(exp.winner.chosenAt) + ')' : 'not chosen';
    var grid = $('variants');
    grid.replaceChildren.apply(grid, exp.variants.map(function (v) { return variantCard(exp, v); }));
  }

  function schedule() {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(load, POLL_MS);
  }

  function load() {
    return call('GET', apiPath).then(function (r) {
      if (r.status === 401) {
        askForKey(sessionStorage.getItem(KEY_STORE) ? 'That key was refused; enter another.' : '');
        sessionStorage.removeItem(KEY_STORE);
        return;
      }
      if (r.status === 404) { say('No experiment ' + id + ' here (or it belongs to another API key).', true); return; }
      if (r.status !== 200 || !r.body) { say(errorText(r) + ' Retrying…', true); schedule(); return; }
      render(r.body);
      var running = r.body.status !== 'completed';
      say(note || (running ? 'Running: this page refreshes by itself.' : ''));
      if (running) schedule();
    }).catch(function (err) {
      say('Cannot reach the API (' + err.message + '). Retrying…', true);
      schedule();
    });
  }

  function pickWinner(name, button) {
    button.disabled = true;
    return call('POST', apiPath + '/winner', { variant: name }).then(function (r) {
      if (r.status === 401) { askForKey('Enter an API key to record the choice.'); return; }
      if (r.status !== 200 || !r.body) { say(errorText(r), true); button.disabled = false; return; }
      render(r.body);
      note = 'Winner recorded: ' + r.body.winner.variant + '.';
      say(note);
    }).catch(function (err) {
      say('Cannot reach the API (' + err.message + ').', true);
      button.disabled = false;
    });
  }

  $('exp-id').textContent = id;
  $('auth-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var key = $('api-key').value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    $('api-key').value = '';
    say('Loading…');
    load();
  });
  say('Loading…');
  load();
})();
`;

const BODY = String.raw`
<header class="top">
  <h1>Experiment <span id="status" class="badge">loading</span></h1>
  <div class="id" id="exp-id"></div>
  <div id="overview" hidden>
    <p class="prompt" id="prompt"></p>
    <div class="facts">
      <span>Repeats <b id="repeats"></b></span>
      <span>Runs done <b id="progress"></b></span>
      <span>Created <b id="created"></b></span>
      <span>Finished <b id="finished"></b></span>
      <span>Winner <b id="winner"></b></span>
    </div>
  </div>
</header>
<main>
  <section id="auth" hidden>
    <form id="auth-form" autocomplete="off">
      <label for="api-key">API key</label>
      <input id="api-key" name="api-key" type="password" autocomplete="off" spellcheck="false" required>
      <button type="submit">Show experiment</button>
      <p class="hint">Kept in this tab only (sessionStorage), never in the address.</p>
      <p class="hint" id="auth-note" role="alert"></p>
    </form>
  </section>
  <p id="message" role="status"></p>
  <div id="variants" class="grid"></div>
</main>
`;

export const EXPERIMENT_PAGE_HTML = [
  '<!doctype html>',
  '<html lang="en">',
  '<head>',
  '<meta charset="utf-8">',
  '<meta name="viewport" content="width=device-width, initial-scale=1">',
  '<meta name="referrer" content="no-referrer">',
  '<title>Experiment · pixelmill</title>',
  `<style>${STYLE}</style>`,
  '</head>',
  '<body>',
  BODY,
  `<script>${SCRIPT}</script>`,
  '</body>',
  '</html>',
  '',
].join('\n');

const hash = (text: string) => `'sha256-${createHash('sha256').update(text, 'utf8').digest('base64')}'`;

/** Headers of the page: strict CSP (this script and style only), no caching, no framing, no referrer. */
export const EXPERIMENT_PAGE_HEADERS: Readonly<Record<string, string>> = {
  'content-type': 'text/html; charset=utf-8',
  'content-security-policy': [
    "default-src 'none'",
    `script-src ${hash(SCRIPT)}`,
    `style-src ${hash(STYLE)}`,
    // Outputs are presigned URLs on the bucket's endpoint, wherever it is.
    'img-src http: https:',
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; '),
  'cache-control': 'no-store',
  'referrer-policy': 'no-referrer',
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
};
