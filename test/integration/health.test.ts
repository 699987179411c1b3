/**
 * Model health end to end: 429s recorded by the worker make Nano Banana 2 throttled in the shared
 * window; standard jobs then go to Pro first even off-peak, draft jobs stay on Nano Banana 2, and
 * standard jobs come back once the window has slid past the 429s. GET /v1/models/health shows it.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { ModelStateStore } from '../../src/state/model-state.js';
import { callApi } from '../support/experiments.js';
import { startPipeline, type Pipeline } from '../support/pipeline.js';
import { waitFor } from '../support/stack.js';

const FAST = 'gemini-3.1-flash-image';
const PRO = 'gemini-3-pro-image';

let p: Pipeline | undefined;
afterEach(async () => {
  await p?.close();
  p = undefined;
});

describe('model health', () => {
  it('a throttled Nano Banana 2 sends standard jobs to Pro off-peak, not draft jobs, and they come back when it recovers', async () => {
    // A short window so the recovery is seen in seconds; lanes off so only health (not the lane's
    // learned rate) decides where the jobs go. timeScale 0.001: a 429's RetryInfo is a few ms.
    p = await startPipeline({
      env: { HEALTH_WINDOW: '8s', HEALTH_BUCKET: '500ms', HEALTH_MIN_CALLS: 5, HEALTH_THROTTLE_429_RATE: 0.5, LANES_ENABLED: false },
      sim: { timeScale: 0.001 },
    });
    const pipeline = p;
    const modelState = new ModelStateStore(p.redis, p.config);
    // Wait out the 429's cooldown, so that what moves a job is health, not the cooldown.
    const fastFree = async () => ((await modelState.snapshot([FAST])).cooldownUntil[FAST] ?? 0) <= Date.now();
    const fastHealth = async () => {
      const res = await callApi(pipeline, 'GET', '/v1/models/health');
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      return (res.body['models'] as Record<string, any>[]).find((m) => m['model'] === FAST)!;
    };

    expect(await fastHealth()).toMatchObject({ calls: 0, throttled: false, breaker: 'closed' });
    for (let i = 0; i < 5; i++) {
      await waitFor('the 429 cooldown to end', fastFree);
      const view = await p.settle((await p.submit({ prompt: `[sim:429@fast] e2e-health-${i}` })).body['id']);
      expect(view['status']).toBe('succeeded');
      expect(view['history'].map((h: { model: string; outcome: string }) => [h.model, h.outcome])).toEqual([[FAST, 'RATE_LIMITED'], [PRO, 'succeeded']]);
    }

    const throttled = await fastHealth();
    expect(throttled).toMatchObject({ family: 'fast', calls: 5, rate429: 1, throttled: true, breaker: 'closed', p50Ms: null });
    const health = await callApi(p, 'GET', '/v1/models/health');
    expect(health.body['models'].find((m: Record<string, unknown>) => m['model'] === PRO)).toMatchObject({ calls: 5, rate429: 0, throttled: false });
    expect(health.body['models'].find((m: Record<string, unknown>) => m['model'] === PRO)['p50Ms']).toBeGreaterThan(0);

    // A standard job off-peak now goes to Pro first, with the health reason; Nano Banana 2 is not called.
    await waitFor('the 429 cooldown to end', fastFree);
    const moved = await p.settle((await p.submit({ prompt: 'plain e2e-health-standard' })).body['id']);
    expect(moved['status']).toBe('succeeded');
    expect(moved['route'].model).toBe(PRO);
    expect(moved['route'].reason).toMatch(/standard tier, off-peak: Nano Banana Pro first; Nano Banana 2 throttled: 429 rate 100% over the last 8 s/);
    expect(p.sim.requests().filter((r) => r.prompt.includes('e2e-health-standard')).map((r) => r.family)).toEqual(['pro']);

    // A draft job never upgrades: Nano Banana 2, throttled or not.
    const draft = await p.settle((await p.submit({ prompt: 'plain e2e-health-draft', tier: 'draft' })).body['id']);
    expect(draft['status']).toBe('succeeded');
    expect(draft['route'].model).toBe(FAST);

    // Once the window slides past the 429s, standard jobs are back on Nano Banana 2.
    await waitFor('Nano Banana 2 to recover', async () => !(await fastHealth())['throttled'], 20_000, 200);
    const back = await p.settle((await p.submit({ prompt: 'plain e2e-health-back' })).body['id']);
    expect(back['route'].model).toBe(FAST);
    expect(back['route'].reason).toMatch(/standard tier, off-peak: Nano Banana 2 first$/);
  });
});
