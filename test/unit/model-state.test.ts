import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { ModelStateStore, nextMidnight } from '../../src/state/model-state.js';
import { testConfig } from '../support/stack.js';

describe('shared model state (real Redis)', () => {
  const config = testConfig();
  const redis = new Redis(config.REDIS_URL);
  const other = new Redis(config.REDIS_URL);
  afterAll(async () => {
    await redis.quit();
    await other.quit();
  });

  it('cooldowns only extend, and every store sees them', async () => {
    let t = 1_000_000;
    const a = new ModelStateStore(redis, config, () => t);
    const b = new ModelStateStore(other, config, () => t);
    await a.extendCooldown('m1', t + 5_000);
    expect(await b.extendCooldown('m1', t + 2_000)).toBe(t + 5_000);
    expect((await b.snapshot(['m1', 'm2'])).cooldownUntil).toEqual({ m1: t + 5_000 });
    await b.extendCooldown('m1', t + 9_000);
    expect((await a.snapshot(['m1'])).cooldownUntil['m1']).toBe(t + 9_000);
    t += 1;
  });

  it('retired ids are shared', async () => {
    const a = new ModelStateStore(redis, config);
    await a.markRetired('old-id', '404');
    const snap = await a.snapshot(['old-id', 'new-id']);
    expect([...snap.retired]).toEqual(['old-id']);
  });
});

describe('per-day quota reset', () => {
  it('is the next midnight in Los Angeles, across DST', () => {
    // 2026-11-21 10:00 UTC = 02:00 PST → next midnight PST = 2026-11-22 08:00 UTC
    expect(new Date(nextMidnight(Date.parse('2026-11-21T10:00:00Z'))).toISOString()).toBe('2026-11-22T08:00:00.000Z');
    // Summer (PDT, UTC-7): 2026-07-01 06:59 UTC = 23:59 PDT → 07:00 UTC
    expect(new Date(nextMidnight(Date.parse('2026-07-01T06:59:00Z'))).toISOString()).toBe('2026-07-01T07:00:00.000Z');
    // The night DST ends (2026-11-01): 2026-10-31 12:00 PDT → 2026-11-01 00:00 PDT = 07:00 UTC
    expect(new Date(nextMidnight(Date.parse('2026-10-31T19:00:00Z'))).toISOString()).toBe('2026-11-01T07:00:00.000Z');
  });
});
