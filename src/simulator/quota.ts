/**
 * Requests-per-minute quota as a token bucket, and the two duration spellings Google uses in a 429:
 * protobuf Duration in RetryInfo ("12.345678s") and Go's duration text in the message
 * ("Please retry in 47.884324799s.", "6h34m53s").
 */

export type TakeResult = { ok: true } | { ok: false; retryAfterMs: number };

export class TokenBucket {
  private tokens: number | undefined;
  private last = 0;

  /**
   * Take one token. `capacity` and `refillPerMs` are passed on every call because they change at
   * run time (peak hours lower the quota); a shrunken capacity caps the tokens already saved.
   */
  take(now: number, capacity: number, refillPerMs: number): TakeResult {
    if (this.tokens === undefined) {
      this.tokens = capacity;
    } else {
      // A clock that steps back (an injected `now`) must not drain the bucket.
      const elapsed = Math.max(0, now - this.last);
      this.tokens = Math.min(capacity, this.tokens + elapsed * refillPerMs);
    }
    this.last = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return { ok: true };
    }
    return { ok: false, retryAfterMs: (1 - this.tokens) / refillPerMs };
  }
}

/** Whole microseconds, rounded up so that waiting the advertised delay is always enough. */
function micros(ms: number): number {
  return Math.max(1, Math.ceil(Math.round(ms * 1e6) / 1e3));
}

/** Protobuf JSON Duration: "47s" when whole, else six fractional digits ("12.345678s"). */
export function protoDuration(ms: number): string {
  const us = micros(ms);
  const whole = Math.floor(us / 1e6);
  const frac = us % 1e6;
  return frac === 0 ? `${whole}s` : `${whole}.${String(frac).padStart(6, '0')}s`;
}

/** Go's time.Duration text as Google's messages print it: "47.884324s", "6h34m53.5s", "250ms". */
export function goDuration(ms: number): string {
  const us = micros(ms);
  if (us < 1e6) {
    const wholeMs = Math.floor(us / 1e3);
    const fracUs = us % 1e3;
    return fracUs === 0 ? `${wholeMs}ms` : `${wholeMs}.${String(fracUs).padStart(3, '0').replace(/0+$/, '')}ms`;
  }
  const hours = Math.floor(us / 3.6e9);
  const minutes = Math.floor((us % 3.6e9) / 6e7);
  const secUs = us % 6e7;
  const sec = Math.floor(secUs / 1e6);
  const fracUs = secUs % 1e6;
  const secText = fracUs === 0 ? `${sec}s` : `${sec}.${String(fracUs).padStart(6, '0').replace(/0+$/, '')}s`;
  if (hours > 0) return `${hours}h${minutes}m${secText}`;
  if (minutes > 0) return `${minutes}m${secText}`;
  return secText;
}
