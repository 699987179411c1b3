/**
 * Lanes in the real pipeline (simulator over HTTP, API, worker, Redis, s3rver): several API keys,
 * a refused key taken out of rotation, and a saturated lane sending jobs back to Redis.
 */
import { Redis } from 'ioredis';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/logging/logger.js';
import { createLaneLimiter } from '../../src/lanes/limiter.js';
import { keyId } from '../../src/lanes/keys.js';
import { readProgress } from '../../src/jobs/record.js';
import { createGeminiClient } from '../../src/providers/gemini/client.js';
import type { GenerateImageRequest, ImageGenerator } from '../../src/providers/gemini/types.js';
import { startImageWorker, type RunningImageWorker } from '../../src/worker/image-worker.js';
import { startPipeline, type Pipeline } from '../support/pipeline.js';
import { waitFor } from '../support/stack.js';

const GOOD_1 = 'good-key-1111111111';
const GOOD_2 = 'good-key-2222222222';
const BAD = 'revoked-key-000000000';

let p: Pipeline | undefined;
let worker: RunningImageWorker | undefined;
afterEach(async () => {
  await worker?.close(1_000);
  worker = undefined;
  await p?.close();
  p = undefined;
});

/** The real client, recording which key each call used. */
function recordingGenerator(pipeline: Pipeline, keysUsed: (string | undefined)[]): ImageGenerator {
  const real = createGeminiClient(pipeline.config, { logger: silentLogger() });
  return {
    generate: (req: GenerateImageRequest) => {
      keysUsed.push(req.apiKey);
      return real.generate(req);
    },
    close: () => real.close(),
  };
}

const job = (i: number) => ({ prompt: `lane test ${i}`, tier: 'draft', size: '1K', aspectRatio: '1:1' });

describe('shared model lanes in the pipeline', () => {
  it('spreads jobs over the lanes of two keys', async () => {
    p = await startPipeline({
      worker: false, sim: { apiKeys: [GOOD_1, GOOD_2] },
      env: { GEMINI_API_KEY: `${GOOD_1},${GOOD_2}`, LANE_INITIAL_RPM: 60, LANE_BURST: 1 },
    });
    const keysUsed: (string | undefined)[] = [];
    worker = startImageWorker(p.config, { logger: silentLogger(), generator: recordingGenerator(p, keysUsed) });
    const ids = await Promise.all([0, 1, 2, 3].map(async (i) => (await p!.submit(job(i))).body['id'] as string));
    for (const id of ids) expect((await p.settle(id))['status']).toBe('succeeded');
    expect(new Set(keysUsed)).toEqual(new Set([GOOD_1, GOOD_2]));
    expect(keysUsed.filter((k) => k === GOOD_1).length).toBe(2);
  });

  it('takes a key answered 401/403 out of rotation; the job succeeds on the other key at once', async () => {
    p = await startPipeline({ worker: false, sim: { apiKeys: [GOOD_1] }, env: { GEMINI_API_KEY: `${BAD},${GOOD_1}` } });
    const keysUsed: (string | undefined)[] = [];
    worker = startImageWorker(p.config, { logger: silentLogger(), generator: recordingGenerator(p, keysUsed) });
    const first = (await p.submit(job(1))).body['id'] as string;
    const view = await p.settle(first);
    expect(view['status']).toBe('succeeded');
    // Both lanes are fresh: the first key (the refused one) is tried first, then the other, in one attempt.
    expect(keysUsed).toEqual([BAD, GOOD_1]);
    const progress = readProgress((await p.queue.getJob(first))!.progress);
    expect(progress.history.map((h) => h.outcome)).toEqual(['UPSTREAM_AUTH', 'succeeded']);
    expect(progress.history.every((h) => h.attempt === 1)).toBe(true);

    // The key stays out of rotation (visible in the lanes view, by its hash only): the next job never tries it.
    const redis = new Redis(p.config.REDIS_URL);
    try {
      const lanes = createLaneLimiter(redis, p.config)!;
      const lanesView = await lanes.view(p.config.MODEL_FAST);
      expect(lanesView.filter((l) => l.keyDisabled).map((l) => l.keyId)).toEqual(p.config.MODEL_FAST.map(() => keyId(BAD)));
      expect(JSON.stringify(lanesView)).not.toContain(BAD);
    } finally {
      await redis.quit();
    }
    // The admin view over HTTP says the same.
    const res = await request(`${p.api.url}/v1/lanes`);
    const body = (await res.body.json()) as { lanes: { keyId: string; keyDisabled?: string }[] };
    expect(res.statusCode).toBe(200);
    expect(body.lanes.filter((l) => l.keyDisabled).every((l) => l.keyId === keyId(BAD))).toBe(true);
    expect(body.lanes.some((l) => l.keyDisabled)).toBe(true);
    const second = (await p.submit(job(2))).body['id'] as string;
    expect((await p.settle(second))['status']).toBe('succeeded');
    expect(keysUsed).toEqual([BAD, GOOD_1, GOOD_1]);
  });

  it('a worker with a saturated lane moves jobs to delayed instead of holding them (no attempt used), each until its turn in line', async () => {
    // 0.5 rpm, no burst: one call now, the next slot in 120 s — far beyond LANE_MAX_HOLD_MS. No
    // additive step, and a floor below the rate: the success must not raise the rate (which would
    // rescale the booked slots; the default LANE_MIN_RPM of 1 would, when it settles first).
    p = await startPipeline({ env: { LANE_INITIAL_RPM: 0.5, LANE_BURST: 1, LANE_AIMD_STEP_RPM: 0, LANE_MIN_RPM: 0.1 } });
    const ids = await Promise.all([0, 1, 2, 3].map(async (i) => (await p!.submit(job(i))).body['id'] as string));
    await waitFor('one job done and three delayed', async () =>
      (await p!.queue.getCompletedCount()) === 1 && (await p!.queue.getDelayedCount()) === 3);
    expect(await p.queue.getActiveCount()).toBe(0);
    const delayed = (await p.queue.getDelayed()).sort((a, b) => a.timestamp + a.delay - (b.timestamp + b.delay));
    expect(delayed.every((j) => ids.includes(String(j.id)))).toBe(true);
    const model = p.config.MODEL_FAST[0]!.replace(/\./g, '\\.');
    delayed.forEach((j, rank) => {
      expect(j.attemptsMade).toBe(0);
      const history = readProgress(j.progress).history;
      expect(history).toHaveLength(1);
      expect(history[0]).toMatchObject({ outcome: 'requeued', model: p!.config.MODEL_FAST[0] });
      const turn = rank === 0 ? '' : '; turn in line in \\d+ ms';
      expect(history[0]!.reason).toMatch(new RegExp(`^lane ${model} full \\(rate\\), next slot in \\d+ ms${turn}$`));
      // Back in Redis until its turn: the next slot (120 s at 0.5 rpm, plus jitter under an interval)
      // and 0.9 of an interval (LINE_SPACING) per job ahead of it in line, not all three for the same slot.
      expect(j.delay).toBeGreaterThan(100_000 + rank * 108_000);
      expect(j.delay).toBeLessThan(240_000 + rank * 108_000);
    });
  });

  it('a priority 1 job overtakes the priority 5 jobs waiting in a saturated lane\'s line', async () => {
    // 300 rpm, no burst, nothing held in-process: a slot every 200 ms, every refused job waits in Redis.
    p = await startPipeline({ env: { LANE_INITIAL_RPM: 300, LANE_BURST: 1, LANE_AIMD_STEP_RPM: 0, LANE_MIN_RPM: 0.1, LANE_MAX_HOLD_MS: 0 } });
    const order: string[] = [];
    p.worker!.worker.on('completed', (j) => order.push(String(j.id)));
    const backlog = await Promise.all(Array.from({ length: 20 }, async (_, i) => (await p!.submit({ ...job(i), prompt: `backlog ${i}`, priority: 5 })).body['id'] as string));
    await waitFor('the backlog in line', async () => (await p!.queue.getDelayedCount()) >= 15);
    const doneBefore = order.length;
    const urgent = (await p.submit({ ...job(99), prompt: 'urgent', priority: 1 })).body['id'] as string;
    await waitFor('every job done', async () => order.length === 21, 30_000);
    // It ranks first in line and takes one of the next slots (a job or two whose turn came first may
    // go before it); at the back of the line it would wait for every job still in line.
    expect(20 - doneBefore).toBeGreaterThanOrEqual(10);
    expect(order.indexOf(urgent) - doneBefore, order.join(' ')).toBeLessThanOrEqual(3);
    expect(backlog.every((id) => order.includes(id))).toBe(true);
  });

  it('when every lane of every model is full, the fleet stops taking jobs until the next slot; the jobs wait in the queue where they were', async () => {
    // Both models capped at 1 rpm with no burst: after one call each, the next slots are ~60 s away.
    p = await startPipeline({ env: { MODEL_FAST_RPM: 1, MODEL_PRO_RPM: 1, LANE_BURST: 1, LANE_AIMD_STEP_RPM: 0 } });
    const ids = await Promise.all([0, 1, 2, 3].map(async (i) => (await p!.submit({ ...job(i), prompt: `full ${i}`, tier: 'standard' })).body['id'] as string));
    await waitFor('two jobs done (one per model)', async () => (await p!.queue.getCompletedCount()) === 2);
    await waitFor('the queue paused by the lanes', async () => (await p!.queue.getRateLimitTtl()) > 0);
    // Paused for at most MAX_FETCH_PAUSE_MS (5 s), then the lanes are asked again.
    expect(await p.queue.getRateLimitTtl()).toBeLessThanOrEqual(5_000);
    await waitFor('the other two back in the queue', async () => (await p!.queue.getActiveCount()) === 0);
    expect(await p.queue.getDelayedCount()).toBe(0);
    const waiting = (await Promise.all(ids.map((id) => p!.queue.getJob(id)))).filter((j) => j && !j.finishedOn);
    expect(waiting).toHaveLength(2);
    for (const j of waiting) {
      expect(await j!.getState()).toMatch(/^(waiting|prioritized)$/);
      expect(j!.attemptsMade).toBe(0);
      // A fleet-wide pause is not an event of the job: nothing in its history, no requeue counted.
      expect(readProgress(j!.progress)).toMatchObject({ history: [], rateLimitRequeues: 0 });
    }
    // Only the two admitted calls reached the simulator.
    expect(p.sim.requests().filter((r) => r.prompt.startsWith('full '))).toHaveLength(2);
  });

  it('a standard job spills over to Pro when the Nano Banana 2 lane is full; a draft job waits instead', async () => {
    // Nano Banana 2 capped at 1 rpm with no burst: after one call its next slot is ~60 s away. Pro is unpaced.
    p = await startPipeline({ env: { MODEL_FAST_RPM: 1, LANE_BURST: 1 } });
    const standard = await Promise.all([0, 1, 2].map(async (i) => (await p!.submit({ ...job(i), prompt: `spill ${i}`, tier: 'standard' })).body['id'] as string));
    const views = await Promise.all(standard.map((id) => p!.settle(id)));
    const models = views.map((v) => v['route'].model).sort();
    expect(models).toEqual([p.config.MODEL_FAST[0], p.config.MODEL_PRO[0], p.config.MODEL_PRO[0]].sort());
    for (const v of views.filter((x) => x['route'].model === p!.config.MODEL_PRO[0])) {
      expect(v['route'].reason).toMatch(/^spill-over to Nano Banana Pro: lane .* is full/);
      expect(v['history'].map((h: { outcome: string }) => h.outcome)).toEqual(['succeeded']);
    }
    // Draft never pays Pro prices: it goes back to Redis until the Nano Banana 2 lane has a slot.
    const draft = (await p.submit({ ...job(9), prompt: 'spill draft' })).body['id'] as string;
    await waitFor('the draft job to wait in Redis', async () => (await p!.queue.getJob(draft))?.isDelayed());
    expect(p.sim.requests().filter((r) => r.prompt.includes('spill draft'))).toHaveLength(0);
  });
});

describe('sharing a standard backlog with Pro from the first job', () => {
  /** The real client; Pro calls are held 100 ms so that the ones in flight together can be counted. */
  function proCountingGenerator(pipeline: Pipeline, seen: { now: number; max: number }): ImageGenerator {
    const real = createGeminiClient(pipeline.config, { logger: silentLogger() });
    return {
      generate: async (req: GenerateImageRequest) => {
        if (!pipeline.config.MODEL_PRO.includes(req.modelId)) return real.generate(req);
        seen.max = Math.max(seen.max, ++seen.now);
        try {
          await new Promise((r) => setTimeout(r, 100));
          return await real.generate(req);
        } finally {
          seen.now -= 1;
        }
      },
      close: () => real.close(),
    };
  }

  it('a backlog of several rounds of the slots shares with Pro, within LANE_SHARE_SLOTS', async () => {
    // 4 slots, half of them may share; no quota known yet (a first batch): the catalogue's 1K
    // latencies (10 s vs 20 s at p95) say a backlog of more than 4 jobs keeps Nano Banana 2 busy longer.
    p = await startPipeline({ worker: false, env: { WORKER_CONCURRENCY: 4, LANE_SHARE_SLOTS: 0.5 } });
    const big = await Promise.all(Array.from({ length: 16 }, async (_, i) => (await p!.submit({ ...job(i), prompt: `share ${i}`, tier: 'standard' })).body['id'] as string));
    const seen = { now: 0, max: 0 };
    worker = startImageWorker(p.config, { logger: silentLogger(), generator: proCountingGenerator(p, seen) });
    const views = await Promise.all(big.map((id) => p!.settle(id)));
    expect(views.every((v) => v['status'] === 'succeeded')).toBe(true);
    const shared = views.filter((v) => String(v['route'].reason).startsWith('sharing the backlog with Nano Banana Pro'));
    expect(shared.length).toBeGreaterThan(0);
    expect(shared.every((v) => v['route'].model === p!.config.MODEL_PRO[0])).toBe(true);
    expect(seen.max).toBeLessThanOrEqual(2);
  });

  it('a batch within one round of the slots stays on Nano Banana 2: no Pro prices', async () => {
    p = await startPipeline({ worker: false, env: { WORKER_CONCURRENCY: 4, LANE_SHARE_SLOTS: 0.5 } });
    const small = await Promise.all([0, 1, 2].map(async (i) => (await p!.submit({ ...job(i), prompt: `alone ${i}`, tier: 'standard' })).body['id'] as string));
    worker = startImageWorker(p.config, { logger: silentLogger() });
    const views = await Promise.all(small.map((id) => p!.settle(id)));
    expect(views.map((v) => v['route'].model)).toEqual(small.map(() => p!.config.MODEL_FAST[0]));
  });

  it('LANE_SHARE_SLOTS=0: the same backlog stays on Nano Banana 2 while its lane has room', async () => {
    p = await startPipeline({ worker: false, env: { WORKER_CONCURRENCY: 4, LANE_SHARE_SLOTS: 0 } });
    const ids = await Promise.all(Array.from({ length: 16 }, async (_, i) => (await p!.submit({ ...job(i), prompt: `no share ${i}`, tier: 'standard' })).body['id'] as string));
    worker = startImageWorker(p.config, { logger: silentLogger() });
    const views = await Promise.all(ids.map((id) => p!.settle(id)));
    expect(views.map((v) => v['route'].model)).toEqual(ids.map(() => p!.config.MODEL_FAST[0]));
  });
});
