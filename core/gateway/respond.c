/* Answers every endpoint gives alike. */
#include "gateway/respond.h"

#include <string.h>

#include "base/util.h"
#include "config/registry.h"

/* ---- request ids -------------------------------------------------------- */

static int sane_request_id(const llmux_str_t *v) {
  size_t i;
  if (v->len == 0 || v->len > 128) return 0;
  for (i = 0; i < v->len; i++) {
    unsigned char c = (unsigned char)v->base[i];
    if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\') return 0;
  }
  return 1;
}

const char *llmux_respond_request_id(llmux_gateway_t *gw, llmux_http_req_t *req, char *buf) {
  const llmux_str_t *v = llmux_http_header(req, "x-request-id");
  uint64_t x;
  if (v != NULL && sane_request_id(v)) {
    memcpy(buf, v->base, v->len);
    buf[v->len] = '\0';
    return buf;
  }
  /* xorshift64*: unique enough to correlate logs, not a secret. */
  x = gw->id_state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  gw->id_state = x;
  memcpy(buf, "req_", 4);
  llmux_u64_hex(buf + 4, x * 0x2545f4914f6cdd1dull, 16);
  return buf;
}

typedef struct may_use_s {
  const llmux_config_t *cfg;
  const llmux_tenant_t *tenant;
} may_use_t;

static int may_use(void *arg, const char *name) {
  const may_use_t *m = arg;
  return llmux_tenant_may_use_name(m->tenant, m->cfg, name);
}

/* The 404 for a model the caller cannot use. Open (no tenants): "does not
 * exist", with the closest known names. A tenant hears OpenAI's words for a
 * name that does not exist and for one it may not use alike, and is offered
 * only names it may use: the answer never tells the two apart. */
int llmux_respond_model_not_found(llmux_http_req_t *req, const llmux_config_t *cfg,
                              const llmux_tenant_t *tenant, const char *name) {
  const char *sugg[LLMUX_RESOLVE_MAX_SUGGEST];
  const char *q = tenant ? "`" : "'";
  may_use_t m = {cfg, tenant};
  llmux_buf_t msg = {0};
  size_t i, n;
  int rc;
  if (tenant != NULL) {
    n = llmux_registry_suggest_if(cfg, name, may_use, &m, sugg, LLMUX_COUNTOF(sugg));
    llmux_buf_printf(&msg, "The model `%.200s` does not exist or you do not have access to it.",
                     name);
  } else {
    n = llmux_registry_suggest(cfg, name, sugg, LLMUX_COUNTOF(sugg));
    llmux_buf_printf(&msg, "The model '%.200s' does not exist.", name);
  }
  for (i = 0; i < n; i++)
    llmux_buf_printf(&msg, "%s%s%s%s", i == 0 ? " Did you mean " : i + 1 == n ? " or " : ", ",
                     q, sugg[i], q);
  if (n) llmux_buf_appends(&msg, "?");
  if (tenant == NULL) llmux_buf_appends(&msg, " GET /v1/models lists every name.");
  rc = llmux_http_send_error(req, 404, "invalid_request_error", "model_not_found", msg.base,
                             "model");
  llmux_buf_free(&msg);
  return rc;
}
