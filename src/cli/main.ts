#!/usr/bin/env node
/**
 * `pixelmill` — the command line. Each subcommand is a thin shell over the library:
 *
 *   api        the HTTP API (workers/api.ts)
 *   worker     an image worker (workers/image-worker.ts)
 *   simulate   the Gemini-compatible simulator
 *   dev        the embedded stack: redis-server, s3rver, simulator, API and a worker in one process
 *   demo       the embedded stack, a few images across tiers, where the files are, exit
 *   submit     enqueue through the HTTP API (PIXELMILL_URL) and optionally wait and download
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../config/env.js';
import { startEmbeddedStack } from '../dev/stack.js';
import type { JobRequestInput } from '../jobs/request.js';
import { parseSimulatorArgs, startSimulator } from '../simulator/server.js';
import { runApi } from '../../workers/api.js';
import { runImageWorker } from '../../workers/image-worker.js';
import { runWebhookWorker } from '../../workers/webhook-worker.js';
import { runBatchSubmit } from './batch-submit.js';
import { PixelmillClient, parseJobsFile } from './client.js';
import { exitOnConfigError } from './exit.js';

const USAGE = `pixelmill — bulk image generation with Nano Banana 2 and Nano Banana Pro

Usage:
  pixelmill api                       run the HTTP API (config from the environment)
  pixelmill worker                    run an image worker
  pixelmill webhook-worker            run a webhook delivery worker
  pixelmill simulate [--port N] [--time-scale X] [--seed S] [--peak on|off|auto] [--quota-fast RPM] [--quota-pro RPM]
                                      run the Gemini-compatible simulator
  pixelmill dev [--time-scale X]      embedded stack (redis-server, S3, simulator, API, worker); Ctrl-C stops it
  pixelmill demo                      embedded stack + a few images across tiers; prints where they are; exits
  pixelmill submit "prompt" [--tier draft|standard|premium] [--size 512|1K|2K|4K] [--aspect 16:9]
                   [--priority 1-10] [--idempotency-key K] [--wait] [--out DIR]
  pixelmill submit --file prompts.csv|prompts.jsonl|prompts.txt [--tier ...] [--size ...] [--skip-invalid]
                   [--wait] [--out DIR]
                                      the whole file as ONE batch (CSV with a header row of job fields, JSONL
                                      one job per line, or one prompt per line); --wait shows a progress bar
                                      and downloads the images into DIR; exit 1 when a job failed
                                      Both enqueue through the API at PIXELMILL_URL (default http://127.0.0.1:8080),
                                      with PIXELMILL_API_KEY as bearer key when set

Configuration is read from environment variables; see README.md ("Configuration").`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'api':
      await runApi(exitOnConfigError(() => loadConfig()));
      return -1; // keeps running
    case 'worker':
      await runImageWorker(exitOnConfigError(() => loadConfig()));
      return -1;
    case 'webhook-worker':
      await runWebhookWorker(exitOnConfigError(() => loadConfig()));
      return -1;
    case 'simulate':
      return simulate(rest);
    case 'dev':
      return dev(rest);
    case 'demo':
      return demo();
    case 'submit':
      return submit(rest);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      console.log(USAGE);
      return 0;
    default:
      console.error(`pixelmill: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

async function simulate(args: string[]): Promise<number> {
  const sim = await startSimulator({ port: 8090, ...parseSimulatorArgs(args) });
  console.log(`Gemini simulator listening on ${sim.url}`);
  console.log(`  point workers at it: GEMINI_BASE_URL=${sim.url} GEMINI_API_KEY=<any>`);
  console.log(`  stats: curl ${sim.url}/_sim/stats`);
  onStop(() => sim.close());
  return -1;
}

async function dev(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { 'time-scale': { type: 'string' } } });
  const stack = await startEmbeddedStack({
    env: process.env,
    simulatorTimeScale: values['time-scale'] ? Number(values['time-scale']) : 1,
    say: (l) => console.log(l),
  });
  console.log(`\npixelmill dev is up. Submit with:\n  PIXELMILL_URL=${stack.apiUrl} npx pixelmill submit "a red bicycle" --wait\nCtrl-C stops everything.`);
  onStop(() => stack.close());
  return -1;
}

const DEMO_JOBS: JobRequestInput[] = [
  { prompt: 'A lighthouse at dawn, loose watercolor', tier: 'draft', size: '512', aspectRatio: '1:1' },
  { prompt: 'A cozy coffee shop interior with morning sunlight', tier: 'standard', size: '1K', aspectRatio: '16:9' },
  { prompt: 'Studio product photo of a ceramic mug on linen', tier: 'premium', size: '2K', aspectRatio: '3:4' },
  { prompt: 'A tall infographic banner about bicycles', tier: 'standard', size: '1K', aspectRatio: '1:4' },
];

async function demo(): Promise<number> {
  const outDir = resolve('.pixelmill', 'out');
  console.log('pixelmill demo: starting the embedded stack\n');
  const stack = await startEmbeddedStack({
    env: process.env,
    simulatorTimeScale: 0.1,
    overrides: { PORT: '0', LOG_LEVEL: process.env['LOG_LEVEL'] || 'warn' },
    say: (l) => console.log(`  ${l}`),
  });
  try {
    const client = new PixelmillClient(stack.apiUrl);
    console.log(`\nsubmitting ${DEMO_JOBS.length} jobs across tiers...`);
    const submitted = await Promise.all(DEMO_JOBS.map((j) => client.submit(j)));
    const done = await client.waitAll(submitted.map((j) => j.id), (j) => console.log(`  ${j.id}  ${j.status.padEnd(9)} ${j.route ? `on ${j.route.model}` : ''}`));
    console.log('\nresults:');
    let failed = 0;
    for (const job of done) {
      if (job.status !== 'succeeded' || !job.output) {
        failed += 1;
        console.log(`  ✗ ${job.id} ${job.request.tier}: ${job.error?.code} ${job.error?.message}`);
        continue;
      }
      const path = await client.download(job, outDir);
      console.log(
        `  ✓ ${job.request.tier.padEnd(8)} ${job.request.size.padEnd(3)} ${job.request.aspectRatio.padEnd(5)} ` +
          `${`${job.output.width}x${job.output.height}`.padEnd(10)} ${job.route?.model.padEnd(24)} $${(job.costUsd ?? 0).toFixed(4)}\n` +
          `      why:    ${job.route?.reason}\n      file:   ${path}\n      object: s3://${stack.config.S3_BUCKET}/${job.output.key}`,
      );
    }
    if (stack.simulated) console.log('\n(images came from the built-in simulator: set GEMINI_API_KEY for real generations)');
    console.log(`\nopen the images in ${outDir}`);
    return failed === 0 ? 0 : 1;
  } finally {
    await stack.close();
  }
}

async function submit(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      file: { type: 'string' }, tier: { type: 'string' }, size: { type: 'string' }, aspect: { type: 'string' },
      priority: { type: 'string' }, 'idempotency-key': { type: 'string' }, wait: { type: 'boolean', default: false },
      out: { type: 'string' }, 'skip-invalid': { type: 'boolean', default: false },
    },
  });
  const client = new PixelmillClient(process.env['PIXELMILL_URL'] || 'http://127.0.0.1:8080', process.env['PIXELMILL_API_KEY'] || undefined);
  const common: Partial<JobRequestInput> = {
    ...(values.tier ? { tier: values.tier as JobRequestInput['tier'] } : {}),
    ...(values.size ? { size: values.size as JobRequestInput['size'] } : {}),
    ...(values.aspect ? { aspectRatio: values.aspect as JobRequestInput['aspectRatio'] } : {}),
    ...(values.priority ? { priority: Number(values.priority) } : {}),
  };
  if (values.file) {
    // The whole file is one batch; the command-line fields are its defaults (a file's own fields win).
    return runBatchSubmit({
      client, jobs: parseJobsFile(await readFile(values.file, 'utf8'), values.file), defaults: common,
      skipInvalid: values['skip-invalid'], wait: values.wait, ...(values.out ? { out: values.out } : {}), stdout: process.stdout,
    });
  }
  if (positionals.length === 0) {
    console.error('pixelmill submit: give a prompt or --file prompts.jsonl|prompts.csv|prompts.txt');
    return 2;
  }
  const job: JobRequestInput = { ...common, prompt: positionals.join(' '), ...(values['idempotency-key'] ? { idempotencyKey: values['idempotency-key'] } : {}) };
  const view = await client.submit(job);
  console.log(`queued ${view.id}  ${job.prompt.slice(0, 60)}`);
  if (!values.wait) return 0;

  const [done] = await client.waitAll([view.id], (j) => console.log(`${j.id} ${j.status}${j.route ? ` (${j.route.model})` : ''}`));
  if (done?.status === 'succeeded' && done.output) {
    const where = values.out ? await client.download(done, values.out) : done.output.url;
    console.log(`✓ ${done.id} ${done.output.key} ${done.output.width}x${done.output.height}\n  open: ${where}`);
    return 0;
  }
  console.log(`✗ ${view.id} ${done?.status} ${done?.error?.code ?? ''}: ${done?.error?.message ?? ''}`);
  return 1;
}

function onStop(stop: () => Promise<void>): void {
  let stopping = false;
  const handler = () => {
    if (stopping) process.exit(1);
    stopping = true;
    console.log('\nstopping...');
    stop().then(() => process.exit(0), () => process.exit(1));
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exit(code);
  },
  (err: unknown) => {
    console.error(`pixelmill: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
