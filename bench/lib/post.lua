-- wrk script: POSTs one fixed chat completion and prints the run's summary
-- as a JSON line (prefixed BENCHJSON) for bench/run.mjs to parse.
--   wrk ... -s post.lua URL -- BODY_BYTES MODEL ["Name: value"]...
-- The body is an OpenAI chat request whose message is padded with 'x' so
-- the whole body is BODY_BYTES long.

function init(args)
  local size = tonumber(args[1]) or 1024
  local model = args[2] or "bench-model"
  local pre = '{"model":"' .. model .. '","messages":[{"role":"user","content":"'
  local post = '"}]}'
  local pad = size - #pre - #post
  if pad < 1 then pad = 1 end
  wrk.method = "POST"
  wrk.body = pre .. string.rep("x", pad) .. post
  wrk.headers["Content-Type"] = "application/json"
  for i = 3, #args do
    local k, v = string.match(args[i], "^([^:]+):%s*(.*)$")
    if k then wrk.headers[k] = v end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
