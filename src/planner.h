/*
 * planner.h — which source folder goes to which destination folder.
 *
 * A pure function of the two folder lists, the two namespaces, the state's
 * earlier decisions and the user's rules: it can be printed (`postino
 * plan`), tested without a server, and executed by the copier.
 *
 * Names. Folders are handled as paths: the wire name less the personal
 * namespace prefix, split at the server's hierarchy delimiter, each
 * component decoded from modified UTF-7. Rules and output write paths in
 * UTF-8 with '/' between components, whatever the servers use. A path is
 * rebuilt on the destination with its delimiter and prefix; INBOX is INBOX.
 *
 * Rules, in order:
 *  1. Folders that cannot hold messages (\Noselect, \NonExistent) are not
 *     copied (their children are, and the server creates the parents).
 *  2. --folder GLOB (any number; default: all) keeps matching paths;
 *     --exclude GLOB drops them. GLOB is fnmatch(3) without FNM_PATHNAME:
 *     '*' also matches '/'. A --folder GLOB that matches nothing is an
 *     error (a typo must not silently copy nothing).
 *  3. Gmail's virtual folders (SPECIAL-USE \All, \Important, \Flagged)
 *     hold copies of messages that live in other folders; they are skipped
 *     unless a --folder rule names them.
 *  4. --map SRC=DST: the folder SRC, or any folder below it, goes to DST
 *     (the longest matching SRC wins).
 *  5. --into FOLDER: everything goes below FOLDER (INBOX becomes
 *     FOLDER/INBOX; a POP3 mailbox becomes FOLDER itself); special-use
 *     matching is off.
 *  6. A folder paired in an earlier run keeps its destination (so that a
 *     folder created meanwhile at the destination changes nothing).
 *  7. Special-use folders (Sent, Drafts, Trash, Junk, Archive), known by
 *     their SPECIAL-USE attribute or a well-known name at the top level, go
 *     to the destination's folder with the same attribute, else to one with
 *     a well-known name, else keep their name.
 *  8. Otherwise the same path.
 * A component holding the destination's delimiter has it replaced by a
 * look-alike (U+2215 for '/', U+2024 for '.', U+FF3C for '\'), so that it
 * never becomes a new hierarchy level. See docs/design.md.
 *
 * Names the destination refuses (the escape rule). Some servers refuse
 * characters in folder names (Cyrus: / % ! ; < > { } | and backtick; '*'
 * and '%' are LIST wildcards). Each of PLAN_ESCAPED_CHARS in a component
 * of the destination name becomes a look-alike: '/' U+2215 (as above), any
 * other its fullwidth form, U+FF01..U+FF5E (the ASCII code plus 0xFEE0):
 * "Offers 50%!" -> "Offers 50％！". The prefix and the delimiter are left
 * alone. The plan carries the escaped name of every folder to create
 * (plan_entry.dst_escaped); the copier uses it only after the destination
 * refused the plain name, and the state DB then records the pair, so that
 * later runs (and `plan`, rule 6) go to the escaped name directly. The rule
 * is reversible (plan_unescape_name) for every name that held none of the
 * look-alikes already; where two folders would meet under one escaped name
 * the plan has no escaped name for the later one and says so in a warning,
 * so two folders are never merged by the rule.
 */
#ifndef POSTINO_PLANNER_H
#define POSTINO_PLANNER_H

#include <stdbool.h>
#include <stddef.h>

#include "store.h"

struct plan_map {
	char *src; /* path */
	char *dst; /* path */
};

struct plan_rules {
	char **folders;   /* --folder GLOB */
	size_t nfolders;
	char **excludes;  /* --exclude GLOB */
	size_t nexcludes;
	struct plan_map *maps;
	size_t nmaps;
	char *into;       /* --into FOLDER (path), or NULL */
	bool allow_unmatched; /* a --folder matching nothing is no error (the
	                         mirror's second, reverse plan) */
};

/* One side: its folders and personal namespace. */
struct plan_side {
	const struct store_folder_list *folders;
	const char *prefix; /* personal namespace prefix, "" if none */
	char delim;         /* hierarchy delimiter (0: take it from LIST) */
	bool single;        /* one unnamed mailbox (POP3): --into FOLDER is it */
};

/* An earlier decision, from the state DB. */
struct plan_known {
	const char *src_name; /* wire names */
	const char *dst_name;
};

enum plan_action {
	PLAN_COPY = 0,   /* destination exists */
	PLAN_CREATE,     /* destination must be created first */
	PLAN_SKIP,       /* not copied: see reason */
};

struct plan_entry {
	char *src_name, *src_path;
	char *dst_name, *dst_path;
	enum plan_action action;
	const char *reason;  /* why this destination, or why skipped */
	unsigned src_attrs;
	/* PLAN_CREATE: the name to create if the destination refuses dst_name
	 * (the escape rule), NULL if escaping changes nothing or would meet
	 * another folder's destination */
	char *dst_escaped, *dst_escaped_path;
};

struct plan {
	size_t n;
	struct plan_entry *v;
	char **warnings;
	size_t nwarnings;
};

/*
 * Builds the plan. Returns 0, or -1 with *err naming the rule at fault
 * (caller frees).
 */
int plan_build(struct plan *p, const struct plan_side *src, const struct plan_side *dst,
    const struct plan_rules *rules, const struct plan_known *known, size_t nknown,
    char **err);
void plan_free(struct plan *p);
void plan_rules_free(struct plan_rules *r);

/* Wire name <-> path for one side. NULL if the name is not valid mUTF-7
 * (then the wire name is used as is by the caller). Caller frees. */
char *plan_path_of(const char *wire, const char *prefix, char delim);
char *plan_wire_of(const char *path, const char *prefix, char delim);

/* Characters the escape rule replaces (see above). */
#define PLAN_ESCAPED_CHARS "/%!;<>{}|`*"

/* The escape rule on one name component (UTF-8, no delimiter) and its
 * inverse. Never NULL; caller frees. */
char *plan_escape_name(const char *utf8);
char *plan_unescape_name(const char *utf8);

/* The escape rule on a wire name of a side with this prefix and delimiter:
 * each component below the prefix is escaped. INBOX stays INBOX. NULL if
 * the name is not valid modified UTF-7. Caller frees. */
char *plan_escape_wire(const char *wire, const char *prefix, char delim);

#endif
