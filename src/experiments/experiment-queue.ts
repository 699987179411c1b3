/**
 * A/B experiments as BullMQ flows: one parent job on the `experiments` queue, one child image job per
 * variant × repeat on the `images` queue. The parent waits in `waiting-children` until every child
 * reached a terminal state; then the finisher (finisher.ts) processes it.
 *
 * Redis keys (besides BullMQ's own `{QUEUE_PREFIX}:experiments:*`):
 *
 *   {QUEUE_PREFIX}:pm:exp:{experimentId}:winner   JSON {variant, chosenAt}: the variant a caller picked
 *                                                 (POST /v1/experiments/:id/winner); PX JOB_RETENTION
 *
 * Everything stored is small: the parent's data holds the resolved variants and their run job ids
 * (at most 20 × 10), its return value the per-variant summary. Never image bytes.
 */
import { createHash } from 'node:crypto';
import { Queue, type JobsOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import type { Config } from '../config/env.js';
import { TIERS, metadataSchema, webhookSchema } from '../jobs/request.js';
import { ASPECT_RATIOS, IMAGE_SIZES, MODEL_FAMILIES } from '../models/catalogue.js';

export const EXPERIMENT_QUEUE = 'experiments';
/** BullMQ job name of an experiment's parent job. */
export const EXPERIMENT_JOB_NAME = 'experiment';
export const EXPERIMENT_DATA_VERSION = 1;

/** The finisher retries a parent whose processing failed (Redis hiccup while queueing the webhook). */
const PARENT_ATTEMPTS = 10;
const PARENT_BACKOFF_MS = 1_000;

/** Experiment ids we hand out; anything else cannot be ours. BullMQ ids must not contain ':'. */
export const EXPERIMENT_ID_PATTERN = /^exp_[A-Za-z0-9_-]{22}$/;

export function newExperimentId(): string {
  return `exp_${createHash('sha256').update(crypto.randomUUID()).digest('base64url').slice(0, 22)}`;
}

export function experimentKeys(config: Config) {
  const p = `${config.QUEUE_PREFIX}:pm:exp`;
  return {
    /** JSON {variant, chosenAt} */
    winner: (experimentId: string) => `${p}:${experimentId}:winner`,
  };
}

export const storedVariantSchema = z.object({
  name: z.string(),
  tier: z.enum(TIERS),
  /** Set when the caller pinned the variant to one model family (see schema.ts for how). */
  model: z.enum(MODEL_FAMILIES).optional(),
  size: z.enum(IMAGE_SIZES),
  aspectRatio: z.enum(ASPECT_RATIOS),
  /** The prompt the variant's runs were sent with (experiment prompt, or its own, plus any suffix). */
  prompt: z.string(),
  /** Image job ids of the runs, repeat 1 first. */
  runIds: z.array(z.string()),
});
export type StoredVariant = z.infer<typeof storedVariantSchema>;

/** The parent job's data. */
export const experimentJobDataSchema = z.object({
  v: z.literal(EXPERIMENT_DATA_VERSION),
  tenant: z.string().nullable(),
  prompt: z.string(),
  repeats: z.number().int().min(1),
  createdAt: z.string(),
  variants: z.array(storedVariantSchema).min(1),
  webhook: webhookSchema.optional(),
  metadata: metadataSchema.optional(),
});
export type ExperimentJobData = z.infer<typeof experimentJobDataSchema>;

export const variantSummarySchema = z.object({
  runs: z.number().int().min(0),
  succeeded: z.number().int().min(0),
  failed: z.number().int().min(0),
  canceled: z.number().int().min(0),
  /** Runs not finished yet (always 0 once the experiment completed). */
  pending: z.number().int().min(0),
  /** Mean upstream latency of the calls that produced the images; null without a succeeded run. */
  meanLatencyMs: z.number().min(0).nullable(),
  /** Spent on every run of the variant, failed ones included, USD. */
  totalCostUsd: z.number().min(0),
});
export type VariantSummary = z.infer<typeof variantSummarySchema>;

/** The parent's return value, written once by the finisher. */
export const experimentResultSchema = z.object({
  v: z.literal(1),
  finishedAt: z.string(),
  variants: z.array(variantSummarySchema.extend({ name: z.string() })),
});
export type ExperimentResult = z.infer<typeof experimentResultSchema>;

export function createExperimentQueue(config: Config, connection: Redis): Queue {
  return new Queue(EXPERIMENT_QUEUE, {
    connection,
    prefix: config.QUEUE_PREFIX,
    streams: { events: { maxLen: config.EVENTS_MAX_LEN } },
  });
}

/** Options of an experiment's parent job: retried if the finisher fails, kept for JOB_RETENTION. */
export function experimentJobOptions(config: Config, experimentId: string): JobsOptions {
  const retentionSeconds = Math.ceil(config.JOB_RETENTION / 1000);
  return {
    jobId: experimentId,
    attempts: PARENT_ATTEMPTS,
    backoff: { type: 'exponential', delay: PARENT_BACKOFF_MS },
    removeOnComplete: { age: retentionSeconds },
    removeOnFail: { age: retentionSeconds },
  };
}
