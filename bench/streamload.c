/* streamload: opens many concurrent SSE chat-completion streams to one URL
 * and reports, as one JSON object on stdout, how long each took to its
 * first body byte (TTFB) and to its last (TTLB), as percentiles.
 *
 *   streamload --url http://127.0.0.1:PORT/v1/chat/completions
 *              [-c CONCURRENCY] [-n REQUESTS] [-H "Name: value"]...
 *              [--model M] [--body-bytes N] [--timeout-ms T]
 *
 * CONCURRENCY connections each run streams one after the other (keep-alive
 * when the server allows it) until REQUESTS streams have started. Times
 * start when the request's connection attempt starts (a reused connection:
 * when its request is written) and are in microseconds. A stream counts as
 * ok when it ends with status 200 and its body ends with "data: [DONE]".
 * Lines of the body that start with "data:" are counted (SSE events):
 * "sse_events" sums them over the ok streams, with the fewest and most one
 * ok stream had. "peak_streaming" is the most streams that had their first
 * body byte and had not yet ended at one moment (open together, really
 * streaming), where "peak_inflight" counts every started stream.
 * The whole run stops at --timeout-ms; streams still open then are errors.
 * Exit status: 0 (the JSON says how many failed), 2 on bad arguments. */
#include <errno.h>
#include <inttypes.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

typedef struct load_s load_t;

typedef struct slot_s {
  uv_tcp_t tcp;
  uv_connect_t connect;
  uv_write_t write;
  llhttp_t parser;
  load_t *load;
  uint64_t t_start;  /* ns, uv_hrtime */
  uint64_t t_first;  /* ns, first body byte; 0 until then */
  int status;        /* HTTP status of the current response */
  unsigned open : 1; /* tcp handle initialised and not closed */
  unsigned busy : 1; /* a request is in flight */
  unsigned done : 1; /* the current response completed */
  unsigned writing : 1; /* `write` is in use: the connection cannot take another request */
  char tail[16];     /* last body bytes, to see "[DONE]" */
  size_t tail_len;
  uint64_t events;   /* "data:" lines in the current body */
  unsigned lpos;     /* bytes of "data:" matched at the start of the current line; 6: no match */
} slot_t;

struct load_s {
  uv_loop_t *loop;
  uv_timer_t deadline;
  struct sockaddr_in addr;
  llhttp_settings_t settings;
  char *request; /* owned: the whole request, shared by every slot's writes */
  size_t request_len;
  slot_t *slots; /* owned, `conc` of them */
  unsigned conc;
  uint64_t total, started, ok, failed, non200, inflight, peak_inflight, bytes;
  uint64_t streaming, peak_streaming;            /* streams between first body byte and end */
  uint64_t events, events_min, events_max;       /* SSE "data:" events of ok streams */
  uint64_t f_connect, f_io, f_parse, f_incomplete, f_timeout; /* why streams failed */
  uint64_t *ttfb, *ttlb; /* owned, microseconds of ok streams */
  uint64_t t0;
  int stopping;
};

static char read_buf[65536]; /* one loop thread: every read lands here in turn */

static void slot_next(slot_t *s);

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  buf->base = read_buf;
  buf->len = sizeof(read_buf);
}

/* ---- per-response bookkeeping ---- */

static int on_message_begin(llhttp_t *p) {
  slot_t *s = p->data;
  s->t_first = 0;
  s->tail_len = 0;
  s->done = 0;
  s->events = 0;
  s->lpos = 0;
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  ((slot_t *)p->data)->status = p->status_code;
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  slot_t *s = p->data;
  size_t keep, i;
  static const char pfx[] = "data:";
  if (s->t_first == 0) {
    s->t_first = uv_hrtime();
    if (++s->load->streaming > s->load->peak_streaming) s->load->peak_streaming = s->load->streaming;
  }
  s->load->bytes += len;
  for (i = 0; i < len; i++) { /* count the lines that start with "data:" */
    if (at[i] == '\n') s->lpos = 0;
    else if (s->lpos < 5) s->lpos = at[i] == pfx[s->lpos] ? s->lpos + 1 : 6;
    else continue;
    if (s->lpos == 5) { s->events++; s->lpos = 6; }
  }
  if (len >= sizeof(s->tail)) {
    memcpy(s->tail, at + len - sizeof(s->tail), sizeof(s->tail));
    s->tail_len = sizeof(s->tail);
    return 0;
  }
  keep = sizeof(s->tail) - len < s->tail_len ? sizeof(s->tail) - len : s->tail_len;
  memmove(s->tail, s->tail + s->tail_len - keep, keep);
  memcpy(s->tail + keep, at, len);
  s->tail_len = keep + len;
  return 0;
}

static int ends_with_done(const slot_t *s) {
  static const char want[] = "data: [DONE]";
  size_t i = s->tail_len;
  while (i > 0 && (s->tail[i - 1] == '\n' || s->tail[i - 1] == '\r')) i--;
  return i >= sizeof(want) - 1 && memcmp(s->tail + i - (sizeof(want) - 1), want, sizeof(want) - 1) == 0;
}

static int on_message_complete(llhttp_t *p) {
  slot_t *s = p->data;
  load_t *l = s->load;
  uint64_t now = uv_hrtime();
  s->done = 1;
  s->busy = 0;
  l->inflight--;
  if (s->t_first) l->streaming--;
  if (s->status != 200) {
    l->non200++;
    l->failed++;
  } else if (!ends_with_done(s) || s->t_first == 0) {
    l->f_incomplete++;
    l->failed++;
  } else {
    l->ttfb[l->ok] = (s->t_first - s->t_start) / 1000;
    l->ttlb[l->ok] = (now - s->t_start) / 1000;
    l->events += s->events;
    if (l->ok == 0 || s->events < l->events_min) l->events_min = s->events;
    if (s->events > l->events_max) l->events_max = s->events;
    l->ok++;
  }
  return HPE_PAUSED; /* the slot decides what comes next, outside the parser */
}

/* ---- connection lifecycle ---- */

static void on_closed(uv_handle_t *h) {
  slot_t *s = h->data;
  s->open = 0;
  if (!s->load->stopping) slot_next(s);
}

static void slot_close(slot_t *s) {
  if (s->open && !uv_is_closing((uv_handle_t *)&s->tcp))
    uv_close((uv_handle_t *)&s->tcp, on_closed);
}

/* The in-flight request failed; `why` counts the cause. */
static void slot_fail(slot_t *s, uint64_t *why) {
  if (s->busy) {
    s->busy = 0;
    s->load->inflight--;
    if (s->t_first) s->load->streaming--;
    s->load->failed++;
    (*why)++;
  }
  slot_close(s);
}

static void on_write(uv_write_t *w, int status) {
  slot_t *s = w->data;
  s->writing = 0;
  if (status < 0) slot_fail(s, &s->load->f_io);
}

static void slot_send(slot_t *s) {
  load_t *l = s->load;
  uv_buf_t buf = uv_buf_init(l->request, (unsigned)l->request_len);
  s->write.data = s;
  s->writing = 1;
  if (uv_write(&s->write, (uv_stream_t *)&s->tcp, &buf, 1, on_write) != 0) {
    s->writing = 0;
    slot_fail(s, &l->f_io);
  }
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  slot_t *s = st->data;
  llhttp_errno_t e;
  if (nread == 0) return;
  if (nread < 0) { /* EOF or error: the server closed mid-response or while idle */
    if (s->busy && nread == UV_EOF && llhttp_message_needs_eof(&s->parser))
      llhttp_finish(&s->parser); /* a close-delimited body ends here */
    slot_fail(s, &s->load->f_io);
    return;
  }
  e = llhttp_execute(&s->parser, buf->base, (size_t)nread);
  if (e == HPE_PAUSED && s->done) {
    int keep = llhttp_should_keep_alive(&s->parser);
    llhttp_resume(&s->parser);
    if (keep && !s->writing && !s->load->stopping) slot_next(s);
    else slot_close(s);
    return;
  }
  if (e != HPE_OK) slot_fail(s, &s->load->f_parse);
}

static void on_connect(uv_connect_t *c, int status) {
  slot_t *s = c->data;
  if (status < 0 || uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read) != 0) {
    slot_fail(s, &s->load->f_connect);
    return;
  }
  slot_send(s);
}

static void slot_start_request(slot_t *s) {
  load_t *l = s->load;
  l->started++;
  l->inflight++;
  if (l->inflight > l->peak_inflight) l->peak_inflight = l->inflight;
  s->busy = 1;
  s->done = 0;
  s->status = 0;
  s->t_first = 0;
  s->t_start = uv_hrtime();
}

/* Starts the next stream on this slot: on its open connection or a new one. */
static void slot_next(slot_t *s) {
  load_t *l = s->load;
  if (l->stopping || l->started >= l->total) {
    slot_close(s);
    return;
  }
  slot_start_request(s);
  if (s->open) {
    slot_send(s);
    return;
  }
  uv_tcp_init(l->loop, &s->tcp);
  uv_tcp_nodelay(&s->tcp, 1);
  s->tcp.data = s;
  s->open = 1;
  llhttp_init(&s->parser, HTTP_RESPONSE, &l->settings);
  s->parser.data = s;
  s->connect.data = s;
  if (uv_tcp_connect(&s->connect, &s->tcp, (const struct sockaddr *)&l->addr, on_connect) != 0)
    slot_fail(s, &l->f_connect);
}

static void on_deadline(uv_timer_t *t) {
  load_t *l = t->data;
  unsigned i;
  l->stopping = 1;
  for (i = 0; i < l->conc; i++) slot_fail(&l->slots[i], &l->f_timeout);
}

/* ---- setup and report ---- */

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array. */
static uint64_t pct(const uint64_t *v, uint64_t n, double p) {
  uint64_t rank;
  if (n == 0) return 0;
  rank = (uint64_t)(p / 100.0 * (double)n + 0.999999);
  if (rank < 1) rank = 1;
  return v[(rank > n ? n : rank) - 1];
}

static void print_dist(const char *name, uint64_t *v, uint64_t n) {
  uint64_t i, sum = 0;
  qsort(v, n, sizeof(*v), cmp_u64);
  for (i = 0; i < n; i++) sum += v[i];
  printf("\"%s\":{\"p50\":%" PRIu64 ",\"p90\":%" PRIu64 ",\"p99\":%" PRIu64 ",\"max\":%" PRIu64
         ",\"mean\":%" PRIu64 "}",
         name, pct(v, n, 50), pct(v, n, 90), pct(v, n, 99), n ? v[n - 1] : 0, n ? sum / n : 0);
}

static void report(load_t *l) {
  double elapsed = (double)(uv_hrtime() - l->t0) / 1e9;
  printf("{\"requests\":%" PRIu64 ",\"ok\":%" PRIu64 ",\"failed\":%" PRIu64 ",\"non_200\":%" PRIu64
         ",\"not_started\":%" PRIu64 ",\"peak_inflight\":%" PRIu64 ",\"peak_streaming\":%" PRIu64
         ",\"sse_events\":%" PRIu64 ",\"sse_events_min\":%" PRIu64 ",\"sse_events_max\":%" PRIu64
         ",\"body_bytes\":%" PRIu64
         ",\"elapsed_s\":%.3f,\"failures\":{\"non_200\":%" PRIu64 ",\"connect\":%" PRIu64
         ",\"io\":%" PRIu64 ",\"parse\":%" PRIu64 ",\"incomplete\":%" PRIu64 ",\"timeout\":%" PRIu64
         "},",
         l->total, l->ok, l->failed, l->non200, l->total - l->started, l->peak_inflight,
         l->peak_streaming, l->events, l->events_min, l->events_max, l->bytes,
         elapsed, l->non200, l->f_connect, l->f_io, l->f_parse, l->f_incomplete, l->f_timeout);
  print_dist("ttfb_us", l->ttfb, l->ok);
  printf(",");
  print_dist("ttlb_us", l->ttlb, l->ok);
  printf("}\n");
}

typedef struct opts_s {
  const char *url, *model;
  const char *headers[32];
  unsigned nheaders, conc;
  uint64_t total, body_bytes, timeout_ms;
} opts_t;

static int usage(void) {
  fprintf(stderr, "usage: streamload --url http://HOST:PORT/PATH [-c N] [-n N] [-H 'K: V']...\n"
                  "                  [--model M] [--body-bytes N] [--timeout-ms T]\n");
  return 2;
}

static int parse_opts(opts_t *o, int argc, char **argv) {
  int i;
  for (i = 1; i + 1 < argc; i += 2) {
    const char *f = argv[i], *v = argv[i + 1];
    if (strcmp(f, "--url") == 0) o->url = v;
    else if (strcmp(f, "--model") == 0) o->model = v;
    else if (strcmp(f, "-c") == 0) o->conc = (unsigned)strtoul(v, NULL, 10);
    else if (strcmp(f, "-n") == 0) o->total = strtoull(v, NULL, 10);
    else if (strcmp(f, "--body-bytes") == 0) o->body_bytes = strtoull(v, NULL, 10);
    else if (strcmp(f, "--timeout-ms") == 0) o->timeout_ms = strtoull(v, NULL, 10);
    else if (strcmp(f, "-H") == 0 && o->nheaders < 32) o->headers[o->nheaders++] = v;
    else return -1;
  }
  if (i != argc || o->url == NULL || o->conc == 0 || o->total == 0) return -1;
  if (o->body_bytes > (64u << 20)) return -1;
  return 0;
}

/* http://HOST:PORT/PATH with a numeric IPv4 host or "localhost". */
static int parse_url(const char *url, struct sockaddr_in *addr, char *host, size_t hcap,
                     const char **path) {
  const char *h = url + 7, *colon, *slash;
  char ip[64];
  size_t n;
  if (strncmp(url, "http://", 7) != 0) return -1;
  slash = strchr(h, '/');
  colon = strchr(h, ':');
  if (slash == NULL || colon == NULL || colon > slash) return -1;
  n = (size_t)(colon - h);
  if (n == 0 || n >= sizeof(ip) || (size_t)(slash - h) >= hcap) return -1;
  memcpy(ip, h, n);
  ip[n] = '\0';
  memcpy(host, h, (size_t)(slash - h));
  host[slash - h] = '\0';
  if (strcmp(ip, "localhost") == 0) snprintf(ip, sizeof(ip), "127.0.0.1");
  *path = slash;
  return uv_ip4_addr(ip, atoi(colon + 1), addr) == 0 ? 0 : -1;
}

/* The one request every stream sends, padded with 'x' in the message to
 * --body-bytes; returns malloc'd bytes (caller frees) or NULL. */
static char *build_request(const opts_t *o, const char *host, const char *path, size_t *len) {
  static const char post[] = "\"}]}";
  char pre[256];
  size_t npre, body_len, cap, i;
  char *r, *p;
  npre = (size_t)snprintf(pre, sizeof(pre), "{\"model\":\"%s\",\"stream\":true,\"messages\":"
                          "[{\"role\":\"user\",\"content\":\"", o->model);
  if (npre >= sizeof(pre)) return NULL;
  body_len = npre + 2 + (sizeof(post) - 1);
  if (o->body_bytes > body_len) body_len = o->body_bytes;
  cap = 512 + strlen(path) + strlen(host) + body_len;
  for (i = 0; i < o->nheaders; i++) cap += strlen(o->headers[i]) + 2;
  if ((r = malloc(cap)) == NULL) return NULL;
  p = r + sprintf(r, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                  "Accept: text/event-stream\r\nContent-Length: %zu\r\n", path, host, body_len);
  for (i = 0; i < o->nheaders; i++) p += sprintf(p, "%s\r\n", o->headers[i]);
  p += sprintf(p, "\r\n");
  memcpy(p, pre, npre);
  p += npre;
  memset(p, 'x', body_len - npre - (sizeof(post) - 1));
  p += body_len - npre - (sizeof(post) - 1);
  memcpy(p, post, sizeof(post) - 1);
  p += sizeof(post) - 1;
  *len = (size_t)(p - r);
  return r;
}

static void raise_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

static void on_walk_close(uv_handle_t *h, void *arg) {
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

int main(int argc, char **argv) {
  opts_t o = {NULL, "bench-model", {NULL}, 0, 1, 1, 1024, 60000};
  static load_t l;
  char host[256];
  const char *path;
  unsigned i;
  int rc = 1;
  if (parse_opts(&o, argc, argv) != 0) return usage();
  if (parse_url(o.url, &l.addr, host, sizeof(host), &path) != 0) {
    fprintf(stderr, "streamload: bad --url %s\n", o.url);
    return 2;
  }
  raise_fd_limit();
  l.loop = uv_default_loop();
  l.conc = o.conc;
  l.total = o.total;
  llhttp_settings_init(&l.settings);
  l.settings.on_message_begin = on_message_begin;
  l.settings.on_headers_complete = on_headers_complete;
  l.settings.on_body = on_body;
  l.settings.on_message_complete = on_message_complete;
  l.request = build_request(&o, host, path, &l.request_len);
  l.slots = calloc(o.conc, sizeof(*l.slots));
  l.ttfb = malloc(o.total * sizeof(uint64_t));
  l.ttlb = malloc(o.total * sizeof(uint64_t));
  if (l.request == NULL || l.slots == NULL || l.ttfb == NULL || l.ttlb == NULL) goto fail;
  uv_timer_init(l.loop, &l.deadline);
  l.deadline.data = &l;
  uv_timer_start(&l.deadline, on_deadline, o.timeout_ms, 0);
  uv_unref((uv_handle_t *)&l.deadline); /* the run ends when the streams do */
  l.t0 = uv_hrtime();
  for (i = 0; i < o.conc; i++) {
    l.slots[i].load = &l;
    slot_next(&l.slots[i]);
  }
  uv_run(l.loop, UV_RUN_DEFAULT);
  report(&l);
  uv_walk(l.loop, on_walk_close, NULL);
  uv_run(l.loop, UV_RUN_DEFAULT);
  rc = uv_loop_close(l.loop) == 0 ? 0 : 1;
fail:
  free(l.request);
  free(l.slots);
  free(l.ttfb);
  free(l.ttlb);
  return rc;
}
