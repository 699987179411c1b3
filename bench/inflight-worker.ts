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
  /** The longest stall counted only while this process ran (min of the stall and the CPU it used), ms. */
  stallBusyMaxMs: number;
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

// Stalls seen by a 5 ms timer, each with the CPU this process used meanwhile (user + system, all
// threads). A stall during which the process hardly ran was the machine's doing (the other processes,
// or the hypervisor), not a block of our event loop: `busyMs` = min(stall, CPU used) per stall.
// BENCH_STALL_LOG: also print every stall over 60 ms on stderr, with its end on the monotonic clock
// (hrtime µs), to find it in a BENCH_CPU_PROF profile.
const stalls = { maxBusyMs: 0 };
{
  let last = process.hrtime.bigint();
  let lastCpu = process.cpuUsage();
  setInterval(() => {
    const t = process.hrtime.bigint();
    const cpu = process.cpuUsage(lastCpu);
    const lateMs = Number(t - last) / 1e6 - 5;
    const cpuMs = (cpu.user + cpu.system) / 1000;
    if (lateMs > 0) stalls.maxBusyMs = Math.max(stalls.maxBusyMs, Math.min(lateMs, cpuMs));
    if (lateMs > 60 && process.env['BENCH_STALL_LOG']) process.stderr.write(`stall ${Math.round(lateMs)} ms ending at ${t / 1000n} cpu ${Math.round(cpuMs)} ms\n`);
    last = t;
    lastCpu = process.cpuUsage();
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

function report(): PhaseReport {
  sampleMemory();
  return {
    phase,
    eventLoopMs: { p50: ms(delay.percentile(50)), p99: ms(delay.percentile(99)), max: ms(delay.max) },
    gcMs: { max: Math.round(gc.max * 10) / 10, total: Math.round(gc.total) },
    stallBusyMaxMs: Math.round(stalls.maxBusyMs * 10) / 10,
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
    stalls.maxBusyMs = 0;
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
