/**
 * API keys and lane ids. GEMINI_API_KEY may hold several keys, comma-separated, each from its own
 * Google project and so with its own quota. A lane is one (model id, key) pair.
 *
 * Keys never leave this process in clear: logs, Redis keys and the admin view name a key by the first
 * 12 hex digits of its sha256 (`keyId`).
 */
import { createHash } from 'node:crypto';
import type { Config } from '../config/env.js';

/** The keys in GEMINI_API_KEY, in order; one key (the usual case) gives a list of one. Unset → ['']. */
export function geminiApiKeys(raw: string | undefined): string[] {
  const keys = (raw ?? '').split(',').map((k) => k.trim()).filter(Boolean);
  // No key at all: one anonymous lane (a local simulator needs no key; GeminiClient then sends none).
  return keys.length > 0 ? [...new Set(keys)] : [''];
}

/** The key the GeminiClient is built with: the first one (lanes override it per call). */
export function primaryApiKey(config: Pick<Config, 'GEMINI_API_KEY'>): string {
  return geminiApiKeys(config.GEMINI_API_KEY)[0]!;
}

/** A key's public name: a short sha256, safe to log and to put in Redis key names. */
export function keyId(apiKey: string): string {
  return apiKey === '' ? 'nokey' : createHash('sha256').update(apiKey).digest('hex').slice(0, 12);
}

/** `gemini-3-pro-image@1a2b3c4d5e6f` */
export function laneId(modelId: string, apiKeyId: string): string {
  return `${modelId}@${apiKeyId}`;
}
