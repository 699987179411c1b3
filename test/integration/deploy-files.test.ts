/**
 * The deployment files (docker-compose.yml, Dockerfile, infra/k8s/*.yaml, .ci/run) checked against
 * the code they deploy: every pixelmill variable they set is a real config variable whose value
 * loadConfig accepts, and the settings that protect jobs hold (Redis never evicts, the worker's
 * SHUTDOWN_GRACE fits inside the orchestrator's kill timeout, the API only listens widely with keys).
 *
 * No container engine runs here. `docker compose config` parses without one, so it runs when the
 * compose plugin is installed and is reported as skipped otherwise.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { configSchema, loadConfig } from '../../src/config/env.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const read = (rel: string) => readFileSync(join(root, rel), 'utf8');
const CONFIG_VARIABLES = new Set(Object.keys(configSchema.shape));
const WORKER_DEFAULT_GRACE_MS = loadConfig({}).SHUTDOWN_GRACE;

// ---------- docker compose ----------

interface ComposeService {
  image?: string;
  build?: { context?: string; dockerfile?: string };
  command?: string[];
  environment?: Record<string, string | null>;
  profiles?: string[];
  stop_grace_period?: string;
  healthcheck?: { test?: string[] };
  depends_on?: Record<string, { condition?: string }>;
}

const compose = parse(read('docker-compose.yml'), { merge: true }) as { services: Record<string, ComposeService> };
const services = compose.services;
const PIXELMILL_IMAGE = services.api?.image;
const pixelmillServices = Object.entries(services).filter(([, s]) => s.image === PIXELMILL_IMAGE);

/** `KEY=value` lines of infra/compose.env.example; `commented` reads the `# KEY=value` ones instead. */
function exampleEnv(commented = false): Record<string, string> {
  const vars: Record<string, string> = {};
  for (const line of read('infra/compose.env.example').split('\n')) {
    const m = (commented ? /^#\s*([A-Z][A-Z0-9_]*)=(.*)$/ : /^([A-Z][A-Z0-9_]*)=(.*)$/).exec(line.trim());
    if (m) vars[m[1]!] = m[2]!;
  }
  return vars;
}

/** Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` (unset or empty both count as missing). */
function interpolate(value: string, vars: Record<string, string>): string {
  return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-?])([^}]*))?\}/g, (_all, name: string, op?: string, arg?: string) => {
    const v = vars[name];
    if (v !== undefined && v !== '') return v;
    if (op === '?') throw new Error(`compose would refuse to start: ${name} is required (${arg})`);
    return op === '-' ? (arg ?? '') : '';
  });
}

function serviceEnv(service: ComposeService, vars: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(service.environment ?? {})) env[k] = interpolate(String(v ?? ''), vars);
  return env;
}

/** Go-style durations as compose writes them: 420s, 7m, 1m30s, 500ms. */
function composeDurationMs(d: string): number {
  const units: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1000, ms: 1 };
  const parts = [...d.matchAll(/(\d+(?:\.\d+)?)(ms|h|m|s)/g)];
  expect(parts.map((p) => p[0]).join(''), `duration ${d}`).toBe(d);
  return parts.reduce((sum, p) => sum + Number(p[1]) * units[p[2]!]!, 0);
}

/** The value following `flag` in an argv list. */
function argAfter(argv: string[] | undefined, flag: string): string | undefined {
  const i = (argv ?? []).indexOf(flag);
  return i >= 0 ? argv![i + 1] : undefined;
}

describe('docker-compose.yml', () => {
  it('has the stack: redis, minio with its bucket job, api and worker', () => {
    for (const name of ['redis', 'minio', 'minio-init', 'api', 'worker']) expect(services, name).toHaveProperty(name);
    expect(PIXELMILL_IMAGE).toBeTruthy();
    expect(services.worker?.image).toBe(PIXELMILL_IMAGE);
    const dockerfile = services.api?.build?.dockerfile ?? 'Dockerfile';
    expect(statSync(join(root, services.api?.build?.context ?? '.', dockerfile)).isFile()).toBe(true);
  });

  it('runs Redis as BullMQ requires: noeviction, append-only file fsynced every second', () => {
    const argv = services.redis?.command ?? [];
    expect(argv[0]).toBe('redis-server');
    expect(argAfter(argv, '--maxmemory-policy')).toBe('noeviction');
    expect(argAfter(argv, '--appendonly')).toBe('yes');
    expect(argAfter(argv, '--appendfsync')).toBe('everysec');
  });

  it('gives every pixelmill service only real config variables, with values loadConfig accepts', () => {
    const vars = exampleEnv();
    expect(pixelmillServices.map(([name]) => name)).toEqual(expect.arrayContaining(['api', 'worker']));
    for (const [name, service] of pixelmillServices) {
      const env = serviceEnv(service, vars);
      for (const key of Object.keys(env)) expect(CONFIG_VARIABLES.has(key), `${name}: ${key} is not a config variable`).toBe(true);
      expect(() => loadConfig(env), name).not.toThrow();
    }
  });

  it('lets the worker finish in-flight generations before Docker kills it', () => {
    const worker = services.worker!;
    expect(worker.command).toEqual(['worker']);
    const graceMs = loadConfig(serviceEnv(worker, exampleEnv())).SHUTDOWN_GRACE;
    expect(graceMs).toBeGreaterThanOrEqual(WORKER_DEFAULT_GRACE_MS);
    expect(composeDurationMs(worker.stop_grace_period ?? '10s')).toBeGreaterThan(graceMs);
  });

  it('serves the API widely only with keys from .env, never a committed default, and health-checks it', () => {
    const api = services.api!;
    expect(api.command).toEqual(['api']);
    expect(api.environment?.HOST).toBe('0.0.0.0');
    // `${API_KEYS:?...}`: compose refuses to start without a key rather than falling back to a known one.
    expect(api.environment?.API_KEYS).toMatch(/^\$\{API_KEYS:\?[^}]+\}$/);
    const { API_KEYS: _keys, ...withoutKeys } = exampleEnv();
    expect(() => serviceEnv(api, withoutKeys)).toThrow(/API_KEYS is required/);
    const config = loadConfig(serviceEnv(api, exampleEnv()));
    expect(config.API_KEYS.length).toBeGreaterThan(0);
    const probe = (api.healthcheck?.test ?? []).join(' ');
    expect(probe).toMatch(new RegExp(`127\\.0\\.0\\.1:${config.PORT}/(readyz|healthz)`));
  });

  it('starts api and worker only after Redis is healthy and the bucket exists', () => {
    expect(services['minio-init']?.command).toEqual(['mb', '--ignore-existing', expect.stringMatching(/\/\$\{S3_BUCKET:-pixelmill\}$/)]);
    for (const name of ['api', 'worker']) {
      expect(services[name]?.depends_on?.redis?.condition, name).toBe('service_healthy');
      expect(services[name]?.depends_on?.['minio-init']?.condition, name).toBe('service_completed_successfully');
    }
  });

  it('points GEMINI_BASE_URL at the simulator service and port in the "simulated" trial', () => {
    const trial = { ...exampleEnv(), ...exampleEnv(true) };
    expect(trial.COMPOSE_PROFILES).toBe('simulated');
    const url = new URL(loadConfig(serviceEnv(services.worker!, trial)).GEMINI_BASE_URL);
    const simulator = services[url.hostname];
    expect(simulator?.profiles).toContain('simulated');
    expect(simulator?.command?.[0]).toBe('simulate');
    expect(argAfter(simulator?.command, '--port')).toBe(url.port);
    // Without the trial lines the workers call Google's API.
    expect(loadConfig(serviceEnv(services.worker!, exampleEnv())).GEMINI_BASE_URL).toBe('https://generativelanguage.googleapis.com');
  });

  const composePlugin = spawnSync('docker', ['compose', 'version'], { encoding: 'utf8' }).status === 0;
  it.runIf(composePlugin)('passes `docker compose config` (runs only where the compose plugin is installed)', () => {
    for (const profile of [[], ['--profile', 'simulated']]) {
      const r = spawnSync(
        'docker',
        ['compose', '--env-file', 'infra/compose.env.example', '-f', 'docker-compose.yml', ...profile, 'config', '-q'],
        { cwd: root, encoding: 'utf8' },
      );
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
    }
  });
});

// ---------- Kubernetes ----------

interface K8sEnvVar { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }
interface K8sProbe { httpGet?: { path?: string; port?: string | number } }
interface K8sContainer {
  name: string;
  image: string;
  args?: string[];
  ports?: { name?: string; containerPort: number }[];
  env?: K8sEnvVar[];
  envFrom?: { configMapRef?: { name: string } }[];
  livenessProbe?: K8sProbe;
  readinessProbe?: K8sProbe;
}
interface K8sObject {
  kind: string;
  metadata: { name: string };
  data?: Record<string, string>;
  spec?: {
    template?: {
      spec: { terminationGracePeriodSeconds?: number; securityContext?: { runAsNonRoot?: boolean }; containers: K8sContainer[] };
    };
  };
}

const k8sDir = join(root, 'infra', 'k8s');
const k8sFiles = readdirSync(k8sDir).filter((f) => /\.ya?ml$/.test(f));
const k8sObjects: K8sObject[] = k8sFiles.flatMap((file) =>
  parseAllDocuments(readFileSync(join(k8sDir, file), 'utf8')).map((doc) => {
    if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join('; ')}`);
    return doc.toJS() as K8sObject;
  }),
);
const deployments = k8sObjects.filter((o) => o.kind === 'Deployment');
const configMaps = new Map(k8sObjects.filter((o) => o.kind === 'ConfigMap').map((o) => [o.metadata.name, o.data ?? {}]));
const roleOf = (d: K8sObject) => d.spec!.template!.spec.containers[0]!.args?.[0];

/** Sample values for the Secret's keys (the Secret itself is never in the repository). */
const SAMPLE_SECRETS: Record<string, string> = {
  REDIS_URL: 'redis://redis:6379',
  API_KEYS: 'ci:0123456789abcdef',
  GEMINI_API_KEY: 'sample-key',
  S3_ACCESS_KEY_ID: 'sample-id',
  S3_SECRET_ACCESS_KEY: 'sample-secret',
};

/** The environment a container would see: its ConfigMaps, then its own env entries. */
function containerEnv(c: K8sContainer): Record<string, string> {
  const env: Record<string, string> = {};
  for (const from of c.envFrom ?? []) {
    const name = from.configMapRef?.name;
    expect(configMaps.has(name ?? ''), `ConfigMap ${name} is defined in infra/k8s`).toBe(true);
    Object.assign(env, configMaps.get(name!));
  }
  for (const e of c.env ?? []) {
    const ref = e.valueFrom?.secretKeyRef;
    if (ref) expect(ref.key, 'secret keys are named after the variable').toBe(e.name);
    env[e.name] = ref ? SAMPLE_SECRETS[ref.key] ?? '' : (e.value ?? '');
  }
  return env;
}

describe('infra/k8s', () => {
  it('deploys an api and a worker from the pixelmill image, as non-root', () => {
    expect(deployments.map(roleOf).sort()).toEqual(['api', 'worker']);
    for (const d of deployments) {
      expect(d.spec!.template!.spec.securityContext?.runAsNonRoot, d.metadata.name).toBe(true);
      expect(d.spec!.template!.spec.containers[0]!.image).toMatch(/pixelmill/);
    }
  });

  it('sets only real config variables, with values loadConfig accepts', () => {
    for (const d of deployments) {
      for (const c of d.spec!.template!.spec.containers) {
        const env = containerEnv(c);
        for (const key of Object.keys(env)) expect(CONFIG_VARIABLES.has(key), `${d.metadata.name}: ${key} is not a config variable`).toBe(true);
        expect(() => loadConfig(env), d.metadata.name).not.toThrow();
      }
    }
  });

  it('probes /healthz (liveness) and /readyz (readiness) on every container that serves HTTP', () => {
    const api = deployments.find((d) => roleOf(d) === 'api')!;
    expect(api.spec!.template!.spec.containers[0]!.ports?.length).toBeGreaterThan(0);
    for (const d of deployments) {
      for (const c of d.spec!.template!.spec.containers) {
        if (!c.ports?.length) continue;
        const portIds = c.ports.flatMap((p) => [p.name, p.containerPort]);
        expect(c.livenessProbe?.httpGet?.path, `${d.metadata.name} liveness`).toBe('/healthz');
        expect(c.readinessProbe?.httpGet?.path, `${d.metadata.name} readiness`).toBe('/readyz');
        expect(portIds).toContain(c.livenessProbe?.httpGet?.port);
        expect(portIds).toContain(c.readinessProbe?.httpGet?.port);
        expect(portIds).toContain(loadConfig(containerEnv(c)).PORT);
      }
    }
  });

  it('gives workers a termination grace longer than their SHUTDOWN_GRACE (>= 420 s)', () => {
    for (const d of deployments) expect(d.spec!.template!.spec.terminationGracePeriodSeconds, d.metadata.name).toBeGreaterThan(0);
    const worker = deployments.find((d) => roleOf(d) === 'worker')!;
    const graceSeconds = worker.spec!.template!.spec.terminationGracePeriodSeconds!;
    expect(graceSeconds).toBeGreaterThanOrEqual(420);
    const shutdownGraceMs = loadConfig(containerEnv(worker.spec!.template!.spec.containers[0]!)).SHUTDOWN_GRACE;
    expect(graceSeconds * 1000).toBeGreaterThan(shutdownGraceMs);
  });
});

// ---------- Dockerfile, .dockerignore, CI ----------

describe('Dockerfile', () => {
  const lines = read('Dockerfile').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  const stages = lines.reduce<string[][]>((acc, l) => (/^FROM\s/i.test(l) ? [...acc, [l]] : (acc.at(-1)?.push(l), acc)), []);

  it('builds with npm ci in one stage and runs production dependencies only in the last', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    const build = stages.find((s) => s.some((l) => /\bnpm run build\b/.test(l)))!;
    expect(build.some((l) => /^RUN\b.*\bnpm ci\b(?!.*--omit)/.test(l))).toBe(true);
    const runtime = stages.at(-1)!;
    expect(runtime).not.toBe(build);
    expect(runtime.some((l) => /^RUN\b.*\bnpm ci --omit=dev\b/.test(l))).toBe(true);
    expect(runtime.some((l) => /^COPY --from=\S+ \S*dist\b/.test(l))).toBe(true);
  });

  it('runs as a non-root user, with an init as PID 1 in front of node', () => {
    const user = stages.at(-1)!.filter((l) => /^USER\s/i.test(l)).at(-1);
    expect(user).toBeDefined();
    expect(user!.split(/\s+/)[1]).not.toMatch(/^(root|0)(:|$)/);
    const entrypoint = JSON.parse(stages.at(-1)!.find((l) => /^ENTRYPOINT\s/.test(l))!.replace(/^ENTRYPOINT\s+/, '')) as string[];
    expect(entrypoint[0]).toMatch(/tini$/);
    expect(entrypoint.slice(-2)).toEqual(['node', 'dist/src/cli/main.js']);
  });

  it('gets every directory the build compiles through the .dockerignore allow-list', () => {
    const rules = read('.dockerignore').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    expect(rules[0]).toBe('*');
    const include = (JSON.parse(read('tsconfig.build.json')) as { include: string[] }).include;
    for (const needed of ['package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json', ...include.map((d) => `${d}/`)]) {
      expect(rules, needed).toContain(`!${needed}`);
    }
  });
});

describe('.ci/run', () => {
  const script = read('.ci/run');
  const commands = script.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));

  it('is an executable bash script that fails on the first error', () => {
    expect(statSync(join(root, '.ci/run')).mode & 0o111).not.toBe(0);
    expect(script.startsWith('#!/usr/bin/env bash\n')).toBe(true);
    expect(commands).toContain('set -euo pipefail');
    const syntax = spawnSync('bash', ['-n', join(root, '.ci/run')], { encoding: 'utf8' });
    expect(syntax.stderr).toBe('');
    expect(syntax.status).toBe(0);
  });

  it('installs redis-server when missing, then runs npm ci and the README test command', () => {
    expect(script).toMatch(/command -v redis-server/);
    expect(script).toMatch(/apt-get install -y[^\n]*redis-server/);
    const ci = commands.indexOf('npm ci');
    expect(ci).toBeGreaterThanOrEqual(0);
    expect(commands.indexOf('npm test')).toBeGreaterThan(ci);
  });
});
