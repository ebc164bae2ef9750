// The mock provider behaves as documented: OpenAI's wire format for every
// endpoint, each fault, the knobs, introspection, keep-alive and HTTPS.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startMock, httpRequest, makeCerts, expectedContent, parseSSE } from './lib/mock.mjs';

const CHAT = '/v1/chat/completions';
const msgs = [{ role: 'user', content: 'hello' }];

function events(body) {
  const ev = parseSSE(body);
  assert.equal(ev.at(-1).data, '[DONE]', 'stream ends with [DONE]');
  return ev.slice(0, -1).map((e) => JSON.parse(e.data));
}

// Raw bytes over TCP: resolves { data, error } when the peer closes, errors
// or after waitMs.
function rawExchange(port, payload, waitMs = 1500) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let data = Buffer.alloc(0);
    const done = (error) => { clearTimeout(t); s.destroy(); resolve({ data: data.toString('latin1'), error }); };
    const t = setTimeout(() => done('timeout'), waitMs);
    s.on('connect', () => s.write(payload));
    s.on('data', (d) => { data = Buffer.concat([data, d]); });
    s.on('error', (e) => done(e.code));
    s.on('end', () => done('end'));
  });
}

function post(path_, body, headers = {}) {
  return `POST ${path_} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n` +
    Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('') +
    `content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}

describe('mock_upstream over HTTP', () => {
  let mock;
  before(async () => { mock = await startMock({ args: ['--name', 'alpha'] }); });
  after(async () => { const r = await mock.stop(); assert.equal(r.code, 0, 'clean exit on SIGTERM'); });

  const chat = (body, headers) => httpRequest(mock.url + CHAT, { body: { messages: msgs, ...body }, headers });

  test('non-streamed chat completion has the chat.completion shape and rate-limit headers', async () => {
    const r = await chat({ model: 'gpt-x' });
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'], /^application\/json/);
    const j = JSON.parse(r.body);
    assert.equal(j.object, 'chat.completion');
    assert.match(j.id, /^chatcmpl-/);
    assert.equal(typeof j.created, 'number');
    assert.equal(j.model, 'gpt-x');
    assert.deepEqual(j.choices[0].message, { role: 'assistant', content: expectedContent('alpha', 8), refusal: null });
    assert.equal(j.choices[0].finish_reason, 'stop');
    assert.equal(j.usage.completion_tokens, 8);
    assert.ok(j.usage.prompt_tokens > 0);
    assert.equal(j.usage.total_tokens, j.usage.prompt_tokens + 8);
    assert.equal(r.headers['x-mock-name'], 'alpha');
    for (const h of ['limit-requests', 'remaining-requests', 'reset-requests', 'limit-tokens',
      'remaining-tokens', 'reset-tokens']) assert.ok(r.headers[`x-ratelimit-${h}`], h);
    assert.ok(Number(r.headers['x-ratelimit-remaining-requests']) > 0);
  });

  test('max_tokens cuts the answer with finish_reason length', async () => {
    const j = JSON.parse((await chat({ model: 'm', max_tokens: 3 })).body);
    assert.equal(j.choices[0].message.content, expectedContent('alpha', 3));
    assert.equal(j.choices[0].finish_reason, 'length');
  });

  test('streamed chat: role chunk, one token per chunk, finish, usage, [DONE]', async () => {
    const r = await chat({ model: 'gpt-s', stream: true, stream_options: { include_usage: true } },
      { 'x-mock-tokens': '5' });
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'], /^text\/event-stream/);
    assert.equal(r.headers['transfer-encoding'], 'chunked');
    const ev = events(r.body);
    for (const e of ev) {
      assert.equal(e.object, 'chat.completion.chunk');
      assert.equal(e.model, 'gpt-s');
      assert.equal(e.id, ev[0].id);
    }
    assert.deepEqual(ev[0].choices[0].delta, { role: 'assistant', content: '' });
    const tokens = ev.slice(1, 6).map((e) => e.choices[0].delta.content);
    assert.deepEqual(tokens, ['alpha', ' tok1', ' tok2', ' tok3', ' tok4']);
    assert.equal(ev[6].choices[0].finish_reason, 'stop');
    assert.deepEqual(ev[6].choices[0].delta, {});
    assert.deepEqual(ev[7].choices, []);
    assert.equal(ev[7].usage.completion_tokens, 5);
    assert.equal(ev.length, 8);
  });

  test('stream without include_usage has no usage chunk', async () => {
    const ev = events((await chat({ model: 'm', stream: true }, { 'x-mock-tokens': '2' })).body);
    assert.equal(ev.length, 4);
    assert.ok(ev.every((e) => !('usage' in e) && e.choices.length === 1));
  });

  const tools = [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object' } } }];

  test('a request with tools is answered with a tool call', async () => {
    const j = JSON.parse((await chat({ model: 'm', tools }, { 'x-mock-tokens': '3' })).body);
    const m = j.choices[0].message;
    assert.equal(m.content, null);
    assert.equal(m.tool_calls.length, 1);
    assert.equal(m.tool_calls[0].type, 'function');
    assert.match(m.tool_calls[0].id, /^call_/);
    assert.equal(m.tool_calls[0].function.name, 'get_weather');
    assert.deepEqual(JSON.parse(m.tool_calls[0].function.arguments), { input: expectedContent('alpha', 3) });
    assert.equal(j.choices[0].finish_reason, 'tool_calls');
  });

  test('streamed tool call: id and name first, then argument fragments', async () => {
    const ev = events((await chat({ model: 'm', tools, stream: true }, { 'x-mock-tokens': '3' })).body);
    const first = ev[0].choices[0].delta.tool_calls[0];
    assert.equal(first.index, 0);
    assert.match(first.id, /^call_/);
    assert.equal(first.function.name, 'get_weather');
    let args = '';
    for (const e of ev.slice(1, -1)) {
      const tc = e.choices[0].delta.tool_calls[0];
      assert.equal(tc.index, 0);
      assert.equal(tc.id, undefined);
      args += tc.function.arguments;
    }
    assert.deepEqual(JSON.parse(args), { input: expectedContent('alpha', 3) });
    assert.equal(ev.at(-1).choices[0].finish_reason, 'tool_calls');
  });

  test('legacy completions, plain and streamed', async () => {
    const r = await httpRequest(mock.url + '/v1/completions', { body: { model: 'c', prompt: 'x' } });
    const j = JSON.parse(r.body);
    assert.equal(j.object, 'text_completion');
    assert.equal(j.choices[0].text, expectedContent('alpha', 8));
    const s = await httpRequest(mock.url + '/v1/completions',
      { body: { model: 'c', prompt: 'x', stream: true }, headers: { 'x-mock-tokens': '3' } });
    const ev = events(s.body);
    assert.equal(ev.map((e) => e.choices[0].text).join(''), expectedContent('alpha', 3));
    assert.equal(ev.at(-1).choices[0].finish_reason, 'stop');
  });

  test('embeddings: one deterministic unit vector per input, float or base64', async () => {
    const url = mock.url + '/v1/embeddings';
    const a = JSON.parse((await httpRequest(url, { body: { model: 'e', input: ['one', 'two'], dimensions: 8 } })).body);
    assert.equal(a.object, 'list');
    assert.equal(a.model, 'e');
    assert.deepEqual(a.data.map((d) => [d.object, d.index, d.embedding.length]), [['embedding', 0, 8], ['embedding', 1, 8]]);
    const norm = Math.hypot(...a.data[0].embedding);
    assert.ok(Math.abs(norm - 1) < 1e-5, `unit vector, got ${norm}`);
    assert.notDeepEqual(a.data[0].embedding, a.data[1].embedding);
    assert.ok(a.usage.prompt_tokens > 0 && a.usage.total_tokens === a.usage.prompt_tokens);
    const b = JSON.parse((await httpRequest(url, { body: { model: 'e', input: 'two', dimensions: 8, encoding_format: 'base64' } })).body);
    const buf = Buffer.from(b.data[0].embedding, 'base64');
    const floats = Array.from({ length: 8 }, (_, i) => buf.readFloatLE(i * 4));
    floats.forEach((f, i) => assert.ok(Math.abs(f - a.data[1].embedding[i]) < 1e-6));
    const missing = await httpRequest(url, { body: { model: 'e' } });
    assert.equal(missing.status, 400);
    assert.equal(JSON.parse(missing.body).error.param, 'input');
  });

  test('models list and one model', async () => {
    const l = JSON.parse((await httpRequest(mock.url + '/v1/models')).body);
    assert.equal(l.object, 'list');
    assert.ok(l.data.length > 0 && l.data.every((m) => m.object === 'model' && m.id));
    const one = JSON.parse((await httpRequest(mock.url + '/v1/models/abc')).body);
    assert.equal(one.id, 'abc');
  });

  test('a body that is not JSON, or lacks model, gets a 400 in the OpenAI error shape', async () => {
    for (const [body, param] of [['{"model":"x",', null], ['[1]', null], ['{"messages":[]}', 'model']]) {
      const r = await httpRequest(mock.url + CHAT, { body, headers: { 'content-type': 'application/json' } });
      assert.equal(r.status, 400, body);
      const e = JSON.parse(r.body).error;
      assert.equal(e.type, 'invalid_request_error');
      assert.equal(e.param, param);
      assert.ok(e.message);
    }
    const r = await httpRequest(mock.url + '/v1/nope', { body: { model: 'x' } });
    assert.equal(r.status, 404);
  });

  const errorFaults = [
    ['429', 429, 'rate_limit_exceeded'], ['500', 500, null], ['503', 503, 'service_unavailable'],
    ['401', 401, 'invalid_api_key'], ['400', 400, null], ['404-model', 404, 'model_not_found'],
    ['context-length', 400, 'context_length_exceeded'],
  ];
  for (const [fault, status, code] of errorFaults) {
    test(`fault ${fault} answers ${status} with code ${code}`, async () => {
      const r = await chat({ model: 'gpt-missing' }, { 'x-mock-fault': fault });
      assert.equal(r.status, status);
      const e = JSON.parse(r.body).error;
      assert.equal(e.code, code);
      assert.equal(typeof e.message, 'string');
      assert.ok('param' in e && 'type' in e);
      if (fault === '404-model') assert.match(e.message, /gpt-missing/);
    });
  }

  test('429 carries retry-after and exhausted x-ratelimit-* headers', async () => {
    const r = await chat({ model: 'm' }, { 'x-mock-fault': '429', 'x-mock-retry-after': '180' });
    assert.equal(r.headers['retry-after'], '180');
    assert.equal(r.headers['x-ratelimit-remaining-requests'], '0');
    assert.equal(r.headers['x-ratelimit-reset-requests'], '3m0s');
    assert.equal(JSON.parse(r.body).error.type, 'requests');
    const d = await chat({ model: 'm' }, { 'x-mock-fault': '429' });
    assert.equal(d.headers['retry-after'], '1');
  });

  test('reset closes the connection with RST before answering', async () => {
    const r = await rawExchange(mock.port, post(CHAT, '{"model":"m"}', { 'x-mock-fault': 'reset' }));
    assert.equal(r.error, 'ECONNRESET');
    assert.equal(r.data, '');
  });

  test('reset-mid-stream sends fail-after chunks, then RST', async () => {
    const r = await rawExchange(mock.port, post(CHAT, '{"model":"m","stream":true}',
      { 'x-mock-fault': 'reset-mid-stream', 'x-mock-fail-after': '3' }));
    assert.equal(r.error, 'ECONNRESET');
    assert.match(r.data, /^HTTP\/1\.1 200/);
    assert.equal((r.data.match(/data: /g) || []).length, 3);
    assert.ok(!r.data.includes('[DONE]'));
  });

  test('stall accepts the request and never answers', async () => {
    const r = await rawExchange(mock.port, post(CHAT, '{"model":"m"}', { 'x-mock-fault': 'stall' }), 300);
    assert.equal(r.error, 'timeout');
    assert.equal(r.data, '');
  });

  test('stall-mid-stream sends the first chunks and then nothing', async () => {
    const r = await rawExchange(mock.port, post(CHAT, '{"model":"m","stream":true}',
      { 'x-mock-fault': 'stall-mid-stream' }), 300);
    assert.equal(r.error, 'timeout');
    assert.equal((r.data.match(/data: /g) || []).length, 2, 'default fail-after is 2 chunks');
  });

  test('garbage answers bytes that are not HTTP', async () => {
    await assert.rejects(chat({ model: 'm' }, { 'x-mock-fault': 'garbage' }), (e) => e.code === 'HPE_INVALID_CONSTANT' || /parse/i.test(e.message));
    const r = await rawExchange(mock.port, post(CHAT, '{"model":"m"}', { 'x-mock-fault': 'garbage' }));
    assert.ok(!r.data.startsWith('HTTP/'));
    assert.equal(r.error, 'end');
  });

  test('invalid-json answers 200 with a body that does not parse', async () => {
    const r = await chat({ model: 'm' }, { 'x-mock-fault': 'invalid-json' });
    assert.equal(r.status, 200);
    assert.throws(() => JSON.parse(r.body));
    const s = await chat({ model: 'm', stream: true }, { 'x-mock-fault': 'invalid-json' });
    const ev = parseSSE(s.body);
    assert.throws(() => JSON.parse(ev[0].data));
  });

  test('slow-headers trickles the head one line per interval', async () => {
    const r = await chat({ model: 'm' }, { 'x-mock-fault': 'slow-headers', 'x-mock-token-delay-ms': '20' });
    assert.equal(r.status, 200);
    assert.equal(JSON.parse(r.body).object, 'chat.completion');
    assert.ok(r.elapsedMs >= 200, `head of ~15 lines at 20 ms took ${r.elapsedMs} ms`);
  });

  test('latency-ms delays the head; token-delay-ms spaces the chunks', async () => {
    const a = await chat({ model: 'm' }, { 'x-mock-latency-ms': '150' });
    assert.ok(a.elapsedMs >= 150, `${a.elapsedMs}`);
    const b = await chat({ model: 'm', stream: true }, { 'x-mock-tokens': '4', 'x-mock-token-delay-ms': '40' });
    assert.ok(b.elapsedMs >= 6 * 40, `7 events, 6 gaps of 40 ms: ${b.elapsedMs}`);
    assert.equal(events(b.body).length, 6);
  });

  test('a "mock" object in the body sets knobs where headers cannot pass', async () => {
    const r = await chat({ model: 'm', mock: { fault: '503' } });
    assert.equal(r.status, 503);
    const t = JSON.parse((await chat({ model: 'm', mock: { tokens: 2 } })).body);
    assert.equal(t.choices[0].message.content, expectedContent('alpha', 2));
    const h = await chat({ model: 'm', mock: { fault: '503' } }, { 'x-mock-fault': 'none' });
    assert.equal(h.status, 200, 'headers win over the body');
  });

  test('/mock/requests shows what arrived, authorization included; /mock/reset clears it', async () => {
    await mock.reset();
    assert.deepEqual(await mock.requests(), []);
    await chat({ model: 'logged' }, { authorization: 'Bearer sk-test-123', 'x-extra': 'v' });
    const log = await mock.requests();
    assert.equal(log.length, 1);
    assert.equal(log[0].method, 'POST');
    assert.equal(log[0].path, CHAT);
    assert.equal(log[0].headers.authorization, 'Bearer sk-test-123');
    assert.equal(log[0].headers['x-extra'], 'v');
    assert.equal(JSON.parse(log[0].body).model, 'logged');
  });

  test('the log keeps the last 64 requests', async () => {
    await mock.reset();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
    for (let i = 0; i < 70; i++) await httpRequest(mock.url + CHAT, { body: { model: `m${i}` }, agent });
    agent.destroy();
    const log = await mock.requests();
    assert.equal(log.length, 64);
    assert.equal(JSON.parse(log[0].body).model, 'm6');
    assert.equal(JSON.parse(log[63].body).model, 'm69');
  });

  test('keep-alive: many requests over one connection', async () => {
    const before_ = await mock.stats();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    for (let i = 0; i < 5; i++) {
      const r = await httpRequest(mock.url + CHAT, { body: { model: 'k', stream: i % 2 === 1 }, agent });
      assert.equal(r.status, 200);
    }
    agent.destroy();
    const after_ = await mock.stats();
    assert.equal(after_.requests - before_.requests, 5);
    assert.equal(after_.connections - before_.connections, 2, 'one for the requests, one for /mock/stats');
  });

  test('pipelined requests are answered in order', async () => {
    const payload = post(CHAT, '{"model":"p1"}') + 'GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n' +
      post(CHAT, '{"model":"p2"}', { connection: 'close' });
    const r = await rawExchange(mock.port, payload);
    assert.equal(r.error, 'end');
    assert.equal((r.data.match(/HTTP\/1\.1 200/g) || []).length, 3);
    const i1 = r.data.indexOf('"model":"p1"'), i2 = r.data.indexOf('"object":"list"'), i3 = r.data.indexOf('"model":"p2"');
    assert.ok(i1 > 0 && i1 < i2 && i2 < i3);
  });

  test('an HTTP/1.0 client gets a close-delimited stream, not chunked', async () => {
    const body = '{"model":"m","stream":true}';
    const r = await rawExchange(mock.port, `POST ${CHAT} HTTP/1.0\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
    assert.equal(r.error, 'end');
    const [head, rest] = r.data.split('\r\n\r\n');
    assert.doesNotMatch(head, /transfer-encoding/i);
    assert.match(head, /connection: close/i);
    assert.equal(events(rest).length, 10);
  });

  test('a client that leaves mid-stream is counted as aborted', async () => {
    const before_ = await mock.stats();
    const r = await rawExchange(mock.port, post(CHAT, '{"model":"m","stream":true}',
      { 'x-mock-token-delay-ms': '50' }), 80);
    assert.equal(r.error, 'timeout');
    await new Promise((res) => setTimeout(res, 50));
    const after_ = await mock.stats();
    assert.equal(after_.aborted - before_.aborted, 1);
  });

  test('malformed HTTP gets a 400 and a closed connection', async () => {
    const r = await rawExchange(mock.port, 'NOT HTTP AT ALL\r\n\r\n');
    assert.match(r.data, /^HTTP\/1\.1 400/);
    assert.equal(r.error, 'end');
  });
});

describe('mock_upstream command line', () => {
  test('--fault, --tokens and --name set the defaults', async () => {
    const m = await startMock({ args: ['--fault', '503', '--tokens', '2', '--name', 'beta'] });
    try {
      const r = await httpRequest(m.url + CHAT, { body: { model: 'x' } });
      assert.equal(r.status, 503);
      const ok = await httpRequest(m.url + CHAT, { body: { model: 'x' }, headers: { 'x-mock-fault': 'none' } });
      assert.equal(JSON.parse(ok.body).choices[0].message.content, expectedContent('beta', 2));
      assert.equal((await m.stats()).name, 'beta');
    } finally {
      assert.equal((await m.stop()).code, 0);
    }
  });

  test('bad flags fail to start with a message', async () => {
    await assert.rejects(startMock({ args: ['--fault', 'nonsense'] }), /bad value for --fault/);
    await assert.rejects(startMock({ args: ['--listen', 'nowhere'] }), /bad --listen/);
  });

  test('SIGTERM closes open connections and exits 0', async () => {
    const m = await startMock();
    const s = net.connect(m.port, '127.0.0.1');
    await new Promise((res) => s.on('connect', res));
    s.write(post(CHAT, '{"model":"m"}', { 'x-mock-fault': 'stall' }));
    await new Promise((res) => setTimeout(res, 50));
    const closed = new Promise((res) => s.on('close', res));
    assert.equal((await m.stop()).code, 0);
    await closed;
  });
});

describe('mock_upstream over HTTPS', () => {
  let certs, mock, skip = false;
  before(async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmux-mock-tls-'));
    certs = makeCerts(dir);
    try {
      mock = await startMock({ args: ['--tls-cert', certs.cert, '--tls-key', certs.key, '--name', 'secure'], ca: certs.caPem });
      await httpRequest(mock.baseURL + '/models', { ca: certs.caPem, agent: false, timeoutMs: 3000 });
    } catch (e) {
      skip = `HTTPS unavailable (core/tls.c not functional?): ${e.message}`;
    }
  });
  after(async () => {
    if (mock) assert.equal((await mock.stop()).code, 0, 'clean exit on SIGTERM');
    if (certs) fs.rmSync(certs.dir, { recursive: true, force: true });
  });

  test('serves chat and streams to a client trusting the test CA', async (t) => {
    if (skip) return t.skip(skip);
    const r = await httpRequest(mock.url + CHAT, { body: { model: 'tls', stream: true }, ca: certs.caPem, agent: false });
    assert.equal(r.status, 200);
    const ev = events(r.body);
    assert.equal(ev.slice(1, -1).map((e) => e.choices[0].delta.content).join(''), expectedContent('secure', 8));
    const log = await mock.requests();
    assert.equal(JSON.parse(log.at(-1).body).model, 'tls');
  });

  test('keep-alive works over TLS', async (t) => {
    if (skip) return t.skip(skip);
    const https = await import('node:https');
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca: certs.caPem });
    const before_ = await mock.stats();
    for (let i = 0; i < 3; i++) {
      assert.equal((await httpRequest(mock.url + CHAT, { body: { model: 'k' }, agent })).status, 200);
    }
    agent.destroy();
    const after_ = await mock.stats();
    assert.equal(after_.connections - before_.connections, 2);
  });

  test('a client without the CA refuses the certificate', async (t) => {
    if (skip) return t.skip(skip);
    await assert.rejects(httpRequest(mock.url + '/v1/models', { agent: false }),
      (e) => /UNABLE_TO_VERIFY|SELF_SIGNED|unable to verify/i.test(e.code + e.message));
  });

  test('the self-signed bad certificate is refused by a client trusting only the CA', async (t) => {
    if (skip) return t.skip(skip);
    const bad = await startMock({ args: ['--tls-cert', certs.badCert, '--tls-key', certs.badKey] });
    try {
      await assert.rejects(httpRequest(bad.url + '/v1/models', { ca: certs.caPem, agent: false }),
        (e) => /SELF_SIGNED|UNABLE_TO_VERIFY|self.signed/i.test(e.code + e.message));
    } finally {
      assert.equal((await bad.stop()).code, 0);
    }
  });

  test('a missing key file is reported at start', async (t) => {
    if (skip) return t.skip(skip);
    await assert.rejects(startMock({ args: ['--tls-cert', certs.cert, '--tls-key', '/nonexistent.key'] }), /TLS/);
  });
});
