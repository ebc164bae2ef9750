#define _GNU_SOURCE
/* `llmux chat` and the provider listing of `llmux models`: the command
 * line as a client.
 *
 * chat runs the real gateway (core/server.h) on a private loop, bound to
 * 127.0.0.1 on an ephemeral port, and sends it one request with the
 * upstream client, so a prompt takes exactly the path a served request
 * takes: registry, router, rate limits, plugins, failover and the same
 * error answers, which are the troubleshooting text we print. Everything
 * runs on one loop, and every handle is closed before we return. */
#include "cli/chat.h"
#include "cli/common.h"

#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <uv.h>

#include "base/log.h"
#include "config/registry.h"
#include "gateway/server.h"
#include "base/util.h"

/* A profile rather than one model: it fails over across providers. */
#define DEFAULT_CHAT_MODEL "balanced"
/* The offline provider: --embed works with no key and no network. */
#define DEFAULT_EMBED_MODEL "simple-embed"
#define ANSWER_MAX (16u << 20)
#define PREVIEW_VALUES 8

static const char chat_usage[] =
  "Usage: llmux chat [OPTIONS] PROMPT...\n"
  "\n"
  "Sends one request through the configured providers (no server needed) and\n"
  "streams the answer to stdout. Reads the prompt from stdin when none is given.\n"
  "\n"
  "Options:\n"
  "  -m, --model NAME      model, alias, generic, profile or agent (env LLMUX_MODEL;\n"
  "                        default " DEFAULT_CHAT_MODEL ", or " DEFAULT_EMBED_MODEL
  " with --embed;\n"
  "                        with no API key set, the shipped " DEFAULT_CHAT_MODEL "\n"
  "                        falls back to the local Ollama)\n"
  "  -p, --provider NAME   use only this provider (env LLMUX_PROVIDER); it must\n"
  "                        serve the model\n"
  "  -n, --max-tokens N    cap the answer's length\n"
  "  -e, --embed           ask for an embedding of PROMPT and print its dimension\n"
  "                        and first values\n"
  "  -v, --verbose         show the route taken and the timings on stderr\n"
  "  -c, --config FILE     main configuration file (env LLMUX_CONFIG)\n"
  "  -h, --help            this text\n"
  "\n"
  "Examples:\n"
  "  llmux chat 'Say hello'\n"
  "  llmux chat -m llama3.1 --provider ollama --verbose 'Why is the sky blue?'\n"
  "  llmux chat --embed 'some text'\n";

typedef struct chat_opts_s {
  const char *config_path;
  const char *model;
  const char *provider;   /* NULL: every enabled provider */
  uint64_t max_tokens;    /* 0: not sent */
  int embed;
  int verbose;
  llmux_buf_t prompt;
} chat_opts_t;

typedef struct chat_s {
  const chat_opts_t *o;
  uv_loop_t loop;
  llmux_gateway_t gw;
  llmux_upstream_req_t req;
  llmux_buf_t body;          /* the request we send */
  uv_buf_t iov;
  int status;                /* the gateway's HTTP status */
  int stream;                /* its answer is an event stream */
  llmux_buf_t line;          /* stream: an unfinished line */
  llmux_buf_t resp;          /* otherwise: the whole body */
  int saw_done;
  int printed;               /* content bytes written to stdout */
  char last;                 /* the last of them */
  llmux_buf_t stream_error;  /* an error event inside the stream */
  char provider[128], model[256], attempts[16], overhead[24];
  uint64_t t_start, t_head, t_first, t_end;
  int rc;
} chat_t;

/* ---- options ------------------------------------------------------------- */

static int read_stdin(llmux_buf_t *out) {
  char chunk[4096];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0)
    if (llmux_buf_append(out, chunk, n) != 0) return LLMUX_ENOMEM;
  while (out->len > 0 && (out->base[out->len - 1] == '\n' || out->base[out->len - 1] == '\r'))
    out->len--;
  return 0;
}

/* Returns -1 to go on, else the exit status (0 after --help). */
static int parse_opts(int argc, char **argv, chat_opts_t *o) {
  static const struct option longopts[] = {
    {"model", required_argument, NULL, 'm'},      {"provider", required_argument, NULL, 'p'},
    {"max-tokens", required_argument, NULL, 'n'}, {"embed", no_argument, NULL, 'e'},
    {"verbose", no_argument, NULL, 'v'},          {"config", required_argument, NULL, 'c'},
    {"help", no_argument, NULL, 'h'},             {NULL, 0, NULL, 0},
  };
  const char *env;
  int c, i;
  memset(o, 0, sizeof *o);
  optind = 0; /* GNU: a full reset, argv[0] is "chat" */
  while ((c = getopt_long(argc, argv, "m:p:n:evc:h", longopts, NULL)) != -1) {
    switch (c) {
      case 'm': o->model = optarg; break;
      case 'p': o->provider = optarg; break;
      case 'n':
        if (llmux_parse_u64(optarg, &o->max_tokens) != 0 || o->max_tokens == 0) {
          fprintf(stderr, "llmux chat: --max-tokens wants a positive integer, not '%s'\n",
                  optarg);
          return 2;
        }
        break;
      case 'e': o->embed = 1; break;
      case 'v': o->verbose = 1; break;
      case 'c': o->config_path = optarg; break;
      case 'h': fputs(chat_usage, stdout); return 0;
      default: fputs("Try 'llmux chat --help'.\n", stderr); return 2;
    }
  }
  for (i = optind; i < argc; i++)
    llmux_buf_printf(&o->prompt, "%s%s", i > optind ? " " : "", argv[i]);
  if (o->prompt.len == 0 && !isatty(STDIN_FILENO)) read_stdin(&o->prompt);
  if (o->prompt.len == 0) {
    fputs("llmux chat: what should I ask? e.g. `llmux chat 'Say hello'`\n", stderr);
    return 2;
  }
  env = getenv("LLMUX_MODEL");
  if (o->model == NULL && !o->embed && env && *env) o->model = env;
  if (o->model == NULL) o->model = o->embed ? DEFAULT_EMBED_MODEL : DEFAULT_CHAT_MODEL;
  env = getenv("LLMUX_PROVIDER");
  if (o->provider == NULL && env && *env) o->provider = env;
  o->config_path = llmux_cli_config_path(o->config_path);
  return -1;
}

/* ---- configuration ------------------------------------------------------- */

/* --provider: the provider must exist and serve the model; every other
 * provider is then disabled in this process's snapshot, so the router
 * skips its routes and the final error names the reason. */
static int select_provider(llmux_config_t *cfg, const chat_opts_t *o) {
  llmux_resolution_t res;
  llmux_buf_t names = {0};
  size_t i;
  int serves = 0;
  if (llmux_config_find_provider(cfg, o->provider) == NULL) {
    for (i = 0; i < cfg->nproviders; i++)
      llmux_buf_printf(&names, "%s%s", i ? ", " : "", cfg->providers[i]->name);
    fprintf(stderr, "llmux chat: no provider '%s' in %s (providers: %s)\n", o->provider,
            o->config_path, names.len ? names.base : "none");
    llmux_buf_free(&names);
    return 1;
  }
  /* An unknown model is left to the gateway: its 404 suggests names. */
  if (llmux_resolve(cfg, o->model, &res) == 0) {
    for (i = 0; i < res.nroutes; i++) {
      if (strcmp(res.routes[i]->provider->name, o->provider) == 0) serves = 1;
      else if (!strstr(names.base ? names.base : "", res.routes[i]->provider->name))
        llmux_buf_printf(&names, "%s%s", names.len ? ", " : "", res.routes[i]->provider->name);
    }
    if (!serves) {
      fprintf(stderr, "llmux chat: provider '%s' does not serve model '%s'%s%s%s\n",
              o->provider, o->model, names.len ? " (served by: " : "",
              names.len ? names.base : "", names.len ? ")" : "");
      llmux_buf_free(&names);
      return 1;
    }
  }
  llmux_buf_free(&names);
  for (i = 0; i < cfg->nproviders; i++) {
    llmux_provider_conf_t *p = cfg->providers[i];
    if (strcmp(p->name, o->provider) == 0 || !p->enabled) continue;
    p->enabled = 0;
    p->disabled_reason = "not selected by --provider";
  }
  return 0;
}

static int load(const chat_opts_t *o, llmux_config_t **cfg, llmux_providers_t *provs,
                char **plugin_dir) {
  llmux_diag_t diag;
  int rc;
  llmux_diag_init(&diag);
  memset(provs, 0, sizeof *provs);
  *cfg = NULL;
  *plugin_dir = NULL;
  rc = llmux_config_load(o->config_path, cfg, &diag);
  if (rc == 0 && o->provider != NULL && select_provider(*cfg, o) != 0) {
    llmux_config_free(*cfg);
    llmux_diag_free(&diag);
    return 1;
  }
  if (rc == 0) {
    *plugin_dir = llmux_cli_plugin_dir(*cfg);
    rc = llmux_providers_build(provs, *cfg, *plugin_dir,
                               LLMUX_PROVIDERS_CREATE | LLMUX_PROVIDERS_TLS, &diag);
  }
  llmux_cli_print_diag(&diag, o->verbose);
  if (rc != 0) {
    fprintf(stderr, "llmux: %zu error%s in the configuration (%s)\n", diag.errors,
            diag.errors == 1 ? "" : "s", o->config_path);
    if (*cfg) {
      llmux_providers_free(provs);
      llmux_config_free(*cfg);
    }
    free(*plugin_dir);
  }
  llmux_diag_free(&diag);
  return rc == 0 ? 0 : 1;
}

/* ---- the answer ------------------------------------------------------------ */

static double ms_since(uint64_t from, uint64_t to) {
  return from && to >= from ? (double)(to - from) / 1000.0 : 0;
}

static void write_content(chat_t *c, const char *s, size_t n) {
  if (n == 0) return;
  if (c->printed == 0) c->t_first = llmux_now_us();
  fwrite(s, 1, n, stdout);
  fflush(stdout);
  c->printed = 1;
  c->last = s[n - 1];
}

/* One `data:` payload of the stream. */
static void on_event(chat_t *c, const char *data, size_t len) {
  json_t *ev, *err, *content;
  if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
    c->saw_done = 1;
    return;
  }
  ev = json_loadb(data, len, 0, NULL);
  if (ev == NULL) return;
  err = json_object_get(ev, "error");
  if (err != NULL) {
    const char *msg = json_string_value(json_object_get(err, "message"));
    c->stream_error.len = 0;
    llmux_buf_appends(&c->stream_error, msg ? msg : "the stream ended with an error");
  }
  content = json_object_get(
      json_object_get(json_array_get(json_object_get(ev, "choices"), 0), "delta"), "content");
  if (json_is_string(content))
    write_content(c, json_string_value(content), json_string_length(content));
  json_decref(ev);
}

/* Splits the stream into lines and hands each `data:` line on; blank
 * lines, comments and other fields carry nothing we print. */
static void feed_stream(chat_t *c, const char *data, size_t len) {
  char *nl;
  if (llmux_buf_append(&c->line, data, len) != 0) return;
  while (c->line.len > 0 && (nl = memchr(c->line.base, '\n', c->line.len)) != NULL) {
    size_t n = (size_t)(nl - c->line.base), skip = 5;
    if (n > 0 && c->line.base[n - 1] == '\r') n--;
    if (n >= 5 && memcmp(c->line.base, "data:", 5) == 0) {
      if (n > 5 && c->line.base[5] == ' ') skip = 6;
      on_event(c, c->line.base + skip, n - skip);
    }
    llmux_buf_consume(&c->line, (size_t)(nl - c->line.base) + 1);
  }
}

static void copy_header(char *dst, size_t cap, const llmux_str_t *v) {
  size_t n = v->len < cap - 1 ? v->len : cap - 1;
  memcpy(dst, v->base, n);
  dst[n] = '\0';
}

static void on_head(llmux_upstream_req_t *req, int status, const llmux_str_t *h, size_t n) {
  chat_t *c = req->data;
  size_t i;
  c->t_head = llmux_now_us();
  c->status = status;
  for (i = 0; i < n; i++) {
    const llmux_str_t *name = &h[2 * i], *value = &h[2 * i + 1];
    if (name->len == 16 && strncasecmp(name->base, "x-llmux-provider", 16) == 0)
      copy_header(c->provider, sizeof c->provider, value);
    else if (name->len == 13 && strncasecmp(name->base, "x-llmux-model", 13) == 0)
      copy_header(c->model, sizeof c->model, value);
    else if (name->len == 16 && strncasecmp(name->base, "x-llmux-attempts", 16) == 0)
      copy_header(c->attempts, sizeof c->attempts, value);
    else if (name->len == 19 && strncasecmp(name->base, "x-llmux-overhead-us", 19) == 0)
      copy_header(c->overhead, sizeof c->overhead, value);
    else if (name->len == 12 && strncasecmp(name->base, "content-type", 12) == 0)
      c->stream = value->len >= 17 && strncasecmp(value->base, "text/event-stream", 17) == 0;
  }
}

static void on_body(llmux_upstream_req_t *req, const char *data, size_t len) {
  chat_t *c = req->data;
  if (c->status == 200 && c->stream) {
    feed_stream(c, data, len);
    return;
  }
  if (c->resp.len + len <= ANSWER_MAX) llmux_buf_append(&c->resp, data, len);
}

/* The gateway's error body: its message is the troubleshooting text. */
static void print_error(chat_t *c) {
  json_t *root = json_loadb(c->resp.base ? c->resp.base : "", c->resp.len, 0, NULL);
  json_t *err = json_object_get(root, "error");
  const char *msg = json_string_value(json_object_get(err, "message"));
  const char *code = json_string_value(json_object_get(err, "code"));
  if (msg != NULL)
    fprintf(stderr, "llmux: %s\n", msg);
  else
    fprintf(stderr, "llmux: the gateway answered %d: %.*s\n", c->status,
            (int)(c->resp.len > 300 ? 300 : c->resp.len), c->resp.base ? c->resp.base : "");
  if (code != NULL && strcmp(code, "no_provider_available") == 0)
    fprintf(stderr, "hint: set the API key variable a provider file names (api_key_env), "
                    "start the local provider, or pick another model with -m "
                    "(`llmux resolve NAME` shows its routes)\n");
  json_decref(root);
}

static double square_root(double x) { /* Newton: spares a libm dependency */
  double r = x > 1 ? x : 1;
  int i;
  for (i = 0; i < 60 && x > 0; i++) r = 0.5 * (r + x / r);
  return x > 0 ? r : 0;
}

static void print_embedding(chat_t *c) {
  json_t *root = json_loadb(c->resp.base ? c->resp.base : "", c->resp.len, 0, NULL);
  json_t *vec = json_object_get(json_array_get(json_object_get(root, "data"), 0), "embedding");
  size_t i, dim = json_array_size(vec), nonzero = 0;
  double sum = 0;
  if (!json_is_array(vec) || dim == 0) {
    fputs("llmux: the answer holds no embedding\n", stderr);
    c->rc = 1;
    json_decref(root);
    return;
  }
  for (i = 0; i < dim; i++) {
    double x = json_number_value(json_array_get(vec, i));
    sum += x * x;
    nonzero += x != 0;
  }
  printf("dimension %zu, norm %.6f, %zu non-zero: [", dim, square_root(sum), nonzero);
  for (i = 0; i < dim && i < PREVIEW_VALUES; i++)
    printf("%s%.6f", i ? ", " : "", json_number_value(json_array_get(vec, i)));
  printf("%s]\n", dim > PREVIEW_VALUES ? ", ..." : "");
  json_decref(root);
}

/* A plain JSON answer (a gateway that did not stream): its message. */
static void print_message(chat_t *c) {
  json_t *root = json_loadb(c->resp.base ? c->resp.base : "", c->resp.len, 0, NULL);
  json_t *content = json_object_get(
      json_object_get(json_array_get(json_object_get(root, "choices"), 0), "message"),
      "content");
  if (json_is_string(content))
    write_content(c, json_string_value(content), json_string_length(content));
  json_decref(root);
}

static void print_verbose(const chat_t *c) {
  fprintf(stderr, "route: provider %s, model %s, attempts %s\n",
          c->provider[0] ? c->provider : "-", c->model[0] ? c->model : "-",
          c->attempts[0] ? c->attempts : "-");
  fprintf(stderr, "timings: first byte %.1f ms", ms_since(c->t_start, c->t_head));
  if (c->t_first) fprintf(stderr, ", first token %.1f ms", ms_since(c->t_start, c->t_first));
  fprintf(stderr, ", total %.1f ms, gateway overhead %s us\n", ms_since(c->t_start, c->t_end),
          c->overhead[0] ? c->overhead : "-");
}

static void on_done(llmux_upstream_req_t *req, int status) {
  chat_t *c = req->data;
  c->t_end = llmux_now_us();
  if (status < 0) {
    fprintf(stderr, "llmux chat: no answer from the in-process gateway: %s\n",
            req->error[0] ? req->error : llmux_strerror(status));
    c->rc = 1;
  } else if (c->status != 200) {
    print_error(c);
    c->rc = 1;
  } else if (c->o->embed) {
    print_embedding(c);
  } else {
    if (!c->stream) print_message(c);
    if (c->printed && c->last != '\n') fputc('\n', stdout);
    fflush(stdout);
    if (c->stream_error.len) {
      fprintf(stderr, "llmux: %.*s\n", (int)c->stream_error.len, c->stream_error.base);
      c->rc = 1;
    } else if (c->stream && !c->saw_done) {
      fputs("llmux: the answer ended before its end marker\n", stderr);
      c->rc = 1;
    }
  }
  if (c->o->verbose && status >= 0) print_verbose(c);
  llmux_gateway_close(&c->gw, NULL);
}

/* ---- the request ------------------------------------------------------------ */

static int build_body(chat_t *c) {
  const chat_opts_t *o = c->o;
  json_t *root = json_object();
  json_t *prompt = json_stringn(o->prompt.base, o->prompt.len);
  char *text;
  if (root == NULL || prompt == NULL) goto fail;
  json_object_set_new(root, "model", json_string(o->model));
  if (o->embed) {
    json_object_set_new(root, "input", prompt);
    json_object_set_new(root, "encoding_format", json_string("float"));
  } else {
    json_t *msg = json_pack("{s:s, s:o}", "role", "user", "content", prompt);
    json_object_set_new(root, "messages", json_pack("[o]", msg));
    json_object_set_new(root, "stream", json_true());
    if (o->max_tokens)
      json_object_set_new(root, "max_tokens", json_integer((json_int_t)o->max_tokens));
  }
  prompt = NULL;
  text = json_dumps(root, JSON_COMPACT);
  json_decref(root);
  if (text == NULL) return LLMUX_ENOMEM;
  llmux_buf_appends(&c->body, text);
  free(text);
  return 0;
fail:
  json_decref(prompt);
  json_decref(root);
  return LLMUX_ENOMEM;
}

static int send_request(chat_t *c) {
  static const char headers[] = "Content-Type: application/json\r\n"
                                "Accept: text/event-stream, application/json\r\n"
                                "User-Agent: llmux-chat\r\n";
  int rc = build_body(c);
  if (rc != 0) return rc;
  c->iov = uv_buf_init(c->body.base, (unsigned)c->body.len);
  llmux_upstream_req_init(&c->req);
  c->req.data = c;
  c->req.host = "127.0.0.1";
  c->req.port = (uint16_t)c->gw.http.port;
  c->req.method = "POST";
  c->req.path = c->o->embed ? "/v1/embeddings" : "/v1/chat/completions";
  c->req.headers = headers;
  c->req.headers_len = sizeof headers - 1;
  c->req.body = &c->iov;
  c->req.nbody = 1;
  c->req.connect_timeout_ms = 5000;
  c->req.on_head = on_head;
  c->req.on_body = on_body;
  c->req.on_done = on_done;
  c->t_start = llmux_now_us();
  return llmux_upstream_start(c->gw.up, &c->req);
}

static int run(chat_t *c, llmux_config_t *cfg, llmux_providers_t *provs) {
  int rc;
  signal(SIGPIPE, SIG_IGN);
  if (uv_loop_init(&c->loop) != 0) return 1;
  rc = llmux_gateway_init(&c->gw, &c->loop, cfg, provs);
  if (rc != 0) {
    fprintf(stderr, "llmux chat: cannot start the gateway: %s\n", llmux_strerror(rc));
    c->rc = 1;
    goto done;
  }
  rc = llmux_gateway_listen(&c->gw, "127.0.0.1", 0);
  if (rc != 0) {
    fprintf(stderr, "llmux chat: cannot listen on 127.0.0.1: %s\n", llmux_strerror(rc));
  } else if ((rc = send_request(c)) != 0) {
    fprintf(stderr, "llmux chat: cannot send the request: %s\n",
            c->req.error[0] ? c->req.error : llmux_strerror(rc));
  }
  if (rc != 0) {
    c->rc = 1;
    llmux_gateway_close(&c->gw, NULL);
  }
  uv_run(&c->loop, UV_RUN_DEFAULT);
done:
  if (uv_loop_close(&c->loop) != 0) llmux_warn("chat: the loop closed with handles open");
  return c->rc;
}

int llmux_chat_main(int argc, char **argv) {
  chat_opts_t o;
  llmux_config_t *cfg = NULL;
  llmux_providers_t provs;
  char *plugin_dir = NULL;
  chat_t *c;
  int rc = parse_opts(argc, argv, &o);
  if (rc >= 0) goto out;
  /* The gateway's own log lines would drown the answer: errors only,
   * everything with --verbose. */
  llmux_log_level = o.verbose ? LLMUX_LOG_DEBUG : LLMUX_LOG_ERROR;
  if (load(&o, &cfg, &provs, &plugin_dir) != 0) {
    rc = 1;
    goto out;
  }
  if (!o.verbose) llmux_log_level = LLMUX_LOG_ERROR;
  c = llmux_xcalloc(1, sizeof *c);
  c->o = &o;
  rc = run(c, cfg, &provs);
  llmux_buf_free(&c->body);
  llmux_buf_free(&c->line);
  llmux_buf_free(&c->resp);
  llmux_buf_free(&c->stream_error);
  free(c);
  llmux_providers_free(&provs);
  llmux_config_free(cfg);
  free(plugin_dir);
out:
  llmux_buf_free(&o.prompt);
  return rc;
}

/* ---- llmux models: the providers' own lists ------------------------------- */

#define PROBE_TIMEOUT_MS 2000
#define PROBE_BODY_MAX (4u << 20)

typedef struct probe_s {
  llmux_provider_rt_t *rt;
  llmux_host_txn_t ht;
  int have_txn;                 /* models_request ran: txn_free is due */
  llmux_upstream_req_t req;
  llmux_buf_t path, headers, body;
  uv_buf_t iov[LLMUX_TXN_MAX_BODY_PARTS];
  llmux_tls_ctx_t *own_tls;     /* when provs was built without TLS */
  int status;                   /* HTTP status, or a negative LLMUX_E* */
  char why[512];                /* a failure before the request left */
} probe_t;

typedef struct probes_s {
  uv_loop_t loop;
  llmux_upstream_t *up;
  uv_timer_t finish;
  size_t pending;
} probes_t;

static int can_list(const llmux_provider_rt_t *rt) {
  const llmux_provider_t *vt = rt->plugin ? rt->plugin->vt : NULL;
  return vt != NULL && rt->conf->enabled && rt->host != NULL &&
         LLMUX_PROVIDER_HAS(vt, models_request) && LLMUX_PROVIDER_HAS(vt, parse_models);
}

static void on_finish_closed(uv_handle_t *h) {
  (void)h;
}

/* The last answer is in: close the pool (not from inside its callback). */
static void on_finish(uv_timer_t *t) {
  probes_t *ps = t->data;
  llmux_upstream_close(ps->up, NULL);
  uv_close((uv_handle_t *)t, on_finish_closed);
}

static void probe_done(probes_t *ps) {
  if (--ps->pending == 0) uv_timer_start(&ps->finish, on_finish, 0, 0);
}

static void on_probe_body(llmux_upstream_req_t *req, const char *data, size_t len) {
  probe_t *p = req->data;
  if (p->body.len + len <= PROBE_BODY_MAX) llmux_buf_append(&p->body, data, len);
}

static void on_probe_done(llmux_upstream_req_t *req, int status) {
  probe_t *p = req->data;
  p->status = status;
  probe_done(p->ht.owner);
}

/* Instance and TLS context, when `provs` was built for listing only. */
static int probe_prepare(probe_t *p) {
  llmux_provider_rt_t *rt = p->rt;
  const llmux_provider_conf_t *pc = rt->conf;
  char err[256];
  err[0] = '\0';
  if (rt->instance == NULL &&
      rt->plugin->vt->create(&rt->pub, &rt->instance, err, sizeof err) != 0) {
    rt->instance = NULL;
    snprintf(p->why, sizeof p->why, "plugin '%s' refused the configuration: %s",
             rt->plugin->name, err[0] ? err : "no reason given");
    return -1;
  }
  if (rt->tls && rt->tls_ctx == NULL &&
      llmux_tls_ctx_client_new(&p->own_tls, pc->ca_file, pc->tls_verify, err, sizeof err) != 0) {
    snprintf(p->why, sizeof p->why, "%s", err);
    return -1;
  }
  return 0;
}

static int probe_start(probes_t *ps, probe_t *p) {
  const llmux_provider_conf_t *pc = p->rt->conf;
  llmux_txn_t *t = &p->ht.txn;
  size_t i;
  if (probe_prepare(p) != 0) return -1;
  t->size = sizeof *t;
  llmux_host_txn_clear_out(&p->ht);
  p->ht.owner = ps;
  p->have_txn = 1;
  if (p->rt->plugin->vt->models_request(p->rt->instance, t) != 0 ||
      t->nbody_parts > LLMUX_TXN_MAX_BODY_PARTS) {
    snprintf(p->why, sizeof p->why, "plugin '%s' could not build the request",
             p->rt->plugin->name);
    return -1;
  }
  llmux_buf_appends(&p->path, p->rt->base_path);
  llmux_buf_append(&p->path, t->path.base, t->path.len);
  llmux_buf_appends(&p->headers, "Accept: application/json\r\n");
  llmux_buf_append(&p->headers, t->headers.base, t->headers.len);
  for (i = 0; i < pc->nheaders; i++)
    llmux_buf_printf(&p->headers, "%s: %s\r\n", pc->headers[i].key, pc->headers[i].value);
  for (i = 0; i < t->nbody_parts; i++)
    p->iov[i] = uv_buf_init((char *)t->body_parts[i].base, (unsigned)t->body_parts[i].len);
  llmux_upstream_req_init(&p->req);
  p->req.data = p;
  p->req.https = p->rt->tls;
  p->req.host = p->rt->host;
  p->req.port = (uint16_t)p->rt->port;
  p->req.tls_ctx = p->own_tls ? p->own_tls : p->rt->tls_ctx;
  p->req.method = t->method ? t->method : "GET";
  p->req.path = p->path.base;
  p->req.headers = p->headers.base;
  p->req.headers_len = p->headers.len;
  p->req.body = p->iov;
  p->req.nbody = t->nbody_parts;
  p->req.connect_timeout_ms = PROBE_TIMEOUT_MS;
  p->req.total_timeout_ms = PROBE_TIMEOUT_MS;
  p->req.on_body = on_probe_body;
  p->req.on_done = on_probe_done;
  if (llmux_upstream_start(ps->up, &p->req) != 0) {
    snprintf(p->why, sizeof p->why, "%s", p->req.error);
    return -1;
  }
  ps->pending++;
  return 0;
}

/* One line of the listing; returns 1 when the provider was not listed. */
static int probe_report(probe_t *p, FILE *out) {
  const llmux_provider_t *vt = p->rt->plugin->vt;
  const char *name = p->rt->conf->name;
  llmux_buf_t names = {0}, advice = {0};
  int failed = 1;
  if (p->why[0]) {
    fprintf(out, "  %s unreachable: %s\n", name, p->why);
  } else if (p->status < 0) {
    const char *why = p->req.error[0] ? p->req.error : llmux_strerror(p->status);
    if (LLMUX_PROVIDER_HAS(vt, explain_error) &&
        vt->explain_error(p->rt->instance, p->status, why, &advice) == 0 && advice.len > 0)
      why = advice.base;
    fprintf(out, "  %s unreachable: %s\n", name, why);
  } else if (p->status < 200 || p->status >= 300) {
    size_t n = p->body.len > 200 ? 200 : p->body.len, i;
    for (i = 0; i < n; i++)
      if (p->body.base[i] == '\n' || p->body.base[i] == '\r') p->body.base[i] = ' ';
    fprintf(out, "  %s unreachable: HTTP %d%s%.*s\n", name, p->status, n ? ": " : "", (int)n,
            n ? p->body.base : "");
  } else if (vt->parse_models(p->rt->instance, p->body.base ? p->body.base : "", p->body.len,
                              &names) != 0) {
    fprintf(out, "  %s unreachable: its model list could not be read\n", name);
  } else {
    size_t off = 0, k = 0;
    /* Issue 16: a passthrough provider serves every one of them. */
    if (p->rt->conf->passthrough)
      fprintf(out, "  models at %s (routable: %s/ID, or the bare ID): ", name, name);
    else
      fprintf(out, "  models at %s: ", name);
    while (off < names.len) {
      size_t n = strnlen(names.base + off, names.len - off);
      fprintf(out, "%s%.*s", k++ ? ", " : "", (int)n, names.base + off);
      off += n + 1;
    }
    fprintf(out, "%s\n", k ? "" : "(none)");
    failed = 0;
  }
  llmux_buf_free(&names);
  llmux_buf_free(&advice);
  return failed;
}

static void probe_free(probe_t *p) {
  if (p->have_txn && LLMUX_PROVIDER_HAS(p->rt->plugin->vt, txn_free))
    p->rt->plugin->vt->txn_free(p->rt->instance, &p->ht.txn);
  llmux_host_txn_free(&p->ht);
  llmux_buf_free(&p->path);
  llmux_buf_free(&p->headers);
  llmux_buf_free(&p->body);
  if (p->own_tls) llmux_tls_ctx_free(p->own_tls);
}

int llmux_list_provider_models(llmux_config_t *cfg, llmux_providers_t *provs, FILE *out) {
  probes_t ps;
  probe_t *probes;
  size_t i, n = 0;
  int failed = 0;
  (void)cfg;
  for (i = 0; i < provs->n; i++) n += can_list(&provs->items[i]);
  if (n == 0) return 0;
  probes = llmux_xcalloc(n, sizeof *probes);
  memset(&ps, 0, sizeof ps);
  if (uv_loop_init(&ps.loop) != 0) goto fail;
  if (llmux_upstream_new(&ps.loop, NULL, &ps.up) != 0) {
    uv_loop_close(&ps.loop);
    goto fail;
  }
  uv_timer_init(&ps.loop, &ps.finish);
  ps.finish.data = &ps;
  for (i = 0, n = 0; i < provs->n; i++) {
    if (!can_list(&provs->items[i])) continue;
    probes[n].rt = &provs->items[i];
    probe_start(&ps, &probes[n++]);
  }
  if (ps.pending == 0) uv_timer_start(&ps.finish, on_finish, 0, 0);
  uv_run(&ps.loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&ps.loop) != 0) llmux_warn("models: the loop closed with handles open");
  fprintf(out, "provider model lists (asked now):\n");
  for (i = 0; i < n; i++) {
    failed += probe_report(&probes[i], out);
    probe_free(&probes[i]);
  }
  free(probes);
  return failed;
fail:
  fprintf(stderr, "llmux: cannot ask the providers for their models\n");
  free(probes);
  return (int)n;
}
