/**
 * End to end: API → queue → worker → simulator → S3, against real servers. Each test owns a pipeline
 * (its own simulator, API, worker, queue prefix and key prefix).
 */
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { nextMidnight } from '../../src/state/model-state.js';
import { outputObjects, startPipeline, type Pipeline } from '../support/pipeline.js';
import { waitFor } from '../support/stack.js';

let p: Pipeline | undefined;
afterEach(async () => {
  await p?.close();
  p = undefined;
});

const callsFor = (pl: Pipeline, marker: string) => pl.sim.requests().filter((r) => r.prompt.includes(marker));

describe('pipeline', () => {
  it('takes a job through API, queue, worker, simulator and S3 to a decodable image of the requested size', async () => {
    p = await startPipeline();
    const { status, body } = await p.submit({ prompt: 'a red bicycle e2e-basic', size: '1K', aspectRatio: '16:9', metadata: { campaign: 'spring' } });
    expect(status).toBe(202);
    const view = await p.settle(body['id']);
    expect(view['status']).toBe('succeeded');
    expect(view['route']).toMatchObject({ model: 'gemini-3.1-flash-image' });
    expect(view['route'].reason).toMatch(/standard tier, off-peak: Nano Banana 2 first/);
    expect(view['output']).toMatchObject({ key: `${p.config.S3_KEY_PREFIX}/${body['id']}.jpg`, mimeType: 'image/jpeg', width: 1376, height: 768 });
    expect(view['costUsd']).toBeGreaterThan(0.06);
    expect(view['usage']).toMatchObject({ imageTokens: 1120 });
    expect(view['history']).toHaveLength(1);

    const stored = await p.store.get(view['output'].key);
    expect(stored.contentType).toBe('image/jpeg');
    const meta = await sharp(stored.body).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['jpeg', 1376, 768]);
    const head = await p.store.head(view['output'].key);
    expect(head?.metadata).toMatchObject({ 'job-id': body['id'], model: 'gemini-3.1-flash-image', 'model-version': 'gemini-3.1-flash-image' });
    expect(head?.metadata['prompt-sha256']).toMatch(/^[0-9a-f]{64}$/);
  });

  it('after a 429 with retryDelay R, a standard job falls back to Pro at once and the next call to that model waits at least R', async () => {
    // Nano Banana 2 gets 1 request per (scaled) minute: the second call answers 429 with a RetryInfo of ~3 s.
    // The lanes' quota period is that scaled minute too (the 429 announces "1 per minute").
    p = await startPipeline({ sim: { timeScale: 0.05, quotas: { fast: 1 } }, env: { LANE_RATE_WINDOW: 3_000 } });
    const first = await p.settle((await p.submit({ prompt: 'takes the token e2e-429-a' })).body['id']);
    expect(first['route'].model).toBe('gemini-3.1-flash-image');

    const view = await p.settle((await p.submit({ prompt: 'meets the 429 e2e-429-b' })).body['id']);
    expect(view['status']).toBe('succeeded');
    expect(view['route'].model).toBe('gemini-3-pro-image');
    expect(view['route'].reason).toMatch(/fallback to Nano Banana Pro: gemini-3.1-flash-image cooling down/);
    const [limited, ok] = view['history'];
    expect(limited).toMatchObject({ outcome: 'RATE_LIMITED', model: 'gemini-3.1-flash-image', attempt: 1 });
    expect(ok).toMatchObject({ outcome: 'succeeded', model: 'gemini-3-pro-image', attempt: 1 });
    const retryAfterMs = limited.retryAfterMs as number;
    expect(retryAfterMs).toBeGreaterThan(1_000);
    // "At once": Pro was called right after the 429, not after the delay.
    const the429 = callsFor(p, 'e2e-429-b').find((r) => r.status === 429)!;
    const answeredAt = the429.at + (the429.durationMs ?? 0);
    const proCall = callsFor(p, 'e2e-429-b').find((r) => r.family === 'pro')!;
    expect(proCall.at - answeredAt).toBeLessThan(retryAfterMs / 2);

    // A draft job may only use Nano Banana 2: it waits out the cooldown, without consuming an attempt.
    const draft = await p.settle((await p.submit({ prompt: 'waits e2e-429-c', tier: 'draft' })).body['id'], 20_000);
    expect(draft['status']).toBe('succeeded');
    expect(draft['attempts']).toBe(1);
    expect(draft['history'].map((h: { outcome: string }) => h.outcome)).toEqual(['requeued', 'succeeded']);
    const nextFast = callsFor(p, 'e2e-429-c').find((r) => r.family === 'fast')!;
    expect(nextFast.at - answeredAt).toBeGreaterThanOrEqual(retryAfterMs);
    const job = await p.queue.getJob(draft['id']);
    expect(job?.attemptsMade).toBe(1);
  });

  it('a per-day quota closes the model until midnight Pacific; a standard job moves to Pro', async () => {
    p = await startPipeline({ sim: { timeScale: 0.001 } });
    const view = await p.settle((await p.submit({ prompt: 'daily [sim:429-day@fast*1] e2e-daily' })).body['id']);
    expect(view['status']).toBe('succeeded');
    expect(view['route'].model).toBe('gemini-3-pro-image');
    const until = Number(await p.redis.get(`${p.config.QUEUE_PREFIX}:pm:model:gemini-3.1-flash-image:cooldown`));
    expect(until).toBe(nextMidnight(Date.now()));
  });

  it('a draft job never calls Pro, even at peak and with Nano Banana 2 failing', async () => {
    p = await startPipeline({ env: { PEAK_WINDOWS: '00:00-24:00', MAX_ATTEMPTS: 3 }, sim: { peak: 'on' } });
    const { body } = await p.submit({ prompt: 'draft only [sim:503@fast*2] e2e-draft', tier: 'draft' });
    const view = await p.settle(body['id']);
    expect(view['status']).toBe('succeeded');
    expect(view['attempts']).toBe(3);
    expect(view['history'].map((h: { outcome: string }) => h.outcome)).toEqual(['UPSTREAM_UNAVAILABLE', 'UPSTREAM_UNAVAILABLE', 'succeeded']);
    expect(callsFor(p, 'e2e-draft').every((r) => r.family === 'fast')).toBe(true);
    expect(p.sim.stats()['gemini-3-pro-image']?.requests ?? 0).toBe(0);
  });

  it('retries a timeout (short UPSTREAM_TIMEOUT_MS) and then succeeds', async () => {
    p = await startPipeline({ env: { UPSTREAM_TIMEOUT_MS: 300 } });
    const { body } = await p.submit({ prompt: 'slow one [sim:hang*1] e2e-timeout', tier: 'draft' });
    const view = await p.settle(body['id']);
    expect(view['status']).toBe('succeeded');
    expect(view['attempts']).toBe(2);
    expect(view['history'].map((h: { outcome: string }) => h.outcome)).toEqual(['UPSTREAM_TIMEOUT', 'succeeded']);
    // The simulator saw the first connection closed by the client.
    await waitFor('the hung request to be seen as aborted', () => callsFor(p!, 'e2e-timeout').some((r) => r.aborted));
  });

  it('a content block fails with CONTENT_BLOCKED and no further retries', async () => {
    p = await startPipeline();
    const { body } = await p.submit({ prompt: 'blocked [sim:image-safety] e2e-block', tier: 'premium' });
    const view = await p.settle(body['id']);
    expect(view['status']).toBe('failed');
    expect(view['error']).toMatchObject({ code: 'CONTENT_BLOCKED', retryable: false });
    expect(view['error'].message).toMatch(/rephrase/);
    // A failed job still says where it was routed (no result to take it from).
    expect(view['route']).toMatchObject({ family: 'pro', model: 'gemini-3-pro-image' });
    expect(view['route'].reason).toMatch(/^premium tier/);
    expect(callsFor(p, 'e2e-block')).toHaveLength(1);
    const job = await p.queue.getJob(body['id']);
    expect(job?.attemptsMade).toBe(1);
  });

  it('a standard job blocked by Nano Banana 2 gets one try on Pro', async () => {
    p = await startPipeline();
    const { body } = await p.submit({ prompt: 'strict flash [sim:image-safety@fast] e2e-lenient' });
    const view = await p.settle(body['id']);
    expect(view['status']).toBe('succeeded');
    expect(view['route'].model).toBe('gemini-3-pro-image');
    expect(view['route'].reason).toMatch(/retry on Nano Banana Pro after CONTENT_BLOCKED/);
    expect(callsFor(p, 'e2e-lenient').map((r) => r.family)).toEqual(['fast', 'pro']);
  });

  it('NO_IMAGE is retried once, then the job fails', async () => {
    p = await startPipeline();
    const once = await p.submit({ prompt: 'shy [sim:no-image*1] e2e-noimage-once', tier: 'draft' });
    const always = await p.submit({ prompt: 'shyer [sim:no-image] e2e-noimage-always', tier: 'draft' });
    expect((await p.settle(once.body['id']))['status']).toBe('succeeded');
    const failed = await p.settle(always.body['id']);
    expect(failed['error']).toMatchObject({ code: 'NO_IMAGE' });
    expect(callsFor(p, 'e2e-noimage-always')).toHaveLength(2);
  });

  it('skips a retired model id and tells the fleet', async () => {
    p = await startPipeline({ sim: { models: [{ id: 'gemini-3.1-flash-image-preview', family: 'fast' }, { id: 'gemini-3-pro-image', family: 'pro' }] } });
    const a = await p.settle((await p.submit({ prompt: 'retired a e2e-retired', tier: 'draft' })).body['id']);
    expect(a['status']).toBe('succeeded');
    expect(a['route'].model).toBe('gemini-3.1-flash-image-preview');
    expect(a['history'][0]).toMatchObject({ outcome: 'MODEL_NOT_FOUND', model: 'gemini-3.1-flash-image' });
    const b = await p.settle((await p.submit({ prompt: 'retired b e2e-retired', tier: 'draft' })).body['id']);
    expect(b['history']).toHaveLength(1);
    expect(b['route'].reason).toMatch(/gemini-3.1-flash-image retired \(404\), using gemini-3.1-flash-image-preview/);
    expect(p.sim.stats()['gemini-3.1-flash-image']?.requests).toBe(1);
  });

  it('an idempotencyKey sent twice gives one job and one upstream call', async () => {
    p = await startPipeline();
    const req = { prompt: 'only once e2e-idem', idempotencyKey: 'order-42' };
    const [a, b] = await Promise.all([p.submit(req), p.submit(req)]);
    expect([a.status, b.status].sort()).toEqual([200, 202]);
    expect(a.body['id']).toBe(b.body['id']);
    await p.settle(a.body['id']);
    const again = await p.submit(req);
    expect(again.status).toBe(200);
    expect(again.body['status']).toBe('succeeded');
    expect(callsFor(p, 'e2e-idem')).toHaveLength(1);
    expect(await p.queue.count()).toBe(0);
  });

  it('fails with DEADLINE_EXCEEDED instead of retrying past the deadline', async () => {
    p = await startPipeline({ env: { UPSTREAM_TIMEOUT_MS: 5_000 } });
    const deadline = new Date(Date.now() + 400).toISOString();
    const { body } = await p.submit({ prompt: 'late [sim:hang] e2e-deadline', tier: 'draft', deadline });
    const view = await p.settle(body['id']);
    expect(view['status']).toBe('failed');
    expect(view['error'].code).toBe('DEADLINE_EXCEEDED');
  });

  it('no Redis key holds more than 64 KB after a run of 4K images', async () => {
    p = await startPipeline();
    const ids = await Promise.all(
      ['1:1', '16:9', '9:16'].map(async (aspectRatio, i) => (await p!.submit({ prompt: `big ${i} e2e-4k`, size: '4K', aspectRatio })).body['id'] as string),
    );
    for (const id of ids) expect((await p.settle(id))['status']).toBe('succeeded');
    expect((await p.get(ids[1]!))['output']).toMatchObject({ width: 5504, height: 3072 });

    const keys = await p.redis.keys(`${p.config.QUEUE_PREFIX}:*`);
    expect(keys.length).toBeGreaterThan(3);
    const sizes = await Promise.all(keys.map(async (k) => [k, Number(await p!.redis.call('MEMORY', 'USAGE', k, 'SAMPLES', '0'))] as const));
    const big = sizes.filter(([, bytes]) => bytes > 64 * 1024);
    expect(big).toEqual([]);
  });

  it('stores one object per job: a retry overwrites the same key', async () => {
    p = await startPipeline();
    const { body } = await p.submit({ prompt: 'twice [sim:truncate*1] e2e-overwrite', tier: 'draft' });
    const view = await p.settle(body['id']);
    expect(view['history'].map((h: { outcome: string }) => h.outcome)).toEqual(['BAD_RESPONSE', 'succeeded']);
    expect(await outputObjects(p.config, body['id'])).toEqual([`${p.config.S3_KEY_PREFIX}/${body['id']}.jpg`]);
  });
});
