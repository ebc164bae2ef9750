/* For the shared-state tests: a real redis-server of our own on a free
 * loopback port (no persistence, in a temporary directory), a blocking admin
 * client to pause, flush or read it, and a loop driver that runs until a
 * condition holds. Setup may block; only the code under test runs on the
 * loop. The waits are bounded so a broken build fails instead of hanging,
 * and no test asserts how long anything took. */
#ifndef LLMUX_TEST_SHARED_SUPPORT_H
#define LLMUX_TEST_SHARED_SUPPORT_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <uv.h>

typedef struct redis_server_s {
  pid_t pid;
  int port;
  char dir[64];
  char password[64];
} redis_server_t;

/* Whether redis-server is on PATH (Debian's package: install-deps --test). */
static int redis_installed(void) {
  const char *path = getenv("PATH");
  char buf[4096], *dir, *save = NULL;
  if (path == NULL) return 0;
  snprintf(buf, sizeof(buf), "%s", path);
  for (dir = strtok_r(buf, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
    char f[4200];
    snprintf(f, sizeof(f), "%s/redis-server", dir);
    if (access(f, X_OK) == 0) return 1;
  }
  return 0;
}

#define SKIP_WITHOUT_REDIS()                                                        \
  do {                                                                              \
    if (!redis_installed()) {                                                       \
      fprintf(stderr, "SKIP: redis-server is not installed "                        \
                      "(scripts/install-deps.sh --test installs it)\n");            \
      skip();                                                                       \
    }                                                                               \
  } while (0)

static void msleep(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int free_port(void) {
  struct sockaddr_in a;
  socklen_t len = sizeof(a);
  int fd = socket(AF_INET, SOCK_STREAM, 0), port;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0)
    abort();
  port = ntohs(a.sin_port);
  close(fd);
  return port;
}

static int port_open(int port) {
  struct sockaddr_in a;
  int fd = socket(AF_INET, SOCK_STREAM, 0), ok;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
  close(fd);
  return ok;
}

/* Servers still running when the test process exits (a failed assertion
 * skips its teardown) are killed then, and their directories removed. */
static pid_t started_pids[64];
static char started_dirs[64][64];

static void kill_started(void) {
  size_t i;
  char cmd[4200]; /* "rm -rf" and a path */
  for (i = 0; i < sizeof(started_pids) / sizeof(started_pids[0]); i++) {
    if (started_pids[i] <= 0) continue;
    kill(started_pids[i], SIGKILL);
    waitpid(started_pids[i], NULL, 0);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", started_dirs[i]);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", started_dirs[i]);
  }
}

static void track_pid(pid_t pid, pid_t replace, const char *dir) {
  static int registered;
  size_t i;
  if (!registered) registered = atexit(kill_started) == 0;
  for (i = 0; i < sizeof(started_pids) / sizeof(started_pids[0]); i++) {
    if (started_pids[i] != replace) continue;
    started_pids[i] = pid;
    snprintf(started_dirs[i], sizeof(started_dirs[i]), "%s", dir);
    return;
  }
}

/* Starts redis-server on srv->port (a free one if 0), with srv->password
 * if set, and waits until it accepts connections. */
static void redis_start(redis_server_t *srv) {
  char port[16];
  int i;
  if (srv->port == 0) srv->port = free_port();
  if (srv->dir[0] == '\0') {
    snprintf(srv->dir, sizeof(srv->dir), "/tmp/llmux-redis-XXXXXX");
    if (mkdtemp(srv->dir) == NULL) abort();
  }
  snprintf(port, sizeof(port), "%d", srv->port);
  srv->pid = fork();
  if (srv->pid == 0) {
    const char *argv[20];
    int n = 0;
    int null = open("/dev/null", O_WRONLY);
    /* Nothing of ours stays open in it, and it dies with the test even
     * when an abort skips every teardown: ctest then never waits on it. */
    if (null >= 0) {
      dup2(null, 1);
      dup2(null, 2);
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    argv[n++] = "redis-server";
    argv[n++] = "--port";
    argv[n++] = port;
    argv[n++] = "--bind";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--save";
    argv[n++] = "";
    argv[n++] = "--appendonly";
    argv[n++] = "no";
    argv[n++] = "--dir";
    argv[n++] = srv->dir;
    if (srv->password[0]) {
      argv[n++] = "--requirepass";
      argv[n++] = srv->password;
    }
    argv[n] = NULL;
    execvp("redis-server", (char *const *)argv);
    _exit(127);
  }
  track_pid(srv->pid, 0, srv->dir);
  for (i = 0; i < 1000 && !port_open(srv->port); i++) msleep(10);
  if (!port_open(srv->port)) {
    fprintf(stderr, "redis-server did not start on port %d\n", srv->port);
    abort();
  }
}

static void redis_kill(redis_server_t *srv) {
  int status;
  if (srv->pid <= 0) return;
  kill(srv->pid, SIGKILL);
  waitpid(srv->pid, &status, 0);
  track_pid(0, srv->pid, "");
  srv->pid = 0;
}

static void redis_stop(redis_server_t *srv) {
  char cmd[128];
  redis_kill(srv);
  if (srv->dir[0]) {
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", srv->dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", srv->dir);
    srv->dir[0] = '\0';
  }
}

static void redis_url(const redis_server_t *srv, char *out, size_t n) {
  snprintf(out, n, "redis://127.0.0.1:%d", srv->port);
}

/* A blocking admin command; the reply is the caller's (freeReplyObject). */
static redisReply *redis_admin(const redis_server_t *srv, const char *fmt, ...) {
  redisContext *c = redisConnect("127.0.0.1", srv->port);
  redisReply *r = NULL;
  va_list ap;
  if (c == NULL || c->err) abort();
  if (srv->password[0]) {
    redisReply *a = redisCommand(c, "AUTH %s", srv->password);
    freeReplyObject(a);
  }
  va_start(ap, fmt);
  r = redisvCommand(c, fmt, ap);
  va_end(ap);
  redisFree(c);
  return r;
}

/* ---- The loop --------------------------------------------------------------- */

typedef int (*cond_fn)(void *arg);

static void tick_cb(uv_timer_t *t) { (void)t; }

/* Runs the loop until cond(arg) holds; fails the test after about 20 s of
 * wall time (a hang, not a slow machine). */
static void run_until(uv_loop_t *loop, cond_fn cond, void *arg) {
  uv_timer_t tick;
  uint64_t start = uv_hrtime();
  uv_timer_init(loop, &tick);
  uv_timer_start(&tick, tick_cb, 5, 5);
  while (!cond(arg)) {
    if (uv_hrtime() - start > 20000000000ull) {
      fprintf(stderr, "run_until: the condition never held\n");
      abort();
    }
    uv_run(loop, UV_RUN_ONCE);
  }
  uv_close((uv_handle_t *)&tick, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

/* Lets the loop run for a while (for "nothing happens" checks). */
static __attribute__((unused)) int nothing(void *arg) {
  uint64_t *until = arg;
  return uv_hrtime() >= *until;
}

static __attribute__((unused)) void run_for_ms(uv_loop_t *loop, unsigned ms) {
  uint64_t until = uv_hrtime() + (uint64_t)ms * 1000000u;
  run_until(loop, nothing, &until);
}

/* Runs the loop until it has nothing left, then closes it: fails if a
 * handle was left open. */
static void close_loop(uv_loop_t *loop) {
  int i;
  for (i = 0; i < 100 && uv_run(loop, UV_RUN_NOWAIT) != 0; i++) msleep(1);
  if (uv_loop_close(loop) != 0) {
    fprintf(stderr, "close_loop: handles left open\n");
    abort();
  }
}

#endif /* LLMUX_TEST_SHARED_SUPPORT_H */
