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

/* 127.0.0.0/8, ::1 and IPv4-mapped 127.0.0.0/8. */
int llmux_admin_peer_is_loopback(const struct sockaddr_storage *peer);

#endif
