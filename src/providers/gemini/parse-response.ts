/**
 * Reads a 200 generateContent body into one image, or a PixelmillError that says what the model did
 * instead (shared/reference/gemini-image-api.md §2). Pure: no I/O, no logging.
 *
 * Rules:
 * - parts with `thought: true` are interim renders and thought text; they are never the answer;
 * - Nano Banana 2 may send a default-size image beside the requested one, so among the non-thought image
 *   parts the last one whose pixel size (read from the bytes) matches the request wins; if none matches,
 *   the last one is taken and `sizeMismatch` is set;
 * - the MIME type comes from the bytes' magic, not from `inlineData.mimeType` (which is kept for comparison).
 */
import { imageSize } from 'image-size';
import { PixelmillError } from '../../errors/catalogue.js';
import type { Usage } from '../../jobs/record.js';
import type { GeneratedImage, OutputMimeType } from './types.js';

/** finishReasons that mean the provider refused (safety, policy, recitation), not that it failed to draw. */
export const BLOCKING_FINISH_REASONS: ReadonlySet<string> = new Set([
  'SAFETY', 'IMAGE_SAFETY', 'PROHIBITED_CONTENT', 'IMAGE_PROHIBITED_CONTENT', 'BLOCKLIST', 'SPII',
  'RECITATION', 'IMAGE_RECITATION',
]);

/** Everything of GeneratedImage except the call's wall time, which only the client knows. */
export interface ParsedImage extends Omit<GeneratedImage, 'latencyMs'> {
  /** `inlineData.mimeType` of the chosen part as sent (may differ from the sniffed `mimeType`). */
  declaredMimeType: string | null;
}

export interface RequestedImage {
  width: number;
  height: number;
  /** The model id asked for; names the model in messages when the body has no modelVersion. */
  modelId?: string;
}

const SNIFFED_TYPES: Record<string, OutputMimeType> = { jpg: 'image/jpeg', png: 'image/png', webp: 'image/webp' };
const MAX_QUOTED_CHARS = 300;
/**
 * The byte length a base64 string of this length decodes to. Buffer.from(…, 'base64') silently skips
 * characters outside the alphabet (and stops at a stray '='), so a decoded length shorter than this
 * means the data was not base64 — an O(1) check instead of a regex over megabytes of 4K image.
 */
function base64DecodedLength(s: string): number {
  const pad = s.endsWith('==') ? 2 : s.endsWith('=') ? 1 : 0;
  return Math.floor((s.length * 3) / 4) - pad;
}

type Json = Record<string, unknown>;

function isRecord(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(v: unknown): string | null {
  return typeof v === 'string' && v.length > 0 ? v : null;
}

function count(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) && v > 0 ? Math.trunc(v) : 0;
}

/** Collapse whitespace and cut long text so a message stays one readable line. */
export function quote(text: string, max = MAX_QUOTED_CHARS): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

/**
 * `usageMetadata` → Usage. IMAGE tokens come from candidatesTokensDetails[modality=IMAGE]; they may be less
 * than candidatesTokenCount (the rest is text), so both are kept. Null when the body has no usageMetadata.
 */
export function extractUsage(usageMetadata: unknown): Usage | null {
  if (!isRecord(usageMetadata)) return null;
  const promptTokens = count(usageMetadata.promptTokenCount);
  const candidatesTokens = count(usageMetadata.candidatesTokenCount);
  const thoughtsTokens = count(usageMetadata.thoughtsTokenCount);
  let imageTokens = 0;
  const details = usageMetadata.candidatesTokensDetails;
  if (Array.isArray(details)) {
    for (const d of details) {
      if (isRecord(d) && d.modality === 'IMAGE') imageTokens += count(d.tokenCount);
    }
  }
  const totalTokens = usageMetadata.totalTokenCount !== undefined
    ? count(usageMetadata.totalTokenCount)
    : promptTokens + candidatesTokens + thoughtsTokens;
  return { promptTokens, candidatesTokens, imageTokens, thoughtsTokens, totalTokens };
}

export const ZERO_USAGE: Usage = Object.freeze({
  promptTokens: 0, candidatesTokens: 0, imageTokens: 0, thoughtsTokens: 0, totalTokens: 0,
});

interface DecodedImage {
  bytes: Buffer;
  mimeType: OutputMimeType;
  declaredMimeType: string | null;
  width: number;
  height: number;
}

/** Decode one inlineData part and read its header; a message (not an image) when it is not one we can use. */
function decodeImage(data: string, declaredMimeType: string | null): DecodedImage | string {
  if (data.length === 0) return 'an image part with empty data';
  if (data.length % 4 === 1) return 'an image part whose data is not base64';
  const bytes = Buffer.from(data, 'base64');
  if (bytes.length !== base64DecodedLength(data)) return 'an image part whose data is not base64';
  let size: ReturnType<typeof imageSize>;
  try {
    size = imageSize(bytes);
  } catch {
    return `an image part (declared ${declaredMimeType ?? 'without a type'}) whose ${bytes.length} bytes are not a readable image`;
  }
  const mimeType = size.type === undefined ? undefined : SNIFFED_TYPES[size.type];
  if (mimeType === undefined) return `an image part of unsupported type ${size.type ?? 'unknown'} (JPEG, PNG or WebP expected)`;
  if (!(size.width > 0 && size.height > 0)) return 'an image part without a pixel size in its header';
  return { bytes, mimeType, declaredMimeType, width: size.width, height: size.height };
}

function badResponse(message: string, details: Json): PixelmillError {
  return new PixelmillError('BAD_RESPONSE', message, { details });
}

/** Only the facts that are known, so logs and job records carry no null noise. */
function knownDetails(facts: Json): Json {
  const out: Json = {};
  for (const [k, v] of Object.entries(facts)) if (v !== null && v !== undefined) out[k] = v;
  return out;
}

/**
 * Parse a 200 body (already JSON.parse'd). Returns the chosen image or throws a PixelmillError:
 * CONTENT_BLOCKED (promptFeedback.blockReason, or a safety/policy finishReason), NO_IMAGE (no non-thought
 * image part, e.g. NO_IMAGE / IMAGE_OTHER / STOP with text only), BAD_RESPONSE (wrong shape, undecodable image).
 * Errors carry details {finishReason, blockReason, modelVersion, responseId, usage} when known.
 */
export function parseGenerateContentResponse(body: unknown, requested: RequestedImage): ParsedImage {
  if (!isRecord(body)) {
    throw badResponse(`${requested.modelId ?? 'the model'} answered 200 with a body that is not a JSON object`, {});
  }
  const modelVersion = str(body.modelVersion);
  const responseId = str(body.responseId);
  const usage = extractUsage(body.usageMetadata);
  const model = modelVersion ?? requested.modelId ?? 'the model';
  const promptFeedback = isRecord(body.promptFeedback) ? body.promptFeedback : null;
  const blockReason = promptFeedback ? str(promptFeedback.blockReason) : null;
  const facts = (extra: Json = {}): Json => knownDetails({ blockReason, modelVersion, responseId, usage, ...extra });

  if (blockReason !== null && blockReason !== 'BLOCKED_REASON_UNSPECIFIED') {
    const why = promptFeedback ? str(promptFeedback.blockReasonMessage) : null;
    throw new PixelmillError(
      'CONTENT_BLOCKED',
      `${model} blocked the prompt (promptFeedback.blockReason ${blockReason})${why ? `: "${quote(why)}"` : ''}`,
      { details: facts() },
    );
  }

  if (body.error !== undefined) {
    const upstreamMessage = isRecord(body.error) ? str(body.error.message) : null;
    throw badResponse(`${model} answered 200 with an error object${upstreamMessage ? `: "${quote(upstreamMessage)}"` : ''}`, facts());
  }
  const candidates = body.candidates;
  if (!Array.isArray(candidates) || candidates.length === 0) {
    throw badResponse(`${model} answered 200 without candidates and without a promptFeedback.blockReason`, facts());
  }
  const candidate: unknown = candidates[0];
  if (!isRecord(candidate)) throw badResponse(`${model} answered with a candidate that is not an object`, facts());
  const finishReason = str(candidate.finishReason);
  const finishMessage = str(candidate.finishMessage);
  const content = candidate.content;
  if (content !== undefined && !isRecord(content)) {
    throw badResponse(`${model} answered with candidate content that is not an object`, facts({ finishReason }));
  }
  const parts = content?.parts;
  if (parts !== undefined && !Array.isArray(parts)) {
    throw badResponse(`${model} answered with content.parts that is not an array`, facts({ finishReason }));
  }

  const texts: string[] = [];
  const images: { data: string; declared: string | null }[] = [];
  for (const part of (parts ?? []) as unknown[]) {
    if (!isRecord(part)) throw badResponse(`${model} answered with a part that is not an object`, facts({ finishReason }));
    if (part.thought === true) continue;
    if (typeof part.text === 'string') {
      if (part.text.trim() !== '') texts.push(part.text);
      continue;
    }
    const inline = part.inlineData ?? part.inline_data;
    if (inline === undefined) continue;
    if (!isRecord(inline) || typeof inline.data !== 'string') {
      throw badResponse(`${model} answered with an inlineData part without string data`, facts({ finishReason }));
    }
    const declared = str(inline.mimeType ?? inline.mime_type);
    if (declared !== null && !declared.startsWith('image/')) continue; // not an image (audio, text…)
    images.push({ data: inline.data, declared });
  }

  const explanation = finishMessage ?? (texts.length > 0 ? texts.join(' ') : null);
  if (finishReason !== null && BLOCKING_FINISH_REASONS.has(finishReason)) {
    throw new PixelmillError(
      'CONTENT_BLOCKED',
      `${model} finished with ${finishReason}${explanation ? `: "${quote(explanation)}"` : ''}`,
      { details: facts({ finishReason }) },
    );
  }
  if (images.length === 0) {
    const said = finishMessage
      ? `: "${quote(finishMessage)}"`
      : texts.length > 0 ? `, only text: "${quote(texts.join(' '))}"` : '';
    throw new PixelmillError(
      'NO_IMAGE',
      `${model} finished with ${finishReason ?? 'no finishReason'} and sent no image${said}`,
      { details: facts({ finishReason }) },
    );
  }

  // At most two decoded images are held at a time (the last match and the last one), so an answer with
  // several large images does not keep all of them alive.
  let lastMatch: DecodedImage | null = null;
  let last: DecodedImage | null = null;
  for (const image of images) {
    const decoded = decodeImage(image.data, image.declared);
    if (typeof decoded === 'string') throw badResponse(`${model} answered with ${decoded}`, facts({ finishReason }));
    if (decoded.width === requested.width && decoded.height === requested.height) lastMatch = decoded;
    last = decoded;
  }
  const chosen = (lastMatch ?? last)!;
  return {
    bytes: chosen.bytes,
    mimeType: chosen.mimeType,
    declaredMimeType: chosen.declaredMimeType,
    width: chosen.width,
    height: chosen.height,
    modelVersion,
    responseId,
    finishReason,
    usage: usage ?? { ...ZERO_USAGE },
    imageParts: images.length,
    sizeMismatch: lastMatch === null,
  };
}
