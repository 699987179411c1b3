/**
 * Batches through the real API, worker, simulator, redis-server and s3rver: storing (JSON and
 * NDJSON), validation by line, skipInvalid, size limits, all-or-nothing storing, counts, progress,
 * ETA, cost, job pages, cancellation, tenant isolation, and exactly one batch.completed.
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Queue } from 'bullmq';
import { afterEach, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { startApiServer, type RunningApi } from '../../src/api/server.js';
import { batchKeys } from '../../src/batches/record.js';
import { silentLogger } from '../../src/logging/logger.js';
import { createRedis } from '../../src/queue/connection.js';
import { createImageQueue } from '../../src/queue/image-queue.js';
import { WEBHOOK_QUEUE, webhookDeliveryId } from '../../src/webhooks/queue.js';
import { Queue as BullQueue } from 'bullmq';
import { startSimulator } from '../../src/simulator/server.js';
import { startImageWorker } from '../../src/worker/image-worker.js';
import { startWebhookWorker } from '../../src/webhooks/worker.js';
import { startPipeline, type Pipeline } from '../support/pipeline.js';
import { startWebhookReceiver } from '../support/webhook-receiver.js';
import { testConfig, waitFor } from '../support/stack.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const SECRET = `whsec_${randomBytes(32).toString('base64')}`;

async function pipeline(opts: Parameters<typeof startPipeline>[0] = {}): Promise<Pipeline> {
  const p = await startPipeline({ ...opts, env: { WEBHOOK_SECRET: SECRET, ...opts.env } });
  cleanups.push(() => p.close());
  return p;
}

interface Answer {
  status: number;
  body: any;
}

async function http(
  base: string | { api: RunningApi }, method: string, path: string,
  opts: { json?: unknown; ndjson?: string | Readable; token?: string; contentType?: string } = {},
): Promise<Answer> {
  const url = typeof base === 'string' ? base : base.api.url;
  const headers: Record<string, string> = {};
  let body: string | Readable | undefined;
  if (opts.json !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(opts.json);
  } else if (opts.ndjson !== undefined) {
    headers['content-type'] = opts.contentType ?? 'application/x-ndjson';
    body = opts.ndjson;
  }
  if (opts.token) headers['authorization'] = `Bearer ${opts.token}`;
  const res = await request(`${url}${path}`, { method: method as 'GET', headers, ...(body !== undefined ? { body } : {}) });
  const text = await res.body.text();
  return { status: res.statusCode, body: text ? JSON.parse(text) : undefined };
}

function settleBatch(p: Pipeline, id: string, timeoutMs = 60_000, token?: string): Promise<any> {
  return waitFor(`batch ${id} to finish`, async () => {
    const { body } = await http(p, 'GET', `/v1/batches/${id}`, token ? { token } : {});
    return body.finishedAt ? body : undefined;
  }, timeoutMs, 50);
}

/** Every delivery job of the webhook queue (the outbox's output). */
async function deliveryJobs(p: Pipeline): Promise<{ id: string; data: any }[]> {
  const q = new BullQueue(WEBHOOK_QUEUE, { connection: p.redis, prefix: p.config.QUEUE_PREFIX });
  try {
    const jobs = await q.getJobs(['waiting', 'delayed', 'prioritized', 'active', 'completed', 'failed']);
    return jobs.map((j) => ({ id: String(j.id), data: j.data }));
  } finally {
    await q.close();
  }
}

async function allPages(p: Pipeline, id: string, query: string, limit: number): Promise<{ items: any[]; pages: number }> {
  const items: any[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const res: Answer = await http(p, 'GET', `/v1/batches/${id}/jobs?limit=${limit}${query}${cursor ? `&cursor=${cursor}` : ''}`);
    expect(res.status).toBe(200);
    items.push(...res.body.data);
    cursor = res.body.nextCursor;
    pages += 1;
  } while (cursor);
  return { items, pages };
}

describe('a batch of 1,000 jobs', () => {
  it('runs to the end with counts that add up and exactly one batch.completed, verified by a standardwebhooks receiver', async () => {
    const receiver = await startWebhookReceiver([SECRET]);
    cleanups.push(() => receiver.close());
    const p = await pipeline({ env: { WORKER_CONCURRENCY: 32, WEBHOOK_ALLOWED_CIDRS: '127.0.0.0/8', WEBHOOK_RETRY_SCHEDULE: '0s,100ms' } });
    const deliverer = startWebhookWorker(p.config, { logger: silentLogger() });
    cleanups.push(() => deliverer.close(true));
    const jobs = Array.from({ length: 1000 }, (_, i) => ({ prompt: i % 50 === 7 ? `broken ${i} [sim:no-image]` : `a red bicycle number ${i}` }));
    const created = await http(p, 'POST', '/v1/batches', {
      json: { defaults: { tier: 'draft', size: '512' }, jobs, webhook: { url: `${receiver.url}/hooks` }, metadata: { campaign: 'spring' } },
    });
    expect(created.status).toBe(202);
    expect(created.body).toMatchObject({ status: 'open', total: 1000, metadata: { campaign: 'spring' }, skipped: 0 });
    const id = created.body.id as string;

    const done = await settleBatch(p, id, 120_000);
    const failing = jobs.filter((j) => j.prompt.includes('[sim:no-image]')).length;
    expect(failing).toBe(20);
    expect(done.status).toBe('completed');
    expect(done.counts).toEqual({ queued: 0, running: 0, retrying: 0, succeeded: 980, failed: 20, canceled: 0 });
    expect(done.progress).toBe(1);
    expect(done.etaSeconds).toBe(0);
    expect(done.costUsd).toBeGreaterThan(0);
    expect(Date.parse(done.startedAt)).toBeLessThanOrEqual(Date.parse(done.finishedAt));

    // The cost is the sum of the jobs' costs.
    const all = await allPages(p, id, '', 500);
    expect(all.items).toHaveLength(1000);
    expect(all.items.map((j) => j.index)).toEqual(Array.from({ length: 1000 }, (_, i) => i));
    const sum = all.items.reduce((s, j) => s + (j.costUsd ?? 0), 0);
    expect(done.costUsd).toBeCloseTo(sum, 4);

    // Exactly one batch.completed event, under the batch's deterministic webhook-id.
    const deliveries = (await deliveryJobs(p)).filter((d) => d.data.type === 'batch.completed');
    expect(deliveries).toHaveLength(1);
    expect(deliveries[0]).toMatchObject({ id: webhookDeliveryId('batch.completed', id), data: { objectId: id, url: `${receiver.url}/hooks` } });
    const record = await p.redis.hget(batchKeys(p.config, id).record, 'webhookQueuedAt');
    expect(record).not.toBeNull();

    // On the wire: one delivery, signed, whose data is the batch as GET shows it.
    await waitFor('batch.completed to be delivered', () => receiver.received.length > 0);
    const webhooks = new BullQueue(WEBHOOK_QUEUE, { connection: p.redis, prefix: p.config.QUEUE_PREFIX });
    cleanups.push(() => webhooks.close());
    await waitFor('the delivery to be recorded as done', async () => (await webhooks.getJobState(deliveries[0]!.id)) === 'completed');
    expect(receiver.received).toHaveLength(1);
    const [hook] = receiver.received;
    expect(hook!.headers['webhook-id']).toBe(webhookDeliveryId('batch.completed', id));
    expect(hook!.verified[0]).toMatchObject({ ok: true });
    const payload = JSON.parse(hook!.body);
    expect(payload).toMatchObject({ type: 'batch.completed', data: { id, status: 'completed', total: 1000, counts: { succeeded: 980, failed: 20 } } });
    expect(Buffer.byteLength(hook!.body)).toBeLessThan(20_000);
  }, 150_000);
});

describe('POST /v1/batches validation', () => {
  it('rejects an NDJSON batch with two bad lines whole, naming both lines, and stores nothing', async () => {
    const p = await pipeline({ worker: false });
    const lines = [
      JSON.stringify({ batch: { defaults: { tier: 'draft' } } }),
      JSON.stringify({ prompt: 'fine one' }),
      JSON.stringify({ prompt: 'bad size', size: '3K' }),
      '',
      JSON.stringify({ prompt: 'fine two' }),
      '{"prompt": "broken json"',
    ];
    const res = await http(p, 'POST', '/v1/batches', { ndjson: lines.join('\r\n') + '\r\n', contentType: 'application/x-ndjson; charset=utf-8' });
    expect(res.status).toBe(400);
    expect(res.body.error.code).toBe('INVALID_REQUEST');
    expect(res.body.error.message).toContain('2 of 4 jobs are invalid (line 3, line 6)');
    const paths = res.body.error.issues.map((i: any) => i.path);
    expect(paths).toContain('line 3: size');
    expect(paths).toContain('line 6');
    expect(await p.queue.count()).toBe(0);
  });

  it('names JSON jobs by index, and checks defaults and referenced objects', async () => {
    const p = await pipeline({ worker: false });
    const bad = await http(p, 'POST', '/v1/batches', {
      json: { jobs: [{ prompt: 'ok' }, { prompt: '' }, { prompt: 'x', inputImages: [{ s3Key: 'nope/missing.png' }] }, 'text', { prompt: 'k', idempotencyKey: 'k1' }] },
    });
    expect(bad.status).toBe(400);
    const paths = bad.body.error.issues.map((i: any) => i.path);
    expect(paths).toEqual(expect.arrayContaining(['jobs.1.prompt', 'jobs.3', 'jobs.4.idempotencyKey']));
    // Objects are looked up only when the batch is otherwise valid.
    const missing = await http(p, 'POST', '/v1/batches', { json: { jobs: [{ prompt: 'ok' }, { prompt: 'x', inputImages: [{ s3Key: 'nope/missing.png' }] }] } });
    expect(missing.status).toBe(400);
    expect(missing.body.error.issues.map((i: any) => i.path)).toEqual(['jobs.1.inputImages.0.s3Key']);

    const defaults = await http(p, 'POST', '/v1/batches', { json: { defaults: { size: '9K', colour: 'red' }, jobs: [{ prompt: 'a' }] } });
    expect(defaults.status).toBe(400);
    expect(defaults.body.error.issues.map((i: any) => i.path)).toEqual(['defaults.size', 'defaults.colour']);

    const events = await http(p, 'POST', '/v1/batches', { json: { webhook: { url: 'https://example.com/h', events: ['image.failed'] }, jobs: [{ prompt: 'a' }] } });
    expect(events.status).toBe(400);
    expect(events.body.error.issues).toEqual([{ path: 'webhook.events', message: expect.stringContaining('receives batch.completed only (not image.failed)') }]);

    const empty = await http(p, 'POST', '/v1/batches', { json: { jobs: [] } });
    expect(empty.status).toBe(400);
    const unknown = await http(p, 'POST', '/v1/batches', { json: { jobs: [{ prompt: 'a' }], extra: 1 } });
    expect(unknown.status).toBe(400);
    expect(await p.queue.count()).toBe(0);
  });

  it('caps the issues listed and counts the rest', async () => {
    const p = await pipeline({ worker: false });
    const jobs = Array.from({ length: 150 }, () => ({ prompt: '' }));
    const res = await http(p, 'POST', '/v1/batches', { json: { jobs } });
    expect(res.status).toBe(400);
    expect(res.body.error.issues).toHaveLength(101);
    expect(res.body.error.issues[100]).toEqual({ path: '(more)', message: '50 more issues not shown' });
  });

  it('skipInvalid stores the valid jobs and reports the others (NDJSON by query, JSON by field)', async () => {
    const p = await pipeline({ worker: false });
    const ndjson = [{ prompt: 'one' }, { prompt: 'two', tier: 'gold' }, { prompt: 'three' }].map((j) => JSON.stringify(j)).join('\n');
    const a = await http(p, 'POST', '/v1/batches?skipInvalid=true', { ndjson });
    expect(a.status).toBe(202);
    expect(a.body).toMatchObject({ total: 2, skipped: 1, rejected: { count: 1, omitted: 0, jobs: [{ line: 2, issues: [{ path: 'line 2: tier' }] }] } });

    const b = await http(p, 'POST', '/v1/batches', { json: { skipInvalid: true, jobs: [{ prompt: '' }, { prompt: 'ok' }] } });
    expect(b.status).toBe(202);
    expect(b.body).toMatchObject({ total: 1, skipped: 1, rejected: { count: 1, jobs: [{ index: 0 }] } });
    expect(await p.queue.count()).toBe(3);

    // Nothing valid at all is still a 400.
    const c = await http(p, 'POST', '/v1/batches', { json: { skipInvalid: true, jobs: [{ prompt: '' }] } });
    expect(c.status).toBe(400);
    expect(c.body.error.message).toContain('skipInvalid leaves no job to store');
  });

  it('refuses a JSON batch over 10,000 jobs and an NDJSON batch over 100,000 lines with 413', async () => {
    const p = await pipeline({ worker: false });
    const big = await http(p, 'POST', '/v1/batches', { json: { jobs: Array.from({ length: 10_001 }, () => ({ prompt: 'p' })) } });
    expect(big.status).toBe(413);
    expect(big.body.error.code).toBe('BATCH_TOO_LARGE');
    expect(big.body.error.message).toContain('10001 jobs; a JSON batch takes at most 10000');

    function* lines() {
      for (let i = 0; i < 100_001; i++) yield `{"prompt":"p${i}"}\n`;
    }
    const huge = await http(p, 'POST', '/v1/batches', { ndjson: Readable.from(lines()) });
    expect(huge.status).toBe(413);
    expect(huge.body.error.code).toBe('BATCH_TOO_LARGE');
    expect(huge.body.error.message).toContain('100001 job lines');
    expect(await p.queue.count()).toBe(0);
  });

  it('streams a large NDJSON batch (20,000 lines) into one batch', async () => {
    const p = await pipeline({ worker: false });
    function* lines() {
      yield `${JSON.stringify({ batch: { defaults: { tier: 'draft', priority: 3 }, metadata: { run: 'n1' } } })}\n`;
      for (let i = 0; i < 20_000; i++) yield `${JSON.stringify({ prompt: `prompt ${i}` })}\n`;
    }
    const res = await http(p, 'POST', '/v1/batches', { ndjson: Readable.from(lines()) });
    expect(res.status).toBe(202);
    expect(res.body).toMatchObject({ total: 20_000, status: 'open', metadata: { run: 'n1' } });
    expect(res.body.counts.queued).toBe(20_000);
    expect(await p.queue.count()).toBe(20_000);
    const first = await http(p, 'GET', `/v1/batches/${res.body.id}/jobs?limit=1`);
    const job = await p.get(first.body.data[0].id);
    expect(job).toMatchObject({ batchId: res.body.id, request: { prompt: 'prompt 0', tier: 'draft', priority: 3 } });
  }, 60_000);

  it('stores inline input images in the bucket, as for single jobs', async () => {
    const p = await pipeline({ worker: false });
    const sharp = (await import('sharp')).default;
    const png = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#f00' } }).png().toBuffer();
    const res = await http(p, 'POST', '/v1/batches', {
      json: { jobs: [{ prompt: 'edit this', inputImages: [{ data: png.toString('base64'), mimeType: 'image/png' }] }] },
    });
    expect(res.status).toBe(202);
    const page = await http(p, 'GET', `/v1/batches/${res.body.id}/jobs`);
    const job = await p.get(page.body.data[0].id);
    expect(job.request.inputImages[0].s3Key).toContain(`inputs/${job.id}/0.png`);
    expect((await p.store.get(job.request.inputImages[0].s3Key)).body.equals(png)).toBe(true);
  });

  it('refuses webhooks when WEBHOOK_SECRET is not set', async () => {
    const p = await startPipeline({ worker: false });
    cleanups.push(() => p.close());
    const res = await http(p, 'POST', '/v1/batches', { json: { webhook: { url: 'https://example.com/h' }, jobs: [{ prompt: 'a' }] } });
    expect(res.status).toBe(400);
    expect(res.body.error.issues[0].path).toBe('webhook');
    const perJob = await http(p, 'POST', '/v1/batches', { json: { jobs: [{ prompt: 'a', webhook: { url: 'https://example.com/h' } }] } });
    expect(perJob.status).toBe(400);
    expect(perJob.body.error.issues[0].path).toBe('jobs.0.webhook');
  });
});

describe('storing is all or nothing', () => {
  it('removes the jobs already stored when a chunk fails, and says so with 503', async () => {
    const config = testConfig({ PORT: 0, WEBHOOK_SECRET: SECRET });
    const redis = createRedis(config, 'producer');
    const real = createImageQueue(config, redis);
    let calls = 0;
    // A queue whose third addBulk fails (Redis dropping mid-batch): chunks of 64 and 256 are in.
    const failing = new Proxy(real, {
      get(target, prop) {
        if (prop === 'addBulk') {
          return async (jobs: Parameters<Queue['addBulk']>[0]) => {
            calls += 1;
            if (calls === 3) throw new Error('injected: connection lost');
            return target.addBulk(jobs);
          };
        }
        const value = Reflect.get(target, prop, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    }) as Queue;
    const api = await startApiServer(config, { queue: failing, redis, logger: silentLogger() });
    cleanups.push(async () => {
      await api.close();
      await real.close();
      redis.disconnect();
    });

    const jobs = Array.from({ length: 2_500 }, (_, i) => ({ prompt: `job ${i}` }));
    const res = await http(api.url, 'POST', '/v1/batches', { json: { jobs } });
    expect(res.status).toBe(503);
    expect(res.body.error.code).toBe('QUEUE_UNAVAILABLE');
    expect(res.body.error.message).toMatch(/failed after 320 of 2500 jobs were queued \(.*injected: connection lost\).*the 320 stored jobs were removed/);
    expect(calls).toBe(3);
    const counts = await real.getJobCounts();
    expect(Object.values(counts).reduce((a, b) => a + b, 0)).toBe(0);

    // The record stays, marked, for whoever looks.
    const keysFound = await redis.keys(`${config.QUEUE_PREFIX}:pm:batch:*`);
    const recordKey = keysFound.find((k) => /:batch:bat_[^:]+$/.test(k))!;
    expect(await redis.hget(recordKey, 'status')).toBe('failed_to_store');
    const id = recordKey.split(':').pop()!;
    const view = await http(api.url, 'GET', `/v1/batches/${id}`);
    expect(view.body).toMatchObject({ status: 'failed_to_store', total: 2500 });
  });
});

describe('storing is all or nothing, with a worker already running the first jobs', () => {
  it('cancels the stored jobs a worker had taken, and says so', async () => {
    const sim = await startSimulator({ timeScale: 0, seed: 7, peak: 'off' });
    const config = testConfig({ PORT: 0, GEMINI_BASE_URL: sim.url, WORKER_CONCURRENCY: 4, PEAK_WINDOWS: 'none', WEBHOOK_SECRET: SECRET });
    const redis = createRedis(config, 'producer');
    const real = createImageQueue(config, redis);
    let calls = 0;
    // The second chunk fails once the worker holds four jobs of the first.
    const failing = new Proxy(real, {
      get(target, prop) {
        if (prop === 'addBulk') {
          return async (jobs: Parameters<Queue['addBulk']>[0]) => {
            calls += 1;
            if (calls === 2) {
              await waitFor('the worker to take four jobs', async () => (await target.getActiveCount()) === 4);
              throw new Error('injected: connection lost');
            }
            return target.addBulk(jobs);
          };
        }
        const value = Reflect.get(target, prop, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    }) as Queue;
    const api = await startApiServer(config, { queue: failing, redis, logger: silentLogger() });
    const worker = startImageWorker(config, { logger: silentLogger() });
    cleanups.push(async () => {
      await worker.close(1_000);
      await api.close();
      await real.close();
      redis.disconnect();
      await sim.close();
    });

    const jobs = Array.from({ length: 1_500 }, (_, i) => ({ prompt: `hang ${i} [sim:hang]` }));
    const res = await http(api.url, 'POST', '/v1/batches', { json: { jobs } });
    expect(res.status).toBe(503);
    expect(res.body.error.code).toBe('QUEUE_UNAVAILABLE');
    expect(res.body.error.message).toContain('failed after 64 of 1500 jobs were queued');
    expect(res.body.error.message).toContain('the 64 stored jobs were removed (4 a worker had already taken were cancelled), so nothing of this batch will run');

    // The four end cancelled: their upstream calls are aborted and nothing else is left.
    await waitFor('the four taken jobs to end cancelled', async () => (await real.getFailedCount()) === 4 && (await real.getActiveCount()) === 0);
    const failed = await real.getFailed();
    expect(failed.every((j) => (j.progress as { canceledAt?: string }).canceledAt)).toBe(true);
    expect(await real.count()).toBe(0);
    await waitFor('the simulator to see four aborted calls', () => sim.requests().filter((r) => r.aborted).length === 4);
  });
});

describe('reading a batch', () => {
  it('pages its jobs in order and by status, with outputs, errors, cost and progress', async () => {
    const p = await pipeline();
    const jobs = Array.from({ length: 30 }, (_, i) => ({ prompt: i % 6 === 0 ? `bad ${i} [sim:no-image]` : `good ${i}` }));
    const created = await http(p, 'POST', '/v1/batches', { json: { defaults: { tier: 'draft', size: '512' }, jobs } });
    const id = created.body.id;
    const done = await settleBatch(p, id);
    expect(done.counts).toMatchObject({ succeeded: 25, failed: 5 });

    const all = await allPages(p, id, '', 7);
    expect(all.pages).toBe(5);
    expect(all.items.map((j) => j.index)).toEqual(Array.from({ length: 30 }, (_, i) => i));

    const failed = await allPages(p, id, '&status=failed', 2);
    expect(failed.items.map((j) => j.index)).toEqual([0, 6, 12, 18, 24]);
    expect(failed.items.every((j) => j.status === 'failed' && j.error?.code === 'NO_IMAGE')).toBe(true);

    const succeeded = await allPages(p, id, '&status=succeeded', 10);
    expect(succeeded.items).toHaveLength(25);
    const img = await request(succeeded.items[0].output.url);
    expect(img.statusCode).toBe(200);
    expect((await img.body.arrayBuffer()).byteLength).toBe(succeeded.items[0].output.bytes);

    const none = await http(p, 'GET', `/v1/batches/${id}/jobs?status=queued`);
    expect(none.body).toEqual({ data: [], nextCursor: null });
    const badQuery = await http(p, 'GET', `/v1/batches/${id}/jobs?status=done&limit=0`);
    expect(badQuery.status).toBe(400);
    expect(badQuery.body.error.issues.map((i: any) => i.path)).toEqual(['query.status', 'query.limit']);
  });

  it('shows progress, running jobs and an ETA while it runs', async () => {
    const p = await pipeline({ env: { WORKER_CONCURRENCY: 3 } });
    // Two jobs hang until cancelled (taken first: priority 1), four finish at once on the third slot.
    const jobs = [{ prompt: 'hang a [sim:hang]' }, { prompt: 'hang b [sim:hang]' }, ...Array.from({ length: 4 }, (_, i) => ({ prompt: `quick ${i}` }))];
    const created = await http(p, 'POST', '/v1/batches', { json: { defaults: { tier: 'draft', size: '512', priority: 1 }, jobs: jobs.map((j, i) => (i < 2 ? { ...j, priority: 1 } : { ...j, priority: 2 })) } });
    const id = created.body.id;
    const mid = await waitFor('the quick jobs to end', async () => {
      const { body } = await http(p, 'GET', `/v1/batches/${id}`);
      return body.counts.succeeded === 4 && body.counts.running === 2 ? body : undefined;
    });
    expect(mid).toMatchObject({ status: 'open', progress: 0.6667, finishedAt: null, counts: { queued: 0, retrying: 0, failed: 0 } });
    expect(mid.startedAt).not.toBeNull();
    expect(mid.etaSeconds).toBeGreaterThanOrEqual(0);
    const running = await http(p, 'GET', `/v1/batches/${id}/jobs?status=running`);
    expect(running.body.data.map((j: any) => j.index).sort()).toEqual([0, 1]);

    // DELETE aborts the running ones through their workers.
    const del = await http(p, 'DELETE', `/v1/batches/${id}`);
    expect(del.status).toBe(202);
    expect(del.body).toMatchObject({ canceled: 0, canceling: 2, status: 'canceled' });
    const end = await settleBatch(p, id);
    expect(end).toMatchObject({ status: 'canceled', counts: { succeeded: 4, canceled: 2, queued: 0, running: 0 }, progress: 1 });
    await waitFor('the simulator to see both calls aborted', () => p.sim.requests().filter((r: any) => r.aborted).length === 2);
  });
});

describe('DELETE /v1/batches/:id', () => {
  it('cancels the queued jobs at once; counts add up and batch.completed is queued once', async () => {
    const p = await pipeline({ worker: false });
    const created = await http(p, 'POST', '/v1/batches', {
      json: { webhook: { url: 'https://example.com/done' }, jobs: Array.from({ length: 1_200 }, (_, i) => ({ prompt: `p${i}` })) },
    });
    const id = created.body.id;
    const queued = await allPages(p, id, '&status=queued', 500);
    expect(queued.items).toHaveLength(1_200);

    const del = await http(p, 'DELETE', `/v1/batches/${id}`);
    expect(del.status).toBe(200);
    expect(del.body).toMatchObject({ canceled: 1_200, canceling: 0, status: 'canceled', progress: 1 });
    expect(del.body.counts).toEqual({ queued: 0, running: 0, retrying: 0, succeeded: 0, failed: 0, canceled: 1_200 });
    expect(del.body.finishedAt).not.toBeNull();
    expect(await p.queue.getWaitingCount()).toBe(0);
    expect(await p.queue.getPrioritizedCount()).toBe(0);

    const job = await p.get(queued.items[5].id);
    expect(job.status).toBe('canceled');
    const canceledPage = await http(p, 'GET', `/v1/batches/${id}/jobs?status=canceled&limit=3`);
    expect(canceledPage.body.data.map((j: any) => j.index)).toEqual([0, 1, 2]);

    // A second DELETE changes nothing and queues nothing more.
    const again = await http(p, 'DELETE', `/v1/batches/${id}`);
    expect(again.body).toMatchObject({ canceled: 0, counts: { canceled: 1_200 } });
    const events = (await deliveryJobs(p)).filter((d) => d.data.type === 'batch.completed');
    expect(events).toHaveLength(1);
    expect(events[0]!.data.objectId).toBe(id);
  });

  it('answers 409 while the batch is being stored, and cancels a batch whose storing was abandoned', async () => {
    const p = await pipeline({ worker: false });
    const created = await http(p, 'POST', '/v1/batches', { json: { jobs: [{ prompt: 'a' }, { prompt: 'b' }] } });
    const key = batchKeys(p.config, created.body.id).record;
    // As if the API were still storing it (total 3, two in so far).
    await p.redis.hset(key, 'status', 'storing', 'total', 3);
    const res = await http(p, 'DELETE', `/v1/batches/${created.body.id}`);
    expect(res.status).toBe(409);
    expect(res.body.error).toMatchObject({ code: 'BATCH_STORING', retryable: true });
    // As if that API process had died ten minutes ago: what got in is cancelled and is the total.
    await p.redis.hset(key, 'createdAt', Date.now() - 10 * 60_000);
    const del = await http(p, 'DELETE', `/v1/batches/${created.body.id}`);
    expect(del.status).toBe(200);
    expect(del.body).toMatchObject({ canceled: 2, status: 'canceled', total: 2, progress: 1 });
    expect(del.body.finishedAt).not.toBeNull();
  });

  it('answers 404 for an unknown batch', async () => {
    const p = await pipeline({ worker: false });
    expect((await http(p, 'DELETE', '/v1/batches/bat_nope')).status).toBe(404);
    expect((await http(p, 'GET', '/v1/batches/not-a-batch')).status).toBe(404);
  });
});

describe('tenants', () => {
  it('see only their own batches', async () => {
    const p = await pipeline({ worker: false, env: { API_KEYS: 'acme:acme-key-0123456789,globex:globex-key-0123456789' } });
    const created = await http(p, 'POST', '/v1/batches', { token: 'acme-key-0123456789', json: { jobs: [{ prompt: 'mine' }] } });
    expect(created.status).toBe(202);
    const id = created.body.id;
    expect((await http(p, 'GET', `/v1/batches/${id}`, { token: 'acme-key-0123456789' })).status).toBe(200);
    for (const [method, path] of [['GET', `/v1/batches/${id}`], ['GET', `/v1/batches/${id}/jobs`], ['DELETE', `/v1/batches/${id}`]] as const) {
      const res = await http(p, method, path, { token: 'globex-key-0123456789' });
      expect(res.status).toBe(404);
      expect(res.body.error.code).toBe('NOT_FOUND');
    }
    expect((await http(p, 'POST', '/v1/batches', { json: { jobs: [{ prompt: 'x' }] } })).status).toBe(401);
    // The jobs carry the tenant too.
    const page = await http(p, 'GET', `/v1/batches/${id}/jobs`, { token: 'acme-key-0123456789' });
    expect((await http(p, 'GET', `/v1/jobs/${page.body.data[0].id}`, { token: 'globex-key-0123456789' })).status).toBe(404);
  });
});
