/**
 * Spill-over: whether a standard job whose first model's lane is full should take the tier's other
 * model now, or wait for a slot on the first one.
 *
 * Spilling keeps both quotas busy while a backlog lasts, but the other model (Pro, off-peak) answers
 * later: at the end of a backlog, a job that spills finishes after one that waited a moment for
 * Nano Banana 2. So the job waits when the first lane will reach it sooner than the other model's
 * extra latency: its next slot, plus one slot per job queued ahead of it (every waiting job counts as
 * ahead, which errs toward spilling), is compared with the difference of the two models' p50
 * latencies over the health window. Without the figures (no learned rate, no latency yet) it spills,
 * which is what keeps an idle quota from going to waste.
 *
 * Pure: the processor passes the lane's refusal, the queue's backlog and the health snapshot.
 */
export interface SpillInput {
  /** Until the first model's lane has a slot (the refusal's wait), ms. */
  waitMs: number;
  /** The first lane's rate in force, calls per minute; 0 = not paced. */
  firstRpm: number;
  /** Jobs waiting in the queue (waiting, prioritized, delayed), this one excluded or not: an estimate. */
  backlog: number;
  /** p50 latency of each model over the health window, ms; null = no calls measured yet. */
  firstP50Ms: number | null;
  otherP50Ms: number | null;
}

export type SpillDecision =
  | { spill: true; note: string }
  | { spill: false; untilFirstMs: number; note: string };

export function decideSpill(i: SpillInput): SpillDecision {
  if (i.firstP50Ms === null || i.otherP50Ms === null || !(i.firstRpm > 0)) {
    return { spill: true, note: 'no latency or rate figures yet' };
  }
  const extraLatencyMs = i.otherP50Ms - i.firstP50Ms;
  const untilFirstMs = i.waitMs + (Math.max(0, i.backlog) * 60_000) / i.firstRpm;
  const figures = `first lane in ~${seconds(untilFirstMs)} (${i.backlog} queued at ${Math.round(i.firstRpm)}/min), other model ${extraLatencyMs >= 0 ? `${seconds(extraLatencyMs)} slower` : `${seconds(-extraLatencyMs)} faster`} at p50`;
  if (untilFirstMs > extraLatencyMs) return { spill: true, note: figures };
  return { spill: false, untilFirstMs, note: figures };
}

/**
 * Sharing: whether a standard job should go to the other model FIRST, while the first model's lane
 * still has room. A backlog that would keep the first model busy (at its known quota) longer than the
 * other model's extra latency finishes sooner with both quotas serving it from the start; the other
 * model's quota is lost while it idles (a provider's bucket stops filling when full), so its slots are
 * not free, but they are used only then. Unlike spilling, sharing needs the figures: without a known
 * rate for the first lane (no 429 announced a quota yet, no ceiling) or without latencies, a job goes
 * to the first model as the tier says, so a small batch never pays the other model's price.
 */
export function decideShare(i: Omit<SpillInput, 'waitMs'>): { share: boolean; note: string } {
  if (i.firstP50Ms === null || i.otherP50Ms === null || !(i.firstRpm > 0)) return { share: false, note: 'no latency or rate figures' };
  const d = decideSpill({ ...i, waitMs: 0 });
  return { share: d.spill, note: d.note };
}

function seconds(ms: number): string {
  return ms >= 10_000 ? `${Math.round(ms / 1000)} s` : `${(ms / 1000).toFixed(1)} s`;
}
