/**
 * GET /metrics (issue 4 §4, spend as a metric): the fleet's figures read from Redis, scraped through
 * the real API after real jobs ran on the worker, simulator, redis-server and s3rver; and who may
 * scrape them.
 */
import { describe, expect, it } from 'vitest';
import { request } from 'undici';
import { pipelinesClosedAfterEach, type Pipeline } from '../support/pipeline.js';

const pipeline = pipelinesClosedAfterEach();

async function scrape(p: Pipeline, authorization?: string): Promise<{ status: number; contentType: string; text: string }> {
  const res = await request(`${p.api.url}/metrics`, authorization ? { headers: { authorization } } : {});
  return { status: res.statusCode, contentType: String(res.headers['content-type']), text: await res.body.text() };
}

/** Samples of the text format: `name{a="x",b="y"} value` → one entry per line. */
function samples(text: string): { name: string; labels: Record<string, string>; value: number }[] {
  const out: { name: string; labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

function value(all: ReturnType<typeof samples>, name: string, labels: Record<string, string> = {}): number | undefined {
  const hit = all.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (hit.length > 1) throw new Error(`${hit.length} samples of ${name} ${JSON.stringify(labels)}`);
  return hit[0]?.value;
}

describe('GET /metrics', () => {
  it('reports spend per family (the same as GET /v1/spend), job states, model health and lanes', async () => {
    const p = await pipeline();
    // A standard job whose Nano Banana 2 answer is degraded is made again on Pro: both families spend.
    const standard = await p.settle((await p.submit({ prompt: 'a teapot [sim:degrade@fast]', tier: 'standard', size: '1K' })).body['id']);
    const draft = await p.settle((await p.submit({ prompt: 'a fern', tier: 'draft', size: '512' })).body['id']);
    expect([standard['status'], draft['status']]).toEqual(['succeeded', 'succeeded']);

    const first = await scrape(p);
    expect(first.status).toBe(200);
    expect(first.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(first.text).toContain('# TYPE pixelmill_spend_usd_total counter');
    const m = samples(first.text);

    const spend = (await (await request(`${p.api.url}/v1/spend?days=1`)).body.json()) as { byFamily: { fast: number; pro: number } };
    expect(spend.byFamily.fast).toBeGreaterThan(0);
    expect(spend.byFamily.pro).toBeGreaterThan(0);
    expect(value(m, 'pixelmill_spend_usd_total', { tenant: '-', family: 'fast' })).toBeCloseTo(spend.byFamily.fast, 6);
    expect(value(m, 'pixelmill_spend_usd_total', { tenant: '-', family: 'pro' })).toBeCloseTo(spend.byFamily.pro, 6);
    expect(spend.byFamily.fast + spend.byFamily.pro).toBeCloseTo(standard['costUsd'] + draft['costUsd'], 6);

    expect(value(m, 'pixelmill_jobs', { state: 'completed' })).toBe(2);
    expect(value(m, 'pixelmill_jobs', { state: 'failed' })).toBe(0);
    expect(value(m, 'pixelmill_jobs', { state: 'active' })).toBe(0);

    const fast = p.config.MODEL_FAST[0]!;
    const pro = p.config.MODEL_PRO[0]!;
    expect(value(m, 'pixelmill_model_calls', { model: fast, family: 'fast' })).toBe(2);
    expect(value(m, 'pixelmill_model_calls', { model: pro, family: 'pro' })).toBe(1);
    expect(value(m, 'pixelmill_model_rate', { model: fast, kind: 'degraded' })).toBeCloseTo(0.5, 6);
    expect(value(m, 'pixelmill_model_rate', { model: pro, kind: 'degraded' })).toBe(0);
    expect(value(m, 'pixelmill_model_latency_seconds', { model: pro, quantile: '0.95' })).toBeGreaterThan(0);
    expect(value(m, 'pixelmill_model_breaker', { model: fast, state: 'closed' })).toBe(1);
    expect(value(m, 'pixelmill_model_breaker', { model: fast, state: 'open' })).toBe(0);
    expect(value(m, 'pixelmill_model_throttled', { model: fast })).toBe(0);
    // One lane per (model id, key): nothing in flight or closed once the jobs are done.
    const lanes = m.filter((s) => s.name === 'pixelmill_lane_in_flight');
    expect(lanes.map((s) => s.labels['model']).sort()).toEqual([...p.config.MODEL_FAST, ...p.config.MODEL_PRO].sort());
    expect(lanes.every((s) => s.value === 0 && /^[0-9a-f]+$/.test(s.labels['key_id'] ?? ''))).toBe(true);
    expect(m.filter((s) => s.name === 'pixelmill_lane_closed').every((s) => s.value === 0)).toBe(true);
    // The API process's own figures.
    expect(value(m, 'pixelmill_api_process_cpu_user_seconds_total')).toBeGreaterThan(0);

    // Every scrape reads the totals afresh: a second one reports the same spend, not twice it.
    const again = samples((await scrape(p)).text);
    expect(value(again, 'pixelmill_spend_usd_total', { tenant: '-', family: 'fast' })).toBeCloseTo(spend.byFamily.fast, 6);
    expect(value(again, 'pixelmill_jobs', { state: 'completed' })).toBe(2);
  });

  it('needs METRICS_TOKEN on a server with API_KEYS; a tenant key does not open it', async () => {
    const tenantKey = 'acme-0123456789abcdef';
    const closed = await pipeline({ env: { API_KEYS: `acme:${tenantKey}` }, worker: false });
    for (const auth of [undefined, `Bearer ${tenantKey}`]) {
      const res = await scrape(closed, auth);
      expect(res.status).toBe(401);
      const body = JSON.parse(res.text) as { error: { code: string; message: string } };
      expect(body.error.code).toBe('UNAUTHORIZED');
      expect(body.error.message).toContain('until METRICS_TOKEN is set');
    }

    const token = 'scrape-0123456789abcdef';
    const open = await pipeline({ env: { API_KEYS: `acme:${tenantKey}`, METRICS_TOKEN: token }, worker: false });
    for (const auth of [undefined, `Bearer ${tenantKey}`, `Bearer ${token}x`]) {
      const res = await scrape(open, auth);
      expect(res.status, `${auth}`).toBe(401);
      expect(JSON.parse(res.text).error.message).toContain('METRICS_TOKEN');
    }
    const ok = await scrape(open, `Bearer ${token}`);
    expect(ok.status).toBe(200);
    expect(value(samples(ok.text), 'pixelmill_jobs', { state: 'waiting' })).toBe(0);
  });
});
