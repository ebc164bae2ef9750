/* `llmux key new TENANT` and `llmux usage`. */
#include "cli/cli_tenant.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "tenant/tenant.h"
#include "tenant/usage.h"
#include "base/util.h"

/* ---- llmux key new TENANT ------------------------------------------------- */

static int valid_tenant_name(const char *s) {
  if (*s == '\0' || strlen(s) > 64) return 0;
  for (; *s; s++) {
    if (*s <= ' ' || *s == ',' || *s == '[' || *s == ']' || *s == ';' || *s == '#') return 0;
  }
  return 1;
}

static const char key_usage[] =
  "Usage: llmux key new TENANT\n"
  "Prints a fresh API key (shown only this once) and the key_sha256 line to put\n"
  "in the [tenant TENANT] section of the configuration.\n";

/* The global options are accepted anywhere (`llmux key new acme -c FILE`);
 * the key does not depend on them. Leaves argv[0..2] = key new TENANT. */
static int parse_key_args(int *argc, char **argv) {
  static const struct option longopts[] = {
    {"config", required_argument, NULL, 'c'}, {"listen", required_argument, NULL, 'l'},
    {"verbose", no_argument, NULL, 'v'},      {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
  };
  int c;
  optind = 0; /* GNU: a full reset, argv[0] is "key" */
  while ((c = getopt_long(*argc, argv, "c:l:vh", longopts, NULL)) != -1) {
    if (c == 'h') { fputs(key_usage, stdout); exit(0); }
    if (c == '?') return 2;
  }
  if (*argc - optind != 2) return 2;
  argv[1] = argv[optind];
  argv[2] = argv[optind + 1];
  *argc = 3;
  return 0;
}

int llmux_cli_key(int argc, char **argv) {
  char key[LLMUX_KEY_STRLEN], hex[2 * LLMUX_KEY_HASH_LEN + 1];
  unsigned char h[LLMUX_KEY_HASH_LEN];
  if (parse_key_args(&argc, argv) != 0 || strcmp(argv[1], "new") != 0) {
    fputs(key_usage, stderr);
    return 2;
  }
  if (!valid_tenant_name(argv[2])) {
    fprintf(stderr, "llmux key: bad tenant name '%s' (no spaces, commas or brackets)\n",
            argv[2]);
    return 2;
  }
  if (llmux_key_generate(key) != 0) {
    fputs("llmux key: the system's random source failed\n", stderr);
    return 1;
  }
  llmux_key_sha256(key, strlen(key), h);
  llmux_key_hex(h, hex);
  /* stdout: the key, then the config lines; advice on stderr. */
  printf("%s\n\n[tenant %s]\nkey_sha256 = %s\n", key, argv[2], hex);
  fflush(stdout);
  fprintf(stderr,
          "\nThe key above is shown only this once: llmux stores only its SHA-256.\n"
          "Give it to tenant '%s' and add the key_sha256 line to its [tenant %s]\n"
          "section (keep older key_sha256 lines while clients switch keys), then restart.\n",
          argv[2], argv[2]);
  memset(key, 0, sizeof key);
  return 0;
}

/* ---- llmux usage ------------------------------------------------------------ */

typedef struct line_s {
  const char *tenant, *model; /* owned copies */
  llmux_usage_counts_t today, month;
} line_t;

typedef struct lines_s {
  line_t *items;
  size_t n, cap;
  int today;
} lines_t;

static line_t *line_for(lines_t *ls, const char *tenant, const char *model) {
  size_t i;
  for (i = 0; i < ls->n; i++) {
    if (strcmp(ls->items[i].tenant, tenant) == 0 && strcmp(ls->items[i].model, model) == 0)
      return &ls->items[i];
  }
  if (ls->n == ls->cap) {
    ls->cap = ls->cap ? ls->cap * 2 : 16;
    ls->items = realloc(ls->items, ls->cap * sizeof *ls->items);
    if (ls->items == NULL) abort();
  }
  memset(&ls->items[ls->n], 0, sizeof *ls->items);
  ls->items[ls->n].tenant = llmux_xstrdup(tenant);
  ls->items[ls->n].model = llmux_xstrdup(model);
  return &ls->items[ls->n++];
}

static void add_counts(llmux_usage_counts_t *c, const llmux_usage_counts_t *d) {
  c->requests += d->requests;
  c->input_tokens += d->input_tokens;
  c->output_tokens += d->output_tokens;
  c->cost_usd += d->cost_usd;
}

static void on_row(void *arg, const llmux_usage_row_t *row) {
  lines_t *ls = arg;
  line_t *l = line_for(ls, row->tenant, row->model);
  add_counts(&l->month, &row->counts);
  if (row->day == ls->today) add_counts(&l->today, &row->counts);
}

static int line_cmp(const void *a, const void *b) {
  const line_t *x = a, *y = b;
  int c = strcmp(x->tenant, y->tenant);
  return c ? c : strcmp(x->model, y->model);
}

static void print_counts(const char *tenant, const char *model, const char *period,
                         const llmux_usage_counts_t *c) {
  printf("%-16s %-28s %-10s %9llu %13llu %13llu %12.6f\n", tenant, model, period,
         (unsigned long long)c->requests, (unsigned long long)c->input_tokens,
         (unsigned long long)c->output_tokens, c->cost_usd);
}

static void print_lines(lines_t *ls, const llmux_config_t *cfg) {
  char day[11], month[8];
  size_t i;
  llmux_usage_day_str(ls->today, day);
  llmux_usage_month_str(ls->today, month);
  /* Configured tenants without usage still get a line. */
  for (i = 0; i < cfg->ntenants; i++) {
    size_t j;
    for (j = 0; j < ls->n && strcmp(ls->items[j].tenant, cfg->tenants[i]->name) != 0; j++) {}
    if (j == ls->n) line_for(ls, cfg->tenants[i]->name, "-");
  }
  if (ls->n) qsort(ls->items, ls->n, sizeof *ls->items, line_cmp);
  printf("%-16s %-28s %-10s %9s %13s %13s %12s\n", "TENANT", "MODEL", "PERIOD", "REQUESTS",
         "INPUT_TOKENS", "OUTPUT_TOKENS", "COST_USD");
  for (i = 0; i < ls->n; i++) {
    print_counts(ls->items[i].tenant, ls->items[i].model, day, &ls->items[i].today);
    print_counts(ls->items[i].tenant, ls->items[i].model, month, &ls->items[i].month);
  }
}

int llmux_cli_usage(const char *config_path) {
  llmux_config_t *cfg = NULL;
  llmux_usage_store_t *store = NULL;
  llmux_diag_t diag;
  lines_t ls;
  char err[512];
  size_t i;
  int rc = 1;
  memset(&ls, 0, sizeof ls);
  llmux_diag_init(&diag);
  if (llmux_config_load(config_path, &cfg, &diag) != 0) {
    llmux_diag_print(&diag, stderr);
    fprintf(stderr, "llmux: %zu error%s in the configuration (%s)\n", diag.errors,
            diag.errors == 1 ? "" : "s", config_path);
    goto done;
  }
  if (cfg->server.usage_db == NULL) {
    fprintf(stderr, "llmux usage: no usage_db in [server] of %s: usage is not recorded\n",
            config_path);
    goto done;
  }
  ls.today = llmux_usage_today();
  if (access(cfg->server.usage_db, F_OK) != 0) {
    printf("no usage recorded yet (%s does not exist)\n", cfg->server.usage_db);
    rc = 0;
    goto done;
  }
  if (llmux_usage_open(NULL, cfg->server.usage_db, ls.today, &store, err, sizeof err) != 0) {
    fprintf(stderr, "llmux usage: %s\n", err);
    goto done;
  }
  llmux_usage_foreach(store, NULL, llmux_usage_month_start(ls.today), ls.today, on_row, &ls);
  printf("usage from %s (UTC days)\n", cfg->server.usage_db);
  print_lines(&ls, cfg);
  rc = 0;
done:
  if (store) llmux_usage_close(store, NULL, NULL);
  for (i = 0; i < ls.n; i++) {
    free((char *)ls.items[i].tenant);
    free((char *)ls.items[i].model);
  }
  free(ls.items);
  llmux_diag_free(&diag);
  llmux_config_free(cfg);
  return rc;
}
