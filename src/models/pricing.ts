/**
 * Price table: USD per 1M tokens, per model family and token kind.
 *
 * Source: ai.google.dev/gemini-api/docs/pricing, snapshot of 2026-03-30, as summarised in
 * ../shared/reference/gemini-image-api.md §4.2 (standard, non-batch prices, paid tier).
 * Image output tokens are billed at the image rate; the rest of the candidates tokens and the thinking
 * tokens at the text rate (the reference notes this split is inferred, not documented).
 *
 * Update `PRICES_AS_OF` with the table.
 */
import type { ImageSize, ModelFamily } from './catalogue.js';
import { CAPABILITIES } from './catalogue.js';

export const PRICES_AS_OF = '2026-03-30';
export const PRICES_SOURCE = 'https://ai.google.dev/gemini-api/docs/pricing';

export interface FamilyPrices {
  /** Input tokens (text and image), USD per 1M. */
  readonly inputPerM: number;
  /** Text and thinking output tokens, USD per 1M. */
  readonly textOutputPerM: number;
  /** Image output tokens, USD per 1M. */
  readonly imageOutputPerM: number;
}

export const PRICES: Record<ModelFamily, FamilyPrices> = {
  fast: { inputPerM: 0.5, textOutputPerM: 3, imageOutputPerM: 60 },
  pro: { inputPerM: 2, textOutputPerM: 12, imageOutputPerM: 120 },
};

export interface TokenUsage {
  promptTokens: number;
  /** All candidates tokens, image included. */
  candidatesTokens: number;
  /** The IMAGE modality share of candidatesTokens. */
  imageTokens: number;
  thoughtsTokens: number;
}

/** Cost in USD of one call from its usageMetadata. Rounded to 1e-6 USD. */
export function costFromUsage(family: ModelFamily, usage: TokenUsage): number {
  const p = PRICES[family];
  const textOut = Math.max(0, usage.candidatesTokens - usage.imageTokens) + usage.thoughtsTokens;
  const usd =
    (usage.promptTokens * p.inputPerM + textOut * p.textOutputPerM + usage.imageTokens * p.imageOutputPerM) / 1e6;
  return Math.round(usd * 1e6) / 1e6;
}

/** The list price of one image (image tokens only), for estimates before a call is made. */
export function listPricePerImage(family: ModelFamily, size: ImageSize): number | undefined {
  const tokens = CAPABILITIES[family].imageTokens[size];
  return tokens === undefined ? undefined : Math.round((tokens * PRICES[family].imageOutputPerM) / 1e6 * 1e6) / 1e6;
}
