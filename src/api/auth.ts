/**
 * API keys: `Authorization: Bearer <key>`, keys from config.API_KEYS, each bound to a tenant.
 *
 * Keys are compared as sha256 digests with timingSafeEqual, so neither the content nor the length of
 * a configured key leaks through response timing; every configured key is compared on every request.
 */
import { createHash, timingSafeEqual } from 'node:crypto';

export interface ApiKeyEntry {
  readonly tenant: string;
  readonly key: string;
}

/** `{tenant}` when the header carries a configured key, undefined otherwise. */
export type Authenticate = (authorizationHeader: string | undefined) => { tenant: string } | undefined;

export function createAuthenticator(entries: readonly ApiKeyEntry[]): Authenticate {
  const digests = entries.map((e) => ({ tenant: e.tenant, digest: sha256(e.key) }));
  return (header) => {
    const match = /^Bearer[ ]+(\S+)\s*$/i.exec(header ?? '');
    if (!match) return undefined;
    const presented = sha256(match[1]!);
    let tenant: string | undefined;
    for (const d of digests) {
      // No early exit: the time taken does not depend on which key matched.
      if (timingSafeEqual(presented, d.digest) && tenant === undefined) tenant = d.tenant;
    }
    return tenant === undefined ? undefined : { tenant };
  };
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}
