/*
 * jobfile.c — job files and presets turned into command-line options.
 *
 * The format (docs/jobfiles.md): lines `key = value`, `[section]` headers,
 * comments from '#' or ';' at the start of a line; a value may be quoted
 * with double quotes to keep leading or trailing spaces. Sections:
 * [source] and [destination] (or [a] and [b]) hold an account; [options]
 * and [folders] (and the top, before any section) hold everything else;
 * a preset also has [server]. Each key is checked here against a table
 * that knows its option and its type, so that every error names the file
 * and the line.
 */
#include "jobfile.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "url.h"
#include "util.h"

#ifndef POSTINO_PLANS_DIR
#define POSTINO_PLANS_DIR "/usr/local/share/postino/plans"
#endif

#define JOB_MAX_SIZE (1024 * 1024)

enum ktype { K_STR, K_PATH, K_LIST, K_MAP, K_INT, K_BOOL, K_IGNORE };

struct key {
	const char *name;
	enum ktype type;
	long lo, hi;
};

/* Keys of the top, [options] and [folders]; the option has the key's name. */
static const struct key global_keys[] = {
	{"state", K_PATH, 0, 0},
	{"ca-file", K_PATH, 0, 0},
	{"log", K_PATH, 0, 0},
	{"passfile1", K_PATH, 0, 0},
	{"passfile2", K_PATH, 0, 0},
	{"passcmd1", K_STR, 0, 0},
	{"passcmd2", K_STR, 0, 0},
	{"auth1", K_STR, 0, 0},
	{"auth2", K_STR, 0, 0},
	{"folder", K_LIST, 0, 0},
	{"exclude", K_LIST, 0, 0},
	{"map", K_MAP, 0, 0},
	{"into", K_STR, 0, 0},
	{"jobs", K_INT, 1, 64},
	{"batch", K_INT, 1, 5000},
	{"timeout", K_INT, 1, 86400},
	{"keep-days", K_INT, 0, 36500},
	{"interval", K_INT, 1, 86400},
	{"max-delete", K_INT, 0, 100000000},
	{"max-delete-percent", K_INT, 0, 100},
	{"skip-duplicates", K_BOOL, 0, 0},
	{"delete-after", K_BOOL, 0, 0},
	{"mark-seen", K_BOOL, 0, 0},
	{"no-header-date", K_BOOL, 0, 0},
	{"no-flag-sync", K_BOOL, 0, 0},
	{"force", K_BOOL, 0, 0},
	{"watch", K_BOOL, 0, 0},
	{"deep", K_BOOL, 0, 0},
	{"quiet", K_BOOL, 0, 0},
	{"description", K_IGNORE, 0, 0},
	{"preset", K_IGNORE, 0, 0},
};

/* Keys of an account section ([source], [destination]). */
static const char *const account_keys[] = {
	"url", "user", "host", "port", "tls", "protocol", "auth", "passcmd", "passfile", "preset",
};

/* Keys of a preset's [server]. */
static const char *const server_keys[] = {"host", "port", "tls", "protocol", "auth"};

enum section { SEC_GLOBAL, SEC_SRC, SEC_DST, SEC_SERVER };

struct account {
	int line;        /* of the section header, 0 if absent */
	char *url, *user, *host, *tls, *proto, *auth, *preset;
	int url_line, user_line, host_line, preset_line;
	unsigned port;
};

struct parser {
	struct job *j;
	const char *name;   /* for messages */
	char *dir;          /* for relative paths */
	bool is_preset;
	int line;
	enum section sec;
	struct account acct[2];  /* job files; acct[0] is [server] in a preset */
	char *preset;            /* top-level preset = */
	int preset_line;
	/* scalar keys already set: "key" -> line */
	char **seen;
	int *seen_line;
	size_t nseen;
	char **own;              /* this file's options */
	size_t nown;
	char *err;
};

static void push(char ***v, size_t *n, char *s)
{
	*v = xrealloc(*v, (*n + 1) * sizeof **v);
	(*v)[(*n)++] = s;
}

void job_init(struct job *j)
{
	memset(j, 0, sizeof *j);
}

void job_release(struct job *j)
{
	for (size_t i = 0; i < j->nopts; i++)
		free(j->opts[i]);
	free(j->opts);
	for (size_t i = 0; i < j->nown; i++)
		free(j->own[i]);
	free(j->own);
	free(j->url[0]);
	free(j->url[1]);
	free(j->preset_name);
	free(j->argv);
	memset(j, 0, sizeof *j);
}

static int fail(struct parser *p, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct parser *p, int line, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *m = xvasprintf(fmt, ap);
	va_end(ap);
	free(p->err);
	if (line > 0)
		p->err = xasprintf("%s:%d: %s", p->name, line, m);
	else
		p->err = xasprintf("%s: %s", p->name, m);
	free(m);
	return -1;
}

/* Edit distance, for "did you mean". */
static size_t distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	if (la > 40 || lb > 40)
		return 99;
	size_t d[41][41];
	for (size_t i = 0; i <= la; i++)
		d[i][0] = i;
	for (size_t k = 0; k <= lb; k++)
		d[0][k] = k;
	for (size_t i = 1; i <= la; i++)
		for (size_t k = 1; k <= lb; k++) {
			size_t c = d[i - 1][k - 1] + (a[i - 1] != b[k - 1]);
			if (d[i - 1][k] + 1 < c)
				c = d[i - 1][k] + 1;
			if (d[i][k - 1] + 1 < c)
				c = d[i][k - 1] + 1;
			d[i][k] = c;
		}
	return d[la][lb];
}

static const char *closest(const char *key, const char *const *names, size_t n)
{
	const char *best = NULL;
	size_t bd = 3;
	for (size_t i = 0; i < n; i++) {
		size_t d = distance(key, names[i]);
		if (d < bd) {
			bd = d;
			best = names[i];
		}
	}
	return best;
}

static bool is_password_key(const char *k)
{
	static const char *const words[] = {"pass", "pass1", "pass2", "pw", "pwd", "secret",
	    "secret1", "secret2"};
	if (strstr(k, "passw") || strstr(k, "password"))
		return true;
	for (size_t i = 0; i < ARRAY_SIZE(words); i++)
		if (!strcmp(k, words[i]))
			return true;
	return false;
}

static char *trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
		s[--n] = 0;
	return s;
}

static int parse_int(const char *s, long lo, long hi, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

/* 1 yes, 0 no, -1 neither */
static int parse_bool(const char *s)
{
	static const char *const yes[] = {"yes", "true", "on", "1"};
	static const char *const no[] = {"no", "false", "off", "0"};
	for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
		if (!ascii_strcasecmp(s, yes[i]))
			return 1;
		if (!ascii_strcasecmp(s, no[i]))
			return 0;
	}
	return -1;
}

/* ~/x -> $HOME/x; a relative path -> relative to the file's directory. */
static char *resolve_path(const struct parser *p, const char *v)
{
	if (v[0] == '~' && (v[1] == '/' || !v[1])) {
		const char *home = getenv("HOME");
		if (home && *home)
			return xasprintf("%s%s", home, v + 1);
		return xstrdup(v);
	}
	if (v[0] == '/' || !p->dir)
		return xstrdup(v);
	return xasprintf("%s/%s", p->dir, v);
}

/* A scalar key set twice in one file is an error: which one was meant? */
static int note_scalar(struct parser *p, const char *key)
{
	for (size_t i = 0; i < p->nseen; i++)
		if (!strcmp(p->seen[i], key))
			return fail(p, p->line, "'%s' is set again (first on line %d)", key,
			    p->seen_line[i]);
	p->seen = xrealloc(p->seen, (p->nseen + 1) * sizeof *p->seen);
	p->seen_line = xrealloc(p->seen_line, (p->nseen + 1) * sizeof *p->seen_line);
	p->seen[p->nseen] = xstrdup(key);
	p->seen_line[p->nseen++] = p->line;
	return 0;
}

static int global_key(struct parser *p, const struct key *k, const char *v)
{
	long n;
	int b;
	if (k->type != K_LIST && k->type != K_MAP && k->type != K_IGNORE &&
	    note_scalar(p, k->name) < 0)
		return -1;
	if (!*v && k->type != K_IGNORE)
		return fail(p, p->line, "'%s' needs a value", k->name);
	switch (k->type) {
	case K_IGNORE:
		if (!strcmp(k->name, "preset")) {
			if (p->is_preset)
				return fail(p, p->line, "a preset cannot name another preset");
			if (p->preset)
				return fail(p, p->line, "'preset' is set again (first on line %d)",
				    p->preset_line);
			p->preset = xstrdup(v);
			p->preset_line = p->line;
		}
		return 0;
	case K_STR:
		if (!strncmp(k->name, "auth", 4) && !url_auth_mech(v))
			return fail(p, p->line, "%s = '%s': expected plain, login, cram-md5 or "
			    "xoauth2", k->name, v);
		/* fall through */
	case K_LIST:
		push(&p->own, &p->nown, xasprintf("--%s=%s", k->name, v));
		return 0;
	case K_PATH: {
		char *path = resolve_path(p, v);
		push(&p->own, &p->nown, xasprintf("--%s=%s", k->name, path));
		free(path);
		return 0;
	}
	case K_MAP: {
		const char *eq = strchr(v, '=');
		if (!eq)
			return fail(p, p->line, "map = '%s': expected SOURCE = DESTINATION", v);
		char *ms = xstrndup(v, (size_t)(eq - v));
		char *md = xstrdup(eq + 1);
		char *ta = trim(ms), *tb = trim(md);
		int rc = 0;
		if (!*ta || !*tb)
			rc = fail(p, p->line, "map = '%s': expected SOURCE = DESTINATION", v);
		else
			push(&p->own, &p->nown, xasprintf("--map=%s=%s", ta, tb));
		free(ms);
		free(md);
		return rc;
	}
	case K_INT:
		if (parse_int(v, k->lo, k->hi, &n) < 0)
			return fail(p, p->line, "%s = '%s': expected a number from %ld to %ld",
			    k->name, v, k->lo, k->hi);
		push(&p->own, &p->nown, xasprintf("--%s=%ld", k->name, n));
		return 0;
	case K_BOOL:
		b = parse_bool(v);
		if (b < 0)
			return fail(p, p->line, "%s = '%s': expected yes or no", k->name, v);
		if (b)
			push(&p->own, &p->nown, xasprintf("--%s", k->name));
		return 0;
	}
	return 0;
}

static int set_once(struct parser *p, char **field, const char *key, const char *v)
{
	if (*field)
		return fail(p, p->line, "'%s' is set twice in this section", key);
	if (!*v)
		return fail(p, p->line, "'%s' needs a value", key);
	*field = xstrdup(v);
	return 0;
}

static int server_key(struct parser *p, struct account *a, const char *key, const char *v)
{
	if (!strcmp(key, "host")) {
		a->host_line = p->line;
		return set_once(p, &a->host, key, v);
	}
	if (!strcmp(key, "port")) {
		long n;
		if (a->port)
			return fail(p, p->line, "'port' is set twice in this section");
		if (parse_int(v, 1, 65535, &n) < 0)
			return fail(p, p->line, "port = '%s': expected a number from 1 to 65535", v);
		a->port = (unsigned)n;
		return 0;
	}
	if (!strcmp(key, "tls")) {
		static const char *const ok[] = {"implicit", "starttls", "none"};
		for (size_t i = 0; i < ARRAY_SIZE(ok); i++)
			if (!ascii_strcasecmp(v, ok[i]))
				return set_once(p, &a->tls, key, ok[i]);
		return fail(p, p->line, "tls = '%s': expected implicit, starttls or none", v);
	}
	if (!strcmp(key, "auth")) {
		for (const char *c = v; *c; c++)
			if (!isalnum((unsigned char)*c) && *c != '-' && *c != '_')
				return fail(p, p->line, "auth = '%s': expected a SASL mechanism "
				    "(plain, login, cram-md5, xoauth2)", v);
		return set_once(p, &a->auth, key, v);
	}
	if (!strcmp(key, "protocol")) {
		if (ascii_strcasecmp(v, "imap") && ascii_strcasecmp(v, "pop3"))
			return fail(p, p->line, "protocol = '%s': expected imap or pop3", v);
		return set_once(p, &a->proto, key, ascii_strcasecmp(v, "imap") ? "pop3" : "imap");
	}
	return 1; /* not a server key */
}

static int account_key(struct parser *p, int side, const char *key, const char *v)
{
	struct account *a = &p->acct[side];
	int r = server_key(p, a, key, v);
	if (r <= 0)
		return r;
	if (!strcmp(key, "url")) {
		a->url_line = p->line;
		return set_once(p, &a->url, key, v);
	}
	if (!strcmp(key, "user")) {
		a->user_line = p->line;
		return set_once(p, &a->user, key, v);
	}
	if (!strcmp(key, "preset")) {
		a->preset_line = p->line;
		return set_once(p, &a->preset, key, v);
	}
	if (!strcmp(key, "passcmd") || !strcmp(key, "passfile")) {
		char name[16];
		snprintf(name, sizeof name, "%s%d", key, side + 1);
		if (note_scalar(p, name) < 0)
			return -1;
		if (!*v)
			return fail(p, p->line, "'%s' needs a value", key);
		char *val = key[4] == 'f' ? resolve_path(p, v) : xstrdup(v);
		push(&p->own, &p->nown, xasprintf("--%s=%s", name, val));
		free(val);
		return 0;
	}
	return 1;
}

static const struct key *find_global(const char *key)
{
	for (size_t i = 0; i < ARRAY_SIZE(global_keys); i++)
		if (!strcmp(global_keys[i].name, key))
			return &global_keys[i];
	return NULL;
}

static int unknown_key(struct parser *p, const char *key)
{
	const char *names[ARRAY_SIZE(global_keys) + ARRAY_SIZE(account_keys)];
	size_t n = 0;
	const char *hint = NULL;
	if (p->sec == SEC_GLOBAL) {
		for (size_t i = 0; i < ARRAY_SIZE(global_keys); i++)
			names[n++] = global_keys[i].name;
		for (size_t i = 0; i < ARRAY_SIZE(account_keys); i++)
			if (!strcmp(account_keys[i], key))
				hint = p->is_preset ? "it belongs in [server]"
				    : "it belongs in [source] or [destination]";
	} else if (p->sec == SEC_SERVER) {
		for (size_t i = 0; i < ARRAY_SIZE(server_keys); i++)
			names[n++] = server_keys[i];
	} else {
		for (size_t i = 0; i < ARRAY_SIZE(account_keys); i++)
			names[n++] = account_keys[i];
		if (find_global(key))
			hint = "it belongs in [options]";
	}
	if (hint)
		return fail(p, p->line, "'%s' does not belong in this section: %s", key, hint);
	const char *best = closest(key, names, n);
	if (best)
		return fail(p, p->line, "unknown key '%s' (did you mean '%s'?)", key, best);
	return fail(p, p->line, "unknown key '%s'", key);
}

static int section_of(struct parser *p, const char *name)
{
	static const struct {
		const char *name;
		enum section sec;
	} secs[] = {
		{"source", SEC_SRC}, {"src", SEC_SRC}, {"a", SEC_SRC},
		{"destination", SEC_DST}, {"dest", SEC_DST}, {"dst", SEC_DST}, {"b", SEC_DST},
		{"options", SEC_GLOBAL}, {"folders", SEC_GLOBAL}, {"server", SEC_SERVER},
	};
	for (size_t i = 0; i < ARRAY_SIZE(secs); i++) {
		if (ascii_strcasecmp(secs[i].name, name))
			continue;
		if (p->is_preset && (secs[i].sec == SEC_SRC || secs[i].sec == SEC_DST))
			return fail(p, p->line, "a preset names no account: [%s] belongs in a "
			    "job file (--job)", name);
		if (!p->is_preset && secs[i].sec == SEC_SERVER)
			return fail(p, p->line, "[server] belongs in a preset; in a job file, "
			    "give host and port in [source] or [destination]");
		p->sec = secs[i].sec;
		int side = p->sec == SEC_SRC ? 0 : p->sec == SEC_DST ? 1 : -1;
		if (p->sec == SEC_SERVER)
			side = 0;
		if (side >= 0) {
			if (p->acct[side].line)
				return fail(p, p->line, "[%s] again (first on line %d)", name,
				    p->acct[side].line);
			p->acct[side].line = p->line;
		}
		return 0;
	}
	return fail(p, p->line, "unknown section [%s] (sections: [source], [destination], "
	    "[folders], [options])", name);
}

static int parse_line(struct parser *p, char *line)
{
	char *s = trim(line);
	if (!*s || *s == '#' || *s == ';')
		return 0;
	if (*s == '[') {
		char *end = strchr(s, ']');
		if (!end || trim(end + 1)[0])
			return fail(p, p->line, "expected [section]");
		*end = 0;
		return section_of(p, trim(s + 1));
	}
	char *eq = strchr(s, '=');
	if (!eq)
		return fail(p, p->line, "expected key = value");
	*eq = 0;
	char *key = trim(s);
	char *v = trim(eq + 1);
	size_t vl = strlen(v);
	if (vl >= 2 && v[0] == '"' && v[vl - 1] == '"') {
		v[vl - 1] = 0;
		v++;
	}
	for (char *c = key; *c; c++)
		*c = (char)tolower((unsigned char)*c);
	if (!*key)
		return fail(p, p->line, "expected key = value");
	if (is_password_key(key))
		return fail(p, p->line, "a password in a %s is refused: passwords come from "
		    "passcmd, passfile or POSTINO_PASSWORD1/2 only",
		    p->is_preset ? "preset" : "job file");
	int r = 1;
	if (p->sec == SEC_GLOBAL) {
		const struct key *k = find_global(key);
		if (k)
			r = global_key(p, k, v);
	} else if (p->sec == SEC_SERVER) {
		r = server_key(p, &p->acct[0], key, v);
	} else {
		r = account_key(p, p->sec == SEC_SRC ? 0 : 1, key, v);
	}
	if (r > 0)
		return unknown_key(p, key);
	return r;
}

static void account_free(struct account *a)
{
	free(a->url);
	free(a->user);
	free(a->host);
	free(a->tls);
	free(a->proto);
	free(a->auth);
	free(a->preset);
	memset(a, 0, sizeof *a);
}

static void parser_free(struct parser *p)
{
	free(p->dir);
	for (int i = 0; i < 2; i++)
		account_free(&p->acct[i]);
	free(p->preset);
	for (size_t i = 0; i < p->nseen; i++)
		free(p->seen[i]);
	free(p->seen);
	free(p->seen_line);
	for (size_t i = 0; i < p->nown; i++)
		free(p->own[i]);
	free(p->own);
	free(p->err);
}

static int parse_text(struct parser *p, const char *text, size_t len)
{
	size_t i = 0;
	while (i < len) {
		size_t e = i;
		while (e < len && text[e] != '\n')
			e++;
		p->line++;
		if (memchr(text + i, 0, e - i))
			return fail(p, p->line, "a NUL byte: this is not a text file");
		char *line = xstrndup(text + i, e - i);
		int r = parse_line(p, line);
		free(line);
		if (r < 0)
			return -1;
		i = e + 1;
	}
	return 0;
}

static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	if (!slash)
		return xstrdup(".");
	if (slash == path)
		return xstrdup("/");
	return xstrndup(path, (size_t)(slash - path));
}

static int read_file(const char *path, char **text_r, size_t *len_r, char **err_r)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		*err_r = xasprintf("%s: %s", path, strerror(errno));
		return -1;
	}
	struct buf b = BUF_INIT;
	char chunk[8192];
	size_t n;
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
		buf_add(&b, chunk, n);
		if (b.len > JOB_MAX_SIZE) {
			fclose(f);
			buf_release(&b);
			*err_r = xasprintf("%s: larger than 1 MB: not a job file", path);
			return -1;
		}
	}
	if (ferror(f)) {
		*err_r = xasprintf("%s: %s", path, strerror(errno));
		fclose(f);
		buf_release(&b);
		return -1;
	}
	fclose(f);
	*len_r = b.len;
	*text_r = b.s ? buf_detach(&b) : xstrdup("");
	return 0;
}

/* ------------------------------------------------------------------ */
/* presets */

size_t job_preset_dirs(char *dirs[3])
{
	size_t n = 0;
	const char *env = getenv("POSTINO_PLANS_DIR");
	if (env && *env)
		dirs[n++] = xstrdup(env);
	const char *xdg = getenv("XDG_CONFIG_HOME");
	const char *home = getenv("HOME");
	if (xdg && *xdg == '/')
		dirs[n++] = xasprintf("%s/postino/plans", xdg);
	else if (home && *home)
		dirs[n++] = xasprintf("%s/.config/postino/plans", home);
	dirs[n++] = xstrdup(POSTINO_PLANS_DIR);
	return n;
}

static bool preset_name_ok(const char *s)
{
	if (!*s || *s == '.' || strlen(s) > 64)
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.')
			return false;
	return true;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* "gmail, outlook, ...": the presets found, for an error message. */
static char *known_presets(void)
{
	char *dirs[3];
	size_t nd = job_preset_dirs(dirs);
	char **names = NULL;
	size_t n = 0;
	for (size_t i = 0; i < nd; i++) {
		DIR *d = opendir(dirs[i]);
		free(dirs[i]);
		if (!d)
			continue;
		struct dirent *de;
		while ((de = readdir(d))) {
			size_t l = strlen(de->d_name);
			if (l <= 4 || strcmp(de->d_name + l - 4, ".ini") ||
			    !strncmp(de->d_name, "example", 7))
				continue;
			char *nm = xstrndup(de->d_name, l - 4);
			bool dup = false;
			for (size_t k = 0; k < n && !dup; k++)
				dup = !strcmp(names[k], nm);
			if (dup)
				free(nm);
			else
				push(&names, &n, nm);
		}
		closedir(d);
	}
	xqsort(names, n, sizeof *names, cmp_str);
	struct buf b = BUF_INIT;
	for (size_t i = 0; i < n; i++) {
		buf_addf(&b, "%s%s", i ? ", " : "", names[i]);
		free(names[i]);
	}
	free(names);
	return b.s ? buf_detach(&b) : xstrdup("none installed");
}

static char *find_preset(const char *name)
{
	size_t l = strlen(name);
	if (strchr(name, '/') || (l > 4 && !strcmp(name + l - 4, ".ini")))
		return xstrdup(name);
	if (!preset_name_ok(name))
		return NULL;
	char *dirs[3];
	size_t nd = job_preset_dirs(dirs);
	char *found = NULL;
	for (size_t i = 0; i < nd; i++) {
		if (!found) {
			char *path = xasprintf("%s/%s.ini", dirs[i], name);
			struct stat sb;
			if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode))
				found = path;
			else
				free(path);
		}
		free(dirs[i]);
	}
	return found;
}

void job_server_release(struct job_server *srv)
{
	free(srv->host);
	free(srv->tls);
	free(srv->protocol);
	free(srv->auth);
	memset(srv, 0, sizeof *srv);
}

int job_load_preset(struct job *j, const char *name, struct job_server *srv, char **err_r)
{
	if (srv)
		memset(srv, 0, sizeof *srv);
	char *path = find_preset(name);
	if (!path) {
		char *known = known_presets();
		*err_r = xasprintf("unknown preset '%s' (known: %s)", name, known);
		free(known);
		return -1;
	}
	char *text = NULL;
	size_t len = 0;
	if (read_file(path, &text, &len, err_r) < 0) {
		free(path);
		return -1;
	}
	struct parser p;
	memset(&p, 0, sizeof p);
	p.j = j;
	p.name = path;
	p.dir = dir_of(path);
	p.is_preset = true;
	int rc = parse_text(&p, text, len);
	free(text);
	if (rc < 0) {
		*err_r = p.err;
		p.err = NULL;
	} else {
		for (size_t i = 0; i < p.nown; i++)
			push(&j->opts, &j->nopts, p.own[i]);
		p.nown = 0;
		if (srv) {
			struct account *a = &p.acct[0];
			*srv = (struct job_server){a->host, a->port, a->tls, a->proto, a->auth};
			a->host = a->tls = a->proto = a->auth = NULL;
		}
	}
	parser_free(&p);
	free(path);
	return rc;
}

/* ------------------------------------------------------------------ */
/* accounts */

static void add_encoded(struct buf *b, const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~')
			buf_addc(b, (char)c);
		else
			buf_addf(b, "%%%02X", c);
	}
}

/* The URL of one account section; NULL in *url_r when it names none. */
static int account_url(struct parser *p, int side, char **url_r)
{
	static const char *const sec[2] = {"source", "destination"};
	struct account *a = &p->acct[side];
	*url_r = NULL;
	struct job_server ps = {0};
	if (a->preset) {
		char *err = NULL;
		if (job_load_preset(p->j, a->preset, &ps, &err) < 0) {
			fail(p, a->preset_line, "%s", err);
			free(err);
			return -1;
		}
	}
	int rc = 0;
	if (a->url) {
		if (a->user || a->host || a->port || a->tls || a->proto || a->auth) {
			rc = fail(p, a->url_line, "[%s] has a url and also user, host, port, tls, "
			    "protocol or auth: give one or the other", sec[side]);
			goto out;
		}
		*url_r = xstrdup(a->url);
	} else if (a->user) {
		const char *host = a->host ? a->host : ps.host;
		if (!host) {
			rc = fail(p, a->user_line, "[%s] has a user but no host: give host, url, "
			    "or a preset that names the server", sec[side]);
			goto out;
		}
		const char *proto = a->proto ? a->proto : ps.protocol ? ps.protocol : "imap";
		const char *tls = a->tls ? a->tls : ps.tls ? ps.tls : "implicit";
		const char *auth = a->auth ? a->auth : ps.auth;
		unsigned port = a->port ? a->port : ps.port;
		struct buf b = BUF_INIT;
		buf_addf(&b, "%s%s://", proto, strcmp(tls, "implicit") ? "" : "s");
		add_encoded(&b, a->user);
		buf_addc(&b, '@');
		if (strchr(host, ':'))
			buf_addf(&b, "[%s]", host);
		else
			buf_adds(&b, host);
		if (port)
			buf_addf(&b, ":%u", port);
		bool none = !strcmp(tls, "none");
		if (none)
			buf_adds(&b, "?tls=none");
		if (auth)
			buf_addf(&b, "%cauth=%s", none ? '&' : '?', auth);
		*url_r = buf_detach(&b);
	} else if (a->host || a->port || a->tls || a->proto || a->auth) {
		rc = fail(p, a->line, "[%s] names a server but no user", sec[side]);
		goto out;
	}
	if (*url_r) {
		struct account_url u;
		char *err = NULL;
		if (url_parse(*url_r, &u, &err) < 0) {
			rc = fail(p, a->url ? a->url_line : a->user_line, "%s URL: %s", sec[side],
			    err);
			free(err);
			free(*url_r);
			*url_r = NULL;
			goto out;
		}
		url_free(&u);
	}
out:
	job_server_release(&ps);
	return rc;
}

int job_parse(struct job *j, const char *name, const char *text, size_t len, char **err_r)
{
	struct parser p;
	memset(&p, 0, sizeof p);
	p.j = j;
	p.name = name;
	p.dir = dir_of(name);
	int rc = parse_text(&p, text, len);
	/* presets first (the file's, then its accounts'), then the file */
	if (rc == 0 && p.preset) {
		char *err = NULL;
		if (job_load_preset(j, p.preset, NULL, &err) < 0) {
			rc = fail(&p, p.preset_line, "%s", err);
			free(err);
		} else {
			free(j->preset_name);
			j->preset_name = xstrdup(p.preset);
		}
	}
	for (int i = 0; i < 2 && rc == 0; i++) {
		char *url = NULL;
		rc = account_url(&p, i, &url);
		if (rc == 0 && url) {
			free(j->url[i]);
			j->url[i] = url;
		}
	}
	if (rc == 0) {
		for (size_t i = 0; i < p.nown; i++)
			push(&j->own, &j->nown, p.own[i]);
		p.nown = 0;
	} else {
		*err_r = p.err;
		p.err = NULL;
	}
	parser_free(&p);
	return rc;
}

int job_load(struct job *j, const char *path, const char *preset, char **err_r)
{
	if (path) {
		char *text = NULL;
		size_t len = 0;
		if (read_file(path, &text, &len, err_r) < 0)
			return -1;
		int rc = job_parse(j, path, text, len, err_r);
		free(text);
		if (rc < 0)
			return -1;
	}
	/* the command line's preset after the file's presets, before the
	 * file's own options (job_argv puts those after every preset) */
	if (preset) {
		char *err = NULL;
		if (job_load_preset(j, preset, NULL, &err) < 0) {
			*err_r = xasprintf("--preset '%s': %s", preset, err);
			free(err);
			return -1;
		}
	}
	return 0;
}

void job_argv(struct job *j, int argc, char **argv, int npos)
{
	size_t n = 1 + j->nopts + j->nown + (size_t)(argc > 1 ? argc - 1 : 0) + 3;
	free(j->argv);
	j->argv = xcalloc(n, sizeof *j->argv);
	int k = 0;
	j->argv[k++] = argc > 0 ? argv[0] : (char *)"postino";
	for (size_t i = 0; i < j->nopts; i++)
		j->argv[k++] = j->opts[i];
	for (size_t i = 0; i < j->nown; i++)
		j->argv[k++] = j->own[i];
	for (int i = 1; i < argc; i++)
		j->argv[k++] = argv[i];
	if (npos == 0 && j->url[0] && j->url[1]) {
		j->argv[k++] = j->url[0];
		j->argv[k++] = j->url[1];
	}
	j->argv[k] = NULL;
	j->argc = k;
}
