// Two gateways on one real redis-server share their limits: a provider's
// requests_per_minute holds exactly for sequential requests spread over
// both and within the documented bound (one request per process) for 64
// concurrent ones; Redis killed and restarted mid-run loses no request,
// rebuilds the fleet's counts and shares again; with shared_state_fail =
// closed an outage is a 503.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { runLlmux, startGateway, writeConfig } from "./lib/gateway.mjs";
import { startMock } from "./lib/mock.mjs";
import { startRedis } from "./lib/redis.mjs";

const live = [];
let redis, mk;
before(async () => {
  redis = await startRedis();
  mk = await startMock({ args: ["--name", "mk", "--tokens", "3"] });
  live.push(mk);
});
after(async () => {
  for (const x of live.reverse()) await x.stop();
  await redis.stop();
});

let prefixes = 0;
// Two gateways (or `count`) on one prefix of the test's Redis.
async function fleet({ route = "", server = "", tenants = "", count = 2, env = {} } = {}) {
  const prefix = `t${++prefixes}:`;
  const config = writeConfig({
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\nlog_level = warn\nretry_backoff = 10ms\n" +
      `shared_state = ${redis.url}\nshared_state_prefix = ${prefix}\n` +
      // Sanitizers and a busy CI box are slow; the outage tests kill Redis.
      `shared_state_timeout = 2s\n${server}\n` +
      "[model m]\ntier = 3\nprice_in = 1\nprice_out = 1\n" + tenants,
    "providers/mk.ini": `[provider mk]\nplugin = openai\nbase_url = ${mk.baseURL}\n` +
      `[route mk m]\nid = mk-id\n${route}\n`,
  });
  const gws = [];
  for (let i = 0; i < count; i++) {
    const gw = await startGateway(config, env);
    live.push(gw);
    gws.push(gw);
  }
  for (const gw of gws) await waitUp(gw);
  return { gws, prefix, config };
}

async function metric(gw, name, labels) {
  const text = await (await fetch(gw.url + "/metrics")).text();
  const re = new RegExp(`^${name}\\{${labels}\\} (\\S+)$`, "m");
  const m = re.exec(text);
  return m ? Number(m[1]) : undefined;
}

async function waitFor(what, fn, ms = 10000) {
  const until = Date.now() + ms;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > until) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const waitUp = (gw) => waitFor("the shared state to be up", async () =>
  (await metric(gw, "llmux_shared_state_up", 'component="rate_limits"')) === 1);

function chat(gw, headers = {}) {
  return fetch(gw.url + "/v1/chat/completions", {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }] }),
  });
}

async function statuses(gw, n) {
  const out = [];
  for (let i = 0; i < n; i++) {
    const r = await chat(gw);
    await r.arrayBuffer();
    out.push(r.status);
  }
  return out;
}

test("a provider's requests_per_minute holds exactly for sequential requests over two gateways", async () => {
  const { gws } = await fleet({ route: "requests_per_minute = 10" });
  const got = [];
  for (let i = 0; i < 16; i++) {
    const r = await chat(gws[i % 2]);
    const body = await r.json();
    got.push(r.status);
    if (r.status === 429) assert.equal(body.error.code, "RATE_LIMIT_EXCEEDED");
  }
  assert.deepEqual(got, [...Array(10).fill(200), ...Array(6).fill(429)],
                   gws.map((g) => g.stderr()).join("\n---\n"));
  // Alone, each would have let 10 through: 20 in all.
});

test("64 concurrent requests over two gateways exceed the limit by at most one per gateway", async () => {
  const limit = 20;
  const { gws } = await fleet({ route: `requests_per_minute = ${limit}` });
  const rs = await Promise.all(Array.from({ length: 64 }, async (_, i) => {
    const r = await chat(gws[i % 2]);
    await r.arrayBuffer();
    return r.status;
  }));
  const ok = rs.filter((s) => s === 200).length;
  assert.ok(rs.every((s) => s === 200 || s === 429), rs.join(","));
  assert.ok(ok <= limit + gws.length, `${ok} answered for a limit of ${limit}`);
  assert.ok(ok >= 1, "none answered");
  console.log(`64 concurrent, limit ${limit}: ${ok} answered`);
  // Once everything is confirmed, the fleet's count is what was let through:
  // the next request is refused on either.
  for (const gw of gws) {
    const r = await chat(gw);
    await r.arrayBuffer();
    assert.equal(r.status, ok >= limit ? 429 : 200);
  }
});

test("Redis killed and restarted mid-run: no request lost, counts rebuilt, sharing again", async () => {
  const { gws } = await fleet({ route: "requests_per_minute = 40" });
  const before = [...await statuses(gws[0], 10), ...await statuses(gws[1], 10)];
  assert.ok(before.every((s) => s === 200), before.join(","));
  const errorsBefore = await metric(gws[0], "llmux_shared_state_errors_total",
                                    'component="rate_limits"');
  await redis.kill();
  // Fail-open: both keep serving on what they know.
  const during = [...await statuses(gws[0], 10), ...await statuses(gws[1], 10)];
  assert.ok(during.every((s) => s === 200), during.join(","));
  await waitFor("the outage to be counted", async () =>
    (await metric(gws[0], "llmux_shared_state_errors_total", 'component="rate_limits"')) >
      errorsBefore);
  assert.equal(await metric(gws[0], "llmux_shared_state_up", 'component="rate_limits"'), 0);
  // Redis comes back empty: each adds back what it counted; 40 in all.
  await redis.start();
  for (const gw of gws) await waitUp(gw);
  for (const gw of gws) {
    const r = await chat(gw);
    await r.arrayBuffer();
    assert.equal(r.status, 429, "the fleet's 40 requests were not rebuilt");
  }
});

test("shared_state_fail = closed: while Redis is down requests get 503 shared_state_unavailable", async () => {
  const { gws } = await fleet({ server: "shared_state_fail = closed", count: 1 });
  let r = await chat(gws[0]);
  assert.equal(r.status, 200);
  await r.arrayBuffer();
  await redis.kill();
  try {
    await waitFor("the outage to be seen", async () =>
      (await metric(gws[0], "llmux_shared_state_up", 'component="rate_limits"')) === 0);
    r = await chat(gws[0]);
    const body = await r.json();
    assert.equal(r.status, 503);
    assert.equal(body.error.code, "shared_state_unavailable");
    assert.ok(r.headers.get("retry-after"));
    assert.ok(!JSON.stringify(body).includes(String(redis.port)), "the address leaked");
    const ready = await fetch(gws[0].url + "/health/ready");
    assert.equal(ready.status, 503);
    assert.equal((await ready.json()).status, "shared_state_unavailable");
  } finally {
    await redis.start();
  }
  await waitUp(gws[0]);
  assert.equal((await fetch(gws[0].url + "/health/ready")).status, 200);
  r = await chat(gws[0]);
  assert.equal(r.status, 200);
  await r.arrayBuffer();
});

test("a password comes from shared_state_password_env; one in the URL is refused with its line", async () => {
  const config = writeConfig({
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\n" +
      `shared_state = redis://:hunter2@127.0.0.1:${redis.port}\n[model m]\ntier = 3\n`,
  });
  const r = runLlmux(["check", "-c", config]);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /llmux\.ini:3: .*shared_state.*credentials/);
  assert.ok(!r.stderr.includes("hunter2"), "the password was echoed");
  const unset = writeConfig({
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\n" +
      `shared_state = ${redis.url}\nshared_state_password_env = LLMUX_TEST_NOPE\n[model m]\ntier = 3\n`,
  });
  await assert.rejects(startGateway(unset), /LLMUX_TEST_NOPE, which is not set/);
});

function newKey(tenant) {
  const r = runLlmux(["key", "new", tenant]);
  assert.equal(r.status, 0, r.stderr);
  return { key: r.stdout.split("\n")[0], hash: /^key_sha256 = ([0-9a-f]{64})$/m.exec(r.stdout)[1] };
}

test("a tenant's requests_per_minute holds across both gateways", async () => {
  const k = newKey("acme");
  const { gws } = await fleet({
    tenants: `[tenant acme]\nkey_sha256 = ${k.hash}\nrequests_per_minute = 5\n`,
  });
  const got = [];
  for (let i = 0; i < 8; i++) {
    const r = await chat(gws[i % 2], { authorization: `Bearer ${k.key}` });
    const body = await r.json();
    got.push(r.status);
    if (r.status === 429) assert.match(body.error.message, /tenant 'acme': requests_per_minute/);
  }
  assert.deepEqual(got, [200, 200, 200, 200, 200, 429, 429, 429]);
});

async function mockRequests() {
  return (await (await fetch(mk.baseURL.replace(/\/v1$/, "") + "/mock/stats")).json()).requests;
}

test("a provider's Retry-After seen by one gateway blocks the route on the other", async () => {
  const { gws } = await fleet({ route: "requests_per_minute = 1000" });
  let r = await fetch(gws[0].url + "/v1/chat/completions", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }],
                           mock: { fault: "429", "retry-after": "30" } }),
  });
  await r.arrayBuffer();
  assert.equal(r.status, 429);
  const seen = await mockRequests();
  // A block is learnt from the provider's answer, after which A answers its
  // client at once: it reaches B within one publish (B's view, polled).
  await waitFor("the block to reach the other gateway", async () => {
    const routes = await (await fetch(gws[1].url + "/admin/routes")).json();
    return routes.routes?.[0]?.blocked?.reason === "retry_after";
  });
  r = await chat(gws[1]);
  const body = await r.json();
  assert.equal(r.status, 429);
  assert.equal(body.error.code, "RATE_LIMIT_EXCEEDED");
  assert.match(body.error.message, /provider 'mk'/);
  assert.ok(Number(r.headers.get("retry-after")) >= 25, r.headers.get("retry-after"));
  assert.equal(await mockRequests(), seen, "the blocked route was tried");
});

async function usageToday(gw, key) {
  const r = await fetch(gw.url + "/v1/usage", { headers: { authorization: `Bearer ${key}` } });
  assert.equal(r.status, 200);
  return (await r.json()).today;
}

test("usage through either gateway is the fleet's sum, and tokens_per_day holds across both", async () => {
  const k = newKey("daily");
  const { gws } = await fleet({
    tenants: `[tenant daily]\nkey_sha256 = ${k.hash}\ntokens_per_day = 60\n`,
  });
  const auth = { authorization: `Bearer ${k.key}` };
  let r = await chat(gws[0], auth);
  const first = await r.json();
  assert.equal(r.status, 200);
  const per = first.usage.prompt_tokens + first.usage.completion_tokens;
  for (let i = 1; i < 3; i++) {
    r = await chat(gws[i % 2], auth);
    await r.arrayBuffer();
    assert.equal(r.status, 200);
  }
  // Three requests, through both: each gateway reports all three.
  for (const gw of gws)
    await waitFor("usage to reach every gateway", async () =>
      (await usageToday(gw, k.key)).requests === 3);
  const t = await usageToday(gws[1], k.key);
  assert.equal(t.input_tokens + t.output_tokens, 3 * per);
  // Spend the day through the first gateway only...
  let spent = 3 * per, refused = null;
  for (let i = 0; i < 20 && !refused; i++) {
    r = await chat(gws[0], auth);
    const body = await r.json();
    if (r.status === 429) refused = body;
    else spent += per;
  }
  assert.ok(refused, "the first gateway never refused");
  assert.match(refused.error.message, /tenant 'daily': tokens_per_day/);
  assert.ok(spent >= 60, `refused at ${spent} tokens`);
  // ...and the second refuses too, once the day's total reached it.
  await waitFor("the day's total to reach the other gateway", async () => {
    const u = await usageToday(gws[1], k.key);
    return u.input_tokens + u.output_tokens === spent;
  });
  r = await chat(gws[1], auth);
  const body = await r.json();
  assert.equal(r.status, 429);
  assert.match(body.error.message, /tenant 'daily': tokens_per_day/);
});

test("a route cooled down on one gateway is skipped by the other", async () => {
  const { gws } = await fleet({
    route: "requests_per_minute = 1000",
    server: "cooldown_failures = 1\ncooldown = 30s\nmax_attempts = 1",
  });
  let r = await fetch(gws[0].url + "/v1/chat/completions", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }],
                           mock: { fault: "500" } }),
  });
  await r.arrayBuffer();
  assert.ok(r.status >= 500, String(r.status));
  const seen = await mockRequests();
  await waitFor("the cooldown to reach the other gateway", async () => {
    const routes = await (await fetch(gws[1].url + "/admin/routes")).json();
    return routes.routes?.[0]?.breaker?.state === "open";
  });
  r = await chat(gws[1]);
  const body = await r.json();
  assert.equal(r.status, 503);
  assert.equal(body.error.code, "all_routes_cooling_down");
  assert.equal(await mockRequests(), seen, "the cooled-down route was tried");
});

test("usage counted while Redis was down is neither lost nor doubled once it is back", async () => {
  const k = newKey("outage");
  const { gws } = await fleet({ tenants: `[tenant outage]\nkey_sha256 = ${k.hash}\n` });
  const auth = { authorization: `Bearer ${k.key}` };
  const send = async (gw) => {
    const r = await chat(gw, auth);
    await r.arrayBuffer();
    assert.equal(r.status, 200);
  };
  for (const gw of [...gws, ...gws]) await send(gw);
  for (const gw of gws)
    await waitFor("usage to be shared", async () => (await usageToday(gw, k.key)).requests === 4);
  await redis.kill();
  for (const gw of [...gws, gws[0]]) await send(gw);
  await redis.start();
  for (const gw of gws) await waitUp(gw);
  for (const gw of gws)
    await waitFor("the outage's usage to be merged", async () =>
      (await usageToday(gw, k.key)).requests === 7);
  // And it stays 7: nothing counted twice on the way.
  await new Promise((res) => setTimeout(res, 300));
  for (const gw of gws) assert.equal((await usageToday(gw, k.key)).requests, 7);
});

test("workers = 2 on one machine share a provider's limit through the shared state", async () => {
  const { httpRequest } = await import("./lib/mock.mjs");
  const prefix = `t${++prefixes}:`;
  const config = writeConfig({
    "llmux.ini": "[server]\nlisten = 127.0.0.1:0\nlog_level = info\nworkers = 2\n" +
      `shared_state = ${redis.url}\nshared_state_prefix = ${prefix}\nshared_state_timeout = 2s\n` +
      "[model m]\ntier = 3\n",
    "providers/mk.ini": `[provider mk]\nplugin = openai\nbase_url = ${mk.baseURL}\n` +
      "[route mk m]\nid = mk-id\nrequests_per_minute = 6\n",
  });
  const gw = await startGateway(config);
  live.push(gw);
  await waitFor("both workers listening", async () =>
    (gw.stderr().match(/llmux listening on http:\/\//g) ?? []).length >= 2);
  await waitFor("both workers sharing", async () =>
    (gw.stderr().match(/worker [01] info: shared state: redis/g) ?? []).length >= 2);
  await waitUp(gw);
  const got = [];
  for (let i = 0; i < 10; i++) {
    // A fresh connection each time: the kernel spreads them over the workers.
    const r = await httpRequest(gw.url + "/v1/chat/completions", {
      agent: false,
      body: { model: "m", messages: [{ role: "user", content: "hi" }] },
    });
    got.push(r.status);
  }
  assert.deepEqual(got, [...Array(6).fill(200), ...Array(4).fill(429)]);
});

test("a response created through one gateway continues through the other (stored in Redis)", async () => {
  const { default: OpenAI } = await import("openai");
  const { redisCommand } = await import("./lib/redis.mjs");
  const { gws, prefix } = await fleet({ server: "responses_ttl = 1h" });
  for (const gw of gws)
    await waitFor("the responses store to be up", async () =>
      (await metric(gw, "llmux_shared_state_up", 'component="responses"')) === 1);
  const [a, b] = gws.map((gw) =>
    new OpenAI({ baseURL: gw.url + "/v1", apiKey: "none", maxRetries: 0, timeout: 10000 }));
  const first = await a.responses.create({ model: "m", input: "My name is Ada." });
  // In Redis under the prefix, with the ttl.
  let pttl;
  await waitFor("the response in Redis", async () => {
    pttl = Number(/^:(-?\d+)/.exec(await redisCommand(redis.port, "PTTL",
      `${prefix}resp:${first.id}`))[1]);
    return pttl > 0;
  });
  assert.ok(pttl <= 3600000, `PTTL ${pttl}`);
  const second = await b.responses.create({
    model: "m", input: "What is my name?", previous_response_id: first.id });
  assert.equal(second.previous_response_id, first.id);
  const log = await mk.requests();
  const body = log[log.length - 1].body;
  assert.ok(body.includes("My name is Ada.") && body.includes(first.output_text),
    "gateway B replays the turn made through gateway A");
  assert.ok(body.includes("What is my name?"));
  // B's response chains on A, and A reads B's.
  const items = await a.responses.inputItems.list(second.id, { order: "asc" });
  assert.deepEqual(items.data.map((i) => i.content[0].text),
    ["My name is Ada.", first.output_text, "What is my name?"]);
  const viaB = await b.responses.inputItems.list(first.id);
  assert.equal(viaB.data[0].content[0].text, "My name is Ada.");
  assert.equal((await b.responses.retrieve(first.id)).output_text, first.output_text);
  for (const gw of gws)
    assert.equal(await metric(gw, "llmux_shared_state_errors_total", 'component="responses"'), 0);
  // A clean stop (the sanitizers find nothing left behind).
  for (const gw of gws) assert.equal(await gw.stop(), 0, gw.stderr());
});
