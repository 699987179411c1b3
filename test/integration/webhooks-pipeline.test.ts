/**
 * Webhooks end to end: a job submitted with `webhook` through the real API, image worker and webhook
 * worker; the receiver verifies with `standardwebhooks`. Also the terminal hook's idempotency and the
 * deliveries API (listing, pagination, tenant scoping, replay).
 */
import { createHash } from 'node:crypto';
import { Queue } from 'bullmq';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/logging/logger.js';
import type { StoredJobData } from '../../src/jobs/record.js';
import { DeliveryStore } from '../../src/webhooks/deliveries.js';
import { createWebhookEventHook } from '../../src/webhooks/outbox.js';
import { WEBHOOK_QUEUE, webhookDeliveryId } from '../../src/webhooks/queue.js';
import { MAX_PAYLOAD_BYTES } from '../../src/webhooks/render.js';
import { startWebhookWorker, type RunningWebhookWorker } from '../../src/webhooks/worker.js';
import { startImageWorker } from '../../src/worker/image-worker.js';
import { startPipeline, type Pipeline } from '../support/pipeline.js';
import { waitFor } from '../support/stack.js';
import { newSecret, startWebhookReceiver, type WebhookReceiver } from '../support/webhook-receiver.js';

const ALPHA = 'alpha-key-0123456789';
const BETA = 'beta-key-0123456789';

let p: Pipeline | undefined;
let receiver: WebhookReceiver | undefined;
let worker: RunningWebhookWorker | undefined;
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0)) await fn();
  await worker?.close(true);
  await p?.close();
  await receiver?.close();
  p = undefined;
  receiver = undefined;
  worker = undefined;
});

async function start(opts: { env?: Record<string, string | number>; webhookWorker?: boolean } = {}) {
  const secret = newSecret();
  receiver = await startWebhookReceiver([secret]);
  p = await startPipeline({
    env: { WEBHOOK_SECRET: secret, WEBHOOK_ALLOWED_CIDRS: '127.0.0.0/8,::1/128', WEBHOOK_RETRY_SCHEDULE: '0s,50ms,100ms', ...opts.env },
  });
  if (opts.webhookWorker !== false) worker = startWebhookWorker(p.config, { logger: silentLogger() });
  return { p, receiver, deliveries: new DeliveryStore(p.redis, p.config) };
}

async function api(method: 'GET' | 'POST', path: string, key?: string, body?: unknown) {
  const headers: Record<string, string> = {};
  if (key) headers['authorization'] = `Bearer ${key}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await request(`${p!.api.url}${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  return { status: res.statusCode, body: (await res.body.json()) as Record<string, any> };
}

/** The job view without its presigned URL (signed at a different second each time it is made). */
function withoutUrl(view: Record<string, any>): Record<string, any> {
  return view['output'] ? { ...view, output: { ...view['output'], url: '(presigned)' } } : view;
}

describe('webhooks end to end', () => {
  it('a job with `webhook` sends image.succeeded whose data is GET /v1/jobs/:id: presigned URL that works, no image bytes, under 20 KB', async () => {
    const { p, receiver, deliveries } = await start();
    const { status, body } = await p.submit({ prompt: 'a lighthouse e2e-webhook', tier: 'draft', webhook: { url: `${receiver.url}/hooks/pixelmill` } });
    expect(status).toBe(202);
    const id = body['id'] as string;
    const got = await waitFor('the webhook', () => receiver.received[0]);

    expect(got.verified[0]).toMatchObject({ ok: true });
    expect(got.path).toBe('/hooks/pixelmill');
    expect(got.headers['webhook-id']).toBe(webhookDeliveryId('image.succeeded', id));
    const payload = JSON.parse(got.body) as { type: string; timestamp: string; data: Record<string, any> };
    expect(payload.type).toBe('image.succeeded');
    expect(Number.isNaN(Date.parse(payload.timestamp))).toBe(false);
    const view = await p.get(id);
    expect(view['status']).toBe('succeeded');
    expect(withoutUrl(payload.data)).toEqual(withoutUrl(view));
    expect(payload.data['output']['key']).toBe(view['output']['key']);

    const image = await request(payload.data['output']['url'] as string);
    expect(image.statusCode).toBe(200);
    const bytes = Buffer.from(await image.body.arrayBuffer());
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(view['output']['sha256']);
    expect(Buffer.byteLength(got.body)).toBeLessThan(MAX_PAYLOAD_BYTES);
    expect(got.body).not.toMatch(/[A-Za-z0-9+/]{500,}/); // no base64 image anywhere
    expect(bytes.length).toBeGreaterThan(Buffer.byteLength(got.body));

    const listed = await api('GET', `/v1/jobs/${id}/deliveries`);
    expect(listed.status).toBe(200);
    expect(listed.body['deliveries']).toEqual([
      expect.objectContaining({ id: got.headers['webhook-id'], type: 'image.succeeded', objectId: id, status: 'delivered', attempts: 1, lastStatusCode: 200 }),
    ]);
    expect((await deliveries.get(got.headers['webhook-id']!))?.status).toBe('delivered');
  });

  it('a failing job sends image.failed with the job view (error code), once', async () => {
    const { p, receiver } = await start();
    const { body } = await p.submit({ prompt: 'blocked [sim:image-safety] e2e-webhook-fail', tier: 'premium', webhook: { url: `${receiver.url}/h` } });
    const id = body['id'] as string;
    const got = await waitFor('the webhook', () => receiver.received[0]);
    const payload = JSON.parse(got.body) as { type: string; data: Record<string, any> };
    expect(payload.type).toBe('image.failed');
    expect(payload.data['id']).toBe(id);
    expect(payload.data['status']).toBe('failed');
    expect(payload.data['error']['code']).toBe('CONTENT_BLOCKED');
    expect(payload.data).toEqual(await p.get(id));
    await waitFor('the delivery to be recorded', async () => (await api('GET', `/v1/jobs/${id}/deliveries`)).body['deliveries'][0]?.status === 'delivered');
    expect(receiver.received).toHaveLength(1);

    // An image.succeeded queued by an attempt that then died (the job ended failed) is skipped, not sent.
    const job = await p.queue.getJob(id);
    await createWebhookEventHook(p.config, p.redis)({ jobId: id, data: job!.data as StoredJobData, status: 'succeeded', costUsd: 0, at: new Date().toISOString() });
    const skipped = await waitFor('the stale event to be skipped', async () => {
      const d = (await api('GET', `/v1/jobs/${id}/deliveries`)).body['deliveries'].find((x: any) => x.type === 'image.succeeded');
      return d?.status === 'skipped' ? d : undefined;
    });
    expect(skipped).toMatchObject({ attempts: 0, lastError: expect.stringMatching(/ended as failed/) });
    expect(receiver.received).toHaveLength(1);
  });

  it('an event queued before the job records its final state waits for it (no attempt used), then sends the final view', async () => {
    const secret = newSecret();
    const receiver = await startWebhookReceiver([secret]);
    cleanups.push(() => receiver.close());
    p = await startPipeline({ worker: false, env: { WEBHOOK_SECRET: secret, WEBHOOK_ALLOWED_CIDRS: '127.0.0.0/8', WEBHOOK_RETRY_SCHEDULE: '0s,50ms' } });
    worker = startWebhookWorker(p.config, { logger: silentLogger() });
    const deliveries = new DeliveryStore(p.redis, p.config);
    const { body } = await p.submit({ prompt: 'early e2e-webhook-wait', tier: 'draft', webhook: { url: `${receiver.url}/h` } });
    const id = body['id'] as string;
    const job = await p.queue.getJob(id);
    // As if a worker ran the hook and died before recording the result: the job is still queued.
    await createWebhookEventHook(p.config, p.redis)({ jobId: id, data: job!.data as StoredJobData, status: 'succeeded', costUsd: 0, at: new Date().toISOString() });
    const deliveryId = webhookDeliveryId('image.succeeded', id);
    const webhookQueue = new Queue(WEBHOOK_QUEUE, { connection: p.redis, prefix: p.config.QUEUE_PREFIX });
    try {
      await waitFor('the delivery to be parked until the job ends', async () => (await webhookQueue.getJobState(deliveryId)) === 'delayed');
    } finally {
      await webhookQueue.close();
    }
    expect(receiver.received).toHaveLength(0);
    expect(await deliveries.get(deliveryId)).toMatchObject({ status: 'pending', attempts: 0 });

    const imageWorker = startImageWorker(p.config, { logger: silentLogger() });
    cleanups.push(() => imageWorker.close(500));
    const got = await waitFor('the webhook', () => receiver.received[0]);
    const payload = JSON.parse(got.body) as { data: Record<string, any> };
    expect(payload.data['status']).toBe('succeeded');
    expect(payload.data['output']['key']).toEqual(expect.any(String));
    await waitFor('delivered', async () => (await deliveries.get(deliveryId))?.status === 'delivered');
    expect(receiver.received).toHaveLength(1);
    expect((await deliveries.get(deliveryId))?.attempts).toBe(1);
  });

  it('a retry keeps the body while its presigned URL is fresh, and renders it again (same webhook-id) when the link is going stale', async () => {
    const { p, receiver } = await start({ env: { PRESIGN_TTL: '2s', WEBHOOK_RETRY_SCHEDULE: '0s,1100ms,10ms' } });
    receiver.answer((_req, n) => (n < 2 ? { status: 503 } : { status: 200 }));
    const { body } = await p.submit({ prompt: 'fresh links e2e-webhook-fresh', tier: 'draft', webhook: { url: `${receiver.url}/h` } });
    await waitFor('three sends', () => receiver.received.length === 3);
    const [a, b, c] = receiver.received.map((r) => JSON.parse(r.body) as { timestamp: string; data: Record<string, any> });
    expect(new Set(receiver.received.map((r) => r.headers['webhook-id']))).toEqual(new Set([webhookDeliveryId('image.succeeded', body['id'] as string)]));
    // 1.1 s after a 2 s link was signed it is past half its life: the second send carries a new link.
    expect(b!.data['output']['url']).not.toBe(a!.data['output']['url']);
    expect(receiver.received[2]!.body).toBe(receiver.received[1]!.body);
    expect(withoutUrl(b!.data)).toEqual(withoutUrl(a!.data));
    expect(c!.timestamp).toBe(a!.timestamp);
  });

  it('the terminal hook is idempotent: run twice (a re-run after a crash), one delivery; canceled and filtered events send nothing', async () => {
    const { p, receiver, deliveries } = await start({ webhookWorker: false });
    const { body } = await p.submit({ prompt: 'twice e2e-webhook-hook', tier: 'draft', webhook: { url: `${receiver.url}/h` } });
    const id = body['id'] as string;
    await p.settle(id);
    const job = await p.queue.getJob(id);
    const hook = createWebhookEventHook(p.config, p.redis);
    const data = job!.data as StoredJobData;
    // The worker ran the hook once already; a re-run of the job would run it again.
    await hook({ jobId: id, data, status: 'succeeded', costUsd: 0, at: new Date().toISOString() });
    await hook({ jobId: id, data, status: 'succeeded', costUsd: 0, at: new Date().toISOString() });
    await hook({ jobId: id, data, status: 'canceled', costUsd: 0, at: new Date().toISOString() });
    await hook({ jobId: id, data: { ...data, request: { ...data.request, webhook: { url: `${receiver.url}/h`, events: ['image.succeeded'] } } }, status: 'failed', costUsd: 0, at: new Date().toISOString() });

    worker = startWebhookWorker(p.config, { logger: silentLogger() });
    const deliveryId = webhookDeliveryId('image.succeeded', id);
    await waitFor('the delivery', async () => (await deliveries.get(deliveryId))?.status === 'delivered');
    const forJob = await deliveries.forObject(id);
    expect(forJob.map((d) => [d.type, d.status])).toEqual([['image.succeeded', 'delivered']]);
    expect(receiver.received).toHaveLength(1);
    expect(await deliveries.get(webhookDeliveryId('image.failed', id))).toBeUndefined();
  });
});

describe('deliveries API', () => {
  it('lists deliveries newest first, paginated by cursor and by status, for the caller tenant only; 404 for another tenant', async () => {
    const { receiver } = await start({ env: { API_KEYS: `alpha:${ALPHA},beta:${BETA}`, HOST: '127.0.0.1' } });
    receiver.answer((req) => (req.path === '/fail' ? { status: 400, body: 'no thanks' } : { status: 200 }));
    const submit = async (key: string, prompt: string, path: string) => {
      const res = await api('POST', '/v1/jobs', key, { prompt, tier: 'draft', webhook: { url: `${receiver.url}${path}` } });
      expect(res.status).toBe(202);
      return res.body['id'] as string;
    };
    const ids: string[] = [];
    for (const [i, path] of ['/ok', '/ok', '/fail'].entries()) {
      ids.push(await submit(ALPHA, `alpha ${i} e2e-list`, path));
      // Creation order is the listing order: wait for each delivery before the next job.
      await waitFor(`delivery ${i}`, async () => (await api('GET', `/v1/jobs/${ids[i]}/deliveries`, ALPHA)).body['deliveries'][0]?.status !== 'pending');
    }
    const betaJob = await submit(BETA, 'beta e2e-list', '/ok');
    await waitFor('beta delivery', async () => (await api('GET', `/v1/jobs/${betaJob}/deliveries`, BETA)).body['deliveries'][0]?.status === 'delivered');

    const page1 = await api('GET', '/v1/webhooks/deliveries?limit=2', ALPHA);
    expect(page1.status).toBe(200);
    expect(page1.body['deliveries'].map((d: any) => d.objectId)).toEqual([ids[2], ids[1]]);
    expect(page1.body['nextCursor']).toEqual(expect.any(String));
    const page2 = await api('GET', `/v1/webhooks/deliveries?limit=2&cursor=${page1.body['nextCursor']}`, ALPHA);
    expect(page2.body['deliveries'].map((d: any) => d.objectId)).toEqual([ids[0]]);
    expect(page2.body['nextCursor']).toBeNull();

    const failed = await api('GET', '/v1/webhooks/deliveries?status=failed', ALPHA);
    expect(failed.body['deliveries']).toEqual([expect.objectContaining({ objectId: ids[2], status: 'failed', lastStatusCode: 400, attempts: 1 })]);
    expect(failed.body['deliveries'][0].lastError).toContain('HTTP 400: no thanks');
    const delivered = await api('GET', '/v1/webhooks/deliveries?status=delivered', ALPHA);
    expect(delivered.body['deliveries'].map((d: any) => d.objectId)).toEqual([ids[1], ids[0]]);

    const beta = await api('GET', '/v1/webhooks/deliveries', BETA);
    expect(beta.body['deliveries'].map((d: any) => d.objectId)).toEqual([betaJob]);
    expect((await api('GET', `/v1/jobs/${ids[0]}/deliveries`, BETA)).status).toBe(404);
    expect((await api('GET', '/v1/webhooks/deliveries', undefined)).status).toBe(401);

    const bad = await api('GET', '/v1/webhooks/deliveries?status=lost&cursor=zzz', ALPHA);
    expect(bad.status).toBe(400);
    expect(bad.body['error']['issues'].map((i: any) => i.path)).toEqual(['status']);
    const badCursor = await api('GET', '/v1/webhooks/deliveries?cursor=bm90LWEtY3Vyc29y', ALPHA);
    expect(badCursor.status).toBe(400);
    expect(badCursor.body['error']['issues'].map((i: any) => i.path)).toEqual(['cursor']);
  });

  it('replay re-sends a dead letter with the same webhook-id (fresh body), only for its tenant', async () => {
    const { receiver } = await start({ env: { API_KEYS: `alpha:${ALPHA},beta:${BETA}`, HOST: '127.0.0.1' } });
    let down = true;
    receiver.answer(() => (down ? { status: 503 } : { status: 200 }));
    const { body } = await api('POST', '/v1/jobs', ALPHA, { prompt: 'replay me e2e-replay', tier: 'draft', webhook: { url: `${receiver.url}/h` } });
    const id = body['id'] as string;
    const dead = await waitFor('the dead letter', async () => (await api('GET', '/v1/webhooks/deliveries?status=failed', ALPHA)).body['deliveries'][0]);
    expect(dead).toMatchObject({ objectId: id, attempts: 3, replays: 0 });
    expect(receiver.received).toHaveLength(3);

    expect((await api('POST', `/v1/webhooks/deliveries/${dead.id}/replay`, BETA)).status).toBe(404);
    expect((await api('POST', '/v1/webhooks/deliveries/evt_nope/replay', ALPHA)).status).toBe(404);
    down = false;
    const replayed = await api('POST', `/v1/webhooks/deliveries/${dead.id}/replay`, ALPHA);
    expect(replayed.status).toBe(202);
    expect(replayed.body).toMatchObject({ id: dead.id, status: 'pending', replays: 1 });

    const rec = await waitFor('the replay to be delivered', async () => {
      const d = (await api('GET', `/v1/jobs/${id}/deliveries`, ALPHA)).body['deliveries'][0];
      return d?.status === 'delivered' ? d : undefined;
    });
    expect(rec).toMatchObject({ attempts: 4, replays: 1, lastStatusCode: 200 });
    expect(receiver.received.map((r) => r.headers['webhook-id'])).toEqual([dead.id, dead.id, dead.id, dead.id]);
    expect(receiver.received.every((r) => r.verified[0]!.ok)).toBe(true);
    const [first, last] = [JSON.parse(receiver.received[0]!.body), JSON.parse(receiver.received[3]!.body)];
    expect(last.type).toBe('image.succeeded');
    expect(last.timestamp).toBe(first.timestamp);
    expect(withoutUrl(last.data)).toEqual(withoutUrl(first.data));
    // A delivered one may be replayed too (receivers dedupe on webhook-id).
    expect((await api('POST', `/v1/webhooks/deliveries/${dead.id}/replay`, ALPHA)).status).toBe(202);
    await waitFor('the second replay', () => receiver.received.length === 5);
  });

  it('replaying a delivery to an endpoint disabled by 410 re-enables the endpoint', async () => {
    const { p, receiver } = await start();
    let gone = true;
    receiver.answer(() => (gone ? { status: 410 } : { status: 200 }));
    const first = (await p.submit({ prompt: 'gone 1 e2e-gone', tier: 'draft', webhook: { url: `${receiver.url}/h` } })).body['id'] as string;
    await waitFor('first disabled', async () => (await api('GET', `/v1/jobs/${first}/deliveries`)).body['deliveries'][0]?.status === 'disabled');
    const second = (await p.submit({ prompt: 'gone 2 e2e-gone', tier: 'draft', webhook: { url: `${receiver.url}/h` } })).body['id'] as string;
    const notSent = await waitFor('second not sent', async () => {
      const d = (await api('GET', `/v1/jobs/${second}/deliveries`)).body['deliveries'][0];
      return d?.status === 'disabled' ? d : undefined;
    });
    expect(notSent.attempts).toBe(0);
    expect(receiver.received).toHaveLength(1);

    gone = false;
    expect((await api('POST', `/v1/webhooks/deliveries/${notSent.id}/replay`)).status).toBe(202);
    await waitFor('second delivered', async () => (await api('GET', `/v1/jobs/${second}/deliveries`)).body['deliveries'][0]?.status === 'delivered');
    expect(receiver.received.map((r) => r.headers['webhook-id'])).toEqual([webhookDeliveryId('image.succeeded', first), notSent.id]);
    // The endpoint is enabled again for new events too.
    const third = (await p.submit({ prompt: 'gone 3 e2e-gone', tier: 'draft', webhook: { url: `${receiver.url}/h` } })).body['id'] as string;
    await waitFor('third delivered', async () => (await api('GET', `/v1/jobs/${third}/deliveries`)).body['deliveries'][0]?.status === 'delivered');
  });
});
