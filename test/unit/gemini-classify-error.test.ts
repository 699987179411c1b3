import { describe, expect, it } from 'vitest';
import {
  classifyErrorResponse, parseRetryDelayMs, retryDelayFromMessage,
} from '../../src/providers/gemini/classify-error.js';
import { fixtureText } from '../fixtures/gemini/bodies.js';

const MODEL = 'gemini-3.1-flash-image';

function rateLimitBody(message: string, details: unknown[] = []): string {
  return JSON.stringify({ error: { code: 429, message, status: 'RESOURCE_EXHAUSTED', details } });
}

describe('classifyErrorResponse: 429', () => {
  it('takes a fractional RetryInfo.retryDelay ("34.4s" → 34400 ms) and a per-minute quota', () => {
    const err = classifyErrorResponse(429, fixtureText('429-retry-info.json'), MODEL);
    expect(err.code).toBe('RATE_LIMITED');
    expect(err.retryAfterMs).toBe(34_400);
    expect(err.details).toMatchObject({
      upstreamStatus: 429,
      upstreamCode: 'RESOURCE_EXHAUSTED',
      quotaScope: 'minute',
      quotaId: 'GenerateContentPaidTierInputTokensPerModelPerMinute',
      quotaMetric: 'generativelanguage.googleapis.com/generate_content_paid_tier_input_token_count',
    });
    expect(err.message).toBe(
      'gemini-3.1-flash-image is rate limited, quota GenerateContentPaidTierInputTokensPerModelPerMinute, retry in 34400 ms (429 RESOURCE_EXHAUSTED): "Resource has been exhausted (e.g. check quota)."',
    );
  });

  it('prefers RetryInfo over the message and reports a per-day quota when any violation is per day', () => {
    const err = classifyErrorResponse(429, fixtureText('429-free-tier-per-day.json'), MODEL);
    expect(err.retryAfterMs).toBe(47_000);
    expect(err.details).toMatchObject({ quotaScope: 'day', quotaId: 'GenerateRequestsPerDayPerProjectPerModel-FreeTier' });
    expect(err.message.length).toBeLessThan(500);
  });

  it('reads the array-wrapped envelope and a nanosecond delay ("45.837906927s" → 45838 ms, never early)', () => {
    const err = classifyErrorResponse(429, fixtureText('429-array-wrapped.json'), MODEL);
    expect(err.code).toBe('RATE_LIMITED');
    expect(err.retryAfterMs).toBe(45_838);
    expect(err.details).toMatchObject({ quotaScope: 'minute', quotaId: 'GenerateRequestsPerMinutePerProjectPerModel' });
  });

  it('reads the announced requests-per-minute quota (quotaValue "20") and nothing for other quota kinds', () => {
    const violation = (quotaId: string, quotaValue?: string) => ({
      '@type': 'type.googleapis.com/google.rpc.QuotaFailure',
      violations: [{ quotaMetric: 'generativelanguage.googleapis.com/generate_content_requests', quotaId, ...(quotaValue === undefined ? {} : { quotaValue }) }],
    });
    const perMinute = classifyErrorResponse(429, rateLimitBody('Quota exceeded.', [violation('GenerateRequestsPerMinutePerProjectPerModel', '20')]), MODEL);
    expect(perMinute.details).toMatchObject({ quotaScope: 'minute', requestsPerMinute: 20 });
    // Tokens per minute, per day, no quotaValue (the `limit: 0` case), nonsense: no announced request rate.
    for (const [id, value] of [
      ['GenerateContentPaidTierInputTokensPerModelPerMinute', '1000000'],
      ['GenerateRequestsPerDayPerProjectPerModel', '250'],
      ['GenerateRequestsPerMinutePerProjectPerModel', undefined],
      ['GenerateRequestsPerMinutePerProjectPerModel', 'lots'],
      ['GenerateRequestsPerMinutePerProjectPerModel', '0'],
    ] as const) {
      const err = classifyErrorResponse(429, rateLimitBody('Quota exceeded.', [violation(id, value)]), MODEL);
      expect(err.details.requestsPerMinute, `${id} ${value}`).toBeUndefined();
    }
    // A captured body without quotaValue announces nothing.
    expect(classifyErrorResponse(429, fixtureText('429-array-wrapped.json'), MODEL).details.requestsPerMinute).toBeUndefined();
  });

  it('falls back to "Please retry in 12.5s." in the message when RetryInfo is missing', () => {
    const err = classifyErrorResponse(429, rateLimitBody('Quota exceeded. Please retry in 12.5s.'), MODEL);
    expect(err.retryAfterMs).toBe(12_500);
    expect(err.details.quotaScope).toBe('unknown');
  });

  it('leaves retryAfterMs undefined when neither RetryInfo nor the message has a delay', () => {
    const err = classifyErrorResponse(429, rateLimitBody('Resource has been exhausted (e.g. check quota).'), MODEL);
    expect(err.code).toBe('RATE_LIMITED');
    expect(err.retryAfterMs).toBeUndefined();
    expect(err.message).toContain('no retry delay given');
  });

  it('still classifies a 429 whose body is not JSON', () => {
    const err = classifyErrorResponse(429, '<html>Too Many Requests</html>', MODEL);
    expect(err.code).toBe('RATE_LIMITED');
    expect(err.retryAfterMs).toBeUndefined();
    expect(err.message).toContain('"<html>Too Many Requests</html>"');
  });
});

describe('retry delay parsing', () => {
  it.each([
    ['47s', 47_000], ['34.4s', 34_400], ['45.837906927s', 45_838], ['0.001s', 1], ['0.0001s', 1], ['0s', 0],
  ])('Duration %s → %d ms', (value, ms) => {
    expect(parseRetryDelayMs(value)).toBe(ms);
  });

  it.each(['47', '1m', '-3s', 's', ''])('rejects %j', (value) => {
    expect(parseRetryDelayMs(value)).toBeUndefined();
  });

  it('accepts the {seconds, nanos} object form', () => {
    expect(parseRetryDelayMs({ seconds: 3, nanos: 500_000_000 })).toBe(3_500);
  });

  it('reads seconds and milliseconds from message text', () => {
    expect(retryDelayFromMessage('... Please retry in 47.884324799s.')).toBe(47_885);
    expect(retryDelayFromMessage('Please retry in 590.442877ms.')).toBe(591);
    expect(retryDelayFromMessage('Please try again later.')).toBeUndefined();
  });
});

describe('classifyErrorResponse: other statuses', () => {
  it('503 → UPSTREAM_UNAVAILABLE with status and message', () => {
    const err = classifyErrorResponse(503, fixtureText('503-overloaded.json'), MODEL);
    expect(err.code).toBe('UPSTREAM_UNAVAILABLE');
    expect(err.message).toBe(
      'gemini-3.1-flash-image is unavailable (503 UNAVAILABLE): "This model is currently experiencing high demand. Spikes in demand are usually temporary. Please try again later."',
    );
    expect(err.retryAfterMs).toBeUndefined();
  });

  it('404 → MODEL_NOT_FOUND', () => {
    const err = classifyErrorResponse(404, fixtureText('404-model-not-found.json'), 'gemini-3-pro-image-preview');
    expect(err.code).toBe('MODEL_NOT_FOUND');
    expect(err.message).toMatch(/^model gemini-3-pro-image-preview was not found \(retired or misspelled\) \(404 NOT_FOUND\): "models\/gemini-3-pro-image-preview is not found/);
  });

  it('400 with API_KEY_INVALID → UPSTREAM_AUTH', () => {
    const err = classifyErrorResponse(400, fixtureText('400-api-key-invalid.json'), MODEL);
    expect(err.code).toBe('UPSTREAM_AUTH');
    expect(err.details.reasons).toEqual(['API_KEY_INVALID']);
    expect(err.message).toContain('API key not valid');
  });

  it('400 saying "API key not valid" without ErrorInfo → UPSTREAM_AUTH', () => {
    const body = JSON.stringify({ error: { code: 400, message: 'API key not valid. Please pass a valid API key.', status: 'INVALID_ARGUMENT' } });
    expect(classifyErrorResponse(400, body, MODEL).code).toBe('UPSTREAM_AUTH');
  });

  it('400 INVALID_ARGUMENT → INVALID_REQUEST naming the field', () => {
    const err = classifyErrorResponse(400, fixtureText('400-invalid-argument.json'), MODEL);
    expect(err.code).toBe('INVALID_REQUEST');
    expect(err.message).toContain('Unknown name "imageSizes"');
  });

  it('400 FAILED_PRECONDITION (billing, region) → UPSTREAM_AUTH: the account, not the job', () => {
    const body = JSON.stringify({ error: { code: 400, message: 'User location is not supported for the API use.', status: 'FAILED_PRECONDITION' } });
    expect(classifyErrorResponse(400, body, MODEL).code).toBe('UPSTREAM_AUTH');
  });

  it('402 → UPSTREAM_AUTH saying the prepaid credits are gone', () => {
    const err = classifyErrorResponse(402, fixtureText('402-prepay-depleted.json'), MODEL);
    expect(err.code).toBe('UPSTREAM_AUTH');
    expect(err.message).toMatch(/prepayment credits are depleted/);
  });

  it.each([
    [401, 'UPSTREAM_AUTH'], [403, 'UPSTREAM_AUTH'], [408, 'UPSTREAM_TIMEOUT'], [504, 'UPSTREAM_TIMEOUT'],
    [500, 'UPSTREAM_UNAVAILABLE'], [502, 'UPSTREAM_UNAVAILABLE'], [503, 'UPSTREAM_UNAVAILABLE'], [599, 'UPSTREAM_UNAVAILABLE'],
    [409, 'INVALID_REQUEST'], [413, 'INVALID_REQUEST'], [499, 'INVALID_REQUEST'],
  ])('%d → %s', (status, code) => {
    const err = classifyErrorResponse(status, '', MODEL);
    expect(err.code).toBe(code);
    expect(err.message).toContain(`(${status}) with an empty body`);
    expect(err.details.upstreamStatus).toBe(status);
  });

  it('trims a long upstream message to about 300 characters', () => {
    const body = JSON.stringify({ error: { code: 500, message: 'x'.repeat(5000), status: 'INTERNAL' } });
    const err = classifyErrorResponse(500, body, MODEL);
    expect(err.message.length).toBeLessThan(400);
    expect(err.message).toMatch(/x…"$/);
  });
});
