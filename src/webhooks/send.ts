/**
 * One HTTP attempt of a webhook delivery and what its answer means (Standard Webhooks):
 *
 *   2xx                               delivered
 *   410 Gone                          the endpoint is disabled (no retry; later events are not sent)
 *   429, 408, 5xx, timeouts,          retried on WEBHOOK_RETRY_SCHEDULE, honouring Retry-After
 *   connection and DNS errors
 *   3xx                               failed: redirects are never followed (a redirect could point
 *                                     anywhere, and the receiver's URL is its own to fix)
 *   other 4xx, a refused address      failed at once (dead letter, replayable): retrying cannot help
 *
 * The request goes through the SSRF-guarded dispatcher, with WEBHOOK_TIMEOUT_MS for the whole exchange.
 */
import { request, type Dispatcher } from 'undici';
import { ssrfRefusal } from '../net/ssrf-guard.js';
import type { SignedHeaders } from './sign.js';

export type SendOutcome =
  | { kind: 'delivered'; statusCode: number }
  | { kind: 'gone'; statusCode: number }
  | { kind: 'retry'; statusCode: number | null; error: string; retryAfterMs?: number }
  | { kind: 'failed'; statusCode: number | null; error: string };

/** Retry-After beyond this is clipped (a receiver cannot park a delivery for months). */
export const RETRY_AFTER_CAP_MS = 24 * 3_600_000;
/** How much of a failing receiver's answer we keep in lastError. */
const ERROR_BODY_CHARS = 200;

export interface SendOptions {
  url: string;
  body: string;
  headers: SignedHeaders;
  dispatcher: Dispatcher;
  timeoutMs: number;
  now: () => number;
}

export async function sendWebhook(opts: SendOptions): Promise<SendOutcome> {
  let res: Dispatcher.ResponseData;
  const timeout = AbortSignal.timeout(opts.timeoutMs);
  try {
    res = await request(opts.url, {
      dispatcher: opts.dispatcher,
      method: 'POST',
      headers: { 'content-type': 'application/json', 'user-agent': 'pixelmill-webhooks/1', ...opts.headers },
      body: opts.body,
      signal: timeout,
      headersTimeout: opts.timeoutMs,
      bodyTimeout: opts.timeoutMs,
    });
  } catch (err) {
    const refused = ssrfRefusal(err);
    if (refused) return { kind: 'failed', statusCode: null, error: `refused: ${refused.message}` };
    if (timeout.aborted) return { kind: 'retry', statusCode: null, error: `no answer within WEBHOOK_TIMEOUT_MS (${opts.timeoutMs} ms)` };
    return { kind: 'retry', statusCode: null, error: `connection failed: ${describeError(err)}` };
  }

  const status = res.statusCode;
  const answer = await readSome(res.body, timeout);
  if (status >= 200 && status < 300) return { kind: 'delivered', statusCode: status };
  if (status === 410) return { kind: 'gone', statusCode: status };
  const said = answer ? `: ${answer}` : '';
  if (status >= 300 && status < 400) {
    return { kind: 'failed', statusCode: status, error: `HTTP ${status}: redirects are not followed; point the webhook at the final URL` };
  }
  if (status === 429 || status === 408 || status >= 500) {
    const retryAfterMs = parseRetryAfter(res.headers['retry-after'], opts.now());
    return { kind: 'retry', statusCode: status, error: `HTTP ${status}${said}`, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) };
  }
  return { kind: 'failed', statusCode: status, error: `HTTP ${status}${said}` };
}

/** Retry-After as delay-seconds or an HTTP date; undefined when absent or unreadable. */
export function parseRetryAfter(header: string | string[] | undefined, nowMs: number): number | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  if (!value) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Math.min(RETRY_AFTER_CAP_MS, Number(trimmed) * 1000);
  const at = Date.parse(trimmed);
  if (Number.isNaN(at)) return undefined;
  return Math.min(RETRY_AFTER_CAP_MS, Math.max(0, at - nowMs));
}

/** The start of the answer's body, as one line (for lastError); never throws. */
async function readSome(body: Dispatcher.ResponseData['body'], signal: AbortSignal): Promise<string> {
  let text = '';
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      if (signal.aborted) break;
      text += chunk.toString('utf8');
      if (text.length >= ERROR_BODY_CHARS) break;
    }
  } catch {
    // the answer's status is what counts
  } finally {
    body.on('error', () => {});
    body.destroy();
  }
  return text.replace(/\s+/g, ' ').trim().slice(0, ERROR_BODY_CHARS);
}

function describeError(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown; cause?: { code?: unknown; message?: unknown } };
  const code = typeof e.cause?.code === 'string' ? e.cause.code : typeof e.code === 'string' ? e.code : undefined;
  const message = typeof e.cause?.message === 'string' ? e.cause.message : typeof e.message === 'string' ? e.message : String(err);
  return code && !message.includes(code) ? `${code} ${message}` : message;
}
