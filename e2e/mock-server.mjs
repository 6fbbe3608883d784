// A small stand-in for the meshpass API (crates/api/API.md), for working on the GUI without
// building the Rust server: `node e2e/mock-server.mjs` (PORT, MESHPASS_TOKEN env; 127.0.0.1 only).
// It serves crates/api/assets with the same CSP as the real server. The real fake backend is the
// dev-server example (`cargo run -p meshpass-api --example dev-server`); prefer that one.

import http from 'node:http';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const assets = path.join(here, '..', 'crates', 'api', 'assets');
const PORT = Number(process.env.PORT || 15181);
const TOKEN = process.env.MESHPASS_TOKEN || 'devtoken';
const RESTART_MS = Number(process.env.MOCK_RESTART_MS || 2500);

const sessions = new Map(); // id -> csrf
let rvCounter = 100;
const ops = new Map();
// The annotation keys by field, from the GUI's own logic module (loaded as an ES module
// whatever Node's rule for a `.js` file outside a `"type": "module"` package is).
const logic = await import(`data:text/javascript;base64,${fs.readFileSync(path.join(assets, 'logic.js')).toString('base64')}`);
const KEYS = logic.ANNOTATION_KEYS;

function wl(namespace, name, meshed, services, annotations = {}) {
  return { namespace, name, kind: 'Deployment', meshed, pendingRestart: false, ready: 1, total: 1, injected: meshed ? 1 : 0,
    services, annotations, resourceVersion: String(++rvCounter), running: { ...annotations } };
}
const workloads = [
  wl('default', 'helloworld-v1', true, [{ name: 'helloworld', clusterIp: '198.19.0.10', ports: [{ port: 5000, targetPort: 5000 }] }]),
  wl('default', 'sleep', true, [{ name: 'sleep', clusterIp: '198.19.0.11', ports: [{ port: 80, targetPort: 80 }] }]),
  wl('external', 'external', false, [{ name: 'external', clusterIp: '198.19.0.12', ports: [{ port: 80, targetPort: 8080 }] }]),
];
const find = (ns, name) => workloads.find((w) => w.namespace === ns && w.name === name);

function settingsOf(ann) {
  const list = (k) => (ann[k] ? ann[k].split(',').map((s) => s.trim()).filter(Boolean) : []);
  const opt = (k) => (k in ann ? ann[k] : null);
  return { inboundPorts: list(KEYS.inboundPorts), outboundPorts: list(KEYS.outboundPorts), outboundIpRanges: list(KEYS.outboundIpRanges),
    includeInboundPorts: opt(KEYS.includeInboundPorts), includeOutboundPorts: opt(KEYS.includeOutboundPorts),
    includeOutboundIpRanges: opt(KEYS.includeOutboundIpRanges), interceptionMode: opt(KEYS.interceptionMode) };
}
const status = (w) => (!w.meshed ? 'Uninjected' : w.pendingRestart ? 'Pending restart' : 'Injected');
const view = (w) => {
  const { running, ...rest } = w;
  return { ...rest, status: status(w), passthrough: settingsOf(w.annotations) };
};

function portErr(s) {
  const p = (x) => /^[0-9]{1,5}$/.test(x) && +x >= 1 && +x <= 65535;
  const t = s.trim();
  if (!t) return 'is an empty item (remove the extra comma)';
  if (t.includes('-')) { const [a, b] = t.split('-'); if (!p(a.trim()) || !p(b.trim())) return 'is not a port (1-65535)'; return +a > +b ? `is not a port range: ${a} is greater than ${b}` : null; }
  return p(t) ? null : 'is not a port (1-65535)';
}
function cidrErr(s) {
  if (!s.includes('/')) return 'is not an IP range: expected ADDRESS/PREFIX, e.g. 10.0.0.0/8 or 2001:db8::/32';
  const [a, l] = s.split('/');
  if (!/^\d+\.\d+\.\d+\.\d+$/.test(a) && !a.includes(':')) return `is not an IP range: "${a}" is not an IPv4 or IPv6 address`;
  if (!/^(0|[1-9]\d*)$/.test(l)) return `is not an IP range: prefix length "${l}" is not a number (no leading zeros)`;
  return null;
}
function validate(p) {
  const errors = [];
  for (const [field, fn] of [['inboundPorts', portErr], ['outboundPorts', portErr], ['outboundIpRanges', cidrErr]]) {
    for (const item of p[field] || []) { const r = fn(item); if (r) errors.push({ field, key: KEYS[field], item, reason: r }); }
  }
  if (p.interceptionMode && !['REDIRECT', 'TPROXY', 'NONE'].includes(p.interceptionMode)) {
    errors.push({ field: 'interceptionMode', key: KEYS.interceptionMode, item: p.interceptionMode, reason: 'is not an interception mode: use REDIRECT, TPROXY or NONE (case-sensitive)' });
  }
  return errors;
}
function annotationsOf(p) {
  const out = {};
  for (const f of ['inboundPorts', 'outboundPorts', 'outboundIpRanges']) if ((p[f] || []).length) out[KEYS[f]] = p[f].join(',');
  for (const f of ['includeInboundPorts', 'includeOutboundPorts', 'includeOutboundIpRanges', 'interceptionMode']) if (p[f] !== null && p[f] !== undefined) out[KEYS[f]] = p[f];
  return out;
}
function rules(w, ann) {
  if (!w.meshed) return '';
  const s = settingsOf(ann);
  const lines = ['table inet meshpass {', '  chain prerouting {', '    type nat hook prerouting priority dstnat;'];
  if (s.inboundPorts.length) lines.push(`    tcp dport { ${s.inboundPorts.join(', ')} } counter return comment "exclude-inbound-ports"`);
  lines.push('    meta l4proto tcp counter redirect to :15006 comment "inbound-capture"', '  }', '  chain output {', '    type nat hook output priority -100;',
    '    meta skuid 1337 counter return comment "proxy-uid"');
  if (s.outboundPorts.length) lines.push(`    tcp dport { ${s.outboundPorts.join(', ')} } counter return comment "exclude-outbound-ports"`);
  if (s.outboundIpRanges.length) lines.push(`    ip daddr { ${s.outboundIpRanges.join(', ')} } counter return comment "exclude-outbound-ip-ranges"`);
  lines.push('    meta l4proto tcp counter redirect to :15001 comment "outbound-capture"', '  }', '}');
  return lines.join('\n');
}
function diff(a, b) {
  const A = a ? a.split('\n') : [];
  const B = b ? b.split('\n') : [];
  const out = [];
  let i = 0;
  let j = 0;
  while (i < A.length || j < B.length) {
    if (i < A.length && j < B.length && A[i] === B[j]) { out.push({ op: ' ', line: A[i] }); i += 1; j += 1; }
    else if (j < B.length && !A.slice(i).includes(B[j])) { out.push({ op: '+', line: B[j] }); j += 1; }
    else { out.push({ op: '-', line: A[i] }); i += 1; }
  }
  return out;
}
function warnings(w, p) {
  const out = [];
  const targets = w.services.flatMap((s) => s.ports.map((x) => String(x.targetPort)));
  const others = workloads.filter((o) => o !== w && o.meshed).map((o) => `${o.namespace}/${o.name}`);
  for (const port of p.inboundPorts || []) {
    if (targets.includes(port) && others.length) {
      out.push(`Port ${port} of ${w.namespace}/${w.name} is excluded from its sidecar, but meshed clients (${others.join(', ')}) still send mesh traffic to it through their own sidecars; with mutual TLS (Istio) those calls fail, and their responses still show their own sidecar's headers.`);
    }
  }
  if ((p.outboundIpRanges || []).some((r) => r === '0.0.0.0/0' || r === '::/0')) out.push('All outbound traffic skips the sidecar (0.0.0.0/0 or ::/0).');
  return out;
}
const doc = (w, extra = {}) => ({ namespace: w.namespace, name: w.name, resourceVersion: w.resourceVersion, status: status(w),
  settings: settingsOf(w.annotations), annotations: annotationsOf(settingsOf(w.annotations)), warnings: warnings(w, settingsOf(w.annotations)), ...extra });

function startRestart(w) {
  const id = crypto.randomBytes(6).toString('hex');
  const op = { id, kind: 'restart', namespace: w.namespace, name: w.name, state: 'running', progress: ['rolling restart started'], startedAt: new Date().toISOString() };
  ops.set(id, op);
  setTimeout(() => op.progress.push(`pod ${w.name}-${id.slice(0, 5)} created`), RESTART_MS / 3);
  setTimeout(() => op.progress.push(`pod ${w.name}-${id.slice(0, 5)} ready`), (2 * RESTART_MS) / 3);
  setTimeout(() => {
    w.running = { ...w.annotations };
    w.pendingRestart = false;
    w.resourceVersion = String(++rvCounter);
    op.progress.push('old pod terminated; rollout complete');
    op.state = 'succeeded';
    op.finishedAt = new Date().toISOString();
  }, RESTART_MS);
  return op;
}

function send(res, code, body, headers = {}) {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(code, { 'Content-Type': typeof body === 'string' ? 'text/plain' : 'application/json', ...headers });
  res.end(text);
}
const err = (res, code, error, message, extra = {}) => send(res, code, { error, message, ...extra }, code === 401 ? { 'WWW-Authenticate': 'Bearer' } : {});

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x');
  const p = url.pathname;
  const cookies = Object.fromEntries((req.headers.cookie || '').split(';').map((c) => c.trim().split('=')).filter((x) => x[0]));
  const sid = cookies.meshpass_session;
  const bearer = req.headers.authorization === `Bearer ${TOKEN}`;
  const session = sid && sessions.has(sid);
  const csp = { 'Content-Security-Policy': "default-src 'self'", 'X-Content-Type-Options': 'nosniff' };
  let body = '';
  for await (const chunk of req) body += chunk;
  if (p === '/' && req.method === 'GET') {
    const tok = url.searchParams.get('token');
    if (tok !== null) {
      if (tok !== TOKEN) return send(res, 401, 'invalid token', csp);
      const id = crypto.randomBytes(16).toString('hex');
      sessions.set(id, crypto.randomBytes(16).toString('hex'));
      res.writeHead(303, { Location: '/', 'Set-Cookie': `meshpass_session=${id}; HttpOnly; SameSite=Strict; Path=/` });
      return res.end();
    }
    return send(res, 200, fs.readFileSync(path.join(assets, 'index.html'), 'utf8'), { ...csp, 'Content-Type': 'text/html; charset=utf-8' });
  }
  if (p.startsWith('/assets/')) {
    const f = path.join(assets, path.basename(p));
    if (!fs.existsSync(f)) return send(res, 404, 'not found');
    const type = f.endsWith('.js') ? 'text/javascript' : f.endsWith('.css') ? 'text/css' : 'text/plain';
    return send(res, 200, fs.readFileSync(f, 'utf8'), { ...csp, 'Content-Type': type });
  }
  if (p === '/healthz') return send(res, 200, 'ok');
  if (!p.startsWith('/api/v1/')) return err(res, 404, 'not_found', 'no such route');
  if (!bearer && !session) return err(res, 401, 'unauthorized', 'sign in: open the login URL printed by meshpass up, or send Authorization: Bearer TOKEN');
  if (!bearer && req.method !== 'GET' && req.headers['x-csrf-token'] !== sessions.get(sid)) return err(res, 403, 'csrf', 'missing or wrong X-CSRF-Token');
  let json = {};
  try { json = body ? JSON.parse(body) : {}; } catch { return err(res, 400, 'bad_request', 'body is not JSON'); }
  if (p === '/api/v1/session') return send(res, 200, { backend: 'local', csrfToken: bearer ? null : sessions.get(sid), auth: bearer ? 'bearer' : 'session', ruleFormat: 'nft' });
  if (p === '/api/v1/workloads') return send(res, 200, { items: workloads.map(view) });
  let m = p.match(/^\/api\/v1\/operations\/([^/]+)$/);
  if (m) return ops.has(m[1]) ? send(res, 200, ops.get(m[1])) : err(res, 404, 'not_found', 'no such operation');
  m = p.match(/^\/api\/v1\/namespaces\/([^/]+)\/workloads\/([^/]+)(\/.*)?$/);
  if (!m) return err(res, 404, 'not_found', 'no such route');
  const w = find(decodeURIComponent(m[1]), decodeURIComponent(m[2]));
  if (!w) return err(res, 404, 'not_found', `workload ${m[1]}/${m[2]} not found`);
  const sub = m[3] || '';
  const etag = { ETag: `"${w.resourceVersion}"` };
  if (sub === '' && req.method === 'GET') return send(res, 200, view(w));
  if (sub === '/passthrough' && req.method === 'GET') return send(res, 200, doc(w), etag);
  if (sub === '/passthrough' && req.method === 'PUT') {
    const rv = (req.headers['if-match'] || '').replace(/"/g, '') || json.resourceVersion;
    if (!rv) return err(res, 428, 'precondition_required', 'send If-Match');
    if (rv !== w.resourceVersion) return err(res, 409, 'conflict', `workload changed since version ${rv} (now ${w.resourceVersion}); reload and retry`);
    const { restart, resourceVersion, ...pt } = json;
    const errors = validate(pt);
    if (errors.length) return err(res, 422, 'invalid', errors.map((e) => `${e.key}: "${e.item}" ${e.reason}`).join('; '), { errors });
    const ann = annotationsOf(pt);
    if (JSON.stringify(ann) !== JSON.stringify(annotationsOf(settingsOf(w.annotations)))) {
      w.annotations = ann;
      w.resourceVersion = String(++rvCounter);
      w.pendingRestart = JSON.stringify(ann) !== JSON.stringify(annotationsOf(settingsOf(w.running)));
    }
    const op = restart ? startRestart(w) : undefined;
    return send(res, 200, doc(w, op ? { operation: op } : {}), { ETag: `"${w.resourceVersion}"` });
  }
  if (sub === '/passthrough/preview' && req.method === 'POST') {
    const errors = validate(json);
    if (errors.length) return err(res, 422, 'invalid', errors.map((e) => `${e.key}: "${e.item}" ${e.reason}`).join('; '), { errors });
    const cur = rules(w, w.annotations);
    const next = rules(w, annotationsOf(json));
    return send(res, 200, { format: 'nft', current: cur, proposed: next, diff: diff(cur, next), istioArgs: { current: ['-p', '15001', '-z', '15006'], proposed: ['-p', '15001', '-z', '15006', ...(json.inboundPorts || []).length ? ['-d', json.inboundPorts.join(',')] : []] }, warnings: warnings(w, json) });
  }
  if (sub === '/restart' && req.method === 'POST') return send(res, 202, startRestart(w));
  if (sub === '/check' && req.method === 'POST') {
    const s = settingsOf(w.running);
    const port = String(json.port || w.services[0].ports[0].port);
    const target = w.services[0].ports.find((x) => String(x.port) === port);
    const bypass = !w.meshed || s.inboundPorts.includes(String(target ? target.targetPort : port));
    return send(res, 200, bypass
      ? { direction: 'inbound', from: 'node', target: `GET http://${w.services[0].clusterIp}:${port}${json.path || '/'}`, verdict: 'passthrough', statusLine: 'HTTP/1.0 200 OK',
        headers: [['Server', 'Werkzeug/2.2.2 Python/3.11.2'], ['Content-Type', 'text/html; charset=utf-8'], ['Content-Length', '59']], evidence: ['no sidecar connection record for this request', 'rule exclude-inbound-ports matched (counter +1)', 'response has no Envoy headers'] }
      : { direction: 'inbound', from: 'node', target: `GET http://${w.services[0].clusterIp}:${port}${json.path || '/'}`, verdict: 'sidecar', statusLine: 'HTTP/1.1 200 OK',
        headers: [['content-type', 'text/html; charset=utf-8'], ['content-length', '59'], ['server', 'istio-envoy'], ['x-envoy-upstream-service-time', '3'], ['x-envoy-decorator-operation', `helloworld.default.svc.cluster.local:${port}/*`]], evidence: ['sidecar inbound connection record', 'response carries server: istio-envoy'] });
  }
  if (sub === '/bypass' && req.method === 'GET') {
    if (process.env.MOCK_BYPASS_501) return err(res, 501, 'unsupported', 'not supported by this backend: rule counters');
    const s = settingsOf(w.running);
    const items = s.inboundPorts.length ? [{ pod: `${w.name}-abc12`, family: 'ipv4', label: 'exclude-inbound-ports', rule: `tcp dport { ${s.inboundPorts.join(', ')} } counter packets 12 bytes 720 return`, packets: 12, bytes: 720 }] : [];
    return send(res, 200, { items, totals: { inbound: { packets: items.length ? 12 : 0, bytes: items.length ? 720 : 0 }, outbound: { packets: 0, bytes: 0 } } });
  }
  return err(res, 404, 'not_found', 'no such route');
});
server.listen(PORT, '127.0.0.1', () => console.log(`mock meshpass API on http://127.0.0.1:${PORT}/?token=${TOKEN}`));
