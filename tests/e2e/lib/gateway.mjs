// Starts the real llmux binary for end-to-end tests.
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

export const BUILD_DIR = process.env.LLMUX_BUILD_DIR ?? path.resolve("build");
export const SOURCE_DIR = process.env.LLMUX_SOURCE_DIR ?? path.resolve(".");
export const LLMUX = path.join(BUILD_DIR, "llmux");

// Writes a main file and provider files into a fresh directory.
// files: { "llmux.ini": "...", "providers/x.ini": "..." }
export function writeConfig(files) {
  const dir = mkdtempSync(path.join(tmpdir(), "llmux-e2e-"));
  for (const [name, text] of Object.entries(files)) {
    const p = path.join(dir, name);
    mkdirSync(path.dirname(p), { recursive: true });
    writeFileSync(p, text);
  }
  return path.join(dir, "llmux.ini");
}

// Runs a llmux command to completion: { status, stdout, stderr }.
export function runLlmux(args, env = {}) {
  const r = spawnSync(LLMUX, args, {
    encoding: "utf8",
    env: { ...cleanEnv(), ...env },
    timeout: 20000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

// Provider key variables are removed so tests never depend on the machine.
function cleanEnv() {
  const env = { ...process.env };
  for (const k of Object.keys(env)) {
    if (/_API_KEY$/.test(k) || k.startsWith("LLMUX_")) delete env[k];
  }
  return env;
}

// Starts `llmux serve -c config` on an ephemeral port; resolves to
// { url, port, proc, stderr(), stop() } once it is listening.
// opts.wrapper: a command to run llmux under (["valgrind", ...flags]);
// opts.startTimeoutMs: how long it may take to listen (10 s).
export function startGateway(config, env = {}, opts = {}) {
  const wrapper = opts.wrapper ?? [];
  return new Promise((resolve, reject) => {
    const args = [...wrapper.slice(1), LLMUX, "serve", "-c", config];
    const proc = spawn(wrapper[0] ?? LLMUX, wrapper.length ? args : args.slice(1), {
      env: { ...cleanEnv(), LLMUX_LISTEN: "127.0.0.1:0", ...env },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let err = "";
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error("llmux did not start:\n" + err));
    }, opts.startTimeoutMs ?? 10000);
    proc.stderr.setEncoding("utf8");
    proc.stderr.on("data", (d) => {
      err += d;
      const m = /listening on http:\/\/[^\s]*:(\d+)/.exec(err);
      if (m && timer) {
        clearTimeout(timer);
        const port = Number(m[1]);
        resolve({
          port,
          url: `http://127.0.0.1:${port}`,
          proc,
          stderr: () => err,
          stop: () => stopProcess(proc),
        });
      }
    });
    // "close", not "exit": it comes once stderr is read to its end, so the
    // error carries what llmux said before exiting.
    proc.on("close", (code) => {
      clearTimeout(timer);
      reject(new Error(`llmux exited with ${code}:\n${err}`));
    });
  });
}

// SIGTERM, then the exit status (0 means a clean shutdown).
export function stopProcess(proc) {
  return new Promise((resolve) => {
    if (proc.exitCode !== null) return resolve(proc.exitCode);
    const t = setTimeout(() => proc.kill("SIGKILL"), 5000);
    proc.removeAllListeners("exit");
    // Once its output is read to the end too: a caller looks at it next.
    proc.on("close", (code, sig) => {
      clearTimeout(t);
      resolve(code ?? sig);
    });
    proc.kill("SIGTERM");
  });
}
