/* Passthrough providers' model lists, fetched on the loop (model_lists.h). */
#include "gateway/model_lists.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/log.h"
#include "base/util.h"
#include "plugin/providers.h"

#define FETCH_TIMEOUT_MS 10000
#define FETCH_BODY_MAX (8u << 20)

typedef struct list_s {
  char *provider;
  llmux_buf_t names;           /* NUL-terminated names, one after the other */
} list_t;

typedef struct fetch_s fetch_t;

struct fetch_s {
  fetch_t *prev, *next;        /* in ml->fetches while in flight */
  llmux_model_lists_t *ml;
  llmux_generation_t *gen;     /* a reference: rt and its instance live on */
  llmux_provider_rt_t *rt;
  llmux_host_txn_t ht;
  llmux_upstream_req_t req;
  llmux_buf_t path, headers, body;
  uv_buf_t iov[LLMUX_TXN_MAX_BODY_PARTS];
};

struct llmux_model_lists_s {
  llmux_upstream_t *up;
  list_t *lists;
  size_t nlists;
  fetch_t *fetches;
  size_t pending;
};

llmux_model_lists_t *llmux_model_lists_new(llmux_upstream_t *up) {
  llmux_model_lists_t *ml = calloc(1, sizeof *ml);
  if (ml != NULL) ml->up = up;
  return ml;
}

static list_t *list_of(const llmux_model_lists_t *ml, const char *name) {
  size_t i;
  for (i = 0; i < ml->nlists; i++)
    if (strcasecmp(ml->lists[i].provider, name) == 0) return &ml->lists[i];
  return NULL;
}

/* Replaces provider `name`'s list with `names` (taken). */
static void store(llmux_model_lists_t *ml, const char *name, llmux_buf_t *names) {
  list_t *l = list_of(ml, name);
  if (l == NULL) {
    list_t *n = realloc(ml->lists, (ml->nlists + 1) * sizeof *n);
    if (n == NULL) {
      llmux_buf_free(names);
      return;
    }
    ml->lists = n;
    l = &ml->lists[ml->nlists++];
    l->provider = llmux_xstrdup(name);
    memset(&l->names, 0, sizeof l->names);
  }
  llmux_buf_free(&l->names);
  l->names = *names;
  memset(names, 0, sizeof *names);
}

/* ---- one fetch -------------------------------------------------------------- */

static void fetch_free(fetch_t *f) {
  llmux_model_lists_t *ml = f->ml;
  const llmux_provider_t *vt = f->rt->plugin->vt;
  if (f->prev != NULL) f->prev->next = f->next;
  else ml->fetches = f->next;
  if (f->next != NULL) f->next->prev = f->prev;
  ml->pending--;
  if (LLMUX_PROVIDER_HAS(vt, txn_free)) vt->txn_free(f->rt->instance, &f->ht.txn);
  llmux_host_txn_free(&f->ht);
  llmux_buf_free(&f->path);
  llmux_buf_free(&f->headers);
  llmux_buf_free(&f->body);
  llmux_generation_unref(f->gen);
  free(f);
}

static void on_fetch_body(llmux_upstream_req_t *req, const char *data, size_t len) {
  fetch_t *f = req->data;
  if (f->body.len + len <= FETCH_BODY_MAX) llmux_buf_append(&f->body, data, len);
}

static void on_fetch_done(llmux_upstream_req_t *req, int status) {
  fetch_t *f = req->data;
  const char *name = f->rt->conf->name;
  llmux_buf_t names = {0};
  if (status < 0) {
    llmux_warn("model list of %s: unreachable: %s", name,
               req->error[0] ? req->error : llmux_strerror(status));
  } else if (status < 200 || status >= 300) {
    llmux_warn("model list of %s: HTTP %d", name, status);
  } else if (f->rt->plugin->vt->parse_models(f->rt->instance, f->body.base ? f->body.base : "",
                                             f->body.len, &names) != 0) {
    llmux_warn("model list of %s: the answer could not be read", name);
    llmux_buf_free(&names);
  } else {
    store(f->ml, name, &names);
    llmux_info("model list of %s: read", name);
  }
  fetch_free(f);
}

static int can_list(const llmux_provider_rt_t *rt) {
  const llmux_provider_t *vt = rt->plugin ? rt->plugin->vt : NULL;
  return vt != NULL && rt->conf->passthrough && rt->conf->enabled && rt->instance != NULL &&
         rt->host != NULL && LLMUX_PROVIDER_HAS(vt, models_request) &&
         LLMUX_PROVIDER_HAS(vt, parse_models);
}

/* The request the plugin builds, with the provider's own headers. */
static int fetch_prepare(fetch_t *f) {
  const llmux_provider_conf_t *pc = f->rt->conf;
  llmux_txn_t *t = &f->ht.txn;
  size_t i;
  t->size = sizeof *t;
  llmux_host_txn_clear_out(&f->ht);
  if (f->rt->plugin->vt->models_request(f->rt->instance, t) != 0 ||
      t->nbody_parts > LLMUX_TXN_MAX_BODY_PARTS)
    return -1;
  llmux_buf_appends(&f->path, f->rt->base_path);
  llmux_buf_append(&f->path, t->path.base, t->path.len);
  llmux_buf_appends(&f->headers, "Accept: application/json\r\n");
  llmux_buf_append(&f->headers, t->headers.base, t->headers.len);
  for (i = 0; i < pc->nheaders; i++)
    llmux_buf_printf(&f->headers, "%s: %s\r\n", pc->headers[i].key, pc->headers[i].value);
  for (i = 0; i < t->nbody_parts; i++)
    f->iov[i] = uv_buf_init((char *)t->body_parts[i].base, (unsigned)t->body_parts[i].len);
  return f->path.base != NULL && f->headers.base != NULL ? 0 : -1;
}

static void fetch_start(llmux_model_lists_t *ml, llmux_generation_t *gen,
                        llmux_provider_rt_t *rt) {
  fetch_t *f = llmux_xcalloc(1, sizeof *f);
  f->ml = ml;
  f->gen = llmux_generation_ref(gen);
  f->rt = rt;
  f->next = ml->fetches;
  if (ml->fetches != NULL) ml->fetches->prev = f;
  ml->fetches = f;
  ml->pending++;
  if (fetch_prepare(f) != 0) {
    llmux_warn("model list of %s: plugin '%s' could not build the request", rt->conf->name,
               rt->plugin->name);
    fetch_free(f);
    return;
  }
  llmux_upstream_req_init(&f->req);
  f->req.data = f;
  f->req.https = rt->tls;
  f->req.host = rt->host;
  f->req.port = (uint16_t)rt->port;
  f->req.tls_ctx = rt->tls_ctx;
  f->req.method = f->ht.txn.method ? f->ht.txn.method : "GET";
  f->req.path = f->path.base;
  f->req.headers = f->headers.base;
  f->req.headers_len = f->headers.len;
  f->req.body = f->iov;
  f->req.nbody = f->ht.txn.nbody_parts;
  f->req.connect_timeout_ms = rt->conf->connect_timeout_ms;
  f->req.total_timeout_ms = FETCH_TIMEOUT_MS;
  f->req.on_body = on_fetch_body;
  f->req.on_done = on_fetch_done;
  if (llmux_upstream_start(ml->up, &f->req) != 0) {
    llmux_warn("model list of %s: %s", rt->conf->name, f->req.error);
    fetch_free(f);
  }
}

void llmux_model_lists_refresh(llmux_model_lists_t *ml, llmux_generation_t *gen) {
  size_t i;
  if (ml == NULL || gen == NULL || gen->provs == NULL) return;
  for (i = 0; i < gen->provs->n; i++)
    if (can_list(&gen->provs->items[i])) fetch_start(ml, gen, &gen->provs->items[i]);
}

/* ---- lookups ---------------------------------------------------------------- */

/* Does `names` hold `id`, or "id:latest"? */
static int holds(const llmux_buf_t *names, const char *id) {
  size_t off = 0, n = strlen(id);
  while (off < names->len) {
    const char *s = names->base + off;
    size_t len = strnlen(s, names->len - off);
    if (len == n && memcmp(s, id, n) == 0) return 1;
    if (len == n + 7 && memcmp(s, id, n) == 0 && memcmp(s + n, ":latest", 7) == 0) return 1;
    off += len + 1;
  }
  return 0;
}

const llmux_provider_conf_t *llmux_model_lists_find(const llmux_model_lists_t *ml,
                                                    const llmux_config_t *cfg, const char *id) {
  const llmux_provider_conf_t *best = NULL;
  size_t i;
  if (ml == NULL || id[0] == '\0') return NULL;
  for (i = 0; i < cfg->nproviders; i++) {
    const llmux_provider_conf_t *p = cfg->providers[i];
    const list_t *l;
    if (p->passthrough_route == NULL) continue;
    if (best != NULL && best->priority <= p->priority) continue;
    if ((l = list_of(ml, p->name)) != NULL && holds(&l->names, id)) best = p;
  }
  return best;
}

const char *llmux_model_lists_get(const llmux_model_lists_t *ml, const char *name, size_t *len) {
  const list_t *l = ml ? list_of(ml, name) : NULL;
  if (l == NULL) return NULL;
  *len = l->names.len;
  return l->names.base ? l->names.base : "";
}

size_t llmux_model_lists_pending(const llmux_model_lists_t *ml) {
  return ml ? ml->pending : 0;
}

void llmux_model_lists_free(llmux_model_lists_t *ml) {
  size_t i;
  if (ml == NULL) return;
  while (ml->fetches != NULL) {
    llmux_upstream_cancel(&ml->fetches->req);
    fetch_free(ml->fetches);
  }
  for (i = 0; i < ml->nlists; i++) {
    free(ml->lists[i].provider);
    llmux_buf_free(&ml->lists[i].names);
  }
  free(ml->lists);
  free(ml);
}
