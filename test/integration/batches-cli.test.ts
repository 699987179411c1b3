/**
 * `pixelmill submit --file ... --wait --out DIR` end to end: the CLI's batch runner (what main.ts
 * calls) against a whole pixelmill (startPipeline), through its HTTP client, writing to a fake stdout.
 */
import { mkdtempSync, readdirSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { imageSize } from 'image-size';
import { afterEach, describe, expect, it } from 'vitest';
import { runBatchSubmit } from '../../src/cli/batch-submit.js';
import { PixelmillClient, parseJobsFile } from '../../src/cli/client.js';
import { startPipeline, type Pipeline } from '../support/pipeline.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function pipeline(env: Record<string, string | number> = {}): Promise<Pipeline> {
  const p = await startPipeline({ env: { WORKER_CONCURRENCY: 16, ...env } });
  cleanups.push(() => p.close());
  return p;
}

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'pixelmill-cli-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A stdout that is not a terminal (or is, with isTTY), collecting what is written. */
function fakeStdout(isTTY = false): PassThrough & { isTTY: boolean; columns: number; text(): string } {
  const out = new PassThrough() as PassThrough & { isTTY: boolean; columns: number; text(): string };
  const chunks: string[] = [];
  out.on('data', (c: Buffer) => chunks.push(c.toString('utf8')));
  out.isTTY = isTTY;
  out.columns = 160;
  out.text = () => chunks.join('');
  return out;
}

describe('pixelmill submit --file --wait --out', () => {
  it('submits a CSV as one batch, prints plain progress lines, downloads every image and exits 1 when a job failed', async () => {
    const p = await pipeline();
    const dir = tempDir();
    const csv = join(dir, 'prompts.csv');
    writeFileSync(csv, [
      'prompt,size,aspectRatio,metadata.sku',
      'A red bicycle,512,1:1,b-1',
      '"A mug, on linen",1K,16:9,m-2',
      'An empty answer [sim:no-image],512,1:1,x-3',
      'A lighthouse at dawn,512,3:4,l-4',
    ].join('\n'));
    const out = join(dir, 'out');
    const stdout = fakeStdout(false);
    const client = new PixelmillClient(p.api.url);

    const code = await runBatchSubmit({
      client, jobs: parseJobsFile(readFileSync(csv, 'utf8'), csv), defaults: { tier: 'draft' }, wait: true, out, stdout, pollMs: 50, plainEveryMs: 0,
    });
    const text = stdout.text();
    expect(code).toBe(1);
    expect(text).toMatch(/^batch bat_\S+: 4 jobs queued\n/);
    expect(text).toContain('4/4 (100%) succeeded 3 failed 1 retrying 0 running 0 | ETA 0s');
    expect(text).toMatch(/batch bat_\S+ completed: 3 succeeded, 1 failed, 0 canceled of 4 in [\d.]+ s, \$\d+\.\d{4}/);
    expect(text).toContain('  3 files in');
    expect(text).toMatch(/ {2}✗ line 4 img_\S+ failed: NO_IMAGE/);
    expect(text).not.toContain('\u001b['); // no terminal escapes when stdout is not a TTY

    // One batch, not four single jobs.
    const batches = await p.redis.keys(`${p.config.QUEUE_PREFIX}:pm:batch:bat_*:jobs`);
    expect(batches).toHaveLength(1);

    // Files are named by their CSV line and hold the asked-for sizes.
    const files = readdirSync(out).sort();
    expect(files.map((f) => f.slice(0, 6))).toEqual(['000002', '000003', '000005']);
    const sizes = files.map((f) => imageSize(readFileSync(join(out, f))));
    expect(sizes.map((s) => `${s.width}x${s.height}`)).toEqual(['512x512', '1376x768', '448x600']);
  });

  it('streams a large JSONL file as NDJSON, reports skipped lines by file line, and maps outputs to their lines', async () => {
    const p = await pipeline({ WORKER_CONCURRENCY: 32 });
    const dir = tempDir();
    const file = join(dir, 'prompts.jsonl');
    const lines: string[] = ['# a big run'];
    for (let i = 0; i < 1_003; i++) {
      if (i === 10) lines.push(JSON.stringify({ prompt: 'bad size', size: '5K' }));
      else if (i === 500) lines.push(JSON.stringify({ prompt: 'bad tier', tier: 'gold' }));
      else lines.push(JSON.stringify({ prompt: `picture ${i}` }));
    }
    writeFileSync(file, lines.join('\n'));
    const out = join(dir, 'out');
    const stdout = fakeStdout(false);
    const client = new PixelmillClient(p.api.url);
    const jobs = parseJobsFile(readFileSync(file, 'utf8'), file);

    const code = await runBatchSubmit({ client, jobs, defaults: { tier: 'draft', size: '512' }, skipInvalid: true, wait: true, out, stdout, pollMs: 100 });
    const text = stdout.text();
    expect(code).toBe(0);
    expect(text).toMatch(/^batch bat_\S+: 1001 jobs queued, 2 invalid left out\n/);
    // File lines: the comment is line 1, so job i is on line i + 2.
    expect(text).toContain('  skipped line 12: size:');
    expect(text).toContain('  skipped line 502: tier:');
    expect(text).toContain('  1001 files in');
    const files = readdirSync(out);
    expect(files).toHaveLength(1_001);
    // A file's line prefix names the line whose prompt made it.
    for (const name of [files[0]!, files[500]!, files[1000]!]) {
      // `{line}-{job id}.{ext}`; job ids may hold '-' themselves.
      const base = name.replace(/\.\w+$/, '');
      const line = base.slice(0, base.indexOf('-'));
      const id = base.slice(base.indexOf('-') + 1);
      const job = await p.get(id);
      expect(job.request.prompt).toBe(JSON.parse(lines[Number(line) - 1]!).prompt);
    }
  }, 90_000);

  it('draws a progress bar on a terminal', async () => {
    const p = await pipeline();
    const stdout = fakeStdout(true);
    const code = await runBatchSubmit({
      client: new PixelmillClient(p.api.url), jobs: [{ line: 1, job: { prompt: 'a bar', tier: 'draft', size: '512' } }], wait: true, stdout, pollMs: 50,
    });
    expect(code).toBe(0);
    const text = stdout.text();
    expect(text).toContain('100% | 1/1 | ✓ 1 ✗ 0 ↻ 0 ▶ 0 | ETA 0s | $');
  });

  it('without --wait prints the batch id and returns at once; a refused file names its lines', async () => {
    const p = await pipeline();
    const client = new PixelmillClient(p.api.url);
    const stdout = fakeStdout();
    expect(await runBatchSubmit({ client, jobs: [{ line: 3, job: { prompt: 'later' } }], wait: false, stdout })).toBe(0);
    expect(stdout.text()).toMatch(/batch bat_\S+: 1 jobs queued\nfollow it: GET http:\/\/127\.0\.0\.1:\d+\/v1\/batches\/bat_\S+\n/);

    const refused = fakeStdout();
    const jobs = [{ line: 7, job: { prompt: 'ok' } }, { line: 9, job: { prompt: '' } }];
    expect(await runBatchSubmit({ client, jobs, wait: false, stdout: refused })).toBe(1);
    expect(refused.text()).toContain('the batch was refused: 400 INVALID_REQUEST: 1 of 2 jobs are invalid (line 9)');
  });
});
