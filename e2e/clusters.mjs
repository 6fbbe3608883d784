#!/usr/bin/env node
// Browser end-to-end test of the meshpass web GUI over a server that serves two clusters: each
// cluster's mesh-wide defaults on the defaults page (picked by cluster, changed in one cluster
// only), the list marking each workload's inherited values from its own cluster's defaults, and
// one batch over workloads of both clusters.
//
//   MESHPASS_URL=http://127.0.0.1:15180 MESHPASS_TOKEN=… E2E_A=east/default/sleep E2E_B=west/shop/cart node e2e/clusters.mjs
//
// env: MESHPASS_URL, MESHPASS_TOKEN (required), E2E_A and E2E_B (CLUSTER/NAMESPACE/NAME, two
// meshed workloads in different clusters, each name in one cluster only), E2E_ARTIFACTS,
// CHROMIUM, E2E_HEADED=1. Exit code 0 when every step passed, 1 otherwise (2 on bad usage).

import path from 'node:path';
import { Flow, apiClient, assert } from './harness.mjs';

const BASE = (process.env.MESHPASS_URL || '').replace(/\/+$/, '');
const TOKEN = process.env.MESHPASS_TOKEN || '';
const ARTIFACTS = path.resolve(process.env.E2E_ARTIFACTS || 'e2e-artifacts');
const UI_TIMEOUT = 15000;
const SUCCESS = 'Traffic passthrough setup successful';
const RANGE = '10.20.0.0/16';
const OUT_PORT = '3306';
const parse = (s) => {
  const [cluster, ns, name] = (s || '').split('/');
  return { cluster, ns, name, tid: `${ns}-${name}` };
};
const A = parse(process.env.E2E_A);
const B = parse(process.env.E2E_B);

if (!BASE || !TOKEN || !A.name || !B.name || A.cluster === B.cluster) {
  console.error('usage: MESHPASS_URL=… MESHPASS_TOKEN=… E2E_A=CLUSTER/NS/NAME E2E_B=OTHER-CLUSTER/NS/NAME node e2e/clusters.mjs');
  process.exit(2);
}

const flow = new Flow({ tag: 'clusters', artifacts: ARTIFACTS, prefix: 'clusters-' });
const step = (name, fn) => flow.step(name, fn);
let page;

const apiCall = apiClient(BASE, TOKEN);

const defaultsOf = async (cluster) => (await apiCall('GET', `/api/v1/defaults?cluster=${cluster}`)).data;
const settingsOf = async (w) => (await apiCall('GET',
  `/api/v1/namespaces/${w.ns}/workloads/${w.name}/passthrough?cluster=${w.cluster}`)).data.settings;

async function main() {
  flow.log(`target ${BASE}, ${A.cluster}/${A.ns}/${A.name} and ${B.cluster}/${B.ns}/${B.name}`);
  const session = (await apiCall('GET', '/api/v1/session')).data;
  assert((session.clusters || []).includes(A.cluster) && session.clusters.includes(B.cluster), `the server serves ${JSON.stringify(session.clusters)}`);
  const eastBefore = await defaultsOf(A.cluster);
  page = await flow.open({ timeout: UI_TIMEOUT });

  await step('list-both-clusters', async () => {
    const resp = await page.goto(`${BASE}/?token=${encodeURIComponent(TOKEN)}`, { waitUntil: 'domcontentloaded' });
    assert(resp && resp.ok(), `login page answered ${resp && resp.status()}`);
    await page.locator(`[data-testid="workload-row-${A.tid}"]`).waitFor();
    await page.locator(`[data-testid="workload-row-${B.tid}"]`).waitFor();
  });

  await step('defaults-per-cluster', async () => {
    await page.locator('[data-testid="nav-defaults"]').click();
    const picker = page.locator('[data-testid="defaults-cluster"]');
    await picker.waitFor();
    const names = await picker.locator('option').evaluateAll((os) => os.map((o) => o.value));
    assert(names.includes(A.cluster) && names.includes(B.cluster), `the cluster picker offers ${names}`);
    await picker.selectOption(B.cluster);
    await page.waitForFunction((c) => document.querySelector('[data-testid="defaults-cluster"]').value === c, B.cluster);
    const input = page.locator('[data-testid="default-input-global.proxy.excludeIPRanges"]');
    await input.fill(RANGE);
    await page.locator('[data-testid="defaults-save"]').click();
    await page.locator('[data-testid="defaults-changes"]').waitFor();
    assert((await defaultsOf(B.cluster)).values['global.proxy.excludeIPRanges'] === RANGE, `${B.cluster} does not hold ${RANGE}`);
    const east = await defaultsOf(A.cluster);
    assert(JSON.stringify(east.values) === JSON.stringify(eastBefore.values), `${A.cluster}'s defaults changed too`);
    // Switching back shows the other cluster's own value.
    await page.locator('[data-testid="defaults-cluster"]').selectOption(A.cluster);
    await page.waitForFunction((v) => document.querySelector('[data-testid="default-input-global.proxy.excludeIPRanges"]').value === v,
      eastBefore.values['global.proxy.excludeIPRanges']);
  });

  await step('list-marks-per-cluster', async () => {
    await page.locator('[data-testid="nav-workload"]').click();
    const b = page.locator(`[data-testid="pt-outboundIpRanges-${B.tid}"]`);
    await b.waitFor();
    assert((await b.getAttribute('data-source')) === 'mesh' && (await b.innerText()).includes(RANGE), `${B.name}: ${await b.innerText()}`);
    const a = page.locator(`[data-testid="workload-row-${A.tid}"]`);
    assert(!(await a.innerText()).includes(RANGE), `${A.name} of ${A.cluster} shows the other cluster's range`);
  });

  await step('batch-across-clusters', async () => {
    await page.locator(`[data-testid="workload-row-${A.tid}"] [data-testid="row-select"]`).check();
    await page.locator(`[data-testid="workload-row-${B.tid}"] [data-testid="row-select"]`).check();
    await page.locator('[data-testid="batch-passthrough"]').click();
    const d = page.locator('[data-testid="batch-dialog"]');
    await d.waitFor();
    await d.locator('[data-testid="batch-op-outbound-ports-add"]').check();
    const input = d.locator('[data-testid="chip-input-batch-outbound-ports"]');
    await input.fill(OUT_PORT);
    await input.press('Enter');
    for (const w of [A, B]) {
      const r = d.locator(`[data-testid="batch-row-${w.tid}"]`);
      await r.waitFor();
      assert((await r.getAttribute('data-cluster')) === w.cluster, `${w.name} previewed in cluster ${await r.getAttribute('data-cluster')}`);
      assert((await r.getAttribute('data-outcome')) === 'wouldChange', `${w.name}: ${await r.getAttribute('data-outcome')}`);
    }
    await d.locator('[data-testid="batch-confirm"]').click();
    await d.locator('[data-testid="batch-results"]').waitFor();
    for (const w of [A, B]) {
      const r = d.locator(`[data-testid="batch-result-${w.tid}"]`);
      assert((await r.getAttribute('data-outcome')) === 'changed', `${w.cluster}/${w.name}: ${await r.innerText()}`);
      assert((await settingsOf(w)).outboundPorts.includes(OUT_PORT), `${w.cluster}/${w.name} lacks ${OUT_PORT}`);
    }
    const t = page.locator('[data-testid="toast"][data-type="success"]', { hasText: SUCCESS }).first();
    await t.waitFor();
  });
  await flow.close();
}

flow.run(main);
