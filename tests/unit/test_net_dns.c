/* The resolver against a fake DNS server on 127.0.0.1 in the same loop. The
 * cache's clock is injected, so TTL expiry takes no real time. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <uv.h>

#include "net/dns.h"

/* ---- the fake server ---------------------------------------------------- */

typedef struct {
  const char *owner;
  uint16_t type; /* 1 A, 5 CNAME, 28 AAAA */
  uint32_t ttl;
  const char *data;
} zrr_t;

typedef struct {
  uv_udp_t udp;
  uv_udp_t spoof;          /* another socket: answers from it must be ignored */
  struct sockaddr_in addr;
  int nq_a, nq_aaaa, total;
  uint16_t last_id[2];
  int drop;                /* drop this many queries, then answer */
  int drop_all;
  int rcode;
  int decoys;              /* send forged answers before the real one */
  int pointer_loop;        /* answer with a name compression loop */
  int truncated;           /* set TC in answers */
  const zrr_t *zone;
  size_t nzone;
} fake_t;

typedef struct {
  uint8_t b[1500];
  size_t len;
} pkt_t;

static void w16(pkt_t *p, uint16_t v) {
  p->b[p->len++] = (uint8_t)(v >> 8);
  p->b[p->len++] = (uint8_t)v;
}

static void w32(pkt_t *p, uint32_t v) {
  w16(p, (uint16_t)(v >> 16));
  w16(p, (uint16_t)v);
}

/* Names equal to the question's are written as a pointer to offset 12, to
 * exercise decompression; the others in full. */
static void wname(pkt_t *p, const char *name, const char *qname) {
  if (qname != NULL && strcasecmp(name, qname) == 0) {
    w16(p, 0xC00C);
    return;
  }
  while (*name) {
    const char *dot = strchr(name, '.');
    size_t n = dot ? (size_t)(dot - name) : strlen(name);
    p->b[p->len++] = (uint8_t)n;
    memcpy(p->b + p->len, name, n);
    p->len += n;
    name += n + (dot ? 1 : 0);
  }
  p->b[p->len++] = 0;
}

static void wrr(pkt_t *p, const zrr_t *rr, const char *qname) {
  size_t rdlen_at;
  wname(p, rr->owner, qname);
  w16(p, rr->type);
  w16(p, 1);
  w32(p, rr->ttl);
  rdlen_at = p->len;
  w16(p, 0);
  if (rr->type == 5) wname(p, rr->data, NULL);
  else if (rr->type == 1) p->len += (inet_pton(AF_INET, rr->data, p->b + p->len), 4);
  else p->len += (inet_pton(AF_INET6, rr->data, p->b + p->len), 16);
  p->b[rdlen_at] = (uint8_t)((p->len - rdlen_at - 2) >> 8);
  p->b[rdlen_at + 1] = (uint8_t)(p->len - rdlen_at - 2);
}

/* An answer to (qname, qtype): every CNAME of the zone, then every record of
 * the asked type, in zone order (the resolver must pick the chain's). */
static void build_answer(pkt_t *p, uint16_t id, int rcode, const char *qname,
                         uint16_t qtype, const zrr_t *zone, size_t nzone) {
  size_t an_at;
  uint16_t an = 0;
  p->len = 0;
  w16(p, id);
  w16(p, (uint16_t)(0x8180 | rcode));
  w16(p, 1);
  an_at = p->len;
  w16(p, 0);
  w16(p, 0);
  w16(p, 0);
  wname(p, qname, NULL);
  w16(p, qtype);
  w16(p, 1);
  for (size_t i = 0; i < nzone; i++) {
    if (zone[i].type != 5 && zone[i].type != qtype) continue;
    wrr(p, &zone[i], qname);
    an++;
  }
  p->b[an_at] = (uint8_t)(an >> 8);
  p->b[an_at + 1] = (uint8_t)an;
}

static void fake_send(uv_udp_t *from, const pkt_t *p, const struct sockaddr *to) {
  uv_buf_t b = uv_buf_init((char *)p->b, (unsigned)p->len);
  assert_true(uv_udp_try_send(from, &b, 1, to) >= 0);
}

static void send_decoys(fake_t *f, uint16_t id, const char *qname, uint16_t qtype,
                        const struct sockaddr *to) {
  zrr_t bad = { qname, 1, 60, "198.51.100.66" };
  zrr_t bad_other = { "decoy.test", 1, 60, "198.51.100.67" };
  pkt_t p;
  build_answer(&p, (uint16_t)(id ^ 0x5a5a), 0, qname, qtype, &bad, 1); /* wrong id */
  fake_send(&f->udp, &p, to);
  build_answer(&p, id, 0, "decoy.test", qtype, &bad_other, 1); /* wrong question */
  fake_send(&f->udp, &p, to);
  build_answer(&p, id, 0, qname, qtype, &bad, 1); /* right packet, wrong source */
  fake_send(&f->spoof, &p, to);
}

static void send_pointer_loop(fake_t *f, uint16_t id, const char *qname, uint16_t qtype,
                              const struct sockaddr *to) {
  pkt_t p;
  build_answer(&p, id, 0, qname, qtype, NULL, 0);
  p.b[7] = 1; /* ANCOUNT 1: a record whose owner points at itself */
  w16(&p, (uint16_t)(0xC000 | p.len));
  w16(&p, 1);
  fake_send(&f->udp, &p, to);
}

static void fake_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  static char mem[2048];
  *buf = uv_buf_init(mem, sizeof(mem));
}

static void fake_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                      const struct sockaddr *from, unsigned flags) {
  fake_t *f = h->data;
  const uint8_t *q = (const uint8_t *)buf->base;
  char qname[256];
  size_t off = 12, n = 0;
  uint16_t id, qtype;
  pkt_t p;
  if (nread <= 0 || from == NULL) return;
  assert_true(nread > 12);
  id = (uint16_t)(q[0] << 8 | q[1]);
  while (q[off] != 0) {
    if (n) qname[n++] = '.';
    memcpy(qname + n, q + off + 1, q[off]);
    n += q[off];
    off += 1 + q[off];
  }
  qname[n] = '\0';
  qtype = (uint16_t)(q[off + 1] << 8 | q[off + 2]);
  assert_int_equal(q[2] & 0x01, 1); /* RD */
  f->total++;
  if (qtype == 1) f->nq_a++, f->last_id[0] = id;
  else if (qtype == 28) f->nq_aaaa++, f->last_id[1] = id;
  if (f->drop_all) return;
  if (f->drop > 0) {
    f->drop--;
    return;
  }
  if (f->decoys) send_decoys(f, id, qname, qtype, from);
  if (f->pointer_loop) {
    send_pointer_loop(f, id, qname, qtype, from);
    return;
  }
  build_answer(&p, id, f->rcode, qname, qtype, f->zone, f->nzone);
  if (f->truncated) p.b[2] |= 0x02;
  fake_send(&f->udp, &p, from);
}

/* ---- fixture ------------------------------------------------------------ */

typedef struct {
  int done;
  int status;
  const char *reason;
  size_t n;
  char addr[LLMUX_DNS_MAX_ADDRS][64];
} result_t;

static uv_loop_t loop;
static fake_t fake;
static llmux_dns_t dns;
static uv_timer_t watchdog;
static int watchdog_fired, dns_closed, dns_open;
static uint64_t fake_now;
static char hosts_path[64], resolv_path[64];

static uint64_t clock_fn(void *data) {
  (void)data;
  return fake_now;
}

static void on_watchdog(uv_timer_t *t) { watchdog_fired = 1; }
static void on_tick(uv_timer_t *t) {}

static void fmt_addr(const struct sockaddr_storage *ss, char *out) {
  char ip[INET6_ADDRSTRLEN];
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *s = (const void *)ss;
    inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
    sprintf(out, "%s:%u", ip, ntohs(s->sin_port));
  } else {
    const struct sockaddr_in6 *s = (const void *)ss;
    inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
    sprintf(out, "[%s]:%u", ip, ntohs(s->sin6_port));
  }
}

static void on_resolved(llmux_dns_req_t *req, int status,
                        const struct sockaddr_storage *addrs, size_t n) {
  result_t *r = req->data;
  r->done++;
  r->status = status;
  r->reason = req->reason;
  r->n = n;
  for (size_t i = 0; i < n && i < LLMUX_DNS_MAX_ADDRS; i++) fmt_addr(&addrs[i], r->addr[i]);
}

static void run_until(const int *flag) {
  while (!*flag && !watchdog_fired) uv_run(&loop, UV_RUN_ONCE);
  assert_false(watchdog_fired);
}

/* Runs the loop for about `ms` of real time (for things that must NOT happen). */
static void run_for(unsigned ms) {
  uint64_t end = uv_hrtime() + (uint64_t)ms * 1000000;
  uv_timer_t t;
  uv_timer_init(&loop, &t);
  while (uv_hrtime() < end) {
    uv_timer_start(&t, on_tick, 5, 0);
    uv_run(&loop, UV_RUN_ONCE);
  }
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
}

static void resolve(llmux_dns_req_t *req, const char *host, uint16_t port, result_t *r) {
  memset(r, 0, sizeof(*r));
  assert_int_equal(llmux_dns_resolve(&dns, req, host, port, on_resolved, r), 0);
  assert_int_equal(r->done, 0); /* never called back from inside resolve */
}

static void resolve_wait(const char *host, uint16_t port, result_t *r) {
  llmux_dns_req_t req;
  resolve(&req, host, port, r);
  run_until(&r->done);
  assert_int_equal(r->done, 1);
}

static int dns_open_with(llmux_dns_options_t *o) {
  char ns[64];
  int rc;
  snprintf(ns, sizeof(ns), "127.0.0.1:%u", ntohs(fake.addr.sin_port));
  if (o->nameserver == NULL && o->resolv_conf == NULL) o->nameserver = ns;
  if (o->timeout_ms == 0) o->timeout_ms = 100;
  if (o->attempts == 0) o->attempts = 2;
  if (o->hosts_file == NULL) o->hosts_file = "";
  o->now_ms = clock_fn;
  rc = llmux_dns_init(&loop, &dns, o);
  dns_open = rc == 0;
  return rc;
}

static int setup(void **state) {
  struct sockaddr_in any;
  int len = sizeof(fake.addr);
  llmux_dns_options_t o = { 0 };
  assert_int_equal(uv_loop_init(&loop), 0);
  memset(&fake, 0, sizeof(fake));
  uv_ip4_addr("127.0.0.1", 0, &any);
  assert_int_equal(uv_udp_init(&loop, &fake.udp), 0);
  assert_int_equal(uv_udp_bind(&fake.udp, (struct sockaddr *)&any, 0), 0);
  assert_int_equal(uv_udp_getsockname(&fake.udp, (struct sockaddr *)&fake.addr, &len), 0);
  assert_int_equal(uv_udp_init(&loop, &fake.spoof), 0);
  assert_int_equal(uv_udp_bind(&fake.spoof, (struct sockaddr *)&any, 0), 0);
  fake.udp.data = &fake;
  assert_int_equal(uv_udp_recv_start(&fake.udp, fake_alloc, fake_recv), 0);
  uv_timer_init(&loop, &watchdog);
  uv_timer_start(&watchdog, on_watchdog, 5000, 0);
  watchdog_fired = dns_closed = 0;
  fake_now = 1000000;
  o.no_system_fallback = 1;
  assert_int_equal(dns_open_with(&o), 0);
  return 0;
}

static void on_dns_closed(llmux_dns_t *d) {
  assert_ptr_equal(d, &dns);
  dns_closed = 1;
}

static void close_dns(void) {
  llmux_dns_close(&dns, on_dns_closed);
  dns_open = 0;
  run_until(&dns_closed);
}

static int teardown(void **state) {
  if (dns_open) close_dns();
  uv_close((uv_handle_t *)&fake.udp, NULL);
  uv_close((uv_handle_t *)&fake.spoof, NULL);
  uv_close((uv_handle_t *)&watchdog, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  if (hosts_path[0]) unlink(hosts_path), hosts_path[0] = '\0';
  if (resolv_path[0]) unlink(resolv_path), resolv_path[0] = '\0';
  return 0;
}

/* Closes the default resolver and opens one with other options. */
static void reopen(llmux_dns_options_t *o) {
  close_dns();
  dns_closed = 0;
  assert_int_equal(dns_open_with(o), 0);
}

static void write_temp(char *path, const char *content) {
  int fd;
  strcpy(path, "/tmp/llmux-dns-XXXXXX");
  fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
  close(fd);
}

#define SET_ZONE(z) (fake.zone = (z), fake.nzone = sizeof(z) / sizeof((z)[0]))

/* ---- tests -------------------------------------------------------------- */

static void numeric_addresses_answer_without_a_query(void **state) {
  llmux_dns_req_t r1, r2, r3;
  result_t a, b, c;
  resolve(&r1, "192.0.2.1", 443, &a);
  resolve(&r2, "::1", 80, &b);
  resolve(&r3, "[2001:db8::5]", 8080, &c);
  run_until(&c.done);
  assert_int_equal(a.status, 0);
  assert_int_equal(a.n, 1);
  assert_string_equal(a.addr[0], "192.0.2.1:443");
  assert_string_equal(b.addr[0], "[::1]:80");
  assert_string_equal(c.addr[0], "[2001:db8::5]:8080");
  assert_int_equal(fake.total, 0);
}

static void malformed_hosts_are_rejected_synchronously(void **state) {
  llmux_dns_req_t req;
  result_t r = { 0 };
  const char *bad[] = { "", "bad host", "[192.0.2.1]", "a..b", "[::1", "x/y", "fe80::1%eth0" };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    assert_int_equal(llmux_dns_resolve(&dns, &req, bad[i], 1, on_resolved, &r), LLMUX_EINVAL);
  run_for(20);
  assert_int_equal(r.done, 0);
}

static void localhost_and_names_come_from_the_hosts_file(void **state) {
  llmux_dns_options_t o = { 0 };
  result_t r;
  write_temp(hosts_path, "# test hosts\n127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
                         "10.1.2.3\tMyHost.Internal  alias # trailing comment\n"
                         "not-an-address broken\n");
  o.hosts_file = hosts_path;
  o.no_system_fallback = 1;
  reopen(&o);
  resolve_wait("localhost", 80, &r);
  assert_int_equal(r.status, 0);
  assert_int_equal(r.n, 2);
  assert_string_equal(r.addr[0], "127.0.0.1:80");
  assert_string_equal(r.addr[1], "[::1]:80");
  resolve_wait("myhost.internal.", 9, &r);
  assert_int_equal(r.n, 1);
  assert_string_equal(r.addr[0], "10.1.2.3:9");
  resolve_wait("ALIAS", 9, &r);
  assert_string_equal(r.addr[0], "10.1.2.3:9");
  fake_now += 365ULL * 24 * 3600 * 1000; /* hosts entries never expire */
  resolve_wait("localhost", 1, &r);
  assert_int_equal(r.n, 2);
  assert_int_equal(fake.total, 0);
}

static void localhost_is_loopback_without_a_hosts_file(void **state) {
  llmux_dns_options_t o = { 0 };
  result_t r;
  o.hosts_file = "/nonexistent/hosts";
  o.no_system_fallback = 1;
  reopen(&o);
  resolve_wait("localhost", 5, &r);
  assert_int_equal(r.n, 2);
  assert_string_equal(r.addr[0], "127.0.0.1:5");
  assert_string_equal(r.addr[1], "[::1]:5");
  assert_int_equal(fake.total, 0);
}

static void a_answer_is_cached_for_its_ttl_then_queried_again(void **state) {
  static const zrr_t zone[] = { { "api.example.test", 1, 60, "192.0.2.10" } };
  result_t r;
  SET_ZONE(zone);
  resolve_wait("api.example.test", 443, &r);
  assert_int_equal(r.status, 0);
  assert_int_equal(r.n, 1);
  assert_string_equal(r.addr[0], "192.0.2.10:443");
  assert_int_equal(fake.nq_a, 1);
  assert_int_equal(fake.nq_aaaa, 1);
  assert_int_not_equal(fake.last_id[0], fake.last_id[1]);

  fake_now += 59999;
  resolve_wait("API.example.test.", 80, &r);
  assert_string_equal(r.addr[0], "192.0.2.10:80");
  assert_int_equal(fake.nq_a, 1);

  fake_now += 1;
  resolve_wait("api.example.test", 80, &r);
  assert_string_equal(r.addr[0], "192.0.2.10:80");
  assert_int_equal(fake.nq_a, 2);
  assert_int_equal(fake.nq_aaaa, 2);
}

static void ttls_are_clamped_to_one_second_and_one_hour(void **state) {
  static const zrr_t zone[] = { { "zero.test", 1, 0, "192.0.2.1" },
                                { "huge.test", 1, 86400, "192.0.2.2" } };
  result_t r;
  SET_ZONE(zone);
  resolve_wait("zero.test", 1, &r);
  resolve_wait("huge.test", 1, &r);
  assert_int_equal(fake.nq_a, 2);
  fake_now += 999;
  resolve_wait("zero.test", 1, &r);
  assert_int_equal(fake.nq_a, 2);
  fake_now += 1;
  resolve_wait("zero.test", 1, &r);
  assert_int_equal(fake.nq_a, 3);
  fake_now += 3600 * 1000 - 1000;
  resolve_wait("huge.test", 1, &r);
  assert_int_equal(fake.nq_a, 4);
}

static void aaaa_answers_give_ipv6_addresses_in_order(void **state) {
  static const zrr_t zone[] = { { "v6.test", 28, 300, "2001:db8::2" },
                                { "v6.test", 28, 300, "2001:db8::1" } };
  result_t r;
  SET_ZONE(zone);
  resolve_wait("v6.test", 443, &r);
  assert_int_equal(r.status, 0);
  assert_int_equal(r.n, 2);
  assert_string_equal(r.addr[0], "[2001:db8::2]:443");
  assert_string_equal(r.addr[1], "[2001:db8::1]:443");
}

static void ipv4_addresses_come_before_ipv6(void **state) {
  static const zrr_t zone[] = { { "dual.test", 28, 300, "2001:db8::1" },
                                { "dual.test", 1, 300, "192.0.2.20" },
                                { "dual.test", 1, 300, "192.0.2.10" } };
  result_t r;
  SET_ZONE(zone);
  resolve_wait("dual.test", 1, &r);
  assert_int_equal(r.n, 3);
  assert_string_equal(r.addr[0], "192.0.2.20:1");
  assert_string_equal(r.addr[1], "192.0.2.10:1");
  assert_string_equal(r.addr[2], "[2001:db8::1]:1");
}

static void cname_chain_is_followed_with_the_smallest_ttl(void **state) {
  static const zrr_t zone[] = { { "www.example.test", 5, 300, "a.example.test" },
                                { "other.test", 1, 300, "10.9.9.9" },
                                { "a.example.test", 5, 20, "b.example.test" },
                                { "b.example.test", 1, 100, "10.0.0.7" } };
  result_t r;
  SET_ZONE(zone);
  resolve_wait("www.example.test", 443, &r);
  assert_int_equal(r.status, 0);
  assert_int_equal(r.n, 1);
  assert_string_equal(r.addr[0], "10.0.0.7:443");
  fake_now += 19999;
  resolve_wait("www.example.test", 443, &r);
  assert_int_equal(fake.nq_a, 1);
  fake_now += 1;
  resolve_wait("www.example.test", 443, &r);
  assert_int_equal(fake.nq_a, 2);
}

static void nxdomain_fails_with_edns_and_is_cached_five_seconds(void **state) {
  result_t r;
  fake.rcode = 3;
  resolve_wait("missing.test", 443, &r);
  assert_int_equal(r.status, LLMUX_EDNS);
  assert_string_equal(r.reason, "NXDOMAIN");
  assert_int_equal(r.n, 0);
  assert_int_equal(fake.nq_a, 1);
  fake_now += 4999;
  resolve_wait("missing.test", 443, &r);
  assert_int_equal(r.status, LLMUX_EDNS);
  assert_int_equal(fake.nq_a, 1);
  fake_now += 1;
  resolve_wait("missing.test", 443, &r);
  assert_int_equal(fake.nq_a, 2);
}

static void servfail_is_an_error_and_not_cached(void **state) {
  result_t r;
  fake.rcode = 2;
  resolve_wait("broken.test", 443, &r);
  assert_int_equal(r.status, LLMUX_EDNS);
  assert_string_equal(r.reason, "server failure (SERVFAIL)");
  resolve_wait("broken.test", 443, &r);
  assert_int_equal(fake.nq_a, 2);
}

static void no_address_records_is_a_cached_error(void **state) {
  static const zrr_t zone[] = { { "other.test", 1, 300, "10.9.9.9" } };
  result_t r;
  SET_ZONE(zone);
  resolve_wait("empty.test", 443, &r);
  assert_int_equal(r.status, LLMUX_EDNS);
  assert_string_equal(r.reason, "no address records");
  resolve_wait("empty.test", 443, &r);
  assert_int_equal(fake.nq_a, 1);
}

static void forged_and_mismatched_answers_are_ignored(void **state) {
  static const zrr_t zone[] = { { "bank.test", 1, 60, "192.0.2.10" } };
  result_t r;
  SET_ZONE(zone);
  fake.decoys = 1;
  resolve_wait("bank.test", 443, &r);
  assert_int_equal(r.status, 0);
  assert_int_equal(r.n, 1);
  assert_string_equal(r.addr[0], "192.0.2.10:443");
}

static void compression_loop_is_a_malformed_answer(void **state) {
  result_t r;
  fake.pointer_loop = 1;
  resolve_wait("loop.test", 443, &r);
  assert_int_equal(r.status, LLMUX_EDNS);
  assert_string_equal(r.reason, "malformed answer");
}

static void lost_queries_are_retried_after_the_timeout(void **state) {
  static const zrr_t zone[] = { { "slow.test", 1, 60, "192.0.2.10" } };
  uint64_t start = uv_hrtime();
  result_t r;
  SET_ZONE(zone);
  fake.drop = 2; /* the first A and AAAA */
  resolve_wait("slow.test", 443, &r);
  assert_int_equal(r.status, 0);
  assert_string_equal(r.addr[0], "192.0.2.10:443");
  assert_int_equal(fake.nq_a, 2);
  assert_true(uv_hrtime() - start >= 90 * 1000000ULL); /* timeout_ms = 100 */
}

static void every_attempt_lost_fails_with_timed_out(void **state) {
  llmux_dns_options_t o = { 0 };
  result_t r;
  o.timeout_ms = 20;
  o.attempts = 3;
  o.no_system_fallback = 1;
  reopen(&o);
  fake.drop_all = 1;
  resolve_wait("dead.test", 443, &r);
  assert_int_equal(r.status, LLMUX_EDNS);
  assert_string_equal(r.reason, "timed out");
  assert_int_equal(fake.nq_a, 3);
  assert_int_equal(fake.nq_aaaa, 3);
}

static void concurrent_lookups_share_one_query(void **state) {
  static const zrr_t zone[] = { { "shared.test", 1, 60, "192.0.2.10" } };
  llmux_dns_req_t r1, r2;
  result_t a, b;
  SET_ZONE(zone);
  resolve(&r1, "shared.test", 443, &a);
  resolve(&r2, "SHARED.test", 80, &b);
  run_until(&b.done);
  run_until(&a.done);
  assert_string_equal(a.addr[0], "192.0.2.10:443");
  assert_string_equal(b.addr[0], "192.0.2.10:80");
  assert_int_equal(fake.nq_a, 1);
  assert_int_equal(fake.nq_aaaa, 1);
}

static void cancelled_lookup_never_calls_back_and_still_fills_the_cache(void **state) {
  static const zrr_t zone[] = { { "c.test", 1, 60, "192.0.2.10" } };
  llmux_dns_req_t r1, r2;
  result_t a, b;
  SET_ZONE(zone);
  resolve(&r1, "c.test", 443, &a);
  resolve(&r2, "c.test", 443, &b);
  assert_int_equal(llmux_dns_cancel(&r1), 0);
  assert_int_equal(llmux_dns_cancel(&r1), LLMUX_EINVAL);
  run_until(&b.done);
  assert_int_equal(b.status, 0);
  assert_int_equal(llmux_dns_cancel(&r2), LLMUX_EINVAL); /* already answered */

  resolve(&r1, "numeric-is-not-this.test", 1, &a);
  assert_int_equal(llmux_dns_cancel(&r1), 0);
  resolve(&r2, "192.0.2.99", 1, &b);
  assert_int_equal(llmux_dns_cancel(&r2), 0);
  run_for(50);
  assert_int_equal(a.done + b.done, 0);

  resolve_wait("c.test", 1, &a);
  assert_int_equal(fake.nq_a, 2); /* c.test once, the cancelled name once */
}

static llmux_dns_req_t chain_r2;
static result_t chain_b;

static void cancel_other(llmux_dns_req_t *req, int status,
                         const struct sockaddr_storage *addrs, size_t n) {
  on_resolved(req, status, addrs, n);
  assert_int_equal(llmux_dns_cancel(&chain_r2), 0);
}

static void cancel_from_another_callback_is_safe(void **state) {
  static const zrr_t zone[] = { { "x.test", 1, 60, "192.0.2.10" } };
  llmux_dns_req_t r1;
  result_t a;
  SET_ZONE(zone);
  memset(&a, 0, sizeof(a));
  assert_int_equal(llmux_dns_resolve(&dns, &r1, "x.test", 1, cancel_other, &a), 0);
  resolve(&chain_r2, "x.test", 1, &chain_b);
  run_until(&a.done);
  run_for(20);
  assert_int_equal(chain_b.done, 0);
}

static void closing_completes_pending_lookups_with_ecanceled(void **state) {
  llmux_dns_req_t r1, r2, r3;
  result_t a, b, c;
  fake.drop_all = 1;
  resolve(&r1, "pending.test", 443, &a);
  run_until(&fake.nq_aaaa);
  resolve(&r2, "192.0.2.1", 443, &b);
  llmux_dns_close(&dns, on_dns_closed);
  dns_open = 0;
  assert_int_equal(a.done, 1);
  assert_int_equal(a.status, LLMUX_ECANCELED);
  assert_int_equal(b.done, 1);
  assert_int_equal(b.status, LLMUX_ECANCELED);
  assert_int_equal(llmux_dns_resolve(&dns, &r3, "192.0.2.1", 1, on_resolved, &c),
                   LLMUX_ECANCELED);
  run_until(&dns_closed);
}

static void cache_is_bounded_least_recently_used_first(void **state) {
  static const zrr_t zone[] = { { "a.test", 1, 60, "192.0.2.1" },
                                { "b.test", 1, 60, "192.0.2.2" },
                                { "c.test", 1, 60, "192.0.2.3" } };
  llmux_dns_options_t o = { 0 };
  result_t r;
  o.max_entries = 2;
  o.no_system_fallback = 1;
  reopen(&o);
  SET_ZONE(zone);
  resolve_wait("a.test", 1, &r);
  resolve_wait("b.test", 1, &r);
  resolve_wait("a.test", 1, &r); /* a is now the most recent */
  assert_int_equal(fake.nq_a, 2);
  resolve_wait("c.test", 1, &r); /* evicts b */
  assert_int_equal(fake.nq_a, 3);
  resolve_wait("a.test", 1, &r);
  assert_int_equal(fake.nq_a, 3);
  resolve_wait("b.test", 1, &r);
  assert_int_equal(fake.nq_a, 4);
  assert_string_equal(r.addr[0], "192.0.2.2:1");
}

static void failed_refresh_reuses_the_previous_answer(void **state) {
  static const zrr_t zone[] = { { "flaky.test", 1, 1, "192.0.2.10" } };
  llmux_dns_options_t o = { 0 };
  result_t r;
  o.timeout_ms = 20;
  o.attempts = 1;
  o.no_system_fallback = 1;
  reopen(&o);
  SET_ZONE(zone);
  resolve_wait("flaky.test", 1, &r);
  fake_now += 2000;
  fake.drop_all = 1;
  resolve_wait("flaky.test", 1, &r);
  assert_int_equal(r.status, 0);
  assert_string_equal(r.addr[0], "192.0.2.10:1");
  assert_int_equal(fake.nq_a, 2);
}

static int other_closed;
static void on_other_closed(llmux_dns_t *d) { other_closed = 1; }

static void close_other(llmux_dns_t *d) {
  other_closed = 0;
  llmux_dns_close(d, on_other_closed);
  run_until(&other_closed);
}

static void nameserver_option_and_resolv_conf_are_parsed(void **state) {
  llmux_dns_options_t o = { 0 };
  llmux_dns_t d;
  write_temp(resolv_path, "# comment\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n"
                          "nameserver fe80::1%eth0\nsearch corp.test\n"
                          "options ndots:2 timeout:3 attempts:4 rotate\n");
  o.resolv_conf = resolv_path;
  o.hosts_file = "";
  assert_int_equal(llmux_dns_init(&loop, &d, &o), 0);
  assert_int_equal(d.nns, 2);
  assert_int_equal(d.ns[1].ss_family, AF_INET6);
  assert_int_equal(d.timeout_ms, 3000);
  assert_int_equal(d.attempts, 4);
  assert_int_equal(d.ndots, 2);
  assert_int_equal(d.has_search, 1);
  close_other(&d);

  o.nameserver = "[::1]:5353, 127.0.0.1:53";
  assert_int_equal(llmux_dns_init(&loop, &d, &o), 0);
  assert_int_equal(d.nns, 2);
  assert_int_equal(ntohs(((struct sockaddr_in6 *)&d.ns[0])->sin6_port), 5353);
  assert_int_equal(d.ns[1].ss_family, AF_INET);
  close_other(&d);

  o.nameserver = "dns.example:53";
  assert_int_equal(llmux_dns_init(&loop, &d, &o), LLMUX_EINVAL);
  o.nameserver = "127.0.0.1:99999";
  assert_int_equal(llmux_dns_init(&loop, &d, &o), LLMUX_EINVAL);
}

static void without_nameservers_getaddrinfo_answers(void **state) {
  llmux_dns_options_t o = { 0 };
  result_t r;
  write_temp(resolv_path, "# no nameserver\n");
  o.resolv_conf = resolv_path;
  reopen(&o); /* fallback allowed; hosts_file "" so the system answers */
  assert_int_equal(dns.nns, 0);
  resolve_wait("localhost", 8, &r);
  assert_int_equal(r.status, 0);
  assert_true(r.n >= 1);
  assert_true(strcmp(r.addr[0], "127.0.0.1:8") == 0 || strcmp(r.addr[0], "[::1]:8") == 0);
  assert_int_equal(fake.total, 0);
}

static void truncated_answer_uses_the_records_that_arrived(void **state) {
  static const zrr_t zone[] = { { "big.test", 1, 60, "192.0.2.10" } };
  result_t r;
  SET_ZONE(zone);
  fake.truncated = 1;
  resolve_wait("big.test", 1, &r);
  assert_int_equal(r.status, 0);
  assert_string_equal(r.addr[0], "192.0.2.10:1");
}

static void no_nameserver_and_no_fallback_fails_through_the_callback(void **state) {
  llmux_dns_options_t o = { 0 };
  result_t r;
  write_temp(resolv_path, "search corp.test\n");
  o.resolv_conf = resolv_path;
  o.no_system_fallback = 1;
  reopen(&o);
  resolve_wait("api.example.test", 443, &r);
  assert_int_equal(r.status, LLMUX_EDNS);
  assert_string_equal(r.reason, "no nameserver");
}

static void closing_during_getaddrinfo_waits_for_it(void **state) {
  llmux_dns_options_t o = { 0 };
  llmux_dns_req_t req;
  result_t r;
  write_temp(resolv_path, "\n");
  o.resolv_conf = resolv_path;
  reopen(&o);
  resolve(&req, "localhost", 1, &r);
  close_dns(); /* teardown then asserts uv_loop_close() == 0 */
  assert_int_equal(r.done, 1);
  assert_int_equal(r.status, LLMUX_ECANCELED);
}

int main(void) {
  const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    T(numeric_addresses_answer_without_a_query),
    T(malformed_hosts_are_rejected_synchronously),
    T(localhost_and_names_come_from_the_hosts_file),
    T(localhost_is_loopback_without_a_hosts_file),
    T(a_answer_is_cached_for_its_ttl_then_queried_again),
    T(ttls_are_clamped_to_one_second_and_one_hour),
    T(aaaa_answers_give_ipv6_addresses_in_order),
    T(ipv4_addresses_come_before_ipv6),
    T(cname_chain_is_followed_with_the_smallest_ttl),
    T(nxdomain_fails_with_edns_and_is_cached_five_seconds),
    T(servfail_is_an_error_and_not_cached),
    T(no_address_records_is_a_cached_error),
    T(forged_and_mismatched_answers_are_ignored),
    T(compression_loop_is_a_malformed_answer),
    T(lost_queries_are_retried_after_the_timeout),
    T(every_attempt_lost_fails_with_timed_out),
    T(concurrent_lookups_share_one_query),
    T(cancelled_lookup_never_calls_back_and_still_fills_the_cache),
    T(cancel_from_another_callback_is_safe),
    T(closing_completes_pending_lookups_with_ecanceled),
    T(cache_is_bounded_least_recently_used_first),
    T(failed_refresh_reuses_the_previous_answer),
    T(nameserver_option_and_resolv_conf_are_parsed),
    T(without_nameservers_getaddrinfo_answers),
    T(truncated_answer_uses_the_records_that_arrived),
    T(no_nameserver_and_no_fallback_fails_through_the_callback),
    T(closing_during_getaddrinfo_waits_for_it),
#undef T
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
