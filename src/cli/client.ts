/**
 * A small client of pixelmill's own HTTP API, used by `pixelmill submit` and `pixelmill demo`.
 * The CLI never talks to Redis or the model: it goes through the API like any other caller.
 */
import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parse as parseCsv } from 'csv-parse/sync';
import { request } from 'undici';
import type { BatchCounts } from '../batches/view.js';
import type { JobRequestInput, WebhookTarget } from '../jobs/request.js';
import { extensionFor } from '../storage/object-store.js';

export interface JobViewLite {
  id: string;
  status: 'queued' | 'running' | 'retrying' | 'succeeded' | 'failed' | 'canceled';
  request: { prompt: string; tier: string; size: string; aspectRatio: string };
  route: { model: string; reason: string } | null;
  output?: { key: string; url: string; mimeType: string; width: number; height: number; bytes: number };
  costUsd?: number;
  error?: { code: string; message: string };
}

export class ApiError extends Error {
  constructor(readonly status: number, readonly body: unknown) {
    const e = (body as { error?: { code?: string; message?: string; issues?: { path: string; message: string }[] } }).error;
    const issues = e?.issues?.map((i) => `\n  ${i.path}: ${i.message}`).join('') ?? '';
    super(`${status} ${e?.code ?? ''}: ${e?.message ?? JSON.stringify(body)}${issues}`);
  }
}

/** The batch view's counts (the same shape the API answers with). */
export type BatchCountsLite = BatchCounts;

/** GET /v1/batches/:id (src/batches/view.ts), as far as the CLI reads it. */
export interface BatchViewLite {
  id: string;
  status: 'storing' | 'open' | 'completed' | 'canceled' | 'failed_to_store';
  total: number;
  counts: BatchCountsLite;
  progress: number;
  costUsd: number;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  etaSeconds: number | null;
  skipped: number;
  /** POST only: jobs skipInvalid left out. */
  rejected?: { count: number; jobs: ({ index?: number; line?: number; issues: { path: string; message: string }[] })[]; omitted: number };
}

export interface BatchJobLite {
  id: string;
  index: number;
  status: JobViewLite['status'];
  output?: { key: string; url: string; mimeType: string; width: number; height: number; bytes: number };
  costUsd?: number;
  error?: { code: string; message: string };
}

/** Batch-level options of POST /v1/batches. */
export interface BatchOptionsInput {
  defaults?: Partial<JobRequestInput>;
  webhook?: WebhookTarget;
  metadata?: Record<string, string>;
  skipInvalid?: boolean;
  maxCostUsd?: number;
}

export class PixelmillClient {
  constructor(readonly baseUrl: string, private readonly apiKey?: string) {}

  private headers(): Record<string, string> {
    return { 'content-type': 'application/json', ...(this.apiKey ? { authorization: `Bearer ${this.apiKey}` } : {}) };
  }

  async submit(job: JobRequestInput): Promise<JobViewLite> {
    const res = await request(`${this.baseUrl}/v1/jobs`, { method: 'POST', headers: this.headers(), body: JSON.stringify(job) });
    const body = await res.body.json();
    if (res.statusCode >= 300) throw new ApiError(res.statusCode, body);
    return body as JobViewLite;
  }

  async get(id: string): Promise<JobViewLite> {
    const res = await request(`${this.baseUrl}/v1/jobs/${encodeURIComponent(id)}`, { headers: this.headers() });
    const body = await res.body.json();
    if (res.statusCode >= 300) throw new ApiError(res.statusCode, body);
    return body as JobViewLite;
  }

  /** A batch as one JSON body (at most 10,000 jobs). */
  async createBatch(jobs: JobRequestInput[], options: BatchOptionsInput = {}): Promise<BatchViewLite> {
    const res = await request(`${this.baseUrl}/v1/batches`, { method: 'POST', headers: this.headers(), body: JSON.stringify({ ...options, jobs }) });
    return this.json(res);
  }

  /**
   * A batch as NDJSON, streamed: an options line `{"batch": options}`, then one job per line (so a
   * job's NDJSON line number is its index + 2). Up to 100,000 jobs.
   */
  async createBatchNdjson(jobs: Iterable<JobRequestInput>, options: BatchOptionsInput = {}): Promise<BatchViewLite> {
    function* lines(): Generator<string> {
      yield `${JSON.stringify({ batch: options })}\n`;
      for (const job of jobs) yield `${JSON.stringify(job)}\n`;
    }
    const res = await request(`${this.baseUrl}/v1/batches`, {
      method: 'POST',
      headers: { ...this.headers(), 'content-type': 'application/x-ndjson' },
      body: Readable.from(lines()),
    });
    return this.json(res);
  }

  async getBatch(id: string): Promise<BatchViewLite> {
    return this.json(await request(`${this.baseUrl}/v1/batches/${encodeURIComponent(id)}`, { headers: this.headers() }));
  }

  async batchJobs(id: string, query: { status?: string; cursor?: string; limit?: number } = {}): Promise<{ data: BatchJobLite[]; nextCursor: string | null }> {
    const params = new URLSearchParams();
    if (query.status) params.set('status', query.status);
    if (query.cursor) params.set('cursor', query.cursor);
    if (query.limit) params.set('limit', String(query.limit));
    const qs = params.size > 0 ? `?${params}` : '';
    return this.json(await request(`${this.baseUrl}/v1/batches/${encodeURIComponent(id)}/jobs${qs}`, { headers: this.headers() }));
  }

  /** Every job of the batch with this status, page by page. */
  async *allBatchJobs(id: string, status?: string): AsyncGenerator<BatchJobLite> {
    let cursor: string | undefined;
    do {
      const page = await this.batchJobs(id, { limit: 500, ...(status ? { status } : {}), ...(cursor ? { cursor } : {}) });
      yield* page.data;
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
  }

  async cancelBatch(id: string): Promise<BatchViewLite & { canceled: number; canceling: number }> {
    return this.json(await request(`${this.baseUrl}/v1/batches/${encodeURIComponent(id)}`, { method: 'DELETE', headers: this.headers() }));
  }

  /** Poll the batch until every job has ended; `onPoll` sees each view. */
  async waitBatch(id: string, onPoll: (batch: BatchViewLite) => void, pollMs = 500): Promise<BatchViewLite> {
    for (;;) {
      const batch = await this.getBatch(id);
      onPoll(batch);
      if (batch.finishedAt !== null || batch.status === 'failed_to_store') return batch;
      await new Promise((r) => setTimeout(r, pollMs));
    }
  }

  private async json<T>(res: Awaited<ReturnType<typeof request>>): Promise<T> {
    const body = await res.body.json();
    if (res.statusCode >= 300) throw new ApiError(res.statusCode, body);
    return body as T;
  }

  /** Poll until every job is terminal; `onChange` sees each status change. */
  async waitAll(ids: string[], onChange: (job: JobViewLite) => void, pollMs = 300): Promise<JobViewLite[]> {
    const last = new Map<string, JobViewLite>();
    const open = new Set(ids);
    while (open.size > 0) {
      await Promise.all(
        [...open].map(async (id) => {
          const job = await this.get(id);
          if (last.get(id)?.status !== job.status) onChange(job);
          last.set(id, job);
          if (job.status === 'succeeded' || job.status === 'failed' || job.status === 'canceled') open.delete(id);
        }),
      );
      if (open.size > 0) await new Promise((r) => setTimeout(r, pollMs));
    }
    return ids.map((id) => last.get(id)!);
  }

  /** Download a finished job's image into `dir` as `{name ?? id}.{ext}`; returns the path. */
  async download(job: Pick<JobViewLite, 'id' | 'output'>, dir: string, name?: string): Promise<string> {
    if (!job.output) throw new Error(`job ${job.id} has no output`);
    await mkdir(dir, { recursive: true });
    const path = join(dir, `${name ?? job.id}.${extensionFor(job.output.mimeType)}`);
    const res = await request(job.output.url);
    if (res.statusCode !== 200) {
      await res.body.dump();
      throw new Error(`downloading ${job.output.key} answered ${res.statusCode}`);
    }
    await pipeline(res.body as Readable, createWriteStream(path));
    return path;
  }
}

/** Read a prompts file: JSONL (one job request per line) or plain text (one prompt per line). */
export function parsePromptsFile(text: string): { line: number; job: JobRequestInput }[] {
  const out: { line: number; job: JobRequestInput }[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    if (line.startsWith('{')) {
      try {
        out.push({ line: i + 1, job: JSON.parse(line) as JobRequestInput });
      } catch (err) {
        throw new Error(`line ${i + 1}: not valid JSON (${(err as Error).message})`);
      }
    } else {
      out.push({ line: i + 1, job: { prompt: line } });
    }
  });
  return out;
}

/** A job read from a prompts file, with the file line it came from (for messages and file names). */
export interface FileJob {
  line: number;
  job: JobRequestInput;
}

/**
 * Read a prompts file by its extension: `.csv` is CSV with a header row (parseCsvJobs); anything else
 * is JSONL or plain text, line by line (parsePromptsFile).
 */
export function parseJobsFile(text: string, fileName: string): FileJob[] {
  return extname(fileName).toLowerCase() === '.csv' ? parseCsvJobs(text) : parsePromptsFile(text);
}

const TRUE_WORDS = ['true', '1', 'yes', 'y'];
const FALSE_WORDS = ['false', '0', 'no', 'n'];

/**
 * CSV with a header row naming job fields: prompt, tier, size, aspectRatio, priority, allowDowngrade,
 * deadline, webhook (a URL), inputImages (URLs or S3 keys separated by spaces or `|`), and
 * `metadata.<name>` columns. Empty cells are left out (the batch defaults or the server's apply);
 * unknown columns are sent as they are, so the server names them. Line numbers are the file's.
 */
export function parseCsvJobs(text: string): FileJob[] {
  const rows = parseCsv(text, { columns: true, skip_empty_lines: true, trim: true, bom: true, info: true, relax_column_count: false }) as {
    record: Record<string, string>;
    info: { lines: number };
  }[];
  return rows.map(({ record, info }) => {
    const job: Record<string, unknown> = {};
    const metadata: Record<string, string> = {};
    for (const [column, cell] of Object.entries(record)) {
      if (cell === '') continue;
      if (column.startsWith('metadata.')) {
        metadata[column.slice('metadata.'.length)] = cell;
      } else if (column === 'priority') {
        job[column] = /^-?\d+(\.\d+)?$/.test(cell) ? Number(cell) : cell;
      } else if (column === 'allowDowngrade') {
        const lower = cell.toLowerCase();
        job[column] = TRUE_WORDS.includes(lower) ? true : FALSE_WORDS.includes(lower) ? false : cell;
      } else if (column === 'inputImages') {
        job[column] = cell.split(/[\s|]+/).filter(Boolean).map((ref) => (/^https?:\/\//i.test(ref) ? { url: ref } : { s3Key: ref }));
      } else if (column === 'webhook') {
        job[column] = { url: cell };
      } else {
        job[column] = cell;
      }
    }
    if (Object.keys(metadata).length > 0) job['metadata'] = metadata;
    return { line: info.lines, job: job as unknown as JobRequestInput };
  });
}
