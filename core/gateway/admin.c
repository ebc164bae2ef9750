/* The operator's endpoints: who may call them, and what they answer
 * (see admin.h). */
#include "gateway/admin.h"

#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "base/log.h"
#include "base/util.h"
#include "tenant/tenant.h"

#define JSON_CT LLMUX_HTTP_HEADER_LIT("Content-Type", "application/json")

int llmux_admin_path(llmux_str_t path) {
  return path.len >= 6 && memcmp(path.base, "/admin", 6) == 0 &&
         (path.len == 6 || path.base[6] == '/');
}

static int path_is(llmux_str_t path, const char *lit) {
  size_t n = strlen(lit);
  return path.len == n && memcmp(path.base, lit, n) == 0;
}

static void send_json(llmux_http_req_t *req, int status, llmux_buf_t *body, const char *rid) {
  llmux_http_header_t h[3] = {JSON_CT, LLMUX_HTTP_HEADER_LIT("x-request-id", ""),
                              LLMUX_HTTP_HEADER_LIT("WWW-Authenticate", "Bearer")};
  h[1].value = (llmux_str_t){rid, strlen(rid)};
  llmux_http_respond_buf(req, status, h, status == 401 ? 3 : 2, body);
}

static void send_error(llmux_http_req_t *req, int status, const char *code, const char *msg,
                       const char *rid) {
  llmux_buf_t body = {0};
  llmux_http_error_json(&body, status == 503 ? "server_error" : "invalid_request_error", code,
                        msg, NULL);
  send_json(req, status, &body, rid);
}

/* ---- access ---------------------------------------------------------------- */

int llmux_admin_peer_is_loopback(const struct sockaddr_storage *peer) {
  static const unsigned char lo6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (peer->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)peer;
    return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
  }
  if (peer->ss_family == AF_INET6) {
    const unsigned char *b = ((const struct sockaddr_in6 *)peer)->sin6_addr.s6_addr;
    return memcmp(b, lo6, 16) == 0 || (memcmp(b, mapped, 12) == 0 && b[12] == 127);
  }
  return 0;
}

/* `Authorization: Bearer KEY` only: an admin key is not a tenant's, and is
 * not taken from x-api-key. */
static llmux_str_t bearer(const llmux_http_req_t *req) {
  const llmux_str_t *v = llmux_http_header(req, "authorization");
  llmux_str_t k = {NULL, 0};
  if (v == NULL || v->len <= 7 || strncasecmp(v->base, "Bearer ", 7) != 0) return k;
  k.base = v->base + 7;
  k.len = v->len - 7;
  while (k.len > 0 && *k.base == ' ') { k.base++; k.len--; }
  return k;
}

/* Every listed digest is compared, each in constant time. */
static int key_listed(const llmux_server_conf_t *s, llmux_str_t key) {
  unsigned char h[LLMUX_KEY_HASH_LEN];
  size_t i;
  int found = 0;
  llmux_key_sha256(key.base, key.len, h);
  for (i = 0; i < s->nadmin_keys; i++) found |= llmux_key_hash_equal(s->admin_key_hashes[i], h);
  memset(h, 0, sizeof h);
  return found;
}

int llmux_admin_allow(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid) {
  const llmux_server_conf_t *s = &gw->cfg->server;
  struct sockaddr_storage peer;
  llmux_str_t key;
  if (s->nadmin_keys == 0) {
    if (llmux_http_req_peer(req, &peer) == 0 && llmux_admin_peer_is_loopback(&peer)) return 1;
    send_error(req, 403, "admin_loopback_only",
               "The admin endpoints answer only on loopback when no [server] "
               "admin_key_sha256 is configured.", rid);
    return 0;
  }
  key = bearer(req);
  if (key.len > 0 && key_listed(s, key)) return 1;
  send_error(req, 401, "invalid_admin_key",
             key.len ? "Incorrect admin key provided."
                     : "The admin endpoints need 'Authorization: Bearer KEY' with an admin "
                       "key ([server] admin_key_sha256).",
             rid);
  return 0;
}

/* ---- answers --------------------------------------------------------------- */

static void rfc3339(int64_t unix_ms, char out[32]) {
  time_t secs = (time_t)(unix_ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  strftime(out, 24, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + strlen(out), 8, ".%03dZ", (int)(unix_ms % 1000));
}

/* {"generation","loaded_at","files":[...] without the closing brace. */
static void config_json(const llmux_generation_t *gen, llmux_buf_t *b) {
  const llmux_config_t *cfg = gen->cfg;
  char when[32], hex[2 * LLMUX_KEY_HASH_LEN + 1];
  size_t i;
  rfc3339(gen->loaded_at_ms, when);
  llmux_buf_printf(b, "{\"generation\":%llu,\"loaded_at\":\"%s\",\"files\":[",
                   (unsigned long long)gen->number, when);
  for (i = 0; i < cfg->nfiles; i++) {
    llmux_buf_appends(b, i ? ",{\"path\":" : "{\"path\":");
    llmux_buf_append_json_str(b, cfg->files[i], strlen(cfg->files[i]));
    llmux_key_hex(cfg->file_sha256[i], hex);
    llmux_buf_printf(b, ",\"sha256\":\"%s\"}", hex);
  }
  llmux_buf_appends(b, "]");
}

/* ,"KEY":["file:line: message",...] for the entries of one severity. */
static void diag_lines(llmux_buf_t *b, const char *key, const llmux_diag_t *d, int severity) {
  llmux_buf_t line = {0};
  size_t i, n = 0;
  llmux_buf_printf(b, ",\"%s\":[", key);
  for (i = 0; i < d->len; i++) {
    if (d->items[i].severity != severity) continue;
    line.len = 0;
    llmux_diag_format(&d->items[i], &line);
    if (n++) llmux_buf_appends(b, ",");
    llmux_buf_append_json_str(b, line.base, line.len);
  }
  llmux_buf_appends(b, "]");
  llmux_buf_free(&line);
}

static void handle_config(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid) {
  llmux_buf_t b = {0};
  config_json(gw->current, &b);
  llmux_buf_appends(&b, "}");
  send_json(req, 200, &b, rid);
}

static void reload_failed(llmux_http_req_t *req, const llmux_diag_t *d, const char *rid) {
  llmux_buf_t b = {0};
  llmux_http_error_json(&b, "invalid_request_error", "invalid_config",
                        "configuration has errors", NULL);
  b.len--; /* reopen the object for the lines */
  diag_lines(&b, "errors", d, LLMUX_DIAG_ERROR);
  diag_lines(&b, "warnings", d, LLMUX_DIAG_WARNING);
  llmux_buf_appends(&b, "}");
  send_json(req, 400, &b, rid);
}

static void handle_reload(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid) {
  llmux_diag_t diag;
  llmux_buf_t b = {0};
  int rc;
  llmux_info("%s: POST /admin/reload: reloading %s", rid,
             gw->config_path ? gw->config_path : "(no files)");
  llmux_diag_init(&diag);
  rc = llmux_gateway_reload(gw, &diag);
  if (rc == LLMUX_ECONFIG) {
    reload_failed(req, &diag, rid);
  } else if (rc != 0) {
    send_error(req, 503, "reload_unavailable",
               gw->config_path ? "The gateway is stopping: nothing is reloaded."
                               : "This gateway serves a configuration it was handed, not "
                                 "files: there is nothing to reload.", rid);
  } else {
    config_json(gw->current, &b);
    diag_lines(&b, "warnings", &diag, LLMUX_DIAG_WARNING);
    llmux_buf_appends(&b, "}");
    send_json(req, 200, &b, rid);
    if (gw->on_admin_reload != NULL) gw->on_admin_reload(gw); /* the other workers */
  }
  llmux_diag_free(&diag);
}

/* ---- GET /admin/routes ---------------------------------------------------- */

/* One instant on both clocks: the loop's, which the router and the limit
 * store count in, and the wall clock the answer speaks in. */
typedef struct clocks_s {
  uint64_t now_ms;
  int64_t wall_ms;
} clocks_t;

static const char *const dim_names[LLMUX_RL_NDIMS] = {
  [LLMUX_RL_REQ_MINUTE] = "requests_minute", [LLMUX_RL_REQ_DAY] = "requests_day",
  [LLMUX_RL_TOK_MINUTE] = "tokens_minute", [LLMUX_RL_TOK_DAY] = "tokens_day",
};

/* ,"KEY":"T" for a time `in_ms` from now, or ,"KEY":null. */
static void time_field(llmux_buf_t *b, const char *key, int have, uint64_t in_ms,
                       const clocks_t *c) {
  char when[32];
  if (!have) {
    llmux_buf_printf(b, ",\"%s\":null", key);
    return;
  }
  rfc3339(c->wall_ms + (int64_t)in_ms, when);
  llmux_buf_printf(b, ",\"%s\":\"%s\"", key, when);
}

static const char *breaker_name(llmux_breaker_state_t st) {
  return st == LLMUX_BREAKER_OPEN ? "open" : st == LLMUX_BREAKER_HALF_OPEN ? "half_open"
                                                                            : "closed";
}

static void breaker_json(llmux_buf_t *b, const llmux_route_stats_t *st, const clocks_t *c) {
  int open = st->state == LLMUX_BREAKER_OPEN && st->until_ms > c->now_ms;
  llmux_buf_printf(b, ",\"breaker\":{\"state\":\"%s\"", breaker_name(st->state));
  time_field(b, "until", open, open ? st->until_ms - c->now_ms : 0, c);
  llmux_buf_printf(b, ",\"failures\":%u}", st->recent_failures);
}

static void remaining_json(llmux_buf_t *b, llmux_rl_store_t *rl, const llmux_rl_key_t *key,
                           const clocks_t *c) {
  llmux_rl_left_t left[LLMUX_RL_NDIMS];
  int d;
  if (llmux_rl_left(rl, key, c->now_ms, left) != 0) memset(left, 0, sizeof left);
  llmux_buf_appends(b, ",\"remaining\":{");
  for (d = 0; d < LLMUX_RL_NDIMS; d++) {
    llmux_buf_printf(b, "%s\"%s\":", d ? "," : "", dim_names[d]);
    if (!left[d].limited) {
      llmux_buf_appends(b, "null");
      continue;
    }
    llmux_buf_printf(b, "{\"remaining\":%llu,\"limit\":", (unsigned long long)left[d].remaining);
    if (left[d].limit) llmux_buf_printf(b, "%llu", (unsigned long long)left[d].limit);
    else llmux_buf_appends(b, "null");
    time_field(b, "reset", left[d].reset_in_ms > 0, left[d].reset_in_ms, c);
    llmux_buf_appends(b, "}");
  }
  llmux_buf_appends(b, "}");
}

/* The longer rest of the route's key and its provider's; a spend limit
 * names the reason over a retry-after. */
static void blocked_json(llmux_buf_t *b, llmux_rl_store_t *rl, const llmux_rl_key_t *key,
                         const clocks_t *c) {
  llmux_rl_key_t keys[2] = {*key, {key->provider, NULL}};
  llmux_rl_snapshot_t snap;
  llmux_rl_block_reason_t reason = LLMUX_RL_BLOCK_NONE;
  uint64_t for_ms = 0;
  int i;
  for (i = 0; i < 2; i++) {
    if (llmux_rl_snapshot(rl, &keys[i], c->now_ms, &snap) != 0) continue;
    if (snap.block_reason == LLMUX_RL_BLOCK_NONE) continue;
    if (snap.blocked_for_ms > for_ms) for_ms = snap.blocked_for_ms;
    if (snap.block_reason == LLMUX_RL_BLOCK_SPEND_LIMIT || reason == LLMUX_RL_BLOCK_NONE)
      reason = snap.block_reason;
  }
  if (reason == LLMUX_RL_BLOCK_NONE) {
    llmux_buf_appends(b, ",\"blocked\":null");
    return;
  }
  llmux_buf_printf(b, ",\"blocked\":{\"reason\":\"%s\"",
                   reason == LLMUX_RL_BLOCK_SPEND_LIMIT ? "spend_limit" : "retry_after");
  time_field(b, "until", for_ms != LLMUX_RL_FOREVER, for_ms, c);
  llmux_buf_appends(b, "}");
}

/* ,"in_flight","latency_ms","last_error" */
static void observed_json(llmux_buf_t *b, const llmux_route_stats_t *st) {
  char when[32];
  llmux_buf_printf(b, ",\"in_flight\":%u,\"latency_ms\":", st->inflight);
  if (st->observed) llmux_buf_printf(b, "%.1f", st->latency_ms);
  else llmux_buf_appends(b, "null");
  if (st->last_error[0] == '\0') {
    llmux_buf_appends(b, ",\"last_error\":null");
    return;
  }
  llmux_buf_appends(b, ",\"last_error\":{\"message\":");
  llmux_buf_append_json_str(b, st->last_error, strlen(st->last_error));
  rfc3339(st->last_error_ms, when);
  llmux_buf_printf(b, ",\"at\":\"%s\"}", when);
}

static void route_json(llmux_buf_t *b, const llmux_generation_t *gen, const llmux_route_conf_t *r,
                       llmux_rl_store_t *rl, const clocks_t *c) {
  llmux_rl_key_t key = {r->provider->name, r->id};
  llmux_route_stats_t st;
  const char *why = r->provider->disabled_reason;
  llmux_router_stats(gen->router, r->index, c->now_ms, &st);
  llmux_buf_appends(b, "{\"provider\":");
  llmux_buf_append_json_str(b, r->provider->name, strlen(r->provider->name));
  llmux_buf_appends(b, ",\"model\":");
  llmux_buf_append_json_str(b, r->model->id, strlen(r->model->id));
  llmux_buf_appends(b, ",\"provider_model\":");
  llmux_buf_append_json_str(b, r->id, strlen(r->id));
  llmux_buf_printf(b, ",\"enabled\":%s,\"disabled_reason\":",
                   r->provider->enabled ? "true" : "false");
  if (r->provider->enabled || why == NULL) llmux_buf_appends(b, "null");
  else llmux_buf_append_json_str(b, why, strlen(why));
  breaker_json(b, &st, c);
  remaining_json(b, rl, &key, c);
  blocked_json(b, rl, &key, c);
  observed_json(b, &st);
  llmux_buf_appends(b, "}");
}

void llmux_admin_routes_json(const llmux_generation_t *gen, llmux_rl_store_t *rl,
                             uint64_t now_ms, int64_t wall_ms, llmux_buf_t *out) {
  const llmux_config_t *cfg = gen->cfg;
  clocks_t c = {now_ms, wall_ms};
  char now[32];
  size_t i;
  rfc3339(wall_ms, now);
  llmux_buf_printf(out, "{\"generation\":%llu,\"now\":\"%s\",\"routes\":[",
                   (unsigned long long)gen->number, now);
  for (i = 0; i < cfg->nroutes; i++) {
    if (i) llmux_buf_appends(out, ",");
    route_json(out, gen, cfg->routes[i], rl, &c);
  }
  llmux_buf_appends(out, "]}");
}

static void handle_routes(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid) {
  struct timespec ts;
  llmux_buf_t b = {0};
  clock_gettime(CLOCK_REALTIME, &ts);
  llmux_admin_routes_json(gw->current, gw->rl, uv_now(gw->loop),
                          (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, &b);
  send_json(req, 200, &b, rid);
}

static void method_not_allowed(llmux_http_req_t *req, const char *allow) {
  llmux_http_header_t h[2] = {JSON_CT, LLMUX_HTTP_HEADER_LIT("Allow", "")};
  llmux_buf_t body = {0};
  h[1].value = (llmux_str_t){allow, strlen(allow)};
  llmux_http_error_json(&body, "invalid_request_error", "method_not_allowed",
                        "Method not allowed on this admin endpoint.", NULL);
  llmux_http_respond_buf(req, 405, h, 2, &body);
}

void llmux_admin_handle(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid) {
  int get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
  if (!llmux_admin_allow(gw, req, rid)) return;
  if (path_is(req->path, "/admin/config")) {
    if (!get) return method_not_allowed(req, "GET, HEAD");
    return handle_config(gw, req, rid);
  }
  if (path_is(req->path, "/admin/reload")) {
    if (strcmp(req->method, "POST") != 0) return method_not_allowed(req, "POST");
    return handle_reload(gw, req, rid);
  }
  if (path_is(req->path, "/admin/routes")) {
    if (!get) return method_not_allowed(req, "GET, HEAD");
    return handle_routes(gw, req, rid);
  }
  send_error(req, 404, "unknown_url",
             "Unknown admin endpoint: GET /admin/config, POST /admin/reload, "
             "GET /admin/routes.", rid);
}
