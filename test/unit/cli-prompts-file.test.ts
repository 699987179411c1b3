import { describe, expect, it } from 'vitest';
import { formatEta, plainLine } from '../../src/cli/batch-submit.js';
import { parseCsvJobs, parseJobsFile, parsePromptsFile, type BatchViewLite } from '../../src/cli/client.js';

describe('prompts files', () => {
  it('reads CSV with a header row of job fields, typed, with metadata columns and file line numbers', () => {
    const csv = [
      'prompt,tier,size,aspectRatio,priority,allowDowngrade,metadata.sku,inputImages,webhook',
      '"A mug, on linen",premium,2K,3:4,2,yes,SKU-1,,',
      '',
      'A lighthouse,draft,,,,,,https://example.com/a.png|uploads/t/b.webp,https://example.com/hook',
      '"Two',
      'lines",standard,1K,16:9,x,maybe,,,',
    ].join('\n');
    expect(parseCsvJobs(csv)).toEqual([
      {
        line: 2,
        job: { prompt: 'A mug, on linen', tier: 'premium', size: '2K', aspectRatio: '3:4', priority: 2, allowDowngrade: true, metadata: { sku: 'SKU-1' } },
      },
      {
        line: 4,
        job: {
          prompt: 'A lighthouse', tier: 'draft',
          inputImages: [{ url: 'https://example.com/a.png' }, { s3Key: 'uploads/t/b.webp' }], webhook: { url: 'https://example.com/hook' },
        },
      },
      // Values that are not what the field takes are passed on for the server to name.
      { line: 6, job: { prompt: 'Two\nlines', tier: 'standard', size: '1K', aspectRatio: '16:9', priority: 'x', allowDowngrade: 'maybe' } },
    ]);
  });

  it('strips a BOM and refuses rows with the wrong number of columns', () => {
    expect(parseCsvJobs('\uFEFFprompt\nhello\n')).toEqual([{ line: 2, job: { prompt: 'hello' } }]);
    expect(() => parseCsvJobs('prompt,tier\na,draft,extra\n')).toThrow();
  });

  it('reads JSONL (one job per line) and plain text (one prompt per line), skipping blanks and comments', () => {
    const text = ['# my prompts', '{"prompt":"a cat","tier":"draft"}', '', 'a dog in the rain', '  {"prompt":"x","size":"512"}  '].join('\n');
    expect(parsePromptsFile(text)).toEqual([
      { line: 2, job: { prompt: 'a cat', tier: 'draft' } },
      { line: 4, job: { prompt: 'a dog in the rain' } },
      { line: 5, job: { prompt: 'x', size: '512' } },
    ]);
    expect(() => parsePromptsFile('{"prompt": oops}')).toThrow('line 1: not valid JSON');
  });

  it('chooses the format by extension', () => {
    expect(parseJobsFile('prompt,tier\na,draft\n', 'x.CSV')).toEqual([{ line: 2, job: { prompt: 'a', tier: 'draft' } }]);
    expect(parseJobsFile('prompt,tier\n', 'x.txt')).toEqual([{ line: 1, job: { prompt: 'prompt,tier' } }]);
    expect(parseJobsFile('{"prompt":"a"}\n', 'x.jsonl')).toEqual([{ line: 1, job: { prompt: 'a' } }]);
  });
});

describe('progress lines', () => {
  it('say counts, percentage, ETA and spend', () => {
    const b = {
      total: 200, costUsd: 1.23456, etaSeconds: 95,
      counts: { queued: 50, running: 8, retrying: 2, succeeded: 130, failed: 10, canceled: 0 },
    } as BatchViewLite;
    expect(plainLine(b)).toBe('140/200 (70%) succeeded 130 failed 10 retrying 2 running 8 | ETA 1m35s | $1.2346');
    expect(formatEta(null)).toBe('--');
    expect(formatEta(0)).toBe('0s');
    expect(formatEta(7_500)).toBe('2h05m');
  });
});
