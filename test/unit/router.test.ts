import { describe, expect, it } from 'vitest';
import { parsePeakWindows, activePeakWindow } from '../../src/routing/peak-windows.js';
import { route, type RoutableJob, type RouterContext } from '../../src/routing/router.js';

const models = { fast: ['flash-ga', 'flash-preview'], pro: ['pro-ga', 'pro-preview'] } as const;
const at = (iso: string) => Date.parse(iso);
const OFF_PEAK = at('2026-11-21T08:00:00Z');
const PEAK = at('2026-11-21T11:30:00Z');

function ctx(over: Partial<RouterContext> = {}): RouterContext {
  return {
    now: OFF_PEAK, state: { cooldownUntil: {}, retired: new Set() }, models,
    peakWindows: parsePeakWindows('10:00-14:00'), timeZone: 'UTC', ...over,
  };
}
function job(over: Partial<RoutableJob> = {}): RoutableJob {
  return { tier: 'standard', size: '1K', aspectRatio: '1:1', allowDowngrade: false, history: [], attempt: 1, ...over };
}
function order(d: ReturnType<typeof route>): string[] {
  if (d.kind !== 'dispatch') throw new Error(`expected dispatch, got ${d.kind}: ${'reason' in d ? d.reason : ''}`);
  return d.candidates.map((c) => c.modelId);
}

describe('peak windows', () => {
  it('handles windows that wrap midnight and time zones', () => {
    const w = parsePeakWindows('22:00-02:00');
    expect(activePeakWindow(new Date('2026-01-01T23:30:00Z'), w, 'UTC')).toBeDefined();
    expect(activePeakWindow(new Date('2026-01-01T01:59:00Z'), w, 'UTC')).toBeDefined();
    expect(activePeakWindow(new Date('2026-01-01T02:00:00Z'), w, 'UTC')).toBeUndefined();
    expect(activePeakWindow(new Date('2026-01-01T21:59:00Z'), w, 'UTC')).toBeUndefined();
    // 10:00-14:00 in Tokyo (UTC+9) is 01:00-05:00 UTC.
    const tokyo = parsePeakWindows('10:00-14:00');
    expect(activePeakWindow(new Date('2026-01-01T02:00:00Z'), tokyo, 'Asia/Tokyo')).toBeDefined();
    expect(activePeakWindow(new Date('2026-01-01T11:00:00Z'), tokyo, 'Asia/Tokyo')).toBeUndefined();
    // DST: 10:00 New York is 15:00 UTC in winter and 14:00 UTC in summer.
    const ny = parsePeakWindows('10:00-11:00');
    expect(activePeakWindow(new Date('2026-01-15T15:30:00Z'), ny, 'America/New_York')).toBeDefined();
    expect(activePeakWindow(new Date('2026-07-15T14:30:00Z'), ny, 'America/New_York')).toBeDefined();
    expect(activePeakWindow(new Date('2026-07-15T15:30:00Z'), ny, 'America/New_York')).toBeUndefined();
    expect(() => parsePeakWindows('10:00-10:00')).toThrow(/empty/);
    expect(parsePeakWindows('none')).toEqual([]);
  });
});

describe('router', () => {
  it('standard: Nano Banana 2 first off-peak, Pro first at peak, with the reason', () => {
    const off = route(job(), ctx());
    expect(order(off)).toEqual(['flash-ga', 'pro-ga']);
    expect(off.kind === 'dispatch' && off.candidates[0]!.reason).toMatch(/standard tier, off-peak: Nano Banana 2 first/);
    const peak = route(job(), ctx({ now: PEAK }));
    expect(order(peak)).toEqual(['pro-ga', 'flash-ga']);
    expect(peak.kind === 'dispatch' && peak.candidates[0]!.reason).toMatch(/peak window 10:00-14:00 UTC/);
  });

  it('peak is evaluated in PEAK_TIMEZONE, and a window may wrap midnight', () => {
    const c = ctx({ peakWindows: parsePeakWindows('23:00-01:00'), timeZone: 'Europe/Paris' });
    // 23:30 Paris in winter = 22:30 UTC
    expect(order(route(job(), { ...c, now: at('2026-01-10T22:30:00Z') }))[0]).toBe('pro-ga');
    expect(order(route(job(), { ...c, now: at('2026-01-10T23:59:00Z') }))[0]).toBe('pro-ga');
    expect(order(route(job(), { ...c, now: at('2026-01-11T00:30:00Z') }))[0]).toBe('flash-ga');
  });

  it('draft never uses Pro; premium uses Pro only unless allowDowngrade', () => {
    expect(order(route(job({ tier: 'draft' }), ctx({ now: PEAK })))).toEqual(['flash-ga']);
    expect(order(route(job({ tier: 'premium' }), ctx()))).toEqual(['pro-ga']);
    expect(order(route(job({ tier: 'premium', allowDowngrade: true }), ctx()))).toEqual(['pro-ga', 'flash-ga']);
  });

  it('never sends Pro a size or ratio it cannot render', () => {
    const d = route(job({ size: '512' }), ctx({ now: PEAK }));
    expect(order(d)).toEqual(['flash-ga']);
    expect(d.kind === 'dispatch' && d.candidates[0]!.reason).toMatch(/capability/);
    expect(order(route(job({ aspectRatio: '1:8' }), ctx()))).toEqual(['flash-ga']);
    expect(order(route(job({ tier: 'premium', allowDowngrade: true, size: '512' }), ctx()))).toEqual(['flash-ga']);
    expect(route(job({ tier: 'premium', size: '512' }), ctx()).kind).toBe('none');
  });

  it('skips a cooling model and falls back at once; waits for the shortest cooldown when all cool', () => {
    const cooling = ctx({ state: { cooldownUntil: { 'flash-ga': OFF_PEAK + 12_300 }, retired: new Set() } });
    const d = route(job(), cooling);
    expect(order(d)).toEqual(['pro-ga']);
    expect(d.kind === 'dispatch' && d.candidates[0]!.reason).toMatch(/flash-ga cooling down for 12.3 s after 429/);

    const draft = route(job({ tier: 'draft' }), cooling);
    expect(draft).toMatchObject({ kind: 'wait', untilMs: OFF_PEAK + 12_300 });

    const both = ctx({ state: { cooldownUntil: { 'flash-ga': OFF_PEAK + 9_000, 'pro-ga': OFF_PEAK + 4_000 }, retired: new Set() } });
    expect(route(job(), both)).toMatchObject({ kind: 'wait', untilMs: OFF_PEAK + 4_000 });
    // An expired cooldown is no cooldown.
    expect(order(route(job(), ctx({ state: { cooldownUntil: { 'flash-ga': OFF_PEAK - 1 }, retired: new Set() } })))[0]).toBe('flash-ga');
  });

  it('uses the next id of a family when the first is retired, and says so', () => {
    const d = route(job(), ctx({ state: { cooldownUntil: {}, retired: new Set(['flash-ga']) } }));
    expect(order(d)).toEqual(['flash-preview', 'pro-ga']);
    expect(d.kind === 'dispatch' && d.candidates[0]!.reason).toMatch(/flash-ga retired \(404\), using flash-preview/);
    expect(route(job({ tier: 'draft' }), ctx({ state: { cooldownUntil: {}, retired: new Set(['flash-ga', 'flash-preview']) } }))).toMatchObject({ kind: 'none' });
  });

  it('after a content block on Nano Banana 2, a standard job goes to Pro only', () => {
    const d = route(job({ history: [{ family: 'fast', outcome: 'CONTENT_BLOCKED', attempt: 1 }] }), ctx());
    expect(order(d)).toEqual(['pro-ga']);
    expect(d.kind === 'dispatch' && d.candidates[0]!.reason).toMatch(/retry on Nano Banana Pro after CONTENT_BLOCKED on Nano Banana 2/);
    expect(route(job({ tier: 'draft', history: [{ family: 'fast', outcome: 'CONTENT_BLOCKED', attempt: 1 }] }), ctx())).toMatchObject({ kind: 'none' });
  });

  it('a new attempt after a timeout prefers the other model when the tier has one', () => {
    const h = [{ family: 'fast' as const, outcome: 'UPSTREAM_TIMEOUT', attempt: 1 }];
    const d = route(job({ history: h, attempt: 2 }), ctx());
    expect(order(d)).toEqual(['pro-ga', 'flash-ga']);
    expect(d.kind === 'dispatch' && d.candidates[0]!.reason).toMatch(/fallback to Nano Banana Pro after UPSTREAM_TIMEOUT on Nano Banana 2/);
    expect(order(route(job({ tier: 'draft', history: h, attempt: 2 }), ctx()))).toEqual(['flash-ga']);
  });

  it('is pure: the same input gives the same output', () => {
    const c = ctx();
    expect(route(job(), c)).toEqual(route(job(), c));
  });
});

describe('router with model health', () => {
  const healthy = { throttled: false, rate429: 0, windowMs: 300_000, breaker: 'closed' as const };
  const throttled = { ...healthy, throttled: true, rate429: 0.42 };

  it('standard: moves to Pro when Nano Banana 2 is throttled, even off-peak, and back when it recovers', () => {
    const d = route(job(), ctx({ health: { 'flash-ga': throttled, 'pro-ga': healthy } }));
    expect(order(d)).toEqual(['pro-ga', 'flash-ga']);
    expect(d.kind === 'dispatch' && d.candidates[0]!.reason).toMatch(/Nano Banana 2 throttled: 429 rate 42% over the last 5 min/);
    expect(order(route(job(), ctx({ health: { 'flash-ga': healthy } })))).toEqual(['flash-ga', 'pro-ga']);
    // Both throttled: the tier's own order stands.
    expect(order(route(job(), ctx({ health: { 'flash-ga': throttled, 'pro-ga': throttled } })))).toEqual(['flash-ga', 'pro-ga']);
    // Pro cannot render 512: the job stays on Nano Banana 2.
    expect(order(route(job({ size: '512' }), ctx({ health: { 'flash-ga': throttled } })))).toEqual(['flash-ga']);
    // The health of a retired id does not matter; the id in use does.
    expect(order(route(job(), ctx({ state: { cooldownUntil: {}, retired: new Set(['flash-ga']) }, health: { 'flash-ga': throttled } }))))
      .toEqual(['flash-preview', 'pro-ga']);
  });

  it('draft never upgrades and premium never downgrades because of throttling', () => {
    const health = { 'flash-ga': throttled, 'pro-ga': throttled };
    expect(order(route(job({ tier: 'draft' }), ctx({ health })))).toEqual(['flash-ga']);
    expect(order(route(job({ tier: 'premium' }), ctx({ health })))).toEqual(['pro-ga']);
    expect(order(route(job({ tier: 'premium', allowDowngrade: true }), ctx({ health: { 'pro-ga': throttled } })))).toEqual(['pro-ga', 'flash-ga']);
  });

  it('skips a model whose breaker is open, like a cooling one', () => {
    const open = { ...healthy, breaker: 'open' as const, breakerRetryAt: OFF_PEAK + 20_000 };
    const d = route(job(), ctx({ health: { 'flash-ga': open } }));
    expect(order(d)).toEqual(['pro-ga']);
    expect(d.kind === 'dispatch' && d.candidates[0]!.reason).toMatch(/fallback to Nano Banana Pro: flash-ga breaker open/);
    // Nothing else left: wait until the breaker admits a probe, rather than fail.
    expect(route(job({ tier: 'draft' }), ctx({ health: { 'flash-ga': open } }))).toMatchObject({ kind: 'wait', untilMs: OFF_PEAK + 20_000, reason: expect.stringMatching(/breaker open/) });
    // Open breaker on one, cooldown on the other: the sooner of the two.
    const mixed = route(job(), ctx({ health: { 'flash-ga': open }, state: { cooldownUntil: { 'pro-ga': OFF_PEAK + 5_000 }, retired: new Set() } }));
    expect(mixed).toMatchObject({ kind: 'wait', untilMs: OFF_PEAK + 5_000 });
    expect(mixed.kind === 'wait' && mixed.reason).toMatch(/flash-ga breaker open.*pro-ga cooling down|pro-ga cooling down.*flash-ga breaker open/);
  });

  it('half-open: the model is a candidate again and the call is the probe', () => {
    const d = route(job({ tier: 'draft' }), ctx({ health: { 'flash-ga': { ...healthy, breaker: 'half-open' } } }));
    expect(order(d)).toEqual(['flash-ga']);
    expect(d.kind === 'dispatch' && d.candidates[0]!.reason).toMatch(/breaker half-open: this call is the probe/);
  });

  it('is pure with health too', () => {
    const c = ctx({ health: { 'flash-ga': throttled } });
    const before = JSON.stringify(c.health);
    expect(route(job(), c)).toEqual(route(job(), c));
    expect(JSON.stringify(c.health)).toBe(before);
  });
});
