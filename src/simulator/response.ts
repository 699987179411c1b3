/**
 * Answer bodies in the live GenerateContentResponse shape (reference §2, fixtures F4-F7): thought
 * parts first when asked for, a non-thought image part with a thoughtSignature, usage that does
 * not add up inside `candidatesTokensDetails` (1392 vs 1120 live), and the no-image variants.
 *
 * Image data is not placed in the JSON object: the body carries a placeholder per image and
 * `serializeAnswer` splices the cached base64 bytes in, so a 4K answer costs no JSON escaping and
 * no string copy of several MB per request.
 */
import { CAPABILITIES, type ImageSize, type ModelFamily } from '../models/catalogue.js';
import type { EncodedImage } from './images.js';
import type { Rng } from './prng.js';
import type { ParsedRequest } from './request.js';

export interface AnswerContext {
  readonly modelId: string;
  readonly family: ModelFamily;
  readonly request: ParsedRequest;
  readonly rng: Rng;
  readonly responseId: string;
}

export interface Answer {
  readonly body: Record<string, unknown>;
  readonly images: readonly EncodedImage[];
}

/** Prompt tokens per input image (Pro: pricing page; Nano Banana 2: Vertex card). */
const INPUT_IMAGE_TOKENS: Record<ModelFamily, number> = { fast: 1120, pro: 560 };
/** Output tokens of the retired model a degraded answer claims to come from (2.5 Flash Image). */
const DEGRADED_IMAGE_TOKENS = 1290;
export const DEGRADED_MODEL_VERSION = 'gemini-2.5-flash-image';

const placeholder = (i: number): string => `@@SIM_IMAGE_${i}@@`;
const PLACEHOLDER = /@@SIM_IMAGE_(\d+)@@/;

const THOUGHTS = [
  '**Planning the composition**\n\nI am laying out the main subject, the background and the light direction before rendering.',
  '**Refining the details**\n\nI am checking proportions and textures so the final image matches the description.',
  '**Choosing the palette**\n\nI am settling on colours and contrast that fit the mood of the request.',
];
const COMMENTARY = ['Here is the image you asked for.', 'Here you go.', "Here's your image."];
const SAFETY_REFUSAL = "I can't create that. I can try something else if you'd like to change the request.";
const TEXT_ONLY_REPLY =
  "I'd be happy to help with that! Could you tell me a bit more about the style and the setting you have in mind?";
const IMAGE_OTHER_MESSAGE =
  'Unable to show the generated image. The model could not generate the image based on the prompt provided. ' +
  'You will not be charged for this request. Try rephrasing the prompt.';

export function newResponseId(rng: Rng): string {
  return rng.bytes(17).toString('base64url');
}

function signature(rng: Rng): string {
  return rng.bytes(rng.int(280, 360)).toString('base64');
}

function textTokens(text: string): number {
  return Math.max(1, Math.ceil(text.length / 4));
}

function promptUsage(ctx: AnswerContext): { promptTokenCount: number; promptTokensDetails: { modality: string; tokenCount: number }[] } {
  const text = textTokens(ctx.request.prompt);
  const images = ctx.request.inputImages * INPUT_IMAGE_TOKENS[ctx.family];
  return {
    promptTokenCount: text + images,
    promptTokensDetails: [{ modality: 'TEXT', tokenCount: text }, ...(images > 0 ? [{ modality: 'IMAGE', tokenCount: images }] : [])],
  };
}

/** Thinking tokens; a Nano Banana 2 call at minimal thinking reports none (live fixture F4 has no field). */
function thoughtsTokens(ctx: AnswerContext): number | undefined {
  const { rng, family, request } = ctx;
  if (family === 'pro') return rng.int(150, 500);
  if (request.thinkingHigh) return rng.int(400, 1200);
  if (request.includeThoughts) return rng.int(80, 320);
  return undefined;
}

function usage(ctx: AnswerContext, output: { tokens: number; details: { modality: string; tokenCount: number }[] }, thoughts: number | undefined) {
  const prompt = promptUsage(ctx);
  return {
    promptTokenCount: prompt.promptTokenCount,
    candidatesTokenCount: output.tokens,
    totalTokenCount: prompt.promptTokenCount + output.tokens + (thoughts ?? 0),
    ...(thoughts !== undefined ? { thoughtsTokenCount: thoughts } : {}),
    promptTokensDetails: prompt.promptTokensDetails,
    candidatesTokensDetails: output.details,
    serviceTier: ctx.request.serviceTier,
  };
}

/** Usage of an answer that produced nothing: prompt tokens only (fixtures F5, F6). */
function promptOnlyUsage(ctx: AnswerContext) {
  const prompt = promptUsage(ctx);
  return { promptTokenCount: prompt.promptTokenCount, totalTokenCount: prompt.promptTokenCount, promptTokensDetails: prompt.promptTokensDetails };
}

function thoughtParts(ctx: AnswerContext, thoughtImage: EncodedImage | undefined, images: EncodedImage[]): Record<string, unknown>[] {
  if (!ctx.request.includeThoughts) return [];
  const parts: Record<string, unknown>[] = [{ text: THOUGHTS[ctx.rng.int(0, THOUGHTS.length - 1)], thought: true }];
  if (thoughtImage) {
    images.push(thoughtImage);
    parts.push({ inlineData: { mimeType: thoughtImage.mimeType, data: placeholder(images.length - 1) }, thought: true });
  }
  return parts;
}

export interface ImageAnswerOptions {
  /** Final (non-thought) images in order, each with its IMAGE token count. */
  readonly finals: readonly { image: EncodedImage; size: ImageSize }[];
  /** A small interim image shown as a thought part when thoughts are included. */
  readonly thoughtImage?: EncodedImage;
  /** Answer as the retired model: other modelVersion, no thinking, no signatures. */
  readonly degraded?: boolean;
}

export function imageAnswer(ctx: AnswerContext, opts: ImageAnswerOptions): Answer {
  const { rng, family } = ctx;
  const images: EncodedImage[] = [];
  const parts = opts.degraded ? [] : thoughtParts(ctx, opts.thoughtImage, images);
  let extraTextTokens = 0;
  // Sometimes the model says a few words before the image; the first such text part is signed.
  if (ctx.request.wantText && rng.chance(0.25)) {
    const text = COMMENTARY[rng.int(0, COMMENTARY.length - 1)]!;
    extraTextTokens = textTokens(text);
    parts.push(opts.degraded ? { text } : { text, thoughtSignature: signature(rng) });
  }
  let imageTokens = 0;
  for (const { image, size } of opts.finals) {
    images.push(image);
    imageTokens += opts.degraded ? DEGRADED_IMAGE_TOKENS : (CAPABILITIES[family].imageTokens[size] ?? 1120);
    const part = { inlineData: { mimeType: image.mimeType, data: placeholder(images.length - 1) } };
    parts.push(opts.degraded ? part : { ...part, thoughtSignature: signature(rng) });
  }
  // Live answers report more candidate tokens than the IMAGE detail (1392 vs 1120, 1219 vs 1120).
  const overhead = opts.degraded ? 1 : family === 'fast' ? rng.int(240, 300) : rng.int(80, 120);
  const thoughts = opts.degraded ? undefined : thoughtsTokens(ctx);
  return {
    images,
    body: {
      candidates: [{ content: { role: 'model', parts }, finishReason: 'STOP', index: 0 }],
      usageMetadata: usage(ctx, { tokens: imageTokens + overhead + extraTextTokens, details: [{ modality: 'IMAGE', tokenCount: imageTokens }] }, thoughts),
      modelVersion: opts.degraded ? DEGRADED_MODEL_VERSION : ctx.modelId,
      responseId: ctx.responseId,
    },
  };
}

/** A text-only candidate: the model talked instead of drawing (`STOP`) or refused (`IMAGE_SAFETY`). */
export function textAnswer(ctx: AnswerContext, finishReason: 'STOP' | 'IMAGE_SAFETY'): Answer {
  const images: EncodedImage[] = [];
  const text = finishReason === 'STOP' ? TEXT_ONLY_REPLY : SAFETY_REFUSAL;
  const parts = [...thoughtParts(ctx, undefined, images), { text, thoughtSignature: signature(ctx.rng) }];
  const tokens = textTokens(text);
  return {
    images,
    body: {
      candidates: [{ content: { role: 'model', parts }, finishReason, index: 0 }],
      usageMetadata: usage(ctx, { tokens, details: [{ modality: 'TEXT', tokenCount: tokens }] }, thoughtsTokens(ctx)),
      modelVersion: ctx.modelId,
      responseId: ctx.responseId,
    },
  };
}

/** `content: {}` with NO_IMAGE (fixture F5) or IMAGE_OTHER plus its finishMessage. */
export function emptyAnswer(ctx: AnswerContext, finishReason: 'NO_IMAGE' | 'IMAGE_OTHER'): Answer {
  const candidate =
    finishReason === 'NO_IMAGE'
      ? { content: {}, finishReason, index: 0 }
      : { content: {}, finishReason, finishMessage: IMAGE_OTHER_MESSAGE, index: 0 };
  return {
    images: [],
    body: { candidates: [candidate], usageMetadata: promptOnlyUsage(ctx), modelVersion: ctx.modelId, responseId: ctx.responseId },
  };
}

/** Prompt blocked before generation: no candidates at all (fixture F6). */
export function blockedAnswer(ctx: AnswerContext): Answer {
  return {
    images: [],
    body: {
      promptFeedback: { blockReason: 'PROHIBITED_CONTENT' },
      usageMetadata: promptOnlyUsage(ctx),
      modelVersion: ctx.modelId,
      responseId: ctx.responseId,
    },
  };
}

/** The answer as body chunks (JSON text with the image bytes spliced in) and their total length. */
export function serializeAnswer(answer: Answer): { chunks: Buffer[]; length: number } {
  const pieces = JSON.stringify(answer.body).split(PLACEHOLDER);
  const chunks: Buffer[] = [];
  // split() with a capture group alternates text and captured image indexes.
  pieces.forEach((piece, i) => {
    if (i % 2 === 0) chunks.push(Buffer.from(piece, 'utf8'));
    else chunks.push(answer.images[Number(piece)]!.base64Bytes);
  });
  return { chunks, length: chunks.reduce((n, c) => n + c.length, 0) };
}
