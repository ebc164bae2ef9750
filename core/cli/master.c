/* The master of `llmux serve` with several workers, and the worker's side
 * of their bond (see master.h). */
#define _GNU_SOURCE
#include "cli/master.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "base/log.h"
#include "base/util.h"
#include "cli/common.h"
#include "config/config.h"
#include "gateway/server.h"
#include "plugin/providers.h"

/* A worker that dies is started again after BACKOFF_MIN_MS, and after twice
 * as long each time it dies again soon, up to BACKOFF_MAX_MS: one that cannot
 * start (a file gone, a plugin that crashes) is retried without a busy loop
 * and without flooding the log. One that ran BACKOFF_RESET_MS was healthy:
 * its next restart waits BACKOFF_MIN_MS again. */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 30000
#define BACKOFF_RESET_MS 30000

/* The worker's end of its channel to the master: uv_spawn puts a socketpair
 * there. After a successful POST /admin/reload the worker writes one
 * CHANNEL_RELOADED byte on it. The master reads nothing else and writes
 * nothing, so for the worker the channel turns readable only when the
 * master is gone. */
#define CHANNEL_FD 3
#define CHANNEL_RELOADED 'H'

#define MAX_WORKERS 1024 /* as [server] workers allows */

typedef struct master_s master_t;
typedef struct slot_s slot_t;

/* One worker process: its handle and its channel, freed once both closed. */
typedef struct child_s {
  uv_process_t proc;
  uv_pipe_t chan;
  slot_t *slot;
  uint64_t started_ms;
  int open_handles;
  char rbuf[64];
} child_t;

/* A worker's place: its index, its restart timer and backoff outlive each
 * process that fills it. */
struct slot_s {
  master_t *m;
  int index;
  child_t *child;          /* running; NULL: waiting to restart, or stopped */
  uv_timer_t restart;
  uint64_t backoff_ms;     /* the wait before the next restart */
};

struct master_s {
  uv_loop_t *loop;
  const char *config_path;
  int verbose;
  char *const *argv;
  char *listen_conf;       /* [server] listen as loaded: a reload that changes
                              it, or workers, warns (both need a restart) */
  char *listen;            /* host:port, the port bound: the workers' LLMUX_LISTEN */
  int reserved_fd;         /* the bound, never listening, socket */
  slot_t *slots;
  size_t nslots;
  size_t running;          /* slots with a child */
  uv_signal_t sigint, sigterm, sighup, sigusr1;
  int stopping;            /* SIGTERM/SIGINT seen, or a failed start */
  int closed;              /* master_close ran: uv_run returns */
  int status;              /* the exit status */
};

/* ---- the configuration -------------------------------------------------- */

/* Loads and checks `path` as a gateway's start or reload does: the files,
 * then the plugins, their instances and CA bundles. *cfg is the caller's. */
static int check_config(const char *path, llmux_config_t **cfg, llmux_diag_t *diag) {
  llmux_providers_t provs;
  char *dir;
  int rc = llmux_config_load(path, cfg, diag);
  if (rc != 0) return rc;
  dir = llmux_cli_plugin_dir(*cfg);
  rc = llmux_providers_build(&provs, *cfg, dir, LLMUX_PROVIDERS_CREATE | LLMUX_PROVIDERS_TLS,
                             diag);
  llmux_providers_free(&provs);
  free(dir);
  if (rc != 0) {
    llmux_config_free(*cfg);
    *cfg = NULL;
  }
  return rc;
}

/* A reload's errors, as the workers log theirs; its warnings are the
 * workers' to log, once they load it. */
static void log_errors(const llmux_diag_t *diag) {
  llmux_buf_t line = {0};
  size_t i;
  for (i = 0; i < diag->len; i++) {
    line.len = 0;
    if (diag->items[i].severity != LLMUX_DIAG_ERROR ||
        llmux_diag_format(&diag->items[i], &line) != 0)
      continue;
    llmux_error("%s", line.base);
  }
  llmux_buf_free(&line);
}

int llmux_master_wanted(const char *config_path) {
  llmux_config_t *cfg;
  int wanted;
  if (llmux_config_load(config_path, &cfg, NULL) != 0) return 0;
  wanted = cfg->server.workers > 1;
  llmux_config_free(cfg);
  return wanted;
}

/* ---- the port ------------------------------------------------------------- */

static int errno_code(int err) {
  switch (err) {
  case EADDRINUSE: return LLMUX_EADDRINUSE;
  case EACCES: case EPERM: return LLMUX_EACCES;
  case EADDRNOTAVAIL: case EAFNOSUPPORT: return LLMUX_EADDRNOTAVAIL;
  default: return LLMUX_EIO;
  }
}

/* A TCP socket bound to `sa`, with SO_REUSEPORT or with SO_REUSEADDR (as
 * libuv binds its own); the fd, or an LLMUX_E* code. */
static int bind_socket(const struct sockaddr_storage *sa, int reuseport) {
  socklen_t len = sa->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                            : sizeof(struct sockaddr_in);
  int one = 1, err, fd = socket(sa->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_code(errno);
  if (setsockopt(fd, SOL_SOCKET, reuseport ? SO_REUSEPORT : SO_REUSEADDR, &one, sizeof one) ||
      bind(fd, (const struct sockaddr *)sa, len) != 0) {
    err = errno;
    close(fd);
    return errno_code(err);
  }
  return fd;
}

/* Takes host:port for the workers, before any of them runs. A first bind
 * without SO_REUSEPORT fails while anything else holds the port: a gateway,
 * or another master (its socket has no SO_REUSEADDR), whose port the
 * reservation would otherwise share without a word. It also turns port 0
 * into a real port. Only then the reservation, with SO_REUSEPORT, which the
 * workers' listeners join. */
static int reserve(master_t *m, const char *host, int port) {
  struct sockaddr_storage sa;
  socklen_t len = sizeof sa;
  llmux_buf_t b = {0};
  int fd, rc;
  memset(&sa, 0, sizeof sa);
  rc = strchr(host, ':') ? uv_ip6_addr(host, port, (struct sockaddr_in6 *)&sa)
                         : uv_ip4_addr(host, port, (struct sockaddr_in *)&sa);
  if (rc != 0) return LLMUX_EINVAL;
  if ((fd = bind_socket(&sa, 0)) < 0) return fd;
  rc = getsockname(fd, (struct sockaddr *)&sa, &len);
  close(fd);
  if (rc != 0) return LLMUX_EIO;
  if ((fd = bind_socket(&sa, 1)) < 0) return fd;
  port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                        : ((struct sockaddr_in *)&sa)->sin_port);
  llmux_buf_printf(&b, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
  m->reserved_fd = fd;
  m->listen = b.base;
  return 0;
}

/* ---- workers ---------------------------------------------------------------- */

static void master_close(master_t *m);

static void on_child_closed(uv_handle_t *h) {
  child_t *c = h->data;
  if (--c->open_handles == 0) free(c);
}

static void child_close(child_t *c) {
  uv_close((uv_handle_t *)&c->proc, on_child_closed);
  uv_close((uv_handle_t *)&c->chan, on_child_closed);
}

/* The signal to every running worker; how many took it. */
static size_t signal_all(master_t *m, int signum) {
  size_t i, n = 0;
  for (i = 0; i < m->nslots; i++)
    if (m->slots[i].child != NULL && uv_process_kill(&m->slots[i].child->proc, signum) == 0) n++;
  return n;
}

/* "exited with status 1", "was killed by signal 9 (Killed)". */
static const char *describe_exit(char *buf, size_t size, int64_t status, int signum) {
  if (signum != 0)
    snprintf(buf, size, "was killed by signal %d (%s)", signum, strsignal(signum));
  else
    snprintf(buf, size, "exited with status %lld", (long long)status);
  return buf;
}

/* A worker's process environment: the master's, with its index and the
 * address the master bound. Freed by the caller, strings and all. */
static char **worker_env(const master_t *m, int index) {
  size_t i, n = 0, k = 0;
  char **env;
  llmux_buf_t w = {0}, l = {0};
  while (environ[n] != NULL) n++;
  env = llmux_xcalloc(n + 3, sizeof *env);
  for (i = 0; i < n; i++)
    if (strncmp(environ[i], "LLMUX_WORKER=", 13) != 0 &&
        strncmp(environ[i], "LLMUX_LISTEN=", 13) != 0)
      env[k++] = llmux_xstrdup(environ[i]);
  llmux_buf_printf(&w, "LLMUX_WORKER=%d", index);
  llmux_buf_printf(&l, "LLMUX_LISTEN=%s", m->listen);
  env[k++] = w.base;
  env[k++] = l.base;
  return env;
}

static void free_env(char **env) {
  size_t i;
  for (i = 0; env[i] != NULL; i++) free(env[i]);
  free(env);
}

static void reload_others(master_t *m, const slot_t *from);

static void on_chan_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf) {
  child_t *c = h->data;
  (void)size;
  *buf = uv_buf_init(c->rbuf, sizeof c->rbuf);
}

static void on_chan_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  child_t *c = s->data;
  if (n < 0) { /* the worker is going: its exit is logged and handled */
    uv_read_stop(s);
    return;
  }
  if (n > 0 && memchr(buf->base, CHANNEL_RELOADED, (size_t)n) != NULL)
    reload_others(c->slot->m, c->slot);
}

static void on_restart(uv_timer_t *t);

/* The wait before slot `s` starts again, its process having run `ran_ms`. */
static uint64_t next_backoff(slot_t *s, uint64_t ran_ms) {
  uint64_t wait;
  if (ran_ms >= BACKOFF_RESET_MS) s->backoff_ms = BACKOFF_MIN_MS;
  wait = s->backoff_ms;
  s->backoff_ms = wait * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : wait * 2;
  return wait;
}

static void on_child_exit(uv_process_t *proc, int64_t status, int signum) {
  child_t *c = proc->data;
  slot_t *s = c->slot;
  master_t *m = s->m;
  uint64_t ran = uv_now(m->loop) - c->started_ms, wait;
  int pid = proc->pid;
  char how[96];
  describe_exit(how, sizeof how, status, signum);
  s->child = NULL;
  m->running--;
  child_close(c);
  if (m->stopping) {
    llmux_log(LLMUX_LOG_INFO | LLMUX_LOG_ALWAYS, "worker %d (pid %d) %s", s->index, pid, how);
    /* A worker still starting when our SIGTERM came had no handler yet:
     * killed by it, it stopped as asked. */
    if (status != 0 || (signum != 0 && signum != SIGTERM)) m->status = 1;
    if (m->running == 0) master_close(m);
    return;
  }
  wait = next_backoff(s, ran);
  llmux_log(LLMUX_LOG_WARN | LLMUX_LOG_ALWAYS,
            "worker %d (pid %d) %s after %llu ms: restarting it in %llu ms", s->index, pid,
            how, (unsigned long long)ran, (unsigned long long)wait);
  uv_timer_start(&s->restart, on_restart, wait, 0);
}

/* Starts the process of slot `s`: this binary again, with the same
 * arguments. 0 or a libuv error. */
static int spawn(slot_t *s) {
  master_t *m = s->m;
  child_t *c = llmux_xcalloc(1, sizeof *c);
  uv_stdio_container_t stdio[4];
  uv_process_options_t po;
  char **env = worker_env(m, s->index);
  int rc;
  c->slot = s;
  c->open_handles = 2;
  uv_pipe_init(m->loop, &c->chan, 0);
  c->proc.data = c->chan.data = c;
  memset(&po, 0, sizeof po);
  stdio[0].flags = UV_IGNORE; /* /dev/null */
  stdio[1].flags = stdio[2].flags = UV_INHERIT_FD;
  stdio[1].data.fd = 1;
  stdio[2].data.fd = 2;
  stdio[CHANNEL_FD].flags = UV_CREATE_PIPE | UV_READABLE_PIPE | UV_WRITABLE_PIPE;
  stdio[CHANNEL_FD].data.stream = (uv_stream_t *)&c->chan;
  /* The binary this master runs, even when a new build replaced the file. */
  po.file = "/proc/self/exe";
  po.args = (char **)m->argv;
  po.env = env;
  po.flags = UV_PROCESS_DETACHED; /* its own session: signals come from the master */
  po.stdio = stdio;
  po.stdio_count = 4;
  po.exit_cb = on_child_exit;
  rc = uv_spawn(m->loop, &c->proc, &po);
  free_env(env);
  if (rc != 0) {
    child_close(c); /* uv_spawn initialised the handle, failing or not */
    return rc;
  }
  c->started_ms = uv_now(m->loop);
  s->child = c;
  m->running++;
  uv_read_start((uv_stream_t *)&c->chan, on_chan_alloc, on_chan_read);
  llmux_log(LLMUX_LOG_INFO | LLMUX_LOG_ALWAYS, "worker %d started: pid %d", s->index,
            c->proc.pid);
  return 0;
}

static void on_restart(uv_timer_t *t) {
  slot_t *s = t->data;
  uint64_t wait;
  int rc;
  if (s->m->stopping || s->child != NULL) return;
  if ((rc = spawn(s)) == 0) return;
  wait = next_backoff(s, 0);
  llmux_log(LLMUX_LOG_ERROR | LLMUX_LOG_ALWAYS,
            "cannot start worker %d: %s: trying again in %llu ms", s->index, uv_strerror(rc),
            (unsigned long long)wait); /* libuv's code */
  uv_timer_start(&s->restart, on_restart, wait, 0);
}

/* ---- signals ------------------------------------------------------------------ */

/* The operator asked for a stop (or the start failed): the workers drain;
 * once the last has exited, the master's handles close. */
static void stop(master_t *m) {
  size_t i;
  m->stopping = 1;
  for (i = 0; i < m->nslots; i++) uv_timer_stop(&m->slots[i].restart);
  signal_all(m, SIGTERM);
  if (m->running == 0) master_close(m);
}

static void on_stop_signal(uv_signal_t *h, int signum) {
  master_t *m = h->data;
  const char *name = signum == SIGINT ? "SIGINT" : "SIGTERM";
  if (m->stopping) {
    llmux_log(LLMUX_LOG_INFO | LLMUX_LOG_ALWAYS,
              "master: received %s again: %zu workers stop now", name, m->running);
    signal_all(m, SIGTERM); /* a worker's second SIGTERM: it stops at once */
    return;
  }
  llmux_log(LLMUX_LOG_INFO | LLMUX_LOG_ALWAYS,
            "master: received %s: draining %zu workers (send it again to stop them now)",
            name, m->running);
  stop(m);
}

/* [server] keys the master reads once: a reload does not move them. */
static void warn_restart_only(const master_t *m, const llmux_config_t *cfg) {
  if (cfg->server.workers != m->nslots)
    llmux_warn("reload: [server] workers changed: it takes effect at the next restart");
  if (strcmp(cfg->server.listen, m->listen_conf) != 0)
    llmux_warn("reload: [server] listen changed: it takes effect at the next restart");
}

/* The master checks the files first: an invalid configuration is reported
 * once, here, and no worker is disturbed. */
static void on_sighup(uv_signal_t *h, int signum) {
  master_t *m = h->data;
  llmux_config_t *cfg;
  llmux_diag_t diag;
  (void)signum;
  if (m->stopping) {
    llmux_warn("master: received SIGHUP while stopping: not reloading");
    return;
  }
  llmux_info("master: received SIGHUP: checking %s", m->config_path);
  llmux_diag_init(&diag);
  if (check_config(m->config_path, &cfg, &diag) != 0) {
    log_errors(&diag);
    llmux_error("reload of %s refused: the configuration has errors; the workers keep "
                "serving theirs", m->config_path);
  } else {
    warn_restart_only(m, cfg);
    if (!m->verbose) llmux_log_level = cfg->server.log_level;
    llmux_config_free(cfg);
    llmux_log(LLMUX_LOG_INFO | LLMUX_LOG_ALWAYS,
              "master: the configuration is valid: %zu workers reload it",
              signal_all(m, SIGHUP));
  }
  llmux_diag_free(&diag);
}

/* A worker reloaded on POST /admin/reload and checked the files doing so:
 * the others follow, the one that already reloaded does not. */
static void reload_others(master_t *m, const slot_t *from) {
  size_t i, n = 0;
  if (m->stopping) return;
  for (i = 0; i < m->nslots; i++) {
    child_t *c = m->slots[i].child;
    if (&m->slots[i] != from && c != NULL && uv_process_kill(&c->proc, SIGHUP) == 0) n++;
  }
  llmux_log(LLMUX_LOG_INFO | LLMUX_LOG_ALWAYS,
            "master: worker %d reloaded (POST /admin/reload): %zu other workers reload", from->index, n);
}

static void on_sigusr1(uv_signal_t *h, int signum) {
  master_t *m = h->data;
  (void)signum;
  llmux_info("master: received SIGUSR1: %zu workers reopen their access logs",
             signal_all(m, SIGUSR1));
}

/* ---- the master's life ------------------------------------------------------------ */

/* The last worker exited: what is left open closes, and uv_run returns. */
static void master_close(master_t *m) {
  size_t i;
  if (m->closed) return;
  m->closed = 1;
  uv_close((uv_handle_t *)&m->sigint, NULL);
  uv_close((uv_handle_t *)&m->sigterm, NULL);
  uv_close((uv_handle_t *)&m->sighup, NULL);
  uv_close((uv_handle_t *)&m->sigusr1, NULL);
  for (i = 0; i < m->nslots; i++) uv_close((uv_handle_t *)&m->slots[i].restart, NULL);
}

static void signals_start(master_t *m) {
  uv_signal_init(m->loop, &m->sigint);
  uv_signal_init(m->loop, &m->sigterm);
  uv_signal_init(m->loop, &m->sighup);
  uv_signal_init(m->loop, &m->sigusr1);
  m->sigint.data = m->sigterm.data = m->sighup.data = m->sigusr1.data = m;
  uv_signal_start(&m->sigint, on_stop_signal, SIGINT);
  uv_signal_start(&m->sigterm, on_stop_signal, SIGTERM);
  uv_signal_start(&m->sighup, on_sighup, SIGHUP);
  uv_signal_start(&m->sigusr1, on_sigusr1, SIGUSR1);
}

/* Every worker, in order; a worker that cannot be started at all stops the
 * others and the master (exit 1): nothing would start the next time either. */
static void start_workers(master_t *m) {
  size_t i;
  int rc;
  for (i = 0; i < m->nslots; i++) {
    slot_t *s = &m->slots[i];
    s->m = m;
    s->index = (int)i;
    s->backoff_ms = BACKOFF_MIN_MS;
    uv_timer_init(m->loop, &s->restart);
    s->restart.data = s;
  }
  for (i = 0; i < m->nslots; i++) {
    if ((rc = spawn(&m->slots[i])) == 0) continue;
    llmux_error("cannot start worker %zu: %s", i, uv_strerror(rc)); /* libuv's code */
    m->status = 1;
    stop(m);
    return;
  }
}

/* The configuration as `llmux serve` reports it, and the port: what must
 * hold before any worker starts. 0, or the exit status. */
static int prepare(master_t *m) {
  llmux_config_t *cfg;
  llmux_diag_t diag;
  int rc;
  llmux_diag_init(&diag);
  rc = check_config(m->config_path, &cfg, &diag);
  llmux_cli_print_diag(&diag, 1);
  if (rc != 0)
    fprintf(stderr, "llmux: %zu error%s in the configuration (%s)\n", diag.errors,
            diag.errors == 1 ? "" : "s", m->config_path);
  llmux_diag_free(&diag);
  if (rc != 0) return 1;
  if (!m->verbose) llmux_log_level = cfg->server.log_level;
  rc = reserve(m, cfg->server.host, cfg->server.port);
  if (rc != 0) llmux_error("cannot listen on %s: %s", cfg->server.listen, llmux_strerror(rc));
  m->nslots = cfg->server.workers > MAX_WORKERS ? MAX_WORKERS : (size_t)cfg->server.workers;
  m->listen_conf = llmux_xstrdup(cfg->server.listen);
  llmux_config_free(cfg);
  return rc != 0 ? 1 : 0;
}

int llmux_master_run(const char *config_path, int verbose, char *const *argv) {
  master_t m;
  uv_loop_t loop;
  int rc;
  memset(&m, 0, sizeof m);
  m.config_path = config_path;
  m.verbose = verbose;
  m.argv = argv;
  m.reserved_fd = -1;
  signal(SIGPIPE, SIG_IGN);
  if ((rc = prepare(&m)) != 0) goto done;
  if ((rc = uv_loop_init(&loop)) != 0) {
    llmux_error("cannot start the event loop: %s", uv_strerror(rc)); /* libuv's code */
    rc = 1;
    goto done;
  }
  m.loop = &loop;
  m.slots = llmux_xcalloc(m.nslots, sizeof *m.slots);
  signals_start(&m); /* before the first worker: a SIGTERM now reaches them all */
  llmux_log(LLMUX_LOG_INFO | LLMUX_LOG_ALWAYS, "master pid %d: starting %zu workers on %s",
            (int)getpid(), m.nslots, m.listen);
  start_workers(&m);
  uv_run(&loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop) != 0) llmux_warn("master: event loop closed with handles open");
  llmux_log(LLMUX_LOG_INFO | LLMUX_LOG_ALWAYS, "master: every worker has stopped");
  rc = m.status;
done:
  if (m.reserved_fd >= 0) close(m.reserved_fd);
  free(m.slots);
  free(m.listen);
  free(m.listen_conf);
  return rc;
}

/* ---- the worker's side ------------------------------------------------------------- */

int llmux_worker_index(void) {
  const char *v = getenv("LLMUX_WORKER");
  uint64_t n;
  if (v == NULL || *v == '\0') return -1;
  if (llmux_parse_u64(v, &n) != 0 || n >= MAX_WORKERS) return LLMUX_EINVAL;
  return (int)n;
}

static int channel = -1;

/* After this worker's POST /admin/reload: the master has the others reload. */
static void tell_master(llmux_gateway_t *gw) {
  char b = CHANNEL_RELOADED;
  (void)gw;
  if (channel < 0) {
    llmux_warn("no channel to a master: the other workers were not reloaded");
    return;
  }
  if (send(channel, &b, 1, MSG_NOSIGNAL | MSG_DONTWAIT) != 1)
    llmux_warn("cannot ask the master to reload the other workers: %s", strerror(errno));
}

/* fd 3, when it is a Unix socket: the master's socketpair. A worker started
 * by hand (LLMUX_WORKER set in a shell) has none, and must not write to
 * whatever its fd 3 may be. */
static int open_channel(void) {
  struct sockaddr_storage sa;
  socklen_t len = sizeof sa;
  if (getsockname(CHANNEL_FD, (struct sockaddr *)&sa, &len) != 0 || sa.ss_family != AF_UNIX)
    return -1;
  fcntl(CHANNEL_FD, F_SETFD, FD_CLOEXEC);
  return CHANNEL_FD;
}

int llmux_worker_run(const char *config_path, const char *plugin_dir, int verbose, int index) {
  struct pollfd p;
  int rc;
  /* SIGTERM, as from an operator: a worker whose master died drains and
   * exits rather than serve on unwatched. */
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  snprintf(llmux_log_tag, sizeof llmux_log_tag, "worker %d", index);
  /* Until the gateway's handlers are in place, a SIGHUP or SIGUSR1 the
   * master passes on must not kill a worker still starting (which loads
   * the files as they are anyway). */
  signal(SIGHUP, SIG_IGN);
  signal(SIGUSR1, SIG_IGN);
  channel = open_channel();
  p.fd = channel;
  p.events = POLLIN;
  p.revents = 0;
  /* The master died before the line above could bind us to it: its end of
   * the channel is closed. */
  if (channel >= 0 && poll(&p, 1, 0) == 1 && (p.revents & (POLLIN | POLLHUP))) {
    llmux_error("worker %d: the master is gone: not starting", index);
    return 1;
  }
  llmux_log(LLMUX_LOG_INFO | LLMUX_LOG_ALWAYS, "worker %d (pid %d, master %d): starting",
            index, (int)getpid(), (int)getppid());
  rc = llmux_serve_worker(config_path, plugin_dir, verbose, tell_master);
  return rc == 0 ? 0 : 1;
}
