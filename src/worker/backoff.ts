/**
 * Backoff for retryable failures (timeouts, 5xx, unreadable bodies): exponential with full jitter,
 * delay = random(0, min(cap, base * 2^(attemptsMade - 1))). Full jitter spreads a fleet's retries
 * instead of synchronising them (the thundering herd after an outage).
 *
 * The delay is clipped to the job's deadline, so the job wakes in time to fail with DEADLINE_EXCEEDED
 * instead of sleeping past it.
 */
export interface BackoffSettings {
  baseMs: number;
  capMs: number;
}

export function fullJitterDelay(attemptsMade: number, s: BackoffSettings, random: () => number = Math.random): number {
  const ceiling = Math.min(s.capMs, s.baseMs * 2 ** Math.max(0, attemptsMade - 1));
  return Math.floor(random() * ceiling);
}

export function clipToDeadline(delayMs: number, now: number, deadline: number | undefined): number {
  if (deadline === undefined) return delayMs;
  return Math.max(0, Math.min(delayMs, deadline - now));
}

/** A small random addition to cooldowns so workers do not all come back on the same millisecond. */
export function cooldownJitter(delayMs: number, random: () => number = Math.random): number {
  return Math.floor(random() * Math.min(1_000, 50 + delayMs * 0.1));
}
