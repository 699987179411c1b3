/**
 * `npm run bench:quota [-- --jobs N --concurrency C --q-fast Q1 --q-pro Q2 --minute-ms M --seed S
 *                        --scenarios offpeak,storm,draft --clients pixelmill,pixelmill-warm,seed,seed-until-success,bullmq
 *                        --repeat R --submit batch|jobs --trace --trace-step MIN --no-record]`
 *
 * How close pixelmill gets to the quotas' ceiling, and how many calls it wastes on the way, against
 * the Gemini simulator with per-minute quotas (Nano Banana 2: Q1, Pro: Q2 requests per simulated
 * minute) on a scaled clock (a simulated minute lasts M real ms; latencies scale the same way).
 * N 1K jobs per run, in three scenarios:
 *
 *   offpeak  standard tier, the quotas as given all along
 *   storm    standard tier, a 429 storm: Nano Banana 2 at 30 % of its quota (and twice as slow: the
 *            simulator's peak mode) from simulated minute 1 to minute 3 of the run, then back to normal
 *   draft    draft tier off-peak: Nano Banana 2 only (a draft never goes to Pro), so the bound is N/Q1.
 *            The baselines keep to Nano Banana 2 as well: the seed loop's fallback model is Nano Banana
 *            2 too, and the BullMQ worker retries a 429 instead of calling Pro.
 *
 * and four clients per scenario, one after the other against the same simulator (its stats and quota
 * buckets reset before each run), all at the same concurrency C:
 *
 *   pixelmill                 the N jobs POSTed to the real HTTP API (in this process) as one batch
 *                             (--submit jobs: one POST /v1/jobs each), the real image worker in its
 *                             own process, images stored in s3rver
 *   seed, as written          the seeds' generate_with_fallback(prefer="fast", max_retries=2) in
 *                             TypeScript: 3 calls at most (Nano Banana 2, then Pro, Pro), 429 or
 *                             timeout → next call at once, other errors → sleep 2 s; gives up
 *   seed, until success       the same function re-run until it returns an image
 *   BullMQ attempts+backoff   a plain BullMQ worker: Nano Banana 2, Pro on 429; anything else thrown
 *                             and retried by BullMQ (attempts 5, exponential backoff from 2 s); no
 *                             shared cooldown, no RetryInfo
 *
 * The baselines call the simulator with pixelmill's own GeminiClient and store their images in the
 * same s3rver, so the work per image is the same. Their time constants (2 s sleep, 90 s timeout,
 * backoff) are in simulated seconds, scaled like everything else.
 *
 * Prints one table (makespan against the lower bound, jobs lost, 429s per success, cost per image,
 * p50/p99 job latency) and pixelmill's targets with PASS/FAIL; appends both to bench/RESULTS.md
 * unless --no-record. A FAIL does not fail the process. See bench/README.md.
 */
import { setMaxListeners } from 'node:events';
import { createWriteStream, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Queue, Worker, type Job } from 'bullmq';
import { Pool, request } from 'undici';
import { startApiServer } from '../src/api/server.js';
import { configFrom, configSchema } from '../src/config/env.js';
import { startRedisServer } from '../src/dev/redis-server.js';
import { S3RVER_CREDENTIALS } from '../src/dev/s3-server.js';
import { isPixelmillError } from '../src/errors/catalogue.js';
import { jobProgressSchema, type JobResult } from '../src/jobs/record.js';
import { silentLogger } from '../src/logging/logger.js';
import type { ModelFamily } from '../src/models/catalogue.js';
import { costFromUsage } from '../src/models/pricing.js';
import { GeminiClient } from '../src/providers/gemini/client.js';
import type { GeneratedImage } from '../src/providers/gemini/types.js';
import { createRedis } from '../src/queue/connection.js';
import { IMAGE_QUEUE } from '../src/queue/image-queue.js';
import type { SimulatorStats } from '../src/simulator/server.js';
import { createS3Store, type ObjectStore } from '../src/storage/object-store.js';
import {
  cleanups, cpuProfNodeArgs, fmt, machineLine, markdownTable, quantile, record, runBench, sleep, spawnTsx, startService, timeout, type Child,
} from './harness.js';

const BUCKET = 'pixelmill-bench';
const FAST_ID = 'gemini-3.1-flash-image';
const PRO_ID = 'gemini-3-pro-image';
/** The simulator's peak mode gives Nano Banana 2 this share of its quota: "drops by 70 %". */
const STORM_QUOTA_FACTOR = 0.3;
/** Storm window in simulated minutes from the start of a run. */
const STORM_FROM_MIN = 1;
const STORM_TO_MIN = 3;
/** Jobs of the batch that teaches a warm run's lanes their quotas (both models answer 429 within it). */
const LEARNING_JOBS = 400;

interface Options {
  jobs: number;
  concurrency: number;
  qFast: number;
  qPro: number;
  minuteMs: number;
  seed: number;
  scenarios: Scenario[];
  /** Which clients run (all four by default); a subset is for tuning, its targets are judged on what ran. */
  clients: ClientName[];
  /** How pixelmill gets the jobs: one POST /v1/batches (default) or one POST /v1/jobs per job. */
  submit: 'batch' | 'jobs';
  /** Print pixelmill's lanes (learned rpm, in flight) and images per model every half simulated minute. */
  trace: boolean;
  /** Simulated minutes between two --trace lines. */
  traceStep: number;
  /** Runs per (scenario, client), in rounds; the table and the targets take each client's median run. */
  repeat: number;
  record: boolean;
}

const CLIENT_NAMES = ['pixelmill', 'pixelmill-warm', 'seed', 'seed-until-success', 'bullmq'] as const;
type ClientName = (typeof CLIENT_NAMES)[number];

const SCENARIOS = ['offpeak', 'storm', 'draft'] as const;
type Scenario = (typeof SCENARIOS)[number];

/** The tier of a scenario's jobs. */
function tierOf(scenario: Scenario): 'draft' | 'standard' {
  return scenario === 'draft' ? 'draft' : 'standard';
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      jobs: { type: 'string', default: '1000' },
      concurrency: { type: 'string', default: '64' },
      'q-fast': { type: 'string', default: '150' },
      'q-pro': { type: 'string', default: '50' },
      'minute-ms': { type: 'string', default: '4000' },
      seed: { type: 'string', default: '1' },
      scenarios: { type: 'string', default: SCENARIOS.join(',') },
      clients: { type: 'string', default: CLIENT_NAMES.join(',') },
      trace: { type: 'boolean', default: false },
      'trace-step': { type: 'string', default: '0.5' },
      submit: { type: 'string', default: 'batch' },
      'no-record': { type: 'boolean', default: false },
      repeat: { type: 'string', default: '1' },
    },
  });
  const int = (flag: string, raw: string, min: number, max: number): number => {
    const n = Number(raw);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${flag} must be a whole number from ${min} to ${max}, not "${raw}"`);
    return n;
  };
  const positive = (flag: string, raw: string): number => {
    const n = Number(raw);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`--${flag} must be a number above 0, not "${raw}"`);
    return n;
  };
  const scenarios = values.scenarios.split(',').map((s) => s.trim()).filter(Boolean);
  for (const s of scenarios) {
    if (!(SCENARIOS as readonly string[]).includes(s)) throw new Error(`--scenarios: unknown scenario "${s}" (${SCENARIOS.join(', ')})`);
  }
  const clients = values.clients.split(',').map((s) => s.trim()).filter(Boolean);
  for (const c of clients) {
    if (!(CLIENT_NAMES as readonly string[]).includes(c)) throw new Error(`--clients: unknown client "${c}" (${CLIENT_NAMES.join(', ')})`);
  }
  return {
    jobs: int('jobs', values.jobs, 1, 100_000),
    concurrency: int('concurrency', values.concurrency, 1, 1000),
    qFast: int('q-fast', values['q-fast'], 1, 100_000),
    qPro: int('q-pro', values['q-pro'], 1, 100_000),
    minuteMs: int('minute-ms', values['minute-ms'], 100, 60_000),
    seed: int('seed', values.seed, 0, 2 ** 31),
    scenarios: scenarios as Scenario[],
    clients: clients as ClientName[],
    trace: values.trace,
    repeat: int('repeat', values.repeat, 1, 9),
    traceStep: positive('trace-step', values['trace-step']),
    submit: values.submit === 'jobs' ? 'jobs' : values.submit === 'batch' ? 'batch' : (() => { throw new Error(`--submit must be batch or jobs, not "${values.submit}"`); })(),
    record: !values['no-record'],
  };
}

// ---------------------------------------------------------------------------------------------
// The scaled clock and the lower bound

/** Capacity of the quotas a scenario's jobs may use at simulated minute t (requests per simulated minute). */
function capacityAt(opts: Options, scenario: Scenario, minute: number): number {
  const storm = scenario === 'storm' && minute >= STORM_FROM_MIN && minute < STORM_TO_MIN;
  return opts.qFast * (storm ? STORM_QUOTA_FACTOR : 1) + (tierOf(scenario) === 'draft' ? 0 : opts.qPro);
}

/** Tokens the scenario's quota buckets hold at the start (each starts full). */
function initialBurst(opts: Options, scenario: Scenario): number {
  return opts.qFast + (tierOf(scenario) === 'draft' ? 0 : opts.qPro);
}

/**
 * The issue's lower bound in simulated minutes: the time at which the quotas, at their rate, admit N
 * requests (N/(Q1+Q2) off-peak, N/Q1 for drafts; integrated over the storm's lower rate otherwise). It ignores the
 * generation latency and the simulator's initial burst (each bucket starts full, Q tokens), which
 * work in opposite directions; `burstBoundMin` accounts for the burst.
 */
function lowerBoundMin(opts: Options, scenario: Scenario, jobs = opts.jobs): number {
  let served = 0;
  const step = 1 / 600;
  let t = 0;
  for (; served < jobs; t += step) served += capacityAt(opts, scenario, t) * step;
  return t;
}

function burstBoundMin(opts: Options, scenario: Scenario): number {
  return lowerBoundMin(opts, scenario, Math.max(0, opts.jobs - initialBurst(opts, scenario)));
}

// ---------------------------------------------------------------------------------------------
// Simulator control

interface Env {
  opts: Options;
  redisUrl: string;
  s3Url: string;
  simUrl: string;
  timeScale: number;
}

async function simPost(env: Env, path: string, body: unknown): Promise<void> {
  const res = await request(`${env.simUrl}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.body.text();
  if (res.statusCode !== 200) throw new Error(`simulator ${path} answered ${res.statusCode}: ${text}`);
}

async function simStats(env: Env): Promise<SimulatorStats> {
  const res = await request(`${env.simUrl}/_sim/stats`);
  return (await res.body.json()) as SimulatorStats;
}

/** Zero the simulator's stats and quota buckets and end any peak: every run starts from the same state. */
async function resetSimulator(env: Env): Promise<void> {
  await simPost(env, '/_sim/peak', { peak: 'off' });
  await simPost(env, '/_sim/reset', {});
}

/** Switch the storm on and off at its simulated minutes from now; returns a canceller. */
function scheduleStorm(env: Env, scenario: Scenario): () => void {
  if (scenario !== 'storm') return () => {};
  const timers = [
    setTimeout(() => void simPost(env, '/_sim/peak', { peak: 'on' }).catch((e: unknown) => console.error(`storm on: ${String(e)}`)), STORM_FROM_MIN * env.opts.minuteMs),
    setTimeout(() => void simPost(env, '/_sim/peak', { peak: 'off' }).catch((e: unknown) => console.error(`storm off: ${String(e)}`)), STORM_TO_MIN * env.opts.minuteMs),
  ];
  return () => timers.forEach(clearTimeout);
}

// ---------------------------------------------------------------------------------------------
// Runs

interface RunResult {
  scenario: Scenario;
  name: string;
  /** Whether this run's figures are judged against pixelmill's targets. */
  isPixelmill: boolean;
  makespanMs: number;
  succeeded: number;
  lost: number;
  /** Jobs neither succeeded nor failed when the run's time limit passed (counted in `lost`). */
  unfinished: number;
  rateLimited: number;
  calls: number;
  costUsd: number;
  latenciesMs: number[];
  /** Images made by Nano Banana Pro (the rest by Nano Banana 2). */
  proImages: number;
  note?: string;
}

let runCount = 0;
/** A number per run, for its queue prefix and object keys. */
function nextRunId(): number {
  return ++runCount;
}

/** A run that has not finished after this many lower bounds is stopped; what is left counts as lost. */
const RUN_LIMIT_BOUNDS = 6;

function runLimitMs(env: Env, scenario: Scenario): number {
  return Math.max(30_000, RUN_LIMIT_BOUNDS * lowerBoundMin(env.opts, scenario) * env.opts.minuteMs);
}

function prompt(run: string, i: number): string {
  return `${run} job ${i}: a lighthouse on a cliff at dawn, photorealistic`;
}

async function countSimulator(env: Env): Promise<{ rateLimited: number; calls: number }> {
  const stats = await simStats(env);
  let rateLimited = 0;
  let calls = 0;
  for (const s of Object.values(stats)) {
    rateLimited += s.rateLimited;
    calls += s.requests;
  }
  return { rateLimited, calls };
}

/**
 * pixelmill's time constants on the simulator's scaled clock: durations × timeScale, rates per minute
 * ÷ timeScale (a lane's learned rpm is per real minute, the simulator's quota per simulated minute).
 * Each is set only when the configuration in the tree has it (other helpers add knobs as the bench
 * runs), from its default.
 */
const SCALED_DURATIONS = ['UPSTREAM_TIMEOUT_MS', 'BACKOFF_BASE_MS', 'BACKOFF_CAP_MS', 'LANE_MAX_HOLD_MS', 'LANE_RATE_WINDOW', 'HEALTH_WINDOW', 'HEALTH_BUCKET', 'BREAKER_OPEN_MS'];
const SCALED_RATES = ['LANE_INITIAL_RPM', 'LANE_MIN_RPM', 'LANE_AIMD_STEP_RPM'];

function scaledKnobs(timeScale: number): Record<string, string> {
  const shape = (configSchema as unknown as { shape?: Record<string, unknown> }).shape ?? {};
  const defaults = configFrom({}) as unknown as Record<string, unknown>;
  const out: Record<string, string> = {};
  for (const key of SCALED_DURATIONS) {
    const v = defaults[key];
    if (key in shape && typeof v === 'number') out[key] = String(Math.max(1, Math.round(v * timeScale)));
  }
  for (const key of SCALED_RATES) {
    const v = defaults[key];
    if (key in shape && typeof v === 'number') out[key] = String(Math.round((v / timeScale) * 1000) / 1000);
  }
  return out;
}

function workerEnv(env: Env, prefix: string): Record<string, string> {
  return {
    NODE_ENV: 'production', LOG_LEVEL: 'silent', PORT: '0',
    REDIS_URL: env.redisUrl, QUEUE_PREFIX: prefix,
    S3_ENDPOINT: env.s3Url, S3_BUCKET: BUCKET, S3_FORCE_PATH_STYLE: 'true', S3_KEY_PREFIX: `images-${prefix}`,
    S3_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId, S3_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
    GEMINI_BASE_URL: env.simUrl, GEMINI_API_KEY: 'bench-key',
    MODEL_FAST: FAST_ID, MODEL_PRO: PRO_ID,
    // pixelmill does not know about the storm from a clock: it must learn it from the 429s.
    PEAK_WINDOWS: 'none',
    WORKER_CONCURRENCY: String(env.opts.concurrency),
    SHUTDOWN_GRACE: '2s',
    ...scaledKnobs(env.timeScale),
  };
}

/**
 * pixelmill: API (this process) → BullMQ → image worker (own process) → simulator → s3rver.
 * Cold: nothing learned yet (a fresh Redis prefix). Warm: the lanes as an earlier batch left them (a
 * learning batch of LEARNING_JOBS on the same prefix, then one quota period idle), as in a service
 * that has run before: it knows the quotas its 429s announced, the simulator's buckets are full again.
 */
async function runPixelmill(env: Env, scenario: Scenario, warm = false): Promise<RunResult> {
  const { jobs } = env.opts;
  // A fresh prefix per run (--repeat): a cold run must not find an earlier run's lanes or jobs.
  const prefix = `quota-${scenario}${warm ? '-warm' : ''}-${nextRunId()}`;
  // BENCH_WORKER_ENV="K=V,K=V": extra worker settings to try (tuning); the run's header does not show them.
  const extra = Object.fromEntries((process.env['BENCH_WORKER_ENV'] ?? '').split(',').filter((kv) => kv.includes('=')).map((kv) => kv.split('=', 2) as [string, string]));
  const vars = { ...workerEnv(env, prefix), ...(process.env['BENCH_WORKER_LOG'] ? { LOG_LEVEL: 'debug' } : {}), ...extra };
  const config = configFrom(vars);
  const worker: Child = spawnTsx('workers/image-worker.ts', [], {
    PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '/root', AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true', ...vars,
  }, cpuProfNodeArgs());
  // BENCH_WORKER_LOG=<file>: the worker's pino lines at debug level go there (for tuning); else silent.
  const logFile = process.env['BENCH_WORKER_LOG'];
  if (logFile) worker.proc.stdout?.pipe(createWriteStream(`${logFile}.${scenario}`));
  else worker.proc.stdout?.resume(); // silent, but a full pipe must never block it
  const api = await startApiServer(config, { logger: silentLogger() });
  const queueConnection = createRedis(config, 'worker');
  const queue = new Queue(IMAGE_QUEUE, { connection: queueConnection, prefix });
  const pool = new Pool(api.url, { connections: 16 });
  const release = async (): Promise<void> => {
    await pool.close();
    await api.close();
    await queue.close();
    queueConnection.disconnect();
    await worker.stop();
  };
  try {
    const submit = async (text: string): Promise<string> => {
      const res = await pool.request({
        path: '/v1/jobs', method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: text, tier: tierOf(scenario), size: '1K', aspectRatio: '1:1' }),
      });
      const body = await res.body.text();
      if (res.statusCode !== 202) throw new Error(`POST /v1/jobs answered ${res.statusCode}: ${body.slice(0, 300)}`);
      return (JSON.parse(body) as { id: string }).id;
    };
    const submitBatch = async (texts: string[]): Promise<void> => {
      const res = await pool.request({
        path: '/v1/batches', method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ defaults: { tier: tierOf(scenario), size: '1K', aspectRatio: '1:1' }, jobs: texts.map((text) => ({ prompt: text })) }),
      });
      const body = await res.body.text();
      if (res.statusCode !== 202) throw new Error(`POST /v1/batches answered ${res.statusCode}: ${body.slice(0, 300)}`);
    };
    const finished = async (): Promise<number> => {
      const c = await queue.getJobCounts('completed', 'failed');
      return (c['completed'] ?? 0) + (c['failed'] ?? 0);
    };

    // Warm-up (not counted): the worker compiles and connects; then the quota buckets are reset.
    await submit(`${prefix} warm-up`);
    const warmupDeadline = Date.now() + 60_000;
    while ((await finished()) < 1) {
      if (Date.now() > warmupDeadline) throw new Error('pixelmill warm-up job did not finish within 60 s');
      await Promise.race([sleep(100), worker.died]);
    }
    if (warm) {
      const learning = Math.min(jobs, LEARNING_JOBS);
      await submitBatch(Array.from({ length: learning }, (_, i) => prompt(`${prefix}-learning`, i)));
      const learningDeadline = Date.now() + runLimitMs(env, scenario);
      while ((await finished()) < learning + 1) {
        if (Date.now() > learningDeadline) throw new Error('pixelmill learning batch did not finish in time');
        await Promise.race([sleep(100), worker.died]);
      }
      // One quota period idle: the lanes' buckets refill like the provider's.
      await sleep(env.opts.minuteMs);
    }
    await queue.clean(0, 0, 'completed');
    await queue.clean(0, 0, 'failed');
    await resetSimulator(env);
    // --trace counts the Redis commands of this run (redisPerJob).
    if (env.opts.trace) await queueConnection.config('RESETSTAT');

    const t0 = Date.now();
    const stopStorm = scheduleStorm(env, scenario);
    const stopTrace = env.opts.trace ? traceLanes(env, pool, t0) : () => {};
    const limit = t0 + runLimitMs(env, scenario);
    try {
      // Bulk work goes in as one batch (POST /v1/batches, what `pixelmill submit --file` does); with
      // --submit jobs, as N single POST /v1/jobs (16 at a time).
      if (env.opts.submit === 'batch') {
        await submitBatch(Array.from({ length: jobs }, (_, i) => prompt(prefix, i)));
      } else {
        let next = 0;
        const submitter = async (): Promise<void> => {
          while (next < jobs) await submit(prompt(prefix, next++));
        };
        await Promise.all(Array.from({ length: 16 }, submitter));
      }
      if (env.opts.trace) console.log(`  all ${jobs} jobs submitted at t=${fmt((Date.now() - t0) / env.opts.minuteMs, 2)} sim min`);
      while ((await finished()) < jobs && Date.now() < limit) await Promise.race([sleep(100), worker.died]);
    } finally {
      stopStorm();
      stopTrace();
    }
    const sim = await countSimulator(env);
    if (env.opts.trace) console.log(redisPerJob(await queueConnection.info('commandstats'), jobs));

    const completed = (await queue.getJobs(['completed'])) as Job<unknown, JobResult>[];
    const failed = await queue.getJobs(['failed']);
    const finishedJobs = [...completed, ...failed];
    const latenciesMs = completed.map((j) => (j.finishedOn ?? 0) - j.timestamp);
    let costUsd = 0;
    for (const j of completed) costUsd += j.returnvalue?.totalCostUsd ?? 0;
    for (const j of failed) costUsd += jobProgressSchema.safeParse(j.progress).data?.costUsd ?? 0;
    const lastFinish = Math.max(t0, ...finishedJobs.map((j) => j.finishedOn ?? 0));
    if (env.opts.trace) traceTail(env, t0, finishedJobs);
    const failedCodes = new Map<string, number>();
    for (const j of failed) {
      const code = jobProgressSchema.safeParse(j.progress).data?.error?.code ?? j.failedReason ?? 'unknown';
      failedCodes.set(code, (failedCodes.get(code) ?? 0) + 1);
    }
    const unfinished = jobs - finishedJobs.length;
    return {
      scenario, name: warm ? 'pixelmill, lanes warm' : 'pixelmill', isPixelmill: true,
      makespanMs: unfinished > 0 ? Date.now() - t0 : lastFinish - t0,
      succeeded: completed.length, lost: failed.length + unfinished, unfinished,
      rateLimited: sim.rateLimited, calls: sim.calls, costUsd, latenciesMs,
      proImages: completed.filter((j) => j.returnvalue?.family === 'pro').length,
      ...(failedCodes.size > 0 ? { note: `failed: ${[...failedCodes].map(([c, n]) => `${c} ×${n}`).join(', ')}` } : {}),
    };
  } finally {
    await release();
  }
}

/**
 * --trace: every --trace-step simulated minutes (default half a minute), one line per model with what the simulator saw since the
 * last line (200s, 429s, in flight) and what pixelmill's lane believes (learned rpm per simulated
 * minute, leases in flight, closure). For tuning the lanes; the figures are not part of the report.
 */
function traceLanes(env: Env, pool: Pool | undefined, t0: number): () => void {
  let last: SimulatorStats = {};
  const tick = async (): Promise<void> => {
    const stats = await simStats(env);
    type Lane = { model: string; rpm: number | null; inFlight: number; closedUntil?: string };
    // A baseline has no lanes: only the simulator's side is shown.
    const lanes = pool ? ((await (await pool.request({ path: '/v1/lanes', method: 'GET' })).body.json()) as { lanes: Lane[] }).lanes : [];
    const at = (Date.now() - t0) / env.opts.minuteMs;
    const parts = Object.entries(stats).map(([model, st]) => {
      const before = last[model];
      const lane = lanes.find((l) => l.model === model);
      const rpm = lane?.rpm == null ? 'unpaced' : `${fmt(lane.rpm * env.timeScale, 0)}/min`;
      const laneText = lane ? ` lane ${rpm} leases ${lane.inFlight}${lane.closedUntil ? ' closed' : ''}` : '';
      return `${model}: +${st.ok - (before?.ok ?? 0)} ok +${st.rateLimited - (before?.rateLimited ?? 0)} 429 sim-inflight ${st.inFlight}${laneText}`;
    });
    last = stats;
    console.log(`  t=${fmt(at, 2)} ${parts.join(' | ')}`);
  };
  const timer = setInterval(() => void tick().catch((e: unknown) => console.error(`trace: ${String(e)}`)), env.opts.minuteMs * env.opts.traceStep);
  return () => clearInterval(timer);
}

/** --trace: Redis work per job (INFO commandstats since the run began): scripts, and how often a job was taken. */
function redisPerJob(commandstats: string, jobs: number): string {
  const calls = (name: string): number => Number(new RegExp(`cmdstat_${name}:calls=(\\d+)`).exec(commandstats)?.[1] ?? 0);
  const all = [...commandstats.matchAll(/cmdstat_\w+:calls=(\d+)/g)].reduce((sum, m) => sum + Number(m[1]), 0);
  // BullMQ's moveToActive pops the job id with RPOPLPUSH (or ZPOPMIN for prioritized jobs) once per take.
  const taken = Math.max(calls('rpoplpush'), calls('zpopmin'));
  return `  Redis per job: ${fmt(all / jobs, 1)} commands, ${fmt(calls('evalsha') / jobs, 1)} scripts; each job taken by a worker ${fmt(taken / jobs, 2)} times`;
}

/** --trace: the history of the last jobs to finish (what made the tail of the makespan). */
function traceTail(env: Env, t0: number, jobs: Job[]): void {
  const sim = (at: number): string => fmt((at - t0) / env.opts.minuteMs, 2);
  // Time a job spent in the worker around its successful call (routing, lanes, parse, upload, bookkeeping).
  const aroundOf = (list: Job[]): number[] => list.flatMap((j) => {
    const ok = jobProgressSchema.safeParse(j.progress).data?.history.filter((h) => h.outcome === 'succeeded').at(-1);
    return ok && j.processedOn && j.finishedOn ? [j.finishedOn - j.processedOn - ok.latencyMs] : [];
  });
  const around = aroundOf(jobs);
  // The start (the first half simulated minute, before the quotas run out) on its own: the unpaced phase.
  const early = aroundOf(jobs.filter((j) => (j.processedOn ?? Infinity) - t0 < env.opts.minuteMs / 2));
  // Why jobs went where they went: the routing reason up to its first ':' or '('.
  const reasons = new Map<string, number>();
  for (const j of jobs) {
    const reason = (j.returnvalue as JobResult | undefined)?.routingReason ?? 'failed';
    const head = reason.split(/[:(]/)[0]!.trim();
    reasons.set(head, (reasons.get(head) ?? 0) + 1);
  }
  console.log(`  routes: ${[...reasons].sort((a, b) => b[1] - a[1]).map(([r, n]) => `${n} ${r}`).join('; ')}`);
  const firstActive = Math.min(...jobs.map((j) => j.processedOn ?? Infinity));
  const firstCreated = Math.min(...jobs.map((j) => j.timestamp));
  console.log(`  first job stored at t=${sim(firstCreated)}, first taken by the worker at t=${sim(firstActive)} sim min`);
  const p = (xs: number[], q: number): string => String(quantile(xs, q) ?? 'n/a');
  console.log(`  worker time around the call (real ms): p50 ${p(around, 0.5)}, p90 ${p(around, 0.9)}; jobs taken in the first half minute: p50 ${p(early, 0.5)}, p90 ${p(early, 0.9)}`);
  const last = [...jobs].sort((a, b) => (b.finishedOn ?? 0) - (a.finishedOn ?? 0)).slice(0, 5);
  for (const j of last) {
    const progress = jobProgressSchema.safeParse(j.progress).data;
    console.log(`  tail: ${j.id} created ${sim(j.timestamp)} finished ${sim(j.finishedOn ?? 0)} attempts ${j.attemptsMade}`);
    for (const h of progress?.history ?? []) console.log(`    ${sim(Date.parse(h.at))} ${h.outcome}${h.count ? ` ×${h.count}` : ''} ${h.model ?? ''} ${(h.reason ?? '').slice(0, 120)}`);
  }
}

/** What the seeds' client does with one image: call, and store it like pixelmill does. */
interface BaselineClient {
  client: GeminiClient;
  store: ObjectStore;
  /** Stops the run: loops end at their next step, calls in flight are aborted. */
  stop: AbortController;
  costUsd: number;
  proImages: number;
}

function newBaselineClient(env: Env): BaselineClient {
  const client = new GeminiClient({
    baseUrl: env.simUrl, apiKey: 'bench-key', timeoutMs: Math.max(1_000, Math.round(360_000 * env.timeScale)), connections: env.opts.concurrency,
  });
  const config = configFrom(workerEnv(env, 'quota-baseline'));
  const store = createS3Store(config, { maxSockets: env.opts.concurrency });
  const stop = new AbortController();
  // Every call in flight listens on it (and stops listening when it ends): not a leak.
  setMaxListeners(0, stop.signal);
  return { client, store, stop, costUsd: 0, proImages: 0 };
}

async function closeBaselineClient(b: BaselineClient): Promise<void> {
  b.stop.abort();
  await b.client.close();
  b.store.destroy();
}

/** One generateContent call; the cost of what it answered (image or not) is added to the run. */
async function call(b: BaselineClient, env: Env, modelId: string, family: ModelFamily, text: string, timeoutSimSeconds: number): Promise<GeneratedImage> {
  try {
    const image = await b.client.generate({
      modelId, prompt: text, size: '1K', aspectRatio: '1:1', inputImages: [],
      timeoutMs: Math.max(1, Math.round(timeoutSimSeconds * 1000 * env.timeScale)), signal: b.stop.signal,
    });
    b.costUsd += costFromUsage(family, image.usage);
    if (family === 'pro') b.proImages++;
    return image;
  } catch (err) {
    const usage = isPixelmillError(err) ? (err.details['usage'] as Parameters<typeof costFromUsage>[1] | undefined) : undefined;
    if (usage) b.costUsd += costFromUsage(family, usage);
    throw err;
  }
}

/**
 * The seeds' `generate_with_fallback(prompt, prefer="fast", max_retries=2)`, call for call:
 * attempt 0 on Nano Banana 2, attempts 1 and 2 on Pro; a 429 or a timeout (90 s) moves on at once,
 * any other error sleeps 2 s first; after the third attempt it returns null. With `fastOnly` (the
 * draft scenario) the fallback model is Nano Banana 2 as well.
 */
async function seedGenerateWithFallback(b: BaselineClient, env: Env, text: string, fastOnly: boolean): Promise<GeneratedImage | null> {
  const maxRetries = 2;
  for (let attempt = 0; attempt < maxRetries + 1; attempt++) {
    if (b.stop.signal.aborted) return null;
    const [modelId, family]: [string, ModelFamily] = attempt === 0 || fastOnly ? [FAST_ID, 'fast'] : [PRO_ID, 'pro'];
    try {
      return await call(b, env, modelId, family, text, 90);
    } catch (err) {
      if (b.stop.signal.aborted) return null;
      const code = isPixelmillError(err) ? err.code : 'OTHER';
      if (code === 'RATE_LIMITED' || code === 'UPSTREAM_TIMEOUT') continue;
      await sleep(2_000 * env.timeScale);
    }
  }
  return null;
}

/** The seed loop at concurrency C, either once per job (as written) or re-run until it returns an image. */
async function runSeed(env: Env, scenario: Scenario, untilSuccess: boolean): Promise<RunResult> {
  const { jobs, concurrency } = env.opts;
  const b = newBaselineClient(env);
  const name = untilSuccess ? 'seed loop, retried until success' : 'seed loop, as written (gives up)';
  const tag = `seed-${untilSuccess ? 'retry' : 'once'}-${scenario}-${nextRunId()}`;
  const fastOnly = tierOf(scenario) === 'draft';
  try {
    await resetSimulator(env);
    const latenciesMs: number[] = [];
    let succeeded = 0;
    let lost = 0;
    const t0 = Date.now();
    const stopStorm = scheduleStorm(env, scenario);
    const stopTrace = env.opts.trace ? traceLanes(env, undefined, t0) : () => {};
    const limitTimer = setTimeout(() => b.stop.abort(), runLimitMs(env, scenario));
    let lastFinish = t0;
    try {
      let next = 0;
      const lane = async (): Promise<void> => {
        while (next < jobs && !b.stop.signal.aborted) {
          const i = next++;
          const text = prompt(tag, i);
          let image = await seedGenerateWithFallback(b, env, text, fastOnly);
          while (untilSuccess && image === null && !b.stop.signal.aborted) image = await seedGenerateWithFallback(b, env, text, fastOnly);
          if (image === null) {
            if (!b.stop.signal.aborted) lost++;
            continue;
          }
          await b.store.put(`baseline/${tag}/${i}.jpg`, image.bytes, image.mimeType);
          succeeded++;
          lastFinish = Date.now();
          latenciesMs.push(lastFinish - t0);
        }
      };
      await Promise.all(Array.from({ length: Math.min(concurrency, jobs) }, lane));
    } finally {
      stopStorm();
      stopTrace();
      clearTimeout(limitTimer);
    }
    const unfinished = jobs - succeeded - lost;
    const sim = await countSimulator(env);
    return {
      scenario, name, isPixelmill: false, makespanMs: (unfinished > 0 ? Date.now() : lastFinish) - t0,
      succeeded, lost: lost + unfinished, unfinished, rateLimited: sim.rateLimited, calls: sim.calls, costUsd: b.costUsd, latenciesMs,
      proImages: b.proImages,
    };
  } finally {
    await closeBaselineClient(b);
  }
}

/** A plain BullMQ worker: attempts 5, exponential backoff from 2 s (simulated), no shared cooldown. */
async function runBullmq(env: Env, scenario: Scenario): Promise<RunResult> {
  const { jobs, concurrency } = env.opts;
  const b = newBaselineClient(env);
  const prefix = `quota-bullmq-${scenario}-${nextRunId()}`;
  const config = configFrom(workerEnv(env, prefix));
  const producerConnection = createRedis(config, 'worker');
  const workerConnection = createRedis(config, 'worker');
  const queueName = 'plain-images';
  const queue = new Queue(queueName, { connection: producerConnection, prefix });
  const worker = new Worker(
    queueName,
    async (job: Job<{ i: number }>) => {
      const text = prompt(prefix, job.data.i);
      let image: GeneratedImage;
      try {
        image = await call(b, env, FAST_ID, 'fast', text, 360);
      } catch (err) {
        // The usual hand-written fallback: Pro when Nano Banana 2 is rate limited (not for drafts);
        // everything else is retried by BullMQ.
        if (!(isPixelmillError(err) && err.code === 'RATE_LIMITED') || tierOf(scenario) === 'draft') throw err;
        image = await call(b, env, PRO_ID, 'pro', text, 360);
      }
      await b.store.put(`baseline/${prefix}/${job.data.i}.jpg`, image.bytes, image.mimeType);
      return { ok: true };
    },
    { connection: workerConnection, prefix, concurrency, autorun: false },
  );
  worker.on('error', () => {}); // counted through the job states
  try {
    await worker.waitUntilReady();
    await resetSimulator(env);
    const t0 = Date.now();
    const stopStorm = scheduleStorm(env, scenario);
    const limit = t0 + runLimitMs(env, scenario);
    try {
      const backoff = { type: 'exponential', delay: Math.max(1, Math.round(2_000 * env.timeScale)) };
      for (let i = 0; i < jobs; i += 500) {
        await queue.addBulk(
          Array.from({ length: Math.min(500, jobs - i) }, (_, k) => ({ name: 'generate', data: { i: i + k }, opts: { attempts: 5, backoff } })),
        );
      }
      void worker.run();
      for (;;) {
        const c = await queue.getJobCounts('completed', 'failed');
        if ((c['completed'] ?? 0) + (c['failed'] ?? 0) >= jobs || Date.now() > limit) break;
        await sleep(100);
      }
    } finally {
      stopStorm();
    }
    await worker.close(true);
    const sim = await countSimulator(env);
    const completed = await queue.getJobs(['completed']);
    const failed = await queue.getJobs(['failed']);
    const finishedJobs = [...completed, ...failed];
    const unfinished = jobs - finishedJobs.length;
    const lastFinish = Math.max(t0, ...finishedJobs.map((j) => j.finishedOn ?? 0));
    if (env.opts.trace) traceTail(env, t0, finishedJobs);
    return {
      scenario, name: 'BullMQ attempts 5 + exp. backoff', isPixelmill: false,
      makespanMs: (unfinished > 0 ? Date.now() : lastFinish) - t0,
      succeeded: completed.length, lost: failed.length + unfinished, unfinished,
      rateLimited: sim.rateLimited, calls: sim.calls, costUsd: b.costUsd,
      latenciesMs: completed.map((j) => (j.finishedOn ?? 0) - j.timestamp),
      proImages: b.proImages,
    };
  } finally {
    await worker.close(true).catch(() => {});
    await queue.obliterate({ force: true }).catch(() => {});
    await queue.close();
    workerConnection.disconnect();
    producerConnection.disconnect();
    await closeBaselineClient(b);
  }
}

// ---------------------------------------------------------------------------------------------
// Report

/**
 * One run per (scenario, client): the run of median makespan (the lower middle one of an even count),
 * with every run's makespan and 429s per image beside it.
 */
function medianRuns(runs: RunResult[]): (RunResult & { all: RunResult[] })[] {
  const groups = new Map<string, RunResult[]>();
  for (const r of runs) {
    const key = `${r.scenario}\u0000${r.name}`;
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  return [...groups.values()].map((all) => {
    const sorted = [...all].sort((a, b) => a.makespanMs - b.makespanMs);
    return { ...sorted[Math.floor((sorted.length - 1) / 2)]!, all: sorted };
  });
}

function report(env: Env, allRuns: RunResult[]): string {
  const { opts } = env;
  const minutes = (ms: number) => ms / opts.minuteMs;
  const runs = medianRuns(allRuns);
  const repeated = opts.repeat > 1;
  const rows = runs.map((r) => {
    const bound = lowerBoundMin(opts, r.scenario);
    return [
      r.scenario, r.name, fmt(r.makespanMs / 1000, 1), fmt(minutes(r.makespanMs), 2), `${fmt(minutes(r.makespanMs) / bound, 2)}×`,
      String(r.succeeded), r.unfinished > 0 ? `${r.lost} (${r.unfinished} unfinished)` : String(r.lost),
      String(r.rateLimited), fmt(r.succeeded > 0 ? r.rateLimited / r.succeeded : undefined, 3),
      fmt(r.succeeded > 0 ? r.calls / r.succeeded : undefined, 2),
      r.succeeded > 0 ? `$${fmt(r.costUsd / r.succeeded, 4)}` : 'n/a',
      r.succeeded > 0 ? `${fmt((100 * r.proImages) / r.succeeded, 0)} %` : 'n/a',
      fmt(minutes(quantile(r.latenciesMs, 0.5) ?? NaN) * 60, 0), fmt(minutes(quantile(r.latenciesMs, 0.99) ?? NaN) * 60, 0),
      ...(repeated ? [r.all.map((x) => `${fmt(x.makespanMs / 1000, 1)} s ${fmt(x.succeeded > 0 ? (100 * x.rateLimited) / x.succeeded : undefined, 1)} %`).join(', ')] : []),
    ];
  });
  const table = markdownTable(
    ['scenario', 'client', 'makespan s', 'sim min', '÷ bound', 'ok', 'lost', '429s', '429/ok', 'calls/ok', '$/image', 'by Pro', 'p50 sim s', 'p99 sim s',
      ...(repeated ? ['every run: makespan, 429s per image'] : [])],
    rows,
    [false, false, true, true, true, true, true, true, true, true, true, true, true, true, ...(repeated ? [false] : [])],
  );

  const targets: string[][] = [];
  for (const pm of runs.filter((r) => r.isPixelmill)) {
    const { scenario } = pm;
    const bound = lowerBoundMin(opts, scenario);
    const ratio = minutes(pm.makespanMs) / bound;
    const per429 = pm.succeeded > 0 ? pm.rateLimited / pm.succeeded : Infinity;
    const pass = (ok: boolean) => (ok ? 'PASS' : 'FAIL');
    targets.push([scenario, pm.name, 'makespan ≤ 1.15 × lower bound', `${fmt(ratio, 2)}×`, pass(ratio <= 1.15)]);
    targets.push([scenario, pm.name, '429 answers ≤ 5 % of successes', `${fmt(100 * per429, 1)} %`, pass(per429 <= 0.05)]);
    targets.push([scenario, pm.name, 'no job lost', String(pm.lost), pass(pm.lost === 0)]);
    const lossless = runs.filter((r) => r.scenario === scenario && !r.isPixelmill && r.lost === 0);
    const fastest = lossless.reduce<RunResult | undefined>((a, r) => (a === undefined || r.makespanMs < a.makespanMs ? r : a), undefined);
    targets.push([
      scenario, pm.name, 'never slower than a baseline that loses no job',
      fastest ? `${fmt(pm.makespanMs / 1000, 1)} s vs ${fmt(fastest.makespanMs / 1000, 1)} s (${fastest.name})` : 'no baseline lost no job',
      pass(fastest === undefined || pm.makespanMs <= fastest.makespanMs),
    ]);
  }
  const targetTable = markdownTable(['scenario', 'client', 'pixelmill target', 'measured', 'result'], targets, [false, false, false, true, false]);

  const notes = runs.filter((r) => r.note).map((r) => `- ${r.scenario}, ${r.name}: ${r.note}`);
  const bounds = opts.scenarios.map((s) =>
    `${s} ${fmt(lowerBoundMin(opts, s), 2)} sim min = ${fmt((lowerBoundMin(opts, s) * opts.minuteMs) / 1000, 1)} s (with the initial burst of ${initialBurst(opts, s)} tokens: ${fmt(burstBoundMin(opts, s), 2)} sim min)`,
  );
  return [
    machineLine(),
    `workload: ${opts.jobs} 1K 1:1 jobs per run (standard tier; draft in the draft scenario), concurrency ${opts.concurrency}; quotas Nano Banana 2 ${opts.qFast}/min, Pro ${opts.qPro}/min; `
      + `1 simulated minute = ${opts.minuteMs} ms (timeScale ${fmt(env.timeScale, 4)}), seed ${opts.seed}; `
      + `storm: Nano Banana 2 at ${STORM_QUOTA_FACTOR * 100} % quota and 2× latency from sim minute ${STORM_FROM_MIN} to ${STORM_TO_MIN}`,
    ...(opts.repeat > 1 ? [`${opts.repeat} runs per scenario and client, in rounds (each round starts one client later); the table shows each client's median run (by makespan) and the targets are judged on it`] : []),
    `pixelmill's time constants on the scaled clock: ${Object.entries(scaledKnobs(env.timeScale)).map(([k, v]) => `${k}=${v}`).join(', ')}`,
    `lower bound N/(Q1+Q2) (N/Q1 for drafts), in the storm integrated over the lower rate: ${bounds.join('; ')}`,
    `429s and calls from the simulator's /_sim/stats; $/image = all calls' cost ÷ images; latency = job created → finished, in simulated seconds; a run is stopped after ${RUN_LIMIT_BOUNDS}× its bound (unfinished jobs count as lost)`,
    '',
    table,
    '',
    targetTable,
    ...(notes.length > 0 ? ['', ...notes] : []),
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const opts = parseOptions(argv);
  const command = `npm run bench:quota${argv.length > 0 ? ` -- ${argv.join(' ')}` : ''}`;
  const say = (line: string) => console.log(line);
  const timeScale = opts.minuteMs / 60_000;
  say(`pixelmill quota bench: ${opts.jobs} jobs, concurrency ${opts.concurrency}, quotas ${opts.qFast}+${opts.qPro}/min, 1 min = ${opts.minuteMs} ms`);

  const redis = await startRedisServer({ log: say });
  cleanups.add(() => redis.stop());
  const dir = mkdtempSync(join(tmpdir(), 'pixelmill-bench-s3-'));
  cleanups.add(() => rmSync(dir, { recursive: true, force: true }));
  const s3 = await startService(['s3', dir, BUCKET]);
  const sim = await startService(['sim', JSON.stringify({
    timeScale, seed: opts.seed, peak: 'off', peakQuotaFactor: STORM_QUOTA_FACTOR,
    quotas: { fast: opts.qFast, pro: opts.qPro },
    // One id per family: the simulator keeps one quota bucket per model id.
    models: [{ id: FAST_ID, family: 'fast' }, { id: PRO_ID, family: 'pro' }],
  })]);
  const env: Env = { opts, redisUrl: redis.url, s3Url: s3.url, simUrl: sim.url, timeScale };
  say(`services: redis-server ${redis.url}, s3rver ${s3.url}, simulator ${sim.url}`);

  const runs: RunResult[] = [];
  const steps: [ClientName, string, (s: Scenario) => Promise<RunResult>][] = [
    ['pixelmill', 'pixelmill', (s) => runPixelmill(env, s)],
    ['pixelmill-warm', 'pixelmill, lanes warm', (s) => runPixelmill(env, s, true)],
    ['seed', 'seed loop, as written', (s) => runSeed(env, s, false)],
    ['seed-until-success', 'seed loop, until success', (s) => runSeed(env, s, true)],
    ['bullmq', 'BullMQ attempts + backoff', (s) => runBullmq(env, s)],
  ];
  const chosen = steps.filter(([name]) => opts.clients.includes(name));
  for (const scenario of opts.scenarios) {
    // --repeat: rounds of every client, each round starting one client later, so that a drift of the
    // machine over a scenario's runs does not always fall on the same client.
    for (let round = 0; round < opts.repeat; round++) {
      for (const [, label, run] of chosen.map((_, i) => chosen[(i + round) % chosen.length]!)) {
        say(`${scenario}: ${label}${opts.repeat > 1 ? ` (run ${round + 1} of ${opts.repeat})` : ''}...`);
        const r = await Promise.race([run(scenario), sim.died, s3.died, timeout(runLimitMs(env, scenario) + 120_000, `${scenario} ${label}`)]);
        say(`    ${fmt(r.makespanMs / 1000, 1)} s, ${r.succeeded} ok, ${r.lost} lost, ${r.rateLimited} 429s`);
        runs.push(r);
        if (opts.trace) {
          const q = (p: number) => fmt((quantile(r.latenciesMs, p) ?? NaN) / opts.minuteMs, 2);
          say(`    finished by (sim min): 50 % ${q(0.5)}, 90 % ${q(0.9)}, 98 % ${q(0.98)}, 99 % ${q(0.99)}, 99.5 % ${q(0.995)}, all ${q(1)}`);
        }
      }
    }
  }

  const text = report(env, runs);
  console.log(`\n${text}\n`);
  if (opts.record) say(`appended to ${record(command, text)}`);
}

runBench(main);
