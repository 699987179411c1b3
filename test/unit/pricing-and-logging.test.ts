import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/logging/logger.js';
import { costFromUsage, listPricePerImage } from '../../src/models/pricing.js';

describe('cost from usage', () => {
  it('prices IMAGE tokens at the image rate and the rest at the text rate', () => {
    // The live 3.1 Flash fixture: prompt 10, candidates 1392 of which IMAGE 1120, no thoughts.
    const flash = costFromUsage('fast', { promptTokens: 10, candidatesTokens: 1392, imageTokens: 1120, thoughtsTokens: 0 });
    // 10 × 0.5 + 272 × 3 + 1120 × 60, per 1M
    expect(flash).toBeCloseTo((10 * 0.5 + 272 * 3 + 1120 * 60) / 1e6, 6);
    // The live Pro stream: prompt 8, candidates 1219 (IMAGE 1120), thoughts 244.
    const pro = costFromUsage('pro', { promptTokens: 8, candidatesTokens: 1219, imageTokens: 1120, thoughtsTokens: 244 });
    expect(pro).toBeCloseTo((8 * 2 + (99 + 244) * 12 + 1120 * 120) / 1e6, 6);
    expect(pro).toBeGreaterThan(0.134);
  });

  it('matches the published per-image prices', () => {
    expect(listPricePerImage('fast', '512')).toBeCloseTo(0.045, 3);
    expect(listPricePerImage('fast', '1K')).toBeCloseTo(0.067, 3);
    expect(listPricePerImage('fast', '2K')).toBeCloseTo(0.101, 3);
    expect(listPricePerImage('fast', '4K')).toBeCloseTo(0.151, 3);
    expect(listPricePerImage('pro', '1K')).toBeCloseTo(0.134, 3);
    expect(listPricePerImage('pro', '4K')).toBeCloseTo(0.24, 3);
    expect(listPricePerImage('pro', '512')).toBeUndefined();
  });

  it('a refused call with prompt tokens only costs almost nothing', () => {
    expect(costFromUsage('fast', { promptTokens: 9, candidatesTokens: 0, imageTokens: 0, thoughtsTokens: 0 })).toBeLessThan(0.00001);
  });
});

describe('logs', () => {
  it('are JSON with bindings, and never show keys, secrets, bearer tokens, presigned URLs or image data', () => {
    const lines: string[] = [];
    const sink = new Writable({ write(chunk, _enc, done) { lines.push(String(chunk)); done(); } });
    const log = createLogger({ level: 'info', destination: sink }).child({ jobId: 'img_1', attempt: 2, model: 'm' });
    log.info({
      key: 'images/img_1.jpg',
      headers: { 'x-goog-api-key': 'AIza-secret', authorization: 'Bearer tenant-secret' },
      GEMINI_API_KEY: 'AIza-secret', WEBHOOK_SECRET: 'whsec_abc', config: { METRICS_TOKEN: 'metrics-secret-token' }, url: 'https://s3/x?X-Amz-Signature=deadbeef',
      output: { url: 'https://s3/y?X-Amz-Signature=cafe' }, data: 'iVBORw0KGgo',
    }, 'stored');
    const text = lines.join('');
    const line = JSON.parse(text) as Record<string, unknown>;
    expect(line).toMatchObject({ jobId: 'img_1', attempt: 2, model: 'm', msg: 'stored', key: 'images/img_1.jpg' });
    for (const secret of ['AIza-secret', 'tenant-secret', 'whsec_abc', 'metrics-secret-token', 'X-Amz-Signature', 'iVBORw0KGgo']) expect(text).not.toContain(secret);
  });
});
