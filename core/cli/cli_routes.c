/* `llmux routes [--url URL] [-c FILE]`: GET URL/admin/routes from a running
 * gateway and print it as a table. The request goes through the gateway's
 * own upstream client on a private loop that this command runs to the end
 * (a blocking wait is fine here: no other work shares the loop), so http
 * and https URLs, names and timeouts behave as they do for providers. */
#include "cli/cli_routes.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "base/util.h"
#include "cli/common.h"
#include "config/config.h"
#include "net/tls.h"
#include "net/upstream.h"
#include "plugin/providers.h" /* llmux_url_parse */
#include "route/dialects.h"   /* llmux_rl_parse_rfc3339 */

#define FETCH_TIMEOUT_MS 10000
#define BODY_MAX (16u << 20)

static const char usage_text[] =
  "Usage: llmux routes [--url URL] [-c FILE]\n"
  "Prints every route of a running gateway (GET URL/admin/routes): its breaker,\n"
  "the rate-limit headroom left (requests and tokens, per minute and per day),\n"
  "requests in flight, average time to first byte and last error.\n"
  "\n"
  "  --url URL          the gateway, e.g. http://127.0.0.1:8080 (default: the\n"
  "                     listen address of the configuration, on loopback)\n"
  "  -c, --config FILE  the configuration to take that address from (env\n"
  "                     LLMUX_CONFIG; default config/llmux.ini)\n"
  "\n"
  "When the gateway has [server] admin_key_sha256, set LLMUX_ADMIN_KEY to the\n"
  "admin key: it is sent as `Authorization: Bearer KEY`.\n";

/* ---- where ------------------------------------------------------------------ */

/* http://HOST:PORT of the configured listen address, a wildcard address
 * asked on loopback; NULL (and why printed) when the file has errors. */
static char *configured_url(const char *config_path) {
  llmux_config_t *cfg = NULL;
  llmux_diag_t diag;
  llmux_buf_t url = {0};
  const char *host;
  llmux_diag_init(&diag);
  if (llmux_config_load(config_path, &cfg, &diag) != 0) {
    llmux_cli_print_diag(&diag, 0);
    fprintf(stderr, "llmux routes: cannot take the listen address from %s: pass --url\n",
            config_path);
    goto done;
  }
  host = cfg->server.host;
  if (host[0] == '\0' || strcmp(host, "0.0.0.0") == 0) host = "127.0.0.1";
  else if (strcmp(host, "::") == 0) host = "::1";
  llmux_buf_printf(&url, strchr(host, ':') ? "http://[%s]:%d" : "http://%s:%d", host,
                   cfg->server.port);
done:
  llmux_diag_free(&diag);
  llmux_config_free(cfg);
  return url.base;
}

/* ---- asking ----------------------------------------------------------------- */

typedef struct fetch_s {
  uv_loop_t loop;
  llmux_upstream_t *up;
  llmux_upstream_req_t req;
  llmux_tls_ctx_t *tls;
  char *host, *path;
  int https, port;
  llmux_buf_t headers, body;
  int status;           /* the HTTP status, or a negative LLMUX_E* */
} fetch_t;

static void on_fetch_body(llmux_upstream_req_t *req, const char *data, size_t len) {
  fetch_t *f = req->data;
  if (f->body.len + len <= BODY_MAX) llmux_buf_append(&f->body, data, len);
}

static void on_fetch_done(llmux_upstream_req_t *req, int status) {
  fetch_t *f = req->data;
  f->status = status;
  uv_stop(&f->loop);
}

/* URL's parts, the TLS context for https, and the request's headers.
 * 0, or -1 with why printed. */
static int fetch_prepare(fetch_t *f, const char *url) {
  const char *key = getenv("LLMUX_ADMIN_KEY");
  char err[256];
  if (llmux_url_parse(url, &f->https, &f->host, &f->port, &f->path) != 0) {
    fprintf(stderr, "llmux routes: bad --url '%s': expected http(s)://host[:port]\n", url);
    return -1;
  }
  if (f->https && llmux_tls_ctx_client_new(&f->tls, NULL, 1, err, sizeof err) != 0) {
    fprintf(stderr, "llmux routes: %s\n", err);
    return -1;
  }
  if (key != NULL && key[0] != '\0' && strpbrk(key, "\r\n") != NULL) {
    fputs("llmux routes: LLMUX_ADMIN_KEY holds a line break\n", stderr);
    return -1;
  }
  llmux_buf_appends(&f->headers, "Accept: application/json\r\n");
  if (key != NULL && key[0] != '\0')
    llmux_buf_printf(&f->headers, "Authorization: Bearer %s\r\n", key);
  return 0;
}

static void fetch_start(fetch_t *f, llmux_buf_t *path) {
  llmux_upstream_req_init(&f->req);
  f->req.data = f;
  f->req.https = f->https;
  f->req.host = f->host;
  f->req.port = (uint16_t)f->port;
  f->req.tls_ctx = f->tls;
  f->req.method = "GET";
  f->req.path = path->base;
  f->req.headers = f->headers.base;
  f->req.headers_len = f->headers.len;
  f->req.connect_timeout_ms = FETCH_TIMEOUT_MS;
  f->req.total_timeout_ms = FETCH_TIMEOUT_MS;
  f->req.on_body = on_fetch_body;
  f->req.on_done = on_fetch_done;
  f->status = llmux_upstream_start(f->up, &f->req);
}

/* GET URL/admin/routes into f->status and f->body. 0, or -1 with why
 * printed when nothing could be asked. */
static int fetch_routes(fetch_t *f, const char *url) {
  llmux_buf_t path = {0};
  int rc = -1;
  if (fetch_prepare(f, url) != 0) return -1;
  llmux_buf_printf(&path, "%s/admin/routes", f->path);
  if (uv_loop_init(&f->loop) != 0) goto done;
  if (llmux_upstream_new(&f->loop, NULL, &f->up) != 0) {
    fputs("llmux routes: cannot set up the HTTP client\n", stderr);
    uv_loop_close(&f->loop);
    goto done;
  }
  fetch_start(f, &path);
  if (f->status == 0) uv_run(&f->loop, UV_RUN_DEFAULT); /* until on_fetch_done */
  llmux_upstream_close(f->up, NULL);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  uv_loop_close(&f->loop);
  rc = 0;
done:
  llmux_buf_free(&path);
  return rc;
}

static void fetch_free(fetch_t *f) {
  if (f->tls) llmux_tls_ctx_free(f->tls);
  free(f->host);
  free(f->path);
  llmux_buf_free(&f->headers);
  llmux_buf_free(&f->body);
}

/* One line for an answer that is not the table. */
static void report_refusal(const fetch_t *f, const char *url) {
  const char *key = getenv("LLMUX_ADMIN_KEY");
  json_t *root = json_loadb(f->body.base ? f->body.base : "", f->body.len, 0, NULL);
  const char *msg = json_string_value(json_object_get(json_object_get(root, "error"), "message"));
  const char *hint = "";
  if (f->status == 401)
    hint = key && key[0] ? " (LLMUX_ADMIN_KEY is not one of its admin keys)"
                         : " (set LLMUX_ADMIN_KEY to the admin key)";
  fprintf(stderr, "llmux routes: %s/admin/routes answered %d: %s%s\n", url, f->status,
          msg ? msg : "not the route table (is it llmux?)", hint);
  json_decref(root);
}

/* ---- printing --------------------------------------------------------------- */

enum { C_PROVIDER, C_MODEL, C_STATE, C_RPM, C_RPD, C_TPM, C_TPD, C_INFLIGHT, C_LATENCY,
       C_ERROR, NCOLS };
#define CELL 96
typedef char row_t[NCOLS][CELL];

static const char *const headings[NCOLS] = {
  "PROVIDER", "MODEL", "STATE", "RPM", "RPD", "TPM", "TPD", "IN FLIGHT", "LATENCY", "LAST ERROR",
};
static const char *const dims[4] = {"requests_minute", "requests_day", "tokens_minute",
                                    "tokens_day"};

/* An RFC 3339 string as Unix ms; 0 when absent or not a time. */
static int64_t time_of(const json_t *v) {
  const char *s = json_string_value(v);
  int64_t ms = 0;
  if (s == NULL || llmux_rl_parse_rfc3339(s, strlen(s), &ms) != 0) return 0;
  return ms;
}

/* "45s", "4m05s", "3h20m", "2d04h". */
static void span(char *out, size_t n, int64_t ms) {
  long long s = ms > 0 ? (ms + 500) / 1000 : 0;
  if (s < 60) snprintf(out, n, "%llds", s);
  else if (s < 3600) snprintf(out, n, "%lldm%02llds", s / 60, s % 60);
  else if (s < 86400) snprintf(out, n, "%lldh%02lldm", s / 3600, s % 3600 / 60);
  else snprintf(out, n, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
}

/* "disabled", "closed", "half_open", "open 25s", each with ", wait 20s"
 * while a retry-after or spend limit rests the route. */
static void state_cell(char *out, const json_t *rt, int64_t now) {
  const json_t *br = json_object_get(rt, "breaker"), *bl = json_object_get(rt, "blocked");
  const char *st = json_string_value(json_object_get(br, "state"));
  int64_t until = time_of(json_object_get(br, "until"));
  char t[32];
  size_t len;
  if (!json_is_true(json_object_get(rt, "enabled"))) {
    snprintf(out, CELL, "disabled");
    return;
  }
  snprintf(out, CELL, "%s", st ? st : "?");
  len = strlen(out);
  if (until) {
    span(t, sizeof t, until - now);
    snprintf(out + len, CELL - len, " %s", t);
    len = strlen(out);
  }
  if (!json_is_object(bl)) return;
  until = time_of(json_object_get(bl, "until"));
  span(t, sizeof t, until - now);
  snprintf(out + len, CELL - len, ", wait %s", until ? t : "(until reset)");
}

/* "remaining/limit", "remaining" when the limit is unknown, "-" unlimited. */
static void dim_cell(char *out, const json_t *dim) {
  const json_t *lim = json_object_get(dim, "limit");
  json_int_t left = json_integer_value(json_object_get(dim, "remaining"));
  if (!json_is_object(dim)) snprintf(out, CELL, "-");
  else if (json_is_integer(lim))
    snprintf(out, CELL, "%lld/%lld", (long long)left, (long long)json_integer_value(lim));
  else snprintf(out, CELL, "%lld", (long long)left);
}

static void error_cell(char *out, const json_t *err, int64_t now) {
  const char *msg = json_string_value(json_object_get(err, "message"));
  int64_t at = time_of(json_object_get(err, "at"));
  char t[32];
  if (msg == NULL) {
    snprintf(out, CELL, "-");
    return;
  }
  span(t, sizeof t, now - at);
  snprintf(out, CELL, at ? "%s (%s ago)" : "%s", msg, t);
}

static void route_row(row_t row, const json_t *rt, int64_t now) {
  const json_t *rem = json_object_get(rt, "remaining"), *lat = json_object_get(rt, "latency_ms");
  const char *prov = json_string_value(json_object_get(rt, "provider"));
  const char *model = json_string_value(json_object_get(rt, "model"));
  int d;
  snprintf(row[C_PROVIDER], CELL, "%s", prov ? prov : "?");
  snprintf(row[C_MODEL], CELL, "%s", model ? model : "?");
  state_cell(row[C_STATE], rt, now);
  for (d = 0; d < 4; d++) dim_cell(row[C_RPM + d], json_object_get(rem, dims[d]));
  snprintf(row[C_INFLIGHT], CELL, "%lld",
           (long long)json_integer_value(json_object_get(rt, "in_flight")));
  if (json_is_number(lat)) snprintf(row[C_LATENCY], CELL, "%.0fms", json_number_value(lat));
  else snprintf(row[C_LATENCY], CELL, "-");
  error_cell(row[C_ERROR], json_object_get(rt, "last_error"), now);
}

static void print_rows(row_t *rows, size_t n) {
  size_t w[NCOLS] = {0}, i;
  int c;
  for (i = 0; i < n; i++)
    for (c = 0; c < NCOLS; c++)
      if (strlen(rows[i][c]) > w[c]) w[c] = strlen(rows[i][c]);
  for (i = 0; i < n; i++) {
    for (c = 0; c < NCOLS - 1; c++) printf("%-*s  ", (int)w[c], rows[i][c]);
    printf("%s\n", rows[i][NCOLS - 1]);
  }
}

/* The table from the answer's body; 0, or 1 when it is not one. */
static int print_table(const llmux_buf_t *body, const char *url) {
  json_t *root = json_loadb(body->base ? body->base : "", body->len, 0, NULL);
  const json_t *routes = json_object_get(root, "routes");
  int64_t now = time_of(json_object_get(root, "now"));
  row_t *rows;
  size_t i, n;
  int c;
  if (!json_is_array(routes)) {
    fprintf(stderr, "llmux routes: %s/admin/routes did not answer with routes (is it llmux?)\n",
            url);
    json_decref(root);
    return 1;
  }
  n = json_array_size(routes);
  rows = llmux_xcalloc(n + 1, sizeof *rows);
  for (c = 0; c < NCOLS; c++) snprintf(rows[0][c], CELL, "%s", headings[c]);
  for (i = 0; i < n; i++) route_row(rows[i + 1], json_array_get(routes, i), now);
  print_rows(rows, n + 1);
  if (n == 0) printf("(no routes configured)\n");
  free(rows);
  json_decref(root);
  return 0;
}

/* ---- the command ------------------------------------------------------------ */

/* --url and -c; 0, or 2 (usage printed). */
static int parse_routes_args(int argc, char **argv, const char **url, const char **config) {
  static const struct option longopts[] = {
    {"url", required_argument, NULL, 'u'}, {"config", required_argument, NULL, 'c'},
    {"help", no_argument, NULL, 'h'},      {NULL, 0, NULL, 0},
  };
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
    switch (c) {
      case 'u': *url = optarg; break;
      case 'c': *config = optarg; break;
      case 'h': fputs(usage_text, stdout); exit(0);
      default: fputs(usage_text, stderr); return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "llmux routes: unexpected argument '%s'\n%s", argv[optind], usage_text);
    return 2;
  }
  return 0;
}

int llmux_cli_routes(int argc, char **argv) {
  const char *given = NULL, *config = NULL;
  char *url = NULL;
  fetch_t f;
  int rc = 1;
  memset(&f, 0, sizeof f);
  if (parse_routes_args(argc, argv, &given, &config) != 0) return 2;
  url = given ? llmux_xstrdup(given) : configured_url(llmux_cli_config_path(config));
  if (url == NULL) goto done;
  while (strlen(url) > 8 && url[strlen(url) - 1] == '/') url[strlen(url) - 1] = '\0';
  if (fetch_routes(&f, url) != 0) goto done;
  if (f.status < 0)
    fprintf(stderr, "llmux routes: cannot reach the gateway at %s: %s\n", url,
            llmux_strerror(f.status));
  else if (f.status != 200)
    report_refusal(&f, url);
  else
    rc = print_table(&f.body, url);
done:
  fetch_free(&f);
  free(url);
  return rc;
}
