// Raw-socket HTTP/1.1 helpers for end-to-end tests: byte-exact requests,
// responses parsed by hand (status, headers, Content-Length, chunked,
// close-delimited and 1xx), and helpers to start tests/support/http_echo.
import net from 'node:net';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { once } from 'node:events';

export const buildDir = () => process.env.LLMUX_BUILD_DIR ?? path.resolve('build');

// Starts a server that prints its port as the first line of stdout.
// Resolves to { proc, port, stop() }; stop() sends SIGTERM and resolves to the exit code.
export async function startServer(bin, args = [], { timeoutMs = 5000 } = {}) {
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${bin}: no port within ${timeoutMs} ms`)), timeoutMs);
    proc.stdout.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) { clearTimeout(timer); resolve(Number(out.slice(0, nl))); }
    });
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`${bin} exited with ${code}`)); });
  });
  proc.removeAllListeners('exit');
  const exited = once(proc, 'exit');
  return {
    proc, port,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const [code, signal] = await exited;
      return signal ? signal : code;
    },
  };
}

export function startEcho(args = []) {
  return startServer(path.join(buildDir(), 'tests/support/http_echo'), args);
}

// Parses one response at the front of buf. Returns { res, used } or null when
// more bytes are needed. `ended` says the peer closed (ends a close-delimited body).
export function parseResponse(buf, ended = false) {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) return null;
  const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
  const m = /^HTTP\/(\d\.\d) (\d{3}) ?(.*)$/.exec(lines[0]);
  if (!m) throw new Error(`bad status line: ${JSON.stringify(lines[0])}`);
  const headers = {};
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':');
    const name = line.slice(0, i).trim().toLowerCase();
    const value = line.slice(i + 1).trim();
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  const res = { version: m[1], status: Number(m[2]), reason: m[3], headers, body: '', chunks: [] };
  let pos = end + 4;
  if (res.status < 200 || res.status === 204 || res.status === 304) return { res, used: pos };
  if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
    const parts = [];
    for (;;) {
      const le = buf.indexOf('\r\n', pos);
      if (le < 0) return null;
      const size = parseInt(buf.subarray(pos, le).toString('latin1'), 16);
      if (Number.isNaN(size)) throw new Error('bad chunk size');
      if (size === 0) {
        const te = buf.indexOf('\r\n', le + 2);
        if (te < 0) return null;
        pos = te + 2; // no trailers expected from llmux
        break;
      }
      if (buf.length < le + 2 + size + 2) return null;
      parts.push(buf.subarray(le + 2, le + 2 + size));
      pos = le + 2 + size + 2;
    }
    res.chunks = parts.map((p) => p.toString());
    res.body = Buffer.concat(parts).toString();
    return { res, used: pos };
  }
  if ('content-length' in headers) {
    const n = Number(headers['content-length']);
    if (buf.length < pos + n) return null;
    res.body = buf.subarray(pos, pos + n).toString();
    return { res, used: pos + n };
  }
  if (!ended) return null;
  res.body = buf.subarray(pos).toString();
  return { res, used: buf.length };
}

// A client connection that keeps every byte it receives.
export class RawClient {
  static async connect(port, host = '127.0.0.1') {
    const sock = net.connect({ port, host });
    await once(sock, 'connect');
    return new RawClient(sock);
  }

  constructor(sock) {
    this.sock = sock;
    this.buf = Buffer.alloc(0);
    this.ended = false; // peer sent FIN or the socket closed
    this.closed = false;
    this.error = null;
    this.waiters = new Set();
    sock.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this.#wake(); });
    sock.on('end', () => { this.ended = true; this.#wake(); });
    sock.on('error', (e) => { this.error = e; this.ended = true; this.#wake(); });
    sock.on('close', () => { this.closed = this.ended = true; this.#wake(); });
  }

  #wake() { for (const w of this.waiters) w(); }

  // Waits until pred() is true; rejects after timeoutMs.
  async waitFor(pred, timeoutMs = 2000, what = 'condition') {
    if (pred()) return;
    await new Promise((resolve, reject) => {
      const check = () => {
        if (!pred()) return;
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve();
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; got ${JSON.stringify(this.buf.toString('latin1').slice(0, 300))}`));
      }, timeoutMs);
      this.waiters.add(check);
    });
  }

  write(data) { this.sock.write(data); }

  // Next complete response (1xx included); throws if the peer closes first.
  async response(timeoutMs = 2000) {
    let parsed = null;
    await this.waitFor(() => {
      parsed = parseResponse(this.buf, this.ended);
      return parsed !== null || this.ended;
    }, timeoutMs, 'a response');
    if (parsed === null) throw new Error(`connection closed before a full response (${this.buf.length} bytes)`);
    this.buf = this.buf.subarray(parsed.used);
    return parsed.res;
  }

  // Resolves once the peer has closed; rejects if it stays open longer.
  async waitClosed(timeoutMs = 2000) {
    await this.waitFor(() => this.ended, timeoutMs, 'the server to close');
  }

  destroy() { this.sock.destroy(); }
}

// One request on a fresh connection; returns the response and the client.
export async function oneShot(port, raw, timeoutMs = 2000) {
  const c = await RawClient.connect(port);
  c.write(raw);
  try {
    return { res: await c.response(timeoutMs), client: c };
  } catch (e) {
    c.destroy();
    throw e;
  }
}
