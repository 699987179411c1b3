/**
 * The experiment web page in a real headless Chromium (Debian's /usr/bin/chromium driven by
 * playwright-core; no browser is ever downloaded), against a real pipeline: the page loads the
 * experiment from the API, every output image loads from its presigned URL, and "Pick winner" records
 * the winner through the API. Skipped only when /usr/bin/chromium is missing (CI installs it).
 */
import { existsSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startPipeline, type Pipeline } from '../support/pipeline.js';
import { createExperiment, getExperiment, settleExperiment } from '../support/experiments.js';

const CHROMIUM = '/usr/bin/chromium';
const hasChromium = existsSync(CHROMIUM);
const SCREENSHOT = '/tmp/pixelmill-experiment-page.png';

let browser: Browser | undefined;
let p: Pipeline | undefined;

beforeAll(async () => {
  if (!hasChromium) return;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync',
    ],
  });
});
afterAll(async () => {
  await browser?.close();
});
afterEach(async () => {
  await p?.close();
  p = undefined;
});

/** The little of the DOM these tests read (the project compiles without lib "dom"). */
interface LoadedImage {
  complete: boolean;
  naturalWidth: number;
  naturalHeight: number;
}
interface PageGlobals {
  document: { querySelectorAll(selector: string): ArrayLike<LoadedImage>; querySelector(selector: string): { textContent: string | null } | null };
  sessionStorage: { getItem(key: string): string | null };
}
/** Console errors and CSP violations the page produced (the favicon 404 is the browser's own doing). */
function watchErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !msg.location().url.endsWith('/favicon.ico')) errors.push(msg.text());
  });
  page.on('pageerror', (err) => errors.push(err.message));
  return errors;
}

async function allImagesLoaded(page: Page, count: number): Promise<void> {
  await page.waitForFunction(
    (n) => {
      const imgs = Array.from((globalThis as unknown as PageGlobals).document.querySelectorAll('figure.run img'));
      return imgs.length === n && imgs.every((img) => img.complete && img.naturalWidth > 0);
    },
    count,
    { timeout: 15_000 },
  );
}

const title = hasChromium
  ? 'experiment page in headless Chromium'
  : `experiment page in headless Chromium (SKIPPED: ${CHROMIUM} is missing; install Debian's chromium package, as .ci/run does)`;

describe.skipIf(!hasChromium)(title, () => {
  it('shows the variants side by side with model, latency and cost, and records the picked winner', async () => {
    p = await startPipeline();
    const made = await createExperiment(p, {
      prompt: 'a glass lighthouse on a cliff, golden hour',
      repeats: 2,
      variants: [
        { name: 'Nano Banana 2', model: 'fast', aspectRatio: '16:9' },
        { name: 'Nano Banana Pro', model: 'pro', aspectRatio: '16:9' },
        // Prompt text that looks like HTML must stay text.
        { name: 'html-in-prompt', model: 'fast', size: '512', promptSuffix: ' <img src=x id=injected onerror="document.title=1">' },
        { name: 'blocked', model: 'fast', promptSuffix: ' [sim:block]' },
      ],
    });
    expect(made.status).toBe(202);
    const id = made.body['id'] as string;
    const view = await settleExperiment(p, id);
    const succeeded = view['counts'].succeeded as number;
    expect(succeeded).toBe(6);

    const page = await browser!.newPage({ viewport: { width: 1400, height: 1000 } });
    const errors = watchErrors(page);
    try {
      await page.goto(`${p.api.url}/experiments/${id}`);
      await page.waitForSelector('article.variant[data-variant="blocked"]');
      await allImagesLoaded(page, succeeded);

      // Every image came from its presigned URL at the size the run reports.
      const sizes = await page.$$eval('figure.run img', (imgs) => (imgs as unknown as LoadedImage[]).map((i) => [i.naturalWidth, i.naturalHeight]));
      expect(sizes.sort()).toEqual([[1376, 768], [1376, 768], [1376, 768], [1376, 768], [512, 512], [512, 512]]);

      for (const variant of view['variants'] as any[]) {
        const card = page.locator(`article.variant[data-variant="${variant.name}"]`);
        for (const run of variant.runs) {
          const figure = card.locator(`figure.run[data-run="${run.repeat}"]`);
          if (run.status === 'succeeded') {
            await expect(figure.locator('dd.v-model').textContent()).resolves.toBe(run.model);
            await expect(figure.locator('dd.v-latency').textContent()).resolves.toMatch(/^\d+(\.\d)? (ms|s)$/);
            await expect(figure.locator('dd.v-cost').textContent()).resolves.toBe(`$${run.costUsd.toFixed(4)}`);
          } else {
            await expect(figure.textContent()).resolves.toContain('CONTENT_BLOCKED');
          }
        }
      }
      expect(await page.locator('article.variant[data-variant="blocked"] button.pick').isDisabled()).toBe(true);
      expect(await page.locator('article.variant[data-variant="html-in-prompt"] details p').textContent()).toContain('<img src=x id=injected');
      expect(await page.locator('#injected').count()).toBe(0);
      expect(await page.locator('#status').textContent()).toBe('completed');

      await page.locator('article.variant[data-variant="Nano Banana Pro"] button.pick').click();
      await page.waitForSelector('article.variant.winner[data-variant="Nano Banana Pro"]');
      await expect(page.locator('#message').textContent()).resolves.toBe('Winner recorded: Nano Banana Pro.');
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
      const after = await getExperiment(p, id);
      expect(after.body['winner']).toMatchObject({ variant: 'Nano Banana Pro' });
      // Still no reload of the images: the same elements stayed loaded.
      await allImagesLoaded(page, succeeded);
      expect(errors).toEqual([]);
    } finally {
      await page.close();
    }
  });

  it('asks for the API key when the API needs one, keeps it out of the URL, and then works', async () => {
    const KEY = 'page-key-0123456789abcdef';
    p = await startPipeline({ env: { API_KEYS: `web:${KEY}`, HOST: '127.0.0.1' } });
    const made = await createExperiment(p, { prompt: 'a red kite exp-page-auth', variants: [{ name: 'a', model: 'fast' }, { name: 'b', model: 'fast', size: '512' }] }, KEY);
    const id = made.body['id'] as string;
    await settleExperiment(p, id, KEY);

    const page = await browser!.newPage();
    const errors = watchErrors(page);
    try {
      await page.goto(`${p.api.url}/experiments/${id}`);
      await page.waitForSelector('#api-key', { state: 'visible' });
      await page.fill('#api-key', 'wrong-key-0123456789');
      await page.click('#auth-form button[type="submit"]');
      await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelector('#auth-note')?.textContent?.includes('refused'));
      await page.fill('#api-key', KEY);
      await page.click('#auth-form button[type="submit"]');
      await allImagesLoaded(page, 2);
      expect(page.url()).toBe(`${p.api.url}/experiments/${id}`);
      expect(await page.evaluate(() => (globalThis as unknown as PageGlobals).sessionStorage.getItem('pixelmill.apiKey'))).toBe(KEY);
      await page.locator('article.variant[data-variant="b"] button.pick').click();
      await page.waitForSelector('article.variant.winner[data-variant="b"]');
      expect((await getExperiment(p, id, KEY)).body['winner'].variant).toBe('b');
      // The refused key's 401 is the only error the console saw.
      expect(errors.filter((e) => !e.includes('401'))).toEqual([]);
    } finally {
      await page.close();
    }
  });
});
