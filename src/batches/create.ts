/**
 * Creating a batch (POST /v1/batches): read the jobs (a JSON body, or NDJSON streamed line by line),
 * validate every one like a single job, then store them all or fail saying what happened.
 *
 * Input forms:
 * - JSON `{"jobs": [...], "defaults"?, "webhook"?, "metadata"?, "skipInvalid"?, "maxCostUsd"?}`, at
 *   most MAX_JSON_JOBS jobs. Issues name `jobs.{index}.{field}`.
 * - NDJSON (`Content-Type: application/x-ndjson`), one job request per line, at most
 *   MAX_NDJSON_LINES job lines. Batch options come from an optional FIRST line `{"batch": {defaults?,
 *   webhook?, metadata?, skipInvalid?, maxCostUsd?}}`; `?skipInvalid=true` in the query does the
 *   same as `"skipInvalid": true`. Blank lines are ignored; issues name `line {n}: {field}` with n
 *   the 1-based line number in the body (the options line counts). The body is read through
 *   node:readline, so it is never held as one string; API_BODY_LIMIT_BYTES applies to it too.
 *
 * Every job is `{...defaults, ...job}` (the job's fields win) validated with the job request schema,
 * its deadline and inline images checked like POST /v1/jobs, and its {s3Key} inputs looked up (one
 * HEAD per distinct key). `idempotencyKey` is refused inside a batch (each job gets a random id).
 * One invalid job rejects the whole batch with 400 and its issues (the first ISSUES_SHOWN, then a
 * count of the rest), unless skipInvalid, which stores the valid ones and reports the others.
 * Inline images are copied to the bucket as for single jobs (so the body limit bounds them).
 *
 * Storing is all-or-nothing as far as Redis lets it be: the batch record is written first with
 * status `storing`; jobs are added with Queue.addBulk in chunks (64, then 4× larger up to STORE_CHUNK;
 * one MULTI each), each chunk's ids recorded in the batch's job set before it is added. If a chunk
 * fails, the batch becomes `failed_to_store`, every job already added is removed (one a worker
 * already took is cancelled), and the answer is 503 saying how many had been stored and that they were removed
 * (QUEUE_UNAVAILABLE), or, when some could not be removed, BATCH_PARTIALLY_STORED naming how many
 * remain (DELETE /v1/batches/:id cancels them). The removal runs in two passes: every queued job
 * first, then the ones workers hold (cancelled through src/queue/cancel.ts), so freeing those workers
 * cannot hand them another job of the batch. Only when every job is in does the batch become `open`.
 * A batch left `storing` by an API process that died half-way can be cancelled once it is older
 * than STORING_STALE_MS (src/batches/cancel.ts).
 */
import { createInterface } from 'node:readline';
import { Transform, pipeline, type Readable } from 'node:stream';
import { z } from 'zod';
import type { Config } from '../config/env.js';
import { PixelmillError, isPixelmillError } from '../errors/catalogue.js';
import {
  jobRequestShape, metadataSchema, webhookSchema, zodIssues, type FieldIssue, type JobRequest,
} from '../jobs/request.js';
import { IMAGE_JOB_NAME, imageJobOptions, newJobId } from '../queue/image-queue.js';
import {
  buildStoredJobData, inspectInputImages, redisOperation, referencedInputIssues, storeInputImages, validateJobRequest,
  type HeadObject, type ImageJobProducerDeps, type PreparedInput,
} from '../queue/producer.js';
import type { ObjectStore } from '../storage/object-store.js';
import { cancelJob } from '../queue/cancel.js';
import { assertWebhooksEnabled } from '../webhooks/outbox.js';
import { queueBatchCompleted, type BatchAccountingDeps, type Completion } from './accounting.js';
import { forEachLimit } from './concurrency.js';
import { batchKeys, newBatchId, type BatchInfo } from './record.js';
import { OPEN_SCRIPT, runScript } from './scripts.js';

export const MAX_JSON_JOBS = 10_000;
export const MAX_NDJSON_LINES = 100_000;
/** Issues listed in a 400 (the rest are counted). */
export const ISSUES_SHOWN = 100;
/** Jobs per Queue.addBulk call (one MULTI/EXEC), at most. */
export const STORE_CHUNK = 1_000;
/**
 * The first chunk is small and each next one 4× larger (up to STORE_CHUNK): workers wait on a MULTI
 * until it has run whole, so 1,000 jobs in one would keep them idle ~150 ms; 64 are taken at once.
 */
export const STORE_FIRST_CHUNK = 64;
/** Parallel S3 requests while checking or storing inputs. */
const S3_PARALLEL = 16;

/** Batch-level options (JSON body fields, or the NDJSON options line). */
export const batchOptionsSchema = z
  .object({
    defaults: z.record(z.string(), z.unknown()).optional(),
    webhook: webhookSchema.optional(),
    metadata: metadataSchema.optional(),
    skipInvalid: z.boolean().optional(),
    maxCostUsd: z.number().positive().max(1_000_000_000).optional(),
    allowBudgetDowngrade: z.boolean().optional(),
  })
  .strict();
export type BatchOptions = z.infer<typeof batchOptionsSchema>;

const jsonBatchSchema = batchOptionsSchema.extend({ jobs: z.array(z.unknown()) }).strict();

/** Where a job came from: its index in the JSON `jobs` array or its NDJSON line. */
export type JobRef = { index: number } | { line: number };

export interface RejectedJob {
  ref: JobRef;
  issues: FieldIssue[];
}

interface AcceptedJob {
  ref: JobRef;
  request: JobRequest;
  inputs: PreparedInput[];
}

/** A validated batch, ready to store. */
export interface BatchPlan {
  options: BatchOptions;
  accepted: AcceptedJob[];
  rejected: RejectedJob[];
  /** What the jobs' issue paths look like: `jobs.3.size` or `line 4: size`. */
  form: 'json' | 'ndjson';
}

export interface BatchInputDeps {
  config: Config;
  store: ObjectStore;
  now?: () => number;
}

function issuePath(ref: JobRef, path: string): string {
  const field = path === '(body)' ? '' : path;
  if ('index' in ref) return field ? `jobs.${ref.index}.${field}` : `jobs.${ref.index}`;
  return field ? `line ${ref.line}: ${field}` : `line ${ref.line}`;
}

/** Fields a batch's defaults may set: the job fields but the per-job identity. */
function defaultsIssues(defaults: Record<string, unknown> | undefined): FieldIssue[] {
  if (!defaults) return [];
  const issues: FieldIssue[] = [];
  const shape = jobRequestShape.shape as Record<string, z.ZodType>;
  for (const [field, value] of Object.entries(defaults)) {
    if (field === 'idempotencyKey') {
      issues.push({ path: `defaults.${field}`, message: 'is not supported in a batch (each job gets its own id)' });
      continue;
    }
    const schema = shape[field];
    if (!schema) {
      issues.push({ path: `defaults.${field}`, message: 'is not a known field' });
      continue;
    }
    const parsed = schema.safeParse(value);
    if (!parsed.success) issues.push(...zodIssues(parsed.error).map((i) => ({ path: `defaults.${field}${i.path === '(body)' ? '' : `.${i.path}`}`, message: i.message })));
  }
  return issues;
}

/** The issue of a webhook given while webhooks are off (no WEBHOOK_SECRET), as a list. */
function webhookIssues(config: Config, path: string): FieldIssue[] {
  try {
    assertWebhooksEnabled(config, path);
    return [];
  } catch (err) {
    const issues = isPixelmillError(err) ? (err.details['issues'] as FieldIssue[] | undefined) : undefined;
    return issues ?? [{ path, message: err instanceof Error ? err.message : String(err) }];
  }
}

/**
 * Batch options' own problems: defaults' fields, a webhook while webhooks are off, and a batch
 * webhook asking for events it never gets (it receives batch.completed; image events go to per-job
 * webhooks, e.g. `defaults.webhook`).
 */
function optionIssues(config: Config, options: BatchOptions): FieldIssue[] {
  const issues = [...defaultsIssues(options.defaults), ...(options.webhook ? webhookIssues(config, 'webhook') : [])];
  const others = (options.webhook?.events ?? []).filter((e) => e !== 'batch.completed');
  if (others.length > 0) {
    issues.push({ path: 'webhook.events', message: `a batch's webhook receives batch.completed only (not ${others.join(', ')}); give jobs their own webhook, e.g. in defaults.webhook` });
  }
  return issues;
}

/** Validates jobs one at a time (so an NDJSON body is checked while it streams in). */
class JobChecker {
  readonly accepted: AcceptedJob[] = [];
  readonly rejected: RejectedJob[] = [];
  private defaults: Record<string, unknown> = {};

  constructor(private readonly config: Config, private readonly nowMs: number) {}

  setDefaults(defaults: Record<string, unknown> | undefined): void {
    this.defaults = defaults ?? {};
  }

  add(ref: JobRef, raw: unknown): void {
    const issues = this.check(raw);
    if ('request' in issues) this.accepted.push({ ref, request: issues.request, inputs: issues.inputs });
    else this.rejected.push({ ref, issues: issues.problems.map((i) => ({ path: issuePath(ref, i.path), message: i.message })) });
  }

  private check(raw: unknown): { request: JobRequest; inputs: PreparedInput[] } | { problems: FieldIssue[] } {
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
      return { problems: [{ path: '(body)', message: 'must be a JSON object (a job request)' }] };
    }
    const problems: FieldIssue[] = [];
    if ('idempotencyKey' in raw) problems.push({ path: 'idempotencyKey', message: 'is not supported inside a batch (each job gets its own id)' });
    const merged = { ...this.defaults, ...(raw as Record<string, unknown>) };
    delete (merged as { idempotencyKey?: unknown }).idempotencyKey;
    const checked = validateJobRequest(merged, this.nowMs);
    problems.push(...checked.issues);
    if (checked.lateDeadline) problems.push(checked.lateDeadline);
    if (!checked.request) return { problems };
    if (checked.request.webhook) problems.push(...webhookIssues(this.config, 'webhook'));
    const { inputs, issues, tooLarge } = inspectInputImages(checked.request, this.config.INPUT_IMAGE_MAX_BYTES);
    problems.push(...issues, ...tooLarge);
    return problems.length > 0 ? { problems } : { request: checked.request, inputs };
  }
}

/** Read a JSON batch body (already parsed by fastify). */
export function planFromJson(body: unknown, deps: BatchInputDeps): BatchPlan {
  const count = Array.isArray((body as { jobs?: unknown } | null)?.jobs) ? (body as { jobs: unknown[] }).jobs.length : 0;
  if (count > MAX_JSON_JOBS) {
    throw new PixelmillError('BATCH_TOO_LARGE', `The batch has ${count} jobs; a JSON batch takes at most ${MAX_JSON_JOBS}`, {
      details: { jobs: count, max: MAX_JSON_JOBS },
    });
  }
  const parsed = jsonBatchSchema.safeParse(body);
  if (!parsed.success) throw invalidBatch(zodIssues(parsed.error), 'Invalid batch request');
  const { jobs, ...options } = parsed.data;
  if (jobs.length === 0) throw invalidBatch([{ path: 'jobs', message: 'must hold at least one job' }], 'Invalid batch request');
  const problems = optionIssues(deps.config, options);
  if (problems.length > 0) throw invalidBatch(problems, 'Invalid batch options');

  const checker = new JobChecker(deps.config, (deps.now ?? Date.now)());
  checker.setDefaults(options.defaults);
  jobs.forEach((raw, index) => checker.add({ index }, raw));
  return { options, accepted: checker.accepted, rejected: checker.rejected, form: 'json' };
}

/**
 * Read an NDJSON batch from the request stream, line by line. `query` holds the batch options
 * allowed in the URL (skipInvalid).
 */
export async function planFromNdjson(stream: Readable, query: { skipInvalid?: boolean }, deps: BatchInputDeps): Promise<BatchPlan> {
  const { config } = deps;
  const limit = config.API_BODY_LIMIT_BYTES;
  let bytes = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      bytes += chunk.length;
      if (bytes > limit) {
        done(new PixelmillError('PAYLOAD_TOO_LARGE', `The request body is larger than API_BODY_LIMIT_BYTES (${limit} bytes)`));
      } else {
        done(null, chunk);
      }
    },
  });
  pipeline(stream, counter, () => {});
  const lines = createInterface({ input: counter, crlfDelay: Infinity });

  const checker = new JobChecker(config, (deps.now ?? Date.now)());
  let options: BatchOptions = {};
  let lineNo = 0;
  let jobLines = 0;
  let sawContent = false;
  try {
    for await (const text of lines) {
      lineNo += 1;
      const trimmed = text.trim();
      if (!trimmed) continue;
      const first = !sawContent;
      sawContent = true;
      // Past the limit: keep counting (to say how many there were) without parsing.
      if (jobLines >= MAX_NDJSON_LINES) {
        jobLines += 1;
        continue;
      }
      let value: unknown;
      try {
        value = JSON.parse(trimmed);
      } catch (err) {
        jobLines += 1;
        checker.rejected.push({ ref: { line: lineNo }, issues: [{ path: `line ${lineNo}`, message: `is not valid JSON (${(err as Error).message})` }] });
        continue;
      }
      if (first && isOptionsLine(value)) {
        const parsed = batchOptionsSchema.safeParse(value.batch);
        const issues = parsed.success ? optionIssues(config, parsed.data) : zodIssues(parsed.error);
        if (!parsed.success || issues.length > 0) {
          throw invalidBatch(issues.map((i) => ({ path: `line ${lineNo}: batch.${i.path}`, message: i.message })), 'Invalid batch options line');
        }
        options = parsed.data;
        checker.setDefaults(options.defaults);
        continue;
      }
      jobLines += 1;
      checker.add({ line: lineNo }, value);
    }
  } catch (err) {
    lines.close();
    // Read the rest (still within the body limit) so the client gets our answer, not a reset.
    if (!(isPixelmillError(err) && err.code === 'PAYLOAD_TOO_LARGE')) await drain(counter);
    throw err;
  }
  lines.close();
  if (jobLines > MAX_NDJSON_LINES) {
    throw new PixelmillError('BATCH_TOO_LARGE', `The batch has ${jobLines} job lines; an NDJSON batch takes at most ${MAX_NDJSON_LINES}`, {
      details: { lines: jobLines, max: MAX_NDJSON_LINES },
    });
  }
  if (jobLines === 0) throw invalidBatch([{ path: '(body)', message: 'holds no job lines' }], 'Invalid batch request');
  if (query.skipInvalid !== undefined) options = { ...options, skipInvalid: options.skipInvalid || query.skipInvalid };
  return { options, accepted: checker.accepted, rejected: checker.rejected, form: 'ndjson' };
}

function drain(stream: Transform): Promise<void> {
  return new Promise((resolve) => {
    if (stream.readableEnded || stream.destroyed) return resolve();
    stream.once('end', resolve);
    stream.once('error', () => resolve());
    stream.once('close', resolve);
    stream.resume();
  });
}

function isOptionsLine(value: unknown): value is { batch: unknown } {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && Object.keys(value).length === 1 && 'batch' in value;
}

/**
 * Look up the {s3Key} inputs of the accepted jobs (one HEAD per distinct key); jobs whose objects are
 * missing (or another tenant's) move to `rejected`. Storage failures throw STORAGE_UNAVAILABLE.
 */
export async function checkBatchInputs(plan: BatchPlan, tenant: string | null, deps: BatchInputDeps): Promise<void> {
  const withRefs = plan.accepted.filter((j) => j.inputs.some((i) => i.kind === 's3'));
  if (withRefs.length === 0) return;
  const heads = new Map<string, ReturnType<HeadObject>>();
  const cachedHead: HeadObject = (key) => {
    let head = heads.get(key);
    if (!head) {
      head = deps.store.head(key);
      heads.set(key, head);
    }
    return head;
  };
  const bad = new Set<AcceptedJob>();
  await forEachLimit(withRefs, S3_PARALLEL, async (job) => {
    const issues = await referencedInputIssues(deps.config, deps.store, job.inputs, tenant, cachedHead);
    if (issues.length > 0) {
      bad.add(job);
      plan.rejected.push({ ref: job.ref, issues: issues.map((i) => ({ path: issuePath(job.ref, i.path), message: i.message })) });
    }
  });
  if (bad.size > 0) plan.accepted = plan.accepted.filter((j) => !bad.has(j));
}

/** The 400 for a batch with invalid jobs (and no skipInvalid), or with no valid job at all. */
export function rejectInvalidJobs(plan: BatchPlan): void {
  const total = plan.accepted.length + plan.rejected.length;
  if (plan.rejected.length === 0) return;
  if (plan.options.skipInvalid && plan.accepted.length > 0) return;
  const sorted = sortRejected(plan.rejected);
  const all = sorted.flatMap((r) => r.issues);
  const shown = all.slice(0, ISSUES_SHOWN);
  if (all.length > shown.length) shown.push({ path: '(more)', message: `${all.length - shown.length} more issues not shown` });
  const where = sorted.slice(0, 20).map((r) => refLabel(r.ref)).join(', ') + (sorted.length > 20 ? ', …' : '');
  const why = plan.accepted.length === 0 && plan.options.skipInvalid ? '; skipInvalid leaves no job to store' : '';
  throw new PixelmillError('INVALID_REQUEST', `${plan.rejected.length} of ${total} jobs are invalid (${where})${why}; nothing was stored`, {
    details: { issues: shown, invalidJobs: plan.rejected.length, totalJobs: total },
  });
}

export function refLabel(ref: JobRef): string {
  return 'index' in ref ? `jobs.${ref.index}` : `line ${ref.line}`;
}

function sortRejected(rejected: RejectedJob[]): RejectedJob[] {
  const key = (r: RejectedJob) => ('index' in r.ref ? r.ref.index : r.ref.line);
  return [...rejected].sort((a, b) => key(a) - key(b));
}

/** What a 202 reports about jobs left out by skipInvalid. */
export function rejectedReport(plan: BatchPlan): { count: number; jobs: (JobRef & { issues: FieldIssue[] })[]; omitted: number } | undefined {
  if (plan.rejected.length === 0) return undefined;
  const sorted = sortRejected(plan.rejected);
  const shown = sorted.slice(0, ISSUES_SHOWN);
  return { count: sorted.length, jobs: shown.map((r) => ({ ...r.ref, issues: r.issues })), omitted: sorted.length - shown.length };
}

function invalidBatch(issues: FieldIssue[], what: string): PixelmillError {
  const shown = issues.slice(0, ISSUES_SHOWN);
  const summary = shown.slice(0, 5).map((i) => `${i.path}: ${i.message}`).join('; ');
  return new PixelmillError('INVALID_REQUEST', `${what} (${summary}${issues.length > 5 ? '; …' : ''})`, { details: { issues: shown } });
}

// ---------------------------------------------------------------------------------------------
// Storing

/** The single-job producer's dependencies (its queue's addBulk stores the jobs), plus batch accounting's. */
export interface StoreBatchDeps extends BatchAccountingDeps, ImageJobProducerDeps {}

export interface StoredBatch {
  batchId: string;
  jobIds: string[];
}

/** Store a validated batch: the record, the inline inputs, the jobs in chunks, then open it. */
export async function storeBatch(plan: BatchPlan, tenant: string | null, deps: StoreBatchDeps): Promise<StoredBatch> {
  const { config, queue, redis, store } = deps;
  const now = deps.now ?? Date.now;
  const timeoutMs = deps.redisTimeoutMs ?? 5_000;
  const op = <T>(what: string, fn: () => Promise<T>) => redisOperation(redis, timeoutMs, what, fn);

  const batchId = newBatchId();
  const k = batchKeys(config, batchId);
  const jobs = plan.accepted.map((job) => ({ ...job, id: newJobId() }));
  const info: BatchInfo = {
    tenant,
    skipped: plan.rejected.length,
    ...(plan.options.metadata ? { metadata: plan.options.metadata } : {}),
    ...(plan.options.webhook ? { webhook: plan.options.webhook } : {}),
    ...(plan.options.maxCostUsd !== undefined ? { maxCostUsd: plan.options.maxCostUsd } : {}),
    ...(plan.options.allowBudgetDowngrade !== undefined ? { allowBudgetDowngrade: plan.options.allowBudgetDowngrade } : {}),
  };
  const createdAt = now();
  await op('write the batch record', async () => {
    const fields: (string | number)[] = ['status', 'storing', 'total', jobs.length, 'stored', 0, 'createdAt', createdAt, 'info', JSON.stringify(info)];
    if (plan.options.webhook) fields.push('webhook', JSON.stringify(plan.options.webhook));
    await redis.multi().hset(k.record, ...fields).pexpire(k.record, config.JOB_RETENTION).exec();
  });

  // Inline images go to the bucket before any job exists; on failure nothing is queued yet.
  let stored: { id: string; data: ReturnType<typeof buildStoredJobData> }[];
  try {
    stored = new Array(jobs.length);
    await forEachLimit(jobs.map((job, i) => ({ job, i })), S3_PARALLEL, async ({ job, i }) => {
      const inputImages = await storeInputImages(config, store, job.id, job.inputs, tenant);
      stored[i] = { id: job.id, data: buildStoredJobData(job.request, inputImages, tenant, createdAt, { batchId }) };
    });
  } catch (err) {
    await redis.del(k.record).catch(() => {});
    throw err;
  }

  const attempted: string[] = [];
  let added = 0;
  try {
    for (let start = 0, size = STORE_FIRST_CHUNK; start < stored.length; start += size, size = Math.min(STORE_CHUNK, size * 4)) {
      const chunk = stored.slice(start, start + size);
      const members = chunk.flatMap((j, i) => [start + i, j.id]);
      attempted.push(...chunk.map((j) => j.id));
      await op('record the batch jobs', () => redis.multi().zadd(k.jobs, ...members).pexpire(k.jobs, config.JOB_RETENTION).exec());
      await op(`add jobs ${start + 1}-${start + chunk.length}`, () =>
        // Position = index in the batch: batches of one priority share the queue round-robin (fairness).
        queue.addBulk(chunk.map((j, i) => ({ name: IMAGE_JOB_NAME, data: j.data, opts: imageJobOptions(config, j.id, j.data.request.priority, start + i) }))),
      );
      added += chunk.length;
      await op('count stored jobs', () => redis.hincrby(k.record, 'stored', chunk.length));
    }
    // Every job may have ended while later chunks were stored: opening can complete the batch.
    const [, , needsWebhook] = (await op('open the batch', () =>
      runScript(redis, OPEN_SCRIPT, [k.record, k.done], [now()]),
    )) as [number, Completion, number];
    if (needsWebhook === 1) await queueBatchCompleted(config, redis, batchId, deps).catch(() => {
      // The batch is stored; the event is queued again by the next GET or DELETE of it.
    });
  } catch (err) {
    throw await rollBack(batchId, jobs.length, added, attempted, err, deps);
  }
  return { batchId, jobIds: stored.map((j) => j.id) };
}

/** Undo a batch whose storing failed part-way, and say exactly what is left. */
async function rollBack(
  batchId: string, total: number, added: number, attempted: string[], cause: unknown, deps: StoreBatchDeps,
): Promise<PixelmillError> {
  const { config, queue, redis } = deps;
  const reason = isPixelmillError(cause) ? cause.message : cause instanceof Error ? cause.message : String(cause);
  await redis.hset(batchKeys(config, batchId).record, 'status', 'failed_to_store').catch(() => {});
  let removed = 0;
  let canceled = 0;
  const taken: string[] = [];
  const left: string[] = [];
  // First remove every job still queued, so that cancelling the taken ones (which frees their
  // workers) cannot hand a worker another job of this batch.
  await forEachLimit(attempted, 32, async (jobId) => {
    try {
      // Not there at all: its chunk never got in.
      if ((await queue.getJobState(jobId)) === 'unknown') return;
      if ((await queue.remove(jobId)) === 1) removed += 1;
      else taken.push(jobId); // locked: a worker holds it
    } catch {
      left.push(jobId);
    }
  });
  await forEachLimit(taken, 16, async (jobId) => {
    try {
      const outcome = await cancelJob({ config, redis, queue }, jobId);
      if (outcome === 'already-finished') left.push(jobId);
      else canceled += 1;
    } catch {
      left.push(jobId);
    }
  });
  const undone = removed + canceled;
  const facts = `Storing batch ${batchId} failed after ${added} of ${total} jobs were queued (${reason})`;
  const details = { batchId, total, stored: added, removed, canceled, remaining: left.length };
  if (left.length === 0) {
    const cancelNote = canceled > 0 ? ` (${canceled} a worker had already taken were cancelled)` : '';
    return new PixelmillError('QUEUE_UNAVAILABLE', `${facts}; the ${undone} stored jobs were removed${cancelNote}, so nothing of this batch will run`, {
      cause, details,
    });
  }
  return new PixelmillError('BATCH_PARTIALLY_STORED', `${facts}; ${undone} were removed or cancelled but ${left.length} could not be (${left.slice(0, 5).join(', ')}${left.length > 5 ? ', …' : ''})`, {
    cause, details,
  });
}
