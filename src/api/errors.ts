/**
 * Every error the HTTP API answers has one shape: `{"error": {"code", "message", "retryable", "issues"?}}`,
 * with a code from the catalogue and a message that ends with what to do.
 */
import { PixelmillError, isPixelmillError } from '../errors/catalogue.js';
import type { FieldIssue } from '../jobs/request.js';

export interface ApiErrorBody {
  error: {
    code: string;
    message: string;
    retryable: boolean;
    issues?: FieldIssue[];
  };
}

export interface ApiError {
  status: number;
  body: ApiErrorBody;
  headers: Record<string, string>;
  /** The error as pixelmill sees it (for the log line). */
  error: PixelmillError;
}

/** Seconds a client should wait before retrying after a 503 (Redis or S3 unreachable). */
export const RETRY_AFTER_SECONDS = 5;

interface FastifyLikeError {
  code?: unknown;
  statusCode?: unknown;
  message?: unknown;
}

/**
 * Turn anything a route or fastify itself threw into the API's answer. `bodyLimitBytes` is only
 * used to word the 413 message.
 */
export function toApiError(err: unknown, bodyLimitBytes: number): ApiError {
  const { error, status } = classify(err, bodyLimitBytes);
  const issues = error.details.issues as FieldIssue[] | undefined;
  const headers: Record<string, string> = {};
  if (error.code === 'QUEUE_UNAVAILABLE' || error.code === 'STORAGE_UNAVAILABLE') {
    headers['retry-after'] = String(RETRY_AFTER_SECONDS);
  }
  if (error.code === 'UNAUTHORIZED') headers['www-authenticate'] = 'Bearer';
  return {
    status,
    headers,
    error,
    body: {
      error: {
        code: error.code,
        message: error.userMessage,
        retryable: error.retryable,
        ...(Array.isArray(issues) && issues.length > 0 ? { issues } : {}),
      },
    },
  };
}

function classify(err: unknown, bodyLimitBytes: number): { error: PixelmillError; status: number } {
  if (isPixelmillError(err)) return { error: err, status: err.spec.httpStatus };
  const e = (typeof err === 'object' && err !== null ? err : {}) as FastifyLikeError;
  const code = typeof e.code === 'string' ? e.code : '';
  const statusCode = typeof e.statusCode === 'number' ? e.statusCode : 500;
  const message = typeof e.message === 'string' ? e.message : String(err);

  if (code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
    const error = new PixelmillError('PAYLOAD_TOO_LARGE', `The request body is larger than API_BODY_LIMIT_BYTES (${bodyLimitBytes} bytes)`, { cause: err });
    return { error, status: 413 };
  }
  if (code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
    const error = bodyError('Content-Type must be application/json', err);
    return { error, status: 415 };
  }
  if (code === 'FST_ERR_CTP_INVALID_JSON_BODY' || code === 'FST_ERR_CTP_EMPTY_JSON_BODY') {
    return { error: bodyError('the body must be a JSON object', err), status: 400 };
  }
  if (statusCode >= 400 && statusCode < 500) {
    // Anything else fastify rejects before our code runs (bad URL, bad Content-Length, ...).
    return { error: bodyError(message, err), status: 400 };
  }
  return { error: new PixelmillError('INTERNAL', message, { cause: err }), status: 500 };
}

function bodyError(message: string, cause: unknown): PixelmillError {
  return new PixelmillError('INVALID_REQUEST', `Invalid request: ${message}`, {
    cause,
    details: { issues: [{ path: '(body)', message }] },
  });
}
