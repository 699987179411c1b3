/**
 * Priority and fairness between batches (issue 4 §5) against the real API, redis-server, s3rver and
 * simulator: with no worker running, a 2,000-job batch is queued, then a 10-job batch of the same
 * priority, then one priority 1 job. A worker with concurrency 1 then drains the queue: the small
 * batch must not wait behind the big one, and the priority 1 job runs first.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { silentLogger } from '../../src/logging/logger.js';
import { BULLMQ_MAX_PRIORITY, encodeQueuePriority } from '../../src/queue/image-queue.js';
import { startImageWorker } from '../../src/worker/image-worker.js';
import { startPipeline, type Pipeline } from '../support/pipeline.js';
import { waitFor } from '../support/stack.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function postBatch(p: Pipeline, body: unknown): Promise<{ id: string; jobIds: string[] }> {
  const res = await request(`${p.api.url}/v1/batches`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  const json = (await res.body.json()) as Record<string, any>;
  expect(res.statusCode, JSON.stringify(json)).toBe(202);
  const jobs = await p.redis.zrange(`${p.config.QUEUE_PREFIX}:pm:batch:${json['id']}:jobs`, '0', '-1');
  return { id: json['id'], jobIds: jobs };
}

describe('encodeQueuePriority', () => {
  it('orders every request priority before the next and stays within BullMQ limits', () => {
    expect(encodeQueuePriority(1, 0)).toBe(1);
    expect(encodeQueuePriority(1, 10_000_000)).toBeLessThan(encodeQueuePriority(2, 0));
    expect(encodeQueuePriority(5, 199_999)).toBeLessThan(encodeQueuePriority(6, 0));
    expect(encodeQueuePriority(10, 10_000_000)).toBeLessThanOrEqual(BULLMQ_MAX_PRIORITY);
    expect(encodeQueuePriority(5, 3)).toBeLessThan(encodeQueuePriority(5, 4));
  });
});

describe('fairness between batches and priority overtaking (real Redis)', () => {
  it('serves a 10-job batch queued after a 2,000-job batch within the first completions, and a priority 1 job first', async () => {
    // The queue order alone: lanes (LANES_ENABLED) pace calls and would only slow this test down.
    const p = await startPipeline({ worker: false, env: { LANES_ENABLED: false } });
    cleanups.push(() => p.close());

    const job = { prompt: 'a lighthouse at dusk', tier: 'draft', size: '512', aspectRatio: '1:1' };
    const big = await postBatch(p, { defaults: { ...job, priority: 5 }, jobs: Array.from({ length: 2_000 }, (_, i) => ({ prompt: `big ${i}` })) });
    const small = await postBatch(p, { defaults: { ...job, priority: 5 }, jobs: Array.from({ length: 10 }, (_, i) => ({ prompt: `small ${i}` })) });
    const urgent = await p.submit({ ...job, prompt: 'urgent', priority: 1 });
    expect(urgent.status).toBe(202);
    expect(big.jobIds).toHaveLength(2_000);
    expect(small.jobIds).toHaveLength(10);

    const order: string[] = [];
    const worker = startImageWorker({ ...p.config, WORKER_CONCURRENCY: 1 }, { logger: silentLogger() });
    cleanups.push(() => worker.close(1_000));
    worker.worker.on('completed', (j) => order.push(String(j.id)));

    const smallIds = new Set(small.jobIds);
    await waitFor('the small batch to finish', () => small.jobIds.every((id) => order.includes(id)), 60_000);
    await worker.close(1_000);

    // The priority 1 job, submitted last, overtakes all 2,010 priority 5 jobs.
    expect(order[0]).toBe(urgent.body['id']);
    // Round-robin by position: job k of the small batch runs next to job k of the big one.
    const lastSmall = Math.max(...order.map((id, i) => (smallIds.has(id) ? i : -1)));
    expect(lastSmall).toBeLessThan(25);
    // The big batch kept running too (it is not starved the other way).
    expect(order.slice(0, lastSmall + 1).filter((id) => !smallIds.has(id) && id !== urgent.body['id']).length).toBeGreaterThanOrEqual(9);
  }, 120_000);
});
