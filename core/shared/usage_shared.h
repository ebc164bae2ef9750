/* Usage counters shared by every gateway process that points at one Redis:
 * requests, tokens and cost per (tenant, model, UTC day), summed over the
 * fleet, so daily and monthly quotas and budgets hold for the fleet.
 *
 * This module knows rows, not tenants: the caller (gateway/fleet_usage.c)
 * connects it to its usage store. Days are numbered as in tenant/usage.h
 * (days since 1970-01-01, UTC).
 *
 * The hot path never waits for Redis. The caller counts a request in its
 * own store at once and hands the same delta to llmux_usage_shared_add,
 * which queues it. At most one batch is in flight per process: the first
 * add goes at once, and adds made while a batch is in flight wait for its
 * reply and go together in the next (batching without a timer; at most
 * 128 rows a batch, the rest in the one after). A batch is one EVALSHA of
 * usage_shared.lua that HINCRBYs every row's fields, and both replies with
 * and PUBLISHes on `<prefix>usage` the rows' new absolute values. Every
 * process subscribes, and whenever a row's values change (its own batch,
 * another process's, a load) it calls on_row with Redis's absolute values
 * plus what this process added that Redis has not confirmed yet, so its
 * own adds are never missing from what it reports, nor counted twice (a
 * batch leaves the unconfirmed set with the first state that includes it:
 * its reply or its own message). The caller sets its row to those values.
 *
 * How soon another process sees a row: one batch round trip plus one
 * publish (typically about a millisecond); while this process has a batch
 * in flight, its next adds wait one more round trip. So a quota crossed
 * through one process is seen by the others that much later: under
 * concurrency the fleet can exceed a daily quota by what was admitted
 * meanwhile, as a single process exceeds it by what is in flight.
 *
 * Redis layout (P is the prefix, default "llmux:"):
 *   P usage:<YYYY-MM-DD>:<len>:<tenant>:<model>   one row's hash (len is
 *       the tenant name's length in bytes, so no tenant name containing ':'
 *       can forge another's key; model ids may hold ':' and '/'):
 *     requests input_tokens output_tokens cost_micro_usd   the totals
 *       (cost in integer micro-USD: exact sums; this process rounds its
 *       cost deltas to micro-USD and carries the remainder to the next)
 *     v        version, bumped by every change
 *     e        the epoch the row was created in
 *     base_*   what restores and seeds put in (see below)
 *   P usage:<YYYY-MM-DD>     set of that day's row keys (for loading)
 *   P usage:meta             hash: epoch (Redis's TIME when the first
 *                            script ran on an empty Redis), seeded
 *   P usage:seq:<id>         the last batch sequence applied from process
 *                            <id> (a random id per process start); 7 days
 *   P usage:writer           the writer lease: a process id, PX lease_ms
 *   channel P usage
 * Rows and day sets expire 62 days after their last change.
 *
 * Exactly once. A batch carries its process id and sequence number; the
 * script skips a batch whose sequence that process already had applied.
 * Since a process sends a batch only after the previous one's reply, a
 * re-sent batch is applied once whether or not the first attempt ran.
 *
 * Joining (at start and at every reconnect): both connections up, the
 * store reads the epoch, then every row of the current month (every day
 * set, SSCAN in pages, each row's values) and delivers them through
 * on_row, so a process started late or coming back sees the fleet's
 * totals. Then it re-sends the batch that was in flight when the
 * connection went (if any) and sends what it counted meanwhile, as
 * additions: "merge what was counted meanwhile". Only then is it up.
 *
 * Redis down or slow. A command not answered within timeout_ms (default
 * 50 ms) or a lost connection makes the store down until both connections
 * are back (reconnect with exponential backoff and jitter). Meanwhile adds
 * queue here and the caller's store keeps counting: decisions go on from
 * local state (fail-open; the first error of an outage is logged once,
 * `errors` counts every failure for llmux_shared_state_errors_total). What
 * was queued is sent on reconnect, exactly once as above.
 *
 * Redis lost its data (restarted without persistence, flushed): a new
 * epoch. Each process that knew the old epoch proposes, for every row it
 * knew, the last values Redis had confirmed to it; each field keeps the
 * largest proposal as its base (counters only grow, so the largest is the
 * most recent), and what was added in the new epoch stays on top. A batch
 * this process had seen applied (its own message arrived, its reply did
 * not) is not sent again, since its proposal includes it. A batch in flight
 * at the moment of the loss and published to others but never seen by this
 * process is counted twice; nothing is ever lost.
 *
 * Seeding from SQLite. Rows this process loaded from its usage_db (given
 * with llmux_usage_shared_seed before start) go to Redis once per epoch,
 * from the elected writer only: the first writer of an epoch proposes them
 * like a restore (base = max), then marks the epoch seeded; later writers
 * send nothing, since their database then holds values Redis already has.
 * So a fleet that ran on SQLite alone, or a Redis that came back empty,
 * starts from the database's totals. The rule assumes one usage_db for the
 * fleet (or copies of one history): a writer candidate whose database is
 * empty may win the first lease, and then nothing is seeded. Until the
 * seed, a row that Redis lacks but a process's database holds reports only
 * the new epoch's counts through on_row.
 *
 * The writer. Only one process writes usage_db: the holder of the lease
 * P usage:writer (SET NX PX lease_ms, default 15 s), which renews it every
 * lease_ms / 3 while it is up. Candidates (options.candidate: the process
 * has a usage_db) try to take it at the same pace. on_writer(arg, 1) when
 * this process becomes the writer; on_writer(arg, 0) when it loses the
 * lease or the store goes down (Redis down: no one writes until a process
 * holds the lease again; a new holder writes every row it knows, which are
 * the fleet's). A clean close sends what is queued, then releases the
 * lease, so another candidate takes over at its next try (without
 * on_writer: the closing process still writes its last snapshot).
 *
 * Memory. A row costs its key and about 150 bytes; rows of days before
 * the previous month are dropped once a day when nothing of theirs is
 * pending.
 *
 * Everything runs on the loop thread; nothing is thread-safe. */
#ifndef LLMUX_SHARED_USAGE_SHARED_H
#define LLMUX_SHARED_USAGE_SHARED_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "llmux/common.h"

typedef struct llmux_usage_shared_s llmux_usage_shared_t;

typedef struct llmux_usage_shared_counts_s {
  uint64_t requests;
  uint64_t input_tokens;
  uint64_t output_tokens;
  double cost_usd;
} llmux_usage_shared_counts_t;

/* A row's values changed: Redis's absolute values plus this process's
 * unconfirmed adds. Borrowed strings, valid during the call. */
typedef void (*llmux_usage_shared_row_cb)(void *arg, const char *tenant, const char *model,
                                          int day, const llmux_usage_shared_counts_t *c);
/* This process became (1) or stopped being (0) the writer. */
typedef void (*llmux_usage_shared_writer_cb)(void *arg, int writer);
typedef void (*llmux_usage_shared_cb)(llmux_usage_shared_t *s, int status, void *arg);

typedef struct llmux_usage_shared_options_s {
  const char *url;          /* redis://HOST[:PORT][/DB] */
  const char *password;     /* NULL: no AUTH */
  const char *prefix;       /* key and channel prefix; NULL: "llmux:" */
  int candidate;            /* may be elected writer: has a usage_db */
  unsigned timeout_ms;      /* per command; 0: 50 */
  unsigned connect_timeout_ms; /* 0: 1000 */
  unsigned backoff_min_ms;  /* 0: 100 */
  unsigned backoff_max_ms;  /* 0: 5000 */
  unsigned lease_ms;        /* writer lease; 0: 15000; renewed every third */
  llmux_usage_shared_row_cb on_row;       /* required */
  llmux_usage_shared_writer_cb on_writer; /* may be NULL */
  void *arg;                /* for both */
} llmux_usage_shared_options_t;

typedef struct llmux_usage_shared_stats_s {
  int up;                 /* both connections ready and joined */
  int writer;             /* holds the writer lease */
  uint64_t errors;        /* llmux_shared_state_errors_total */
  uint64_t outages;       /* times it went down after being up */
  uint64_t batches;       /* batch scripts sent (a re-sent one again) */
  uint64_t resent;        /* batches sent again after a failure */
  uint64_t duplicates;    /* re-sent batches Redis had already applied */
  uint64_t pending_rows;  /* rows with adds Redis has not confirmed */
  uint64_t rows;          /* rows known */
  const char *last_error; /* why the last attempt failed; "" if none */
} llmux_usage_shared_stats_t;

/* Validates the options and creates the store; no I/O yet. 0 and *out, or
 * LLMUX_EINVAL with a sentence in err (a bad URL says what is wrong). */
int llmux_usage_shared_new(uv_loop_t *loop, const llmux_usage_shared_options_t *opt,
                           llmux_usage_shared_t **out, char *err, size_t errlen);

/* A row of the usage database (this month's), for the seed (see above);
 * before start. Ignored unless the store is a candidate. */
void llmux_usage_shared_seed(llmux_usage_shared_t *s, const char *tenant, const char *model,
                             int day, const llmux_usage_shared_counts_t *c);

/* Connects (both connections) and keeps reconnecting. 0 or LLMUX_EINVAL. */
int llmux_usage_shared_start(llmux_usage_shared_t *s);

/* Queues one delta (see above): a hash lookup and additions; allocates
 * only for a row it has not seen. Never calls back inside the call. */
void llmux_usage_shared_add(llmux_usage_shared_t *s, const char *tenant, const char *model,
                            int day, const llmux_usage_shared_counts_t *d);

int llmux_usage_shared_is_writer(const llmux_usage_shared_t *s);

void llmux_usage_shared_stats(const llmux_usage_shared_t *s, llmux_usage_shared_stats_t *out);

/* A barrier: once every add made before the call is confirmed by Redis and
 * every state published by anyone before then has reached this store,
 * cb(s, 0). 0, or LLMUX_ECONNREFUSED when not up (cb not called);
 * cb(s, LLMUX_ECONNRESET) if the store goes down first, LLMUX_ECANCELED at
 * close. For tests and orderly hand-overs; the hot path never needs it. */
int llmux_usage_shared_sync(llmux_usage_shared_t *s, llmux_usage_shared_cb cb, void *arg);

/* Sends what is queued (while up; each step bounded by timeout_ms), gives
 * the lease back if held, closes the connections; once nothing of the
 * store is left on the loop, cb runs (if not NULL) and the store is freed
 * after it. on_row may still run until then (the last batch's reply);
 * on_writer does not. */
void llmux_usage_shared_close(llmux_usage_shared_t *s, llmux_usage_shared_cb cb, void *arg);

/* For tests: the reply of the next batch is dropped as if the connection
 * had broken after Redis ran the script (the connection is reset). */
void llmux__usage_shared_lose_next_reply(llmux_usage_shared_t *s);

#endif /* LLMUX_SHARED_USAGE_SHARED_H */
