/* OTLP/HTTP JSON span export and W3C traceparent. */
#include "gateway/otlp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "plugin/providers.h"

/* ---- traceparent ---------------------------------------------------------- */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1; /* upper case is invalid in traceparent */
}

static int read_hex(const char *s, uint8_t *out, size_t nbytes) {
  size_t i;
  int nonzero = 0;
  for (i = 0; i < nbytes; i++) {
    int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return -1;
    out[i] = (uint8_t)(hi << 4 | lo);
    nonzero |= out[i];
  }
  return nonzero ? 0 : -1;
}

int llmux_traceparent_parse(const char *s, size_t n, llmux_trace_ctx_t *out) {
  int vh, vl, fh, fl;
  /* version "-" trace-id "-" parent-id "-" flags; version ff is invalid, 00
   * has exactly this length, a later version may append "-..." */
  if (n < 55 || s[2] != '-' || s[35] != '-' || s[52] != '-') return LLMUX_EINVAL;
  vh = hexval(s[0]), vl = hexval(s[1]), fh = hexval(s[53]), fl = hexval(s[54]);
  if (vh < 0 || vl < 0 || fh < 0 || fl < 0 || (vh == 15 && vl == 15)) return LLMUX_EINVAL;
  if (vh == 0 && vl == 0 ? n != 55 : (n > 55 && s[55] != '-')) return LLMUX_EINVAL;
  if (read_hex(s + 3, out->trace_id, 16) != 0) return LLMUX_EINVAL;
  if (read_hex(s + 36, out->span_id, 8) != 0) return LLMUX_EINVAL;
  out->flags = (uint8_t)(fh << 4 | fl);
  return 0;
}

static void put_hex(char *out, const uint8_t *b, size_t n) {
  static const char d[] = "0123456789abcdef";
  size_t i;
  for (i = 0; i < n; i++) {
    out[2 * i] = d[b[i] >> 4];
    out[2 * i + 1] = d[b[i] & 15];
  }
}

void llmux_traceparent_format(const uint8_t trace_id[16], const uint8_t span_id[8],
                              uint8_t flags, char *out) {
  memcpy(out, "00-", 3);
  put_hex(out + 3, trace_id, 16);
  out[35] = '-';
  put_hex(out + 36, span_id, 8);
  out[52] = '-';
  put_hex(out + 53, &flags, 1);
  out[55] = '\0';
}

/* ---- encoding ------------------------------------------------------------- */

static int append_hex_field(llmux_buf_t *b, const char *key, const uint8_t *v, size_t n) {
  char hex[33];
  put_hex(hex, v, n);
  hex[2 * n] = '\0';
  return llmux_buf_printf(b, ",\"%s\":\"%s\"", key, hex);
}

static int append_str(llmux_buf_t *b, const char *s) {
  return llmux_buf_append_json_str(b, s ? s : "", s ? strlen(s) : 0);
}

static int append_value(llmux_buf_t *b, const llmux_span_attr_t *a) {
  int rc = 0;
  size_t i;
  const char *item;
  switch (a->type) {
  case LLMUX_ATTR_INT: /* int64 is a JSON string in OTLP's JSON mapping */
    return llmux_buf_printf(b, "{\"intValue\":\"%lld\"}", (long long)a->i);
  case LLMUX_ATTR_DOUBLE:
    return llmux_buf_printf(b, "{\"doubleValue\":%.17g}", a->d);
  case LLMUX_ATTR_STR_ARRAY:
    rc |= llmux_buf_appends(b, "{\"arrayValue\":{\"values\":[");
    for (i = 0, item = a->s; i < a->n; i++, item += strlen(item) + 1) {
      rc |= llmux_buf_appends(b, i ? ",{\"stringValue\":" : "{\"stringValue\":");
      rc |= append_str(b, item);
      rc |= llmux_buf_appends(b, "}");
    }
    return rc | llmux_buf_appends(b, "]}}");
  default:
    rc |= llmux_buf_appends(b, "{\"stringValue\":");
    rc |= append_str(b, a->s);
    return rc | llmux_buf_appends(b, "}");
  }
}

int llmux_otlp_encode_span(llmux_buf_t *b, const llmux_span_t *sp) {
  int rc = 0;
  size_t i;
  rc |= llmux_buf_appends(b, "{\"name\":");
  rc |= append_str(b, sp->name);
  rc |= append_hex_field(b, "traceId", sp->trace_id, 16);
  rc |= append_hex_field(b, "spanId", sp->span_id, 8);
  if (sp->has_parent) rc |= append_hex_field(b, "parentSpanId", sp->parent_id, 8);
  rc |= llmux_buf_printf(b, ",\"kind\":%d,\"startTimeUnixNano\":\"%llu\",\"endTimeUnixNano\":\"%llu\"",
                         sp->kind, (unsigned long long)sp->start_ns,
                         (unsigned long long)sp->end_ns);
  rc |= llmux_buf_appends(b, ",\"attributes\":[");
  for (i = 0; i < sp->nattrs; i++) {
    rc |= llmux_buf_appends(b, i ? ",{\"key\":" : "{\"key\":");
    rc |= append_str(b, sp->attrs[i].key);
    rc |= llmux_buf_appends(b, ",\"value\":");
    rc |= append_value(b, &sp->attrs[i]);
    rc |= llmux_buf_appends(b, "}");
  }
  rc |= llmux_buf_appends(b, "],\"status\":{");
  if (sp->error) {
    rc |= llmux_buf_appends(b, "\"code\":2");
    if (sp->status_message) {
      rc |= llmux_buf_appends(b, ",\"message\":");
      rc |= append_str(b, sp->status_message);
    }
  }
  rc |= llmux_buf_appends(b, "}}");
  return rc ? LLMUX_ENOMEM : 0;
}

/* ---- the exporter --------------------------------------------------------- */

struct llmux_otlp_s {
  uv_loop_t *loop;
  llmux_upstream_t *up;
  uv_timer_t timer;
  llmux_upstream_req_t req;
  int https;
  char *host, *path;
  int port;
  llmux_tls_ctx_t *tls_ctx;
  char *version;
  llmux_buf_t pending;   /* span objects joined by ',' */
  size_t npending;
  llmux_buf_t body;      /* the batch being sent */
  size_t nsending;
  uv_buf_t bodybuf;
  size_t batch_bytes, max_bytes;
  uint64_t flush_ms;
  int sending, closing, timer_armed;
  void (*close_cb)(void *arg);
  void *close_arg;
  llmux_otlp_stats_t stats;
};

static void on_timer(uv_timer_t *t);

int llmux_otlp_new(uv_loop_t *loop, llmux_upstream_t *up, const llmux_otlp_options_t *opts,
                   llmux_otlp_t **out) {
  llmux_otlp_t *o = calloc(1, sizeof(*o));
  char *base = NULL;
  llmux_buf_t path = {0};
  if (o == NULL) return LLMUX_ENOMEM;
  if (opts == NULL || opts->endpoint == NULL ||
      llmux_url_parse(opts->endpoint, &o->https, &o->host, &o->port, &base) != 0 ||
      (o->https && opts->tls_ctx == NULL)) {
    free(o->host);
    free(base);
    free(o);
    return LLMUX_EINVAL;
  }
  /* The collector's base URL, then the signal's path (OTLP/HTTP). */
  llmux_buf_printf(&path, "%s/v1/traces", base ? base : "");
  free(base);
  o->path = path.base;
  o->loop = loop;
  o->up = up;
  o->tls_ctx = opts->tls_ctx;
  o->version = llmux_xstrdup(opts->service_version ? opts->service_version : "");
  o->batch_bytes = opts->batch_bytes ? opts->batch_bytes : 256 * 1024;
  o->flush_ms = opts->flush_ms ? opts->flush_ms : 1000;
  o->max_bytes = opts->max_bytes ? opts->max_bytes : 4u << 20;
  uv_timer_init(loop, &o->timer);
  o->timer.data = o;
  *out = o;
  return 0;
}

static void on_closed(uv_handle_t *h) {
  llmux_otlp_t *o = h->data;
  void (*cb)(void *) = o->close_cb;
  void *arg = o->close_arg;
  llmux_buf_free(&o->pending);
  llmux_buf_free(&o->body);
  free(o->host);
  free(o->path);
  free(o->version);
  free(o);
  if (cb) cb(arg);
}

static void send_batch(llmux_otlp_t *o);

static void on_export_done(llmux_upstream_req_t *req, int status) {
  llmux_otlp_t *o = req->data;
  o->sending = 0;
  if (status >= 200 && status < 300) {
    o->stats.exports_ok++;
    o->stats.spans_sent += o->nsending;
  } else {
    /* A failed batch is dropped, not retried: tracing is best effort and a
     * collector that is down must not grow memory. Said once per failure. */
    o->stats.exports_failed++;
    o->stats.spans_dropped += o->nsending;
    llmux_warn("otlp: export of %zu spans failed: %s", o->nsending,
               status < 0 ? req->error : "collector answered an error status");
  }
  o->nsending = 0;
  o->body.len = 0;
  if (o->pending.len >= o->batch_bytes || o->closing) {
    send_batch(o);
  } else if (o->npending > 0 && !o->timer_armed) {
    /* The flush timer fired during this export: the spans added meanwhile
     * wait one more period, not for the next span to arm it. */
    o->timer_armed = 1;
    uv_timer_start(&o->timer, on_timer, o->flush_ms, 0);
  }
  /* Closing: what was pending went (or failed to start); the timer, the
   * close deadline, goes with the exporter. */
  if (o->closing && !o->sending) uv_close((uv_handle_t *)&o->timer, on_closed);
}

static void on_export_body(llmux_upstream_req_t *req, const char *d, size_t n) {}

static void send_batch(llmux_otlp_t *o) {
  static const char head[] = "Content-Type: application/json\r\n";
  int rc = 0;
  if (o->sending || o->npending == 0) return;
  o->body.len = 0;
  rc |= llmux_buf_appends(&o->body, "{\"resourceSpans\":[{\"resource\":{\"attributes\":["
                                    "{\"key\":\"service.name\",\"value\":{\"stringValue\":\"llmux\"}},"
                                    "{\"key\":\"service.version\",\"value\":{\"stringValue\":");
  rc |= append_str(&o->body, o->version);
  rc |= llmux_buf_appends(&o->body, "}}]},\"scopeSpans\":[{\"scope\":{\"name\":\"llmux\"},\"spans\":[");
  rc |= llmux_buf_append(&o->body, o->pending.base, o->pending.len);
  rc |= llmux_buf_appends(&o->body, "]}]}]}");
  o->nsending = o->npending;
  o->pending.len = 0;
  o->npending = 0;
  if (rc != 0) goto dropped;
  llmux_upstream_req_init(&o->req);
  o->req.data = o;
  o->req.https = o->https;
  o->req.host = o->host;
  o->req.port = (uint16_t)o->port;
  o->req.tls_ctx = o->tls_ctx;
  o->req.method = "POST";
  o->req.path = o->path;
  o->req.headers = head;
  o->req.headers_len = sizeof head - 1;
  o->bodybuf = uv_buf_init(o->body.base, (unsigned)o->body.len);
  o->req.body = &o->bodybuf;
  o->req.nbody = 1;
  o->req.connect_timeout_ms = 5000;
  o->req.total_timeout_ms = 10000;
  o->req.on_body = on_export_body;
  o->req.on_done = on_export_done;
  o->sending = 1;
  if (llmux_upstream_start(o->up, &o->req) == 0) return;
  o->sending = 0;
  llmux_warn("otlp: cannot start an export: %s", o->req.error);
dropped:
  o->stats.exports_failed++;
  o->stats.spans_dropped += o->nsending;
  o->nsending = 0;
}

static void on_timer(uv_timer_t *t) {
  llmux_otlp_t *o = t->data;
  o->timer_armed = 0;
  send_batch(o);
}

void llmux_otlp_add_span(llmux_otlp_t *o, const llmux_span_t *span) {
  size_t before = o->pending.len;
  if (o->closing) return;
  if (o->pending.len + o->body.len > o->max_bytes) {
    o->stats.spans_dropped++;
    return;
  }
  if ((o->npending && llmux_buf_appends(&o->pending, ",") != 0) ||
      llmux_otlp_encode_span(&o->pending, span) != 0) {
    o->pending.len = before;
    o->stats.spans_dropped++;
    return;
  }
  o->npending++;
  if (o->pending.len >= o->batch_bytes) {
    send_batch(o);
  } else if (!o->timer_armed) {
    o->timer_armed = 1;
    uv_timer_start(&o->timer, on_timer, o->flush_ms, 0);
  }
}

/* A collector that does not answer must not hold the gateway's stop: the
 * last exports get this long, then are cancelled and their spans counted
 * as dropped. */
#define CLOSE_DEADLINE_MS 2000

static void on_close_deadline(uv_timer_t *t) {
  llmux_otlp_t *o = t->data;
  llmux_upstream_cancel(&o->req); /* no on_done follows */
  o->sending = 0;
  o->stats.exports_failed++;
  o->stats.spans_dropped += o->nsending + o->npending;
  llmux_warn("otlp: the collector did not take the last %zu spans within %d ms of the stop: "
             "dropped", o->nsending + o->npending, CLOSE_DEADLINE_MS);
  o->nsending = o->npending = 0;
  uv_close((uv_handle_t *)&o->timer, on_closed);
}

void llmux_otlp_close(llmux_otlp_t *o, void (*cb)(void *arg), void *arg) {
  o->closing = 1;
  o->close_cb = cb;
  o->close_arg = arg;
  uv_timer_stop(&o->timer);
  send_batch(o);
  if (!o->sending) {
    uv_close((uv_handle_t *)&o->timer, on_closed);
    return;
  }
  uv_timer_start(&o->timer, on_close_deadline, CLOSE_DEADLINE_MS, 0);
}

void llmux_otlp_stats(const llmux_otlp_t *o, llmux_otlp_stats_t *out) {
  *out = o->stats;
}
