/*
 * batch.h — `postino batch ACCOUNTS.csv`: a migration campaign.
 *
 * One CSV row per account pair (docs/batch.md). Every row is checked
 * before any account runs; then each selected row is copied by a child
 * process of the same binary (`postino copy`) with its own state, report,
 * log and console output in the --out directory, --jobs of them at a time.
 * A child that crashes or fails takes no other account with it. At the
 * end, a summary table (or JSON) says which accounts failed and why.
 *
 * The CSV parser and the shard arithmetic are pure functions, for the
 * unit tests (tests/unit/test_batch.c).
 */
#ifndef POSTINO_BATCH_H
#define POSTINO_BATCH_H

#include <stdbool.h>
#include <stddef.h>

/* One account pair: a data row of the CSV file. */
struct batch_row {
	int line;           /* line of the file where the record starts */
	size_t index;       /* 1-based number among the data rows (--shard) */
	char *id;           /* unique; names the files in --out */
	char *url[2];       /* source, destination as written; NULL: the job's */
	char *display[2];   /* their canonical form (no secrets), or NULL */
	char *passfile[2];  /* resolved against the CSV's directory; or NULL */
	char *passcmd[2];   /* run by the child with /bin/sh -c; or NULL */
	char *auth[2];      /* canonical mechanism name, or NULL */
	char *job;          /* job file, resolved; or NULL */
	char *preset;       /* preset name or file; or NULL */
};

struct batch_csv {
	struct batch_row *rows;
	size_t n;
};

/*
 * Parses text (the CSV file called name, used in messages and to resolve
 * relative paths against its directory) into *c. RFC 4180 fields (quoted
 * fields may hold commas, line breaks and "" for a quote), CRLF or LF; a
 * header row naming the columns; lines starting with '#' and blank lines
 * are skipped; spaces around an unquoted field are dropped. Checks every
 * row (ids, URLs, password columns, mechanisms). Returns 0, or -1 with
 * *err_r set to one line "NAME:LINE: column 'X': what is wrong" (caller
 * frees); *c is then empty.
 */
int batch_csv_parse(struct batch_csv *c, const char *name, const char *text, size_t len,
    char **err_r);

/* Reads path (at most 16 MB) and parses it. The same returns. */
int batch_csv_load(struct batch_csv *c, const char *path, char **err_r);

void batch_csv_release(struct batch_csv *c);

/*
 * Parses --shard K/N: 1 <= K <= N <= 100000. Returns 0, or -1 with *err_r
 * set (one line; caller frees).
 */
int batch_shard_parse(const char *s, unsigned *k, unsigned *n, char **err_r);

/* Does shard K/N take data row number index (1-based)? Rows K, K+N, K+2N... */
bool batch_shard_has(unsigned k, unsigned n, size_t index);

/* postino batch ...: argv[0] is "batch". Returns the exit code. */
int batch_main(int argc, char **argv);

#endif
