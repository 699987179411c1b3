/**
 * GeminiClient against real HTTP servers on 127.0.0.1 that misbehave on purpose: hang, cut the body,
 * refuse the connection, answer 429. Each test starts its own server.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { Writable } from 'node:stream';
import { Agent, request } from 'undici';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../src/dev/free-port.js';
import { isPixelmillError, type PixelmillError } from '../../src/errors/catalogue.js';
import { createLogger } from '../../src/logging/logger.js';
import { pixelSize } from '../../src/models/catalogue.js';
import {
  createGeminiClient, GeminiClient, geminiAgentOptions, MAX_RESPONSE_BYTES, type GeminiClientOptions,
} from '../../src/providers/gemini/client.js';
import type { GenerateImageRequest } from '../../src/providers/gemini/types.js';
import { fixtureText, imageResponse, makeImage } from '../fixtures/gemini/bodies.js';
import { testConfig, waitFor } from '../support/stack.js';

const API_KEY = 'AIzaTestKey-never-log-me-0123456789';
const MODEL = 'gemini-3.1-flash-image';

interface SeenRequest {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  body: string;
  /** Set when the client's socket for this request closed. */
  closed: boolean;
}

interface TestServer {
  baseUrl: string;
  seen: SeenRequest[];
  server: Server;
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

/** A server whose handler gets the request with its body already read. */
async function startServer(handler: (req: IncomingMessage, res: ServerResponse, seen: SeenRequest) => void): Promise<TestServer> {
  const seen: SeenRequest[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const entry: SeenRequest = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8'), closed: false };
      seen.push(entry);
      req.socket.once('close', () => { entry.closed = true; });
      handler(req, res, entry);
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const { port } = server.address() as AddressInfo;
  return { baseUrl: `http://127.0.0.1:${port}`, seen, server };
}

function client(baseUrl: string, extra: Partial<GeminiClientOptions> = {}): GeminiClient {
  const c = new GeminiClient({ baseUrl, apiKey: API_KEY, timeoutMs: 10_000, ...extra });
  cleanups.push(() => c.close());
  return c;
}

function imageRequest(extra: Partial<GenerateImageRequest> = {}): GenerateImageRequest {
  return { modelId: MODEL, prompt: 'a red lighthouse at dusk', size: '2K', aspectRatio: '1:1', inputImages: [], timeoutMs: 10_000, ...extra };
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected the call to reject');
}

async function pixelmillRejection(p: Promise<unknown>): Promise<PixelmillError> {
  const err = await rejection(p);
  if (!isPixelmillError(err)) throw new Error(`expected a PixelmillError, got ${String(err)}`);
  return err;
}

function json(res: ServerResponse, status: number, body: string): void {
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

let image2k: Buffer;
let inputPng: Buffer;
beforeAll(async () => {
  const { width, height } = pixelSize('2K', '1:1');
  [image2k, inputPng] = await Promise.all([makeImage(width, height, 'jpeg', 40), makeImage(32, 32, 'png', 200)]);
});

describe('GeminiClient on the wire', () => {
  it('POSTs generateContent with the key header, the image config and the input images, and returns the image', async () => {
    const srv = await startServer((_req, res) => json(res, 200, JSON.stringify(imageResponse([{ image: image2k, mimeType: 'image/jpeg' }]))));
    const logLines: string[] = [];
    const logger = createLogger({
      level: 'trace',
      destination: new Writable({ write(chunk, _enc, cb) { logLines.push(String(chunk)); cb(); } }),
    });
    const ticks = [1_000, 1_250];
    const c = client(srv.baseUrl + '/', { logger, now: () => ticks.shift() ?? 9_999 });

    const result = await c.generate(imageRequest({
      aspectRatio: '1:1', size: '2K', timeoutMs: 7_500, inputImages: [{ mimeType: 'image/png', data: inputPng }],
    }));

    expect(srv.seen).toHaveLength(1);
    const [seen] = srv.seen;
    expect(seen!.method).toBe('POST');
    expect(seen!.url).toBe(`/v1beta/models/${MODEL}:generateContent`);
    expect(seen!.headers['x-goog-api-key']).toBe(API_KEY);
    expect(seen!.headers['content-type']).toBe('application/json');
    expect(seen!.headers['x-server-timeout']).toBe('8');
    const body = JSON.parse(seen!.body) as Record<string, unknown>;
    expect(body).toEqual({
      contents: [{ role: 'user', parts: [{ text: 'a red lighthouse at dusk' }, { inlineData: { mimeType: 'image/png', data: inputPng.toString('base64') } }] }],
      generationConfig: { responseModalities: ['TEXT', 'IMAGE'], imageConfig: { aspectRatio: '1:1', imageSize: '2K' } },
    });

    expect(result.bytes.equals(image2k)).toBe(true);
    expect(result).toMatchObject({
      mimeType: 'image/jpeg', width: 2048, height: 2048, modelVersion: MODEL, finishReason: 'STOP', latencyMs: 250,
      imageParts: 1, sizeMismatch: false, usage: { imageTokens: 1120, candidatesTokens: 1392 },
    });
    expect(result).not.toHaveProperty('declaredMimeType');

    // Logged, but never the key nor image data.
    await waitFor('a log line', () => logLines.length > 0);
    const logs = logLines.join('');
    expect(logs).toContain('gemini generateContent succeeded');
    expect(logs).not.toContain(API_KEY);
    expect(logs).not.toContain(inputPng.toString('base64').slice(0, 40));
    expect(logs).not.toContain(image2k.toString('base64').slice(0, 40));
  });

  it('sends no key header when the key is empty and URL-encodes the model id', async () => {
    const srv = await startServer((_req, res) => json(res, 200, JSON.stringify(imageResponse([{ image: image2k, mimeType: 'image/jpeg' }]))));
    await client(srv.baseUrl, { apiKey: '' }).generate(imageRequest({ modelId: 'tuned/model 1' }));
    expect(srv.seen[0]!.headers).not.toHaveProperty('x-goog-api-key');
    expect(srv.seen[0]!.url).toBe('/v1beta/models/tuned%2Fmodel%201:generateContent');
  });

  it('a 429 body → RATE_LIMITED with retryAfterMs and quota facts', async () => {
    const srv = await startServer((_req, res) => json(res, 429, fixtureText('429-retry-info.json')));
    const err = await pixelmillRejection(client(srv.baseUrl).generate(imageRequest()));
    expect(err.code).toBe('RATE_LIMITED');
    expect(err.retryAfterMs).toBe(34_400);
    expect(err.details).toMatchObject({ quotaScope: 'minute', upstreamStatus: 429 });
    expect(typeof err.details.latencyMs).toBe('number');
  });

  it('a 200 NO_IMAGE body → NO_IMAGE carrying the usage to charge', async () => {
    const srv = await startServer((_req, res) => json(res, 200, fixtureText('200-no-image.json')));
    const err = await pixelmillRejection(client(srv.baseUrl).generate(imageRequest()));
    expect(err.code).toBe('NO_IMAGE');
    expect(err.details.usage).toMatchObject({ promptTokens: 9 });
  });

  it('a 200 body that is not JSON → BAD_RESPONSE', async () => {
    const srv = await startServer((_req, res) => json(res, 200, '<html>gateway</html>'));
    const err = await pixelmillRejection(client(srv.baseUrl).generate(imageRequest()));
    expect(err.code).toBe('BAD_RESPONSE');
    expect(err.message).toContain('not JSON');
  });
});

describe('GeminiClient when the network misbehaves', () => {
  it('a server that never answers → UPSTREAM_TIMEOUT at the call budget, and the connection is closed', async () => {
    const srv = await startServer(() => { /* never answers */ });
    const c = client(srv.baseUrl, { timeoutMs: 300 });
    const started = Date.now();
    const err = await pixelmillRejection(c.generate(imageRequest({ timeoutMs: 300 })));
    const elapsed = Date.now() - started;
    expect(err.code).toBe('UPSTREAM_TIMEOUT');
    expect(err.message).toBe(`${MODEL} did not answer within 300 ms`);
    expect(elapsed).toBeGreaterThanOrEqual(290);
    expect(elapsed).toBeLessThan(3_000);
    await waitFor('the server to see the connection close', () => srv.seen[0]?.closed);
  });

  it('a caller abort → the signal reason (AbortError), not UPSTREAM_TIMEOUT, and the connection is closed', async () => {
    const srv = await startServer(() => { /* never answers */ });
    const c = client(srv.baseUrl);
    const controller = new AbortController();
    const pending = rejection(c.generate(imageRequest({ signal: controller.signal })));
    await waitFor('the request to reach the server', () => srv.seen.length === 1);
    controller.abort();
    const err = await pending;
    expect(isPixelmillError(err)).toBe(false);
    expect((err as Error).name).toBe('AbortError');
    await waitFor('the server to see the connection close', () => srv.seen[0]!.closed);
  });

  it('a caller abort with its own reason rethrows that reason, even while the body streams', async () => {
    const srv = await startServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"candidates":[');
    });
    const controller = new AbortController();
    const pending = rejection(client(srv.baseUrl).generate(imageRequest({ signal: controller.signal })));
    await waitFor('the request to reach the server', () => srv.seen.length === 1);
    const reason = new Error('worker shutting down');
    controller.abort(reason);
    expect(await pending).toBe(reason);
  });

  it('an already aborted signal → rejects at once without a request', async () => {
    const srv = await startServer((_req, res) => json(res, 200, '{}'));
    const err = await rejection(client(srv.baseUrl).generate(imageRequest({ signal: AbortSignal.abort() })));
    expect((err as Error).name).toBe('AbortError');
    expect(srv.seen).toHaveLength(0);
  });

  it('a body cut in half (content-length promised, socket destroyed) → BAD_RESPONSE', async () => {
    const full = JSON.stringify(imageResponse([{ image: image2k, mimeType: 'image/jpeg' }]));
    const srv = await startServer((req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(full) });
      res.write(full.slice(0, Math.floor(full.length / 2)), () => req.socket.destroy());
    });
    const err = await pixelmillRejection(client(srv.baseUrl).generate(imageRequest()));
    expect(err.code).toBe('BAD_RESPONSE');
    expect(err.message).toContain('body broke off');
    expect(err.details.stage).toBe('body');
  });

  it('a chunked body that stops early with a clean close → BAD_RESPONSE', async () => {
    const full = JSON.stringify(imageResponse([{ image: image2k, mimeType: 'image/jpeg' }]));
    const srv = await startServer((req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', connection: 'close' });
      res.write(full.slice(0, 1_000), () => req.socket.end());
    });
    const err = await pixelmillRejection(client(srv.baseUrl).generate(imageRequest()));
    expect(err.code).toBe('BAD_RESPONSE');
  });

  it('connection refused → UPSTREAM_UNAVAILABLE', async () => {
    const port = await freePort();
    const err = await pixelmillRejection(client(`http://127.0.0.1:${port}`).generate(imageRequest()));
    expect(err.code).toBe('UPSTREAM_UNAVAILABLE');
    expect(err.message).toContain('ECONNREFUSED');
    expect(err.details).toMatchObject({ stage: 'connect', errorCode: 'ECONNREFUSED' });
  });

  it('a connection reset before the status line → UPSTREAM_UNAVAILABLE', async () => {
    const srv = await startServer((req) => req.socket.destroy());
    const err = await pixelmillRejection(client(srv.baseUrl).generate(imageRequest()));
    expect(err.code).toBe('UPSTREAM_UNAVAILABLE');
  });
});

describe('GeminiClient timeouts of the HTTP layer', () => {
  it('the Agent allows at least the upstream timeout for headers and body (undici defaults would cut at 300 s)', () => {
    const opts = geminiAgentOptions(360_000, 12);
    expect(opts.headersTimeout).toBeGreaterThanOrEqual(360_000);
    expect(opts.bodyTimeout).toBeGreaterThanOrEqual(360_000);
    expect(opts.connections).toBe(12);
    expect(opts.maxResponseSize).toBe(MAX_RESPONSE_BYTES);
  });

  it('a slow answer within the budget succeeds even on a dispatcher whose own timeouts are tiny', async () => {
    const body = JSON.stringify(imageResponse([{ image: image2k, mimeType: 'image/jpeg' }]));
    // undici checks its socket timers on a ~0.5 s tick, so the pauses must be well above one second for the
    // dispatcher's 100 ms timers to fire for sure: headers after 1.5 s, then a 1.5 s pause mid-body.
    const pauseMs = 1_500;
    const srv = await startServer((_req, res) => {
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.write(body.slice(0, 100));
        setTimeout(() => res.end(body.slice(100)), pauseMs);
      }, pauseMs);
    });
    const tiny = new Agent({ headersTimeout: 100, bodyTimeout: 100 });
    cleanups.push(() => tiny.close());

    // Control, run alongside: the same dispatcher on its own cuts this answer.
    const control = rejection(request(`${srv.baseUrl}/v1beta/models/x:generateContent`, { dispatcher: tiny, method: 'POST', body: '{}' }));
    const result = await client(srv.baseUrl, { dispatcher: tiny, timeoutMs: 5_000 }).generate(imageRequest({ timeoutMs: 5_000 }));
    expect(result.bytes.equals(image2k)).toBe(true);
    expect(((await control) as { code?: string }).code).toBe('UND_ERR_HEADERS_TIMEOUT');
  });
});

describe('GeminiClient lifecycle', () => {
  it('createGeminiClient reads base URL, key and timeout from Config', async () => {
    const srv = await startServer((_req, res) => json(res, 200, JSON.stringify(imageResponse([{ image: image2k, mimeType: 'image/jpeg' }]))));
    const c = createGeminiClient(testConfig({ GEMINI_BASE_URL: srv.baseUrl, GEMINI_API_KEY: API_KEY, UPSTREAM_TIMEOUT_MS: 2_000 }), { connections: 2 });
    cleanups.push(() => c.close());
    await c.generate(imageRequest());
    expect(srv.seen[0]!.headers['x-goog-api-key']).toBe(API_KEY);
  });

  it('close() is idempotent, refuses later calls, and leaves an injected dispatcher open', async () => {
    const srv = await startServer((_req, res) => json(res, 200, JSON.stringify(imageResponse([{ image: image2k, mimeType: 'image/jpeg' }]))));
    const shared = new Agent();
    cleanups.push(() => shared.close());
    const c = new GeminiClient({ baseUrl: srv.baseUrl, apiKey: API_KEY, timeoutMs: 2_000, dispatcher: shared });
    await c.close();
    await c.close();
    const err = await pixelmillRejection(c.generate(imageRequest()));
    expect(err.code).toBe('INTERNAL');
    expect(shared.closed).toBe(false);
    const again = await request(`${srv.baseUrl}/v1beta/models/x:generateContent`, { dispatcher: shared, method: 'POST', body: '{}' });
    await again.body.dump();
    expect(again.statusCode).toBe(200);
  });
});
