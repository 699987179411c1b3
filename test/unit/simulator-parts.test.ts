/**
 * The simulator's pure parts: CLI flags, fault markers, the token bucket and the duration texts
 * Google puts in a 429.
 */
import { describe, expect, it } from 'vitest';
import { MarkerLedger, parseMarkers, pickRandomFault } from '../../src/simulator/faults.js';
import { rngFrom } from '../../src/simulator/prng.js';
import { goDuration, protoDuration, TokenBucket } from '../../src/simulator/quota.js';
import { parseSimulatorArgs } from '../../src/simulator/server.js';

describe('parseSimulatorArgs', () => {
  it('maps every flag to an option', () => {
    const o = parseSimulatorArgs([
      '--port', '8099', '--host', '0.0.0.0', '--time-scale', '0.05', '--seed', '9', '--peak', 'on',
      '--peak-windows', '09:00-11:00,22:00-01:00', '--time-zone', 'Europe/Paris', '--quota-fast', '12', '--quota-pro', '4.5',
      '--models', 'a-1=fast,b.2=pro', '--api-key', 'k1', '--api-key', 'k2', '--png',
      '--fault-rate', '429=0.05,503=0.02', '--peak-fault-rate', 'degrade=0.1', '--hang-max-ms', '5000',
    ]);
    expect(o).toEqual({
      port: 8099, host: '0.0.0.0', timeScale: 0.05, seed: 9, peak: 'on',
      peakWindows: [
        { startMinute: 540, endMinute: 660, label: '09:00-11:00' },
        { startMinute: 1320, endMinute: 60, label: '22:00-01:00' },
      ],
      timeZone: 'Europe/Paris', quotas: { fast: 12, pro: 4.5 },
      models: [{ id: 'a-1', family: 'fast' }, { id: 'b.2', family: 'pro' }],
      apiKeys: ['k1', 'k2'], outputMimeType: 'image/png',
      faultRates: { '429': 0.05, '503': 0.02 }, peakFaultRates: { degrade: 0.1 }, hangMaxMs: 5000,
    });
    expect(parseSimulatorArgs([])).toEqual({});
  });

  it('names the flag on bad input', () => {
    expect(() => parseSimulatorArgs(['--port', 'x'])).toThrow(/--port/);
    expect(() => parseSimulatorArgs(['--time-scale', '-1'])).toThrow(/--time-scale/);
    expect(() => parseSimulatorArgs(['--peak', 'sometimes'])).toThrow(/--peak/);
    expect(() => parseSimulatorArgs(['--models', 'a=medium'])).toThrow(/--models/);
    expect(() => parseSimulatorArgs(['--models', 'a=fast,a=pro'])).toThrow(/twice/);
    expect(() => parseSimulatorArgs(['--fault-rate', '418=0.1'])).toThrow(/unknown fault "418"/);
    expect(() => parseSimulatorArgs(['--fault-rate', '429=0.7,503=0.7'])).toThrow(/more than 1/);
    expect(() => parseSimulatorArgs(['--quota-fast', '0'])).toThrow(/--quota-fast/);
    expect(() => parseSimulatorArgs(['--time-zone', 'Mars/Olympus'])).toThrow(/--time-zone/);
    expect(() => parseSimulatorArgs(['--frobnicate'])).toThrow();
  });
});

describe('fault markers', () => {
  it('parses fault, filter and count', () => {
    expect(parseMarkers('a cat [sim:503] and [sim:429@fast*2] [sim:hang@gemini-3-pro-image]').map((m) => [m.fault, m.only, m.times])).toEqual([
      ['503', undefined, undefined],
      ['429', 'fast', 2],
      ['hang', 'gemini-3-pro-image', undefined],
    ]);
    expect(parseMarkers('no markers [here]')).toEqual([]);
    expect(() => parseMarkers('[sim:nope]')).toThrow(/unknown fault "nope"/);
    expect(() => parseMarkers('[sim:503*0]')).toThrow(/bad count/);
  });

  it('uses up counted markers per prompt and skips other families', () => {
    const ledger = new MarkerLedger();
    const markers = parseMarkers('[sim:503@fast*2][sim:500*1]');
    const pick = (prompt: string, family: 'fast' | 'pro') => ledger.pick(markers, prompt, family, `${family}-id`);
    expect(pick('p', 'pro')).toBe('500');
    expect(pick('p', 'pro')).toBeUndefined();
    expect(pick('p', 'fast')).toBe('503');
    expect(pick('p', 'fast')).toBe('503');
    expect(pick('p', 'fast')).toBeUndefined();
    expect(pick('q', 'fast')).toBe('503');
    ledger.clear();
    expect(pick('p', 'fast')).toBe('503');
  });

  it('draws random faults at their rates', () => {
    const rng = rngFrom('rates');
    let hits = 0;
    for (let i = 0; i < 10_000; i++) if (pickRandomFault(rng, { '503': 0.2 }) === '503') hits++;
    expect(hits).toBeGreaterThan(1_800);
    expect(hits).toBeLessThan(2_200);
    expect(pickRandomFault(rng, {})).toBeUndefined();
  });
});

describe('token bucket', () => {
  it('allows a burst of the capacity, then one token per refill interval', () => {
    const b = new TokenBucket();
    const rate = 6 / 60_000; // 6 per minute: one every 10 s
    for (let i = 0; i < 6; i++) expect(b.take(0, 6, rate)).toEqual({ ok: true });
    const denied = b.take(2_500, 6, rate);
    expect(denied.ok).toBe(false);
    expect(denied.ok === false && denied.retryAfterMs).toBeCloseTo(7_500, 6);
    expect(b.take(9_999, 6, rate).ok).toBe(false);
    expect(b.take(10_000, 6, rate).ok).toBe(true);
  });

  it('caps saved tokens when the capacity shrinks and survives a clock stepping back', () => {
    const b = new TokenBucket();
    expect(b.take(0, 10, 10 / 60_000).ok).toBe(true);
    // Peak: capacity 3. Nine tokens were saved; only three remain usable (this take and two more).
    expect(b.take(1, 3, 3 / 60_000).ok).toBe(true);
    expect(b.take(1, 3, 3 / 60_000).ok).toBe(true);
    expect(b.take(1, 3, 3 / 60_000).ok).toBe(true);
    expect(b.take(1, 3, 3 / 60_000).ok).toBe(false);
    expect(b.take(-50_000, 3, 3 / 60_000).ok).toBe(false);
  });
});

describe('429 durations', () => {
  it('prints RetryInfo as a protobuf Duration and the message like Go', () => {
    expect(protoDuration(47_000)).toBe('47s');
    expect(protoDuration(12_345.678)).toBe('12.345678s');
    expect(protoDuration(163)).toBe('0.163000s');
    expect(protoDuration(0.0001)).toBe('0.000001s'); // never zero: rounded up to a microsecond
    expect(goDuration(47_884.3248)).toBe('47.884325s');
    expect(goDuration(163)).toBe('163ms');
    expect(goDuration(1.5)).toBe('1.5ms');
    expect(goDuration(23_693_000)).toBe('6h34m53s');
    expect(goDuration(751_846.6)).toBe('12m31.8466s');
  });
});
