/* The command line: serve, check, models, resolve; chat, key and routes in
 * their own files. */
#include "cli/cli.h"
#include "cli/common.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "cli/catalog_md.h"
#include "cli/chat.h"
#include "cli/cli_routes.h"
#include "cli/cli_tenant.h"
#include "cli/master.h"
#include "config/config.h"
#include "base/log.h"
#include "plugin/providers.h"
#include "config/registry.h"
#include "gateway/server.h"
#include "base/util.h"

#ifndef LLMUX_VERSION
#define LLMUX_VERSION "0.0.0"
#endif

static const char usage_text[] =
  "llmux " LLMUX_VERSION ": one OpenAI-compatible endpoint in front of many LLM providers\n"
  "\n"
  "Usage: llmux [COMMAND] [OPTIONS]   (options go before or after the command)\n"
  "\n"
  "Commands:\n"
  "  serve           start the gateway (the default); with [server] workers = N\n"
  "                  (or auto: one per CPU), a master process that holds the port\n"
  "                  and runs N gateway processes, restarts one that dies, and\n"
  "                  passes SIGHUP, SIGUSR1 and SIGTERM on to them\n"
  "  check           validate the configuration and print the routing table;\n"
  "                  exits 1 with `file:line: message` lines on errors\n"
  "  models          list models, aliases, generic names, profiles, agents and routes;\n"
  "                  with --markdown, the catalog as Markdown tables (docs/models.md)\n"
  "  resolve NAME    show what a model name resolves to and the routes it may take\n"
  "  key new TENANT  print a fresh API key for [tenant TENANT] (shown once) and the\n"
  "                  key_sha256 line to add to that section\n"
  "  usage           print every tenant's usage (today and this month, per model)\n"
  "                  from the usage_db of [server]\n"
  "  routes          ask a running gateway for the state of every route: breaker,\n"
  "                  rate-limit headroom, in flight, latency, last error\n"
  "                  (`llmux routes --help` for its options)\n"
  "  chat PROMPT     send one prompt through the providers and stream the answer\n"
  "                  (`llmux chat --help` for its options)\n"
  "\n"
  "Options:\n"
  "  -c, --config FILE   main configuration file (env LLMUX_CONFIG;\n"
  "                      default config/llmux.ini, then /etc/llmux/llmux.ini)\n"
  "  -l, --listen ADDR   listen address, e.g. 127.0.0.1:8080 (env LLMUX_LISTEN)\n"
  "  -v, --verbose       log more (debug level)\n"
  "  -h, --help          this text\n"
  "      --version       print the version\n"
  "\n"
  "Provider API keys are read from the environment variables that the provider\n"
  "files name with `api_key_env` (GROQ_API_KEY, OPENROUTER_API_KEY, ...); a\n"
  "provider whose variable is unset is disabled with a warning.\n"
  "\n"
  "Examples:\n"
  "  llmux check -c config/llmux.ini\n"
  "  llmux resolve best-large\n"
  "  GROQ_API_KEY=... llmux serve --listen 0.0.0.0:8080\n";

typedef struct {
  const char *command;
  const char *config_path;
  const char *arg;
  int verbose;
  int markdown;       /* models --markdown */
  char *const *argv;  /* main's, untouched: a master gives it to its workers */
} cli_opts_t;

/* -l's value has the shape LLMUX_LISTEN must have (config.c checks that
 * again): checked here so that a mistake is blamed on --listen, where it
 * was made, not on the variable it is passed on in. */
static int listen_shape_ok(const char *s) {
  const char *colon;
  size_t host_len;
  uint64_t port;
  if (*s == '[') {
    const char *end = strchr(s, ']');
    if (end == NULL || end[1] != ':') return 0;
    host_len = (size_t)(end - s - 1);
    colon = end + 1;
  } else {
    colon = strrchr(s, ':');
    if (colon == NULL || memchr(s, ':', (size_t)(colon - s)) != NULL) return 0;
    host_len = (size_t)(colon - s);
  }
  return host_len > 0 && llmux_parse_u64(colon + 1, &port) == 0 && port <= 65535;
}

static int parse_args(int argc, char **argv, cli_opts_t *o) {
  static const struct option longopts[] = {
    {"config", required_argument, NULL, 'c'}, {"listen", required_argument, NULL, 'l'},
    {"verbose", no_argument, NULL, 'v'},      {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},      {"markdown", no_argument, NULL, 'M'},
    {NULL, 0, NULL, 0},
  };
  int c;
  memset(o, 0, sizeof *o);
  o->command = "serve";
  /* GNU getopt moves the words after the options: options go anywhere,
   * before or after the command (`llmux -c FILE check`). */
  optind = 1;
  while ((c = getopt_long(argc, argv, "c:l:vh", longopts, NULL)) != -1) {
    switch (c) {
      case 'c': o->config_path = optarg; break;
      /* A master's worker listens where its master bound (port 0 resolved),
       * which its LLMUX_LISTEN says: -l, given again to it, must not win. */
      case 'l':
        if (!listen_shape_ok(optarg)) {
          fprintf(stderr, "llmux: --listen: bad listen address '%s' (expected host:port or "
                  "[ipv6]:port)\n", optarg);
          return 2;
        }
        setenv("LLMUX_LISTEN", optarg, getenv("LLMUX_WORKER") == NULL);
        break;
      case 'v': o->verbose++; break;
      case 'M': o->markdown = 1; break;
      case 'h': fputs(usage_text, stdout); exit(0);
      case 'V': printf("llmux %s\n", LLMUX_VERSION); exit(0);
      default: fputs("Try 'llmux --help'.\n", stderr); return 2;
    }
  }
  if (optind < argc) o->command = argv[optind++];
  if (optind < argc) o->arg = argv[optind++];
  if (optind < argc) {
    fprintf(stderr, "llmux: unexpected argument '%s'\nTry 'llmux --help'.\n", argv[optind]);
    return 2;
  }
  o->config_path = llmux_cli_config_path(o->config_path);
  return 0;
}

/* `llmux check` (LLMUX_PROVIDERS_CREATE) reports every mistake in one run:
 * after errors in the files it still loads each provider's plugin and
 * checks its keys, on what was parsed, without creating anything. */
static int load_checked(const cli_opts_t *o, unsigned flags, llmux_config_t **cfg,
                        llmux_providers_t *provs, char **plugin_dir, llmux_diag_t *diag) {
  llmux_providers_t partial;
  int rc;
  if (!(flags & LLMUX_PROVIDERS_CREATE)) {
    rc = llmux_config_load(o->config_path, cfg, diag);
  } else {
    rc = llmux_config_load_partial(o->config_path, cfg, diag);
    if (rc != 0 && *cfg != NULL) {
      *plugin_dir = llmux_cli_plugin_dir(*cfg);
      llmux_providers_build(&partial, *cfg, *plugin_dir, LLMUX_PROVIDERS_KEYS_ONLY, diag);
      llmux_providers_free(&partial);
      llmux_config_free(*cfg);
      *cfg = NULL;
    }
  }
  if (rc != 0) return rc;
  if (!o->verbose) llmux_log_level = (*cfg)->server.log_level;
  *plugin_dir = llmux_cli_plugin_dir(*cfg);
  return llmux_providers_build(provs, *cfg, *plugin_dir, flags, diag);
}

/* Loads the config and the providers; prints diagnostics. */
static int load_all(const cli_opts_t *o, unsigned flags, llmux_config_t **cfg,
                    llmux_providers_t *provs, char **plugin_dir) {
  llmux_diag_t diag;
  int rc;
  llmux_diag_init(&diag);
  *cfg = NULL;
  *plugin_dir = NULL;
  rc = load_checked(o, flags, cfg, provs, plugin_dir, &diag);
  llmux_cli_print_diag(&diag, flags & LLMUX_PROVIDERS_CREATE);
  if (rc != 0) {
    fprintf(stderr, "llmux: %zu error%s in the configuration (%s)\n", diag.errors,
            diag.errors == 1 ? "" : "s", o->config_path);
    if (*cfg != NULL) {
      llmux_providers_free(provs);
      llmux_config_free(*cfg);
      *cfg = NULL;
    }
    free(*plugin_dir);
    *plugin_dir = NULL;
  }
  llmux_diag_free(&diag);
  return rc;
}

static void unload_all(llmux_config_t *cfg, llmux_providers_t *provs, char *plugin_dir) {
  llmux_providers_free(provs);
  llmux_config_free(cfg);
  free(plugin_dir);
}

static int cmd_dump(const cli_opts_t *o, int is_check) {
  llmux_config_t *cfg;
  llmux_providers_t provs;
  llmux_buf_t out = {0};
  char *plugin_dir;
  size_t i, enabled = 0;
  if (load_all(o, is_check ? LLMUX_PROVIDERS_CREATE | LLMUX_PROVIDERS_TLS : 0, &cfg, &provs,
               &plugin_dir) != 0)
    return 1;
  llmux_registry_dump(cfg, &out);
  fwrite(out.base, 1, out.len, stdout);
  if (!is_check) llmux_list_provider_models(cfg, &provs, stdout); /* ABI 1.1 listings */
  for (i = 0; i < cfg->nproviders; i++) enabled += cfg->providers[i]->enabled != 0;
  if (is_check)
    printf("\nOK: %s: %zu files, %zu models, %zu routes, %zu of %zu providers enabled, "
           "%zu tenant%s, usage_db %s, plugins from %s\n",
           o->config_path, cfg->nfiles, cfg->nmodels, cfg->nroutes, enabled, cfg->nproviders,
           cfg->ntenants, cfg->ntenants == 1 ? "" : "s",
           cfg->server.usage_db ? cfg->server.usage_db : "none", plugin_dir);
  llmux_buf_free(&out);
  unload_all(cfg, &provs, plugin_dir);
  return 0;
}

/* A generic or profile: the models it expands to, served or not yet, so
 * `llmux resolve best-small` says what a provider would have to serve. */
static void print_models(const llmux_resolution_t *res) {
  size_t i, j, n;
  if (res->target_kind == LLMUX_NAME_CANONICAL) return;
  printf("models, in order:\n");
  for (i = 0; i < res->nmodels; i++) {
    const llmux_model_conf_t *m = res->models[i];
    for (j = n = 0; j < res->nroutes; j++) n += res->routes[j]->model == m;
    printf("  %2zu. %-32s tier %d  ", i + 1, m->id, m->tier);
    if (n) printf("%zu route%s\n", n, n == 1 ? "" : "s");
    else printf("no route: no provider serves it yet\n");
  }
  if (res->nmodels == 0) printf("  (none)\n");
}

/* `llmux models --markdown`: the configuration alone, so the page does not
 * depend on the keys or plugins of the machine that writes it. */
static int cmd_markdown(const cli_opts_t *o) {
  llmux_config_t *cfg;
  llmux_diag_t diag;
  int rc;
  llmux_diag_init(&diag);
  rc = llmux_config_load(o->config_path, &cfg, &diag);
  llmux_cli_print_diag(&diag, 0);
  llmux_diag_free(&diag);
  if (rc != 0) return 1;
  llmux_cli_catalog_markdown(cfg, o->config_path, stdout);
  llmux_config_free(cfg);
  return 0;
}

static int cmd_resolve(const cli_opts_t *o) {
  llmux_config_t *cfg;
  llmux_providers_t provs;
  llmux_resolution_t res;
  char *plugin_dir;
  size_t i;
  int rc = 0;
  if (o->arg == NULL) {
    fputs("llmux resolve: which name? e.g. `llmux resolve best-large`\n", stderr);
    return 2;
  }
  if (load_all(o, 0, &cfg, &provs, &plugin_dir) != 0) return 1;
  if (llmux_resolve(cfg, o->arg, &res) != 0) {
    fprintf(stderr, "llmux: unknown model '%s'", o->arg);
    for (i = 0; i < res.nsuggestions; i++)
      fprintf(stderr, "%s'%s'", i == 0 ? "; did you mean " : " or ", res.suggestions[i]);
    fputs("\n", stderr);
    rc = 1;
    goto done;
  }
  for (i = 0; i < res.nchain; i++)
    printf("%s%s (%s)", i ? " -> " : "", res.chain[i].name,
           llmux_name_kind_str(res.chain[i].kind));
  printf("\n");
  print_models(&res);
  printf("routes, in order:\n");
  for (i = 0; i < res.nroutes; i++) {
    const llmux_route_conf_t *r = res.routes[i];
    printf("  %2zu. %-12s %-44s model %-24s priority %d", i + 1, r->provider->name, r->id,
           r->model->id, r->provider->priority);
    if (!r->provider->enabled) printf("  [disabled: %s]", r->provider->disabled_reason);
    printf("\n");
  }
  if (res.nroutes == 0) printf("  (none: no provider serves it)\n");
done:
  unload_all(cfg, &provs, plugin_dir);
  return rc;
}

/* The gateway loads the files itself: it loads them again on a reload.
 * With [server] workers > 1 this process becomes their master, and each
 * worker (LLMUX_WORKER) comes back here to serve (cli/master.h). */
static int cmd_serve(const cli_opts_t *o) {
  char *plugin_dir;
  int rc, worker = llmux_worker_index();
  if (worker == LLMUX_EINVAL) {
    fprintf(stderr, "llmux: LLMUX_WORKER='%s' is not a worker index\n", getenv("LLMUX_WORKER"));
    return 2;
  }
  if (worker < 0 && llmux_master_wanted(o->config_path))
    return llmux_master_run(o->config_path, o->verbose, o->argv);
  plugin_dir = llmux_cli_plugin_dir(NULL);
  if (worker >= 0) rc = llmux_worker_run(o->config_path, plugin_dir, o->verbose, worker);
  else rc = llmux_serve(o->config_path, plugin_dir, o->verbose) == 0 ? 0 : 1;
  free(plugin_dir);
  return rc;
}

static int run(const cli_opts_t *o) {
  if (o->verbose) llmux_log_level = LLMUX_LOG_DEBUG;
  if (strcmp(o->command, "serve") == 0) return cmd_serve(o);
  if (strcmp(o->command, "check") == 0) return cmd_dump(o, 1);
  if (strcmp(o->command, "models") == 0) return o->markdown ? cmd_markdown(o) : cmd_dump(o, 0);
  if (strcmp(o->command, "resolve") == 0) return cmd_resolve(o);
  if (strcmp(o->command, "usage") == 0) return llmux_cli_usage(o->config_path);
  if (strcmp(o->command, "help") == 0) { fputs(usage_text, stdout); return 0; }
  fprintf(stderr, "llmux: unknown command '%s'\nTry 'llmux --help'.\n", o->command);
  return 2;
}

/* Where the command word is: the first argument that is neither a global
 * option nor the value of one (-c FILE, --listen ADDR, -vc FILE); argc if
 * there is none. */
static int command_index(int argc, char **argv) {
  int i;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i], *p;
    if (a[0] != '-' || a[1] == '\0') return i;
    if (strcmp(a, "--") == 0) return i + 1;
    if (a[1] == '-') {
      if (strcmp(a, "--config") == 0 || strcmp(a, "--listen") == 0) i++;
      continue;
    }
    for (p = a + 1; *p != '\0' && *p != 'c' && *p != 'l'; p++) {}
    if (*p != '\0' && p[1] == '\0') i++; /* -c FILE; -cFILE holds its value */
  }
  return argc;
}

/* chat, key and routes parse their own options: they get an argv that
 * starts with the command word, the options given before it following. */
static int run_own_parser(int argc, char **argv, int ci, char **args) {
  const char *cmd = argv[ci];
  int n = 0, i;
  args[n++] = argv[ci];
  for (i = 1; i < argc; i++)
    if (i != ci) args[n++] = argv[i];
  args[n] = NULL;
  if (strcmp(cmd, "chat") == 0) return llmux_chat_main(n, args);
  if (strcmp(cmd, "key") == 0) return llmux_cli_key(n, args);
  return llmux_cli_routes(n, args);
}

static int is_own_parser(const char *cmd) {
  return strcmp(cmd, "chat") == 0 || strcmp(cmd, "key") == 0 || strcmp(cmd, "routes") == 0;
}

int llmux_cli_main(int argc, char **argv) {
  cli_opts_t o;
  char **args;
  int rc, ci = command_index(argc, argv);
  /* getopt reorders what it parses: it parses a copy. */
  args = llmux_xcalloc((size_t)argc + 1, sizeof *args);
  if (ci < argc && is_own_parser(argv[ci])) {
    rc = run_own_parser(argc, argv, ci, args);
    free(args);
    return rc;
  }
  memcpy(args, argv, (size_t)argc * sizeof *args);
  rc = parse_args(argc, args, &o);
  o.argv = argv;
  if (rc == 0) rc = run(&o);
  free(args);
  return rc;
}
