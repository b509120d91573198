/**
 * The web console in a real headless Chromium (Debian's `chromium`, driven by playwright-core) against the
 * real stack (Redis, S3, API, a worker): load the page, stream a completion whose text equals the API's,
 * tokens marked accepted-draft / verified-only, create a tenant and a key in the console and see the API
 * accept it, revoke it in the console and see the API refuse it; a screenshot of each view is saved to
 * .tmp/console-screenshots. Set PPSD_CHROMIUM to use another binary.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MODEL, ROOT, type Stack, startStack } from '../helpers/stack';

const SHOTS = join(ROOT, '.tmp/console-screenshots');

function chromiumPath(): string {
  const given = process.env.PPSD_CHROMIUM;
  if (given) return given;
  for (const name of ['chromium', 'chromium-browser']) {
    try {
      return execFileSync('which', [name], { encoding: 'utf8' }).trim();
    } catch {}
  }
  throw new Error(
    "no chromium found: install Debian's chromium (apt-get install -y chromium; scripts/setup.sh does) or set PPSD_CHROMIUM",
  );
}

let stack: Stack;
let browser: Browser;
let page: Page;
const foreign: string[] = [];

beforeAll(async () => {
  const executablePath = chromiumPath();
  [stack, browser] = await Promise.all([
    startStack(),
    chromium.launch({ executablePath, headless: true, args: ['--no-sandbox', '--disable-gpu'] }),
  ]);
  mkdirSync(SHOTS, { recursive: true });
  page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  page.on('request', (r) => {
    if (!r.url().startsWith(stack.apiUrl)) foreign.push(r.url());
  });
  page.on('pageerror', (e) => foreign.push(`page error: ${e.message}`));
}, 180_000);

afterAll(async () => {
  await browser?.close();
  await stack?.stop();
});

const v1 = (key: string) =>
  fetch(`${stack.apiUrl}/v1/models`, { headers: { Authorization: `Bearer ${key}` } });

describe('web console', () => {
  it('loads from the API itself and keeps the keys in the browser', async () => {
    const res = await page.goto(`${stack.apiUrl}/console`);
    expect(res?.status()).toBe(200);
    expect(res?.headers()['content-security-policy']).toContain("default-src 'self'");
    await page.fill('#api-key', stack.apiKey);
    await page.fill('#admin-key', stack.adminKey);
    await page.click('#keys button[type=submit]');
    await page.waitForSelector(`#model option[value="${MODEL}"]`, { state: 'attached' });
    expect(await page.evaluate(() => localStorage.getItem('ppsd.apiKey'))).toBe(stack.apiKey);
  });

  it('playground: streams a completion equal to the API answer, tokens marked draft / verified', async () => {
    await page.selectOption('#decoder', 'dv');
    await page.fill('#max-tokens', '32');
    await page.fill('#temperature', '0');
    await page.fill('#prompt', 'Once upon a time');
    await page.click('#run');
    await page.waitForSelector('#output[data-done="1"]', { timeout: 60_000 });
    const shown = await page.textContent('#output');

    const res = await fetch(`${stack.apiUrl}/v1/completions`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${stack.apiKey}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({
        model: MODEL,
        prompt: 'Once upon a time',
        max_tokens: 32,
        temperature: 0,
        speculation: { decoder: 'dv' },
      }),
    });
    const api = (await res.json()) as { choices: { text: string }[]; usage: { completion_tokens: number } };
    expect(shown).toBe(api.choices[0].text);
    expect(shown!.length).toBeGreaterThan(20);

    // dv drafts with skipped sub-layers: some tokens are accepted drafts, the rest the verifier's own
    expect(await page.locator('#output .tok.draft').count()).toBeGreaterThan(0);
    expect(await page.locator('#output .tok.verified').count()).toBeGreaterThan(0);
    expect(await page.textContent('[data-stat="decoder"] b')).toBe('dv');
    expect(await page.textContent('[data-stat="acceptance"] b')).toMatch(/^\d+(\.\d)?% \(\d+\/\d+\)$/);
    expect(Number(await page.textContent('[data-stat="tokens/s"] b'))).toBeGreaterThan(0);
    expect(await page.textContent('[data-stat="usage"] b')).toContain(
      `${api.usage.completion_tokens} completion`,
    );
    await page.screenshot({ path: join(SHOTS, 'playground.png'), fullPage: true });
  });

  it('tenants and keys: a key issued in the console works; revoked in the console, the API refuses it', async () => {
    await page.click('nav button[data-view="tenants"]');
    await page.waitForSelector('#tenants-table tbody tr');
    await page.fill('#tenant-id', 'browserco');
    await page.click('#new-tenant button[type=submit]');
    await page.waitForSelector('button[data-issue="browserco"]');
    await page.click('button[data-issue="browserco"]');
    await page.waitForSelector('#issued:not([hidden])');
    const key = (await page.textContent('#new-key'))!.trim();
    expect(key).toMatch(/^ppsd_[a-z0-9]{12}_/);
    expect((await v1(key)).status).toBe(200);
    const prefix = key.slice(0, 'ppsd_'.length + 12);
    await page.waitForSelector(`button[data-revoke="${prefix}"]`);
    await page.screenshot({ path: join(SHOTS, 'tenants.png'), fullPage: true });

    await page.click(`button[data-revoke="${prefix}"]`);
    await page.waitForSelector(`button[data-revoke="${prefix}"]`, { state: 'detached' });
    expect((await v1(key)).status).toBe(401);
    const row = page.locator('#keys-table tr', { hasText: prefix });
    expect(await row.textContent()).toContain('revoked');
  });

  it('usage: tokens per tenant over time as a chart', async () => {
    await page.click('nav button[data-view="usage"]');
    await page.waitForSelector(`#usage-chart rect[data-tenant="${stack.tenant}"]`);
    expect(await page.locator('#usage-table tbody tr').count()).toBeGreaterThan(0);
    expect(await page.textContent('#usage-table')).toContain(MODEL);
    await page.screenshot({ path: join(SHOTS, 'usage.png'), fullPage: true });
  });

  it('live: queue depth, the worker and its device plan, acceptance and tokens/s from the metrics', async () => {
    await page.click('nav button[data-view="live"]');
    const card = page.locator(`.model-card[data-model="${MODEL}"]`);
    await card.waitFor();
    expect(await card.textContent()).toContain('cpu');
    expect(await card.locator('[data-stat="queue waiting"] b').textContent()).toMatch(/^\d+$/);
    expect(await card.locator('[data-stat="acceptance (all time)"] b').textContent()).toMatch(/%$/);
    // the second poll has a rate
    await page.waitForFunction(
      () => !document.querySelector('[data-stat="tokens/s (now)"] b')?.textContent?.includes('measuring'),
      undefined,
      { timeout: 10_000 },
    );
    await page.screenshot({ path: join(SHOTS, 'live.png'), fullPage: true });
    expect(existsSync(join(SHOTS, 'live.png'))).toBe(true);
  });

  it('fetched nothing from any other origin and raised no page error', () => {
    expect(foreign).toEqual([]);
  });
});
