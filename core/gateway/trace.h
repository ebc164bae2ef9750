/* Traces (`[server] otlp_endpoint`): the W3C trace context of one request,
 * and its spans built from its llmux_reqlog_t when it ends.
 *
 * A request is in one of three trace modes, told by its record:
 *   - traced (rec->span_id is not zero): an exporter is configured and the
 *     client's traceparent, if any, is sampled. The trace is the client's
 *     or a fresh one; each upstream attempt is a CLIENT span, and the
 *     provider is sent `traceparent: 00-<trace>-<attempt span>-<flags>`.
 *     When the request ends, a SERVER span `{operation} {model}` and one
 *     CLIENT span per kept attempt go to the exporter.
 *   - passed through (has_parent, span_id zero): the client sent a valid
 *     traceparent but no exporter is configured, or its sampled flag is off.
 *     We make no span, so the provider gets the client's traceparent (and
 *     tracestate) unchanged: its spans hang under the client's.
 *   - none (neither): no header goes upstream, nothing is built.
 * Without an exporter a request costs one header lookup: no id is drawn,
 * no span built, nothing allocated.
 *
 * The gateway owns the exporter (gw->otlp): opened at start, replaced on a
 * reload that changes the endpoint, closed before the upstream pool it
 * sends through. Everything runs on the loop. */
#ifndef LLMUX_GATEWAY_TRACE_H
#define LLMUX_GATEWAY_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "gateway/otlp.h"
#include "gateway/reqlog.h"

struct llmux_gateway_s;
struct llmux_http_req_s;

/* ---- per request ---------------------------------------------------------- */

/* Reads the client's `traceparent` into rec (after llmux_reqlog_begin, which
 * zeroes it) and, when traced, draws the trace id (unless the client gave
 * one) and our SERVER span id from the gateway's generator. */
void llmux_trace_begin(struct llmux_gateway_s *gw, llmux_reqlog_t *rec,
                       const struct llmux_http_req_s *req);

/* A new attempt's CLIENT span id into span_id; zero when not traced. */
void llmux_trace_attempt(struct llmux_gateway_s *gw, const llmux_reqlog_t *rec,
                         uint8_t span_id[8]);

/* The trace headers for the provider, appended to `headers` as
 * "traceparent: ...\r\n" (and the client's "tracestate: ...\r\n" when it
 * sent one, at most 512 bytes): the attempt's span as parent when traced,
 * the client's traceparent as it came when passed through, nothing
 * otherwise. `client` may be NULL (no tracestate then). 0 or ENOMEM. */
int llmux_trace_headers(const llmux_reqlog_t *rec, const uint8_t span_id[8],
                        const struct llmux_http_req_s *client, llmux_buf_t *headers);

/* The request ended: its spans go to the exporter. Does nothing when the
 * request is not traced or the exporter is gone (a reload removed it, the
 * gateway is stopping). Called from llmux_reqlog_done. */
void llmux_trace_request_done(struct llmux_gateway_s *gw, const llmux_reqlog_t *rec);

/* The spans of one traced record, each passed to emit (their strings live
 * for that call only): the SERVER span first, then a CLIENT span per kept
 * attempt. Returns how many; 0 when the record is not traced or has no
 * operation. For llmux_trace_request_done and tests. */
size_t llmux_trace_spans(const llmux_reqlog_t *rec,
                         void (*emit)(void *arg, const llmux_span_t *span), void *arg);

/* ---- the exporter's life ---------------------------------------------------- */

/* Opens gw->otlp when gw->cfg->server.otlp_endpoint is set (after the
 * upstream pool). 0, or the exporter's error. */
int llmux_trace_open(struct llmux_gateway_s *gw);
/* Before `next` becomes current: when its endpoint differs, the exporter
 * closes (sending what it holds) and one for the new endpoint opens. */
void llmux_trace_reload(struct llmux_gateway_s *gw, const llmux_config_t *next);
/* Closes gw->otlp; cb(arg) follows once its last export ended (at most 2 s
 * later, never inside this call). Returns 0 when there was none to close:
 * then cb is not called. */
int llmux_trace_close(struct llmux_gateway_s *gw, void (*cb)(void *arg), void *arg);

#endif
