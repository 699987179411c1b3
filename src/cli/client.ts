/**
 * A small client of pixelmill's own HTTP API, used by `pixelmill submit` and `pixelmill demo`.
 * The CLI never talks to Redis or the model: it goes through the API like any other caller.
 */
import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { request } from 'undici';
import type { JobRequestInput } from '../jobs/request.js';
import { extensionFor } from '../storage/object-store.js';

export interface JobViewLite {
  id: string;
  status: 'queued' | 'running' | 'retrying' | 'succeeded' | 'failed';
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
          if (job.status === 'succeeded' || job.status === 'failed') open.delete(id);
        }),
      );
      if (open.size > 0) await new Promise((r) => setTimeout(r, pollMs));
    }
    return ids.map((id) => last.get(id)!);
  }

  /** Download a finished job's image into `dir` as `{id}.{ext}`; returns the path. */
  async download(job: JobViewLite, dir: string): Promise<string> {
    if (!job.output) throw new Error(`job ${job.id} has no output`);
    await mkdir(dir, { recursive: true });
    const path = join(dir, `${job.id}.${extensionFor(job.output.mimeType)}`);
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
