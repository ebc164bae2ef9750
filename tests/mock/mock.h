/* mock_upstream: a fake OpenAI-compatible provider for the end-to-end tests
 * and the benchmark. One libuv loop, llhttp parsing, responses built with
 * plain appends (no JSON library on the hot path) so it is never the
 * bottleneck of a benchmark.
 *
 * Files: main.c (flags, listener, signals), conn.c (connections: reading,
 * TLS, parsing, writing, timers), openai.c (endpoints, response bodies,
 * streams, faults), request.c (the request body fields an answer depends
 * on), json_scan.c (a validating scanner that finds them without building a
 * tree), responses.c (OpenAI's Responses API, minimal), record.c (the request log and
 * the /mock/ introspection endpoints, with jansson). */
#ifndef MOCK_H
#define MOCK_H

#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <uv.h>

#include "llhttp.h"
#include "llmux/common.h"
#include "net/tls.h"
#include "base/util.h"

enum mock_fault {
  MOCK_FAULT_NONE = 0,
  MOCK_FAULT_429,
  MOCK_FAULT_500,
  MOCK_FAULT_503,
  MOCK_FAULT_401,
  MOCK_FAULT_400,
  MOCK_FAULT_404_MODEL,
  MOCK_FAULT_CONTEXT_LENGTH,
  MOCK_FAULT_RESET,
  MOCK_FAULT_RESET_MID_STREAM,
  MOCK_FAULT_STALL,
  MOCK_FAULT_STALL_MID_STREAM,
  MOCK_FAULT_GARBAGE,
  MOCK_FAULT_INVALID_JSON,
  MOCK_FAULT_SLOW_HEADERS,
  MOCK_FAULT_HUGE_USAGE   /* openai format: prompt_tokens beyond 64 bits */
};

/* Behaviour knobs. -1 means "not set here": a request's knobs fall back to
 * the body's "mock" object, then to the command line. */
typedef struct mock_knobs_s {
  int fault;
  int64_t latency_ms;
  int64_t tokens;
  int64_t token_delay_ms;
  int64_t fail_after;
  int64_t retry_after_s;
} mock_knobs_t;

#define MOCK_MAX_TOKENS 1000000
#define MOCK_LOG_SIZE 64

/* Returns the fault for a name ("429", "reset-mid-stream", ...), -1 if none. */
int mock_fault_parse(const char *s, size_t len);
void mock_knobs_unset(mock_knobs_t *k);
/* Sets the knob that header/key `name` names from `val`; 0, or -1 if the
 * name is not a knob or the value is malformed (then nothing changes). */
int mock_knob_set(mock_knobs_t *k, const char *name, size_t nlen, const char *val,
                  size_t vlen);

/* One request as received. Owned by its connection while it is parsed, then
 * by the request log (or recycled). */
typedef struct mock_req_s {
  llmux_buf_t url;
  llmux_buf_t hdrs;       /* "name\0value\0" pairs, names lower-cased */
  llmux_buf_t body;
  unsigned nhdrs;
  unsigned method;        /* llhttp_method_t */
  uint64_t seq;           /* 1, 2, ... over the server's life */
  mock_knobs_t knobs;     /* from x-mock-* headers */
} mock_req_t;

typedef struct mock_server_s mock_server_t;
typedef struct mock_conn_s mock_conn_t;

typedef struct mock_stats_s {
  uint64_t requests;       /* API requests (not /mock/...) */
  uint64_t connections;    /* accepted */
  uint64_t active;         /* open now */
  uint64_t aborted;        /* closed by the peer while answering */
  uint64_t streams;        /* streamed responses started */
} mock_stats_t;

struct mock_server_s {
  uv_loop_t *loop;
  uv_tcp_t listener;
  uv_signal_t sigterm;
  uv_signal_t sigint;
  llmux_tls_ctx_t *tls;         /* NULL for plain HTTP */
  mock_knobs_t defaults;        /* from the command line, all set */
  char name[64];                /* [A-Za-z0-9._-] only: no escaping needed */
  int record;                   /* keep the request log */
  int closing;
  mock_conn_t *conns;           /* doubly linked, for shutdown */
  mock_stats_t stats;
  uint64_t seq;
  mock_req_t *log[MOCK_LOG_SIZE]; /* ring of recent requests, owned */
  unsigned log_next;
  mock_req_t *spare;            /* one recycled request */
  char date[64];                /* "date: ...\r\n", refreshed each second */
  uint64_t date_sec;
};

/* Response in progress on a connection: what the body builders need, copied
 * out of the request so the request can go to the log at once. */
enum mock_endpoint {
  MOCK_EP_NOTFOUND = 0, MOCK_EP_CHAT, MOCK_EP_COMPLETION, MOCK_EP_EMBEDDINGS,
  MOCK_EP_MODELS, MOCK_EP_MODEL,
  MOCK_EP_RESPONSES          /* responses.c: OpenAI's Responses API */
};
enum { MOCK_BODY_OK = 0, MOCK_BODY_NOT_JSON, MOCK_BODY_NO_MODEL, MOCK_BODY_NO_INPUT };

typedef struct mock_call_s {
  int stream;
  int include_usage;
  int tools;                 /* answer with a tool call */
  int truncated;             /* max_tokens cut the answer: finish "length" */
  int fault;
  int64_t tokens;
  int64_t token_delay_ms;
  int64_t fail_after;
  int64_t retry_after_s;
  uint64_t prompt_tokens;
  uint64_t id;
  uint64_t created;
  llmux_buf_t model;         /* raw JSON string content, still escaped */
  llmux_buf_t tool_name;     /* raw JSON string content */
  llmux_buf_t seeds;         /* embeddings: one uint64_t per input */
  int64_t dimensions;
  int base64;
  int endpoint;              /* MOCK_EP_* */
  int body_error;            /* MOCK_BODY_* */
  int64_t latency_ms;
  int64_t event;             /* next stream event */
  int64_t nevents;
  int ollama;                /* Ollama's native API (ollama.c answers); tools = count */
  int anthropic;             /* Anthropic's Messages API (anthropic.c answers) */
  int anthropic_status;      /* anthropic.c: status of the answer rendered in conn->body */
  int logprobs;              /* ollama.c: "logprobs": true asked for them */
  int64_t top_logprobs;      /* ollama.c: alternatives per token (0-20) */
} mock_call_t;

struct mock_conn_s {
  uv_tcp_t tcp;                 /* tcp.data and timer.data point here */
  uv_timer_t timer;
  mock_server_t *srv;
  mock_conn_t *prev, *next;
  llhttp_t parser;
  llmux_tls_t *tls;
  int tls_ready;
  int handles;                  /* open libuv handles; freed at 0 */
  int state;                    /* MOCK_CONN_* */
  int in_parse;
  int keep_alive;
  int http10;                   /* HTTP/1.0 client: no chunked encoding */
  int close_after_write;
  int reset_after_write;
  int timer_action;             /* MOCK_TIMER_* */
  unsigned writes;              /* uv_write requests in flight */
  mock_req_t *req;              /* being parsed */
  llmux_buf_t in;               /* received plaintext not yet parsed */
  size_t in_off;
  llmux_buf_t out;              /* response being assembled */
  llmux_buf_t body;             /* scratch for bodies and events */
  llmux_buf_t slow;             /* slow-headers: head left to trickle */
  size_t slow_off;
  int slow_then_stream;
  mock_call_t call;
};

enum { MOCK_CONN_IDLE = 0, MOCK_CONN_BUSY, MOCK_CONN_CLOSING };
enum {
  MOCK_TIMER_NONE = 0,
  MOCK_TIMER_LATENCY,    /* then mock_respond() */
  MOCK_TIMER_STREAM,     /* next stream event */
  MOCK_TIMER_SLOW_HEAD,  /* next head line */
  MOCK_TIMER_RESET       /* RST now */
};

/* conn.c */
void mock_conn_accept(mock_server_t *srv);
void mock_conn_close(mock_conn_t *c);
void mock_conn_reset(mock_conn_t *c);             /* close with RST */
/* Queues bytes for the peer (through TLS when on); copies what the kernel
 * did not take at once. */
void mock_conn_write(mock_conn_t *c, const uv_buf_t *bufs, unsigned n);
void mock_conn_write_buf(mock_conn_t *c, const llmux_buf_t *b);
void mock_conn_timer(mock_conn_t *c, int action, uint64_t ms);
/* The response is complete: next pipelined request, or close. */
void mock_conn_done(mock_conn_t *c);

/* openai.c */
/* A request has been fully received on c: answer it (now or later). */
void mock_dispatch(mock_conn_t *c, mock_req_t *req);
/* Continues after the latency timer. */
void mock_respond(mock_conn_t *c);
void mock_stream_tick(mock_conn_t *c);
void mock_slow_head_tick(mock_conn_t *c);
void mock_call_free(mock_call_t *call);
/* Answers with a complete body (copied), honouring slow-headers and
 * mid-stream faults, then marks the response done. */
void mock_send_body(mock_conn_t *c, int status, const char *ctype, const char *body,
                    size_t len);
void mock_send_error(mock_conn_t *c, int status, const char *type, const char *param,
                     const char *code, const char *msg);

/* ollama.c: Ollama's native /api/chat, /api/embed, /api/tags. route sets
 * call->endpoint and call->ollama and returns 1 for those paths. */
int mock_ollama_route(mock_call_t *call, const mock_req_t *r, const char *path, size_t plen);
int mock_ollama_parse_body(mock_call_t *call, mock_req_t *r, mock_knobs_t *body_knobs);
void mock_ollama_respond(mock_conn_t *c);
void mock_ollama_stream_tick(mock_conn_t *c);

/* anthropic.c: Anthropic's POST .../messages. match says whether a request
 * is one; dispatch takes r like mock_dispatch and sets call->anthropic. */
int mock_anthropic_match(const mock_req_t *r, const char *path, size_t plen);
void mock_anthropic_dispatch(mock_conn_t *c, mock_req_t *r);
void mock_anthropic_respond(mock_conn_t *c);
void mock_anthropic_stream_tick(mock_conn_t *c);

/* request.c: reads the body fields the answer depends on into call (its
 * endpoint already set) and the "mock" object's knobs; MOCK_BODY_*. */
int mock_parse_body(mock_call_t *call, mock_req_t *r, mock_knobs_t *body_knobs);

/* responses.c: POST .../responses (OpenAI's Responses API, minimal). */
int64_t mock_responses_nevents(const mock_call_t *call);
void mock_responses_body(mock_conn_t *c);
void mock_responses_event(llmux_buf_t *e, const mock_conn_t *c, int64_t k);

/* record.c */
mock_req_t *mock_req_new(mock_server_t *srv);
void mock_req_free(mock_req_t *r);
/* Gives r back for reuse (or frees it). */
void mock_req_release(mock_server_t *srv, mock_req_t *r);
/* Takes ownership of r (or recycles it when the log is off). */
void mock_log_push(mock_server_t *srv, mock_req_t *r);
void mock_log_clear(mock_server_t *srv);
/* GET /mock/requests, GET /mock/stats, POST /mock/reset; 0 if handled. */
int mock_introspect(mock_conn_t *c, mock_req_t *req, const char *path, size_t plen);

/* json_scan.c: a validating scanner over raw JSON text. Spans point into the
 * text; string spans exclude the quotes and keep escapes as they are. */
typedef int (*mock_json_member_cb)(void *ud, llmux_str_t key, llmux_str_t val);
typedef int (*mock_json_elem_cb)(void *ud, size_t index, llmux_str_t val);
/* 0 if [p, p+len) is exactly one JSON object (surrounding white space
 * allowed); calls cb for each member. A non-zero cb return stops the walk
 * and is returned. LLMUX_EPROTO if the text is not valid JSON: validation
 * runs as the walk goes, so cb may already have seen earlier members. */
int mock_json_object(const char *p, size_t len, mock_json_member_cb cb, void *ud);
int mock_json_array(const char *p, size_t len, mock_json_elem_cb cb, void *ud);
/* Classifies a value span: '"' string (span is the raw content), '{', '[',
 * 't', 'f', 'n', or '0' for a number. */
int mock_json_type(llmux_str_t val);
/* ---- appending answers (shared by openai.c, ollama.c, anthropic.c) ----
 * The mock is a test tool: running out of memory while building an answer
 * has no sensible response, so these abort. */
static inline void ap(llmux_buf_t *b, const char *s, size_t n) {
  if (llmux_buf_append(b, s, n) != 0) abort();
}
#define AL(b, lit) ap((b), (lit), sizeof(lit) - 1)
static inline void ap_s(llmux_buf_t *b, const char *s) { ap(b, s, strlen(s)); }
static inline void ap_buf(llmux_buf_t *b, const llmux_buf_t *s) { ap(b, s->base, s->len); }
static inline void ap_u64(llmux_buf_t *b, uint64_t v) {
  char tmp[24];
  ap(b, tmp, llmux_u64_dec(tmp, v));
}
/* Token i of the deterministic answer ("NAME tok1 tok2 ..."), and the
 * whole answer's content. */
void mock_ap_token(llmux_buf_t *b, const mock_server_t *srv, int64_t i);
void mock_ap_content(llmux_buf_t *b, const mock_conn_t *c);
/* The reason phrase of an HTTP status the mock answers with. */
const char *mock_status_reason(int status);

/* FNV-1a of p[0..n): deterministic seeds for answers. */
uint64_t mock_fnv1a(const char *p, size_t n);
/* A JSON value that is a plain non-negative integer, else -1. */
int64_t mock_json_int(llmux_str_t v);
int mock_json_is(llmux_str_t s, const char *lit);
/* The span of a string value without its quotes. */
llmux_str_t mock_json_strval(llmux_str_t val);

#endif /* MOCK_H */
