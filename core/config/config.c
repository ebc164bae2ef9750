/* INI configuration loader: main file + providers/NAME.ini -> one snapshot.
 *
 * inih does the tokenising; our reader hands it one physical line at a time,
 * so we always know the file and line of the handler call in progress. The
 * reader also classifies each line the way inih will (section, key,
 * continuation, malformed) because inih reports only the first malformed
 * line and never calls the handler for section headers or bad lines. */
#include "config/config.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <limits.h>
#include <mbedtls/sha256.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/log.h"
#include "base/util.h"

/* ---- Diagnostics ------------------------------------------------------- */

void llmux_diag_init(llmux_diag_t *d) {
  memset(d, 0, sizeof(*d));
}

void llmux_diag_free(llmux_diag_t *d) {
  size_t i;
  for (i = 0; i < d->len; i++) {
    free(d->items[i].file);
    free(d->items[i].message);
  }
  free(d->items);
  llmux_diag_init(d);
}

void llmux_diag_vadd(llmux_diag_t *d, const char *file, int line, int severity,
                     const char *fmt, va_list ap) {
  llmux_diag_entry_t *e;
  llmux_buf_t msg = {0};
  va_list cp;
  int n;
  if (d->len == d->cap) {
    d->cap = d->cap ? d->cap * 2 : 16;
    d->items = realloc(d->items, d->cap * sizeof(*d->items));
    if (d->items == NULL) abort();
  }
  va_copy(cp, ap);
  n = vsnprintf(NULL, 0, fmt, cp);
  va_end(cp);
  if (n < 0 || llmux_buf_reserve(&msg, (size_t)n) != 0) abort();
  vsnprintf(msg.base, (size_t)n + 1, fmt, ap);
  e = &d->items[d->len++];
  e->file = llmux_xstrdup(file ? file : "");
  e->line = line;
  e->severity = severity;
  e->message = msg.base;
  if (severity == LLMUX_DIAG_ERROR) d->errors++;
  else d->warnings++;
}

void llmux_diag_add(llmux_diag_t *d, const char *file, int line, int severity,
                    const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  llmux_diag_vadd(d, file, line, severity, fmt, ap);
  va_end(ap);
}

int llmux_diag_format(const llmux_diag_entry_t *e, llmux_buf_t *out) {
  const char *sev = e->severity == LLMUX_DIAG_WARNING ? "warning: " : "";
  if (e->line > 0)
    return llmux_buf_printf(out, "%s:%d: %s%s", e->file, e->line, sev, e->message);
  return llmux_buf_printf(out, "%s: %s%s", e->file, sev, e->message);
}

void llmux_diag_print(const llmux_diag_t *d, FILE *fp) {
  llmux_buf_t b = {0};
  size_t i;
  for (i = 0; i < d->len; i++) {
    b.len = 0;
    if (llmux_diag_format(&d->items[i], &b) == 0) fprintf(fp, "%s\n", b.base);
  }
  llmux_buf_free(&b);
}

/* ---- Arena: every string and struct of a snapshot ---------------------- */

typedef struct arena_chunk_s {
  struct arena_chunk_s *next;
  size_t used;
  size_t cap;
} arena_chunk_t;

struct llmux__arena_s {
  arena_chunk_t *head;
};

#define ARENA_ALIGN 16
#define ARENA_HDR ((sizeof(arena_chunk_t) + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1))
#define ARENA_CHUNK 16384

void *llmux__arena_alloc(struct llmux__arena_s *a, size_t n) {
  arena_chunk_t *c = a->head;
  char *p;
  n = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
  if (n == 0) n = ARENA_ALIGN;
  if (c == NULL || c->cap - c->used < n) {
    size_t cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;
    c = llmux_xmalloc(ARENA_HDR + cap);
    c->used = 0;
    c->cap = cap;
    c->next = a->head;
    a->head = c;
  }
  p = (char *)c + ARENA_HDR + c->used;
  c->used += n;
  memset(p, 0, n);
  return p;
}

char *llmux__arena_strdup(struct llmux__arena_s *a, const char *s) {
  size_t n = strlen(s);
  char *p = llmux__arena_alloc(a, n + 1);
  memcpy(p, s, n + 1);
  return p;
}

static void arena_free(struct llmux__arena_s *a) {
  arena_chunk_t *c, *next;
  if (a == NULL) return;
  for (c = a->head; c; c = next) {
    next = c->next;
    free(c);
  }
  free(a);
}

/* Arena arrays grow by doubling from 4; the old block is simply left behind
 * (config files are small). Returns the array to store `len + 1` items. */
static void *arena_grow(struct llmux__arena_s *a, void *old, size_t len, size_t elem) {
  void *p;
  if (len != 0 && (len < 4 || (len & (len - 1)) != 0)) return old;
  p = llmux__arena_alloc(a, (len ? len * 2 : 4) * elem);
  if (len) memcpy(p, old, len * elem);
  return p;
}

/* Heap pointer arrays of the snapshot (cfg->models, ...). */
#define VEC_PUSH(arr, n, item)                                          \
  do {                                                                  \
    if (((n) & ((n) - 1)) == 0) {                                       \
      void *np_ = realloc((arr), ((n) ? (n) * 2 : 1) * sizeof(*(arr))); \
      if (np_ == NULL) abort();                                         \
      (arr) = np_;                                                      \
    }                                                                   \
    (arr)[(n)++] = (item);                                              \
  } while (0)

/* ---- Sections and keys ------------------------------------------------- */

enum {
  SEC_NONE = 0, /* before the first header */
  SEC_SKIP,     /* a broken header: its keys are not checked */
  SEC_SERVER,
  SEC_MODEL,
  SEC_GENERIC,
  SEC_ALIAS,
  SEC_PROFILE,
  SEC_AGENT,
  SEC_PROVIDER,
  SEC_ROUTE,
  SEC_TENANT
};

enum {
  K_STR, K_URL, K_ENVNAME, K_PATH, K_DURATION, K_SIZE, K_U64, K_INT, K_BOOL,
  K_TIER, K_PRICE, K_LIMIT, K_LIST, K_CAPS, K_STRATEGY, K_WEIGHTS,
  K_LOGLEVEL, K_LISTEN, K_KEYHASH, K_USD, K_LOGDEST, K_REDIS, K_WORKERS, K_FAILMODE, K_CACHE
};

/* K_KEYHASH is a list that may also be written on several lines. */
#define IS_LIST_KEY(t) ((t) == K_LIST || (t) == K_CAPS || (t) == K_WEIGHTS || (t) == K_KEYHASH)

typedef struct keydef_s {
  const char *name;
  int type;
  size_t off;
  unsigned bit; /* K_LIMIT: LLMUX_LIMIT_* */
} keydef_t;

#define SRV(f) offsetof(llmux_server_conf_t, f)
#define MOD(f) offsetof(llmux_model_conf_t, f)
#define GEN(f) offsetof(llmux_generic_conf_t, f)
#define PRO(f) offsetof(llmux_profile_conf_t, f)
#define AGT(f) offsetof(llmux_agent_conf_t, f)
#define PRV(f) offsetof(llmux_provider_conf_t, f)
#define RTE(f) offsetof(llmux_route_conf_t, f)
#define TEN(f) offsetof(llmux_tenant_conf_t, f)

static const keydef_t server_keys[] = {
  {"listen", K_LISTEN, 0, 0},
  {"providers_dir", K_PATH, SRV(providers_dir), 0},
  {"plugin_dir", K_PATH, SRV(plugin_dir), 0},
  {"max_body", K_SIZE, SRV(max_body), 0},
  {"max_header", K_SIZE, SRV(max_header), 0},
  {"max_connections", K_U64, SRV(max_connections), 0},
  {"max_memory", K_SIZE, SRV(max_memory), 0},
  {"header_timeout", K_DURATION, SRV(header_timeout_ms), 0},
  {"idle_timeout", K_DURATION, SRV(idle_timeout_ms), 0},
  {"log_level", K_LOGLEVEL, SRV(log_level), 0},
  {"max_attempts", K_U64, SRV(max_attempts), 0},
  {"retry_backoff", K_DURATION, SRV(retry_backoff_ms), 0},
  {"retry_backoff_max", K_DURATION, SRV(retry_backoff_max_ms), 0},
  {"request_timeout", K_DURATION, SRV(request_timeout_ms), 0},
  {"cooldown_failures", K_U64, SRV(cooldown_failures), 0},
  {"cooldown_window", K_DURATION, SRV(cooldown_window_ms), 0},
  {"cooldown", K_DURATION, SRV(cooldown_ms), 0},
  {"usage_db", K_PATH, SRV(usage_db), 0},
  {"admin_key_sha256", K_KEYHASH, 0, 0},
  {"drain_timeout", K_DURATION, SRV(drain_timeout_ms), 0},
  {"access_log", K_LOGDEST, SRV(access_log), 0},
  {"otlp_endpoint", K_URL, SRV(otlp_endpoint), 0},
  {"workers", K_WORKERS, SRV(workers), 0},
  {"shared_state", K_REDIS, SRV(shared_state), 0},
  {"shared_state_password_env", K_ENVNAME, SRV(shared_state_password_env), 0},
  {"shared_state_prefix", K_STR, SRV(shared_state_prefix), 0},
  {"shared_state_fail", K_FAILMODE, SRV(shared_state_fail_closed), 0},
  {"shared_state_timeout", K_DURATION, SRV(shared_state_timeout_ms), 0},
  {"responses_db", K_PATH, SRV(responses_db), 0},
  {"responses_ttl", K_DURATION, SRV(responses_ttl_ms), 0},
  {"responses_max_memory", K_SIZE, SRV(responses_max_memory), 0},
  {"fan_out", K_BOOL, SRV(fan_out), 0},
  {"cache", K_CACHE, SRV(cache), 0},
  {"cache_size", K_SIZE, SRV(cache_size), 0},
  {"cache_ttl", K_DURATION, SRV(cache_ttl_ms), 0},
};
_Static_assert(LLMUX_COUNTOF(server_keys) <= 64, "load_t.seen holds 64 keys");

static const keydef_t model_keys[] = {
  {"tier", K_TIER, MOD(tier), 0},
  {"family", K_STR, MOD(family), 0},
  {"aliases", K_LIST, MOD(aliases), 0},
  {"capabilities", K_CAPS, MOD(capabilities), 0},
  {"context_window", K_U64, MOD(context_window), 0},
  {"price_in", K_PRICE, MOD(price_in), 0},
  {"price_out", K_PRICE, MOD(price_out), 0},
  {"display_name", K_STR, MOD(display_name), 0},
};

static const keydef_t generic_keys[] = {
  {"tier", K_TIER, GEN(tier), 0},
  {"min_tier", K_TIER, GEN(min_tier), 0},
  {"max_tier", K_TIER, GEN(max_tier), 0},
};

static const keydef_t profile_keys[] = {
  {"models", K_LIST, PRO(model_names), 0},
  {"strategy", K_STRATEGY, PRO(strategy), 0},
  {"weights", K_WEIGHTS, 0, 0},
  {"providers", K_LIST, PRO(provider_names), 0},
  {"escalate", K_STR, PRO(escalate_name), 0},
  {"fallback_local", K_STR, PRO(fallback_local_name), 0},
};

static const keydef_t agent_keys[] = {
  {"profile", K_STR, AGT(profile_name), 0},
};

#define LIMIT_KEYS(M)                                                       \
  {"requests_per_minute", K_LIMIT, M(limits.requests_per_minute), LLMUX_LIMIT_RPM}, \
  {"requests_per_day", K_LIMIT, M(limits.requests_per_day), LLMUX_LIMIT_RPD},       \
  {"tokens_per_minute", K_LIMIT, M(limits.tokens_per_minute), LLMUX_LIMIT_TPM},     \
  {"tokens_per_day", K_LIMIT, M(limits.tokens_per_day), LLMUX_LIMIT_TPD}

static const keydef_t provider_keys[] = {
  {"plugin", K_STR, PRV(plugin), 0},
  {"base_url", K_URL, PRV(base_url), 0},
  {"api_key_env", K_ENVNAME, PRV(api_key_env), 0},
  {"priority", K_INT, PRV(priority), 0},
  {"enabled", K_BOOL, PRV(enabled), 0},
  LIMIT_KEYS(PRV),
  {"connect_timeout", K_DURATION, PRV(connect_timeout_ms), 0},
  {"timeout", K_DURATION, PRV(timeout_ms), 0},
  {"stream_timeout", K_DURATION, PRV(stream_timeout_ms), 0},
  {"total_timeout", K_DURATION, PRV(total_timeout_ms), 0},
  {"tls_verify", K_BOOL, PRV(tls_verify), 0},
  {"ca_file", K_PATH, PRV(ca_file), 0},
  {"ratelimit_headers", K_STR, PRV(ratelimit_headers), 0},
  {"passthrough", K_BOOL, PRV(passthrough), 0},
  {"total_requests_per_minute", K_U64, PRV(wide_limits.requests_per_minute), 0},
  {"total_requests_per_day", K_U64, PRV(wide_limits.requests_per_day), 0},
  {"total_tokens_per_minute", K_U64, PRV(wide_limits.tokens_per_minute), 0},
  {"total_tokens_per_day", K_U64, PRV(wide_limits.tokens_per_day), 0},
};

static const keydef_t route_keys[] = {
  {"id", K_STR, RTE(id), 0},
  LIMIT_KEYS(RTE),
  {"price_in", K_PRICE, RTE(price_in), LLMUX_ROUTE_PRICE_IN},
  {"price_out", K_PRICE, RTE(price_out), LLMUX_ROUTE_PRICE_OUT},
};

/* Tenant limits are checked by llmux itself, whatever provider serves. */
static const keydef_t tenant_keys[] = {
  {"key_sha256", K_KEYHASH, 0, 0},
  {"models", K_LIST, TEN(models), 0},
  {"requests_per_minute", K_LIMIT, TEN(limits.requests_per_minute), LLMUX_LIMIT_RPM},
  {"tokens_per_minute", K_LIMIT, TEN(limits.tokens_per_minute), LLMUX_LIMIT_TPM},
  {"tokens_per_day", K_LIMIT, TEN(limits.tokens_per_day), LLMUX_LIMIT_TPD},
  {"budget_usd_per_month", K_USD, TEN(budget_usd_per_month), 0},
  {"allow_routing_overrides", K_BOOL, TEN(allow_routing_overrides), 0},
};

typedef struct secdef_s {
  const char *name;
  int type;
  int nargs;
  const char *usage;
  const keydef_t *keys;
  size_t nkeys;
} secdef_t;

#define KEYS(t) t, LLMUX_COUNTOF(t)
static const secdef_t sections[] = {
  {"server", SEC_SERVER, 0, "[server]", KEYS(server_keys)},
  {"model", SEC_MODEL, 1, "[model ID]", KEYS(model_keys)},
  {"generic", SEC_GENERIC, 1, "[generic NAME]", KEYS(generic_keys)},
  {"alias", SEC_ALIAS, 0, "[alias]", NULL, 0},
  {"profile", SEC_PROFILE, 1, "[profile NAME]", KEYS(profile_keys)},
  {"agent", SEC_AGENT, 1, "[agent NAME]", KEYS(agent_keys)},
  {"provider", SEC_PROVIDER, 1, "[provider NAME]", KEYS(provider_keys)},
  {"route", SEC_ROUTE, 2, "[route PROVIDER MODEL]", KEYS(route_keys)},
  {"tenant", SEC_TENANT, 1, "[tenant NAME]", KEYS(tenant_keys)},
};

/* Keys that would put a secret in a file. */
static const char *const secret_keys[] = {
  "api_key", "apikey", "key", "header.authorization", "header.x-api-key",
  "header.api-key", "header.x-goog-api-key", "header.proxy-authorization",
};

/* ---- Load context ------------------------------------------------------ */

enum { LK_BLANK, LK_COMMENT, LK_SECTION, LK_KEY, LK_CONT, LK_BAD };

typedef struct load_s {
  llmux_config_t *cfg;
  llmux_diag_t *diag;
  const char *file;     /* arena copy of the path being read */
  const char *dir;      /* its directory ("" for the cwd) */
  int is_main;
  /* reader */
  const char *buf;
  size_t len;
  size_t pos;
  int lineno;
  int line_kind;
  int inih_has_key;     /* mirrors inih's prev_name: continuation possible */
  /* current section */
  int sec_type;
  void *sec;
  const secdef_t *secdef;
  uint64_t seen;                 /* keys of the section set so far, by index (at most 64) */
  int seen_line[64];
  /* what an indented continuation line extends */
  const keydef_t *cont_key;
  llmux_conf_kv_t *cont_kv;
  int cont_suppress;
  const char *cont_name;
  /* [server] */
  const char *server_file;
  int server_line;
  int providers_dir_line;
} load_t;

static void err(load_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void err(load_t *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  llmux_diag_vadd(c->diag, c->file, c->lineno, LLMUX_DIAG_ERROR, fmt, ap);
  va_end(ap);
}

static void *alloc(load_t *c, size_t n) {
  return llmux__arena_alloc(c->cfg->arena, n);
}

static char *sdup(load_t *c, const char *s) {
  return llmux__arena_strdup(c->cfg->arena, s);
}

static char *path_join(struct llmux__arena_s *a, const char *dir, const char *rel) {
  size_t dl = strlen(dir), rl = strlen(rel);
  char *p;
  if (dl == 0 || rel[0] == '/') return llmux__arena_strdup(a, rel);
  p = llmux__arena_alloc(a, dl + rl + 2);
  memcpy(p, dir, dl);
  p[dl] = '/';
  memcpy(p + dl + 1, rel, rl + 1);
  return p;
}

static char *dir_of(struct llmux__arena_s *a, const char *path) {
  const char *slash = strrchr(path, '/');
  char *d;
  if (slash == NULL) return llmux__arena_strdup(a, "");
  if (slash == path) return llmux__arena_strdup(a, "/");
  d = llmux__arena_alloc(a, (size_t)(slash - path) + 1);
  memcpy(d, path, (size_t)(slash - path));
  return d;
}

/* Appends the closest candidate ("; did you mean 'x'?") or the full list. */
static void hint(llmux_buf_t *b, const char *got, const char *const *names, size_t n,
                 const char *what) {
  size_t i, best = n;
  unsigned d, bestd = 3;
  for (i = 0; i < n; i++) {
    d = llmux_edit_distance(got, names[i], 3);
    if (d < bestd) { bestd = d; best = i; }
  }
  if (best < n) {
    llmux_buf_printf(b, "; did you mean '%s'?", names[best]);
    return;
  }
  llmux_buf_printf(b, " (valid %s: ", what);
  for (i = 0; i < n; i++) llmux_buf_printf(b, "%s%s", i ? ", " : "", names[i]);
  llmux_buf_appends(b, ")");
}

static int valid_name(const char *s) {
  if (*s == '\0') return 0;
  for (; *s; s++) {
    if (isspace((unsigned char)*s) || *s == ',' || *s == '[' || *s == ']') return 0;
  }
  return 1;
}

/* ---- Section headers --------------------------------------------------- */

static void *new_section(load_t *c, int type, char **args) {
  llmux_config_t *cfg = c->cfg;
  void *obj = NULL;
  switch (type) {
  case SEC_SERVER:
    obj = &cfg->server;
    break;
  case SEC_MODEL: {
    llmux_model_conf_t *m = alloc(c, sizeof(*m));
    m->id = sdup(c, args[0]);
    VEC_PUSH(cfg->models, cfg->nmodels, m);
    obj = m;
    break;
  }
  case SEC_GENERIC: {
    llmux_generic_conf_t *g = alloc(c, sizeof(*g));
    g->name = sdup(c, args[0]);
    VEC_PUSH(cfg->generics, cfg->ngenerics, g);
    obj = g;
    break;
  }
  case SEC_PROFILE: {
    llmux_profile_conf_t *p = alloc(c, sizeof(*p));
    p->name = sdup(c, args[0]);
    VEC_PUSH(cfg->profiles, cfg->nprofiles, p);
    obj = p;
    break;
  }
  case SEC_AGENT: {
    llmux_agent_conf_t *a = alloc(c, sizeof(*a));
    a->name = sdup(c, args[0]);
    VEC_PUSH(cfg->agents, cfg->nagents, a);
    obj = a;
    break;
  }
  case SEC_PROVIDER: {
    llmux_provider_conf_t *p = alloc(c, sizeof(*p));
    p->name = sdup(c, args[0]);
    p->priority = 100;
    p->enabled = 1;
    p->tls_verify = 1;
    p->connect_timeout_ms = 5000;
    p->timeout_ms = 60000;
    p->stream_timeout_ms = 60000;
    p->total_timeout_ms = 300000;
    VEC_PUSH(cfg->providers, cfg->nproviders, p);
    obj = p;
    break;
  }
  case SEC_ROUTE: {
    llmux_route_conf_t *r = alloc(c, sizeof(*r));
    r->provider_name = sdup(c, args[0]);
    r->model_name = sdup(c, args[1]);
    VEC_PUSH(cfg->routes, cfg->nroutes, r);
    obj = r;
    break;
  }
  case SEC_TENANT: {
    llmux_tenant_conf_t *t = alloc(c, sizeof(*t));
    t->name = sdup(c, args[0]);
    t->allow_routing_overrides = 1;
    t->index = cfg->ntenants;
    VEC_PUSH(cfg->tenants, cfg->ntenants, t);
    obj = t;
    break;
  }
  default:
    break;
  }
  return obj;
}

/* Every section object starts with its own fields; file and line are set
 * here for all of them. */
static void set_origin(load_t *c, int type, void *obj) {
  const char **file = NULL;
  int *line = NULL;
#define ORIGIN(T) file = &((T *)obj)->file; line = &((T *)obj)->line; break
  switch (type) {
  case SEC_MODEL: ORIGIN(llmux_model_conf_t);
  case SEC_GENERIC: ORIGIN(llmux_generic_conf_t);
  case SEC_PROFILE: ORIGIN(llmux_profile_conf_t);
  case SEC_AGENT: ORIGIN(llmux_agent_conf_t);
  case SEC_PROVIDER: ORIGIN(llmux_provider_conf_t);
  case SEC_ROUTE: ORIGIN(llmux_route_conf_t);
  case SEC_TENANT: ORIGIN(llmux_tenant_conf_t);
  default: return;
  }
#undef ORIGIN
  *file = c->file;
  *line = c->lineno;
}

static int server_section_ok(load_t *c) {
  if (!c->is_main) {
    err(c, "[server] belongs in the main file %s", c->cfg->path);
    return 0;
  }
  if (c->server_line) {
    err(c, "duplicate [server] section (first at %s:%d)", c->server_file, c->server_line);
    return 0;
  }
  c->server_file = c->file;
  c->server_line = c->lineno;
  return 1;
}

static void begin_section(load_t *c, const char *text, size_t len) {
  char *copy = llmux_xstrndup(text, len), *args[4], *save = NULL, *tok;
  const char *names[LLMUX_COUNTOF(sections)];
  const secdef_t *def = NULL;
  llmux_buf_t msg = {0};
  size_t n = 0, i;

  c->sec_type = SEC_SKIP;
  c->sec = NULL;
  c->secdef = NULL;
  c->seen = 0;
  for (tok = strtok_r(copy, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
    if (n < LLMUX_COUNTOF(args)) args[n] = tok;
    n++;
  }
  if (n == 0) {
    err(c, "empty section header '[]'");
    goto done;
  }
  for (i = 0; i < LLMUX_COUNTOF(sections); i++) {
    names[i] = sections[i].name;
    if (strcasecmp(args[0], sections[i].name) == 0) def = &sections[i];
  }
  if (def == NULL) {
    llmux_buf_printf(&msg, "unknown section type '%s'", args[0]);
    hint(&msg, args[0], names, LLMUX_COUNTOF(sections), "sections");
    err(c, "%s", msg.base);
    goto done;
  }
  if ((int)n - 1 != def->nargs) {
    err(c, "bad section header: expected %s", def->usage);
    goto done;
  }
  if (def->type == SEC_SERVER && !server_section_ok(c)) goto done;
  c->secdef = def;
  c->sec_type = def->type;
  c->sec = new_section(c, def->type, args + 1);
  set_origin(c, def->type, c->sec);
done:
  llmux_buf_free(&msg);
  free(copy);
}

/* ---- The reader: one physical line per call ---------------------------- */

/* inih's rule for where a value or section name ends: at one of `chars`, or
 * at an inline ';' comment that follows white space. */
static const char *find_chars_or_comment(const char *s, const char *chars) {
  int was_space = 0;
  while (*s && (!chars || !strchr(chars, *s)) && !(was_space && *s == ';')) {
    was_space = isspace((unsigned char)*s);
    s++;
  }
  return s;
}

static void classify_section(load_t *c, const char *start) {
  const char *end = find_chars_or_comment(start + 1, "]"), *rest;
  if (*end != ']') {
    c->line_kind = LK_BAD;
    err(c, "malformed section header: missing ']'");
    c->sec_type = SEC_SKIP;
    return;
  }
  c->line_kind = LK_SECTION;
  c->inih_has_key = 0;
  rest = end + 1;
  while (isspace((unsigned char)*rest)) rest++;
  if (*rest && *rest != ';' && *rest != '#') {
    err(c, "unexpected text after ']'");
    c->sec_type = SEC_SKIP;
    return;
  }
  begin_section(c, start + 1, (size_t)(end - start - 1));
}

static void classify(load_t *c, const char *line) {
  const char *s = line, *start, *end;
  if (c->lineno == 1 && (unsigned char)s[0] == 0xEF && (unsigned char)s[1] == 0xBB &&
      (unsigned char)s[2] == 0xBF)
    s += 3;
  start = s;
  while (isspace((unsigned char)*start)) start++;
  if (*start == '\0') { c->line_kind = LK_BLANK; return; }
  if (*start == ';' || *start == '#') { c->line_kind = LK_COMMENT; return; }
  if (c->inih_has_key && start > line) { c->line_kind = LK_CONT; return; }
  if (*start == '[') { classify_section(c, start); return; }
  end = find_chars_or_comment(start, "=:");
  if (*end == '=' || *end == ':') {
    c->line_kind = LK_KEY;
    c->inih_has_key = 1;
    return;
  }
  c->line_kind = LK_BAD;
  err(c, "malformed line: expected 'key = value', '[section]' or a comment");
}

static char *reader(char *str, int num, void *stream) {
  load_t *c = stream;
  const char *p, *nl;
  size_t n, content;
  if (c->pos >= c->len) return NULL;
  p = c->buf + c->pos;
  nl = memchr(p, '\n', c->len - c->pos);
  n = nl ? (size_t)(nl - p) + 1 : c->len - c->pos;
  c->pos += n;
  c->lineno++;
  content = n;
  while (content > 0 && (p[content - 1] == '\n' || p[content - 1] == '\r')) content--;
  if (memchr(p, '\0', n) != NULL) {
    err(c, "NUL byte in line");
    strcpy(str, "\n");
  } else if (content + 3 > (size_t)num) {
    /* inih would split the line and parse the pieces as separate lines. */
    err(c, "line too long (%zu characters, at most %d)", content, num - 3);
    while (content > 0 && isspace((unsigned char)*p)) { p++; content--; }
    if (content > 0 && *p == '[') c->sec_type = SEC_SKIP;
    strcpy(str, "\n");
  } else {
    memcpy(str, p, n);
    str[n] = '\0';
  }
  classify(c, str);
  return str;
}

/* ---- Values ------------------------------------------------------------ */

static void bad_value(load_t *c, const char *key, const char *value, const char *expect) {
  err(c, "bad value for '%s': '%s' (expected %s)", key, value, expect);
}

/* Splits a comma-separated value and calls `fn` on each trimmed item. */
static void for_each_item(load_t *c, const keydef_t *k, const char *value,
                          void (*fn)(load_t *, const keydef_t *, char *)) {
  char *copy = sdup(c, value), *item, *save = NULL;
  for (item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
    item = llmux_trim(item);
    if (*item) fn(c, k, item);
  }
}

static void add_list_item(load_t *c, const keydef_t *k, char *item) {
  llmux_strlist_t *l = (llmux_strlist_t *)((char *)c->sec + k->off);
  if (!valid_name(item)) {
    err(c, "bad name '%s' in '%s' (names have no spaces; separate them with commas)",
        item, k->name);
    return;
  }
  l->items = arena_grow(c->cfg->arena, l->items, l->len, sizeof(*l->items));
  l->lines = arena_grow(c->cfg->arena, l->lines, l->len, sizeof(*l->lines));
  l->items[l->len] = item;
  l->lines[l->len] = c->lineno;
  l->len++;
}

static void add_cap(load_t *c, const keydef_t *k, char *item) {
  static const char *const names[] = {"tools", "vision", "json", "embeddings", "responses"};
  unsigned *caps = (unsigned *)((char *)c->sec + k->off);
  llmux_buf_t msg = {0};
  size_t i;
  for (i = 0; i < LLMUX_COUNTOF(names); i++) {
    if (strcasecmp(item, names[i]) == 0) { *caps |= 1u << i; return; }
  }
  llmux_buf_printf(&msg, "unknown capability '%s'", item);
  hint(&msg, item, names, LLMUX_COUNTOF(names), "capabilities");
  err(c, "%s", msg.base);
  llmux_buf_free(&msg);
}

static void add_weight(load_t *c, const keydef_t *k, char *item) {
  llmux_profile_conf_t *p = c->sec;
  double w;
  if (llmux_parse_double(item, &w) != 0 || !(w > 0)) {
    bad_value(c, k->name, item, "a positive number per model");
    return;
  }
  p->weights = arena_grow(c->cfg->arena, p->weights, p->nweights, sizeof(*p->weights));
  p->weights[p->nweights++] = w;
}

static int hexval(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* One `key_sha256` item: 64 hex digits. The value is never echoed: a user
 * may have pasted the key itself here. */
/* A tenant's key_sha256, or [server] admin_key_sha256: both lists of
 * digests, one per key, so a key can be rotated without a gap. */
static void add_key_hash(load_t *c, const keydef_t *k, char *item) {
  llmux_tenant_conf_t *t = c->sec;
  llmux_server_conf_t *srv = &c->cfg->server;
  unsigned char h[LLMUX_KEY_HASH_LEN];
  unsigned char(**hashes)[LLMUX_KEY_HASH_LEN];
  int **lines;
  size_t *count;
  size_t i, n = strlen(item);
  const char *who = c->sec_type == SEC_SERVER ? "admin" : t->name;
  if (strncmp(item, "llmux-", 6) == 0) {
    err(c, "'%s' holds a key, not its SHA-256: a key must never be written in a "
           "config file; put the key_sha256 digest that `llmux key new %s` prints here",
        k->name, who);
    return;
  }
  for (i = 0; n == 2 * LLMUX_KEY_HASH_LEN && i < LLMUX_KEY_HASH_LEN; i++) {
    int hi = hexval(item[2 * i]), lo = hexval(item[2 * i + 1]);
    if (hi < 0 || lo < 0) break;
    h[i] = (unsigned char)(hi << 4 | lo);
  }
  if (n != 2 * LLMUX_KEY_HASH_LEN || i != LLMUX_KEY_HASH_LEN) {
    err(c, "bad value for '%s' (expected the key's SHA-256 as 64 hex digits, as printed "
           "by `llmux key new %s`)", k->name, who);
    return;
  }
  if (c->sec_type == SEC_SERVER) {
    hashes = &srv->admin_key_hashes, lines = &srv->admin_key_lines, count = &srv->nadmin_keys;
  } else {
    hashes = &t->key_hashes, lines = &t->key_lines, count = &t->nkeys;
  }
  *hashes = arena_grow(c->cfg->arena, *hashes, *count, sizeof(**hashes));
  *lines = arena_grow(c->cfg->arena, *lines, *count, sizeof(**lines));
  memcpy((*hashes)[*count], h, sizeof h);
  (*lines)[*count] = c->lineno;
  (*count)++;
}

static void set_list(load_t *c, const keydef_t *k, const char *value) {
  if (k->type == K_KEYHASH) for_each_item(c, k, value, add_key_hash);
  else if (k->type == K_CAPS) for_each_item(c, k, value, add_cap);
  else if (k->type == K_WEIGHTS) for_each_item(c, k, value, add_weight);
  else for_each_item(c, k, value, add_list_item);
  if (c->sec_type == SEC_PROFILE && k->type == K_LIST && k->off == PRO(model_names))
    ((llmux_profile_conf_t *)c->sec)->models_line = c->lineno;
  if (c->sec_type == SEC_TENANT && k->type == K_LIST)
    ((llmux_tenant_conf_t *)c->sec)->has_models = 1;
}

static int parse_listen(load_t *c, const char *s, const char **host, int *port) {
  const char *h, *he, *ps;
  uint64_t v;
  char *hs;
  if (s[0] == '[') {
    h = s + 1;
    he = strchr(h, ']');
    if (he == NULL || he[1] != ':') return LLMUX_EINVAL;
    ps = he + 2;
  } else {
    h = s;
    he = strrchr(s, ':');
    if (he == NULL || memchr(s, ':', (size_t)(he - s)) != NULL) return LLMUX_EINVAL;
    ps = he + 1;
  }
  if (he == h || llmux_parse_u64(ps, &v) != 0 || v > 65535) return LLMUX_EINVAL;
  hs = alloc(c, (size_t)(he - h) + 1);
  memcpy(hs, h, (size_t)(he - h));
  *host = hs;
  *port = (int)v;
  return 0;
}

static int valid_env_name(const char *s) {
  if (!(isalpha((unsigned char)*s) || *s == '_')) return 0;
  for (s++; *s; s++) {
    if (!(isalnum((unsigned char)*s) || *s == '_')) return 0;
  }
  return 1;
}

/* `http://user:password@host/`: a secret in the file (never echoed). */
static int url_has_userinfo(const char *url) {
  const char *authority = strstr(url, "://") + 3;
  return memchr(authority, '@', strcspn(authority, "/?#")) != NULL;
}

static void set_string(load_t *c, const keydef_t *k, const char *value, void *field) {
  const char **f = field;
  char *v;
  size_t n;
  switch (k->type) {
  case K_URL:
    if (strncmp(value, "http://", 7) != 0 && strncmp(value, "https://", 8) != 0) {
      bad_value(c, k->name, value, "an http:// or https:// URL");
      return;
    }
    if (url_has_userinfo(value)) {
      err(c, "'%s' carries credentials (user:password@host): keys never go in a config "
             "file; set api_key_env = VARIABLE and export the key there", k->name);
      return;
    }
    v = sdup(c, value);
    n = strlen(v);
    while (n > 0 && v[n - 1] == '/') v[--n] = '\0';
    *f = v;
    return;
  case K_ENVNAME:
    /* Never echo it: a user may have pasted the key itself here. */
    if (!valid_env_name(value)) {
      err(c, "'%s' must name an environment variable (letters, digits, "
             "'_'), not hold the key itself", k->name);
      return;
    }
    *f = sdup(c, value);
    return;
  case K_PATH:
    *f = *value ? path_join(c->cfg->arena, c->dir, value) : NULL;
    return;
  case K_LOGDEST: /* a file (relative to this file), "stdout", or "off" */
    if (*value == '\0' || strcasecmp(value, "off") == 0) *f = NULL;
    else if (strcmp(value, "stdout") == 0) *f = sdup(c, value);
    else *f = path_join(c->cfg->arena, c->dir, value);
    return;
  default:
    if (*value == '\0') {
      bad_value(c, k->name, value, "a value");
      return;
    }
    *f = sdup(c, value);
    return;
  }
}

/* A port number between s and e: 1 to 65535. */
static int port_ok(const char *s, const char *e) {
  unsigned v = 0;
  if (s == e || e - s > 5) return 0;
  for (; s < e; s++) {
    if (*s < '0' || *s > '9') return 0;
    v = v * 10 + (unsigned)(*s - '0');
  }
  return v >= 1 && v <= 65535;
}

/* [server] otlp_endpoint: http://host[:port][/path], the collector's base
 * URL (spans go to {it}/v1/traces); empty turns traces off. https is
 * refused: no key can reach a collector that wants one (keys never go in a
 * file), so one beside llmux (an OpenTelemetry Collector) takes plain http
 * and forwards with TLS and auth. 1: set_string goes on (it refuses
 * credentials without echoing them); 0: done here. */
static int otlp_endpoint_ok(load_t *c, const char *value, void *field) {
  static const char expect[] = "a collector's URL, http://host[:port][/path]";
  const char *host = value + 7, *end, *port;
  if (*value == '\0') {
    *(const char **)field = NULL;
    return 0;
  }
  if (strncasecmp(value, "https://", 8) == 0) {
    err(c, "'otlp_endpoint' must be http://: llmux does not send traces over TLS (run an "
           "OpenTelemetry Collector beside it on http://127.0.0.1:4318 and let it forward "
           "with TLS)");
    return 0;
  }
  if (strncasecmp(value, "http://", 7) != 0) goto bad;
  end = host + strcspn(host, "/");
  if (memchr(host, '@', (size_t)(end - host)) != NULL) return 1;
  if (strpbrk(value, "?# \t") != NULL) goto bad;
  if (*host == '[') { /* [v6]: the port follows ']' */
    port = memchr(host, ']', (size_t)(end - host));
    if (port == NULL || port == host + 1) goto bad;
    port++;
  } else {
    port = memchr(host, ':', (size_t)(end - host));
    if (port == NULL) port = end;
    if (port == host) goto bad;
  }
  if (port < end && (*port != ':' || !port_ok(port + 1, end))) goto bad;
  return 1;
bad:
  bad_value(c, "otlp_endpoint", value, expect);
  return 0;
}

/* [server] shared_state: redis://HOST[:PORT][/DB], empty for none. The
 * whole URL is parsed again when the gateway starts (shared/redis.h); here
 * what a file must not hold (a password) and the shape, with the line. */
static void shared_state_set(load_t *c, const char *value) {
  static const char expect[] = "redis://HOST[:PORT][/DB]";
  llmux_server_conf_t *s = &c->cfg->server;
  const char *host = value + 8, *end, *p;
  s->shared_state = NULL;
  s->shared_state_line = c->lineno;
  if (*value == '\0') return;
  if (strncasecmp(value, "redis://", 8) != 0) {
    if (strncasecmp(value, "rediss://", 9) == 0)
      err(c, "'shared_state' must be redis://: llmux does not speak TLS to Redis (reach "
             "it over a private network or a local TLS tunnel)");
    else
      bad_value(c, "shared_state", value, expect);
    return;
  }
  end = host + strcspn(host, "/");
  if (memchr(host, '@', (size_t)(end - host)) != NULL) {
    err(c, "'shared_state' carries credentials (user:password@host): passwords never go "
           "in a config file; set shared_state_password_env = VARIABLE and export it there");
    return;
  }
  if (host == end || strpbrk(value, "?# \t") != NULL) goto bad;
  if (*host == '[') {
    p = memchr(host, ']', (size_t)(end - host));
    if (p == NULL || p == host + 1) goto bad;
    p++;
  } else {
    p = memchr(host, ':', (size_t)(end - host));
    if (p == NULL) p = end;
    if (p == host) goto bad;
  }
  if (p < end && (*p != ':' || !port_ok(p + 1, end))) goto bad;
  if (*end == '/') { /* a database number, 0..65535 */
    const char *d = end + 1;
    unsigned long db = 0;
    if (*d == '\0' || strlen(d) > 5) goto bad;
    for (; *d; d++) {
      if (*d < '0' || *d > '9') goto bad;
      db = db * 10 + (unsigned long)(*d - '0');
    }
    if (db > 65535) goto bad;
  }
  s->shared_state = sdup(c, value);
  return;
bad:
  bad_value(c, "shared_state", value, expect);
}

/* [server] workers: a number of processes (1 to 1024), or auto (one per
 * CPU). */
static void workers_set(load_t *c, const char *value) {
  llmux_server_conf_t *s = &c->cfg->server;
  uint64_t n;
  s->workers_line = c->lineno;
  if (strcasecmp(value, "auto") == 0) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    s->workers = cpus > 0 ? (uint64_t)cpus : 1;
    s->workers_auto = 1;
    return;
  }
  if (llmux_parse_u64(value, &n) != 0 || n < 1 || n > 1024) {
    bad_value(c, "workers", value, "a number of processes from 1 to 1024, or auto");
    return;
  }
  s->workers = n;
  s->workers_auto = 0;
}

/* Parses a scalar into `field`; NULL on success, else what was expected. */
static const char *parse_scalar(int type, const char *value, void *field) {
  uint64_t u;
  double d;
  int b;
  switch (type) {
  case K_DURATION:
    if (llmux_parse_duration(value, &u) != 0) return "a duration like 500ms, 10s, 2m";
    *(uint64_t *)field = u;
    return NULL;
  case K_SIZE:
    if (llmux_parse_size(value, &u) != 0) return "a size like 16k, 8m";
    *(uint64_t *)field = u;
    return NULL;
  case K_U64:
  case K_LIMIT:
    if (llmux_parse_u64(value, &u) != 0) return "a whole number";
    *(uint64_t *)field = u;
    return NULL;
  case K_INT:
    if (llmux_parse_u64(value, &u) != 0 || u > INT_MAX) return "a whole number";
    *(int *)field = (int)u;
    return NULL;
  case K_TIER:
    if (llmux_parse_u64(value, &u) != 0 || u < 1 || u > 5) return "a tier from 1 to 5";
    *(int *)field = (int)u;
    return NULL;
  case K_BOOL:
    if (llmux_parse_bool(value, &b) != 0) return "true or false";
    *(int *)field = b;
    return NULL;
  case K_PRICE:
    if (llmux_parse_double(value, &d) != 0 || d < 0)
      return "USD per million tokens, like 0.59";
    *(double *)field = d;
    return NULL;
  case K_USD:
    if (llmux_parse_double(value, &d) != 0 || d < 0) return "an amount in USD, like 25.50";
    *(double *)field = d;
    return NULL;
  case K_LOGLEVEL:
    if (llmux_log_parse_level(value, &b) != 0) return "error, warn, info or debug";
    *(int *)field = b;
    return NULL;
  default:
    return "a value";
  }
}

static void set_number(load_t *c, const keydef_t *k, const char *value, void *field) {
  const char *expect = parse_scalar(k->type, value, field);
  if (expect) bad_value(c, k->name, value, expect);
}

static void set_value(load_t *c, const keydef_t *k, const char *value) {
  void *field = (char *)c->sec + k->off;
  static const char *const strategies[] = {
    "priority", "lowest-latency", "least-loaded", "cheapest", "weighted"};
  size_t i;
  switch (k->type) {
  case K_STR: case K_URL: case K_ENVNAME: case K_PATH: case K_LOGDEST:
    if (c->sec_type == SEC_SERVER && k->off == SRV(otlp_endpoint) &&
        !otlp_endpoint_ok(c, value, field))
      return;
    set_string(c, k, value, field);
    if (k->off == SRV(providers_dir) && c->sec_type == SEC_SERVER)
      c->providers_dir_line = c->lineno;
    if (c->sec_type == SEC_AGENT) ((llmux_agent_conf_t *)c->sec)->profile_line = c->lineno;
    if (c->sec_type == SEC_PROFILE && k->off == PRO(fallback_local_name))
      ((llmux_profile_conf_t *)c->sec)->fallback_local_line = c->lineno;
    else if (c->sec_type == SEC_PROFILE)
      ((llmux_profile_conf_t *)c->sec)->escalate_line = c->lineno;
    return;
  case K_LIST: case K_CAPS: case K_WEIGHTS: case K_KEYHASH:
    set_list(c, k, value);
    return;
  case K_LIMIT:
    set_number(c, k, value, field);
    /* limits.set sits at the same place relative to the struct's limits. */
    if (c->sec_type == SEC_PROVIDER) ((llmux_provider_conf_t *)c->sec)->limits.set |= k->bit;
    else if (c->sec_type == SEC_TENANT) ((llmux_tenant_conf_t *)c->sec)->limits.set |= k->bit;
    else ((llmux_route_conf_t *)c->sec)->limits.set |= k->bit;
    return;
  case K_USD:
    set_number(c, k, value, field);
    ((llmux_tenant_conf_t *)c->sec)->has_budget = 1;
    return;
  case K_PRICE:
    set_number(c, k, value, field);
    if (c->sec_type == SEC_ROUTE) ((llmux_route_conf_t *)c->sec)->price_set |= k->bit;
    else ((llmux_model_conf_t *)c->sec)->has_price = 1;
    return;
  case K_STRATEGY:
    for (i = 0; i < LLMUX_COUNTOF(strategies); i++) {
      if (strcasecmp(value, strategies[i]) == 0) { *(llmux_strategy_t *)field = i; return; }
    }
    bad_value(c, k->name, value,
              "priority, lowest-latency, least-loaded, cheapest or weighted");
    return;
  case K_REDIS:
    shared_state_set(c, value);
    return;
  case K_WORKERS:
    workers_set(c, value);
    return;
  case K_CACHE:
    if (strcasecmp(value, "off") == 0) c->cfg->server.cache = LLMUX_CACHE_OFF;
    else if (strcasecmp(value, "memory") == 0) c->cfg->server.cache = LLMUX_CACHE_MEMORY;
    else if (strcasecmp(value, "redis") == 0) c->cfg->server.cache = LLMUX_CACHE_REDIS;
    else bad_value(c, k->name, value, "off, memory or redis");
    c->cfg->server.cache_line = c->lineno;
    return;
  case K_FAILMODE:
    if (strcasecmp(value, "open") == 0) c->cfg->server.shared_state_fail_closed = 0;
    else if (strcasecmp(value, "closed") == 0) c->cfg->server.shared_state_fail_closed = 1;
    else bad_value(c, k->name, value, "open or closed");
    return;
  case K_LISTEN:
    if (parse_listen(c, value, &c->cfg->server.host, &c->cfg->server.port) == 0)
      c->cfg->server.listen = sdup(c, value);
    else
      bad_value(c, k->name, value, "host:port or [ipv6]:port");
    return;
  default:
    set_number(c, k, value, field);
    return;
  }
}

/* ---- Literal secrets --------------------------------------------------- */

/* Prefixes of providers' API keys: OpenAI (and DeepSeek), Anthropic,
 * OpenRouter, Groq, Cerebras, NVIDIA. A value holds a key when a prefix
 * starts a token (no key character just before it) and is followed by at
 * least KEY_MIN_RUN key characters with a digit or a capital among them.
 * Real keys carry 32 to 100+ random characters after the prefix; names that
 * share one are short ("sk-learn", "nvapi-docs", "sk-1.5-chat" stops at the
 * '.') or plain lowercase words. Longest first, so the message names the
 * most specific prefix. */
static const char *const key_prefixes[] = {"sk-ant-", "sk-or-", "sk-", "gsk_", "csk-",
                                           "nvapi-"};
#define KEY_MIN_RUN 20
/* `Bearer TOKEN` (any case) is a credential when TOKEN, an RFC 7235 token68,
 * has at least this many characters; "bearer auth" in prose is not one. */
#define BEARER_MIN_TOKEN 8

static int is_secret_key(const char *name) {
  size_t i;
  for (i = 0; i < LLMUX_COUNTOF(secret_keys); i++) {
    if (strcasecmp(name, secret_keys[i]) == 0) return 1;
  }
  return 0;
}

static int key_char(int ch) {
  return isalnum(ch) || ch == '-' || ch == '_';
}

static int token68_char(int ch) {
  return isalnum(ch) || (ch != '\0' && strchr("-._~+/=", ch) != NULL);
}

/* The prefix of the key that starts at s, or NULL. */
static const char *key_at(const char *s) {
  size_t i, n, run;
  int mixed;
  for (i = 0; i < LLMUX_COUNTOF(key_prefixes); i++) {
    n = strlen(key_prefixes[i]);
    if (strncmp(s, key_prefixes[i], n) != 0) continue;
    for (run = 0, mixed = 0; key_char((unsigned char)s[n + run]); run++)
      mixed |= isdigit((unsigned char)s[n + run]) || isupper((unsigned char)s[n + run]);
    if (run >= KEY_MIN_RUN && mixed) return key_prefixes[i];
  }
  return NULL;
}

static int bearer_at(const char *s) {
  size_t n = 0;
  if (strncasecmp(s, "bearer", 6) != 0 || (s[6] != ' ' && s[6] != '\t')) return 0;
  for (s += 6; *s == ' ' || *s == '\t'; s++) continue;
  while (token68_char((unsigned char)s[n])) n++;
  return n >= BEARER_MIN_TOKEN;
}

/* What the first literal credential in `value` starts with ("sk-",
 * "Bearer "), or NULL when there is none. */
static const char *literal_secret(const char *value) {
  const char *p, *kind;
  for (p = value; *p; p++) {
    if (p > value && key_char((unsigned char)p[-1])) continue;
    if ((kind = key_at(p)) != NULL) return kind;
    if (bearer_at(p)) return "Bearer ";
  }
  return NULL;
}

/* Never echoes the value: says what it looks like and where keys belong. */
static void secret_error(load_t *c, const char *name, const char *kind) {
  if (c->sec_type == SEC_PROVIDER && strncasecmp(name, "header.", 7) == 0)
    err(c, "'%s' holds what looks like a literal key (%s...): keys never go in a config "
           "file; export it in an environment variable and write header_env.%s = VARIABLE",
        name, kind, name + 7);
  else
    err(c, "'%s' holds what looks like a literal key (%s...): keys never go in a config "
           "file; export it in an environment variable and name that with api_key_env = "
           "VARIABLE (header_env.NAME = VARIABLE for a header)", name, kind);
}

/* A secret on this line, by the key's name (api_key, header.Authorization)
 * or by the look of its value, in any section: reported, and the line is
 * dropped. Returns 1 when it was. */
static int refuse_secret(load_t *c, const char *name, const char *value) {
  const char *kind;
  if (c->sec_type == SEC_PROVIDER && is_secret_key(name)) {
    err(c, "'%s' puts a secret in a config file: set api_key_env = VARIABLE and export the "
           "key in that environment variable instead (header_env.NAME = VARIABLE for "
           "another header)", name);
  } else if (c->sec_type == SEC_TENANT && is_secret_key(name)) {
    err(c, "'%s' would put a tenant's key in a config file: store only its SHA-256 "
           "(key_sha256 = HEX, as printed by `llmux key new %s`)", name,
        ((llmux_tenant_conf_t *)c->sec)->name);
  } else if ((kind = literal_secret(value)) != NULL) {
    secret_error(c, name, kind);
  } else {
    return 0;
  }
  c->cont_suppress = 1;
  return 1;
}

/* ---- Key handlers ------------------------------------------------------ */

static llmux_conf_kv_t *push_kv(load_t *c, llmux_conf_kv_t **arr, size_t *n,
                                const char *key, const char *value) {
  llmux_conf_kv_t *kv;
  *arr = arena_grow(c->cfg->arena, *arr, *n, sizeof(**arr));
  kv = &(*arr)[(*n)++];
  kv->key = sdup(c, key);
  kv->value = sdup(c, value);
  kv->file = c->file;
  kv->line = c->lineno;
  kv->env = NULL;
  return kv;
}

/* `header_env.NAME = VARIABLE`: the header's value is read from the
 * environment in check_provider, as api_key_env's is. */
static void header_env_key(load_t *c, const char *name, const char *value) {
  llmux_provider_conf_t *p = c->sec;
  llmux_conf_kv_t *kv;
  if (!valid_name(name + 11) || !valid_env_name(value)) {
    err(c, "'%s' must name an environment variable (letters, digits, '_') that holds "
           "the header's value", name);
    c->cont_suppress = 1;
    return;
  }
  kv = push_kv(c, &p->headers, &p->nheaders, name + 11, value);
  kv->env = kv->value;
  kv->value = "";
}

/* Keys of a [provider] section the host does not know: headers and the
 * plugin's own keys, checked later against the plugin's declaration. */
static void provider_other_key(load_t *c, const char *name, const char *value) {
  llmux_provider_conf_t *p = c->sec;
  if (strncasecmp(name, "header_env.", 11) == 0) {
    header_env_key(c, name, value);
    return;
  }
  if (strncasecmp(name, "header.", 7) == 0) {
    if (!valid_name(name + 7)) {
      err(c, "bad header name in '%s'", name);
      c->cont_suppress = 1;
      return;
    }
    push_kv(c, &p->headers, &p->nheaders, name + 7, value);
    return;
  }
  c->cont_kv = push_kv(c, &p->extra, &p->nextra, name, value);
}

static void unknown_key(load_t *c, const char *name);

/* Keys of a [tenant] section outside its table: `agent.NAME = PROFILE`. */
static void tenant_other_key(load_t *c, const char *name, const char *value) {
  llmux_tenant_conf_t *t = c->sec;
  llmux_agent_override_t *o;
  if (strncasecmp(name, "agent.", 6) != 0) {
    unknown_key(c, name);
    return;
  }
  if (!valid_name(name + 6) || !valid_name(value)) {
    err(c, "bad agent override '%s = %s': expected 'agent.NAME = PROFILE'", name, value);
    c->cont_suppress = 1;
    return;
  }
  t->agent_overrides = arena_grow(c->cfg->arena, t->agent_overrides, t->nagent_overrides,
                                  sizeof(*t->agent_overrides));
  o = &t->agent_overrides[t->nagent_overrides++];
  memset(o, 0, sizeof(*o));
  o->agent_name = sdup(c, name + 6);
  o->profile_name = sdup(c, value);
  o->file = c->file;
  o->line = c->lineno;
}

static void unknown_key(load_t *c, const char *name) {
  const char *names[32];
  llmux_buf_t msg = {0};
  size_t i;
  for (i = 0; i < c->secdef->nkeys; i++) names[i] = c->secdef->keys[i].name;
  llmux_buf_printf(&msg, "unknown key '%s' in [%s]", name, c->secdef->name);
  hint(&msg, name, names, c->secdef->nkeys, "keys");
  err(c, "%s", msg.base);
  llmux_buf_free(&msg);
  c->cont_suppress = 1;
}

static void add_user_alias(load_t *c, const char *name, const char *value) {
  llmux_alias_conf_t *a;
  if (!valid_name(name) || !valid_name(value)) {
    err(c, "bad alias '%s = %s': expected 'name = target', one name each side", name,
        value);
    c->cont_suppress = 1;
    return;
  }
  a = alloc(c, sizeof(*a));
  a->name = sdup(c, name);
  a->target = sdup(c, value);
  a->file = c->file;
  a->line = c->lineno;
  a->index = c->cfg->naliases;
  VEC_PUSH(c->cfg->aliases, c->cfg->naliases, a);
  c->cont_name = a->name;
}

static void section_key(load_t *c, const char *name, const char *value) {
  const secdef_t *def = c->secdef;
  size_t i;
  for (i = 0; i < def->nkeys; i++) {
    if (strcasecmp(def->keys[i].name, name) == 0) break;
  }
  if (i == def->nkeys) {
    if (c->sec_type == SEC_PROVIDER) provider_other_key(c, name, value);
    else if (c->sec_type == SEC_TENANT) tenant_other_key(c, name, value);
    else unknown_key(c, name);
    return;
  }
  /* key_sha256 may be repeated: one line per key, for rotation. */
  if ((c->seen & ((uint64_t)1 << i)) && def->keys[i].type != K_KEYHASH) {
    err(c, "duplicate key '%s' (first set on line %d)", def->keys[i].name, c->seen_line[i]);
    c->cont_suppress = 1;
    return;
  }
  c->seen |= (uint64_t)1 << i;
  c->seen_line[i] = c->lineno;
  if (IS_LIST_KEY(def->keys[i].type)) c->cont_key = &def->keys[i];
  set_value(c, &def->keys[i], value);
}

static void continuation(load_t *c, const char *raw) {
  char *v = sdup(c, raw);
  const char *kind;
  *(char *)find_chars_or_comment(v, NULL) = '\0';
  v = llmux_trim(v);
  if (c->cont_suppress || c->sec_type == SEC_SKIP || c->sec_type == SEC_NONE) return;
  if ((kind = literal_secret(v)) != NULL) {
    secret_error(c, c->cont_name ? c->cont_name : "?", kind);
    c->cont_suppress = 1;
    return;
  }
  if (c->cont_key != NULL) {
    set_list(c, c->cont_key, v);
  } else if (c->cont_kv != NULL) {
    size_t n = strlen(c->cont_kv->value), m = strlen(v);
    char *joined = alloc(c, n + m + 3);
    memcpy(joined, c->cont_kv->value, n);
    memcpy(joined + n, ", ", 2);
    memcpy(joined + n + 2, v, m + 1);
    c->cont_kv->value = joined;
  } else {
    err(c, "indented line continues '%s', which takes a single value "
           "(remove the indentation)", c->cont_name ? c->cont_name : "?");
  }
}

static int on_key(void *user, const char *section, const char *name, const char *value) {
  load_t *c = user;
  (void)section; /* ours, from the reader, is not truncated at 50 bytes */
  if (c->line_kind == LK_CONT) {
    continuation(c, value);
    return 1;
  }
  c->cont_key = NULL;
  c->cont_kv = NULL;
  c->cont_suppress = 0;
  c->cont_name = name[0] ? sdup(c, name) : "";
  if (name[0] == '\0') {
    err(c, "missing key name before '='");
    c->cont_suppress = 1;
    return 1;
  }
  if (refuse_secret(c, name, value)) return 1;
  switch (c->sec_type) {
  case SEC_NONE:
    err(c, "key '%s' outside of any section", name);
    c->cont_suppress = 1;
    break;
  case SEC_SKIP:
    break;
  case SEC_ALIAS:
    add_user_alias(c, name, value);
    break;
  default:
    section_key(c, name, value);
    break;
  }
  return 1;
}

/* ---- Files ------------------------------------------------------------- */

/* What a path that is not a regular file is, for the diagnostic. */
static const char *file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "directory";
  if (S_ISCHR(mode)) return "character device";
  if (S_ISBLK(mode)) return "block device";
  if (S_ISFIFO(mode)) return "FIFO";
  if (S_ISSOCK(mode)) return "socket";
  return "special file";
}

/* Reads a whole regular file: 0, or -errno, or 1 with *kind set when the
 * path is something else. The check is made on the opened descriptor, so
 * nothing can be swapped in between; fstat follows symlinks (a link to a
 * regular file is fine, one to /dev/zero is not), and O_NONBLOCK makes
 * opening a FIFO with no writer return at once instead of hanging. */
static int read_whole(const char *path, char **out, size_t *len, const char **kind) {
  llmux_buf_t b = {0};
  char chunk[8192];
  struct stat st;
  FILE *fp;
  size_t n;
  int fd, e;
  fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return -errno;
  if (fstat(fd, &st) != 0) goto fail;
  if (!S_ISREG(st.st_mode)) {
    *kind = file_kind(st.st_mode);
    close(fd);
    return 1;
  }
  if ((fp = fdopen(fd, "rb")) == NULL) goto fail;
  while ((n = fread(chunk, 1, sizeof(chunk), fp)) > 0) {
    if (llmux_buf_append(&b, chunk, n) != 0) abort();
  }
  e = ferror(fp) ? -EIO : 0;
  fclose(fp);
  if (e != 0) {
    llmux_buf_free(&b);
    return e;
  }
  *out = b.base;
  *len = b.len;
  return 0;
fail:
  e = -errno;
  close(fd);
  return e;
}

static void parse_file(load_t *c, const char *path, int is_main) {
  const char *kind = NULL;
  char *buf = NULL;
  size_t len = 0;
  int r;
  c->file = llmux__arena_strdup(c->cfg->arena, path);
  c->dir = dir_of(c->cfg->arena, path);
  c->is_main = is_main;
  r = read_whole(path, &buf, &len, &kind);
  if (r == 1) {
    llmux_diag_add(c->diag, path, 0, LLMUX_DIAG_ERROR, "not a regular file (%s)", kind);
    return;
  }
  if (r != 0) {
    llmux_diag_add(c->diag, path, 0, LLMUX_DIAG_ERROR, "cannot read: %s", strerror(-r));
    return;
  }
  /* The digest of the very bytes parsed, for GET /admin/config: a file
   * changed on disk since is told apart from the one in force. */
  c->cfg->file_sha256 = realloc(c->cfg->file_sha256,
                                (c->cfg->nfiles + 1) * sizeof *c->cfg->file_sha256);
  if (c->cfg->file_sha256 == NULL) abort();
  mbedtls_sha256_ret((const unsigned char *)(buf ? buf : ""), len,
                     c->cfg->file_sha256[c->cfg->nfiles], 0);
  VEC_PUSH(c->cfg->files, c->cfg->nfiles, c->file);
  c->buf = buf ? buf : "";
  c->len = len;
  c->pos = 0;
  c->lineno = 0;
  c->inih_has_key = 0;
  c->sec_type = SEC_NONE;
  c->sec = NULL;
  r = ini_parse_stream(reader, c, on_key, c);
  if (r == -2) abort();
  free(buf);
}

static int name_cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int same_file(const char *a, const char *b) {
  struct stat sa, sb;
  if (stat(a, &sa) != 0 || stat(b, &sb) != 0) return 0;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static void parse_providers_dir(load_t *c) {
  const char *dir = c->cfg->server.providers_dir;
  DIR *d = opendir(dir);
  struct dirent *de;
  char **names = NULL, *path;
  size_t n = 0, i, len;
  if (d == NULL) {
    /* The default directory is optional: a single-file config is fine. */
    if (c->providers_dir_line || errno != ENOENT)
      llmux_diag_add(c->diag, c->cfg->path, c->providers_dir_line, LLMUX_DIAG_ERROR,
                     "cannot open providers_dir '%s': %s", dir, strerror(errno));
    return;
  }
  while ((de = readdir(d)) != NULL) {
    len = strlen(de->d_name);
    if (de->d_name[0] == '.' || len < 5 || strcmp(de->d_name + len - 4, ".ini") != 0)
      continue;
    VEC_PUSH(names, n, llmux_xstrdup(de->d_name));
  }
  closedir(d);
  if (n) qsort(names, n, sizeof(*names), name_cmp);
  for (i = 0; i < n; i++) {
    path = path_join(c->cfg->arena, dir, names[i]);
    if (!same_file(path, c->cfg->path)) parse_file(c, path, 0);
    free(names[i]);
  }
  free(names);
}

/* ---- After every file: defaults, required keys, environment ------------ */

static void check_sections(load_t *c) {
  llmux_config_t *cfg = c->cfg;
  llmux_diag_t *d = c->diag;
  size_t i;
  for (i = 0; i < cfg->nmodels; i++) {
    llmux_model_conf_t *m = cfg->models[i];
    if (m->tier == 0)
      llmux_diag_add(d, m->file, m->line, LLMUX_DIAG_ERROR,
                     "model '%s' has no tier (tier = 1-5)", m->id);
  }
  for (i = 0; i < cfg->ngenerics; i++) {
    llmux_generic_conf_t *g = cfg->generics[i];
    if ((g->tier != 0) == (g->min_tier != 0))
      llmux_diag_add(d, g->file, g->line, LLMUX_DIAG_ERROR,
                     "generic '%s' needs exactly one of 'tier' or 'min_tier'", g->name);
    else if (g->max_tier && (!g->min_tier || g->max_tier < g->min_tier))
      llmux_diag_add(d, g->file, g->line, LLMUX_DIAG_ERROR,
                     "generic '%s': max_tier needs a min_tier not above it", g->name);
  }
  for (i = 0; i < cfg->nprofiles; i++) {
    llmux_profile_conf_t *p = cfg->profiles[i];
    if (p->model_names.len == 0)
      llmux_diag_add(d, p->file, p->line, LLMUX_DIAG_ERROR,
                     "profile '%s' has no models (models = a, b, ...)", p->name);
    if (p->nweights && p->nweights != p->model_names.len)
      llmux_diag_add(d, p->file, p->line, LLMUX_DIAG_ERROR,
                     "profile '%s' has %zu weights for %zu models", p->name, p->nweights,
                     p->model_names.len);
    else if (p->nweights && p->strategy != LLMUX_STRATEGY_WEIGHTED)
      llmux_diag_add(d, p->file, p->line, LLMUX_DIAG_WARNING,
                     "profile '%s': weights are ignored unless strategy = weighted",
                     p->name);
  }
  for (i = 0; i < cfg->nagents; i++) {
    llmux_agent_conf_t *a = cfg->agents[i];
    if (a->profile_name == NULL)
      llmux_diag_add(d, a->file, a->line, LLMUX_DIAG_ERROR,
                     "agent '%s' has no profile (profile = NAME)", a->name);
  }
  for (i = 0; i < cfg->nroutes; i++) {
    llmux_route_conf_t *r = cfg->routes[i];
    if (r->id == NULL) r->id = r->model_name;
  }
}

/* getenv(var), copied into the snapshot; when it is unset or empty, NULL,
 * and the provider is disabled (the first missing variable is the reason)
 * with a warning at `line`. */
static const char *provider_secret(load_t *c, llmux_provider_conf_t *p, const char *var,
                                   int line) {
  const char *v = getenv(var);
  size_t n = strlen(var);
  char *reason;
  if (v != NULL && *v != '\0') return sdup(c, v);
  if (p->enabled) {
    p->enabled = 0;
    reason = alloc(c, n + sizeof(" is not set"));
    memcpy(reason, var, n);
    memcpy(reason + n, " is not set", sizeof(" is not set"));
    p->disabled_reason = reason;
  }
  llmux_diag_add(c->diag, p->file, line, LLMUX_DIAG_WARNING,
                 "provider '%s' disabled: environment variable %s is not set", p->name, var);
  return NULL;
}

static void check_provider(load_t *c, llmux_provider_conf_t *p) {
  const char *v;
  size_t i;
  if (p->plugin == NULL)
    llmux_diag_add(c->diag, p->file, p->line, LLMUX_DIAG_ERROR,
                   "provider '%s' has no plugin (plugin = openai)", p->name);
  /* Without a plugin there is nothing to ask; otherwise a missing base_url
   * is checked against the plugin in core/providers.c: one that answers
   * locally (ABI 1.2 respond_local, e.g. `simple`) needs none. */
  if (p->plugin == NULL && p->base_url == NULL)
    llmux_diag_add(c->diag, p->file, p->line, LLMUX_DIAG_ERROR,
                   "provider '%s' has no base_url", p->name);
  if (!p->enabled) {
    p->disabled_reason = "enabled = false";
    return;
  }
  if (!p->tls_verify)
    llmux_diag_add(c->diag, p->file, p->line, LLMUX_DIAG_WARNING,
                   "provider '%s': TLS certificate verification is off (tls_verify = false)",
                   p->name);
  if (p->api_key_env != NULL) p->api_key = provider_secret(c, p, p->api_key_env, p->line);
  for (i = 0; i < p->nheaders; i++) {
    llmux_conf_kv_t *h = &p->headers[i];
    if (h->env != NULL && (v = provider_secret(c, p, h->env, h->line)) != NULL) h->value = v;
  }
}

/* ---- Tenants ----------------------------------------------------------- */

static const llmux_agent_conf_t *find_agent(const llmux_config_t *cfg, const char *name) {
  size_t i;
  for (i = 0; i < cfg->nagents; i++) {
    if (strcasecmp(cfg->agents[i]->name, name) == 0) return cfg->agents[i];
  }
  return NULL;
}

static const llmux_profile_conf_t *find_profile(const llmux_config_t *cfg, const char *name) {
  size_t i;
  for (i = 0; i < cfg->nprofiles; i++) {
    if (strcasecmp(cfg->profiles[i]->name, name) == 0) return cfg->profiles[i];
  }
  return NULL;
}

static void check_tenant_overrides(llmux_config_t *cfg, llmux_tenant_conf_t *t,
                                   llmux_diag_t *d) {
  size_t i, j;
  for (i = 0; i < t->nagent_overrides; i++) {
    llmux_agent_override_t *o = &t->agent_overrides[i];
    o->agent = find_agent(cfg, o->agent_name);
    o->profile = find_profile(cfg, o->profile_name);
    if (o->agent == NULL)
      llmux_diag_add(d, o->file, o->line, LLMUX_DIAG_ERROR,
                     "tenant '%s' overrides unknown agent '%s' (agents are [agent NAME] "
                     "sections)", t->name, o->agent_name);
    if (o->profile == NULL)
      llmux_diag_add(d, o->file, o->line, LLMUX_DIAG_ERROR,
                     "tenant '%s': agent '%s' names unknown profile '%s' (profiles are "
                     "[profile NAME] sections)", t->name, o->agent_name, o->profile_name);
    for (j = 0; j < i; j++) {
      if (strcasecmp(t->agent_overrides[j].agent_name, o->agent_name) == 0)
        llmux_diag_add(d, o->file, o->line, LLMUX_DIAG_ERROR,
                       "duplicate override of agent '%s' (first on line %d)", o->agent_name,
                       t->agent_overrides[j].line);
    }
  }
}

/* A key hash given twice, to one tenant or two, is a mistake either way. */
static void check_tenant_keys(llmux_config_t *cfg, size_t ti, llmux_diag_t *d) {
  llmux_tenant_conf_t *t = cfg->tenants[ti];
  size_t i, oj, ok;
  for (i = 0; i < t->nkeys; i++) {
    for (oj = 0; oj <= ti; oj++) {
      const llmux_tenant_conf_t *o = cfg->tenants[oj];
      size_t end = oj == ti ? i : o->nkeys;
      for (ok = 0; ok < end; ok++) {
        if (memcmp(o->key_hashes[ok], t->key_hashes[i], LLMUX_KEY_HASH_LEN) != 0) continue;
        llmux_diag_add(d, t->file, t->key_lines[i], LLMUX_DIAG_ERROR,
                       "this key_sha256 is already given to tenant '%s' (%s:%d)", o->name,
                       o->file, o->key_lines[ok]);
      }
    }
  }
}

static void check_tenants(llmux_config_t *cfg, llmux_diag_t *d) {
  size_t i, j;
  for (i = 0; i < cfg->ntenants; i++) {
    llmux_tenant_conf_t *t = cfg->tenants[i];
    for (j = 0; j < i; j++) {
      if (strcasecmp(cfg->tenants[j]->name, t->name) == 0)
        llmux_diag_add(d, t->file, t->line, LLMUX_DIAG_ERROR,
                       "duplicate [tenant %s] (first at %s:%d)", t->name,
                       cfg->tenants[j]->file, cfg->tenants[j]->line);
    }
    if (t->nkeys == 0)
      llmux_diag_add(d, t->file, t->line, LLMUX_DIAG_WARNING,
                     "tenant '%s' has no key_sha256: nobody can call as this tenant "
                     "(`llmux key new %s` makes a key)", t->name, t->name);
    if (t->has_models && t->models.len == 0)
      llmux_diag_add(d, t->file, t->line, LLMUX_DIAG_ERROR,
                     "tenant '%s': 'models' is empty (leave it out to allow every model)",
                     t->name);
    check_tenant_keys(cfg, i, d);
    check_tenant_overrides(cfg, t, d);
  }
}

/* Several workers with nothing to share through each keep their own
 * windows, quotas and breakers: every limit multiplied by the count. */
static void check_fleet(llmux_config_t *cfg, llmux_diag_t *d) {
  const llmux_server_conf_t *s = &cfg->server;
  if (s->cache == LLMUX_CACHE_REDIS && s->shared_state == NULL)
    llmux_diag_add(d, cfg->nfiles ? cfg->files[0] : "", s->cache_line, LLMUX_DIAG_ERROR,
                   "cache = redis keeps answers in the shared state, and no shared_state "
                   "is set (set shared_state = redis://HOST:PORT, or cache = memory)");
  if (s->workers > 1 && s->shared_state == NULL)
    llmux_diag_add(d, cfg->nfiles ? cfg->files[0] : "", s->workers_line, LLMUX_DIAG_WARNING,
                   "workers = %llu without shared_state: each worker keeps its own "
                   "rate-limit windows, tenant quotas, breakers and usage, so every limit "
                   "is multiplied by %llu (set shared_state = redis://HOST:PORT)",
                   (unsigned long long)s->workers, (unsigned long long)s->workers);
  if (s->workers > 1 && s->usage_db != NULL && s->shared_state == NULL)
    llmux_diag_add(d, cfg->nfiles ? cfg->files[0] : "", s->workers_line, LLMUX_DIAG_ERROR,
                   "workers = %llu with usage_db and no shared_state: the workers would "
                   "overwrite each other's usage rows (set shared_state, or workers = 1)",
                   (unsigned long long)s->workers);
}

const llmux_tenant_conf_t *llmux_config_find_tenant(const llmux_config_t *cfg,
                                                    const char *name) {
  size_t i;
  for (i = 0; i < cfg->ntenants; i++) {
    if (strcasecmp(cfg->tenants[i]->name, name) == 0) return cfg->tenants[i];
  }
  return NULL;
}

const llmux_profile_conf_t *llmux_tenant_agent_profile(const llmux_tenant_conf_t *tenant,
                                                       const llmux_agent_conf_t *agent) {
  size_t i;
  for (i = 0; tenant != NULL && i < tenant->nagent_overrides; i++) {
    if (tenant->agent_overrides[i].agent == agent) return tenant->agent_overrides[i].profile;
  }
  return agent->profile;
}

static void apply_env(load_t *c) {
  llmux_server_conf_t *s = &c->cfg->server;
  const char *v = getenv("LLMUX_LISTEN");
  if (v && *v) {
    if (parse_listen(c, v, &s->host, &s->port) == 0)
      s->listen = sdup(c, v);
    else
      llmux_diag_add(c->diag, "LLMUX_LISTEN", 0, LLMUX_DIAG_ERROR,
                     "bad listen address '%s' (expected host:port or [ipv6]:port)", v);
  }
  v = getenv("LLMUX_PLUGIN_DIR");
  if (v && *v) s->plugin_dir = sdup(c, v);
}

static void server_defaults(load_t *c) {
  llmux_server_conf_t *s = &c->cfg->server;
  s->listen = "127.0.0.1:8080";
  s->host = "127.0.0.1";
  s->port = 8080;
  s->max_body = 8u << 20;
  s->max_header = 16u << 10;
  s->max_connections = 10000;
  s->max_memory = 512u << 20;
  s->header_timeout_ms = 10000;
  s->idle_timeout_ms = 60000;
  s->log_level = LLMUX_LOG_INFO;
  s->max_attempts = 4;
  s->retry_backoff_ms = 200;
  s->retry_backoff_max_ms = 2000;
  s->request_timeout_ms = 120000;
  s->cooldown_failures = 3;
  s->cooldown_window_ms = 60000;
  s->cooldown_ms = 30000;
  s->drain_timeout_ms = 30000;
  s->workers = 1;
  s->shared_state_prefix = "llmux:";
  s->shared_state_timeout_ms = 50;
  s->responses_ttl_ms = 86400000;
  s->responses_max_memory = 64u << 20;
  s->fan_out = 1;
  s->cache_size = 64u << 20;
  s->cache_ttl_ms = 3600000;
}

/* Reads and checks the files into a config without its registry; the
 * registry and the checks that resolve names follow in load.c. Problems go
 * to diag; the config is returned in every case. */
llmux_config_t *llmux__config_parse(const char *main_path, llmux_diag_t *diag) {
  llmux_config_t *cfg;
  load_t c;
  size_t i;

  cfg = llmux_xcalloc(1, sizeof(*cfg));
  cfg->arena = llmux_xcalloc(1, sizeof(*cfg->arena));
  cfg->path = llmux__arena_strdup(cfg->arena, main_path);
  memset(&c, 0, sizeof(c));
  c.cfg = cfg;
  c.diag = diag;
  server_defaults(&c);
  cfg->server.providers_dir = path_join(cfg->arena, dir_of(cfg->arena, main_path),
                                        "providers");

  parse_file(&c, main_path, 1);
  if (cfg->nfiles == 1) parse_providers_dir(&c);
  check_sections(&c);
  for (i = 0; i < cfg->nproviders; i++) {
    cfg->providers[i]->index = i;
    check_provider(&c, cfg->providers[i]);
  }
  apply_env(&c);
  check_tenants(cfg, diag);
  check_fleet(cfg, diag);
  return cfg;
}

void llmux__config_free_parsed(llmux_config_t *cfg) {
  size_t i;
  if (cfg == NULL) return;
  /* Keys are secrets: do not leave them in freed memory. */
  for (i = 0; i < cfg->nproviders; i++) {
    llmux_provider_conf_t *p = cfg->providers[i];
    char *k = (char *)p->api_key;
    size_t j;
    if (k) memset(k, 0, strlen(k));
    for (j = 0; j < p->nheaders; j++) {
      char *v = (char *)p->headers[j].value;
      if (p->headers[j].env != NULL) memset(v, 0, strlen(v));
    }
  }
  free(cfg->models);
  free(cfg->generics);
  free(cfg->aliases);
  free(cfg->profiles);
  free(cfg->agents);
  free(cfg->providers);
  free(cfg->routes);
  free(cfg->tenants);
  free(cfg->files);
  free(cfg->file_sha256);
  arena_free(cfg->arena);
  free(cfg);
}

const llmux_provider_conf_t *llmux_config_find_provider(const llmux_config_t *cfg,
                                                        const char *name) {
  size_t i;
  /* Providers number in the tens: a scan is the simplest correct thing. */
  for (i = 0; i < cfg->nproviders; i++) {
    if (strcasecmp(cfg->providers[i]->name, name) == 0) return cfg->providers[i];
  }
  return NULL;
}

const char *llmux_strategy_name(llmux_strategy_t s) {
  switch (s) {
  case LLMUX_STRATEGY_PRIORITY: return "priority";
  case LLMUX_STRATEGY_LOWEST_LATENCY: return "lowest-latency";
  case LLMUX_STRATEGY_LEAST_LOADED: return "least-loaded";
  case LLMUX_STRATEGY_CHEAPEST: return "cheapest";
  case LLMUX_STRATEGY_WEIGHTED: return "weighted";
  }
  return "?";
}

int llmux_caps_format(unsigned caps, llmux_buf_t *out) {
  static const char *const names[] = {"tools", "vision", "json", "embeddings", "responses"};
  size_t i;
  int first = 1, r = llmux_buf_append(out, "", 0);
  for (i = 0; i < LLMUX_COUNTOF(names) && r == 0; i++) {
    if (!(caps & (1u << i))) continue;
    r = llmux_buf_printf(out, "%s%s", first ? "" : ",", names[i]);
    first = 0;
  }
  return r;
}

const char *llmux_config_provider_key(size_t i) {
  return i < sizeof provider_keys / sizeof provider_keys[0] ? provider_keys[i].name : NULL;
}
