/**
 * One read shared by every caller for `ms`: when hundreds of jobs of one worker ask the same question
 * within a few milliseconds (the health snapshot, the queue's backlog, a lane's rate), they get one
 * round trip's answer instead of one each. A failed read is not kept: the next caller tries again.
 * `ms <= 0` reads every time. The answer may be up to `ms` old, by design.
 */
export class SharedRead<T> {
  private readonly entries = new Map<string, { at: number; value: Promise<T> }>();

  constructor(
    private readonly ms: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** `at`: the caller's clock, when it passes one (else the constructor's). */
  get(key: string, read: () => Promise<T>, at: number = this.now()): Promise<T> {
    if (this.ms <= 0) return read();
    const t = at;
    const hit = this.entries.get(key);
    // A clock that steps back (an injected `now`) reads again.
    if (hit && t >= hit.at && t - hit.at < this.ms) return hit.value;
    const entry = { at: t, value: read() };
    this.entries.set(key, entry);
    entry.value.catch(() => {
      if (this.entries.get(key) === entry) this.entries.delete(key);
    });
    return entry.value;
  }

  /** Drop every shared answer (this process's own news must be seen at once). */
  forget(): void {
    this.entries.clear();
  }
}
