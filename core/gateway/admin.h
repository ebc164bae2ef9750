/* The operator's endpoints, /admin/...
 *
 *   GET  /admin/config   {"generation": N, "loaded_at": "RFC 3339, UTC",
 *                         "files": [{"path", "sha256"}, ...]}: the
 *                        generation new requests get, and the files it was
 *                        read from with the SHA-256 of the bytes parsed.
 *   POST /admin/reload   loads the files again (llmux_gateway_reload): 200
 *                        and the new generation's /admin/config object plus
 *                        "warnings": [lines]; or 400 invalid_config with
 *                        "errors": ["file:line: message", ...] (and
 *                        "warnings"), the old generation still serving; or
 *                        503 reload_unavailable while stopping.
 *   GET  /admin/routes   every route of the current generation, in config
 *                        order, with what the gateway observed of it:
 *     {"generation": N, "now": T,
 *      "routes": [{"provider": "groq", "model": "llama-3.3-70b",
 *                  "provider_model": "llama-3.3-70b-versatile",
 *                  "enabled": true, "disabled_reason": null | "...",
 *                  "breaker": {"state": "closed" | "half_open" | "open",
 *                              "until": T | null, "failures": n},
 *                  "remaining": {"requests_minute": DIM, "requests_day": DIM,
 *                                "tokens_minute": DIM, "tokens_day": DIM},
 *                  "blocked": null | {"reason": "retry_after" | "spend_limit",
 *                                     "until": T | null},
 *                  "in_flight": n, "latency_ms": x | null,
 *                  "last_error": null | {"message": "...", "at": T}}, ...]}
 *     T is an RFC 3339 UTC time with milliseconds; "now" is the gateway's
 *     clock, for reading the others. breaker.until: the end of an open
 *     breaker's rest (null when closed or half-open, where one probe may
 *     go); failures: those counted towards opening it (since the last
 *     success, within cooldown_window; 0 again once it opened). DIM is
 *     {"remaining": n, "limit": n | null, "reset": T | null}, what the limit
 *     store thinks is left (llmux_rl_left: the least of the configured
 *     limit minus our count and the provider's reported remaining, route
 *     and provider-wide), the limit of the view that binds (null when the
 *     provider reported none), and when that count next rises; or null for a
 *     dimension nothing limits. blocked: a retry-after or spend-limit rest
 *     of the route or its provider (until null: open-ended). latency_ms:
 *     the decaying average of time to first byte, null before the first
 *     success. last_error: the last failure the route was blamed for (or
 *     a 429), as a status and a class ("500 server error", "connection
 *     refused"), never an address.
 *
 * Access is the admin key's, never a tenant's: with [server]
 * admin_key_sha256, `Authorization: Bearer KEY` whose SHA-256 is listed,
 * else 401 invalid_admin_key. Without one, only a loopback peer
 * (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104) is served; any other gets 403
 * admin_loopback_only (a 403 rather than a 404: the operator sees why).
 * The check is made at the head, before a body is read, and again against
 * the configuration current when the request is handled. */
#ifndef LLMUX_GATEWAY_ADMIN_H
#define LLMUX_GATEWAY_ADMIN_H

#include <sys/socket.h>

#include "gateway/server.h"

/* Is `path` /admin or under it? */
int llmux_admin_path(llmux_str_t path);

/* 1 when the request may reach the admin endpoints; else it was answered
 * (401 or 403) and 0 returns. */
int llmux_admin_allow(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid);

/* Serves one /admin request (after llmux_admin_allow). */
void llmux_admin_handle(llmux_gateway_t *gw, llmux_http_req_t *req, const char *rid);

/* GET /admin/routes's body for `gen` (its routes, and the state its router
 * maps them to) and the limit store `rl`, at `now_ms` (the loop clock the
 * router and the store are driven by) and `wall_ms` (Unix ms at that same
 * instant), appended to `out`. */
void llmux_admin_routes_json(const llmux_generation_t *gen, llmux_rl_store_t *rl,
                             uint64_t now_ms, int64_t wall_ms, llmux_buf_t *out);

/* 127.0.0.0/8, ::1 and IPv4-mapped 127.0.0.0/8. */
int llmux_admin_peer_is_loopback(const struct sockaddr_storage *peer);

#endif
