/*
 * verify.h — `postino verify SRC DST`: proof that the destination holds
 * everything the source holds.
 *
 * It compares the two servers, not the state DB: for each folder pair of
 * the copy's plan (the same rules, the same earlier pairs, so that paths
 * map identically) both folders are listed and their messages matched.
 *
 *   fast (default): by Message-ID and size (one header field per message),
 *     by SHA-256 of the bytes for messages without a Message-ID;
 *   deep (--deep):  by SHA-256 of every message, both sides fetched.
 *
 * Matched messages are compared for flags (keywords included) and
 * INTERNALDATE (the instant; time zones may differ). What is left is
 * paired once more: two messages whose bytes are equal once every line
 * ending is made CRLF were rewritten by the destination server (reported,
 * not a failure); two with the same Message-ID and other bytes differ in
 * content. The rest is missing (in the source only) or extra (at the
 * destination only, not a failure). Duplicates count: two copies in the
 * source need two at the destination.
 */
#ifndef POSTINO_VERIFY_H
#define POSTINO_VERIFY_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "planner.h"
#include "store.h"

struct verify_opts {
	bool deep;          /* SHA-256 of every message */
	bool no_flags;      /* do not compare flags (a POP3 source has none) */
	bool no_dates;      /* do not compare INTERNALDATEs (POP3) */
};

enum verify_kind {
	VD_MISSING = 0,  /* in the source, not at the destination */
	VD_FLAGS,        /* there, with other flags */
	VD_DATE,         /* there, with another INTERNALDATE */
	VD_CONTENT,      /* the same Message-ID, other bytes */
	VD_REWRITTEN,    /* other bytes, equal once line endings are CRLF */
	VD_EXTRA,        /* at the destination only */
};

struct verify_diff {
	enum verify_kind kind;
	char *src_path;           /* the source folder, NULL for VD_EXTRA */
	uint32_t a_uid, b_uid;    /* 0: none on that side */
	uint64_t a_size, b_size;
	char *msgid;              /* or NULL */
	int64_t a_date, b_date;   /* IDATE_NONE: unknown */
	char *a_flags, *b_flags;  /* canonical text (VD_FLAGS), else NULL */
};

struct verify_folder {
	char *src_path;           /* several joined by ", " when they go into one */
	char *dst_path;           /* NULL when skipped */
	char *skip_reason;        /* the plan skips it (not verified) */
	bool dst_missing;         /* the destination folder does not exist */
	bool failed;
	char *error;              /* why it could not be verified */
	uint64_t n_src, n_dst;
	uint64_t missing, extra, flags, dates, content, rewritten;
	struct verify_diff *diffs;
	size_t ndiffs;
};

struct verify_report {
	struct verify_folder *folders;
	size_t nfolders;
	bool deep;
	uint64_t n_src, n_dst;
	uint64_t missing, extra, flags, dates, content, rewritten;
	size_t checked, differing, failed, skipped;
	int64_t started_ms, ended_ms;
};

/*
 * Verifies every entry of plan. Returns STORE_OK when every folder could
 * be compared (the report says whether they agree), STORE_CONN_BAD when a
 * side could not be reconnected, STORE_FATAL on authentication or TLS
 * failures (store->fatal of the store at fault). *err_r (caller frees)
 * says why when not OK.
 */
enum store_rc verify_run(struct store *src, struct store *dst, const struct plan *plan,
    const struct verify_opts *o, struct verify_report *rep, char **err_r);

/* True when the destination holds everything: nothing missing, no other
 * flags, dates or content, no folder that could not be compared. */
bool verify_all_there(const struct verify_report *r);

/* A line per folder (its differences below it, at most `limit` of each
 * folder, 0: all), then the verdict line. */
void verify_print_text(FILE *out, const struct verify_report *r, const char *src_url,
    const char *dst_url, size_t limit);
/* One JSON document with every difference. */
void verify_print_json(FILE *out, const struct verify_report *r, const char *src_url,
    const char *dst_url, int exit_code);

void verify_report_free(struct verify_report *r);

/*
 * SHA-256 of a message as is and with every line ending made CRLF (bare
 * LF and bare CR alike), fed in chunks. For the store's body sink and tests.
 */
struct verify_hasher;
struct verify_hasher *verify_hasher_new(void);
void verify_hasher_feed(struct verify_hasher *h, const char *bytes, size_t len);
/* Writes both digests and starts over for the next message. */
void verify_hasher_done(struct verify_hasher *h, uint8_t raw[32], uint8_t crlf[32]);
void verify_hasher_free(struct verify_hasher *h);

#endif
