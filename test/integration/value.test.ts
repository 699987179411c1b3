/**
 * Output validation (DEGRADED actions per tier) and budgets (batch maxCostUsd with and without
 * allowBudgetDowngrade, TENANT_DAILY_BUDGET_USD, GET /v1/spend) through the real API, worker,
 * simulator, redis-server and s3rver (issue 4 §3–4).
 */
import { describe, expect, it } from 'vitest';
import { request } from 'undici';
import { batchKeys } from '../../src/batches/record.js';
import { listPricePerImage } from '../../src/models/pricing.js';
import { pipelinesClosedAfterEach, type Pipeline } from '../support/pipeline.js';
import { waitFor } from '../support/stack.js';

const pipeline = pipelinesClosedAfterEach();

async function http(p: Pipeline, method: 'GET' | 'POST', path: string, json?: unknown): Promise<{ status: number; body: any }> {
  const res = await request(`${p.api.url}${path}`, {
    method, ...(json !== undefined ? { headers: { 'content-type': 'application/json' }, body: JSON.stringify(json) } : {}),
  });
  return { status: res.statusCode, body: await res.body.json() };
}

async function runBatch(p: Pipeline, body: unknown): Promise<{ id: string; views: Record<string, any>[] }> {
  const created = await http(p, 'POST', '/v1/batches', body);
  expect(created.status, JSON.stringify(created.body)).toBe(202);
  const id = created.body.id as string;
  await waitFor(`batch ${id} to finish`, async () => (await http(p, 'GET', `/v1/batches/${id}`)).body.finishedAt, 30_000, 50);
  const jobIds = await p.redis.zrange(batchKeys(p.config, id).jobs, '0', '-1');
  return { id, views: await Promise.all(jobIds.map((j) => p.get(j))) };
}

const outcomes = (view: Record<string, any>) => (view['history'] as { outcome: string; family: string | null }[]).filter((h) => h.family).map((h) => `${h.outcome}@${h.family}`);

describe('output validation: DEGRADED', () => {
  it('standard (retry): does not store a degraded answer and makes the image on the other model at once', async () => {
    const p = await pipeline();
    const { body } = await p.submit({ prompt: 'a teapot [sim:degrade@fast]', tier: 'standard', size: '1K' });
    const view = await p.settle(body['id']);
    expect(view['status']).toBe('succeeded');
    expect(outcomes(view)).toEqual(['DEGRADED@fast', 'succeeded@pro']);
    expect(view['route']).toMatchObject({ family: 'pro' });
    expect(view['degraded']).toBeUndefined();
    expect(view['attempts']).toBe(1);
    expect(view['route']['reason']).toContain('after DEGRADED on Nano Banana 2');
    // Both calls are paid for.
    expect(view['costUsd']).toBeGreaterThan(listPricePerImage('pro', '1K')!);
  });

  it('draft (accept): stores the image, flags the job and records the call as DEGRADED', async () => {
    const p = await pipeline();
    const { body } = await p.submit({ prompt: 'a teapot [sim:degrade]', tier: 'draft', size: '1K' });
    const view = await p.settle(body['id']);
    expect(view['status']).toBe('succeeded');
    expect(view['degraded']).toMatch(/answered by gemini-2\.5-flash-image, not Nano Banana 2/);
    expect(outcomes(view)).toEqual(['DEGRADED@fast']);
    expect(view['output']['key']).toBeTruthy();
  });

  it('premium (retry, no downgrade): retries after the backoff, and on the last attempt accepts and flags', async () => {
    const p = await pipeline({ env: { MAX_ATTEMPTS: 2 } });
    const once = await p.submit({ prompt: 'a violin [sim:degrade*1]', tier: 'premium', size: '1K' });
    const always = await p.submit({ prompt: 'a cello [sim:degrade]', tier: 'premium', size: '1K' });
    const v1 = await p.settle(once.body['id']);
    expect(v1['status']).toBe('succeeded');
    expect(outcomes(v1)).toEqual(['DEGRADED@pro', 'succeeded@pro']);
    expect(v1['attempts']).toBe(2);
    expect(v1['degraded']).toBeUndefined();

    const v2 = await p.settle(always.body['id']);
    expect(v2['status']).toBe('succeeded');
    expect(outcomes(v2)).toEqual(['DEGRADED@pro', 'DEGRADED@pro']);
    expect(v2['degraded']).toMatch(/answered by gemini-2\.5-flash-image/);
  });

  it('DEGRADED_ACTION_STANDARD=accept keeps the first degraded image; two images with the right one are not degraded', async () => {
    const p = await pipeline({ env: { DEGRADED_ACTION_STANDARD: 'accept' } });
    const a = await p.submit({ prompt: 'a kite [sim:degrade@fast]', tier: 'standard', size: '1K' });
    const b = await p.submit({ prompt: 'a kite [sim:two-images]', tier: 'standard', size: '2K' });
    const va = await p.settle(a.body['id']);
    expect(outcomes(va)).toEqual(['DEGRADED@fast']);
    expect(va['degraded']).toBeTruthy();
    const vb = await p.settle(b.body['id']);
    expect(vb['status']).toBe('succeeded');
    expect(vb['degraded']).toBeUndefined();
    expect(vb['output']).toMatchObject({ width: 2048, height: 2048 });
  });
});

describe('budgets', () => {
  it('fails the jobs whose call would pass the batch maxCostUsd with BUDGET_EXCEEDED (reservations hold under concurrency)', async () => {
    const p = await pipeline();
    const price = listPricePerImage('fast', '512')!;
    // Room for one image at list price, not two.
    const max = Math.round(price * 1.5 * 1e6) / 1e6;
    const { id, views } = await runBatch(p, {
      maxCostUsd: max, defaults: { tier: 'draft', size: '512' }, jobs: Array.from({ length: 6 }, (_, i) => ({ prompt: `budget ${i}` })),
    });
    const ok = views.filter((v) => v['status'] === 'succeeded');
    const over = views.filter((v) => v['error']?.code === 'BUDGET_EXCEEDED');
    expect(ok).toHaveLength(1);
    expect(over).toHaveLength(5);
    expect(over[0]!['error'].message).toContain(`maxCostUsd ${max}`);
    // No call was made for the refused jobs.
    for (const v of over) expect(outcomes(v)).toEqual([]);
    expect(Object.values(p.sim.stats()).reduce((n, m) => n + m.requests, 0)).toBe(1);
    const spent = Number(await p.redis.hget(batchKeys(p.config, id).record, 'spentMicros')) / 1e6;
    expect(spent).toBeCloseTo(ok[0]!['costUsd'], 6);
    expect(spent).toBeLessThanOrEqual(max);
  });

  it('downgrades Pro calls to Nano Banana 2 when the batch allows it, then fails when even that would pass', async () => {
    const p = await pipeline({ env: { WORKER_CONCURRENCY: 1 } });
    // One Pro 1K image (~$0.137-0.142 with thinking tokens) + one Nano Banana 2 1K (~$0.068) fit; a third does not.
    const { views } = await runBatch(p, {
      maxCostUsd: 0.215, allowBudgetDowngrade: true, defaults: { tier: 'premium', size: '1K' },
      jobs: [{ prompt: 'a castle 0' }, { prompt: 'a castle 1' }, { prompt: 'a castle 2' }],
    });
    const byFamily = views.filter((v) => v['status'] === 'succeeded').map((v) => v['route']['family']).sort();
    expect(byFamily).toEqual(['fast', 'pro']);
    const downgraded = views.find((v) => v['status'] === 'succeeded' && v['route'].family === 'fast')!;
    expect(downgraded['route']['reason']).toBe('budget: downgraded to Nano Banana 2');
    expect(views.filter((v) => v['error']?.code === 'BUDGET_EXCEEDED')).toHaveLength(1);
  });

  it('without allowBudgetDowngrade a premium batch fails instead of moving to Nano Banana 2', async () => {
    const p = await pipeline({ env: { WORKER_CONCURRENCY: 1 } });
    const { views } = await runBatch(p, {
      maxCostUsd: 0.215, defaults: { tier: 'premium', size: '1K' }, jobs: [{ prompt: 'a tower 0' }, { prompt: 'a tower 1' }],
    });
    expect(views.map((v) => v['status']).sort()).toEqual(['failed', 'succeeded']);
    expect(views.find((v) => v['status'] === 'failed')!['error'].code).toBe('BUDGET_EXCEEDED');
  });

  it('enforces TENANT_DAILY_BUDGET_USD and reports spend per family and day in GET /v1/spend', async () => {
    const p = await pipeline({ env: { TENANT_DAILY_BUDGET_USD: 0.06, WORKER_CONCURRENCY: 1 } });
    const first = await p.settle((await p.submit({ prompt: 'a fern', tier: 'draft', size: '512' })).body['id']);
    expect(first['status']).toBe('succeeded');
    const second = await p.settle((await p.submit({ prompt: 'a moss', tier: 'draft', size: '512' })).body['id']);
    expect(second['error']?.code).toBe('BUDGET_EXCEEDED');
    expect(second['error'].message).toContain('TENANT_DAILY_BUDGET_USD');

    const spend = await http(p, 'GET', '/v1/spend?days=2');
    expect(spend.status).toBe(200);
    expect(spend.body.days).toHaveLength(2);
    expect(spend.body.to).toBe(new Date().toISOString().slice(0, 10));
    expect(spend.body.byFamily.fast).toBeCloseTo(first['costUsd'], 6);
    expect(spend.body.byFamily.pro).toBe(0);
    expect(spend.body.totalUsd).toBeCloseTo(first['costUsd'], 6);
    expect(spend.body.dailyBudgetUsd).toBe(0.06);
    expect((await http(p, 'GET', '/v1/spend?days=0')).status).toBe(400);
  });
});
