/**
 * Cancellation (DELETE /v1/jobs/:id): a waiting job ends as canceled at once without any worker; a
 * running one has its upstream request aborted on whichever worker holds it (broadcast through Redis),
 * stores nothing and announces no success; tenants and finished jobs are refused.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { FlowProducer, type Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import type { TerminalEvent, TerminalHook } from '../../src/jobs/terminal.js';
import { readProgress } from '../../src/jobs/record.js';
import { silentLogger } from '../../src/logging/logger.js';
import { cancelJob, cancelKeys } from '../../src/queue/cancel.js';
import { IMAGE_JOB_NAME, IMAGE_QUEUE } from '../../src/queue/image-queue.js';
import { startCancelWatcher } from '../../src/worker/cancel.js';
import { startImageWorker, type RunningImageWorker } from '../../src/worker/image-worker.js';
import { outputObjects, startPipeline, type Pipeline } from '../support/pipeline.js';
import { childProcessEnv, waitFor } from '../support/stack.js';

let p: Pipeline | undefined;
const workers: RunningImageWorker[] = [];
const children: ChildProcess[] = [];
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
  for (const w of workers.splice(0)) await w.close(500);
  for (const c of cleanups.splice(0)) await c();
  await p?.close();
  p = undefined;
});

/** A terminal hook that remembers what it was told. */
function recorder(): { hook: TerminalHook; events: TerminalEvent[] } {
  const events: TerminalEvent[] = [];
  return { events, hook: async (e) => void events.push(e) };
}

async function call(method: string, url: string, token?: string, json?: unknown): Promise<{ status: number; body: Record<string, any> }> {
  const res = await request(url, {
    method: method as 'GET',
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(json ? { 'content-type': 'application/json' } : {}) },
    ...(json ? { body: JSON.stringify(json) } : {}),
  });
  const text = await res.body.text();
  return { status: res.statusCode, body: text ? (JSON.parse(text) as Record<string, any>) : {} };
}

const del = (id: string, token?: string) => call('DELETE', `${p!.api.url}/v1/jobs/${id}`, token);
const view = async (id: string, token?: string) => (await call('GET', `${p!.api.url}/v1/jobs/${id}`, token)).body;


const simCalls = (marker: string) => p!.sim.requests().filter((r) => r.prompt.includes(marker));

describe('cancelling a job that waits', () => {
  it('a queued job is canceled at once without any worker, and a worker started later never calls the model for it', async () => {
    p = await startPipeline({ worker: false });
    const { body } = await p.submit({ prompt: 'never to be drawn cq-victim', tier: 'draft' });
    const id = body['id'] as string;
    expect(body['status']).toBe('queued');

    const res = await del(id);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ id, status: 'canceled', error: { code: 'CANCELED', retryable: false } });
    const now = await view(id);
    expect(now).toMatchObject({ status: 'canceled', error: { code: 'CANCELED' } });
    expect(now['finishedAt']).not.toBeNull();
    expect(await p.queue.getJobState(id)).toBe('failed');
    expect(await p.queue.getPrioritizedCount()).toBe(0);

    // DELETE is idempotent.
    const again = await del(id);
    expect(again.status).toBe(200);
    expect(again.body['status']).toBe('canceled');

    workers.push(startImageWorker(p.config, { logger: silentLogger() }));
    const canary = await p.submit({ prompt: 'drawn cq-canary', tier: 'draft' });
    expect((await p.settle(canary.body['id'] as string))['status']).toBe('succeeded');
    expect(simCalls('cq-canary')).toHaveLength(1);
    expect(simCalls('cq-victim')).toHaveLength(0);
    expect((await view(id))['status']).toBe('canceled');
  });

  it('cancelJob takes a job out of wait (also of a paused queue), prioritized and delayed, runs the terminal hooks once with canceled, and tells QueueEvents', async () => {
    p = await startPipeline({ worker: false });
    const { body } = await p.submit({ prompt: 'template cj-template', tier: 'draft' });
    const data = (await p.queue.getJob(body['id'] as string))!.data;
    await p.queue.remove(body['id'] as string);

    await p.queue.add(IMAGE_JOB_NAME, data, { jobId: 'img_in_wait' });
    await p.queue.add(IMAGE_JOB_NAME, data, { jobId: 'img_in_prio', priority: 5 });
    await p.queue.add(IMAGE_JOB_NAME, data, { jobId: 'img_in_delayed', priority: 5, delay: 600_000 });
    expect(await p.queue.getJobState('img_in_wait')).toBe('waiting');
    expect(await p.queue.getJobState('img_in_prio')).toBe('prioritized');
    expect(await p.queue.getJobState('img_in_delayed')).toBe('delayed');
    await p.queue.pause();
    await p.queue.add(IMAGE_JOB_NAME, data, { jobId: 'img_in_paused' });

    const eventsKey = p.queue.keys['events']!;
    const before = (await p.redis.xrevrange(eventsKey, '+', '-', 'COUNT', 1))[0]?.[0] ?? '0-0';

    // The paused queue's job first, while the queue is paused.
    for (const id of ['img_in_paused', 'img_in_wait', 'img_in_prio', 'img_in_delayed']) {
      const rec = recorder();
      const outcome = await cancelJob({ config: p.config, redis: p.redis, queue: p.queue, terminalHooks: [rec.hook] }, id);
      expect(outcome, id).toBe('canceled');
      expect(await p.queue.getJobState(id), id).toBe('failed');
      const job = (await p.queue.getJob(id))!;
      expect(readProgress(job.progress).canceledAt, id).toBeDefined();
      expect(job.finishedOn, id).toBeGreaterThan(0);
      expect(rec.events.map((e) => [e.jobId, e.status, e.error?.code]), id).toEqual([[id, 'canceled', 'CANCELED']]);
      expect(rec.events[0]!.data.request.prompt).toContain('cj-template');
      expect(await p.redis.exists(cancelKeys(p.config).flag(id))).toBe(1);
      expect(await view(id)).toMatchObject({ id, status: 'canceled', error: { code: 'CANCELED' } });

      // A second cancel changes nothing and runs no hook.
      expect(await cancelJob({ config: p.config, redis: p.redis, queue: p.queue, terminalHooks: [rec.hook] }, id)).toBe('already-finished');
      expect(rec.events).toHaveLength(1);
      if (await p.queue.isPaused()) await p.queue.resume();
    }
    expect(await p.queue.getJobCounts('wait', 'prioritized', 'delayed', 'failed')).toEqual({ wait: 0, prioritized: 0, delayed: 0, failed: 4 });
    expect(await p.redis.llen(p.queue.keys['paused']!)).toBe(0);

    // QueueEvents (and so SSE) hear of each: a `failed` event per job.
    const stream = await p.redis.xrange(eventsKey, `(${before}`, '+');
    const failed = stream.filter(([, f]) => f[1] === 'failed').map(([, f]) => f[3]);
    expect(failed.sort()).toEqual(['img_in_delayed', 'img_in_paused', 'img_in_prio', 'img_in_wait']);

    expect(await cancelJob({ config: p.config, redis: p.redis, queue: p.queue, terminalHooks: [] }, 'img_nosuchjob')).toBe('already-finished');
  });

  it('a delayed (retrying) job is canceled at once and leaves the delayed set', async () => {
    // random 0.999: the full-jitter backoff is a whole minute, so the job surely sits in `delayed`.
    p = await startPipeline({ worker: false, env: { BACKOFF_BASE_MS: 60_000, BACKOFF_CAP_MS: 60_000 } });
    workers.push(startImageWorker(p.config, { logger: silentLogger(), random: () => 0.999 }));
    const { body } = await p.submit({ prompt: 'overloaded [sim:503] cd-victim', tier: 'draft' });
    const id = body['id'] as string;
    await waitFor('the job to wait for its retry', async () => (await view(id))['status'] === 'retrying');
    expect(await p.queue.getJobState(id)).toBe('delayed');

    const res = await del(id);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ status: 'canceled', error: { code: 'CANCELED' }, attempts: 1 });
    expect(res.body['history']).toHaveLength(1);
    expect(await p.queue.getDelayedCount()).toBe(0);
    expect(simCalls('cd-victim')).toHaveLength(1);
  });

  it('a flow child is marked canceled at once and the next worker ends it without calling the model', async () => {
    p = await startPipeline({ worker: false });
    const { body } = await p.submit({ prompt: 'template fc-victim', tier: 'draft' });
    const data = (await p.queue.getJob(body['id'] as string))!.data;
    await p.queue.remove(body['id'] as string);
    const flows = new FlowProducer({ connection: p.redis.duplicate(), prefix: p.config.QUEUE_PREFIX });
    cleanups.push(() => flows.close());
    await flows.add({
      name: 'parent', queueName: 'fc-parents', data: {},
      children: [{ name: IMAGE_JOB_NAME, queueName: IMAGE_QUEUE, data, opts: { jobId: 'img_flowchild', priority: 5 } }],
    });

    const res = await del('img_flowchild');
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ status: 'canceled', error: { code: 'CANCELED' } });
    expect(await p.queue.getJobState('img_flowchild')).toBe('prioritized'); // BullMQ ends it, so the parent hears

    const rec = recorder();
    workers.push(startImageWorker(p.config, { logger: silentLogger(), terminalHooks: [rec.hook] }));
    await waitFor('a worker to end the child', async () => (await p!.queue.getJobState('img_flowchild')) === 'failed');
    expect(await view('img_flowchild')).toMatchObject({ status: 'canceled', error: { code: 'CANCELED' } });
    expect(rec.events.map((e) => e.status)).toEqual(['canceled']);
    expect(simCalls('fc-victim')).toHaveLength(0);
  });

  it('a job whose cancel flag is set but that still waits (the API died mid-cancel) is ended by the next worker without a call', async () => {
    p = await startPipeline({ worker: false });
    const { body } = await p.submit({ prompt: 'flagged cf-victim', tier: 'draft' });
    const id = body['id'] as string;
    await p.redis.set(cancelKeys(p.config).flag(id), new Date().toISOString());

    const rec = recorder();
    workers.push(startImageWorker(p.config, { logger: silentLogger(), terminalHooks: [rec.hook] }));
    await waitFor('the job to end', async () => (await view(id))['status'] === 'canceled');
    expect((await view(id))['error']).toMatchObject({ code: 'CANCELED' });
    expect(rec.events.map((e) => e.status)).toEqual(['canceled']);
    expect(simCalls('cf-victim')).toHaveLength(0);
  });
});

describe('cancelling a running job', () => {
  it('aborts the upstream request (the simulator sees the connection closed), stores nothing and announces no success', async () => {
    p = await startPipeline({ worker: false });
    const rec = recorder();
    workers.push(startImageWorker(p.config, { logger: silentLogger(), terminalHooks: [rec.hook] }));
    const { body } = await p.submit({ prompt: 'forever [sim:hang] ca-victim', tier: 'draft' });
    const id = body['id'] as string;
    await waitFor('the job to be mid-generation', async () => simCalls('ca-victim').some((r) => r.status === null) && (await view(id))['status'] === 'running');

    const res = await del(id);
    expect(res.status).toBe(202);
    expect(res.body['status']).toBe('running');

    await waitFor('the simulator to see the connection closed', () => simCalls('ca-victim').some((r) => r.aborted));
    const ended = await waitFor('the job to end as canceled', async () => {
      const v = await view(id);
      return v['status'] === 'canceled' ? v : undefined;
    });
    expect(ended['error']).toMatchObject({ code: 'CANCELED', retryable: false });
    expect(ended['output']).toBeUndefined();
    expect(await p.queue.getJobState(id)).toBe('failed');
    // Ended by the aborted attempt itself, not by a retry that found the flag.
    expect(ended['attempts']).toBe(1);
    expect((await p.queue.getJob(id))!.attemptsMade).toBe(1);
    expect(await outputObjects(p.config, id)).toEqual([]);
    expect(rec.events.map((e) => [e.jobId, e.status])).toEqual([[id, 'canceled']]);
    expect(simCalls('ca-victim')).toHaveLength(1);

    // Canceled for good: a later DELETE is a no-op.
    expect((await del(id)).status).toBe(200);
  });

  it('reaches the worker holding the job in another process while a second worker runs here', async () => {
    p = await startPipeline({ worker: false });
    const child = spawn(process.execPath, ['--import', 'tsx', 'workers/image-worker.ts'], { env: childProcessEnv(p.config, { WORKER_CONCURRENCY: '2' }), stdio: 'ignore' });
    children.push(child);
    const { body } = await p.submit({ prompt: 'forever [sim:hang] cx-victim', tier: 'draft' });
    const id = body['id'] as string;
    await waitFor('the child worker to be mid-generation', async () => simCalls('cx-victim').some((r) => r.status === null), 30_000);
    const rec = recorder();
    const local = startImageWorker(p.config, { logger: silentLogger(), terminalHooks: [rec.hook] });
    workers.push(local);
    await local.worker.waitUntilReady();

    expect((await del(id)).status).toBe(202);
    await waitFor('the simulator to see the connection closed', () => simCalls('cx-victim').some((r) => r.aborted));
    await waitFor('the job to end as canceled', async () => (await view(id))['status'] === 'canceled');
    expect((await p.queue.getJob(id))!.attemptsMade).toBe(1);
    expect(await outputObjects(p.config, id)).toEqual([]);
    expect(simCalls('cx-victim')).toHaveLength(1);
    expect(rec.events).toEqual([]); // the child process held it, not this worker
  });

  it('the watcher aborts what is published, and catches up from the cancel log when a broadcast was lost', async () => {
    p = await startPipeline({ worker: false });
    const redis = new Redis(p.config.REDIS_URL);
    cleanups.push(() => redis.quit());
    const aborted: string[] = [];
    const fakeWorker = { cancelJob: (id: string) => aborted.push(id) > 0 } as unknown as Worker;
    const keys = cancelKeys(p.config);
    await redis.xadd(keys.log, '*', 'jobId', 'img_before_start');
    const watcher = startCancelWatcher(p.config, { redis, worker: fakeWorker }, { sweepMs: 50 });
    cleanups.push(() => watcher.close());

    await waitFor('the subscription', async () => ((await redis.pubsub('NUMSUB', keys.channel)) as [string, number])[1] === 1);
    await redis.publish(keys.channel, 'img_published');
    await waitFor('the published id to be aborted', () => aborted.includes('img_published'));

    await redis.xadd(keys.log, '*', 'jobId', 'img_logged_only');
    await waitFor('the logged id to be aborted', () => aborted.includes('img_logged_only'));
    expect(aborted).not.toContain('img_before_start');

    expect(await watcher.isCanceled('img_x')).toBe(false);
    await redis.set(keys.flag('img_x'), '1');
    expect(await watcher.isCanceled('img_x')).toBe(true);
  });
});

describe('what cannot be cancelled', () => {
  const ALICE = 'alice-key-0123456789abcdef';
  const BOB = 'bob-key-0123456789abcdef';

  it('answers 404 for an unknown job and for another tenant\'s job, and 409 NOT_CANCELABLE for a finished one', async () => {
    p = await startPipeline({ env: { API_KEYS: `alice:${ALICE},bob:${BOB}`, HOST: '127.0.0.1' } });
    const created = await call('POST', `${p.api.url}/v1/jobs`, ALICE, { prompt: 'mine nc-job', tier: 'draft' });
    expect(created.status).toBe(202);
    const id = created.body['id'] as string;

    const bobs = await del(id, BOB);
    expect(bobs.status).toBe(404);
    expect(bobs.body['error']['code']).toBe('NOT_FOUND');
    expect((await del('img_doesnotexist', ALICE)).status).toBe(404);
    expect((await del(id)).status).toBe(401);

    await waitFor('the job to succeed', async () => (await view(id, ALICE))['status'] === 'succeeded');
    const late = await del(id, ALICE);
    expect(late.status).toBe(409);
    expect(late.body['error']).toMatchObject({ code: 'NOT_CANCELABLE', retryable: false, message: expect.stringContaining('succeeded') });
    expect((await view(id, ALICE))['status']).toBe('succeeded');
    expect(await p.redis.exists(cancelKeys(p.config).flag(id))).toBe(0);
  });
});

