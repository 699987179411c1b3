/**
 * The HTTP API against the real redis-server and s3rver: submit, validate, idempotency, inline
 * images, auth, readiness, and the GET view of jobs in every state. No pixelmill worker runs here;
 * where a job must move on, a tiny BullMQ Worker in the test plays the worker's part.
 */
import { createHash } from 'node:crypto';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { Queue, UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import sharp from 'sharp';
import { afterEach, beforeAll, afterAll, describe, expect, it } from 'vitest';
import { startApiServer, type RunningApi } from '../../src/api/server.js';
import type { Config } from '../../src/config/env.js';
import { freePort } from '../../src/dev/free-port.js';
import { jobResultSchema, type JobProgress, type JobResult } from '../../src/jobs/record.js';
import { createLogger } from '../../src/logging/logger.js';
import { createRedis } from '../../src/queue/connection.js';
import { IMAGE_QUEUE, createImageQueue, encodeQueuePriority, idempotentJobId, keys } from '../../src/queue/image-queue.js';
import type { JobView } from '../../src/queue/job-view.js';
import { ImageJobProducer } from '../../src/queue/producer.js';
import { createS3Store, outputKey, s3ClientConfig, type ObjectStore } from '../../src/storage/object-store.js';
import { INVALID_REQUEST_CASES, VALID_REQUEST_CASES } from '../support/request-cases.js';
import { testConfig, waitFor } from '../support/stack.js';

// ---------------------------------------------------------------------------------------------
// Harness

interface Harness {
  config: Config;
  api: RunningApi;
  /** Test-side handles on the same Redis and bucket, to look behind the API. */
  redis: Redis;
  queue: Queue;
  store: ObjectStore;
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function startHarness(overrides: Record<string, string | number | boolean | undefined> = {}, logger?: ReturnType<typeof createLogger>): Promise<Harness> {
  const config = testConfig({ PORT: 0, ...overrides });
  const api = await startApiServer(config, logger ? { logger } : {});
  cleanups.push(() => api.close());
  const redis = createRedis(config, 'producer');
  const queue = createImageQueue(config, redis);
  queue.on('error', () => {}); // the outage tests point it at a closed port on purpose
  const store = createS3Store(config);
  cleanups.push(async () => {
    await queue.close();
    redis.disconnect();
    store.destroy();
  });
  return { config, api, redis, queue, store };
}

/** A BullMQ Worker on the harness's queue that runs `processor` (what the real worker would do). */
function startTestWorker(h: Harness, processor: (job: Job) => Promise<unknown>): Worker {
  const connection = createRedis(h.config, 'worker');
  const worker = new Worker(IMAGE_QUEUE, processor, { connection, prefix: h.config.QUEUE_PREFIX, concurrency: 1 });
  worker.on('error', () => {});
  cleanups.push(async () => {
    await worker.close(true);
    connection.disconnect();
  });
  return worker;
}

interface Answer<T = unknown> {
  status: number;
  headers: Headers;
  body: T;
}

async function http<T = Record<string, unknown>>(
  h: { api: RunningApi } | string,
  method: string,
  path: string,
  opts: { json?: unknown; raw?: string | Buffer; contentType?: string; token?: string } = {},
): Promise<Answer<T>> {
  const base = typeof h === 'string' ? h : h.api.url;
  const headers: Record<string, string> = {};
  let body: string | Buffer | undefined;
  if (opts.json !== undefined) {
    body = JSON.stringify(opts.json);
    headers['content-type'] = 'application/json';
  } else if (opts.raw !== undefined) {
    body = opts.raw;
  }
  if (opts.contentType) headers['content-type'] = opts.contentType;
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  const res = await fetch(`${base}${path}`, { method, headers, body });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON; keep the text
  }
  return { status: res.status, headers: res.headers, body: parsed as T };
}

interface ErrorAnswer {
  error: { code: string; message: string; retryable?: boolean; issues?: { path: string; message: string }[] };
}

function expectError(answer: Answer, status: number, code: string): ErrorAnswer['error'] {
  expect(answer.status, JSON.stringify(answer.body)).toBe(status);
  const body = answer.body as ErrorAnswer;
  expect(body.error.code).toBe(code);
  expect(typeof body.error.message).toBe('string');
  expect(body.error.message.length).toBeGreaterThan(10);
  return body.error;
}

async function image(format: 'png' | 'jpeg' | 'webp', width = 8, height = 8): Promise<Buffer> {
  return sharp({ create: { width, height, channels: 3, background: { r: 200, g: 30, b: 30 } } })[format]().toBuffer();
}

async function listKeys(config: Config, prefix: string): Promise<string[]> {
  const client = new S3Client(s3ClientConfig(config));
  try {
    const out = await client.send(new ListObjectsV2Command({ Bucket: config.S3_BUCKET, Prefix: prefix }));
    return (out.Contents ?? []).map((o) => o.Key!);
  } finally {
    client.destroy();
  }
}

async function closedPortUrl(scheme: string): Promise<string> {
  return `${scheme}://127.0.0.1:${await freePort()}`;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

// ---------------------------------------------------------------------------------------------

describe('POST /v1/jobs', () => {
  it('answers 202 with the queued job, stores it in BullMQ with its priority and moves inline images to S3', async () => {
    const h = await startHarness();
    const png = await image('png');
    const res = await http<JobView>(h, 'POST', '/v1/jobs', {
      json: {
        prompt: 'a red fox in the snow', priority: 7, tier: 'premium', size: '2K', aspectRatio: '16:9',
        metadata: { order: 'A-17' }, inputImages: [{ data: png.toString('base64'), mimeType: 'image/png' }],
      },
    });
    expect(res.status).toBe(202);
    expect(res.headers.get('location')).toBe(`/v1/jobs/${res.body.id}`);
    expect(res.body).toMatchObject({
      status: 'queued', attempts: 0, startedAt: null, finishedAt: null, route: null, history: [],
      metadata: { order: 'A-17' },
      request: { prompt: 'a red fox in the snow', priority: 7, tier: 'premium', size: '2K', aspectRatio: '16:9', allowDowngrade: false },
    });
    expect(res.body.id).toMatch(/^img_/);
    expect(Date.parse(res.body.createdAt)).toBeGreaterThan(Date.now() - 60_000);
    expect(res.body.output).toBeUndefined();

    const job = await h.queue.getJob(res.body.id);
    expect(job).toBeDefined();
    // Request priority 7 at position 0 (a single job), see encodeQueuePriority.
    expect(job!.opts.priority).toBe(encodeQueuePriority(7, 0));
    expect(await job!.getState()).toBe('prioritized');
    const expectedKey = `${h.config.S3_KEY_PREFIX}/inputs/${res.body.id}/0.png`;
    expect(job!.data.request.inputImages).toEqual([{ s3Key: expectedKey, mimeType: 'image/png' }]);
    expect(job!.data).toMatchObject({ v: 1, tenant: null, promptSha256: sha256(Buffer.from('a red fox in the snow')) });
    // No image bytes in Redis: the whole job hash is small and has no base64 of the image.
    const raw = await h.redis.hgetall(`${h.config.QUEUE_PREFIX}:${IMAGE_QUEUE}:${res.body.id}`);
    expect(JSON.stringify(raw)).not.toContain(png.toString('base64').slice(0, 40));
    expect(res.body.request.inputImages).toEqual([{ s3Key: expectedKey, mimeType: 'image/png' }]);

    const stored = await h.store.get(expectedKey);
    expect(stored.body.equals(png)).toBe(true);
    expect(stored.contentType).toBe('image/png');
  });

  describe('validation', () => {
    let h: Harness;
    beforeAll(async () => {
      const config = testConfig({ PORT: 0 });
      const api = await startApiServer(config);
      const redis = createRedis(config, 'producer');
      h = { config, api, redis, queue: createImageQueue(config, redis), store: createS3Store(config) };
      // The valid table references in/0.png ... in/13.png: inputs by key must exist.
      const png = await image('png');
      await Promise.all(Array.from({ length: 14 }, (_, i) => h.store.put(`in/${i}.png`, png, 'image/png')));
    });
    afterAll(async () => {
      await h.api.close();
      await h.queue.close();
      h.redis.disconnect();
      h.store.destroy();
    });

    it.each(INVALID_REQUEST_CASES)('400 for $name, naming $paths', async ({ body, paths }) => {
      const res = await http(h, 'POST', '/v1/jobs', { json: body });
      const error = expectError(res, 400, 'INVALID_REQUEST');
      expect(error.retryable).toBe(false);
      const named = (error.issues ?? []).map((i) => i.path);
      for (const path of paths) expect(named).toContain(path);
      for (const path of paths) expect(error.message).toContain(path);
      expect(error.message).toContain('Fix the field named in the message');
    });

    it('stored no job for any rejected request (runs after the table, in file order)', async () => {
      const counts = await h.queue.getJobCounts();
      expect(Object.values(counts).reduce((a, b) => a + b, 0)).toBe(0);
    });

    it.each(VALID_REQUEST_CASES)('202 for $name', async ({ body }) => {
      const res = await http<JobView>(h, 'POST', '/v1/jobs', { json: body });
      expect(res.status, JSON.stringify(res.body)).toBe(202);
      expect(res.body.status).toBe('queued');
    });

    it('400 naming (body) for a body that is not JSON', async () => {
      const res = await http(h, 'POST', '/v1/jobs', { raw: '{"prompt": "a fox",', contentType: 'application/json' });
      const error = expectError(res, 400, 'INVALID_REQUEST');
      expect(error.issues?.map((i) => i.path)).toEqual(['(body)']);
      expect(error.message).toMatch(/JSON/);
    });

    it('400 naming (body) for an empty JSON body and for no body at all', async () => {
      expectError(await http(h, 'POST', '/v1/jobs', { raw: '', contentType: 'application/json' }), 400, 'INVALID_REQUEST');
      const none = expectError(await http(h, 'POST', '/v1/jobs'), 400, 'INVALID_REQUEST');
      expect(none.issues?.map((i) => i.path)).toEqual(['(body)']);
    });

    it('415 with a clear message for a body that is not application/json', async () => {
      const res = await http(h, 'POST', '/v1/jobs', { raw: 'a red fox', contentType: 'text/plain' });
      const error = expectError(res, 415, 'INVALID_REQUEST');
      expect(error.message).toContain('application/json');
    });

    it('400 naming inputImages.N.data when the bytes are not the declared type', async () => {
      const jpeg = await image('jpeg');
      const png = await image('png');
      const res = await http(h, 'POST', '/v1/jobs', {
        json: { prompt: 'p', inputImages: [{ data: png.toString('base64'), mimeType: 'image/png' }, { data: jpeg.toString('base64'), mimeType: 'image/png' }] },
      });
      const error = expectError(res, 400, 'INVALID_REQUEST');
      expect(error.issues).toEqual([{ path: 'inputImages.1.data', message: expect.stringContaining('JPEG') }]);
      const garbage = await http(h, 'POST', '/v1/jobs', {
        json: { prompt: 'p', inputImages: [{ data: Buffer.from('hello world, not an image').toString('base64'), mimeType: 'image/webp' }] },
      });
      expect(expectError(garbage, 400, 'INVALID_REQUEST').issues?.[0]?.path).toBe('inputImages.0.data');
    });

    it('accepts JPEG and WebP inputs that are what they claim', async () => {
      const res = await http<JobView>(h, 'POST', '/v1/jobs', {
        json: {
          prompt: 'p',
          inputImages: [
            { data: (await image('jpeg')).toString('base64'), mimeType: 'image/jpeg' },
            { data: (await image('webp')).toString('base64'), mimeType: 'image/webp' },
          ],
        },
      });
      expect(res.status, JSON.stringify(res.body)).toBe(202);
      expect(res.body.request.inputImages.map((i) => ('s3Key' in i ? i.s3Key : i.url).split('/').pop())).toEqual(['0.jpg', '1.webp']);
    });

    it('takes {s3Key} inputs that exist (recording their type) and names the ones that do not', async () => {
      const key = `${h.config.S3_KEY_PREFIX}/uploads/ref.png`;
      await h.store.put(key, await image('png'), 'image/png');
      const ok = await http<JobView>(h, 'POST', '/v1/jobs', { json: { prompt: 'p', inputImages: [{ s3Key: key }] } });
      expect(ok.status).toBe(202);
      expect(ok.body.request.inputImages).toEqual([{ s3Key: key, mimeType: 'image/png' }]);

      const missing = await http(h, 'POST', '/v1/jobs', { json: { prompt: 'p', inputImages: [{ s3Key: key }, { s3Key: `${key}.missing` }] } });
      const error = expectError(missing, 400, 'INVALID_REQUEST');
      expect(error.issues).toEqual([{ path: 'inputImages.1.s3Key', message: expect.stringContaining('.missing') }]);
    });
  });

  it('413 naming the field when an inline image is larger than INPUT_IMAGE_MAX_BYTES, and nothing is stored', async () => {
    const h = await startHarness({ INPUT_IMAGE_MAX_BYTES: 2048 });
    const big = await image('png', 512, 512); // noise-free but still well over 2 KB
    expect(big.length).toBeGreaterThan(2048);
    const small = await image('png');
    const res = await http(h, 'POST', '/v1/jobs', {
      json: { prompt: 'p', inputImages: [{ data: small.toString('base64'), mimeType: 'image/png' }, { data: big.toString('base64'), mimeType: 'image/png' }] },
    });
    const error = expectError(res, 413, 'PAYLOAD_TOO_LARGE');
    expect(error.issues?.map((i) => i.path)).toEqual(['inputImages.1.data']);
    expect(error.message).toContain('{s3Key}');
    expect(await listKeys(h.config, `${h.config.S3_KEY_PREFIX}/`)).toEqual([]);
    expect(await h.queue.count()).toBe(0);
  });

  it('413 PAYLOAD_TOO_LARGE for a body over API_BODY_LIMIT_BYTES', async () => {
    const h = await startHarness({ API_BODY_LIMIT_BYTES: 2048 });
    const res = await http(h, 'POST', '/v1/jobs', { json: { prompt: 'x'.repeat(4000) } });
    const error = expectError(res, 413, 'PAYLOAD_TOO_LARGE');
    expect(error.message).toContain('API_BODY_LIMIT_BYTES');
    expect(await h.queue.count()).toBe(0);
  });
});

describe('idempotency', () => {
  it('the same key twice answers 202 then 200 with the same job, and the queue holds one job', async () => {
    const h = await startHarness();
    const body = { prompt: 'a lighthouse', idempotencyKey: 'order-42', metadata: { b: '2', a: '1' } };
    const first = await http<JobView>(h, 'POST', '/v1/jobs', { json: body });
    expect(first.status).toBe(202);
    // Same request with fields in another order: the same request.
    const second = await http<JobView>(h, 'POST', '/v1/jobs', { json: { metadata: { a: '1', b: '2' }, idempotencyKey: 'order-42', prompt: 'a lighthouse' } });
    expect(second.status).toBe(200);
    expect(second.body.id).toBe(first.body.id);
    expect(second.headers.get('location')).toBe(`/v1/jobs/${first.body.id}`);
    expect(first.body.id).toBe(idempotentJobId(null, 'order-42'));
    expect(await h.queue.count()).toBe(1);
  });

  it('the same key with a different request answers 409 IDEMPOTENCY_CONFLICT and changes nothing', async () => {
    const h = await startHarness();
    const first = await http<JobView>(h, 'POST', '/v1/jobs', { json: { prompt: 'a lighthouse', idempotencyKey: 'k1' } });
    expect(first.status).toBe(202);
    const conflict = await http(h, 'POST', '/v1/jobs', { json: { prompt: 'a windmill', idempotencyKey: 'k1' } });
    expectError(conflict, 409, 'IDEMPOTENCY_CONFLICT');
    expect(await h.queue.count()).toBe(1);
    const job = await h.queue.getJob(first.body.id);
    expect(job!.data.request.prompt).toBe('a lighthouse');
  });

  it('concurrent submissions with one key make one job', async () => {
    const h = await startHarness();
    const answers = await Promise.all(
      Array.from({ length: 8 }, () => http<JobView>(h, 'POST', '/v1/jobs', { json: { prompt: 'p', idempotencyKey: 'burst' } })),
    );
    expect(new Set(answers.map((a) => a.body.id)).size).toBe(1);
    expect(answers.filter((a) => a.status === 202)).toHaveLength(1);
    expect(answers.every((a) => a.status === 202 || a.status === 200)).toBe(true);
    expect(await h.queue.count()).toBe(1);
  });

  it('adds the job when the marker exists without it (a crash between marker and add)', async () => {
    const h = await startHarness();
    const body = { prompt: 'p', idempotencyKey: 'crashed' };
    const first = await http<JobView>(h, 'POST', '/v1/jobs', { json: body });
    // Simulate the crash: the job vanished, the marker stayed.
    await (await h.queue.getJob(first.body.id))!.remove();
    expect(await h.redis.exists(keys(h.config).idempotency(null, 'crashed'))).toBe(1);
    const again = await http<JobView>(h, 'POST', '/v1/jobs', { json: body });
    expect(again.status).toBe(200);
    expect(again.body.id).toBe(first.body.id);
    expect(await h.queue.getJob(first.body.id)).toBeDefined();
    expect(await h.queue.count()).toBe(1);
  });

  it('a retry after the deadline passed still answers with the job; a new request with that deadline is refused', async () => {
    const config = testConfig({ PORT: 0 });
    const redis = createRedis(config, 'producer');
    const queue = createImageQueue(config, redis);
    const store = createS3Store(config);
    let clock = Date.parse('2030-06-01T12:00:00Z');
    const producer = new ImageJobProducer({ config, queue, redis, store, now: () => clock });
    const api = await startApiServer(config, { producer, queue, redis, store });
    cleanups.push(async () => {
      await api.close();
      await queue.close();
      redis.disconnect();
      store.destroy();
    });
    const body = { prompt: 'p', idempotencyKey: 'due', deadline: '2030-06-01T12:05:00Z' };
    const first = await http<JobView>(api.url, 'POST', '/v1/jobs', { json: body });
    expect(first.status).toBe(202);
    clock = Date.parse('2030-06-01T12:06:00Z');
    const retry = await http<JobView>(api.url, 'POST', '/v1/jobs', { json: body });
    expect(retry.status).toBe(200);
    expect(retry.body.id).toBe(first.body.id);
    const late = await http(api.url, 'POST', '/v1/jobs', { json: { ...body, idempotencyKey: 'due-2' } });
    expect(expectError(late, 400, 'INVALID_REQUEST').issues).toEqual([{ path: 'deadline', message: expect.stringContaining('past') }]);
    expect(await queue.count()).toBe(1);
  });

  it('keeps the marker for JOB_RETENTION', async () => {
    const h = await startHarness({ JOB_RETENTION: '1h' });
    await http(h, 'POST', '/v1/jobs', { json: { prompt: 'p', idempotencyKey: 'ttl' } });
    const ttl = await h.redis.pttl(keys(h.config).idempotency(null, 'ttl'));
    expect(ttl).toBeGreaterThan(3_500_000);
    expect(ttl).toBeLessThanOrEqual(3_600_000);
  });
});

describe('outages', () => {
  it('503 QUEUE_UNAVAILABLE with Retry-After when Redis is unreachable, and nothing is stored', async () => {
    const h = await startHarness({ REDIS_URL: await closedPortUrl('redis') });
    const png = await image('png');
    for (const body of [
      { prompt: 'p', inputImages: [{ data: png.toString('base64'), mimeType: 'image/png' }] },
      { prompt: 'p', idempotencyKey: 'during-outage', inputImages: [{ data: png.toString('base64'), mimeType: 'image/png' }] },
    ]) {
      const res = await http(h, 'POST', '/v1/jobs', { json: body });
      const error = expectError(res, 503, 'QUEUE_UNAVAILABLE');
      expect(error.retryable).toBe(true);
      expect(res.headers.get('retry-after')).toMatch(/^\d+$/);
    }
    expect(await listKeys(h.config, `${h.config.S3_KEY_PREFIX}/`)).toEqual([]);
    expectError(await http(h, 'GET', '/v1/jobs/img_abc'), 503, 'QUEUE_UNAVAILABLE');
    const ready = await http<{ checks: { redis: string; s3: string } }>(h, 'GET', '/readyz');
    expect(ready.status).toBe(503);
    expect(ready.body.checks.redis).toMatch(/^failed/);
    expect(ready.body.checks.s3).toBe('ok');
  });

  it('503 STORAGE_UNAVAILABLE when S3 is unreachable while storing inputs, and no job is added', async () => {
    const h = await startHarness({ S3_ENDPOINT: await closedPortUrl('http') });
    const res = await http(h, 'POST', '/v1/jobs', {
      json: { prompt: 'p', inputImages: [{ data: (await image('png')).toString('base64'), mimeType: 'image/png' }] },
    });
    expectError(res, 503, 'STORAGE_UNAVAILABLE');
    expect(res.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(await h.queue.count()).toBe(0);
  });
});

describe('GET /v1/jobs/:id', () => {
  it('404 NOT_FOUND for an unknown id and for an unknown route, in the error shape', async () => {
    const h = await startHarness();
    expectError(await http(h, 'GET', '/v1/jobs/img_doesnotexist'), 404, 'NOT_FOUND');
    expectError(await http(h, 'GET', '/v1/jobs/..%2F..%2Fetc'), 404, 'NOT_FOUND');
    expectError(await http(h, 'GET', '/v2/nothing'), 404, 'NOT_FOUND');
    expectError(await http(h, 'DELETE', '/v1/jobs/img_x'), 404, 'NOT_FOUND');
  });

  it('shows a running job, then the succeeded job with a presigned output URL that serves the image', async () => {
    const h = await startHarness();
    const png = await image('png', 16, 9);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const startedAt = new Date().toISOString();
    startTestWorker(h, async (job) => {
      const key = outputKey(h.config, job.id!, 'image/png');
      const put = await h.store.put(key, png, 'image/png');
      const running: JobProgress = {
        v: 1, startedAt, route: { family: 'fast', model: 'gemini-3.1-flash-image', reason: 'standard tier: fast family' },
        history: [], rateLimitRequeues: 0, costUsd: 0,
      };
      await job.updateProgress(running);
      await gate;
      await job.updateProgress({
        ...running,
        history: [{ attempt: 1, model: 'gemini-3.1-flash-image', family: 'fast', outcome: 'succeeded', latencyMs: 1234, at: new Date().toISOString() }],
        costUsd: 0.067,
      } satisfies JobProgress);
      const result: JobResult = {
        v: 1, key, bytes: put.bytes, sha256: put.sha256, width: 16, height: 9, mimeType: 'image/png', family: 'fast',
        model: 'gemini-3.1-flash-image', modelVersion: 'gemini-3.1-flash-image', responseId: 'resp-1', finishReason: 'STOP',
        routingReason: 'standard tier: fast family',
        usage: { promptTokens: 12, candidatesTokens: 1120, imageTokens: 1120, thoughtsTokens: 0, totalTokens: 1132 },
        costUsd: 0.067, totalCostUsd: 0.067, attempts: 1, upstreamLatencyMs: 1234,
      };
      return jobResultSchema.parse(result);
    });

    const created = await http<JobView>(h, 'POST', '/v1/jobs', { json: { prompt: 'a fox', metadata: { batch: '7' } } });
    const id = created.body.id;
    const running = await waitFor('the job to run', async () => {
      const res = await http<JobView>(h, 'GET', `/v1/jobs/${id}`);
      return res.body.status === 'running' && res.body.route ? res.body : undefined;
    });
    expect(running).toMatchObject({ attempts: 1, startedAt, finishedAt: null, route: { model: 'gemini-3.1-flash-image' }, metadata: { batch: '7' } });
    expect(running.output).toBeUndefined();
    release();

    const done = await waitFor('the job to succeed', async () => {
      const res = await http<JobView>(h, 'GET', `/v1/jobs/${id}`);
      return res.body.status === 'succeeded' ? res.body : undefined;
    });
    expect(done).toMatchObject({
      id, attempts: 1, costUsd: 0.067, metadata: { batch: '7' },
      route: { family: 'fast', model: 'gemini-3.1-flash-image', reason: 'standard tier: fast family' },
      usage: { imageTokens: 1120 },
      output: { key: outputKey(h.config, id, 'image/png'), mimeType: 'image/png', width: 16, height: 9, bytes: png.length, sha256: sha256(png) },
      history: [{ attempt: 1, model: 'gemini-3.1-flash-image', outcome: 'succeeded', latencyMs: 1234 }],
    });
    expect(done.error).toBeUndefined();
    expect(Date.parse(done.finishedAt!)).toBeGreaterThanOrEqual(Date.parse(done.startedAt!));
    expect(done.output!.url).toContain('X-Amz-Signature=');
    expect(done.output!.url).toContain('X-Amz-Expires=3600');
    const fetched = await fetch(done.output!.url);
    expect(fetched.status).toBe(200);
    expect(Buffer.from(await fetched.arrayBuffer()).equals(png)).toBe(true);
  });

  it('shows a failed job with the error code the worker recorded, or INTERNAL with the failure reason', async () => {
    const h = await startHarness();
    startTestWorker(h, async (job) => {
      if (job.data.request.prompt === 'blocked') {
        await job.updateProgress({
          v: 1, startedAt: new Date().toISOString(), rateLimitRequeues: 0, costUsd: 0,
          history: [{ attempt: 1, model: 'gemini-3-pro-image', family: 'pro', outcome: 'CONTENT_BLOCKED', latencyMs: 80, at: new Date().toISOString() }],
          error: { code: 'CONTENT_BLOCKED', message: 'The provider refused the prompt. Rephrase the prompt.', retryable: false },
        } satisfies JobProgress);
        throw new UnrecoverableError('CONTENT_BLOCKED');
      }
      throw new UnrecoverableError('disk on fire');
    });
    const blocked = await http<JobView>(h, 'POST', '/v1/jobs', { json: { prompt: 'blocked', tier: 'premium' } });
    const crashed = await http<JobView>(h, 'POST', '/v1/jobs', { json: { prompt: 'other' } });

    const failed = await waitFor('the blocked job to fail', async () => {
      const res = await http<JobView>(h, 'GET', `/v1/jobs/${blocked.body.id}`);
      return res.body.status === 'failed' ? res.body : undefined;
    });
    expect(failed.error).toEqual({ code: 'CONTENT_BLOCKED', message: expect.stringContaining('refused'), retryable: false });
    expect(failed.attempts).toBe(1);
    expect(failed.history).toHaveLength(1);
    expect(failed.finishedAt).not.toBeNull();
    expect(failed.output).toBeUndefined();

    const internal = await waitFor('the other job to fail', async () => {
      const res = await http<JobView>(h, 'GET', `/v1/jobs/${crashed.body.id}`);
      return res.body.status === 'failed' ? res.body : undefined;
    });
    expect(internal.error).toMatchObject({ code: 'INTERNAL', message: 'disk on fire' });
  });
});

describe('authentication', () => {
  const ALICE = 'alice-key-0123456789abcdef';
  const BOB = 'bob-key-0123456789abcdef';

  it('requires a configured Bearer key on /v1 and scopes jobs to the key\'s tenant', async () => {
    const h = await startHarness({ API_KEYS: `alice:${ALICE},bob:${BOB}`, HOST: '127.0.0.1' });
    expectError(await http(h, 'POST', '/v1/jobs', { json: { prompt: 'p' } }), 401, 'UNAUTHORIZED');
    const wrong = await http(h, 'POST', '/v1/jobs', { json: { prompt: 'p' }, token: 'alice-key-0123456789abcdeX' });
    expectError(wrong, 401, 'UNAUTHORIZED');
    expect(wrong.headers.get('www-authenticate')).toBe('Bearer');
    expectError(await http(h, 'POST', '/v1/jobs', { json: { prompt: 'p' }, token: ALICE.slice(0, -1) }), 401, 'UNAUTHORIZED');
    expectError(await http(h, 'GET', '/v1/jobs/img_x', { token: `${ALICE}x` }), 401, 'UNAUTHORIZED');
    expect(await h.queue.count()).toBe(0);

    const created = await http<JobView>(h, 'POST', '/v1/jobs', { json: { prompt: 'p', idempotencyKey: 'shared-key' }, token: ALICE });
    expect(created.status).toBe(202);
    expect((await h.queue.getJob(created.body.id))!.data.tenant).toBe('alice');

    expect((await http<JobView>(h, 'GET', `/v1/jobs/${created.body.id}`, { token: ALICE })).status).toBe(200);
    expectError(await http(h, 'GET', `/v1/jobs/${created.body.id}`, { token: BOB }), 404, 'NOT_FOUND');
    expectError(await http(h, 'GET', `/v1/jobs/${created.body.id}`), 401, 'UNAUTHORIZED');

    // Keys are per tenant: bob's identical key makes bob's own job.
    const bobs = await http<JobView>(h, 'POST', '/v1/jobs', { json: { prompt: 'p', idempotencyKey: 'shared-key' }, token: BOB });
    expect(bobs.status).toBe(202);
    expect(bobs.body.id).not.toBe(created.body.id);

    // Probes stay open.
    expect((await http(h, 'GET', '/healthz')).status).toBe(200);
  });

  it('lets a tenant use only its own objects as {s3Key} inputs', async () => {
    const h = await startHarness({ API_KEYS: `alice:${ALICE},bob:${BOB}`, HOST: '127.0.0.1' });
    const prefix = h.config.S3_KEY_PREFIX;
    const png = await image('png');
    await h.store.put(`${prefix}/img_alicesout.png`, png, 'image/png', { tenant: 'alice' });
    await h.store.put(`${prefix}/uploads/bob/ref.png`, png, 'image/png');
    await h.store.put(`${prefix}/loose.png`, png, 'image/png');

    const use = (token: string, s3Key: string) => http(h, 'POST', '/v1/jobs', { json: { prompt: 'edit', inputImages: [{ s3Key }] }, token });
    expect((await use(ALICE, `${prefix}/img_alicesout.png`)).status).toBe(202);
    expect((await use(BOB, `${prefix}/uploads/bob/ref.png`)).status).toBe(202);
    // Another tenant's object, another tenant's uploads and untagged objects look exactly like missing ones.
    for (const [token, key] of [[BOB, `${prefix}/img_alicesout.png`], [ALICE, `${prefix}/uploads/bob/ref.png`], [ALICE, `${prefix}/loose.png`], [ALICE, `${prefix}/nothing.png`]] as const) {
      const answer = expectError(await use(token, key), 400, 'INVALID_REQUEST');
      expect(JSON.stringify(answer)).toContain(`no object ${key}`);
    }
  });
});

describe('probes', () => {
  it('healthz says ok; readyz is 200 when Redis and S3 answer', async () => {
    const h = await startHarness();
    expect(await http(h, 'GET', '/healthz')).toMatchObject({ status: 200, body: { status: 'ok' } });
    expect(await http(h, 'GET', '/readyz')).toMatchObject({ status: 200, body: { status: 'ready', checks: { redis: 'ok', s3: 'ok' } } });
  });

  it('readyz is 503 naming S3 when the S3 endpoint is wrong', async () => {
    const h = await startHarness({ S3_ENDPOINT: await closedPortUrl('http') });
    const res = await http<{ status: string; checks: { redis: string; s3: string }; error: { code: string } }>(h, 'GET', '/readyz');
    expect(res.status).toBe(503);
    expect(res.body.checks.redis).toBe('ok');
    expect(res.body.checks.s3).toMatch(/^failed/);
    expect(res.body.error.code).toBe('STORAGE_UNAVAILABLE');
    expect((await http(h, 'GET', '/healthz')).status).toBe(200);
  });

  it('readyz is 503 naming the bucket when it does not exist', async () => {
    const h = await startHarness({ S3_BUCKET: 'no-such-bucket-here' });
    const res = await http<{ checks: { s3: string } }>(h, 'GET', '/readyz');
    expect(res.status).toBe(503);
    expect(res.body.checks.s3).toMatch(/^failed/);
  });
});

describe('logs', () => {
  it('warns at start-up that there is no authentication, and listens on loopback only', async () => {
    const lines: string[] = [];
    const logger = createLogger({ level: 'info', destination: { write: (line: string) => void lines.push(line) } });
    const h = await startHarness({}, logger);
    expect(new URL(h.api.url).hostname).toBe('127.0.0.1');
    const warning = lines.map((l) => JSON.parse(l) as { level: number; msg: string }).find((l) => l.msg.includes('API_KEYS is not set'));
    expect(warning?.level).toBe(40);
  });


  it('request logs carry method and path but never bodies or the Authorization header', async () => {
    const lines: string[] = [];
    const logger = createLogger({ level: 'info', destination: { write: (line: string) => void lines.push(line) } });
    const KEY = 'logs-key-0123456789abcdef';
    const h = await startHarness({ API_KEYS: `t1:${KEY}`, HOST: '127.0.0.1' }, logger);
    const png = (await image('png')).toString('base64');
    const res = await http<JobView>(h, 'POST', '/v1/jobs', {
      json: { prompt: 'SECRET-PROMPT-TEXT', inputImages: [{ data: png, mimeType: 'image/png' }] }, token: KEY,
    });
    expect(res.status).toBe(202);
    await http(h, 'POST', '/v1/jobs', { json: { prompt: 'SECRET-PROMPT-TEXT', size: 'bad' }, token: KEY });
    await waitFor('request log lines', () => lines.some((l) => l.includes('"path":"/v1/jobs"') && l.includes('"method":"POST"')));
    await waitFor('the job log line', () => lines.some((l) => l.includes(res.body.id)));
    const all = lines.join('\n');
    expect(all).not.toContain('SECRET-PROMPT-TEXT');
    expect(all).not.toContain(KEY);
    expect(all).not.toContain(png.slice(0, 40));
  });
});
