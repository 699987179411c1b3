/**
 * The job request: one zod schema for the library, the HTTP API and the CLI.
 *
 * `jobRequestSchema` validates what a caller sends. The capability rule (sizes and ratios only Nano
 * Banana 2 renders) is part of the schema so every entry point rejects the same things with the same
 * field names.
 */
import { z } from 'zod';
import {
  ASPECT_RATIOS, FAST_ONLY_RATIOS, FAST_ONLY_SIZES, IMAGE_SIZES, type AspectRatio, type ImageSize,
} from '../models/catalogue.js';

export const TIERS = ['draft', 'standard', 'premium'] as const;
export type Tier = (typeof TIERS)[number];

export const INPUT_IMAGE_MIME_TYPES = ['image/png', 'image/jpeg', 'image/webp'] as const;
export type InputImageMimeType = (typeof INPUT_IMAGE_MIME_TYPES)[number];

/** S3 keys we accept from callers: no traversal, no leading slash, printable. */
const s3KeySchema = z
  .string()
  .min(1)
  .max(1024)
  .regex(/^[A-Za-z0-9!_.*'()/-]+$/, { message: 'S3 keys may use letters, digits and !_.*\'()/- only' })
  .refine((k) => !k.startsWith('/') && !k.split('/').includes('..'), { message: 'must be a relative key without ..' });

const base64Schema = z
  .string()
  .min(4, { message: 'must be base64 image data' })
  .regex(/^[A-Za-z0-9+/]+={0,2}$/, { message: 'must be standard base64 (no data: prefix, no line breaks)' });

/** http(s) URLs only; where they may point is checked at fetch time, after DNS (src/net/ssrf-guard.ts). */
export const httpUrlSchema = z
  .string()
  .max(2048, { message: 'must be at most 2048 characters' })
  .url({ message: 'must be an absolute URL' })
  .refine((u) => /^https?:\/\//i.test(u), { message: 'must be an http:// or https:// URL' });

export const inputImageSchema = z.union(
  [
    z.object({ s3Key: s3KeySchema }).strict(),
    z.object({ data: base64Schema, mimeType: z.enum(INPUT_IMAGE_MIME_TYPES) }).strict(),
    z.object({ url: httpUrlSchema }).strict(),
  ],
  { message: 'each input image is {s3Key}, {url} or {data, mimeType} with mimeType image/png, image/jpeg or image/webp' },
);

export const WEBHOOK_EVENTS = ['image.succeeded', 'image.failed', 'batch.completed', 'experiment.completed'] as const;
export type WebhookEvent = (typeof WEBHOOK_EVENTS)[number];

/** Where to send events about this object; `events` filters them (all of the object's events by default). */
export const webhookSchema = z
  .object({
    url: httpUrlSchema,
    events: z.array(z.enum(WEBHOOK_EVENTS)).min(1).optional(),
  })
  .strict();
export type WebhookTarget = z.infer<typeof webhookSchema>;
export type InputImage = z.infer<typeof inputImageSchema>;

const METADATA_MAX_BYTES = 4096;

export const metadataSchema = z
  .record(z.string().min(1).max(256), z.string().max(4096))
  .refine((m) => Buffer.byteLength(JSON.stringify(m)) <= METADATA_MAX_BYTES, {
    message: `must be at most ${METADATA_MAX_BYTES} bytes when serialized`,
  });

export const jobRequestShape = z.object({
  prompt: z.string().min(1, { message: 'must not be empty' }).max(10_000, { message: 'must be at most 10000 characters' }),
  tier: z.enum(TIERS).default('standard'),
  priority: z.number().int({ message: 'must be a whole number' }).min(1).max(10).default(5),
  size: z.enum(IMAGE_SIZES).default('1K'),
  aspectRatio: z.enum(ASPECT_RATIOS).default('1:1'),
  inputImages: z.array(inputImageSchema).max(14, { message: 'at most 14 input images' }).default([]),
  allowDowngrade: z.boolean().default(false),
  idempotencyKey: z.string().min(1).max(200, { message: 'must be at most 200 characters' }).optional(),
  metadata: metadataSchema.optional(),
  deadline: z.iso.datetime({ offset: true, message: 'must be an ISO-8601 date-time such as 2026-01-31T12:00:00Z' }).optional(),
  webhook: webhookSchema.optional(),
});

/** Premium without allowDowngrade runs on Nano Banana Pro only, which has neither 512 nor the extreme ratios. */
export function capabilityIssues(req: { tier: Tier; allowDowngrade: boolean; size: ImageSize; aspectRatio: AspectRatio }): { path: string; message: string }[] {
  const issues: { path: string; message: string }[] = [];
  if (req.tier !== 'premium' || req.allowDowngrade) return issues;
  if (FAST_ONLY_SIZES.includes(req.size)) {
    issues.push({ path: 'size', message: `size "${req.size}" exists only on Nano Banana 2; premium runs on Nano Banana Pro (set allowDowngrade or pick 1K, 2K or 4K)` });
  }
  if (FAST_ONLY_RATIOS.includes(req.aspectRatio)) {
    issues.push({ path: 'aspectRatio', message: `aspect ratio ${req.aspectRatio} exists only on Nano Banana 2; premium runs on Nano Banana Pro (set allowDowngrade or pick another ratio)` });
  }
  return issues;
}

export const jobRequestSchema = jobRequestShape.strict().superRefine((req, ctx) => {
  for (const i of capabilityIssues(req)) ctx.addIssue({ code: 'custom', path: [i.path], message: i.message });
});

/** What a caller may send (defaults optional). */
export type JobRequestInput = z.input<typeof jobRequestSchema>;
/** A validated request with defaults applied. */
export type JobRequest = z.output<typeof jobRequestSchema>;

/** One validation problem, as the API reports it: `path` is dotted (`inputImages.2.mimeType`). */
export interface FieldIssue {
  path: string;
  message: string;
}

export function zodIssues(error: z.ZodError): FieldIssue[] {
  return error.issues.flatMap((i) => {
    // zod reports unknown fields on their parent object; name each field instead.
    if (i.code === 'unrecognized_keys') {
      return i.keys.map((k) => ({ path: [...i.path, k].map(String).join('.'), message: 'is not a known field' }));
    }
    return [{ path: i.path.map(String).join('.') || '(body)', message: i.message }];
  });
}
