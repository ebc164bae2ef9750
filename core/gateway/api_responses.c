/* POST /v1/responses, GET / DELETE /v1/responses/{id} and GET
 * /v1/responses/{id}/input_items (issue 15).
 *
 * POST goes through the proxy like chat (resolution, tenants, limits,
 * failover) with the Responses inbound format (inbound_responses.c); what
 * this file adds is the stored side: the response's id, the record that
 * previous_response_id names, looked up before the proxy starts (from
 * memory at once, or from Redis or the database: the request waits off the
 * loop), and the save of the finished response.
 *
 * Records are per tenant: a tenant's lookups see only its own (the key is
 * the tenant's name and the id; "" when llmux runs open), and someone
 * else's id is as unknown as one never made. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "base/json_scan.h"
#include "base/log.h"
#include "base/util.h"
#include "gateway/api.h"
#include "gateway/generation.h"
#include "gateway/inbound.h"
#include "gateway/proxy.h"
#include "gateway/reqlog.h"
#include "gateway/responses_store.h"

#define PREFIX "/v1/responses/"
#define PREFIX_LEN 14
#define MAX_ID 200
#define ITEMS_SUFFIX "/input_items"
#define ITEMS_SUFFIX_LEN 12

enum { OP_CREATE, OP_GET, OP_DELETE, OP_ITEMS };

/* The format's argument: where a finished response is kept. */
typedef struct resp_arg_s {
  llmux_inbound_responses_arg_t base;
  llmux_gateway_t *gw;
  char tenant[];
} resp_arg_t;

/* A request waiting for the database. */
typedef struct pending_s {
  llmux_gateway_t *gw;
  llmux_http_req_t *req;     /* NULL once the client went away */
  llmux_generation_t *gen;   /* pinned: the tenant is one of its */
  llmux_proxy_opts_t po;
  llmux_reqlog_t rec;
  int op;
  char rid[160];
  char id[MAX_ID];
  resp_arg_t *arg;           /* OP_CREATE, until the proxy takes it */
  llmux_buf_t found;
  /* OP_ITEMS: the page asked for */
  size_t limit;
  int asc;
  char after[MAX_ID];
} pending_t;

static const char *tenant_name(const llmux_proxy_opts_t *po) {
  return po->tenant != NULL ? po->tenant->conf->name : "";
}

/* ---- the argument ---------------------------------------------------------- */

static void arg_save(llmux_inbound_responses_arg_t *a, const char *id, const char *record,
                     size_t len) {
  resp_arg_t *ra = (resp_arg_t *)a;
  int rc;
  if (ra->gw->responses == NULL) return;
  rc = llmux_responses_put(ra->gw->responses, ra->tenant, id, record, len);
  if (rc != 0)
    llmux_warn("response %s not stored: %s", id, rc == LLMUX_ETOOLARGE
                                                     ? "larger than responses_max_memory"
                                                     : llmux_strerror(rc));
}

static void arg_release(llmux_inbound_responses_arg_t *a) {
  free(a->prior);
  free(a);
}

/* "resp_" and 48 hex digits from the kernel's generator: an id is all it
 * takes to read a response when llmux runs open, so it is not guessable. */
static void new_id(char *out, size_t cap) {
  unsigned char r[24];
  size_t i, n = 0;
  if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
    uint64_t x = llmux_now_us() ^ (uint64_t)(uintptr_t)out;
    for (i = 0; i < sizeof r; i++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      r[i] = (unsigned char)x;
    }
  }
  n = (size_t)snprintf(out, cap, "resp_");
  for (i = 0; i < sizeof r && n + 2 < cap; i++) n += (size_t)snprintf(out + n, cap - n, "%02x", r[i]);
}

static resp_arg_t *arg_new(llmux_gateway_t *gw, const char *tenant) {
  size_t n = strlen(tenant) + 1;
  resp_arg_t *a = calloc(1, sizeof *a + n);
  if (a == NULL) return NULL;
  memcpy(a->tenant, tenant, n);
  a->gw = gw;
  a->base.save = arg_save;
  a->base.release = arg_release;
  new_id(a->base.id, sizeof a->base.id);
  return a;
}

/* ---- answers ----------------------------------------------------------------- */

static void send_json(llmux_http_req_t *req, int status, llmux_buf_t *body, const char *rid) {
  llmux_http_header_t h[2] = {{{"Content-Type", 12}, {"application/json", 16}},
                              {{"x-request-id", 12}, {rid, strlen(rid)}}};
  llmux_http_respond_buf(req, status, h, 2, body);
}

/* The answer, which finishes (and frees) the request. */
static void respond_pd(pending_t *pd, int status, llmux_buf_t *b) {
  llmux_http_req_t *req = pd->req;
  pd->req = NULL;
  req->data = NULL;
  req->on_abort = NULL;
  pd->rec.status = status;
  send_json(req, status, b, pd->rid);
}

static void send_error(pending_t *pd, int status, const char *code, const char *param,
                       const char *msg) {
  llmux_buf_t b = {0};
  llmux_http_error_json(&b, status >= 500 ? "server_error" : "invalid_request_error", code, msg,
                        param);
  pd->rec.error_code = code ? code : "not_found";
  respond_pd(pd, status, &b);
}

/* ---- the pending request ------------------------------------------------------- */

static void pending_free(pending_t *pd) {
  if (pd->arg != NULL) arg_release(&pd->arg->base);
  llmux_buf_free(&pd->found);
  llmux_generation_unref(pd->gen);
  free(pd);
}

/* The request is answered here (not by the proxy): its record ends. */
static void pending_done(pending_t *pd) {
  llmux_reqlog_done(pd->gw, &pd->rec);
  pending_free(pd);
}

static void on_abort(llmux_http_req_t *req) {
  pending_t *pd = req->data;
  pd->req = NULL;
  pd->rec.status = 499;
  pd->rec.error_code = "client_closed";
  llmux_reqlog_done(pd->gw, &pd->rec); /* ended: the lookup's answer frees pd */
}

/* POST, the lookup done: into the proxy, which takes the argument and the
 * record. */
static void create_go(pending_t *pd) {
  llmux_proxy_opts_t po = pd->po;
  if (pd->found.len > 0) {
    pd->arg->base.prior = pd->found.base;
    pd->arg->base.prior_len = pd->found.len;
    pd->found = (llmux_buf_t){0};
  }
  po.inbound_arg = pd->arg;
  po.rec = &pd->rec;
  po.gen = pd->gen;
  pd->arg = NULL;
  pd->req->data = NULL;
  pd->req->on_abort = NULL;
  llmux_proxy_handle_opts(pd->gw, pd->req, &po);
  pending_free(pd);
}

static void prev_not_found(pending_t *pd) {
  char msg[MAX_ID + 64];
  snprintf(msg, sizeof msg, "Previous response with id '%s' not found.", pd->id);
  send_error(pd, 400, LLMUX_RESPONSES_PREV_NOT_FOUND, "previous_response_id", msg);
  pending_done(pd);
}

static void not_found(pending_t *pd) {
  char msg[MAX_ID + 64];
  snprintf(msg, sizeof msg, "Response with id '%s' not found.", pd->id);
  send_error(pd, 404, NULL, NULL, msg);
  pending_done(pd);
}

/* GET: the stored response object. */
static void get_found(pending_t *pd) {
  json_t *rec = json_loadb(pd->found.base, pd->found.len, 0, NULL);
  char *text = json_dumps(json_object_get(rec, "response"), JSON_COMPACT | JSON_REAL_PRECISION(17));
  llmux_buf_t b = {0};
  json_decref(rec);
  if (text == NULL) {
    send_error(pd, 500, "internal_error", NULL, "The stored response could not be read.");
  } else {
    llmux_buf_appends(&b, text);
    respond_pd(pd, 200, &b);
  }
  free(text);
  pending_done(pd);
}

static void delete_found(pending_t *pd) {
  llmux_buf_t b = {0};
  if (pd->gw->responses != NULL)
    llmux_responses_delete(pd->gw->responses, tenant_name(&pd->po), pd->id);
  llmux_buf_appends(&b, "{\"id\":");
  llmux_buf_append_json_str(&b, pd->id, strlen(pd->id));
  llmux_buf_appends(&b, ",\"object\":\"response\",\"deleted\":true}");
  respond_pd(pd, 200, &b);
  pending_done(pd);
}

/* ---- input_items ---------------------------------------------------------------- */

static int hexval(char c) {
  return c >= '0' && c <= '9' ? c - '0'
         : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                : -1;
}

/* The value of `name` in a query string, percent-decoded into out. 1 if
 * present, 0 if not, -1 if too long. */
static int query_get(llmux_str_t q, const char *name, char *out, size_t cap) {
  size_t nl = strlen(name), i = 0;
  while (i < q.len) {
    size_t end = i, o = 0;
    while (end < q.len && q.base[end] != '&') end++;
    if (end - i > nl && memcmp(q.base + i, name, nl) == 0 && q.base[i + nl] == '=') {
      for (i += nl + 1; i < end; i++) {
        char c = q.base[i];
        int hi, lo;
        if (c == '+') c = ' ';
        else if (c == '%' && i + 2 < end && (hi = hexval(q.base[i + 1])) >= 0 &&
                 (lo = hexval(q.base[i + 2])) >= 0)
          c = (char)(hi << 4 | lo), i += 2;
        if (o + 1 >= cap) return -1;
        out[o++] = c;
      }
      out[o] = '\0';
      return 1;
    }
    i = end + 1;
  }
  return 0;
}

/* limit, order and after; 0, or -1 with the 400 sent. */
static int items_query(pending_t *pd, const llmux_http_req_t *req) {
  char v[MAX_ID], *end;
  long n;
  int rc;
  pd->limit = 20;
  if ((rc = query_get(req->query, "limit", v, sizeof v)) != 0) {
    n = rc > 0 ? strtol(v, &end, 10) : 0;
    if (rc < 0 || *v == '\0' || *end != '\0' || n < 1 || n > 100) {
      send_error(pd, 400, "invalid_value", "limit",
                 "Invalid 'limit': expected an integer between 1 and 100.");
      return -1;
    }
    pd->limit = (size_t)n;
  }
  if ((rc = query_get(req->query, "order", v, sizeof v)) != 0) {
    if (rc < 0 || (strcmp(v, "asc") != 0 && strcmp(v, "desc") != 0)) {
      send_error(pd, 400, "invalid_value", "order",
                 "Invalid 'order': expected one of 'asc' or 'desc'.");
      return -1;
    }
    pd->asc = strcmp(v, "asc") == 0;
  }
  if (query_get(req->query, "after", pd->after, sizeof pd->after) < 0) pd->after[0] = '\0';
  return 0;
}

/* An input item as OpenAI lists it: a message has its type, its content
 * as parts; an item without an id gets one, the same at every listing (the
 * response's id and the item's place). */
static json_t *list_item(const json_t *item, const char *rid, size_t i) {
  json_t *it = json_deep_copy(item), *role = json_object_get(it, "role");
  json_t *content = json_object_get(it, "content");
  const char *type = json_string_value(json_object_get(it, "type"));
  char id[MAX_ID + 48];
  if (!json_is_object(it)) return it;
  if (type == NULL && json_is_string(role)) {
    json_object_set_new(it, "type", json_string("message"));
    type = "message";
  }
  if (type != NULL && strcmp(type, "message") == 0 && json_is_string(content)) {
    const char *kind = strcmp(json_string_value(role), "assistant") == 0 ? "output_text"
                                                                          : "input_text";
    json_object_set_new(it, "content",
                        json_pack("[{s:s,s:O}]", "type", kind, "text", content));
  }
  if (!json_is_string(json_object_get(it, "id"))) {
    snprintf(id, sizeof id, "%s_%s_%zu",
             type == NULL || strcmp(type, "message") == 0 ? "msg"
             : strcmp(type, "function_call") == 0         ? "fc"
                                                          : "item",
             strncmp(rid, "resp_", 5) == 0 ? rid + 5 : rid, i);
    json_object_set_new(it, "id", json_string(id));
  }
  return it;
}

/* The page: items of the record's input in the order asked, after `after`. */
static json_t *items_page(const pending_t *pd, const json_t *input) {
  json_t *data = json_array(), *page, *it;
  size_t n = json_array_size(input), k, start = 0, taken = 0;
  int more = 0;
  json_t **all = n ? calloc(n, sizeof *all) : NULL;
  const char *id;
  for (k = 0; k < n && (all != NULL); k++) {
    size_t i = pd->asc ? k : n - 1 - k;
    all[k] = list_item(json_array_get(input, i), pd->id, i);
    id = json_string_value(json_object_get(all[k], "id"));
    if (pd->after[0] && start == 0 && id != NULL && strcmp(id, pd->after) == 0) start = k + 1;
  }
  if (pd->after[0] && start == 0) start = n; /* an unknown cursor: nothing after it */
  for (k = 0; k < n && all != NULL; k++) {
    if (k >= start && taken < pd->limit) {
      json_array_append(data, all[k]);
      taken++;
    } else if (k >= start) {
      more = 1;
    }
    json_decref(all[k]);
  }
  free(all);
  it = json_array_size(data) ? json_array_get(data, 0) : NULL;
  page = json_pack("{s:s,s:o,s:O,s:O,s:b}", "object", "list", "data", data, "first_id",
                   it ? json_object_get(it, "id") : json_null(), "last_id",
                   it ? json_object_get(json_array_get(data, json_array_size(data) - 1), "id")
                      : json_null(),
                   "has_more", more);
  return page;
}

static void items_found(pending_t *pd) {
  json_t *rec = json_loadb(pd->found.base, pd->found.len, 0, NULL), *page;
  char *text = NULL;
  llmux_buf_t b = {0};
  if (json_is_array(json_object_get(rec, "input"))) {
    page = items_page(pd, json_object_get(rec, "input"));
    text = json_dumps(page, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(page);
  }
  json_decref(rec);
  if (text == NULL) {
    send_error(pd, 500, "internal_error", NULL, "The stored response could not be read.");
  } else {
    llmux_buf_appends(&b, text);
    respond_pd(pd, 200, &b);
  }
  free(text);
  pending_done(pd);
}

/* The lookup's answer, at once or from the database. */
static void looked_up(pending_t *pd, int rc) {
  if (pd->req == NULL) { /* the client left: nothing to answer */
    pending_free(pd);
    return;
  }
  if (rc != 0 && rc != LLMUX_ENOTFOUND) {
    send_error(pd, 500, "server_error", NULL, "The stored responses could not be read.");
    pending_done(pd);
    return;
  }
  switch (pd->op) {
    case OP_CREATE: return rc == 0 ? create_go(pd) : prev_not_found(pd);
    case OP_GET: return rc == 0 ? get_found(pd) : not_found(pd);
    case OP_ITEMS: return rc == 0 ? items_found(pd) : not_found(pd);
    default: return rc == 0 ? delete_found(pd) : not_found(pd);
  }
}

static void on_db(void *arg, int rc, const char *record, size_t len) {
  pending_t *pd = arg;
  if (rc == 0 && llmux_buf_append(&pd->found, record, len) != 0) rc = LLMUX_ENOMEM;
  looked_up(pd, rc);
}

static void look_up(pending_t *pd) {
  int rc = pd->gw->responses == NULL
               ? LLMUX_ENOTFOUND
               : llmux_responses_get(pd->gw->responses, tenant_name(&pd->po), pd->id, &pd->found,
                                     on_db, pd);
  if (rc == LLMUX_EAGAIN) {
    pd->req->data = pd;
    pd->req->on_abort = on_abort;
    return;
  }
  looked_up(pd, rc);
}

/* ---- entry -------------------------------------------------------------------- */

/* previous_response_id, when the body has one as a string; -1: the body
 * is not for this check (not JSON, or the id not a sane string): the
 * format refuses it with the right words. */
static int prev_id(const llmux_http_req_t *req, char *out, size_t cap) {
  llmux_json_field_t f[] = {{"previous_response_id"}};
  if (llmux_json_scan(req->body.base, req->body.len, f, 1, NULL, NULL) != 0 ||
      f[0].type != LLMUX_JSON_STRING || f[0].count != 1)
    return -1;
  return llmux_json_unquote(f[0].value, out, cap) == 0 && *out ? 0 : -1;
}

static void method_not_allowed(llmux_http_req_t *req, const char *rid, int items) {
  char msg[160];
  const char *allow = items ? "GET" : "GET, DELETE";
  llmux_http_header_t h[3] = {{{"Content-Type", 12}, {"application/json", 16}},
                              {{"Allow", 5}, {allow, strlen(allow)}},
                              {{"x-request-id", 12}, {rid, strlen(rid)}}};
  llmux_buf_t b = {0};
  snprintf(msg, sizeof msg, "Method %s is not allowed on /v1/responses/{id}%s: use %s.",
           req->method, items ? ITEMS_SUFFIX : "", items ? "GET" : "GET or DELETE");
  llmux_http_error_json(&b, "invalid_request_error", "method_not_allowed", msg, NULL);
  llmux_http_respond_buf(req, 405, h, 3, &b);
}

int llmux_api_responses(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid,
                        const llmux_proxy_opts_t *po, llmux_reqlog_t *rec) {
  int item = req->path.len > PREFIX_LEN && memcmp(req->path.base, PREFIX, PREFIX_LEN) == 0;
  size_t idlen = item ? req->path.len - PREFIX_LEN : 0;
  int items = idlen > ITEMS_SUFFIX_LEN &&
              memcmp(req->path.base + req->path.len - ITEMS_SUFFIX_LEN, ITEMS_SUFFIX,
                     ITEMS_SUFFIX_LEN) == 0;
  pending_t *pd;
  if (!item && strcmp(req->method, "POST") != 0) return -1;
  if (items) idlen -= ITEMS_SUFFIX_LEN;
  if (item && strcmp(req->method, "GET") != 0 && (items || strcmp(req->method, "DELETE") != 0)) {
    method_not_allowed(req, rid, items);
    rec->status = 405;
    llmux_reqlog_done(gw, rec);
    return 0;
  }
  if ((pd = calloc(1, sizeof *pd)) == NULL) {
    llmux_http_send_error(req, 503, "server_error", "out_of_memory", "Out of memory.", NULL);
    rec->status = 503;
    llmux_reqlog_done(gw, rec);
    return 0;
  }
  pd->gw = gw;
  pd->req = req;
  pd->gen = llmux_generation_ref(gw->current);
  pd->po = *po;
  pd->rec = *rec;
  snprintf(pd->rid, sizeof pd->rid, "%s", rid);
  pd->rec.request_id = pd->rid;
  if (item) {
    pd->op = items ? OP_ITEMS : strcmp(req->method, "GET") == 0 ? OP_GET : OP_DELETE;
    if (idlen >= MAX_ID || memchr(req->path.base + PREFIX_LEN, '/', idlen) != NULL) {
      snprintf(pd->id, sizeof pd->id, "%.*s", (int)(idlen > 100 ? 100 : idlen),
               req->path.base + PREFIX_LEN);
      not_found(pd);
      return 0;
    }
    memcpy(pd->id, req->path.base + PREFIX_LEN, idlen);
    if (items && items_query(pd, req) != 0) {
      pending_done(pd);
      return 0;
    }
    look_up(pd);
    return 0;
  }
  pd->op = OP_CREATE;
  if ((pd->arg = arg_new(gw, tenant_name(po))) == NULL) {
    send_error(pd, 503, "out_of_memory", NULL, "Out of memory.");
    pending_done(pd);
    return 0;
  }
  if (prev_id(req, pd->id, sizeof pd->id) != 0) {
    create_go(pd);
    return 0;
  }
  look_up(pd);
  return 0;
}
