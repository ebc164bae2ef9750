/* Stored responses of POST /v1/responses (issue 15): what previous_response_id
 * replays and GET/DELETE /v1/responses/{id} read, per tenant.
 *
 * A record is the format's own JSON (inbound_responses.c: the response
 * object and the input items it answered); the store keeps it as bytes,
 * under (tenant, id), for `ttl_ms` after it was put.
 *
 * Memory. Recent records live in a hash table with an LRU list, bounded by
 * `max_memory` bytes (records and keys counted); beyond it the least
 * recently used go. The loop reads and writes this table only, with no lock
 * and no system call.
 *
 * SQLite (`db_path` not NULL). Every put and delete is also queued to a
 * thread that owns the database (as tenant/usage.c does): the loop never
 * waits for a disk. A lookup the table misses is queued to that thread too,
 * behind the writes queued before it (so it sees them), and its answer comes
 * back on the loop through a uv_async. A record read from the database goes
 * back into the table. Expired rows are deleted by the thread once a minute.
 * Without a database the table is all there is: a record evicted for room,
 * or kept past a restart, is gone.
 *
 * A remote (llmux_responses_set_remote: Redis, for a fleet, in
 * gateway/fleet_responses.c) stands in front of the database: a put goes
 * to it (and memory), not to the database; a lookup memory misses asks it
 * first, then the database (what was written there while the remote was
 * away), then answers "not found". A put the remote cannot take at once
 * goes to the database as without a remote. The table stays in front as a
 * cache of this process's records and those it read.
 *
 * Times are wall-clock milliseconds (records outlive the process). */
#ifndef LLMUX_GATEWAY_RESPONSES_STORE_H
#define LLMUX_GATEWAY_RESPONSES_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "llmux/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct llmux_responses_store_s llmux_responses_store_t;

/* A lookup's answer: rc 0 with the record (borrowed for the call),
 * LLMUX_ENOTFOUND, LLMUX_EIO (the database failed) or LLMUX_ECANCELED (the
 * store closed first). */
typedef void (*llmux_responses_get_cb)(void *arg, int rc, const char *record, size_t len);

typedef struct llmux_responses_opts_s {
  const char *db_path;  /* NULL: memory only */
  uint64_t ttl_ms;      /* how long a record is kept; 0: 1 day */
  uint64_t max_memory;  /* bytes of records in memory; 0: 64 MiB */
  /* The wall clock in ms (tests drive time by hand); NULL: the real one. */
  int64_t (*now_ms)(void *arg);
  void *now_arg;
} llmux_responses_opts_t;

/* A shared store in front of the database. Every call is on the loop. */
typedef struct llmux_responses_remote_s {
  void *data;
  /* Keeps a copy of the record for ttl_ms. 0: queued (whatever happens to
   * it then is the remote's to count); else it cannot now: the database
   * keeps it instead. */
  int (*put)(void *data, const char *tenant, const char *id, const char *record, size_t len,
             uint64_t ttl_ms);
  /* 0: cb(arg, ...) runs later, exactly once, never inside this call: rc 0
   * with the record (borrowed), LLMUX_ENOTFOUND (none, or another
   * tenant's), or another error (unreachable). Else unreachable now, and cb
   * never runs. */
  int (*get)(void *data, const char *tenant, const char *id, llmux_responses_get_cb cb,
             void *arg);
  void (*del)(void *data, const char *tenant, const char *id);
} llmux_responses_remote_t;

/* Opens a store; with `loop` and a db_path, the database thread starts
 * (without a loop, the database is used on the caller's thread: tests and
 * the command line). Creates the table when missing. 0 and *out, or
 * LLMUX_EIO with a reason in err. */
int llmux_responses_open(uv_loop_t *loop, const llmux_responses_opts_t *o,
                         llmux_responses_store_t **out, char *err, size_t errlen);

/* Keeps a copy of `record` under (tenant, id) (tenant "" when llmux runs
 * open), replacing one there. 0, LLMUX_ETOOLARGE (bigger than max_memory:
 * not kept) or LLMUX_ENOMEM. */
int llmux_responses_put(llmux_responses_store_t *s, const char *tenant, const char *id,
                        const char *record, size_t len);

/* Looks a record up. 0: found, appended to *out at once. LLMUX_ENOTFOUND:
 * none. LLMUX_EAGAIN: not in memory, asked of the database: cb(arg, ...)
 * runs later, from the loop, exactly once (never inside this call). */
int llmux_responses_get(llmux_responses_store_t *s, const char *tenant, const char *id,
                        llmux_buf_t *out, llmux_responses_get_cb cb, void *arg);

/* Forgets a record, in memory and in the database. */
void llmux_responses_delete(llmux_responses_store_t *s, const char *tenant, const char *id);

/* Puts a remote in front of the database (copied), or removes it (NULL):
 * then lookups it still owes are answered as it answers them. Needs a
 * loop. The remote in place, or NULL. */
void llmux_responses_set_remote(llmux_responses_store_t *s, const llmux_responses_remote_t *r);
const llmux_responses_remote_t *llmux_responses_remote(const llmux_responses_store_t *s);

/* Bytes held in memory, and records. */
void llmux_responses_stats(const llmux_responses_store_t *s, size_t *bytes, size_t *count);

/* Writes what is queued and stops the thread (waiting for it: the gateway
 * stops), answers lookups still queued (with the database or the remote)
 * with LLMUX_ECANCELED, and frees
 * everything once the loop handles are closed (at once without a loop). */
void llmux_responses_close(llmux_responses_store_t *s);

#ifdef __cplusplus
}
#endif
#endif /* LLMUX_GATEWAY_RESPONSES_STORE_H */
