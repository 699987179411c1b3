/**
 * Input images by URL: fetched by the worker through the SSRF guard from a real local HTTP server,
 * with the size limit, timeout, redirect and magic-byte rules; end to end through the pipeline.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { configFrom } from '../../src/config/env.js';
import { isPixelmillError, type PixelmillError } from '../../src/errors/catalogue.js';
import { createInputImageFetcher, sniffImageType } from '../../src/net/fetch-input-image.js';
import { startPipeline, type Pipeline } from '../support/pipeline.js';

let png: Buffer;
let jpeg: Buffer;
let webp: Buffer;
let server: Server;
let base = '';
const hits: string[] = [];
const sockets = new Set<Socket>();

beforeAll(async () => {
  const img = sharp({ create: { width: 64, height: 48, channels: 3, background: { r: 200, g: 80, b: 40 } } });
  [png, jpeg, webp] = await Promise.all([img.clone().png().toBuffer(), img.clone().jpeg().toBuffer(), img.clone().webp().toBuffer()]);
  server = createServer((req, res) => {
    const path = req.url ?? '/';
    hits.push(path);
    const send = (type: string, body: Buffer) => {
      res.writeHead(200, { 'content-type': type, 'content-length': body.length });
      res.end(body);
    };
    if (path === '/fox.png') return send('image/png', png);
    if (path === '/fox.jpg') return send('application/octet-stream', jpeg); // the type comes from the bytes
    if (path === '/fox.webp') return send('image/webp', webp);
    if (path === '/page.html') return send('image/png', Buffer.from('<html>not an image</html>'));
    if (path === '/missing.png') {
      res.writeHead(404);
      return res.end('nope');
    }
    if (path === '/big-declared') return send('image/png', Buffer.concat([png, Buffer.alloc(5_000)]));
    if (path === '/big-streamed') {
      // No Content-Length: the limit must stop the stream itself.
      res.writeHead(200, { 'content-type': 'image/png' });
      res.write(png);
      const timer = setInterval(() => res.write(Buffer.alloc(1_000)), 5);
      res.on('close', () => clearInterval(timer));
      return;
    }
    if (path === '/hang') return; // never answers
    const hop = /^\/hop\/(\d+)$/.exec(path);
    if (hop) {
      const n = Number(hop[1]);
      res.writeHead(302, { location: n === 0 ? '/fox.png' : `/hop/${n - 1}` });
      return res.end();
    }
    if (path === '/to-metadata') {
      res.writeHead(301, { location: 'http://169.254.169.254/latest/meta-data/' });
      return res.end();
    }
    res.writeHead(500);
    res.end();
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  for (const s of sockets) s.destroy();
  await new Promise<void>((r) => server.close(() => r()));
});

const allowed = configFrom({ WEBHOOK_ALLOWED_CIDRS: '127.0.0.0/8', INPUT_URL_MAX_BYTES: 4_000, INPUT_URL_TIMEOUT_MS: 300 });
const fetchAllowed = createInputImageFetcher(allowed);
const fetchDefault = createInputImageFetcher(configFrom({}));

async function failure(fetcher: typeof fetchAllowed, url: string): Promise<PixelmillError> {
  const err = await fetcher(url, new AbortController().signal).then(() => undefined, (e: unknown) => e);
  if (!isPixelmillError(err)) throw new Error(`expected a PixelmillError, got ${String(err)}`);
  return err;
}

describe('input image fetcher', () => {
  it('fetches PNG, JPEG and WebP, typed by their bytes', async () => {
    const signal = new AbortController().signal;
    expect(await fetchAllowed(`${base}/fox.png`, signal)).toEqual({ mimeType: 'image/png', data: png });
    expect((await fetchAllowed(`${base}/fox.jpg`, signal)).mimeType).toBe('image/jpeg');
    expect((await fetchAllowed(`${base}/fox.webp`, signal)).mimeType).toBe('image/webp');
    expect(sniffImageType(Buffer.from('GIF89a......'))).toBeUndefined();
  });

  it('refuses loopback, private and metadata addresses unless allowed (INPUT_URL_REFUSED, not retryable)', async () => {
    for (const url of [`${base}/fox.png`, 'http://10.0.0.1/x.png', 'http://169.254.169.254/latest/meta-data/', `http://localhost:${new URL(base).port}/fox.png`]) {
      const err = await failure(fetchDefault, url);
      expect(err.code).toBe('INPUT_URL_REFUSED');
      expect(err.retryable).toBe(false);
    }
    expect(hits.filter((h) => h === '/fox.png').length).toBe(1); // only the allowed fetch above reached the server
  });

  it('follows up to 3 redirects, each hop through the guard', async () => {
    expect((await fetchAllowed(`${base}/hop/2`, new AbortController().signal)).mimeType).toBe('image/png');
    const tooMany = await failure(fetchAllowed, `${base}/hop/3`);
    expect(tooMany.code).toBe('INPUT_IMAGE_UNUSABLE');
    expect(tooMany.message).toMatch(/more than 3 redirects/);
    const toMetadata = await failure(fetchAllowed, `${base}/to-metadata`);
    expect(toMetadata.code).toBe('INPUT_URL_REFUSED');
    expect(toMetadata.message).toMatch(/169\.254\.169\.254 .*link-local/);
  });

  it.each([
    ['/missing.png', /answered HTTP 404/, 'INPUT_IMAGE_UNUSABLE'],
    ['/page.html', /is not a PNG, JPEG or WebP image/, 'INPUT_IMAGE_UNUSABLE'],
    ['/big-declared', /over INPUT_URL_MAX_BYTES \(4000\)/, 'INPUT_IMAGE_UNUSABLE'],
    ['/big-streamed', /over INPUT_URL_MAX_BYTES \(4000 bytes\)/, 'INPUT_IMAGE_UNUSABLE'],
    ['/hang', /INPUT_URL_TIMEOUT_MS \(300 ms\)/, 'INPUT_FETCH_FAILED'],
  ])('%s fails with %s naming the URL and the rule (retried only when it may pass later)', async (path, rule, code) => {
    const err = await failure(fetchAllowed, `${base}${path}`);
    expect(err.code).toBe(code);
    expect(err.retryable).toBe(code === 'INPUT_FETCH_FAILED');
    expect(err.message).toContain(`${base}${path}`);
    expect(err.message).toMatch(rule);
  });
});

describe('input images by URL, end to end', () => {
  let p: Pipeline | undefined;
  afterEach(async () => {
    await p?.close();
    p = undefined;
  });

  it('a URL input image is fetched by the worker and sent to the model', async () => {
    p = await startPipeline({ env: { WEBHOOK_ALLOWED_CIDRS: '127.0.0.0/8' } });
    const { status, body } = await p.submit({ prompt: 'restyle this e2e-input-url', tier: 'draft', inputImages: [{ url: `${base}/fox.png` }] });
    expect(status).toBe(202);
    const view = await p.settle(body['id'] as string);
    expect(view['status']).toBe('succeeded');
    const calls = p.sim.requests().filter((r) => r.prompt.includes('e2e-input-url'));
    expect(calls.map((c) => c.inputImages)).toEqual([1]);
  });

  it('a URL that resolves to a refused address fails the job with INPUT_URL_REFUSED and calls no model', async () => {
    p = await startPipeline();
    const before = hits.length;
    const { body } = await p.submit({ prompt: 'sneaky e2e-input-refused', tier: 'draft', inputImages: [{ url: `${base}/fox.png` }] });
    const view = await p.settle(body['id'] as string);
    expect(view['status']).toBe('failed');
    expect(view['error']['code']).toBe('INPUT_URL_REFUSED');
    expect(view['error']['message']).toMatch(/127\.0\.0\.1 .*loopback/);
    expect(view['attempts']).toBe(1);
    expect(p.sim.requests().filter((r) => r.prompt.includes('e2e-input-refused'))).toEqual([]);
    expect(hits.length).toBe(before);
  });
});
