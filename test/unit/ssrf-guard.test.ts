/**
 * The SSRF guard: which addresses are refused, that every resolved address counts, and that the
 * guarded dispatcher refuses at connect time (IP literals and hostnames alike) and connects to the
 * very address it vetted.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configFrom } from '../../src/config/env.js';
import {
  SsrfRefusedError, createAddressPolicy, createGuardedDispatcher, parseAllowedCidrs, resolveAllowed, ssrfRefusal, type Resolver,
} from '../../src/net/ssrf-guard.js';

const REFUSED: [string, string][] = [
  ['127.0.0.1', 'loopback'],
  ['127.1.2.3', 'loopback'],
  ['10.0.0.1', 'private'],
  ['172.16.5.4', 'private'],
  ['172.31.255.255', 'private'],
  ['192.168.1.1', 'private'],
  ['169.254.169.254', 'linkLocal'],
  ['100.64.0.1', 'carrierGradeNat'],
  ['100.100.100.200', 'carrierGradeNat'],
  ['0.0.0.0', 'unspecified'],
  ['224.0.0.1', 'multicast'],
  ['255.255.255.255', 'broadcast'],
  ['192.0.2.10', 'reserved'],
  ['::1', 'loopback'],
  ['::', 'unspecified'],
  ['fe80::1', 'linkLocal'],
  ['fc00::1', 'uniqueLocal'],
  ['fd00:ec2::254', 'uniqueLocal'],
  ['ff02::1', 'multicast'],
  ['::ffff:127.0.0.1', 'loopback'],
  ['::ffff:169.254.169.254', 'linkLocal'],
  ['::ffff:10.1.2.3', 'private'],
  ['64:ff9b::a00:1', 'private'], // NAT64 of 10.0.0.1
  ['2002:7f00:1::1', '6to4'],
  ['2001:0:4136:e378::1', 'teredo'],
  ['fec0::1', 'deprecatedSiteLocal'],
];

const ALLOWED = ['8.8.8.8', '93.184.216.34', '172.32.0.1', '100.128.0.1', '2606:4700:4700::1111', '64:ff9b::808:808', '::ffff:8.8.4.4'];

describe('address policy', () => {
  const policy = createAddressPolicy([]);

  it.each(REFUSED)('refuses %s (%s)', (address, range) => {
    const verdict = policy(address);
    expect(verdict.allowed).toBe(false);
    expect(verdict.range).toBe(range);
  });

  it.each(ALLOWED)('allows public %s', (address) => {
    expect(policy(address).allowed).toBe(true);
  });

  it('refuses what is not an address', () => {
    expect(policy('not-an-ip').allowed).toBe(false);
  });

  it('WEBHOOK_ALLOWED_CIDRS opens exactly the listed ranges, in either IPv6 or mapped form', () => {
    const open = createAddressPolicy(['127.0.0.0/8', '::1/128', '10.1.0.0/16']);
    expect(open('127.0.0.1')).toMatchObject({ allowed: true, allowedBy: '127.0.0.0/8' });
    expect(open('::1')).toMatchObject({ allowed: true, allowedBy: '::1/128' });
    expect(open('::ffff:127.0.0.1').allowed).toBe(true);
    expect(open('10.1.200.3').allowed).toBe(true);
    expect(open('10.2.0.1').allowed).toBe(false);
    expect(open('169.254.169.254').allowed).toBe(false);
    expect(open('fd00:ec2::254').allowed).toBe(false);
  });

  it('a bad CIDR is named', () => {
    expect(() => parseAllowedCidrs(['10.0.0.0/8', '300.1.1.1/8'])).toThrow(/"300\.1\.1\.1\/8"/);
  });
});

describe('resolution', () => {
  const policy = createAddressPolicy([]);

  it('refuses a host when ANY of its addresses is refused', async () => {
    const resolver: Resolver = async () => [{ address: '93.184.216.34', family: 4 }, { address: '127.0.0.1', family: 4 }];
    await expect(resolveAllowed('mixed.example', policy, resolver)).rejects.toBeInstanceOf(SsrfRefusedError);
  });

  it('accepts a host whose addresses are all public', async () => {
    const resolver: Resolver = async () => [{ address: '93.184.216.34', family: 4 }, { address: '2606:2800:220:1::1', family: 6 }];
    await expect(resolveAllowed('public.example', policy, resolver)).resolves.toHaveLength(2);
  });

  it('refuses a real hostname that resolves to loopback (localhost)', async () => {
    const err = await resolveAllowed('localhost', policy).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SsrfRefusedError);
    expect((err as SsrfRefusedError).message).toMatch(/localhost resolves to (127\.0\.0\.1|::1) \(loopback\)/);
  });
});

describe('guarded dispatcher', () => {
  let server: Server;
  let port = 0;
  let hits = 0;
  beforeAll(async () => {
    server = createServer((_req, res) => {
      hits += 1;
      res.end('reached');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  const closed = createGuardedDispatcher(configFrom({}));
  afterAll(() => closed.close());

  const refusal = async (url: string, dispatcher = closed) => {
    const err = await request(url, { dispatcher, headersTimeout: 2_000 }).then(
      (res) => new Error(`answered ${res.statusCode}`),
      (e: unknown) => e,
    );
    return ssrfRefusal(err);
  };

  it.each(['http://127.0.0.1:PORT/', 'http://10.0.0.1/', 'http://169.254.169.254/latest/meta-data/', 'http://[::1]:PORT/', 'http://localhost:PORT/', 'http://[::ffff:127.0.0.1]:PORT/'])(
    'refuses %s before any byte is sent',
    async (template) => {
      const before = hits;
      const refused = await refusal(template.replace('PORT', String(port)));
      expect(refused).toBeInstanceOf(SsrfRefusedError);
      expect(hits).toBe(before);
    },
  );

  it('connects when WEBHOOK_ALLOWED_CIDRS allows the range (IP literal and hostname)', async () => {
    const open = createGuardedDispatcher(configFrom({ WEBHOOK_ALLOWED_CIDRS: '127.0.0.0/8,::1/128' }));
    try {
      for (const host of ['127.0.0.1', 'localhost']) {
        const res = await request(`http://${host}:${port}/`, { dispatcher: open });
        expect(await res.body.text()).toBe('reached');
      }
    } finally {
      await open.close();
    }
  });

  it('connects to the address it vetted (pinned): a name only our resolver knows reaches the server it resolved to', async () => {
    const calls: string[] = [];
    const resolver: Resolver = async (host) => {
      calls.push(host);
      return [{ address: '127.0.0.1', family: 4 }];
    };
    const open = createGuardedDispatcher(configFrom({ WEBHOOK_ALLOWED_CIDRS: '127.0.0.0/8' }), { resolver });
    const shut = createGuardedDispatcher(configFrom({}), { resolver });
    try {
      const res = await request(`http://pinned.invalid:${port}/`, { dispatcher: open });
      expect(await res.body.text()).toBe('reached');
      expect(calls).toEqual(['pinned.invalid']);
      // The same name, vetted without the allowance, never connects.
      expect(await refusal(`http://pinned.invalid:${port}/`, shut)).toBeInstanceOf(SsrfRefusedError);
    } finally {
      await open.close();
      await shut.close();
    }
  });
});
