// Process and /proc helpers for the benchmark harness: free ports, waiting
// for a listener, starting and stopping the processes it owns, and reading
// a process's CPU time and memory from /proc. Node built-ins only.
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import readline from "node:readline";

const owned = new Set(); // child processes this harness started and must stop
process.on("exit", () => {
  for (const p of owned) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
});

// A port that was free a moment ago on 127.0.0.1 (bind 0, read it, close).
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// Resolves once 127.0.0.1:port accepts a connection; rejects after timeoutMs
// or as soon as `proc` (if given) exits.
export async function waitForPort(port, { timeoutMs = 15000, proc, name = "process" } = {}) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (proc && (proc.exitCode !== null || proc.signalCode !== null))
      throw new Error(`${name} exited (${proc.exitCode ?? proc.signalCode}) before listening:\n${proc.log()}`);
    const ok = await new Promise((resolve) => {
      const c = net.connect(port, "127.0.0.1");
      c.once("connect", () => { c.destroy(); resolve(true); });
      c.once("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`${name} did not listen on ${port}:\n${proc ? proc.log() : ""}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Starts a long-running process the harness owns, with its fd limit raised
// to the hard limit (1,000 streams need more than the usual 1024). The
// returned ChildProcess has .log() (its stderr+stdout so far, capped).
export function startOwned(cmd, args, { env = {}, cwd, stdout = false } = {}) {
  const proc = spawn("/bin/sh", ["-c", 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@"', cmd, ...args], {
    env: { ...process.env, ...env },
    cwd,
    stdio: ["ignore", "pipe", "pipe"],
  });
  owned.add(proc);
  let log = "";
  const keep = (d) => { if (log.length < 65536) log += d; };
  proc.stderr.setEncoding("utf8");
  proc.stderr.on("data", keep);
  proc.stdout.setEncoding("utf8");
  if (!stdout) proc.stdout.on("data", keep);
  proc.log = () => log;
  proc.on("exit", () => owned.delete(proc));
  return proc;
}

// SIGTERM (or `signal`), SIGKILL after timeoutMs; resolves to the exit code
// or signal name.
export function stopOwned(proc, { signal = "SIGTERM", timeoutMs = 5000 } = {}) {
  return new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve(proc.exitCode ?? proc.signalCode);
    const t = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
    proc.once("exit", (code, sig) => { clearTimeout(t); resolve(code ?? sig); });
    proc.kill(signal);
  });
}

// Starts cmd (env added to the harness's) and resolves { proc, value } once
// ready(line) returns something other than undefined for a line of its
// stdout or stderr; rejects if it exits first or takes over timeoutMs.
// proc.log() is what it printed so far (capped). Killed with the harness.
export function startReady(cmd, args, ready, { env = {}, timeoutMs = 60000 } = {}) {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
    owned.add(p);
    let out = "";
    p.log = () => out;
    const t = setTimeout(() => reject(new Error(`${cmd} did not start:\n${out}`)), timeoutMs);
    p.on("exit", (code, sig) => {
      owned.delete(p);
      clearTimeout(t);
      reject(new Error(`${cmd} exited (${code ?? sig}):\n${out}`)); /* nothing once resolved */
    });
    for (const s of [p.stdout, p.stderr]) {
      readline.createInterface({ input: s }).on("line", (l) => {
        if (out.length < 262144) out += l + "\n";
        const v = ready(l);
        if (v !== undefined) { clearTimeout(t); resolve({ proc: p, value: v }); }
      });
    }
  });
}

// SIGTERM, then waits for the exit however long it takes (a process under
// valgrind writes its dumps on the way out).
export async function stopWait(p) {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const done = new Promise((r) => p.on("exit", r));
  p.kill("SIGTERM");
  await done;
}

// Runs a command to completion; resolves { code, stdout, stderr }.
export function runTool(cmd, args, { timeoutMs = 600000 } = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn("/bin/sh", ["-c", 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@"', cmd, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    owned.add(proc);
    let out = "", err = "";
    proc.stdout.setEncoding("utf8");
    proc.stderr.setEncoding("utf8");
    proc.stdout.on("data", (d) => { out += d; });
    proc.stderr.on("data", (d) => { err += d; });
    const t = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
    proc.on("error", (e) => { clearTimeout(t); owned.delete(proc); reject(e); });
    proc.on("exit", (code, sig) => {
      clearTimeout(t);
      owned.delete(proc);
      resolve({ code: code ?? sig, stdout: out, stderr: err });
    });
  });
}

// Whether an executable is on PATH.
export function haveTool(name) {
  try {
    execFileSync("/bin/sh", ["-c", `command -v ${name}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

let clkTck = 0;
// CPU time (user + system, all threads) of a process, in microseconds.
export function cpuUs(pid) {
  if (!clkTck) clkTck = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // f[0] is field 3 (state)
  return ((Number(f[11]) + Number(f[12])) * 1e6) / clkTck;
}

// CPU time of a process in microseconds at nanosecond resolution: the time
// its live threads spent on a CPU (user + system), summed from
// /proc/PID/task/TID/schedstat. For cells too short for the clock ticks of
// cpuUs (10 ms each) to count their CPU time well: the stream cells. Falls
// back to cpuUs when schedstat is missing.
export function cpuUsFine(pid) {
  try {
    let ns = 0;
    for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
      try {
        ns += Number(fs.readFileSync(`/proc/${pid}/task/${t}/schedstat`, "utf8").split(" ")[0]);
      } catch { /* the thread ended meanwhile */ }
    }
    return ns / 1000;
  } catch {
    return cpuUs(pid);
  }
}

// { rssKiB, hwmKiB } from /proc/PID/status (VmHWM: the peak resident set).
export function memKiB(pid) {
  const s = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  const get = (k) => Number((new RegExp(`^${k}:\\s+(\\d+)`, "m").exec(s) || [])[1] || 0);
  return { rssKiB: get("VmRSS"), hwmKiB: get("VmHWM") };
}

// Pids whose parent is `ppid` (nginx's workers under its master).
export function childPids(ppid) {
  const out = [];
  for (const d of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(f[1]) === ppid) out.push(Number(d));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}
