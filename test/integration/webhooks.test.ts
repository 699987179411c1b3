/**
 * Webhook delivery against a real receiver that verifies every request with the `standardwebhooks`
 * library: signatures with rotated secrets, retries with one webhook-id, Retry-After, dead letters,
 * redirects not followed, 410 disabling an endpoint, the SSRF guard at delivery time, idempotent
 * queueing, and a worker process killed mid-delivery.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { Webhook } from 'standardwebhooks';
import { afterEach, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config/env.js';
import { PixelmillError } from '../../src/errors/catalogue.js';
import { silentLogger } from '../../src/logging/logger.js';
import { DeliveryStore, type StoredDelivery } from '../../src/webhooks/deliveries.js';
import { assertWebhooksEnabled, enqueueWebhookEventWithId, type WebhookEventInput } from '../../src/webhooks/outbox.js';
import { WEBHOOK_QUEUE, webhookDeliveryId } from '../../src/webhooks/queue.js';
import { MAX_PAYLOAD_BYTES, buildPayload } from '../../src/webhooks/render.js';
import { parseRetryAfter } from '../../src/webhooks/send.js';
import { startWebhookWorker, type RunningWebhookWorker } from '../../src/webhooks/worker.js';
import { childProcessEnv, testConfig, waitFor } from '../support/stack.js';
import { newSecret, startWebhookReceiver, type WebhookReceiver } from '../support/webhook-receiver.js';

interface Setup {
  config: Config;
  secrets: string[];
  receiver: WebhookReceiver;
  redis: Redis;
  deliveries: DeliveryStore;
  queue: Queue;
  worker?: RunningWebhookWorker;
}

const cleanups: (() => Promise<void>)[] = [];
const children: ChildProcess[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const fn of cleanups.splice(0).reverse()) await fn().catch(() => {});
});

async function setup(opts: { env?: Record<string, string | number | undefined>; worker?: boolean } = {}): Promise<Setup> {
  const secrets = [newSecret(), newSecret()];
  const receiver = await startWebhookReceiver(secrets);
  cleanups.push(() => receiver.close());
  const config = testConfig({
    WEBHOOK_SECRET: secrets.join(' '), WEBHOOK_ALLOWED_CIDRS: '127.0.0.0/8,::1/128', WEBHOOK_RETRY_SCHEDULE: '0s,50ms,100ms',
    WEBHOOK_TIMEOUT_MS: 5_000, ...opts.env,
  });
  const redis = new Redis(config.REDIS_URL, { maxRetriesPerRequest: null });
  const queue = new Queue(WEBHOOK_QUEUE, { connection: redis, prefix: config.QUEUE_PREFIX });
  cleanups.push(async () => {
    await queue.close();
    await redis.quit();
  });
  const s: Setup = { config, secrets, receiver, redis, queue, deliveries: new DeliveryStore(redis, config) };
  if (opts.worker !== false) s.worker = startWorker(config);
  return s;
}

function startWorker(config: Config): RunningWebhookWorker {
  const worker = startWebhookWorker(config, { logger: silentLogger() });
  cleanups.push(() => worker.close(true));
  return worker;
}

let seq = 0;
function batchEvent(s: Setup, path = '/hook', extra: Partial<WebhookEventInput> = {}): WebhookEventInput {
  const id = `bat_test${++seq}_${Math.random().toString(36).slice(2, 8)}`;
  return {
    type: 'batch.completed', objectId: id, tenant: null, webhook: { url: `${s.receiver.url}${path}` },
    payloadData: { id, status: 'completed', counts: { succeeded: 2, failed: 0 } }, at: '2026-11-21T10:00:00.000Z', ...extra,
  };
}

async function queued(s: Setup, event: WebhookEventInput): Promise<string> {
  const id = await enqueueWebhookEventWithId(s.config, s.redis, event);
  if (!id) throw new Error('event was filtered out');
  return id;
}

function settled(s: Setup, id: string, status: StoredDelivery['status'] | StoredDelivery['status'][] = ['delivered', 'failed', 'disabled', 'skipped']) {
  const want = Array.isArray(status) ? status : [status];
  return waitFor(`delivery ${id} to be ${want.join('|')}`, async () => {
    const rec = await s.deliveries.get(id);
    return rec && want.includes(rec.status) ? rec : undefined;
  });
}

/** The BullMQ job of the first send has reached a final state: nothing more will be sent for it. */
function jobFinal(s: Setup, id: string) {
  return waitFor(`delivery job ${id} to finish`, async () => {
    const state = await s.queue.getJobState(id);
    return state === 'completed' || state === 'failed' ? state : undefined;
  });
}

describe('webhook delivery', () => {
  it('signs with every secret in WEBHOOK_SECRET: a receiver holding either one verifies it; the payload is {type, timestamp, data}', async () => {
    const s = await setup();
    const event = batchEvent(s);
    const id = await queued(s, event);
    const rec = await settled(s, id, 'delivered');

    expect(s.receiver.received).toHaveLength(1);
    const got = s.receiver.received[0]!;
    expect(got.path).toBe('/hook');
    expect(got.headers['webhook-id']).toBe(id);
    expect(id).toBe(webhookDeliveryId('batch.completed', event.objectId));
    expect(got.headers['content-type']).toBe('application/json');
    expect(got.headers['webhook-signature']!.split(' ').map((sig) => sig.split(',')[0])).toEqual(['v1', 'v1']);
    expect(got.verified.map((v) => v.ok)).toEqual([true, true]);
    const payload = got.verified[0]!.ok ? got.verified[0]!.payload : undefined;
    expect(payload).toEqual({ type: 'batch.completed', timestamp: '2026-11-21T10:00:00.000Z', data: event.payloadData });
    // A receiver with some other secret does not verify it.
    expect(() => new Webhook(newSecret()).verify(got.body, got.headers)).toThrow(/No matching signature/);
    expect(rec).toMatchObject({ status: 'delivered', attempts: 1, lastStatusCode: 200, lastError: null });
    expect(rec.deliveredAt).not.toBeNull();
  });

  it('retries 503 and 500 on the schedule with the same webhook-id and the same body, then delivers', async () => {
    const s = await setup();
    s.receiver.answer((_req, n) => (n === 0 ? { status: 503, body: 'overloaded' } : n === 1 ? { status: 500 } : { status: 204 }));
    const id = await queued(s, batchEvent(s));
    const rec = await settled(s, id, 'delivered');

    const got = s.receiver.received;
    expect(got).toHaveLength(3);
    expect(new Set(got.map((r) => r.headers['webhook-id']))).toEqual(new Set([id]));
    expect(new Set(got.map((r) => r.body)).size).toBe(1);
    expect(got.every((r) => r.verified.every((v) => v.ok))).toBe(true);
    expect(rec).toMatchObject({ attempts: 3, lastStatusCode: 204, lastError: null });
  });

  it('honours Retry-After (seconds) over a shorter schedule step', async () => {
    const s = await setup({ env: { WEBHOOK_RETRY_SCHEDULE: '0s,10ms,10ms' } });
    s.receiver.answer((_req, n) => (n === 0 ? { status: 429, headers: { 'retry-after': '1' } } : { status: 200 }));
    const id = await queued(s, batchEvent(s));
    const pending = await waitFor('the first attempt to be recorded', async () => {
      const rec = await s.deliveries.get(id);
      return rec?.lastStatusCode === 429 ? rec : undefined;
    });
    expect(Date.parse(pending.nextAttemptAt!) - s.receiver.received[0]!.receivedAt).toBeGreaterThanOrEqual(900);
    await settled(s, id, 'delivered');
    const [first, second] = s.receiver.received;
    expect(second!.receivedAt - first!.receivedAt).toBeGreaterThanOrEqual(950);
    expect(second!.headers['webhook-id']).toBe(first!.headers['webhook-id']);
  });

  it('parses Retry-After as seconds or an HTTP date, and caps it', () => {
    const now = Date.parse('2026-11-21T10:00:00Z');
    expect(parseRetryAfter('120', now)).toBe(120_000);
    expect(parseRetryAfter('Sat, 21 Nov 2026 10:00:30 GMT', now)).toBe(30_000);
    expect(parseRetryAfter('Sat, 21 Nov 2026 09:00:00 GMT', now)).toBe(0);
    expect(parseRetryAfter('99999999', now)).toBe(24 * 3_600_000);
    expect(parseRetryAfter('soon', now)).toBeUndefined();
    expect(parseRetryAfter(undefined, now)).toBeUndefined();
  });

  it('keeps payloads under 20 KB: a huge job view loses old history, then prompt length; anything else becomes a thin payload', () => {
    const history = Array.from({ length: 60 }, (_, i) => ({
      attempt: 1, model: 'gemini-3.1-flash-image', family: 'fast', outcome: 'requeued', latencyMs: 0, at: '2026-11-21T10:00:00.000Z', reason: `r${i} ${'x'.repeat(300)}`,
    }));
    const view = { id: 'img_1', status: 'failed', request: { prompt: 'p'.repeat(10_000), metadata: { a: 'm'.repeat(3_000) } }, history, error: { code: 'RATE_LIMITED' } };
    const body = buildPayload('image.failed', '2026-11-21T10:00:00.000Z', 'img_1', view);
    expect(Buffer.byteLength(body)).toBeLessThanOrEqual(MAX_PAYLOAD_BYTES);
    const data = JSON.parse(body).data;
    expect(data).toMatchObject({ id: 'img_1', status: 'failed', error: { code: 'RATE_LIMITED' }, request: { metadata: view.request.metadata } });
    expect(data.historyTruncated).toBeGreaterThan(0);
    expect(data.history.at(-1)).toEqual(history.at(-1));

    const small = buildPayload('image.failed', 't', 'img_2', { id: 'img_2', status: 'failed', request: { prompt: 'short' }, history: history.slice(0, 2) });
    expect(JSON.parse(small).data.history).toHaveLength(2);

    const thin = JSON.parse(buildPayload('batch.completed', 't', 'bat_1', { id: 'bat_1', blob: 'z'.repeat(30_000) }));
    expect(thin).toEqual({ type: 'batch.completed', timestamp: 't', data: { id: 'bat_1', truncated: true, reason: expect.any(String) } });
  });

  it('dead-letters after the last scheduled attempt', async () => {
    const s = await setup();
    s.receiver.answer(() => ({ status: 502, body: 'bad gateway from the receiver' }));
    const id = await queued(s, batchEvent(s));
    const rec = await settled(s, id, 'failed');
    expect(await jobFinal(s, id)).toBe('failed');
    expect(s.receiver.received).toHaveLength(3); // WEBHOOK_RETRY_SCHEDULE has three steps
    expect(rec).toMatchObject({ attempts: 3, lastStatusCode: 502, nextAttemptAt: null });
    expect(rec.lastError).toContain('HTTP 502: bad gateway from the receiver');
    const page = await s.deliveries.list(null, 'failed', undefined, 10);
    expect(page.deliveries.map((d) => d.id)).toEqual([id]);
  });

  it('does not follow a redirect: a 3xx is a failure, and the target is never requested', async () => {
    const s = await setup();
    s.receiver.answer((req) => (req.path === '/hook' ? { status: 302, headers: { location: `${s.receiver.url}/moved` } } : { status: 200 }));
    const id = await queued(s, batchEvent(s));
    const rec = await settled(s, id, 'failed');
    expect(await jobFinal(s, id)).toBe('failed');
    expect(s.receiver.received.map((r) => r.path)).toEqual(['/hook']);
    expect(rec).toMatchObject({ lastStatusCode: 302, attempts: 1 });
    expect(rec.lastError).toMatch(/redirects are not followed/);
  });

  it('410 disables the endpoint: later events for it are recorded as not sent; other endpoints are unaffected', async () => {
    const s = await setup();
    s.receiver.answer((req) => (req.path === '/gone' && s.receiver.received.filter((r) => r.path === '/gone').length === 1 ? { status: 410 } : { status: 200 }));
    const first = await queued(s, batchEvent(s, '/gone'));
    expect(await settled(s, first)).toMatchObject({ status: 'disabled', lastStatusCode: 410, attempts: 1 });

    const second = await queued(s, batchEvent(s, '/gone'));
    const notSent = await settled(s, second);
    expect(notSent).toMatchObject({ status: 'disabled', attempts: 0 });
    expect(notSent.lastError).toMatch(/not sent: the endpoint answered 410/);
    // Another endpoint of the same host is not affected.
    const other = await queued(s, batchEvent(s, '/other'));
    expect(await settled(s, other)).toMatchObject({ status: 'delivered' });
    expect(s.receiver.received.map((r) => r.path)).toEqual(['/gone', '/other']);
    expect((await s.deliveries.list(null, 'disabled', undefined, 10)).deliveries.map((d) => d.id).sort()).toEqual([first, second].sort());
  });

  it('the SSRF guard refuses a loopback receiver at delivery time unless WEBHOOK_ALLOWED_CIDRS opens it (IP and hostname)', async () => {
    const s = await setup({ env: { WEBHOOK_ALLOWED_CIDRS: undefined } });
    const port = new URL(s.receiver.url).port;
    const byIp = await queued(s, batchEvent(s));
    const byName = await queued(s, { ...batchEvent(s), webhook: { url: `http://localhost:${port}/hook` } });
    for (const id of [byIp, byName]) {
      const rec = await settled(s, id, 'failed');
      expect(rec.lastError).toMatch(/refused: .* \(loopback\), which is refused/);
      expect(rec.lastStatusCode).toBeNull();
    }
    expect(s.receiver.received).toHaveLength(0);
  });

  it('an event queued twice (a terminal hook re-run) is one delivery with one webhook-id', async () => {
    const s = await setup({ worker: false });
    const event = batchEvent(s);
    const a = await queued(s, event);
    const b = await queued(s, { ...event, at: '2026-11-21T11:11:11.000Z' });
    expect(b).toBe(a);
    startWorker(s.config);
    await settled(s, a, 'delivered');
    expect(await jobFinal(s, a)).toBe('completed');
    expect(s.receiver.received).toHaveLength(1);
    // The first queueing wins: its timestamp is the one sent.
    expect(JSON.parse(s.receiver.received[0]!.body).timestamp).toBe('2026-11-21T10:00:00.000Z');
    expect(await s.queue.getJobCounts('completed', 'waiting', 'delayed', 'active')).toMatchObject({ completed: 1, waiting: 0, delayed: 0, active: 0 });
  });

  it('webhook.events filters: an event not listed is not queued', async () => {
    const s = await setup({ worker: false });
    const event = batchEvent(s, '/hook', {});
    const id = await enqueueWebhookEventWithId(s.config, s.redis, { ...event, webhook: { ...event.webhook, events: ['image.failed'] } });
    expect(id).toBeUndefined();
    expect(await s.deliveries.get(webhookDeliveryId('batch.completed', event.objectId))).toBeUndefined();
    expect(await s.queue.count()).toBe(0);
  });

  it('never sends unsigned: without WEBHOOK_SECRET the worker does not send, and the API refuses webhook fields', async () => {
    const s = await setup({ env: { WEBHOOK_SECRET: undefined } });
    const id = await queued(s, batchEvent(s));
    const rec = await settled(s, id, 'failed');
    expect(rec.lastError).toMatch(/WEBHOOK_SECRET is not set/);
    expect(s.receiver.received).toHaveLength(0);

    const err = (() => {
      try {
        assertWebhooksEnabled(s.config, 'defaults.webhook');
      } catch (e) {
        return e as PixelmillError;
      }
    })();
    expect(err?.code).toBe('INVALID_REQUEST');
    expect(err?.details['issues']).toEqual([{ path: 'defaults.webhook', message: expect.stringMatching(/WEBHOOK_SECRET is not set/) }]);
    expect(() => assertWebhooksEnabled(testConfig({ WEBHOOK_SECRET: newSecret() }))).not.toThrow();
  });

  it('a webhook worker killed (SIGKILL) mid-delivery loses nothing: another worker sends the same event, same webhook-id', async () => {
    const s = await setup({ worker: false, env: { WORKER_LOCK_DURATION_MS: 1_000, WORKER_STALLED_INTERVAL_MS: 1_000 } });
    s.receiver.answer((_req, n) => (n === 0 ? 'hang' : { status: 200 }));
    const child = spawn(process.execPath, ['--import', 'tsx', 'workers/webhook-worker.ts'], { env: childProcessEnv(s.config, {
      WEBHOOK_SECRET: s.config.WEBHOOK_SECRET!.join(' '), WEBHOOK_ALLOWED_CIDRS: s.config.WEBHOOK_ALLOWED_CIDRS.join(','),
      WEBHOOK_RETRY_SCHEDULE: '0s,50ms,100ms', WEBHOOK_TIMEOUT_MS: String(s.config.WEBHOOK_TIMEOUT_MS),
    }), stdio: 'ignore' });
    children.push(child);

    const id = await queued(s, batchEvent(s));
    await waitFor('the child worker to be mid-delivery', () => s.receiver.received.length === 1, 30_000);
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;

    startWorker(s.config);
    const rec = await settled(s, id, 'delivered');
    const got = s.receiver.received;
    expect(got).toHaveLength(2);
    expect(got.map((r) => r.headers['webhook-id'])).toEqual([id, id]);
    expect(got[1]!.body).toBe(got[0]!.body);
    expect(got[1]!.verified.every((v) => v.ok)).toBe(true);
    expect(rec.attempts).toBe(2);
  });

  it('SIGTERM lets the in-flight delivery finish, then the worker process exits 0', async () => {
    const s = await setup({ worker: false });
    s.receiver.answer(() => ({ status: 200, delayMs: 500 }));
    const child = spawn(process.execPath, ['--import', 'tsx', 'workers/webhook-worker.ts'], { env: childProcessEnv(s.config, {
      WEBHOOK_SECRET: s.config.WEBHOOK_SECRET!.join(' '), WEBHOOK_ALLOWED_CIDRS: s.config.WEBHOOK_ALLOWED_CIDRS.join(','),
      WEBHOOK_RETRY_SCHEDULE: '0s,50ms,100ms', WEBHOOK_TIMEOUT_MS: String(s.config.WEBHOOK_TIMEOUT_MS),
    }), stdio: 'ignore' });
    children.push(child);
    const id = await queued(s, batchEvent(s));
    await waitFor('the child worker to be mid-delivery', () => s.receiver.received.length === 1, 30_000);
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(await s.deliveries.get(id)).toMatchObject({ status: 'delivered', attempts: 1, lastStatusCode: 200 });
    expect(s.receiver.received).toHaveLength(1);
  });
});

