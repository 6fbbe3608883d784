#!/usr/bin/env node
// Browser test of the web GUI over several clusters, one of them unreachable: the Cluster
// column and filter, the badge of the cluster that did not answer, and the passthrough dialog
// naming the workload's cluster (its reads and previews addressed to that cluster).
//
//   MESHPASS_URL=http://127.0.0.1:15180 MESHPASS_TOKEN=… node e2e/cluster-column.mjs
//
// env: MESHPASS_URL, MESHPASS_TOKEN (required), E2E_ARTIFACTS (screenshots), E2E_CLUSTER (the
// cluster that answers, default east), E2E_DOWN (the one that does not, default west),
// E2E_WORKLOAD (default default/helloworld-v1), CHROMIUM (default /usr/bin/chromium, see harness.mjs).
// Exit code 0 when every step passed, 1 otherwise (2 on bad usage).

import path from 'node:path';
import { Flow, assert } from './harness.mjs';

const BASE = (process.env.MESHPASS_URL || '').replace(/\/+$/, '');
const TOKEN = process.env.MESHPASS_TOKEN || '';
const ARTIFACTS = path.resolve(process.env.E2E_ARTIFACTS || 'e2e-artifacts');
const UP = process.env.E2E_CLUSTER || 'east';
const DOWN = process.env.E2E_DOWN || 'west';
const [NS, NAME] = (process.env.E2E_WORKLOAD || 'default/helloworld-v1').split('/');
if (!BASE || !TOKEN) {
  console.error('usage: MESHPASS_URL=URL MESHPASS_TOKEN=TOKEN node e2e/cluster-column.mjs');
  process.exit(2);
}

// Test ids are namespace-name (the row's data-key names the cluster as well).
const tid = `${NS}-${NAME}`;
const row = `[data-testid="workload-row-${tid}"]`;
const flow = new Flow({ tag: 'cluster-column', artifacts: ARTIFACTS, prefix: 'cluster-column-' });
const step = (name, fn) => flow.step(name, fn);
let page;

async function main() {
  page = await flow.open({ timeout: 15000 });
  await step('cluster-column-and-badge', async () => {
    await page.goto(`${BASE}/?token=${encodeURIComponent(TOKEN)}`, { waitUntil: 'domcontentloaded' });
    await page.locator(row).waitFor({ state: 'visible' });
    const key = await page.locator(row).getAttribute('data-key');
    assert(key === `${UP}:${NS}/${NAME}`, `the row's key is "${key}"`);
    assert(await page.locator('thead th', { hasText: 'Cluster' }).isVisible(), 'no Cluster column');
    const cell = (await page.locator(`[data-testid="cluster-${tid}"]`).innerText()).trim();
    assert(cell === UP, `Cluster cell says "${cell}", want ${UP}`);
    const badge = page.locator(`[data-testid="cluster-unreachable-${DOWN}"]`);
    await badge.waitFor({ state: 'visible' });
    const text = (await badge.innerText()).trim();
    assert(text === `${DOWN}: unreachable`, `badge says "${text}"`);
    assert((await badge.getAttribute('title') || '').length > 0, 'the badge does not say why');
    const options = await page.locator('[data-testid="filter-cluster"] option').allInnerTexts();
    assert(JSON.stringify(options) === JSON.stringify(['All clusters', UP, `${DOWN} (unreachable)`]), `filter options ${JSON.stringify(options)}`);
    await flow.accessibility('the workload list with the Cluster column and an unreachable cluster');
  });

  await step('cluster-filter', async () => {
    const filter = page.locator('[data-testid="filter-cluster"]');
    await filter.selectOption(DOWN);
    await page.locator('[data-testid="empty-list"]').waitFor({ state: 'visible' });
    await filter.selectOption(UP);
    await page.locator(row).waitFor({ state: 'visible' });
    await filter.selectOption('');
  });

  await step('dialog-names-the-cluster', async () => {
    await page.locator(`${row} [data-testid="row-menu"]`).click();
    await page.locator('[data-testid="menu-passthrough"]').click();
    const dialog = page.locator('[data-testid="passthrough-dialog"]');
    await dialog.waitFor({ state: 'visible' });
    await page.waitForFunction(() => { const d = document.querySelector('[data-testid="passthrough-dialog"]'); return d && !d.classList.contains('loading'); });
    const c = (await dialog.locator('[data-testid="dialog-cluster"]').innerText()).trim();
    const w = (await dialog.locator('[data-testid="dialog-workload"]').innerText()).trim();
    assert(c === UP && w === `${NS}/${NAME}`, `dialog names cluster "${c}", workload "${w}"`);
    const errors = (await dialog.locator('[data-testid="dialog-error-area"]').innerText()).trim();
    assert(!errors, `the dialog shows an error: ${errors}`);
    await flow.accessibility('the Traffic passthrough settings dialog of a cluster\'s workload');
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
  });
}

flow.run(main);
