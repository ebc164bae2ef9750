// The HTTP front door on its own (tests/support/http_echo), spoken to over
// raw sockets so every byte on the wire is the test's choice.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startEcho, RawClient, oneShot } from './lib/http_raw.mjs';

const LIMITS = ['--max-header', '1024', '--max-body', '4096',
  '--header-timeout-ms', '300', '--idle-timeout-ms', '500'];
let srv;

before(async () => { srv = await startEcho(LIMITS); });
after(async () => {
  // SIGTERM: the server closes every handle; exit 0 means uv_loop_close() == 0.
  assert.equal(await srv.stop(), 0);
});

const get = (path, extra = '') => `GET ${path} HTTP/1.1\r\nHost: t\r\n${extra}\r\n`;

function assertOpenAIError(res, status, code) {
  assert.equal(res.status, status);
  assert.equal(res.headers['content-type'], 'application/json');
  const body = JSON.parse(res.body);
  assert.equal(typeof body.error.message, 'string');
  assert.equal(typeof body.error.type, 'string');
  assert.ok('param' in body.error);
  assert.equal(body.error.code, code);
  return body.error;
}

test('keep-alive: two requests on one connection', async () => {
  const c = await RawClient.connect(srv.port);
  c.write(get('/echo?n=1'));
  const r1 = await c.response();
  c.write(get('/echo?n=2', 'X-Test: two\r\n'));
  const r2 = await c.response();
  assert.equal(r1.status, 200);
  assert.equal(r1.headers.server, 'llmux');
  assert.equal(JSON.parse(r1.body).query, 'n=1');
  assert.equal(JSON.parse(r2.body).query, 'n=2');
  assert.equal(JSON.parse(r2.body).x_test, 'two');
  assert.equal(c.ended, false);
  c.destroy();
});

test('pipelining: three requests at once are answered in order, slow first', async () => {
  const c = await RawClient.connect(srv.port);
  c.write(get('/slow?ms=150') + get('/echo?n=2') + get('/echo?n=3'));
  const r1 = await c.response();
  const r2 = await c.response();
  const r3 = await c.response();
  assert.equal(r1.body, 'slow 150');
  assert.equal(JSON.parse(r2.body).query, 'n=2');
  assert.equal(JSON.parse(r3.body).query, 'n=3');
  c.destroy();
});

test('chunked request body is decoded', async () => {
  const { res, client } = await oneShot(srv.port,
    'POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n' +
    '5\r\nhello\r\n1;ext=1\r\n,\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n');
  const body = JSON.parse(res.body);
  assert.equal(body.body, 'hello, world');
  assert.equal(body.body_length, 12);
  client.destroy();
});

test('Expect: 100-continue gets 100 before the body is sent, then the response', async () => {
  const c = await RawClient.connect(srv.port);
  c.write('POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n');
  const interim = await c.response();
  assert.equal(interim.status, 100);
  c.write('hello');
  const res = await c.response();
  assert.equal(res.status, 200);
  assert.equal(JSON.parse(res.body).body, 'hello');
  c.destroy();
});

test('Expect: 100-continue with a too-large body gets 413 and no 100', async () => {
  const { res, client } = await oneShot(srv.port,
    'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n');
  assertOpenAIError(res, 413, 'request_too_large');
  await client.waitClosed();
});

test('an unknown expectation gets 417', async () => {
  const { res, client } = await oneShot(srv.port,
    'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nExpect: teapot\r\n\r\nx');
  assertOpenAIError(res, 417, 'expectation_failed');
  await client.waitClosed();
});

test('oversize headers get 431 and the connection closes', async () => {
  const { res, client } = await oneShot(srv.port, get('/echo', `X-Big: ${'a'.repeat(2000)}\r\n`));
  assertOpenAIError(res, 431, 'headers_too_large');
  await client.waitClosed();
});

test('an oversize request line gets 431', async () => {
  const { res, client } = await oneShot(srv.port, get(`/echo?${'q'.repeat(3000)}`));
  assertOpenAIError(res, 431, 'headers_too_large');
  await client.waitClosed();
});

test('oversize body by Content-Length gets 413 before the body is read', async () => {
  const { res, client } = await oneShot(srv.port,
    'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n');
  assertOpenAIError(res, 413, 'request_too_large');
  await client.waitClosed();
});

test('oversize chunked body gets 413', async () => {
  const chunk = `800\r\n${'x'.repeat(0x800)}\r\n`;
  const { res, client } = await oneShot(srv.port,
    'POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n' + chunk.repeat(3));
  assertOpenAIError(res, 413, 'request_too_large');
  await client.waitClosed();
});

test('a malformed request gets 400 in the OpenAI error shape and closes', async () => {
  const { res, client } = await oneShot(srv.port, 'GARBAGE\r\n\r\n');
  const err = assertOpenAIError(res, 400, 'bad_request');
  assert.equal(err.type, 'invalid_request_error');
  await client.waitClosed();
});

test('Content-Length with Transfer-Encoding gets 400 and the connection closes', async () => {
  const { res, client } = await oneShot(srv.port,
    'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n' +
    '0\r\n\r\nGET /echo?smuggled HTTP/1.1\r\nHost: t\r\n\r\n');
  assertOpenAIError(res, 400, 'bad_request');
  await client.waitClosed();
  assert.doesNotMatch(client.buf.toString(), /smuggled/);
});

test('duplicate Content-Length gets 400', async () => {
  const { res, client } = await oneShot(srv.port,
    'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab');
  assertOpenAIError(res, 400, 'bad_request');
  await client.waitClosed();
});

test('a transfer-encoding other than chunked gets 501', async () => {
  const { res, client } = await oneShot(srv.port,
    'POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n');
  assertOpenAIError(res, 501, 'unsupported_transfer_encoding');
  await client.waitClosed();
});

test('a stalled header block gets 408 and the connection closes', async () => {
  const c = await RawClient.connect(srv.port);
  const t0 = Date.now();
  c.write('GET /echo HTTP/1.1\r\nHost: t\r\n');
  const res = await c.response(2000);
  assertOpenAIError(res, 408, 'request_timeout');
  assert.ok(Date.now() - t0 >= 250, 'not before the header timeout');
  await c.waitClosed();
});

test('an idle keep-alive connection is closed without a response', async () => {
  const c = await RawClient.connect(srv.port);
  c.write(get('/echo'));
  await c.response();
  const t0 = Date.now();
  await c.waitClosed(2000);
  assert.ok(Date.now() - t0 >= 400, 'not before the idle timeout');
  assert.equal(c.buf.length, 0);
});

test('HTTP/1.0 without keep-alive closes after the response', async () => {
  const { res, client } = await oneShot(srv.port, 'GET /echo HTTP/1.0\r\n\r\n');
  assert.equal(res.status, 200);
  assert.equal(res.headers.connection, 'close');
  assert.equal(JSON.parse(res.body).version, '1.0');
  await client.waitClosed();
});

test('HTTP/1.0 with keep-alive stays open', async () => {
  const c = await RawClient.connect(srv.port);
  c.write('GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n');
  const r1 = await c.response();
  assert.equal(r1.headers.connection, 'keep-alive');
  c.write('GET /echo?again HTTP/1.0\r\nConnection: keep-alive\r\n\r\n');
  const r2 = await c.response();
  assert.equal(JSON.parse(r2.body).query, 'again');
  c.destroy();
});

test('Connection: close is honoured', async () => {
  const { res, client } = await oneShot(srv.port, get('/echo', 'Connection: close\r\n'));
  assert.equal(res.status, 200);
  assert.equal(res.headers.connection, 'close');
  await client.waitClosed();
});

test('streamed responses arrive as chunks, in order', async () => {
  const { res, client } = await oneShot(srv.port, get('/stream?n=3&ms=5'));
  assert.equal(res.headers['transfer-encoding'], 'chunked');
  assert.equal(res.headers['content-type'], 'text/event-stream');
  assert.deepEqual(res.chunks, ['data: {"i":0}\n\n', 'data: {"i":1}\n\n', 'data: {"i":2}\n\n',
    'data: [DONE]\n\n']);
  client.destroy();
});

test('a client abort mid-stream is survived and reported', async () => {
  const stats = async () => JSON.parse((await oneShot(srv.port, get('/stats', 'Connection: close\r\n'))).res.body);
  const before0 = await stats();
  const c = await RawClient.connect(srv.port);
  c.write(get('/stream?n=1000&ms=5'));
  await c.waitFor(() => c.buf.includes('"i":1'), 2000, 'two events');
  c.destroy();
  let now = before0;
  for (let i = 0; i < 50 && now.aborts === before0.aborts; i++) {
    await sleep(20);
    now = await stats();
  }
  assert.equal(now.aborts, before0.aborts + 1);
  const { res, client } = await oneShot(srv.port, get('/echo?after-abort'));
  assert.equal(JSON.parse(res.body).query, 'after-abort');
  client.destroy();
});

test('error helper: OpenAI shape with escaped message and param', async () => {
  const { res, client } = await oneShot(srv.port, get('/error'));
  const err = assertOpenAIError(res, 400, 'test_error');
  assert.equal(err.message, 'a "quoted" test error');
  assert.equal(err.param, 'model');
  client.destroy();
});

test('HEAD gets the headers and no body', async () => {
  const c = await RawClient.connect(srv.port);
  c.write('HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\n' + get('/echo?next'));
  await c.waitFor(() => c.buf.includes('"query":"next"'), 2000, 'second response');
  const text = c.buf.toString();
  const first = text.slice(0, text.indexOf('\r\n\r\n'));
  assert.match(first, /Content-Length: \d+/);
  // The second response starts right after the first head: no body in between.
  assert.ok(text.slice(first.length + 4).startsWith('HTTP/1.1 200 OK'));
  c.destroy();
});
