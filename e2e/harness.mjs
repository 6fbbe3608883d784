// The browser tests' common frame: headless Chromium through playwright-core, numbered steps
// with a screenshot each (and one named FAILED on failure), page errors and
// Content-Security-Policy violations failing the step, assertions, the exit code.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

const require = createRequire(import.meta.url);

export function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

/** `call(method, path, body?, headers?)` against the API at `base` with the bearer `token`:
 * `{data, etag}`, or an Error naming the request and the answer. */
export function apiClient(base, token) {
  return async (method, p, body, headers = {}) => {
    const res = await fetch(`${base}${p}`, {
      method, headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json', ...headers }, body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text.slice(0, 300)}`);
    return { data: text ? JSON.parse(text) : null, etag: res.headers.get('etag') };
  };
}

export class Flow {
  /** `tag`: the log prefix; `artifacts`: the screenshot folder; `prefix`: of each file name. */
  constructor({ tag, artifacts, prefix = '' }) {
    this.tag = tag;
    this.artifacts = artifacts;
    this.prefix = prefix;
    this.page = null;
    this.stepNo = 0;
    this.problems = []; // page errors / CSP violations seen while running
    this.t0 = Date.now();
    fs.mkdirSync(artifacts, { recursive: true });
  }

  log(msg) {
    console.log(`[${this.tag} ${((Date.now() - this.t0) / 1000).toFixed(1).padStart(5)}s] ${msg}`);
  }

  async shot(name) {
    const file = path.join(this.artifacts, `${this.prefix}${String(this.stepNo).padStart(2, '0')}-${name}.png`);
    try { await this.page.screenshot({ path: file, fullPage: false }); } catch (e) { this.log(`  (screenshot failed: ${e.message})`); }
    return file;
  }

  async step(name, fn) {
    this.stepNo += 1;
    const start = Date.now();
    this.log(`step ${this.stepNo}: ${name} …`);
    try {
      await fn();
    } catch (e) {
      const file = await this.shot(`${name}-FAILED`);
      this.log(`step ${this.stepNo}: ${name} FAILED after ${Date.now() - start} ms: ${e.message.split('\n')[0]}`);
      console.error(e.stack || e);
      this.log(`  screenshot: ${file}`);
      throw e;
    }
    if (this.problems.length) {
      const p = this.problems.splice(0);
      throw new Error(`the page reported errors during "${name}": ${p.join(' | ')}`);
    }
    const file = await this.shot(name);
    this.log(`step ${this.stepNo}: ${name} ok (${Date.now() - start} ms) → ${path.basename(file)}`);
  }

  /** Starts Chromium (`CHROMIUM`, default /usr/bin/chromium; `E2E_HEADED=1` shows it) with a
   * fresh profile, 1280×800; returns the page. */
  async open({ timeout }) {
    this.userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'meshpass-e2e-chromium-'));
    // A fresh --user-data-dir (playwright passes it for a persistent context).
    this.context = await chromium.launchPersistentContext(this.userDataDir, {
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      headless: !process.env.E2E_HEADED,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
      viewport: { width: 1280, height: 800 },
      deviceScaleFactor: 1,
    });
    const page = this.context.pages()[0] || await this.context.newPage();
    page.setDefaultTimeout(timeout);
    page.on('pageerror', (e) => this.problems.push(`uncaught: ${e.message}`));
    page.on('console', (m) => {
      const text = m.text();
      if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(text)) this.problems.push(`CSP: ${text}`);
      if (m.type() === 'error' && !/favicon|status of 4\d\d|status of 501/.test(text)) this.log(`  [browser console] ${text}`);
    });
    this.page = page;
    return page;
  }

  /**
   * Checks the page as it is now with axe-core against WCAG 2.1 A and AA: any serious or
   * critical violation fails, naming the rule and the first elements. Without axe-core
   * installed this is skipped with a message, unless CI is set: then it fails.
   */
  async accessibility(label) {
    let source;
    try {
      source = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
    } catch (e) {
      const msg = 'axe-core is missing (cd e2e && npm ci)';
      if (process.env.CI) throw new Error(msg);
      this.log(`  SKIPPED accessibility check of ${label}: ${msg}`);
      return;
    }
    // Colours are judged as they end up, not half-way through a dialog's fade-in.
    await this.page.evaluate(() => Promise.all(document.getAnimations()
      .filter((a) => a.effect && a.effect.getTiming().iterations !== Infinity)
      .map((a) => a.finished.catch(() => {}))));
    // Evaluated over the DevTools protocol, so the page's Content-Security-Policy stays as it is.
    if (!(await this.page.evaluate(() => typeof window.axe === 'object'))) await this.page.evaluate(source);
    const result = await this.page.evaluate(() => window.axe.run(document, {
      runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
      resultTypes: ['violations'],
    }));
    const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
    if (process.env.E2E_A11Y_DETAIL) {
      for (const v of result.violations) for (const n of v.nodes) this.log(`  ${v.id}: ${n.target.join(' ')}: ${(n.failureSummary || '').replace(/\s+/g, ' ')}`);
    }
    for (const v of result.violations.filter((x) => !bad.includes(x))) this.log(`  accessibility (${label}, ${v.impact}): ${v.id}: ${v.help}`);
    if (bad.length) {
      throw new Error(`accessibility of ${label}: ${bad.map((v) => `${v.id} (${v.impact}): ${v.help} — ${
        v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}${v.nodes.length > 3 ? ` and ${v.nodes.length - 3} more` : ''}`).join('; ')}`);
    }
    this.log(`  accessibility of ${label}: no serious or critical WCAG 2.1 AA violation (${result.violations.length} minor)`);
  }

  async close() {
    if (this.context) await this.context.close().catch(() => {});
    if (this.userDataDir) fs.rmSync(this.userDataDir, { recursive: true, force: true });
    this.context = null;
    this.userDataDir = null;
  }

  /** Runs `main`, closes the browser, exits 0 when every step passed, 1 otherwise. */
  run(main) {
    main().finally(() => this.close()).then(() => {
      this.log(`PASS: ${this.stepNo} steps; screenshots in ${this.artifacts}`);
      console.log(`${this.stepNo} passed, 0 failed`);
      process.exit(0);
    }, (e) => {
      this.log(`FAIL: ${e.message.split('\n')[0]}`);
      console.log(`${Math.max(0, this.stepNo - 1)} passed, 1 failed`);
      process.exit(1);
    });
  }
}
