// Unit tests of the GUI's logic without a DOM (crates/api/assets/logic.js):
//   node --test e2e/logic.test.mjs
// (run by `cargo test -p meshpass-api --test gui_logic`).

import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';

// Loaded as an ES module whatever the Node version's rule for a `.js` file outside a
// `"type": "module"` package is (the browser gets it as a module script).
const source = fs.readFileSync(new URL('../crates/api/assets/logic.js', import.meta.url));
const {
  validatePortItem, validateCidrItem, validateListValue, canonicalPortItem, effectiveOf, appliesTo, changedValues,
  pageSelectionState, pageOf, batchRequest, listChange, batchSummary, failureText, items, MESH_VALUES,
} = await import(`data:text/javascript;base64,${source.toString('base64')}`);

test('port items: the reasons the server gives, ranges refused for Istio only', () => {
  assert.equal(validatePortItem('5000'), null);
  assert.equal(validatePortItem('70000'), 'is not a port (1-65535)');
  assert.equal(validatePortItem('0'), 'is not a port (1-65535)');
  assert.equal(validatePortItem(''), 'is an empty item (remove the extra comma)');
  assert.equal(validatePortItem('*'), 'must be the whole value, not one item of a list');
  assert.equal(validatePortItem('8000:8100'), "is not a port range: write 8000-8100 (Istio rejects the ':' form)");
  assert.equal(validatePortItem('9-8'), 'is not a port range: 9 is greater than 8');
  assert.equal(validatePortItem('8000-8100'), null);
  assert.match(validatePortItem('8000-8100', true), /Istio's sidecar injector refuses/);
  assert.equal(validatePortItem('80-80', true), null);
  assert.equal(canonicalPortItem(' 05000 '), '5000');
  assert.equal(canonicalPortItem('80-080'), '80');
});

test('IP range items', () => {
  assert.equal(validateCidrItem('10.0.0.0/8'), null);
  assert.equal(validateCidrItem('2001:db8::/32'), null);
  assert.match(validateCidrItem('10.0.0.0'), /expected ADDRESS\/PREFIX/);
  assert.match(validateCidrItem('10.0.0.0/33'), /out of range for IPv4/);
  assert.match(validateCidrItem('300.0.0.0/8'), /not an IPv4 or IPv6 address/);
  assert.match(validateCidrItem('10.0.0.0/08'), /no leading zeros/);
});

test('whole values: every bad item named; * and empty allowed; the status port is one port', () => {
  assert.equal(validateListValue('*', 'port'), null);
  assert.equal(validateListValue('', 'cidr'), null);
  assert.equal(validateListValue('80, 70000, x', 'port'), '"70000" is not a port (1-65535); "x" is not a port (1-65535)');
  assert.equal(validateListValue('15020', 'single-port'), null);
  assert.equal(validateListValue('15020,15021', 'single-port'), '"15020,15021" is not a port (1-65535)');
});

test('effective values: the annotation when present, even empty; else the mesh-wide value', () => {
  const defaults = { 'global.proxy.excludeIPRanges': '10.96.0.0/12', 'global.proxy.includeIPRanges': '*' };
  const w = { namespace: 'default', name: 'a', annotations: { 'traffic.sidecar.istio.io/excludeOutboundPorts': '' } };
  const e = Object.fromEntries(effectiveOf(w, defaults).map((x) => [x.path, x]));
  assert.equal(e['global.proxy.excludeIPRanges'].source, 'mesh');
  assert.equal(e['global.proxy.excludeIPRanges'].value, '10.96.0.0/12');
  assert.equal(e['global.proxy.excludeOutboundPorts'].source, 'workload');
  assert.equal(e['global.proxy.excludeOutboundPorts'].value, '');
  assert.equal(e['global.proxy.includeIPRanges'].value, '*');
  assert.equal(effectiveOf(w, defaults).length, MESH_VALUES.length);
  assert.deepEqual(items(' 1, 2 ,,3'), ['1', '2', '3']);
});

test('which workloads a mesh-wide value applies to (unmeshed ones get nothing)', () => {
  const ws = [
    { namespace: 'a', name: 'x', meshed: true, annotations: {} },
    { namespace: 'a', name: 'y', meshed: true, annotations: { 'traffic.sidecar.istio.io/excludeOutboundIPRanges': '10.0.0.0/8' } },
    { namespace: 'b', name: 'z', meshed: false, annotations: {} },
  ];
  const u = appliesTo(ws);
  assert.deepEqual(u['global.proxy.excludeIPRanges'], { inherit: ['a/x'], own: ['a/y'] });
  assert.deepEqual(u['global.proxy.excludeInboundPorts'], { inherit: ['a/x', 'a/y'], own: [] });
});

test('only the defaults that were edited are sent', () => {
  assert.deepEqual(changedValues({ a: '1', b: '' }, { a: '1 ', b: '10.0.0.0/8', c: '' }), { b: '10.0.0.0/8' });
});

test('selection of a page and paging', () => {
  assert.equal(pageSelectionState(['a', 'b'], new Set()), 'none');
  assert.equal(pageSelectionState(['a', 'b'], new Set(['a', 'z'])), 'some');
  assert.equal(pageSelectionState(['a', 'b'], new Set(['a', 'b'])), 'all');
  const rows = Array.from({ length: 203 }, (_, i) => i);
  assert.deepEqual(pageOf(rows, 10, 20), { rows: [200, 201, 202], page: 10, pages: 11 });
  assert.equal(pageOf(rows, 99, 20).page, 10); // past the end: the last page
  assert.deepEqual(pageOf([], 3, 20), { rows: [], page: 0, pages: 1 });
});

test('the batch request: versions kept, keep-lists left out, empty add refused, set [] allowed', () => {
  const targets = [{ cluster: 'east', namespace: 'default', name: 'a', resourceVersion: '7' }, { namespace: 'default', name: 'b' }];
  const body = batchRequest({
    targets,
    lists: { inboundPorts: { op: 'keep', items: ['1'] }, outboundPorts: { op: 'add', items: [' 3306 '] }, outboundIpRanges: { op: 'set', items: [] } },
    dryRun: true,
  });
  assert.deepEqual(body, {
    workloads: [{ cluster: 'east', namespace: 'default', name: 'a', resourceVersion: '7' }, { namespace: 'default', name: 'b' }],
    add: { outboundPorts: ['3306'] },
    set: { outboundIpRanges: [] },
    dryRun: true,
  });
  assert.equal(batchRequest({ targets, lists: { inboundPorts: { op: 'remove', items: ['80'] } }, live: true }).live, true);
  assert.throws(() => batchRequest({ targets, lists: { inboundPorts: { op: 'add', items: [] } } }), /Inbound ports: give at least one item to add/);
  assert.throws(() => batchRequest({ targets, lists: {} }), /Nothing to change/);
  assert.throws(() => batchRequest({ targets: [], lists: { inboundPorts: { op: 'set', items: [] } } }), /No workloads selected/);
});

test('per-workload change and outcome texts', () => {
  assert.deepEqual(listChange(['80', '9'], ['80', '3306']), { kept: ['80'], added: ['3306'], removed: ['9'] });
  assert.deepEqual(listChange(undefined, ['1']), { kept: [], added: ['1'], removed: [] });
  const result = { items: [{ outcome: 'changed' }, { outcome: 'failed' }, { outcome: 'changed' }, { outcome: 'unchanged' }] };
  assert.equal(batchSummary(result).text, '2 changed, 1 unchanged, 1 failed');
  assert.equal(batchSummary({ items: [] }).text, 'no workloads');
  assert.equal(failureText({ status: 409, error: 'conflict', message: 'workload default/b changed since version 3 (now 4); reload and retry' }),
    '409 conflict: workload default/b changed since version 3 (now 4); reload and retry');
  assert.equal(failureText({ status: 422, error: 'invalid', message: 'x', errors: [{ key: 'traffic.sidecar.istio.io/excludeInboundPorts', item: '70000', reason: 'port out of range' }] }),
    '422 invalid: traffic.sidecar.istio.io/excludeInboundPorts: "70000" port out of range');
});
