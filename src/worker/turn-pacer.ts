/**
 * Spreads bursts of job work over event-loop turns.
 *
 * A worker with a high concurrency gets hundreds of jobs at once (BullMQ fetches them back to back)
 * and, a moment later, hundreds of Redis answers in one TCP read: every job then runs its next
 * synchronous stretch (validation, routing, opening a socket and writing the request) in the same
 * turn of the event loop, and timers, lock renewals and other sockets wait for all of them (a 1,000
 * job burst stalled the loop for 250-800 ms in bench:inflight). `turn()` lets `perTurn` units of
 * work through per turn and parks the rest until the next one (setImmediate), so the loop gets back
 * to its timers and I/O in between. A caller states its weight (parsing a 4K answer is many times the
 * work of a 1K one); a weight of a turn or more goes alone. The work is the same; only its order changes.
 */
export class TurnPacer {
  private used = 0;
  private scheduled = false;
  private readonly parked: { weight: number; resolve: () => void }[] = [];

  constructor(readonly perTurn: number) {
    if (!(perTurn >= 1)) throw new RangeError('TurnPacer perTurn must be >= 1');
  }

  /** Resolves in this turn while the turn has room, else in a later one (first come, first served). */
  turn(weight = 1): Promise<void> {
    this.scheduleNextTurn();
    if (this.parked.length === 0 && this.fits(weight)) {
      this.used += weight;
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => this.parked.push({ weight, resolve }));
  }

  /** Callers parked for a later turn (for tests). */
  get waiting(): number {
    return this.parked.length;
  }

  private scheduleNextTurn(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.used = 0;
      let released = 0;
      while (this.parked.length > 0 && this.fits(this.parked[0]!.weight)) {
        const next = this.parked.shift()!;
        this.used += next.weight;
        next.resolve();
        released += 1;
      }
      // A turn that let callers through keeps its count until the next turn resets it.
      if (released > 0 || this.parked.length > 0) this.scheduleNextTurn();
    });
  }

  /** Room in this turn: a turn with nothing let through yet takes any weight (a heavy one goes alone). */
  private fits(weight: number): boolean {
    return this.used === 0 || this.used + weight <= this.perTurn;
  }
}
