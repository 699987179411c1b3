/**
 * GeminiClient: one generateContent call per image, over undici `request()` with a dedicated Agent.
 *
 * Timeouts. An image generation may take the whole UPSTREAM_TIMEOUT_MS (360 s by default), longer than
 * undici's 300 s headers/body defaults, so the Agent and every request get headers/body timeouts a little
 * above the call's budget; the budget itself is enforced by our own deadline timer, which aborts the request
 * and surfaces as UPSTREAM_TIMEOUT.
 *
 * Cancellation. When the caller's `req.signal` aborts, `generate()` rejects with the signal's reason (an
 * AbortError DOMException unless the caller gave another reason), never with a PixelmillError: the worker
 * must tell "the job was cancelled / we are shutting down" from "the model was too slow".
 *
 * Secrets and memory. The request body (which may hold input images) and the API key are never logged.
 * The response is read as text, parsed once, and only the chosen image's bytes outlive the call.
 */
import { Agent, request, type Dispatcher } from 'undici';
import type { Config } from '../../config/env.js';
import { isPixelmillError, PixelmillError, toPixelmillError } from '../../errors/catalogue.js';
import { silentLogger, type Logger } from '../../logging/logger.js';
import { pixelSize } from '../../models/catalogue.js';
import { classifyErrorResponse } from './classify-error.js';
import { parseGenerateContentResponse } from './parse-response.js';
import { buildGenerateContentBody } from './request-body.js';
import { parseJsonKeepingLargeData } from './large-strings.js';
import { primaryApiKey } from '../../lanes/keys.js';
import type { GeneratedImage, GenerateImageRequest, ImageGenerator } from './types.js';

/** Largest body we read: a 4K PNG as base64 plus a thought signature of the same order, with room to spare. */
export const MAX_RESPONSE_BYTES = 128 * 1024 * 1024;
/** undici's socket timers sit this far above the call budget, so our deadline (clearer message) fires first. */
export const SOCKET_TIMEOUT_SLACK_MS = 5_000;

export interface GeminiClientOptions {
  /** e.g. https://generativelanguage.googleapis.com (no trailing /v1beta). */
  baseUrl: string;
  /** Sent as x-goog-api-key; an empty string sends no key (a local simulator needs none). */
  apiKey: string;
  /** UPSTREAM_TIMEOUT_MS: the longest call the Agent must allow. Each call's own budget is req.timeoutMs. */
  timeoutMs: number;
  /** Sockets per origin; near the worker concurrency. Unset = no limit (a call never queues for a socket). */
  connections?: number;
  /** Use this dispatcher instead of a dedicated Agent (not closed by close()). */
  dispatcher?: Dispatcher;
  now?: () => number;
  logger?: Logger;
}

/** The Agent options for a given upstream timeout; exported so tests can check them. */
export function geminiAgentOptions(timeoutMs: number, connections?: number): Agent.Options {
  const socketTimeoutMs = timeoutMs + SOCKET_TIMEOUT_SLACK_MS;
  return {
    connections: connections ?? null,
    headersTimeout: socketTimeoutMs,
    bodyTimeout: socketTimeoutMs,
    maxResponseSize: MAX_RESPONSE_BYTES,
  };
}

// undici codes that mean we built a bad request or used a closed client: our bug, not the upstream's.
const LOCAL_ERROR_CODES = new Set([
  'UND_ERR_INVALID_ARG', 'UND_ERR_INVALID_RETURN_VALUE', 'UND_ERR_NOT_SUPPORTED',
  'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH', 'UND_ERR_CLOSED', 'UND_ERR_DESTROYED',
]);
const TIMEOUT_ERROR_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT']);

function errorCodeOf(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e && typeof e === 'object' && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') return code;
  }
  return undefined;
}

function errorMessageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Bytes of an unread answer undici buffers before it stops reading the socket (its default is 64 KiB). */
const BODY_HIGH_WATER_MARK = 16 * 1024;

/** Where the call was when it failed: before the status line, reading a 2xx body, or reading an error body. */
type Stage = { kind: 'connect' } | { kind: 'body' } | { kind: 'error-body'; status: number };

export class GeminiClient implements ImageGenerator {
  private readonly baseUrl: string;
  private readonly apiKey: string;
  private readonly dispatcher: Dispatcher;
  private readonly ownsDispatcher: boolean;
  private readonly now: () => number;
  private readonly logger: Logger;
  private closed = false;

  constructor(opts: GeminiClientOptions) {
    this.baseUrl = opts.baseUrl.replace(/\/+$/, '');
    this.apiKey = opts.apiKey;
    this.ownsDispatcher = opts.dispatcher === undefined;
    this.dispatcher = opts.dispatcher ?? new Agent(geminiAgentOptions(opts.timeoutMs, opts.connections));
    this.now = opts.now ?? Date.now;
    this.logger = opts.logger ?? silentLogger();
  }

  /**
   * Generate one image. Rejects with a PixelmillError (see ImageGenerator) or, when req.signal aborted,
   * with req.signal.reason. Every PixelmillError from a started call carries details.latencyMs (wall time until the failure).
   */
  async generate(req: GenerateImageRequest): Promise<GeneratedImage> {
    if (this.closed) throw new PixelmillError('INTERNAL', 'GeminiClient.generate() called after close()');
    req.signal?.throwIfAborted();

    const modelId = req.modelId;
    const url = `${this.baseUrl}/v1beta/models/${encodeURIComponent(modelId)}:generateContent`;
    const socketTimeoutMs = req.timeoutMs + SOCKET_TIMEOUT_SLACK_MS;

    // Our own deadline and the caller's signal feed one controller. Hand-wired rather than AbortSignal.any
    // so the listener on a long-lived caller signal (worker shutdown) is removed after every call.
    const abort = new AbortController();
    let deadlinePassed = false;
    const timer = setTimeout(() => {
      deadlinePassed = true;
      abort.abort(new PixelmillError('UPSTREAM_TIMEOUT', `${modelId} did not answer within ${req.timeoutMs} ms`));
    }, req.timeoutMs);
    const onCallerAbort = (): void => abort.abort(req.signal?.reason);
    req.signal?.addEventListener('abort', onCallerAbort, { once: true });

    const started = this.now();
    let stage: Stage = { kind: 'connect' };
    let response: Dispatcher.ResponseData | undefined;
    let bodyDone = false;
    try {
      response = await request(url, {
        dispatcher: this.dispatcher,
        method: 'POST',
        headers: this.headers(req.timeoutMs, req.apiKey ?? this.apiKey),
        body: JSON.stringify(buildGenerateContentBody(req)),
        signal: abort.signal,
        headersTimeout: socketTimeoutMs,
        bodyTimeout: socketTimeoutMs,
        // An answer waiting at the worker's answer gate buffers this much before its socket is paused.
        highWaterMark: BODY_HIGH_WATER_MARK,
      });
      const status = response.statusCode;
      if (status < 200 || status > 299) {
        stage = { kind: 'error-body', status };
        const text = await response.body.text();
        bodyDone = true;
        throw classifyErrorResponse(status, text, modelId);
      }
      stage = { kind: 'body' };
      if (req.beforeBody) await req.beforeBody(abort.signal);
      const json = await readJson(response.body, modelId, req.beforeParse);
      bodyDone = true;
      const latencyMs = this.now() - started;
      const { width, height } = pixelSize(req.size, req.aspectRatio);
      const { declaredMimeType, ...image } = parseGenerateContentResponse(json, { width, height, modelId });
      if (declaredMimeType !== null && declaredMimeType !== image.mimeType) {
        this.logger.warn({ model: modelId, declaredMimeType, mimeType: image.mimeType }, 'gemini inlineData.mimeType differs from the image bytes; using the bytes');
      }
      this.logger.debug(
        { model: modelId, modelVersion: image.modelVersion, latencyMs, bytes: image.bytes.length, width: image.width,
          height: image.height, imageParts: image.imageParts, sizeMismatch: image.sizeMismatch },
        'gemini generateContent succeeded',
      );
      return { ...image, latencyMs };
    } catch (err) {
      const failure = this.failure(err, stage, modelId, req, deadlinePassed);
      if (isPixelmillError(failure)) {
        failure.details.latencyMs ??= this.now() - started;
        this.logger.debug({ model: modelId, code: failure.code, latencyMs: failure.details.latencyMs }, 'gemini generateContent failed');
      }
      throw failure;
    } finally {
      clearTimeout(timer);
      req.signal?.removeEventListener('abort', onCallerAbort);
      // Never leave a body unread: it would pin the socket until the body timeout.
      if (response && !bodyDone) response.body.destroy();
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // close() lets in-flight calls finish; callers abort them first (req.signal) for a fast shutdown.
    if (this.ownsDispatcher) await this.dispatcher.close();
  }

  private headers(timeoutMs: number, apiKey: string): Record<string, string> {
    const headers: Record<string, string> = {
      'content-type': 'application/json',
      // Tells the server our budget so it may stop work we will not wait for (js-genai sends it too).
      'x-server-timeout': String(Math.max(1, Math.ceil(timeoutMs / 1000))),
    };
    if (apiKey !== '') headers['x-goog-api-key'] = apiKey;
    return headers;
  }

  /** Map anything thrown during the call to what generate() rejects with. */
  private failure(err: unknown, stage: Stage, modelId: string, req: GenerateImageRequest, deadlinePassed: boolean): unknown {
    if (req.signal?.aborted) return req.signal.reason;
    const details = { stage: stage.kind };
    if (deadlinePassed) {
      return new PixelmillError('UPSTREAM_TIMEOUT', `${modelId} did not answer within ${req.timeoutMs} ms`, { cause: err, details: { ...details, timeoutMs: req.timeoutMs } });
    }
    if (isPixelmillError(err)) return err;
    const code = errorCodeOf(err);
    const what = `${code ?? 'error'}: ${errorMessageOf(err)}`;
    if (code !== undefined && TIMEOUT_ERROR_CODES.has(code)) {
      return new PixelmillError('UPSTREAM_TIMEOUT', `${modelId} timed out (${what})`, { cause: err, details: { ...details, errorCode: code } });
    }
    if (code === 'UND_ERR_RES_EXCEEDED_MAX_SIZE') {
      return new PixelmillError('BAD_RESPONSE', `${modelId} sent a body larger than ${MAX_RESPONSE_BYTES} bytes`, { cause: err, details: { ...details, errorCode: code } });
    }
    if (stage.kind === 'error-body') {
      // The status already says what happened; a broken error body adds nothing.
      const classified = classifyErrorResponse(stage.status, '', modelId);
      classified.details.errorCode = code;
      return classified;
    }
    if (stage.kind === 'body') {
      return new PixelmillError('BAD_RESPONSE', `${modelId} answered 200 but the body broke off (${what})`, { cause: err, details: { ...details, errorCode: code } });
    }
    if (code !== undefined && LOCAL_ERROR_CODES.has(code)) return toPixelmillError(err);
    if (code !== undefined) {
      return new PixelmillError('UPSTREAM_UNAVAILABLE', `could not reach ${this.baseUrl} for ${modelId} (${what})`, { cause: err, details: { ...details, errorCode: code } });
    }
    return toPixelmillError(err);
  }
}

/** Read a 2xx body and parse it; the text is dropped as soon as this returns. */
async function readJson(body: Dispatcher.ResponseData['body'], modelId: string, beforeParse?: (chars: number) => Promise<void>): Promise<unknown> {
  // The chunks are joined and decoded after beforeParse, not as the body ends: for a 4K answer that
  // is milliseconds of work, and several answers ending together must not do it in one turn.
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    length += chunk.length;
  }
  if (beforeParse) await beforeParse(length);
  const text = Buffer.concat(chunks, length).toString('utf8');
  chunks.length = 0;
  try {
    return parseJsonKeepingLargeData(text);
  } catch (err) {
    throw new PixelmillError('BAD_RESPONSE', `${modelId} answered 200 with a body that is not JSON (${text.length} characters: ${errorMessageOf(err)})`, { cause: err });
  }
}

/** The production client from configuration. */
export function createGeminiClient(
  config: Config,
  opts: { connections?: number; dispatcher?: Dispatcher; logger?: Logger; now?: () => number } = {},
): GeminiClient {
  const options: GeminiClientOptions = {
    baseUrl: config.GEMINI_BASE_URL,
    // GEMINI_API_KEY may list several keys (one lane each); calls without a lane use the first.
    apiKey: primaryApiKey(config),
    timeoutMs: config.UPSTREAM_TIMEOUT_MS,
  };
  const connections = opts.connections ?? config.WORKER_CONCURRENCY;
  if (connections !== undefined) options.connections = connections;
  if (opts.dispatcher) options.dispatcher = opts.dispatcher;
  if (opts.logger) options.logger = opts.logger;
  if (opts.now) options.now = opts.now;
  return new GeminiClient(options);
}
