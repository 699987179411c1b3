/**
 * `npm run bench:overhead [-- --jobs N --concurrency C --no-record]`
 *
 * What pixelmill costs on top of the two things it cannot avoid: the queue and the object store.
 * One run measures, against the same redis-server and the same s3rver:
 *
 *   1. baseline "queue"    a raw BullMQ Queue + no-op Worker: N jobs (addBulk), same job options and
 *                          data shape as pixelmill's, same concurrency
 *   2. baseline "storage"  N raw PutObject calls of the simulator's 512 px JPEG, same concurrency
 *   3. pixelmill           N draft 512 px jobs through the HTTP API → BullMQ → image worker (its own
 *                          process) → simulator (no latency) → S3
 *
 * and prints jobs/s for each, pixelmill ÷ the slower baseline, and CPU ms per job of each process,
 * the worker's read from /proc/<pid>/stat. See bench/README.md for the topology and its reasons.
 * Appends the table to bench/RESULTS.md unless --no-record.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ListObjectsCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Queue, QueueEvents, Worker } from 'bullmq';
import { Pool } from 'undici';
import { startApiServer } from '../src/api/server.js';
import { configFrom, type Config } from '../src/config/env.js';
import { startRedisServer } from '../src/dev/redis-server.js';
import { S3RVER_CREDENTIALS } from '../src/dev/s3-server.js';
import { STORED_JOB_VERSION, type StoredJobData } from '../src/jobs/record.js';
import { silentLogger } from '../src/logging/logger.js';
import { createGeminiClient } from '../src/providers/gemini/client.js';
import { createRedis } from '../src/queue/connection.js';
import { IMAGE_JOB_NAME, IMAGE_QUEUE, imageJobOptions, newJobId } from '../src/queue/image-queue.js';
import { createS3Store, s3ClientConfig } from '../src/storage/object-store.js';
import { cleanups, cpuProfNodeArgs, fmt, machineLine, markdownTable, record, runBench, spawnTsx, startService } from './harness.js';

const BUCKET = 'pixelmill-bench';
const PIPELINE_PREFIX = 'bench';
const RAW_QUEUE_PREFIX = 'bench-raw';
/** A run that makes no progress for this long has failed (a crashed worker, a wedged server). */
const STALL_MS = 60_000;

interface Options {
  jobs: number;
  concurrency: number;
  record: boolean;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      jobs: { type: 'string', default: '1000' },
      concurrency: { type: 'string', default: '16' },
      'no-record': { type: 'boolean', default: false },
    },
  });
  const int = (flag: string, raw: string, min: number, max: number): number => {
    const n = Number(raw);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${flag} must be a whole number from ${min} to ${max}, not "${raw}"`);
    return n;
  };
  return {
    jobs: int('jobs', values.jobs, 1, 1_000_000),
    // WORKER_CONCURRENCY's own bounds.
    concurrency: int('concurrency', values.concurrency, 1, 1000),
    record: !values['no-record'],
  };
}

// ---------------------------------------------------------------------------------------------
// CPU accounting

const CLOCK_TICKS_PER_SECOND = (() => {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  const n = Number(r.stdout?.trim());
  return Number.isInteger(n) && n > 0 ? n : 100;
})();

/** user + system CPU of a whole process (all its threads) in ms, or undefined without /proc. */
function processCpuMs(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name is in parentheses and may hold spaces; fields count from after it (state = field 3).
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[14 - 3]);
    const stime = Number(fields[15 - 3]);
    return ((utime + stime) * 1000) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return undefined;
  }
}

/** A direct child of this process by executable name (redis-server is spawned without a shell). */
function childPid(name: string): number | undefined {
  let entries: string[];
  try {
    entries = readdirSync('/proc').filter((e) => /^\d+$/.test(e));
  } catch {
    return undefined;
  }
  for (const e of entries) {
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (comm === name && ppid === process.pid) return Number(e);
    } catch {
      // the process ended while we looked
    }
  }
  return undefined;
}

interface CpuProbe {
  name: string;
  read(): number | undefined;
}

const selfProbe = (name: string): CpuProbe => ({
  name,
  read: () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  },
});
const pidProbe = (name: string, pid: number | undefined): CpuProbe => ({
  name,
  read: () => (pid === undefined ? undefined : processCpuMs(pid)),
});

type CpuSample = Map<string, number | undefined>;

function sampleCpu(probes: CpuProbe[]): CpuSample {
  return new Map(probes.map((p) => [p.name, p.read()]));
}

/** CPU ms each process used between two samples; undefined where it could not be read. */
function cpuSpent(before: CpuSample, after: CpuSample): Map<string, number | undefined> {
  const out = new Map<string, number | undefined>();
  for (const [name, b] of before) {
    const a = after.get(name);
    out.set(name, a === undefined || b === undefined ? undefined : a - b);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Counting completions

/** Completions seen so far and when the last one arrived; waiters are told on every change. */
class Tally {
  done = 0;
  lastAt = 0;
  failure: string | undefined;
  private readonly listeners = new Set<() => void>();

  hit(): void {
    this.done += 1;
    this.lastAt = performance.now();
    this.notify();
  }

  fail(why: string): void {
    this.failure ??= why;
    this.notify();
  }

  /** Resolve once `target` completions were seen; reject on a failure, on `fatal`, or after STALL_MS without progress. */
  reach(target: number, what: string, fatal?: Promise<never>): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let progressAt = Date.now();
      let seen = this.done;
      const finish = (err?: Error): void => {
        this.listeners.delete(check);
        clearInterval(stallTimer);
        if (err) reject(err);
        else resolve();
      };
      const check = (): void => {
        if (this.failure) finish(new Error(`${what}: a job failed: ${this.failure}`));
        else if (this.done >= target) finish();
      };
      const stallTimer = setInterval(() => {
        if (this.done !== seen) {
          seen = this.done;
          progressAt = Date.now();
        } else if (Date.now() - progressAt > STALL_MS) {
          finish(new Error(`${what}: no progress for ${STALL_MS / 1000} s (${this.done}/${target})`));
        }
      }, 1_000);
      this.listeners.add(check);
      fatal?.catch((err: unknown) => finish(err as Error));
      check();
    });
  }

  private notify(): void {
    for (const l of [...this.listeners]) l();
  }
}

/** Run `task(i)` for i in [0, count) with at most `concurrency` running; the first error stops new starts. */
async function runConcurrently(count: number, concurrency: number, task: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < count) {
      const i = next++;
      try {
        await task(i);
      } catch (err) {
        next = count;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, lane));
}

// ---------------------------------------------------------------------------------------------
// The runs

interface RunResult {
  name: string;
  jobs: number;
  seconds: number;
  perSecond: number;
  /** CPU ms per process over the measured window. */
  cpuMs: Map<string, number | undefined>;
}

interface Env {
  opts: Options;
  redisUrl: string;
  s3Url: string;
  simUrl: string;
  /** The bytes every put stores: the simulator's 512 px answer. */
  image: Buffer;
  probes: CpuProbe[];
}

/** Jobs measured after a warm-up: JIT, sockets and (for pixelmill) the worker's start-up stay out of the figures. */
function warmupCount(concurrency: number): number {
  return Math.max(8, 2 * concurrency);
}

function pipelineEnv(env: Env): Record<string, string> {
  return {
    NODE_ENV: 'production', LOG_LEVEL: 'silent', PORT: '0',
    REDIS_URL: env.redisUrl, QUEUE_PREFIX: PIPELINE_PREFIX,
    S3_ENDPOINT: env.s3Url, S3_BUCKET: BUCKET, S3_FORCE_PATH_STYLE: 'true', S3_KEY_PREFIX: 'images',
    S3_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId, S3_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
    GEMINI_BASE_URL: env.simUrl, GEMINI_API_KEY: 'bench-key', PEAK_WINDOWS: 'none',
    WORKER_CONCURRENCY: String(env.opts.concurrency),
    // Nothing is in flight long with a latency-free simulator; an interrupted run should stop quickly.
    SHUTDOWN_GRACE: '5s',
  };
}

function storedJobData(i: number): StoredJobData {
  const prompt = `bench raw job ${i}`;
  return {
    v: STORED_JOB_VERSION, tenant: null, createdAt: new Date().toISOString(),
    promptSha256: createHash('sha256').update(prompt).digest('hex'),
    request: { prompt, tier: 'draft', priority: 5, size: '512', aspectRatio: '1:1', inputImages: [], allowDowngrade: false },
  };
}

/** Baseline 1: what BullMQ alone does per job on this Redis, with pixelmill's job options and data shape. */
async function runQueueBaseline(env: Env, config: Config): Promise<RunResult> {
  const { jobs, concurrency } = env.opts;
  const producerConnection = createRedis(config, 'worker');
  const workerConnection = createRedis(config, 'worker');
  const queueName = `${IMAGE_QUEUE}-noop`;
  const queue = new Queue(queueName, { connection: producerConnection, prefix: RAW_QUEUE_PREFIX });
  const tally = new Tally();
  const worker = new Worker(queueName, async () => ({}), { connection: workerConnection, prefix: RAW_QUEUE_PREFIX, concurrency });
  worker.on('completed', () => tally.hit());
  worker.on('failed', (_job, err) => tally.fail(err.message));
  try {
    await worker.waitUntilReady();
    const add = async (from: number, count: number): Promise<void> => {
      // addBulk in slices: one huge MULTI would hold Redis for the whole run.
      for (let i = from; i < from + count; i += 500) {
        const slice = Array.from({ length: Math.min(500, from + count - i) }, (_, k) => ({
          name: IMAGE_JOB_NAME, data: storedJobData(i + k), opts: imageJobOptions(config, newJobId(), 5),
        }));
        await queue.addBulk(slice);
      }
    };
    const warmup = warmupCount(concurrency);
    await add(0, warmup);
    await tally.reach(warmup, 'queue baseline warm-up');

    const before = sampleCpu(env.probes);
    const t0 = performance.now();
    await Promise.all([add(warmup, jobs), tally.reach(warmup + jobs, 'queue baseline')]);
    const seconds = (tally.lastAt - t0) / 1000;
    const after = sampleCpu(env.probes);
    return { name: 'baseline: BullMQ no-op worker', jobs, seconds, perSecond: jobs / seconds, cpuMs: cpuSpent(before, after) };
  } finally {
    await worker.close();
    await queue.close();
    workerConnection.disconnect();
    producerConnection.disconnect();
  }
}

/** Baseline 2: raw PutObject of the same bytes to the same s3rver, with the client settings pixelmill uses. */
async function runStorageBaseline(env: Env, config: Config): Promise<RunResult> {
  const { jobs, concurrency } = env.opts;
  const client = new S3Client(s3ClientConfig(config, { maxSockets: concurrency }));
  const put = (key: string) =>
    client.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: env.image, ContentLength: env.image.length, ContentType: 'image/jpeg' }));
  try {
    await runConcurrently(warmupCount(concurrency), concurrency, (i) => put(`raw-warmup/${i}.jpg`));
    const before = sampleCpu(env.probes);
    const t0 = performance.now();
    await runConcurrently(jobs, concurrency, (i) => put(`raw/${i}.jpg`));
    const seconds = (performance.now() - t0) / 1000;
    const after = sampleCpu(env.probes);
    return { name: 'baseline: S3 PutObject', jobs, seconds, perSecond: jobs / seconds, cpuMs: cpuSpent(before, after) };
  } finally {
    client.destroy();
  }
}

/** pixelmill end to end: HTTP API (this process) → BullMQ → image worker (child process) → simulator → S3. */
async function runPixelmill(env: Env, config: Config): Promise<RunResult & { checks: string[] }> {
  const { jobs, concurrency } = env.opts;
  // The worker parses its environment like production; it gets only what it needs.
  const workerEnv = {
    PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '/root',
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true', ...pipelineEnv(env),
  };
  // Nobody talks to the worker: stdin/stdout ignored. BENCH_CPU_PROF profiles it (bench/README.md).
  const worker = spawnTsx('workers/image-worker.ts', [], workerEnv, cpuProfNodeArgs(), 'ignore');
  const probes = [...env.probes, pidProbe('worker', worker.pid)];

  const api = await startApiServer(config, { logger: silentLogger() });
  cleanups.add(() => api.close());
  // BullMQ never closes a connection it was given; the cleanup does. lastEventId 0: no event can slip
  // by between start-up and the first read.
  const eventsConnection = createRedis(config, 'worker');
  const events = new QueueEvents(IMAGE_QUEUE, { connection: eventsConnection, prefix: PIPELINE_PREFIX, lastEventId: '0' });
  cleanups.add(async () => {
    await events.close();
    eventsConnection.disconnect();
  });
  const tally = new Tally();
  events.on('completed', () => tally.hit());
  events.on('failed', ({ jobId, failedReason }) => tally.fail(`${jobId}: ${failedReason}`));
  await events.waitUntilReady();

  const pool = new Pool(api.url, { connections: concurrency });
  cleanups.add(() => pool.close());
  const submit = async (i: number): Promise<void> => {
    const res = await pool.request({
      path: '/v1/jobs', method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: `bench job ${i}: a lighthouse at dawn`, tier: 'draft', size: '512', aspectRatio: '1:1' }),
    });
    const text = await res.body.text();
    if (res.statusCode !== 202) throw new Error(`POST /v1/jobs answered ${res.statusCode}: ${text.slice(0, 500)}`);
  };

  const warmup = warmupCount(concurrency);
  // The warm-up also waits out the worker's start-up (tsx compiling it): its jobs queue until it runs.
  await Promise.all([runConcurrently(warmup, concurrency, submit), tally.reach(warmup, 'pixelmill warm-up', worker.died)]);

  const before = sampleCpu(probes);
  const t0 = performance.now();
  await Promise.all([
    runConcurrently(jobs, concurrency, (i) => submit(warmup + i)),
    tally.reach(warmup + jobs, 'pixelmill run', worker.died),
  ]);
  const seconds = (tally.lastAt - t0) / 1000;
  const after = sampleCpu(probes);

  // Not timed: prove the jobs did the real work.
  const checks: string[] = [];
  const queueConnection = createRedis(config, 'worker');
  const queue = new Queue(IMAGE_QUEUE, { connection: queueConnection, prefix: PIPELINE_PREFIX });
  try {
    const counts = await queue.getJobCounts('completed', 'failed');
    if (counts['completed'] !== warmup + jobs || counts['failed'] !== 0) {
      throw new Error(`expected ${warmup + jobs} completed and 0 failed jobs, BullMQ counts ${JSON.stringify(counts)}`);
    }
    checks.push(`${warmup + jobs} jobs completed, 0 failed`);
  } finally {
    await queue.close();
    queueConnection.disconnect();
  }
  const outputs = await listKeys(config, `${config.S3_KEY_PREFIX}/`);
  if (outputs.length !== warmup + jobs) throw new Error(`expected ${warmup + jobs} outputs in S3, found ${outputs.length}`);
  const store = createS3Store(config);
  try {
    const sample = await store.get(outputs.at(-1)!);
    if (!sample.body.equals(env.image)) throw new Error(`output ${outputs.at(-1)} differs from the image the storage baseline put`);
  } finally {
    store.destroy();
  }
  checks.push(`${outputs.length} outputs in S3, byte-identical to the storage baseline's image (one checked)`);

  return { name: 'pixelmill: API → queue → worker → S3', jobs, seconds, perSecond: jobs / seconds, cpuMs: cpuSpent(before, after), checks };
}

/**
 * Every key under a prefix. ListObjects (v1) paged by the last key: s3rver builds ListObjectsV2
 * continuation tokens with DES, which OpenSSL 3 no longer offers, so a second V2 page fails there.
 */
async function listKeys(config: Config, prefix: string): Promise<string[]> {
  const client = new S3Client(s3ClientConfig(config));
  const all: string[] = [];
  try {
    for (;;) {
      const page = await client.send(new ListObjectsCommand({ Bucket: BUCKET, Prefix: prefix, Marker: all.at(-1) }));
      const keys = (page.Contents ?? []).flatMap((o) => (o.Key ? [o.Key] : []));
      all.push(...keys);
      if (!page.IsTruncated || keys.length === 0) return all;
    }
  } finally {
    client.destroy();
  }
}

/** The simulator's 512 px JPEG, fetched with the worker's own Gemini client. */
async function referenceImage(config: Config): Promise<Buffer> {
  const client = createGeminiClient(config, { connections: 1 });
  try {
    const image = await client.generate({
      modelId: config.MODEL_FAST[0]!, prompt: 'bench reference image', size: '512', aspectRatio: '1:1', inputImages: [], timeoutMs: 30_000,
    });
    return image.bytes;
  } finally {
    await client.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Report

function sumCpu(cpu: Map<string, number | undefined>): number | undefined {
  let total = 0;
  for (const v of cpu.values()) {
    if (v === undefined) return undefined;
    total += v;
  }
  return total;
}

function report(opts: Options, imageBytes: number, runs: { queue: RunResult; storage: RunResult; pixelmill: RunResult }): string {
  const slower = Math.min(runs.queue.perSecond, runs.storage.perSecond);
  const ratio = runs.pixelmill.perSecond / slower;
  const perJob = (ms: number | undefined, jobs: number) => (ms === undefined ? undefined : ms / jobs);
  const rows = [runs.queue, runs.storage, runs.pixelmill].map((r) => {
    const isPixelmill = r === runs.pixelmill;
    return [
      r.name, String(r.jobs), fmt(r.seconds, 2), fmt(r.perSecond, 1),
      isPixelmill ? `${fmt(ratio, 2)}×` : r.perSecond === slower ? '(slower)' : '',
      isPixelmill ? fmt(perJob(r.cpuMs.get('worker'), r.jobs), 2) : '',
      fmt(perJob(sumCpu(r.cpuMs), r.jobs), 2),
    ];
  });
  const table = markdownTable(
    ['run', 'jobs', 'seconds', 'jobs/s', '÷ slower baseline', 'worker CPU ms/job', 'all processes CPU ms/job'],
    rows,
    [false, true, true, true, true, true, true],
  );
  const cpuList = cpus();
  // How busy the whole machine was: near 100 % means the run was bound by CPU, whoever used it.
  const busy = (r: RunResult) => {
    const total = sumCpu(r.cpuMs);
    return total === undefined ? 'n/a' : `${fmt((100 * total) / (r.seconds * 1000 * cpuList.length), 0)} %`;
  };
  const breakdown = (r: RunResult) =>
    `${[...r.cpuMs].map(([name, ms]) => `${name} ${fmt(perJob(ms, r.jobs), 2)}`).join(', ')} (machine ${busy(r)} busy)`;
  return [
    machineLine(),
    `workload: ${opts.jobs} jobs, concurrency ${opts.concurrency}, 512 px 1:1 JPEG of ${imageBytes} bytes, draft tier, simulator without latency, s3rver; ${warmupCount(opts.concurrency)} warm-up jobs per run not counted`,
    '',
    table,
    '',
    `CPU ms per job by process (user + system over the measured window; busy = all of them ÷ ${cpuList.length} cores):`,
    `- queue baseline: ${breakdown(runs.queue)}`,
    `- storage baseline: ${breakdown(runs.storage)}`,
    `- pixelmill: ${breakdown(runs.pixelmill)}`,
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const opts = parseOptions(argv);
  const command = `npm run bench:overhead${argv.length > 0 ? ` -- ${argv.join(' ')}` : ''}`;
  const say = (line: string) => console.log(line);
  say(`pixelmill overhead bench: ${opts.jobs} jobs, concurrency ${opts.concurrency}`);
  const redis = await startRedisServer({ log: say });
  cleanups.add(() => redis.stop());
  const dir = mkdtempSync(join(tmpdir(), 'pixelmill-bench-s3-'));
  cleanups.add(() => rmSync(dir, { recursive: true, force: true }));
  const s3 = await startService(['s3', dir, BUCKET]);
  const sim = await startService(['sim']);
  say(`services: redis-server ${redis.url}, s3rver ${s3.url} (own process), simulator ${sim.url} (own process)`);

  const probes = [
    selfProbe('bench process'),
    pidProbe('redis-server', childPid('redis-server')),
    pidProbe('s3rver', s3.pid),
    pidProbe('simulator', sim.pid),
  ];
  const partial: Env = { opts, redisUrl: redis.url, s3Url: s3.url, simUrl: sim.url, image: Buffer.alloc(0), probes };
  const config = configFrom(pipelineEnv(partial));
  const env: Env = { ...partial, image: await referenceImage(config) };

  say('1/3 queue baseline (raw BullMQ, no-op worker)...');
  const queue = await runQueueBaseline(env, config);
  say(`    ${fmt(queue.perSecond, 1)} jobs/s`);
  say('2/3 storage baseline (raw PutObject)...');
  const storage = await runStorageBaseline(env, config);
  say(`    ${fmt(storage.perSecond, 1)} puts/s`);
  say('3/3 pixelmill (API → queue → worker → simulator → S3)...');
  const pixelmill = await runPixelmill(env, config);
  say(`    ${fmt(pixelmill.perSecond, 1)} jobs/s; checked: ${pixelmill.checks.join('; ')}`);

  const text = report(opts, env.image.length, { queue, storage, pixelmill });
  console.log(`\n${text}\n`);
  if (opts.record) say(`appended to ${record(command, text)}`);
}

// Cleanups run at the end, on error and on SIGINT/SIGTERM (runBench); after a signal the signal handler exits.
runBench(main);
