/* Asynchronous name resolution for the upstream client, cached with its TTL.
 *
 * One llmux_dns_t per loop. A lookup answers, in this order, from:
 *   1. a numeric address ("192.0.2.1", "2001:db8::1", "[2001:db8::1]"): no I/O;
 *   2. the hosts file (read once at init; `localhost` is always loopback):
 *      cached for the life of the resolver;
 *   3. the cache, filled by a stub resolver that sends A and AAAA queries over
 *      UDP to the nameservers of resolv.conf (random ids, a fresh ephemeral
 *      port per lookup, answers matched by source, id and question, CNAME
 *      chains followed). Entries live for the smallest TTL of the answer
 *      records, clamped to [1 s, 1 h]; NXDOMAIN and "no address" answers are
 *      cached 5 s. When no nameserver is configured, the UDP path fails, or
 *      every attempt times out, uv_getaddrinfo answers instead (TTL 30 s).
 *      Short names (fewer dots than resolv.conf's ndots, with a search list)
 *      also go to getaddrinfo, which applies the search list.
 * Concurrent lookups of one name share one query. The cache is bounded:
 * the least recently used name goes first. An expired entry is refreshed on
 * its next use (that caller waits for the fresh answer).
 *
 * The callback is never called from inside llmux_dns_resolve(), even for
 * numeric addresses and cache hits: it runs on a later loop iteration. */
#ifndef LLMUX_DNS_H
#define LLMUX_DNS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "llmux/common.h"

#define LLMUX_DNS_MAX_ADDRS 16 /* addresses kept per name */
#define LLMUX_DNS_MAX_NS 3     /* nameservers used, as in resolv.conf */

typedef struct llmux_dns_s llmux_dns_t;
typedef struct llmux_dns_req_s llmux_dns_req_t;
typedef struct llmux_dns_options_s llmux_dns_options_t;

/* status is 0 with naddrs >= 1, or a negative LLMUX_E*: LLMUX_EDNS when the
 * name could not be resolved (req->reason says why: "NXDOMAIN", "timed
 * out", ...), LLMUX_ECANCELED when the resolver was closed, LLMUX_ENOMEM.
 * `addrs` holds sockaddr_in / sockaddr_in6 with the requested port set, IPv4
 * addresses first, each family in the order of the answer (hosts file:
 * file order; getaddrinfo: its order). The array belongs to the resolver and
 * is valid only during the callback: copy what you keep. The req is
 * finished when the callback runs and may be freed or reused inside it. */
typedef void (*llmux_dns_cb)(llmux_dns_req_t *req, int status,
                             const struct sockaddr_storage *addrs, size_t naddrs);
typedef void (*llmux_dns_close_cb)(llmux_dns_t *dns);

struct llmux_dns_options_s {
  /* "IP", "IP:PORT", "[IPv6]:PORT", or up to 3 of them separated by commas.
   * Replaces the nameservers of resolv.conf. NULL: use resolv.conf. */
  const char *nameserver;
  const char *resolv_conf;   /* NULL: "/etc/resolv.conf" */
  const char *hosts_file;    /* NULL: "/etc/hosts"; "": none */
  unsigned timeout_ms;       /* per attempt; 0: resolv.conf `timeout:` or 2000 */
  unsigned attempts;         /* rounds over the nameservers; 0: `attempts:` or 2 */
  unsigned max_entries;      /* cached names; 0: 1024 */
  int no_system_fallback;    /* 1: never use getaddrinfo (tests: no real DNS) */
  /* Clock for cache expiry, in ms. NULL: uv_now(loop). Tests inject one. */
  uint64_t (*now_ms)(void *clock_data);
  void *clock_data;
};

/* Private types, defined in dns.c. */
typedef struct llmux__dns_link_s {
  struct llmux__dns_link_s *next;
  struct llmux__dns_link_s *prev;
} llmux__dns_link_t;
struct llmux__dns_entry_s;

/* A caller-owned lookup: embed it in the object that waits for the answer
 * (e.g. the upstream request). It must stay valid until its callback runs
 * or llmux_dns_cancel() returns. */
struct llmux_dns_req_s {
  /* public */
  void *data;
  /* read-only */
  const char *reason;        /* static text with an error status, else NULL */
  /* private */
  llmux_dns_t *dns;
  llmux_dns_cb cb;
  llmux__dns_link_t link;    /* on an entry's waiters or the ready queue */
  struct llmux__dns_entry_s *entry; /* NULL for a numeric address */
  uint16_t port;
  uint8_t active;
  uint8_t numeric_family;    /* AF_INET / AF_INET6 when numeric */
  uint8_t numeric[16];
  void *reserved[4];
};

/* Caller-owned, like a libuv handle: free it only in the close callback. */
struct llmux_dns_s {
  /* public */
  void *data;
  /* read-only */
  uv_loop_t *loop;
  /* private */
  struct sockaddr_storage ns[LLMUX_DNS_MAX_NS];
  unsigned nns;
  unsigned timeout_ms;
  unsigned attempts;
  unsigned max_entries;
  unsigned ndots;
  int has_search;
  int no_system_fallback;
  uint64_t (*now_ms)(void *clock_data);
  void *clock_data;
  struct llmux__dns_entry_s **buckets; /* name -> entry, chained */
  size_t nbuckets;
  size_t nentries;           /* cached (evictable) names */
  llmux__dns_link_t lru;     /* cached names, least recently used first */
  llmux__dns_link_t hosts;   /* names from the hosts file, never evicted */
  llmux__dns_link_t ready;   /* reqs answered without I/O, delivered by idle */
  llmux__dns_link_t queries; /* lookups in flight (or closing) */
  uv_idle_t idle;
  uint8_t rand_pool[64];
  size_t rand_left;
  int closing;
  int idle_closed;
  llmux_dns_close_cb close_cb;
  void *reserved[4];
};

/* Reads the hosts file and resolv.conf (blocking file reads: call at start-up,
 * not while serving). opts may be NULL. 0, or LLMUX_EINVAL for a bad
 * `nameserver` option, or a libuv failure as LLMUX_EIO. A missing hosts file
 * or resolv.conf is not an error. */
int llmux_dns_init(uv_loop_t *loop, llmux_dns_t *dns, const llmux_dns_options_t *opts);

/* Completes every pending req with LLMUX_ECANCELED (synchronously, before
 * returning), stops every lookup and closes every handle; cb runs on a later
 * iteration once nothing is left on the loop, and may free dns. */
void llmux_dns_close(llmux_dns_t *dns, llmux_dns_close_cb cb);

/* Starts resolving `host` (copied) for `port`; cb runs later with the
 * answer and req->data = data. req must not be pending already (it needs no
 * initialisation). Returns 0, or without calling cb: LLMUX_EINVAL (NULL,
 * empty or malformed host: hostname characters only), LLMUX_ECANCELED
 * (closing), LLMUX_ENOMEM. Resolution failures always come through cb. */
int llmux_dns_resolve(llmux_dns_t *dns, llmux_dns_req_t *req, const char *host,
                      uint16_t port, llmux_dns_cb cb, void *data);

/* Forgets a pending req: its callback will not run, and it may be freed as
 * soon as this returns. The lookup itself continues for the other waiters
 * and the cache. Safe from any callback. 0, or LLMUX_EINVAL if the req was
 * not pending (already answered or cancelled): also harmless. Only for a req
 * that was passed to llmux_dns_resolve() at least once. */
int llmux_dns_cancel(llmux_dns_req_t *req);

#endif /* LLMUX_DNS_H */
