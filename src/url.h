/*
 * url.h — account URLs: imap://, imaps://, pop3://, pop3s://.
 *
 *   SCHEME://USER@HOST[:PORT][/][?tls=none][&auth=MECH]
 *
 * USER is percent-decoded (user%40example.com). HOST may be an IPv6 literal
 * in brackets. imaps/pop3s use implicit TLS (ports 993/995); imap/pop3 use
 * STARTTLS/STLS, which is then required (ports 143/110). Plaintext only with
 * tls=none. A password in the URL (user:pass@) is refused: passwords never go
 * on the command line.
 */
#ifndef POSTINO_URL_H
#define POSTINO_URL_H

#include <stddef.h>
#include <stdint.h>

enum acct_proto { PROTO_IMAP, PROTO_POP3 };
enum tls_mode { TLS_IMPLICIT, TLS_STARTTLS, TLS_NONE };

struct account_url {
	enum acct_proto proto;
	enum tls_mode tls;
	char *user;     /* decoded */
	char *host;     /* without brackets */
	uint16_t port;  /* explicit or the scheme's default */
	char *auth;     /* ?auth=MECH, or NULL */
	char *display;  /* canonical form, no secrets: for logs and reports */
	/*
	 * Which mailbox this is, not how we log in to it: "imap:USER@HOST:PORT"
	 * or "pop3:USER@HOST:PORT" (USER encoded as in display). No TLS mode,
	 * no mechanism: switching from a password to XOAUTH2, or from
	 * STARTTLS to implicit TLS on the same port, is the same account. The
	 * state DB is bound to it and the default state path is its hash.
	 */
	char *account;
};

/*
 * Parses s into *u. Returns 0, or -1 with *err set to a one-line message
 * naming what is wrong (caller frees *err). On error *u is left empty.
 */
int url_parse(const char *s, struct account_url *u, char **err);
void url_free(struct account_url *u);

/*
 * The canonical name of SASL mechanism mech ("plain", "login", "cram-md5",
 * "xoauth2"; any case), or NULL if postino does not know it.
 */
const char *url_auth_mech(const char *mech);

/*
 * Sets u's mechanism, as ?auth=MECH in the URL would (--auth1/--auth2 on
 * the command line), and remakes u->display. Returns 0, or -1 with *err
 * set to one line (caller frees): an unknown mechanism, or XOAUTH2 for a
 * POP3 account.
 */
int url_set_auth(struct account_url *u, const char *mech, char **err);

/*
 * Every display form an account with u's identity can have: each TLS mode
 * and each mechanism (or none), u->display first. Before identities, the
 * state DB recorded display forms and the default state path hashed them:
 * these are the names an existing state may go by. Returns the number of
 * strings in *list_r; the caller frees them and the array.
 */
size_t url_display_forms(const struct account_url *u, char ***list_r);

#endif
