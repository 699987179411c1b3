import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { HealthStore } from '../../src/health/health-store.js';
import { bucketBounds, latencyBucket, quantile } from '../../src/health/latency-histogram.js';
import { testConfig } from '../support/stack.js';

describe('latency histogram', () => {
  it('puts each latency in the bucket whose bounds hold it', () => {
    for (const ms of [1, 100, 101, 999, 1_000, 4_321, 60_000, 359_999]) {
      const [lo, hi] = bucketBounds(latencyBucket(ms));
      expect(ms).toBeGreaterThan(lo - 1e-9);
      expect(ms).toBeLessThanOrEqual(hi + 1e-9);
    }
  });

  it('estimates percentiles within one bucket (at most 25% off)', () => {
    // A lognormal-ish spread of latencies: 3..40 s.
    const samples = Array.from({ length: 400 }, (_, i) => 3_000 * Math.exp((i / 400) * Math.log(40 / 3)));
    const counts = new Map<number, number>();
    for (const s of samples) counts.set(latencyBucket(s), (counts.get(latencyBucket(s)) ?? 0) + 1);
    const sorted = [...samples].sort((a, b) => a - b);
    for (const q of [0.5, 0.95]) {
      const truth = sorted[Math.ceil(q * sorted.length) - 1]!;
      expect(Math.abs(quantile(counts, q)! - truth) / truth).toBeLessThan(0.25);
    }
    expect(quantile(new Map(), 0.5)).toBeNull();
  });
});

describe('model health (real Redis, injected clock)', () => {
  const config = testConfig({ HEALTH_WINDOW: '5m', HEALTH_BUCKET: '10s', HEALTH_THROTTLE_429_RATE: 0.3, HEALTH_MIN_CALLS: 10, BREAKER_FAILURES: 3, BREAKER_OPEN_MS: '30s' });
  const redis = new Redis(config.REDIS_URL);
  const other = new Redis(config.REDIS_URL);
  afterAll(async () => {
    await redis.quit();
    await other.quit();
  });
  const T0 = Date.parse('2026-11-21T08:00:00Z');

  it('sums the window: calls, rates, p50/p95; old buckets fall out as it slides', async () => {
    // (A high breaker threshold: this test is about the window, the 10 failures in a row would open it.)
    const a = new HealthStore(redis, config, { breakerFailures: 100 });
    const b = new HealthStore(other, config, { breakerFailures: 100 });
    // Minute 0: 20 successes at 4 s (2 degraded), 10 successes at 20 s, 10 x 429, 5 timeouts, 5 x 503.
    for (let i = 0; i < 20; i++) await a.recordOutcome('fast', { outcome: 'succeeded', latencyMs: 4_000, degraded: i < 2 }, T0 + i * 1_000);
    for (let i = 0; i < 10; i++) await b.recordOutcome('fast', { outcome: 'succeeded', latencyMs: 20_000 }, T0 + 20_000 + i * 1_000);
    for (let i = 0; i < 10; i++) await a.recordOutcome('fast', { outcome: 'RATE_LIMITED', latencyMs: 300 }, T0 + 30_000 + i * 1_000);
    for (let i = 0; i < 5; i++) await b.recordOutcome('fast', { outcome: 'UPSTREAM_TIMEOUT', latencyMs: 360_000 }, T0 + 40_000 + i);
    for (let i = 0; i < 5; i++) await b.recordOutcome('fast', { outcome: 'UPSTREAM_UNAVAILABLE', latencyMs: 800 }, T0 + 41_000 + i);
    await a.recordOutcome('fast', { outcome: 'succeeded', latencyMs: 4_000 }, T0 + 50_000);

    const snap = (await b.snapshot(['fast', 'pro'], T0 + 60_000))['fast']!;
    expect(snap.calls).toBe(51);
    expect(snap.rate429).toBeCloseTo(10 / 51, 6);
    expect(snap.rateFailure).toBeCloseTo(10 / 51, 6);
    expect(snap.rateDegraded).toBeCloseTo(2 / 51, 6);
    // Only the 31 calls that returned an image have a latency: 21 at 4 s, 10 at 20 s.
    expect(Math.abs(snap.p50! - 4_000) / 4_000).toBeLessThan(0.25);
    expect(Math.abs(snap.p95! - 20_000) / 20_000).toBeLessThan(0.25);
    expect(snap.throttled).toBe(false); // 19.6% < 30%
    expect(snap.breaker).toBe('closed');
    expect(snap.windowMs).toBe(300_000);

    // A model without calls is healthy and has no latency.
    const pro = (await a.snapshot(['pro'], T0 + 60_000))['pro']!;
    expect(pro).toMatchObject({ calls: 0, p50: null, p95: null, rate429: 0, throttled: false, breaker: 'closed' });

    // 4 minutes later, a burst of 429s: 10 more calls at 100% 429 → 20/61 = 32.8% ≥ 30% → throttled.
    for (let i = 0; i < 10; i++) await a.recordOutcome('fast', { outcome: 'RATE_LIMITED', latencyMs: 200 }, T0 + 240_000 + i * 100);
    const burst = (await a.snapshot(['fast'], T0 + 241_000))['fast']!;
    expect(burst.calls).toBe(61);
    expect(burst.throttled).toBe(true);

    // Minute 0 leaves the window 5 minutes later: only the burst remains (10 calls, all 429).
    const slid = (await a.snapshot(['fast'], T0 + 300_000 + 60_000))['fast']!;
    expect(slid).toMatchObject({ calls: 10, rate429: 1, rateFailure: 0, p50: null, throttled: true });
    // And once the burst leaves too, the model has recovered.
    const recovered = (await a.snapshot(['fast'], T0 + 241_000 + 300_000))['fast']!;
    expect(recovered).toMatchObject({ calls: 0, throttled: false });
  });

  it('needs HEALTH_MIN_CALLS calls before it calls a model throttled', async () => {
    const a = new HealthStore(redis, config);
    for (let i = 0; i < 9; i++) await a.recordOutcome('quiet', { outcome: 'RATE_LIMITED', latencyMs: 100 }, T0 + i);
    expect((await a.snapshot(['quiet'], T0 + 100))['quiet']).toMatchObject({ calls: 9, rate429: 1, throttled: false });
    await a.recordOutcome('quiet', { outcome: 'RATE_LIMITED', latencyMs: 100 }, T0 + 10);
    expect((await a.snapshot(['quiet'], T0 + 100))['quiet']!.throttled).toBe(true);
  });

  it('breaker: closed → open after N consecutive failures → half-open after the open time, one probe across the fleet → closed on success', async () => {
    const a = new HealthStore(redis, config);
    const b = new HealthStore(other, config);
    const id = 'breaker-a';
    await a.recordOutcome(id, { outcome: 'UPSTREAM_TIMEOUT', latencyMs: 1 }, T0);
    await b.recordOutcome(id, { outcome: 'BAD_RESPONSE', latencyMs: 1 }, T0 + 1);
    // A 429 or a content block is neither: the run of failures goes on.
    await b.recordOutcome(id, { outcome: 'RATE_LIMITED', latencyMs: 1 }, T0 + 2);
    expect((await a.snapshot([id], T0 + 3))[id]).toMatchObject({ breaker: 'closed', consecutiveFailures: 2 });
    expect(await a.recordOutcome(id, { outcome: 'UPSTREAM_UNAVAILABLE', latencyMs: 1 }, T0 + 10)).toEqual({ breaker: 'open', consecutiveFailures: 3 });

    const open = (await b.snapshot([id], T0 + 20))[id]!;
    expect(open).toMatchObject({ breaker: 'open', breakerRetryAt: T0 + 10 + 30_000, lastFailure: 'UPSTREAM_UNAVAILABLE' });
    // No probe before the open time is over.
    expect(await a.claimProbe(id, T0 + 29_000)).toEqual({ kind: 'busy', retryAt: T0 + 10 + 30_000 });
    // A late success of a call started before it opened changes nothing.
    await b.recordOutcome(id, { outcome: 'succeeded', latencyMs: 1 }, T0 + 1_000);
    expect((await b.snapshot([id], T0 + 1_000))[id]!.breaker).toBe('open');

    const later = T0 + 31_000;
    expect((await a.snapshot([id], later))[id]!.breaker).toBe('half-open');
    // Two workers race for the probe: exactly one wins.
    const claims = await Promise.all([a.claimProbe(id, later), b.claimProbe(id, later)]);
    expect(claims.filter((c) => c.kind === 'probe')).toHaveLength(1);
    expect(claims.filter((c) => c.kind === 'busy')).toHaveLength(1);
    // While the probe is in flight, everyone else sees it open.
    expect((await b.snapshot([id], later + 1))[id]!.breaker).toBe('open');

    const probe = claims.find((c) => c.kind === 'probe') as { kind: 'probe'; token: string };
    expect(await a.recordOutcome(id, { outcome: 'succeeded', latencyMs: 5_000, probeToken: probe.token }, later + 5_000)).toEqual({ breaker: 'closed', consecutiveFailures: 0 });
    expect((await b.snapshot([id], later + 5_001))[id]).toMatchObject({ breaker: 'closed', consecutiveFailures: 0, breakerRetryAt: null });
    expect(await b.claimProbe(id, later + 5_002)).toEqual({ kind: 'closed' });
  });

  it('breaker: a failed probe opens it again for the open time; a neutral probe frees the probe', async () => {
    const a = new HealthStore(redis, config);
    const b = new HealthStore(other, config);
    const id = 'breaker-b';
    for (let i = 0; i < 3; i++) await a.recordOutcome(id, { outcome: 'UPSTREAM_TIMEOUT', latencyMs: 1 }, T0 + i);
    const t1 = T0 + 40_000;
    const first = await b.claimProbe(id, t1);
    expect(first.kind).toBe('probe');
    // The probe answered 429: not a verdict on the model; the next caller may probe.
    await b.recordOutcome(id, { outcome: 'RATE_LIMITED', latencyMs: 1, probeToken: (first as { token: string }).token }, t1 + 100);
    expect((await a.snapshot([id], t1 + 200))[id]!.breaker).toBe('half-open');

    const second = await a.claimProbe(id, t1 + 300);
    expect(second.kind).toBe('probe');
    expect(await a.recordOutcome(id, { outcome: 'UPSTREAM_UNAVAILABLE', latencyMs: 1, probeToken: (second as { token: string }).token }, t1 + 1_000))
      .toMatchObject({ breaker: 'open' });
    expect((await b.snapshot([id], t1 + 1_001))[id]).toMatchObject({ breaker: 'open', breakerRetryAt: t1 + 1_000 + 30_000 });
    expect((await b.snapshot([id], t1 + 31_000))[id]!.breaker).toBe('half-open');
  });

  it('a probe whose worker vanished frees itself after the probe time-out', async () => {
    const a = new HealthStore(redis, config, { probeTtlMs: 5_000 });
    const id = 'breaker-c';
    for (let i = 0; i < 3; i++) await a.recordOutcome(id, { outcome: 'BAD_RESPONSE', latencyMs: 1 }, T0 + i);
    const t1 = T0 + 30_010;
    expect((await a.claimProbe(id, t1)).kind).toBe('probe');
    expect(await a.claimProbe(id, t1 + 4_999)).toEqual({ kind: 'busy', retryAt: t1 + 5_000 });
    const again = await a.claimProbe(id, t1 + 5_000);
    expect(again.kind).toBe('probe');
    // A probe claimed but not used (the job was requeued) is given back: the next caller probes at once.
    expect(await a.releaseProbe(id, 'not-the-token')).toBe(false);
    expect(await a.releaseProbe(id, (again as { token: string }).token)).toBe(true);
    expect((await a.claimProbe(id, t1 + 5_001)).kind).toBe('probe');
  });
});
