/**
 * The contract between the worker and an image model provider. The worker depends on this interface
 * only; `GeminiClient` (client.ts) implements it over the generateContent wire format.
 */
import type { AspectRatio, ImageSize } from '../../models/catalogue.js';
import type { Usage } from '../../jobs/record.js';

export interface GenerateImageRequest {
  /** The concrete model id, e.g. gemini-3.1-flash-image. */
  modelId: string;
  prompt: string;
  size: ImageSize;
  aspectRatio: AspectRatio;
  /** Reference images for editing, already read from storage. */
  inputImages: { mimeType: string; data: Buffer }[];
  /** Overall budget of this call in ms (min of UPSTREAM_TIMEOUT_MS and the job's deadline). */
  timeoutMs: number;
  /** Aborts the call (job cancelled, worker shutting down). */
  signal?: AbortSignal;
  /** The API key for this call (the lane's key, see src/lanes); overrides the client's own. */
  apiKey?: string;
  /**
   * Awaited once the answer is a 2xx, before its body is read (the worker's answer gate,
   * src/worker/answer-gate.ts). The signal is the call's own: its deadline and the caller's abort.
   */
  beforeBody?: (signal: AbortSignal) => Promise<void>;
  /**
   * Awaited between reading a 2xx body and parsing it (JSON and the base64 image: milliseconds of
   * CPU per answer, in proportion to its length in characters): the worker's TurnPacer, so answers
   * landing together are parsed a few per turn.
   */
  beforeParse?: (chars: number) => Promise<void>;
}

export type OutputMimeType = 'image/jpeg' | 'image/png' | 'image/webp';

export interface GeneratedImage {
  bytes: Buffer;
  /** From the image header (magic bytes), checked against the response's inlineData.mimeType. */
  mimeType: OutputMimeType;
  width: number;
  height: number;
  modelVersion: string | null;
  responseId: string | null;
  finishReason: string | null;
  usage: Usage;
  /** Wall time of the HTTP call, ms. */
  latencyMs: number;
  /** Non-thought images in the answer (Nano Banana 2 may send a 1K default beside the requested size). */
  imageParts: number;
  /** True when no image matched the requested pixel size and the last one was taken. */
  sizeMismatch: boolean;
}

/**
 * Generates one image or throws a PixelmillError with one of the upstream codes: RATE_LIMITED
 * (retryAfterMs set; details.quotaScope 'minute' | 'day' | 'unknown', details.quotaId, details.requestsPerMinute
 * when the body announced the per-minute request quota),
 * UPSTREAM_TIMEOUT, UPSTREAM_UNAVAILABLE, MODEL_NOT_FOUND, INVALID_REQUEST, UPSTREAM_AUTH,
 * CONTENT_BLOCKED, NO_IMAGE, BAD_RESPONSE. Errors carry `details.usage` when the body had usageMetadata.
 */
export interface ImageGenerator {
  generate(req: GenerateImageRequest): Promise<GeneratedImage>;
  close(): Promise<void>;
}
