#!/usr/bin/env bash
# Writes the seed inputs of tests/fuzz/corpus/<target>/seed-* from the test
# fixtures (tests/data) and from real provider answers written out here.
# Rerun after changing an input format; files not named seed-* (the crash
# reproducers, crash-*) are left alone. Control bytes: see each target's
# header comment.
set -euo pipefail
cd "$(dirname "$0")"
C=corpus
D=../data

seed() { # seed TARGET NAME CONTROL-BYTES (printf format) [FILE | -] : CONTROL + payload
  local target=$1 name=$2 ctl=$3 src=${4:--}
  mkdir -p "$C/$target"
  { printf "$ctl"; if [ "$src" = - ]; then cat; else cat "$src"; fi; } > "$C/$target/seed-$name"
}
crlf() { sed 's/$/\r/'; } # heredoc lines -> CRLF lines

# ---- fuzz_json_scan: client request bodies (no control byte) ----------------
for f in anthropic/chat_full.openai.json anthropic/chat_plain.openai.json \
         ollama/chat_request.json ollama/embed_request.json ollama/schema_request.json; do
  seed fuzz_json_scan "$(basename "${f%.json}")" '' "$D/$f"
done
seed fuzz_json_scan image '' <<'EOF'
{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]}],"max_tokens":300}
EOF
seed fuzz_json_scan escapes '' <<'EOF'
{"m\u006fdel":"llama-3.3-70b","prompt":"caf\u00e9 \ud83d\ude00 \"q\" \\ \/ \b\f\n\r\t","stream":false,"n":-1.5e3,"x":null,"y":[true,false,{}]}
EOF
seed fuzz_json_scan duplicate '' <<'EOF'
{"model":"a","stream":true,"model":"b"}
EOF

# ---- fuzz_ratelimit_headers: control byte, then "name: value" lines ---------
seed fuzz_ratelimit_headers openai '\x13' <<'EOF'
x-ratelimit-limit-requests: 10000
x-ratelimit-limit-tokens: 2000000
x-ratelimit-remaining-requests: 9999
x-ratelimit-remaining-tokens: 1999850
x-ratelimit-reset-requests: 6ms
x-ratelimit-reset-tokens: 2m59.56s
retry-after-ms: 1500
EOF
seed fuzz_ratelimit_headers groq '\x35' <<'EOF'
x-ratelimit-limit-requests: 14400
x-ratelimit-limit-tokens: 6000
x-ratelimit-remaining-requests: 14370
x-ratelimit-remaining-tokens: 5997
x-ratelimit-reset-requests: 2m59.56s
x-ratelimit-reset-tokens: 7.66s
retry-after: 2
EOF
seed fuzz_ratelimit_headers cerebras '\x52' <<'EOF'
x-ratelimit-limit-requests-day: 14400
x-ratelimit-limit-tokens-minute: 60000
x-ratelimit-remaining-requests-day: 14399
x-ratelimit-remaining-tokens-minute: 59854
x-ratelimit-reset-requests-day: 33011.38
x-ratelimit-reset-tokens-minute: 11.38
EOF
seed fuzz_ratelimit_headers anthropic '\x97' <<'EOF'
anthropic-ratelimit-requests-limit: 50
anthropic-ratelimit-requests-remaining: 0
anthropic-ratelimit-requests-reset: 2025-01-01T00:00:17Z
anthropic-ratelimit-tokens-limit: 40000
anthropic-ratelimit-tokens-remaining: 38000
anthropic-ratelimit-tokens-reset: 2025-01-01T00:00:01.5+00:00
anthropic-ratelimit-input-tokens-remaining: 30000
anthropic-ratelimit-output-tokens-remaining: 8000
anthropic-ratelimit-output-tokens-reset: 2024-12-31T23:59:59.999999Z
retry-after: 17
EOF
seed fuzz_ratelimit_headers dates '\xf0' <<'EOF'
retry-after: Wed, 01 Jan 2025 00:00:30 GMT
Retry-After: Wednesday, 01-Jan-25 00:01:00 GMT
RETRY-AFTER: Wed Jan  1 00:02:00 2025
x-ratelimit-reset-requests: 1h2m3.5s
x-ratelimit-reset-tokens: 1.5us
x-ratelimit-remaining-requests-hour: 5
EOF

# ---- fuzz_http_front_door: 2 control bytes, streams split by "\0\0" ---------
body='{"model":"fast","messages":[{"role":"user","content":"hi"}]}'
{ printf 'GET /v1/models?limit=5 HTTP/1.1\r\nHost: localhost\r\nX-Space:   padded value \t\r\n\r\n'
  printf 'POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n'
  printf 'Content-Length: %d\r\n\r\n%s' ${#body} "$body"
  printf 'GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'; } |
  seed fuzz_http_front_door pipelined '\x01\x05'
crlf <<'EOF' | seed fuzz_http_front_door chunked '\x12\x02'
POST /v1/embeddings HTTP/1.1
Host: h
Transfer-Encoding: chunked
Expect: 100-continue

4;ext=1
Wiki
5
pedia
0
Trailer: t

EOF
{ printf 'GET / HTTP/1.0\r\n\r\n\0\0HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n\0\0'
  printf 'GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n'; } |
  seed fuzz_http_front_door three-clients '\x63\x09'
crlf <<'EOF' | seed fuzz_http_front_door hostile '\x26\x01'
POST / HTTP/1.1
Host: h
Content-Length: 3
Transfer-Encoding: chunked

abc
EOF
{ printf 'POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 4100\r\n\r\n'; head -c 4100 /dev/zero | tr '\0' 'x'
  printf 'GET /c HTTP/1.1\r\nHost: h\r\nX-Fold: a\r\n  b\r\n\r\n'; } | seed fuzz_http_front_door big-body '\xa1\x00'

# ---- fuzz_upstream_response: 2 control bytes, then a whole response -----------
body='{"id":"chatcmpl-9","object":"chat.completion","created":1735689600,"model":"llama-3.3-70b-versatile","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}'
{ printf 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n' ${#body}
  printf 'x-ratelimit-remaining-requests: 14399\r\nConnection: keep-alive\r\n\r\n%s' "$body"; } |
  seed fuzz_upstream_response json '\x01\x07'
{ printf 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n'
  printf '2d\r\ndata: {"choices":[{"delta":{"content":"Hi"}}]}\n\n\r\n'
  printf '10;x=y\r\ndata: [DONE]\n\n\r\n\r\n0\r\nTrailer: 1\r\n\r\n'; } |
  seed fuzz_upstream_response sse-chunked '\x19\x03'
crlf <<'EOF' | seed fuzz_upstream_response close-delimited '\x04\x01'
HTTP/1.0 429 Too Many Requests
Retry-After: 7
Content-Type: application/json

{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}
EOF
crlf <<'EOF' | seed fuzz_upstream_response head '\x42\x00'
HTTP/1.1 200 OK
Content-Length: 1000

EOF
crlf <<'EOF' | seed fuzz_upstream_response keepalive-twice '\x11\x00'
HTTP/1.1 200 OK
Content-Length: 2

okHTTP/1.1 503 Service Unavailable
Content-Length: 0

EOF

# ---- fuzz_plugin_*: 2 control bytes, then a body --------------------------------
# byte 0: 0x00 response, 0x02 stream (+0x08 include_usage), 0x04 error,
#         0x05 model list, 0x06 request; +0x10 completions, +0x20 embeddings.
for p in openai anthropic ollama; do
  seed fuzz_plugin_$p request-full '\x06\x00' "$D/anthropic/chat_full.openai.json"
  seed fuzz_plugin_$p request-plain '\x0e\x00' "$D/anthropic/chat_plain.openai.json"
done
seed fuzz_plugin_ollama request-tools '\x86\x00' "$D/ollama/chat_request.json"
seed fuzz_plugin_ollama request-embed '\x26\x00' "$D/ollama/embed_request.json"
seed fuzz_plugin_ollama request-schema '\x06\x00' "$D/ollama/schema_request.json"

for f in message_text message_tools message_tool_no_input; do
  seed fuzz_plugin_anthropic "$f" '\x00\x07' "$D/anthropic/$f.response.json"
done
for f in stream_text stream_tools stream_error stream_tool_no_input; do
  seed fuzz_plugin_anthropic "$f" '\x0a\x05' "$D/anthropic/$f.sse"
done
seed fuzz_plugin_anthropic error-429 '\x04\x09' <<'EOF'
retry-after: 17
anthropic-ratelimit-requests-remaining: 0

{"type":"error","error":{"type":"rate_limit_error","message":"You have reached your monthly spend limit.","details":{"error_code":"enforced_spend_limit_reached"}}}
EOF
seed fuzz_plugin_anthropic error-400 '\x04\x00' <<'EOF'
{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}
EOF
seed fuzz_plugin_anthropic models '\x05\x00' <<'EOF'
{"data":[{"type":"model","id":"claude-3-5-sonnet-20241022","display_name":"Claude 3.5 Sonnet"}],"has_more":false,"first_id":"claude-3-5-sonnet-20241022","last_id":"claude-3-5-sonnet-20241022"}
EOF

seed fuzz_plugin_ollama chat-length '\x00\x07' "$D/ollama/chat_length.json"
seed fuzz_plugin_ollama chat-tools '\x80\x03' "$D/ollama/chat_tools.json"
seed fuzz_plugin_ollama chat-stream '\x0a\x05' "$D/ollama/chat_stream.ndjson"
seed fuzz_plugin_ollama chat-tools-stream '\x82\x02' "$D/ollama/chat_tools_stream.ndjson"
seed fuzz_plugin_ollama chat-error-mid-stream '\x02\x01' "$D/ollama/chat_error_mid_stream.ndjson"
seed fuzz_plugin_ollama embed '\x20\x06' "$D/ollama/embed_response.json"
seed fuzz_plugin_ollama embed-base64 '\x60\x06' "$D/ollama/embed_response.json"
seed fuzz_plugin_ollama error-404 '\x04\x04' "$D/ollama/error_model_not_found.json"
seed fuzz_plugin_ollama models '\x05\x00' "$D/ollama/tags.json"
if [ -f "$D/ollama/chat_stream_bad_counts.ndjson" ]; then
  seed fuzz_plugin_ollama chat-stream-bad-counts '\x0a\x01' "$D/ollama/chat_stream_bad_counts.ndjson"
fi

seed fuzz_plugin_openai chat '\x00\x07' <<'EOF'
{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I assist you today?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_fc9f1d7035"}
EOF
seed fuzz_plugin_openai stream '\x0a\x03' <<'EOF'
data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"llama-3.3-70b-versatile","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"llama-3.3-70b-versatile","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"llama-3.3-70b-versatile","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"x_groq":{"usage":{"prompt_tokens":18,"completion_tokens":2,"total_tokens":20}}}

data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"llama-3.3-70b-versatile","choices":[],"usage":{"prompt_tokens":18,"completion_tokens":2,"total_tokens":20}}

data: [DONE]

EOF
seed fuzz_plugin_openai embeddings '\x20\x05' <<'EOF'
{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023064255,-0.009327292,-0.0028842222]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}
EOF
seed fuzz_plugin_openai error-429 '\x04\x09' <<'EOF'
retry-after: 2.5
retry-after-ms: 2500
x-ratelimit-remaining-tokens: 0

{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}
EOF
seed fuzz_plugin_openai error-400 '\x04\x00' <<'EOF'
{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}
EOF
