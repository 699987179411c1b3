/**
 * Batch accounting against the real redis-server: the terminal hook counts each job once, moves the
 * counts when a job's outcome changes, completes the batch once, and queues batch.completed once even
 * when hooks run twice, run concurrently, or the queueing fails and is retried. No worker runs: the
 * test plays the worker's part by calling the hook.
 */
import { Queue } from 'bullmq';
import { afterEach, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config/env.js';
import { createBatchTerminalHook, type BatchCompletedEvent } from '../../src/batches/accounting.js';
import { planFromJson, storeBatch } from '../../src/batches/create.js';
import { batchKeys, readBatchRecord } from '../../src/batches/record.js';
import { batchView, listBatchJobs } from '../../src/batches/view.js';
import type { StoredJobData } from '../../src/jobs/record.js';
import type { TerminalEvent, TerminalStatus } from '../../src/jobs/terminal.js';
import { createRedis } from '../../src/queue/connection.js';
import { createImageQueue } from '../../src/queue/image-queue.js';
import { createS3Store } from '../../src/storage/object-store.js';
import { WEBHOOK_QUEUE, webhookDeliveryId } from '../../src/webhooks/queue.js';
import { testConfig } from '../support/stack.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function harness(jobCount: number, opts: { webhook?: boolean } = {}) {
  const config: Config = testConfig();
  const redis = createRedis(config, 'worker');
  const queue = createImageQueue(config, redis);
  const store = createS3Store(config);
  cleanups.push(async () => {
    await queue.close();
    redis.disconnect();
    store.destroy();
  });
  const plan = planFromJson({
    jobs: Array.from({ length: jobCount }, (_, i) => ({ prompt: `job ${i}` })),
    ...(opts.webhook === false ? {} : { webhook: { url: 'https://example.com/h' } }),
  }, { config: { ...config, WEBHOOK_SECRET: ['whsec_x'] } as Config, store });
  const events: BatchCompletedEvent[] = [];
  const enqueueEvent = async (e: BatchCompletedEvent) => void events.push(e);
  const { batchId, jobIds } = await storeBatch(plan, null, { config, queue, redis, store, enqueueEvent });
  const data = async (jobId: string) => (await queue.getJob(jobId))!.data as StoredJobData;
  const event = async (jobId: string, status: TerminalStatus, costUsd = 0.01): Promise<TerminalEvent> => ({
    jobId, data: await data(jobId), status, costUsd, at: new Date().toISOString(),
  });
  const record = async () => (await readBatchRecord(config, redis, batchId))!;
  return { config, redis, queue, store, batchId, jobIds, events, enqueueEvent, event, record };
}

describe('the batch terminal hook', () => {
  it('counts a job once when its hook runs twice, and moves the counts when its outcome changes', async () => {
    const h = await harness(3);
    const hook = createBatchTerminalHook(h.config, h.redis, { enqueueEvent: h.enqueueEvent });
    const [a, b, c] = h.jobIds as [string, string, string];

    await hook(await h.event(a, 'succeeded', 0.039));
    await hook(await h.event(a, 'succeeded', 0.039));
    let r = await h.record();
    expect(r.counts).toEqual({ succeeded: 1, failed: 0, canceled: 0 });
    expect(r.costMicros).toBe(39_000);

    // Re-run after a crash that ends differently (and cost more): moved, not added.
    await hook(await h.event(a, 'failed', 0.078));
    r = await h.record();
    expect(r.counts).toEqual({ succeeded: 0, failed: 1, canceled: 0 });
    expect(r.costMicros).toBe(78_000);
    const failedPage = await listBatchJobs(r, { status: 'failed', limit: 10 }, { config: h.config, redis: h.redis, queue: h.queue, store: h.store });
    expect(failedPage.data.map((j) => j.id)).toEqual([a]);
    const succeededPage = await listBatchJobs(r, { status: 'succeeded', limit: 10 }, { config: h.config, redis: h.redis, queue: h.queue, store: h.store });
    expect(succeededPage.data).toEqual([]);

    await hook(await h.event(b, 'canceled', 0));
    expect(h.events).toHaveLength(0);
    expect((await h.record()).finishedAt).toBeNull();
    await hook(await h.event(c, 'succeeded', 0.039));
    r = await h.record();
    expect(r.counts).toEqual({ succeeded: 1, failed: 1, canceled: 1 });
    expect(r.finishedAt).not.toBeNull();
    expect(h.events).toEqual([{ type: 'batch.completed', objectId: h.batchId, tenant: null, webhook: { url: 'https://example.com/h' } }]);

    // The last hook again (a re-run of the last job): still one event.
    await hook(await h.event(c, 'succeeded', 0.039));
    expect(h.events).toHaveLength(1);
    const view = await batchView(r, { config: h.config, redis: h.redis });
    expect(view).toMatchObject({ status: 'completed', progress: 1, costUsd: 0.117, etaSeconds: 0 });
  });

  it('completes once under concurrent, duplicated hooks: one batch.completed in the webhook outbox', async () => {
    const h = await harness(200);
    // The production hook, queueing into the real webhook outbox.
    const hook = createBatchTerminalHook(h.config, h.redis);
    const events = await Promise.all(h.jobIds.map((id, i) => h.event(id, i % 10 === 0 ? 'failed' : 'succeeded', 0.001)));
    await Promise.all([...events, ...events.slice().reverse()].map((e) => hook(e)));
    const r = await h.record();
    expect(r.counts).toEqual({ succeeded: 180, failed: 20, canceled: 0 });
    expect(r.costMicros).toBe(200_000);
    expect(r.webhookQueuedAt).not.toBeNull();
    const webhooks = new Queue(WEBHOOK_QUEUE, { connection: h.redis, prefix: h.config.QUEUE_PREFIX });
    cleanups.push(() => webhooks.close());
    const queued = await webhooks.getJobs(['waiting', 'delayed', 'prioritized', 'active', 'completed', 'failed']);
    expect(queued.map((j) => j.id)).toEqual([webhookDeliveryId('batch.completed', h.batchId)]);
    expect(queued[0]!.data).toMatchObject({ type: 'batch.completed', objectId: h.batchId, url: 'https://example.com/h' });
  });

  it('queues batch.completed again when the first attempt failed', async () => {
    const h = await harness(1);
    let fail = true;
    const calls: BatchCompletedEvent[] = [];
    const hook = createBatchTerminalHook(h.config, h.redis, {
      enqueueEvent: async (e) => {
        calls.push(e);
        if (fail) throw new Error('webhook queue down');
      },
    });
    const e = await h.event(h.jobIds[0]!, 'succeeded');
    await expect(hook(e)).rejects.toThrow('webhook queue down');
    expect((await h.record()).webhookQueuedAt).toBeNull();
    fail = false;
    await hook(e); // the worker retries the attempt, so the hook runs again
    expect(calls).toHaveLength(2);
    expect((await h.record()).webhookQueuedAt).not.toBeNull();
    await hook(e);
    expect(calls).toHaveLength(2);
  });

  it('ignores jobs outside batches and batches without a webhook queue nothing', async () => {
    const h = await harness(1, { webhook: false });
    const hook = createBatchTerminalHook(h.config, h.redis, { enqueueEvent: h.enqueueEvent });
    const e = await h.event(h.jobIds[0]!, 'succeeded');
    const { batchId: _b, ...plain } = e.data;
    await hook({ ...e, data: plain });
    expect((await h.record()).counts.succeeded).toBe(0);
    await hook({ ...e, data: { ...e.data, batchId: 'bat_doesnotexist' } });
    await hook(e);
    expect((await h.record()).finishedAt).not.toBeNull();
    expect(h.events).toHaveLength(0);
  });

  it('derives progress, ETA and startedAt from the jobs that ended', async () => {
    const h = await harness(4, { webhook: false });
    const hook = createBatchTerminalHook(h.config, h.redis);
    const k = batchKeys(h.config, h.batchId);
    // The worker records processedOn when it takes a job; the earliest among ended jobs is startedAt.
    const startedAt = Date.now() - 10_000;
    await h.redis.hset(`${h.config.QUEUE_PREFIX}:images:${h.jobIds[0]}`, 'processedOn', String(startedAt + 2_000));
    await h.redis.hset(`${h.config.QUEUE_PREFIX}:images:${h.jobIds[1]}`, 'processedOn', String(startedAt));
    await hook(await h.event(h.jobIds[0]!, 'succeeded', 0.5));
    await hook(await h.event(h.jobIds[1]!, 'succeeded', 0.25));
    expect(await h.redis.hget(k.record, 'startedAt')).toBe(String(startedAt));
    const view = await batchView(await h.record(), { config: h.config, redis: h.redis, now: () => startedAt + 10_000 });
    // 2 ended in 10 s, 2 remain: 10 s more.
    expect(view).toMatchObject({ progress: 0.5, etaSeconds: 10, costUsd: 0.75, startedAt: new Date(startedAt).toISOString(), finishedAt: null });
    expect(view.counts).toEqual({ queued: 2, running: 0, retrying: 0, succeeded: 2, failed: 0, canceled: 0 });
    // Keys expire with the retention.
    const ttl = await h.redis.pttl(k.done);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(h.config.JOB_RETENTION);
  });
});
