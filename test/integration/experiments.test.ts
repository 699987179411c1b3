/**
 * A/B experiments end to end: API → BullMQ flow (parent on `experiments`, runs on `images`) → image
 * worker and simulator → finisher → GET side by side, winner, experiment.completed. Real redis-server,
 * s3rver, simulator and API; each test owns its pipeline.
 */
import { randomBytes } from 'node:crypto';
import { Queue } from 'bullmq';
import { afterEach, describe, expect, it } from 'vitest';
import { storedJobDataSchema } from '../../src/jobs/record.js';
import { silentLogger } from '../../src/logging/logger.js';
import { EXPERIMENT_QUEUE, experimentJobDataSchema, experimentResultSchema } from '../../src/experiments/experiment-queue.js';
import { createExperimentProcessor } from '../../src/experiments/finisher.js';
import { WEBHOOK_QUEUE, webhookDeliveryId } from '../../src/webhooks/queue.js';
import { startPipeline, type Pipeline } from '../support/pipeline.js';
import { callApi, createExperiment, getExperiment, pickWinner, settleExperiment } from '../support/experiments.js';
import { waitFor } from '../support/stack.js';

const SECRET = `whsec_${randomBytes(32).toString('base64')}`;

let p: Pipeline | undefined;
const extraQueues: Queue[] = [];
afterEach(async () => {
  for (const q of extraQueues.splice(0)) await q.close();
  await p?.close();
  p = undefined;
});

function experimentQueue(pl: Pipeline): Queue {
  const q = new Queue(EXPERIMENT_QUEUE, { connection: pl.redis, prefix: pl.config.QUEUE_PREFIX });
  extraQueues.push(q);
  return q;
}

const issuePaths = (body: Record<string, any>) => (body['error']?.issues ?? []).map((i: { path: string }) => i.path) as string[];

describe('POST /v1/experiments', () => {
  it('adds one parent and variants × repeats runs with the resolved request of each variant', async () => {
    p = await startPipeline({ worker: false });
    const res = await createExperiment(p, {
      prompt: 'a lighthouse at dusk exp-flow',
      repeats: 2,
      metadata: { campaign: 'ab-1' },
      variants: [
        { name: 'nb2-fast', model: 'fast', size: '512' },
        { name: 'pro-2k', model: 'pro', size: '2K', aspectRatio: '16:9' },
        { name: 'standard-suffix', promptSuffix: ', watercolour', aspectRatio: '3:4' },
        { name: 'own-prompt', tier: 'premium', prompt: 'a lighthouse, photographed' },
      ],
    });
    expect(res.status).toBe(202);
    const id = res.body['id'] as string;
    expect(id).toMatch(/^exp_[A-Za-z0-9_-]{22}$/);
    expect(res.headers['location']).toBe(`/v1/experiments/${id}`);
    expect(res.body).toMatchObject({ status: 'running', repeats: 2, prompt: 'a lighthouse at dusk exp-flow', winner: null, finishedAt: null });
    expect(res.body['counts']).toMatchObject({ runs: 8, pending: 8, succeeded: 0 });
    expect(res.body['variants'].map((v: any) => [v.name, v.tier, v.model, v.size, v.aspectRatio])).toEqual([
      ['nb2-fast', 'draft', 'fast', '512', '1:1'],
      ['pro-2k', 'premium', 'pro', '2K', '16:9'],
      ['standard-suffix', 'standard', null, '1K', '3:4'],
      ['own-prompt', 'premium', null, '1K', '1:1'],
    ]);
    expect(res.body['variants'][2].prompt).toBe('a lighthouse at dusk exp-flow, watercolour');

    // Behind the API: the parent waits for its 8 children; each child is an ordinary image job.
    const parents = experimentQueue(p);
    expect(await parents.getJobState(id)).toBe('waiting-children');
    const parent = (await parents.getJob(id))!;
    const data = experimentJobDataSchema.parse(parent.data);
    expect(await parent.getDependenciesCount()).toMatchObject({ unprocessed: 8 });

    const children = await p.queue.getJobs(['prioritized', 'waiting']);
    expect(children).toHaveLength(8);
    const seen = new Set<string>();
    for (const child of children) {
      const stored = storedJobDataSchema.parse(child.data);
      expect(stored.tenant).toBeNull();
      expect(stored.experiment?.id).toBe(id);
      const variant = data.variants.find((v) => v.name === stored.experiment!.variant)!;
      expect(variant.runIds[stored.experiment!.repeat - 1]).toBe(child.id);
      expect(stored.request).toMatchObject({ prompt: variant.prompt, tier: variant.tier, size: variant.size, aspectRatio: variant.aspectRatio, allowDowngrade: false });
      expect(child.parent?.id).toBe(id);
      expect(child.opts.ignoreDependencyOnFailure).toBe(true);
      seen.add(`${stored.experiment!.variant}#${stored.experiment!.repeat}`);
    }
    expect(seen.size).toBe(8);
    // The children are readable as jobs too.
    const one = await p.get(children[0]!.id!);
    expect(one['experiment']).toMatchObject({ id });
  });

  it('names the variant field of every problem, including the capability rule and the model pin', async () => {
    p = await startPipeline({ worker: false });
    const base = { prompt: 'exp-validation' };
    const cases: { body: Record<string, unknown>; paths: string[]; message?: RegExp }[] = [
      { body: { ...base, variants: [{ name: 'a' }, { name: 'b' }, { name: 'c', size: '8K' }] }, paths: ['variants.2.size'] },
      { body: { ...base, variants: [{ name: 'a' }, { name: 'p', model: 'pro', size: '512' }] }, paths: ['variants.1.size'], message: /Nano Banana Pro/ },
      { body: { ...base, variants: [{ name: 'p', model: 'pro', aspectRatio: '1:8' }, { name: 'b' }] }, paths: ['variants.0.aspectRatio'] },
      { body: { ...base, variants: [{ name: 'a' }, { name: 'b', tier: 'premium', size: '512' }] }, paths: ['variants.1.size'] },
      { body: { ...base, variants: [{ name: 'f', model: 'fast', tier: 'premium' }, { name: 'b' }] }, paths: ['variants.0.tier'] },
      { body: { ...base, variants: [{ name: 'a', model: 'turbo' }, { name: 'b' }] }, paths: ['variants.0.model'] },
      { body: { ...base, variants: [{ name: 'same' }, { name: 'other' }, { name: 'same' }] }, paths: ['variants.2.name'] },
      { body: { ...base, variants: [{ name: 'a', colour: 'red' }, { name: 'b' }] }, paths: ['variants.0.colour'] },
      { body: { ...base, variants: [{ name: 'a', promptSuffix: 'x'.repeat(9_990) }, { name: 'b' }] }, paths: ['variants.0.promptSuffix'] },
      { body: { ...base, variants: [{ name: 'a', prompt: '' }, { name: '' }] }, paths: ['variants.0.prompt', 'variants.1.name'] },
      { body: { ...base, variants: [{ name: 'only' }] }, paths: ['variants'] },
      { body: { ...base, variants: Array.from({ length: 21 }, (_, i) => ({ name: `v${i}` })) }, paths: ['variants'] },
      { body: { ...base, variants: [{ name: 'a' }, { name: 'b' }], repeats: 0 }, paths: ['repeats'] },
      { body: { ...base, variants: [{ name: 'a' }, { name: 'b' }], repeats: 11 }, paths: ['repeats'] },
      { body: { ...base, variants: [{ name: 'a' }, { name: 'b' }], repeats: 1.5 }, paths: ['repeats'] },
      { body: { variants: [{ name: 'a' }, { name: 'b' }] }, paths: ['prompt'] },
      { body: { ...base, variants: [{ name: 'a' }, { name: 'b' }], webhook: { url: 'ftp://x' } }, paths: ['webhook.url'] },
      // This pipeline has no WEBHOOK_SECRET: deliveries would never be sent, so the request is refused.
      { body: { ...base, variants: [{ name: 'a' }, { name: 'b' }], webhook: { url: 'https://hooks.example.com/x' } }, paths: ['webhook'] },
    ];
    for (const c of cases) {
      const res = await createExperiment(p, c.body);
      expect(res.status, JSON.stringify(c.body).slice(0, 200)).toBe(400);
      expect(res.body['error'].code).toBe('INVALID_REQUEST');
      expect(issuePaths(res.body)).toEqual(expect.arrayContaining(c.paths));
      if (c.message) expect(res.body['error'].message).toMatch(c.message);
    }
    // The bounds themselves are accepted: 2 and 20 variants, 1 and 10 repeats.
    const two = await createExperiment(p, { ...base, variants: [{ name: 'a' }, { name: 'b' }], repeats: 10 });
    expect(two.status).toBe(202);
    const twenty = await createExperiment(p, { ...base, variants: Array.from({ length: 20 }, (_, i) => ({ name: `v${i}` })) });
    expect(twenty.status).toBe(202);
    expect(twenty.body['repeats']).toBe(1);
    // Only the two accepted experiments stored anything.
    expect(await p.queue.count()).toBe(2 * 10 + 20);
    expect(await experimentQueue(p).getJobCountByTypes('waiting-children')).toBe(2);
  });
});

describe('running an experiment', () => {
  it('completes with a failed variant, reports it side by side, and queues experiment.completed once', async () => {
    p = await startPipeline({ env: { WEBHOOK_SECRET: SECRET } });
    const res = await createExperiment(p, {
      prompt: 'a paper boat exp-run',
      repeats: 2,
      webhook: { url: 'https://hooks.example.com/pixelmill' },
      variants: [
        { name: 'fast', model: 'fast' },
        { name: 'pro', model: 'pro', size: '2K' },
        // Nano Banana 2 only, and the prompt is blocked: both runs fail for good, at once.
        { name: 'blocked', model: 'fast', promptSuffix: ' [sim:block]' },
      ],
    });
    expect(res.status).toBe(202);
    const id = res.body['id'] as string;
    const view = await settleExperiment(p, id);

    expect(view['finishedAt']).toEqual(expect.any(String));
    expect(view['counts']).toMatchObject({ runs: 6, succeeded: 4, failed: 2, pending: 0 });
    const [fast, pro, blocked] = view['variants'];
    for (const run of fast.runs) {
      expect(run).toMatchObject({ status: 'succeeded', model: 'gemini-3.1-flash-image', family: 'fast' });
      expect(run.output).toMatchObject({ width: 1024, height: 1024, mimeType: 'image/jpeg' });
      expect(run.output.url).toMatch(/^http:\/\/.+X-Amz-Signature=/);
      expect(run.latencyMs).toEqual(expect.any(Number));
      expect(run.costUsd).toBeGreaterThan(0);
    }
    for (const run of pro.runs) {
      expect(run).toMatchObject({ status: 'succeeded', model: 'gemini-3-pro-image', family: 'pro' });
      expect(run.output).toMatchObject({ width: 2048, height: 2048 });
    }
    for (const run of blocked.runs) {
      expect(run.status).toBe('failed');
      expect(run.error.code).toBe('CONTENT_BLOCKED');
      expect(run.output).toBeUndefined();
    }
    expect(fast.summary).toMatchObject({ runs: 2, succeeded: 2, failed: 0, pending: 0 });
    expect(fast.summary.meanLatencyMs).toEqual(expect.any(Number));
    expect(fast.summary.totalCostUsd).toBeCloseTo(fast.runs[0].costUsd + fast.runs[1].costUsd, 6);
    expect(blocked.summary).toMatchObject({ runs: 2, succeeded: 0, failed: 2, meanLatencyMs: null });
    // Pro at 2K costs more than Nano Banana 2 at 1K.
    expect(pro.summary.totalCostUsd).toBeGreaterThan(fast.summary.totalCostUsd);

    // The presigned URL serves the image.
    const image = await fetch(fast.runs[0].output.url);
    expect(image.status).toBe(200);
    expect(image.headers.get('content-type')).toBe('image/jpeg');

    // The parent completed (not failed) with the summary as its return value.
    const parents = experimentQueue(p);
    expect(await parents.getJobState(id)).toBe('completed');
    const parent = (await parents.getJob(id))!;
    const stored = experimentResultSchema.parse(parent.returnvalue);
    expect(stored.variants.map((v) => [v.name, v.succeeded, v.failed])).toEqual([['fast', 2, 0], ['pro', 2, 0], ['blocked', 0, 2]]);
    expect(Buffer.byteLength(JSON.stringify(parent.returnvalue))).toBeLessThan(2_000);

    // experiment.completed is queued once, under its deterministic id...
    const webhooks = new Queue(WEBHOOK_QUEUE, { connection: p.redis, prefix: p.config.QUEUE_PREFIX });
    extraQueues.push(webhooks);
    const eventsFor = async () =>
      (await webhooks.getJobs(['waiting', 'delayed', 'prioritized', 'active', 'completed', 'failed'])).filter(
        (j) => (j.data as { objectId?: string }).objectId === id,
      );
    const events = await waitFor('experiment.completed queued', async () => ((await eventsFor()).length > 0 ? eventsFor() : undefined));
    expect(events).toHaveLength(1);
    expect(events[0]!.data).toMatchObject({ type: 'experiment.completed', objectId: id, tenant: null, url: 'https://hooks.example.com/pixelmill' });
    expect(events[0]!.data.deliveryId).toBe(webhookDeliveryId('experiment.completed', id));

    // ...and a finisher that runs the same parent again (a crash before completion) adds nothing.
    const { createImageQueue } = await import('../../src/queue/image-queue.js');
    const imageQueue = createImageQueue(p.config, p.redis);
    extraQueues.push(imageQueue);
    const { enqueueExperimentCompleted } = await import('../../src/experiments/webhook.js');
    const rerun = createExperimentProcessor(p.config, {
      imageQueue, store: p.store, logger: silentLogger(),
      enqueueCompleted: (event) => enqueueExperimentCompleted(p!.config, p!.redis, event),
    });
    const again = await rerun(parent);
    expect(again.variants.map((v) => v.succeeded)).toEqual([2, 2, 0]);
    expect(await eventsFor()).toHaveLength(1);
  });

  it('counts cancelled runs as ended: the experiment completes and reports them', async () => {
    // One worker slot: the hanging run holds it, so the other runs of that variant wait in the queue.
    p = await startPipeline({ env: { WORKER_CONCURRENCY: 1 } });
    const res = await createExperiment(p, {
      prompt: 'a windmill exp-cancel',
      repeats: 2,
      variants: [{ name: 'hangs', model: 'fast', promptSuffix: ' [sim:hang]' }, { name: 'ok', model: 'fast' }],
    });
    const id = res.body['id'] as string;
    const running = await waitFor('the first run to hang upstream', async () => {
      const v = (await getExperiment(p!, id)).body;
      const run = v['variants'][0].runs.find((r: { status: string }) => r.status === 'running');
      return run && p!.sim.requests().some((r) => r.prompt.includes('exp-cancel [sim:hang]')) ? run : undefined;
    });
    const queued = (await getExperiment(p, id)).body['variants'][0].runs.find((r: { jobId: string }) => r.jobId !== running.jobId);

    // Cancel the active run (its upstream call is aborted) and the waiting one.
    expect([200, 202]).toContain((await callApi(p, 'DELETE', `/v1/jobs/${running.jobId}`)).status);
    expect([200, 202]).toContain((await callApi(p, 'DELETE', `/v1/jobs/${queued.jobId}`)).status);

    const view = await settleExperiment(p, id);
    const [hangs, ok] = view['variants'];
    expect(hangs.runs.map((r: any) => [r.status, r.error?.code])).toEqual([['canceled', 'CANCELED'], ['canceled', 'CANCELED']]);
    expect(hangs.summary).toMatchObject({ runs: 2, succeeded: 0, failed: 0, canceled: 2, pending: 0 });
    expect(ok.summary).toMatchObject({ succeeded: 2, pending: 0 });
    expect(view['counts']).toMatchObject({ runs: 4, succeeded: 2, canceled: 2, pending: 0 });
    expect(await experimentQueue(p).getJobState(id)).toBe('completed');
  });

  it('records a winner once the variant has an image, and refuses unknown or imageless variants', async () => {
    p = await startPipeline();
    const res = await createExperiment(p, {
      prompt: 'a teapot exp-winner',
      variants: [{ name: 'A', model: 'fast' }, { name: 'B', model: 'fast', promptSuffix: ' [sim:block]' }],
    });
    const id = res.body['id'] as string;
    await settleExperiment(p, id);

    const unknown = await pickWinner(p, id, { variant: 'C' });
    expect(unknown.status).toBe(400);
    expect(issuePaths(unknown.body)).toEqual(['variant']);
    expect(unknown.body['error'].message).toMatch(/no variant "C".*"A", "B"/);

    const imageless = await pickWinner(p, id, { variant: 'B' });
    expect(imageless.status).toBe(400);
    expect(imageless.body['error'].message).toMatch(/no succeeded run/);

    const bad = await pickWinner(p, id, { winner: 'A' });
    expect(bad.status).toBe(400);
    expect(issuePaths(bad.body)).toEqual(expect.arrayContaining(['variant', 'winner']));

    const before = Date.now();
    const chosen = await pickWinner(p, id, { variant: 'A' });
    expect(chosen.status).toBe(200);
    expect(chosen.body['winner']).toMatchObject({ variant: 'A' });
    const view = (await getExperiment(p, id)).body;
    expect(view['winner'].variant).toBe('A');
    expect(Date.parse(view['winner'].chosenAt)).toBeGreaterThanOrEqual(before - 1_000);

    expect((await pickWinner(p, 'exp_AAAAAAAAAAAAAAAAAAAAAA', { variant: 'A' })).status).toBe(404);
    expect((await getExperiment(p, 'exp_AAAAAAAAAAAAAAAAAAAAAA')).status).toBe(404);
    expect((await getExperiment(p, 'not-an-id')).status).toBe(404);
  });
});

describe('tenants and the page route', () => {
  const ALICE = 'alice-key-0123456789';
  const BOB = 'bob-key-0123456789ab';

  it('scopes experiments to the tenant that made them; the page shell is public, the data is not', async () => {
    p = await startPipeline({ env: { API_KEYS: `alice:${ALICE},bob:${BOB}`, HOST: '127.0.0.1' } });
    const made = await createExperiment(p, { prompt: 'exp-tenant', variants: [{ name: 'a', model: 'fast' }, { name: 'b', model: 'fast', size: '512' }] }, ALICE);
    expect(made.status).toBe(202);
    const id = made.body['id'] as string;
    await settleExperiment(p, id, ALICE);

    expect((await getExperiment(p, id)).status).toBe(401);
    expect((await getExperiment(p, id, BOB)).status).toBe(404);
    expect((await pickWinner(p, id, { variant: 'a' }, BOB)).status).toBe(404);
    expect((await getExperiment(p, id, ALICE)).body['winner']).toBeNull();
    expect((await pickWinner(p, id, { variant: 'a' }, ALICE)).status).toBe(200);

    // The runs are alice's jobs too.
    const child = (await getExperiment(p, id, ALICE)).body['variants'][0].runs[0].jobId as string;
    expect((await callApi(p, 'GET', `/v1/jobs/${child}`, undefined, BOB)).status).toBe(404);
    expect((await callApi(p, 'GET', `/v1/jobs/${child}`, undefined, ALICE)).status).toBe(200);

    const page = await callApi(p, 'GET', `/experiments/${id}`);
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(String(page.headers['content-security-policy'])).toMatch(/default-src 'none'; script-src 'sha256-[^']+'/);
    expect(page.body['text']).toContain('<!doctype html>');
    expect(page.body['text']).not.toContain(ALICE);
    expect((await callApi(p, 'GET', '/experiments/..%2Fetc')).status).toBe(404);
  });
});
