/* A rate-limit store (route/ratelimit.h) shared by every gateway process
 * that points at one Redis: the limits hold for the fleet, not per process.
 *
 * Same answers as the memory store. Every call of the vtable means what
 * ratelimit.h says, with the same windows (60 slots: 1 s for the minute,
 * 24 min for the day), the same provider headroom (`apply`: remaining minus
 * what was reserved since, until the reset), the same blocks and the same
 * reservations; only the counts are the fleet's.
 *
 * The hot path never waits for Redis. Each process keeps a mirror of what
 * Redis holds for every key it knows and decides on it, in line, as the
 * memory store does. Each change (reserve, commit, release, apply, block,
 * unblock) is applied to the mirror at once as a pending change and sent to
 * Redis as one EVALSHA of one script (rl_shared.lua), which updates the
 * key's hash atomically, bumps its version, and both replies with and
 * PUBLISHes on `<prefix>rl` the key's whole state. Every process subscribes
 * (a second connection) and takes any state newer than its mirror's, so a
 * change made anywhere reaches every mirror within one publish. A pending
 * change leaves the pending set once a state that includes it arrived (its
 * own reply or its own message, whichever comes first), so it is never
 * counted twice for long: a state from another process that already
 * includes one of ours in flight counts it twice until our reply arrives,
 * which only ever errs on the side of refusing.
 *
 * Redis layout (P is the prefix, default "llmux:"):
 *   P rl:r:<len>:<provider>:<model>  a route's hash; P rl:p:<provider> a
 *                                    provider-wide key's (len = the provider
 *                                    name's length, so no name can forge
 *                                    another's key)
 *     v        version, bumped by every change
 *     0r<k> 0t<k>  requests and tokens counted in minute slot k
 *     1r<k> 1t<k>  the same in day slot k
 *     g        generation of the provider headroom (bumped by apply)
 *     s<d>     "limit remaining reset_at used_since" for dimension d
 *     rb sb    retry-after and spend-limit blocks: until (ms), -1 forever
 *   P rl:epoch   Redis's TIME in microseconds, set by the first script on an
 *                empty Redis: a newer epoch means Redis lost what it had
 *   P rl:inst    sorted set: process id -> when it last ran a script
 *                (Redis TIME, ms); members older than a minute are dropped
 *   channel P rl
 * Slots older than a window are deleted by the script that finds them;
 * every hash expires one day and two slots after its last change (later,
 * up to three days, when a block or a provider reset lasts longer; never
 * while it holds a block forever).
 *
 * Time. Slots must mean the same instants in every process, so the store
 * works on the shared clock `now_ms + clock_offset_ms`: by default the
 * offset makes it Unix time (the wall clock at creation minus the monotonic
 * clock), so processes on several machines agree to within their NTP skew,
 * which moves slot edges by that much (a fraction of a 1 s slot). Redis's
 * own TIME is used only for the epoch and the process set. Tests give
 * every store the same offset and drive now_ms by hand.
 *
 * The bound under concurrency. For one key and one dimension with limit L,
 * let N be the number of processes that ran a script on the prefix in the
 * last minute of Redis's clock (every reply and message says it; a process
 * new to the set publishes the new N at once). A check passes, as in the
 * memory store, when what the mirror counts (Redis's count plus this
 * process's changes in flight) leaves room, and, while connected, when:
 *   - the process's own count in the window (what it reserved, confirmed
 *     or not) stays within its partition L / N: it does not wait for Redis;
 *   - or, beyond its partition, it has nothing of its own in flight on the
 *     key: at most one unconfirmed reservation per key at a time.
 * Otherwise check answers LLMUX_EAGAIN with a retry-after of timeout_ms:
 * exhausted until the confirmation returns (one round trip, typically well
 * under a millisecond; the router tries the next route meanwhile).
 *   - Sequential requests (each decided after the previous one's state was
 *     published) see every earlier count: the limit holds exactly.
 *   - Concurrent requests exceed it by at most one request per process
 *     (N for the fleet): partitions add up to at most L whatever the
 *     timing, and beyond them each process adds one request at a time,
 *     deciding on a state that includes everything Redis executed before
 *     its previous request. That holds as long as Redis runs each
 *     process's reservations in about the order they were made (none is
 *     overtaken by another process's whole round trip), which is what one
 *     Redis serving its clients in turn does. For tokens, "one request" is
 *     one request's tokens.
 *   - Until a process has heard N (its first reply), it has no partition:
 *     one reservation in flight per key. While a process joins and the
 *     others still count N - 1, their partitions add up to more than L by
 *     at most one partition, for one publish's time.
 *   - Provider headroom (apply) has no partition, because the provider
 *     also counts clients outside the fleet: there a process with changes
 *     in flight takes at most its 1/N share of what Redis confirmed.
 * The cost: near its partition's end a process sends one request per
 * round trip per key, and idle processes (seen in the last minute) still
 * shrink the partitions.
 *
 * Redis down or slow. A command not answered within timeout_ms (default
 * 50 ms), a lost connection, or an error reply makes the store "down" until
 * both connections are back (reconnect with exponential backoff and
 * jitter). While down, decisions go on from the mirror plus what this
 * process counts meanwhile (fail-open: no fleet bound then), or, with
 * fail_closed, every check answers LLMUX_RL_EUNAVAILABLE. The first error of
 * an outage is logged once (warn); `errors` counts every failure
 * (llmux_shared_state_errors_total). What was pending when the connection
 * went is counted again on reconnect (it may have been executed: the error
 * is on the side of refusing). On reconnect the store sends what it counted
 * meanwhile as additions to Redis's slots (never overwrites), re-sends its
 * blocks, unblocks and provider headroom, and reads back every key. When
 * Redis came back empty (a new epoch: restarted without persistence), each
 * process adds back everything it counted in the live windows, so the fleet
 * totals are rebuilt. Only then is the store up again.
 *
 * Memory. A key takes about 8 KiB (its mirror, pending and own-count
 * windows) and is created as in the memory store, on set_limits, apply or
 * block, or when another process publishes a state for a key this one does
 * not know yet (if there is room). Keys are never deleted.
 *
 * Everything runs on the loop thread; nothing is thread-safe. */
#ifndef LLMUX_SHARED_RL_SHARED_H
#define LLMUX_SHARED_RL_SHARED_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "route/ratelimit.h"

/* clock_offset_ms value meaning "Unix time" (the default). */
#define LLMUX_RL_SHARED_WALL_CLOCK INT64_MIN

typedef struct llmux_rl_shared_options_s {
  const char *url;          /* redis://HOST[:PORT][/DB] */
  const char *password;     /* NULL: no AUTH (the caller reads it from the
                               variable shared_state_password_env names) */
  const char *prefix;       /* key and channel prefix; NULL: "llmux:" */
  size_t max_keys;          /* keys of the mirror; 0: 16384 */
  int fail_closed;          /* 1: checks answer LLMUX_RL_EUNAVAILABLE while down */
  unsigned timeout_ms;      /* per command; 0: 50 */
  unsigned connect_timeout_ms; /* 0: 1000 */
  unsigned backoff_min_ms;  /* 0: 100 */
  unsigned backoff_max_ms;  /* 0: 5000 */
  int64_t clock_offset_ms;  /* 0 with has_clock_offset: now_ms is shared */
  int has_clock_offset;     /* 0: LLMUX_RL_SHARED_WALL_CLOCK */
  int refresh;              /* 1: see Refreshing below (the gateway's choice) */
} llmux_rl_shared_options_t;

/* The store's health, for metrics and tests. */
typedef struct llmux_rl_shared_stats_s {
  int up;                 /* both connections ready and the mirror rebuilt */
  uint64_t errors;        /* llmux_shared_state_errors_total */
  uint64_t outages;       /* times it went down after being up */
  uint64_t pending;       /* changes sent and not yet seen back */
  uint64_t instances;     /* N: processes seen on the prefix; 0 unknown */
  uint64_t keys;          /* keys in the mirror */
  const char *last_error; /* why the last attempt failed; "" if none */
} llmux_rl_shared_stats_t;

typedef void (*llmux_rl_shared_cb)(llmux_rl_store_t *s, int status, void *arg);

/* Validates the options and creates the store; no I/O yet. 0 and *out, or
 * LLMUX_EINVAL with a sentence in err (a bad URL says what is wrong). Until
 * llmux_rl_shared_start and the first connection, it answers from its
 * (empty) mirror, or unavailable with fail_closed. */
int llmux_rl_shared_new(uv_loop_t *loop, const llmux_rl_shared_options_t *opt,
                        llmux_rl_store_t **out, char *err, size_t errlen);
/* Connects (both connections) and keeps reconnecting. 0 or LLMUX_EINVAL. */
int llmux_rl_shared_start(llmux_rl_store_t *s);
/* Closes the connections; once nothing of the store is left on the loop, cb
 * runs (if not NULL) and the store is freed after it. Reservations must
 * have ended. llmux_rl_store_destroy does the same with no cb: the loop must
 * then run again for the memory to be freed. */
void llmux_rl_shared_close(llmux_rl_store_t *s, llmux_rl_shared_cb cb, void *arg);

void llmux_rl_shared_stats(llmux_rl_store_t *s, llmux_rl_shared_stats_t *out);

/* A barrier: cb(s, 0) runs once every change this store made before the
 * call is confirmed by Redis and every state published by anyone before
 * the call has reached this store's mirror (it publishes a marker and waits
 * for it on its subscription). 0, or LLMUX_ECONNREFUSED when not up (cb not
 * called); cb(s, LLMUX_ECONNRESET) if the store goes down first. For tests
 * and orderly hand-overs; the hot path never needs it. */
int llmux_rl_shared_sync(llmux_rl_store_t *s, llmux_rl_shared_cb cb, void *arg);

/* Settling. A process that answers its client before Redis has taken the
 * request's reservation lets the client's next request, sent to another
 * process, be decided on a mirror that lacks it: the race the "sequential
 * requests" promise above rules out. So the gateway takes a mark after
 * reserving and, before the answer's last byte goes out, waits until the
 * command connection has answered every command queued up to the mark
 * (Redis publishes a change before it replies to it, so by then every
 * other process's subscription has it, ahead of anything the client sends
 * next). With a provider slower than one Redis round trip, which is every
 * real one, the wait is nothing. While the store is down there is nothing
 * to wait for. (A command retried after NOSCRIPT is answered out of order:
 * a waiter may then go one command early.) */
typedef struct llmux_rl_settle_s llmux_rl_settle_t;
typedef void (*llmux_rl_settle_cb)(llmux_rl_settle_t *w);
struct llmux_rl_settle_s {
  void *data;            /* public */
  /* private */
  llmux_rl_settle_t *next, *prev;
  llmux_rl_store_t *store; /* NULL when not waiting */
  uint64_t mark;
  llmux_rl_settle_cb cb;
  int refreshing;        /* waiting for a refresh rather than a mark */
};

/* Refreshing. Settling makes a process's change reach Redis before its
 * answer does; but the other process still reads its subscription and its
 * client's socket in whatever order the kernel hands them over, so it may
 * decide a client's next request before it has read the state published
 * just before. Within its partition that cannot matter (partitions add up
 * to the limit). Beyond it, with `refresh` set, check answers
 * LLMUX_RL_ESTALE instead of admitting: the caller refreshes the mirror
 * (llmux_rl_shared_refresh: a marker published on the channel and read
 * back, so every state published before the request arrived is in) and
 * checks again with llmux_rl_shared_assume_fresh(s, 1) around the call.
 * A mirror fresh for a request stays so: it only ever moves forward. The
 * cost is one Redis round trip for a request beyond its process's
 * partition, none within it. */

/* Refreshes the mirror; cb(w) once done (or the store went down: then
 * the mirror is all there is). 0, or LLMUX_ECONNREFUSED when not up (cb
 * not called: decide now). Cancel with llmux_rl_shared_settle_cancel. */
int llmux_rl_shared_refresh(llmux_rl_store_t *s, llmux_rl_settle_t *w, llmux_rl_settle_cb cb);
/* While on, check takes the mirror as fresh (never answers ESTALE). */
void llmux_rl_shared_assume_fresh(llmux_rl_store_t *s, int on);

/* The mark of every change made so far (of the latest script sent: a
 * request whose reservation sent nothing, on keys without limits, finds
 * it settled at once unless a change of its own is still out). */
uint64_t llmux_rl_shared_mark(llmux_rl_store_t *s);
/* 1 when the changes up to `mark` are answered, or the store is down. */
int llmux_rl_shared_settled(llmux_rl_store_t *s, uint64_t mark);
/* Calls cb(w) once they are (or the store goes down or closes); never
 * inside this call. w is the caller's until then, or until cancelled. */
void llmux_rl_shared_settle(llmux_rl_store_t *s, uint64_t mark, llmux_rl_settle_t *w,
                            llmux_rl_settle_cb cb);
/* A waiter that has not run yet never will; a no-op otherwise. */
void llmux_rl_shared_settle_cancel(llmux_rl_settle_t *w);

#endif /* LLMUX_SHARED_RL_SHARED_H */
