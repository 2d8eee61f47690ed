/*
 * batch.c — `postino batch ACCOUNTS.csv`: many account pairs, one child
 * process each (see batch.h, docs/batch.md).
 *
 * Why child processes and not threads: an account that crashes postino,
 * exhausts memory or hits a fatal error must not take the others with it,
 * and each account then has what a single `postino copy` has — its own
 * state lock, signal handling, exit code, report and log — so that an
 * account can be rerun or inspected by hand with the same files. The
 * children run this same binary (/proc/self/exe) as `postino copy`.
 *
 * Passwords never pass through here: a row names a password file or a
 * command, and the child reads it as --passfileN / --passcmdN would. The
 * batch's own POSTINO_PASSWORD1/2 are removed from the children's
 * environment, so that no account silently gets another's password.
 *
 * Signals: SIGINT/SIGTERM are forwarded once to every running child
 * (each in its own process group, so that a terminal's Ctrl-C reaches
 * them only through us, once), no further account starts, and the batch
 * exits 7 after the children have stopped at their next safe point. A
 * second signal is forwarded too: the children then stop at once.
 */
#include "batch.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "jobfile.h"
#include "log.h"
#include "report.h"
#include "url.h"
#include "util.h"

#define CSV_MAX_SIZE (16 * 1024 * 1024)
#define ID_MAX 64

/* ------------------------------------------------------------------ */
/* CSV                                                                 */

enum col {
	COL_ID, COL_SRC, COL_DST, COL_PASSFILE1, COL_PASSCMD1, COL_PASSFILE2,
	COL_PASSCMD2, COL_AUTH1, COL_AUTH2, COL_JOB, COL_PRESET, COL_IGNORE,
	NCOLS
};

static const struct {
	const char *name;
	enum col col;
} col_names[] = {
	{"id", COL_ID},
	{"source", COL_SRC},
	{"src", COL_SRC},
	{"destination", COL_DST},
	{"dest", COL_DST},
	{"dst", COL_DST},
	{"passfile1", COL_PASSFILE1},
	{"passcmd1", COL_PASSCMD1},
	{"passfile2", COL_PASSFILE2},
	{"passcmd2", COL_PASSCMD2},
	{"auth1", COL_AUTH1},
	{"auth2", COL_AUTH2},
	{"job", COL_JOB},
	{"preset", COL_PRESET},
	{"description", COL_IGNORE},
	{"comment", COL_IGNORE},
	{"notes", COL_IGNORE},
};

/* The canonical name of a column, for messages. */
static const char *col_name(enum col c)
{
	for (size_t i = 0; i < ARRAY_SIZE(col_names); i++)
		if (col_names[i].col == c)
			return col_names[i].name;
	return "?";
}

struct record {
	int line;
	char **f;
	size_t n;
};

static void record_release(struct record *r)
{
	for (size_t i = 0; i < r->n; i++)
		free(r->f[i]);
	free(r->f);
	memset(r, 0, sizeof *r);
}

struct csv_reader {
	const char *name;
	const char *p, *end;
	int line;        /* of p */
	char *err;
};

static int csv_fail(struct csv_reader *rd, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int csv_fail(struct csv_reader *rd, int line, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *m = xvasprintf(fmt, ap);
	va_end(ap);
	free(rd->err);
	rd->err = xasprintf("%s:%d: %s", rd->name, line, m);
	free(m);
	return -1;
}

static bool at_eol(const struct csv_reader *rd)
{
	return rd->p == rd->end || *rd->p == '\n' || *rd->p == '\r';
}

/* Steps over one line break (CRLF, LF or CR). */
static void skip_eol(struct csv_reader *rd)
{
	if (rd->p < rd->end && *rd->p == '\r')
		rd->p++;
	if (rd->p < rd->end && *rd->p == '\n')
		rd->p++;
	rd->line++;
}

/* Is the line at p blank (spaces and tabs only)? */
static bool blank_line(const struct csv_reader *rd)
{
	for (const char *q = rd->p; q < rd->end && *q != '\n' && *q != '\r'; q++)
		if (*q != ' ' && *q != '\t')
			return false;
	return true;
}

/*
 * Reads the next record into *r. Returns 1, 0 at the end of the text, or
 * -1 with rd->err set. Comment lines and blank lines are skipped.
 */
static int csv_next(struct csv_reader *rd, struct record *r)
{
	memset(r, 0, sizeof *r);
	for (;;) {
		if (rd->p >= rd->end)
			return 0;
		if (*rd->p == '#' || blank_line(rd)) {
			while (!at_eol(rd))
				rd->p++;
			skip_eol(rd);
			continue;
		}
		break;
	}
	r->line = rd->line;
	struct buf b = BUF_INIT;
	for (;;) {
		buf_reset(&b);
		buf_adds(&b, ""); /* an empty field is "", not NULL */
		while (rd->p < rd->end && (*rd->p == ' ' || *rd->p == '\t'))
			rd->p++;
		if (rd->p < rd->end && *rd->p == '"') {
			int opened = rd->line;
			rd->p++;
			for (;;) {
				if (rd->p >= rd->end) {
					buf_release(&b);
					record_release(r);
					return csv_fail(rd, opened, "a quoted field is not closed "
					    "(its quote opens on this line)");
				}
				char ch = *rd->p++;
				if (ch == '"') {
					if (rd->p < rd->end && *rd->p == '"') {
						buf_addc(&b, '"');
						rd->p++;
						continue;
					}
					break;
				}
				if (ch == '\n' || (ch == '\r' && (rd->p >= rd->end || *rd->p != '\n')))
					rd->line++;
				buf_addc(&b, ch);
			}
			while (rd->p < rd->end && (*rd->p == ' ' || *rd->p == '\t'))
				rd->p++;
			if (!at_eol(rd) && *rd->p != ',') {
				csv_fail(rd, rd->line, "text after the closing quote of field %zu "
				    "(inside quotes, write a quote as \"\")", r->n + 1);
				buf_release(&b);
				record_release(r);
				return -1;
			}
		} else {
			const char *s = rd->p;
			while (!at_eol(rd) && *rd->p != ',') {
				if (*rd->p == '"') {
					csv_fail(rd, rd->line, "a quote inside unquoted field %zu: quote "
					    "the whole field and write the quote as \"\"", r->n + 1);
					buf_release(&b);
					record_release(r);
					return -1;
				}
				rd->p++;
			}
			const char *e = rd->p;
			while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
				e--;
			buf_add(&b, s, (size_t)(e - s));
		}
		r->f = xrealloc(r->f, (r->n + 1) * sizeof *r->f);
		r->f[r->n++] = buf_detach(&b);
		if (rd->p < rd->end && *rd->p == ',') {
			rd->p++;
			continue;
		}
		skip_eol(rd);
		return 1;
	}
}

void batch_csv_release(struct batch_csv *c)
{
	for (size_t i = 0; i < c->n; i++) {
		struct batch_row *w = &c->rows[i];
		free(w->id);
		for (int k = 0; k < 2; k++) {
			free(w->url[k]);
			free(w->display[k]);
			free(w->passfile[k]);
			free(w->passcmd[k]);
			free(w->auth[k]);
		}
		free(w->job);
		free(w->preset);
	}
	free(c->rows);
	memset(c, 0, sizeof *c);
}

/* The directory of name ("." if none), for relative paths. */
static char *dir_of(const char *name)
{
	const char *slash = strrchr(name, '/');
	if (!slash)
		return xstrdup(".");
	if (slash == name)
		return xstrdup("/");
	return xstrndup(name, (size_t)(slash - name));
}

static char *resolve(const char *dir, const char *v)
{
	if (v[0] == '/')
		return xstrdup(v);
	if (v[0] == '~' && v[1] == '/') {
		const char *home = getenv("HOME");
		return xasprintf("%s/%s", home ? home : "", v + 2);
	}
	return xasprintf("%s/%s", dir, v);
}

static bool id_ok(const char *id)
{
	size_t n = strlen(id);
	if (!n || n > ID_MAX || id[0] == '.' || id[0] == '-')
		return false;
	for (const char *p = id; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		    (*p >= '0' && *p <= '9') || strchr("._-@+", *p)))
			return false;
	return true;
}

struct parse_ctx {
	struct csv_reader rd;
	char *dir;
	int colmap[NCOLS];     /* column index of each field, -1 if absent */
	size_t ncols;
};

/* A row's field for column c, or NULL when empty or absent. */
static const char *field(const struct parse_ctx *pc, const struct record *r, enum col c)
{
	int i = pc->colmap[c];
	if (i < 0 || !r->f[i][0])
		return NULL;
	return r->f[i];
}

static int parse_header(struct parse_ctx *pc, const struct record *r)
{
	struct csv_reader *rd = &pc->rd;
	for (int c = 0; c < NCOLS; c++)
		pc->colmap[c] = -1;
	pc->ncols = r->n;
	for (size_t i = 0; i < r->n; i++) {
		const char *h = r->f[i];
		int found = -1;
		for (size_t k = 0; k < ARRAY_SIZE(col_names); k++)
			if (!ascii_strcasecmp(h, col_names[k].name))
				found = (int)col_names[k].col;
		if (found < 0) {
			if (strstr(h, "password") || strstr(h, "Password") || !ascii_strcasecmp(h, "pass") ||
			    !ascii_strcasecmp(h, "pass1") || !ascii_strcasecmp(h, "pass2"))
				return csv_fail(rd, r->line, "column '%s': a password column is refused: "
				    "use passfile1/passfile2 (a file per password) or "
				    "passcmd1/passcmd2 (a command)", h);
			return csv_fail(rd, r->line, "unknown column '%s' in the header (columns: id, "
			    "source, destination, passfile1, passcmd1, passfile2, passcmd2, auth1, "
			    "auth2, job, preset, description)", h);
		}
		if (found == COL_IGNORE)
			continue;
		if (pc->colmap[found] >= 0)
			return csv_fail(rd, r->line, "column '%s' is named twice in the header",
			    col_name((enum col)found));
		pc->colmap[found] = (int)i;
	}
	if (pc->colmap[COL_ID] < 0)
		return csv_fail(rd, r->line, "the header has no 'id' column (the first "
		    "line that is not a comment is the header)");
	if ((pc->colmap[COL_SRC] < 0 || pc->colmap[COL_DST] < 0) && pc->colmap[COL_JOB] < 0)
		return csv_fail(rd, r->line, "the header needs 'source' and 'destination' "
		    "columns, or a 'job' column");
	return 0;
}

static int row_fail(struct parse_ctx *pc, const struct record *r, enum col c,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int row_fail(struct parse_ctx *pc, const struct record *r, enum col c,
    const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *m = xvasprintf(fmt, ap);
	va_end(ap);
	csv_fail(&pc->rd, r->line, "column '%s': %s", col_name(c), m);
	free(m);
	return -1;
}

static int parse_row(struct parse_ctx *pc, const struct record *r, struct batch_row *w)
{
	static const enum col url_col[2] = {COL_SRC, COL_DST};
	static const enum col pf_col[2] = {COL_PASSFILE1, COL_PASSFILE2};
	static const enum col pc_col[2] = {COL_PASSCMD1, COL_PASSCMD2};
	static const enum col auth_col[2] = {COL_AUTH1, COL_AUTH2};
	static const char *const side[2] = {"source", "destination"};

	if (r->n != pc->ncols)
		return csv_fail(&pc->rd, r->line, "%zu field%s, but the header has %zu columns",
		    r->n, r->n == 1 ? "" : "s", pc->ncols);
	for (int c = 0; c < COL_IGNORE; c++) {
		const char *v = field(pc, r, (enum col)c);
		if (v && strpbrk(v, "\r\n"))
			return row_fail(pc, r, (enum col)c, "a line break in the value");
	}
	const char *id = field(pc, r, COL_ID);
	if (!id)
		return row_fail(pc, r, COL_ID, "empty: every row needs an id");
	if (!id_ok(id))
		return row_fail(pc, r, COL_ID, "'%s': use up to %d letters, digits and . _ - @ + "
		    "(not first: . -), it names the account's files", id, ID_MAX);
	w->id = xstrdup(id);
	w->line = r->line;
	const char *job = field(pc, r, COL_JOB);
	if (job)
		w->job = resolve(pc->dir, job);
	const char *preset = field(pc, r, COL_PRESET);
	if (preset)
		w->preset = xstrdup(preset);
	for (int k = 0; k < 2; k++) {
		const char *a = field(pc, r, auth_col[k]);
		if (a) {
			const char *m = url_auth_mech(a);
			if (!m)
				return row_fail(pc, r, auth_col[k], "'%s': use plain, login, cram-md5 "
				    "or xoauth2", a);
			w->auth[k] = xstrdup(m);
		}
	}
	const char *u0 = field(pc, r, COL_SRC), *u1 = field(pc, r, COL_DST);
	if (!u0 != !u1)
		return row_fail(pc, r, u0 ? COL_DST : COL_SRC, "empty, but the %s is given: "
		    "give both accounts, or neither and a job file", u0 ? "source" : "destination");
	if (!u0 && !w->job)
		return row_fail(pc, r, COL_SRC, "empty: give the source and destination URLs, "
		    "or a job file that names them");
	for (int k = 0; k < 2 && u0; k++) {
		struct account_url u;
		char *err = NULL;
		const char *v = k ? u1 : u0;
		if (url_parse(v, &u, &err) < 0) {
			row_fail(pc, r, url_col[k], "%s", err);
			free(err);
			return -1;
		}
		if (w->auth[k] && url_set_auth(&u, w->auth[k], &err) < 0) {
			row_fail(pc, r, auth_col[k], "%s", err);
			free(err);
			url_free(&u);
			return -1;
		}
		if (k == 1 && u.proto != PROTO_IMAP) {
			url_free(&u);
			return row_fail(pc, r, COL_DST, "only IMAP can be a destination");
		}
		w->url[k] = xstrdup(v);
		w->display[k] = xstrdup(u.display);
		url_free(&u);
	}
	for (int k = 0; k < 2; k++) {
		const char *f = field(pc, r, pf_col[k]), *c = field(pc, r, pc_col[k]);
		if (f && c)
			return row_fail(pc, r, pc_col[k], "both %s and %s are given for the %s: "
			    "which one?", col_name(pf_col[k]), col_name(pc_col[k]), side[k]);
		if (!f && !c && !w->job)
			return row_fail(pc, r, pf_col[k], "no password for the %s: give %s (a file) "
			    "or %s (a command)", side[k], col_name(pf_col[k]), col_name(pc_col[k]));
		if (f)
			w->passfile[k] = resolve(pc->dir, f);
		if (c)
			w->passcmd[k] = xstrdup(c);
	}
	return 0;
}

int batch_csv_parse(struct batch_csv *c, const char *name, const char *text, size_t len,
    char **err_r)
{
	struct parse_ctx pc;
	memset(&pc, 0, sizeof pc);
	memset(c, 0, sizeof *c);
	*err_r = NULL;
	pc.rd = (struct csv_reader){name, text, text + len, 1, NULL};
	pc.dir = dir_of(name);
	int ret = -1;
	struct record r = {0};
	bool header = false;

	if (memchr(text, '\0', len)) {
		csv_fail(&pc.rd, 1, "not a text file (a NUL byte)");
		goto out;
	}
	if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) /* a spreadsheet's BOM */
		pc.rd.p += 3;
	for (;;) {
		int got = csv_next(&pc.rd, &r);
		if (got < 0)
			goto out;
		if (got == 0)
			break;
		if (!header) {
			if (parse_header(&pc, &r) < 0)
				goto out;
			header = true;
			record_release(&r);
			continue;
		}
		bool empty = true;
		for (size_t i = 0; i < r.n; i++)
			empty = empty && !r.f[i][0];
		if (empty) { /* ",,,," as spreadsheets write empty rows */
			record_release(&r);
			continue;
		}
		c->rows = xrealloc(c->rows, (c->n + 1) * sizeof *c->rows);
		struct batch_row *w = &c->rows[c->n++];
		memset(w, 0, sizeof *w);
		w->index = c->n;
		if (parse_row(&pc, &r, w) < 0)
			goto out;
		for (size_t i = 0; i + 1 < c->n; i++)
			if (!strcmp(c->rows[i].id, w->id)) {
				row_fail(&pc, &r, COL_ID, "'%s' again (first on line %d): ids must be "
				    "unique", w->id, c->rows[i].line);
				goto out;
			}
		record_release(&r);
	}
	if (!header) {
		csv_fail(&pc.rd, pc.rd.line, "no header row (id,source,destination,...)");
		goto out;
	}
	ret = 0;
out:
	record_release(&r);
	free(pc.dir);
	if (ret < 0) {
		*err_r = pc.rd.err;
		batch_csv_release(c);
	}
	return ret;
}

int batch_csv_load(struct batch_csv *c, const char *path, char **err_r)
{
	memset(c, 0, sizeof *c);
	*err_r = NULL;
	FILE *f = fopen(path, "rb");
	if (!f) {
		*err_r = xasprintf("cannot read '%s': %s", path, strerror(errno));
		return -1;
	}
	struct buf b = BUF_INIT;
	char chunk[65536];
	size_t n;
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
		buf_add(&b, chunk, n);
		if (b.len > CSV_MAX_SIZE)
			break;
	}
	bool bad = ferror(f);
	fclose(f);
	if (bad || b.len > CSV_MAX_SIZE) {
		*err_r = bad ? xasprintf("cannot read '%s': %s", path, strerror(errno))
		    : xasprintf("%s: larger than 16 MB", path);
		buf_release(&b);
		return -1;
	}
	int rc = batch_csv_parse(c, path, b.s ? b.s : "", b.len, err_r);
	buf_release(&b);
	return rc;
}

int batch_shard_parse(const char *s, unsigned *k, unsigned *n, char **err_r)
{
	char *end;
	unsigned long a, b;
	*err_r = NULL;
	errno = 0;
	if (!s || *s < '0' || *s > '9')
		goto bad;
	a = strtoul(s, &end, 10);
	if (errno || *end != '/' || end[1] < '0' || end[1] > '9')
		goto bad;
	b = strtoul(end + 1, &end, 10);
	if (errno || *end)
		goto bad;
	if (b < 1 || b > 100000 || a < 1 || a > b) {
		*err_r = xasprintf("--shard '%s': K must be from 1 to N (K is 1-based: the "
		    "shards of 4 are 1/4 to 4/4), N at most 100000", s);
		return -1;
	}
	*k = (unsigned)a;
	*n = (unsigned)b;
	return 0;
bad:
	*err_r = xasprintf("--shard '%s': expected K/N, e.g. 1/4", s ? s : "");
	return -1;
}

bool batch_shard_has(unsigned k, unsigned n, size_t index)
{
	return index >= 1 && (index - 1) % n == (size_t)(k - 1);
}

/* ------------------------------------------------------------------ */
/* Running the accounts                                                */

enum result { RES_NOT_RUN, RES_RUNNING, RES_OK, RES_PARTIAL, RES_FAILED, RES_INTERRUPTED };

static const char *const result_name[] = {
	"not run", "running", "ok", "partial", "failed", "interrupted",
};

struct account {
	const struct batch_row *row;
	char *state, *report, *log, *out;
	pid_t pid;
	enum result result;
	int exit_code;          /* -1 when none (not run, or killed) */
	int64_t t0, t1;
	char *reason;
	bool have_report;
	unsigned long long copied, bytes, already, refused, failed_folders;
};

struct batch_opts {
	const char *csv;
	const char *out;
	unsigned jobs;
	const char *jobs_per_account;
	unsigned shard_k, shard_n;
	bool json;
	const char *report;
	bool quiet;
	const char *preset;
	char **pass;            /* options passed on to every `postino copy` */
	size_t npass;
};

static const char usage_batch[] =
    "usage: postino batch ACCOUNTS.csv [options]\n"
    "\n"
    "Copies many account pairs, one CSV row each (docs/batch.md): columns id,\n"
    "source, destination, passfile1 or passcmd1, passfile2 or passcmd2, and\n"
    "optionally auth1, auth2, job, preset, description. Each account runs as\n"
    "its own `postino copy` with its own state, report and log in --out; a\n"
    "rerun resumes every account where it stopped.\n"
    "\n"
    "  --jobs N              accounts at a time (default 4)\n"
    "  --jobs-per-account N  connections per side of each account (copy's\n"
    "                        --jobs; default 4)\n"
    "  --out DIR             states, reports, logs (default ./postino-batch):\n"
    "                        DIR/ID.db, DIR/ID.json, DIR/ID.log, DIR/ID.out\n"
    "  --shard K/N           only data rows K, K+N, K+2N, ... (K from 1): one\n"
    "                        campaign spread over N machines\n"
    "  --json                the summary as JSON on stdout (the table goes to\n"
    "                        stderr)\n"
    "  --report FILE         and/or write the JSON summary to FILE\n"
    "  -q, --quiet           no progress lines, only the summary and errors\n"
    "For every account, as for copy: --ca-file, --preset (a row's preset\n"
    "replaces it), --auth/--auth1/--auth2 (a row's auth1/auth2 win),\n"
    "--folder, --exclude, --map, --into, --dry-run, --no-flag-sync,\n"
    "--skip-duplicates, --batch, --timeout, --max-messages-per-second,\n"
    "--max-bytes-per-second (per account), --delete-after, --keep-days,\n"
    "--mark-seen, --no-header-date, -v, --trace (into each account's log).\n"
    "\n"
    "exit codes: 0 every account done; 1 some account failed or was partial\n"
    "(the summary says which and why); 2 usage or CSV error (nothing ran);\n"
    "4 --out in use by another batch; 7 interrupted (rerun to resume).\n";

enum {
	B_JOBS = 256, B_JOBS_PER_ACCOUNT, B_OUT, B_SHARD, B_JSON, B_REPORT, B_HELP,
	B_PASS_ARG, B_PASS_FLAG,
};

/* Options that go on to each account's `postino copy`, as given. */
static const struct option batch_long_opts[] = {
	{"jobs", required_argument, NULL, B_JOBS},
	{"jobs-per-account", required_argument, NULL, B_JOBS_PER_ACCOUNT},
	{"out", required_argument, NULL, B_OUT},
	{"shard", required_argument, NULL, B_SHARD},
	{"json", no_argument, NULL, B_JSON},
	{"report", required_argument, NULL, B_REPORT},
	{"quiet", no_argument, NULL, 'q'},
	{"help", no_argument, NULL, B_HELP},
	{"verbose", no_argument, NULL, 'v'},
	{"ca-file", required_argument, NULL, B_PASS_ARG},
	{"preset", required_argument, NULL, B_PASS_ARG},
	{"auth", required_argument, NULL, B_PASS_ARG},
	{"auth1", required_argument, NULL, B_PASS_ARG},
	{"auth2", required_argument, NULL, B_PASS_ARG},
	{"folder", required_argument, NULL, B_PASS_ARG},
	{"exclude", required_argument, NULL, B_PASS_ARG},
	{"map", required_argument, NULL, B_PASS_ARG},
	{"into", required_argument, NULL, B_PASS_ARG},
	{"batch", required_argument, NULL, B_PASS_ARG},
	{"timeout", required_argument, NULL, B_PASS_ARG},
	{"max-messages-per-second", required_argument, NULL, B_PASS_ARG},
	{"max-bytes-per-second", required_argument, NULL, B_PASS_ARG},
	{"keep-days", required_argument, NULL, B_PASS_ARG},
	{"dry-run", no_argument, NULL, B_PASS_FLAG},
	{"no-flag-sync", no_argument, NULL, B_PASS_FLAG},
	{"skip-duplicates", no_argument, NULL, B_PASS_FLAG},
	{"delete-after", no_argument, NULL, B_PASS_FLAG},
	{"mark-seen", no_argument, NULL, B_PASS_FLAG},
	{"no-header-date", no_argument, NULL, B_PASS_FLAG},
	{"trace", no_argument, NULL, B_PASS_FLAG},
	{NULL, 0, NULL, 0},
};

static void push_opt(struct batch_opts *bo, char *s)
{
	bo->pass = xrealloc(bo->pass, (bo->npass + 1) * sizeof *bo->pass);
	bo->pass[bo->npass++] = s;
}

/* Returns -1 to go on, or an exit code. */
static int parse_batch_options(struct batch_opts *bo, int argc, char **argv)
{
	int c, idx;
	long v;
	char *end;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":vq", batch_long_opts, &idx)) != -1) {
		switch (c) {
		case B_JOBS:
		case B_JOBS_PER_ACCOUNT:
			errno = 0;
			v = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || v < 1 || v > 64)
				return cli_usage_error("--%s '%s': expected a number from 1 to 64",
				    c == B_JOBS ? "jobs" : "jobs-per-account", optarg);
			if (c == B_JOBS)
				bo->jobs = (unsigned)v;
			else
				bo->jobs_per_account = optarg;
			break;
		case B_OUT:
			if (!*optarg)
				return cli_usage_error("--out needs a directory");
			bo->out = optarg;
			break;
		case B_SHARD: {
			char *err = NULL;
			if (batch_shard_parse(optarg, &bo->shard_k, &bo->shard_n, &err) < 0) {
				int rc = cli_usage_error("%s", err);
				free(err);
				return rc;
			}
			break;
		}
		case B_JSON: bo->json = true; break;
		case B_REPORT: bo->report = optarg; break;
		case 'q': bo->quiet = true; break;
		case 'v': push_opt(bo, xstrdup("-v")); break;
		case B_HELP:
			fputs(usage_batch, stdout);
			return EXIT_OK;
		case B_PASS_ARG:
			if (!strcmp(batch_long_opts[idx].name, "preset"))
				bo->preset = optarg;
			push_opt(bo, xasprintf("--%s=%s", batch_long_opts[idx].name, optarg));
			break;
		case B_PASS_FLAG:
			push_opt(bo, xasprintf("--%s", batch_long_opts[idx].name));
			break;
		case ':':
			return cli_usage_error("option '%s' needs a value (see postino batch --help)",
			    argv[optind - 1]);
		default:
			return cli_usage_error("unknown option '%s' for batch (see postino batch "
			    "--help)", argv[optind - 1]);
		}
	}
	if (argc - optind != 1)
		return cli_usage_error("batch needs one CSV file of accounts (postino batch "
		    "--help)");
	bo->csv = argv[optind];
	return -1;
}

/*
 * Everything that can be checked before an account runs: the passed-on
 * options (as copy would parse them), the presets and job files, and that
 * each password file can be read.
 */
static int check_rows(const struct batch_opts *bo, const struct batch_csv *c)
{
	char **argv = xcalloc(bo->npass + 2, sizeof *argv);
	argv[0] = (char *)"copy";
	for (size_t i = 0; i < bo->npass; i++)
		argv[i + 1] = bo->pass[i];
	int rc = cli_check_options((int)bo->npass + 1, argv);
	free(argv);
	if (rc >= 0)
		return rc;
	if (bo->preset) {
		struct job j;
		char *err = NULL;
		job_init(&j);
		int r = job_load(&j, NULL, bo->preset, &err);
		job_release(&j);
		if (r < 0) {
			rc = cli_usage_error("--preset: %s", err);
			free(err);
			return rc;
		}
	}
	for (size_t i = 0; i < c->n; i++) {
		const struct batch_row *w = &c->rows[i];
		if (w->job || w->preset) {
			struct job j;
			char *err = NULL;
			job_init(&j);
			int r = job_load(&j, w->job, w->preset, &err);
			job_release(&j);
			if (r < 0) {
				rc = cli_usage_error("%s:%d: column '%s': %s", bo->csv, w->line,
				    w->job ? "job" : "preset", err);
				free(err);
				return rc;
			}
		}
		for (int k = 0; k < 2; k++)
			if (w->passfile[k] && access(w->passfile[k], R_OK) != 0)
				return cli_usage_error("%s:%d: column 'passfile%d': cannot read '%s': "
				    "%s", bo->csv, w->line, k + 1, w->passfile[k], strerror(errno));
	}
	return -1;
}

static int mkdir_p(const char *path)
{
	char *p = xstrdup(path);
	int rc = 0;
	for (char *s = p + 1; ; s++) {
		if (*s == '/' || !*s) {
			char keep = *s;
			*s = '\0';
			if (mkdir(p, 0700) < 0 && errno != EEXIST) {
				rc = -1;
				break;
			}
			*s = keep;
			if (!keep)
				break;
		}
	}
	free(p);
	if (rc == 0) {
		struct stat sb;
		if (stat(path, &sb) < 0)
			return -1;
		if (!S_ISDIR(sb.st_mode)) {
			errno = ENOTDIR;
			return -1;
		}
	}
	return rc;
}

/* The child's command line; row-specific options last, so that they win. */
static char **child_argv(const struct batch_opts *bo, const struct account *a)
{
	const struct batch_row *w = a->row;
	char **v = xcalloc(bo->npass + 32, sizeof *v);
	size_t n = 0;
	v[n++] = xstrdup("postino");
	v[n++] = xstrdup("copy");
	if (w->url[0]) {
		v[n++] = xstrdup(w->url[0]);
		v[n++] = xstrdup(w->url[1]);
	}
	if (w->job)
		v[n++] = xasprintf("--job=%s", w->job);
	for (size_t i = 0; i < bo->npass; i++)
		v[n++] = xstrdup(bo->pass[i]);
	if (bo->jobs_per_account)
		v[n++] = xasprintf("--jobs=%s", bo->jobs_per_account);
	if (w->preset)
		v[n++] = xasprintf("--preset=%s", w->preset);
	for (int k = 0; k < 2; k++) {
		if (w->passfile[k])
			v[n++] = xasprintf("--passfile%d=%s", k + 1, w->passfile[k]);
		if (w->passcmd[k])
			v[n++] = xasprintf("--passcmd%d=%s", k + 1, w->passcmd[k]);
		if (w->auth[k])
			v[n++] = xasprintf("--auth%d=%s", k + 1, w->auth[k]);
	}
	v[n++] = xasprintf("--state=%s", a->state);
	v[n++] = xasprintf("--report=%s", a->report);
	v[n++] = xasprintf("--log=%s", a->log);
	v[n] = NULL;
	return v;
}

static void free_vec(char **v)
{
	for (size_t i = 0; v && v[i]; i++)
		free(v[i]);
	free(v);
}

extern char **environ;

/* The environment without the batch's own passwords, plus the row's id. */
static char **child_env(const struct account *a)
{
	size_t n = 0;
	while (environ[n])
		n++;
	char **v = xcalloc(n + 2, sizeof *v);
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		if (!strncmp(environ[i], "POSTINO_PASSWORD", 16) ||
		    !strncmp(environ[i], "POSTINO_BATCH_ID=", 17))
			continue;
		v[k++] = xstrdup(environ[i]);
	}
	v[k++] = xasprintf("POSTINO_BATCH_ID=%s", a->row->id);
	v[k] = NULL;
	return v;
}

static volatile sig_atomic_t stop_signal, stop_count;

static void on_stop(int sig)
{
	stop_signal = sig;
	stop_count++;
}

static void on_child(int sig)
{
	(void)sig; /* only to wake ppoll() */
}

static int start_account(const struct batch_opts *bo, struct account *a, const sigset_t *orig)
{
	unlink(a->report); /* a stale report must not count for this run */
	int fd = open(a->out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		a->result = RES_FAILED;
		a->reason = xasprintf("cannot write '%s': %s", a->out, strerror(errno));
		return -1;
	}
	char **argv = child_argv(bo, a);
	char **envp = child_env(a);
	pid_t parent = getpid();
	fflush(stdout);
	fflush(stderr);
	a->t0 = now_ms();
	pid_t pid = fork();
	if (pid == 0) {
		/* its own process group: a terminal's ^C reaches it through us */
		setpgid(0, 0);
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(EXIT_INTERRUPTED);
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		signal(SIGCHLD, SIG_DFL);
		sigprocmask(SIG_SETMASK, orig, NULL);
		int nul = open("/dev/null", O_RDONLY);
		if (nul >= 0 && nul != 0) {
			dup2(nul, 0);
			close(nul);
		}
		dup2(fd, 1);
		dup2(fd, 2);
		execve("/proc/self/exe", argv, envp);
		dprintf(2, "postino: error: cannot run /proc/self/exe: %s\n", strerror(errno));
		_exit(EXIT_SOFTWARE);
	}
	int saved = errno;
	close(fd);
	free_vec(argv);
	free_vec(envp);
	if (pid < 0) {
		a->result = RES_FAILED;
		a->reason = xasprintf("cannot start a process: %s", strerror(saved));
		return -1;
	}
	a->pid = pid;
	a->result = RES_RUNNING;
	return 0;
}

/* Reads at most the last max bytes of path; NULL if unreadable. */
static char *read_tail(const char *path, size_t max)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0) {
		long sz = ftell(f);
		if (sz > (long)max)
			fseek(f, sz - (long)max, SEEK_SET);
		else
			fseek(f, 0, SEEK_SET);
	}
	struct buf b = BUF_INIT;
	char chunk[8192];
	size_t n;
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
		buf_add(&b, chunk, n);
	fclose(f);
	if (!b.s)
		buf_adds(&b, "");
	return buf_detach(&b);
}

/* The last "postino: error: ..." line the child printed, without the prefix. */
static char *last_error(const char *out)
{
	static const char prefix[] = "postino: error: ";
	char *text = read_tail(out, 65536);
	if (!text)
		return NULL;
	char *found = NULL;
	for (char *line = text; line && *line;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		if (!strncmp(line, prefix, sizeof prefix - 1)) {
			free(found);
			found = xstrdup(line + sizeof prefix - 1);
		}
		line = nl ? nl + 1 : NULL;
	}
	free(text);
	if (found && strlen(found) > 300)
		strcpy(found + 297, "...");
	return found;
}

/* A number in the "totals" object of a copy report. */
static bool total_of(const char *doc, const char *key, unsigned long long *v)
{
	const char *t = strstr(doc, "\"totals\":{");
	if (!t)
		return false;
	const char *end = strchr(t, '}');
	char *pat = xasprintf("\"%s\":", key);
	const char *k = strstr(t, pat);
	size_t plen = strlen(pat);
	free(pat);
	if (!k || !end || k > end)
		return false;
	char *e;
	errno = 0;
	unsigned long long x = strtoull(k + plen, &e, 10);
	if (errno || e == k + plen)
		return false;
	*v = x;
	return true;
}

static void read_report(struct account *a)
{
	char *doc = read_tail(a->report, 64 * 1024 * 1024);
	if (!doc)
		return;
	a->have_report = total_of(doc, "copied", &a->copied);
	total_of(doc, "bytes", &a->bytes);
	total_of(doc, "already_there", &a->already);
	total_of(doc, "refused", &a->refused);
	total_of(doc, "failed_folders", &a->failed_folders);
	free(doc);
}

static void finish_account(struct account *a, int status)
{
	a->t1 = now_ms();
	a->pid = 0;
	read_report(a);
	char *err = last_error(a->out);
	if (WIFSIGNALED(status)) {
		a->exit_code = -1;
		a->result = RES_FAILED;
		a->reason = xasprintf("killed by signal %d (%s)", WTERMSIG(status),
		    strsignal(WTERMSIG(status)));
		free(err);
		return;
	}
	a->exit_code = WEXITSTATUS(status);
	switch (a->exit_code) {
	case EXIT_OK:
		a->result = RES_OK;
		free(err);
		return;
	case EXIT_PARTIAL:
		a->result = RES_PARTIAL;
		if (a->refused || a->failed_folders) {
			struct buf b = BUF_INIT;
			if (a->refused)
				buf_addf(&b, "%llu message%s not copied", a->refused,
				    a->refused == 1 ? "" : "s");
			if (a->failed_folders)
				buf_addf(&b, "%s%llu folder%s failed", a->refused ? ", " : "",
				    a->failed_folders, a->failed_folders == 1 ? "" : "s");
			buf_addf(&b, " (see %s)", a->report);
			a->reason = buf_detach(&b);
			free(err);
		} else {
			a->reason = err ? err : xasprintf("see %s", a->out);
		}
		return;
	case EXIT_INTERRUPTED:
		a->result = RES_INTERRUPTED;
		a->reason = xstrdup("interrupted: rerun to resume");
		free(err);
		return;
	default:
		a->result = RES_FAILED;
		a->reason = err ? err : xasprintf("exit %d (see %s)", a->exit_code, a->out);
		return;
	}
}

static void fmt_duration(char out[32], int64_t ms)
{
	double s = (double)ms / 1000.0;
	if (s < 60)
		snprintf(out, 32, "%.1fs", s);
	else if (s < 3600)
		snprintf(out, 32, "%dm%02ds", (int)(s / 60), (int)s % 60);
	else
		snprintf(out, 32, "%dh%02dm", (int)(s / 3600), ((int)s % 3600) / 60);
}

static void print_table(FILE *f, const struct account *v, size_t n)
{
	int wid = 2;
	for (size_t i = 0; i < n; i++)
		if (utf8_width(v[i].row->id) > wid)
			wid = utf8_width(v[i].row->id);
	fprintf(f, "%-*s  %-11s %8s %8s %10s %8s %4s  %s\n", wid, "ID", "RESULT", "COPIED",
	    "ALREADY", "NOT COPIED", "TIME", "EXIT", "REASON");
	for (size_t i = 0; i < n; i++) {
		const struct account *a = &v[i];
		char c[24] = "-", al[24] = "-", fl[24] = "-", t[32] = "-", ex[16] = "-";
		if (a->have_report) {
			snprintf(c, sizeof c, "%llu", a->copied);
			snprintf(al, sizeof al, "%llu", a->already);
			snprintf(fl, sizeof fl, "%llu", a->refused);
		}
		if (a->t1)
			fmt_duration(t, a->t1 - a->t0);
		if (a->exit_code >= 0)
			snprintf(ex, sizeof ex, "%d", a->exit_code);
		fprintf(f, "%s", a->row->id);
		for (int w = utf8_width(a->row->id); w < wid; w++)
			fputc(' ', f);
		fprintf(f, "  %-11s %8s %8s %10s %8s %4s  %s\n", result_name[a->result], c, al, fl,
		    t, ex, a->reason ? a->reason : "");
	}
	fflush(f);
}

static char *summary_json(const struct batch_opts *bo, const struct account *v, size_t n,
    int exit_code, bool interrupted, int64_t ms)
{
	size_t count[6] = {0};
	unsigned long long copied = 0, bytes = 0, already = 0, refused = 0;
	for (size_t i = 0; i < n; i++) {
		count[v[i].result]++;
		copied += v[i].copied;
		bytes += v[i].bytes;
		already += v[i].already;
		refused += v[i].refused;
	}
	struct buf b = BUF_INIT;
	buf_addf(&b, "{\"postino\":\"%s\",\"command\":\"batch\",\"accounts_file\":",
	    POSTINO_VERSION);
	json_add_str(&b, bo->csv);
	buf_adds(&b, ",\"out\":");
	json_add_str(&b, bo->out);
	if (bo->shard_n)
		buf_addf(&b, ",\"shard\":{\"k\":%u,\"n\":%u}", bo->shard_k, bo->shard_n);
	else
		buf_adds(&b, ",\"shard\":null");
	buf_addf(&b, ",\"exit_code\":%d,\"interrupted\":%s,\"duration_s\":%.3f", exit_code,
	    interrupted ? "true" : "false", (double)ms / 1000.0);
	buf_addf(&b, ",\"totals\":{\"accounts\":%zu,\"ok\":%zu,\"partial\":%zu,\"failed\":%zu,"
	    "\"interrupted\":%zu,\"not_run\":%zu,\"copied\":%llu,\"bytes\":%llu,"
	    "\"already_there\":%llu,\"not_copied\":%llu}", n, count[RES_OK], count[RES_PARTIAL],
	    count[RES_FAILED], count[RES_INTERRUPTED], count[RES_NOT_RUN], copied, bytes,
	    already, refused);
	buf_adds(&b, ",\"accounts\":[");
	for (size_t i = 0; i < n; i++) {
		const struct account *a = &v[i];
		buf_adds(&b, i ? ",{\"id\":" : "{\"id\":");
		json_add_str(&b, a->row->id);
		buf_addf(&b, ",\"line\":%d,\"row\":%zu,\"source\":", a->row->line, a->row->index);
		json_add_str(&b, a->row->display[0]);
		buf_adds(&b, ",\"destination\":");
		json_add_str(&b, a->row->display[1]);
		buf_adds(&b, ",\"result\":");
		json_add_str(&b, result_name[a->result]);
		if (a->exit_code >= 0)
			buf_addf(&b, ",\"exit_code\":%d", a->exit_code);
		else
			buf_adds(&b, ",\"exit_code\":null");
		if (a->have_report)
			buf_addf(&b, ",\"copied\":%llu,\"bytes\":%llu,\"already_there\":%llu,"
			    "\"not_copied\":%llu,\"failed_folders\":%llu", a->copied, a->bytes,
			    a->already, a->refused, a->failed_folders);
		else
			buf_adds(&b, ",\"copied\":null,\"bytes\":null,\"already_there\":null,"
			    "\"not_copied\":null,\"failed_folders\":null");
		buf_addf(&b, ",\"duration_s\":%.3f,\"reason\":",
		    a->t1 ? (double)(a->t1 - a->t0) / 1000.0 : 0.0);
		json_add_str(&b, a->reason);
		buf_adds(&b, ",\"state\":");
		json_add_str(&b, a->state);
		buf_adds(&b, ",\"report\":");
		json_add_str(&b, a->have_report ? a->report : NULL);
		buf_adds(&b, ",\"log\":");
		json_add_str(&b, a->log);
		buf_adds(&b, ",\"output\":");
		json_add_str(&b, a->out);
		buf_adds(&b, "}");
	}
	buf_adds(&b, "]}\n");
	return buf_detach(&b);
}

static void account_release(struct account *a)
{
	free(a->state);
	free(a->report);
	free(a->log);
	free(a->out);
	free(a->reason);
}

/* Runs the accounts; returns true if interrupted. */
static bool run_all(const struct batch_opts *bo, struct account *v, size_t n)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_stop; /* no SA_RESTART: ppoll() must wake */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sa.sa_handler = on_child;
	sa.sa_flags = SA_NOCLDSTOP;
	sigaction(SIGCHLD, &sa, NULL);
	sigset_t block, orig;
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGCHLD);
	/* blocked except inside ppoll(), so that no signal falls between the
	 * checks below and the wait */
	sigprocmask(SIG_BLOCK, &block, &orig);

	size_t next = 0, running = 0, done = 0;
	sig_atomic_t forwarded = 0;
	bool interrupted = false;
	for (;;) {
		int status;
		pid_t pid;
		while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
			for (size_t i = 0; i < n; i++) {
				if (v[i].pid != pid)
					continue;
				finish_account(&v[i], status);
				running--;
				done++;
				char t[32];
				fmt_duration(t, v[i].t1 - v[i].t0);
				if (v[i].result == RES_OK || v[i].result == RES_PARTIAL)
					log_notice("[%zu/%zu] %s: %s, %llu copied, %llu already there (%s)",
					    done, n, v[i].row->id, result_name[v[i].result], v[i].copied,
					    v[i].already, t);
				else
					log_notice("[%zu/%zu] %s: %s (%s): %s", done, n, v[i].row->id,
					    v[i].result == RES_FAILED ? "FAILED" : result_name[v[i].result],
					    t, v[i].reason ? v[i].reason : "");
			}
		}
		if (stop_count > forwarded) {
			forwarded = stop_count;
			if (!interrupted)
				log_notice("signal %d: stopping %zu running account%s at their next safe "
				    "point; no new account starts (again to stop them now)",
				    (int)stop_signal, running, running == 1 ? "" : "s");
			interrupted = true;
			for (size_t i = 0; i < n; i++)
				if (v[i].pid > 0)
					kill(v[i].pid, stop_signal);
		}
		while (!interrupted && running < bo->jobs && next < n) {
			struct account *a = &v[next++];
			if (start_account(bo, a, &orig) == 0) {
				running++;
				log_info("%s: started (%s)", a->row->id, a->out);
			} else {
				done++;
				log_notice("[%zu/%zu] %s: FAILED: %s", done, n, a->row->id, a->reason);
			}
		}
		if (!running && (interrupted || next == n))
			break;
		ppoll(NULL, 0, NULL, &orig);
	}
	sigprocmask(SIG_SETMASK, &orig, NULL);
	return interrupted;
}

int batch_main(int argc, char **argv)
{
	struct batch_opts bo;
	memset(&bo, 0, sizeof bo);
	bo.jobs = 4;
	bo.out = "postino-batch";
	struct batch_csv csv = {0};
	struct account *v = NULL;
	size_t n = 0;
	char *err = NULL;
	int lock_fd = -1;

	int rc = parse_batch_options(&bo, argc, argv);
	if (rc >= 0)
		goto out;
	if (bo.quiet)
		log_set_level(LOG_ERROR);
	if (batch_csv_load(&csv, bo.csv, &err) < 0) {
		rc = cli_usage_error("%s", err);
		goto out;
	}
	rc = check_rows(&bo, &csv);
	if (rc >= 0)
		goto out;
	if (mkdir_p(bo.out) < 0) {
		rc = cli_usage_error("--out '%s': %s", bo.out, strerror(errno));
		goto out;
	}
	/* one batch per --out: a second one would truncate the first one's
	 * output files before its accounts were refused by their locks */
	char *lock_path = xasprintf("%s/batch.lock", bo.out);
	lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) < 0) {
		log_error("--out '%s': %s", bo.out, lock_fd < 0 ? strerror(errno) :
		    "in use by another postino batch (one batch per --out directory)");
		free(lock_path);
		rc = EXIT_STATE;
		goto out;
	}
	free(lock_path);

	v = xcalloc(csv.n ? csv.n : 1, sizeof *v);
	for (size_t i = 0; i < csv.n; i++) {
		const struct batch_row *w = &csv.rows[i];
		if (bo.shard_n && !batch_shard_has(bo.shard_k, bo.shard_n, w->index))
			continue;
		struct account *a = &v[n++];
		a->row = w;
		a->exit_code = -1;
		a->state = xasprintf("%s/%s.db", bo.out, w->id);
		a->report = xasprintf("%s/%s.json", bo.out, w->id);
		a->log = xasprintf("%s/%s.log", bo.out, w->id);
		a->out = xasprintf("%s/%s.out", bo.out, w->id);
	}
	if (bo.shard_n)
		log_notice("shard %u/%u: %zu of %zu account%s", bo.shard_k, bo.shard_n, n, csv.n,
		    csv.n == 1 ? "" : "s");
	log_notice("%zu account%s, %u at a time; states, reports and logs in %s/", n,
	    n == 1 ? "" : "s", bo.jobs, bo.out);

	int64_t t0 = now_ms();
	bool interrupted = run_all(&bo, v, n);
	int64_t ms = now_ms() - t0;

	size_t bad = 0;
	struct buf names = BUF_INIT;
	for (size_t i = 0; i < n; i++)
		if (v[i].result != RES_OK && v[i].result != RES_NOT_RUN) {
			buf_addf(&names, "%s%s", bad ? ", " : "", v[i].row->id);
			bad++;
		}
	rc = interrupted ? EXIT_INTERRUPTED : bad ? EXIT_PARTIAL : EXIT_OK;

	FILE *tf = bo.json ? stderr : stdout;
	print_table(tf, v, n);
	size_t ok = 0, not_run = 0;
	unsigned long long copied = 0;
	for (size_t i = 0; i < n; i++) {
		ok += v[i].result == RES_OK;
		not_run += v[i].result == RES_NOT_RUN;
		copied += v[i].copied;
	}
	fprintf(tf, "batch: %zu account%s: %zu ok, %zu not ok%s%s%s", n, n == 1 ? "" : "s", ok,
	    bad, bad ? " (" : "", bad ? names.s : "", bad ? ")" : "");
	if (not_run)
		fprintf(tf, ", %zu not run", not_run);
	fprintf(tf, "; %llu messages copied%s\n", copied,
	    interrupted ? "; interrupted: rerun the same command to resume" : "");
	fflush(tf);
	buf_release(&names);

	if (bo.json || bo.report) {
		char *json = summary_json(&bo, v, n, rc, interrupted, ms);
		if (bo.json) {
			fputs(json, stdout);
			fflush(stdout);
		}
		if (bo.report && report_write(bo.report, json) < 0)
			log_error("--report '%s': %s", bo.report, strerror(errno));
		free(json);
	}
out:
	if (lock_fd >= 0)
		close(lock_fd);
	for (size_t i = 0; i < n; i++)
		account_release(&v[i]);
	free(v);
	batch_csv_release(&csv);
	for (size_t i = 0; i < bo.npass; i++)
		free(bo.pass[i]);
	free(bo.pass);
	free(err);
	return rc;
}
