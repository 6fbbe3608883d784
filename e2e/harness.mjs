// The browser tests' common frame: headless Chromium through playwright-core, numbered steps
// with a screenshot each (and one named FAILED on failure), page errors and
// Content-Security-Policy violations failing the step, assertions, the exit code.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

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
