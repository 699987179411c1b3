/**
 * Helpers for experiment tests: call the experiment routes of a pipeline's API and wait for an
 * experiment to complete.
 */
import { request } from 'undici';
import type { Pipeline } from './pipeline.js';
import { waitFor } from './stack.js';

export interface ApiAnswer {
  status: number;
  body: Record<string, any>;
  headers: Record<string, string | string[] | undefined>;
}

export async function callApi(p: Pipeline, method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown, apiKey?: string): Promise<ApiAnswer> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (apiKey) headers['authorization'] = `Bearer ${apiKey}`;
  const res = await request(`${p.api.url}${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  const text = await res.body.text();
  let parsed: Record<string, any>;
  try {
    parsed = JSON.parse(text) as Record<string, any>;
  } catch {
    parsed = { text };
  }
  return { status: res.statusCode, body: parsed, headers: res.headers };
}

export const createExperiment = (p: Pipeline, body: unknown, apiKey?: string) => callApi(p, 'POST', '/v1/experiments', body, apiKey);
export const getExperiment = (p: Pipeline, id: string, apiKey?: string) => callApi(p, 'GET', `/v1/experiments/${id}`, undefined, apiKey);
export const pickWinner = (p: Pipeline, id: string, body: unknown, apiKey?: string) =>
  callApi(p, 'POST', `/v1/experiments/${id}/winner`, body, apiKey);

/** Wait until GET says completed; returns that view. */
export function settleExperiment(p: Pipeline, id: string, apiKey?: string, timeoutMs = 30_000): Promise<Record<string, any>> {
  return waitFor(`experiment ${id} to complete`, async () => {
    const res = await getExperiment(p, id, apiKey);
    return res.status === 200 && res.body['status'] === 'completed' ? res.body : undefined;
  }, timeoutMs);
}
