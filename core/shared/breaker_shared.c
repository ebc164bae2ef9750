/* Breaker state shared through Redis. See breaker_shared.h for what is
 * shared and how an outage is merged; the script below is every change this
 * module makes to Redis.
 *
 * The module keeps no mirror: the route table of the caller is the mirror.
 * It keeps only this process's latest word on each route (an opening or a
 * close) until Redis confirmed it, to send again after an outage. */
#include "shared/breaker_shared.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/log.h"
#include "base/util.h"
#include "shared/redis.h"

#define MAX_NAME 1024
#define ORIGIN_LEN 16

/* KEYS[1] the route's key (open, close); no key for scan.
 * open:  ARGV 'open' until since origin ttl_ms channel message
 * close: ARGV 'close' at channel message
 * scan:  ARGV 'scan' cursor pattern -> {cursor, key, value, key, value...}
 * An opening is stored only if it rests the route longer; a close deletes
 * only an opening that began at or before it. Both publish only when they
 * changed something (a close also when there was no key: processes may
 * still rest the route after the key expired). */
static const char script[] =
    "local op = ARGV[1]\n"
    "if op == 'open' then\n"
    "  local cur = redis.call('GET', KEYS[1])\n"
    "  if cur then\n"
    "    local u = tonumber(string.match(cur, '^(%d+)'))\n"
    "    if u and u >= tonumber(ARGV[2]) then return 0 end\n"
    "  end\n"
    "  redis.call('SET', KEYS[1], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4], 'PX', ARGV[5])\n"
    "  redis.call('PUBLISH', ARGV[6], ARGV[7])\n"
    "  return 1\n"
    "elseif op == 'close' then\n"
    "  local cur = redis.call('GET', KEYS[1])\n"
    "  if cur then\n"
    "    local s = tonumber(string.match(cur, '^%d+ (%d+)'))\n"
    "    if s and s > tonumber(ARGV[2]) then return 0 end\n"
    "    redis.call('DEL', KEYS[1])\n"
    "  end\n"
    "  redis.call('PUBLISH', ARGV[3], ARGV[4])\n"
    "  return 1\n"
    "elseif op == 'scan' then\n"
    "  local r = redis.call('SCAN', ARGV[2], 'MATCH', ARGV[3], 'COUNT', 200)\n"
    "  local out = {r[1]}\n"
    "  for _, k in ipairs(r[2]) do\n"
    "    local v = redis.call('GET', k)\n"
    "    if v then out[#out + 1] = k; out[#out + 1] = v end\n"
    "  end\n"
    "  return out\n"
    "end\n"
    "return redis.error_reply('breaker script: unknown op')\n";

static const char *const scripts[1] = {script};

enum { WORD_OPEN, WORD_CLOSE };

/* This process's latest word on one route, until Redis confirmed it. */
typedef struct word_s {
  struct word_s *next;
  char *route;           /* "<len>:<provider>:<model>", the key's and the
                            messages' tail */
  size_t route_len;
  int kind;
  int64_t until, since;  /* WORD_OPEN */
  int64_t at;            /* WORD_CLOSE */
  uint64_t seq;          /* bumped by every change and send: a reply to an
                            older one confirms nothing */
} word_t;

typedef struct waiter_s {
  struct waiter_s *next;
  uint64_t seq;
  int marker_seen, reply_seen;
  llmux_breaker_shared_cb cb;
  void *arg;
} waiter_t;

struct llmux_breaker_shared_s {
  uv_loop_t *loop;
  llmux_redis_t cmd, sub;
  int closed_conns;
  int closing;
  char *prefix;          /* P */
  char *keys;            /* P br: */
  char *channel;         /* P br */
  char *pattern;         /* P br:* with P's glob characters escaped */
  char origin[ORIGIN_LEN + 1];
  uint64_t seq;
  llmux_breaker_open_cb on_open;
  llmux_breaker_close_cb on_close;
  void *arg;
  /* state */
  int up, joining, warned;
  uint64_t join_id;
  uint64_t outages, heard, nwords;
  word_t *words;
  waiter_t *waiters;
  llmux_breaker_shared_cb close_cb;
  void *close_arg;
};

int64_t llmux_breaker_shared_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- Parsing ---------------------------------------------------------------- */

/* A decimal number, then one space or the end. */
static int take_num(const char **p, const char *end, int64_t *out) {
  const char *q = *p;
  int64_t v = 0;
  if (q >= end || *q < '0' || *q > '9') return -1;
  for (; q < end && *q >= '0' && *q <= '9'; q++) {
    if (v > (INT64_MAX - 9) / 10) return -1;
    v = v * 10 + (*q - '0');
  }
  if (q < end && *q++ != ' ') return -1;
  *p = q;
  *out = v;
  return 0;
}

/* An instance id, then one space or the end. */
static int take_origin(const char **p, const char *end, const char **origin) {
  if (end - *p < ORIGIN_LEN || (end - *p > ORIGIN_LEN && (*p)[ORIGIN_LEN] != ' '))
    return -1;
  *origin = *p;
  *p += ORIGIN_LEN + (end - *p > ORIGIN_LEN);
  return 0;
}

/* "<len>:<provider>:<model>" into two NUL-terminated copies (one block,
 * freed with *provider). */
static int split_route(const char *s, const char *end, char **provider, char **model) {
  const char *p = s;
  int64_t plen = 0;
  char *buf;
  for (; p < end && *p >= '0' && *p <= '9' && plen <= MAX_NAME; p++) plen = plen * 10 + (*p - '0');
  if (p == s || p >= end || *p++ != ':' || plen < 1 || plen > MAX_NAME || end - p < plen + 2 ||
      p[plen] != ':' || end - (p + plen + 1) > MAX_NAME)
    return -1;
  buf = llmux_xmalloc((size_t)(end - p) + 1);
  memcpy(buf, p, (size_t)(end - p));
  buf[plen] = '\0';
  buf[end - p] = '\0';
  *provider = buf;
  *model = buf + plen + 1;
  return 0;
}

static void deliver_open(llmux_breaker_shared_t *b, const char *route, const char *end,
                         int64_t since, int64_t until) {
  char *provider, *model;
  if (split_route(route, end, &provider, &model) != 0) {
    llmux_debug("shared breakers: ignored a malformed route name");
    return;
  }
  b->heard++;
  b->on_open(b, provider, model, since, until, b->arg);
  free(provider);
}

static void deliver_close(llmux_breaker_shared_t *b, const char *route, const char *end,
                          int64_t at) {
  char *provider, *model;
  if (split_route(route, end, &provider, &model) != 0) {
    llmux_debug("shared breakers: ignored a malformed route name");
    return;
  }
  b->heard++;
  b->on_close(b, provider, model, at, b->arg);
  free(provider);
}

static int is_mine(const llmux_breaker_shared_t *b, const char *origin) {
  return memcmp(origin, b->origin, ORIGIN_LEN) == 0;
}

/* ---- Words of this process -------------------------------------------------- */

static char *route_name(const char *provider, const char *model, size_t *len) {
  llmux_buf_t buf = {0};
  if (llmux_buf_printf(&buf, "%zu:%s:%s", strlen(provider), provider, model) != 0) abort();
  *len = buf.len;
  return buf.base;
}

static word_t *word_for(llmux_breaker_shared_t *b, const char *provider, const char *model) {
  size_t len;
  char *route = route_name(provider, model, &len);
  word_t *w;
  for (w = b->words; w; w = w->next) {
    if (w->route_len == len && memcmp(w->route, route, len) == 0) {
      free(route);
      return w;
    }
  }
  w = llmux_xcalloc(1, sizeof(*w));
  w->route = route;
  w->route_len = len;
  w->next = b->words;
  b->words = w;
  b->nwords++;
  return w;
}

static void drop_word(llmux_breaker_shared_t *b, word_t *w) {
  word_t **pw;
  for (pw = &b->words; *pw; pw = &(*pw)->next) {
    if (*pw != w) continue;
    *pw = w->next;
    free(w->route);
    free(w);
    b->nwords--;
    return;
  }
}

static void word_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  llmux_breaker_shared_t *b = r->data;
  uint64_t seq = (uint64_t)(uintptr_t)arg;
  word_t *w;
  char why[160];
  if (status != 0) return; /* kept: sent again once back */
  if (reply->type == REDIS_REPLY_ERROR) {
    snprintf(why, sizeof(why), "breaker script: %s", reply->str ? reply->str : "error");
    llmux_redis_reset(&b->cmd, why);
    return;
  }
  for (w = b->words; w; w = w->next) {
    if (w->seq == seq) {
      drop_word(b, w);
      return;
    }
  }
}

/* Runs the script for `w`. An opening whose rest is over is dropped. */
static void send_word(llmux_breaker_shared_t *b, word_t *w) {
  llmux_buf_t key = {0}, msg = {0};
  char num[4][24];
  const char *argv[8];
  size_t lens[8];
  int argc = 0, i, rc;
  int64_t ttl = w->until - llmux_breaker_shared_wall_ms();
  if (w->kind == WORD_OPEN && ttl <= 0) {
    drop_word(b, w);
    return;
  }
  w->seq = ++b->seq;
  llmux_buf_printf(&key, "%s%.*s", b->keys, (int)w->route_len, w->route);
  argv[argc++] = key.base;
  if (w->kind == WORD_OPEN) {
    snprintf(num[0], 24, "%" PRId64, w->until);
    snprintf(num[1], 24, "%" PRId64, w->since);
    snprintf(num[2], 24, "%" PRId64, ttl);
    llmux_buf_printf(&msg, "o %s %s %s %.*s", b->origin, num[0], num[1], (int)w->route_len,
                     w->route);
    argv[argc++] = "open";
    argv[argc++] = num[0];
    argv[argc++] = num[1];
    argv[argc++] = b->origin;
    argv[argc++] = num[2];
  } else {
    snprintf(num[0], 24, "%" PRId64, w->at);
    llmux_buf_printf(&msg, "c %s %s %.*s", b->origin, num[0], (int)w->route_len, w->route);
    argv[argc++] = "close";
    argv[argc++] = num[0];
  }
  argv[argc++] = b->channel;
  argv[argc++] = msg.base;
  for (i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
  rc = llmux_redis_evalsha(&b->cmd, 0, word_cb, (void *)(uintptr_t)w->seq, 1, argc, argv, lens);
  llmux_buf_free(&key);
  llmux_buf_free(&msg);
  if (rc != 0) llmux_redis_reset(&b->cmd, "could not queue a breaker script");
}

static int check_names(const char *provider, const char *model) {
  if (provider == NULL || model == NULL || *provider == '\0' || *model == '\0' ||
      strlen(provider) > MAX_NAME || strlen(model) > MAX_NAME)
    return LLMUX_EINVAL;
  return 0;
}

int llmux_breaker_shared_opened(llmux_breaker_shared_t *b, const char *provider,
                                const char *model, int64_t since_ms, int64_t until_ms) {
  word_t *w;
  if (b == NULL || b->closing || check_names(provider, model) != 0 || since_ms < 0 ||
      until_ms <= since_ms)
    return LLMUX_EINVAL;
  w = word_for(b, provider, model);
  w->kind = WORD_OPEN;
  w->since = since_ms;
  w->until = until_ms;
  w->seq = ++b->seq;
  if (b->up) send_word(b, w);
  return 0;
}

int llmux_breaker_shared_recovered(llmux_breaker_shared_t *b, const char *provider,
                                   const char *model, int64_t at_ms) {
  word_t *w;
  if (b == NULL || b->closing || check_names(provider, model) != 0 || at_ms < 0)
    return LLMUX_EINVAL;
  w = word_for(b, provider, model);
  w->kind = WORD_CLOSE;
  w->at = at_ms;
  w->seq = ++b->seq;
  if (b->up) send_word(b, w);
  return 0;
}

/* ---- Up and down ------------------------------------------------------------ */

static void fire_waiters(llmux_breaker_shared_t *b, int status) {
  waiter_t **pw = &b->waiters, *w;
  while ((w = *pw) != NULL) {
    if (status == 0 && !(w->marker_seen && w->reply_seen)) {
      pw = &w->next;
      continue;
    }
    *pw = w->next;
    w->cb(b, status, w->arg);
    free(w);
  }
}

static void went_down(llmux_breaker_shared_t *b, const llmux_redis_t *r) {
  if (b->up) b->outages++;
  if (!b->warned) {
    llmux_warn("shared breakers: Redis unavailable (%s); each process keeps its own "
               "breakers until it is back",
               r->last_error);
    b->warned = 1;
  }
  b->up = 0;
  b->joining = 0;
  b->join_id++;
  fire_waiters(b, LLMUX_ECONNRESET);
}

/* The scan is done: what this process decided meanwhile goes now. */
static void now_up(llmux_breaker_shared_t *b) {
  word_t *w, *next;
  b->up = 1;
  b->joining = 0;
  if (b->warned) llmux_info("shared breakers: Redis is back; breakers are shared again");
  b->warned = 0;
  for (w = b->words; w && b->up; w = next) {
    next = w->next;
    send_word(b, w);
  }
}

/* An opening found by the scan: key "P br:<route>", value "until since origin". */
static void take_stored(llmux_breaker_shared_t *b, const redisReply *key, const redisReply *val) {
  size_t klen = strlen(b->keys);
  const char *p, *end, *origin;
  int64_t until, since;
  if (key->type != REDIS_REPLY_STRING || val->type != REDIS_REPLY_STRING ||
      key->len <= klen || memcmp(key->str, b->keys, klen) != 0)
    return;
  p = val->str;
  end = val->str + val->len;
  if (take_num(&p, end, &until) != 0 || take_num(&p, end, &since) != 0 ||
      take_origin(&p, end, &origin) != 0 || p != end) {
    llmux_debug("shared breakers: ignored a malformed opening");
    return;
  }
  if (is_mine(b, origin)) return;
  deliver_open(b, key->str + klen, key->str + key->len, since, until);
}

static void scan_page(llmux_breaker_shared_t *b, const char *cursor);

static void scan_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  llmux_breaker_shared_t *b = r->data;
  char cursor[32];
  size_t i;
  if (status != 0 || b->closing) return;
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements % 2 != 1 ||
      reply->element[0]->type != REDIS_REPLY_STRING ||
      reply->element[0]->len >= sizeof(cursor)) {
    llmux_redis_reset(&b->cmd, reply->type == REDIS_REPLY_ERROR && reply->str
                                   ? reply->str : "breaker scan: bad reply");
    return;
  }
  if ((uint64_t)(uintptr_t)arg != b->join_id || !b->joining) return;
  memcpy(cursor, reply->element[0]->str, reply->element[0]->len + 1);
  for (i = 1; i + 1 < reply->elements && !b->closing; i += 2)
    take_stored(b, reply->element[i], reply->element[i + 1]);
  if (b->closing || !b->joining) return;
  if (strcmp(cursor, "0") == 0) now_up(b);
  else scan_page(b, cursor);
}

static void scan_page(llmux_breaker_shared_t *b, const char *cursor) {
  const char *argv[3] = {"scan", cursor, b->pattern};
  size_t lens[3] = {4, strlen(cursor), strlen(b->pattern)};
  if (llmux_redis_evalsha(&b->cmd, 0, scan_cb, (void *)(uintptr_t)b->join_id, 0, 3, argv,
                          lens) != 0)
    llmux_redis_reset(&b->cmd, "could not queue the breaker scan");
}

static void on_conn_state(llmux_redis_t *r, int ready) {
  llmux_breaker_shared_t *b = r->data;
  if (!ready) {
    went_down(b, r);
    return;
  }
  if (b->cmd.state == LLMUX_REDIS_READY && b->sub.state == LLMUX_REDIS_READY) {
    b->joining = 1;
    b->join_id++;
    scan_page(b, "0");
  }
}

/* ---- The subscription ------------------------------------------------------- */

static void on_message(llmux_redis_t *r, const char *msg, size_t len) {
  llmux_breaker_shared_t *b = r->data;
  const char *p = msg + 2, *end = msg + len, *origin;
  int64_t a, c;
  waiter_t *w;
  if (b->closing || len < 2 || msg[1] != ' ' || take_origin(&p, end, &origin) != 0) return;
  switch (msg[0]) {
  case 'o':
    if (is_mine(b, origin) || take_num(&p, end, &a) != 0 || take_num(&p, end, &c) != 0) return;
    deliver_open(b, p, end, c, a);
    break;
  case 'c':
    if (is_mine(b, origin) || take_num(&p, end, &a) != 0) return;
    deliver_close(b, p, end, a);
    break;
  case 'm':
    if (!is_mine(b, origin) || take_num(&p, end, &a) != 0) return;
    for (w = b->waiters; w; w = w->next)
      if (w->seq == (uint64_t)a) w->marker_seen = 1;
    fire_waiters(b, 0);
    break;
  default:
    break;
  }
}

static void marker_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  llmux_breaker_shared_t *b = r->data;
  waiter_t *w;
  if (status != 0) return;
  for (w = b->waiters; w; w = w->next)
    if (w->seq == (uint64_t)(uintptr_t)arg) w->reply_seen = 1;
  fire_waiters(b, 0);
}

int llmux_breaker_shared_sync(llmux_breaker_shared_t *b, llmux_breaker_shared_cb cb,
                              void *arg) {
  char msg[64];
  const char *argv[3];
  size_t lens[3];
  waiter_t *w;
  if (!b->up) return LLMUX_ECONNREFUSED;
  w = llmux_xcalloc(1, sizeof(*w));
  w->seq = ++b->seq;
  w->cb = cb;
  w->arg = arg;
  snprintf(msg, sizeof(msg), "m %s %" PRIu64, b->origin, w->seq);
  argv[0] = "PUBLISH";
  argv[1] = b->channel;
  argv[2] = msg;
  lens[0] = 7;
  lens[1] = strlen(b->channel);
  lens[2] = strlen(msg);
  if (llmux_redis_command(&b->cmd, marker_cb, (void *)(uintptr_t)w->seq, 3, argv, lens) != 0) {
    free(w);
    return LLMUX_ECONNREFUSED;
  }
  w->next = b->waiters;
  b->waiters = w;
  return 0;
}

/* ---- Lifecycle -------------------------------------------------------------- */

static void make_origin(char out[ORIGIN_LEN + 1]) {
  unsigned char raw[ORIGIN_LEN / 2];
  uint64_t x;
  int i;
  if (uv_random(NULL, NULL, raw, sizeof(raw), 0, NULL) != 0) {
    x = uv_hrtime() ^ ((uint64_t)(uintptr_t)out << 17) ^ (uint64_t)time(NULL);
    memcpy(raw, &x, sizeof(raw));
  }
  for (i = 0; i < ORIGIN_LEN / 2; i++) snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

/* "P br:*", with P's glob characters escaped for SCAN's MATCH. */
static char *scan_pattern(const char *prefix) {
  llmux_buf_t buf = {0};
  const char *c;
  for (c = prefix; *c; c++) {
    if (strchr("*?[]\\", *c)) llmux_buf_append(&buf, "\\", 1);
    llmux_buf_append(&buf, c, 1);
  }
  if (llmux_buf_appends(&buf, "br:*") != 0) abort();
  return buf.base;
}

static char *joined(const char *a, const char *b) {
  llmux_buf_t buf = {0};
  if (llmux_buf_printf(&buf, "%s%s", a, b) != 0) abort();
  return buf.base;
}

static int conn_init(llmux_breaker_shared_t *b, llmux_redis_t *r,
                     const llmux_breaker_shared_options_t *o, int subscriber, char *err,
                     size_t errlen) {
  llmux_redis_options_t ro;
  int rc;
  memset(&ro, 0, sizeof(ro));
  ro.url = o->url;
  ro.password = o->password;
  ro.what = subscriber ? "shared breakers (subscriber)" : "shared breakers";
  ro.timeout_ms = o->timeout_ms;
  ro.connect_timeout_ms = o->connect_timeout_ms;
  ro.backoff_min_ms = o->backoff_min_ms;
  ro.backoff_max_ms = o->backoff_max_ms;
  if (subscriber) {
    ro.subscribe = b->channel;
    ro.on_message = on_message;
  } else {
    ro.scripts = scripts;
    ro.nscripts = 1;
  }
  ro.on_state = on_conn_state;
  rc = llmux_redis_init(b->loop, r, &ro, err, errlen);
  if (rc == 0) r->data = b;
  return rc;
}

static void free_module(llmux_breaker_shared_t *b) {
  while (b->words) drop_word(b, b->words);
  free(b->prefix);
  free(b->keys);
  free(b->channel);
  free(b->pattern);
  free(b);
}

int llmux_breaker_shared_new(uv_loop_t *loop, const llmux_breaker_shared_options_t *o,
                             llmux_breaker_shared_t **out, char *err, size_t errlen) {
  llmux_breaker_shared_t *b;
  llmux_redis_url_t url;
  const char *prefix;
  int rc;
  if (out) *out = NULL;
  if (loop == NULL || o == NULL || out == NULL || o->url == NULL || o->on_open == NULL ||
      o->on_close == NULL)
    return LLMUX_EINVAL;
  if ((rc = llmux_redis_parse_url(o->url, &url, err, errlen)) != 0) return rc;
  prefix = o->prefix ? o->prefix : "llmux:";
  if (strpbrk(prefix, " \t\r\n") != NULL) {
    if (err && errlen) snprintf(err, errlen, "shared_state_prefix must not contain spaces");
    return LLMUX_EINVAL;
  }
  b = llmux_xcalloc(1, sizeof(*b));
  b->loop = loop;
  b->prefix = llmux_xstrdup(prefix);
  b->keys = joined(prefix, "br:");
  b->channel = joined(prefix, "br");
  b->pattern = scan_pattern(prefix);
  b->on_open = o->on_open;
  b->on_close = o->on_close;
  b->arg = o->arg;
  make_origin(b->origin);
  /* The URL was checked above: the only thing init checks that can fail. */
  if (conn_init(b, &b->cmd, o, 0, err, errlen) != 0) {
    free_module(b);
    return LLMUX_EINVAL;
  }
  rc = conn_init(b, &b->sub, o, 1, err, errlen);
  if (rc != 0) abort();
  *out = b;
  return 0;
}

int llmux_breaker_shared_start(llmux_breaker_shared_t *b) {
  int rc;
  if (b == NULL || b->closing) return LLMUX_EINVAL;
  rc = llmux_redis_start(&b->sub);
  return rc ? rc : llmux_redis_start(&b->cmd);
}

static void conn_closed(llmux_redis_t *r) {
  llmux_breaker_shared_t *b = r->data;
  if (++b->closed_conns < 2) return;
  if (b->close_cb) b->close_cb(b, 0, b->close_arg);
  free_module(b);
}

void llmux_breaker_shared_close(llmux_breaker_shared_t *b, llmux_breaker_shared_cb cb,
                                void *arg) {
  if (b->closing) return;
  b->closing = 1;
  b->close_cb = cb;
  b->close_arg = arg;
  b->up = 0;
  b->joining = 0;
  fire_waiters(b, LLMUX_ECANCELED);
  llmux_redis_close(&b->sub, conn_closed);
  llmux_redis_close(&b->cmd, conn_closed);
}

void llmux_breaker_shared_stats(const llmux_breaker_shared_t *b,
                                llmux_breaker_shared_stats_t *out) {
  memset(out, 0, sizeof(*out));
  out->up = b->up;
  out->errors = b->cmd.errors + b->sub.errors;
  out->outages = b->outages;
  out->unsent = b->nwords;
  out->heard = b->heard;
  out->last_error = b->cmd.last_error[0] ? b->cmd.last_error : b->sub.last_error;
}
