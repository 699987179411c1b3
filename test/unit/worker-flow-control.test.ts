/**
 * The worker's flow control: the answer gate (answers held until stored), the turn pacer (bursts
 * spread over event-loop turns) and the answer parser that keeps the image as a slice of the body.
 */
import { setImmediate as nextTurn } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { parseJsonKeepingLargeData } from '../../src/providers/gemini/large-strings.js';
import { AnswerGate } from '../../src/worker/answer-gate.js';
import { TurnPacer } from '../../src/worker/turn-pacer.js';

describe('answer gate', () => {
  it('holds at most N answers; the next waits until one is released, first come first served', async () => {
    const gate = new AnswerGate(2);
    const [a, b, c, d] = [gate.slot(), gate.slot(), gate.slot(), gate.slot()];
    await a.acquire();
    await b.acquire();
    const order: string[] = [];
    const cDone = c.acquire().then(() => order.push('c'));
    const dDone = d.acquire().then(() => order.push('d'));
    await nextTurn();
    expect(gate.held).toBe(2);
    expect(gate.waiting).toBe(2);
    expect(order).toEqual([]);
    a.release();
    await cDone;
    expect(order).toEqual(['c']);
    expect(gate.held).toBe(2);
    b.release();
    await dDone;
    expect(order).toEqual(['c', 'd']);
  });

  it('release is idempotent and a released slot can be taken again by the same job (its next call)', async () => {
    const gate = new AnswerGate(1);
    const slot = gate.slot();
    await slot.acquire();
    await slot.acquire(); // already held: no second permit
    expect(gate.held).toBe(1);
    slot.release();
    slot.release();
    expect(gate.held).toBe(0);
    await slot.acquire();
    expect(gate.held).toBe(1);
    slot.release();
  });

  it('a waiter whose call is aborted (deadline, cancel) leaves the queue and takes no permit', async () => {
    const gate = new AnswerGate(1);
    const holder = gate.slot();
    await holder.acquire();
    const abort = new AbortController();
    const waiting = gate.slot().acquire(abort.signal);
    await nextTurn();
    abort.abort(new Error('deadline'));
    await expect(waiting).rejects.toThrow('deadline');
    expect(gate.waiting).toBe(0);
    holder.release();
    expect(gate.held).toBe(0);
    // An already aborted signal fails at once.
    await expect(gate.slot().acquire(AbortSignal.abort(new Error('gone')))).rejects.toThrow('gone');
  });
});

describe('turn pacer', () => {
  it('lets perTurn units through per event-loop turn, in arrival order', async () => {
    const pacer = new TurnPacer(2);
    const turns: number[] = [];
    let turn = 0;
    const ticking = (async () => {
      for (let i = 0; i < 6; i++) {
        await nextTurn();
        turn += 1;
      }
    })();
    await Promise.all(Array.from({ length: 6 }, async (_, i) => {
      await pacer.turn();
      turns[i] = turn;
    }));
    await ticking;
    // Two in the first turn, two in the next, two in the one after: never more than two per turn.
    const perTurn = new Map<number, number>();
    for (const t of turns) perTurn.set(t, (perTurn.get(t) ?? 0) + 1);
    expect([...perTurn.values()].every((n) => n <= 2)).toBe(true);
    expect(perTurn.size).toBe(3);
    expect(turns).toEqual([...turns].sort((x, y) => x - y));
  });

  it('a heavy caller (weight of a turn or more) goes alone in its turn', async () => {
    const pacer = new TurnPacer(4);
    const log: string[] = [];
    await pacer.turn(1);
    log.push('light-1');
    const heavy = pacer.turn(12).then(() => log.push('heavy'));
    const light = pacer.turn(1).then(() => log.push('light-2'));
    await Promise.all([heavy, light]);
    expect(log).toEqual(['light-1', 'heavy', 'light-2']);
  });
});

describe('answer parse keeping the image as a slice', () => {
  const image = 'iVBORw0KGgo' + 'A'.repeat(20_000) + '==';

  it('parses exactly like JSON.parse: pretty or compact, several image parts, escapes, short values', () => {
    const answer = {
      candidates: [{
        content: { role: 'model', parts: [
          { text: 'here is "data": "not a key" \\ and a quote' },
          { inlineData: { mimeType: 'image/png', data: image }, thought: true },
          { inlineData: { mimeType: 'image/png', data: image.replace('A', 'B') } },
          { inlineData: { mimeType: 'image/png', data: 'c2hvcnQ=' } },
        ] },
        finishReason: 'STOP',
      }],
      usageMetadata: { promptTokenCount: 12, candidatesTokenCount: 1120 },
      modelVersion: 'gemini-3.1-flash-image',
    };
    for (const text of [JSON.stringify(answer), JSON.stringify(answer, null, 2)]) {
      expect(parseJsonKeepingLargeData(text)).toEqual(JSON.parse(text));
    }
  });

  it('a long value with an escape inside is parsed in place; invalid JSON still throws like JSON.parse', () => {
    const escaped = JSON.stringify({ inlineData: { data: `${'A'.repeat(5_000)}\\/${'B'.repeat(5_000)}` } });
    expect(parseJsonKeepingLargeData(escaped)).toEqual(JSON.parse(escaped));
    expect(() => parseJsonKeepingLargeData(`{"data": "${'A'.repeat(5_000)}`)).toThrow(SyntaxError);
    expect(() => parseJsonKeepingLargeData(`{"data": "${'A'.repeat(5_000)}", }`)).toThrow(SyntaxError);
  });
});
