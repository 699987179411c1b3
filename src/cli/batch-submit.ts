/**
 * `pixelmill submit --file prompts.csv|prompts.jsonl|prompts.txt [--wait] [--out DIR]`: the whole file
 * becomes ONE batch (POST /v1/batches; NDJSON past JSON_MAX_JOBS jobs). With --wait, a live progress
 * bar (cli-progress) shows succeeded / failed / retrying / running, the ETA and the spend, polling
 * GET /v1/batches/:id every `pollMs`; when stdout is not a terminal, plain progress lines instead.
 * Then the outputs are downloaded into DIR as `{file line}-{job id}.{ext}` (pages of
 * /v1/batches/:id/jobs?status=succeeded), and a summary is printed. Exit code 1 when any job failed or
 * was cancelled.
 */
import type { Writable } from 'node:stream';
import cliProgress from 'cli-progress';
import type { JobRequestInput } from '../jobs/request.js';
import {
  ApiError, type BatchJobLite, type BatchOptionsInput, type BatchViewLite, type FileJob, type PixelmillClient,
} from './client.js';

/** Up to this many jobs the batch goes as one JSON body; more as NDJSON. */
export const JSON_MAX_JOBS = 1_000;
/** Failures listed in the summary. */
const FAILURES_SHOWN = 20;
/** Parallel downloads. */
const DOWNLOADS_PARALLEL = 8;

export interface BatchSubmitOptions {
  client: PixelmillClient;
  jobs: FileJob[];
  /** Fields given on the command line (--tier, --size, ...): the batch's defaults. */
  defaults?: Partial<JobRequestInput>;
  skipInvalid?: boolean;
  wait: boolean;
  out?: string;
  /** Where to print (process.stdout); a bar is drawn only when it is a TTY. */
  stdout: Writable & { isTTY?: boolean };
  pollMs?: number;
  /** Plain progress lines at most this often (ms) when stdout is not a TTY. */
  plainEveryMs?: number;
}

export async function runBatchSubmit(opts: BatchSubmitOptions): Promise<number> {
  const { client, jobs, stdout } = opts;
  const say = (line: string) => stdout.write(`${line}\n`);
  if (jobs.length === 0) {
    say('pixelmill submit: the file holds no jobs');
    return 2;
  }
  const options: BatchOptionsInput = {
    ...(opts.defaults && Object.keys(opts.defaults).length > 0 ? { defaults: opts.defaults } : {}),
    ...(opts.skipInvalid ? { skipInvalid: true } : {}),
  };
  const ndjson = jobs.length > JSON_MAX_JOBS;
  let batch: BatchViewLite;
  try {
    const requests = jobs.map((j) => j.job);
    batch = ndjson ? await client.createBatchNdjson(requests, options) : await client.createBatch(requests, options);
  } catch (err) {
    if (err instanceof ApiError) {
      say(`pixelmill submit: the batch was refused: ${toFileLines(err.message, jobs, ndjson)}`);
      return 1;
    }
    throw err;
  }
  say(`batch ${batch.id}: ${batch.total} jobs queued${batch.skipped > 0 ? `, ${batch.skipped} invalid left out` : ''}`);
  for (const r of batch.rejected?.jobs ?? []) {
    const line = fileLineOf(r, jobs, ndjson);
    say(`  skipped line ${line}: ${r.issues.map((i) => `${stripRef(i.path)}: ${i.message}`).join('; ')}`);
  }
  if (!opts.wait) {
    say(`follow it: GET ${client.baseUrl}/v1/batches/${batch.id}`);
    return 0;
  }

  const final = await follow(batch, opts);
  const seconds = final.startedAt && final.finishedAt ? (Date.parse(final.finishedAt) - Date.parse(final.startedAt)) / 1000 : undefined;
  say(
    `batch ${final.id} ${final.status}: ${final.counts.succeeded} succeeded, ${final.counts.failed} failed, ${final.counts.canceled} canceled` +
      ` of ${final.total}${seconds !== undefined ? ` in ${seconds.toFixed(1)} s` : ''}, $${final.costUsd.toFixed(4)}`,
  );

  // Jobs' file lines: the batch keeps the order of the accepted jobs.
  const accepted = acceptedLines(jobs, batch, ndjson);
  if (opts.out) {
    const saved = await downloadOutputs(client, final.id, opts.out, accepted);
    say(`  ${saved} files in ${opts.out}`);
  }
  const failures: BatchJobLite[] = [];
  for (const status of ['failed', 'canceled']) {
    for await (const job of client.allBatchJobs(final.id, status)) failures.push(job);
  }
  for (const job of failures.slice(0, FAILURES_SHOWN)) {
    say(`  ✗ line ${accepted[job.index] ?? '?'} ${job.id} ${job.status}: ${job.error ? `${job.error.code} ${job.error.message}` : ''}`.trimEnd());
  }
  if (failures.length > FAILURES_SHOWN) say(`  … and ${failures.length - FAILURES_SHOWN} more`);
  return final.counts.failed + final.counts.canceled > 0 || final.status === 'failed_to_store' ? 1 : 0;
}

/** Poll the batch to its end, drawing a bar on a terminal or printing lines otherwise. */
async function follow(batch: BatchViewLite, opts: BatchSubmitOptions): Promise<BatchViewLite> {
  const { client, stdout } = opts;
  if (stdout.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        stream: stdout,
        format: '{bar} {percentage}% | {value}/{total} | ✓ {succeeded} ✗ {failed} ↻ {retrying} ▶ {running} | ETA {etaText} | ${spend}',
        hideCursor: true,
        clearOnComplete: false,
        etaBuffer: 1,
      },
      cliProgress.Presets.shades_classic,
    );
    bar.start(batch.total, 0, payload(batch));
    try {
      return await client.waitBatch(batch.id, (b) => bar.update(terminal(b), payload(b)), opts.pollMs);
    } finally {
      bar.stop();
    }
  }
  const every = opts.plainEveryMs ?? 2_000;
  let lastAt = 0;
  let lastDone = -1;
  const final = await client.waitBatch(batch.id, (b) => {
    const done = terminal(b);
    const now = Date.now();
    if (done !== lastDone && (now - lastAt >= every || done === b.total)) {
      lastAt = now;
      lastDone = done;
      stdout.write(`${plainLine(b)}\n`);
    }
  }, opts.pollMs);
  if (terminal(final) !== lastDone) stdout.write(`${plainLine(final)}\n`);
  return final;
}

function terminal(b: BatchViewLite): number {
  return b.counts.succeeded + b.counts.failed + b.counts.canceled;
}

function payload(b: BatchViewLite) {
  return {
    succeeded: b.counts.succeeded, failed: b.counts.failed, retrying: b.counts.retrying, running: b.counts.running,
    etaText: formatEta(b.etaSeconds), spend: b.costUsd.toFixed(4),
  };
}

/** One progress line for logs and pipes. */
export function plainLine(b: BatchViewLite): string {
  const done = terminal(b);
  const pct = b.total > 0 ? Math.floor((done / b.total) * 100) : 100;
  return `${done}/${b.total} (${pct}%) succeeded ${b.counts.succeeded} failed ${b.counts.failed} retrying ${b.counts.retrying}` +
    ` running ${b.counts.running} | ETA ${formatEta(b.etaSeconds)} | $${b.costUsd.toFixed(4)}`;
}

export function formatEta(seconds: number | null): string {
  if (seconds === null) return '--';
  if (seconds < 60) return `${Math.round(seconds)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${String(Math.round(seconds % 60)).padStart(2, '0')}s`;
  return `${Math.floor(seconds / 3600)}h${String(Math.floor((seconds % 3600) / 60)).padStart(2, '0')}m`;
}

/** Download every succeeded job's image; a job whose output is not readable yet is asked for again. */
async function downloadOutputs(client: PixelmillClient, batchId: string, dir: string, lines: number[]): Promise<number> {
  const queue: BatchJobLite[] = [];
  for await (const job of client.allBatchJobs(batchId, 'succeeded')) queue.push(job);
  let saved = 0;
  let next = 0;
  const lane = async () => {
    while (next < queue.length) {
      const entry = queue[next++]!;
      const output = entry.output ?? (await outputOf(client, entry.id));
      const name = `${String(lines[entry.index] ?? entry.index).padStart(6, '0')}-${entry.id}`;
      await client.download({ id: entry.id, output }, dir, name);
      saved += 1;
    }
  };
  await Promise.all(Array.from({ length: Math.min(DOWNLOADS_PARALLEL, queue.length) }, lane));
  return saved;
}

/** The job ended a moment ago (its hook ran before its result was recorded): read it until it shows the output. */
async function outputOf(client: PixelmillClient, jobId: string): Promise<NonNullable<BatchJobLite['output']>> {
  for (let i = 0; i < 50; i++) {
    const job = await client.get(jobId);
    if (job.output) return job.output;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`job ${jobId} is counted as succeeded but shows no output`);
}

/**
 * The file line of each job in batch order. With skipInvalid the server leaves invalid jobs out, so
 * the batch's index i is the i-th job that was not rejected.
 */
function acceptedLines(jobs: FileJob[], batch: BatchViewLite, ndjson: boolean): number[] {
  const rejected = new Set((batch.rejected?.jobs ?? []).map((r) => jobPosition(r, ndjson)));
  if ((batch.rejected?.omitted ?? 0) > 0) {
    // Not every rejected job was listed: the mapping is unknown past the first omitted one.
    return jobs.map((j) => j.line);
  }
  return jobs.filter((_, i) => !rejected.has(i)).map((j) => j.line);
}

/** The position in the file's job list of a job the server named by index (JSON) or line (NDJSON). */
function jobPosition(ref: { index?: number; line?: number }, ndjson: boolean): number {
  // NDJSON: line 1 is the options line, so job i is on line i + 2.
  return ndjson ? (ref.line ?? 0) - 2 : (ref.index ?? -1);
}

function fileLineOf(ref: { index?: number; line?: number }, jobs: FileJob[], ndjson: boolean): number | string {
  return jobs[jobPosition(ref, ndjson)]?.line ?? '?';
}

function stripRef(path: string): string {
  return path.replace(/^jobs\.\d+\.?/, '').replace(/^line \d+:? ?/, '') || '(job)';
}

/** Rewrite the server's `jobs.N` / `line N` references in a message as the file's line numbers. */
function toFileLines(message: string, jobs: FileJob[], ndjson: boolean): string {
  const pattern = ndjson ? /\bline (\d+)\b/g : /\bjobs\.(\d+)\b/g;
  return message.replace(pattern, (_, n: string) => {
    const pos = ndjson ? Number(n) - 2 : Number(n);
    const line = jobs[pos]?.line;
    return line === undefined ? (ndjson ? `batch line ${n}` : `job ${n}`) : `line ${line}`;
  });
}
