/**
 * What pixelmill keeps in Redis for a job, as typed, versioned payloads. Everything here is small:
 * keys, ids, counts and text. Image bytes never enter Redis (inline inputs are moved to S3 at enqueue).
 *
 * - `StoredJobData` is the BullMQ job data: written once by the producer, validated by the worker
 *   where it is read (job.data is `unknown` until parsed).
 * - `JobProgress` is the BullMQ job progress: the mutable record of attempts, routing and errors.
 * - `JobResult` is the BullMQ return value of a successful job.
 */
import { z } from 'zod';
import { ERROR_CODES } from '../errors/catalogue.js';
import { ASPECT_RATIOS, IMAGE_SIZES, MODEL_FAMILIES } from '../models/catalogue.js';
import { INPUT_IMAGE_MIME_TYPES, TIERS, metadataSchema, webhookSchema } from './request.js';

export const STORED_JOB_VERSION = 1;

/** An input image after enqueue: an S3 key (inline data was copied there), or a URL the worker fetches through the SSRF guard. */
export const storedInputImageSchema = z.union([
  z.object({
    s3Key: z.string().min(1),
    /** Known when we stored the bytes ourselves; otherwise read from the object at run time. */
    mimeType: z.enum(INPUT_IMAGE_MIME_TYPES).optional(),
  }),
  z.object({ url: z.string().min(1) }),
]);
export type StoredInputImage = z.infer<typeof storedInputImageSchema>;

export const storedRequestSchema = z.object({
  prompt: z.string().min(1).max(10_000),
  tier: z.enum(TIERS),
  priority: z.number().int().min(1).max(10),
  size: z.enum(IMAGE_SIZES),
  aspectRatio: z.enum(ASPECT_RATIOS),
  inputImages: z.array(storedInputImageSchema).max(14),
  allowDowngrade: z.boolean(),
  idempotencyKey: z.string().max(200).optional(),
  metadata: metadataSchema.optional(),
  deadline: z.string().optional(),
  webhook: webhookSchema.optional(),
});
export type StoredRequest = z.infer<typeof storedRequestSchema>;

export const storedJobDataSchema = z.object({
  v: z.literal(STORED_JOB_VERSION),
  /** The tenant whose API key created the job; null when the API runs without keys. */
  tenant: z.string().nullable(),
  request: storedRequestSchema,
  createdAt: z.string(),
  promptSha256: z.string().length(64),
  /** Set when the job belongs to a batch (POST /v1/batches). */
  batchId: z.string().optional(),
  /** Set when the job is a variant run of an A/B experiment (POST /v1/experiments). */
  experiment: z.object({ id: z.string(), variant: z.string(), repeat: z.number().int().min(1) }).optional(),
});
export type StoredJobData = z.infer<typeof storedJobDataSchema>;

export const errorInfoSchema = z.object({
  code: z.enum(ERROR_CODES as [string, ...string[]]),
  message: z.string(),
  retryable: z.boolean(),
});
export type ErrorInfo = z.infer<typeof errorInfoSchema>;

export const routeInfoSchema = z.object({
  family: z.enum(MODEL_FAMILIES),
  model: z.string(),
  reason: z.string(),
});
export type RouteInfo = z.infer<typeof routeInfoSchema>;

/** One upstream call (or a decision that stood in for one, such as a requeue while models cooled down). */
export const historyEntrySchema = z.object({
  attempt: z.number().int().min(1),
  model: z.string().nullable(),
  family: z.enum(MODEL_FAMILIES).nullable(),
  /** `succeeded`, an error code, or `requeued` (waited for a cooldown without a call). */
  outcome: z.string(),
  latencyMs: z.number().min(0),
  at: z.string(),
  reason: z.string().optional(),
  costUsd: z.number().optional(),
  /** For RATE_LIMITED: the delay the provider asked for (RetryInfo.retryDelay), ms. */
  retryAfterMs: z.number().optional(),
  /** For `requeued`: consecutive requeues folded into this one entry. */
  count: z.number().int().min(1).optional(),
});
export type HistoryEntry = z.infer<typeof historyEntrySchema>;

export const jobProgressSchema = z.object({
  v: z.literal(1),
  startedAt: z.string().optional(),
  route: routeInfoSchema.optional(),
  history: z.array(historyEntrySchema),
  /** Requeues caused by 429 cooldowns (they do not consume attempts; bounded by RATE_LIMIT_MAX_REQUEUES). */
  rateLimitRequeues: z.number().int().min(0),
  /** Total spent on this job's calls so far, USD. */
  costUsd: z.number().min(0),
  /** Set when the job was cancelled (DELETE /v1/jobs/:id); the job ends as `canceled`. */
  canceledAt: z.string().optional(),
  /** Oldest history entries dropped to keep the record small (see MAX_HISTORY). */
  historyDropped: z.number().int().min(0).optional(),
  error: errorInfoSchema.optional(),
});
export type JobProgress = z.infer<typeof jobProgressSchema>;

/** History entries kept per job: enough for every attempt's calls, small enough for Redis (< 64 KB). */
export const MAX_HISTORY = 60;

/**
 * Append to a job's history. Consecutive requeues fold into one entry with a count, and past
 * MAX_HISTORY the oldest entries go (counted in historyDropped), so a job that waits out hundreds of
 * cooldowns still has a small record.
 */
export function appendHistory(progress: JobProgress, entry: HistoryEntry): void {
  const last = progress.history.at(-1);
  if (entry.outcome === 'requeued' && last?.outcome === 'requeued' && last.attempt === entry.attempt) {
    last.count = (last.count ?? 1) + 1;
    last.at = entry.at;
    if (entry.reason) last.reason = entry.reason;
    return;
  }
  progress.history.push(entry);
  const excess = progress.history.length - MAX_HISTORY;
  if (excess > 0) {
    progress.history.splice(0, excess);
    progress.historyDropped = (progress.historyDropped ?? 0) + excess;
  }
}

export function emptyProgress(): JobProgress {
  return { v: 1, history: [], rateLimitRequeues: 0, costUsd: 0 };
}

/** Read a BullMQ progress value; anything that is not ours (a number, an old shape) starts fresh. */
export function readProgress(raw: unknown): JobProgress {
  const parsed = jobProgressSchema.safeParse(raw);
  return parsed.success ? parsed.data : emptyProgress();
}

export const usageSchema = z.object({
  promptTokens: z.number().int().min(0),
  candidatesTokens: z.number().int().min(0),
  imageTokens: z.number().int().min(0),
  thoughtsTokens: z.number().int().min(0),
  totalTokens: z.number().int().min(0),
});
export type Usage = z.infer<typeof usageSchema>;

export const jobResultSchema = z.object({
  v: z.literal(1),
  key: z.string(),
  bytes: z.number().int().min(1),
  sha256: z.string().length(64),
  width: z.number().int().min(1),
  height: z.number().int().min(1),
  mimeType: z.string(),
  family: z.enum(MODEL_FAMILIES),
  model: z.string(),
  modelVersion: z.string().nullable(),
  responseId: z.string().nullable(),
  finishReason: z.string().nullable(),
  routingReason: z.string(),
  usage: usageSchema,
  costUsd: z.number().min(0),
  /** Cost of this job's calls in total, failed ones included. */
  totalCostUsd: z.number().min(0),
  attempts: z.number().int().min(1),
  upstreamLatencyMs: z.number().min(0),
  /** Set when the answer did not match what was asked (another model version); see issue 4 for actions. */
  degraded: z.string().optional(),
});
export type JobResult = z.infer<typeof jobResultSchema>;
