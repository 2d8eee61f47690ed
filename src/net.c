/*
 * net.c — getting an authenticated, verified libetpan session (see net.h).
 *
 * Protocols: RFC 3501 (IMAP4rev1: greeting, PREAUTH, CAPABILITY, STARTTLS,
 * LOGIN, AUTHENTICATE, LOGINDISABLED), RFC 1939 and 2449 (POP3 USER/PASS,
 * CAPA), RFC 2595 (STARTTLS/STLS), RFC 5034 (POP3 AUTH), RFC 6066 (SNI),
 * RFC 6125 (checking the server's identity), RFC 8314 (implicit TLS).
 *
 * libetpan 1.9.4 accepts any certificate, sends no SNI, never sets
 * TCP_NODELAY, and spins at full CPU when the peer closes the connection in
 * the middle of a literal (docs/libetpan.md). So this file:
 *
 *  - opens the TCP connection itself (every address, a connect timeout,
 *    TCP_NODELAY, keepalive) and only then hands the socket to libetpan;
 *  - sets SNI from the TLS callback, and after the handshake verifies the
 *    chain with GnuTLS (system trust + --ca-file, host name or IP address,
 *    TLS server purpose) before a single byte of credentials is written;
 *  - performs STARTTLS/STLS by hand (libetpan's helper would replace the low
 *    stream we install) and refuses the known ways around it: no STARTTLS
 *    offered, PREAUTH before STARTTLS, bytes injected ahead of the handshake;
 *  - wraps each low stream in a driver of ours (struct net_low) that turns
 *    EOF into an error, carries the idle timeout down to the real stream and
 *    counts bytes written;
 *  - traces the protocol through libetpan's logger, with credentials
 *    replaced by "<redacted>".
 *
 * Ownership: the wrapper owns the wrapped stream and the trace state; both go
 * when libetpan frees the low stream (mailimap_free, mailstream_close).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strcasestr */
#endif
#include "net.h"
#include "imap_guard.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <libetpan/libetpan.h>
#include <libetpan/mailimap.h>
#include <libetpan/mailimap_extension.h>
#include <libetpan/mailimap_oauth2.h>
#include <libetpan/mailpop3.h>
#include <libetpan/mailstream.h>
#include <libetpan/mailstream_low.h>
#include <libetpan/mailstream_socket.h>
#include <libetpan/mailstream_ssl.h>

#include "log.h"
#include "util.h"

#define DEFAULT_TIMEOUT_S 300   /* libetpan's own default idle timeout */
#define MAX_CHAIN 16            /* certificates we look at in a chain */
#define TRACE_LINE_MAX 1000     /* bytes of one traced line we keep */
#define SERVER_TEXT_MAX 200     /* bytes of a server's reason we quote */
#define POP3_ARG_MAX 500        /* libetpan's POP3 command buffer is 512 */

/* ------------------------------------------------------------------ */
/* Process-wide set-up                                                  */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void global_init_once(void)
{
	/*
	 * libetpan calls gnutls_global_init/deinit around every TLS stream;
	 * holding one reference here keeps GnuTLS initialised for the whole
	 * run instead of re-loading it on each connection.
	 */
	int r = gnutls_global_init();
	if (r < 0)
		log_error("cannot initialise GnuTLS: %s", gnutls_strerror(r));
	/* No libetpan-stream-debug.log files in the working directory. */
	mailstream_debug = 0;
	/*
	 * Neither libetpan's socket driver nor its GnuTLS session asks for
	 * MSG_NOSIGNAL: a write to a connection the server has closed would
	 * kill the process with SIGPIPE instead of failing with EPIPE.
	 */
	struct sigaction sa;
	if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = SIG_IGN;
		sigemptyset(&sa.sa_mask);
		sigaction(SIGPIPE, &sa, NULL);
	}
}

void net_global_init(void)
{
	pthread_once(&init_once, global_init_once);
}

/* libetpan allocators return NULL only when memory is exhausted. */
static void *need(void *p)
{
	if (!p) {
		fputs("postino: out of memory\n", stderr);
		abort();
	}
	return p;
}

/* ------------------------------------------------------------------ */
/* Protocol trace with credentials redacted                             */

/*
 * One per connection, owned by the current wrapper low stream (and handed
 * to the next one after STARTTLS). Lines are reassembled from libetpan's
 * chunks so that redaction works on whole lines.
 *
 * A client line is redacted when libetpan marks it private (LOGIN,
 * AUTHENTICATE, POP3 USER/PASS), when it names an authentication command
 * (LOGIN, AUTHENTICATE, PASS, AUTH, APOP), or when it follows one before
 * the server has concluded the exchange: SASL responses are sent as plain
 * lines by libetpan's POP3 AUTH.
 */
struct net_trace {
	char *label;
	struct buf line[2];   /* [0] from the server, [1] to the server */
	size_t dropped[2];    /* bytes of the current line beyond TRACE_LINE_MAX */
	bool redact_line;     /* the current client line is not shown */
	bool in_auth;         /* inside an authentication exchange */
};

static struct net_trace *trace_new(const char *label)
{
	struct net_trace *t = xcalloc(1, sizeof *t);
	t->label = xstrdup(label);
	return t;
}

static void wipe_buf(struct buf *b)
{
	if (b->s)
		explicit_bzero(b->s, b->cap);
	b->len = 0;
	if (b->s)
		b->s[0] = 0;
}

static void trace_free(struct net_trace *t)
{
	if (!t)
		return;
	for (int i = 0; i < 2; i++) {
		wipe_buf(&t->line[i]);
		buf_release(&t->line[i]);
	}
	free(t->label);
	free(t);
}

/* The printable form of a line: no CR/LF, control bytes as \xNN. */
static void printable(struct buf *out, const char *s, size_t len)
{
	while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r'))
		len--;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f)
			buf_addf(out, "\\x%02x", c);
		else
			buf_addc(out, (char)c);
	}
}

static bool starts_with_word(const char *s, const char *word)
{
	size_t n = strlen(word);
	return strncasecmp(s, word, n) == 0 && (s[n] == ' ' || s[n] == '\r' ||
	    s[n] == '\n' || s[n] == 0);
}

/* Does this client line start an authentication exchange? */
static bool is_auth_command(const char *line)
{
	return strcasestr(line, "LOGIN") || strcasestr(line, "AUTHENTICATE") ||
	    starts_with_word(line, "PASS") || starts_with_word(line, "AUTH") ||
	    starts_with_word(line, "APOP");
}

/*
 * Does this server line conclude an authentication exchange? IMAP: a tagged
 * response (neither "+" continuation nor "*" untagged); POP3: +OK or -ERR
 * ("+ " is a SASL continuation in POP3 too).
 */
static bool ends_auth(const char *line)
{
	if (strncmp(line, "+OK", 3) == 0 || strncmp(line, "-ERR", 4) == 0)
		return true;
	return line[0] != '+' && line[0] != '*';
}

static void trace_emit(struct net_trace *t, int dir)
{
	struct buf *l = &t->line[dir];
	buf_addc(l, 0);
	l->len--;
	if (dir == 1) {
		if (t->redact_line || is_auth_command(l->s)) {
			log_trace("%s C: <redacted>", t->label);
			t->in_auth = true;
		} else {
			struct buf p = BUF_INIT;
			printable(&p, l->s, l->len);
			if (t->dropped[1])
				buf_addf(&p, " ...(%zu more bytes)", t->dropped[1]);
			log_trace("%s C: %s", t->label, p.s ? p.s : "");
			buf_release(&p);
		}
		t->redact_line = false;
	} else {
		struct buf p = BUF_INIT;
		printable(&p, l->s, l->len);
		if (t->dropped[0])
			buf_addf(&p, " ...(%zu more bytes)", t->dropped[0]);
		log_trace("%s S: %s", t->label, p.s ? p.s : "");
		buf_release(&p);
		if (t->in_auth && ends_auth(l->s))
			t->in_auth = false;
	}
	wipe_buf(l);
	t->dropped[dir] = 0;
}

static void trace_feed(struct net_trace *t, int log_type, const char *p, size_t n)
{
	int dir;
	bool private_data = false;

	switch (log_type) {
	case MAILSTREAM_LOG_TYPE_DATA_RECEIVED:
		dir = 0;
		break;
	case MAILSTREAM_LOG_TYPE_DATA_SENT:
		dir = 1;
		break;
	case MAILSTREAM_LOG_TYPE_DATA_SENT_PRIVATE:
		dir = 1;
		private_data = true;
		break;
	case MAILSTREAM_LOG_TYPE_ERROR_RECEIVED:
		log_trace("%s: read failed (closed, timed out or TLS error)", t->label);
		return;
	case MAILSTREAM_LOG_TYPE_ERROR_SENT:
		log_trace("%s: write failed", t->label);
		return;
	default:
		return; /* libetpan's own banners */
	}

	while (n > 0) {
		const char *nl = memchr(p, '\n', n);
		size_t seg = nl ? (size_t)(nl - p) + 1 : n;
		struct buf *l = &t->line[dir];

		if (dir == 1 && !t->redact_line && (private_data || t->in_auth)) {
			t->redact_line = true;
			wipe_buf(l); /* never keep a secret longer than needed */
		}
		if (!(dir == 1 && t->redact_line)) {
			size_t room = l->len < TRACE_LINE_MAX ? TRACE_LINE_MAX - l->len : 0;
			size_t take = seg < room ? seg : room;
			buf_add(l, p, take);
			t->dropped[dir] += seg - take;
		}
		if (nl)
			trace_emit(t, dir);
		p += seg;
		n -= seg;
	}
}

/* ------------------------------------------------------------------ */
/* The wrapper low stream                                               */

struct net_low {
	mailstream_low *inner;   /* libetpan's socket or TLS stream, owned */
	struct net_trace *trace; /* owned; NULL without --trace */
	uint64_t bytes_out;      /* written through this wrapper */
	struct imap_guard *guard; /* owned; IMAP only (imap_guard.h) */
};

/*
 * The idle timeout lives on the wrapper (store code may change it with
 * mailstream_low_set_timeout); the wrapped stream is the one that waits.
 */
static void sync_timeout(mailstream_low *s, struct net_low *d)
{
	d->inner->timeout = s->timeout;
}

static ssize_t net_low_read(mailstream_low *s, void *buf, size_t count)
{
	struct net_low *d = s->data;
	if (count == 0)
		return 0;
	sync_timeout(s, d);
	ssize_t r = d->inner->driver->mailstream_read(d->inner, buf, count);
	/* What libetpan 1.9.4 cannot parse safely never reaches it. */
	if (r > 0 && d->guard && imap_guard_feed(d->guard, buf, (size_t)r) < 0) {
		log_warn("dropping the connection: %s", d->guard->why);
		return -1;
	}
	/*
	 * 0 means EOF (or a wake-up without data). libetpan's literal reader
	 * would call us again forever; an error ends the command at once.
	 */
	return r == 0 ? -1 : r;
}

static ssize_t net_low_write(mailstream_low *s, const void *buf, size_t count)
{
	struct net_low *d = s->data;
	if (count == 0)
		return 0;
	sync_timeout(s, d);
	ssize_t r = d->inner->driver->mailstream_write(d->inner, buf, count);
	if (r > 0)
		d->bytes_out += (uint64_t)r;
	/* 0: the socket woke up unwritable (error or hang-up); same loop risk. */
	return r == 0 ? -1 : r;
}

static int net_low_close(mailstream_low *s)
{
	struct net_low *d = s->data;
	return mailstream_low_close(d->inner);
}

static int net_low_get_fd(mailstream_low *s)
{
	struct net_low *d = s->data;
	return mailstream_low_get_fd(d->inner);
}

static void net_low_free(mailstream_low *s)
{
	struct net_low *d = s->data;
	mailstream_low_free(d->inner);
	trace_free(d->trace);
	free(d->guard);
	free(d);
	free(s); /* mailstream_low_free() leaves the struct to the driver */
}

static void net_low_cancel(mailstream_low *s)
{
	struct net_low *d = s->data;
	mailstream_low_cancel(d->inner);
}

static struct mailstream_cancel *net_low_get_cancel(mailstream_low *s)
{
	struct net_low *d = s->data;
	return mailstream_low_get_cancel(d->inner);
}

static carray *net_low_get_certificate_chain(mailstream_low *s)
{
	struct net_low *d = s->data;
	return mailstream_low_get_certificate_chain(d->inner);
}

static int net_low_setup_idle(mailstream_low *s)
{
	struct net_low *d = s->data;
	return mailstream_low_setup_idle(d->inner);
}

static int net_low_unsetup_idle(mailstream_low *s)
{
	struct net_low *d = s->data;
	return mailstream_low_unsetup_idle(d->inner);
}

static int net_low_interrupt_idle(mailstream_low *s)
{
	struct net_low *d = s->data;
	return mailstream_low_interrupt_idle(d->inner);
}

static mailstream_low_driver net_low_driver = {
	.mailstream_read = net_low_read,
	.mailstream_write = net_low_write,
	.mailstream_close = net_low_close,
	.mailstream_get_fd = net_low_get_fd,
	.mailstream_free = net_low_free,
	.mailstream_cancel = net_low_cancel,
	.mailstream_get_cancel = net_low_get_cancel,
	.mailstream_get_certificate_chain = net_low_get_certificate_chain,
	.mailstream_setup_idle = net_low_setup_idle,
	.mailstream_unsetup_idle = net_low_unsetup_idle,
	.mailstream_interrupt_idle = net_low_interrupt_idle,
};

static struct net_low *our_low(mailstream *s)
{
	mailstream_low *low = s ? mailstream_get_low(s) : NULL;
	if (!low || low->driver != &net_low_driver)
		return NULL;
	return low->data;
}

/* Puts our wrapper between the mailstream and its current low stream. */
static void wrap_low(mailstream *s, int timeout_s, struct net_trace *trace, bool imap)
{
	mailstream_low *inner = mailstream_get_low(s);
	struct net_low *d = xcalloc(1, sizeof *d);
	d->inner = inner;
	d->trace = trace;
	if (imap)
		d->guard = xcalloc(1, sizeof *d->guard);
	/* Only the wrapper reports to the logger, or data would show twice. */
	mailstream_low_set_logger(inner, NULL, NULL);
	mailstream_low_set_timeout(inner, timeout_s);
	mailstream_low *w = need(mailstream_low_new(d, &net_low_driver));
	mailstream_low_set_timeout(w, timeout_s);
	mailstream_set_low(s, w);
}

static uint64_t bytes_out(mailstream *s)
{
	struct net_low *d = our_low(s);
	return d ? d->bytes_out : 0;
}

static void imap_trace_cb(mailimap *session, int log_type, const char *str,
    size_t size, void *ctx)
{
	(void)ctx;
	struct net_low *d = our_low(session->imap_stream);
	if (d && d->trace)
		trace_feed(d->trace, log_type, str, size);
}

static void pop3_trace_cb(mailpop3 *session, int log_type, const char *str,
    size_t size, void *ctx)
{
	(void)ctx;
	struct net_low *d = our_low(session->pop3_stream);
	if (d && d->trace)
		trace_feed(d->trace, log_type, str, size);
}

/* ------------------------------------------------------------------ */
/* One login attempt                                                    */

struct conn {
	const struct account_url *u;
	const struct store_opts *o;
	int timeout;           /* seconds */
	char *where;           /* "host:port" for messages */
	char *label;           /* URL for logs */
	char *host;            /* mutable copy for libetpan and GnuTLS */
	enum store_fatal_kind kind;
	char *err;
};

static enum store_rc fail(struct conn *c, enum store_rc rc,
    enum store_fatal_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static enum store_rc fail(struct conn *c, enum store_rc rc,
    enum store_fatal_kind kind, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	free(c->err);
	c->err = xvasprintf(fmt, ap);
	va_end(ap);
	c->kind = rc == STORE_FATAL ? kind : FATAL_NONE;
	return rc;
}

static void conn_init(struct conn *c, const struct account_url *u,
    const struct store_opts *o)
{
	memset(c, 0, sizeof *c);
	c->u = u;
	c->o = o;
	c->timeout = o->timeout_s > 0 ? o->timeout_s : DEFAULT_TIMEOUT_S;
	c->host = xstrdup(u->host ? u->host : "");
	if (strchr(c->host, ':'))
		c->where = xasprintf("[%s]:%u", c->host, (unsigned)u->port);
	else
		c->where = xasprintf("%s:%u", c->host, (unsigned)u->port);
	c->label = xstrdup(u->display ? u->display : c->where);
}

static void conn_finish(struct conn *c, enum store_rc rc,
    enum store_fatal_kind *kind_r, char **err_r)
{
	*kind_r = rc == STORE_FATAL ? c->kind : FATAL_NONE;
	if (rc != STORE_OK) {
		*err_r = c->err ? c->err : xstrdup("connection failed");
		c->err = NULL;
	}
	free(c->err);
	free(c->where);
	free(c->label);
	free(c->host);
}

/*
 * A server's reason, fit for one line of log: control bytes replaced,
 * length capped, and the password scrubbed should a server echo it.
 */
static char *server_text(const char *s, const char *password)
{
	if (!s || !*s)
		return xstrdup("(no reason given)");
	struct buf b = BUF_INIT;
	size_t n = strlen(s);
	size_t plen = password ? strlen(password) : 0;
	for (size_t i = 0; i < n && b.len < SERVER_TEXT_MAX; i++) {
		if (plen && strncmp(s + i, password, plen) == 0) {
			buf_adds(&b, "<redacted>");
			i += plen - 1;
			continue;
		}
		unsigned char ch = (unsigned char)s[i];
		buf_addc(&b, ch < 0x20 || ch == 0x7f ? '?' : (char)ch);
	}
	while (b.len > 0 && b.s[b.len - 1] == ' ')
		b.s[--b.len] = 0;
	if (b.len == 0) {
		buf_release(&b);
		return xstrdup("(no reason given)");
	}
	return buf_detach(&b);
}

/* The address bytes of an IP literal (zone index ignored); 0 if not one. */
static size_t ip_literal(const char *host, unsigned char out[16])
{
	char tmp[INET6_ADDRSTRLEN + 1];
	size_t n = strcspn(host, "%");
	if (n >= sizeof tmp)
		return 0;
	memcpy(tmp, host, n);
	tmp[n] = 0;
	if (inet_pton(AF_INET, tmp, out) == 1)
		return 4;
	if (inet_pton(AF_INET6, tmp, out) == 1)
		return 16;
	return 0;
}

/* ------------------------------------------------------------------ */
/* TCP                                                                  */

/* Waits for a non-blocking connect; returns 0 or an errno value. */
static int wait_connect(int fd, int timeout_s)
{
	int64_t deadline = now_ms() + (int64_t)timeout_s * 1000;
	for (;;) {
		int64_t left = deadline - now_ms();
		if (left <= 0)
			return ETIMEDOUT;
		struct pollfd pfd = { .fd = fd, .events = POLLOUT };
		int r = poll(&pfd, 1, left > 60000 ? 60000 : (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return errno;
		if (r == 0)
			continue;
		int soerr = 0;
		socklen_t len = sizeof soerr;
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
			return errno;
		return soerr;
	}
}

static void tune_socket(int fd, int timeout_s)
{
	int on = 1;
	/* Nagle holds back the literal after a continuation (docs/libetpan.md). */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
	/* Notice a vanished peer in minutes rather than hours. */
	int idle = 60, intvl = 15, cnt = 4;
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
	/* The socket is blocking from now on: bound a stalled send too. */
	struct timeval tv = { .tv_sec = timeout_s, .tv_usec = 0 };
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* Errors that say the host or port is wrong, not that the network hiccuped. */
static bool definitive_connect_error(int e)
{
	return e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH ||
	    e == EADDRNOTAVAIL || e == EAFNOSUPPORT;
}

static enum store_rc tcp_connect(struct conn *c, int *fd_r)
{
	char port[8];
	snprintf(port, sizeof port, "%u", (unsigned)c->u->port);
	struct addrinfo hints;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;

	struct addrinfo *res = NULL;
	int r = getaddrinfo(c->host, port, &hints, &res);
	if (r != 0) {
		if (r == EAI_SYSTEM || r == EAI_MEMORY)
			return fail(c, STORE_CONN_BAD, FATAL_NONE,
			    "cannot resolve host '%s': %s", c->host,
			    r == EAI_SYSTEM ? strerror(errno) : gai_strerror(r));
		return fail(c, STORE_FATAL, FATAL_CONNECT,
		    "cannot resolve host '%s': %s", c->host, gai_strerror(r));
	}

	int last_err = 0;
	bool all_definitive = true;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		char addr[NI_MAXHOST] = "?";
		getnameinfo(ai->ai_addr, ai->ai_addrlen, addr, sizeof addr, NULL, 0,
		    NI_NUMERICHOST);
		log_debug("connecting to %s (%s) port %s", c->host, addr, port);

		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
		    ai->ai_protocol);
		int e = 0;
		if (fd < 0) {
			e = errno;
		} else if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
			e = errno == EINPROGRESS ? wait_connect(fd, c->timeout) : errno;
		}
		if (e == 0) {
			int fl = fcntl(fd, F_GETFL);
			if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
				e = errno;
		}
		if (e != 0) {
			log_debug("connect to %s port %s: %s", addr, port, strerror(e));
			if (fd >= 0)
				close(fd);
			/* Keep the most telling error: a timeout beats "unreachable". */
			if (last_err == 0 || definitive_connect_error(last_err))
				last_err = e;
			if (!definitive_connect_error(e))
				all_definitive = false;
			continue;
		}
		tune_socket(fd, c->timeout);
		freeaddrinfo(res);
		*fd_r = fd;
		return STORE_OK;
	}
	freeaddrinfo(res);
	if (last_err == 0)
		last_err = EHOSTUNREACH;
	if (all_definitive)
		return fail(c, STORE_FATAL, FATAL_CONNECT, "cannot connect to %s: %s",
		    c->where, strerror(last_err));
	return fail(c, STORE_CONN_BAD, FATAL_NONE, "cannot connect to %s: %s",
	    c->where, strerror(last_err));
}

/* ------------------------------------------------------------------ */
/* TLS                                                                  */

/* Called by libetpan between gnutls_init() and the handshake. */
static void sni_callback(struct mailstream_ssl_context *ctx, void *data)
{
	char *host = data;
	unsigned char ip[16];
	/* RFC 6066: no SNI for an address literal. */
	if (ctx && host && *host && !ip_literal(host, ip))
		mailstream_ssl_set_server_name(ctx, host);
}

/* Turns GnuTLS's "The certificate is NOT trusted. X. Y. " into "x. y." */
static char *status_words(unsigned status)
{
	gnutls_datum_t out = { NULL, 0 };
	if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509,
	    &out, 0) < 0 || !out.data)
		return xasprintf("verification status 0x%x", status);
	const char *s = (const char *)out.data;
	static const char prefix[] = "The certificate is NOT trusted. ";
	if (strncmp(s, prefix, sizeof prefix - 1) == 0 && s[sizeof prefix - 1])
		s += sizeof prefix - 1;
	char *w = xstrdup(s);
	gnutls_free(out.data);
	size_t n = strlen(w);
	while (n > 0 && (w[n - 1] == ' ' || w[n - 1] == '\n'))
		w[--n] = 0;
	if (w[0] >= 'A' && w[0] <= 'Z')
		w[0] = (char)(w[0] - 'A' + 'a');
	return w;
}

/*
 * Verifies the peer's chain on stream s for c->host: system trust plus
 * --ca-file, RFC 6125 name (or IP address) match, TLS server purpose.
 * Must run before any credential is written.
 */
static pthread_mutex_t trust_lock = PTHREAD_MUTEX_INITIALIZER;
static gnutls_x509_trust_list_t trust_cached;
static char *trust_cached_ca;  /* the --ca-file it holds, "" for none */

static enum store_rc verify_peer(struct conn *c, mailstream *s)
{
	enum store_rc rc = STORE_OK;
	gnutls_x509_crt_t certs[MAX_CHAIN];
	unsigned ncerts = 0;
	gnutls_x509_trust_list_t tl = NULL;
	bool locked = false;
	carray *chain = mailstream_get_certificate_chain(s);
	int r;

	if (!chain || carray_count(chain) == 0) {
		rc = fail(c, STORE_FATAL, FATAL_TLS, "%s sent no TLS certificate", c->where);
		goto out;
	}
	for (unsigned i = 0; i < carray_count(chain) && ncerts < MAX_CHAIN; i++) {
		MMAPString *der = carray_get(chain, i);
		gnutls_datum_t d = { (unsigned char *)der->str, (unsigned)der->len };
		if (gnutls_x509_crt_init(&certs[ncerts]) < 0) {
			rc = fail(c, STORE_FATAL, FATAL_TLS, "cannot check the certificate of %s",
			    c->where);
			goto out;
		}
		ncerts++;
		r = gnutls_x509_crt_import(certs[ncerts - 1], &d, GNUTLS_X509_FMT_DER);
		if (r < 0) {
			rc = fail(c, STORE_FATAL, FATAL_TLS,
			    "cannot parse the TLS certificate of %s: %s", c->where,
			    gnutls_strerror(r));
			goto out;
		}
	}

	/* The trust list (the system store, plus --ca-file) is built once per
	 * process: parsing the system store costs ~15 ms a connection. It is
	 * used under a lock; verifying is quick. */
	pthread_mutex_lock(&trust_lock);
	locked = true;
	const char *want = c->o->ca_file ? c->o->ca_file : "";
	if (!trust_cached || strcmp(trust_cached_ca, want)) {
		if (trust_cached)
			gnutls_x509_trust_list_deinit(trust_cached, 1);
		trust_cached = NULL;
		free(trust_cached_ca);
		trust_cached_ca = NULL;
		r = gnutls_x509_trust_list_init(&tl, 0);
		if (r < 0) {
			tl = NULL;
			rc = fail(c, STORE_FATAL, FATAL_TLS,
			    "cannot check the certificate of %s: %s", c->where, gnutls_strerror(r));
			goto out;
		}
		r = gnutls_x509_trust_list_add_system_trust(tl, 0, 0);
		if (r < 0)
			log_debug("no system trust store: %s", gnutls_strerror(r));
		if (c->o->ca_file) {
			r = gnutls_x509_trust_list_add_trust_file(tl, c->o->ca_file, NULL,
			    GNUTLS_X509_FMT_PEM, 0, 0);
			if (r <= 0) {
				gnutls_x509_trust_list_deinit(tl, 1);
				tl = NULL;
				rc = fail(c, STORE_FATAL, FATAL_CONFIG, "cannot use CA file '%s': %s",
				    c->o->ca_file,
				    r < 0 ? gnutls_strerror(r) : "no PEM certificate in it");
				goto out;
			}
		}
		trust_cached = tl;
		trust_cached_ca = xstrdup(want);
	}
	tl = trust_cached;

	static char kp_server[] = GNUTLS_KP_TLS_WWW_SERVER;
	unsigned char ip[16];
	size_t iplen = ip_literal(c->host, ip);
	gnutls_typed_vdata_st vdata[2];
	if (iplen) {
		vdata[0].type = GNUTLS_DT_IP_ADDRESS;
		vdata[0].data = ip;
		vdata[0].size = (unsigned)iplen;
	} else {
		vdata[0].type = GNUTLS_DT_DNS_HOSTNAME;
		vdata[0].data = (unsigned char *)c->host;
		vdata[0].size = 0;
	}
	vdata[1].type = GNUTLS_DT_KEY_PURPOSE_OID;
	vdata[1].data = (unsigned char *)kp_server;
	vdata[1].size = 0;

	unsigned status = 0;
	r = gnutls_x509_trust_list_verify_crt2(tl, certs, ncerts, vdata, 2, 0,
	    &status, NULL);
	if (r < 0) {
		rc = fail(c, STORE_FATAL, FATAL_TLS, "cannot verify the certificate of %s: %s",
		    c->where, gnutls_strerror(r));
		goto out;
	}
	if (status != 0) {
		char *why = status_words(status);
		rc = fail(c, STORE_FATAL, FATAL_TLS, "TLS certificate of %s rejected: %s",
		    c->where, why);
		free(why);
		goto out;
	}
	if (log_get_level() >= LOG_DEBUG) {
		gnutls_datum_t dn = { NULL, 0 };
		if (gnutls_x509_crt_get_dn3(certs[0], &dn, 0) >= 0 && dn.data) {
			log_debug("certificate of %s verified: %s", c->where, (char *)dn.data);
			gnutls_free(dn.data);
		}
	}
out:
	if (locked)
		pthread_mutex_unlock(&trust_lock);
	for (unsigned i = 0; i < ncerts; i++)
		gnutls_x509_crt_deinit(certs[i]);
	if (chain)
		mailstream_certificate_chain_free(chain);
	return rc;
}

/*
 * libetpan does not say why a handshake failed (it prints GnuTLS's reason on
 * stderr). One that ran into the timeout is network trouble worth a retry;
 * anything else (no common protocol, not TLS at all) will not get better.
 */
static enum store_rc handshake_failed(struct conn *c, int64_t t0, const char *what)
{
	if (now_ms() - t0 >= (int64_t)c->timeout * 1000 - 250)
		return fail(c, STORE_CONN_BAD, FATAL_NONE, "TLS handshake with %s timed out%s",
		    c->where, what);
	return fail(c, STORE_FATAL, FATAL_TLS, "TLS handshake with %s failed%s", c->where,
	    what);
}

/*
 * Connects and returns a stream wrapped in our low driver: already TLS and
 * verified for implicit TLS, plain otherwise.
 */
static enum store_rc open_stream(struct conn *c, mailstream **s_r)
{
	int fd = -1;
	enum store_rc rc = tcp_connect(c, &fd);
	if (rc != STORE_OK)
		return rc;

	mailstream *s;
	if (c->u->tls == TLS_IMPLICIT) {
		int64_t t0 = now_ms();
		s = mailstream_ssl_open_with_callback_timeout(fd, c->timeout,
		    sni_callback, c->host);
		if (!s && now_ms() - t0 < (int64_t)c->timeout * 1000 - 250) {
			/* A connection cut during the handshake looks like a
			 * server that does not speak TLS. Only a second failure
			 * on a new connection says the port is wrong. */
			close(fd);
			fd = -1;
			rc = tcp_connect(c, &fd);
			if (rc != STORE_OK)
				return rc;
			t0 = now_ms();
			s = mailstream_ssl_open_with_callback_timeout(fd, c->timeout,
			    sni_callback, c->host);
		}
		if (!s) {
			close(fd);
			return handshake_failed(c, t0, " (is it a TLS port?)");
		}
		rc = verify_peer(c, s);
		if (rc != STORE_OK) {
			mailstream_close(s);
			return rc;
		}
	} else {
		s = need(mailstream_socket_open_timeout(fd, c->timeout));
	}
	wrap_low(s, c->timeout, c->o->trace ? trace_new(c->label) : NULL,
	    c->u->proto == PROTO_IMAP);
	*s_r = s;
	return STORE_OK;
}

/*
 * After the server accepted STARTTLS/STLS: handshake on the same socket,
 * verify, and put a fresh wrapper on top (the trace state moves over).
 */
/*
 * Bytes already buffered after the server's OK to STARTTLS/STLS were sent
 * in clear and would be read as if they had come through TLS (response
 * injection, CVE-2011-0411 / CVE-2020-15953). Debian's libetpan 1.9.4-3
 * already fails STARTTLS/STLS then (MAILIMAP_ERROR_STARTTLS,
 * MAILPOP3_ERROR_SSL); we check again before every handshake.
 */
static bool injected(mailstream *s)
{
	return s && s->read_buffer_len != 0;
}

static enum store_rc injection_error(struct conn *c)
{
	return fail(c, STORE_FATAL, FATAL_TLS,
	    "%s sent data after accepting STARTTLS, before the TLS handshake: "
	    "refusing (possible injection attack)", c->where);
}

static enum store_rc upgrade_tls(struct conn *c, mailstream *s)
{
	if (injected(s))
		return injection_error(c);

	mailstream_low *old = mailstream_get_low(s);
	int fd = mailstream_low_get_fd(old);
	if (fd < 0)
		return fail(c, STORE_CONN_BAD, FATAL_NONE, "connection to %s lost", c->where);
	int64_t t0 = now_ms();
	mailstream_low *tls = mailstream_low_tls_open_with_callback_timeout(fd,
	    c->timeout, sni_callback, c->host);
	if (!tls)
		return handshake_failed(c, t0, " after STARTTLS");

	struct net_trace *trace = NULL;
	if (old->driver == &net_low_driver) {
		struct net_low *od = old->data;
		trace = od->trace;
		od->trace = NULL;
	}
	/* Frees the plain socket stream without closing fd, which tls now owns. */
	mailstream_low_free(old);
	mailstream_set_low(s, tls);
	enum store_rc rc = verify_peer(c, s);
	/* Wrap even on failure so the trace state stays owned. */
	wrap_low(s, c->timeout, trace, c->u->proto == PROTO_IMAP);
	return rc;
}

static bool bad_chars(const char *s)
{
	return s && strpbrk(s, "\r\n") != NULL;
}

static bool has_8bit(const char *s)
{
	for (; s && *s; s++)
		if ((unsigned char)*s >= 0x80)
			return true;
	return false;
}

/* Checks done before any connection: they would fail the same way later. */
static enum store_rc check_credentials(struct conn *c)
{
	if (!c->u->user || !*c->u->user)
		return fail(c, STORE_FATAL, FATAL_CONFIG, "no user name for %s", c->where);
	if (!c->o->password)
		return fail(c, STORE_FATAL, FATAL_CONFIG, "no password for %s at %s",
		    c->u->user, c->where);
	if (bad_chars(c->u->user) || bad_chars(c->o->password))
		return fail(c, STORE_FATAL, FATAL_CONFIG,
		    "the user name or password for %s contains a line break", c->where);
	if (c->u->auth) {
		for (const char *p = c->u->auth; *p; p++)
			if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
			    (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'))
				return fail(c, STORE_FATAL, FATAL_CONFIG,
				    "invalid SASL mechanism name in auth=");
		if (!*c->u->auth)
			return fail(c, STORE_FATAL, FATAL_CONFIG, "empty auth= option");
	}
	return STORE_OK;
}

static char *upper(const char *s)
{
	char *u = xstrdup(s);
	for (char *p = u; *p; p++)
		if (*p >= 'a' && *p <= 'z')
			*p = (char)(*p - 'a' + 'A');
	return u;
}

/* ------------------------------------------------------------------ */
/* IMAP                                                                 */

void net_imap_abort(mailimap *imap)
{
	if (!imap)
		return;
	if (imap->imap_stream) {
		mailstream_close(imap->imap_stream);
		imap->imap_stream = NULL;
	}
	mailimap_free(imap);
}

static void log_caps(mailimap *imap, const char *label)
{
	if (log_get_level() < LOG_DEBUG || !imap->imap_connection_info ||
	    !imap->imap_connection_info->imap_capability)
		return;
	struct buf b = BUF_INIT;
	clist *l = imap->imap_connection_info->imap_capability->cap_list;
	for (clistiter *it = l ? clist_begin(l) : NULL; it; it = clist_next(it)) {
		struct mailimap_capability *cap = clist_content(it);
		const char *name = cap->cap_data.cap_name ? cap->cap_data.cap_name : "";
		buf_addf(&b, cap->cap_type == MAILIMAP_CAPABILITY_AUTH_TYPE ?
		    " AUTH=%s" : " %s", name);
	}
	log_debug("%s: capabilities:%s", label, b.s ? b.s : " (none)");
	buf_release(&b);
}

int net_imap_refresh_caps(mailimap *imap)
{
	if (!imap || !imap->imap_stream)
		return MAILIMAP_ERROR_BAD_STATE;
	if (!imap->imap_connection_info)
		imap->imap_connection_info = need(mailimap_connection_info_new());
	/*
	 * Forget the old list first. An empty list rather than NULL: libetpan
	 * copies the stored list after the tagged OK and would dereference
	 * NULL if the server sent no untagged CAPABILITY.
	 */
	struct mailimap_capability_data *old = imap->imap_connection_info->imap_capability;
	imap->imap_connection_info->imap_capability =
	    need(mailimap_capability_data_new(need(clist_new())));
	if (old)
		mailimap_capability_data_free(old);

	struct mailimap_capability_data *copy = NULL;
	int r = mailimap_capability(imap, &copy);
	if (r == MAILIMAP_NO_ERROR && copy)
		mailimap_capability_data_free(copy);
	return r;
}

static bool have_caps(mailimap *imap)
{
	return imap->imap_connection_info && imap->imap_connection_info->imap_capability &&
	    clist_count(imap->imap_connection_info->imap_capability->cap_list) > 0;
}

static enum store_rc imap_refresh(struct conn *c, mailimap *imap, const char *when)
{
	int r = net_imap_refresh_caps(imap);
	if (r != MAILIMAP_NO_ERROR)
		return fail(c, STORE_CONN_BAD, FATAL_NONE,
		    "CAPABILITY %s failed at %s (libetpan error %d)", when, c->where, r);
	log_caps(imap, c->label);
	return STORE_OK;
}

static enum store_rc imap_starttls(struct conn *c, mailimap *imap)
{
	enum store_rc rc;
	if (!have_caps(imap) && (rc = imap_refresh(c, imap, "before STARTTLS")) != STORE_OK)
		return rc;
	if (!mailimap_has_extension(imap, "STARTTLS"))
		return fail(c, STORE_FATAL, FATAL_TLS,
		    "%s does not offer STARTTLS: refusing to send the password in clear "
		    "(use imaps://, or ?tls=none to allow plaintext)", c->where);
	int r = mailimap_starttls(imap);
	if (injected(imap->imap_stream))
		return injection_error(c);
	if (r == MAILIMAP_ERROR_STARTTLS || r == MAILIMAP_ERROR_PROTOCOL) {
		char *why = server_text(imap->imap_response, c->o->password);
		rc = fail(c, STORE_FATAL, FATAL_TLS, "%s refused STARTTLS: %s", c->where, why);
		free(why);
		return rc;
	}
	if (r != MAILIMAP_NO_ERROR)
		return fail(c, STORE_CONN_BAD, FATAL_NONE,
		    "STARTTLS failed at %s (libetpan error %d)", c->where, r);
	if ((rc = upgrade_tls(c, imap->imap_stream)) != STORE_OK)
		return rc;
	/* What the server said before TLS is not to be trusted. */
	return imap_refresh(c, imap, "after STARTTLS");
}

static enum store_rc imap_authenticate(struct conn *c, mailimap *imap)
{
	const struct account_url *u = c->u;
	const char *pass = c->o->password;
	char *mech = NULL;
	enum store_rc rc;
	int r;

	if (!u->auth) {
		bool plain = mailimap_has_authentication(imap, "PLAIN");
		if (mailimap_has_extension(imap, "LOGINDISABLED")) {
			if (!plain)
				return fail(c, STORE_FATAL, FATAL_AUTH,
				    "%s refuses LOGIN (LOGINDISABLED) and offers no AUTH=PLAIN%s",
				    c->where, u->tls == TLS_NONE ?
				    ": it wants TLS (drop ?tls=none)" :
				    "; choose a mechanism with ?auth=");
			mech = xstrdup("PLAIN");
		} else if (plain && (has_8bit(u->user) || has_8bit(pass))) {
			/* LOGIN's quoted strings are 7-bit; SASL PLAIN is UTF-8. */
			mech = xstrdup("PLAIN");
		}
	} else {
		mech = upper(u->auth);
	}

	uint64_t before = bytes_out(imap->imap_stream);
	if (!mech) {
		r = mailimap_login(imap, u->user, pass);
	} else if (strcmp(mech, "XOAUTH2") == 0) {
		if (!mailimap_has_authentication(imap, "XOAUTH2")) {
			rc = fail(c, STORE_FATAL, FATAL_CONFIG, "%s does not offer AUTH=XOAUTH2",
			    c->where);
			goto out;
		}
		r = mailimap_oauth2_authenticate(imap, u->user, pass);
	} else {
		if (!mailimap_has_authentication(imap, mech)) {
			rc = fail(c, STORE_FATAL, FATAL_CONFIG, "%s does not offer AUTH=%s",
			    c->where, mech);
			goto out;
		}
		r = mailimap_authenticate(imap, mech, c->host, NULL, NULL, u->user,
		    u->user, pass, NULL);
	}

	switch (r) {
	case MAILIMAP_NO_ERROR:
		log_debug("%s: logged in with %s", c->label, mech ? mech : "LOGIN");
		rc = STORE_OK;
		break;
	case MAILIMAP_ERROR_LOGIN:
	case MAILIMAP_ERROR_SASL:
	case MAILIMAP_ERROR_PROTOCOL: /* BAD */
		if (mech && bytes_out(imap->imap_stream) == before) {
			/* Cyrus SASL gave up before anything was sent. */
			rc = fail(c, STORE_FATAL, FATAL_CONFIG,
			    "SASL mechanism %s is not available here (is libsasl2-modules "
			    "installed?)", mech);
		} else {
			char *why = server_text(imap->imap_response, pass);
			rc = fail(c, STORE_FATAL, FATAL_AUTH, "login refused for %s at %s: %s",
			    u->user, c->where, why);
			free(why);
		}
		break;
	case MAILIMAP_ERROR_FATAL: { /* BYE instead of a tagged answer */
		char *why = server_text(imap->imap_response, pass);
		rc = fail(c, STORE_CONN_BAD, FATAL_NONE,
		    "%s closed the connection during login: %s", c->where, why);
		free(why);
		break;
	}
	case MAILIMAP_ERROR_STREAM:
		rc = fail(c, STORE_CONN_BAD, FATAL_NONE, "connection to %s lost during login",
		    c->where);
		break;
	default:
		rc = fail(c, STORE_CONN_BAD, FATAL_NONE,
		    "login at %s failed (libetpan error %d)", c->where, r);
		break;
	}
out:
	free(mech);
	return rc;
}

enum store_rc net_imap_login(mailimap **imap_r, const struct account_url *u,
    const struct store_opts *o, enum store_fatal_kind *kind_r, char **err_r)
{
	struct conn c;
	mailimap *imap = NULL;
	mailstream *s = NULL;
	enum store_rc rc;

	*imap_r = NULL;
	*err_r = NULL;
	net_global_init();
	conn_init(&c, u, o);

	if (u->proto != PROTO_IMAP) {
		rc = fail(&c, STORE_FATAL, FATAL_CONFIG, "%s is not an IMAP account", c.label);
		goto out;
	}
	if (u->auth && ascii_strcasecmp(u->auth, "apop") == 0) {
		rc = fail(&c, STORE_FATAL, FATAL_CONFIG, "auth=apop is for POP3 only");
		goto out;
	}
	if ((rc = check_credentials(&c)) != STORE_OK)
		goto out;
	if ((rc = open_stream(&c, &s)) != STORE_OK)
		goto out;

	imap = need(mailimap_new(0, NULL));
	mailimap_set_timeout(imap, c.timeout);
	if (o->trace)
		mailimap_set_logger(imap, imap_trace_cb, NULL);

	int r = mailimap_connect(imap, s); /* imap owns s from here on */
	bool preauth = false;
	switch (r) {
	case MAILIMAP_NO_ERROR_NON_AUTHENTICATED:
		break;
	case MAILIMAP_NO_ERROR_AUTHENTICATED:
		preauth = true;
		break;
	case MAILIMAP_ERROR_DONT_ACCEPT_CONNECTION: {
		char *why = server_text(imap->imap_response, o->password);
		rc = fail(&c, STORE_CONN_BAD, FATAL_NONE, "%s refused the connection: %s",
		    c.where, why);
		free(why);
		goto out;
	}
	case MAILIMAP_ERROR_PARSE:
		rc = fail(&c, STORE_FATAL, FATAL_PROTOCOL,
		    "%s did not greet like an IMAP server", c.where);
		goto out;
	default:
		rc = fail(&c, STORE_CONN_BAD, FATAL_NONE,
		    "connection to %s lost before the greeting", c.where);
		goto out;
	}

	if (u->tls == TLS_STARTTLS) {
		if (preauth) {
			rc = fail(&c, STORE_FATAL, FATAL_TLS,
			    "%s sent PREAUTH on a connection that needs STARTTLS: refusing, "
			    "an authenticated session cannot be upgraded (possible downgrade "
			    "attack)", c.where);
			goto out;
		}
		if ((rc = imap_starttls(&c, imap)) != STORE_OK)
			goto out;
	}

	/* Servers announce more (or other) capabilities once logged in, most
	 * of them in the login's OK ([CAPABILITY ...], RFC 3501 7.1), which
	 * libetpan stores in a new list: ask only a server that did not. */
	bool told = false;
	if (preauth) {
		log_info("%s: the server pre-authenticated the session", c.label);
	} else {
		if (!have_caps(imap) && (rc = imap_refresh(&c, imap, "before login")) != STORE_OK)
			goto out;
		const void *before = imap->imap_connection_info->imap_capability;
		if ((rc = imap_authenticate(&c, imap)) != STORE_OK)
			goto out;
		told = imap->imap_connection_info->imap_capability != before && have_caps(imap);
	}
	if (told)
		log_caps(imap, c.label);
	else if ((rc = imap_refresh(&c, imap, "after login")) != STORE_OK)
		goto out;

	log_info("%s: logged in as %s", c.label, u->user);
	*imap_r = imap;
	imap = NULL;
out:
	if (imap)
		net_imap_abort(imap);
	else if (rc != STORE_OK && s)
		mailstream_close(s);
	conn_finish(&c, rc, kind_r, err_r);
	return rc;
}

/* ------------------------------------------------------------------ */
/* POP3                                                                 */

void net_pop3_abort(mailpop3 *pop)
{
	if (!pop)
		return;
	/* Closing first: mailpop3_free() would send QUIT, committing DELEs. */
	if (pop->pop3_stream) {
		mailstream_close(pop->pop3_stream);
		pop->pop3_stream = NULL;
	}
	/* What mailpop3_quit() frees and mailpop3_free() does not. */
	free(pop->pop3_timestamp);
	pop->pop3_timestamp = NULL;
	if (pop->pop3_msg_tab) {
		for (unsigned i = 0; i < carray_count(pop->pop3_msg_tab); i++) {
			struct mailpop3_msg_info *mi = carray_get(pop->pop3_msg_tab, i);
			if (mi) {
				free(mi->msg_uidl);
				free(mi);
			}
		}
		carray_free(pop->pop3_msg_tab);
		pop->pop3_msg_tab = NULL;
	}
	mailpop3_free(pop);
}

static bool pop3_has_capa(clist *capa, const char *name)
{
	for (clistiter *it = capa ? clist_begin(capa) : NULL; it; it = clist_next(it)) {
		struct mailpop3_capa *cp = clist_content(it);
		if (cp->cap_name && ascii_strcasecmp(cp->cap_name, name) == 0)
			return true;
	}
	return false;
}

static enum store_rc pop3_stls(struct conn *c, mailpop3 *pop)
{
	clist *capa = NULL;
	pop->pop3_response = NULL;
	int r = mailpop3_capa(pop, &capa);
	bool stls = false;
	if (r == MAILPOP3_NO_ERROR) {
		stls = pop3_has_capa(capa, "STLS");
		mailpop3_capa_resp_free(capa);
	} else if (r != MAILPOP3_ERROR_CAPA_NOT_SUPPORTED || !pop->pop3_response) {
		return fail(c, STORE_CONN_BAD, FATAL_NONE, "CAPA failed at %s", c->where);
	}
	if (!stls)
		return fail(c, STORE_FATAL, FATAL_TLS,
		    "%s does not offer STLS: refusing to send the password in clear "
		    "(use pop3s://, or ?tls=none to allow plaintext)", c->where);

	pop->pop3_response = NULL;
	r = mailpop3_stls(pop);
	if (injected(pop->pop3_stream))
		return injection_error(c);
	if (r != MAILPOP3_NO_ERROR) {
		if (r != MAILPOP3_ERROR_STLS_NOT_SUPPORTED || !pop->pop3_response)
			return fail(c, STORE_CONN_BAD, FATAL_NONE, "STLS failed at %s", c->where);
		char *why = server_text(pop->pop3_response, c->o->password);
		enum store_rc rc = fail(c, STORE_FATAL, FATAL_TLS, "%s refused STLS: %s",
		    c->where, why);
		free(why);
		return rc;
	}
	return upgrade_tls(c, pop->pop3_stream);
}

static enum store_rc pop3_refused(struct conn *c, mailpop3 *pop)
{
	if (!pop->pop3_response)
		return fail(c, STORE_CONN_BAD, FATAL_NONE, "connection to %s lost during login",
		    c->where);
	char *why = server_text(pop->pop3_response, c->o->password);
	enum store_rc rc = fail(c, STORE_FATAL, FATAL_AUTH, "login refused for %s at %s: %s",
	    c->u->user, c->where, why);
	free(why);
	return rc;
}

static enum store_rc pop3_authenticate(struct conn *c, mailpop3 *pop)
{
	const struct account_url *u = c->u;
	const char *pass = c->o->password;
	int r;

	if (!u->auth) {
		pop->pop3_response = NULL;
		r = mailpop3_user(pop, u->user);
		if (r == MAILPOP3_ERROR_BAD_USER)
			return pop3_refused(c, pop);
		if (r == MAILPOP3_NO_ERROR) {
			pop->pop3_response = NULL;
			r = mailpop3_pass(pop, pass);
			if (r == MAILPOP3_ERROR_BAD_PASSWORD)
				return pop3_refused(c, pop);
		}
		if (r != MAILPOP3_NO_ERROR)
			return fail(c, STORE_CONN_BAD, FATAL_NONE,
			    "connection to %s lost during login", c->where);
		log_debug("%s: logged in with USER/PASS", c->label);
		return STORE_OK;
	}

	char *mech = upper(u->auth);
	uint64_t before = bytes_out(pop->pop3_stream);
	pop->pop3_response = NULL;
	r = mailpop3_auth(pop, mech, c->host, NULL, NULL, u->user, u->user, pass, NULL);
	enum store_rc rc = STORE_OK;
	if (r == MAILPOP3_NO_ERROR)
		log_debug("%s: logged in with AUTH %s", c->label, mech);
	else if (r == MAILPOP3_ERROR_BAD_USER && bytes_out(pop->pop3_stream) == before)
		rc = fail(c, STORE_FATAL, FATAL_CONFIG,
		    "SASL mechanism %s is not available here (is libsasl2-modules "
		    "installed?)", mech);
	else if (r == MAILPOP3_ERROR_BAD_USER)
		rc = pop3_refused(c, pop);
	else
		rc = fail(c, STORE_CONN_BAD, FATAL_NONE, "connection to %s lost during login",
		    c->where);
	free(mech);
	return rc;
}

enum store_rc net_pop3_login(mailpop3 **pop_r, const struct account_url *u,
    const struct store_opts *o, enum store_fatal_kind *kind_r, char **err_r)
{
	struct conn c;
	mailpop3 *pop = NULL;
	mailstream *s = NULL;
	enum store_rc rc;

	*pop_r = NULL;
	*err_r = NULL;
	net_global_init();
	conn_init(&c, u, o);

	if (u->proto != PROTO_POP3) {
		rc = fail(&c, STORE_FATAL, FATAL_CONFIG, "%s is not a POP3 account", c.label);
		goto out;
	}
	if (u->auth && ascii_strcasecmp(u->auth, "apop") == 0) {
		rc = fail(&c, STORE_FATAL, FATAL_CONFIG,
		    "APOP is not supported: libetpan 1.9.4's APOP is broken on 64-bit; "
		    "use USER/PASS or SASL over TLS");
		goto out;
	}
	if (u->auth && ascii_strcasecmp(u->auth, "xoauth2") == 0) {
		rc = fail(&c, STORE_FATAL, FATAL_CONFIG, "XOAUTH2 is not supported for POP3");
		goto out;
	}
	if ((rc = check_credentials(&c)) != STORE_OK)
		goto out;
	/* libetpan formats POP3 commands into a 512-byte buffer, silently cut. */
	if (strlen(u->user) > POP3_ARG_MAX || strlen(o->password) > POP3_ARG_MAX) {
		rc = fail(&c, STORE_FATAL, FATAL_CONFIG,
		    "user name or password too long for POP3 (more than %d bytes)",
		    POP3_ARG_MAX);
		goto out;
	}
	if ((rc = open_stream(&c, &s)) != STORE_OK)
		goto out;

	pop = need(mailpop3_new(0, NULL));
	mailpop3_set_timeout(pop, c.timeout);
	if (o->trace)
		mailpop3_set_logger(pop, pop3_trace_cb, NULL);
	int r = mailpop3_connect(pop, s); /* pop owns s from here on */
	if (r != MAILPOP3_NO_ERROR) {
		if (pop->pop3_response) {
			char *why = server_text(pop->pop3_response, o->password);
			rc = fail(&c, STORE_CONN_BAD, FATAL_NONE, "%s refused the connection: %s",
			    c.where, why);
			free(why);
		} else {
			rc = fail(&c, STORE_CONN_BAD, FATAL_NONE,
			    "connection to %s lost before the greeting", c.where);
		}
		goto out;
	}

	if (u->tls == TLS_STARTTLS && (rc = pop3_stls(&c, pop)) != STORE_OK)
		goto out;
	if ((rc = pop3_authenticate(&c, pop)) != STORE_OK)
		goto out;

	log_info("%s: logged in as %s", c.label, u->user);
	*pop_r = pop;
	pop = NULL;
out:
	if (pop)
		net_pop3_abort(pop);
	else if (rc != STORE_OK && s)
		mailstream_close(s);
	conn_finish(&c, rc, kind_r, err_r);
	return rc;
}
