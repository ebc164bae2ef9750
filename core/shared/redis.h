/* An asynchronous Redis connection on the caller's libuv loop: hiredis with
 * its libuv adapter, and nothing that blocks.
 *
 * One llmux_redis_t is one connection, kept up for as long as it lives:
 *
 *   init -> start -> (command | evalsha)* -> close(cb)
 *
 * start resolves the host (uv_getaddrinfo, off the loop; numeric addresses
 * skip it), connects without blocking, then runs the handshake: AUTH with
 * the password the caller gave (never logged), SELECT the database of the
 * URL, and then either SCRIPT LOAD of every registered script (a command
 * connection) or SUBSCRIBE to one channel (a subscriber connection). Only
 * then is the connection READY and on_state(r, 1) called. When it fails or
 * is lost (a refused connect, a reset, an error reply to the handshake, a
 * connect or handshake slower than connect_timeout_ms, a command slower
 * than timeout_ms) the connection is dropped at once, `errors` goes up,
 * last_error says why, on_state(r, 0) is called, and a new
 * attempt starts after an exponential backoff with jitter (backoff_min_ms
 * doubling up to backoff_max_ms, each wait drawn from [base/2, base]; a
 * connection that reaches READY resets it).
 *
 * A slow Redis is a down Redis: a command not answered within timeout_ms
 * drops the connection, so it and every command behind it hear
 * LLMUX_ETIMEOUT, and the next attempt starts after the backoff. (A command
 * dropped that way was maybe executed, maybe not.)
 *
 * Callbacks. A command's callback runs exactly once, never inside the call
 * that queued it: with status 0 and the reply (which may be an error reply:
 * check reply->type), or with a negative status and reply NULL
 * (LLMUX_ETIMEOUT, LLMUX_ECONNRESET, LLMUX_ECANCELED after close). The reply
 * belongs to hiredis and is valid only during the callback. A callback may
 * queue commands, reset or close the connection.
 *
 * Memory. close() fails what is pending (LLMUX_ECANCELED) on a later loop
 * iteration, lets hiredis free its context, closes the handles, and calls
 * cb once nothing of the connection is left on the loop: free r there. The
 * hiredis 0.14 of Debian bookworm has no timeouts of its own and calls
 * connect and disconnect callbacks outside its "in callback" guard, so a
 * context is never freed from inside one of hiredis's callbacks: a dropped
 * context is parked and freed by a zero-delay timer, and any reply it still
 * delivers meanwhile reaches its caller as LLMUX_ECONNRESET.
 *
 * Everything runs on the loop thread; nothing is thread-safe. */
#ifndef LLMUX_SHARED_REDIS_H
#define LLMUX_SHARED_REDIS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include <hiredis/hiredis.h>

#include "llmux/common.h"

#define LLMUX_REDIS_DEFAULT_PORT 6379
#define LLMUX_REDIS_MAX_SCRIPTS 4
#define LLMUX_REDIS_MAX_DEAD 4

/* ---- URLs ---------------------------------------------------------------- */

typedef struct llmux_redis_url_s {
  char host[256]; /* a name, an IPv4 address or an IPv6 address (no brackets) */
  uint16_t port;  /* LLMUX_REDIS_DEFAULT_PORT when the URL has none */
  unsigned db;    /* 0 when the URL has none */
} llmux_redis_url_t;

/* Parses `redis://HOST[:PORT][/DB]` (HOST may be `[IPv6]`). 0, or
 * LLMUX_EINVAL with a sentence in err (the URL is quoted, so pass no
 * secret): another scheme, a user or password in the URL (the password
 * comes from the environment), an empty host, a port outside 1..65535, a DB
 * that is not a number in 0..65535, or anything after the DB. */
int llmux_redis_parse_url(const char *url, llmux_redis_url_t *out, char *err,
                          size_t errlen);

/* ---- The connection ------------------------------------------------------ */

typedef struct llmux_redis_s llmux_redis_t;

typedef enum {
  LLMUX_REDIS_IDLE = 0,   /* initialised, not started */
  LLMUX_REDIS_RESOLVING,  /* uv_getaddrinfo in flight */
  LLMUX_REDIS_CONNECTING, /* TCP connect in flight */
  LLMUX_REDIS_HANDSHAKE,  /* AUTH, SELECT, SCRIPT LOAD or SUBSCRIBE */
  LLMUX_REDIS_READY,      /* commands accepted */
  LLMUX_REDIS_BACKOFF,    /* waiting before the next attempt */
  LLMUX_REDIS_CLOSING,
  LLMUX_REDIS_CLOSED
} llmux_redis_state_t;

typedef void (*llmux_redis_cb)(llmux_redis_t *r, int status, redisReply *reply,
                               void *arg);
/* ready: 1 on reaching READY; 0 after every failed attempt or lost
 * connection (so also several times in a row while Redis stays away). */
typedef void (*llmux_redis_state_cb)(llmux_redis_t *r, int ready);
/* A message published on the subscribed channel. */
typedef void (*llmux_redis_message_cb)(llmux_redis_t *r, const char *msg, size_t len);
typedef void (*llmux_redis_close_cb)(llmux_redis_t *r);

typedef struct llmux_redis_options_s {
  const char *url;             /* redis://HOST[:PORT][/DB]; copied */
  const char *password;        /* NULL or "": no AUTH; copied, never logged */
  const char *what;            /* for logs and last_error: "shared state" */
  unsigned timeout_ms;         /* per command; 0: 50 */
  unsigned connect_timeout_ms; /* connect and handshake; 0: 1000 */
  unsigned backoff_min_ms;     /* 0: 100 */
  unsigned backoff_max_ms;     /* 0: 5000 */
  /* A command connection: Lua sources loaded at every connect, run with
   * llmux_redis_evalsha(r, index, ...). Borrowed: they must outlive r. */
  const char *const *scripts;
  size_t nscripts;             /* at most LLMUX_REDIS_MAX_SCRIPTS */
  /* A subscriber connection instead: the channel (copied) and where its
   * messages go. Such a connection takes no commands. */
  const char *subscribe;
  llmux_redis_message_cb on_message;
  llmux_redis_state_cb on_state; /* may be NULL */
  /* Called after each command's callback (answered or failed), when the
   * command's count is in `answered`; may be NULL. */
  void (*on_answered)(llmux_redis_t *r);
} llmux_redis_options_t;

/* Private: a command in flight (redis.c). */
typedef struct llmux__redis_cmd_s llmux__redis_cmd_t;

/* Caller-owned, like a libuv handle: free it only in the close callback. */
struct llmux_redis_s {
  /* public */
  void *data;
  /* read-only */
  uv_loop_t *loop;
  llmux_redis_state_t state;
  uint64_t errors;          /* failed attempts, lost connections, timeouts */
  uint64_t connects;        /* times READY was reached */
  /* Commands queued (llmux_redis_command, llmux_redis_evalsha) and
   * finished (answered, or failed with the connection). Answers come in
   * order, so answered >= n means every command queued before queued
   * reached n has been answered (or has failed). */
  uint64_t queued, answered;
  char last_error[256];     /* why the last attempt or connection failed */
  /* private */
  llmux_redis_url_t url;
  char *url_text;
  char *password;
  char *what;
  char *channel;
  const char *const *scripts;
  size_t nscripts;
  char sha[LLMUX_REDIS_MAX_SCRIPTS][41];
  unsigned timeout_ms, connect_timeout_ms, backoff_min_ms, backoff_max_ms;
  unsigned backoff_ms;      /* the next wait's base */
  llmux_redis_message_cb on_message;
  llmux_redis_state_cb on_state;
  void (*on_answered)(llmux_redis_t *r);
  llmux_redis_close_cb close_cb;
  struct redisAsyncContext *ac;                     /* the live context */
  struct redisAsyncContext *dead[LLMUX_REDIS_MAX_DEAD]; /* dropped, to free */
  unsigned ndead;
  uint64_t conn_id;         /* bumped whenever a context is dropped */
  uint64_t deadline;        /* connect/handshake deadline, uv_now ms */
  unsigned hs_left;         /* handshake replies still awaited */
  int fail_status;          /* what pending commands hear when dropped */
  llmux__redis_cmd_t *pending; /* commands of the live context (a ring list) */
  uint64_t rand;
  uv_getaddrinfo_t gai;
  int resolving;
  uv_timer_t timer;         /* backoff, deadlines */
  uv_timer_t reaper;        /* frees dropped contexts */
  int handles_open;
  void *reserved[4];
};

/* Validates the options (the URL, the counts) and sets r up; no I/O. 0, or
 * LLMUX_EINVAL with a sentence in err. */
int llmux_redis_init(uv_loop_t *loop, llmux_redis_t *r, const llmux_redis_options_t *opt,
                     char *err, size_t errlen);
/* Starts the first attempt. 0, or LLMUX_EINVAL when not IDLE. */
int llmux_redis_start(llmux_redis_t *r);

/* Queues a command (argv[i] of lens[i] bytes, binary-safe, copied). 0 and
 * cb later; or, without calling cb, LLMUX_ECONNREFUSED when not READY,
 * LLMUX_ECANCELED when closing, LLMUX_EINVAL for a subscriber connection. */
int llmux_redis_command(llmux_redis_t *r, llmux_redis_cb cb, void *arg, int argc,
                        const char *const *argv, const size_t *lens);
/* EVALSHA of registered script `script` with nkeys keys followed by the
 * other arguments (argv holds the keys, then the arguments). A NOSCRIPT
 * answer (SCRIPT FLUSH since the connect) loads the script again and runs
 * the command once more; the caller sees only the final reply. Returns as
 * llmux_redis_command. */
int llmux_redis_evalsha(llmux_redis_t *r, size_t script, llmux_redis_cb cb, void *arg,
                        int nkeys, int argc, const char *const *argv, const size_t *lens);

/* Drops the connection as after a failure (`why` goes to last_error and the
 * error count) and reconnects after the backoff. For a caller that got a
 * reply it cannot use. */
void llmux_redis_reset(llmux_redis_t *r, const char *why);

/* See "Memory" above. cb may be NULL (then nothing tells when r may be
 * freed: only for a struct that outlives the loop). */
void llmux_redis_close(llmux_redis_t *r, llmux_redis_close_cb cb);

const char *llmux_redis_state_name(llmux_redis_state_t s);

/* ---- Arguments of a command ---------------------------------------------- */

/* argv/lens for llmux_redis_command and llmux_redis_evalsha, built in one
 * allocation: strings are borrowed (they must live until the call), numbers
 * are written into the struct's own room. Free with free(). */
typedef struct llmux_redis_args_s {
  int n, cap;
  const char **v;
  size_t *len;
  char (*num)[24];
} llmux_redis_args_t;

llmux_redis_args_t *llmux_redis_args_new(int cap);
void llmux_redis_arg_str(llmux_redis_args_t *a, const char *s, size_t n);
void llmux_redis_arg_i64(llmux_redis_args_t *a, int64_t v);
void llmux_redis_arg_u64(llmux_redis_args_t *a, uint64_t v);

#endif /* LLMUX_SHARED_REDIS_H */
