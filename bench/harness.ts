/**
 * What bench/overhead.ts, bench/quota.ts and bench/inflight.ts share: a cleanup stack released on
 * exit, error and signals; child processes started with `node --import tsx`; service processes
 * (bench/service.ts) that print their URL; markdown tables; appending to RESULTS.md.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, existsSync, writeFileSync } from 'node:fs';
import { arch, cpus, platform, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

// The SDK's notice that future versions need Node 22 is noise in a benchmark table (children inherit it).
process.env['AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED'] ??= 'true';

/** Everything a bench starts, released once in reverse order (end of run, error, SIGINT/SIGTERM). */
export class Cleanups {
  private readonly stack: (() => Promise<void> | void)[] = [];
  private draining: Promise<void> | undefined;

  get started(): boolean {
    return this.draining !== undefined;
  }

  add(release: () => Promise<void> | void): void {
    // Registered while draining: the running loop picks it up.
    this.stack.push(release);
  }

  /** Release everything once; every caller waits for the same pass. */
  run(): Promise<void> {
    return (this.draining ??= (async () => {
      for (let release = this.stack.pop(); release; release = this.stack.pop()) {
        try {
          await release();
        } catch (err) {
          console.error(`cleanup failed: ${(err as Error).message}`);
        }
      }
    })());
  }
}

export const cleanups = new Cleanups();

export interface Child {
  readonly pid: number;
  readonly proc: ChildProcess;
  /** Rejects when the process exits before stop() was called. */
  readonly died: Promise<never>;
  /** Resolves when the process has exited, for whatever reason. */
  readonly exited: Promise<void>;
  stop(): Promise<void>;
}

/**
 * Spawn `node --import tsx <script>`; registered with the cleanups at once. stdin/stdout are pipes by
 * default (services read stdin to notice a dead driver; scripts report on stdout); `io: 'ignore'` for a
 * child nobody talks to, whose output then can never fill a pipe. stderr is always kept to explain a crash.
 */
export function spawnTsx(
  script: string, args: string[], env: NodeJS.ProcessEnv, nodeArgs: string[] = [], io: 'pipe' | 'ignore' = 'pipe',
): Child {
  if (cleanups.started) throw new Error(`not starting ${script}: the bench is stopping`);
  const proc = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', join(ROOT, script), ...args], {
    cwd: ROOT, env, stdio: [io, io, 'pipe'],
  });
  if (proc.pid === undefined) throw new Error(`could not start ${script}`);
  let stderr = '';
  proc.stderr?.on('data', (d: Buffer) => {
    // Keep the tail only: enough to explain a crash.
    stderr = (stderr + d.toString()).slice(-8_000);
    if (process.env['BENCH_STALL_LOG']) process.stderr.write(d);
  });
  let stopping = false;
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const died = new Promise<never>((_, reject) => {
    proc.once('exit', (code, signal) => {
      if (!stopping) reject(new Error(`${script} exited (${signal ?? code}) during the bench:\n${stderr.trim()}`));
    });
  });
  died.catch(() => {}); // observed by whoever races it; an unobserved rejection must not crash the driver
  const child: Child = {
    pid: proc.pid,
    proc,
    died,
    exited,
    async stop() {
      stopping = true;
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
  cleanups.add(() => child.stop());
  return child;
}

/** Node args for BENCH_CPU_PROF=DIR: a .cpuprofile of the child (what blocks its event loop), written when it exits. */
export function cpuProfNodeArgs(): string[] {
  const dir = process.env['BENCH_CPU_PROF'];
  const extra = (process.env['BENCH_NODE_ARGS'] ?? '').split(' ').filter(Boolean);
  return [...(dir ? ['--cpu-prof', `--cpu-prof-dir=${dir}`] : []), ...extra];
}

/** Start bench/service.ts in its own process and wait for the line with its URL. */
export async function startService(args: string[]): Promise<Child & { url: string }> {
  const child = spawnTsx('bench/service.ts', args, process.env);
  const lines = createInterface({ input: child.proc.stdout! });
  try {
    const url = await Promise.race([
      new Promise<string>((resolve, reject) => {
        lines.once('line', (line) => {
          try {
            resolve((JSON.parse(line) as { url: string }).url);
          } catch {
            reject(new Error(`service ${args[0]} printed ${JSON.stringify(line)} instead of its URL`));
          }
        });
      }),
      child.died,
      timeout(30_000, `service ${args[0]} to listen`),
    ]);
    return Object.assign(child, { url });
  } catch (err) {
    await child.stop();
    throw err;
  } finally {
    lines.close();
    child.proc.stdout?.resume(); // never let a full pipe block the service
  }
}

export function timeout(ms: number, what: string): Promise<never> {
  return new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms).unref());
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export const fmt = (n: number | undefined, digits: number): string => (n === undefined || !Number.isFinite(n) ? 'n/a' : n.toFixed(digits));

/** The q-quantile (0..1) of unsorted numbers, nearest rank; undefined when empty. */
export function quantile(values: readonly number[], q: number): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

export function markdownTable(header: string[], rows: string[][], rightAligned: boolean[]): string {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => (r[c] ?? '').length)));
  const line = (cells: string[]) =>
    `| ${cells.map((cell, c) => (rightAligned[c] ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!))).join(' | ')} |`;
  const rule = `|${widths.map((w, c) => (rightAligned[c] ? `${'-'.repeat(w + 1)}:` : `${'-'.repeat(w + 2)}`)).join('|')}|`;
  return [line(header), rule, ...rows.map(line)].join('\n');
}

export function machineLine(): string {
  const cpuList = cpus();
  return `machine: node ${process.version}, ${platform()} ${arch()}, ${cpuList.length} × ${cpuList[0]?.model ?? 'unknown CPU'}, ${(totalmem() / 2 ** 30).toFixed(1)} GiB RAM`;
}

/** Append a section with the date and the command to bench/RESULTS.md; returns its path. */
export function record(command: string, text: string): string {
  const path = join(ROOT, 'bench', 'RESULTS.md');
  if (!existsSync(path)) {
    writeFileSync(path, '# Benchmark results\n\nAppended by the benchmarks in this folder (see README.md); newest last.\n');
  }
  appendFileSync(path, `\n## ${new Date().toISOString()} · \`${command}\`\n\n${text}\n`);
  return path;
}

/**
 * Run `main` with the cleanups released at the end, on error and on SIGINT/SIGTERM (a second signal
 * exits at once). Exits 0 on success, 1 on error.
 */
export function runBench(main: () => Promise<void>): void {
  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (interrupted) process.exit(130);
    interrupted = true;
    console.error(`\n${sig}: stopping every process the bench started...`);
    void cleanups.run().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  main()
    .finally(() => cleanups.run())
    .then(
      () => process.exit(0),
      (err: unknown) => {
        if (interrupted) return;
        console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
        process.exit(1);
      },
    );
}
