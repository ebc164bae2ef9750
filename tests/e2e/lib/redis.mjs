// A real redis-server for the fleet tests: started on a free port with no
// persistence (a restart comes back empty, as a cache node would), killed
// and restarted on the same port.
import { spawn } from "node:child_process";
import net from "node:net";

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// Sends one command in RESP and resolves to the raw reply text.
export function redisCommand(port, ...args) {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, "127.0.0.1");
    let out = "";
    c.setEncoding("utf8");
    c.on("error", reject);
    c.on("connect", () => {
      let msg = `*${args.length}\r\n`;
      for (const a of args) msg += `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`;
      c.write(msg);
    });
    c.on("data", (d) => {
      out += d;
      if (out.endsWith("\r\n")) {
        c.end();
        resolve(out);
      }
    });
  });
}

function launch(port) {
  return new Promise((resolve, reject) => {
    const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1",
      "--save", "", "--appendonly", "no"], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    const timer = setTimeout(() => reject(new Error("redis-server did not start:\n" + out)), 10000);
    proc.stdout.setEncoding("utf8");
    proc.stdout.on("data", (d) => {
      out += d;
      if (/Ready to accept connections/.test(out)) {
        clearTimeout(timer);
        resolve(proc);
      }
    });
    proc.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`redis-server exited with ${code}:\n${out}`));
    });
  });
}

// { port, url, kill(), restart(), stop() }
export async function startRedis() {
  const port = await freePort();
  const r = { port, url: `redis://127.0.0.1:${port}`, proc: await launch(port) };
  r.kill = () => new Promise((resolve) => {
    const p = r.proc;
    r.proc = null;
    if (!p || p.exitCode !== null) return resolve();
    p.removeAllListeners("exit");
    p.on("exit", () => resolve());
    p.kill("SIGKILL");
  });
  r.restart = async () => {
    await r.kill();
    r.proc = await launch(port);
  };
  r.start = async () => {
    r.proc = await launch(port);
  };
  r.stop = r.kill;
  return r;
}
