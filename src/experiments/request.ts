/**
 * The experiment request (`POST /v1/experiments`) and how each variant becomes an image job request.
 *
 * Every variant is validated with the job request schema (jobRequestSchema), capability rule
 * included, and every problem is reported under the variant's path: `variants.2.size`.
 *
 * Pinning a model family. The router routes by tier only, so `model` is expressed through the tier
 * whose policy uses exactly that family, without touching the router:
 *   model "fast" → tier draft   (Nano Banana 2 only; on 429 it waits for Nano Banana 2, never Pro)
 *   model "pro"  → tier premium without allowDowngrade (Nano Banana Pro only)
 * What this costs: a pinned variant cannot pick another tier (a different `tier` is refused, naming
 * `variants.N.tier`), and `model: "pro"` inherits Pro's limits (no 512, no 1:4/4:1/1:8/8:1), which are
 * refused naming `variants.N.size` / `variants.N.aspectRatio`. `model` is recorded on the variant.
 */
import { z } from 'zod';
import { PixelmillError } from '../errors/catalogue.js';
import {
  TIERS, jobRequestSchema, metadataSchema, webhookSchema, zodIssues, type FieldIssue, type JobRequest, type Tier,
} from '../jobs/request.js';
import {
  ASPECT_RATIOS, FAMILY_LABEL, IMAGE_SIZES, MODEL_FAMILIES, type AspectRatio, type ImageSize, type ModelFamily,
} from '../models/catalogue.js';

export const MIN_VARIANTS = 2;
export const MAX_VARIANTS = 20;
export const MAX_REPEATS = 10;

/** The tier whose routing policy uses exactly one family (see the header). */
export const PINNED_TIER: Record<ModelFamily, Tier> = { fast: 'draft', pro: 'premium' };

const PROMPT_MAX = 10_000;

const variantSchema = z
  .object({
    name: z
      .string()
      .min(1, { message: 'must not be empty' })
      .max(64, { message: 'must be at most 64 characters' })
      .regex(/^[A-Za-z0-9][A-Za-z0-9 _.+:()-]*$/, { message: 'may use letters, digits, spaces and _.+:()- and must start with a letter or digit' }),
    tier: z.enum(TIERS).optional(),
    model: z.enum(MODEL_FAMILIES, { message: 'must be "fast" (Nano Banana 2) or "pro" (Nano Banana Pro)' }).optional(),
    size: z.enum(IMAGE_SIZES).optional(),
    aspectRatio: z.enum(ASPECT_RATIOS).optional(),
    prompt: z.string().min(1, { message: 'must not be empty' }).max(PROMPT_MAX, { message: `must be at most ${PROMPT_MAX} characters` }).optional(),
    promptSuffix: z.string().max(PROMPT_MAX, { message: `must be at most ${PROMPT_MAX} characters` }).optional(),
  })
  .strict();

export const experimentRequestSchema = z
  .object({
    prompt: z.string().min(1, { message: 'must not be empty' }).max(PROMPT_MAX, { message: `must be at most ${PROMPT_MAX} characters` }),
    variants: z
      .array(variantSchema)
      .min(MIN_VARIANTS, { message: `needs at least ${MIN_VARIANTS} variants` })
      .max(MAX_VARIANTS, { message: `takes at most ${MAX_VARIANTS} variants` }),
    repeats: z
      .number({ message: 'must be a number' })
      .int({ message: 'must be a whole number' })
      .min(1, { message: 'must be at least 1' })
      .max(MAX_REPEATS, { message: `must be at most ${MAX_REPEATS}` })
      .default(1),
    webhook: webhookSchema.optional(),
    metadata: metadataSchema.optional(),
  })
  .strict()
  .superRefine((req, ctx) => {
    const firstIndex = new Map<string, number>();
    req.variants.forEach((v, i) => {
      const earlier = firstIndex.get(v.name);
      if (earlier === undefined) firstIndex.set(v.name, i);
      else ctx.addIssue({ code: 'custom', path: ['variants', i, 'name'], message: `"${v.name}" is already the name of variants.${earlier}; names must be unique` });
    });
  });

export type ExperimentRequestInput = z.input<typeof experimentRequestSchema>;
export type ExperimentRequest = z.output<typeof experimentRequestSchema>;

/** A variant ready to run: its image job request, and what the experiment view shows about it. */
export interface ResolvedVariant {
  name: string;
  model?: ModelFamily;
  /** Validated by jobRequestSchema (defaults applied). */
  request: JobRequest;
}

/**
 * Validate an experiment request and turn each variant into an image job request. Throws
 * INVALID_REQUEST listing every problem with its path (`variants.1.aspectRatio`).
 */
export function resolveExperiment(input: unknown): { request: ExperimentRequest; variants: ResolvedVariant[] } {
  const parsed = experimentRequestSchema.safeParse(input);
  if (!parsed.success) throw invalidExperiment(zodIssues(parsed.error));
  const request = parsed.data;
  const issues: FieldIssue[] = [];
  const variants: ResolvedVariant[] = [];
  request.variants.forEach((v, index) => {
    const at = (field: string) => `variants.${index}.${field}`;
    let tier = v.tier;
    if (v.model !== undefined) {
      const pinned = PINNED_TIER[v.model];
      if (tier !== undefined && tier !== pinned) {
        issues.push({
          path: at('tier'),
          message: `model "${v.model}" pins this variant to ${FAMILY_LABEL[v.model]}, which runs as tier ${pinned}; leave tier out or set it to ${pinned}`,
        });
        return;
      }
      tier = pinned;
    }
    const prompt = (v.prompt ?? request.prompt) + (v.promptSuffix ?? '');
    const jobInput: Record<string, unknown> = { prompt, allowDowngrade: false };
    if (tier !== undefined) jobInput['tier'] = tier;
    if (v.size !== undefined) jobInput['size'] = v.size;
    if (v.aspectRatio !== undefined) jobInput['aspectRatio'] = v.aspectRatio;
    const job = jobRequestSchema.safeParse(jobInput);
    if (!job.success) {
      for (const issue of zodIssues(job.error)) {
        issues.push(variantIssue(index, issue, v, request.prompt));
      }
      return;
    }
    variants.push({ name: v.name, ...(v.model ? { model: v.model } : {}), request: job.data });
  });
  if (issues.length > 0) throw invalidExperiment(issues);
  return { request, variants };
}

/** Put a job-level issue under the variant, on the field the caller actually set. */
function variantIssue(
  index: number,
  issue: FieldIssue,
  v: { model?: ModelFamily | undefined; prompt?: string | undefined; promptSuffix?: string | undefined; size?: ImageSize | undefined; aspectRatio?: AspectRatio | undefined },
  experimentPrompt: string,
): FieldIssue {
  const at = (field: string) => `variants.${index}.${field}`;
  if (issue.path === 'prompt') {
    // The combined prompt is too long: blame the part the variant added.
    const field = v.promptSuffix && (v.prompt ?? experimentPrompt).length <= PROMPT_MAX ? 'promptSuffix' : 'prompt';
    return { path: at(field), message: `the variant's prompt (${field === 'promptSuffix' ? 'prompt + promptSuffix' : 'prompt'}) ${issue.message}` };
  }
  if (v.model === 'pro' && (issue.path === 'size' || issue.path === 'aspectRatio')) {
    const value = issue.path === 'size' ? `size "${v.size}"` : `aspect ratio ${v.aspectRatio}`;
    const fix = issue.path === 'size' ? 'pick 1K, 2K or 4K' : 'pick another ratio';
    return {
      path: at(issue.path),
      message: `${value} exists only on Nano Banana 2, and model "pro" pins this variant to Nano Banana Pro (${fix}, or use model "fast")`,
    };
  }
  return { path: at(issue.path), message: issue.message };
}

function invalidExperiment(issues: FieldIssue[]): PixelmillError {
  const summary = issues.map((i) => `${i.path}: ${i.message}`).join('; ');
  return new PixelmillError('INVALID_REQUEST', `Invalid experiment (${summary})`, { details: { issues } });
}
