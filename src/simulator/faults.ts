/**
 * Fault injection: the failure modes real Gemini image calls show, chosen per request either by a
 * marker in the prompt (deterministic, for tests) or by seeded probabilities (for load and chaos).
 */
import type { ModelFamily } from '../models/catalogue.js';
import type { Rng } from './prng.js';

export const FAULTS = [
  '429',
  '429-day',
  '429-bare',
  '500',
  '503',
  'hang',
  'truncate',
  'reset',
  'image-safety',
  'no-image',
  'image-other',
  'block',
  'degrade',
  'two-images',
  'text-only',
] as const;
export type Fault = (typeof FAULTS)[number];

export function isFault(s: string): s is Fault {
  return (FAULTS as readonly string[]).includes(s);
}

export interface FaultMarker {
  readonly fault: Fault;
  /** A family (`fast` | `pro`) or an exact model id the marker is limited to. */
  readonly only: string | undefined;
  /** Fire for the first N matching requests with this prompt only. */
  readonly times: number | undefined;
  /** Position among the prompt's markers; counters are kept per (prompt, position). */
  readonly position: number;
  readonly text: string;
}

const MARKER = /\[sim:([^\]@*]*)(?:@([^\]*]*))?(?:\*([^\]]*))?\]/g;

/** Markers in a prompt, in order. Throws with a readable message on a malformed one. */
export function parseMarkers(prompt: string): FaultMarker[] {
  const out: FaultMarker[] = [];
  for (const m of prompt.matchAll(MARKER)) {
    const [text, name = '', only, times] = m;
    if (!isFault(name)) throw new Error(`unknown fault "${name}" in marker ${text} (known: ${FAULTS.join(', ')})`);
    if (only !== undefined && !/^[A-Za-z0-9._-]+$/.test(only)) throw new Error(`bad model filter in marker ${text}`);
    if (times !== undefined && !/^[1-9]\d{0,6}$/.test(times)) throw new Error(`bad count in marker ${text}: use *N with N >= 1`);
    out.push({ fault: name, only, times: times === undefined ? undefined : Number(times), position: out.length, text });
  }
  return out;
}

/**
 * Counts how often each counted marker fired, per prompt text. Bounded: the oldest prompts are
 * forgotten first (a forgotten `*N` marker fires again, which only matters after 50k prompts).
 */
export class MarkerLedger {
  private readonly fired = new Map<string, number>();

  constructor(private readonly maxEntries = 50_000) {}

  /** The fault of the first marker that applies to this request, consuming one of its `*N` uses. */
  pick(markers: readonly FaultMarker[], promptKey: string, family: ModelFamily, modelId: string): Fault | undefined {
    for (const marker of markers) {
      if (marker.only !== undefined && marker.only !== family && marker.only !== modelId) continue;
      if (marker.times === undefined) return marker.fault;
      const key = `${promptKey}#${marker.position}`;
      const count = this.fired.get(key) ?? 0;
      if (count >= marker.times) continue;
      this.fired.delete(key);
      this.fired.set(key, count + 1);
      while (this.fired.size > this.maxEntries) this.fired.delete(this.fired.keys().next().value as string);
      return marker.fault;
    }
    return undefined;
  }

  clear(): void {
    this.fired.clear();
  }
}

/** At most one fault per request: the rates are stacked on [0, 1) in FAULTS order. */
export function pickRandomFault(rng: Rng, rates: Partial<Record<Fault, number>>): Fault | undefined {
  const u = rng.next();
  let acc = 0;
  for (const fault of FAULTS) {
    acc += rates[fault] ?? 0;
    if (u < acc) return fault;
  }
  return undefined;
}

/** Sum of two rate tables (base rates plus the extra ones at peak). */
export function addRates(a: Partial<Record<Fault, number>>, b: Partial<Record<Fault, number>>): Partial<Record<Fault, number>> {
  const out: Partial<Record<Fault, number>> = { ...a };
  for (const fault of FAULTS) {
    const extra = b[fault];
    if (extra !== undefined) out[fault] = (out[fault] ?? 0) + extra;
  }
  return out;
}

/** Validates a rate table: known faults, each in [0, 1], total at most 1. */
export function checkRates(rates: Partial<Record<string, number>>, what: string): Partial<Record<Fault, number>> {
  let total = 0;
  for (const [name, rate] of Object.entries(rates)) {
    if (!isFault(name)) throw new Error(`${what}: unknown fault "${name}" (known: ${FAULTS.join(', ')})`);
    if (typeof rate !== 'number' || !Number.isFinite(rate) || rate < 0 || rate > 1) {
      throw new Error(`${what}: rate of ${name} must be a number between 0 and 1`);
    }
    total += rate;
  }
  if (total > 1 + 1e-9) throw new Error(`${what}: rates add up to ${total}, more than 1`);
  return rates as Partial<Record<Fault, number>>;
}
