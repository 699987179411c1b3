/**
 * The error catalogue: every failure a user can see carries one of these stable codes.
 *
 * Each entry says what the worker does with it:
 * - `retryable`: the job may be tried again (by a requeue or a later attempt);
 * - `consumesAttempt`: whether that retry counts against MAX_ATTEMPTS (a 429 never does: the
 *   upstream told us when to come back, the job did nothing wrong);
 * - `mayTryFallback`: whether the job may move to the tier's other model at once;
 * - `httpStatus`: the status the HTTP API answers with when this error ends a request;
 * - `hint`: what the user should do, appended to every message.
 *
 * Codes are API: never rename one; add new ones instead. Documented in README.md ("Error codes").
 */

export interface ErrorSpec {
  readonly retryable: boolean;
  readonly consumesAttempt: boolean;
  readonly mayTryFallback: boolean;
  readonly httpStatus: number;
  readonly hint: string;
}

export const ERROR_CATALOGUE = {
  // --- Outcomes of an upstream call -------------------------------------------------------------
  RATE_LIMITED: {
    retryable: true, consumesAttempt: false, mayTryFallback: true, httpStatus: 429,
    hint: 'The model quota is exhausted; the job waits for the delay the provider gave and retries by itself.',
  },
  UPSTREAM_TIMEOUT: {
    retryable: true, consumesAttempt: true, mayTryFallback: true, httpStatus: 504,
    hint: 'The model did not answer within UPSTREAM_TIMEOUT_MS; the job is retried with backoff.',
  },
  UPSTREAM_UNAVAILABLE: {
    retryable: true, consumesAttempt: true, mayTryFallback: true, httpStatus: 503,
    hint: 'The provider answered 5xx (overloaded or down); the job is retried with backoff.',
  },
  MODEL_NOT_FOUND: {
    retryable: true, consumesAttempt: false, mayTryFallback: true, httpStatus: 502,
    hint: 'The model id is retired or misspelled; add a current id to MODEL_FAST / MODEL_PRO.',
  },
  INVALID_REQUEST: {
    retryable: false, consumesAttempt: true, mayTryFallback: false, httpStatus: 400,
    hint: 'Fix the field named in the message and submit again.',
  },
  UPSTREAM_AUTH: {
    retryable: false, consumesAttempt: true, mayTryFallback: false, httpStatus: 502,
    hint: 'The provider refused the API key (401/403); check GEMINI_API_KEY and that the API is enabled for its project.',
  },
  CONTENT_BLOCKED: {
    retryable: false, consumesAttempt: true, mayTryFallback: true, httpStatus: 422,
    hint: 'The provider refused the prompt or the image for safety reasons; rephrase the prompt.',
  },
  NO_IMAGE: {
    retryable: true, consumesAttempt: true, mayTryFallback: false, httpStatus: 502,
    hint: 'The model answered without an image; it was retried once. Rephrase the prompt to ask for an image explicitly.',
  },
  BAD_RESPONSE: {
    retryable: true, consumesAttempt: true, mayTryFallback: true, httpStatus: 502,
    hint: 'The provider sent a body that could not be read (truncated or undecodable); the job is retried with backoff.',
  },
  DEADLINE_EXCEEDED: {
    retryable: false, consumesAttempt: true, mayTryFallback: false, httpStatus: 504,
    hint: 'The job passed its deadline before an image was made; submit again with a later deadline.',
  },
  STORAGE_FAILED: {
    retryable: true, consumesAttempt: true, mayTryFallback: false, httpStatus: 503,
    hint: 'Writing to or reading from object storage failed; check S3_* settings and that the bucket exists.',
  },
  NO_MODEL_AVAILABLE: {
    retryable: false, consumesAttempt: true, mayTryFallback: false, httpStatus: 503,
    hint: 'Every model id the tier may use is retired; set current ids in MODEL_FAST / MODEL_PRO.',
  },
  INPUT_URL_REFUSED: {
    retryable: false, consumesAttempt: true, mayTryFallback: false, httpStatus: 400,
    hint: 'The URL resolves to a loopback, private, link-local or metadata address, which is refused; use a public URL (or allow the range in WEBHOOK_ALLOWED_CIDRS).',
  },
  INPUT_FETCH_FAILED: {
    retryable: true, consumesAttempt: true, mayTryFallback: false, httpStatus: 502,
    hint: 'Fetching an input image failed in a way that may pass (timeout, 5xx, connection); the job is retried with backoff.',
  },
  INPUT_IMAGE_UNUSABLE: {
    retryable: false, consumesAttempt: true, mayTryFallback: false, httpStatus: 422,
    hint: 'The input image URL answered 4xx, redirected badly, is over INPUT_URL_MAX_BYTES or is not a PNG/JPEG/WebP; fix the URL and submit again.',
  },
  CANCELED: {
    retryable: false, consumesAttempt: false, mayTryFallback: false, httpStatus: 409,
    hint: 'The job was cancelled on request; submit it again to generate the image.',
  },
  INTERNAL: {
    retryable: true, consumesAttempt: true, mayTryFallback: false, httpStatus: 500,
    hint: 'An unexpected error; it is logged with the job id. Report it if it repeats.',
  },

  // --- Answers of the HTTP API -------------------------------------------------------------------
  UNAUTHORIZED: {
    retryable: false, consumesAttempt: false, mayTryFallback: false, httpStatus: 401,
    hint: 'Send Authorization: Bearer <key>: a key from API_KEYS for /v1, METRICS_TOKEN for /metrics.',
  },
  NOT_FOUND: {
    retryable: false, consumesAttempt: false, mayTryFallback: false, httpStatus: 404,
    hint: 'Check the id; finished jobs are kept for JOB_RETENTION.',
  },
  PAYLOAD_TOO_LARGE: {
    retryable: false, consumesAttempt: false, mayTryFallback: false, httpStatus: 413,
    hint: 'Send smaller input images, or put them in the bucket and pass {s3Key}.',
  },
  IDEMPOTENCY_CONFLICT: {
    retryable: false, consumesAttempt: false, mayTryFallback: false, httpStatus: 409,
    hint: 'This idempotencyKey was used with a different request; use a new key for a new request.',
  },
  QUEUE_UNAVAILABLE: {
    retryable: true, consumesAttempt: false, mayTryFallback: false, httpStatus: 503,
    hint: 'Redis is unreachable, so nothing was stored; retry the request (with the same idempotencyKey).',
  },
  STORAGE_UNAVAILABLE: {
    retryable: true, consumesAttempt: false, mayTryFallback: false, httpStatus: 503,
    hint: 'Object storage is unreachable, so nothing was stored; retry the request.',
  },
  BATCH_TOO_LARGE: {
    retryable: false, consumesAttempt: false, mayTryFallback: false, httpStatus: 413,
    hint: 'Split the batch: at most 10000 jobs as JSON or 100000 lines as NDJSON (Content-Type: application/x-ndjson) per request.',
  },
  BATCH_STORING: {
    retryable: true, consumesAttempt: false, mayTryFallback: false, httpStatus: 409,
    hint: 'The batch is still being stored; retry in a moment.',
  },
  BATCH_PARTIALLY_STORED: {
    retryable: true, consumesAttempt: false, mayTryFallback: false, httpStatus: 503,
    hint: 'Some of the batch stayed stored and could not be removed; DELETE /v1/batches/{id} cancels them, then submit the batch again.',
  },
  NOT_CANCELABLE: {
    retryable: false, consumesAttempt: false, mayTryFallback: false, httpStatus: 409,
    hint: 'The job already finished (succeeded or failed); only queued, retrying or running jobs can be cancelled.',
  },

  // --- Output validation and budgets (issue 4 §3–4) ----------------------------------------------
  DEGRADED: {
    retryable: true, consumesAttempt: true, mayTryFallback: true, httpStatus: 502,
    hint: 'The model answered 200 with an image that is not what was asked (another MIME type, pixel size or model version); depending on DEGRADED_ACTION_<TIER> it was kept and flagged, or retried (on the other model where the tier allows).',
  },
  BUDGET_EXCEEDED: {
    retryable: false, consumesAttempt: true, mayTryFallback: false, httpStatus: 402,
    hint: 'The next call would pass the batch\'s maxCostUsd (or TENANT_DAILY_BUDGET_USD for today, UTC); raise the budget, or set allowBudgetDowngrade on the batch to finish on Nano Banana 2.',
  },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERROR_CATALOGUE;
export const ERROR_CODES = Object.keys(ERROR_CATALOGUE) as ErrorCode[];

export interface PixelmillErrorOptions {
  cause?: unknown;
  /** Structured facts for logs and the job record (never secrets, never image bytes). */
  details?: Record<string, unknown>;
  /** For RATE_LIMITED: how long the provider asked us to wait. */
  retryAfterMs?: number;
}

/** The one error class of the project. Detect it by `code`, not only by instanceof (modules may be duplicated). */
export class PixelmillError extends Error {
  override readonly name = 'PixelmillError';
  readonly code: ErrorCode;
  readonly details: Record<string, unknown>;
  readonly retryAfterMs: number | undefined;

  constructor(code: ErrorCode, message: string, options: PixelmillErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options.details ?? {};
    this.retryAfterMs = options.retryAfterMs;
  }

  get spec(): ErrorSpec {
    return ERROR_CATALOGUE[this.code];
  }

  get retryable(): boolean {
    return this.spec.retryable;
  }

  /** The message with its hint: what happened, then what to do. */
  get userMessage(): string {
    return `${this.message}. ${this.spec.hint}`;
  }

  toJSON(): { code: ErrorCode; message: string; retryable: boolean } {
    return { code: this.code, message: this.userMessage, retryable: this.retryable };
  }
}

export function isPixelmillError(err: unknown): err is PixelmillError {
  return (
    typeof err === 'object' && err !== null && (err as { name?: unknown }).name === 'PixelmillError' &&
    typeof (err as { code?: unknown }).code === 'string' && (err as { code: string }).code in ERROR_CATALOGUE
  );
}

/** Wrap anything thrown into a PixelmillError (unknown errors become INTERNAL). */
export function toPixelmillError(err: unknown): PixelmillError {
  if (isPixelmillError(err)) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new PixelmillError('INTERNAL', message, { cause: err });
}
