/*
 * net.h — getting an authenticated, verified libetpan session.
 *
 * libetpan checks no certificate, sends no SNI, never sets TCP_NODELAY and
 * spins at full CPU on EOF inside a literal (see docs/design.md). This module
 * is the one place that deals with all of that:
 *
 *  - TCP connect to every address of the host (IPv4 and IPv6), TCP_NODELAY.
 *  - TLS: implicit (imaps/pop3s) or STARTTLS/STLS, which is then required:
 *    if the server does not offer it, refuse before any credential is sent.
 *    SNI is sent. After the handshake and before any credential, the chain
 *    is verified with GnuTLS against the system trust store (plus --ca-file)
 *    for the URL's host name and the TLS server purpose.
 *  - The low stream is wrapped so that EOF is an error at once (no spin)
 *    and reads/writes time out after opts->timeout_s seconds of silence.
 *  - Capabilities are re-read after STARTTLS and after login.
 *  - Login (IMAP): LOGIN, or AUTHENTICATE PLAIN when the server says
 *    LOGINDISABLED or the credentials are not ASCII (libetpan sends LOGIN
 *    arguments as 7-bit quoted strings); ?auth=MECH picks a SASL mechanism
 *    (plain, login, cram-md5) or XOAUTH2. POP3: USER/PASS, or SASL. The
 *    password never reaches a log: --trace redacts every credential line.
 */
#ifndef POSTINO_NET_H
#define POSTINO_NET_H

#include <libetpan/libetpan.h>

#include "store.h"
#include "url.h"

/*
 * Connects, secures, authenticates. On STORE_OK *imap_r is an authenticated
 * session. On failure returns STORE_CONN_BAD (network trouble: worth
 * retrying) or STORE_FATAL with *kind_r saying why; *err_r gets one line
 * naming host and cause (caller frees).
 */
enum store_rc net_imap_login(mailimap **imap_r, const struct account_url *u,
    const struct store_opts *o, enum store_fatal_kind *kind_r, char **err_r);

/* The same for POP3 (USER/PASS over TLS, or SASL PLAIN). */
enum store_rc net_pop3_login(mailpop3 **pop_r, const struct account_url *u,
    const struct store_opts *o, enum store_fatal_kind *kind_r, char **err_r);

/*
 * Closes a POP3 session WITHOUT sending QUIT (so that no pending DELE is
 * committed): closes the stream first, then frees.
 */
void net_pop3_abort(mailpop3 *pop);

/*
 * Closes an IMAP session WITHOUT sending LOGOUT: for a connection that
 * failed (LOGOUT would wait out the timeout on a dead peer) or was never
 * trusted. Closes the stream, then frees. NULL is allowed.
 */
void net_imap_abort(mailimap *imap);

/* Re-reads CAPABILITY (libetpan keeps a stale list after STARTTLS).
 * Returns libetpan's code: MAILIMAP_NO_ERROR (0) on success. */
int net_imap_refresh_caps(mailimap *imap);

/* Process-wide initialisation (GnuTLS, libetpan globals). Call once. */
void net_global_init(void);

#endif
