// The benchmark harness (bench/run.mjs) in smoke mode: a few seconds of
// tiny load through every path, so the harness keeps working. It asserts
// that each path answered and that the JSON, Markdown and PNG outputs were
// written, never a timing. The Portkey peer runs only when bench/
// node_modules already has it (bench/run.sh installs it; CI does not, to
// stay fast): otherwise the harness must skip it with a reason.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { BUILD_DIR, SOURCE_DIR } from "./lib/gateway.mjs";

const PATHS = ["direct", "llmux", "nginx"];

test("the benchmark harness runs every path in smoke mode and writes its outputs", () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "llmux-bench-smoke-"));
  const r = spawnSync(process.execPath, [path.join(SOURCE_DIR, "bench", "run.mjs"), "--smoke",
                                         "--build-dir", BUILD_DIR, "--out", out],
                      { encoding: "utf8", timeout: 240000 });
  assert.equal(r.status, 0, `bench/run.mjs --smoke failed:\n${r.stderr}`);

  const res = JSON.parse(fs.readFileSync(path.join(out, "results.json"), "utf8"));
  assert.equal(res.meta.mode, "smoke");
  for (const p of PATHS) {
    assert.equal(res.paths[p]?.answered, true, `${p} answered a chat completion`);
    const cells = res.nonstream.filter((c) => c.path === p);
    assert.equal(cells.length, 2, `${p}: one cell per body size`);
    for (const c of cells) {
      assert.ok(c.requests > 0, `${p} c=${c.concurrency} body=${c.body_bytes}: requests were answered`);
      assert.deepEqual(Object.values(c.errors).filter((n) => n !== 0), [],
                       `${p} body=${c.body_bytes}: no wrk errors (${JSON.stringify(c.errors)})`);
    }
    const streams = res.streams.filter((s) => s.path === p);
    assert.ok(streams.length > 0, `${p}: streams measured`);
    for (const s of streams) assert.equal(s.ok, s.requests, `${p}: every stream ended with [DONE]`);
  }
  if (res.paths.portkey?.skipped) {
    assert.match(res.paths.portkey.skipped, /\w/, "a skipped peer says why");
    assert.ok(res.meta.notes.some((n) => n.startsWith("portkey skipped")), "and the notes say so");
  } else {
    assert.equal(res.paths.portkey.answered, true, "portkey, when installed, answered");
  }
  const open = res.open_streams.find((o) => o.path === "llmux");
  assert.equal(open.ok, open.streams, "every concurrent stream through llmux completed");
  assert.ok(open.rss_peak_kib > 0, "llmux's peak RSS was read");
  assert.ok(typeof res.cpu.llmux.cpu_us_per_req === "number", "llmux's CPU per request was read");
  assert.ok(res.targets.length >= 3, "the three targets are evaluated");

  const md = fs.readFileSync(path.join(out, "results.md"), "utf8");
  assert.match(md, /^## Targets$/m);
  for (const p of PATHS) assert.match(md, new RegExp(`\\| ${p} \\|`), `${p} has rows in the table`);

  const png = fs.readFileSync(path.join(out, "latency.png"));
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], "a PNG");
  assert.ok(png.length > 1000, "with a chart in it");
  fs.rmSync(out, { recursive: true, force: true });
});
