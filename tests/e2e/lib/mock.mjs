// Helpers for end-to-end tests that need a fake provider: start the C mock
// (tests/mock/mock_upstream), talk to it over HTTP or HTTPS, and make
// throwaway certificates. Node 20 built-ins only.
//
//   const mock = await startMock({ args: ['--name', 'a', '--tokens', '4'] });
//   // mock.url = 'http://127.0.0.1:PORT', mock.baseURL = mock.url + '/v1'
//   const log = await mock.requests();   // last 64 API requests, oldest first
//   await mock.stop();
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import readline from 'node:readline';

const buildDir = process.env.LLMUX_BUILD_DIR ||
  path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../../build');

export const MOCK_BIN = path.join(buildDir, 'tests', 'mock', 'mock_upstream');

const live = new Set();
process.on('exit', () => { for (const p of live) p.kill('SIGKILL'); });

// The content every mock answer carries: token 0 is the mock's name, token
// i is " tok<i>" (a max_tokens below `tokens` cuts it short).
export function expectedContent(name = 'mock', tokens = 8) {
  const parts = [];
  for (let i = 0; i < tokens; i++) parts.push(i === 0 ? name : ` tok${i}`);
  return parts.join('');
}

// One HTTP(S) request with node's http/https. Resolves
// { status, headers, body (string), elapsedMs }; rejects on socket errors.
// opts: method, headers, body (string|object: objects are sent as JSON),
// ca (PEM for https), agent, timeoutMs (rejects with code 'ETIMEDOUT').
export function httpRequest(url, opts = {}) {
  const u = new URL(url);
  const mod = u.protocol === 'https:' ? https : http;
  let body = opts.body;
  const headers = { ...(opts.headers || {}) };
  if (body !== undefined && typeof body !== 'string' && !Buffer.isBuffer(body)) {
    body = JSON.stringify(body);
    headers['content-type'] ??= 'application/json';
  }
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const req = mod.request(u, {
      method: opts.method || (body !== undefined ? 'POST' : 'GET'),
      headers,
      agent: opts.agent,
      ca: opts.ca,
      rejectUnauthorized: opts.rejectUnauthorized,
      servername: opts.servername,
    }, (res) => {
      const chunks = [];
      res.on('data', (d) => chunks.push(d));
      res.on('end', () => resolve({
        status: res.statusCode, headers: res.headers,
        body: Buffer.concat(chunks).toString('utf8'), elapsedMs: Date.now() - started,
      }));
      res.on('error', reject);
    });
    if (opts.timeoutMs) {
      req.setTimeout(opts.timeoutMs, () => {
        const e = new Error(`no answer within ${opts.timeoutMs} ms`);
        e.code = 'ETIMEDOUT';
        req.destroy(e);
      });
    }
    req.on('error', reject);
    req.end(body);
  });
}

// Starts the mock and resolves once it printed {"port":N,"tls":bool}.
// options: args (extra flags), env (added to process.env), ca (PEM the
// helper's own requests trust when the mock serves HTTPS), startTimeoutMs.
export async function startMock({ args = [], env = {}, ca, startTimeoutMs = 5000 } = {}) {
  if (!fs.existsSync(MOCK_BIN)) throw new Error(`${MOCK_BIN} not built (set LLMUX_BUILD_DIR)`);
  const proc = spawn(MOCK_BIN, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(proc);
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => {
    live.delete(proc);
    resolve({ code, signal });
  }));
  const first = await new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: proc.stdout });
    const timer = setTimeout(() => fail(new Error('mock did not report its port')), startTimeoutMs);
    function fail(e) {
      clearTimeout(timer);
      rl.close();
      proc.kill('SIGKILL');
      e.message += `: ${stderr.trim()}`;
      reject(e);
    }
    rl.once('line', (line) => { clearTimeout(timer); rl.close(); resolve(line); });
    exited.then(({ code }) => fail(new Error(`mock exited with ${code}`)));
  });
  const { port, tls } = JSON.parse(first);
  const url = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  const reqOpts = tls ? (ca ? { ca } : { rejectUnauthorized: false }) : {};
  const getJSON = async (p, method = 'GET') => {
    const r = await httpRequest(url + p, { ...reqOpts, method, agent: false });
    if (r.status !== 200) throw new Error(`${p}: ${r.status} ${r.body}`);
    return JSON.parse(r.body);
  };
  return {
    port, tls, url, baseURL: `${url}/v1`, proc,
    get stderr() { return stderr; },
    // [{seq, method, path, headers: {lower-case name: value}, body}] oldest first.
    requests: () => getJSON('/mock/requests'),
    // {name, requests, connections, active_connections, aborted, streams}
    stats: () => getJSON('/mock/stats'),
    reset: () => getJSON('/mock/reset', 'POST'),
    // SIGTERM, then SIGKILL after timeoutMs; resolves {code, signal, stderr}.
    async stop(timeoutMs = 3000) {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
        await exited;
        clearTimeout(t);
      }
      return { ...(await exited), stderr };
    },
  };
}

// Makes, in dir, a throwaway CA and a server certificate it signs for
// localhost and 127.0.0.1, plus a self-signed "bad" certificate for the
// same names that the CA does not vouch for. Returns PEM file paths and
// the CA's PEM text: { dir, caCert, caKey, cert, key, badCert, badKey, caPem }.
export function makeCerts(dir) {
  fs.mkdirSync(dir, { recursive: true });
  const f = (n) => path.join(dir, n);
  const ossl = (...a) => execFileSync('openssl', a, { stdio: ['ignore', 'ignore', 'pipe'] });
  const san = 'subjectAltName=DNS:localhost,IP:127.0.0.1';
  ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '2', '-subj', '/CN=llmux test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  ossl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=localhost');
  fs.writeFileSync(f('server.ext'), `${san}\nbasicConstraints=CA:FALSE\n` +
    'keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n');
  ossl('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'),
    '-CAcreateserial', '-out', f('server.crt'), '-days', '2', '-extfile', f('server.ext'));
  ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', f('bad.key'), '-out', f('bad.crt'), '-days', '2', '-subj', '/CN=localhost',
    '-addext', san);
  return {
    dir, caCert: f('ca.crt'), caKey: f('ca.key'), cert: f('server.crt'), key: f('server.key'),
    badCert: f('bad.crt'), badKey: f('bad.key'), caPem: fs.readFileSync(f('ca.crt'), 'utf8'),
  };
}

// Splits an SSE body into events: [{data: string}], throwing on any frame
// that is not a single well-formed "data: ..." line ended by a blank line.
export function parseSSE(text) {
  if (!text.endsWith('\n\n')) throw new Error('SSE body does not end with a blank line');
  return text.slice(0, -2).split('\n\n').map((frame) => {
    if (!frame.startsWith('data: ') || frame.includes('\n')) {
      throw new Error(`malformed SSE frame: ${JSON.stringify(frame)}`);
    }
    return { data: frame.slice(6) };
  });
}
