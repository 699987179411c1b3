/**
 * A stand-in for a remote service, run as its own process by bench/overhead.ts so that it has its own
 * event loop, as S3 and Gemini would in production, instead of sharing the bench driver's.
 *
 *   node --import tsx bench/service.ts s3 <directory> <bucket>   s3rver with the bucket created
 *   node --import tsx bench/service.ts sim                        the Gemini simulator, no latency
 *   node --import tsx bench/service.ts sim '<json options>'       the simulator with these options
 *                                                                 (startSimulator's, e.g. timeScale, quotas)
 *
 * Prints one JSON line `{"url": "..."}` on stdout once it listens. Stops on SIGTERM/SIGINT or when
 * stdin closes, so it never outlives a bench driver that died without cleaning up.
 */
import { startS3Server } from '../src/dev/s3-server.js';
import { startSimulator, type SimulatorOptions } from '../src/simulator/server.js';

async function start(args: string[]): Promise<{ url: string; close: () => Promise<void> }> {
  const [role, directory, bucket] = args;
  if (role === 'sim' && directory !== undefined) {
    // Options as JSON (bench/quota.ts, bench/inflight.ts): seeded latency, quotas, peak mode.
    const sim = await startSimulator(JSON.parse(directory) as Partial<SimulatorOptions>);
    return { url: sim.url, close: () => sim.close() };
  }
  if (role === 's3' && directory && bucket) {
    const s3 = await startS3Server({ directory, buckets: [bucket] });
    return { url: s3.endpoint, close: () => s3.stop() };
  }
  if (role === 'sim') {
    // No latency and never peak: the bench measures pixelmill's own cost, not the model's time.
    const sim = await startSimulator({ timeScale: 0, peak: 'off', seed: 1 });
    return { url: sim.url, close: () => sim.close() };
  }
  throw new Error("usage: service.ts s3 <directory> <bucket> | sim ['<json options>']");
}

const service = await start(process.argv.slice(2));
let stopping = false;
const stop = (): void => {
  if (stopping) return;
  stopping = true;
  service.close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('error', stop);
process.stdin.resume();
process.stdout.write(`${JSON.stringify({ url: service.url })}\n`);
