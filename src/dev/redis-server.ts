/**
 * A private redis-server for the embedded stack, tests and benchmarks: free port, data in a temp dir,
 * no persistence, `noeviction` (BullMQ must never lose keys to eviction).
 *
 * When redis-server is missing it is installed from Debian's packages if we are root; otherwise we stop
 * with the exact command to run.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { freePort } from './free-port.js';

export const REDIS_INSTALL_COMMAND = 'apt-get update && apt-get install -y redis-server';

function which(bin: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${bin}`], { encoding: 'utf8' });
  const path = r.stdout.trim();
  if (path) return path;
  for (const p of [`/usr/bin/${bin}`, `/usr/sbin/${bin}`, `/usr/local/bin/${bin}`]) if (existsSync(p)) return p;
  return undefined;
}

/** Path of redis-server, installing it with apt-get when root. Throws with the install command otherwise. */
export function ensureRedisServerBinary(log: (line: string) => void = () => {}): string {
  const found = which('redis-server');
  if (found) return found;
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  if (!isRoot) {
    throw new Error(`redis-server is not installed. Install it with:\n  sudo ${REDIS_INSTALL_COMMAND}`);
  }
  log('redis-server is missing; installing it from Debian packages (apt-get install -y redis-server)...');
  const r = spawnSync('sh', ['-c', `DEBIAN_FRONTEND=noninteractive ${REDIS_INSTALL_COMMAND}`], { stdio: 'inherit' });
  const after = which('redis-server');
  if (r.status !== 0 || !after) throw new Error(`installing redis-server failed; run: ${REDIS_INSTALL_COMMAND}`);
  return after;
}

export interface EmbeddedRedis {
  readonly url: string;
  readonly port: number;
  stop(): Promise<void>;
}

export async function startRedisServer(opts: { port?: number; log?: (line: string) => void } = {}): Promise<EmbeddedRedis> {
  const bin = ensureRedisServerBinary(opts.log);
  const port = opts.port ?? (await freePort());
  const dir = mkdtempSync(join(tmpdir(), 'pixelmill-redis-'));
  const child: ChildProcess = spawn(
    bin,
    ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no',
      '--maxmemory-policy', 'noeviction', '--protected-mode', 'yes', '--loglevel', 'warning'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const url = `redis://127.0.0.1:${port}`;

  // Wait until it answers PING (a condition, not a sleep).
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`redis-server exited (${child.exitCode}): ${stderr}`);
    const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    probe.on('error', () => {}); // refusals are expected until the server is up
    try {
      await probe.connect();
      if ((await probe.ping()) === 'PONG') break;
    } catch {
      if (Date.now() > deadline) throw new Error(`redis-server did not answer on ${url}: ${stderr}`);
      await new Promise((r) => setTimeout(r, 25));
    } finally {
      probe.disconnect();
    }
  }

  return {
    url,
    port,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
