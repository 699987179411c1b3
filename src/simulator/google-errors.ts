/**
 * Error bodies in Google's exact envelope (reference §3): `{"error": {code, message, status, details?}}`.
 * Messages are the real ones where they are known; the few the references do not record (unsupported
 * image size or ratio) are worded in the same style.
 */

export interface GoogleErrorBody {
  error: { code: number; message: string; status: string; details?: Record<string, unknown>[] };
}

export interface SimError {
  readonly status: number;
  readonly body: GoogleErrorBody;
}

export function googleError(code: number, status: string, message: string, details?: Record<string, unknown>[]): SimError {
  return { status: code, body: { error: { code, message, status, ...(details ? { details } : {}) } } };
}

const API_KEY_MESSAGE = 'API key not valid. Please pass a valid API key.';

export function apiKeyInvalid(): SimError {
  return googleError(400, 'INVALID_ARGUMENT', API_KEY_MESSAGE, [
    {
      '@type': 'type.googleapis.com/google.rpc.ErrorInfo',
      reason: 'API_KEY_INVALID',
      domain: 'googleapis.com',
      metadata: { service: 'generativelanguage.googleapis.com' },
    },
    { '@type': 'type.googleapis.com/google.rpc.LocalizedMessage', locale: 'en-US', message: API_KEY_MESSAGE },
  ]);
}

/** One BadRequest field violation per problem; the message joins their descriptions like Google does. */
export function badRequest(violations: readonly { field?: string; description: string }[]): SimError {
  return googleError(400, 'INVALID_ARGUMENT', violations.map((v) => v.description).join('\n'), [
    {
      '@type': 'type.googleapis.com/google.rpc.BadRequest',
      fieldViolations: violations.map((v) => (v.field ? { field: v.field, description: v.description } : { description: v.description })),
    },
  ]);
}

export function invalidJson(reason: string): SimError {
  return badRequest([{ description: `Invalid JSON payload received. ${reason}` }]);
}

export function invalidArgument(message: string): SimError {
  return googleError(400, 'INVALID_ARGUMENT', message);
}

export function payloadTooLarge(limitBytes: number): SimError {
  return invalidArgument(`Request payload size exceeds the limit: ${limitBytes} bytes.`);
}

export function modelNotFound(modelId: string, apiVersion: string): SimError {
  return googleError(
    404,
    'NOT_FOUND',
    `models/${modelId} is not found for API version ${apiVersion}, or is not supported for generateContent. ` +
      'Call ListModels to see the list of available models and their supported methods.',
  );
}

export function pathNotFound(): SimError {
  return googleError(404, 'NOT_FOUND', 'Requested entity was not found.');
}

export function methodNotAllowed(): SimError {
  return googleError(405, 'METHOD_NOT_ALLOWED', 'Method not allowed.');
}

const RATE_LIMITS_URL = 'https://ai.google.dev/gemini-api/docs/rate-limits';

export interface QuotaViolation {
  scope: 'minute' | 'day';
  modelId: string;
  /** The limit as shown in quotaValue and the message. */
  limit: number;
  retryAfterMs: number;
  /** Go-style text and protobuf Duration of the delay, prepared by the caller. */
  retryText: string;
  retryDelay: string;
}

export function quotaExceeded(v: QuotaViolation): SimError {
  const metric =
    v.scope === 'minute'
      ? 'generativelanguage.googleapis.com/generate_requests_per_model'
      : 'generativelanguage.googleapis.com/generate_requests_per_model_per_day';
  const quotaId = v.scope === 'minute' ? 'GenerateRequestsPerMinutePerProjectPerModel' : 'GenerateRequestsPerDayPerProjectPerModel';
  const message =
    'You exceeded your current quota, please check your plan and billing details. ' +
    `For more information on this error, head to: ${RATE_LIMITS_URL}. ` +
    'To monitor your current usage, head to: https://ai.dev/rate-limit. \n' +
    `* Quota exceeded for metric: ${metric}, limit: ${v.limit}, model: ${v.modelId}\n` +
    `Please retry in ${v.retryText}.`;
  return googleError(429, 'RESOURCE_EXHAUSTED', message, [
    {
      '@type': 'type.googleapis.com/google.rpc.Help',
      links: [{ description: 'Learn more about Gemini API quotas', url: RATE_LIMITS_URL }],
    },
    {
      '@type': 'type.googleapis.com/google.rpc.QuotaFailure',
      violations: [
        {
          quotaMetric: metric,
          quotaId,
          quotaDimensions: { location: 'global', model: v.modelId },
          quotaValue: String(v.limit),
        },
      ],
    },
    { '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay: v.retryDelay },
  ]);
}

/** The older, detail-less 429 (no QuotaFailure, no RetryInfo). */
export function resourceExhaustedBare(): SimError {
  return googleError(429, 'RESOURCE_EXHAUSTED', 'Resource has been exhausted (e.g. check quota).');
}

export function internalError(): SimError {
  return googleError(
    500,
    'INTERNAL',
    'An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting',
  );
}

export function overloaded(): SimError {
  return googleError(503, 'UNAVAILABLE', 'The model is overloaded. Please try again later.');
}

export function deadlineExceeded(): SimError {
  return googleError(504, 'DEADLINE_EXCEEDED', 'Deadline expired before operation could complete.');
}
