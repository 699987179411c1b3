/**
 * A real webhook receiver for tests: an HTTP server on 127.0.0.1 that verifies every request with the
 * official `standardwebhooks` library, once per secret it knows, and answers what the test scripts.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { Webhook } from 'standardwebhooks';

export interface ReceivedWebhook {
  path: string;
  headers: Record<string, string>;
  body: string;
  /** Per secret (same order as given): the verified payload, or the verification error's message. */
  verified: ({ ok: true; payload: any } | { ok: false; error: string })[];
  receivedAt: number;
}

/** `delayMs`: answer that much later (a slow receiver); 'hang': never answer. */
export type Answer = { status: number; headers?: Record<string, string>; body?: string; delayMs?: number } | 'hang';

export interface WebhookReceiver {
  /** Base URL, e.g. http://127.0.0.1:40123 */
  url: string;
  received: ReceivedWebhook[];
  /** Decide the answer to the n-th request (0-based, all paths). Default: 200. */
  answer(fn: (req: ReceivedWebhook, n: number) => Answer): void;
  close(): Promise<void>;
}

export async function startWebhookReceiver(secrets: string[]): Promise<WebhookReceiver> {
  const received: ReceivedWebhook[] = [];
  const verifiers = secrets.map((s) => new Webhook(s));
  let decide: (req: ReceivedWebhook, n: number) => Answer = () => ({ status: 200 });
  const sockets = new Set<Socket>();

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string') headers[k] = v;
      const entry: ReceivedWebhook = {
        path: req.url ?? '/', headers, body, receivedAt: Date.now(),
        verified: verifiers.map((w) => {
          try {
            return { ok: true as const, payload: w.verify(body, headers) };
          } catch (err) {
            return { ok: false as const, error: (err as Error).message };
          }
        }),
      };
      const n = received.length;
      received.push(entry);
      const answer = decide(entry, n);
      if (answer === 'hang') return; // never answers; the socket is destroyed on close
      const reply = () => {
        res.writeHead(answer.status, answer.headers ?? {});
        res.end(answer.body ?? '');
      };
      if (answer.delayMs) setTimeout(reply, answer.delayMs);
      else reply();
    });
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    received,
    answer(fn) {
      decide = fn;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

export function newSecret(): string {
  const bytes = new Uint8Array(32);
  crypto.getRandomValues(bytes);
  return `whsec_${Buffer.from(bytes).toString('base64')}`;
}
