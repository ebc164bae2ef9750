/* The response cache shared by the fleet (gateway/fleet.h): `cache =
 * redis`, answers kept in the shared state's Redis on a command connection
 * of its own, so an answer one process got serves every other.
 *
 * Layout. One string per answer, `<prefix>cache:<hex>`, set with PX =
 * cache_ttl, where hex is the SHA-256 of the whole key (gateway/cache.h:
 * tenant, resolved model, canonical body; a digest because a Redis key is
 * better short). Its value is "<prompt_tokens> <completion_tokens>\n" then
 * the answer.
 *
 * Failures. A lookup that cannot reach Redis is a miss; a store that fails
 * is dropped. Each counts in errors, and the first of an outage is
 * logged. */
#include "gateway/fleet.h"

#include <inttypes.h>
#include <mbedtls/sha256.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/util.h"
#include "gateway/cache.h"
#include "gateway/server.h"
#include "shared/redis.h"

typedef struct fleet_cache_s {
  llmux_redis_t r;
  llmux_gateway_t *gw;
  char *prefix;
  uint64_t ttl_ms;
  uint64_t failed;
  int outage;
  int closing;
  llmux_fleet_close_cb close_cb;
} fleet_cache_t;

typedef struct lookup_s {
  fleet_cache_t *fc;
  llmux_fleet_cache_cb cb;
  void *arg;
} lookup_t;

static void failed(fleet_cache_t *fc, const char *what, const char *why) {
  fc->failed++;
  if (fc->outage) return;
  fc->outage = 1;
  llmux_warn("response cache: Redis %s failed (%s): misses until it is back", what, why);
}

static void succeeded(fleet_cache_t *fc) {
  if (!fc->outage) return;
  fc->outage = 0;
  llmux_info("response cache: Redis is back");
}

static const char *why(const llmux_redis_t *r, int status, const redisReply *reply) {
  if (status != 0) return llmux_strerror(status);
  if (reply != NULL && reply->type == REDIS_REPLY_ERROR) return reply->str;
  return r->last_error[0] ? r->last_error : "not connected";
}

/* "<prefix>cache:<64 hex>" into buf (room for the prefix plus 71). */
static size_t key_of(const fleet_cache_t *fc, const llmux_cache_key_t *k, char *buf, size_t cap) {
  unsigned char d[32];
  size_t n, i;
  mbedtls_sha256_ret((const unsigned char *)k->bytes.base, k->bytes.len, d, 0);
  n = (size_t)snprintf(buf, cap, "%scache:", fc->prefix);
  if (n + 65 > cap) return 0;
  for (i = 0; i < 32; i++) snprintf(buf + n + 2 * i, 3, "%02x", d[i]);
  return n + 64;
}

static fleet_cache_t *of(const llmux_gateway_t *gw) {
  return gw->fleet_cache;
}

static void on_get(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  lookup_t *l = arg;
  fleet_cache_t *fc = l->fc;
  llmux_cache_answer_t a;
  long long in, out;
  const char *nl;
  (void)r;
  if (status != 0 || (reply->type != REDIS_REPLY_STRING && reply->type != REDIS_REPLY_NIL)) {
    failed(fc, "lookup", why(&fc->r, status, reply));
    l->cb(l->arg, NULL);
  } else if (reply->type == REDIS_REPLY_STRING &&
             (nl = memchr(reply->str, '\n', reply->len)) != NULL &&
             sscanf(reply->str, "%lld %lld", &in, &out) == 2) {
    succeeded(fc);
    a.data = nl + 1;
    a.len = reply->len - (size_t)(nl + 1 - reply->str);
    a.prompt_tokens = in;
    a.completion_tokens = out;
    l->cb(l->arg, &a);
  } else {
    succeeded(fc);
    l->cb(l->arg, NULL);
  }
  free(l);
}

int llmux_fleet_cache_get(llmux_gateway_t *gw, const llmux_cache_key_t *k,
                          llmux_fleet_cache_cb cb, void *arg) {
  fleet_cache_t *fc = of(gw);
  lookup_t *l;
  char key[400];
  const char *argv[2];
  size_t lens[2];
  int rc;
  if (fc == NULL || fc->closing || (l = malloc(sizeof *l)) == NULL) return LLMUX_EINVAL;
  l->fc = fc;
  l->cb = cb;
  l->arg = arg;
  argv[0] = "GET", lens[0] = 3;
  argv[1] = key, lens[1] = key_of(fc, k, key, sizeof key);
  if ((rc = llmux_redis_command(&fc->r, on_get, l, 2, argv, lens)) != 0) {
    failed(fc, "lookup", why(&fc->r, rc == LLMUX_ECONNREFUSED ? 0 : rc, NULL));
    free(l);
  }
  return rc;
}

static void on_set(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  fleet_cache_t *fc = r->data;
  (void)arg;
  if (status == 0 && reply->type == REDIS_REPLY_STATUS) succeeded(fc);
  else failed(fc, "store", why(r, status, reply));
}

void llmux_fleet_cache_put(llmux_gateway_t *gw, const llmux_cache_key_t *k, const char *data,
                           size_t len, int64_t prompt_tokens, int64_t completion_tokens) {
  fleet_cache_t *fc = of(gw);
  char key[400], px[24], head[48];
  const char *argv[5];
  size_t lens[5], lh;
  char *value;
  int rc;
  if (fc == NULL || fc->closing) return;
  lh = (size_t)snprintf(head, sizeof head, "%" PRId64 " %" PRId64 "\n", prompt_tokens,
                        completion_tokens);
  if ((value = malloc(lh + len)) == NULL) return;
  memcpy(value, head, lh);
  memcpy(value + lh, data, len);
  argv[0] = "SET", lens[0] = 3;
  argv[1] = key, lens[1] = key_of(fc, k, key, sizeof key);
  argv[2] = value, lens[2] = lh + len;
  argv[3] = "PX", lens[3] = 2;
  argv[4] = px, lens[4] = llmux_u64_dec(px, fc->ttl_ms ? fc->ttl_ms : 1);
  rc = llmux_redis_command(&fc->r, on_set, NULL, 5, argv, lens);
  free(value); /* the command has its copy */
  if (rc != 0) failed(fc, "store", why(&fc->r, rc == LLMUX_ECONNREFUSED ? 0 : rc, NULL));
}

/* ---- start / close --------------------------------------------------------- */

static void on_closed(llmux_redis_t *r) {
  fleet_cache_t *fc = r->data;
  llmux_fleet_close_cb cb = fc->close_cb;
  llmux_gateway_t *gw = fc->gw;
  free(fc->prefix);
  free(fc);
  if (cb) cb(gw);
}

static void on_answered(llmux_redis_t *r) {
  fleet_cache_t *fc = r->data;
  if (fc->closing && r->answered >= r->queued) llmux_redis_close(r, on_closed);
}

int llmux_fleet_cache_start(llmux_gateway_t *gw, const llmux_fleet_conf_t *conf,
                            uint64_t ttl_ms) {
  llmux_redis_options_t o;
  fleet_cache_t *fc;
  char err[300] = "";
  int rc;
  if (gw == NULL || conf == NULL || conf->url == NULL || of(gw) != NULL) return LLMUX_EINVAL;
  fc = llmux_xcalloc(1, sizeof *fc);
  fc->gw = gw;
  fc->ttl_ms = ttl_ms;
  fc->prefix = llmux_xstrdup(conf->prefix ? conf->prefix : "llmux:");
  memset(&o, 0, sizeof o);
  o.url = conf->url;
  o.password = conf->password;
  o.what = "shared state (cache)";
  o.timeout_ms = conf->timeout_ms;
  o.on_answered = on_answered;
  if ((rc = llmux_redis_init(gw->loop, &fc->r, &o, err, sizeof err)) != 0) {
    llmux_error("response cache: %s", *err ? err : llmux_strerror(rc));
    free(fc->prefix);
    free(fc);
    return rc;
  }
  fc->r.data = fc;
  llmux_redis_start(&fc->r);
  gw->fleet_cache = fc;
  return 0;
}

/* cb runs once the connection is gone (never inside the call); lookups in
 * flight are answered first. Not started: nothing to do, cb never runs. */
void llmux_fleet_cache_close(llmux_gateway_t *gw, llmux_fleet_close_cb cb) {
  fleet_cache_t *fc = of(gw);
  if (fc == NULL) return;
  gw->fleet_cache = NULL;
  fc->closing = 1;
  fc->close_cb = cb;
  if (fc->r.state != LLMUX_REDIS_READY || fc->r.answered >= fc->r.queued)
    llmux_redis_close(&fc->r, on_closed);
}

uint64_t llmux_fleet_cache_errors(const llmux_gateway_t *gw) {
  const fleet_cache_t *fc = of(gw);
  return fc != NULL ? fc->r.errors + fc->failed : 0;
}
