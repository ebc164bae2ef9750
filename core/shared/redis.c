/* An asynchronous Redis connection on the loop. See redis.h for the
 * contract; the comments here say how hiredis 0.14 is kept at arm's length. */
#include "shared/redis.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <hiredis/async.h>
#include <hiredis/adapters/libuv.h>

#include "base/log.h"
#include "base/util.h"

#define DEFAULT_TIMEOUT_MS 50u
#define DEFAULT_CONNECT_TIMEOUT_MS 1000u
#define DEFAULT_BACKOFF_MIN_MS 100u
#define DEFAULT_BACKOFF_MAX_MS 5000u
#define CONNECT_CHECK_MS 20u /* see connect_error() */

/* Handshake steps, as the `arg` of their replies (scripts are 0..n-1). */
enum { STEP_AUTH = -1, STEP_SELECT = -2, STEP_PING = -3 };

struct llmux__redis_cmd_s {
  llmux__redis_cmd_t *next, *prev; /* on r->pending while linked */
  int linked;
  llmux_redis_t *r;
  llmux_redis_cb cb;
  void *arg;
  uint64_t conn_id;   /* the context it was sent on */
  uint64_t deadline;  /* uv_now ms */
  int status;         /* what it hears if its context is dropped */
  int script;         /* -1: not an EVALSHA */
  int retried;        /* NOSCRIPT already answered once */
  int counted;        /* a caller's command: counted in queued/answered */
  int argc;           /* an EVALSHA's whole argv, kept for the retry */
  const char **argv;
  size_t *lens;
  char nkeys[24];
};

static void fail(llmux_redis_t *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void attempt(llmux_redis_t *r);
static void deadline_cb(uv_timer_t *t);

const char *llmux_redis_state_name(llmux_redis_state_t s) {
  static const char *const names[] = {"idle",  "resolving", "connecting", "handshake",
                                      "ready", "backoff",   "closing",    "closed"};
  return (unsigned)s < LLMUX_COUNTOF(names) ? names[s] : "?";
}

/* ---- URLs ---------------------------------------------------------------- */

static int url_error(char *err, size_t errlen, const char *url, const char *why) {
  if (err && errlen) snprintf(err, errlen, "shared state URL \"%s\": %s", url, why);
  return LLMUX_EINVAL;
}

/* A decimal number in [lo, hi] made of all of s[0..n). */
static int parse_bounded(const char *s, size_t n, unsigned long lo, unsigned long hi,
                         unsigned long *out) {
  unsigned long v = 0;
  size_t i;
  if (n == 0 || n > 5) return LLMUX_EINVAL;
  for (i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return LLMUX_EINVAL;
    v = v * 10 + (unsigned long)(s[i] - '0');
  }
  if (v < lo || v > hi) return LLMUX_EINVAL;
  *out = v;
  return 0;
}

int llmux_redis_parse_url(const char *url, llmux_redis_url_t *out, char *err,
                          size_t errlen) {
  const char *p, *host, *host_end, *port = NULL, *end;
  unsigned long v;
  size_t n;
  if (url == NULL || out == NULL) return LLMUX_EINVAL;
  memset(out, 0, sizeof(*out));
  out->port = LLMUX_REDIS_DEFAULT_PORT;
  if (strncmp(url, "redis://", 8) != 0)
    return url_error(err, errlen, url, "expected redis://HOST:PORT[/DB]");
  p = url + 8;
  end = p + strcspn(p, "/");
  if (memchr(p, '@', (size_t)(end - p)) != NULL)
    return url_error(err, errlen, url,
                     "a user or password in the URL is not accepted: "
                     "put the password in the variable named by shared_state_password_env");
  if (*p == '[') {
    host = p + 1;
    host_end = memchr(host, ']', (size_t)(end - host));
    if (host_end == NULL) return url_error(err, errlen, url, "unclosed '[' in the host");
    p = host_end + 1;
    if (p < end && *p != ':') return url_error(err, errlen, url, "junk after ']'");
  } else {
    host = p;
    host_end = p + strcspn(p, ":/");
    if (host_end > end) host_end = end;
    p = host_end;
  }
  n = (size_t)(host_end - host);
  if (n == 0) return url_error(err, errlen, url, "the host is empty");
  if (n >= sizeof(out->host)) return url_error(err, errlen, url, "the host is too long");
  memcpy(out->host, host, n);
  if (p < end && *p == ':') port = p + 1;
  if (port) {
    if (parse_bounded(port, (size_t)(end - port), 1, 65535, &v) != 0)
      return url_error(err, errlen, url, "the port must be a number in 1..65535");
    out->port = (uint16_t)v;
  }
  if (*end == '/' && end[1] != '\0') {
    if (parse_bounded(end + 1, strlen(end + 1), 0, 65535, &v) != 0)
      return url_error(err, errlen, url, "the database must be a number in 0..65535");
    out->db = (unsigned)v;
  }
  return 0;
}

/* ---- Small helpers ------------------------------------------------------- */

static void set_state(llmux_redis_t *r, llmux_redis_state_t s) {
  if (r->state == s) return;
  llmux_debug("%s: redis %s -> %s", r->what, llmux_redis_state_name(r->state),
              llmux_redis_state_name(s));
  r->state = s;
}

static uint64_t next_rand(llmux_redis_t *r) {
  uint64_t x = r->rand;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return r->rand = x;
}

static void link_tail(llmux_redis_t *r, llmux__redis_cmd_t *c) {
  if (r->pending == NULL) {
    c->next = c->prev = c;
    r->pending = c;
  } else {
    c->prev = r->pending->prev;
    c->next = r->pending;
    c->prev->next = c;
    r->pending->prev = c;
  }
  c->linked = 1;
}

static void unlink_cmd(llmux_redis_t *r, llmux__redis_cmd_t *c) {
  if (!c->linked) return;
  if (c->next == c) {
    r->pending = NULL;
  } else {
    c->prev->next = c->next;
    c->next->prev = c->prev;
    if (r->pending == c) r->pending = c->next;
  }
  c->linked = 0;
}

static void arm(llmux_redis_t *r, uint64_t delay_ms, uv_timer_cb cb) {
  uv_timer_start(&r->timer, cb, delay_ms, 0);
}

/* ---- Dropping a context -------------------------------------------------- */

static void reaper_cb(uv_timer_t *t);

/* Forgets the live context: what is pending on it will hear `status`, and
 * the context itself is freed by the reaper, outside hiredis's callbacks. */
static void drop(llmux_redis_t *r, int status) {
  r->conn_id++;
  while (r->pending) {
    llmux__redis_cmd_t *c = r->pending;
    c->status = status;
    unlink_cmd(r, c);
  }
  if (r->ac == NULL) return;
  assert(r->ndead < LLMUX_REDIS_MAX_DEAD);
  r->dead[r->ndead++] = r->ac;
  r->ac = NULL;
  uv_timer_start(&r->reaper, reaper_cb, 0, 0);
}

/* hiredis frees `ac` itself: stop tracking it. */
static int forget_dead(llmux_redis_t *r, const redisAsyncContext *ac) {
  unsigned i;
  for (i = 0; i < r->ndead; i++) {
    if (r->dead[i] != ac) continue;
    r->dead[i] = r->dead[--r->ndead];
    return 1;
  }
  return 0;
}

static void handle_closed(uv_handle_t *h) {
  llmux_redis_t *r = h->data;
  if (--r->handles_open > 0 || r->resolving) return;
  set_state(r, LLMUX_REDIS_CLOSED);
  if (r->close_cb) r->close_cb(r);
}

static void maybe_finish_close(llmux_redis_t *r) {
  if (r->state != LLMUX_REDIS_CLOSING || r->ndead > 0 || r->handles_open != 2) return;
  uv_close((uv_handle_t *)&r->timer, handle_closed);
  uv_close((uv_handle_t *)&r->reaper, handle_closed);
}

static void reaper_cb(uv_timer_t *t) {
  llmux_redis_t *r = t->data;
  while (r->ndead > 0) {
    redisAsyncContext *ac = r->dead[--r->ndead];
    redisAsyncFree(ac); /* pending callbacks run now, with NULL replies */
  }
  maybe_finish_close(r);
}

/* ---- Failure and backoff ------------------------------------------------- */

static void backoff_cb(uv_timer_t *t) { attempt(t->data); }

static void fail(llmux_redis_t *r, int status, const char *fmt, ...) {
  unsigned base = r->backoff_ms, wait;
  char why[192];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof(why), fmt, ap);
  va_end(ap);
  r->errors++;
  snprintf(r->last_error, sizeof(r->last_error), "%s: %s", r->url_text, why);
  llmux_debug("%s: redis %s", r->what, r->last_error);
  drop(r, status);
  wait = base / 2 + (unsigned)(next_rand(r) % (base / 2 + 1));
  r->backoff_ms = base * 2 > r->backoff_max_ms ? r->backoff_max_ms : base * 2;
  set_state(r, LLMUX_REDIS_BACKOFF);
  arm(r, wait, backoff_cb);
  if (r->on_state) r->on_state(r, 0);
}

void llmux_redis_reset(llmux_redis_t *r, const char *why) {
  if (r->state == LLMUX_REDIS_CLOSING || r->state == LLMUX_REDIS_CLOSED ||
      r->state == LLMUX_REDIS_IDLE || r->state == LLMUX_REDIS_BACKOFF)
    return;
  fail(r, LLMUX_ECONNRESET, "%s", why ? why : "reset");
}

/* ---- Commands ------------------------------------------------------------ */

static void finish(llmux__redis_cmd_t *c, int status, redisReply *reply) {
  llmux_redis_t *r = c->r;
  int counted = c->counted;
  if (counted) r->answered++;
  c->cb(r, status, reply, c->arg);
  free(c);
  if (counted && r->on_answered) r->on_answered(r);
}

static int send_cmd(llmux_redis_t *r, llmux__redis_cmd_t *c, int argc, const char **argv,
                    const size_t *lens);

static int is_noscript(const redisReply *reply) {
  return reply->type == REDIS_REPLY_ERROR && reply->str &&
         strncmp(reply->str, "NOSCRIPT", 8) == 0;
}

static void ignore_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg) {}

static int script_load(llmux_redis_t *r, size_t i, llmux_redis_cb cb, void *arg);

static void on_reply(redisAsyncContext *ac, void *reply_, void *privdata) {
  llmux__redis_cmd_t *c = privdata;
  llmux_redis_t *r = c->r;
  redisReply *reply = reply_;
  unlink_cmd(r, c);
  if (c->conn_id != r->conn_id) {
    finish(c, c->status ? c->status : LLMUX_ECONNRESET, NULL);
    return;
  }
  if (reply == NULL) { /* hiredis lost the live context and is freeing it */
    r->ac = NULL;
    fail(r, LLMUX_ECONNRESET, "connection lost (%s)", ac->errstr[0] ? ac->errstr : "closed");
    finish(c, LLMUX_ECONNRESET, NULL);
    return;
  }
  if (c->script >= 0 && !c->retried && is_noscript(reply)) {
    c->retried = 1;
    if (script_load(r, (size_t)c->script, ignore_cb, NULL) == 0 &&
        send_cmd(r, c, c->argc, c->argv, c->lens) == 0)
      return;
    finish(c, LLMUX_ECONNRESET, NULL);
    return;
  }
  finish(c, 0, reply);
}

static void deadline_cb(uv_timer_t *t);

static int send_cmd(llmux_redis_t *r, llmux__redis_cmd_t *c, int argc, const char **argv,
                    const size_t *lens) {
  if (r->ac == NULL ||
      redisAsyncCommandArgv(r->ac, on_reply, c, argc, argv, lens) != REDIS_OK)
    return LLMUX_ECONNRESET;
  c->conn_id = r->conn_id;
  c->deadline = uv_now(r->loop) + r->timeout_ms;
  c->status = 0;
  link_tail(r, c);
  if (r->state == LLMUX_REDIS_READY && !uv_is_active((uv_handle_t *)&r->timer))
    arm(r, r->timeout_ms, deadline_cb);
  return 0;
}

static llmux__redis_cmd_t *new_cmd(llmux_redis_t *r, llmux_redis_cb cb, void *arg,
                                   size_t extra) {
  llmux__redis_cmd_t *c = llmux_xcalloc(1, sizeof(*c) + extra);
  c->r = r;
  c->cb = cb;
  c->arg = arg;
  c->script = -1;
  return c;
}

static int usable(const llmux_redis_t *r) {
  if (r->state == LLMUX_REDIS_CLOSING || r->state == LLMUX_REDIS_CLOSED)
    return LLMUX_ECANCELED;
  if (r->channel) return LLMUX_EINVAL;
  return r->state == LLMUX_REDIS_READY ? 0 : LLMUX_ECONNREFUSED;
}

int llmux_redis_command(llmux_redis_t *r, llmux_redis_cb cb, void *arg, int argc,
                        const char *const *argv, const size_t *lens) {
  llmux__redis_cmd_t *c;
  int rc = usable(r);
  if (rc != 0) return rc;
  assert(cb != NULL && argc > 0);
  c = new_cmd(r, cb, arg, 0);
  if ((rc = send_cmd(r, c, argc, (const char **)argv, lens)) != 0) {
    free(c);
    return rc;
  }
  c->counted = 1;
  r->queued++;
  return 0;
}

int llmux_redis_evalsha(llmux_redis_t *r, size_t script, llmux_redis_cb cb, void *arg,
                        int nkeys, int argc, const char *const *argv, const size_t *lens) {
  llmux__redis_cmd_t *c;
  size_t total = 3 * sizeof(char *) + 3 * sizeof(size_t), i, off;
  char *data;
  int rc = usable(r);
  if (rc != 0) return rc;
  if (script >= r->nscripts || nkeys < 0 || argc < nkeys) return LLMUX_EINVAL;
  for (i = 0; i < (size_t)argc; i++) total += sizeof(char *) + sizeof(size_t) + lens[i];
  c = new_cmd(r, cb, arg, total);
  c->script = (int)script;
  c->argc = argc + 3;
  c->argv = (const char **)(c + 1);
  c->lens = (size_t *)(c->argv + c->argc);
  data = (char *)(c->lens + c->argc);
  snprintf(c->nkeys, sizeof(c->nkeys), "%d", nkeys);
  c->argv[0] = "EVALSHA";
  c->argv[1] = r->sha[script];
  c->argv[2] = c->nkeys;
  for (i = 0, off = 0; i < (size_t)argc; i++) {
    memcpy(data + off, argv[i], lens[i]);
    c->argv[3 + i] = data + off;
    off += lens[i];
  }
  for (i = 0; i < (size_t)c->argc; i++) c->lens[i] = i < 3 ? strlen(c->argv[i]) : lens[i - 3];
  if ((rc = send_cmd(r, c, c->argc, c->argv, c->lens)) != 0) {
    free(c);
    return rc;
  }
  c->counted = 1;
  r->queued++;
  return 0;
}

/* ---- Deadlines ----------------------------------------------------------- */

/* The libuv adapter of hiredis 0.14 drops a poll error (libuv reports a
 * refused connect as POLLERR, status UV_EBADF), so hiredis never hears of
 * it: while connecting, the socket's pending error is read here instead. */
static int connect_error(const llmux_redis_t *r) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (r->state != LLMUX_REDIS_CONNECTING || r->ac == NULL || r->ac->c.fd < 0) return 0;
  if (getsockopt(r->ac->c.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
  return err;
}


static void deadline_cb(uv_timer_t *t) {
  llmux_redis_t *r = t->data;
  uint64_t now = uv_now(r->loop), left;
  int err;
  if (r->state != LLMUX_REDIS_READY) {
    if ((err = connect_error(r)) != 0) {
      fail(r, LLMUX_ECONNREFUSED, "connect failed (%s)", strerror(err));
    } else if (now >= r->deadline) {
      fail(r, LLMUX_ETIMEOUT, "no %s within %u ms",
           r->state == LLMUX_REDIS_HANDSHAKE ? "handshake" : "connection",
           r->connect_timeout_ms);
    } else {
      left = r->deadline - now;
      if (r->state == LLMUX_REDIS_CONNECTING && left > CONNECT_CHECK_MS) left = CONNECT_CHECK_MS;
      arm(r, left, deadline_cb);
    }
    return;
  }
  if (r->pending == NULL) return;
  if (now >= r->pending->deadline) {
    fail(r, LLMUX_ETIMEOUT, "no reply within %u ms", r->timeout_ms);
    return;
  }
  arm(r, r->pending->deadline - now, deadline_cb);
}

/* ---- Handshake ----------------------------------------------------------- */

static void ready(llmux_redis_t *r) {
  set_state(r, LLMUX_REDIS_READY);
  r->connects++;
  r->backoff_ms = r->backoff_min_ms;
  uv_timer_stop(&r->timer);
  if (r->pending) arm(r, r->timeout_ms, deadline_cb);
  if (r->on_state) r->on_state(r, 1);
}

static void step_done(llmux_redis_t *r) {
  if (r->state == LLMUX_REDIS_HANDSHAKE && --r->hs_left == 0) ready(r);
}

static const char *step_name(intptr_t step) {
  switch (step) {
  case STEP_AUTH: return "AUTH";
  case STEP_SELECT: return "SELECT";
  case STEP_PING: return "PING";
  default: return "SCRIPT LOAD";
  }
}

static void step_cb(llmux_redis_t *r, int status, redisReply *reply, void *arg) {
  intptr_t step = (intptr_t)arg;
  if (status != 0 || r->state != LLMUX_REDIS_HANDSHAKE) return;
  if (reply->type == REDIS_REPLY_ERROR) {
    const char *msg = reply->str ? reply->str : "error";
    if (step == STEP_AUTH)
      fail(r, LLMUX_ECONNRESET, "authentication failed: %s", msg);
    else if (strncmp(msg, "NOAUTH", 6) == 0)
      fail(r, LLMUX_ECONNRESET, "the server requires a password (%s)", msg);
    else
      fail(r, LLMUX_ECONNRESET, "%s failed: %s", step_name(step), msg);
    return;
  }
  if (step >= 0) {
    if (reply->type != REDIS_REPLY_STRING || reply->len != 40) {
      fail(r, LLMUX_ECONNRESET, "SCRIPT LOAD: unexpected reply");
      return;
    }
    memcpy(r->sha[step], reply->str, 40);
    r->sha[step][40] = '\0';
  }
  step_done(r);
}

static int script_load(llmux_redis_t *r, size_t i, llmux_redis_cb cb, void *arg) {
  const char *argv[3] = {"SCRIPT", "LOAD", r->scripts[i]};
  size_t lens[3] = {6, 4, strlen(r->scripts[i])};
  llmux__redis_cmd_t *c = new_cmd(r, cb, arg, 0);
  int rc = send_cmd(r, c, 3, argv, lens);
  if (rc != 0) free(c);
  return rc;
}

static int send_step(llmux_redis_t *r, intptr_t step, int argc, const char **argv) {
  size_t lens[3];
  int i, rc;
  llmux__redis_cmd_t *c = new_cmd(r, step_cb, (void *)step, 0);
  for (i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
  if ((rc = send_cmd(r, c, argc, argv, lens)) != 0) free(c);
  r->hs_left += rc == 0;
  return rc;
}

static void on_subscribe(redisAsyncContext *ac, void *reply_, void *privdata) {
  llmux_redis_t *r = privdata;
  redisReply *reply = reply_, *kind;
  if (reply == NULL || ac != r->ac || reply->type != REDIS_REPLY_ARRAY ||
      reply->elements < 3)
    return;
  kind = reply->element[0];
  if (kind->type != REDIS_REPLY_STRING) return;
  if (strcmp(kind->str, "subscribe") == 0) {
    step_done(r);
  } else if (strcmp(kind->str, "message") == 0 &&
             reply->element[2]->type == REDIS_REPLY_STRING && r->on_message) {
    r->on_message(r, reply->element[2]->str, reply->element[2]->len);
  }
}

static int handshake(llmux_redis_t *r) {
  char db[16];
  size_t i;
  int rc = 0;
  r->hs_left = 1; /* held until every step is queued */
  if (r->password) {
    const char *argv[2] = {"AUTH", r->password};
    rc |= send_step(r, STEP_AUTH, 2, argv);
  }
  if (r->url.db) {
    const char *argv[2] = {"SELECT", db};
    snprintf(db, sizeof(db), "%u", r->url.db);
    rc |= send_step(r, STEP_SELECT, 2, argv);
  }
  {
    const char *argv[1] = {"PING"};
    rc |= send_step(r, STEP_PING, 1, argv);
  }
  for (i = 0; i < r->nscripts && rc == 0; i++) {
    rc = script_load(r, i, step_cb, (void *)(intptr_t)i);
    r->hs_left += rc == 0;
  }
  if (r->channel && rc == 0) {
    rc = redisAsyncCommand(r->ac, on_subscribe, r, "SUBSCRIBE %s", r->channel) == REDIS_OK
             ? 0 : LLMUX_ECONNRESET;
    r->hs_left += rc == 0;
  }
  r->hs_left--;
  return rc;
}

/* ---- Connecting ---------------------------------------------------------- */

static void on_connect(const redisAsyncContext *ac, int status) {
  llmux_redis_t *r = ac->data;
  if (ac != r->ac) { /* dropped while connecting */
    if (status != REDIS_OK) forget_dead(r, ac);
    return;
  }
  if (status != REDIS_OK) { /* hiredis frees it after this callback */
    r->ac = NULL;
    fail(r, LLMUX_ECONNREFUSED, "connect failed (%s)", ac->errstr);
    return;
  }
  set_state(r, LLMUX_REDIS_HANDSHAKE);
  /* Never free a context inside its connect callback: park it instead. */
  if (handshake(r) != 0) fail(r, LLMUX_ECONNRESET, "could not queue the handshake");
  else if (r->hs_left == 0) ready(r);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  llmux_redis_t *r = ac->data;
  if (forget_dead(r, ac) || ac != r->ac) return;
  r->ac = NULL; /* lost: hiredis is freeing it */
  fail(r, LLMUX_ECONNRESET, "connection lost (%s)", ac->errstr[0] ? ac->errstr : "closed");
}

static void connect_to(llmux_redis_t *r, const char *ip) {
  redisAsyncContext *ac = redisAsyncConnect(ip, r->url.port);
  if (ac == NULL) {
    fail(r, LLMUX_ENOMEM, "out of memory");
    return;
  }
  if (ac->err) {
    char why[128];
    snprintf(why, sizeof(why), "%s", ac->errstr);
    redisAsyncFree(ac);
    fail(r, LLMUX_ECONNREFUSED, "connect failed (%s)", why);
    return;
  }
  ac->data = r;
  if (redisLibuvAttach(ac, r->loop) != REDIS_OK) {
    redisAsyncFree(ac);
    fail(r, LLMUX_EIO, "could not watch the socket");
    return;
  }
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  r->ac = ac;
  set_state(r, LLMUX_REDIS_CONNECTING);
  arm(r, CONNECT_CHECK_MS < r->connect_timeout_ms ? CONNECT_CHECK_MS : r->connect_timeout_ms,
      deadline_cb);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  llmux_redis_t *r = req->data;
  struct addrinfo *a, *pick = NULL;
  char ip[INET6_ADDRSTRLEN] = "";
  r->resolving = 0;
  if (r->state == LLMUX_REDIS_CLOSING) {
    uv_freeaddrinfo(res);
    if (r->handles_open == 0) {
      set_state(r, LLMUX_REDIS_CLOSED);
      if (r->close_cb) r->close_cb(r);
    }
    return;
  }
  if (r->state != LLMUX_REDIS_RESOLVING) { /* timed out meanwhile */
    uv_freeaddrinfo(res);
    return;
  }
  for (a = status == 0 ? res : NULL; a; a = a->ai_next)
    if (pick == NULL || (a->ai_family == AF_INET && pick->ai_family != AF_INET)) pick = a;
  if (pick && pick->ai_family == AF_INET)
    uv_ip4_name((const struct sockaddr_in *)pick->ai_addr, ip, sizeof(ip));
  else if (pick)
    uv_ip6_name((const struct sockaddr_in6 *)pick->ai_addr, ip, sizeof(ip));
  uv_freeaddrinfo(res);
  if (ip[0] == '\0') {
    fail(r, LLMUX_EDNS, "cannot resolve %s (%s)", r->url.host,
         status ? uv_strerror(status) : "no address");
    return;
  }
  connect_to(r, ip);
}

static int is_numeric(const char *host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

static void attempt(llmux_redis_t *r) {
  struct addrinfo hints;
  int rc;
  r->deadline = uv_now(r->loop) + r->connect_timeout_ms;
  arm(r, r->connect_timeout_ms, deadline_cb);
  if (is_numeric(r->url.host)) {
    connect_to(r, r->url.host);
    return;
  }
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  r->gai.data = r;
  rc = uv_getaddrinfo(r->loop, &r->gai, on_resolved, r->url.host, NULL, &hints);
  if (rc != 0) {
    fail(r, LLMUX_EDNS, "cannot resolve %s (%s)", r->url.host, uv_strerror(rc));
    return;
  }
  r->resolving = 1;
  set_state(r, LLMUX_REDIS_RESOLVING);
}

/* ---- Lifecycle ----------------------------------------------------------- */

int llmux_redis_init(uv_loop_t *loop, llmux_redis_t *r, const llmux_redis_options_t *opt,
                     char *err, size_t errlen) {
  llmux_redis_url_t url;
  int rc;
  if (loop == NULL || r == NULL || opt == NULL || opt->url == NULL) return LLMUX_EINVAL;
  if ((rc = llmux_redis_parse_url(opt->url, &url, err, errlen)) != 0) return rc;
  if (opt->nscripts > LLMUX_REDIS_MAX_SCRIPTS || (opt->subscribe && opt->nscripts) ||
      (opt->subscribe && opt->on_message == NULL)) {
    if (err && errlen) snprintf(err, errlen, "redis: bad options");
    return LLMUX_EINVAL;
  }
  memset(r, 0, sizeof(*r));
  r->loop = loop;
  r->url = url;
  r->url_text = llmux_xstrdup(opt->url);
  r->password = opt->password && *opt->password ? llmux_xstrdup(opt->password) : NULL;
  r->what = llmux_xstrdup(opt->what ? opt->what : "redis");
  r->channel = opt->subscribe ? llmux_xstrdup(opt->subscribe) : NULL;
  r->scripts = opt->scripts;
  r->nscripts = opt->nscripts;
  r->timeout_ms = opt->timeout_ms ? opt->timeout_ms : DEFAULT_TIMEOUT_MS;
  r->connect_timeout_ms =
      opt->connect_timeout_ms ? opt->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
  r->backoff_min_ms = opt->backoff_min_ms ? opt->backoff_min_ms : DEFAULT_BACKOFF_MIN_MS;
  r->backoff_max_ms = opt->backoff_max_ms ? opt->backoff_max_ms : DEFAULT_BACKOFF_MAX_MS;
  if (r->backoff_max_ms < r->backoff_min_ms) r->backoff_max_ms = r->backoff_min_ms;
  r->backoff_ms = r->backoff_min_ms;
  r->on_message = opt->on_message;
  r->on_state = opt->on_state;
  r->on_answered = opt->on_answered;
  r->rand = uv_hrtime() ^ (uint64_t)(uintptr_t)r ^ 0x9e3779b97f4a7c15u;
  if (r->rand == 0) r->rand = 1;
  uv_timer_init(loop, &r->timer);
  uv_timer_init(loop, &r->reaper);
  r->timer.data = r->reaper.data = r;
  r->handles_open = 2;
  return 0;
}

int llmux_redis_start(llmux_redis_t *r) {
  if (r == NULL || r->state != LLMUX_REDIS_IDLE) return LLMUX_EINVAL;
  attempt(r);
  return 0;
}

static void wipe(char *s) {
  if (s == NULL) return;
  memset(s, 0, strlen(s));
  free(s);
}

void llmux_redis_close(llmux_redis_t *r, llmux_redis_close_cb cb) {
  if (r->state == LLMUX_REDIS_CLOSING || r->state == LLMUX_REDIS_CLOSED) return;
  r->close_cb = cb;
  drop(r, LLMUX_ECANCELED);
  set_state(r, LLMUX_REDIS_CLOSING);
  uv_timer_stop(&r->timer);
  if (r->resolving) uv_cancel((uv_req_t *)&r->gai);
  wipe(r->password);
  free(r->url_text);
  free(r->what);
  free(r->channel);
  r->password = r->url_text = r->channel = NULL;
  r->what = (char *)"redis";
  /* The reaper frees what hiredis still holds, then the handles close. */
  uv_timer_start(&r->reaper, reaper_cb, 0, 0);
}

/* ---- Arguments of a command ---------------------------------------------- */

llmux_redis_args_t *llmux_redis_args_new(int cap) {
  llmux_redis_args_t *a =
      llmux_xcalloc(1, sizeof(*a) + (size_t)cap * (sizeof(char *) + sizeof(size_t) + 24));
  a->cap = cap;
  a->v = (const char **)(a + 1);
  a->len = (size_t *)(a->v + cap);
  a->num = (char(*)[24])(a->len + cap);
  return a;
}

void llmux_redis_arg_str(llmux_redis_args_t *a, const char *s, size_t n) {
  assert(a->n < a->cap);
  a->v[a->n] = s;
  a->len[a->n++] = n;
}

void llmux_redis_arg_i64(llmux_redis_args_t *a, int64_t v) {
  assert(a->n < a->cap);
  a->len[a->n] = (size_t)snprintf(a->num[a->n], 24, "%" PRId64, v);
  a->v[a->n] = a->num[a->n];
  a->n++;
}

void llmux_redis_arg_u64(llmux_redis_args_t *a, uint64_t v) {
  assert(a->n < a->cap);
  a->len[a->n] = llmux_u64_dec(a->num[a->n], v);
  a->v[a->n] = a->num[a->n];
  a->n++;
}
