/**
 * The job request rules as a table: each invalid body and the field the answer must name. Shared by
 * the schema unit test and the HTTP API test, so both entry points reject the same things the same way.
 */

export interface InvalidRequestCase {
  name: string;
  body: unknown;
  /** Every one of these paths must be named by an issue. */
  paths: string[];
  /** Checked by the producer after the schema (needs the clock), not by jobRequestSchema alone. */
  producerOnly?: boolean;
}

const s3Keys = (n: number) => Array.from({ length: n }, (_, i) => ({ s3Key: `in/${i}.png` }));

export const INVALID_REQUEST_CASES: InvalidRequestCase[] = [
  { name: 'prompt missing', body: {}, paths: ['prompt'] },
  { name: 'prompt empty', body: { prompt: '' }, paths: ['prompt'] },
  { name: 'prompt too long', body: { prompt: 'x'.repeat(10_001) }, paths: ['prompt'] },
  { name: 'prompt not a string', body: { prompt: 42 }, paths: ['prompt'] },
  { name: 'unknown tier', body: { prompt: 'p', tier: 'ultra' }, paths: ['tier'] },
  { name: 'priority 0', body: { prompt: 'p', priority: 0 }, paths: ['priority'] },
  { name: 'priority 11', body: { prompt: 'p', priority: 11 }, paths: ['priority'] },
  { name: 'priority 1.5', body: { prompt: 'p', priority: 1.5 }, paths: ['priority'] },
  { name: 'priority as a string', body: { prompt: 'p', priority: '5' }, paths: ['priority'] },
  { name: 'unknown size', body: { prompt: 'p', size: '8K' }, paths: ['size'] },
  { name: 'unknown aspect ratio', body: { prompt: 'p', aspectRatio: '2:1' }, paths: ['aspectRatio'] },
  { name: 'more than 14 input images', body: { prompt: 'p', inputImages: s3Keys(15) }, paths: ['inputImages'] },
  { name: 'input image with unsupported mimeType', body: { prompt: 'p', inputImages: [{ data: 'R0lGODlhAQABAAAAACw=', mimeType: 'image/gif' }] }, paths: ['inputImages.0'] },
  { name: 'input image with bad base64', body: { prompt: 'p', inputImages: [{ data: 'not base64!!', mimeType: 'image/png' }] }, paths: ['inputImages.0.data'] },
  { name: 'input image as a data: URL', body: { prompt: 'p', inputImages: [{ data: 'data:image/png;base64,iVBORw0KGgo=', mimeType: 'image/png' }] }, paths: ['inputImages.0.data'] },
  { name: 's3Key with traversal', body: { prompt: 'p', inputImages: [{ s3Key: 'in/../../secret.png' }] }, paths: ['inputImages.0.s3Key'] },
  { name: 's3Key with a leading slash', body: { prompt: 'p', inputImages: [{ s3Key: '/etc/passwd' }] }, paths: ['inputImages.0.s3Key'] },
  { name: 'second input image invalid', body: { prompt: 'p', inputImages: [{ s3Key: 'ok.png' }, { s3Key: '..' }] }, paths: ['inputImages.1.s3Key'] },
  { name: 'idempotencyKey over 200 characters', body: { prompt: 'p', idempotencyKey: 'k'.repeat(201) }, paths: ['idempotencyKey'] },
  { name: 'metadata over 4 KB', body: { prompt: 'p', metadata: { a: 'x'.repeat(2500), b: 'y'.repeat(2500) } }, paths: ['metadata'] },
  { name: 'metadata value not a string', body: { prompt: 'p', metadata: { n: 1 } }, paths: ['metadata.n'] },
  { name: 'deadline not ISO-8601', body: { prompt: 'p', deadline: 'tomorrow noon' }, paths: ['deadline'] },
  { name: 'deadline in the past', body: { prompt: 'p', deadline: '2020-01-01T00:00:00Z' }, paths: ['deadline'], producerOnly: true },
  { name: 'premium with size 512', body: { prompt: 'p', tier: 'premium', size: '512' }, paths: ['size'] },
  { name: 'premium with ratio 1:8', body: { prompt: 'p', tier: 'premium', aspectRatio: '1:8' }, paths: ['aspectRatio'] },
  { name: 'unknown field', body: { prompt: 'p', colour: 'red' }, paths: ['colour'] },
  { name: 'several invalid fields at once', body: { prompt: '', tier: 'x', priority: 0, size: '3K' }, paths: ['prompt', 'tier', 'priority', 'size'] },
  { name: 'body is an array', body: [{ prompt: 'p' }], paths: ['(body)'] },
  { name: 'body is a string', body: 'a red fox', paths: ['(body)'] },
];

export const VALID_REQUEST_CASES: { name: string; body: Record<string, unknown> }[] = [
  { name: 'prompt only (defaults)', body: { prompt: 'a red fox' } },
  { name: 'premium with allowDowngrade and 512', body: { prompt: 'p', tier: 'premium', allowDowngrade: true, size: '512' } },
  { name: 'premium with allowDowngrade and 1:8', body: { prompt: 'p', tier: 'premium', allowDowngrade: true, aspectRatio: '1:8' } },
  { name: 'draft at 512 and 8:1', body: { prompt: 'p', tier: 'draft', size: '512', aspectRatio: '8:1' } },
  { name: 'premium 4K 21:9', body: { prompt: 'p', tier: 'premium', size: '4K', aspectRatio: '21:9' } },
  { name: 'priority bounds 1 and 10', body: { prompt: 'p', priority: 10 } },
  { name: 'prompt of exactly 10000 characters', body: { prompt: 'x'.repeat(10_000) } },
  { name: 'idempotencyKey of 200 characters', body: { prompt: 'p', idempotencyKey: 'k'.repeat(200) } },
  { name: 'metadata and a future deadline with offset', body: { prompt: 'p', metadata: { order: 'A-1' }, deadline: '2999-01-01T00:00:00+02:00' } },
  { name: '14 input images by key', body: { prompt: 'p', inputImages: s3Keys(14) } },
];
