/*
 * store.h — the store interface: a mail account seen as folders of
 * UID-addressed messages.
 *
 * IMAP (store_imap.c) and POP3 fill it in; the planner, copier and mirror
 * never see protocol details. The fake store in tests/unit fills it in too,
 * with fault injection. The interface is synchronous and stateful like IMAP:
 * select() a folder, then scan, fetch, append, set flags and expunge in it.
 * One store is one connection; it is used by one thread at a time.
 *
 * Every call returns an enum store_rc. The tiers tell the caller how far a
 * failure reaches (mbsync's DRV_MSG_BAD / DRV_BOX_BAD / DRV_STORE_BAD):
 *   STORE_MSG_BAD   one message was refused or is gone; go on with the rest
 *   STORE_BOX_BAD   this folder cannot be used; go on with other folders
 *   STORE_CONN_BAD  the connection is lost or desynchronised: reconnect
 *                   with store_reconnect() and redo the folder from the state
 *   STORE_FATAL     authentication, TLS, or configuration: stop the run
 * On failure store_error() tells why in one line.
 *
 * Memory: all memory passed in belongs to the caller; results handed to
 * callbacks are valid only during the call unless stated otherwise.
 */
#ifndef POSTINO_STORE_H
#define POSTINO_STORE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "flags.h"
#include "url.h"

enum store_rc {
	STORE_OK = 0,
	STORE_MSG_BAD = 1,
	STORE_BOX_BAD = 2,
	STORE_CONN_BAD = 3,
	STORE_FATAL = 4,
};

/* Why a STORE_FATAL happened: chooses the exit code. */
enum store_fatal_kind {
	FATAL_NONE = 0,
	FATAL_CONNECT,   /* cannot reach the server at all */
	FATAL_TLS,       /* certificate/host check failed, STARTTLS missing */
	FATAL_AUTH,      /* credentials refused */
	FATAL_PROTOCOL,  /* server speaks something we cannot use */
	FATAL_CONFIG,    /* bad option for this server */
};

/* Folder attributes from LIST (and SPECIAL-USE, RFC 6154). */
enum {
	FA_NOSELECT = 1 << 0,
	FA_NOINFERIORS = 1 << 1,
	FA_NONEXISTENT = 1 << 2,
	FA_SUBSCRIBED = 1 << 3,
	FA_ALL = 1 << 8,
	FA_ARCHIVE = 1 << 9,
	FA_DRAFTS = 1 << 10,
	FA_FLAGGED = 1 << 11,
	FA_JUNK = 1 << 12,
	FA_SENT = 1 << 13,
	FA_TRASH = 1 << 14,
	FA_IMPORTANT = 1 << 15,
};
#define FA_SPECIAL_USE (FA_ALL | FA_ARCHIVE | FA_DRAFTS | FA_FLAGGED | FA_JUNK | FA_SENT | FA_TRASH | FA_IMPORTANT)

struct store_folder {
	char *name;     /* wire name (modified UTF-7 for IMAP) */
	char delim;     /* hierarchy delimiter, 0 if the server has none */
	unsigned attrs; /* FA_* */
};

struct store_folder_list {
	size_t n;
	struct store_folder *v;
};
void store_folder_list_free(struct store_folder_list *l);

struct store_caps {
	bool uidplus, condstore, qresync, multiappend, literal_plus,
	    literal_minus, move, special_use, namespace_, idle, unselect;
	/* POP3 source: one folder, no UIDs that survive a session. */
	bool pop3;
};

/* The personal namespace (RFC 2342): prefix and delimiter. */
struct store_namespace {
	char *prefix; /* "" or e.g. "INBOX." */
	char delim;
};

struct box_status {
	uint32_t uidvalidity;
	uint32_t uidnext;
	uint32_t exists;
	uint64_t highestmodseq;  /* 0: no CONDSTORE for this folder */
	unsigned permflags;      /* FL_* the server keeps (select only) */
	bool perm_any_keyword;   /* "\*" in PERMANENTFLAGS */
	struct flagset perm_keywords; /* keywords listed in PERMANENTFLAGS */
	bool have_permflags;     /* PERMANENTFLAGS was sent */
};
void box_status_clear(struct box_status *st);

#define IDATE_NONE INT64_MIN

/* What a scan or a fetch reports about one message. */
struct msg_info {
	uint32_t uid;         /* IMAP UID; POP3: message number this session */
	const char *uidl;     /* POP3 UIDL; NULL for IMAP */
	uint64_t size;        /* RFC822.SIZE */
	struct flagset flags;
	int64_t idate;        /* INTERNALDATE, Unix seconds; IDATE_NONE */
	int tzoff;            /* its zone, minutes east of UTC */
	uint64_t modseq;
	const char *msgid;    /* Message-ID if SCAN_MSGID was asked, else NULL */
};

enum {
	SCAN_FLAGS = 1 << 0,
	SCAN_SIZE = 1 << 1,
	SCAN_DATE = 1 << 2,
	SCAN_MSGID = 1 << 3,
};

/* Return 0 to go on, anything else to stop the scan (returned as-is). */
typedef int store_scan_cb(void *ctx, const struct msg_info *mi);
/* UIDs first..last (inclusive) are gone (QRESYNC's VANISHED); the range
 * may hold UIDs that never existed. Return 0 to go on. */
typedef int store_vanished_cb(void *ctx, uint32_t first, uint32_t last);

/*
 * Receives message bodies in order. data() gets the bytes of the message
 * being fetched in chunks; done() then names the message they belonged to
 * (the UID may arrive after the body on the wire). Return 0 to go on.
 */
struct body_sink {
	int (*data)(void *ctx, const char *bytes, size_t len);
	int (*done)(void *ctx, const struct msg_info *mi);
	void *ctx;
};

struct append_item {
	/* in: the message bytes live in a file (a spool) */
	int fd;
	off_t off;
	uint64_t len;
	const struct flagset *flags;
	int64_t idate;  /* IDATE_NONE: the server picks */
	int tzoff;
	/* out */
	enum store_rc rc; /* OK: appended; MSG_BAD: refused (error says why);
	                     CONN_BAD: unknown (the connection died first) */
	uint32_t uid;     /* APPENDUID, 0 if the server did not say */
	char *error;      /* server's text for a refusal; caller frees */
};

/* One flag change for set_flags_many(): add and remove flags on UIDs of
 * the selected folder. */
struct store_flag_op {
	const uint32_t *uids; /* ascending */
	size_t n;
	const struct flagset *add, *del; /* either may be NULL or empty */
	enum store_rc rc;     /* out: as set_flags() would return */
};

struct store;

struct store_ops {
	const char *name;
	enum store_rc (*connect)(struct store *s);
	void (*disconnect)(struct store *s);
	enum store_rc (*list)(struct store *s, struct store_folder_list *out);
	/* CREATE; a folder this call makes is subscribed if `subscribe`; one
	 * that exists already is left as it is (and is no error). */
	enum store_rc (*create)(struct store *s, const char *name, bool subscribe);
	enum store_rc (*status)(struct store *s, const char *name, struct box_status *st);
	enum store_rc (*select)(struct store *s, const char *name, bool readonly,
	    struct box_status *st);
	/* Messages with UID >= from_uid (all if 0), those changed since
	 * changedsince if it is non-zero (CONDSTORE). */
	enum store_rc (*scan)(struct store *s, uint32_t from_uid, uint64_t changedsince,
	    unsigned what, store_scan_cb *cb, void *ctx);
	/* QRESYNC (RFC 7162), for the mirror: the messages changed since
	 * changedsince (as scan does), and through vcb every UID expunged
	 * since then (VANISHED (EARLIER); a range may also cover UIDs that
	 * never existed, never one that exists). Needs caps.qresync and
	 * opts.qresync set before the first select of the session; returns
	 * STORE_BOX_BAD if QRESYNC is not in effect. NULL where unsupported. */
	enum store_rc (*scan_changes)(struct store *s, uint64_t changedsince, unsigned what,
	    store_scan_cb *cb, store_vanished_cb *vcb, void *ctx);
	/* Bodies of the given UIDs (ascending), streamed; missing UIDs are
	 * simply not reported. */
	enum store_rc (*fetch)(struct store *s, const uint32_t *uids, size_t n,
	    struct body_sink *sink);
	/* Appends to folder (need not be selected). Returns CONN_BAD if the
	 * connection failed (items not confirmed then have rc CONN_BAD),
	 * BOX_BAD if the folder is unusable, else OK with per-item results.
	 * *uidvalidity_r gets the APPENDUID's UIDVALIDITY (0 if none). */
	enum store_rc (*append)(struct store *s, const char *folder,
	    struct append_item *items, size_t n, uint32_t *uidvalidity_r);
	enum store_rc (*set_flags)(struct store *s, const uint32_t *uids, size_t n,
	    const struct flagset *add, const struct flagset *del);
	enum store_rc (*expunge)(struct store *s, const uint32_t *uids, size_t n);
	/* Moves messages of the selected folder to folder `to` (MOVE, else
	 * COPY + expunge). new_uids[i] gets the UID of uids[i] there, 0 if the
	 * server did not say (no UIDPLUS). NULL in backends that cannot. */
	enum store_rc (*move)(struct store *s, const uint32_t *uids, size_t n, const char *to,
	    uint32_t *new_uids);
	/* Renames a folder (mirror: a rename recognised on the other side). */
	enum store_rc (*rename)(struct store *s, const char *from, const char *to);
	/* IDLE (RFC 2177) on the selected folder, for mirror --watch:
	 * idle_begin sends IDLE; idle_fd gives the socket to poll (and sets
	 * *pending when bytes are already buffered: do not poll then);
	 * idle_end sends DONE and reads what came. NULL where unsupported. */
	enum store_rc (*idle_begin)(struct store *s);
	int (*idle_fd)(struct store *s, bool *pending);
	enum store_rc (*idle_end)(struct store *s);
	void (*free)(struct store *s);

	/*
	 * Pipelined forms (optional, NULL where a backend has none; callers go
	 * through the store_*_many() wrappers below, which fall back to one
	 * call at a time). Every command is written before the first answer is
	 * read: one round trip for all, where one at a time costs one each.
	 * Per-item results go to rcs[i] (OK, BOX_BAD or MSG_BAD as for the
	 * single call); the return value is CONN_BAD if the connection failed
	 * (items not answered then have rc CONN_BAD), else OK.
	 */
	enum store_rc (*status_many)(struct store *s, const char *const *names, size_t n,
	    struct box_status *st, enum store_rc *rcs);
	/* CREATE as create() does it, without subscribing (see
	 * store_create_many); errs[i] gets the reason of a BOX_BAD. */
	enum store_rc (*create_many)(struct store *s, const char *const *names, size_t n,
	    enum store_rc *rcs, char **errs);
	enum store_rc (*subscribe_many)(struct store *s, const char *const *names, size_t n);
	enum store_rc (*set_flags_many)(struct store *s, struct store_flag_op *ops, size_t n);
};

struct store_opts {
	const char *password;   /* not copied; must outlive the store */
	const char *ca_file;    /* extra trusted CA, or NULL */
	int timeout_s;          /* idle read timeout */
	bool trace;             /* log the protocol exchange (redacted) */
	/* POP3 sources: messages have neither flags nor INTERNALDATE */
	bool pop3_no_date;      /* do not take INTERNALDATE from the headers */
	bool pop3_mark_seen;    /* report \Seen on every message */
	bool qresync;           /* ENABLE QRESYNC where offered (mirror:
	                           scan_changes); set before the first select */
};

/* Fields common to every backend; backends embed it first. */
struct store {
	const struct store_ops *ops;
	const struct account_url *url; /* not owned */
	struct store_opts opts;
	const char *label;             /* "source" / "destination" */
	struct store_caps caps;
	struct store_namespace ns;
	enum store_fatal_kind fatal;   /* set with STORE_FATAL */
	char *error;                   /* last failure, one line */
	/* bytes and messages moved, for reports */
	uint64_t bytes_in, bytes_out;
	/* The server asked us to wait this long before the next connection
	 * (throttling); store_reconnect() honours it. 0: no such request. */
	long backoff_ms;
};

/* Creates an unconnected store for u (IMAP or POP3 by scheme). */
struct store *store_new(const struct account_url *u, const struct store_opts *o,
    const char *label);
void store_free(struct store **s);
const char *store_error(const struct store *s);
/* Sets s->error (printf-style) and returns rc, for `return store_fail(...)`. */
enum store_rc store_fail(struct store *s, enum store_rc rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Reconnects after STORE_CONN_BAD, with bounded exponential backoff.
 * Returns OK, or the last failure once tries are used up. */
enum store_rc store_reconnect(struct store *s, int max_tries);

/*
 * Batched calls, pipelined where the backend can (one round trip for all),
 * else one at a time. They return OK or CONN_BAD (the connection failed;
 * items not done have rc CONN_BAD); per-item results are in rcs[i] or
 * ops[i].rc.
 *
 * store_create_many() is create() for many folders: OK for a folder made
 * (subscribed if subscribe[i]) or there already, BOX_BAD for one that
 * cannot be made, with the reason in errs[i] (the caller frees it).
 */
enum store_rc store_status_many(struct store *s, const char *const *names, size_t n,
    struct box_status *st, enum store_rc *rcs);
enum store_rc store_create_many(struct store *s, const char *const *names,
    const bool *subscribe, size_t n, enum store_rc *rcs, char **errs);
enum store_rc store_set_flags_many(struct store *s, struct store_flag_op *ops, size_t n);

/* Convenience wrappers: s->ops->x(s, ...). */
static inline enum store_rc store_connect(struct store *s) { return s->ops->connect(s); }

struct store *store_imap_new(const struct account_url *u, const struct store_opts *o);
struct store *store_pop3_new(const struct account_url *u, const struct store_opts *o);

#endif
