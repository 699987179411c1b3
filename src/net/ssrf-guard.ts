/**
 * SSRF guard for every URL the service fetches on a caller's behalf (webhook deliveries, input images).
 *
 * The rule is applied where it cannot be bypassed: inside the connection step. The dispatcher from
 * `createGuardedDispatcher` gives undici a `lookup` that resolves the host (all its addresses), refuses
 * the connection if ANY address is not public, and hands the socket exactly the addresses it vetted.
 * The check and the connect use one resolution, so DNS rebinding between them is impossible. IP
 * literals (which Node connects to without a lookup) are checked before the connector runs. Every
 * redirect hop or retry opens its connection through the same guard.
 *
 * Refused by default (IPv4, IPv6 and IPv4 embedded in IPv6 — mapped, SIIT, NAT64 — alike): loopback,
 * RFC 1918 private, link-local (169.254/16 holds the cloud metadata address 169.254.169.254),
 * CGNAT 100.64/10, unspecified, broadcast, multicast, reserved/documentation ranges, IPv6 unique-local
 * fc00::/7 (holds AWS's fd00:ec2::254), site-local, discard, and the 6to4/Teredo tunnels (they can
 * smuggle any IPv4). Only addresses ipaddr.js classifies as plain `unicast` (plus the public anycast
 * as112/amt ranges) pass. WEBHOOK_ALLOWED_CIDRS opens chosen ranges (tests, on-premise receivers).
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { isIP, type LookupFunction } from 'node:net';
import ipaddr from 'ipaddr.js';
import { Agent, buildConnector } from 'undici';
import type { Config } from '../config/env.js';

/** Ranges (ipaddr.js names) that are public destinations; anything else is refused. */
const PUBLIC_RANGES = new Set(['unicast', 'as112', 'amt', 'as112v6']);
/** IPv6 ranges whose low 32 bits are an IPv4 address that decides (mapped, SIIT, NAT64). */
const EMBEDDED_IPV4_RANGES = new Set(['ipv4Mapped', 'rfc6145', 'rfc6052']);

type Cidr = [ipaddr.IPv4 | ipaddr.IPv6, number];

export interface AddressVerdict {
  allowed: boolean;
  /** The address as checked (IPv4 for an IPv4-embedding IPv6 address). */
  address: string;
  /** ipaddr.js range name, e.g. loopback, private, linkLocal, uniqueLocal, unicast. */
  range: string;
  /** Set when WEBHOOK_ALLOWED_CIDRS let a non-public address through. */
  allowedBy?: string;
}

/** A connection the guard refused. Detect with `ssrfRefusal(err)`: undici may wrap it. */
export class SsrfRefusedError extends Error {
  override readonly name = 'SsrfRefusedError';
  readonly code = 'ERR_SSRF_REFUSED';
  constructor(readonly host: string, readonly address: string, readonly range: string) {
    super(`${host} resolves to ${address} (${describeRange(range)}), which is refused; allow the range in WEBHOOK_ALLOWED_CIDRS if this is intended`);
  }
}

export type AddressPolicy = (address: string) => AddressVerdict;

/** Parse WEBHOOK_ALLOWED_CIDRS entries; throws naming the bad entry. */
export function parseAllowedCidrs(cidrs: readonly string[]): Cidr[] {
  return cidrs.map((c) => {
    try {
      return ipaddr.parseCIDR(c) as Cidr;
    } catch {
      throw new Error(`WEBHOOK_ALLOWED_CIDRS: "${c}" is not a valid CIDR such as 10.0.0.0/8 or fd00::/8`);
    }
  });
}

/** The address rule: public unicast only, unless an allowed CIDR contains the address. */
export function createAddressPolicy(allowedCidrs: readonly string[]): AddressPolicy {
  const allowed = parseAllowedCidrs(allowedCidrs);
  return (raw) => {
    let parsed: ipaddr.IPv4 | ipaddr.IPv6;
    try {
      parsed = ipaddr.parse(stripBrackets(raw).split('%')[0]!);
    } catch {
      return { allowed: false, address: raw, range: 'invalid' };
    }
    const candidates: (ipaddr.IPv4 | ipaddr.IPv6)[] = [parsed];
    let decisive: ipaddr.IPv4 | ipaddr.IPv6 = parsed;
    if (parsed.kind() === 'ipv6' && EMBEDDED_IPV4_RANGES.has(parsed.range())) {
      const bytes = (parsed as ipaddr.IPv6).toByteArray().slice(12);
      decisive = new ipaddr.IPv4(bytes);
      candidates.push(decisive);
    }
    const range = decisive.range();
    const address = decisive.toString();
    // An allowed CIDR may name either form (::1/128, or 127.0.0.0/8 for ::ffff:127.0.0.1).
    for (const [net, bits] of allowed) {
      for (const c of candidates) {
        if (c.kind() === net.kind() && c.match(net, bits)) {
          return { allowed: true, address, range, allowedBy: `${net.toString()}/${bits}` };
        }
      }
    }
    return { allowed: PUBLIC_RANGES.has(range), address, range };
  };
}

/** How dns.lookup is called: (hostname) → every address. Injected in tests. */
export type Resolver = (hostname: string) => Promise<LookupAddress[]>;

export const systemResolver: Resolver = (hostname) =>
  new Promise((resolve, reject) => {
    dnsLookup(hostname, { all: true, verbatim: true }, (err, addresses) => (err ? reject(err) : resolve(addresses)));
  });

/**
 * Resolve `hostname` and vet every address. Resolves to the addresses (all allowed) or rejects with
 * SsrfRefusedError naming the first refused one.
 */
export async function resolveAllowed(hostname: string, policy: AddressPolicy, resolver: Resolver = systemResolver): Promise<LookupAddress[]> {
  const host = stripBrackets(hostname);
  const addresses = isIP(host) ? [{ address: host, family: isIP(host) }] : await resolver(host);
  if (addresses.length === 0) throw Object.assign(new Error(`${host} has no address`), { code: 'ENOTFOUND' });
  for (const a of addresses) {
    const verdict = policy(a.address);
    if (!verdict.allowed) throw new SsrfRefusedError(host, verdict.address, verdict.range);
  }
  return addresses;
}

/** A `lookup` for net/tls.connect that returns only vetted addresses (the ones the socket then uses). */
export function createGuardedLookup(policy: AddressPolicy, resolver: Resolver = systemResolver): LookupFunction {
  return ((hostname: string, options: { all?: boolean; family?: number | string } | number, callback: (...args: unknown[]) => void) => {
    const opts = typeof options === 'object' && options !== null ? options : { family: options };
    resolveAllowed(hostname, policy, resolver).then(
      (addresses) => {
        const family = opts.family === 'IPv4' ? 4 : opts.family === 'IPv6' ? 6 : Number(opts.family ?? 0);
        const usable = family === 4 || family === 6 ? addresses.filter((a) => a.family === family) : addresses;
        if (usable.length === 0) {
          callback(Object.assign(new Error(`${hostname} has no IPv${family} address`), { code: 'ENOTFOUND' }));
        } else if (opts.all) {
          callback(null, usable);
        } else {
          callback(null, usable[0]!.address, usable[0]!.family);
        }
      },
      (err: unknown) => callback(err),
    );
  }) as LookupFunction;
}

export interface GuardedDispatcherOptions {
  /** Connections per origin. */
  connections?: number;
  /** Replaces the system resolver (tests). */
  resolver?: Resolver;
  /** Replaces config.WEBHOOK_ALLOWED_CIDRS. */
  allowedCidrs?: readonly string[];
  connectTimeoutMs?: number;
}

/**
 * An undici Agent that only connects to vetted addresses: give it as `dispatcher` to every request
 * for a caller-supplied URL. Its connection errors are SsrfRefusedError for refused addresses.
 */
export function createGuardedDispatcher(config: Config, opts: GuardedDispatcherOptions = {}): Agent {
  const policy = createAddressPolicy(opts.allowedCidrs ?? config.WEBHOOK_ALLOWED_CIDRS);
  const lookup = createGuardedLookup(policy, opts.resolver);
  const connector = buildConnector({ lookup, timeout: opts.connectTimeoutMs ?? 10_000 } as buildConnector.BuildOptions);
  const connect: buildConnector.connector = (options, callback) => {
    // IP literals never reach `lookup` (Node connects to them directly): check them here.
    const host = stripBrackets(options.hostname);
    if (isIP(host)) {
      const verdict = policy(host);
      if (!verdict.allowed) {
        callback(new SsrfRefusedError(host, verdict.address, verdict.range), null);
        return;
      }
    }
    connector({ ...options, hostname: host }, callback);
  };
  return new Agent({ connect, connections: opts.connections ?? 16 });
}

/** The SsrfRefusedError in `err` or its causes, if any. */
export function ssrfRefusal(err: unknown): SsrfRefusedError | undefined {
  for (let e: unknown = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if ((e as { code?: unknown }).code === 'ERR_SSRF_REFUSED') return e as SsrfRefusedError;
  }
  return undefined;
}

function stripBrackets(host: string): string {
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
}

function describeRange(range: string): string {
  const words: Record<string, string> = {
    loopback: 'loopback', private: 'private network', linkLocal: 'link-local, cloud metadata', carrierGradeNat: 'carrier-grade NAT',
    unspecified: 'unspecified', broadcast: 'broadcast', multicast: 'multicast', reserved: 'reserved', uniqueLocal: 'unique-local',
    deprecatedSiteLocal: 'site-local', discard: 'discard-only', '6to4': '6to4 tunnel', teredo: 'Teredo tunnel', invalid: 'not an IP address',
  };
  return words[range] ?? range;
}
