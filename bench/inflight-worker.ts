/**
 * The image worker for bench/inflight.ts, in a process of its own: the production `startImageWorker`
 * (configuration from the environment, like workers/image-worker.ts) plus the measurements the bench
 * needs from inside the process, which workers/image-worker.ts does not make:
 *
 * - event-loop delay (perf_hooks.monitorEventLoopDelay, 10 ms resolution): p50, p99, max per phase;
 * - peak RSS, V8 heap used, external and ArrayBuffer memory per phase (process.memoryUsage every 25 ms).
 *
 * Protocol: JSON lines. Prints `{"ready": true}` once the worker is connected; reads commands on stdin:
 *   {"cmd": "phase", "name": "1K"}      start a phase: the measurements restart
 *   {"cmd": "report"}                   print the current phase's figures
 *   {"cmd": "snapshot", "path": "..."}  write a V8 heap snapshot there (stalls the loop while it runs)
 *   {"cmd": "stop"}                     close the worker, print the last report, exit
 * Exits when stdin closes, so it never outlives a dead bench driver.
 */
import { openSync, readSync } from 'node:fs';
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { writeHeapSnapshot } from 'node:v8';
import { loadConfig } from '../src/config/env.js';
import { silentLogger } from '../src/logging/logger.js';
import { startImageWorker } from '../src/worker/image-worker.js';

export interface PhaseReport {
  phase: string;
  eventLoopMs: { p50: number; p99: number; max: number };
  /** Garbage collection pauses over the phase: the longest, and all of them together (ms). */
  gcMs: { max: number; total: number };
  /** The longest stall of a 5 ms timer counted only while the main thread ran (the loop blocked by our code), ms. */
  stallRunningMaxMs: number;
  /** The longest stall of that timer, and where the main thread was during it (ms). */
  longestStall: { ms: number; runningMs: number; runQueueMs: number; stealMs: number };
  peakMb: { rss: number; heapUsed: number; external: number; arrayBuffers: number };
  concurrency: number;
}

const config = loadConfig();
const running = startImageWorker(config, { logger: silentLogger() });
const delay = monitorEventLoopDelay({ resolution: 10 });
delay.enable();

let phase = 'start-up';
const peak = { rss: 0, heapUsed: 0, external: 0, arrayBuffers: 0 };
const sampleMemory = (): void => {
  const m = process.memoryUsage();
  peak.rss = Math.max(peak.rss, m.rss);
  peak.heapUsed = Math.max(peak.heapUsed, m.heapUsed);
  peak.external = Math.max(peak.external, m.external);
  peak.arrayBuffers = Math.max(peak.arrayBuffers, m.arrayBuffers);
};
const sampler = setInterval(sampleMemory, 25);

// Stalls seen by a 5 ms timer, split by where the main thread was meanwhile (Linux's
// /proc/self/task/<pid>/schedstat: time on a CPU, time runnable but waiting for one) and the
// hypervisor's steal time (/proc/stat). Only the part the main thread spent running is our event
// loop blocked by our own code; the rest is the machine (other processes, or the host taking the
// vCPU: on this 2-core VM stalls of 100-700 ms happen with the worker hardly running at all).
// Without /proc (not Linux) every stall counts as running. Read with pread on open descriptors: no
// open() per tick, and cheaper than process.cpuUsage(), which sums every thread.
// BENCH_STALL_LOG: also print every stall over 60 ms on stderr, with its end on the monotonic clock
// (hrtime µs) to find it in a BENCH_CPU_PROF profile.
const stalls = { maxRunningMs: 0, maxMs: 0, atMax: { runningMs: 0, runQueueMs: 0, stealMs: 0 } };
{
  const procReader = (path: string): (() => string | undefined) => {
    let fd: number | undefined;
    try {
      fd = openSync(path, 'r');
    } catch {
      return () => undefined;
    }
    const buf = Buffer.alloc(4096);
    return () => buf.toString('latin1', 0, readSync(fd, buf, 0, buf.length, 0));
  };
  const schedstat = procReader(`/proc/self/task/${process.pid}/schedstat`);
  const stat = procReader('/proc/stat');
  const userHz = 100; // USER_HZ: /proc/stat counts in 1/100 s on every Linux architecture Node runs on
  const sample = () => {
    const [run, wait] = (schedstat() ?? '').split(' ').map(Number);
    const steal = Number(/^cpu\s+(?:\d+\s+){7}(\d+)/.exec(stat() ?? '')?.[1] ?? NaN);
    return { t: process.hrtime.bigint(), runMs: (run ?? NaN) / 1e6, waitMs: (wait ?? NaN) / 1e6, stealMs: (steal * 1000) / userHz };
  };
  let last = sample();
  setInterval(() => {
    const now = sample();
    const lateMs = Number(now.t - last.t) / 1e6 - 5;
    if (lateMs > 0) {
      const runningMs = Number.isNaN(now.runMs) ? lateMs : Math.min(lateMs, now.runMs - last.runMs);
      const runQueueMs = now.waitMs - last.waitMs;
      const stealMs = now.stealMs - last.stealMs;
      stalls.maxRunningMs = Math.max(stalls.maxRunningMs, runningMs);
      if (lateMs > stalls.maxMs) stalls.atMax = { runningMs, runQueueMs, stealMs };
      stalls.maxMs = Math.max(stalls.maxMs, lateMs);
      if (lateMs > 60 && process.env['BENCH_STALL_LOG']) {
        process.stderr.write(`stall ${Math.round(lateMs)} ms ending at ${now.t / 1000n} running ${Math.round(runningMs)} ms run-queue ${Math.round(runQueueMs)} ms steal ${Math.round(stealMs)} ms (both CPUs)\n`);
      }
    }
    last = now;
  }, 5).unref();
}

// GC pauses: whether a stall of the loop was the collector or our own code.
const gc = { max: 0, total: 0 };
const gcObserver = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    gc.max = Math.max(gc.max, e.duration);
    gc.total += e.duration;
  }
});
gcObserver.observe({ entryTypes: ['gc'] });

const mb = (bytes: number): number => Math.round((bytes / 2 ** 20) * 10) / 10;
const ms = (ns: number): number => Math.round(ns / 1e4) / 100;
const round1 = (x: number): number => Math.round(x * 10) / 10;

function report(): PhaseReport {
  sampleMemory();
  return {
    phase,
    eventLoopMs: { p50: ms(delay.percentile(50)), p99: ms(delay.percentile(99)), max: ms(delay.max) },
    gcMs: { max: Math.round(gc.max * 10) / 10, total: Math.round(gc.total) },
    stallRunningMaxMs: round1(stalls.maxRunningMs),
    longestStall: { ms: round1(stalls.maxMs), runningMs: round1(stalls.atMax.runningMs), runQueueMs: round1(stalls.atMax.runQueueMs), stealMs: round1(stalls.atMax.stealMs) },
    peakMb: { rss: mb(peak.rss), heapUsed: mb(peak.heapUsed), external: mb(peak.external), arrayBuffers: mb(peak.arrayBuffers) },
    concurrency: running.concurrency,
  };
}

const say = (o: unknown): void => void process.stdout.write(`${JSON.stringify(o)}\n`);

let stopping = false;
async function stop(): Promise<void> {
  if (stopping) return;
  stopping = true;
  const last = report();
  clearInterval(sampler);
  gcObserver.disconnect();
  delay.disable();
  await running.close(2_000);
  say({ stopped: last });
  process.exit(0);
}

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const cmd = JSON.parse(line) as { cmd: string; name?: string; path?: string };
  if (cmd.cmd === 'phase') {
    phase = cmd.name ?? 'unnamed';
    delay.reset();
    Object.assign(peak, { rss: 0, heapUsed: 0, external: 0, arrayBuffers: 0 });
    Object.assign(gc, { max: 0, total: 0 });
    Object.assign(stalls, { maxRunningMs: 0, maxMs: 0, atMax: { runningMs: 0, runQueueMs: 0, stealMs: 0 } });
    say({ phase });
  } else if (cmd.cmd === 'report') {
    say({ report: report() });
  } else if (cmd.cmd === 'snapshot') {
    say({ snapshot: writeHeapSnapshot(cmd.path) });
  } else if (cmd.cmd === 'stop') {
    void stop();
  }
});
lines.on('close', () => void stop());
process.on('SIGTERM', () => void stop());

await running.worker.waitUntilReady();
say({ ready: true, pid: process.pid });
