/**
 * Input images by URL: fetched by the worker through the SSRF guard, with a timeout, a size limit
 * (INPUT_URL_MAX_BYTES) and the type checked by magic bytes.
 *
 * - Every connection goes through `createGuardedDispatcher` (ssrf-guard.ts): a URL whose host resolves
 *   to a refused address fails with INPUT_URL_REFUSED (not retryable).
 * - Redirects: followed, at most MAX_REDIRECTS hops, http(s) only; each hop opens its connection
 *   through the same guard, so a public URL redirecting to 169.254.169.254 is refused like a direct one.
 * - INPUT_URL_TIMEOUT_MS bounds the whole fetch (every hop and the body), not each read.
 * - The body is streamed and the stream aborted as soon as it passes INPUT_URL_MAX_BYTES (a lying or
 *   missing Content-Length cannot make us buffer more).
 * - The type comes from the first bytes (PNG, JPEG, WebP), never from Content-Type.
 * A failure that may pass on a retry (timeout, 5xx, 408/429, DNS, connection) is INPUT_FETCH_FAILED; one that
 * never will (other 4xx, size, type, redirect rules) is INPUT_IMAGE_UNUSABLE; both name the URL
 * and the rule. Only INPUT_FETCH_FAILED is retried (with the job's normal backoff).
 */
import { request, type Dispatcher } from 'undici';
import type { Config } from '../config/env.js';
import { PixelmillError } from '../errors/catalogue.js';
import { createGuardedDispatcher, ssrfRefusal } from './ssrf-guard.js';

export type InputImageFetcher = (url: string, signal: AbortSignal) => Promise<{ mimeType: string; data: Buffer }>;

export const MAX_REDIRECTS = 3;

export interface InputImageFetcherOptions {
  /** Replaces the guarded dispatcher (tests only: production always fetches through the guard). */
  dispatcher?: Dispatcher;
}

export function createInputImageFetcher(config: Config, opts: InputImageFetcherOptions = {}): InputImageFetcher {
  const dispatcher = opts.dispatcher ?? createGuardedDispatcher(config, { connections: 8 });
  const maxBytes = config.INPUT_URL_MAX_BYTES;

  return async (url, signal) => {
    const timeout = AbortSignal.timeout(config.INPUT_URL_TIMEOUT_MS);
    const combined = AbortSignal.any([signal, timeout]);
    // Transient problems (timeouts, 5xx, connections) may pass on a retry; the rest never will.
    const failed = (rule: string, cause?: unknown) =>
      new PixelmillError('INPUT_FETCH_FAILED', `input image ${shown(url)}: ${rule}`, { cause, details: { url: shown(url) } });
    const unusable = (rule: string) =>
      new PixelmillError('INPUT_IMAGE_UNUSABLE', `input image ${shown(url)}: ${rule}`, { details: { url: shown(url) } });

    let current = url;
    for (let hop = 0; ; hop++) {
      let res: Dispatcher.ResponseData;
      try {
        res = await request(current, {
          dispatcher, method: 'GET', signal: combined,
          headers: { accept: 'image/png, image/jpeg, image/webp', 'user-agent': 'pixelmill-input-fetch/1' },
          headersTimeout: config.INPUT_URL_TIMEOUT_MS, bodyTimeout: config.INPUT_URL_TIMEOUT_MS,
        });
      } catch (err) {
        const refused = ssrfRefusal(err);
        if (refused) {
          throw new PixelmillError('INPUT_URL_REFUSED', `input image ${shown(current)}: ${refused.message}`, { cause: err, details: { url: shown(current) } });
        }
        if (signal.aborted) throw err; // cancelled or shutting down: the processor decides
        if (timeout.aborted) throw failed(`no answer within INPUT_URL_TIMEOUT_MS (${config.INPUT_URL_TIMEOUT_MS} ms)`, err);
        throw failed(`the request failed (${describeError(err)})`, err);
      }

      if (res.statusCode >= 300 && res.statusCode < 400) {
        await res.body.dump().catch(() => {});
        const location = res.headers['location'];
        const target = typeof location === 'string' ? safeUrl(location, current) : undefined;
        if (!target) throw unusable(`answered HTTP ${res.statusCode} without a usable Location`);
        if (hop >= MAX_REDIRECTS) throw unusable(`more than ${MAX_REDIRECTS} redirects`);
        if (!/^https?:$/.test(target.protocol)) throw unusable(`redirects to a ${target.protocol} URL (only http and https are fetched)`);
        current = target.href;
        continue;
      }
      if (res.statusCode < 200 || res.statusCode >= 300) {
        await res.body.dump().catch(() => {});
        const rule = `answered HTTP ${res.statusCode} (a 2xx with the image is expected)`;
        throw res.statusCode >= 500 || res.statusCode === 408 || res.statusCode === 429 ? failed(rule) : unusable(rule);
      }
      const declared = Number(res.headers['content-length']);
      if (Number.isFinite(declared) && declared > maxBytes) {
        discard(res.body);
        throw unusable(`is ${declared} bytes, over INPUT_URL_MAX_BYTES (${maxBytes})`);
      }

      const chunks: Buffer[] = [];
      let total = 0;
      try {
        for await (const chunk of res.body as AsyncIterable<Buffer>) {
          total += chunk.length;
          if (total > maxBytes) {
            discard(res.body);
            throw unusable(`is over INPUT_URL_MAX_BYTES (${maxBytes} bytes)`);
          }
          chunks.push(chunk);
        }
      } catch (err) {
        if (err instanceof PixelmillError) throw err;
        if (signal.aborted) throw err;
        if (timeout.aborted) throw failed(`not fully read within INPUT_URL_TIMEOUT_MS (${config.INPUT_URL_TIMEOUT_MS} ms)`, err);
        throw failed(`the body could not be read (${describeError(err)})`, err);
      }
      const data = Buffer.concat(chunks, total);
      const mimeType = sniffImageType(data);
      if (!mimeType) throw unusable('is not a PNG, JPEG or WebP image (checked by its first bytes)');
      return { mimeType, data };
    }
  };
}

/** PNG, JPEG or WebP from the file signature; undefined for anything else. */
export function sniffImageType(data: Buffer): 'image/png' | 'image/jpeg' | 'image/webp' | undefined {
  if (data.length >= 8 && data.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) return 'image/png';
  if (data.length >= 3 && data[0] === 0xff && data[1] === 0xd8 && data[2] === 0xff) return 'image/jpeg';
  if (data.length >= 12 && data.toString('latin1', 0, 4) === 'RIFF' && data.toString('latin1', 8, 12) === 'WEBP') return 'image/webp';
  return undefined;
}

/** Drop a body we will not read (its abort error has nobody to report to). */
function discard(body: Dispatcher.ResponseData['body']): void {
  body.on('error', () => {});
  body.destroy();
}

function safeUrl(location: string, base: string): URL | undefined {
  try {
    return new URL(location, base);
  } catch {
    return undefined;
  }
}

/** The URL without query or credentials (a presigned query string is a secret). */
function shown(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return url.slice(0, 200);
  }
}

function describeError(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown; cause?: { code?: unknown; message?: unknown } };
  const code = typeof e.code === 'string' ? e.code : typeof e.cause?.code === 'string' ? e.cause.code : undefined;
  const message = typeof e.message === 'string' ? e.message : String(err);
  return code && !message.includes(code) ? `${code}: ${message}` : message;
}
