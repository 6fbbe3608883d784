// meshpass web GUI: the logic without a DOM (validation of list items, the batch request, the
// effective values and their source, selection state, per-workload changes). Imported by
// app.js; the same module runs under `node --test` (e2e/logic.test.mjs), so nothing here may
// touch `document`, `window` or the network.

'use strict';

/** Istio's capture annotations by the field names of the API's `Passthrough`. */
export const ANNOTATION_KEYS = {
  inboundPorts: 'traffic.sidecar.istio.io/excludeInboundPorts',
  outboundPorts: 'traffic.sidecar.istio.io/excludeOutboundPorts',
  outboundIpRanges: 'traffic.sidecar.istio.io/excludeOutboundIPRanges',
  includeInboundPorts: 'traffic.sidecar.istio.io/includeInboundPorts',
  includeOutboundPorts: 'traffic.sidecar.istio.io/includeOutboundPorts',
  includeOutboundIpRanges: 'traffic.sidecar.istio.io/includeOutboundIPRanges',
  interceptionMode: 'sidecar.istio.io/interceptionMode',
};

export const KEY_TO_FIELD = Object.fromEntries(Object.entries(ANNOTATION_KEYS).map(([f, k]) => [k, f]));

/**
 * The mesh-wide values (Istio's injector values, by Helm path) and the annotation each one
 * stands in for, in the order the defaults page shows them. A pod whose template has the
 * annotation (even empty) gets the annotation's value; only without it the mesh-wide one.
 */
export const MESH_VALUES = [
  { path: 'global.proxy.excludeInboundPorts', annotation: ANNOTATION_KEYS.inboundPorts, field: 'inboundPorts', kind: 'port', label: 'Inbound ports passed through' },
  { path: 'global.proxy.excludeOutboundPorts', annotation: ANNOTATION_KEYS.outboundPorts, field: 'outboundPorts', kind: 'port', label: 'Outbound ports passed through' },
  { path: 'global.proxy.excludeIPRanges', annotation: ANNOTATION_KEYS.outboundIpRanges, field: 'outboundIpRanges', kind: 'cidr', label: 'Outbound IP ranges passed through' },
  { path: 'global.proxy.includeInboundPorts', annotation: ANNOTATION_KEYS.includeInboundPorts, field: 'includeInboundPorts', kind: 'port', label: 'Inbound ports captured', wildcard: true },
  { path: 'global.proxy.includeOutboundPorts', annotation: ANNOTATION_KEYS.includeOutboundPorts, field: 'includeOutboundPorts', kind: 'port', label: 'Outbound ports always captured' },
  { path: 'global.proxy.includeIPRanges', annotation: ANNOTATION_KEYS.includeOutboundIpRanges, field: 'includeOutboundIpRanges', kind: 'cidr', label: 'Outbound IP ranges captured', wildcard: true },
  { path: 'global.proxy.statusPort', annotation: 'status.sidecar.istio.io/port', field: null, kind: 'single-port', label: 'Sidecar status port (not captured inbound)' },
];

/** The three lists a batch can add to, remove from or set. */
export const BATCH_LISTS = [
  { field: 'inboundPorts', kind: 'port', label: 'Inbound ports', name: 'inbound' },
  { field: 'outboundPorts', kind: 'port', label: 'Outbound ports', name: 'outbound-ports' },
  { field: 'outboundIpRanges', kind: 'cidr', label: 'Outbound IP ranges', name: 'outbound-ip-ranges' },
];

export const wkey = (w) => `${w.namespace}/${w.name}`;

// ---------------------------------------------------------------------------------------------
// Syntax checks of one item (mirror meshpass-settings' reasons; the server's answer wins)

export function checkPort(s) {
  if (!s || !/^[0-9]+$/.test(s)) return false;
  s = s.replace(/^0+(?=\d)/, '');
  if (s.length > 5) return false;
  const n = Number(s);
  return n >= 1 && n <= 65535 ? n : false;
}

/** A port item as the server stores it: no spaces, no leading zeros, `N-N` as `N`. */
export function canonicalPortItem(raw) {
  const s = raw.replace(/\s+/g, '');
  const unpad = (d) => d.replace(/^0+(?=\d)/, '');
  let m = /^(\d+)$/.exec(s);
  if (m) return unpad(m[1]);
  m = /^(\d+)-(\d+)$/.exec(s);
  if (m) return unpad(m[1]) === unpad(m[2]) ? unpad(m[1]) : `${unpad(m[1])}-${unpad(m[2])}`;
  return s;
}

/** Why `raw` is not a port item, or null. `istio`: the injector refuses port ranges. */
export function validatePortItem(raw, istio = false) {
  const s = raw.trim();
  if (!s) return 'is an empty item (remove the extra comma)';
  if (s === '*') return 'must be the whole value, not one item of a list';
  for (const sep of ['-', ':']) {
    const i = s.indexOf(sep);
    if (i >= 0) {
      const a = checkPort(s.slice(0, i).trim());
      const b = checkPort(s.slice(i + 1).trim());
      if (a === false || b === false) return 'is not a port (1-65535)';
      if (sep === ':') return `is not a port range: write ${a}-${b} (Istio rejects the ':' form)`;
      if (a > b) return `is not a port range: ${a} is greater than ${b}`;
      if (a !== b && istio) return 'is a port range, which Istio\'s sidecar injector refuses (it takes single ports)';
      return null;
    }
  }
  return checkPort(s) === false ? 'is not a port (1-65535)' : null;
}

export function isIPv4(s) {
  const parts = s.split('.');
  return parts.length === 4 && parts.every((p) => /^(0|[1-9][0-9]{0,2})$/.test(p) && Number(p) <= 255);
}

export function isIPv6(s) {
  if (!s.includes(':') || /[^0-9a-fA-F:.]/.test(s)) return false;
  try {
    new URL(`http://[${s}]/`); // the URL parser implements the IPv6 address grammar
    return true;
  } catch {
    return false;
  }
}

/** Why `raw` is not an IP range item, or null. */
export function validateCidrItem(raw) {
  if (!raw.trim()) return 'is an empty item (remove the extra comma)';
  if (/\s/.test(raw.trim())) return 'contains whitespace; IP ranges must be written without spaces (Istio rejects them)';
  const s = raw.trim();
  const slash = s.indexOf('/');
  if (slash < 0) return 'is not an IP range: expected ADDRESS/PREFIX, e.g. 10.0.0.0/8 or 2001:db8::/32';
  const addr = s.slice(0, slash);
  const len = s.slice(slash + 1);
  const v4 = isIPv4(addr);
  const v6 = !v4 && isIPv6(addr);
  if (!v4 && !v6) return `is not an IP range: "${addr}" is not an IPv4 or IPv6 address`;
  if (!/^(0|[1-9][0-9]*)$/.test(len)) return `is not an IP range: prefix length "${len}" is not a number (no leading zeros)`;
  const max = v4 ? 32 : 128;
  if (Number(len) > max) return `is not an IP range: prefix length ${len} is out of range for ${v4 ? 'IPv4' : 'IPv6'} (0-${max})`;
  return null;
}

/** A whole comma-separated value (`*`, empty, or a list): every bad item named, or null. */
export function validateListValue(raw, kind, istio = false) {
  const s = raw.trim();
  if (s === '' || s === '*') return null;
  if (kind === 'single-port') return checkPort(s) === false ? `"${s}" is not a port (1-65535)` : null;
  const check = kind === 'cidr' ? validateCidrItem : (v) => validatePortItem(v, istio);
  const bad = s.split(',').map((i) => [i, check(i)]).filter(([, r]) => r);
  return bad.length ? bad.map(([i, r]) => `"${i.trim()}" ${r}`).join('; ') : null;
}

// ---------------------------------------------------------------------------------------------
// Effective values: the annotation when present (even empty), else the mesh-wide value

/** Splits a stored list value into its items (`""` → none). */
export function items(value) {
  return String(value || '').split(',').map((s) => s.trim()).filter(Boolean);
}

/**
 * Every mesh-wide value for workload `w` (its template `annotations`) under `defaults`
 * (`{HELM_PATH: value}` from GET /api/v1/defaults): `{path, annotation, field, label, value,
 * source: 'workload'|'mesh', mesh}` where `mesh` is the mesh-wide value it would get without
 * the annotation.
 */
export function effectiveOf(w, defaults) {
  const ann = (w && w.annotations) || {};
  const values = defaults || {};
  return MESH_VALUES.map((m) => {
    const own = Object.prototype.hasOwnProperty.call(ann, m.annotation);
    const mesh = values[m.path] === undefined ? '' : String(values[m.path]);
    return { ...m, value: own ? String(ann[m.annotation]) : mesh, source: own ? 'workload' : 'mesh', mesh };
  });
}

/**
 * For each mesh-wide value, which workloads get it (no annotation of their own) and which
 * set their own instead: `{path: {inherit: [key], own: [key]}}`.
 */
export function appliesTo(workloads, meshed = true) {
  const out = {};
  for (const m of MESH_VALUES) out[m.path] = { inherit: [], own: [] };
  for (const w of workloads || []) {
    if (meshed && w.meshed === false) continue;
    const ann = w.annotations || {};
    for (const m of MESH_VALUES) {
      (Object.prototype.hasOwnProperty.call(ann, m.annotation) ? out[m.path].own : out[m.path].inherit).push(wkey(w));
    }
  }
  return out;
}

/** The values of `edited` that differ from `current` (both `{path: value}`), trimmed. */
export function changedValues(current, edited) {
  const out = {};
  for (const [k, v] of Object.entries(edited || {})) {
    const now = current && current[k] !== undefined ? String(current[k]) : '';
    if (String(v).trim() !== now.trim()) out[k] = String(v).trim();
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Selection and the batch request

/** The header checkbox's state for the rows on the page: 'none' | 'some' | 'all'. */
export function pageSelectionState(pageKeys, selected) {
  const n = pageKeys.filter((k) => selected.has(k)).length;
  if (!n) return 'none';
  return n === pageKeys.length ? 'all' : 'some';
}

/** Rows `page` (0-based) of `rows` at `size` per page, and the page actually shown. */
export function pageOf(rows, page, size) {
  const pages = Math.max(1, Math.ceil(rows.length / size));
  const p = Math.min(Math.max(0, page), pages - 1);
  return { rows: rows.slice(p * size, (p + 1) * size), page: p, pages };
}

/**
 * The body of POST /api/v1/passthrough/batch. `targets`: workloads `{cluster?, namespace,
 * name, resourceVersion?}`; `lists`: `{field: {op: 'keep'|'add'|'remove'|'set', items: [String]}}`.
 * Throws an Error naming what is missing (no workload, nothing to change, an add/remove
 * without items) — the same cases the server refuses whole.
 */
export function batchRequest({ targets, lists, dryRun = false, live = false }) {
  if (!targets || !targets.length) throw new Error('No workloads selected.');
  const body = {
    workloads: targets.map((t) => ({
      ...(t.cluster ? { cluster: t.cluster } : {}), namespace: t.namespace, name: t.name, ...(t.resourceVersion ? { resourceVersion: t.resourceVersion } : {}),
    })),
  };
  let any = false;
  for (const { field, label } of BATCH_LISTS) {
    const l = lists[field] || { op: 'keep' };
    if (!l.op || l.op === 'keep') continue;
    const list = (l.items || []).map((s) => s.trim()).filter(Boolean);
    if ((l.op === 'add' || l.op === 'remove') && !list.length) throw new Error(`${label}: give at least one item to ${l.op}, or choose Keep.`);
    body[l.op] = body[l.op] || {};
    body[l.op][field] = list;
    any = true;
  }
  if (!any) throw new Error('Nothing to change: choose Add, Remove or Set for at least one list.');
  if (dryRun) body.dryRun = true;
  if (live) body.live = true;
  return body;
}

/** What a batch did to one list of one workload: `{kept, added, removed}` (item strings). */
export function listChange(before, after) {
  const b = before || [];
  const a = after || [];
  return { kept: a.filter((x) => b.includes(x)), added: a.filter((x) => !b.includes(x)), removed: b.filter((x) => !a.includes(x)) };
}

export const OUTCOME_LABEL = { changed: 'Changed', unchanged: 'Unchanged', wouldChange: 'Will change', failed: 'Failed' };

/** One line for a batch result: "3 changed, 1 unchanged, 1 failed". */
export function batchSummary(result) {
  const n = { changed: 0, unchanged: 0, wouldChange: 0, failed: 0 };
  for (const i of (result && result.items) || []) n[i.outcome] = (n[i.outcome] || 0) + 1;
  const parts = [];
  if (n.wouldChange) parts.push(`${n.wouldChange} will change`);
  if (n.changed) parts.push(`${n.changed} changed`);
  if (n.unchanged) parts.push(`${n.unchanged} unchanged`);
  if (n.failed) parts.push(`${n.failed} failed`);
  return { counts: n, text: parts.join(', ') || 'no workloads' };
}

/** Why one workload failed, as the results list says it: "409 conflict: …". */
export function failureText(item) {
  const errs = (item.errors || []).map((e) => `${e.key || e.field}: ${e.item ? `"${e.item}" ` : ''}${e.reason}`);
  return `${item.status || ''}${item.error ? ` ${item.error}` : ''}: ${errs.length ? errs.join('; ') : item.message}`.trim();
}
