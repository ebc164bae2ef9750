/* Stored responses shared by the fleet (gateway/fleet.h): the responses
 * store's remote (gateway/responses_store.h) on a Redis command connection
 * of its own, so a previous_response_id made on one process is found on
 * every other.
 *
 * Layout. One string per response, `<prefix>resp:<id>`, set with PX =
 * responses_ttl. Its value is the record as the store keeps it, after the
 * tenant's name and a newline (a name has no whitespace, config.c), so a
 * lookup from another tenant reads "not found", as in the store's own
 * table. A delete is a script that deletes only the tenant's own record.
 *
 * Failures. A put Redis cannot take at once goes to the store's database
 * (or stays in memory only); a put that fails later stays in memory (and
 * is counted). A lookup that cannot reach Redis asks the database, else
 * answers "not found". Each such operation counts in errors (with the
 * connection's own failures) and the first of an outage is logged. */
#include "gateway/fleet.h"

#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/util.h"
#include "gateway/responses_store.h"
#include "gateway/server.h"
#include "shared/redis.h"

/* KEYS[1] the record, ARGV[1] the tenant: deletes a record of that tenant. */
static const char del_lua[] =
    "local v = redis.call('GET', KEYS[1])\n"
    "if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. '\\n' then\n"
    "  return redis.call('DEL', KEYS[1])\n"
    "end\n"
    "return 0\n";
static const char *const scripts[] = {del_lua};

typedef struct fleet_resp_s {
  llmux_redis_t r;
  llmux_gateway_t *gw;
  char *prefix;
  uint64_t failed;   /* operations that could not use Redis */
  int outage;        /* the first failure was logged */
  int closing;
  llmux_fleet_close_cb close_cb;
} fleet_resp_t;

/* A lookup in flight: where its answer goes. */
typedef struct lookup_s {
  fleet_resp_t *fr;
  llmux_responses_get_cb cb;
  void *arg;
  char tenant[];
} lookup_t;

static void failed(fleet_resp_t *fr, const char *what, const char *why) {
  fr->failed++;
  if (fr->outage) return;
  fr->outage = 1; /* once per outage: a down Redis must not flood the log */
  llmux_warn("stored responses: Redis %s failed (%s): this process's memory and database "
             "keep them until it is back", what, why);
}

static void succeeded(fleet_resp_t *fr) {
  if (!fr->outage) return;
  fr->outage = 0;
  llmux_info("stored responses: Redis is back");
}

static const char *why(const llmux_redis_t *r, int status, const redisReply *reply) {
  if (status != 0) return llmux_strerror(status);
  if (reply != NULL && reply->type == REDIS_REPLY_ERROR) return reply->str;
  return r->last_error[0] ? r->last_error : "not connected";
}

/* "<prefix>resp:<id>" into buf. */
static size_t key_of(const fleet_resp_t *fr, const char *id, char *buf, size_t cap) {
  int n = snprintf(buf, cap, "%sresp:%s", fr->prefix, id);
  return n < 0 ? 0 : (size_t)n >= cap ? cap - 1 : (size_t)n;
}

/* ---- the remote ----------------------------------------------------------- */

static void on_set(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  fleet_resp_t *fr = r->data;
  (void)arg;
  if (status == 0 && reply->type == REDIS_REPLY_STATUS) {
    succeeded(fr);
    return;
  }
  failed(fr, "write", why(r, status, reply)); /* the record stays in memory */
}

static int r_put(void *data, const char *tenant, const char *id, const char *record, size_t len,
                 uint64_t ttl_ms) {
  fleet_resp_t *fr = data;
  char key[300], px[24];
  size_t lt = strlen(tenant);
  char *value = malloc(lt + 1 + len);
  const char *argv[5];
  size_t lens[5];
  int rc;
  if (value == NULL) return LLMUX_ENOMEM;
  memcpy(value, tenant, lt);
  value[lt] = '\n';
  memcpy(value + lt + 1, record, len);
  argv[0] = "SET", lens[0] = 3;
  argv[1] = key, lens[1] = key_of(fr, id, key, sizeof key);
  argv[2] = value, lens[2] = lt + 1 + len;
  argv[3] = "PX", lens[3] = 2;
  argv[4] = px, lens[4] = llmux_u64_dec(px, ttl_ms ? ttl_ms : 1);
  rc = llmux_redis_command(&fr->r, on_set, NULL, 5, argv, lens);
  free(value); /* the command has its copy */
  if (rc != 0) failed(fr, "write", why(&fr->r, rc == LLMUX_ECONNREFUSED ? 0 : rc, NULL));
  return rc;
}

static void on_get(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  lookup_t *l = arg;
  fleet_resp_t *fr = l->fr;
  size_t lt = strlen(l->tenant);
  (void)r;
  if (status != 0 || (reply->type != REDIS_REPLY_STRING && reply->type != REDIS_REPLY_NIL)) {
    failed(fr, "lookup", why(&fr->r, status, reply));
    l->cb(l->arg, status == LLMUX_ECANCELED ? LLMUX_ECANCELED : LLMUX_EIO, NULL, 0);
  } else if (reply->type == REDIS_REPLY_STRING && reply->len > lt &&
             memcmp(reply->str, l->tenant, lt) == 0 && reply->str[lt] == '\n') {
    succeeded(fr);
    l->cb(l->arg, 0, reply->str + lt + 1, reply->len - lt - 1);
  } else {
    succeeded(fr);
    l->cb(l->arg, LLMUX_ENOTFOUND, NULL, 0); /* none, or another tenant's */
  }
  free(l);
}

static int r_get(void *data, const char *tenant, const char *id, llmux_responses_get_cb cb,
                 void *arg) {
  fleet_resp_t *fr = data;
  size_t lt = strlen(tenant) + 1;
  lookup_t *l = malloc(sizeof *l + lt);
  char key[300];
  const char *argv[2];
  size_t lens[2];
  int rc;
  if (l == NULL) return LLMUX_ENOMEM;
  l->fr = fr;
  l->cb = cb;
  l->arg = arg;
  memcpy(l->tenant, tenant, lt);
  argv[0] = "GET", lens[0] = 3;
  argv[1] = key, lens[1] = key_of(fr, id, key, sizeof key);
  if ((rc = llmux_redis_command(&fr->r, on_get, l, 2, argv, lens)) != 0) {
    failed(fr, "lookup", why(&fr->r, rc == LLMUX_ECONNREFUSED ? 0 : rc, NULL));
    free(l);
  }
  return rc;
}

static void on_del(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  fleet_resp_t *fr = r->data;
  (void)arg;
  if (status == 0 && reply->type == REDIS_REPLY_INTEGER) succeeded(fr);
  else failed(fr, "delete", why(r, status, reply));
}

static void r_del(void *data, const char *tenant, const char *id) {
  fleet_resp_t *fr = data;
  char key[300];
  const char *argv[2];
  size_t lens[2];
  int rc;
  argv[0] = key, lens[0] = key_of(fr, id, key, sizeof key);
  argv[1] = tenant, lens[1] = strlen(tenant);
  rc = llmux_redis_evalsha(&fr->r, 0, on_del, NULL, 1, 2, argv, lens);
  if (rc != 0) failed(fr, "delete", why(&fr->r, rc == LLMUX_ECONNREFUSED ? 0 : rc, NULL));
}

/* ---- start / close --------------------------------------------------------- */

static fleet_resp_t *of(const struct llmux_gateway_s *gw) {
  const llmux_responses_remote_t *rm =
      gw->responses != NULL ? llmux_responses_remote(gw->responses) : NULL;
  return rm != NULL && rm->put == r_put ? rm->data : NULL;
}

static void on_closed(llmux_redis_t *r) {
  fleet_resp_t *fr = r->data;
  llmux_fleet_close_cb cb = fr->close_cb;
  llmux_gateway_t *gw = fr->gw;
  free(fr->prefix);
  free(fr);
  if (cb) cb(gw);
}

/* Closing: the writes already queued are answered first (each within
 * timeout_ms), so a clean stop keeps the last responses. */
static void on_answered(llmux_redis_t *r) {
  fleet_resp_t *fr = r->data;
  if (fr->closing && r->answered >= r->queued) llmux_redis_close(r, on_closed);
}

int llmux_fleet_responses_start(struct llmux_gateway_s *gw, const llmux_fleet_conf_t *fc) {
  llmux_redis_options_t o;
  llmux_responses_remote_t rm;
  fleet_resp_t *fr;
  char err[300] = "";
  int rc;
  if (gw == NULL || fc == NULL || fc->url == NULL || gw->responses == NULL || of(gw) != NULL)
    return LLMUX_EINVAL;
  fr = llmux_xcalloc(1, sizeof *fr);
  fr->gw = gw;
  fr->prefix = llmux_xstrdup(fc->prefix ? fc->prefix : "llmux:");
  memset(&o, 0, sizeof o);
  o.url = fc->url;
  o.password = fc->password;
  o.what = "shared state (responses)";
  o.timeout_ms = fc->timeout_ms;
  o.scripts = scripts;
  o.nscripts = 1;
  o.on_answered = on_answered;
  if ((rc = llmux_redis_init(gw->loop, &fr->r, &o, err, sizeof err)) != 0) {
    llmux_error("shared responses: %s", *err ? err : llmux_strerror(rc));
    free(fr->prefix);
    free(fr);
    return rc;
  }
  fr->r.data = fr;
  llmux_redis_start(&fr->r);
  rm.data = fr;
  rm.put = r_put;
  rm.get = r_get;
  rm.del = r_del;
  llmux_responses_set_remote(gw->responses, &rm);
  return 0;
}


void llmux_fleet_responses_close(struct llmux_gateway_s *gw, llmux_fleet_close_cb cb) {
  fleet_resp_t *fr = of(gw);
  if (fr == NULL) {
    llmux__fleet_close_later(gw, cb); /* never started */
    return;
  }
  llmux_responses_set_remote(gw->responses, NULL); /* lookups in flight still answer */
  fr->closing = 1;
  fr->close_cb = cb;
  if (fr->r.state != LLMUX_REDIS_READY || fr->r.answered >= fr->r.queued)
    llmux_redis_close(&fr->r, on_closed); /* else on_answered, once the last is */
}

uint64_t llmux_fleet_responses_errors(const struct llmux_gateway_s *gw) {
  const fleet_resp_t *fr = of(gw);
  return fr != NULL ? fr->r.errors + fr->failed : 0;
}

int llmux_fleet_responses_up(const struct llmux_gateway_s *gw) {
  const fleet_resp_t *fr = of(gw);
  return fr != NULL && fr->r.state == LLMUX_REDIS_READY;
}
