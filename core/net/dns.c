/* Name resolution with a TTL cache: numeric addresses, the hosts file, a UDP
 * stub resolver, and uv_getaddrinfo as the fallback. See dns.h. */
#include "net/dns.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/util.h"

#define DNS_PORT 53
#define DNS_DEFAULT_TIMEOUT_MS 2000
#define DNS_DEFAULT_ATTEMPTS 2
#define DNS_DEFAULT_MAX_ENTRIES 1024
#define DNS_TTL_MIN_S 1
#define DNS_TTL_MAX_S 3600
#define DNS_NEGATIVE_TTL_S 5  /* NXDOMAIN, no address records, stale reuse */
#define DNS_SYSTEM_TTL_S 30   /* getaddrinfo gives no TTL */
#define DNS_EDNS_SIZE 1232    /* advertised UDP payload: avoids truncation */
#define DNS_MAX_CNAME_HOPS 8
#define DNS_MAX_RRS 48        /* answer records examined per packet */
#define DNS_NAME_MAX 253      /* dotted, without the trailing dot */

enum { T_A, T_AAAA };
static const uint16_t qtypes[2] = { 1, 28 };
#define DNS_TYPE_CNAME 5
#define DNS_CLASS_IN 1

enum { ENTRY_EMPTY, ENTRY_VALID, ENTRY_NEGATIVE, ENTRY_HOSTS };
enum { ST_PENDING, ST_OK, ST_NODATA, ST_NXDOMAIN, ST_FAIL };
enum { OUT_ADDRS, OUT_NEGATIVE, OUT_FAIL };

typedef struct {
  uint8_t family; /* AF_INET or AF_INET6 */
  uint8_t bytes[16];
} dns_addr_t;

typedef struct llmux__dns_entry_s entry_t;
typedef struct query_s query_t;

/* One name: hosts-file, cached, or being looked up. Freed by eviction (only
 * when no req points at it and no lookup runs) or when the resolver closes. */
struct llmux__dns_entry_s {
  entry_t *hnext;             /* hash chain */
  llmux__dns_link_t lru;      /* on dns->lru, or dns->hosts for ENTRY_HOSTS */
  llmux__dns_link_t waiters;  /* reqs waiting for `query` */
  query_t *query;             /* lookup in flight, or NULL */
  unsigned refs;              /* reqs pointing here, plus delivery pins */
  int state;
  int status;                 /* outcome of the last lookup: 0 or LLMUX_E* */
  const char *reason;
  uint64_t expires_ms;
  unsigned naddrs;
  dns_addr_t addrs[LLMUX_DNS_MAX_ADDRS];
  char name[];                /* lower case, no trailing dot */
};

/* One lookup of one entry, A and AAAA together. It owns a UDP socket (a fresh
 * ephemeral port per lookup) and a retry timer, or a getaddrinfo request; it
 * is freed when all of those are finished, which may be after the entry
 * has been answered (entry == NULL then). */
struct query_s {
  llmux__dns_link_t link;     /* dns->queries */
  llmux_dns_t *dns;
  entry_t *entry;
  uv_udp_t udp;
  uv_timer_t timer;
  unsigned nhandles;          /* initialised and not yet closed */
  int handles_closing;
  uv_getaddrinfo_t gai;
  int gai_active;
  int gai_tried;
  int family;                 /* of the nameservers used */
  unsigned attempt;           /* sends so far, over all rounds */
  uint16_t id[2];
  int st[2];
  const char *fail_reason;
  uint32_t ttl_s;
  unsigned n[2];
  dns_addr_t addrs[2][LLMUX_DNS_MAX_ADDRS];
  char rbuf[2048];
};

/* ---- intrusive lists ---------------------------------------------------- */

static void link_init(llmux__dns_link_t *l) { l->next = l->prev = l; }
static int link_empty(const llmux__dns_link_t *h) { return h->next == h; }

static void link_tail(llmux__dns_link_t *h, llmux__dns_link_t *n) {
  n->prev = h->prev;
  n->next = h;
  h->prev->next = n;
  h->prev = n;
}

static void link_remove(llmux__dns_link_t *n) {
  n->prev->next = n->next;
  n->next->prev = n->prev;
  link_init(n);
}

/* Moves every node of `from` onto the empty head `to`. */
static void link_move(llmux__dns_link_t *from, llmux__dns_link_t *to) {
  link_init(to);
  if (link_empty(from)) return;
  to->next = from->next;
  to->prev = from->prev;
  to->next->prev = to;
  to->prev->next = to;
  link_init(from);
}

#define REQ_OF(l) llmux_container_of(l, llmux_dns_req_t, link)
#define ENTRY_OF(l) llmux_container_of(l, entry_t, lru)
#define QUERY_OF(l) llmux_container_of(l, query_t, link)

/* ---- small helpers ------------------------------------------------------ */

static uint64_t now_ms(llmux_dns_t *dns) {
  return dns->now_ms ? dns->now_ms(dns->clock_data) : uv_now(dns->loop);
}

/* Query ids come from the OS's CSPRNG: a predictable id lets an off-path
 * attacker forge answers. */
static uint16_t rand16(llmux_dns_t *dns) {
  uint16_t v;
  if (dns->rand_left < 2) {
    if (uv_random(NULL, NULL, dns->rand_pool, sizeof(dns->rand_pool), 0, NULL) != 0) {
      uint64_t x = uv_hrtime() ^ (uintptr_t)dns;
      for (size_t i = 0; i < sizeof(dns->rand_pool); i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        dns->rand_pool[i] = (uint8_t)x;
      }
    }
    dns->rand_left = sizeof(dns->rand_pool);
  }
  dns->rand_left -= 2;
  memcpy(&v, dns->rand_pool + dns->rand_left, 2);
  return v;
}

static uint64_t hash_name(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ULL;
  return h;
}

/* Lower-cases `host` into out (DNS_NAME_MAX + 1 bytes), drops one trailing
 * dot, and accepts only hostname characters (underscore allowed). */
static int normalize_name(const char *host, char *out) {
  size_t len = strlen(host), label = 0;
  if (len > 0 && host[len - 1] == '.') len--;
  if (len == 0 || len > DNS_NAME_MAX) return LLMUX_EINVAL;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)host[i];
    if (c == '.') {
      if (label == 0) return LLMUX_EINVAL;
      label = 0;
    } else if (isalnum(c) || c == '-' || c == '_') {
      if (++label > 63) return LLMUX_EINVAL;
    } else {
      return LLMUX_EINVAL;
    }
    out[i] = (char)tolower(c);
  }
  if (label == 0) return LLMUX_EINVAL;
  out[len] = '\0';
  return 0;
}

/* 1 and the address if `s` is a numeric IPv4 or IPv6 address (IPv6 may be
 * bracketed), 0 if not, LLMUX_EINVAL for brackets around anything else. */
static int parse_numeric(const char *s, dns_addr_t *a) {
  char buf[64];
  size_t len = strlen(s);
  if (s[0] == '[') {
    if (len < 3 || s[len - 1] != ']' || len - 2 >= sizeof(buf)) return LLMUX_EINVAL;
    memcpy(buf, s + 1, len - 2);
    buf[len - 2] = '\0';
    a->family = AF_INET6;
    return inet_pton(AF_INET6, buf, a->bytes) == 1 ? 1 : LLMUX_EINVAL;
  }
  if (inet_pton(AF_INET, s, a->bytes) == 1) {
    a->family = AF_INET;
    return 1;
  }
  if (inet_pton(AF_INET6, s, a->bytes) == 1) {
    a->family = AF_INET6;
    return 1;
  }
  return 0;
}

static void addr_to_sockaddr(const dns_addr_t *a, uint16_t port,
                             struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof(*ss));
  if (a->family == AF_INET) {
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    memcpy(&sin->sin_addr, a->bytes, 4);
  } else {
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    memcpy(&sin6->sin6_addr, a->bytes, 16);
  }
}

static int sockaddr_equal(const struct sockaddr *a, const struct sockaddr_storage *b) {
  if (a->sa_family != b->ss_family) return 0;
  if (a->sa_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_port == y->sin_port &&
           x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  if (a->sa_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
  }
  return 0;
}

/* ---- the cache ---------------------------------------------------------- */

static entry_t *entry_find(llmux_dns_t *dns, const char *name) {
  entry_t *e = dns->buckets[hash_name(name) & (dns->nbuckets - 1)];
  for (; e != NULL; e = e->hnext)
    if (strcmp(e->name, name) == 0) return e;
  return NULL;
}

static void entry_free(llmux_dns_t *dns, entry_t *e) {
  entry_t **pp = &dns->buckets[hash_name(e->name) & (dns->nbuckets - 1)];
  while (*pp != e) pp = &(*pp)->hnext;
  *pp = e->hnext;
  link_remove(&e->lru);
  if (e->state != ENTRY_HOSTS) dns->nentries--;
  free(e);
}

/* Drops the least recently used name that nobody waits for. */
static int evict_one(llmux_dns_t *dns) {
  llmux__dns_link_t *l;
  for (l = dns->lru.next; l != &dns->lru; l = l->next) {
    entry_t *e = ENTRY_OF(l);
    if (e->refs == 0 && e->query == NULL) {
      llmux_debug("dns: evicting %s", e->name);
      entry_free(dns, e);
      return 1;
    }
  }
  return 0;
}

static entry_t *entry_new(llmux_dns_t *dns, const char *name, int hosts) {
  size_t len = strlen(name);
  entry_t *e;
  size_t b;
  if (!hosts)
    while (dns->nentries >= dns->max_entries && evict_one(dns)) {}
  e = calloc(1, sizeof(*e) + len + 1);
  if (e == NULL) return NULL;
  memcpy(e->name, name, len + 1);
  link_init(&e->waiters);
  e->state = hosts ? ENTRY_HOSTS : ENTRY_EMPTY;
  b = hash_name(name) & (dns->nbuckets - 1);
  e->hnext = dns->buckets[b];
  dns->buckets[b] = e;
  link_tail(hosts ? &dns->hosts : &dns->lru, &e->lru);
  if (!hosts) dns->nentries++;
  return e;
}

static void entry_touch(llmux_dns_t *dns, entry_t *e) {
  if (e->state == ENTRY_HOSTS) return;
  link_remove(&e->lru);
  link_tail(&dns->lru, &e->lru);
}

static int entry_fresh(llmux_dns_t *dns, const entry_t *e) {
  if (e->state == ENTRY_HOSTS) return 1;
  if (e->state == ENTRY_EMPTY) return 0;
  return now_ms(dns) < e->expires_ms;
}

/* ---- delivery ----------------------------------------------------------- */

/* Answers one req that has already been unlinked and marked inactive. */
static void req_deliver(llmux_dns_req_t *req) {
  struct sockaddr_storage addrs[LLMUX_DNS_MAX_ADDRS];
  size_t n = 0;
  int status = 0;
  entry_t *e = req->entry;
  dns_addr_t num;

  req->entry = NULL;
  req->reason = NULL;
  if (req->dns->closing) {
    status = LLMUX_ECANCELED;
    req->reason = "resolver closed";
  } else if (e == NULL) {
    num.family = req->numeric_family;
    memcpy(num.bytes, req->numeric, 16);
    addr_to_sockaddr(&num, req->port, &addrs[n++]);
  } else if (e->state == ENTRY_VALID || e->state == ENTRY_HOSTS) {
    /* IPv4 first: it works on hosts without IPv6 connectivity. */
    for (unsigned i = 0; i < e->naddrs; i++)
      if (e->addrs[i].family == AF_INET) addr_to_sockaddr(&e->addrs[i], req->port, &addrs[n++]);
    for (unsigned i = 0; i < e->naddrs; i++)
      if (e->addrs[i].family == AF_INET6) addr_to_sockaddr(&e->addrs[i], req->port, &addrs[n++]);
  } else {
    status = e->status ? e->status : LLMUX_EDNS;
    req->reason = e->reason ? e->reason : "name resolution failed";
  }
  if (e != NULL) e->refs--;
  if (status == 0 && n == 0) {
    status = LLMUX_EDNS;
    req->reason = "no address records";
  }
  req->cb(req, status, n ? addrs : NULL, n);
}

/* Answers every waiter of e. Callbacks may resolve, cancel or close: the pin
 * keeps e alive (no eviction) until the loop is done with it. */
static void entry_deliver_waiters(entry_t *e) {
  e->refs++;
  while (!link_empty(&e->waiters)) {
    llmux_dns_req_t *req = REQ_OF(e->waiters.next);
    link_remove(&req->link);
    req->active = 0;
    req_deliver(req);
  }
  e->refs--;
}

static void idle_cb(uv_idle_t *h) {
  llmux_dns_t *dns = llmux_container_of(h, llmux_dns_t, idle);
  llmux__dns_link_t batch;
  uv_idle_stop(h);
  /* Only the reqs queued so far: a callback that resolves again is answered
   * on the next iteration, not in an endless loop here. */
  link_move(&dns->ready, &batch);
  while (!link_empty(&batch)) {
    llmux_dns_req_t *req = REQ_OF(batch.next);
    link_remove(&req->link);
    req->active = 0;
    req_deliver(req);
  }
}

static void ready_push(llmux_dns_t *dns, llmux_dns_req_t *req) {
  link_tail(&dns->ready, &req->link);
  if (!uv_is_active((uv_handle_t *)&dns->idle)) uv_idle_start(&dns->idle, idle_cb);
}

/* ---- DNS messages (RFC 1035) -------------------------------------------- */

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* A recursive query for name/qtype with an EDNS0 OPT record. buf holds at
 * least 512 bytes; the name is at most 253 characters. Returns the length. */
static size_t build_query(uint8_t *buf, uint16_t id, const char *name, uint16_t qtype) {
  size_t off = 12;
  const char *s = name;
  memset(buf, 0, 12);
  put16(buf, id);
  put16(buf + 2, 0x0100); /* RD */
  put16(buf + 4, 1);      /* QDCOUNT */
  put16(buf + 10, 1);     /* ARCOUNT: OPT */
  while (*s) {
    const char *dot = strchr(s, '.');
    size_t n = dot ? (size_t)(dot - s) : strlen(s);
    buf[off++] = (uint8_t)n;
    memcpy(buf + off, s, n);
    off += n;
    s += n + (dot ? 1 : 0);
  }
  buf[off++] = 0;
  put16(buf + off, qtype);
  put16(buf + off + 2, DNS_CLASS_IN);
  off += 4;
  buf[off++] = 0;          /* OPT: root name */
  put16(buf + off, 41);    /* TYPE OPT */
  put16(buf + off + 2, DNS_EDNS_SIZE);
  memset(buf + off + 4, 0, 6); /* extended rcode, version, flags, rdlen */
  return off + 10;
}

/* Reads the (possibly compressed) name at *off into out as lower-case dotted
 * text without the trailing dot, and moves *off past it. Pointer loops,
 * overlong names and labels containing '.' or NUL are rejected. */
static int name_read(const uint8_t *pkt, size_t len, size_t *off, char *out) {
  size_t pos = *off, n = 0;
  unsigned jumps = 0;
  int jumped = 0;
  for (;;) {
    uint8_t c;
    if (pos >= len) return -1;
    c = pkt[pos];
    if (c == 0) {
      if (!jumped) *off = pos + 1;
      break;
    }
    if ((c & 0xC0) == 0xC0) {
      if (pos + 1 >= len || ++jumps > 32) return -1;
      if (!jumped) *off = pos + 2;
      jumped = 1;
      pos = (size_t)(c & 0x3F) << 8 | pkt[pos + 1];
      continue;
    }
    if ((c & 0xC0) != 0 || pos + 1 + c > len) return -1;
    if (n + (n ? 1 : 0) + c > DNS_NAME_MAX) return -1;
    if (n) out[n++] = '.';
    for (size_t i = 0; i < c; i++) {
      uint8_t b = pkt[pos + 1 + i];
      if (b == '.' || b == 0) return -1;
      out[n++] = (char)tolower(b);
    }
    pos += 1 + (size_t)c;
  }
  out[n] = '\0';
  return 0;
}

typedef struct {
  size_t name_off;
  uint16_t type, cls;
  uint32_t ttl;
  size_t rd_off;
  uint16_t rdlen;
} rr_t;

/* Parses up to DNS_MAX_RRS answer records. -1 on malformed data, with *nrr
 * set to the records read before it (usable when the answer is truncated). */
static int rrs_parse(const uint8_t *pkt, size_t len, size_t off, unsigned count,
                     rr_t *rrs, unsigned *nrr) {
  char tmp[DNS_NAME_MAX + 1];
  *nrr = 0;
  for (unsigned i = 0; i < count && *nrr < DNS_MAX_RRS; i++) {
    rr_t *rr = &rrs[*nrr];
    rr->name_off = off;
    if (name_read(pkt, len, &off, tmp) != 0 || off + 10 > len) return -1;
    rr->type = get16(pkt + off);
    rr->cls = get16(pkt + off + 2);
    rr->ttl = get32(pkt + off + 4);
    if (rr->ttl > 0x7FFFFFFFu) rr->ttl = 0; /* RFC 2181 8 */
    rr->rdlen = get16(pkt + off + 8);
    rr->rd_off = off + 10;
    off = rr->rd_off + rr->rdlen;
    if (off > len) return -1;
    (*nrr)++;
  }
  return 0;
}

static int rr_owner_is(const uint8_t *pkt, size_t len, const rr_t *rr, const char *name) {
  char owner[DNS_NAME_MAX + 1];
  size_t off = rr->name_off;
  return name_read(pkt, len, &off, owner) == 0 && strcmp(owner, name) == 0;
}

/* Follows the CNAME chain from the question's name, then collects the
 * addresses of type t owned by its end. Returns the count; *ttl is lowered
 * to the smallest TTL of the records used. */
static unsigned answer_collect(query_t *q, int t, const uint8_t *pkt, size_t len,
                               const rr_t *rrs, unsigned nrr, uint32_t *ttl) {
  char cur[DNS_NAME_MAX + 1];
  unsigned hops, n = 0;
  size_t alen = t == T_A ? 4 : 16;
  strcpy(cur, q->entry->name);
  for (hops = 0; hops < DNS_MAX_CNAME_HOPS; hops++) {
    unsigned i;
    for (i = 0; i < nrr; i++) {
      size_t off = rrs[i].rd_off;
      if (rrs[i].type != DNS_TYPE_CNAME || rrs[i].cls != DNS_CLASS_IN) continue;
      if (!rr_owner_is(pkt, len, &rrs[i], cur)) continue;
      if (name_read(pkt, len, &off, cur) != 0) return 0;
      if (rrs[i].ttl < *ttl) *ttl = rrs[i].ttl;
      break;
    }
    if (i == nrr) break;
  }
  for (unsigned i = 0; i < nrr && n < LLMUX_DNS_MAX_ADDRS; i++) {
    if (rrs[i].type != qtypes[t] || rrs[i].cls != DNS_CLASS_IN) continue;
    if (rrs[i].rdlen != alen || !rr_owner_is(pkt, len, &rrs[i], cur)) continue;
    q->addrs[t][n].family = t == T_A ? AF_INET : AF_INET6;
    memcpy(q->addrs[t][n].bytes, pkt + rrs[i].rd_off, alen);
    n++;
    if (rrs[i].ttl < *ttl) *ttl = rrs[i].ttl;
  }
  return n;
}

/* The type (T_A / T_AAAA) a packet answers, or -1 to ignore it: not a
 * response, an id we are not waiting for, or another question. */
static int answer_match(query_t *q, const uint8_t *pkt, size_t len, size_t *off) {
  char qname[DNS_NAME_MAX + 1];
  uint16_t id, flags;
  int t;
  if (len < 12) return -1;
  id = get16(pkt);
  flags = get16(pkt + 2);
  if (!(flags & 0x8000) || ((flags >> 11) & 0xF) != 0) return -1;
  for (t = 0; t < 2; t++)
    if (q->id[t] == id && q->st[t] == ST_PENDING) break;
  if (t == 2 || get16(pkt + 4) != 1) return -1;
  *off = 12;
  if (name_read(pkt, len, off, qname) != 0 || *off + 4 > len) return -1;
  if (strcmp(qname, q->entry->name) != 0) return -1;
  if (get16(pkt + *off) != qtypes[t] || get16(pkt + *off + 2) != DNS_CLASS_IN) return -1;
  *off += 4;
  return t;
}

/* Records what one matching answer says about its type. */
static void answer_handle(query_t *q, const uint8_t *pkt, size_t len) {
  rr_t rrs[DNS_MAX_RRS];
  unsigned nrr;
  size_t off;
  uint32_t ttl = UINT32_MAX;
  uint16_t flags, rcode;
  int tc, t = answer_match(q, pkt, len, &off);
  if (t < 0) {
    llmux_debug("dns: ignoring an unmatched answer for %s", q->entry->name);
    return;
  }
  flags = get16(pkt + 2);
  rcode = flags & 0xF;
  tc = (flags & 0x0200) != 0;
  if (rcode == 3) {
    q->st[t] = ST_NXDOMAIN;
    return;
  }
  if (rcode != 0) {
    q->st[t] = ST_FAIL;
    q->fail_reason = rcode == 2 ? "server failure (SERVFAIL)"
                   : rcode == 5 ? "query refused (REFUSED)" : "error answer from server";
    return;
  }
  if (rrs_parse(pkt, len, off, get16(pkt + 6), rrs, &nrr) != 0 && !tc) {
    q->st[t] = ST_FAIL;
    q->fail_reason = "malformed answer";
    return;
  }
  q->n[t] = answer_collect(q, t, pkt, len, rrs, nrr, &ttl);
  if (q->n[t] > 0) {
    q->st[t] = ST_OK;
    if (ttl < q->ttl_s) q->ttl_s = ttl;
  } else if (tc) {
    q->st[t] = ST_FAIL;
    q->fail_reason = "truncated answer";
  } else {
    q->st[t] = ST_NODATA;
  }
}

/* ---- lookups ------------------------------------------------------------ */

static void dns_maybe_finish_close(llmux_dns_t *dns);
static int gai_start(query_t *q);
static void timer_cb(uv_timer_t *h);

static void query_maybe_free(query_t *q) {
  llmux_dns_t *dns = q->dns;
  if (q->entry != NULL || q->nhandles > 0 || q->gai_active) return;
  link_remove(&q->link);
  free(q);
  dns_maybe_finish_close(dns);
}

static void handle_close_cb(uv_handle_t *h) {
  query_t *q = h->data;
  q->nhandles--;
  query_maybe_free(q);
}

static void query_close_handles(query_t *q) {
  if (q->nhandles == 0 || q->handles_closing) return;
  q->handles_closing = 1;
  uv_close((uv_handle_t *)&q->udp, handle_close_cb);
  uv_close((uv_handle_t *)&q->timer, handle_close_cb);
}

/* Detaches q from its entry; q goes away once its handles are closed. */
static void query_release(query_t *q) {
  if (q->entry != NULL) q->entry->query = NULL;
  q->entry = NULL;
  query_close_handles(q);
  if (q->gai_active) uv_cancel((uv_req_t *)&q->gai);
  query_maybe_free(q);
}

static uint32_t clamp_ttl(uint32_t ttl) {
  if (ttl < DNS_TTL_MIN_S) return DNS_TTL_MIN_S;
  if (ttl > DNS_TTL_MAX_S) return DNS_TTL_MAX_S;
  return ttl;
}

/* Writes the outcome into the entry, frees the lookup, answers the waiters. */
static void query_done(query_t *q, int outcome, const char *reason, uint32_t ttl_s) {
  entry_t *e = q->entry;
  llmux_dns_t *dns = q->dns;
  if (outcome == OUT_ADDRS) {
    e->naddrs = 0;
    for (int t = 0; t < 2; t++)
      for (unsigned i = 0; i < q->n[t] && e->naddrs < LLMUX_DNS_MAX_ADDRS; i++)
        e->addrs[e->naddrs++] = q->addrs[t][i];
    e->state = ENTRY_VALID;
    e->status = 0;
    e->reason = NULL;
    e->expires_ms = now_ms(dns) + (uint64_t)clamp_ttl(ttl_s) * 1000;
    llmux_debug("dns: %s: %u addresses, ttl %us", e->name, e->naddrs, clamp_ttl(ttl_s));
  } else if (outcome == OUT_FAIL && e->state == ENTRY_VALID && e->naddrs > 0) {
    /* A refresh failed: the old addresses beat no answer (RFC 8767). */
    llmux_warn("dns: %s: %s; reusing the previous answer", e->name, reason);
    e->expires_ms = now_ms(dns) + DNS_NEGATIVE_TTL_S * 1000;
  } else {
    e->state = outcome == OUT_NEGATIVE ? ENTRY_NEGATIVE : ENTRY_EMPTY;
    e->status = LLMUX_EDNS;
    e->reason = reason;
    e->naddrs = 0;
    e->expires_ms = now_ms(dns) + DNS_NEGATIVE_TTL_S * 1000;
    llmux_debug("dns: %s: %s", e->name, reason);
  }
  query_release(q);
  entry_deliver_waiters(e);
}

/* Both types answered, or the attempts ran out: decide. */
static void query_finish(query_t *q) {
  if (q->n[T_A] + q->n[T_AAAA] > 0) {
    query_done(q, OUT_ADDRS, NULL, q->ttl_s);
  } else if (q->st[T_A] == ST_NXDOMAIN || q->st[T_AAAA] == ST_NXDOMAIN) {
    query_done(q, OUT_NEGATIVE, "NXDOMAIN", 0);
  } else if (q->st[T_A] == ST_NODATA && q->st[T_AAAA] == ST_NODATA) {
    query_done(q, OUT_NEGATIVE, "no address records", 0);
  } else if (!q->dns->no_system_fallback && !q->gai_tried) {
    llmux_debug("dns: %s: %s, trying getaddrinfo", q->entry->name, q->fail_reason);
    query_close_handles(q);
    if (gai_start(q) != 0) query_done(q, OUT_FAIL, q->fail_reason, 0);
  } else {
    query_done(q, OUT_FAIL, q->fail_reason, 0);
  }
}

static int query_pending(const query_t *q) {
  return q->st[T_A] == ST_PENDING || q->st[T_AAAA] == ST_PENDING;
}

/* The nameservers of q's family, in configured order. */
static unsigned ns_of_family(const query_t *q, const struct sockaddr_storage **out) {
  unsigned n = 0;
  for (unsigned i = 0; i < q->dns->nns; i++)
    if (q->dns->ns[i].ss_family == q->family) out[n++] = &q->dns->ns[i];
  return n;
}

/* Sends the unanswered questions to the next nameserver and arms the
 * timer. 0, or -1 when nothing could be sent (the UDP path is broken). */
static int query_send(query_t *q) {
  const struct sockaddr_storage *ns[LLMUX_DNS_MAX_NS];
  unsigned nns = ns_of_family(q, ns), sent = 0;
  const struct sockaddr *to = (const struct sockaddr *)ns[q->attempt % nns];
  uint8_t pkt[512];
  for (int t = 0; t < 2; t++) {
    uv_buf_t b;
    if (q->st[t] != ST_PENDING) continue;
    b = uv_buf_init((char *)pkt, (unsigned)build_query(pkt, q->id[t], q->entry->name, qtypes[t]));
    if (uv_udp_try_send(&q->udp, &b, 1, to) >= 0) sent++;
  }
  q->attempt++;
  if (sent == 0) return -1;
  uv_timer_start(&q->timer, timer_cb, q->dns->timeout_ms, 0);
  return 0;
}

static void timer_cb(uv_timer_t *h) {
  query_t *q = h->data;
  const struct sockaddr_storage *ns[LLMUX_DNS_MAX_NS];
  if (q->attempt < q->dns->attempts * ns_of_family(q, ns)) {
    llmux_debug("dns: %s: no answer, retrying", q->entry->name);
    if (query_send(q) == 0) return;
    q->fail_reason = "cannot send query";
  } else {
    q->fail_reason = "timed out";
  }
  query_finish(q);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  query_t *q = h->data;
  *buf = uv_buf_init(q->rbuf, sizeof(q->rbuf));
}

static void recv_cb(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                    const struct sockaddr *from, unsigned flags) {
  query_t *q = h->data;
  unsigned i;
  if (q->entry == NULL || nread <= 0 || from == NULL) return;
  for (i = 0; i < q->dns->nns; i++)
    if (sockaddr_equal(from, &q->dns->ns[i])) break;
  if (i == q->dns->nns) return; /* not from a nameserver we asked: spoofed */
  answer_handle(q, (const uint8_t *)buf->base, (size_t)nread);
  if (!query_pending(q)) {
    uv_timer_stop(&q->timer);
    query_finish(q);
  }
}

/* Opens the lookup's socket on an ephemeral port and sends the first round. */
static int udp_start(query_t *q) {
  struct sockaddr_storage any;
  dns_addr_t zero = { 0 };
  q->family = q->dns->ns[0].ss_family;
  if (uv_udp_init_ex(q->dns->loop, &q->udp, (unsigned)q->family) != 0) return -1;
  uv_timer_init(q->dns->loop, &q->timer);
  q->udp.data = q->timer.data = q;
  q->nhandles = 2;
  zero.family = (uint8_t)q->family;
  addr_to_sockaddr(&zero, 0, &any);
  if (uv_udp_bind(&q->udp, (struct sockaddr *)&any, 0) != 0) return -1;
  if (uv_udp_recv_start(&q->udp, alloc_cb, recv_cb) != 0) return -1;
  q->id[T_A] = rand16(q->dns);
  do q->id[T_AAAA] = rand16(q->dns); while (q->id[T_AAAA] == q->id[T_A]);
  q->ttl_s = UINT32_MAX;
  return query_send(q);
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  query_t *q = llmux_container_of(req, query_t, gai);
  q->gai_active = 0;
  if (q->entry == NULL) { /* closed meanwhile */
    uv_freeaddrinfo(res);
    query_maybe_free(q);
    return;
  }
  q->n[T_A] = q->n[T_AAAA] = 0;
  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    int t = ai->ai_family == AF_INET ? T_A : ai->ai_family == AF_INET6 ? T_AAAA : -1;
    if (t < 0 || q->n[t] >= LLMUX_DNS_MAX_ADDRS) continue;
    q->addrs[t][q->n[t]].family = (uint8_t)ai->ai_family;
    if (t == T_A)
      memcpy(q->addrs[t][q->n[t]].bytes, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, 4);
    else
      memcpy(q->addrs[t][q->n[t]].bytes, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, 16);
    q->n[t]++;
  }
  uv_freeaddrinfo(res);
  if (status == 0 && q->n[T_A] + q->n[T_AAAA] > 0)
    query_done(q, OUT_ADDRS, NULL, DNS_SYSTEM_TTL_S);
  else if (status == UV_EAI_NONAME || status == UV_EAI_NODATA)
    query_done(q, OUT_NEGATIVE, "name not found (system resolver)", 0);
  else
    query_done(q, OUT_FAIL, "system resolver failed", 0);
}

/* getaddrinfo on libuv's thread pool; the loop never blocks on it. */
static int gai_start(query_t *q) {
  struct addrinfo hints;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  q->gai_tried = 1;
  if (uv_getaddrinfo(q->dns->loop, &q->gai, gai_cb, q->entry->name, NULL, &hints) != 0)
    return -1;
  q->gai_active = 1;
  return 0;
}

/* Short names are left to getaddrinfo, which applies resolv.conf's search
 * list (kubernetes service names, for one). */
static int wants_system(llmux_dns_t *dns, const char *name) {
  unsigned dots = 0;
  if (dns->no_system_fallback) return 0;
  if (dns->nns == 0) return 1;
  for (; *name; name++) dots += *name == '.';
  return dns->has_search && dots < dns->ndots;
}

/* Starts the lookup of e. 0 when running; LLMUX_ENOMEM; LLMUX_EDNS when no
 * path could even start: the failure is then recorded in e (old addresses
 * kept, as for a failed refresh) for the caller to deliver. */
static int query_start(llmux_dns_t *dns, entry_t *e) {
  query_t *q = calloc(1, sizeof(*q));
  if (q == NULL) return LLMUX_ENOMEM;
  q->dns = dns;
  q->entry = e;
  q->fail_reason = "no nameserver";
  e->query = q;
  link_tail(&dns->queries, &q->link);
  if (wants_system(dns, e->name)) {
    if (gai_start(q) == 0) return 0;
  } else if (dns->nns > 0) {
    if (udp_start(q) == 0) return 0;
    q->fail_reason = "cannot send query";
    llmux_debug("dns: %s: UDP failed, trying getaddrinfo", e->name);
    query_close_handles(q);
    if (!dns->no_system_fallback && gai_start(q) == 0) return 0;
  }
  llmux_warn("dns: %s: %s", e->name, q->fail_reason);
  if (e->state != ENTRY_VALID) {
    e->state = ENTRY_EMPTY;
    e->status = LLMUX_EDNS;
    e->reason = q->fail_reason;
  }
  query_release(q);
  return LLMUX_EDNS;
}

/* ---- configuration ------------------------------------------------------ */

/* "IP", "IP:PORT", "[IPv6]", "[IPv6]:PORT" or a bare IPv6 address. */
static int parse_ns(const char *s, struct sockaddr_storage *out) {
  char host[64];
  const char *port = NULL, *colon = strchr(s, ':');
  dns_addr_t a;
  uint64_t p = DNS_PORT;
  size_t n;
  if (s[0] == '[') {
    const char *end = strchr(s, ']');
    if (end == NULL) return LLMUX_EINVAL;
    n = (size_t)(end + 1 - s);
    if (end[1] == ':') port = end + 2;
    else if (end[1] != '\0') return LLMUX_EINVAL;
  } else if (colon != NULL && strchr(colon + 1, ':') == NULL) {
    n = (size_t)(colon - s);
    port = colon + 1;
  } else {
    n = strlen(s);
  }
  if (n >= sizeof(host)) return LLMUX_EINVAL;
  memcpy(host, s, n);
  host[n] = '\0';
  if (parse_numeric(host, &a) != 1) return LLMUX_EINVAL;
  if (port && (llmux_parse_u64(port, &p) != 0 || p == 0 || p > 65535)) return LLMUX_EINVAL;
  addr_to_sockaddr(&a, (uint16_t)p, out);
  return 0;
}

static int parse_ns_list(llmux_dns_t *dns, const char *list) {
  char *copy = llmux_xstrdup(list), *items[LLMUX_DNS_MAX_NS + 1];
  size_t n = llmux_split_list(copy, items, LLMUX_COUNTOF(items));
  int rc = n == 0 || n > LLMUX_DNS_MAX_NS ? LLMUX_EINVAL : 0;
  for (size_t i = 0; rc == 0 && i < n; i++) rc = parse_ns(items[i], &dns->ns[i]);
  dns->nns = rc == 0 ? (unsigned)n : 0;
  free(copy);
  return rc;
}

static void resolv_option(llmux_dns_t *dns, const char *opt, unsigned *timeout_s,
                          unsigned *attempts) {
  uint64_t v;
  if (strncmp(opt, "timeout:", 8) == 0 && llmux_parse_u64(opt + 8, &v) == 0)
    *timeout_s = v < 1 ? 1 : v > 30 ? 30 : (unsigned)v;
  else if (strncmp(opt, "attempts:", 9) == 0 && llmux_parse_u64(opt + 9, &v) == 0)
    *attempts = v < 1 ? 1 : v > 5 ? 5 : (unsigned)v;
  else if (strncmp(opt, "ndots:", 6) == 0 && llmux_parse_u64(opt + 6, &v) == 0)
    dns->ndots = v > 15 ? 15 : (unsigned)v;
}

/* resolv.conf: nameserver, options timeout/attempts/ndots, search/domain. */
static void read_resolv_conf(llmux_dns_t *dns, const char *path, int want_ns,
                             unsigned *timeout_s, unsigned *attempts) {
  char line[512];
  FILE *f = fopen(path, "r");
  if (f == NULL) return;
  while (fgets(line, sizeof(line), f) != NULL) {
    char *save, *key, *arg;
    line[strcspn(line, "#;\n")] = '\0';
    if ((key = strtok_r(line, " \t\r", &save)) == NULL) continue;
    arg = strtok_r(NULL, " \t\r", &save);
    if (strcmp(key, "nameserver") == 0 && arg && want_ns && dns->nns < LLMUX_DNS_MAX_NS) {
      if (strchr(arg, '%') == NULL && parse_ns(arg, &dns->ns[dns->nns]) == 0) dns->nns++;
    } else if ((strcmp(key, "search") == 0 || strcmp(key, "domain") == 0) && arg) {
      dns->has_search = 1;
    } else if (strcmp(key, "options") == 0) {
      for (; arg != NULL; arg = strtok_r(NULL, " \t\r", &save))
        resolv_option(dns, arg, timeout_s, attempts);
    }
  }
  fclose(f);
}

static void hosts_add(llmux_dns_t *dns, const char *name, const dns_addr_t *a) {
  entry_t *e = entry_find(dns, name);
  if (e == NULL && (e = entry_new(dns, name, 1)) == NULL) return;
  for (unsigned i = 0; i < e->naddrs; i++)
    if (memcmp(&e->addrs[i], a, sizeof(*a)) == 0) return;
  if (e->naddrs < LLMUX_DNS_MAX_ADDRS) e->addrs[e->naddrs++] = *a;
}

/* "ADDRESS NAME [ALIAS...]" lines; '#' starts a comment. */
static void read_hosts(llmux_dns_t *dns, const char *path) {
  char line[1024], name[DNS_NAME_MAX + 1];
  FILE *f = fopen(path, "r");
  if (f == NULL) return;
  while (fgets(line, sizeof(line), f) != NULL) {
    char *save, *tok;
    dns_addr_t a;
    memset(&a, 0, sizeof(a));
    line[strcspn(line, "#\n")] = '\0';
    if ((tok = strtok_r(line, " \t\r", &save)) == NULL) continue;
    if (tok[0] == '[' || parse_numeric(tok, &a) != 1) continue;
    while ((tok = strtok_r(NULL, " \t\r", &save)) != NULL)
      if (normalize_name(tok, name) == 0) hosts_add(dns, name, &a);
  }
  fclose(f);
}

/* `localhost` is loopback whatever the hosts file says (RFC 6761). */
static void hosts_default_localhost(llmux_dns_t *dns) {
  dns_addr_t v4 = { AF_INET, { 127, 0, 0, 1 } };
  dns_addr_t v6 = { AF_INET6, { 0 } };
  if (entry_find(dns, "localhost") != NULL) return;
  v6.bytes[15] = 1;
  hosts_add(dns, "localhost", &v4);
  hosts_add(dns, "localhost", &v6);
}

/* ---- public API --------------------------------------------------------- */

int llmux_dns_init(uv_loop_t *loop, llmux_dns_t *dns, const llmux_dns_options_t *opts) {
  static const llmux_dns_options_t defaults;
  unsigned timeout_s = 0, attempts = 0;
  int rc;
  if (opts == NULL) opts = &defaults;
  memset(dns, 0, sizeof(*dns));
  dns->loop = loop;
  dns->ndots = 1;
  dns->no_system_fallback = opts->no_system_fallback;
  dns->now_ms = opts->now_ms;
  dns->clock_data = opts->clock_data;
  dns->max_entries = opts->max_entries ? opts->max_entries : DNS_DEFAULT_MAX_ENTRIES;
  link_init(&dns->lru);
  link_init(&dns->hosts);
  link_init(&dns->ready);
  link_init(&dns->queries);
  if (opts->nameserver && (rc = parse_ns_list(dns, opts->nameserver)) != 0) return rc;
  read_resolv_conf(dns, opts->resolv_conf ? opts->resolv_conf : "/etc/resolv.conf",
                   opts->nameserver == NULL, &timeout_s, &attempts);
  dns->timeout_ms = opts->timeout_ms ? opts->timeout_ms
                  : timeout_s ? timeout_s * 1000 : DNS_DEFAULT_TIMEOUT_MS;
  dns->attempts = opts->attempts ? opts->attempts : attempts ? attempts : DNS_DEFAULT_ATTEMPTS;
  for (dns->nbuckets = 64; dns->nbuckets < 2 * (size_t)dns->max_entries;) dns->nbuckets *= 2;
  dns->buckets = llmux_xcalloc(dns->nbuckets, sizeof(*dns->buckets));
  if (opts->hosts_file == NULL || opts->hosts_file[0] != '\0') {
    read_hosts(dns, opts->hosts_file ? opts->hosts_file : "/etc/hosts");
    hosts_default_localhost(dns);
  }
  if (uv_idle_init(loop, &dns->idle) != 0) {
    free(dns->buckets);
    return LLMUX_EIO;
  }
  return 0;
}

int llmux_dns_resolve(llmux_dns_t *dns, llmux_dns_req_t *req, const char *host,
                      uint16_t port, llmux_dns_cb cb, void *data) {
  char name[DNS_NAME_MAX + 1];
  dns_addr_t num;
  entry_t *e;
  int rc;
  if (dns->closing) return LLMUX_ECANCELED;
  if (cb == NULL || host == NULL) return LLMUX_EINVAL;
  req->data = data;
  req->reason = NULL;
  req->dns = dns;
  req->cb = cb;
  req->port = port;
  req->entry = NULL;
  if ((rc = parse_numeric(host, &num)) < 0) return rc;
  if (rc == 1) {
    req->numeric_family = num.family;
    memcpy(req->numeric, num.bytes, 16);
    req->active = 1;
    ready_push(dns, req);
    return 0;
  }
  if (normalize_name(host, name) != 0) return LLMUX_EINVAL;
  e = entry_find(dns, name);
  if (e != NULL && e->query == NULL && entry_fresh(dns, e)) {
    entry_touch(dns, e);
    e->refs++;
    req->entry = e;
    req->active = 1;
    ready_push(dns, req);
    return 0;
  }
  if (e == NULL && (e = entry_new(dns, name, 0)) == NULL) return LLMUX_ENOMEM;
  entry_touch(dns, e);
  e->refs++;
  req->entry = e;
  req->active = 1;
  link_tail(&e->waiters, &req->link);
  if (e->query == NULL && (rc = query_start(dns, e)) != 0) {
    link_remove(&req->link);
    if (rc == LLMUX_ENOMEM) {
      llmux_dns_cancel(req);
      return rc;
    }
    ready_push(dns, req); /* answered with what e now says */
  }
  return 0;
}

int llmux_dns_cancel(llmux_dns_req_t *req) {
  if (!req->active) return LLMUX_EINVAL;
  link_remove(&req->link);
  req->active = 0;
  if (req->entry != NULL) req->entry->refs--;
  req->entry = NULL;
  return 0;
}

static void dns_maybe_finish_close(llmux_dns_t *dns) {
  llmux_dns_close_cb cb = dns->close_cb;
  if (dns->closing != 1 || !dns->idle_closed || !link_empty(&dns->queries)) return;
  dns->closing = 2;
  for (size_t b = 0; b < dns->nbuckets; b++)
    while (dns->buckets[b] != NULL) entry_free(dns, dns->buckets[b]);
  free(dns->buckets);
  dns->buckets = NULL;
  if (cb != NULL) cb(dns);
}

static void idle_close_cb(uv_handle_t *h) {
  llmux_dns_t *dns = llmux_container_of(h, llmux_dns_t, idle);
  dns->idle_closed = 1;
  dns_maybe_finish_close(dns);
}

void llmux_dns_close(llmux_dns_t *dns, llmux_dns_close_cb cb) {
  llmux__dns_link_t *l, *next;
  assert(!dns->closing);
  dns->closing = 1;
  dns->close_cb = cb;
  /* Waiting reqs learn first (ECANCELED), while every lookup still exists. */
  while (!link_empty(&dns->ready)) {
    llmux_dns_req_t *req = REQ_OF(dns->ready.next);
    link_remove(&req->link);
    req->active = 0;
    req_deliver(req);
  }
  for (l = dns->queries.next; l != &dns->queries; l = l->next)
    if (QUERY_OF(l)->entry != NULL) entry_deliver_waiters(QUERY_OF(l)->entry);
  for (l = dns->queries.next; l != &dns->queries; l = next) {
    next = l->next;
    query_release(QUERY_OF(l));
  }
  uv_close((uv_handle_t *)&dns->idle, idle_close_cb);
}
