/** The pure rules of output validation (src/worker/output-check.ts): what is DEGRADED, and what it does per tier. */
import { describe, expect, it } from 'vitest';
import { decideDegraded, describeDegradation, preferUndegraded, type DegradedContext } from '../../src/worker/output-check.js';

const want = { width: 1024, height: 1024 };
const ok = { mimeType: 'image/png' as const, width: 1024, height: 1024, modelVersion: 'gemini-3.1-flash-image', sizeMismatch: false };

describe('describeDegradation', () => {
  it('accepts the image asked for and names each mismatch', () => {
    expect(describeDegradation(ok, 'fast', want)).toBeUndefined();
    expect(describeDegradation({ ...ok, width: 512, height: 512, sizeMismatch: true }, 'fast', want)).toBe('asked 1024x1024, got 512x512');
    expect(describeDegradation({ ...ok, modelVersion: 'gemini-2.5-flash-image' }, 'fast', want)).toMatch(/not Nano Banana 2/);
    expect(describeDegradation(ok, 'pro', want)).toMatch(/not Nano Banana Pro/);
    expect(describeDegradation({ ...ok, mimeType: 'image/gif' as never }, 'fast', want)).toMatch(/MIME type image\/gif/);
  });
});

describe('decideDegraded', () => {
  const base: DegradedContext = {
    action: 'retry', tier: 'standard', allowDowngrade: false, size: '1K', aspectRatio: '1:1', family: 'fast', attempt: 1, lastAttempt: false,
    history: [{ attempt: 1, family: 'fast', outcome: 'DEGRADED' }],
  };
  it('follows the tier: standard moves model, premium only with allowDowngrade, draft never', () => {
    expect(decideDegraded(base)).toMatchObject({ kind: 'other-model', family: 'pro' });
    expect(decideDegraded({ ...base, tier: 'premium', family: 'pro' })).toMatchObject({ kind: 'retry-later' });
    expect(decideDegraded({ ...base, tier: 'premium', family: 'pro', allowDowngrade: true, history: [{ attempt: 1, family: 'pro', outcome: 'DEGRADED' }] })).toMatchObject({ kind: 'other-model', family: 'fast' });
    expect(decideDegraded({ ...base, tier: 'draft' })).toMatchObject({ kind: 'retry-later' });
    expect(decideDegraded({ ...base, size: '512' })).toMatchObject({ kind: 'retry-later' }); // Pro cannot render 512
    expect(decideDegraded({ ...base, action: 'accept' })).toMatchObject({ kind: 'accept' });
  });
  it('moves at most once per attempt and accepts on the last attempt', () => {
    const both = [...base.history, { attempt: 1, family: 'pro' as const, outcome: 'DEGRADED' }];
    expect(decideDegraded({ ...base, family: 'pro', history: both })).toMatchObject({ kind: 'retry-later' });
    expect(decideDegraded({ ...base, family: 'pro', history: both, lastAttempt: true })).toMatchObject({ kind: 'accept' });
  });
});

describe('preferUndegraded', () => {
  const fast = { family: 'fast' as const, modelId: 'f', reason: 'standard tier, off-peak: Nano Banana 2 first' };
  const pro = { family: 'pro' as const, modelId: 'p', reason: 'fallback' };
  it('puts the family that just answered DEGRADED last', () => {
    expect(preferUndegraded([fast, pro], [], 1)).toEqual([fast, pro]);
    const out = preferUndegraded([fast, pro], [{ attempt: 1, family: 'fast', outcome: 'DEGRADED' }], 1);
    expect(out.map((c) => c.family)).toEqual(['pro', 'fast']);
    expect(out[0]!.reason).toBe('retry on Nano Banana Pro after DEGRADED on Nano Banana 2');
  });
});
