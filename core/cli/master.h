/* `llmux serve` with [server] workers = N | auto (N > 1): a master process
 * and N worker processes, each one of today's gateways on its own loop.
 *
 * The master loads and checks the configuration as the gateway would
 * (plugins and CA bundles included) and refuses to start on errors. It binds
 * the listen address itself with SO_REUSEPORT but never listens: the kernel
 * hands it no connection, the port is taken before any worker runs (a busy
 * port fails at once, with one message), and port 0 becomes one port that
 * every worker binds. It then starts the workers by executing its own binary
 * again (/proc/self/exe, the same arguments) with LLMUX_WORKER=<index> and
 * LLMUX_LISTEN=<host:port> in their environment. Workers share the master's
 * stdout and stderr, and run in their own session: a terminal's Ctrl-C
 * reaches the master alone, which passes it on once.
 *
 * The master then
 * - restarts a worker that exits while the master is not stopping, after a
 *   backoff (100 ms, doubling up to 30 s; back to 100 ms once a worker ran
 *   30 s), logging each exit with the pid, index and status or signal;
 * - on SIGHUP, loads the configuration again: with errors it logs them as
 *   `file:line: message` lines and signals nobody; else it sends SIGHUP to
 *   every worker, which reloads (each to the next generation);
 * - on SIGUSR1, sends it to every worker (reopen the access log);
 * - on SIGTERM or SIGINT, sends SIGTERM to every worker (they drain), waits
 *   for all to exit and exits 0 (1 if one did not exit 0); a second signal
 *   sends SIGTERM again, so the workers stop at once.
 *
 * A worker is llmux_serve_worker: SO_REUSEPORT on its listener, and
 * PR_SET_PDEATHSIG so that it drains and exits when its master dies. A
 * successful POST /admin/reload reloads the worker that took it, which then
 * tells the master on a channel (fd 3, a socketpair from uv_spawn); the
 * master sends SIGHUP to the other workers only. So every worker moves one
 * generation, whichever way the reload came. */
#ifndef LLMUX_CLI_MASTER_H
#define LLMUX_CLI_MASTER_H

/* This process's index among its master's workers (LLMUX_WORKER): >= 0; -1
 * when it is not a worker; LLMUX_EINVAL when the variable holds no index. */
int llmux_worker_index(void);

/* 1 when `config_path` loads and asks for more than one worker. A
 * configuration with errors answers 0, so that llmux_serve reports them as
 * it always has. */
int llmux_master_wanted(const char *config_path);

/* Runs the master until its workers have stopped. `argv` (NULL-terminated,
 * as main's) is given again to each worker; `verbose`: as llmux_serve's.
 * Returns the exit status. */
int llmux_master_run(const char *config_path, int verbose, char *const *argv);

/* Runs worker `index` (llmux_serve_worker). Returns the exit status. */
int llmux_worker_run(const char *config_path, const char *plugin_dir, int verbose, int index);

#endif
