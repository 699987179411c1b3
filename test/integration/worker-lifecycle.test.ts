/**
 * Workers dying and stopping: a worker killed with SIGKILL mid-generation leaves its job to another
 * worker; a worker stopping gracefully past its grace hands in-flight jobs back without using an attempt.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/logging/logger.js';
import { startImageWorker, type RunningImageWorker } from '../../src/worker/image-worker.js';
import { outputObjects, startPipeline, type Pipeline } from '../support/pipeline.js';
import { childProcessEnv, waitFor } from '../support/stack.js';

let p: Pipeline | undefined;
const workers: RunningImageWorker[] = [];
const children: ChildProcess[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
  for (const w of workers.splice(0)) await w.close(500);
  await p?.close();
  p = undefined;
});



describe('worker lifecycle', () => {
  it('a worker killed with SIGKILL mid-generation leaves its job to another worker, which completes it; the output exists once', async () => {
    p = await startPipeline({ worker: false, env: { WORKER_LOCK_DURATION_MS: 2_000, WORKER_STALLED_INTERVAL_MS: 1_000 } });
    const child = spawn(process.execPath, ['--import', 'tsx', 'workers/image-worker.ts'], { env: childProcessEnv(p.config, { WORKER_CONCURRENCY: '2' }), stdio: 'ignore' });
    children.push(child);

    const { body } = await p.submit({ prompt: 'long one [sim:hang*1] e2e-sigkill', tier: 'draft' });
    const id = body['id'] as string;
    await waitFor('the child worker to be mid-generation', async () => (await p!.get(id))['status'] === 'running' && p!.sim.requests().some((r) => r.prompt.includes('e2e-sigkill') && r.status === null), 20_000);

    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    await waitFor('the simulator to see the connection dropped', () => p!.sim.requests().some((r) => r.prompt.includes('e2e-sigkill') && r.aborted));

    workers.push(startImageWorker(p.config, { logger: silentLogger() }));
    const view = await p.settle(id, 30_000);
    expect(view['status']).toBe('succeeded');
    expect(await outputObjects(p.config, id)).toEqual([`${p.config.S3_KEY_PREFIX}/${id}.jpg`]);
    const calls = p.sim.requests().filter((r) => r.prompt.includes('e2e-sigkill'));
    expect(calls.map((c) => c.aborted)).toEqual([true, false]);
  });

  it('a graceful stop past its grace hands the in-flight job back without using an attempt', async () => {
    p = await startPipeline({ worker: false });
    const first = startImageWorker(p.config, { logger: silentLogger() });
    const { body } = await p.submit({ prompt: 'stuck [sim:hang*1] e2e-release', tier: 'draft' });
    const id = body['id'] as string;
    await waitFor('the job to be mid-generation', () => p!.sim.requests().some((r) => r.prompt.includes('e2e-release') && r.status === null));

    await first.close(200); // grace over: the hung call is aborted and the job released
    const job = await p.queue.getJob(id);
    expect(job?.attemptsMade).toBe(0);
    expect(['waiting', 'delayed', 'prioritized']).toContain(await job?.getState());

    workers.push(startImageWorker(p.config, { logger: silentLogger() }));
    const view = await p.settle(id);
    expect(view['status']).toBe('succeeded');
    expect(view['attempts']).toBe(1);
    expect(view['history'].map((h: { outcome: string }) => h.outcome)).toEqual(['released', 'succeeded']);
  });
});
