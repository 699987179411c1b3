/**
 * Standard Webhooks signing: `webhook-signature` carries one `v1,<base64 HMAC-SHA256 of
 * "id.timestamp.body">` per secret in WEBHOOK_SECRET, separated by spaces, so a receiver holding
 * either the old or the new secret verifies during a rotation. Signed with the `standardwebhooks`
 * package, the one receivers verify with.
 */
import { Webhook } from 'standardwebhooks';

export interface SignedHeaders {
  'webhook-id': string;
  'webhook-timestamp': string;
  'webhook-signature': string;
}

export type WebhookSigner = (msgId: string, at: Date, body: string) => SignedHeaders;

/** Throws when no secret is given: deliveries are never sent unsigned. */
export function createSigner(secrets: readonly string[]): WebhookSigner {
  if (secrets.length === 0) throw new Error('WEBHOOK_SECRET is not set: webhooks are never sent unsigned');
  const signers = secrets.map((s) => new Webhook(s));
  return (msgId, at, body) => ({
    'webhook-id': msgId,
    'webhook-timestamp': String(Math.floor(at.getTime() / 1000)),
    'webhook-signature': signers.map((w) => w.sign(msgId, at, body)).join(' '),
  });
}
