/**
 * Experiments for the API: create one (a BullMQ flow, added atomically: either the parent and every
 * run are stored or nothing is), read it back with its runs side by side, and record the winner.
 *
 * The read side (`ExperimentReader`) is also what renders the experiment.completed webhook payload,
 * so a webhook carries the same JSON as `GET /v1/experiments/:id`.
 */
import type { FlowJob, FlowProducer, Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import type { Config } from '../config/env.js';
import { PixelmillError, isPixelmillError } from '../errors/catalogue.js';
import { STORED_JOB_VERSION, storedJobDataSchema, type StoredJobData } from '../jobs/record.js';
import { zodIssues, type WebhookTarget } from '../jobs/request.js';
import type { ModelFamily } from '../models/catalogue.js';
import { IMAGE_JOB_NAME, IMAGE_QUEUE, imageJobOptions, newJobId } from '../queue/image-queue.js';
import { viewJob, type JobView } from '../queue/job-view.js';
import { redisReady } from '../queue/producer.js';
import { sha256Hex, type ObjectStore } from '../storage/object-store.js';
import { assertWebhooksEnabled } from '../webhooks/outbox.js';
import {
  EXPERIMENT_DATA_VERSION, EXPERIMENT_ID_PATTERN, EXPERIMENT_JOB_NAME, EXPERIMENT_QUEUE,
  experimentJobDataSchema, experimentJobOptions, experimentKeys, experimentResultSchema, newExperimentId,
  type ExperimentJobData, type StoredVariant, type VariantSummary,
} from './experiment-queue.js';
import { resolveExperiment } from './request.js';
import { isTerminalRun, runFromJob, summarizeRuns, type RunView } from './summary.js';

export type ExperimentStatus = 'running' | 'completed';

export interface Winner {
  variant: string;
  chosenAt: string;
}

export interface VariantView {
  name: string;
  tier: StoredVariant['tier'];
  /** The model family the variant is pinned to; null when the tier routes it. */
  model: ModelFamily | null;
  size: StoredVariant['size'];
  aspectRatio: StoredVariant['aspectRatio'];
  prompt: string;
  runs: RunView[];
  summary: VariantSummary;
}

export interface ExperimentView {
  id: string;
  status: ExperimentStatus;
  prompt: string;
  repeats: number;
  createdAt: string;
  finishedAt: string | null;
  metadata: Record<string, string> | null;
  webhook?: WebhookTarget;
  /** Every run of every variant, counted. */
  counts: VariantSummary;
  winner: Winner | null;
  variants: VariantView[];
}

export interface ExperimentReaderDeps {
  config: Config;
  redis: Redis;
  imageQueue: Queue;
  experimentQueue: Queue;
  store: ObjectStore;
  now?: () => number;
  /** Upper bound on one read, so a hung Redis becomes QUEUE_UNAVAILABLE instead of a hung request. */
  redisTimeoutMs?: number;
}

/** A leaf of the experiment's flow: one run. */
type FlowChildJob = Omit<FlowJob, 'children'>;

const winnerSchema = z.object({ variant: z.string(), chosenAt: z.string() });
const winnerRequestSchema = z.object({ variant: z.string().min(1, { message: 'must name a variant' }) }).strict();

/** Reads experiments (tenant-scoped). */
export class ExperimentReader {
  protected readonly config: Config;
  protected readonly redis: Redis;
  protected readonly imageQueue: Queue;
  protected readonly experimentQueue: Queue;
  protected readonly store: ObjectStore;
  protected readonly now: () => number;
  protected readonly redisTimeoutMs: number;

  constructor(deps: ExperimentReaderDeps) {
    this.config = deps.config;
    this.redis = deps.redis;
    this.imageQueue = deps.imageQueue;
    this.experimentQueue = deps.experimentQueue;
    this.store = deps.store;
    this.now = deps.now ?? Date.now;
    this.redisTimeoutMs = deps.redisTimeoutMs ?? 10_000;
  }

  /** The experiment's view, or undefined when it does not exist or belongs to another tenant. */
  async get(id: string, tenant: string | null): Promise<ExperimentView | undefined> {
    if (!EXPERIMENT_ID_PATTERN.test(id)) return undefined;
    return this.redisOp('read experiment', () => this.read(id, { tenant }));
  }

  /** The view whoever owns it (for events already addressed to the owner, such as webhooks). */
  async getForOwner(id: string): Promise<ExperimentView | undefined> {
    if (!EXPERIMENT_ID_PATTERN.test(id)) return undefined;
    return this.redisOp('read experiment', () => this.read(id, 'owner'));
  }

  private async read(id: string, reader: { tenant: string | null } | 'owner'): Promise<ExperimentView | undefined> {
    // State first, then the job: the job read is then at least as far along as the state says.
    const state = await this.experimentQueue.getJobState(id);
    if (state === 'unknown') return undefined;
    const parent = await this.experimentQueue.getJob(id);
    if (!parent) return undefined;
    const parsed = experimentJobDataSchema.safeParse(parent.data);
    if (!parsed.success) return undefined;
    const data = parsed.data;
    if (reader !== 'owner' && data.tenant !== reader.tenant) return undefined;

    const [variants, winner] = await Promise.all([
      Promise.all(data.variants.map((v) => this.variantView(v))),
      this.readWinner(id),
    ]);
    const allRuns = variants.flatMap((v) => v.runs);
    const finished = (state === 'completed' || state === 'failed') && Boolean(parent.finishedOn);
    // A parent the finisher could not process (after all its retries) still ends the experiment once
    // every run ended: the runs are the truth.
    const completed = finished && (state === 'completed' || allRuns.every((r) => isTerminalRun(r.status)));
    if (completed && state === 'completed') applyStoredSummaries(variants, parent.returnvalue);

    const view: ExperimentView = {
      id,
      status: completed ? 'completed' : 'running',
      prompt: data.prompt,
      repeats: data.repeats,
      createdAt: data.createdAt,
      finishedAt: completed && parent.finishedOn ? new Date(parent.finishedOn).toISOString() : null,
      metadata: data.metadata ?? null,
      counts: summarizeRuns(allRuns),
      winner,
      variants,
    };
    if (data.webhook) view.webhook = data.webhook;
    return view;
  }

  private async variantView(v: StoredVariant): Promise<VariantView> {
    const runs = await Promise.all(v.runIds.map(async (jobId, i) => runFromJob(jobId, i + 1, await this.loadRun(jobId))));
    return {
      name: v.name, tier: v.tier, model: v.model ?? null, size: v.size, aspectRatio: v.aspectRatio, prompt: v.prompt,
      runs, summary: summarizeRuns(runs),
    };
  }

  private async loadRun(jobId: string): Promise<JobView | undefined> {
    const state = await this.imageQueue.getJobState(jobId);
    if (state === 'unknown') return undefined;
    const job = await this.imageQueue.getJob(jobId);
    if (!job) return undefined;
    try {
      return await viewJob(job, { config: this.config, store: this.store, now: this.now, state });
    } catch (err) {
      // Removed between the two reads (retention).
      if (isPixelmillError(err) && err.code === 'NOT_FOUND') return undefined;
      throw err;
    }
  }

  private async readWinner(id: string): Promise<Winner | null> {
    const raw = await this.redis.get(experimentKeys(this.config).winner(id));
    if (raw === null) return null;
    try {
      const parsed = winnerSchema.safeParse(JSON.parse(raw));
      return parsed.success ? parsed.data : null;
    } catch {
      return null;
    }
  }

  protected async redisOp<T>(what: string, op: () => Promise<T>): Promise<T> {
    try {
      await redisReady(this.redis, this.redisTimeoutMs);
      return await withTimeout(op(), this.redisTimeoutMs, what);
    } catch (err) {
      if (isPixelmillError(err)) throw err;
      const reason = err instanceof Error ? err.message : String(err);
      throw new PixelmillError('QUEUE_UNAVAILABLE', `Redis did not complete ${what}: ${reason}`, { cause: err });
    }
  }
}

/**
 * Once completed, the summary the finisher stored is the record: runs removed since (retention)
 * would otherwise vanish from the counts.
 */
function applyStoredSummaries(variants: VariantView[], returnValue: unknown): void {
  const stored = experimentResultSchema.safeParse(returnValue);
  if (!stored.success) return;
  for (const v of variants) {
    const s = stored.data.variants.find((x) => x.name === v.name);
    if (s) {
      const { name: _name, ...summary } = s;
      v.summary = summary;
    }
  }
}

export interface ExperimentServiceDeps extends ExperimentReaderDeps {
  flowProducer: FlowProducer;
}

/** Creates experiments and records winners; reads like ExperimentReader. */
export class ExperimentService extends ExperimentReader {
  private readonly flowProducer: FlowProducer;

  constructor(deps: ExperimentServiceDeps) {
    super(deps);
    this.flowProducer = deps.flowProducer;
  }

  async create(input: unknown, tenant: string | null): Promise<ExperimentView> {
    const { request, variants } = resolveExperiment(input);
    if (request.webhook) assertWebhooksEnabled(this.config);
    const id = newExperimentId();
    const createdAt = new Date(this.now()).toISOString();
    const stored: StoredVariant[] = variants.map((v) => ({
      name: v.name,
      tier: v.request.tier,
      ...(v.model ? { model: v.model } : {}),
      size: v.request.size,
      aspectRatio: v.request.aspectRatio,
      prompt: v.request.prompt,
      runIds: Array.from({ length: request.repeats }, () => newJobId()),
    }));
    const data: ExperimentJobData = experimentJobDataSchema.parse({
      v: EXPERIMENT_DATA_VERSION,
      tenant,
      prompt: request.prompt,
      repeats: request.repeats,
      createdAt,
      variants: stored,
      ...(request.webhook ? { webhook: request.webhook } : {}),
      ...(request.metadata ? { metadata: request.metadata } : {}),
    });

    // Repeat-major order: every variant gets its first run before any gets its second, so a busy
    // queue shows all variants early.
    const children: FlowChildJob[] = [];
    for (let r = 0; r < request.repeats; r++) {
      for (const [i, v] of variants.entries()) {
        const jobId = stored[i]!.runIds[r]!;
        const childData: StoredJobData = storedJobDataSchema.parse({
          v: STORED_JOB_VERSION,
          tenant,
          request: {
            prompt: v.request.prompt,
            tier: v.request.tier,
            priority: v.request.priority,
            size: v.request.size,
            aspectRatio: v.request.aspectRatio,
            inputImages: [],
            allowDowngrade: v.request.allowDowngrade,
          },
          createdAt,
          promptSha256: sha256Hex(v.request.prompt),
          experiment: { id, variant: v.name, repeat: r + 1 },
        });
        children.push({
          name: IMAGE_JOB_NAME,
          queueName: IMAGE_QUEUE,
          data: childData,
          // A failed (or cancelled) run must not fail or block the experiment: it moves to the
          // parent's ignored failures, and the parent runs once every run ended.
          opts: { ...imageJobOptions(this.config, jobId, v.request.priority, r * variants.length + i), ignoreDependencyOnFailure: true },
        });
      }
    }
    const streams = { events: { maxLen: this.config.EVENTS_MAX_LEN } };
    await this.redisOp('add experiment', () =>
      this.flowProducer.add(
        { name: EXPERIMENT_JOB_NAME, queueName: EXPERIMENT_QUEUE, data, opts: experimentJobOptions(this.config, id), children },
        { queuesOptions: { [EXPERIMENT_QUEUE]: { streams }, [IMAGE_QUEUE]: { streams } } },
      ),
    );
    const view = await this.get(id, tenant);
    if (!view) throw new PixelmillError('INTERNAL', `experiment ${id} was added but cannot be read back`);
    return view;
  }

  /**
   * Record the variant a caller picked. Allowed while the experiment runs, once the variant has a
   * succeeded run (there is an image to go on with); a later choice replaces an earlier one.
   */
  async chooseWinner(id: string, tenant: string | null, body: unknown): Promise<ExperimentView> {
    const parsed = winnerRequestSchema.safeParse(body);
    if (!parsed.success) throw invalidWinner(zodIssues(parsed.error));
    const view = await this.get(id, tenant);
    if (!view) throw new PixelmillError('NOT_FOUND', `No experiment ${id}`);
    const name = parsed.data.variant;
    const variant = view.variants.find((v) => v.name === name);
    if (!variant) {
      throw invalidWinner([{ path: 'variant', message: `experiment ${id} has no variant "${name}" (its variants: ${view.variants.map((v) => `"${v.name}"`).join(', ')})` }]);
    }
    if (variant.summary.succeeded === 0) {
      throw invalidWinner([{ path: 'variant', message: `variant "${name}" has no succeeded run yet; pick a variant that made an image` }]);
    }
    const winner: Winner = { variant: name, chosenAt: new Date(this.now()).toISOString() };
    await this.redisOp('record winner', () =>
      this.redis.set(experimentKeys(this.config).winner(id), JSON.stringify(winner), 'PX', this.config.JOB_RETENTION),
    );
    return { ...view, winner };
  }
}

function invalidWinner(issues: { path: string; message: string }[]): PixelmillError {
  return new PixelmillError('INVALID_REQUEST', `Invalid winner (${issues.map((i) => `${i.path}: ${i.message}`).join('; ')})`, { details: { issues } });
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

