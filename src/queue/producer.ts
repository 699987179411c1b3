/**
 * The producer: validates a job request, moves inline input images to object storage, and adds the
 * job to the image queue. It never calls a model.
 *
 * Guarantees:
 * - a success answer means the job is stored in Redis (the producer connection fails fast, see
 *   queue/connection.ts), and image bytes never enter Redis;
 * - one idempotencyKey (per tenant) makes at most one job: its job id is derived from the key, and a
 *   marker `{jobId}|{requestHash}` remembers which request the key belongs to.
 *
 * The steps of a submission (validate, inspect inputs, check referenced objects, store inline inputs,
 * build the stored data) are also exported as functions: batches (src/batches/) run the same steps
 * per job and report problems per job instead of throwing.
 */
import { createHash } from 'node:crypto';
import type { Job, JobState, Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { imageSize } from 'image-size';
import type { Config } from '../config/env.js';
import { PixelmillError, isPixelmillError } from '../errors/catalogue.js';
import { STORED_JOB_VERSION, storedJobDataSchema, type StoredJobData, type StoredRequest } from '../jobs/record.js';
import {
  INPUT_IMAGE_MIME_TYPES, jobRequestSchema, zodIssues, type FieldIssue, type InputImageMimeType, type JobRequest,
} from '../jobs/request.js';
import { inputKey, tenantMetadata, type ObjectStore } from '../storage/object-store.js';
import { assertWebhooksEnabled } from '../webhooks/outbox.js';
import { IMAGE_JOB_NAME, idempotentJobId, imageJobOptions, keys, newJobId } from './image-queue.js';
import { viewJob, type JobView } from './job-view.js';

export interface ImageJobProducerDeps {
  config: Config;
  queue: Queue;
  /** The producer connection (`createRedis(config, 'producer')`): fails fast instead of queueing commands. */
  redis: Redis;
  store: ObjectStore;
  now?: () => number;
  /** Upper bound on one Redis operation, so a hung connection becomes QUEUE_UNAVAILABLE instead of a hung request. */
  redisTimeoutMs?: number;
}

export interface SubmitResult {
  job: JobView;
  /** false when an earlier request with the same idempotencyKey already made this job */
  created: boolean;
}

/** What image-size calls each accepted type. */
const DETECTED_TYPE: Record<InputImageMimeType, string> = {
  'image/png': 'png',
  'image/jpeg': 'jpg',
  'image/webp': 'webp',
};
const TYPE_LABEL: Record<string, string> = { png: 'PNG', jpg: 'JPEG', webp: 'WebP' };

/** Job ids we hand out (newJobId / idempotentJobId); anything else cannot be ours. */
const JOB_ID_PATTERN = /^[A-Za-z0-9_-]{1,100}$/;

export type PreparedInput =
  | { kind: 's3'; index: number; s3Key: string; mimeType?: InputImageMimeType }
  /** Fetched by the worker through the SSRF guard (the address is only known after DNS, at run time). */
  | { kind: 'url'; index: number; url: string }
  | { kind: 'inline'; index: number; bytes: Buffer; mimeType: InputImageMimeType };

export class ImageJobProducer {
  private readonly config: Config;
  private readonly queue: Queue;
  private readonly redis: Redis;
  private readonly store: ObjectStore;
  private readonly now: () => number;
  private readonly redisTimeoutMs: number;

  constructor(deps: ImageJobProducerDeps) {
    this.config = deps.config;
    this.queue = deps.queue;
    this.redis = deps.redis;
    this.store = deps.store;
    this.now = deps.now ?? Date.now;
    this.redisTimeoutMs = deps.redisTimeoutMs ?? 5_000;
  }

  async submit(input: unknown, tenant: string | null): Promise<SubmitResult> {
    const { request, lateDeadline } = this.validate(input);
    // Deliveries are never sent unsigned: no WEBHOOK_SECRET, no webhook.
    if (request.webhook) assertWebhooksEnabled(this.config);
    const inputs = this.prepareInputs(request);
    const requestHash = sha256Hex(canonicalJson(request));
    const key = request.idempotencyKey;
    const jobId = key === undefined ? newJobId() : idempotentJobId(tenant, key);
    const marker = key === undefined ? undefined : keys(this.config).idempotency(tenant, key);
    const markerValue = `${jobId}|${requestHash}`;

    // Look before storing anything: a replay answers from Redis alone, and Redis being down stops us
    // before any object is written.
    if (marker === undefined) {
      if (lateDeadline) throw invalidRequest([lateDeadline]);
      await this.redisOp('PING', () => this.redis.ping());
    } else {
      // A retry of a stored request answers with its job even after its deadline passed.
      const replay = await this.replay(marker, requestHash, jobId);
      if (replay) return replay;
    }
    if (lateDeadline) throw invalidRequest([lateDeadline]);

    await this.checkReferencedInputs(inputs, tenant);

    let created = false;
    if (marker !== undefined) {
      const set = await this.redisOp('SET idempotency marker', () =>
        this.redis.set(marker, markerValue, 'PX', this.config.JOB_RETENTION, 'NX'),
      );
      if (set === 'OK') {
        created = true;
      } else {
        // Another request with the same key got there first.
        const replay = await this.replay(marker, requestHash, jobId);
        if (replay) return replay;
      }
    } else {
      created = true;
    }

    // Reached with created=false only when the marker exists but its job does not (a crash or an
    // outage between SET and add): adding now is safe because the job id is derived from the key.
    const storedInputs = await this.storeInputs(jobId, inputs, tenant);
    const data: StoredJobData = buildStoredJobData(request, storedInputs, tenant, this.now());
    const job = await this.redisOp('add job', () =>
      this.queue.add(IMAGE_JOB_NAME, data, imageJobOptions(this.config, jobId, request.priority)),
    );
    return { job: await this.view(job), created };
  }

  /** The job's view, or undefined when it does not exist or belongs to another tenant. */
  async get(jobId: string, tenant: string | null): Promise<JobView | undefined> {
    if (!JOB_ID_PATTERN.test(jobId)) return undefined;
    const loaded = await this.load(jobId);
    if (!loaded) return undefined;
    const owner = (loaded.job.data as { tenant?: unknown } | undefined)?.tenant ?? null;
    if (owner !== tenant) return undefined;
    return this.view(loaded.job, loaded.state);
  }

  /** State first, then the job: the job read is then at least as far along as the state says. */
  private async load(jobId: string): Promise<{ job: Job; state: JobState } | undefined> {
    const state = await this.redisOp('get job state', () => this.queue.getJobState(jobId));
    if (state === 'unknown') return undefined;
    const job = await this.redisOp('get job', () => this.queue.getJob(jobId));
    return job ? { job, state } : undefined;
  }

  private async view(job: Job, state?: JobState): Promise<JobView> {
    try {
      return await viewJob(job, { config: this.config, store: this.store, now: this.now, ...(state ? { state } : {}) });
    } catch (err) {
      if (isPixelmillError(err)) throw err;
      throw queueUnavailable('read job state', err);
    }
  }

  /** An existing marker: the same request answers with its job; another request under the key is a conflict. */
  private async replay(marker: string, requestHash: string, expectedJobId: string): Promise<SubmitResult | undefined> {
    const existing = await this.redisOp('GET idempotency marker', () => this.redis.get(marker));
    if (existing === null) return undefined;
    const sep = existing.lastIndexOf('|');
    const markedJobId = sep > 0 ? existing.slice(0, sep) : expectedJobId;
    const markedHash = existing.slice(sep + 1);
    if (markedHash !== requestHash) {
      throw new PixelmillError('IDEMPOTENCY_CONFLICT', `idempotencyKey already belongs to job ${markedJobId}, which was submitted with a different request`, {
        details: { jobId: markedJobId },
      });
    }
    const loaded = await this.load(markedJobId);
    if (!loaded) return undefined;
    return { job: await this.view(loaded.job, loaded.state), created: false };
  }

  /**
   * Schema rules, plus the one rule that depends on the clock: a deadline that has passed can never
   * be met. That one is returned rather than thrown when it is the only problem, so an idempotent
   * retry of an accepted request can still be answered with its job.
   */
  private validate(input: unknown): { request: JobRequest; lateDeadline?: FieldIssue } {
    const checked = validateJobRequest(input, this.now());
    if (!checked.request) throw invalidRequest(checked.lateDeadline ? [...checked.issues, checked.lateDeadline] : checked.issues);
    return checked.lateDeadline ? { request: checked.request, lateDeadline: checked.lateDeadline } : { request: checked.request };
  }

  /** Decode inline images and check them (type by magic bytes, size); pure CPU, no I/O. */
  private prepareInputs(request: JobRequest): PreparedInput[] {
    const { inputs, issues, tooLarge } = inspectInputImages(request, this.config.INPUT_IMAGE_MAX_BYTES);
    if (issues.length > 0) throw invalidRequest([...issues, ...tooLarge]);
    if (tooLarge.length > 0) {
      throw new PixelmillError('PAYLOAD_TOO_LARGE', `${tooLarge.map((i) => `${i.path} ${i.message}`).join('; ')}`, {
        details: { issues: tooLarge },
      });
    }
    return inputs;
  }

  private async checkReferencedInputs(inputs: PreparedInput[], tenant: string | null): Promise<void> {
    const missing = await referencedInputIssues(this.config, this.store, inputs, tenant);
    if (missing.length > 0) throw invalidRequest(missing);
  }

  private async storeInputs(jobId: string, inputs: PreparedInput[], tenant: string | null): Promise<StoredRequest['inputImages']> {
    return storeInputImages(this.config, this.store, jobId, inputs, tenant);
  }

  private redisOp<T>(what: string, op: () => Promise<T>): Promise<T> {
    return redisOperation(this.redis, this.redisTimeoutMs, what, op);
  }
}

// ---------------------------------------------------------------------------------------------
// The steps of a submission, shared with batches.

/**
 * Validate one job request: schema issues, and separately a deadline already in the past (see
 * ImageJobProducer.validate for why). `request` is set when the schema accepted it.
 */
export function validateJobRequest(input: unknown, nowMs: number): { request?: JobRequest; issues: FieldIssue[]; lateDeadline?: FieldIssue } {
  const parsed = jobRequestSchema.safeParse(input);
  const issues: FieldIssue[] = parsed.success ? [] : zodIssues(parsed.error);
  let lateDeadline: FieldIssue | undefined;
  const deadline = (input as { deadline?: unknown } | null | undefined)?.deadline;
  if (typeof deadline === 'string' && !issues.some((i) => i.path === 'deadline')) {
    const at = Date.parse(deadline);
    if (Number.isFinite(at) && at <= nowMs) {
      lateDeadline = { path: 'deadline', message: `${deadline} is in the past; give a deadline after the current time` };
    }
  }
  return {
    issues,
    ...(parsed.success ? { request: parsed.data } : {}),
    ...(lateDeadline ? { lateDeadline } : {}),
  };
}

/**
 * Decode inline images and check them (type by magic bytes, size); pure CPU, no I/O. `issues` are
 * invalid images, `tooLarge` images over INPUT_IMAGE_MAX_BYTES (a 413 for a single job).
 */
export function inspectInputImages(request: JobRequest, maxBytes: number): { inputs: PreparedInput[]; issues: FieldIssue[]; tooLarge: FieldIssue[] } {
  const issues: FieldIssue[] = [];
  const tooLarge: FieldIssue[] = [];
  const inputs = request.inputImages.map((img, index): PreparedInput => {
    if ('s3Key' in img) return { kind: 's3', index, s3Key: img.s3Key };
    if ('url' in img) return { kind: 'url', index, url: img.url };
    const path = `inputImages.${index}.data`;
    // Check the size from the base64 length before decoding a huge string.
    if (decodedLength(img.data) > maxBytes) {
      tooLarge.push({ path, message: `decodes to more than INPUT_IMAGE_MAX_BYTES (${maxBytes} bytes)` });
      return { kind: 'inline', index, bytes: Buffer.alloc(0), mimeType: img.mimeType };
    }
    const bytes = Buffer.from(img.data, 'base64');
    const problem = typeProblem(bytes, img.mimeType);
    if (problem) issues.push({ path, message: problem });
    return { kind: 'inline', index, bytes, mimeType: img.mimeType };
  });
  return { inputs, issues, tooLarge };
}

export type HeadObject = ObjectStore['head'];

/**
 * {s3Key} inputs must exist now; finding out at run time would waste a queue slot and a retry budget.
 * With tenants, a key must belong to the caller: an object pixelmill wrote for that tenant (its
 * `tenant` metadata), or one under `{S3_KEY_PREFIX}/uploads/{tenant}/`. Anything else is answered
 * like a missing object, so other tenants' keys are not even confirmed to exist.
 *
 * Returns the issues (empty when all are usable) and records known image types on the inputs so the
 * worker need not ask again. `head` defaults to the store's; batches pass a cached one (one HEAD per key).
 */
export async function referencedInputIssues(
  config: Config, store: ObjectStore, inputs: PreparedInput[], tenant: string | null, head: HeadObject = (key) => store.head(key),
): Promise<FieldIssue[]> {
  const refs = inputs.filter((i): i is Extract<PreparedInput, { kind: 's3' }> => i.kind === 's3');
  const heads = await Promise.all(
    refs.map(async (ref) => ({ ref, head: await storageOp(`check ${ref.s3Key}`, () => head(ref.s3Key)) })),
  );
  const uploads = [config.S3_KEY_PREFIX, 'uploads', tenant ?? ''].filter(Boolean).join('/') + '/';
  const usable = (h: (typeof heads)[number]) =>
    h.head !== undefined && (tenant === null || h.head.metadata['tenant'] === tenant || h.ref.s3Key.startsWith(uploads));
  const missing = heads.filter((h) => !usable(h));
  for (const h of heads) {
    const type = h.head?.contentType?.split(';')[0]?.trim();
    if (type && (INPUT_IMAGE_MIME_TYPES as readonly string[]).includes(type)) h.ref.mimeType = type as InputImageMimeType;
  }
  return missing.map((m) => ({ path: `inputImages.${m.ref.index}.s3Key`, message: `no object ${m.ref.s3Key} in bucket ${store.bucket}` }));
}

/** Copy inline inputs to the bucket under the job's id; returns the stored form of every input. */
export async function storeInputImages(
  config: Config, store: ObjectStore, jobId: string, inputs: PreparedInput[], tenant: string | null,
): Promise<StoredRequest['inputImages']> {
  return Promise.all(
    inputs.map(async (input) => {
      if (input.kind === 's3') return input.mimeType ? { s3Key: input.s3Key, mimeType: input.mimeType } : { s3Key: input.s3Key };
      if (input.kind === 'url') return { url: input.url };
      const key = inputKey(config, jobId, input.index, input.mimeType);
      await storageOp(`store ${key}`, () => store.put(key, input.bytes, input.mimeType, tenantMetadata(tenant)));
      return { s3Key: key, mimeType: input.mimeType };
    }),
  );
}

/** The BullMQ job data of a validated request (schema-checked, so a bad record is never stored). */
export function buildStoredJobData(
  request: JobRequest, inputImages: StoredRequest['inputImages'], tenant: string | null, nowMs: number, extra: { batchId?: string } = {},
): StoredJobData {
  return storedJobDataSchema.parse({
    v: STORED_JOB_VERSION,
    tenant,
    request: storedRequest(request, inputImages),
    createdAt: new Date(nowMs).toISOString(),
    promptSha256: sha256Hex(request.prompt),
    ...(extra.batchId !== undefined ? { batchId: extra.batchId } : {}),
  });
}

/** Run a Redis operation with a readiness check and a time limit; failures become QUEUE_UNAVAILABLE. */
export async function redisOperation<T>(redis: Redis, timeoutMs: number, what: string, op: () => Promise<T>): Promise<T> {
  try {
    await redisReady(redis, timeoutMs);
    return await withTimeout(op(), timeoutMs, what);
  } catch (err) {
    if (isPixelmillError(err)) throw err;
    throw queueUnavailable(what, err);
  }
}

/** Run an object storage operation; failures become STORAGE_UNAVAILABLE. */
export async function storageOp<T>(what: string, op: () => Promise<T>): Promise<T> {
  try {
    return await op();
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new PixelmillError('STORAGE_UNAVAILABLE', `Object storage failed to ${what}: ${reason}`, { cause: err });
  }
}

function storedRequest(request: JobRequest, inputImages: StoredRequest['inputImages']): StoredRequest {
  const out: StoredRequest = {
    prompt: request.prompt,
    tier: request.tier,
    priority: request.priority,
    size: request.size,
    aspectRatio: request.aspectRatio,
    inputImages,
    allowDowngrade: request.allowDowngrade,
  };
  if (request.idempotencyKey !== undefined) out.idempotencyKey = request.idempotencyKey;
  if (request.metadata !== undefined) out.metadata = request.metadata;
  if (request.deadline !== undefined) out.deadline = request.deadline;
  if (request.webhook !== undefined) out.webhook = request.webhook;
  return out;
}

export function invalidRequest(issues: FieldIssue[]): PixelmillError {
  const summary = issues.map((i) => `${i.path}: ${i.message}`).join('; ');
  return new PixelmillError('INVALID_REQUEST', `Invalid job request (${summary})`, { details: { issues } });
}

function queueUnavailable(what: string, err: unknown): PixelmillError {
  const reason = err instanceof Error ? err.message : String(err);
  return new PixelmillError('QUEUE_UNAVAILABLE', `Redis did not complete ${what}: ${reason}`, { cause: err });
}

/** Why `bytes` are not an image of `mimeType`, or undefined when they are. */
function typeProblem(bytes: Buffer, mimeType: InputImageMimeType): string | undefined {
  const expected = DETECTED_TYPE[mimeType];
  let detected: string | undefined;
  try {
    detected = imageSize(bytes).type;
  } catch {
    detected = undefined;
  }
  if (detected === expected) return undefined;
  const declared = TYPE_LABEL[expected] ?? mimeType;
  return detected === undefined
    ? `is not a readable ${declared} image (mimeType says ${mimeType})`
    : `is a ${TYPE_LABEL[detected] ?? detected} image but mimeType says ${mimeType}`;
}

function decodedLength(base64: string): number {
  const padding = base64.endsWith('==') ? 2 : base64.endsWith('=') ? 1 : 0;
  return Math.floor((base64.length * 3) / 4) - padding;
}

function sha256Hex(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

/** JSON with object keys sorted, so equal requests hash equally whatever the field order. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/**
 * Resolve when `redis` can take commands. A connection still making its first connect (the API just
 * started) is waited for, up to `timeoutMs`; one that is down or reconnecting fails at once, because
 * the producer connection has no offline queue and must not pretend.
 */
export async function redisReady(redis: Redis, timeoutMs: number): Promise<void> {
  if (redis.status === 'ready') return;
  if (redis.status === 'wait') void redis.connect().catch(() => {});
  else if (redis.status !== 'connecting' && redis.status !== 'connect') {
    throw new Error(`the Redis connection is ${redis.status}`);
  }
  await new Promise<void>((resolve, reject) => {
    const finish = (err?: Error) => {
      clearTimeout(timer);
      redis.off('ready', onReady);
      redis.off('error', onError);
      redis.off('end', onEnd);
      if (err) reject(err);
      else resolve();
    };
    const onReady = () => finish();
    const onError = (err: Error) => finish(err);
    const onEnd = () => finish(new Error('the Redis connection closed'));
    const timer = setTimeout(() => finish(new Error(`no Redis connection within ${timeoutMs} ms`)), timeoutMs);
    redis.once('ready', onReady);
    redis.once('error', onError);
    redis.once('end', onEnd);
  });
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
