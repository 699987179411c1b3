/**
 * Spill-over: whether a standard job whose first model's lane is full should take the tier's other
 * model now, or wait for a slot on the first one.
 *
 * Spilling keeps both quotas busy while a backlog lasts, but the other model (Pro, off-peak) answers
 * later: at the end of a backlog, a job that spills finishes after one that waited a moment for
 * Nano Banana 2. So the job waits when the first lane will reach it sooner than the other model's
 * extra latency: its next slot, plus one slot per job queued behind it (if it goes to the other model,
 * the first lane serves them one slot sooner), is compared with the difference of the two models' p95
 * latencies over the health window. p95, not p50: a batch is done when its slowest job is, and
 * near the end of a backlog that is the slow end of Pro's range (10-20 s at 1K) against Nano
 * Banana 2's (5-10 s). Without the figures (no learned rate, no latency yet) it spills, which is what
 * keeps an idle quota from going to waste.
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
  /** p95 latency of each model over the health window, ms; null = no calls measured yet. */
  firstP95Ms: number | null;
  otherP95Ms: number | null;
}

export type SpillDecision =
  | { spill: true; note: string }
  | { spill: false; untilFirstMs: number; note: string };

export function decideSpill(i: SpillInput): SpillDecision {
  if (i.firstP95Ms === null || i.otherP95Ms === null || !(i.firstRpm > 0)) {
    return { spill: true, note: 'no latency or rate figures yet' };
  }
  const extraLatencyMs = i.otherP95Ms - i.firstP95Ms;
  const untilFirstMs = i.waitMs + (Math.max(0, i.backlog) * 60_000) / i.firstRpm;
  const figures = `first lane in ~${seconds(untilFirstMs)} (${i.backlog} queued at ${Math.round(i.firstRpm)}/min), other model ${extraLatencyMs >= 0 ? `${seconds(extraLatencyMs)} slower` : `${seconds(-extraLatencyMs)} faster`} at p95`;
  if (untilFirstMs > extraLatencyMs) return { spill: true, note: figures };
  return { spill: false, untilFirstMs, note: figures };
}

/**
 * Sharing: whether a standard job should go to the other model FIRST, while the first model's lane
 * still has room. A backlog that keeps the first model busy longer than the other model's extra
 * latency finishes sooner with both quotas serving it from the start: the other model's quota is lost
 * while it idles (a provider's bucket stops filling when full), so its slots are not free, but they
 * are used only then.
 *
 * How long the first model stays busy: at its known rate (a 429 announced the quota, or a ceiling),
 * the backlog over that rate. With no rate known yet (a service's first batch), at best the backlog
 * run on all of this worker's slots at the first model's p95: a backlog of more than about one round
 * of the slots at 1K. The latencies are the health window's p95s, or before any call the catalogue's
 * measured ranges (their upper ends): only their difference and ratio matter then, so a scaled clock
 * (the benchmarks) decides the same.
 *
 * The processor asks only while this worker has fewer than LANE_SHARE_SLOTS of its slots on the other
 * model through sharing: enough to keep that model's quota from idling, while the first model keeps
 * the slots it needs for its own quota.
 * The other model's saved-up burst goes to spill-over once the first lane is full. Without a backlog
 * worth it, a job goes to the first model as the tier says, so a small batch never pays Pro prices.
 */
export interface ShareInput {
  /** The first lane's rate in force, calls per minute; 0 = not known yet. */
  firstRpm: number;
  backlog: number;
  /** p95 latency of each model over the health window, ms; null = no calls measured yet. */
  firstP95Ms: number | null;
  otherP95Ms: number | null;
  /** The catalogue's p95 (upper end of the measured range) of each model for the job's size, ms. */
  typicalFirstP95Ms: number;
  typicalOtherP95Ms: number;
  /** This worker's slots (its concurrency). */
  concurrency: number;
}

export function decideShare(i: ShareInput): { share: boolean; note: string } {
  const measured = i.firstP95Ms !== null && i.otherP95Ms !== null;
  if (i.firstRpm > 0) {
    if (!measured) return { share: false, note: 'no latency figures' };
    const d = decideSpill({ waitMs: 0, firstRpm: i.firstRpm, backlog: i.backlog, firstP95Ms: i.firstP95Ms, otherP95Ms: i.otherP95Ms });
    return { share: d.spill, note: d.note };
  }
  const [first, other] = measured ? [i.firstP95Ms!, i.otherP95Ms!] : [i.typicalFirstP95Ms, i.typicalOtherP95Ms];
  const extraLatencyMs = other - first;
  const clearMs = (Math.max(0, i.backlog) * first) / Math.max(1, i.concurrency);
  const note = `first model busy at least ~${seconds(clearMs)} (${i.backlog} queued on ${i.concurrency} slots at ${seconds(first)}, quota not known yet), other model ${seconds(extraLatencyMs)} slower at p95${measured ? '' : ' (catalogue)'}`;
  return { share: clearMs > extraLatencyMs, note };
}

function seconds(ms: number): string {
  return ms >= 10_000 ? `${Math.round(ms / 1000)} s` : `${(ms / 1000).toFixed(1)} s`;
}
