/*
 * fake_store.h — an in-memory IMAP-like server behind the store interface
 * (src/store.h), for unit tests of the planner, the copier and the mirror.
 *
 * One fake_store is one account and one connection to it: folders with a
 * hierarchy delimiter and LIST attributes, each with UIDVALIDITY, UIDNEXT,
 * HIGHESTMODSEQ (bumped on every change) and PERMANENTFLAGS; messages with
 * UID, bytes, flags, INTERNALDATE and its zone, MODSEQ; the UIDs expunged
 * and the MODSEQ of their expunge (QRESYNC's VANISHED). It behaves like a
 * strict server: it refuses what a real one could refuse (a flag it does
 * not keep, CHANGEDSINCE without CONDSTORE, any command while the
 * connection is down), so that a copier bug shows as a failure rather than
 * being papered over.
 *
 * Fault injection:
 *  - fake_store_fault(): the Nth operation (of one kind, or of any kind)
 *    fails with STORE_CONN_BAD, and the connection stays down until the next
 *    connect(); an APPEND may first apply some of its items (a connection
 *    that dies mid-batch). Instead of failing, the process may die
 *    (_exit(99)) at that point, after saving, like a killed run.
 *  - fake_store_refuse(): messages that match a predicate are refused with
 *    STORE_MSG_BAD and a server text.
 *  - fake_store_set_uidvalidity(): a folder gets a new UIDVALIDITY and all
 *    its messages new UIDs, as after a server migration.
 *
 * Persistence: fake_store_save()/fake_store_load() write and read the whole
 * account (not the faults) to a file; fake_store_autosave() saves after every
 * operation that changes the account, so that a child process killed by the
 * copier's test hook leaves the destination as a real server would.
 *
 * Memory: everything passed in is copied; everything returned belongs to
 * the fake store and lives until it changes.
 */
#ifndef POSTINO_TESTS_FAKE_STORE_H
#define POSTINO_TESTS_FAKE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "flags.h"
#include "store.h"

enum fake_op {
	FOP_CONNECT = 0,
	FOP_LIST,
	FOP_CREATE,
	FOP_STATUS,
	FOP_SELECT,
	FOP_SCAN,
	FOP_FETCH,
	FOP_APPEND,
	FOP_SET_FLAGS,
	FOP_EXPUNGE,
	FOP_MOVE,
	FOP_RENAME,
	FOP_SCAN_CHANGES,
	FOP__COUNT,
	FOP_ANY = FOP__COUNT, /* a fault counting operations of every kind */
};

struct fake_msg {
	uint32_t uid;
	char *body;
	size_t len;
	struct flagset flags;
	int64_t idate;
	int tzoff;
	uint64_t modseq;
};

/* An expunged UID and the MODSEQ of its expunge. */
struct fake_gone {
	uint32_t uid;
	uint64_t modseq;
};

struct fake_folder {
	char *name;       /* wire name */
	char delim;
	unsigned attrs;   /* FA_* */
	uint32_t uidvalidity, uidnext;
	uint64_t hms;     /* HIGHESTMODSEQ, kept even without CONDSTORE */
	const char *broken; /* SELECT/STATUS/APPEND fail with BOX_BAD and
	                       this text (not saved) */
	/* PERMANENTFLAGS; by default every system flag and \* */
	bool send_permflags;
	unsigned permflags;
	bool perm_any_keyword;
	struct flagset perm_keywords;
	struct fake_msg *msgs; /* ascending UIDs */
	size_t n, cap;
	struct fake_gone *gone; /* expunged since this UIDVALIDITY, in order */
	size_t ngone, capgone;
};

struct fake_store;

/* Creates an unconnected account with no folders; label as in store.h
 * ("source", "destination"). */
struct fake_store *fake_store_new(const char *label, char delim, const char *ns_prefix);
/* The struct store to pass to the code under test; store_free() frees all. */
struct store *fake_store_base(struct fake_store *fs);
struct fake_store *fake_store_of(struct store *s);

void fake_store_set_caps(struct fake_store *fs, bool uidplus, bool condstore);
/* QRESYNC (implies CONDSTORE): scan_changes() works once the caller has
 * set opts.qresync. sloppy: VANISHED also covers UIDs that never existed
 * (every free UID below UIDNEXT), as a server that does not keep expunge
 * MODSEQs answers. */
void fake_store_set_qresync(struct fake_store *fs, bool on, bool sloppy);
/* CREATE refuses names holding any of these characters (BOX_BAD), as
 * Cyrus does; NULL or "" refuses none. */
void fake_store_refuse_chars(struct fake_store *fs, const char *chars);
/* A server that stores bare LF line ends as CRLF (so appended messages
 * differ from what was sent). */
void fake_store_set_crlf(struct fake_store *fs, bool on);

/* Folders. add_folder returns the folder (existing or new). */
struct fake_folder *fake_store_add_folder(struct fake_store *fs, const char *name,
    unsigned attrs);
struct fake_folder *fake_store_folder(struct fake_store *fs, const char *name);
size_t fake_store_nfolders(const struct fake_store *fs);
struct fake_folder *fake_store_folder_at(struct fake_store *fs, size_t i);

/*
 * PERMANENTFLAGS of a folder: the system flags kept, whether any new
 * keyword may be created ("\*"), and the keywords listed (space-separated
 * text, may be NULL).
 */
void fake_store_set_permflags(struct fake_folder *f, unsigned sys, bool any_keyword,
    const char *keywords);

/* Adds a message as if delivered; returns its UID. flags is text
 * ("\Seen $Junk"), NULL for none. */
uint32_t fake_store_add_msg(struct fake_store *fs, struct fake_folder *f, const char *body,
    size_t len, const char *flags, int64_t idate, int tzoff);
struct fake_msg *fake_store_msg(struct fake_folder *f, uint32_t uid);
/* Replaces the flags of a message as a client would (bumps MODSEQ). */
void fake_store_msg_set_flags(struct fake_store *fs, struct fake_folder *f, uint32_t uid,
    const char *flags);
/* Removes a message as a client would (bumps HIGHESTMODSEQ). */
void fake_store_msg_remove(struct fake_store *fs, struct fake_folder *f, uint32_t uid);
/* Moves a message to folder `to` as a client would (MOVE: a new UID there,
 * expunged here); returns its new UID, 0 if there was no such message. */
uint32_t fake_store_msg_move(struct fake_store *fs, struct fake_folder *f, uint32_t uid,
    struct fake_folder *to);
/* Renames a folder (and the folders below it) as a client would; the
 * UIDVALIDITY stays. 0, or -1 if from is missing or to exists. */
int fake_store_rename_folder(struct fake_store *fs, const char *from, const char *to);
/* The message of folder f whose bytes are body, or NULL (the first). */
struct fake_msg *fake_store_find_body(struct fake_folder *f, const char *body, size_t len);
/* A new UIDVALIDITY; all messages renumbered from first_uid in order. */
void fake_store_set_uidvalidity(struct fake_store *fs, struct fake_folder *f,
    uint32_t uidvalidity, uint32_t first_uid);

/* ---- fault injection ---- */

enum fake_fault_action {
	FAULT_CONN_BAD = 0, /* the operation fails, the connection goes down */
	FAULT_CRASH,        /* save (if autosaving) and _exit(99) */
};

struct fake_fault {
	enum fake_op kind;     /* the operations counted; FOP_ANY: all */
	unsigned nth;          /* fires at the nth counted operation (1-based) */
	size_t append_after;   /* APPEND: items applied before it fires */
	enum fake_fault_action action;
	bool lose_answers;     /* APPEND: the items applied before it fired are
	                          reported CONN_BAD too (done, never confirmed) */
	bool repeat;           /* fire again every nth operation after that */
	bool clear_on_connect; /* a connect() disarms it (a transient fault) */
};

/* Arms a fault; counting starts now. Up to 8 faults at a time. */
void fake_store_fault(struct fake_store *fs, const struct fake_fault *f);
void fake_store_clear_faults(struct fake_store *fs);
/* How many times faults fired. */
unsigned fake_store_faults_fired(const struct fake_store *fs);

/*
 * Refuses (STORE_MSG_BAD, with text as the server's words) every APPEND of
 * a message for which pred returns true. NULL pred stops refusing.
 */
typedef bool fake_refuse_pred(void *ctx, const char *folder, const char *body, size_t len);
void fake_store_refuse(struct fake_store *fs, fake_refuse_pred *pred, void *ctx,
    const char *text);
/* A ready-made predicate: the body contains the string ctx. */
bool fake_refuse_containing(void *ctx, const char *folder, const char *body, size_t len);

/* ---- counters ---- */

/* Calls of one kind (FOP_ANY: all) since creation or the last reset. */
unsigned fake_store_calls(const struct fake_store *fs, enum fake_op kind);
/* Message bodies streamed by fetch() and messages appended. */
unsigned fake_store_bodies_fetched(const struct fake_store *fs);
unsigned fake_store_msgs_appended(const struct fake_store *fs);
/* scan() calls over a whole folder with flags (a full scan), and with
 * nothing but UIDs (a listing). */
unsigned fake_store_full_scans(const struct fake_store *fs);
unsigned fake_store_uid_listings(const struct fake_store *fs);
void fake_store_reset_counters(struct fake_store *fs);

/* ---- persistence ---- */

/* 0, or -1 with errno. The file holds the account, not faults or counters. */
int fake_store_save(const struct fake_store *fs, const char *path);
/* NULL on error (unreadable or malformed file). */
struct fake_store *fake_store_load(const char *path, const char *label);
/* Save to path after every change (NULL: stop). */
void fake_store_autosave(struct fake_store *fs, const char *path);

/* ---- comparing ---- */

/*
 * A canonical text dump of one folder: per message in UID order its size,
 * a 64-bit FNV-1a checksum of its bytes, the start of its text, its flags,
 * date and zone (not its UID). Equal dumps mean equal folders as a user
 * sees them. Caller frees.
 */
char *fake_folder_dump(const struct fake_folder *f);

/* The fetch() chunk size (default 7 bytes). */
void fake_store_set_chunk(struct fake_store *fs, size_t chunk);

#endif
