// meshpass web GUI: Mesh Sidecar → Workload, traffic passthrough settings, check effect,
// bypassed traffic. Plain ES2020 module, no build step, no external resources: served under
// `Content-Security-Policy: default-src 'self'`, so no inline styles/scripts/handlers anywhere
// (DOM is built with createElement; styles only through classes and the CSSOM).
//
// API contract: crates/api/API.md. Every request is same-origin with the session cookie;
// PUT/POST/DELETE carry X-CSRF-Token from GET /api/v1/session.

'use strict';

import {
  ANNOTATION_KEYS, KEY_TO_FIELD, BATCH_LISTS, MESH_VALUES, OUTCOME_LABEL, wkey as nsName, canonicalPortItem, validatePortItem as checkPortItem,
  validateCidrItem, validateListValue, effectiveOf, appliesTo, changedValues, pageSelectionState, pageOf, batchRequest,
  listChange, batchSummary, failureText, items as listItems,
} from './logic.js';

const API = '/api/v1';
const REFRESH_MS = 5000;
const OP_POLL_MS = 1000;
const PREVIEW_DEBOUNCE_MS = 350;
const SUCCESS_TOAST = 'Traffic passthrough setup successful';
const INBOUND_HINT = 'Only ports are supported, i.e. ports for external access to workloads within the mesh';
const OUTBOUND_HINT = 'You can set the port or IP range of the target';
const ENVOY_HEADERS = ['server', 'x-envoy-upstream-service-time', 'x-envoy-decorator-operation'];

// ---------------------------------------------------------------------------------------------
// DOM helpers

/** `h('div', {class: 'x', 'data-testid': 't', onclick: fn}, child, 'text', [more])` */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'value' || k === 'checked' || k === 'selected' || k === 'indeterminate') el[k] = v;
      else if (k === 'text') el.textContent = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
  return el;
}

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

const SVG_NS = 'http://www.w3.org/2000/svg';
const ICONS = {
  refresh: [['path', { d: 'M20 12a8 8 0 1 1-2.34-5.66' }], ['path', { d: 'M20 4v5h-5' }]],
  search: [['circle', { cx: 11, cy: 11, r: 6.5 }], ['path', { d: 'M16 16l4.5 4.5' }]],
  more: [['circle', { cx: 12, cy: 5, r: 1.7, fill: 'currentColor', stroke: 'none' }],
    ['circle', { cx: 12, cy: 12, r: 1.7, fill: 'currentColor', stroke: 'none' }],
    ['circle', { cx: 12, cy: 19, r: 1.7, fill: 'currentColor', stroke: 'none' }]],
  close: [['path', { d: 'M6 6l12 12M18 6L6 18' }]],
  sidecar: [['path', { d: 'M12 2.5l8.2 4.75v9.5L12 21.5l-8.2-4.75v-9.5z' }], ['circle', { cx: 12, cy: 12, r: 3 }]],
  lock: [['rect', { x: 5, y: 10.5, width: 14, height: 10, rx: 2 }], ['path', { d: 'M8 10.5V7.5a4 4 0 0 1 8 0v3' }]],
  warning: [['path', { d: 'M12 3.5l9.5 16.5h-19z' }], ['path', { d: 'M12 10v4.5' }], ['circle', { cx: 12, cy: 17.3, r: 0.6, fill: 'currentColor' }]],
  check: [['path', { d: 'M5 12.5l4.5 4.5L19 7.5' }]],
  info: [['circle', { cx: 12, cy: 12, r: 9 }], ['path', { d: 'M12 11v6' }], ['circle', { cx: 12, cy: 7.6, r: 0.6, fill: 'currentColor' }]],
  error: [['circle', { cx: 12, cy: 12, r: 9 }], ['path', { d: 'M9 9l6 6M15 9l-6 6' }]],
  settings: [['path', { d: 'M4 7h10M18 7h2M4 17h4M12 17h8' }], ['circle', { cx: 16, cy: 7, r: 2 }], ['circle', { cx: 10, cy: 17, r: 2 }]],
  pulse: [['path', { d: 'M3 12h4l2.5-6 5 12 2.5-6h4' }]],
  chart: [['path', { d: 'M4 20V4M4 20h16' }], ['path', { d: 'M8 16v-5M12 16V8M16 16v-3' }]],
  restart: [['path', { d: 'M4 12a8 8 0 1 0 2.34-5.66' }], ['path', { d: 'M4 4v5h5' }]],
  chevron: [['path', { d: 'M9 6l6 6-6 6' }]],
};

function icon(name, cls = '') {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', `icon icon-${name} ${cls}`.trim());
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  svg.setAttribute('fill', 'none');
  svg.setAttribute('stroke', 'currentColor');
  svg.setAttribute('stroke-width', '2');
  svg.setAttribute('stroke-linecap', 'round');
  svg.setAttribute('stroke-linejoin', 'round');
  for (const [tag, attrs] of ICONS[name] || []) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    svg.appendChild(node);
  }
  return svg;
}

const enc = encodeURIComponent;
// Several clusters: a workload is its cluster + namespace + name (keys, test ids and every
// workload request name the cluster); with one cluster, namespace + name as before.
const multiCluster = () => !!(state.session && (state.session.clusters || []).length > 1);
const cpre = (w, sep) => (multiCluster() && w.cluster ? `${w.cluster}${sep}` : '');
const wkey = (w) => `${cpre(w, ':')}${nsName(w)}`;
// Test ids stay namespace-name: the browser tests find a workload by them in any cluster.
const tid = (w) => `${w.namespace}-${w.name}`;
const wpath = (ns, name) => `${API}/namespaces/${enc(ns)}/workloads/${enc(name)}`;
const wurl = (w, suffix = '', query = '') => {
  const q = [query, multiCluster() && w.cluster ? `cluster=${enc(w.cluster)}` : ''].filter(Boolean).join('&');
  return `${wpath(w.namespace, w.name)}${suffix}${q ? `?${q}` : ''}`;
};

function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleTimeString([], { hour12: false });
}

function fmtNum(n) {
  if (n === null || n === undefined) return '—';
  return Number(n).toLocaleString('en-US');
}

function fmtBytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

// ---------------------------------------------------------------------------------------------
// API client

class ApiError extends Error {
  constructor(status, body, headers) {
    super((body && (body.message || body.error)) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
    this.headers = headers;
  }
}

const state = {
  session: null,
  csrf: null,
  signedIn: false,
  workloads: [],
  loaded: false,
  search: '',
  nsFilter: '',
  clusterFilter: '',
  clusters: [], // each cluster's state in the last list (name, state, message)
  statusFilter: '',
  sort: { key: 'name', dir: 1 },
  ops: new Map(), // workload key -> Operation (latest)
  checks: loadChecks(), // workload key -> [result, ...] oldest first
  lastRender: '',
  refreshTimer: null,
  refreshing: false,
  checkSeq: 0,
  selected: new Set(), // workload keys ticked
  selectMatching: false, // every workload matching the search and filters, on every page
  page: 0,
  pageSize: 20,
  defaults: new Map(), // cluster name -> {doc, etag} from GET /api/v1/defaults (absent: not readable)
  defaultsError: null,
  defaultsCluster: '', // the cluster the defaults page shows
  defaultsSig: '',
  view: 'workloads',
};

async function api(method, path, { body, headers = {}, retry = true } = {}) {
  const init = { method, credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json', ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  if (method !== 'GET' && method !== 'HEAD' && state.csrf) init.headers['X-CSRF-Token'] = state.csrf;
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { error: 'network', message: `Cannot reach the meshpass server (${e.message}). Is it still running?` });
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { message: text.slice(0, 500) }; }
  }
  if (res.status === 401) {
    showSignedOut();
    throw new ApiError(401, data, res.headers);
  }
  if (res.status === 403 && data && data.error === 'csrf' && retry) {
    await loadSession();
    return api(method, path, { body, headers, retry: false });
  }
  if (!res.ok) throw new ApiError(res.status, data, res.headers);
  return { status: res.status, data, headers: res.headers };
}

async function loadSession() {
  const { data } = await api('GET', `${API}/session`);
  state.session = data || {};
  state.csrf = state.session.csrfToken || null;
  state.signedIn = true;
  const backend = $('#backend-badge');
  const kind = state.session.backend === 'kube' ? 'Kubernetes' : 'Local mesh';
  const fmt = state.session.ruleFormat === 'iptables' ? 'iptables' : 'nftables';
  backend.textContent = `${kind} · ${fmt}${multiCluster() ? ` · ${state.session.clusters.length} clusters` : ''}`;
  backend.hidden = false;
  const who = $('#session-badge');
  who.textContent = state.session.auth === 'bearer' ? 'Signed in (token)' : 'Signed in';
  who.hidden = false;
  // A browser session can be ended; a bearer token has no session to end.
  $('#sign-out').hidden = state.session.auth !== 'session';
  return state.session;
}

async function signOut() {
  try {
    await api('DELETE', `${API}/session`);
  } catch (e) {
    if (e.status !== 401) {
      toast('Could not sign out', { type: 'error', detail: e.message });
      return;
    }
  }
  showSignedOut();
}

// ---------------------------------------------------------------------------------------------
// Toasts

function toast(message, { type = 'success', timeout = 6000, detail, action } = {}) {
  const root = $('#toasts');
  const close = () => { el.classList.add('leaving'); setTimeout(() => el.remove(), 180); };
  const el = h('div', { class: `toast toast-${type}`, role: type === 'error' ? 'alert' : 'status', 'data-testid': 'toast', 'data-type': type },
    icon(type === 'error' ? 'error' : type === 'info' ? 'info' : 'check', 'toast-icon'),
    h('div', { class: 'toast-body' }, h('div', { class: 'toast-msg' }, message), detail ? h('div', { class: 'toast-detail' }, detail) : null,
      action ? h('button', { type: 'button', class: 'btn btn-link small toast-action', 'data-testid': 'toast-action', onclick: () => { close(); action.run(); } }, action.label) : null),
    h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss', 'data-testid': 'toast-close', onclick: close }, icon('close')));
  root.appendChild(el);
  if (timeout) setTimeout(close, timeout);
  return el;
}

// ---------------------------------------------------------------------------------------------
// Signed-out panel

function showSignedOut() {
  state.signedIn = false;
  stopAutoRefresh();
  closeMenu();
  closeModal();
  $('#workloads-card').hidden = true;
  $('#defaults-card').hidden = true;
  $('#signed-out').hidden = false;
  $('#backend-badge').hidden = true;
  $('#session-badge').hidden = true;
  $('#sign-out').hidden = true;
  state.ops.clear();
  renderOps();
}

// ---------------------------------------------------------------------------------------------
// Workload list

const STATUS_CLASS = { Injected: 'tag-green', Uninjected: 'tag-grey', 'Pending restart': 'tag-orange' };

function passthroughOf(w) {
  const p = w.passthrough || {};
  return {
    inboundPorts: p.inboundPorts || [],
    outboundPorts: p.outboundPorts || [],
    outboundIpRanges: p.outboundIpRanges || [],
  };
}

function passthroughCount(w) {
  const p = passthroughOf(w);
  return p.inboundPorts.length + p.outboundPorts.length + p.outboundIpRanges.length;
}

function passthroughText(p) {
  const parts = [];
  if (p.inboundPorts && p.inboundPorts.length) parts.push(`In: ${p.inboundPorts.join(', ')}`);
  if (p.outboundPorts && p.outboundPorts.length) parts.push(`Out ports: ${p.outboundPorts.join(', ')}`);
  if (p.outboundIpRanges && p.outboundIpRanges.length) parts.push(`Out IPs: ${p.outboundIpRanges.join(', ')}`);
  return parts.length ? parts.join(' · ') : 'none';
}

function sortValue(w, key) {
  switch (key) {
    case 'namespace': return `${w.namespace}\u0000${w.name}`;
    case 'cluster': return `${w.cluster}\u0000${w.namespace}\u0000${w.name}`;
    case 'status': return `${w.status}\u0000${w.name}`;
    case 'service': return `${(w.services && w.services[0] && w.services[0].name) || '\uffff'}\u0000${w.name}`;
    case 'injected': return w.total ? w.injected / w.total + w.total / 1e6 : -1;
    case 'passthrough': return passthroughCount(w);
    default: return `${w.name}\u0000${w.namespace}`;
  }
}

function visibleWorkloads() {
  const q = state.search.trim().toLowerCase();
  const rows = state.workloads.filter((w) =>
    (!q || w.name.toLowerCase().includes(q))
    && (!state.nsFilter || w.namespace === state.nsFilter)
    && (!state.clusterFilter || w.cluster === state.clusterFilter)
    && (!state.statusFilter || w.status === state.statusFilter));
  const { key, dir } = state.sort;
  rows.sort((a, b) => {
    const va = sortValue(a, key);
    const vb = sortValue(b, key);
    if (va < vb) return -dir;
    if (va > vb) return dir;
    return wkey(a) < wkey(b) ? -1 : 1;
  });
  return rows;
}

function renderNamespaceFilter() {
  const sel = $('#filter-namespace');
  const names = [...new Set(state.workloads.map((w) => w.namespace))].sort();
  const have = $$('option', sel).slice(1).map((o) => o.value);
  if (have.join('\n') === names.join('\n')) return;
  const cur = sel.value;
  sel.replaceChildren(h('option', { value: '' }, 'All namespaces'), ...names.map((n) => h('option', { value: n }, n)));
  sel.value = names.includes(cur) ? cur : '';
  state.nsFilter = sel.value;
}

// The Cluster column, filter and the badges of clusters that did not answer: only when the
// server serves several clusters.
function renderClusters() {
  const multi = multiCluster();
  for (const el of $$('.col-cluster')) el.hidden = !multi;
  const sel = $('#filter-cluster');
  sel.hidden = !multi;
  const names = multi ? state.session.clusters : [];
  const down = new Map(state.clusters.filter((c) => c.state !== 'ok').map((c) => [c.name, c]));
  const label = (n) => (down.has(n) ? `${n} (${down.get(n).state})` : n);
  const want = names.map(label);
  if ($$('option', sel).slice(1).map((o) => o.textContent).join('\n') !== want.join('\n')) {
    const cur = sel.value;
    sel.replaceChildren(h('option', { value: '' }, 'All clusters'), ...names.map((n) => h('option', { value: n }, label(n))));
    sel.value = names.includes(cur) ? cur : '';
    state.clusterFilter = sel.value;
  }
  $('#cluster-status').replaceChildren(...[...down.values()].map((c) => h('span', {
    class: 'tag tag-red', 'data-testid': `cluster-unreachable-${c.name}`, title: c.message || '',
  }, `${c.name}: ${c.state}`)));
}

function renderList(force = false) {
  if (!state.loaded) return;
  const all = visibleWorkloads();
  const pg = pageOf(all, state.page, state.pageSize);
  state.page = pg.page;
  const rows = pg.rows;
  const opsSig = [...state.ops.values()].map((o) => `${o.id}:${o.state}:${(o.progress || []).length}`).join(',');
  const sig = JSON.stringify([rows, opsSig, state.sort, [...state.selected], state.selectMatching, all.length, pg.page, state.defaultsSig]);
  if (!force && sig === state.lastRender) return;
  state.lastRender = sig;

  // Keep keyboard focus on the same row's control across re-renders.
  const active = document.activeElement;
  const focusRow = active && active.closest && active.closest('tr[data-key]');
  const focusKey = focusRow ? focusRow.dataset.key : null;
  const focusTestid = focusRow && active.dataset ? active.dataset.testid : null;

  const tbody = $('#workload-rows');
  if (!rows.length) {
    const msg = state.workloads.length ? 'No workload matches the search or filters.' : 'No workloads.';
    tbody.replaceChildren(h('tr', { class: 'row-placeholder' }, h('td', { colspan: multiCluster() ? 9 : 8, 'data-testid': 'empty-list' }, msg)));
  } else {
    tbody.replaceChildren(...rows.map(renderRow));
  }
  $('#table-foot').textContent = `${all.length} of ${state.workloads.length} workloads`;
  $('#page-info').textContent = `Page ${pg.page + 1} of ${pg.pages}`;
  $('#page-prev').disabled = pg.page === 0;
  $('#page-next').disabled = pg.page >= pg.pages - 1;
  for (const th of $$('thead th[data-sort]')) {
    const on = th.dataset.sort === state.sort.key;
    th.setAttribute('aria-sort', on ? (state.sort.dir > 0 ? 'ascending' : 'descending') : 'none');
  }
  renderSelection(rows, all);
  if (focusKey) {
    const row = $(`tr[data-key="${CSS.escape(focusKey)}"]`);
    const el = row && (focusTestid ? $(`[data-testid="${CSS.escape(focusTestid)}"]`, row) : null);
    const target = el || rowMenuButton(focusKey);
    if (target) target.focus();
  }
}

// ---------------------------------------------------------------------------------------------
// Selection: rows ticked one by one, the page, or every workload matching the filter

/** The workloads a batch acts on now. */
function selectedWorkloads() {
  if (state.selectMatching) return visibleWorkloads();
  return state.workloads.filter((w) => state.selected.has(wkey(w)));
}

function renderSelection(pageRows, all) {
  const pageKeys = pageRows.map(wkey);
  const head = $('#select-page');
  const st = state.selectMatching ? (pageKeys.length ? 'all' : 'none') : pageSelectionState(pageKeys, state.selected);
  head.checked = st === 'all';
  head.indeterminate = st === 'some';
  head.disabled = !pageKeys.length;
  const n = state.selectMatching ? all.length : state.selected.size;
  const bar = $('#batch-bar');
  bar.hidden = n === 0;
  const count = $('#batch-count');
  const hiddenN = state.selectMatching ? 0 : [...state.selected].filter((k) => !all.some((w) => wkey(w) === k)).length;
  count.textContent = state.selectMatching
    ? `All ${n} workload${n === 1 ? '' : 's'} matching the filter selected`
    : `${n} workload${n === 1 ? '' : 's'} selected${hiddenN ? ` (${hiddenN} not shown by the filter)` : ''}`;
  const more = $('#select-matching');
  // Offer "all matching the filter" once the whole page is ticked and there is more than the page.
  more.hidden = state.selectMatching || st !== 'all' || all.length <= pageKeys.length;
  more.textContent = `Select all ${all.length} workloads matching the filter`;
  $('#batch-passthrough').disabled = n === 0;
}

function setSelected(key, on) {
  if (state.selectMatching) {
    // Leaving "all matching": the matching rows become an explicit selection first.
    state.selected = new Set(visibleWorkloads().map(wkey));
    state.selectMatching = false;
  }
  if (on) state.selected.add(key); else state.selected.delete(key);
  renderList(true);
}

function clearSelection() {
  state.selected.clear();
  state.selectMatching = false;
  renderList(true);
}

function renderRow(w) {
  const key = wkey(w);
  const op = state.ops.get(key);
  const running = op && op.state === 'running';
  const partial = w.meshed && w.total > 0 && w.injected < w.total;
  const p = passthroughOf(w);

  const services = (w.services || []).length
    ? (w.services || []).map((s) => h('div', { class: 'svc' },
      h('span', { class: 'svc-name' }, s.name),
      (s.ports || []).map((pt) => h('span', { class: 'svc-port', title: `Service port ${pt.port} → container port ${pt.targetPort}` },
        pt.port === pt.targetPort ? String(pt.port) : `${pt.port}→${pt.targetPort}`))))
    : h('span', { class: 'muted' }, '—');

  const pt = [];
  // The value in force for each list: the workload's own, else the mesh-wide default (marked).
  const defaults = defaultsOf(w.cluster);
  const eff = new Map(effectiveOf(w, defaults && defaults.values).map((e) => [e.field, e]));
  const group = (label, field, cls) => {
    const e = eff.get(field);
    const mesh = e && e.source === 'mesh' && defaults;
    const values = mesh ? listItems(e.value) : p[field];
    if (!values.length) return;
    pt.push(h('div', { class: `pt-line${mesh ? ' pt-mesh' : ''}`, 'data-source': mesh ? 'mesh' : 'workload', 'data-testid': `pt-${field}-${tid(w)}`,
      title: mesh ? `From the mesh-wide default ${e.path} (the workload sets no ${e.annotation})` : null },
    h('span', { class: 'pt-label' }, label), values.map((i) => h('span', { class: `mini-chip ${cls}` }, i)),
    mesh ? h('span', { class: 'src-tag', 'data-testid': 'source-mesh' }, 'mesh') : null));
  };
  group('In', 'inboundPorts', 'mc-in');
  group('Out', 'outboundPorts', 'mc-out');
  group('IP', 'outboundIpRanges', 'mc-ip');
  if ((w.replaced || []).length) {
    pt.push(h('div', { class: 'pt-replaced', 'data-testid': `replaced-${tid(w)}`, title: w.replaced.join('\n') },
      icon('warning'), h('span', null, 'Replaces mesh-wide value'), h('span', { class: 'visually-hidden' }, `: ${w.replaced.join(' ')}`)));
  }

  const checked = state.selectMatching || state.selected.has(key);
  return h('tr', { 'data-testid': `workload-row-${tid(w)}`, 'data-key': key, class: `${running ? 'row-busy' : ''}${checked ? ' row-selected' : ''}`.trim() || null, 'aria-selected': checked ? 'true' : 'false' },
    h('td', { class: 'col-select' }, h('input', { type: 'checkbox', class: 'row-select', checked, 'data-testid': 'row-select', 'aria-label': `Select ${key}`,
      onchange: (e) => setSelected(key, e.currentTarget.checked) })),
    h('td', null, h('div', { class: 'wl-name' }, w.name), h('div', { class: 'muted small' }, w.kind || '')),
    h('td', null,
      h('span', { class: `tag ${STATUS_CLASS[w.status] || 'tag-grey'}`, 'data-testid': `status-${tid(w)}` }, w.status),
      running ? h('span', { class: 'tag tag-blue tag-op', 'data-testid': `op-${tid(w)}`, title: (op.progress || []).slice(-1)[0] || 'Restarting' },
        h('span', { class: 'spinner', 'aria-hidden': 'true' }), 'Restarting') : null,
      op && op.state === 'failed' ? h('span', { class: 'tag tag-red', 'data-testid': `op-${tid(w)}`, title: op.error || '' }, 'Restart failed') : null),
    multiCluster() ? h('td', { class: 'col-cluster', 'data-testid': `cluster-${tid(w)}` }, w.cluster) : null,
    h('td', null, w.namespace),
    h('td', null, services),
    h('td', null, h('span', {
      class: `pods${partial ? ' pods-partial' : ''}`,
      'data-testid': `pods-${tid(w)}`,
      title: partial ? `Only ${w.injected} of ${w.total} pods run a sidecar` : `${w.ready} of ${w.total} pods ready`,
    }, `${w.injected}/${w.total}`)),
    h('td', { 'data-testid': `passthrough-${tid(w)}` }, pt.length ? pt : h('span', { class: 'muted' }, '—')),
    h('td', { class: 'col-op' }, h('button', {
      type: 'button', class: 'btn-icon row-menu', 'data-testid': 'row-menu', 'aria-haspopup': 'menu', 'aria-expanded': 'false',
      'aria-label': `Operations for ${key}`, title: 'Operations',
      onclick: (e) => openMenu(e.currentTarget, key),
    }, icon('more'))));
}

async function refreshList({ quiet = false } = {}) {
  if (state.refreshing || !state.signedIn) return;
  state.refreshing = true;
  const btn = $('#refresh');
  btn.classList.add('spinning');
  try {
    const [{ data }] = await Promise.all([api('GET', `${API}/workloads`), loadDefaults()]);
    state.workloads = (data && data.items) || [];
    state.clusters = (data && data.clusters) || [];
    state.loaded = true;
    // A workload that is gone is no longer selected.
    const keys = new Set(state.workloads.map(wkey));
    for (const k of [...state.selected]) if (!keys.has(k)) state.selected.delete(k);
    renderClusters();
    $('#list-error').hidden = true;
    $('#updated').textContent = `Updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
    renderNamespaceFilter();
    if (!menuState.el) renderList();
  } catch (e) {
    if (e.status !== 401) {
      const el = $('#list-error');
      el.textContent = `Could not load workloads: ${e.message}`;
      el.hidden = false;
      if (!quiet) toast('Could not load workloads', { type: 'error', detail: e.message });
    }
  } finally {
    state.refreshing = false;
    btn.classList.remove('spinning');
  }
}

/** The clusters the server serves (one: the list and the defaults need not name it). */
function clusterNames() {
  return (state.session && state.session.clusters) || [];
}

/** `?cluster=NAME` when several clusters are served, else nothing. */
function clusterQuery(name, sep = '?') {
  return name && clusterNames().length > 1 ? `${sep}cluster=${enc(name)}` : '';
}

/** The mesh-wide defaults of a workload's cluster (null when they could not be read). */
function defaultsOf(cluster) {
  const one = state.defaults.size === 1 ? [...state.defaults.values()][0] : null;
  const e = state.defaults.get(cluster || '') || (clusterNames().length <= 1 ? one : null);
  return e ? e.doc : null;
}

/** The mesh-wide defaults of every cluster, for the values workloads inherit; a failure only
 * loses the marks of that cluster's workloads. */
async function loadDefaults() {
  const names = clusterNames().length > 1 ? clusterNames() : [''];
  const next = new Map();
  state.defaultsError = null;
  await Promise.all(names.map(async (name) => {
    try {
      const res = await api('GET', `${API}/defaults${clusterQuery(name)}`);
      const doc = res.data || {};
      next.set(name || doc.cluster || '', { doc, etag: res.headers.get('ETag') });
    } catch (e) {
      if (e.status === 401) throw e;
      state.defaultsError = `${name ? `cluster ${name}: ` : ''}${e.message}`;
    }
  }));
  state.defaults = next;
  state.defaultsSig = JSON.stringify([...next].map(([k, v]) => [k, v.doc.values]));
  return next;
}

function startAutoRefresh() {
  stopAutoRefresh();
  state.refreshTimer = setInterval(() => {
    if ($('#auto-refresh').checked && document.visibilityState === 'visible') refreshList({ quiet: true });
  }, REFRESH_MS);
}

function stopAutoRefresh() {
  if (state.refreshTimer) clearInterval(state.refreshTimer);
  state.refreshTimer = null;
}

function findWorkload(key) {
  return state.workloads.find((w) => wkey(w) === key);
}

// ---------------------------------------------------------------------------------------------
// Row menu

const menuState = { el: null, trigger: null };

function openMenu(trigger, key) {
  if (menuState.el && menuState.trigger === trigger) { closeMenu(); return; }
  closeMenu();
  const w = findWorkload(key);
  if (!w) return;
  const uninjected = w.status === 'Uninjected';
  const item = (label, ic, testid, action, disabledReason) => h('button', {
    type: 'button', role: 'menuitem', class: 'menu-item', 'data-testid': testid, tabindex: '-1',
    'aria-disabled': disabledReason ? 'true' : null,
    title: disabledReason || null,
    'data-tooltip': disabledReason || null,
    onclick: () => {
      if (disabledReason) return;
      closeMenu(false);
      // Focus the row's ⋮ button first, so that closing the dialog returns the focus there.
      const btn = rowMenuButton(key);
      if (btn) btn.focus();
      action(w);
    },
  }, icon(ic), h('span', null, label));

  const el = h('div', { class: 'menu', role: 'menu', 'data-testid': 'row-menu-popup', 'aria-label': `Operations for ${key}` },
    item('Traffic passthrough settings', 'settings', 'menu-passthrough', openPassthroughDialog,
      uninjected ? 'This workload has no sidecar (Uninjected): enable sidecar injection first; passthrough only applies to meshed workloads.' : null),
    item('Check effect', 'pulse', 'menu-check-effect', openCheckDialog, null),
    item('Bypassed traffic', 'chart', 'menu-bypass', openBypassDialog, null),
    h('div', { class: 'menu-sep', role: 'separator' }),
    item('Restart workload', 'restart', 'menu-restart', confirmRestart, uninjected ? 'Only meshed workloads can be restarted from here.' : null));
  $('#menu-root').appendChild(el);
  const r = trigger.getBoundingClientRect();
  const mw = el.offsetWidth;
  const mh = el.offsetHeight;
  let top = r.bottom + 4;
  if (top + mh > window.innerHeight - 8) top = Math.max(8, r.top - mh - 4);
  el.style.top = `${top}px`;
  el.style.left = `${Math.max(8, Math.min(r.right - mw, window.innerWidth - mw - 8))}px`;
  trigger.setAttribute('aria-expanded', 'true');
  menuState.el = el;
  menuState.trigger = trigger;
  const items = $$('[role="menuitem"]', el);
  (items.find((i) => i.getAttribute('aria-disabled') !== 'true') || items[0]).focus();
  el.addEventListener('keydown', (e) => {
    const idx = items.indexOf(document.activeElement);
    if (e.key === 'ArrowDown') { e.preventDefault(); items[(idx + 1) % items.length].focus(); }
    else if (e.key === 'ArrowUp') { e.preventDefault(); items[(idx - 1 + items.length) % items.length].focus(); }
    else if (e.key === 'Home') { e.preventDefault(); items[0].focus(); }
    else if (e.key === 'End') { e.preventDefault(); items[items.length - 1].focus(); }
    else if (e.key === 'Escape') { e.preventDefault(); closeMenu(true); }
    else if (e.key === 'Tab') closeMenu(false);
  });
}

function rowMenuButton(key) {
  return $(`tr[data-key="${CSS.escape(key)}"] [data-testid="row-menu"]`);
}

function closeMenu(refocus = false) {
  if (!menuState.el) return;
  menuState.el.remove();
  if (menuState.trigger) {
    menuState.trigger.setAttribute('aria-expanded', 'false');
    if (refocus && document.contains(menuState.trigger)) menuState.trigger.focus();
  }
  menuState.el = null;
  menuState.trigger = null;
  renderList(); // apply any refresh that arrived while the menu was open
}

// Esc closes the open menu, else the open dialog, wherever the focus is (a button that was just
// disabled drops the focus to <body>).
document.addEventListener('keydown', (e) => {
  if (e.key !== 'Escape' || e.defaultPrevented) return;
  if (menuState.el) { e.preventDefault(); closeMenu(true); return; }
  if (modalState.current) { e.preventDefault(); closeModal(); }
});
// Keep the focus inside an open dialog.
document.addEventListener('focusin', (e) => {
  const m = modalState.current;
  if (m && !m.dialog.contains(e.target)) {
    const f = focusables(m.dialog);
    (f[0] || m.dialog).focus();
  }
});

document.addEventListener('mousedown', (e) => {
  if (menuState.el && !menuState.el.contains(e.target) && !(menuState.trigger && menuState.trigger.contains(e.target))) closeMenu(false);
});
window.addEventListener('resize', () => closeMenu(false));
window.addEventListener('scroll', () => closeMenu(false), true);

// ---------------------------------------------------------------------------------------------
// Modal dialogs (one at a time, focus trapped, Esc closes)

const modalState = { current: null };

function openModal({ title, subtitle, testid, size = 'md', body, footer, onClose, closeOnBackdrop = true }) {
  closeModal();
  const titleId = `modal-title-${Math.random().toString(36).slice(2, 8)}`;
  const dialog = h('div', { class: `modal modal-${size}`, role: 'dialog', 'aria-modal': 'true', 'aria-labelledby': titleId, 'data-testid': testid },
    h('div', { class: 'modal-head' },
      h('div', null, h('h2', { class: 'modal-title', id: titleId }, title), subtitle ? h('div', { class: 'modal-sub' }, subtitle) : null),
      h('button', { type: 'button', class: 'btn-icon modal-x', 'aria-label': 'Close', 'data-testid': 'modal-close', onclick: () => closeModal() }, icon('close'))),
    h('div', { class: 'modal-body' }, body),
    footer ? h('div', { class: 'modal-foot' }, footer) : null);
  const backdrop = h('div', { class: 'backdrop', 'data-testid': `${testid}-backdrop` }, dialog);
  backdrop.addEventListener('mousedown', (e) => { if (e.target === backdrop && closeOnBackdrop) closeModal(); });
  const restore = document.activeElement;
  const restoreKey = restore && restore.closest && restore.closest('tr[data-key]') ? restore.closest('tr[data-key]').dataset.key : null;
  const m = { backdrop, dialog, onClose, restore, restoreKey };
  dialog.addEventListener('keydown', (e) => {
    if (e.key !== 'Tab') return;
    const f = focusables(dialog);
    if (!f.length) { e.preventDefault(); return; }
    const first = f[0];
    const last = f[f.length - 1];
    if (e.shiftKey && (document.activeElement === first || !dialog.contains(document.activeElement))) { e.preventDefault(); last.focus(); }
    else if (!e.shiftKey && (document.activeElement === last || !dialog.contains(document.activeElement))) { e.preventDefault(); first.focus(); }
  });
  $('#modal-root').appendChild(backdrop);
  document.body.classList.add('modal-open');
  modalState.current = m;
  requestAnimationFrame(() => {
    const auto = $('[data-autofocus]', dialog) || focusables(dialog).find((x) => !x.classList.contains('modal-x')) || dialog;
    if (auto === dialog) dialog.setAttribute('tabindex', '-1');
    auto.focus();
  });
  return m;
}

function focusables(root) {
  return $$('a[href], button:not([disabled]), input:not([disabled]):not([type="hidden"]), select:not([disabled]), textarea:not([disabled]), summary, [tabindex]:not([tabindex="-1"])', root)
    .filter((el) => el.offsetParent !== null || el === document.activeElement);
}

function closeModal() {
  const m = modalState.current;
  if (!m) return;
  modalState.current = null;
  m.backdrop.remove();
  document.body.classList.remove('modal-open');
  if (m.onClose) m.onClose();
  // The list may have re-rendered meanwhile: fall back to the same row's ⋮ button.
  const target = m.restore && document.contains(m.restore) && m.restore.offsetParent !== null ? m.restore : m.restoreKey ? rowMenuButton(m.restoreKey) : null;
  // The opener may be gone (the batch bar hides once nothing is selected): the page, then.
  if (target) target.focus(); else if (!$('#main').hidden) $('#main').focus();
}

function alertBox(type, testid, ...content) {
  return h('div', { class: `alert alert-${type}`, role: type === 'error' ? 'alert' : 'status', 'data-testid': testid },
    icon(type === 'error' ? 'error' : type === 'warning' ? 'warning' : 'info', 'alert-icon'), h('div', { class: 'alert-body' }, content));
}

// ---------------------------------------------------------------------------------------------
// Client-side syntax checks (mirror meshpass-settings' reasons; the server's answer wins)

/** True when the backend's injector is Istio's, which refuses port ranges. */
function istioDialect() {
  return !!(state.session && state.session.backend === 'kube');
}

function validatePortItem(raw) {
  return checkPortItem(raw, istioDialect());
}

function validateIncludeValue(raw, kind) {
  return validateListValue(raw, kind, istioDialect());
}

// ---------------------------------------------------------------------------------------------
// Chip input: Enter / comma adds a chip, × removes it, Backspace on an empty input removes the last

class ChipInput {
  constructor({ name, label, ariaLabel, kind, placeholder, onChange }) {
    this.name = name; // inbound | outbound-ports | outbound-ip-ranges
    this.kind = kind; // port | cidr
    this.onChange = onChange;
    this.chips = []; // {value, client, server}
    this.fieldError = null;
    const inputId = `chip-input-${name}`;
    this.input = h('input', {
      id: inputId, type: 'text', class: 'chip-text', autocomplete: 'off', spellcheck: 'false',
      placeholder, 'data-testid': `chip-input-${name}`, 'aria-describedby': `${inputId}-err`, 'aria-label': ariaLabel || label,
    });
    this.list = h('span', { class: 'chip-list', role: 'list', 'aria-label': `${ariaLabel || label}: values` });
    this.box = h('div', { class: 'chip-box', 'data-testid': `chip-box-${name}` }, this.list, this.input);
    this.typingError = h('div', { class: 'field-error', id: `${inputId}-err`, 'data-testid': `input-error-${name}`, 'aria-live': 'polite', hidden: true });
    this.el = h('div', { class: 'chip-field' },
      h('label', { class: 'chip-label', for: inputId }, label), this.box, this.typingError);
    this.box.addEventListener('mousedown', (e) => { if (e.target === this.box || e.target === this.list) { e.preventDefault(); this.input.focus(); } });
    this.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ',') {
        e.preventDefault();
        this.commit();
      } else if (e.key === 'Backspace' && this.input.value === '' && this.chips.length) {
        e.preventDefault();
        this.remove(this.chips.length - 1);
      }
    });
    this.input.addEventListener('input', () => {
      if (this.input.value.includes(',')) {
        const parts = this.input.value.split(',');
        this.input.value = parts.pop();
        this.add(parts);
      }
      this.showTypingError();
    });
    this.input.addEventListener('paste', (e) => {
      const text = (e.clipboardData && e.clipboardData.getData('text')) || '';
      if (/[,\s]/.test(text.trim())) {
        e.preventDefault();
        this.add(text.split(/[,\s]+/));
      }
    });
    this.input.addEventListener('blur', () => { if (this.input.value.trim()) this.commit(); });
  }

  validate(v) {
    return this.kind === 'cidr' ? validateCidrItem(v) : validatePortItem(v);
  }

  showTypingError() {
    const v = this.input.value.trim();
    const err = v ? this.validate(v) : null;
    this.typingError.hidden = !err;
    this.typingError.textContent = err ? `"${v}" ${err}` : '';
    this.input.setAttribute('aria-invalid', err ? 'true' : 'false');
  }

  commit() {
    const v = this.input.value;
    this.input.value = '';
    this.showTypingError();
    if (v.trim()) this.add([v]);
  }

  add(values) {
    let changed = false;
    for (const raw of values) {
      const value = this.kind === 'cidr' ? raw.trim() : canonicalPortItem(raw);
      if (!value) continue;
      const existing = this.chips.findIndex((c) => c.value === value);
      if (existing >= 0) { this.flash(existing); continue; }
      this.chips.push({ value, client: this.validate(value), server: null });
      changed = true;
    }
    if (changed) { this.render(); this.onChange(); }
  }

  remove(i) {
    this.chips.splice(i, 1);
    this.render();
    this.onChange();
    this.input.focus();
  }

  flash(i) {
    const el = this.list.children[i];
    if (!el) return;
    el.classList.remove('flash');
    void el.offsetWidth; // restart the animation
    el.classList.add('flash');
  }

  /** While the dialog loads, nothing can be typed or removed (the load would replace it). */
  setDisabled(disabled) {
    this.disabled = disabled;
    this.input.disabled = disabled;
    this.box.classList.toggle('chip-box-disabled', disabled);
    for (const b of $$('button', this.list)) b.disabled = disabled;
  }

  set(values) {
    this.chips = (values || []).map((value) => ({ value, client: this.validate(value), server: null }));
    this.fieldError = null;
    this.input.value = '';
    this.showTypingError();
    this.render();
  }

  values() {
    return this.chips.map((c) => c.value);
  }

  /** errors: [{item, reason}] from the server for this field; items that match a chip mark it. */
  setServerErrors(errors, accepted) {
    const unmatched = [];
    for (const c of this.chips) c.server = null;
    for (const e of errors) {
      const item = (e.item || '').trim();
      const c = this.chips.find((x) => x.value === item || x.value.trim() === item);
      if (c) c.server = e.reason || 'rejected';
      else unmatched.push(e);
    }
    // The server is authoritative: a chip it accepted loses a (stricter) client-side complaint.
    if (accepted) for (const c of this.chips) if (!c.server && accepted.includes(c.value)) c.clientOverridden = true;
    this.fieldError = unmatched.length ? unmatched.map((e) => `${e.item ? `"${e.item}" ` : ''}${e.reason}`).join('; ') : null;
    this.render();
  }

  errorCount() {
    return this.chips.filter((c) => c.server || (c.client && !c.clientOverridden)).length + (this.fieldError ? 1 : 0);
  }

  render() {
    this.list.replaceChildren(...this.chips.map((c, i) => {
      const reason = c.server || (c.clientOverridden ? null : c.client);
      const chip = h('span', {
        class: `chip${reason ? ' chip-invalid' : ''}`, role: 'listitem',
        'data-testid': `chip-${this.name}-${c.value}`, 'data-invalid': reason ? 'true' : null,
        title: reason ? `${c.value} ${reason}` : null,
      },
      h('span', { class: 'chip-value' }, c.value),
      h('button', { type: 'button', class: 'chip-remove', 'data-testid': 'chip-remove', 'aria-label': `Remove ${c.value}`, disabled: this.disabled || null, onclick: () => this.remove(i) }, icon('close')));
      if (!reason) return chip;
      return h('span', { class: 'chip-wrap' }, chip,
        h('span', { class: `chip-reason${c.server ? ' chip-reason-server' : ''}`, 'data-testid': 'chip-error', role: 'note' }, reason));
    }));
    let fe = $('.field-error-server', this.el);
    if (this.fieldError) {
      if (!fe) { fe = h('div', { class: 'field-error field-error-server', 'data-testid': `field-error-${this.name}` }); this.el.appendChild(fe); }
      fe.textContent = this.fieldError;
    } else if (fe) fe.remove();
    this.box.classList.toggle('chip-box-invalid', this.errorCount() > 0);
  }
}

// ---------------------------------------------------------------------------------------------
// Traffic passthrough settings dialog

async function openPassthroughDialog(w) {
  const key = wkey(w);
  const path = wurl(w, '/passthrough');
  const ctx = { etag: null, doc: null, previewSeq: 0, previewTimer: null, closed: false, adv: {} };

  const errorArea = h('div', { class: 'dialog-errors', 'data-testid': 'dialog-error-area' });
  const warnArea = h('div', { class: 'dialog-warnings', 'data-testid': 'warnings-area' });
  const onChange = () => schedulePreview();
  const portExample = istioDialect() ? 'e.g. 5000' : 'e.g. 5000 or 8000-8100';
  const inbound = new ChipInput({ name: 'inbound', label: 'Ports', ariaLabel: 'Inbound ports', kind: 'port', placeholder: `${portExample}, then Enter`, onChange });
  const outPorts = new ChipInput({ name: 'outbound-ports', label: 'Ports', ariaLabel: 'Outbound ports', kind: 'port', placeholder: 'e.g. 3306, then Enter', onChange });
  const outRanges = new ChipInput({ name: 'outbound-ip-ranges', label: 'IP ranges', ariaLabel: 'Outbound IP ranges', kind: 'cidr', placeholder: 'e.g. 10.64.24.0/21, then Enter', onChange });
  const chipFor = { inboundPorts: inbound, outboundPorts: outPorts, outboundIpRanges: outRanges };

  // Advanced: kept exactly as the server returned them unless edited, so a PUT does not wipe them.
  const advField = (field, label, kind, help) => {
    const id = `adv-${field}`;
    const input = h('input', { id, type: 'text', class: 'input mono', autocomplete: 'off', spellcheck: 'false', 'data-testid': id });
    const err = h('div', { class: 'field-error', 'data-testid': `${id}-error`, hidden: true });
    const note = h('div', { class: 'field-help' }, help);
    ctx.adv[field] = { input, err, orig: null, touched: false, kind, note };
    input.addEventListener('input', () => {
      ctx.adv[field].touched = true;
      const msg = validateIncludeValue(input.value, kind);
      err.hidden = !msg;
      err.textContent = msg || '';
      input.setAttribute('aria-invalid', msg ? 'true' : 'false');
      schedulePreview();
    });
    return h('div', { class: 'adv-field' }, h('label', { for: id, class: 'adv-label' }, label, h('code', { class: 'adv-key' }, ANNOTATION_KEYS[field])), input, note, err);
  };
  const modeSelect = h('select', { id: 'adv-interceptionMode', class: 'input', 'data-testid': 'adv-interceptionMode' },
    h('option', { value: '' }, 'Not set (REDIRECT)'), h('option', { value: 'REDIRECT' }, 'REDIRECT'), h('option', { value: 'TPROXY' }, 'TPROXY'), h('option', { value: 'NONE' }, 'NONE'));
  const modeErr = h('div', { class: 'field-error', 'data-testid': 'adv-interceptionMode-error', hidden: true });
  ctx.adv.interceptionMode = { input: modeSelect, err: modeErr, orig: null, touched: false, kind: 'mode' };
  modeSelect.addEventListener('change', () => { ctx.adv.interceptionMode.touched = true; schedulePreview(); });
  const annotationsView = h('dl', { class: 'annotations', 'data-testid': 'current-annotations' });
  const advanced = h('details', { class: 'advanced', 'data-testid': 'advanced' },
    h('summary', { 'data-testid': 'advanced-toggle' }, icon('chevron', 'summary-chevron'), 'Advanced'),
    h('div', { class: 'advanced-body' },
      h('p', { class: 'field-help' }, 'The rest of Istio\'s capture settings. They are kept as they are unless you change them here.'),
      advField('includeInboundPorts', 'Include inbound ports', 'port', 'Inbound ports that are captured: * (all, default), a list, or empty.'),
      advField('includeOutboundPorts', 'Include outbound ports', 'port', 'Outbound ports that are captured even if their IP range is not.'),
      advField('includeOutboundIpRanges', 'Include outbound IP ranges', 'cidr', 'Destination CIDRs that are captured: * (all, default) or a list.'),
      h('div', { class: 'adv-field' }, h('label', { for: 'adv-interceptionMode', class: 'adv-label' }, 'Interception mode', h('code', { class: 'adv-key' }, ANNOTATION_KEYS.interceptionMode)), modeSelect, modeErr),
      h('div', { class: 'adv-field' }, h('div', { class: 'adv-label' }, 'Current passthrough annotations'), annotationsView)));

  const restart = h('input', { type: 'checkbox', id: 'restart-now', 'data-testid': 'restart-now' });
  // Impact on meshed clients' mutual TLS (from the preview) and the fix for the failing ones.
  const fixClients = h('input', { type: 'checkbox', id: 'fix-clients', 'data-testid': 'fix-clients' });
  fixClients.addEventListener('change', () => schedulePreview());
  const impact = {
    list: h('ul', { class: 'impact-list', 'data-testid': 'impact-list' }),
    fixLabel: h('span', null),
    removes: h('div', { class: 'field-help', 'data-testid': 'impact-removes', hidden: true }),
  };
  impact.fixRow = h('label', { class: 'checkbox fix-row', for: 'fix-clients', hidden: true }, fixClients, impact.fixLabel);
  impact.el = h('section', { class: 'pt-section impact', 'aria-labelledby': 'sec-impact', 'data-testid': 'impact', hidden: true },
    h('h3', { id: 'sec-impact', class: 'pt-section-title' }, 'Meshed clients (mutual TLS)'),
    impact.list, impact.fixRow, impact.removes);
  // The values in force (the workload's own, else the mesh-wide default) with their source.
  const effectiveView = h('tbody', null);
  const effectiveSection = h('section', { class: 'pt-section', 'aria-labelledby': 'sec-effective', 'data-testid': 'effective', hidden: true },
    h('h3', { id: 'sec-effective', class: 'pt-section-title' }, 'In force now'),
    h('p', { class: 'field-help' }, 'A value the workload does not set comes from the mesh-wide defaults; setting it here replaces the mesh-wide value, it does not add to it.'),
    h('table', { class: 'table table-compact effective-table' }, h('caption', { class: 'visually-hidden' }, 'Capture values in force and their source'),
      h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Annotation'), h('th', { scope: 'col' }, 'Value'), h('th', { scope: 'col' }, 'From'))), effectiveView));
  const meshNotes = {};
  for (const [field, ci] of [['inboundPorts', inbound], ['outboundPorts', outPorts], ['outboundIpRanges', outRanges]]) {
    meshNotes[field] = h('div', { class: 'field-help mesh-note', 'data-testid': `mesh-note-${ci.name}`, hidden: true });
    ci.el.appendChild(meshNotes[field]);
  }
  const pendingNote = h('div', { class: 'field-help pending-note', 'data-testid': 'pending-note', hidden: true },
    'The running pods use older settings (Pending restart): tick Restart now to apply.');

  const preview = {
    summary: h('span', { class: 'preview-summary', 'data-testid': 'preview-summary' }),
    onlyChanges: h('input', { type: 'checkbox', id: 'preview-only-changes', checked: true, 'data-testid': 'preview-only-changes' }),
    status: h('div', { class: 'preview-status muted small', 'data-testid': 'preview-status', 'aria-live': 'polite' }, 'Loading…'),
    diff: h('div', { class: 'diff', 'data-testid': 'preview-diff', role: 'region', 'aria-label': 'Rule changes', tabindex: '0' }),
    args: h('details', { class: 'istio-args', 'data-testid': 'preview-istio-args', hidden: true }),
    last: null,
  };
  preview.onlyChanges.addEventListener('change', () => renderDiff());

  const confirmBtn = h('button', { type: 'button', class: 'btn btn-primary', 'data-testid': 'confirm-changes', onclick: () => submit() }, 'Confirm changes');
  const cancelBtn = h('button', { type: 'button', class: 'btn', 'data-testid': 'cancel', onclick: () => closeModal() }, 'Cancel');
  const checkBtn = h('button', { type: 'button', class: 'btn btn-link', 'data-testid': 'check-effect', onclick: () => {
    if (isDirty() && !window.confirm('Discard the unsaved changes and open Check effect?')) return;
    openCheckDialog(findWorkload(key) || w);
  } }, icon('pulse'), 'Check effect');

  const form = h('div', { class: 'pt-form' },
    h('section', { class: 'pt-section', 'aria-labelledby': 'sec-inbound' },
      h('h3', { id: 'sec-inbound', class: 'pt-section-title' }, h('span', { class: 'dir-badge dir-in', 'aria-hidden': 'true' }, 'IN'), 'Inbound'),
      h('p', { class: 'pt-hint', 'data-testid': 'hint-inbound' }, INBOUND_HINT),
      inbound.el),
    h('section', { class: 'pt-section', 'aria-labelledby': 'sec-outbound' },
      h('h3', { id: 'sec-outbound', class: 'pt-section-title' }, h('span', { class: 'dir-badge dir-out', 'aria-hidden': 'true' }, 'OUT'), 'Outbound'),
      h('p', { class: 'pt-hint', 'data-testid': 'hint-outbound' }, OUTBOUND_HINT),
      outPorts.el, outRanges.el),
    advanced,
    h('div', { class: 'restart-row' },
      h('label', { class: 'checkbox', for: 'restart-now' }, restart, h('span', null, 'Restart now')),
      h('span', { class: 'field-help' }, 'Without a restart the settings apply when the pods are next recreated.')),
    pendingNote, impact.el, effectiveSection);

  const previewPane = h('section', { class: 'preview', 'aria-labelledby': 'preview-title', 'data-testid': 'preview' },
    h('div', { class: 'preview-head' },
      h('h3', { id: 'preview-title', class: 'pt-section-title' }, 'Preview', h('span', { class: 'muted small preview-format', 'data-testid': 'preview-format' })),
      preview.summary,
      h('label', { class: 'toggle small', for: 'preview-only-changes' }, preview.onlyChanges, 'Only changes')),
    preview.status, preview.diff, preview.args);

  const body = h('div', { class: 'pt-dialog', 'data-testid': 'passthrough-form' },
    errorArea, warnArea, h('div', { class: 'pt-grid' }, form, previewPane));

  openModal({
    title: 'Traffic passthrough settings',
    subtitle: h('span', null, multiCluster() ? ['Cluster ', h('strong', { 'data-testid': 'dialog-cluster' }, w.cluster), ' · '] : null,
      'Workload ', h('strong', { 'data-testid': 'dialog-workload' }, `${w.namespace}/${w.name}`)),
    testid: 'passthrough-dialog', size: 'xl', body, closeOnBackdrop: false,
    footer: [checkBtn, h('span', { class: 'spacer' }), cancelBtn, confirmBtn],
    onClose: () => { ctx.closed = true; clearTimeout(ctx.previewTimer); },
  });
  const dialog = $('[data-testid="passthrough-dialog"]');

  // Until the workload's settings have loaded, nothing can be typed, toggled or confirmed:
  // the load replaces the form's values, so anything entered before it would be lost, and a
  // quick Confirm would save an empty change.
  function setLoading(loading) {
    ctx.loading = loading;
    dialog.classList.toggle('loading', loading);
    dialog.setAttribute('aria-busy', loading ? 'true' : 'false');
    for (const ci of Object.values(chipFor)) ci.setDisabled(loading);
    for (const a of Object.values(ctx.adv)) a.input.disabled = loading;
    restart.disabled = loading;
    fixClients.disabled = loading;
    confirmBtn.disabled = loading;
  }
  setLoading(true);

  function currentSettings() {
    const s = { inboundPorts: inbound.values(), outboundPorts: outPorts.values(), outboundIpRanges: outRanges.values() };
    for (const f of ['includeInboundPorts', 'includeOutboundPorts', 'includeOutboundIpRanges', 'interceptionMode']) {
      const a = ctx.adv[f];
      if (!a.touched) s[f] = a.orig;
      else s[f] = a.input.value.trim() === '' ? null : a.input.value.trim();
    }
    return s;
  }

  function isDirty() {
    if (!ctx.doc) return false;
    const norm = (x) => JSON.stringify(['inboundPorts', 'outboundPorts', 'outboundIpRanges', 'includeInboundPorts', 'includeOutboundPorts', 'includeOutboundIpRanges', 'interceptionMode']
      .map((f) => (Array.isArray(x[f]) ? x[f] : x[f] === undefined ? null : x[f])));
    const pending = Object.values(chipFor).some((ci) => ci.input.value.trim() !== '');
    return pending || norm(currentSettings()) !== norm({ inboundPorts: [], outboundPorts: [], outboundIpRanges: [], ...(ctx.doc.settings || {}) });
  }

  function fill(doc) {
    ctx.doc = doc;
    const s = doc.settings || {};
    inbound.set(s.inboundPorts);
    outPorts.set(s.outboundPorts);
    outRanges.set(s.outboundIpRanges);
    for (const f of ['includeInboundPorts', 'includeOutboundPorts', 'includeOutboundIpRanges', 'interceptionMode']) {
      const a = ctx.adv[f];
      a.orig = s[f] === undefined ? null : s[f];
      a.touched = false;
      a.err.hidden = true;
      if (f === 'interceptionMode') {
        if (a.orig && !$$('option', modeSelect).some((o) => o.value === a.orig)) modeSelect.appendChild(h('option', { value: a.orig }, a.orig));
        modeSelect.value = a.orig || '';
      } else {
        a.input.value = a.orig || '';
        a.input.placeholder = a.orig === '' ? 'set to empty (captures none)' : 'not set (Istio default)';
      }
    }
    if (['includeInboundPorts', 'includeOutboundPorts', 'includeOutboundIpRanges', 'interceptionMode'].some((f) => ctx.adv[f].orig !== null)) advanced.open = true;
    const ann = Object.entries(doc.annotations || {});
    annotationsView.replaceChildren(...(ann.length ? ann.flatMap(([k, v]) => [h('dt', null, k), h('dd', null, v)]) : [h('dd', { class: 'muted' }, 'none')]));
    pendingNote.hidden = doc.status !== 'Pending restart';
    showWarnings(doc.warnings || []);
    const eff = doc.effective || [];
    effectiveSection.hidden = !eff.length;
    effectiveView.replaceChildren(...eff.map((e) => h('tr', { 'data-testid': 'effective-row', 'data-annotation': e.annotation, 'data-source': e.source },
      h('td', null, h('code', { class: 'small' }, e.annotation.replace(/^.*\//, ''))),
      h('td', { class: 'mono small' }, e.value === '' ? h('span', { class: 'muted' }, 'none') : e.value),
      h('td', null, h('span', { class: `tag ${e.source === 'mesh' ? 'tag-blue' : 'tag-grey'}`, title: e.source === 'mesh' ? `Mesh-wide default ${e.meshKey}` : `The workload's own ${e.annotation}` },
        e.source === 'mesh' ? 'Mesh-wide' : 'Workload')))));
    for (const [field, note] of Object.entries(meshNotes)) {
      const e = eff.find((x) => x.annotation === ANNOTATION_KEYS[field]);
      const inherited = e && e.source === 'mesh' && e.value !== '';
      note.hidden = !inherited;
      note.textContent = inherited ? `Not set here: the mesh-wide ${e.meshKey} applies (${e.value}). Adding items replaces it for this workload.` : '';
    }
  }

  function showWarnings(list) {
    warnArea.replaceChildren(...list.map((w0) => alertBox('warning', 'warning', w0)));
  }

  function showError(...content) {
    errorArea.replaceChildren(alertBox('error', 'dialog-error', ...content));
    ctx.errorKind = 'other';
  }

  function clearError() { errorArea.replaceChildren(); ctx.errorKind = null; }

  function applyServerErrors(errors, sent) {
    const by = { inboundPorts: [], outboundPorts: [], outboundIpRanges: [] };
    const other = [];
    for (const e of errors || []) {
      const field = e.field || KEY_TO_FIELD[e.key];
      if (by[field]) by[field].push(e);
      else if (ctx.adv[field]) {
        const a = ctx.adv[field];
        a.err.hidden = false;
        a.err.textContent = `${e.item ? `"${e.item}" ` : ''}${e.reason}`;
        advanced.open = true;
      } else other.push(e);
    }
    for (const [f, ci] of Object.entries(chipFor)) ci.setServerErrors(by[f], sent ? sent[f] : null);
    return other;
  }

  function clearServerErrors(sent) {
    for (const [f, ci] of Object.entries(chipFor)) ci.setServerErrors([], sent ? sent[f] : null);
    for (const a of Object.values(ctx.adv)) if (!a.touched || !validateIncludeValue(a.input.value, a.kind)) { a.err.hidden = true; }
  }

  function schedulePreview() {
    if (ctx.errorKind === 'invalid') clearError(); // the marked values changed: their errors are re-checked below
    clearTimeout(ctx.previewTimer);
    preview.status.textContent = 'Updating preview…';
    ctx.previewTimer = setTimeout(runPreview, PREVIEW_DEBOUNCE_MS);
  }

  async function runPreview() {
    if (ctx.closed) return;
    const seq = ++ctx.previewSeq;
    const sent = currentSettings();
    try {
      const { data } = await api('POST', wurl(w, '/passthrough/preview', fixClients.checked ? 'fixClients=true' : ''), { body: sent });
      if (seq !== ctx.previewSeq || ctx.closed) return;
      clearServerErrors(sent);
      preview.last = data;
      showWarnings(data.warnings || []);
      renderDiff();
      renderImpact(data);
    } catch (e) {
      if (seq !== ctx.previewSeq || ctx.closed) return;
      if (e.status === 422) {
        const other = applyServerErrors(e.body.errors, sent);
        preview.last = null;
        preview.diff.replaceChildren();
        preview.summary.textContent = '';
        preview.status.textContent = `The server rejected ${(e.body.errors || []).length || 'some'} item(s); fix the marked values to see the rules.${other.length ? ` ${other.map((x) => x.reason).join('; ')}` : ''}`;
        preview.status.classList.add('text-error');
      } else {
        preview.status.textContent = `Preview unavailable: ${e.message}`;
        preview.status.classList.add('text-error');
      }
    }
  }

  function renderDiff() {
    const data = preview.last;
    if (!data) return;
    preview.status.classList.remove('text-error');
    $('[data-testid="preview-format"]', previewPane).textContent = data.format === 'iptables' ? ' · iptables-restore' : ' · nftables';
    const lines = data.diff || [];
    const adds = lines.filter((l) => l.op === '+').length;
    const dels = lines.filter((l) => l.op === '-').length;
    preview.summary.replaceChildren(h('span', { class: 'sum-add' }, `+${adds}`), ' ', h('span', { class: 'sum-del' }, `−${dels}`));
    preview.status.textContent = adds || dels ? 'Rules after Confirm changes (and a restart), compared with the current ones:' : 'No change to the rules.';
    const only = preview.onlyChanges.checked;
    const keep = new Array(lines.length).fill(!only);
    if (only) {
      lines.forEach((l, i) => {
        if (l.op !== ' ') for (let j = Math.max(0, i - 2); j <= Math.min(lines.length - 1, i + 2); j += 1) keep[j] = true;
      });
    }
    const out = [];
    let skipped = 0;
    const flush = () => { if (skipped) { out.push(h('div', { class: 'diff-line diff-skip' }, `⋯ ${skipped} unchanged line${skipped > 1 ? 's' : ''}`)); skipped = 0; } };
    lines.forEach((l, i) => {
      if (!keep[i]) { skipped += 1; return; }
      flush();
      const cls = l.op === '+' ? 'diff-add' : l.op === '-' ? 'diff-del' : 'diff-ctx';
      out.push(h('div', { class: `diff-line ${cls}`, 'data-op': l.op === '+' ? 'add' : l.op === '-' ? 'del' : 'ctx' },
        h('span', { class: 'diff-op', 'aria-hidden': 'true' }, l.op === '-' ? '−' : l.op), h('span', { class: 'diff-text' }, l.line)));
    });
    flush();
    if (!lines.length) out.push(h('div', { class: 'diff-line diff-skip' }, data.proposed ? 'No rules changed.' : 'No rules (the workload is not meshed).'));
    preview.diff.replaceChildren(...out);
    const args = data.istioArgs;
    if (args && (args.proposed || []).length) {
      preview.args.hidden = false;
      preview.args.replaceChildren(h('summary', null, 'istio-iptables arguments'),
        h('div', { class: 'args-label muted small' }, 'Current'), h('pre', { class: 'args' }, (args.current || []).join(' ') || '—'),
        h('div', { class: 'args-label muted small' }, 'Proposed'), h('pre', { class: 'args' }, (args.proposed || []).join(' ')));
    } else preview.args.hidden = true;
  }

  const EFFECT = { fails: ['Fails', 'tag-red'], 'loses-mtls': ['Loses mTLS', 'tag-orange'], works: ['Works', 'tag-green'] };
  function renderImpact(data) {
    const entries = data.impact || [];
    const fixes = data.fixes || [];
    const removes = data.removes || [];
    impact.list.replaceChildren(...entries.map((e) => {
      const [label, cls] = EFFECT[e.effect] || [e.effect, 'tag-grey'];
      return h('li', { class: 'impact-row', 'data-testid': 'impact-row', 'data-client': e.client, 'data-effect': e.effect },
        h('span', { class: `tag ${cls}` }, label), ' ', h('strong', null, e.client), ` → ${e.service}:${e.servicePort}`,
        e.direction === 'outbound' ? ` (${e.server})` : '',
        h('div', { class: 'muted small' }, e.reason));
    }));
    // The checkbox stays while it is ticked, so that unticking it is always possible.
    impact.fixRow.hidden = !fixes.length && !fixClients.checked;
    impact.fixLabel.textContent = fixes.length
      ? `Fix meshed clients: create ${fixes.map((f) => `DestinationRule ${f.namespace}/${f.name}`).join(', ')} (TLS off for exactly that Service port; removed again when the exclusion is cleared)`
      : 'Fix meshed clients (nothing to fix)';
    impact.removes.hidden = !removes.length;
    impact.removes.textContent = removes.length ? `No longer needed, removed on Confirm: ${removes.map((r) => `${r.kind} ${r.namespace}/${r.name}`).join(', ')}` : '';
    impact.el.hidden = !entries.length && impact.fixRow.hidden && !removes.length;
  }

  async function load() {
    const res = await api('GET', path);
    ctx.etag = res.headers.get('ETag') || (res.data && res.data.resourceVersion ? `"${res.data.resourceVersion}"` : null);
    fill(res.data || {});
    runPreview();
  }

  async function submit() {
    for (const ci of Object.values(chipFor)) if (ci.input.value.trim()) ci.commit();
    clearError();
    const settings = currentSettings();
    const body0 = { ...settings, restart: restart.checked, fixClients: fixClients.checked };
    confirmBtn.disabled = true;
    confirmBtn.classList.add('busy');
    confirmBtn.textContent = 'Saving…';
    try {
      const headers = ctx.etag ? { 'If-Match': ctx.etag } : {};
      if (!ctx.etag && ctx.doc && ctx.doc.resourceVersion) body0.resourceVersion = ctx.doc.resourceVersion;
      const res = await api('PUT', path, { body: body0, headers });
      const doc = res.data || {};
      closeModal();
      toast(SUCCESS_TOAST, {
        detail: `${key}: ${passthroughText(doc.settings || settings)}${doc.operation ? ' — restarting' : doc.status === 'Pending restart' ? ' — pending restart' : ''}${
          (doc.created || []).map((r) => ` — created ${r.kind} ${r.namespace}/${r.name}`).join('')}${
          (doc.removed || []).map((r) => ` — removed ${r.kind} ${r.namespace}/${r.name}`).join('')}`,
        action: doc.operation ? null : { label: 'Check effect', run: () => openCheckDialog(findWorkload(key) || w) },
      });
      if (doc.operation) trackOperation(doc.operation);
      const wl = findWorkload(key);
      if (wl) {
        wl.passthrough = { ...(wl.passthrough || {}), ...(doc.settings || settings) };
        if (doc.status) wl.status = doc.status;
        if (doc.resourceVersion) wl.resourceVersion = doc.resourceVersion;
        renderList();
      }
      refreshList({ quiet: true });
    } catch (e) {
      if (ctx.closed) return;
      if (e.status === 409) {
        showError(h('strong', null, 'The workload changed since this dialog was opened'), ' (someone else saved its settings or it was restarted). Nothing was saved. The current values have been reloaded: review them and confirm again.');
        setLoading(true);
        try {
          await load();
          setLoading(false);
        } catch (e2) { showError(`The workload changed and could not be reloaded: ${e2.message}`); }
      } else if (e.status === 422) {
        const errors = e.body.errors || [];
        const other = applyServerErrors(errors, settings);
        showError(h('strong', null, `Not saved: ${errors.length || 'some'} invalid item${errors.length === 1 ? '' : 's'}.`), ' Fix the values marked in red.',
          other.length || !errors.length ? h('div', { class: 'small' }, other.length ? other.map((x) => `${x.key || x.field}: ${x.item ? `"${x.item}" ` : ''}${x.reason}`).join('; ') : e.message) : null);
        ctx.errorKind = 'invalid';
      } else if (e.status === 428) {
        showError('Not saved: the server needs the version the change is based on (If-Match). Close and reopen the dialog.');
      } else if (e.status !== 401) {
        showError(h('strong', null, `Not saved (${e.status || 'network'}):`), ` ${e.message}`);
      }
    } finally {
      if (!ctx.closed) {
        confirmBtn.disabled = ctx.loading;
        confirmBtn.classList.remove('busy');
        confirmBtn.textContent = 'Confirm changes';
      }
    }
  }

  try {
    await load();
    if (!ctx.closed) {
      setLoading(false);
      inbound.input.focus();
    }
  } catch (e) {
    // Still nothing to edit: the form stays disabled, the error says why.
    dialog.classList.remove('loading');
    if (e.status !== 401) showError(h('strong', null, 'Could not load the current settings:'), ` ${e.message}`, ' Close the dialog and open it again.');
  }
}

// ---------------------------------------------------------------------------------------------
// Restart operations: tracked in the row and in the Operations panel

function trackOperation(op) {
  const key = wkey(op);
  state.ops.set(key, op);
  renderOps();
  renderList();
  if (op.state === 'running') pollOperation(op.id, key);
  else finishOperation(op, key);
}

async function pollOperation(id, key) {
  let failures = 0;
  for (;;) {
    await new Promise((r) => setTimeout(r, OP_POLL_MS));
    const cur = state.ops.get(key);
    if (!cur || cur.id !== id || !state.signedIn) return;
    try {
      const { data } = await api('GET', `${API}/operations/${enc(id)}`);
      failures = 0;
      state.ops.set(key, data);
      renderOps();
      renderList();
      if (data.state !== 'running') { finishOperation(data, key); return; }
    } catch (e) {
      failures += 1;
      if (e.status === 404 || failures >= 10) {
        const lost = { ...cur, state: 'failed', error: `lost track of the operation: ${e.message}` };
        state.ops.set(key, lost);
        renderOps();
        renderList();
        return;
      }
    }
  }
}

const OP_KEEP_MS = 90000; // a succeeded restart stays in the panel this long (failed ones until dismissed)

function finishOperation(op, key) {
  if (op.state === 'succeeded') {
    setTimeout(() => {
      const cur = state.ops.get(key);
      if (cur && cur.id === op.id) { state.ops.delete(key); renderOps(); renderList(); }
    }, OP_KEEP_MS);
  }
  if (op.state === 'succeeded') {
    toast(`Restart of ${key} completed`, { type: 'info', timeout: 6000,
      action: { label: 'Check effect', run: () => { const w = findWorkload(key); if (w) openCheckDialog(w); } } });
  }
  else toast(`Restart of ${key} failed`, { type: 'error', timeout: 12000, detail: op.error || '' });
  refreshList({ quiet: true });
}

function renderOps() {
  const panel = $('#ops-panel');
  const ops = [...state.ops.entries()];
  if (!ops.length) { panel.hidden = true; panel.replaceChildren(); return; }
  panel.hidden = false;
  panel.replaceChildren(
    h('div', { class: 'ops-head' }, h('span', null, 'Operations'),
      h('button', { type: 'button', class: 'btn-icon small', 'aria-label': 'Clear finished operations', title: 'Clear finished', 'data-testid': 'ops-clear',
        onclick: () => { for (const [k, o] of state.ops) if (o.state !== 'running') state.ops.delete(k); renderOps(); renderList(); } }, icon('close'))),
    ...ops.map(([key, op]) => {
      const [ns, name] = key.split('/');
      const progress = op.progress || [];
      const stateCls = op.state === 'succeeded' ? 'tag-green' : op.state === 'failed' ? 'tag-red' : 'tag-blue';
      const secs = op.startedAt ? Math.max(0, Math.round(((op.finishedAt ? new Date(op.finishedAt) : new Date()) - new Date(op.startedAt)) / 1000)) : null;
      return h('div', { class: `op op-${op.state}`, 'data-testid': `operation-${ns}-${name}`, 'data-state': op.state, 'data-op-id': op.id },
        h('div', { class: 'op-title' },
          op.state === 'running' ? h('span', { class: 'spinner', 'aria-hidden': 'true' }) : null,
          h('span', null, `Restart ${key}`),
          h('span', { class: `tag ${stateCls}`, 'data-testid': 'operation-state' }, op.state),
          secs !== null ? h('span', { class: 'muted small' }, `${secs}s`) : null),
        h('ol', { class: 'op-progress', 'aria-live': 'polite' }, progress.slice(-5).map((l) => h('li', null, l))),
        op.error ? h('div', { class: 'op-error', role: 'alert' }, op.error) : null,
        op.state === 'succeeded' ? h('button', { type: 'button', class: 'btn btn-link small', 'data-testid': 'op-check-effect',
          onclick: () => { const w = findWorkload(key); if (w) openCheckDialog(w); } }, icon('pulse'), 'Check effect') : null);
    }));
}

function confirmRestart(w) {
  const key = wkey(w);
  const go = h('button', { type: 'button', class: 'btn btn-primary', 'data-testid': 'confirm-restart', onclick: async () => {
    go.disabled = true;
    try {
      const { data } = await api('POST', wurl(w, '/restart'));
      closeModal();
      trackOperation(data);
    } catch (e) {
      go.disabled = false;
      if (e.status !== 401) toast(`Restart of ${key} failed`, { type: 'error', detail: e.message });
    }
  } }, 'Restart');
  openModal({
    title: 'Restart workload', testid: 'restart-dialog', size: 'sm',
    body: h('p', null, 'Rolling restart of ', h('strong', null, key), ': its pods are recreated with the current settings (as ', h('code', null, 'kubectl rollout restart'), ' does).'),
    footer: [h('span', { class: 'spacer' }), h('button', { type: 'button', class: 'btn', onclick: () => closeModal() }, 'Cancel'), go],
  });
}

// ---------------------------------------------------------------------------------------------
// Check effect: Before / After

function loadChecks() {
  try {
    const raw = sessionStorage.getItem('meshpass.checks');
    return new Map(raw ? JSON.parse(raw) : []);
  } catch {
    return new Map();
  }
}

function saveChecks() {
  try { sessionStorage.setItem('meshpass.checks', JSON.stringify([...state.checks.entries()])); } catch { /* private mode */ }
}

const VERDICT = {
  sidecar: { label: 'Through sidecar', cls: 'verdict-sidecar' },
  passthrough: { label: 'Passthrough', cls: 'verdict-passthrough' },
  unknown: { label: 'Unknown', cls: 'verdict-unknown' },
};

function defaultPath(w) {
  return /^helloworld/.test(w.name) ? '/hello' : '/';
}

function openCheckDialog(w) {
  const key = wkey(w);
  const ports = [];
  for (const s of w.services || []) for (const p of s.ports || []) ports.push({ svc: s.name, port: p.port, target: p.targetPort });
  const dirIn = h('input', { type: 'radio', name: 'check-dir', id: 'check-dir-in', value: 'inbound', checked: true, 'data-testid': 'check-direction-inbound' });
  const dirOut = h('input', { type: 'radio', name: 'check-dir', id: 'check-dir-out', value: 'outbound', 'data-testid': 'check-direction-outbound' });
  const portSel = h('select', { id: 'check-port', class: 'input', 'data-testid': 'check-port' },
    ports.length ? ports.map((p) => h('option', { value: p.port }, `${p.svc}:${p.port}${p.port !== p.target ? ` → ${p.target}` : ''}`)) : h('option', { value: '' }, 'Default (first Service port)'));
  const pathIn = h('input', { id: 'check-path', class: 'input mono', type: 'text', value: defaultPath(w), 'data-testid': 'check-path' });
  const targetIn = h('input', { id: 'check-target', class: 'input mono', type: 'text', placeholder: 'ADDR:PORT or http://ADDR:PORT/PATH', 'data-testid': 'check-target' });
  const inFields = h('div', { class: 'check-fields' },
    h('div', { class: 'field' }, h('label', { for: 'check-port' }, 'Service port'), portSel),
    h('div', { class: 'field field-grow' }, h('label', { for: 'check-path' }, 'Path'), pathIn));
  const outFields = h('div', { class: 'check-fields', hidden: true },
    h('div', { class: 'field field-grow' }, h('label', { for: 'check-target' }, 'Target (from a pod of the workload)'), targetIn));
  const sync = () => { inFields.hidden = !dirIn.checked; outFields.hidden = dirIn.checked; };
  dirIn.addEventListener('change', sync);
  dirOut.addEventListener('change', sync);
  const runBtn = h('button', { type: 'button', class: 'btn btn-primary', 'data-testid': 'check-run', 'data-autofocus': true, onclick: () => run() }, icon('pulse'), 'Run check');
  const results = h('div', { class: 'check-results', 'data-testid': 'check-results', 'aria-live': 'polite' });
  const explain = h('p', { class: 'field-help' },
    'Inbound is checked from outside the mesh (the node): through the sidecar the response carries ', h('code', null, 'server: istio-envoy'),
    ' and ', h('code', null, 'x-envoy-upstream-service-time'), '; with passthrough it carries the application\'s own headers.');

  const body = h('div', { class: 'check-dialog' },
    h('div', { class: 'check-form' },
      h('fieldset', { class: 'radio-group' }, h('legend', null, 'Direction'),
        h('label', { for: 'check-dir-in' }, dirIn, 'Inbound'), h('label', { for: 'check-dir-out' }, dirOut, 'Outbound')),
      inFields, outFields, runBtn),
    explain, results);

  openModal({
    title: 'Check effect', subtitle: h('span', null, 'Workload ', h('strong', null, key)), testid: 'check-dialog', size: 'lg', body,
    footer: [h('button', { type: 'button', class: 'btn btn-link', 'data-testid': 'check-open-settings', disabled: w.status === 'Uninjected',
      onclick: () => { const cur = findWorkload(key) || w; openPassthroughDialog(cur); } }, icon('settings'), 'Traffic passthrough settings'),
    h('span', { class: 'spacer' }), h('button', { type: 'button', class: 'btn', 'data-testid': 'check-close', onclick: () => closeModal() }, 'Close')],
  });
  renderResults();

  async function run() {
    const req = dirIn.checked
      ? { direction: 'inbound', ...(portSel.value ? { port: Number(portSel.value) } : {}), path: pathIn.value.trim() || '/' }
      : { direction: 'outbound', target: targetIn.value.trim() };
    if (req.direction === 'outbound' && !req.target) { targetIn.focus(); targetIn.setAttribute('aria-invalid', 'true'); return; }
    runBtn.disabled = true;
    runBtn.classList.add('busy');
    results.classList.add('running');
    const cur = findWorkload(key) || w;
    const entry = { seq: ++state.checkSeq + Date.now(), time: new Date().toISOString(), request: req, settings: passthroughText(passthroughOf(cur)), status: cur.status };
    try {
      const { data } = await api('POST', wurl(w, '/check'), { body: req });
      entry.report = data;
    } catch (e) {
      if (e.status === 401) return;
      entry.error = `${e.status ? `${e.status} ` : ''}${e.message}`;
    } finally {
      const hadFocus = document.activeElement === runBtn || document.activeElement === document.body;
      runBtn.disabled = false;
      runBtn.classList.remove('busy');
      results.classList.remove('running');
      if (hadFocus && modalState.current) runBtn.focus();
    }
    const list = state.checks.get(key) || [];
    list.push(entry);
    state.checks.set(key, list.slice(-6));
    saveChecks();
    renderResults();
  }

  function renderResults() {
    const list = state.checks.get(key) || [];
    if (!list.length) {
      results.replaceChildren(h('div', { class: 'check-empty muted' }, 'No check yet. Run one before and after changing the settings to compare.'));
      return;
    }
    const latest = list[list.length - 1];
    const before = list.length > 1 ? list[list.length - 2] : null;
    results.replaceChildren(h('div', { class: 'check-grid' },
      before ? resultCard(before, 'Before', 'check-result-before') : h('div', { class: 'check-card check-card-empty muted', 'data-testid': 'check-result-before' },
        h('div', { class: 'check-card-label' }, 'Before'), 'No earlier check since this page was opened.'),
      resultCard(latest, before ? 'After' : 'Latest', 'check-result')));
  }
}

/** The hop's mutual TLS and the identities the sidecars verified. */
function tlsRow(r) {
  const ids = r.peerIdentities || {};
  const id = (role, v) => (v ? h('div', { class: 'tls-id small' }, h('span', { class: 'muted' }, `${role}: `),
    h('code', { 'data-testid': `check-identity-${role}` }, v)) : null);
  return h('div', { class: 'check-tls', 'data-testid': 'check-mtls', 'data-mtls': String(Boolean(r.mtls)) },
    h('div', null, h('span', { class: 'muted' }, 'mutual TLS: '), h('strong', null, r.mtls ? 'yes' : 'no')),
    id('client', ids.client), id('server', ids.server));
}

function resultCard(entry, label, testid) {
  const r = entry.report;
  if (!r) {
    return h('div', { class: 'check-card check-card-error', 'data-testid': testid, 'data-seq': entry.seq, 'data-verdict': 'error' },
      h('div', { class: 'check-card-label' }, label, h('span', { class: 'muted small' }, fmtTime(entry.time))),
      alertBox('error', 'check-error', `The check failed: ${entry.error}`));
  }
  const v = VERDICT[r.verdict] || VERDICT.unknown;
  const headers = r.headers || [];
  const hmap = new Map(headers.map(([k, val]) => [k.toLowerCase(), val]));
  return h('div', { class: `check-card ${v.cls}`, 'data-testid': testid, 'data-seq': entry.seq, 'data-verdict': r.verdict },
    h('div', { class: 'check-card-label' }, label, h('span', { class: 'muted small' }, fmtTime(entry.time))),
    h('div', { class: 'check-verdict-row' },
      h('span', { class: `verdict ${v.cls}`, 'data-testid': 'check-verdict', 'data-verdict': r.verdict }, v.label),
      h('span', { class: 'muted small', title: 'Passthrough settings at the time of the check' }, entry.settings)),
    h('div', { class: 'check-target mono small' }, h('span', { class: 'muted' }, `from ${r.from}: `), r.target),
    r.statusLine ? h('div', { class: 'status-line mono', 'data-testid': 'check-status-line' }, r.statusLine) : h('div', { class: 'muted small' }, 'No HTTP response line.'),
    r.error ? alertBox('warning', 'check-request-error', r.error) : null,
    tlsRow(r),
    h('div', { class: 'signals' }, ENVOY_HEADERS.map((name) => {
      const val = hmap.get(name);
      const envoyish = name === 'server' ? val === 'istio-envoy' || val === 'envoy' : val !== undefined;
      return h('div', { class: `signal ${val === undefined ? 'signal-absent' : envoyish ? 'signal-envoy' : 'signal-app'}`, 'data-testid': `check-signal-${name}` },
        h('code', null, name), h('span', null, val === undefined ? 'absent' : val));
    })),
    h('table', { class: 'headers', 'data-testid': 'check-headers' },
      h('caption', { class: 'visually-hidden' }, 'Response headers'),
      h('tbody', null, headers.length ? headers.map(([k, val]) => h('tr', {
        class: ENVOY_HEADERS.includes(k.toLowerCase()) ? 'hl' : null, 'data-testid': `check-header-${k.toLowerCase()}`, 'data-value': val,
      }, h('th', { scope: 'row' }, k), h('td', null, val))) : h('tr', null, h('td', { class: 'muted' }, 'No headers.')))),
    (r.evidence || []).length ? h('ul', { class: 'evidence' }, r.evidence.map((e) => h('li', null, e))) : null);
}

// ---------------------------------------------------------------------------------------------
// Bypassed traffic (rule counters)

function openBypassDialog(w) {
  const key = wkey(w);
  const content = h('div', { class: 'bypass', 'data-testid': 'bypass-content' }, h('div', { class: 'muted' }, 'Loading…'));
  const auto = h('input', { type: 'checkbox', id: 'bypass-auto', checked: true, 'data-testid': 'bypass-auto' });
  let timer = null;
  let closed = false;
  const load = async () => {
    try {
      const { data } = await api('GET', wurl(w, '/bypass'));
      if (closed) return;
      render(data || {});
    } catch (e) {
      if (closed || e.status === 401) return;
      if (e.status === 501) {
        content.replaceChildren(alertBox('info', 'bypass-unsupported', h('strong', null, 'Not available on this backend.'),
          ` Bypassed-traffic counters need the live capture rules, which this backend cannot read (${e.message}). Use "Check effect" instead.`));
        stop();
      } else {
        content.replaceChildren(alertBox('error', 'bypass-error', `Could not read the counters: ${e.message}`));
      }
    }
  };
  const stop = () => { if (timer) clearInterval(timer); timer = null; auto.checked = false; auto.disabled = true; };
  const render = (data) => {
    const t = data.totals || {};
    const tot = (dir, label) => h('div', { class: 'stat', 'data-testid': `bypass-total-${dir}` },
      h('div', { class: 'stat-label' }, label),
      h('div', { class: 'stat-value' }, fmtNum(t[dir] && t[dir].packets), h('span', { class: 'stat-unit' }, ' packets')),
      h('div', { class: 'muted small' }, fmtBytes(t[dir] && t[dir].bytes)));
    const items = data.items || [];
    content.replaceChildren(
      h('div', { class: 'stats' }, tot('inbound', 'Inbound bypassed'), tot('outbound', 'Outbound bypassed')),
      items.length ? h('div', { class: 'table-wrap' }, h('table', { class: 'table table-compact', 'data-testid': 'bypass-table' },
        h('thead', null, h('tr', null, ['Pod', 'Family', 'Rule', 'Packets', 'Bytes'].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', null, items.map((i) => h('tr', null,
          h('td', { class: 'mono small' }, i.pod), h('td', null, i.family),
          h('td', null, h('div', null, h('span', { class: 'tag tag-blue' }, i.label)), h('code', { class: 'rule small' }, i.rule)),
          h('td', { class: 'num' }, fmtNum(i.packets)), h('td', { class: 'num' }, fmtBytes(i.bytes)))))))
        : h('div', { class: 'check-empty muted', 'data-testid': 'bypass-empty' }, 'No passthrough rules in the running pods (no passthrough settings, or a restart is pending).'),
      h('div', { class: 'muted small' }, `Read ${new Date().toLocaleTimeString([], { hour12: false })}. nat-table rules count the first packet of each connection.`));
  };
  auto.addEventListener('change', () => {
    if (auto.checked && !timer) timer = setInterval(load, 3000);
    else if (!auto.checked && timer) { clearInterval(timer); timer = null; }
  });
  openModal({
    title: 'Bypassed traffic', subtitle: h('span', null, 'Workload ', h('strong', null, key), ' · packets that matched the passthrough rules'),
    testid: 'bypass-dialog', size: 'lg', body: content,
    footer: [h('label', { class: 'toggle small', for: 'bypass-auto' }, auto, 'Auto refresh'), h('span', { class: 'spacer' }),
      h('button', { type: 'button', class: 'btn', 'data-testid': 'bypass-refresh', onclick: load }, icon('refresh'), 'Refresh'),
      h('button', { type: 'button', class: 'btn btn-primary', onclick: () => closeModal() }, 'Close')],
    onClose: () => { closed = true; if (timer) clearInterval(timer); },
  });
  timer = setInterval(load, 3000);
  load();
}

// ---------------------------------------------------------------------------------------------
// Batch: one Traffic passthrough settings dialog for several workloads

const BATCH_OPS = [['keep', 'Keep'], ['add', 'Add'], ['remove', 'Remove'], ['set', 'Set to']];
const BATCH_CHUNK = 400; // workloads per request: far below the API's 64 KiB body limit

/**
 * POST /api/v1/passthrough/batch for any number of workloads: in requests of at most
 * BATCH_CHUNK workloads, one after the other, their items joined in order. Every workload
 * is decided on its own anyway; a request refused whole (422) is refused by the first chunk,
 * before anything is written.
 */
async function postBatch(body) {
  const all = body.workloads;
  const out = { items: [], succeeded: 0, failed: 0, dryRun: !!body.dryRun };
  for (let i = 0; i < all.length; i += BATCH_CHUNK) {
    const chunk = all.slice(i, i + BATCH_CHUNK);
    let data;
    try {
      ({ data } = await api('POST', `${API}/passthrough/batch`, { body: { ...body, workloads: chunk } }));
    } catch (e) {
      // Before anything was written the error is the whole answer; after that, the
      // workloads of this chunk are reported as not changed, the earlier ones as they went.
      if (i === 0 || e.status === 401) throw e;
      data = { items: chunk.map((t) => ({ namespace: t.namespace, name: t.name, outcome: 'failed', status: e.status || 0, error: (e.body && e.body.error) || 'network', message: e.message })) };
      data.failed = chunk.length;
    }
    out.items.push(...(data.items || []));
    out.succeeded += data.succeeded || 0;
    out.failed += data.failed || 0;
  }
  return out;
}

/**
 * `workloads`: the selection. `preset`: `{lists, restart, live}` to start from (Retry failed).
 * The preview is the batch API's dry run for exactly these workloads at the versions listed,
 * so Confirm changes what was previewed or reports the workload as changed meanwhile (409).
 */
function openBatchDialog(workloads, preset = {}) {
  if (!workloads.length) return;
  const targets = workloads.map((w) => ({ cluster: w.cluster, namespace: w.namespace, name: w.name, resourceVersion: w.resourceVersion, meshed: w.meshed, status: w.status }));
  const ctx = { seq: 0, timer: null, closed: false, done: false, last: null };
  const onChange = () => schedule();
  const lists = BATCH_LISTS.map((l) => {
    const chips = new ChipInput({ name: `batch-${l.name}`, label: 'Items', ariaLabel: `${l.label}: items`, kind: l.kind,
      placeholder: l.kind === 'cidr' ? 'e.g. 10.64.24.0/21, then Enter' : 'e.g. 3306, then Enter', onChange });
    const p = (preset.lists || {})[l.field] || { op: 'keep', items: [] };
    const radios = BATCH_OPS.map(([op, label]) => {
      const id = `batch-op-${l.name}-${op}`;
      const r = h('input', { type: 'radio', name: `batch-op-${l.name}`, id, value: op, checked: p.op === op, 'data-testid': id });
      r.addEventListener('change', () => { sync(); schedule(); });
      // A click goes on to the items; arrow keys stay in the group (to reach the other choices).
      r.addEventListener('click', (e) => { if (e.detail > 0 && op !== 'keep') chips.input.focus(); });
      return h('label', { for: id, class: 'seg' }, r, label);
    });
    const note = h('div', { class: 'field-help', 'data-testid': `batch-note-${l.name}` });
    const op = () => (radios.map((x) => $('input', x)).find((r) => r.checked) || { value: 'keep' }).value;
    const sync = () => {
      const o = op();
      chips.setDisabled(o === 'keep');
      chips.el.hidden = o === 'keep';
      note.textContent = {
        keep: 'Each workload keeps its own list.',
        add: 'Added to each workload\'s list (kept once). A workload without its own list starts from the mesh-wide value.',
        remove: 'Removed from each workload\'s list where present.',
        set: 'Replaces each workload\'s list. Empty: the workloads fall back to the mesh-wide value.',
      }[o];
    };
    chips.set(p.items || []);
    const el = h('fieldset', { class: 'batch-list', 'data-testid': `batch-list-${l.name}` },
      h('legend', null, h('span', { class: `dir-badge ${l.field === 'inboundPorts' ? 'dir-in' : 'dir-out'}`, 'aria-hidden': 'true' }, l.field === 'inboundPorts' ? 'IN' : 'OUT'), l.label),
      h('div', { class: 'seg-group', role: 'radiogroup', 'aria-label': `${l.label}: what to do` }, radios),
      note, chips.el);
    sync();
    return { ...l, chips, op, el };
  });

  const restart = h('input', { type: 'checkbox', id: 'batch-restart-now', checked: !!preset.restart, 'data-testid': 'batch-restart-now' });
  const live = h('input', { type: 'checkbox', id: 'batch-live', checked: !!preset.live && !istioDialect(), 'data-testid': 'batch-live' });
  restart.addEventListener('change', () => { if (restart.checked) live.checked = false; });
  live.addEventListener('change', () => { if (live.checked) restart.checked = false; });
  const errorArea = h('div', { class: 'dialog-errors', 'data-testid': 'batch-error-area' });
  const summary = h('div', { class: 'preview-status small', 'data-testid': 'batch-preview-summary', 'aria-live': 'polite' }, 'Choose what to change.');
  const table = h('div', { class: 'batch-table-wrap', 'data-testid': 'batch-preview', role: 'region', 'aria-label': 'Result per workload', tabindex: '0' });

  const names = targets.map((t) => (clusterNames().length > 1 && t.cluster ? `${t.cluster}: ${nsName(t)}` : nsName(t)));
  const form = h('div', { class: 'batch-form' },
    h('p', { class: 'pt-hint' }, INBOUND_HINT, '. ', OUTBOUND_HINT, '.'),
    lists.map((l) => l.el),
    h('div', { class: 'restart-row' },
      h('label', { class: 'checkbox', for: 'batch-restart-now' }, restart, h('span', null, 'Restart now')),
      h('span', { class: 'field-help' }, 'Restarts every changed meshed workload; without it the settings apply when the pods are next recreated.')),
    istioDialect() ? null : h('div', { class: 'restart-row' },
      h('label', { class: 'checkbox', for: 'batch-live' }, live, h('span', null, 'Apply to running pods now')),
      h('span', { class: 'field-help' }, 'Local mesh: the running pods take the new capture rules in place, without a restart.')));
  const preview = h('section', { class: 'preview batch-preview', 'aria-labelledby': 'batch-preview-title' },
    h('div', { class: 'preview-head' }, h('h3', { id: 'batch-preview-title', class: 'pt-section-title' }, 'Result per workload')),
    summary, table);
  const body = h('div', { class: 'pt-dialog', 'data-testid': 'batch-form' }, errorArea, h('div', { class: 'pt-grid batch-grid' }, form, preview));

  const confirmBtn = h('button', { type: 'button', class: 'btn btn-primary', 'data-testid': 'batch-confirm', disabled: true, onclick: () => submit() }, 'Confirm changes');
  const cancelBtn = h('button', { type: 'button', class: 'btn', 'data-testid': 'batch-cancel', onclick: () => closeModal() }, 'Cancel');
  const subtitle = h('span', { 'data-testid': 'batch-subtitle' }, `${targets.length} workload${targets.length === 1 ? '' : 's'}: `,
    h('strong', null, names.slice(0, 3).join(', ')), names.length > 3 ? ` and ${names.length - 3} more` : '');
  openModal({
    title: 'Traffic passthrough settings', subtitle, testid: 'batch-dialog', size: 'xl', body, closeOnBackdrop: false,
    footer: [h('span', { class: 'spacer' }), cancelBtn, confirmBtn],
    onClose: () => { ctx.closed = true; clearTimeout(ctx.timer); },
  });
  const dialog = $('[data-testid="batch-dialog"]');
  const footer = $('.modal-foot', dialog);

  function request(dryRun) {
    const spec = {};
    for (const l of lists) spec[l.field] = { op: l.op(), items: l.chips.values() };
    return batchRequest({ targets, lists: spec, dryRun, live: !dryRun && live.checked });
  }

  function showError(...content) { errorArea.replaceChildren(alertBox('error', 'batch-error', ...content)); }
  function clearError() { errorArea.replaceChildren(); }

  /** A 422 for the request as a whole: the API's message and each item marked in its list. */
  function invalid(e) {
    const errors = e.body.errors || [];
    for (const l of lists) l.chips.setServerErrors(errors.filter((x) => (x.field || KEY_TO_FIELD[x.key]) === l.field), null);
    const named = errors.length ? errors.map((x) => `${x.key || x.field}: ${x.item ? `"${x.item}" ` : ''}${x.reason}`).join('; ') : e.message;
    showError(h('strong', null, 'Nothing was changed: the request is invalid.'), ' ', h('span', { 'data-testid': 'batch-error-detail' }, named));
  }

  function schedule() {
    clearTimeout(ctx.timer);
    summary.textContent = 'Updating preview…';
    ctx.timer = setTimeout(runPreview, PREVIEW_DEBOUNCE_MS);
  }

  async function runPreview() {
    if (ctx.closed || ctx.done) return;
    const seq = ++ctx.seq;
    let body0;
    try {
      body0 = request(true);
    } catch (e) {
      ctx.last = null;
      confirmBtn.disabled = true;
      summary.textContent = e.message;
      table.replaceChildren();
      clearError();
      return;
    }
    try {
      const data = await postBatch(body0);
      if (seq !== ctx.seq || ctx.closed || ctx.done) return;
      clearError();
      for (const l of lists) l.chips.setServerErrors([], null);
      ctx.last = data;
      const s = batchSummary(data);
      summary.textContent = `Preview: ${s.text}.`;
      confirmBtn.disabled = !data.items.some((i) => i.outcome === 'wouldChange');
      table.replaceChildren(resultTable(data.items, true));
    } catch (e) {
      if (seq !== ctx.seq || ctx.closed || ctx.done || e.status === 401) return;
      ctx.last = null;
      confirmBtn.disabled = e.status !== 422; // Confirm shows the same named error, and changes nothing
      table.replaceChildren();
      if (e.status === 422) {
        invalid(e);
        summary.textContent = 'Fix the marked values to see the result per workload.';
      } else {
        summary.textContent = `Preview unavailable: ${e.message}`;
      }
    }
  }

  async function submit() {
    clearError();
    for (const l of lists) if (l.op() !== 'keep' && l.chips.input.value.trim()) l.chips.commit();
    let body0;
    try {
      body0 = request(false);
    } catch (e) {
      showError(e.message);
      return;
    }
    confirmBtn.disabled = true;
    confirmBtn.classList.add('busy');
    confirmBtn.textContent = 'Saving…';
    let data;
    try {
      data = await postBatch(body0);
    } catch (e) {
      if (ctx.closed || e.status === 401) return;
      confirmBtn.classList.remove('busy');
      confirmBtn.textContent = 'Confirm changes';
      confirmBtn.disabled = false;
      if (e.status === 422) invalid(e);
      else showError(h('strong', null, `Not saved (${e.status || 'network'}):`), ` ${e.message}`);
      return;
    }
    ctx.done = true;
    clearTimeout(ctx.timer);
    const spec = Object.fromEntries(lists.map((l) => [l.field, { op: l.op(), items: l.chips.values() }]));
    showResults(data, spec);
  }

  function showResults(data, spec) {
    const s = batchSummary(data);
    const failedItems = data.items.filter((i) => i.outcome === 'failed');
    const ok = !failedItems.length;
    const outcome = h('div', { class: 'batch-outcome', 'data-testid': 'batch-results' },
      ok ? alertBox('info', 'batch-results-summary', h('strong', null, SUCCESS_TOAST), ` — ${s.text}.`)
        : alertBox('error', 'batch-results-summary', h('strong', null, `${failedItems.length} of ${data.items.length} workload${data.items.length === 1 ? '' : 's'} not changed.`),
          ` ${s.text}. Each failed workload is left exactly as it was; the others are changed.`),
      h('div', { class: 'batch-table-wrap', role: 'region', 'aria-label': 'Outcome per workload', tabindex: '0' }, resultTable(data.items, false)));
    body.replaceChildren(outcome);
    const retry = failedItems.length ? h('button', { type: 'button', class: 'btn', 'data-testid': 'batch-retry', onclick: async () => {
      // From the workloads as they are now: a retry is based on their current versions.
      retry.disabled = true;
      let now;
      try {
        now = ((await api('GET', `${API}/workloads`)).data || {}).items || [];
      } catch (e) {
        retry.disabled = false;
        if (e.status !== 401) toast('Could not reload the workloads', { type: 'error', detail: e.message });
        return;
      }
      const ckey = (x) => `${x.cluster || ''}|${x.namespace}/${x.name}`;
      const failedKeys = new Set(failedItems.map(ckey));
      const again = now.filter((w) => failedKeys.has(ckey(w)));
      closeModal();
      if (again.length) openBatchDialog(again, { lists: spec, restart: restart.checked, live: live.checked });
      else toast('The failed workloads no longer exist', { type: 'info' });
    } }, `Retry failed (${failedItems.length})`) : null;
    const close = h('button', { type: 'button', class: 'btn btn-primary', 'data-testid': 'batch-close', onclick: () => closeModal() }, 'Close');
    footer.replaceChildren(h('span', { class: 'spacer' }), retry, close);
    close.focus();
    if (ok) {
      toast(SUCCESS_TOAST, { detail: `${data.items.length} workload${data.items.length === 1 ? '' : 's'}: ${s.text}` });
    } else {
      toast(`Traffic passthrough: ${failedItems.length} of ${data.items.length} workloads failed`, {
        type: 'error', timeout: 12000,
        detail: failedItems.slice(0, 5).map((i) => `${wkey(i)}: ${failureText(i)}`).join('\n') + (failedItems.length > 5 ? `\n… and ${failedItems.length - 5} more (see the dialog)` : ''),
      });
    }
    // The failed workloads stay selected (for a retry); the others are done.
    state.selectMatching = false;
    state.selected = new Set(failedItems.map(wkey));
    refreshList({ quiet: true });
    if (restart.checked) restartChanged(data.items.filter((i) => i.outcome === 'changed'));
  }

  /** Restarts each changed meshed workload, a few at a time; each row says how it went. */
  async function restartChanged(changed) {
    const queue = changed.filter((i) => { const w = findWorkload(wkey(i)); return !w || w.meshed; });
    const worker = async () => {
      for (let i = queue.shift(); i; i = queue.shift()) {
        const cell = $(`[data-testid="batch-restart-${i.namespace}-${i.name}"]`, dialog);
        if (cell) cell.textContent = 'Restarting…';
        try {
          const { data } = await api('POST', wurl(i, '/restart'));
          trackOperation(data);
          if (cell) { cell.textContent = 'Restart started'; cell.dataset.state = 'started'; }
        } catch (e) {
          if (e.status === 401) return;
          if (cell) { cell.textContent = `Restart failed: ${e.message}`; cell.dataset.state = 'failed'; cell.classList.add('text-error'); }
          toast(`Restart of ${wkey(i)} failed`, { type: 'error', detail: e.message });
        }
      }
    };
    await Promise.all([worker(), worker(), worker()]);
  }

  function resultTable(itemsList, dry) {
    const cell = (i, field) => {
      if (!i.settings) return h('td', { class: 'muted' }, '—');
      const c = listChange((i.before || {})[field], i.settings[field]);
      const parts = [...c.kept.map((x) => h('span', { class: 'mini-chip' }, x)),
        ...c.added.map((x) => h('span', { class: 'mini-chip chip-added', title: 'added' }, h('span', { class: 'visually-hidden' }, 'added '), `+${x}`)),
        ...c.removed.map((x) => h('del', { class: 'mini-chip chip-removed', title: 'removed' }, h('span', { class: 'visually-hidden' }, 'removed '), x))];
      return h('td', { 'data-field': field }, parts.length ? parts : h('span', { class: 'muted' }, 'none'));
    };
    const tagCls = { changed: 'tag-green', wouldChange: 'tag-blue', unchanged: 'tag-grey', failed: 'tag-red' };
    return h('table', { class: 'table table-compact batch-table' },
      h('caption', { class: 'visually-hidden' }, dry ? 'What each workload would get' : 'What happened to each workload'),
      h('thead', null, h('tr', null, ['Workload', 'Result', 'Inbound ports', 'Outbound ports', 'Outbound IP ranges', dry ? 'Warnings' : 'Details'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', null, itemsList.map((i) => {
        const key = wkey(i);
        const failed = i.outcome === 'failed';
        const w = findWorkload(key);
        return h('tr', { 'data-testid': `batch-${dry ? 'row' : 'result'}-${i.namespace}-${i.name}`, 'data-outcome': i.outcome, 'data-cluster': i.cluster || null, class: failed ? 'row-failed' : null },
          h('th', { scope: 'row', class: 'wl-name' }, nsName(i), clusterNames().length > 1 && i.cluster ? h('div', { class: 'muted small' }, `cluster ${i.cluster}`) : null, w && !w.meshed ? h('div', { class: 'muted small' }, 'Uninjected: applies once a sidecar is injected') : null),
          h('td', null, h('span', { class: `tag ${tagCls[i.outcome] || 'tag-grey'}`, 'data-testid': 'batch-outcome' }, OUTCOME_LABEL[i.outcome] || i.outcome),
            failed ? h('div', { class: 'small text-error', 'data-testid': 'batch-failure', role: dry ? null : 'note' }, failureText(i)) : null),
          cell(i, 'inboundPorts'), cell(i, 'outboundPorts'), cell(i, 'outboundIpRanges'),
          h('td', { class: 'small' },
            impactList(i.impact),
            (i.warnings || []).length ? h('ul', { class: 'batch-warnings', 'data-testid': 'batch-warnings' }, i.warnings.map((x) => h('li', null, x))) : null,
            !dry && i.outcome === 'changed' ? h('div', { class: 'muted', 'data-testid': `batch-restart-${i.namespace}-${i.name}` }, i.message) : null,
            !dry && i.outcome === 'unchanged' ? h('div', { class: 'muted' }, i.message) : null));
      })));
  }

  /** The meshed clients a workload's new settings break or take off mutual TLS (as in the
   * single dialog's impact list); those that keep working are left out. */
  function impactList(entries) {
    const hit = (entries || []).filter((e) => e.effect === 'fails' || e.effect === 'loses-mtls');
    if (!hit.length) return null;
    return h('ul', { class: 'batch-impact', 'data-testid': 'batch-impact' }, hit.map((e) => h('li', { 'data-effect': e.effect, title: e.reason },
      h('span', { class: `tag ${e.effect === 'fails' ? 'tag-red' : 'tag-orange'}` }, e.effect === 'fails' ? 'Fails' : 'Loses mTLS'),
      ' ', e.client, ` → ${e.service}:${e.servicePort}`)));
  }

  requestAnimationFrame(() => { const first = lists[0] && $('input[type="radio"]:checked', lists[0].el); if (first) first.focus(); });
  schedule();
}

// ---------------------------------------------------------------------------------------------
// Mesh-wide defaults page

async function renderDefaultsPage() {
  const root = $('#defaults-body');
  root.setAttribute('aria-busy', 'true');
  try {
    await loadDefaults();
    if (!state.loaded) await refreshList({ quiet: true });
  } finally {
    root.setAttribute('aria-busy', 'false');
  }
  // Several clusters: each has its own defaults (its injector); one is shown at a time.
  const names = clusterNames();
  if (names.length > 1 && !names.includes(state.defaultsCluster)) state.defaultsCluster = names[0];
  const cluster = names.length > 1 ? state.defaultsCluster : '';
  const picker = names.length > 1 ? h('label', { class: 'select-label defaults-cluster' }, 'Cluster ',
    h('select', { 'data-testid': 'defaults-cluster', onchange: (e) => { state.defaultsCluster = e.target.value; renderDefaultsPage(); } },
      names.map((n) => h('option', { value: n, selected: n === cluster }, n)))) : null;
  const entry = cluster ? state.defaults.get(cluster) : [...state.defaults.values()][0];
  const d = entry && entry.doc;
  const etag = entry && entry.etag; // the version these values are; a save names it
  if (!d) {
    root.replaceChildren(picker || '', alertBox('error', 'defaults-error', `Could not read the mesh-wide defaults: ${state.defaultsError || 'unknown error'}`));
    return;
  }
  const usage = appliesTo(state.workloads.filter((w) => !cluster || w.cluster === cluster));
  const inputs = {};
  const rows = MESH_VALUES.map((m) => {
    const id = `default-${m.path.replace(/\W+/g, '-')}`;
    const input = h('input', { id, type: 'text', class: 'input mono', value: d.values[m.path] || '', autocomplete: 'off', spellcheck: 'false',
      readonly: !d.writable, 'data-testid': `default-input-${m.path}`, 'aria-describedby': `${id}-err ${id}-use` });
    const err = h('div', { class: 'field-error', id: `${id}-err`, 'data-testid': `default-error-${m.path}`, hidden: true });
    input.addEventListener('input', () => {
      const msg = validateListValue(input.value, m.kind, istioDialect());
      err.hidden = !msg;
      err.textContent = msg || '';
      input.setAttribute('aria-invalid', msg ? 'true' : 'false');
      status.textContent = '';
    });
    inputs[m.path] = { input, err };
    const u = usage[m.path];
    const list = (keys) => (keys.length ? h('ul', { class: 'wl-list' }, keys.map((k) => h('li', null, k))) : h('div', { class: 'muted' }, 'none'));
    return h('tr', { 'data-testid': `default-row-${m.path}` },
      h('th', { scope: 'row' }, h('label', { for: id }, m.label), h('div', null, h('code', { class: 'small' }, m.path)),
        h('div', { class: 'muted small' }, 'replaced by the annotation ', h('code', null, m.annotation))),
      h('td', null, input, err),
      h('td', { id: `${id}-use`, 'data-testid': `default-applies-${m.path}` },
        h('details', { class: 'applies' },
          h('summary', null, `Applies to ${u.inherit.length} workload${u.inherit.length === 1 ? '' : 's'}`, u.own.length ? `; ${u.own.length} set their own` : ''),
          h('div', { class: 'applies-body small' }, h('div', { class: 'muted' }, 'Get this value:'), list(u.inherit),
            h('div', { class: 'muted' }, 'Set their own (replacing it):'), list(u.own)))));
  });
  const live = h('input', { type: 'checkbox', id: 'defaults-live', 'data-testid': 'defaults-live' });
  const saveBtn = h('button', { type: 'button', class: 'btn btn-primary', 'data-testid': 'defaults-save', disabled: !d.writable, onclick: () => save() }, 'Save changes');
  const resetBtn = h('button', { type: 'button', class: 'btn', 'data-testid': 'defaults-reset', onclick: () => renderDefaultsPage() }, 'Reset');
  const status = h('div', { class: 'defaults-status', 'data-testid': 'defaults-status', 'aria-live': 'polite' });
  root.replaceChildren(
    picker,
    h('div', { class: 'muted small', 'data-testid': 'defaults-source' }, `Kept in ${d.source}`, d.resourceVersion ? ` · version ${d.resourceVersion}` : ''),
    ...(d.problems || []).map((p) => alertBox('warning', 'defaults-problem', p)),
    d.writable ? null : alertBox('info', 'defaults-readonly', 'These values can only be read here (the backend cannot write them, or the permission to is not granted).'),
    h('div', { class: 'table-wrap' }, h('table', { class: 'table defaults-table', 'data-testid': 'defaults-table' },
      h('caption', { class: 'visually-hidden' }, 'Mesh-wide capture defaults'),
      h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Setting'), h('th', { scope: 'col' }, 'Value (comma-separated; * for all where allowed)'), h('th', { scope: 'col' }, 'Workloads'))),
      h('tbody', null, rows))),
    d.writable ? h('div', { class: 'defaults-actions' },
      istioDialect() ? null : h('label', { class: 'checkbox', for: 'defaults-live' }, live, h('span', null, 'Apply to running pods now')),
      h('span', { class: 'field-help' }, istioDialect() ? 'Pods get the new values when they are next created (restart the workloads).' : 'Without it, pods get the new values on their next restart.'),
      h('span', { class: 'spacer' }), resetBtn, saveBtn) : null,
    status);

  async function save() {
    const edited = Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, v.input.value]));
    const values = changedValues(d.values, edited);
    for (const v of Object.values(inputs)) { v.err.hidden = true; v.input.removeAttribute('aria-invalid'); }
    if (!Object.keys(values).length) {
      status.replaceChildren(alertBox('info', 'defaults-nothing', 'Nothing changed: edit a value first.'));
      return;
    }
    saveBtn.disabled = true;
    saveBtn.classList.add('busy');
    try {
      const headers = etag ? { 'If-Match': etag } : {};
      const body0 = { values, live: live.checked };
      if (!etag && d.resourceVersion) body0.resourceVersion = d.resourceVersion;
      const { data } = await api('PUT', `${API}/defaults${clusterQuery(cluster)}`, { body: body0, headers });
      toast('Mesh-wide defaults saved', { detail: Object.entries(values).map(([k, v]) => `${k} = ${v || '(empty)'}`).join('\n') });
      await renderDefaultsPage();
      $('[data-testid="defaults-status"]').replaceChildren(alertBox('info', 'defaults-changes', h('strong', null, 'Saved.'),
        (data.changes || []).length ? h('ul', null, data.changes.map((c) => h('li', null, c))) : ' No workload is affected.'));
      refreshList({ quiet: true });
    } catch (e) {
      if (e.status === 401) return;
      if (e.status === 422) {
        const errors = e.body.errors || [];
        for (const x of errors) {
          const f = inputs[x.field] || inputs[x.key];
          if (f) { f.err.hidden = false; f.err.textContent = `${x.item ? `"${x.item}" ` : ''}${x.reason}`; f.input.setAttribute('aria-invalid', 'true'); }
        }
        status.replaceChildren(alertBox('error', 'defaults-error', h('strong', null, 'Nothing saved:'), ' ', e.message));
      } else if (e.status === 409) {
        status.replaceChildren(alertBox('error', 'defaults-error', h('strong', null, 'Nothing saved: the defaults changed since this page was loaded.'), ' Reset to see the current values, then change them again.'));
      } else {
        status.replaceChildren(alertBox('error', 'defaults-error', h('strong', null, `Nothing saved (${e.status || 'network'}):`), ` ${e.message}`));
      }
    } finally {
      saveBtn.disabled = false;
      saveBtn.classList.remove('busy');
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Start-up

function decorateStatic() {
  const map = { 'brand-mark': 'sidecar', 'search-icon': 'search', 'icon-refresh': 'refresh', 'nav-icon-sidecar': 'sidecar', 'empty-icon-lock': 'lock' };
  for (const [cls, name] of Object.entries(map)) for (const el of $$(`.${cls}`)) if (!el.firstChild) el.appendChild(icon(name));
}

function wireToolbar() {
  const search = $('#search');
  // A new filter starts on its first page; "all matching" meant the old filter, so it ends.
  const filtered = () => { state.page = 0; state.selectMatching = false; renderList(); };
  search.addEventListener('input', () => { state.search = search.value; filtered(); });
  $('#filter-status').addEventListener('change', (e) => { state.statusFilter = e.target.value; filtered(); });
  $('#filter-namespace').addEventListener('change', (e) => { state.nsFilter = e.target.value; filtered(); });
  $('#filter-cluster').addEventListener('change', (e) => { state.clusterFilter = e.target.value; filtered(); });
  $('#select-page').addEventListener('change', (e) => {
    const on = e.currentTarget.checked;
    if (state.selectMatching && !on) { clearSelection(); return; }
    const page = pageOf(visibleWorkloads(), state.page, state.pageSize).rows;
    for (const w of page) if (on) state.selected.add(wkey(w)); else state.selected.delete(wkey(w));
    renderList(true);
  });
  $('#select-matching').addEventListener('click', () => { state.selectMatching = true; renderList(true); $('#batch-passthrough').focus(); });
  $('#clear-selection').addEventListener('click', () => { clearSelection(); $('#select-page').focus(); });
  $('#batch-passthrough').addEventListener('click', () => openBatchDialog(selectedWorkloads()));
  $('#page-size').addEventListener('change', (e) => { state.pageSize = Number(e.target.value) || 20; state.page = 0; renderList(true); });
  $('#page-prev').addEventListener('click', () => { state.page = Math.max(0, state.page - 1); renderList(true); });
  $('#page-next').addEventListener('click', () => { state.page += 1; renderList(true); });
  window.addEventListener('hashchange', () => route());
  $('#refresh').addEventListener('click', () => refreshList());
  for (const th of $$('thead th[data-sort]')) {
    $('button', th).addEventListener('click', () => {
      const k = th.dataset.sort;
      state.sort = state.sort.key === k ? { key: k, dir: -state.sort.dir } : { key: k, dir: 1 };
      renderList(true);
    });
  }
  $('#signed-out-retry').addEventListener('click', () => init());
  $('#sign-out').addEventListener('click', () => signOut());
  document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible' && state.signedIn) refreshList({ quiet: true }); });
}

async function init() {
  // A login URL opened on a server that did not redirect: never leave the token in the address bar.
  if (new URLSearchParams(location.search).has('token')) history.replaceState(null, '', location.pathname + location.hash);
  try {
    await loadSession();
  } catch (e) {
    if (e.status !== 401) {
      $('#signed-out').hidden = true;
      const card = $('#workloads-card');
      card.hidden = false;
      const el = $('#list-error');
      el.textContent = `Could not reach the meshpass API: ${e.message}`;
      el.hidden = false;
      setTimeout(init, 5000);
    }
    return;
  }
  $('#signed-out').hidden = true;
  route();
  await refreshList();
  startAutoRefresh();
}

/** `#/workloads` (default) or `#/defaults`. */
function route() {
  if (!state.signedIn) return;
  const view = location.hash === '#/defaults' ? 'defaults' : 'workloads';
  const changed = state.view !== view;
  state.view = view;
  for (const a of $$('.nav-item')) {
    const on = a.getAttribute('href') === `#/${view}`;
    a.classList.toggle('active', on);
    if (on) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  $('#workloads-card').hidden = view !== 'workloads';
  $('#defaults-card').hidden = view !== 'defaults';
  const title = view === 'defaults' ? 'Mesh-wide defaults' : 'Workload';
  $('#page-title').textContent = title;
  $('#crumb-page').textContent = title;
  document.title = `${title} · meshpass`;
  $('#page-sub').textContent = view === 'defaults'
    ? 'The capture values every sidecar gets unless its workload sets its own.'
    : 'Sidecar status of every workload, and the ports and IP ranges whose traffic passes through (bypasses) the sidecar.';
  if (view === 'defaults') renderDefaultsPage();
  if (changed) $('#main').focus();
}

decorateStatic();
wireToolbar();
init();
