import { describe, expect, it } from 'vitest';
import { jobRequestSchema, zodIssues } from '../../src/jobs/request.js';
import { INVALID_REQUEST_CASES, VALID_REQUEST_CASES } from '../support/request-cases.js';

describe('jobRequestSchema', () => {
  it.each(INVALID_REQUEST_CASES.filter((c) => !c.producerOnly))('rejects $name, naming $paths', ({ body, paths }) => {
    const parsed = jobRequestSchema.safeParse(body);
    expect(parsed.success).toBe(false);
    const named = zodIssues(parsed.error!).map((i) => i.path);
    for (const path of paths) expect(named).toContain(path);
  });

  it.each(VALID_REQUEST_CASES)('accepts $name', ({ body }) => {
    const parsed = jobRequestSchema.safeParse(body);
    expect(parsed.error?.issues ?? []).toEqual([]);
  });

  it('applies the documented defaults', () => {
    expect(jobRequestSchema.parse({ prompt: 'p' })).toEqual({
      prompt: 'p', tier: 'standard', priority: 5, size: '1K', aspectRatio: '1:1', inputImages: [], allowDowngrade: false,
    });
  });

  it('names each unknown field on its own', () => {
    const parsed = jobRequestSchema.safeParse({ prompt: 'p', colour: 'red', inputImages: [{ s3Key: 'a.png', extra: 1 }] });
    const paths = zodIssues(parsed.error!).map((i) => i.path);
    expect(paths).toContain('colour');
    expect(paths.some((p) => p.startsWith('inputImages.0'))).toBe(true);
  });
});
