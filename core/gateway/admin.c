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
  }
  llmux_diag_free(&diag);
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
  send_error(req, 404, "unknown_url",
             "Unknown admin endpoint: GET /admin/config, POST /admin/reload.", rid);
}
