/**
 * The answer gate: at most N generated images per worker are in memory between "the model answered
 * 200" and "the image is in object storage".
 *
 * A worker with hundreds of calls in flight cannot choose when the answers arrive; when they arrive
 * faster than storage takes them (a slow S3-compatible server, a burst of answers landing together),
 * every answer held as JSON text, then as a decoded image, waiting for its upload adds ~0.5 MB at 1K
 * and several MB at 4K. Behind the gate, an answer's body stays unread in its socket (undici stops
 * reading after its high-water mark, the rest waits in the kernel and at the sender) until a slot
 * frees, so memory is bounded by N, not by the concurrency. The wait counts against the call's
 * deadline like any slow body.
 *
 * One AnswerSlot per job: acquire() before reading a 200 body (GenerateImageRequest.beforeBody),
 * release() once the image is stored or dropped (the slot is then free for the job's next call); a
 * second acquire() while held and a release() while idle do nothing, and the processor releases in
 * its outermost finally so a slot never leaks.
 */
export interface AnswerSlot {
  acquire(signal?: AbortSignal): Promise<void>;
  release(): void;
}

export class AnswerGate {
  private free: number;
  private readonly waiters: (() => void)[] = [];

  constructor(readonly size: number) {
    if (!(size >= 1)) throw new RangeError('AnswerGate size must be >= 1');
    this.free = size;
  }

  /** Images held right now (for logs and tests). */
  get held(): number {
    return this.size - this.free;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  slot(): AnswerSlot {
    // A slot is reused by the job's next call: release() makes it idle again.
    let state: 'idle' | 'waiting' | 'held' = 'idle';
    return {
      acquire: async (signal?: AbortSignal): Promise<void> => {
        if (state !== 'idle') return;
        signal?.throwIfAborted();
        if (this.free > 0) {
          this.free -= 1;
          state = 'held';
          return;
        }
        state = 'waiting';
        await new Promise<void>((resolve, reject) => {
          const grant = (): void => {
            signal?.removeEventListener('abort', onAbort);
            resolve();
          };
          const onAbort = (): void => {
            const i = this.waiters.indexOf(grant);
            if (i >= 0) this.waiters.splice(i, 1);
            state = 'idle';
            reject(signal!.reason);
          };
          this.waiters.push(grant);
          signal?.addEventListener('abort', onAbort, { once: true });
        });
        // Granted: the releasing slot handed its place over without incrementing `free`.
        if (state === 'waiting') state = 'held';
      },
      release: (): void => {
        if (state !== 'held') return;
        state = 'idle';
        const next = this.waiters.shift();
        if (next) next();
        else this.free += 1;
      },
    };
  }
}
