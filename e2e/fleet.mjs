#!/usr/bin/env node
// Browser end-to-end test of the meshpass web GUI across a fleet: the mesh-wide defaults page,
// selecting workloads (one by one, the page, all matching the filter), the batch Traffic
// passthrough settings dialog with its per-workload preview and per-workload outcome.
//
//   MESHPASS_URL=http://127.0.0.1:15180 MESHPASS_TOKEN=… node e2e/fleet.mjs
//
// env: MESHPASS_URL, MESHPASS_TOKEN (required), E2E_ARTIFACTS (screenshots, default
// ./e2e-artifacts), E2E_BATCH (two meshed workloads, default
// default/helloworld-v1,default/sleep), E2E_FLEET_NS (a namespace with more workloads than one
// page holds; default fleet; the "all matching the filter" steps are skipped when it has
// none), CHROMIUM (default /usr/bin/chromium), E2E_HEADED=1. Exit code 0 when every step
// passed, 1 otherwise (2 on bad usage).

import path from 'node:path';
import { Flow, apiClient, assert } from './harness.mjs';

const BASE = (process.env.MESHPASS_URL || '').replace(/\/+$/, '');
const TOKEN = process.env.MESHPASS_TOKEN || '';
const ARTIFACTS = path.resolve(process.env.E2E_ARTIFACTS || 'e2e-artifacts');
const BATCH = (process.env.E2E_BATCH || 'default/helloworld-v1,default/sleep').split(',').map((s) => s.trim().split('/'));
const FLEET_NS = process.env.E2E_FLEET_NS || 'fleet';
const UI_TIMEOUT = 15000;
const SUCCESS = 'Traffic passthrough setup successful';
const MESH_RANGE = '10.96.0.0/12';
const OUT_PORT = '3306';
const FLEET_RANGE = '10.10.0.0/16';

if (!BASE || !TOKEN || BATCH.length !== 2 || BATCH.some((b) => b.length !== 2)) {
  console.error('usage: MESHPASS_URL=http://127.0.0.1:15180 MESHPASS_TOKEN=TOKEN [E2E_BATCH=ns/a,ns/b] [E2E_FLEET_NS=fleet] node e2e/fleet.mjs');
  process.exit(2);
}

const [A, B] = BATCH.map(([ns, name]) => ({ ns, name, key: `${ns}/${name}`, tid: `${ns}-${name}` }));
const row = (w) => `[data-testid="workload-row-${w.tid}"]`;

const flow = new Flow({ tag: 'fleet', artifacts: ARTIFACTS, prefix: 'fleet-' });
const log = (msg) => flow.log(msg);
const shot = (name) => flow.shot(name);
const step = (name, fn) => flow.step(name, fn);
let page;

const apiCall = apiClient(BASE, TOKEN);

const ppath = (w) => `/api/v1/namespaces/${encodeURIComponent(w.ns)}/workloads/${encodeURIComponent(w.name)}/passthrough`;
const settingsOf = async (w) => (await apiCall('GET', ppath(w))).data.settings;

/** Puts `w`'s outbound ports back to `ports` (and leaves the rest), through the API. */
async function setOutbound(w, ports) {
  const { data, etag } = await apiCall('GET', ppath(w));
  await apiCall('PUT', ppath(w), { ...data.settings, outboundPorts: ports }, { 'If-Match': etag });
}

/** The test starts from the workloads without its values; a previous aborted run is undone. */
async function ensureClean() {
  for (const w of [A, B]) {
    const s = await settingsOf(w);
    if ((s.outboundPorts || []).includes(OUT_PORT) || (s.outboundIpRanges || []).includes(FLEET_RANGE)) {
      log(`  pre-clean: ${w.key}`);
      const { data, etag } = await apiCall('GET', ppath(w));
      await apiCall('PUT', ppath(w), {
        ...data.settings,
        outboundPorts: (s.outboundPorts || []).filter((p) => p !== OUT_PORT),
        outboundIpRanges: (s.outboundIpRanges || []).filter((p) => p !== FLEET_RANGE),
      }, { 'If-Match': etag });
    }
  }
  const { data, etag } = await apiCall('GET', '/api/v1/defaults');
  if (data.writable && data.values['global.proxy.excludeIPRanges'] === MESH_RANGE) {
    await apiCall('PUT', '/api/v1/defaults', { values: { 'global.proxy.excludeIPRanges': '' } }, { 'If-Match': etag });
  }
}

async function toastText(type, hasText) {
  const t = page.locator(`[data-testid="toast"][data-type="${type}"]`, { hasText }).first();
  await t.waitFor({ state: 'visible' });
  return t.innerText();
}

async function dismissToasts() {
  for (const b of await page.locator('[data-testid="toast-close"]').all()) await b.click().catch(() => {});
}

/** Waits until the dry-run preview lists `n` workloads and returns {key: outcome}. */
async function previewRows(n) {
  await page.waitForFunction((count) => document.querySelectorAll('[data-testid="batch-preview"] tbody tr').length === count
    && !/Updating/.test(document.querySelector('[data-testid="batch-preview-summary"]').textContent), n);
  return page.locator('[data-testid="batch-preview"] tbody tr').evaluateAll((rows) =>
    Object.fromEntries(rows.map((r) => [r.querySelector('th').firstChild.textContent, r.dataset.outcome])));
}

async function openBatchDialog() {
  await page.locator('[data-testid="batch-passthrough"]').click();
  const d = page.locator('[data-testid="batch-dialog"]');
  await d.waitFor({ state: 'visible' });
  return d;
}

/** In the open batch dialog: `op` (add/remove/set) on the list `name` with `items`. */
async function editList(d, name, op, items) {
  await d.locator(`[data-testid="batch-op-${name}-${op}"]`).check();
  const input = d.locator(`[data-testid="chip-input-batch-${name}"]`);
  for (const i of items) {
    await input.fill(i);
    await input.press('Enter');
  }
}

async function main() {
  log(`target ${BASE}, batch ${A.key} + ${B.key}, fleet namespace ${FLEET_NS}, artifacts ${ARTIFACTS}`);
  await ensureClean();
  const fleet = (await apiCall('GET', `/api/v1/workloads?namespace=${encodeURIComponent(FLEET_NS)}`)).data.items;
  page = await flow.open({ timeout: UI_TIMEOUT });

  await step('workload-list-pages', async () => {
    const resp = await page.goto(`${BASE}/?token=${encodeURIComponent(TOKEN)}`, { waitUntil: 'domcontentloaded' });
    assert(resp && resp.ok(), `login page answered ${resp && resp.status()}`);
    await page.locator('[data-testid="workload-rows"] tr[data-key]').first().waitFor();
    const total = (await apiCall('GET', '/api/v1/workloads')).data.items.length;
    const rows = await page.locator('[data-testid="workload-rows"] tr[data-key]').count();
    assert(rows === Math.min(20, total), `${rows} rows on the first page of ${total} workloads, want ${Math.min(20, total)}`);
    const info = await page.locator('[data-testid="page-info"]').innerText();
    assert(info === `Page 1 of ${Math.max(1, Math.ceil(total / 20))}`, `pager says "${info}"`);
    // 200 workloads do not break the layout: nothing wider than the window.
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert(overflow <= 0, `the page is ${overflow}px wider than the window`);
    assert(await page.locator('[data-testid="batch-bar"]').isHidden(), 'the batch bar shows with nothing selected');
    await flow.accessibility('the workload list');
  });

  await step('defaults-view', async () => {
    await page.locator('[data-testid="nav-defaults"]').click();
    await page.locator('[data-testid="defaults-table"]').waitFor();
    assert((await page.locator('[data-testid="page-title"]').innerText()) === 'Mesh-wide defaults', 'title');
    assert(await page.locator('[data-testid="nav-defaults"][aria-current="page"]').count(), 'nav item not current');
    const rows = await page.locator('[data-testid="defaults-table"] tbody tr').count();
    assert(rows === 7, `${rows} mesh-wide values shown, want 7`);
    const applies = await page.locator('[data-testid="default-applies-global.proxy.excludeIPRanges"] summary').innerText();
    assert(/^Applies to \d+ workloads?/.test(applies), `applies-to says "${applies}"`);
    await flow.accessibility('the defaults page');
  });

  await step('defaults-invalid-refused', async () => {
    const input = page.locator('[data-testid="default-input-global.proxy.excludeInboundPorts"]');
    await input.fill('70000');
    const err = page.locator('[data-testid="default-error-global.proxy.excludeInboundPorts"]');
    await err.waitFor({ state: 'visible' });
    assert((await err.innerText()).includes('70000'), `inline error: ${await err.innerText()}`);
    const before = (await apiCall('GET', '/api/v1/defaults')).data;
    await page.locator('[data-testid="defaults-save"]').click();
    const msg = page.locator('[data-testid="defaults-error"]');
    await msg.waitFor();
    const text = await msg.innerText();
    assert(text.includes('Nothing saved') && text.includes('70000'), `the refusal does not name the value: ${text}`);
    const after = (await apiCall('GET', '/api/v1/defaults')).data;
    assert(after.resourceVersion === before.resourceVersion
      && JSON.stringify(after.values) === JSON.stringify(before.values), 'an invalid value changed the defaults');
    await page.locator('[data-testid="defaults-reset"]').click();
    await page.waitForFunction(() => document.querySelector('[data-testid="default-input-global.proxy.excludeInboundPorts"]').value !== '70000');
  });

  await step('defaults-edit', async () => {
    const input = page.locator('[data-testid="default-input-global.proxy.excludeIPRanges"]');
    await input.fill(MESH_RANGE);
    await page.locator('[data-testid="defaults-save"]').click();
    const saved = page.locator('[data-testid="defaults-changes"]');
    await saved.waitFor();
    log(`  ${(await saved.innerText()).split('\n').slice(0, 3).join(' | ')}`);
    const now = (await apiCall('GET', '/api/v1/defaults')).data;
    assert(now.values['global.proxy.excludeIPRanges'] === MESH_RANGE, `the defaults hold ${now.values['global.proxy.excludeIPRanges']}`);
    await toastText('success', 'Mesh-wide defaults saved');
    await dismissToasts();
  });

  await step('list-shows-mesh-values', async () => {
    await page.locator('[data-testid="nav-workload"]').click();
    await page.locator('[data-testid="workloads-card"]').waitFor({ state: 'visible' });
    await page.locator('#filter-namespace').selectOption(A.ns);
    // A workload that sets no excludeOutboundIPRanges shows the mesh-wide range, marked.
    const line = page.locator(`[data-testid="pt-outboundIpRanges-${A.tid}"]`);
    await line.waitFor();
    assert((await line.getAttribute('data-source')) === 'mesh', `source ${await line.getAttribute('data-source')}`);
    assert((await line.innerText()).includes(MESH_RANGE), `list shows ${await line.innerText()}`);
  });

  await step('select-rows', async () => {
    await page.locator(`${row(A)} [data-testid="row-select"]`).check();
    // Keyboard: Tab-reachable checkbox, Space ticks it.
    await page.locator(`${row(B)} [data-testid="row-select"]`).focus();
    await page.keyboard.press('Space');
    const count = await page.locator('[data-testid="batch-count"]').innerText();
    assert(count.startsWith('2 workloads selected'), `batch bar says "${count}"`);
    const head = await page.locator('[data-testid="select-page"]').evaluate((e) => ({ checked: e.checked, indeterminate: e.indeterminate }));
    const onPage = await page.locator('[data-testid="workload-rows"] tr[data-key]').count();
    assert(onPage === 2 ? head.checked : head.indeterminate, `header checkbox ${JSON.stringify(head)} with ${onPage} rows`);
    await flow.accessibility('the list with a selection');
  });

  await step('batch-dialog-keyboard', async () => {
    // The batch action, its dialog and the list operations all work from the keyboard.
    await page.locator('[data-testid="batch-passthrough"]').focus();
    await page.keyboard.press('Enter');
    const dlg = page.locator('[data-testid="batch-dialog"]');
    await dlg.waitFor();
    await page.waitForFunction(() => document.activeElement && document.activeElement.id === 'batch-op-inbound-keep');
    await page.keyboard.press('ArrowRight');
    assert(await dlg.locator('[data-testid="batch-op-inbound-add"]').isChecked(), 'ArrowRight did not choose Add');
    await page.keyboard.press('Tab');
    const focused = await page.evaluate(() => document.activeElement && document.activeElement.dataset.testid);
    assert(focused === 'chip-input-batch-inbound', `Tab after Add focuses ${focused}, want the items input`);
    // Focus stays inside the dialog however far one tabs.
    for (let i = 0; i < 40; i += 1) await page.keyboard.press('Tab');
    assert(await dlg.evaluate((el) => el.contains(document.activeElement)), 'Tab left the dialog');
    await page.keyboard.press('Escape');
    await dlg.waitFor({ state: 'detached' });
    const back = await page.evaluate(() => document.activeElement && document.activeElement.dataset.testid);
    assert(back === 'batch-passthrough', `after Esc the focus is on ${back}, want the batch button`);
  });

  let d;
  await step('batch-dialog-invalid', async () => {
    d = await openBatchDialog();
    const sub = await d.locator('[data-testid="batch-subtitle"]').innerText();
    assert(sub.includes('2 workloads') && sub.includes(A.key) && sub.includes(B.key), `subtitle "${sub}"`);
    await editList(d, 'inbound', 'add', ['70000']);
    const err = d.locator('[data-testid="batch-error-detail"]');
    await err.waitFor();
    const text = await err.innerText();
    assert(text.includes('excludeInboundPorts') && text.includes('70000'), `the API's error is not named: ${text}`);
    assert(await d.locator('[data-testid="chip-batch-inbound-70000"][data-invalid="true"]').count(), 'the bad chip is not marked');
    const before = await settingsOf(A);
    await d.locator('[data-testid="batch-confirm"]').click();
    await d.locator('[data-testid="batch-error"]').waitFor();
    assert(JSON.stringify(await settingsOf(A)) === JSON.stringify(before), 'an invalid batch changed a workload');
    assert(await d.locator('[data-testid="batch-results"]').count() === 0, 'an invalid batch showed results');
    await d.locator('[data-testid="batch-op-inbound-keep"]').check();
  });

  await step('batch-preview', async () => {
    await editList(d, 'outbound-ports', 'add', [OUT_PORT]);
    await page.waitForFunction(() => !document.querySelector('[data-testid="batch-error"]'));
    const outcomes = await previewRows(2);
    assert(outcomes[A.key] === 'wouldChange' && outcomes[B.key] === 'wouldChange', `preview ${JSON.stringify(outcomes)}`);
    const cell = d.locator(`[data-testid="batch-row-${A.tid}"] td[data-field="outboundPorts"]`);
    assert((await cell.innerText()).includes(`+${OUT_PORT}`), `preview cell: ${await cell.innerText()}`);
    // Nothing is written by the preview.
    assert(!((await settingsOf(A)).outboundPorts || []).includes(OUT_PORT), 'the preview wrote');
    await flow.accessibility('the batch dialog with its preview');
    if (A.key === 'default/helloworld-v1') {
      // Excluding helloworld's port 5000 breaks its meshed client under mutual TLS: the
      // preview says so for that workload, as the single dialog does.
      await d.locator('[data-testid="batch-op-inbound-add"]').check();
      await d.locator('[data-testid="chip-batch-inbound-70000"] [data-testid="chip-remove"]').click();
      await editList(d, 'inbound', 'add', ['5000']);
      const impact = d.locator(`[data-testid="batch-row-${A.tid}"] [data-testid="batch-impact"] li[data-effect="fails"]`, { hasText: 'default/sleep' });
      await impact.first().waitFor();
      await d.locator('[data-testid="batch-op-inbound-keep"]').check();
      await page.waitForFunction((t) => !document.querySelector(`[data-testid="batch-row-${t}"] [data-testid="batch-impact"]`), A.tid);
    }
  });

  await step('batch-one-fails-others-succeed', async () => {
    // Someone changes B behind the dialog's back: B alone fails (409), A is changed.
    const bBefore = (await settingsOf(B)).outboundPorts || [];
    await setOutbound(B, [...bBefore, '9']);
    await d.locator('[data-testid="batch-confirm"]').click();
    const results = d.locator('[data-testid="batch-results"]');
    await results.waitFor();
    const a = d.locator(`[data-testid="batch-result-${A.tid}"]`);
    const b = d.locator(`[data-testid="batch-result-${B.tid}"]`);
    assert((await a.getAttribute('data-outcome')) === 'changed', `${A.key}: ${await a.getAttribute('data-outcome')}`);
    assert((await b.getAttribute('data-outcome')) === 'failed', `${B.key}: ${await b.getAttribute('data-outcome')}`);
    const why = await b.locator('[data-testid="batch-failure"]').innerText();
    assert(why.includes('409') && /changed since/.test(why), `the failure does not say why: ${why}`);
    const sum = await d.locator('[data-testid="batch-results-summary"]').innerText();
    assert(sum.includes('1 of 2 workloads not changed'), `summary: ${sum}`);
    // The toast says a workload failed and names it; it is not the success toast.
    const t = await toastText('error', 'failed');
    assert(t.includes(B.key), `the error toast does not name ${B.key}: ${t}`);
    assert(!(await page.locator('[data-testid="toast"][data-type="success"]', { hasText: SUCCESS }).count()), 'a success toast hid the failure');
    assert(((await settingsOf(A)).outboundPorts || []).includes(OUT_PORT), `${A.key} did not get ${OUT_PORT}`);
    assert(!((await settingsOf(B)).outboundPorts || []).includes(OUT_PORT), `${B.key} was changed although it failed`);
    assert(((await settingsOf(B)).outboundPorts || []).includes('9'), `${B.key} lost the concurrent change`);
    await flow.accessibility('the batch outcome');
    await dismissToasts();
  });

  await step('retry-failed-with-restart', async () => {
    await d.locator('[data-testid="batch-retry"]').click();
    // The results dialog gives way to a new one once the workloads' versions are re-read.
    await page.locator('[data-testid="batch-retry"]').waitFor({ state: 'detached' });
    d = page.locator('[data-testid="batch-dialog"]');
    await d.waitFor();
    const sub = await d.locator('[data-testid="batch-subtitle"]').innerText();
    assert(sub.includes('1 workload') && sub.includes(B.key), `retry dialog subtitle "${sub}"`);
    const outcomes = await previewRows(1);
    assert(outcomes[B.key] === 'wouldChange', `retry preview ${JSON.stringify(outcomes)}`);
    await d.locator('[data-testid="batch-restart-now"]').check();
    await d.locator('[data-testid="batch-confirm"]').click();
    await d.locator('[data-testid="batch-results"]').waitFor();
    assert((await d.locator(`[data-testid="batch-result-${B.tid}"]`).getAttribute('data-outcome')) === 'changed', 'retry did not change');
    await toastText('success', SUCCESS);
    await page.locator(`[data-testid="operation-${B.tid}"]`).waitFor();
    const s = await settingsOf(B);
    assert(s.outboundPorts.includes(OUT_PORT) && s.outboundPorts.includes('9'), `${B.key} has ${JSON.stringify(s.outboundPorts)}`);
    await d.locator('[data-testid="batch-close"]').click();
    await d.waitFor({ state: 'detached' });
    await dismissToasts();
  });

  await step('single-dialog-effective', async () => {
    await page.locator(`${row(A)} [data-testid="row-menu"]`).click();
    await page.locator('[data-testid="menu-passthrough"]').click();
    const dlg = page.locator('[data-testid="passthrough-dialog"]');
    await dlg.waitFor();
    const eff = dlg.locator('[data-testid="effective-row"][data-annotation="traffic.sidecar.istio.io/excludeOutboundIPRanges"]');
    await eff.waitFor();
    assert((await eff.getAttribute('data-source')) === 'mesh', `excludeOutboundIPRanges source ${await eff.getAttribute('data-source')}`);
    assert((await eff.innerText()).includes(MESH_RANGE), `in force: ${await eff.innerText()}`);
    const note = dlg.locator('[data-testid="mesh-note-outbound-ip-ranges"]');
    assert((await note.innerText()).includes(MESH_RANGE), `no mesh note: ${await note.innerText()}`);
    // Setting the workload's own range replaces the mesh-wide one: the preview warns.
    const input = dlg.locator('[data-testid="chip-input-outbound-ip-ranges"]');
    await input.fill('192.168.0.0/16');
    await input.press('Enter');
    await dlg.locator('[data-testid="warning"]', { hasText: MESH_RANGE }).first().waitFor();
    await flow.accessibility('the single-workload dialog');
    await page.keyboard.press('Escape');
    await dlg.waitFor({ state: 'detached' });
  });

  if (fleet.length > 20) {
    await step('select-all-matching-filter', async () => {
      if (await page.locator('[data-testid="clear-selection"]').isVisible()) await page.locator('[data-testid="clear-selection"]').click();
      await page.locator('#filter-namespace').selectOption(FLEET_NS);
      await page.locator('[data-testid="select-page"]').check();
      let count = await page.locator('[data-testid="batch-count"]').innerText();
      assert(count.startsWith('20 workloads selected'), `after ticking the page: "${count}"`);
      await page.locator('[data-testid="select-matching"]').click();
      count = await page.locator('[data-testid="batch-count"]').innerText();
      assert(count === `All ${fleet.length} workloads matching the filter selected`, `after select-all-matching: "${count}"`);
      await page.locator('[data-testid="page-next"]').click();
      assert(await page.locator('[data-testid="workload-rows"] tr[data-key] [data-testid="row-select"]:not(:checked)').count() === 0, 'page 2 rows are not selected');
    });

    await step('batch-over-the-filter', async () => {
      d = await openBatchDialog();
      assert((await d.locator('[data-testid="batch-subtitle"]').innerText()).includes(`${fleet.length} workloads`), 'subtitle count');
      await editList(d, 'outbound-ip-ranges', 'add', [FLEET_RANGE]);
      const outcomes = await previewRows(fleet.length);
      assert(Object.values(outcomes).every((o) => o === 'wouldChange'), 'not every fleet workload would change');
      const box = await d.boundingBox();
      assert(box && box.y >= 0 && box.y + box.height <= 800 + 1, `the dialog leaves the window: ${JSON.stringify(box)}`);
      await d.locator('[data-testid="batch-confirm"]').click();
      await d.locator('[data-testid="batch-results"]').waitFor();
      const changed = await d.locator('[data-testid^="batch-result-"][data-outcome="changed"]').count();
      assert(changed === fleet.length, `${changed} of ${fleet.length} changed`);
      await toastText('success', SUCCESS);
      const one = fleet[fleet.length - 1];
      const s = await settingsOf({ ns: one.namespace, name: one.name });
      assert(s.outboundIpRanges.includes(FLEET_RANGE), `${one.namespace}/${one.name} has ${JSON.stringify(s.outboundIpRanges)}`);
      await page.keyboard.press('Escape');
      await d.waitFor({ state: 'detached' });
    });
  } else {
    log(`  namespace ${FLEET_NS} has ${fleet.length} workloads (one page): the all-matching steps are skipped`);
  }
  await flow.close();
  // Leave the two workloads and the defaults as found.
  await ensureClean();
  for (const w of [B]) {
    const s = await settingsOf(w);
    if ((s.outboundPorts || []).includes('9')) await setOutbound(w, s.outboundPorts.filter((p) => p !== '9'));
  }
}

flow.run(main);
