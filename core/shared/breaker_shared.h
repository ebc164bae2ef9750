/* Breaker state shared by every gateway process that points at one Redis
 * (and prefix): a route that cools down in one process rests in all of
 * them, for the same time, and a probe that succeeds anywhere ends the rest
 * everywhere.
 *
 * What is shared: only openings and closes of route breakers, named by the
 * route's (provider, provider model id). Failure counts are not: each
 * process trips on its own failures, then tells the others. Latency,
 * requests in flight and last errors stay per process too. This module
 * knows nothing of routers: it carries plain values, and the caller
 * (gateway/fleet_breakers.c) connects it to a route table.
 *
 * Times cross processes as Unix wall-clock milliseconds. Each caller maps
 * them to its own monotonic clock with an offset taken once (wall clock
 * minus monotonic clock), so processes on several machines agree to within
 * their NTP skew: a rest ends that much earlier or later in one process
 * than in another, and the order checks below err by as much.
 *
 * An opening:   llmux_breaker_shared_opened(b, provider, model, since, until)
 *   runs one script that SETs the route's key to "until since origin" with
 *   PX the time left, only if that rests the route longer than the key
 *   already says, and then PUBLISHes it; a shorter opening changes nothing
 *   and is not published (the longer one stands everywhere).
 * A close:      llmux_breaker_shared_recovered(b, provider, model, at)
 *   (a probe succeeded at `at`) runs one script that DELetes the key unless
 *   it holds an opening that began after `at` (failures newer than the
 *   success stand), and PUBLISHes the close.
 * Either way the key and the message change in one atomic step, so every
 * process hears them in the order Redis made them. Every process
 * subscribes (a second connection) and passes what others published to
 * on_open / on_close; its own messages carry its instance id (16 random hex
 * digits, new at every start) and are ignored. The delay between processes
 * is one publish: a round trip to Redis and one message.
 *
 * Redis layout (P is the prefix, default "llmux:"):
 *   P br:<len>:<provider>:<model>  "until since origin": an opening, both
 *                                  times Unix ms; expires (PX) at `until`
 *                                  (len = the provider name's length, so no
 *                                  name can forge another's key)
 *   channel P br                   "o origin until since <len>:<provider>:<model>"
 *                                  "c origin at <len>:<provider>:<model>"
 *                                  "m origin seq" (llmux_breaker_shared_sync)
 * A key lives only as long as its rest: Redis never holds more than the
 * routes resting now. The scan at connect runs a script over keys it does
 * not declare (SCAN and GET): a single Redis, not a cluster.
 *
 * Connecting, and coming back. Once both connections are up the module
 * SCANs P br:* and passes every live opening made by another instance to
 * on_open (a process started later, or back after an outage, learns what
 * rests now), then re-sends what this process decided meanwhile (below),
 * and only then is up.
 *
 * Redis down or slow (no reply within timeout_ms, a lost connection, an
 * error reply): fail-open. Each process keeps its own breakers and goes on
 * deciding on them; the first error of an outage is logged once (warn),
 * every failure is counted in `errors` (llmux_shared_state_errors_total),
 * and both connections come back with exponential backoff and jitter. What
 * this process decided while down (its latest opening or close of each
 * route, until Redis confirmed it) is re-sent on reconnect, an opening only
 * if its rest still lasts; together with the scan this merges the
 * processes' breakers. What is lost: a close published while this process
 * was not subscribed (its rest here runs out, then it probes as usual), and
 * order against an opening that reached Redis after a newer close (a
 * process that starts meanwhile may rest that route once more).
 *
 * Everything runs on the loop thread; nothing is thread-safe. */
#ifndef LLMUX_SHARED_BREAKER_SHARED_H
#define LLMUX_SHARED_BREAKER_SHARED_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct llmux_breaker_shared_s llmux_breaker_shared_t;

/* Another instance's opening (heard, or found at connect): rest (provider,
 * model) until `until_ms`; it began at `since_ms`. Unix ms. The names are
 * valid during the call. */
typedef void (*llmux_breaker_open_cb)(llmux_breaker_shared_t *b, const char *provider,
                                      const char *model, int64_t since_ms, int64_t until_ms,
                                      void *arg);
/* Another instance's probe of (provider, model) succeeded at `at_ms`. */
typedef void (*llmux_breaker_close_cb)(llmux_breaker_shared_t *b, const char *provider,
                                       const char *model, int64_t at_ms, void *arg);
typedef void (*llmux_breaker_shared_cb)(llmux_breaker_shared_t *b, int status, void *arg);

typedef struct llmux_breaker_shared_options_s {
  const char *url;             /* redis://HOST[:PORT][/DB] */
  const char *password;        /* NULL: no AUTH (the caller reads it from the
                                  variable shared_state_password_env names) */
  const char *prefix;          /* key and channel prefix; NULL: "llmux:" */
  unsigned timeout_ms;         /* per command; 0: 50 */
  unsigned connect_timeout_ms; /* 0: 1000 */
  unsigned backoff_min_ms;     /* 0: 100 */
  unsigned backoff_max_ms;     /* 0: 5000 */
  llmux_breaker_open_cb on_open;   /* required */
  llmux_breaker_close_cb on_close; /* required */
  void *arg;                   /* for the callbacks */
} llmux_breaker_shared_options_t;

typedef struct llmux_breaker_shared_stats_s {
  int up;                 /* both connections ready and the scan done */
  uint64_t errors;        /* llmux_shared_state_errors_total */
  uint64_t outages;       /* times it went down after being up */
  uint64_t unsent;        /* this process's words Redis has not confirmed */
  uint64_t heard;         /* openings and closes passed to the callbacks */
  const char *last_error; /* why the last attempt failed; "" if none */
} llmux_breaker_shared_stats_t;

/* Validates the options and creates the module; no I/O yet. 0 and *out, or
 * LLMUX_EINVAL with a sentence in err (a bad URL says what is wrong). */
int llmux_breaker_shared_new(uv_loop_t *loop, const llmux_breaker_shared_options_t *opt,
                             llmux_breaker_shared_t **out, char *err, size_t errlen);
/* Connects (both connections) and keeps reconnecting. 0 or LLMUX_EINVAL. */
int llmux_breaker_shared_start(llmux_breaker_shared_t *b);

/* A breaker of this process opened at `since_ms` and rests until
 * `until_ms` (Unix ms): tell the fleet. Sent at once when up, else kept and
 * sent on reconnect (if it still lasts then). 0, or LLMUX_EINVAL (empty
 * names, names over 1024 bytes, until not after since). */
int llmux_breaker_shared_opened(llmux_breaker_shared_t *b, const char *provider,
                                const char *model, int64_t since_ms, int64_t until_ms);
/* A probe of this process closed a breaker at `at_ms` (Unix ms): tell the
 * fleet. Kept like an opening when down; it replaces this process's
 * opening of the route not yet sent. 0 or LLMUX_EINVAL. */
int llmux_breaker_shared_recovered(llmux_breaker_shared_t *b, const char *provider,
                                   const char *model, int64_t at_ms);

/* A barrier: cb(b, 0) runs once every word this module sent before the
 * call was executed by Redis and every message published by anyone before
 * the call reached this module (it publishes a marker and waits for it on
 * its subscription). 0, or LLMUX_ECONNREFUSED when not up (cb not called);
 * cb(b, LLMUX_ECONNRESET) if it goes down first, LLMUX_ECANCELED on close.
 * For tests and orderly hand-overs. */
int llmux_breaker_shared_sync(llmux_breaker_shared_t *b, llmux_breaker_shared_cb cb,
                              void *arg);

/* Closes both connections; once nothing of the module is left on the loop,
 * cb runs (if not NULL) and the module is freed after it. No callback runs
 * after this call. Words not yet sent are dropped. */
void llmux_breaker_shared_close(llmux_breaker_shared_t *b, llmux_breaker_shared_cb cb,
                                void *arg);

void llmux_breaker_shared_stats(const llmux_breaker_shared_t *b,
                                llmux_breaker_shared_stats_t *out);

/* The wall clock this module speaks in: Unix time in milliseconds. */
int64_t llmux_breaker_shared_wall_ms(void);

#endif /* LLMUX_SHARED_BREAKER_SHARED_H */
