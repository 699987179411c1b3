/**
 * Output validation (issue 4 §3): a 200 is not success until checked. The image part is present
 * (the parser throws NO_IMAGE otherwise); here: its MIME type is one we store, its pixel size is the
 * one asked for, and its modelVersion belongs to the family that was called. A mismatch is DEGRADED.
 *
 * What a DEGRADED answer does is configured per tier (DEGRADED_ACTION_DRAFT / _STANDARD / _PREMIUM):
 *
 *   accept   store it, flag the job (`result.degraded`) and record the call as outcome DEGRADED
 *   retry    do not store it; record the call as outcome DEGRADED; try the tier's other model at once
 *            when it has one (standard; premium only with allowDowngrade; draft never), else throw
 *            DEGRADED so BullMQ retries after the backoff (an attempt is consumed)
 *
 * On the job's last attempt a degraded image is accepted and flagged rather than failing the job:
 * the caller paid for an image and gets one, marked as not what was asked.
 *
 * Every degraded call is one history entry with outcome `DEGRADED` (accepted or not), so the model's
 * health sees it like any other outcome.
 */
import type { Config } from '../config/env.js';
import type { HistoryEntry } from '../jobs/record.js';
import type { Tier } from '../jobs/request.js';
import { CAPABILITIES, FAMILY_LABEL, supports, type AspectRatio, type ImageSize, type ModelFamily } from '../models/catalogue.js';
import type { GeneratedImage } from '../providers/gemini/types.js';
import type { Candidate } from '../routing/router.js';

/** The history outcome of a degraded call (also the error code). */
export const DEGRADED_OUTCOME = 'DEGRADED';

/** MIME types pixelmill stores (the parser sniffs them from the bytes). */
export const ALLOWED_OUTPUT_MIME_TYPES: readonly string[] = ['image/png', 'image/jpeg', 'image/webp'];

export type DegradedAction = 'accept' | 'retry';

/** DEGRADED_ACTION_<TIER> for a tier. */
export function degradedActionFor(config: Config, tier: Tier): DegradedAction {
  switch (tier) {
    case 'draft':
      return config.DEGRADED_ACTION_DRAFT;
    case 'standard':
      return config.DEGRADED_ACTION_STANDARD;
    case 'premium':
      return config.DEGRADED_ACTION_PREMIUM;
  }
}

/** What is wrong with a 200's image, or undefined when it is what was asked. */
export function describeDegradation(
  image: Pick<GeneratedImage, 'mimeType' | 'width' | 'height' | 'modelVersion' | 'sizeMismatch'>,
  family: ModelFamily,
  want: { width: number; height: number },
): string | undefined {
  const problems: string[] = [];
  if (!ALLOWED_OUTPUT_MIME_TYPES.includes(image.mimeType)) {
    problems.push(`MIME type ${image.mimeType}, not one of ${ALLOWED_OUTPUT_MIME_TYPES.join(', ')}`);
  }
  if (image.sizeMismatch || image.width !== want.width || image.height !== want.height) {
    problems.push(`asked ${want.width}x${want.height}, got ${image.width}x${image.height}`);
  }
  const prefixes = CAPABILITIES[family].versionPrefixes;
  if (image.modelVersion && !prefixes.some((p) => image.modelVersion!.startsWith(p))) {
    problems.push(`answered by ${image.modelVersion}, not ${FAMILY_LABEL[family]}`);
  }
  return problems.length > 0 ? problems.join('; ') : undefined;
}

export interface DegradedContext {
  action: DegradedAction;
  tier: Tier;
  allowDowngrade: boolean;
  size: ImageSize;
  aspectRatio: AspectRatio;
  /** The family that answered degraded. */
  family: ModelFamily;
  attempt: number;
  /** True when no attempt follows this one (BullMQ attemptsMade + 1 >= attempts). */
  lastAttempt: boolean;
  /** The job's history, including the entry of this degraded call. */
  history: readonly Pick<HistoryEntry, 'attempt' | 'family' | 'outcome'>[];
}

export type DegradedVerdict =
  /** Store and flag. */
  | { kind: 'accept'; note: string }
  /** Do not store; call the other family now (the caller's next routing round puts it first). */
  | { kind: 'other-model'; family: ModelFamily; note: string }
  /** Do not store; throw DEGRADED (BullMQ backoff, an attempt consumed). */
  | { kind: 'retry-later'; note: string };

/** The family a tier may move to after a degraded answer, if any. */
function otherFamily(ctx: DegradedContext): ModelFamily | undefined {
  const other: ModelFamily = ctx.family === 'fast' ? 'pro' : 'fast';
  const allowed =
    ctx.tier === 'standard' || (ctx.tier === 'premium' && ctx.allowDowngrade && other === 'fast');
  return allowed && supports(other, ctx.size, ctx.aspectRatio) ? other : undefined;
}

export function decideDegraded(ctx: DegradedContext): DegradedVerdict {
  if (ctx.action === 'accept') return { kind: 'accept', note: 'accepted and flagged (DEGRADED_ACTION accept)' };
  const thisAttempt = ctx.history.filter((h) => h.attempt === ctx.attempt && h.outcome === DEGRADED_OUTCOME);
  const other = otherFamily(ctx);
  // One move to the other model per attempt: two degraded answers in one attempt wait for the backoff.
  if (other && thisAttempt.length <= 1 && !thisAttempt.some((h) => h.family === other)) {
    return { kind: 'other-model', family: other, note: `not stored; retrying on ${FAMILY_LABEL[other]}` };
  }
  if (ctx.lastAttempt) return { kind: 'accept', note: 'accepted and flagged: last attempt, an image not as asked beats none' };
  return { kind: 'retry-later', note: 'not stored; retried after the backoff' };
}

/**
 * Candidates reordered so a family that answered DEGRADED in this attempt (or in the call just
 * before it) goes last, with the reason saying so. The router does not know about DEGRADED; this is
 * the one place that acts on it.
 */
export function preferUndegraded(
  candidates: readonly Candidate[], history: readonly Pick<HistoryEntry, 'attempt' | 'family' | 'outcome'>[], attempt: number,
): Candidate[] {
  const last = history.at(-1);
  const degraded = new Set(
    history
      .filter((h, i) => h.outcome === DEGRADED_OUTCOME && h.family && (h.attempt === attempt || i === history.length - 1))
      .map((h) => h.family!),
  );
  if (degraded.size === 0 || candidates.length < 2) return [...candidates];
  const fresh = candidates.filter((c) => !degraded.has(c.family));
  if (fresh.length === 0 || fresh[0] === candidates[0]) return [...candidates];
  const rest = candidates.filter((c) => degraded.has(c.family));
  const from = last?.outcome === DEGRADED_OUTCOME && last.family ? FAMILY_LABEL[last.family] : [...degraded].map((f) => FAMILY_LABEL[f]).join(', ');
  const first = { ...fresh[0]!, reason: `retry on ${FAMILY_LABEL[fresh[0]!.family]} after DEGRADED on ${from}` };
  return [first, ...fresh.slice(1), ...rest];
}
