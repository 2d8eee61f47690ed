/*
 * cli.c — the command line: parsing, and the plan / copy / status commands
 * put together from the modules (url, secret, store, state, planner,
 * copier). Every failure leaves here as one line on stderr and an exit
 * code from cli.h.
 */
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <gnutls/crypto.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "copier.h"
#include "log.h"
#include "net.h"
#include "mirror.h"
#include "planner.h"
#include "ratelimit.h"
#include "report.h"
#include "retire.h"
#include "secret.h"
#include "state.h"
#include "store.h"
#include "url.h"
#include "util.h"
#include "verify.h"
#include "jobfile.h"
#include "batch.h"

struct options {
	const char *command;
	const char *url[2];
	char *state_path;
	const char *ca_file;
	const char *passfile[2];
	const char *passcmd[2];
	const char *auth[2];    /* --auth1/--auth2 (--auth: both): SASL mechanism */
	struct plan_rules rules;
	bool dry_run;
	int verbose;
	bool quiet;
	bool trace;
	const char *log_file;
	int timeout_s;
	struct copy_opts copy;
	bool delete_after;
	int keep_days;
	bool json;              /* --json: the report as JSON on stdout */
	long max_mps, max_bps;  /* --max-messages-per-second, --max-bytes-per-second */
	const char *progress;   /* --progress=auto|tty|plain|none */
	const char *report;     /* --report FILE: the JSON report there too */
	/* mirror */
	bool force;
	bool watch;
	long interval;
	long max_delete;
	long max_delete_percent;
	bool mark_seen;
	bool no_header_date;
	/* verify; --job, --preset */
	bool deep;
	const char *job_file;
	const char *preset;
};

static const char usage_main[] =
    "usage: postino COMMAND [options]\n"
    "\n"
    "commands:\n"
    "  plan SRC DST     show what a copy would do; changes nothing\n"
    "  copy SRC DST     copy SRC to DST, exactly; resumable, incremental\n"
    "  mirror A B       keep A and B in sync both ways\n"
    "  verify SRC DST   check that DST holds everything SRC holds; changes nothing\n"
    "  status           what the state DB knows\n"
    "  batch FILE.csv   copy many account pairs, one CSV row each (docs/batch.md)\n"
    "\n"
    "SRC and DST are URLs: imaps://USER@HOST[:PORT], imap://... (STARTTLS),\n"
    "?tls=none for plaintext. Passwords come from POSTINO_PASSWORD1/2,\n"
    "--passfile1/2 FILE or --passcmd1/2 CMD, never from the command line.\n"
    "--job FILE reads the accounts and options from a job file, --preset NAME\n"
    "a provider's settings (gmail, outlook, ...); the command line overrides both.\n"
    "\n"
    "postino COMMAND --help for the options of a command; postino --version;\n"
    "man postino.\n";

static const char usage_copy[] =
    "usage: postino %s SRC DST [options]\n"
    "\n"
    "  --state FILE          state DB (default: one per account pair under\n"
    "                        $XDG_STATE_HOME/postino/)\n"
    "  --ca-file FILE        also trust the CA certificates in FILE (PEM)\n"
    "  --passfile1 FILE      password of SRC: first line of FILE\n"
    "  --passfile2 FILE      password of DST\n"
    "  --passcmd1 CMD        password of SRC: first line printed by CMD\n"
    "  --passcmd2 CMD        password of DST\n"
    "  --auth1 MECH          how to log in to SRC: plain, login, cram-md5, or\n"
    "                        xoauth2 (the password is then an OAuth2 access\n"
    "                        token, docs/oauth2.md); default: IMAP LOGIN\n"
    "  --auth2 MECH          the same for DST; --auth MECH: both\n"
    "  --folder GLOB         copy only folders matching GLOB (repeatable;\n"
    "                        paths use '/': Archive/2024, Archive/*)\n"
    "  --exclude GLOB        do not copy folders matching GLOB (repeatable)\n"
    "  --map SRC=DST         put folder SRC (and its subfolders) at DST\n"
    "  --into FOLDER         put everything below FOLDER\n"
    "  --dry-run             only show the plan (same as postino plan)\n"
    "  --no-flag-sync        do not push flag changes of copied messages\n"
    "  --skip-duplicates     do not copy a message whose Message-ID and size\n"
    "                        are already in the destination folder (several\n"
    "                        sources into one)\n"
    "POP3 sources (pop3://, pop3s://; the mailbox goes to INBOX, or --into):\n"
    "  --delete-after        delete from the server what is safely copied\n"
    "  --keep-days N         with --delete-after: only mail copied N days ago\n"
    "  --mark-seen           mark imported messages \\Seen (default: unread)\n"
    "  --no-header-date      INTERNALDATE = now, not the Received:/Date: date\n"
    "  --batch N             messages per APPEND batch (default 1000)\n"
    "  --max-messages-per-second N, --max-bytes-per-second N\n"
    "                        stay under a provider's upload limits\n"
    "  --jobs N              connections per side: folders copied in parallel\n"
    "                        (default: 4, or 1 for a small change on a near server)\n"
    "  --timeout SECONDS     network idle timeout (default 120)\n"
    "  -v, -vv, --trace      more detail; --trace logs the protocol, passwords\n"
    "                        redacted\n"
    "  --log FILE            also write the log to FILE\n"
    "  --progress MODE       auto (a live display on a terminal, a line every\n"
    "                        10 s otherwise), tty, plain or none\n"
    "  --json                the end-of-run report as JSON on stdout\n"
    "  --report FILE         and/or write it to FILE (docs/reports.md)\n"
    "  -q, --quiet           only errors\n"
    "  --job FILE            accounts and options from a job file\n"
    "  --preset NAME         a provider's settings (gmail, outlook, office365,\n"
    "                        yahoo, icloud, fastmail, dovecot); the command\n"
    "                        line overrides the job file, the job file the preset\n"
    "\n"
    "exit codes: 0 done; 1 some messages not copied (listed); 2 usage;\n"
    "3 network; 4 state DB locked or unusable; 5 login refused; 6 TLS;\n"
    "7 interrupted (rerun to resume).\n";

static const char usage_mirror[] =
    "usage: postino mirror A B [options]\n"
    "\n"
    "Keeps two IMAP accounts in sync both ways: new messages, flag changes,\n"
    "deletions, moves and new folders go in both directions. The first run\n"
    "makes the union (messages on both sides are paired, not duplicated).\n"
    "\n"
    "  --state FILE          state DB (default: one per account pair)\n"
    "  --ca-file FILE        also trust the CA certificates in FILE (PEM)\n"
    "  --passfile1/2 FILE, --passcmd1/2 CMD   passwords of A / B\n"
    "  --auth1/2 MECH, --auth MECH   plain, login, cram-md5 or xoauth2\n"
    "  --folder GLOB, --exclude GLOB, --map A=B   which folders, as for copy\n"
    "  --max-delete N        mass-deletion guard: a pass may delete at most N\n"
    "  --max-delete-percent P  ... or P% of a folder, the larger (50, 10%)\n"
    "  --force               apply deletions the guard held back\n"
    "  --watch               keep running: a pass when IDLE reports a change in\n"
    "                        INBOX, and every --interval seconds; SIGTERM stops\n"
    "                        it cleanly (exit 0; 7 if it cut a pass short)\n"
    "  --interval SECONDS    (default 60)\n"
    "  -v, -vv, --trace, --log FILE, -q, --timeout SECONDS, --json,\n"
    "  --report FILE         as for copy\n"
    "  --job FILE, --preset NAME   as for copy\n"
    "\n"
    "exit codes: 0 in sync; 1 something held back (guard, refusals, kept\n"
    "conflicts); 2 usage; 3 network; 4 state DB; 5 login; 6 TLS; 7 stopped.\n";

static const char usage_verify[] =
    "usage: postino verify SRC DST [options]\n"
    "\n"
    "Proof after a copy: compares the two servers (not the state DB) folder by\n"
    "folder, through the same folder plan as copy, and lists what is missing,\n"
    "extra, or has other flags, date or content. Changes nothing.\n"
    "\n"
    "  --deep                compare the SHA-256 of every message (fetches all);\n"
    "                        default: Message-ID and size, headers only\n"
    "  --json                one JSON document on stdout instead of text\n"
    "  --report FILE         and/or write that document to FILE\n"
    "  --state FILE          earlier folder pairs from this state DB, if it\n"
    "                        exists (default: the copy's); never written\n"
    "  --folder, --exclude, --map, --into   the copy's folder rules\n"
    "  --ca-file, --passfile1/2, --passcmd1/2, --auth1/2, --timeout, -v, -q,\n"
    "  --trace, --log, --job FILE, --preset NAME   as for copy\n"
    "\n"
    "exit codes: 0 everything is there; 1 differences (listed); 2 usage;\n"
    "3 network; 4 state DB unusable; 5 login refused; 6 TLS.\n";

static const char usage_status[] =
    "usage: postino status [--state FILE]\n"
    "\n"
    "Shows what the state DB knows: accounts, folders, messages copied,\n"
    "pending and refused (with the server's reason), and the last runs.\n"
    "Without --state, every state DB under $XDG_STATE_HOME/postino/.\n";

enum {
	OPT_STATE = 256, OPT_CA_FILE, OPT_PASSFILE1, OPT_PASSFILE2, OPT_PASSCMD1,
	OPT_PASSCMD2, OPT_FOLDER, OPT_EXCLUDE, OPT_MAP, OPT_INTO, OPT_DRY_RUN, OPT_TRACE,
	OPT_LOG, OPT_TIMEOUT, OPT_BATCH, OPT_JOBS, OPT_DELETE_AFTER, OPT_KEEP_DAYS,
	OPT_MARK_SEEN, OPT_NO_HEADER_DATE, OPT_SKIP_DUPLICATES, OPT_FORCE, OPT_WATCH,
	OPT_INTERVAL, OPT_MAX_DELETE, OPT_MAX_DELETE_PERCENT, OPT_JSON, OPT_REPORT,
	OPT_MAX_MPS, OPT_MAX_BPS, OPT_PROGRESS, OPT_NO_FLAG_SYNC, OPT_HELP, OPT_VERSION,
	OPT_DEEP, OPT_JOB, OPT_PRESET, OPT_AUTH, OPT_AUTH1, OPT_AUTH2,
};

static const struct option long_opts[] = {
	{"state", required_argument, NULL, OPT_STATE},
	{"ca-file", required_argument, NULL, OPT_CA_FILE},
	{"passfile1", required_argument, NULL, OPT_PASSFILE1},
	{"passfile2", required_argument, NULL, OPT_PASSFILE2},
	{"passcmd1", required_argument, NULL, OPT_PASSCMD1},
	{"passcmd2", required_argument, NULL, OPT_PASSCMD2},
	{"auth", required_argument, NULL, OPT_AUTH},
	{"auth1", required_argument, NULL, OPT_AUTH1},
	{"auth2", required_argument, NULL, OPT_AUTH2},
	{"folder", required_argument, NULL, OPT_FOLDER},
	{"exclude", required_argument, NULL, OPT_EXCLUDE},
	{"map", required_argument, NULL, OPT_MAP},
	{"into", required_argument, NULL, OPT_INTO},
	{"dry-run", no_argument, NULL, OPT_DRY_RUN},
	{"no-flag-sync", no_argument, NULL, OPT_NO_FLAG_SYNC},
	{"batch", required_argument, NULL, OPT_BATCH},
	{"jobs", required_argument, NULL, OPT_JOBS},
	{"delete-after", no_argument, NULL, OPT_DELETE_AFTER},
	{"keep-days", required_argument, NULL, OPT_KEEP_DAYS},
	{"mark-seen", no_argument, NULL, OPT_MARK_SEEN},
	{"no-header-date", no_argument, NULL, OPT_NO_HEADER_DATE},
	{"skip-duplicates", no_argument, NULL, OPT_SKIP_DUPLICATES},
	{"force", no_argument, NULL, OPT_FORCE},
	{"json", no_argument, NULL, OPT_JSON},
	{"max-messages-per-second", required_argument, NULL, OPT_MAX_MPS},
	{"progress", required_argument, NULL, OPT_PROGRESS},
	{"max-bytes-per-second", required_argument, NULL, OPT_MAX_BPS},
	{"report", required_argument, NULL, OPT_REPORT},
	{"watch", no_argument, NULL, OPT_WATCH},
	{"interval", required_argument, NULL, OPT_INTERVAL},
	{"max-delete", required_argument, NULL, OPT_MAX_DELETE},
	{"max-delete-percent", required_argument, NULL, OPT_MAX_DELETE_PERCENT},
	{"timeout", required_argument, NULL, OPT_TIMEOUT},
	{"trace", no_argument, NULL, OPT_TRACE},
	{"log", required_argument, NULL, OPT_LOG},
	{"verbose", no_argument, NULL, 'v'},
	{"quiet", no_argument, NULL, 'q'},
	{"help", no_argument, NULL, OPT_HELP},
	{"version", no_argument, NULL, OPT_VERSION},
	{"deep", no_argument, NULL, OPT_DEEP},
	{"job", required_argument, NULL, OPT_JOB},
	{"preset", required_argument, NULL, OPT_PRESET},
	{NULL, 0, NULL, 0},
};

int cli_usage_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *m = xvasprintf(fmt, ap);
	va_end(ap);
	log_error("%s", m);
	free(m);
	return EXIT_USAGE;
}

static void push_str(char ***v, size_t *n, const char *s)
{
	*v = xrealloc(*v, (*n + 1) * sizeof **v);
	(*v)[(*n)++] = xstrdup(s);
}

/* A rule path: '/' separated, no empty components, no leading '/'. */
static char *rule_path(const char *s)
{
	while (*s == '/')
		s++;
	size_t n = strlen(s);
	while (n && s[n - 1] == '/')
		n--;
	return xstrndup(s, n);
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

/* Returns -1 to continue, or an exit code. */
static int parse_options(struct options *o, int argc, char **argv)
{
	int c;
	long v;
	optind = 1;
	opterr = 0; /* our own one-line messages */
	while ((c = getopt_long(argc, argv, ":vq", long_opts, NULL)) != -1) {
		switch (c) {
		case OPT_STATE: free(o->state_path); o->state_path = xstrdup(optarg); break;
		case OPT_CA_FILE: o->ca_file = optarg; break;
		case OPT_PASSFILE1: o->passfile[0] = optarg; break;
		case OPT_PASSFILE2: o->passfile[1] = optarg; break;
		case OPT_PASSCMD1: o->passcmd[0] = optarg; break;
		case OPT_PASSCMD2: o->passcmd[1] = optarg; break;
		case OPT_AUTH:
		case OPT_AUTH1:
		case OPT_AUTH2: {
			const char *m = url_auth_mech(optarg);
			if (!m)
				return cli_usage_error("%s '%s': use plain, login, cram-md5 or xoauth2",
				    c == OPT_AUTH ? "--auth" : c == OPT_AUTH1 ? "--auth1" : "--auth2",
				    optarg);
			if (c != OPT_AUTH2)
				o->auth[0] = m;
			if (c != OPT_AUTH1)
				o->auth[1] = m;
			break;
		}
		case OPT_FOLDER:
			push_str(&o->rules.folders, &o->rules.nfolders, optarg);
			break;
		case OPT_EXCLUDE:
			push_str(&o->rules.excludes, &o->rules.nexcludes, optarg);
			break;
		case OPT_MAP: {
			const char *eq = strchr(optarg, '=');
			if (!eq || eq == optarg || !eq[1])
				return cli_usage_error("--map '%s': expected SRC=DST", optarg);
			o->rules.maps = xrealloc(o->rules.maps,
			    (o->rules.nmaps + 1) * sizeof *o->rules.maps);
			char *src = xstrndup(optarg, (size_t)(eq - optarg));
			o->rules.maps[o->rules.nmaps].src = rule_path(src);
			o->rules.maps[o->rules.nmaps].dst = rule_path(eq + 1);
			free(src);
			o->rules.nmaps++;
			break;
		}
		case OPT_INTO:
			free(o->rules.into);
			o->rules.into = rule_path(optarg);
			if (!*o->rules.into)
				return cli_usage_error("--into needs a folder name");
			break;
		case OPT_DRY_RUN: o->dry_run = true; break;
		case OPT_NO_FLAG_SYNC: o->copy.no_flag_sync = true; break;
		case OPT_BATCH:
			if (parse_long(optarg, 1, 5000, &v) < 0)
				return cli_usage_error("--batch '%s': expected a number from 1 to 5000",
				    optarg);
			o->copy.batch_msgs = (unsigned)v;
			break;
		case OPT_JOBS:
			if (parse_long(optarg, 1, 64, &v) < 0)
				return cli_usage_error("--jobs '%s': expected a number from 1 to 64", optarg);
			o->copy.jobs = (unsigned)v;
			o->copy.jobs_auto = false;
			break;
		case OPT_DELETE_AFTER: o->delete_after = true; break;
		case OPT_KEEP_DAYS:
			if (parse_long(optarg, 0, 36500, &v) < 0)
				return cli_usage_error("--keep-days '%s': expected a number of days", optarg);
			o->keep_days = (int)v;
			break;
		case OPT_MARK_SEEN: o->mark_seen = true; break;
		case OPT_NO_HEADER_DATE: o->no_header_date = true; break;
		case OPT_SKIP_DUPLICATES: o->copy.skip_duplicates = true; break;
		case OPT_FORCE: o->force = true; break;
		case OPT_JSON: o->json = true; break;
		case OPT_PROGRESS:
			if (strcmp(optarg, "auto") && strcmp(optarg, "tty") &&
			    strcmp(optarg, "plain") && strcmp(optarg, "none"))
				return cli_usage_error("--progress '%s': use auto, tty, plain or none",
				    optarg);
			o->progress = optarg;
			break;
		case OPT_MAX_MPS:
			if (parse_long(optarg, 1, 1000000, &o->max_mps) < 0)
				return cli_usage_error("--max-messages-per-second '%s': expected a "
				    "number from 1", optarg);
			break;
		case OPT_MAX_BPS:
			if (parse_long(optarg, 1024, 1L << 40, &o->max_bps) < 0)
				return cli_usage_error("--max-bytes-per-second '%s': expected a "
				    "number of bytes from 1024", optarg);
			break;
		case OPT_REPORT: o->report = optarg; break;
		case OPT_WATCH: o->watch = true; break;
		case OPT_INTERVAL:
			if (parse_long(optarg, 1, 86400, &o->interval) < 0)
				return cli_usage_error("--interval '%s': expected seconds (1-86400)", optarg);
			break;
		case OPT_MAX_DELETE:
			if (parse_long(optarg, 0, 100000000, &o->max_delete) < 0)
				return cli_usage_error("--max-delete '%s': expected a number", optarg);
			break;
		case OPT_MAX_DELETE_PERCENT:
			if (parse_long(optarg, 0, 100, &o->max_delete_percent) < 0)
				return cli_usage_error("--max-delete-percent '%s': expected 0-100", optarg);
			break;
		case OPT_TIMEOUT:
			if (parse_long(optarg, 1, 86400, &v) < 0)
				return cli_usage_error("--timeout '%s': expected seconds (1-86400)",
				    optarg);
			o->timeout_s = (int)v;
			break;
		case OPT_TRACE: o->trace = true; break;
		case OPT_LOG: o->log_file = optarg; break;
		case 'v': o->verbose++; break;
		case 'q': o->quiet = true; break;
		case OPT_DEEP: o->deep = true; break;
		case OPT_JOB: o->job_file = optarg; break;
		case OPT_PRESET: o->preset = optarg; break;
		case OPT_HELP:
			if (!strcmp(o->command, "status"))
				fputs(usage_status, stdout);
			else if (!strcmp(o->command, "mirror"))
				fputs(usage_mirror, stdout);
			else if (!strcmp(o->command, "verify"))
				fputs(usage_verify, stdout);
			else
				printf(usage_copy, o->command);
			return EXIT_OK;
		case OPT_VERSION:
			printf("postino %s\n", POSTINO_VERSION);
			return EXIT_OK;
		case ':':
			return cli_usage_error("option '%s' needs a value (see postino %s --help)",
			    argv[optind - 1], o->command);
		default:
			return cli_usage_error("unknown option '%s' (see postino %s --help)",
			    argv[optind - 1], o->command);
		}
	}
	return -1;
}

/* $XDG_STATE_HOME/postino: default states, <hash of the two accounts>.db */
static char *default_state_dir(void)
{
	const char *x = getenv("XDG_STATE_HOME");
	if (x && *x == '/')
		return xasprintf("%s/postino", x);
	const char *home = getenv("HOME");
	if (!home || !*home)
		return NULL;
	return xasprintf("%s/.local/state/postino", home);
}

/* DIR/<hash of a and b>.db */
static char *state_file_in(const char *dir, const char *a, const char *b)
{
	char *key = xasprintf("%s\n%s", a, b);
	uint8_t h[32];
	gnutls_hash_fast(GNUTLS_DIG_SHA256, key, strlen(key), h);
	free(key);
	char hex[17];
	for (int i = 0; i < 8; i++)
		snprintf(hex + 2 * i, 3, "%02x", h[i]);
	return xasprintf("%s/%s.db", dir, hex);
}

/*
 * The state file an older postino gave these accounts by default, if one
 * exists: it hashed the display URLs, TLS mode and mechanism included, of
 * whatever the user ran then. The current display forms are tried first.
 * NULL if there is none.
 */
static char *old_default_state(const char *dir, const struct account_url url[2])
{
	char **a, **b, *found = NULL;
	size_t na = url_display_forms(&url[0], &a), nb = url_display_forms(&url[1], &b);
	struct stat sb;

	for (size_t i = 0; i < na; i++) {
		for (size_t j = 0; j < nb; j++) {
			char *p = state_file_in(dir, a[i], b[j]);
			if (stat(p, &sb) != 0) {
				free(p);
			} else if (!found) {
				found = p;
			} else {
				log_notice("state '%s' (of an older postino, for '%s' -> '%s') "
				    "is not used: '%s' is", p, a[i], b[j], found);
				free(p);
			}
		}
	}
	for (size_t i = 0; i < na; i++)
		free(a[i]);
	for (size_t j = 0; j < nb; j++)
		free(b[j]);
	free(a);
	free(b);
	return found;
}

/*
 * Sets o->state_path to the job's default state: DIR/<hash of the two
 * accounts' identities>.db. When that does not exist but a state of an
 * older postino does (old_default_state), that state is the job's: a run
 * that writes (move) moves it to the new name under its lock; plan and
 * verify read it where it is. Without the move, a rerun after switching
 * to XOAUTH2 or to implicit TLS would start from an empty state and copy
 * everything again. Returns EXIT_OK, EXIT_USAGE or EXIT_STATE.
 */
static int use_default_state(struct options *o, const struct account_url url[2], bool move)
{
	char *dir = default_state_dir();
	if (!dir) {
		log_error("no --state given and neither XDG_STATE_HOME nor HOME is set");
		return EXIT_USAGE;
	}
	char *path = state_file_in(dir, url[0].account, url[1].account);
	char *old = NULL;
	struct stat sb;
	int rc = EXIT_OK;

	if (stat(path, &sb) != 0)
		old = old_default_state(dir, url);
	if (old && !move) {
		log_info("reading state '%s' (named after the accounts' URLs by an "
		    "older postino)", old);
		free(path);
		path = old;
		old = NULL;
	} else if (old) {
		char *err = NULL;
		int r = state_move(old, path, &err);
		if (r == 1) {
			log_info("state '%s' (named after the accounts' URLs by an older "
			    "postino) moved to '%s'", old, path);
		} else if (r < 0) {
			if (r == STATE_OPEN_LOCKED)
				log_error("%s", err);
			else
				log_error("%s (run again, or use that state with --state '%s')",
				    err, old);
			free(err);
			rc = EXIT_STATE;
		}
	}
	free(old);
	free(dir);
	if (rc == EXIT_OK)
		o->state_path = path;
	else
		free(path);
	return rc;
}

static int exit_for_fatal(enum store_fatal_kind k)
{
	switch (k) {
	case FATAL_TLS: return EXIT_TLS;
	case FATAL_AUTH: return EXIT_AUTH;
	case FATAL_CONFIG: return EXIT_USAGE;
	default: return EXIT_NETWORK;
	}
}

/*
 * SIGINT/SIGTERM ask the copier to stop at its next safe point. They are
 * taken by a thread of their own (sigwait), blocked everywhere else, so
 * that no read or write of a connection is ever cut short by EINTR (which
 * libetpan would take for a lost connection). A second signal ends the
 * process at once: the state is consistent at any point.
 */
static void *signal_thread(void *arg)
{
	sigset_t *set = arg;
	int seen = 0;
	for (;;) {
		int sig;
		if (sigwait(set, &sig) != 0)
			continue;
		if (++seen > 1)
			_exit(EXIT_INTERRUPTED);
		log_notice("stopping after the current batch (signal %d); again to stop now", sig);
		copier_stop = 1;
	}
	return NULL;
}

static void install_signals(void)
{
	static sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	pthread_t t;
	if (pthread_create(&t, NULL, signal_thread, &set) == 0)
		pthread_detach(t);
	signal(SIGPIPE, SIG_IGN);
}

/* ------------------------------------------------------------------ */

struct session {
	struct options *o;
	struct account_url url[2];
	char *password[2];
	struct store *store[2];
	struct store_folder_list folders[2];
	struct state *st;
};

static void session_release(struct session *s)
{
	for (int i = 0; i < 2; i++) {
		store_free(&s->store[i]);
		store_folder_list_free(&s->folders[i]);
		url_free(&s->url[i]);
		secret_free(s->password[i]);
		s->password[i] = NULL;
	}
	state_close(&s->st);
}

static int parse_urls(struct session *s)
{
	for (int i = 0; i < 2; i++) {
		char *err = NULL;
		if (url_parse(s->o->url[i], &s->url[i], &err) < 0) {
			log_error("%s URL: %s", i ? "destination" : "source", err);
			free(err);
			return EXIT_USAGE;
		}
		if (s->o->auth[i] && url_set_auth(&s->url[i], s->o->auth[i], &err) < 0) {
			log_error("--auth%d: %s", i + 1, err);
			free(err);
			return EXIT_USAGE;
		}
	}
	if (s->url[1].proto != PROTO_IMAP) {
		log_error("destination '%s': only IMAP can be a destination", s->url[1].display);
		return EXIT_USAGE;
	}
	if (s->url[0].proto != PROTO_POP3 && (s->o->delete_after || s->o->mark_seen ||
		s->o->no_header_date || s->o->keep_days)) {
		log_error("--delete-after, --keep-days, --mark-seen and --no-header-date are for "
		    "POP3 sources; '%s' is IMAP", s->url[0].display);
		return EXIT_USAGE;
	}
	if (s->o->keep_days && !s->o->delete_after) {
		log_error("--keep-days needs --delete-after");
		return EXIT_USAGE;
	}
	return EXIT_OK;
}

static int get_passwords(struct session *s)
{
	static const char *const env[2] = {"POSTINO_PASSWORD1", "POSTINO_PASSWORD2"};
	for (int i = 0; i < 2; i++) {
		struct secret_source src = {s->o->passcmd[i], s->o->passfile[i], env[i]};
		char *err = NULL;
		s->password[i] = secret_get(&src, &err);
		if (!s->password[i]) {
			if (err)
				log_error("password for %s: %s", s->url[i].display, err);
			else
				log_error("no password for %s: set %s, or use --passfile%d or "
				    "--passcmd%d", s->url[i].display, env[i], i + 1, i + 1);
			free(err);
			return EXIT_USAGE;
		}
	}
	return EXIT_OK;
}

/* One side's connection and folder list, in a thread of its own: both
 * sides are set up at the same time. */
struct side_open {
	struct store *store;
	struct store_folder_list *folders;
	enum store_rc rc;
	bool listed; /* the failure, if any, was the LIST */
	pthread_t thread;
	bool threaded;
};

static void *open_side(void *arg)
{
	struct side_open *so = arg;
	so->rc = store_connect(so->store);
	if (so->rc == STORE_CONN_BAD)
		so->rc = store_reconnect(so->store, 3);
	if (so->rc == STORE_OK) {
		so->listed = true;
		so->rc = so->store->ops->list(so->store, so->folders);
	}
	return NULL;
}

static int connect_stores(struct session *s)
{
	static const char *const label[2] = {"source", "destination"};
	struct side_open side[2];
	memset(side, 0, sizeof side);
	for (int i = 0; i < 2; i++) {
		struct store_opts so = {
			.password = s->password[i],
			.ca_file = s->o->ca_file,
			.timeout_s = s->o->timeout_s,
			.trace = s->o->trace,
			.pop3_no_date = s->o->no_header_date,
			.pop3_mark_seen = s->o->mark_seen,
		};
		s->store[i] = store_new(&s->url[i], &so, label[i]);
		side[i].store = s->store[i];
		side[i].folders = &s->folders[i];
	}
	side[1].threaded = pthread_create(&side[1].thread, NULL, open_side, &side[1]) == 0;
	open_side(&side[0]);
	if (side[1].threaded)
		pthread_join(side[1].thread, NULL);
	else
		open_side(&side[1]);
	/* the source's failure first, as if they had been set up in turn */
	for (int i = 0; i < 2; i++) {
		if (side[i].rc == STORE_OK)
			continue;
		if (side[i].listed) {
			log_error("%s: cannot list folders: %s", label[i], store_error(s->store[i]));
			return EXIT_NETWORK;
		}
		log_error("%s: %s", label[i], store_error(s->store[i]));
		return side[i].rc == STORE_FATAL ? exit_for_fatal(s->store[i]->fatal) : EXIT_NETWORK;
	}
	return EXIT_OK;
}

struct known_ctx {
	struct plan_known *v;
	size_t n;
};

static int collect_known(void *ctx, const struct fpair *fp)
{
	struct known_ctx *k = ctx;
	k->v = xrealloc(k->v, (k->n + 1) * sizeof *k->v);
	k->v[k->n++] = (struct plan_known){xstrdup(fp->a_name), xstrdup(fp->b_name)};
	return 0;
}

static void known_free(struct known_ctx *k)
{
	for (size_t i = 0; i < k->n; i++) {
		free((char *)k->v[i].src_name);
		free((char *)k->v[i].dst_name);
	}
	free(k->v);
}

static int make_plan(struct session *s, struct plan *p)
{
	struct known_ctx known = {0};
	if (s->st && state_pairs_each(s->st, collect_known, &known) < 0) {
		log_error("%s", state_error(s->st));
		known_free(&known);
		return EXIT_STATE;
	}
	struct plan_side side[2];
	for (int i = 0; i < 2; i++)
		side[i] = (struct plan_side){&s->folders[i], s->store[i]->ns.prefix,
		    s->store[i]->ns.delim, s->store[i]->caps.pop3};
	char *err = NULL;
	int r = plan_build(p, &side[0], &side[1], &s->o->rules, known.v, known.n, &err);
	known_free(&known);
	if (r < 0) {
		log_error("%s", err);
		free(err);
		return EXIT_USAGE;
	}
	for (size_t i = 0; i < p->nwarnings; i++)
		log_warn("%s", p->warnings[i]);
	return EXIT_OK;
}

static void human_bytes(char out[32], uint64_t b)
{
	static const char *const unit[] = {"B", "KB", "MB", "GB", "TB"};
	double v = (double)b;
	int u = 0;
	while (v >= 1024 && u < 4) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(out, 32, "%llu B", (unsigned long long)b);
	else
		snprintf(out, 32, "%.1f %s", v, unit[u]);
}

static void print_padded(const char *s, int width)
{
	fputs(s, stdout);
	for (int w = utf8_width(s); w < width; w++)
		putchar(' ');
}

/* ------------------------------------------------------------------ */
/* plan */

struct plan_count {
	struct state *st;
	int64_t pair;
	uint64_t total, to_copy, bytes;
};

static int count_cb(void *ctx, const struct msg_info *mi)
{
	struct plan_count *pc = ctx;
	pc->total++;
	bool known = false;
	if (pc->st && pc->pair) {
		struct msg_row r;
		memset(&r, 0, sizeof r);
		int f = mi->uidl ? state_msg_by_uidl(pc->st, pc->pair, mi->uidl, &r)
		    : state_msg_by_a(pc->st, pc->pair, mi->uid, &r);
		known = f > 0 && r.state == MSG_SYNCED;
		msg_row_release(&r);
	}
	if (!known) {
		pc->to_copy++;
		pc->bytes += mi->size;
	}
	return 0;
}

static int show_plan(struct session *s, const struct plan *p)
{
	struct store *src = s->store[0];
	int wsrc = 13, wdst = 11;
	for (size_t i = 0; i < p->n; i++) {
		if (utf8_width(p->v[i].src_path) > wsrc)
			wsrc = utf8_width(p->v[i].src_path);
		if (p->v[i].dst_path && utf8_width(p->v[i].dst_path) > wdst)
			wdst = utf8_width(p->v[i].dst_path);
	}
	printf("plan: %s -> %s\n", s->url[0].display, s->url[1].display);
	print_padded("SOURCE FOLDER", wsrc + 2);
	print_padded("DESTINATION", wdst + 2);
	printf("%9s %9s %10s  ACTION\n", "MESSAGES", "TO COPY", "BYTES");
	uint64_t tot_copy = 0, tot_bytes = 0;
	size_t nfold = 0, ncreate = 0;
	for (size_t i = 0; i < p->n; i++) {
		const struct plan_entry *e = &p->v[i];
		print_padded(e->src_path, wsrc + 2);
		if (e->action == PLAN_SKIP) {
			print_padded("-", wdst + 2);
			printf("%9s %9s %10s  skip: %s\n", "-", "-", "-", e->reason);
			continue;
		}
		print_padded(e->dst_path, wdst + 2);
		struct plan_count pc = {s->st, 0, 0, 0, 0};
		if (s->st) {
			struct fpair fp;
			if (state_pair_find(s->st, e->src_name, e->dst_name, &fp) > 0) {
				pc.pair = fp.id;
				fpair_release(&fp);
			}
		}
		struct box_status st;
		memset(&st, 0, sizeof st);
		enum store_rc rc = src->ops->select(src, e->src_name, true, &st);
		if (rc == STORE_OK)
			rc = src->ops->scan(src, 1, 0, SCAN_SIZE, count_cb, &pc);
		box_status_clear(&st);
		if (rc != STORE_OK) {
			printf("%9s %9s %10s  error: %s\n", "?", "?", "?", store_error(src));
			if (rc == STORE_CONN_BAD || rc == STORE_FATAL)
				return EXIT_NETWORK;
			continue;
		}
		char hb[32];
		human_bytes(hb, pc.bytes);
		printf("%9llu %9llu %10s  %s%s (%s)\n", (unsigned long long)pc.total,
		    (unsigned long long)pc.to_copy, hb,
		    e->action == PLAN_CREATE ? "create, " : "", "copy", e->reason);
		tot_copy += pc.to_copy;
		tot_bytes += pc.bytes;
		nfold++;
		if (e->action == PLAN_CREATE)
			ncreate++;
	}
	char hb[32];
	human_bytes(hb, tot_bytes);
	printf("total: %llu message%s to copy (%s) in %zu folder%s; %zu folder%s to create\n",
	    (unsigned long long)tot_copy, tot_copy == 1 ? "" : "s", hb, nfold,
	    nfold == 1 ? "" : "s", ncreate, ncreate == 1 ? "" : "s");
	return EXIT_OK;
}

/* ------------------------------------------------------------------ */
/* copy */

static void print_report(const struct copy_report *r, bool quiet)
{
	for (size_t i = 0; i < r->nfolders && !quiet; i++) {
		const struct folder_report *f = &r->folders[i];
		if (!f->copied && !f->refused && !f->failed && !f->created && !f->flags_set &&
		    !f->relinked && !f->duplicates && !f->dropped_keywords)
			continue;
		char hb[32];
		human_bytes(hb, f->bytes);
		printf("  %s -> %s: %s%llu copied (%s), %llu flag updates", f->src_path,
		    f->dst_path, f->created ? "created, " : "", (unsigned long long)f->copied, hb,
		    (unsigned long long)f->flags_set);
		if (f->refused)
			printf(", %llu refused", (unsigned long long)f->refused);
		if (f->relinked)
			printf(", %llu re-paired", (unsigned long long)f->relinked);
		if (f->duplicates)
			printf(", %llu duplicates skipped", (unsigned long long)f->duplicates);
		if (f->dropped_keywords)
			printf(", keywords the destination would not keep: %s", f->dropped_keywords);
		if (f->failed)
			printf(", FAILED: %s", f->error ? f->error : "error");
		putchar('\n');
	}
	for (size_t i = 0; i < r->nrefusals; i++) {
		const struct refusal *x = &r->refusals[i];
		printf("  not copied: %s UID %u (%llu bytes): %s\n", x->folder, x->uid,
		    (unsigned long long)x->size, x->reason);
	}
	char hb[32];
	human_bytes(hb, r->bytes);
	double secs = (double)(r->ended_ms - r->started_ms) / 1000.0;
	if (r->interrupted)
		printf("interrupted: rerun the same command to resume\n");
	printf("copied %llu messages (%llu bytes), %llu flag updates, %llu refused, "
	    "%llu already there (%s in %.1f s)\n",
	    (unsigned long long)r->copied, (unsigned long long)r->bytes,
	    (unsigned long long)r->flags_set, (unsigned long long)r->refused,
	    (unsigned long long)r->already, hb, secs);
	fflush(stdout);
}

/*
 * Progress on stderr. On a terminal: one line per folder being copied and
 * a total line, redrawn in place four times a second, erased at the end
 * (the report follows). Otherwise: a plain line every 10 seconds.
 */
struct progress {
	bool tty;
	int lines;        /* lines drawn last time (tty) */
	int64_t t0;
};

static void fmt_bytes(char out[32], uint64_t b)
{
	human_bytes(out, b);
}

static void show_progress(void *ctx, const struct copy_report *rep, bool final)
{
	struct progress *pg = ctx;
	uint64_t done = 0, bytes = 0, todo = 0, todo_bytes = 0;
	size_t nfold = 0, finished = 0, scanned = 0;
	struct buf b = BUF_INIT;
	for (size_t i = 0; i < rep->nfolders; i++) {
		const struct folder_report *f = &rep->folders[i];
		int phase = __atomic_load_n(&f->phase, __ATOMIC_RELAXED);
		uint64_t c = __atomic_load_n(&f->copied, __ATOMIC_RELAXED);
		uint64_t by = __atomic_load_n(&f->bytes, __ATOMIC_RELAXED);
		uint64_t t = __atomic_load_n(&f->todo, __ATOMIC_RELAXED);
		uint64_t tb = __atomic_load_n(&f->todo_bytes, __ATOMIC_RELAXED);
		nfold++;
		done += c;
		bytes += by;
		todo += t;
		todo_bytes += tb;
		if (phase == 2 || f->skipped_fast)
			finished++;
		if (t || phase == 2 || f->skipped_fast)
			scanned++;
		if (pg->tty && phase == 1 && t) {
			char hb[32], ht[32];
			fmt_bytes(hb, by);
			fmt_bytes(ht, tb);
			buf_addf(&b, "  %s: %llu/%llu messages, %s/%s\033[K\n", f->src_path,
			    (unsigned long long)c, (unsigned long long)t, hb, ht);
		}
	}
	double secs = (double)(now_ms() - pg->t0) / 1000.0;
	double rate = secs > 0 ? (double)bytes / secs : 0;
	char hb[32], ht[32], hr[32], eta[32] = "?";
	fmt_bytes(hb, bytes);
	fmt_bytes(ht, todo_bytes);
	fmt_bytes(hr, (uint64_t)rate);
	if (rate > 0 && todo_bytes >= bytes)
		snprintf(eta, sizeof eta, "%s%.0fs", scanned < nfold ? ">" : "",
		    (double)(todo_bytes - bytes) / rate);
	buf_addf(&b, "total: %llu/%llu messages, %s/%s, %s/s, ETA %s, folders %zu/%zu done",
	    (unsigned long long)done, (unsigned long long)todo, hb, ht, hr, eta, finished, nfold);
	if (pg->tty) {
		/* back to the top of what was drawn, then draw again */
		if (pg->lines)
			fprintf(stderr, "\r\033[%dA", pg->lines);
		else
			fputc('\r', stderr);
		if (final) {
			fputs("\033[J", stderr);
		} else {
			fprintf(stderr, "%s\033[K\n\033[J", b.s);
			pg->lines = 1;
			for (const char *p = b.s; *p; p++)
				pg->lines += *p == '\n';
		}
	} else if (!final) {
		fprintf(stderr, "postino: %s\n", b.s);
	}
	fflush(stderr);
	buf_release(&b);
}

static void setup_progress(const struct options *o, struct copy_opts *co, struct progress *pg)
{
	memset(pg, 0, sizeof *pg);
	pg->t0 = now_ms();
	const char *mode = o->progress ? o->progress : "auto";
	if (o->quiet || !strcmp(mode, "none"))
		return;
	pg->tty = !strcmp(mode, "tty") || (!strcmp(mode, "auto") && isatty(2));
	co->progress = show_progress;
	co->progress_ctx = pg;
	co->progress_ms = pg->tty ? 250 : 10000;
	const char *t = getenv("POSTINO_TEST_PROGRESS_MS"); /* test hook */
	if (t && atoi(t) > 0)
		co->progress_ms = atoi(t);
}

/*
 * --max-messages-per-second / --max-bytes-per-second: one schedule for
 * all workers; a batch is made no bigger than about a second of it, so
 * that the rate holds within the batch too.
 */
static void setup_rate(const struct options *o, struct copy_opts *co, struct ratelimit *rl)
{
	ratelimit_init(rl, (double)o->max_mps, (double)o->max_bps);
	co->rate = o->max_mps || o->max_bps ? rl : NULL;
	if (o->max_mps && co->batch_msgs > (unsigned)o->max_mps)
		co->batch_msgs = (unsigned)o->max_mps;
	if (o->max_bps && co->batch_bytes > (uint64_t)o->max_bps)
		co->batch_bytes = (uint64_t)o->max_bps;
}

/*
 * The exit code of a copy or mirror run, saying why when it failed:
 * fatal (by kind: TLS, login, ..., or the state DB), network, interrupted,
 * or partial (something was not done and the report lists it).
 */
static int run_exit_code(struct session *s, enum store_rc r, const char *err,
    bool interrupted, bool partial)
{
	if (r == STORE_FATAL) {
		struct store *bad = s->store[0]->fatal ? s->store[0] :
		    s->store[1]->fatal ? s->store[1] : NULL;
		log_error("%s", err ? err : "failed");
		return bad ? exit_for_fatal(bad->fatal) : EXIT_STATE;
	}
	if (r == STORE_CONN_BAD) {
		log_error("%s (rerun to resume)", err ? err : "connection lost");
		return EXIT_NETWORK;
	}
	if (interrupted)
		return EXIT_INTERRUPTED;
	return partial ? EXIT_PARTIAL : EXIT_OK;
}

/* --json and --report FILE; takes json. */
static void emit_json(struct session *s, char *json)
{
	if (s->o->json) {
		fputs(json, stdout);
		fflush(stdout);
	}
	if (s->o->report && report_write(s->o->report, json) < 0)
		log_error("--report '%s': %s", s->o->report, strerror(errno));
	free(json);
}

/* Reads the state, never writing it, if there is one (plan, verify). */
static int open_state_if_any(struct session *s)
{
	struct stat sb;
	if (!s->o->state_path || stat(s->o->state_path, &sb) != 0)
		return EXIT_OK;
	char *err = NULL;
	if (state_open(&s->st, s->o->state_path, STATE_RDONLY, &err) != STATE_OPEN_OK) {
		log_error("%s", err ? err : "cannot read the state DB");
		free(err);
		return EXIT_STATE;
	}
	return EXIT_OK;
}

static int open_state_rw(struct session *s)
{
	char *err = NULL;
	enum state_open_rc rc = state_open(&s->st, s->o->state_path, 0, &err);
	if (rc != STATE_OPEN_OK) {
		if (rc == STATE_OPEN_LOCKED)
			log_error("%s", err ? err : "state DB locked");
		else
			log_error("state DB '%s': %s", s->o->state_path, err ? err : "cannot open");
		free(err);
		return EXIT_STATE;
	}
	if (state_bind_accounts(s->st, s->url[0].account, s->url[1].account) < 0) {
		log_error("%s", state_error(s->st));
		return EXIT_STATE;
	}
	return EXIT_OK;
}

static int cmd_copy(struct session *s, bool plan_only)
{
	int rc = parse_urls(s);
	if (rc)
		return rc;
	if (!s->o->state_path) {
		rc = use_default_state(s->o, s->url, !plan_only);
		if (rc)
			return rc;
	}
	if (plan_only) {
		/* plan writes nothing: the state is read if it exists */
		rc = open_state_if_any(s);
		if (rc)
			return rc;
	} else {
		/* the lock first: a second run is refused before it connects */
		rc = open_state_rw(s);
		if (rc)
			return rc;
	}
	rc = get_passwords(s);
	if (rc)
		return rc;
	rc = connect_stores(s);
	if (rc)
		return rc;
	struct plan p;
	rc = make_plan(s, &p);
	if (rc)
		return rc;
	if (plan_only) {
		rc = show_plan(s, &p);
		plan_free(&p);
		return rc;
	}

	int64_t run_id = 0;
	if (state_run_begin(s->st, "copy", &run_id) < 0) {
		log_error("%s", state_error(s->st));
		plan_free(&p);
		return EXIT_STATE;
	}
	install_signals();
	struct ratelimit rl;
	setup_rate(s->o, &s->o->copy, &rl);
	struct progress pg;
	setup_progress(s->o, &s->o->copy, &pg);
	struct copy_report rep;
	char *err = NULL;
	enum store_rc r = copy_run(s->store[0], s->store[1], s->st, &p, &s->o->copy, &rep, &err);
	ratelimit_destroy(&rl);
	s->o->copy.rate = NULL;
	struct plan p_keep = p; /* retire_run needs it after the copy */
	if (!s->o->json)
		print_report(&rep, s->o->quiet);

	int exit_code = run_exit_code(s, r, err, rep.interrupted,
	    r != STORE_OK || rep.refused || rep.failed_folders);
	free(err);
	if (exit_code == EXIT_OK && s->o->delete_after && !copier_stop) {
		struct retire_report rr;
		err = NULL;
		r = retire_run(s->store[0], s->st, &p_keep, s->o->keep_days, &rr, &err);
		if (r == STORE_OK) {
			fprintf(s->o->json ? stderr : stdout,
			    "deleted %llu messages from the source (%llu kept for --keep-days, "
			    "%llu not copied)\n", (unsigned long long)rr.deleted,
			    (unsigned long long)rr.kept, (unsigned long long)rr.not_copied);
			if (rr.refused)
				exit_code = EXIT_PARTIAL;
		} else {
			log_error("--delete-after: %s; nothing more was deleted",
			    err ? err : store_error(s->store[0]));
			exit_code = r == STORE_FATAL ? EXIT_STATE
			    : r == STORE_CONN_BAD ? EXIT_NETWORK : EXIT_PARTIAL;
		}
		free(err);
	}
	emit_json(s, report_copy_json(&rep, s->url[0].display, s->url[1].display, exit_code));
	char *summary = xasprintf("%llu folders, %llu failed", (unsigned long long)rep.nfolders,
	    (unsigned long long)rep.failed_folders);
	if (state_run_end(s->st, run_id, exit_code, (int64_t)rep.copied, (int64_t)rep.bytes,
		(int64_t)rep.flags_set, (int64_t)rep.refused, summary) < 0)
		log_warn("%s", state_error(s->st));
	free(summary);
	copy_report_free(&rep);
	plan_free(&p_keep);
	return exit_code;
}

/* ------------------------------------------------------------------ */
/* mirror */

static int collect_seen_pairs(void *ctx, const struct fpair *fp)
{
	if (!fp->a_uidvalidity || !fp->b_uidvalidity)
		return 0;
	return collect_known(ctx, fp);
}

/* The B->A plan: the same rules, --map turned round, known pairs too. */
static int make_reverse_plan(struct session *s, struct plan *p)
{
	struct plan_rules rr;
	memset(&rr, 0, sizeof rr);
	rr.folders = s->o->rules.folders;
	rr.nfolders = s->o->rules.nfolders;
	rr.excludes = s->o->rules.excludes;
	rr.nexcludes = s->o->rules.nexcludes;
	rr.allow_unmatched = true;
	rr.nmaps = s->o->rules.nmaps;
	rr.maps = xcalloc(rr.nmaps ? rr.nmaps : 1, sizeof *rr.maps);
	for (size_t i = 0; i < rr.nmaps; i++)
		rr.maps[i] = (struct plan_map){s->o->rules.maps[i].dst, s->o->rules.maps[i].src};
	struct known_ctx known = {0};
	if (state_pairs_each(s->st, collect_known, &known) < 0) {
		log_error("%s", state_error(s->st));
		known_free(&known);
		free(rr.maps);
		return EXIT_STATE;
	}
	for (size_t i = 0; i < known.n; i++) {
		const char *t = known.v[i].src_name;
		known.v[i].src_name = known.v[i].dst_name;
		known.v[i].dst_name = t;
	}
	struct plan_side side[2];
	for (int i = 0; i < 2; i++)
		side[i] = (struct plan_side){&s->folders[1 - i], s->store[1 - i]->ns.prefix,
		    s->store[1 - i]->ns.delim, false};
	char *err = NULL;
	int r = plan_build(p, &side[0], &side[1], &rr, known.v, known.n, &err);
	known_free(&known);
	free(rr.maps);
	if (r < 0) {
		log_error("%s", err);
		free(err);
		return EXIT_USAGE;
	}
	return EXIT_OK;
}

static void print_mirror_report(const struct mirror_report *r, bool quiet)
{
	for (size_t i = 0; i < r->nfolders && !quiet; i++) {
		const struct mirror_folder_report *f = &r->folders[i];
		if (!f->copied_ab && !f->copied_ba && !f->flags_a && !f->flags_b && !f->deleted_a &&
		    !f->deleted_b && !f->moved_a && !f->moved_b && !f->kept && !f->held_a &&
		    !f->held_b && !f->failed && !f->created_a && !f->created_b && !f->paired &&
		    !f->renamed && !f->vanished)
			continue;
		printf("  %s <-> %s:", f->a_path, f->b_path);
		if (f->created_a)
			printf(" created on A,");
		if (f->created_b)
			printf(" created on B,");
		printf(" %llu A->B, %llu B->A, flags %llu/%llu, deleted %llu/%llu, moved %llu/%llu",
		    (unsigned long long)f->copied_ab, (unsigned long long)f->copied_ba,
		    (unsigned long long)f->flags_a, (unsigned long long)f->flags_b,
		    (unsigned long long)f->deleted_a, (unsigned long long)f->deleted_b,
		    (unsigned long long)f->moved_a, (unsigned long long)f->moved_b);
		if (f->paired)
			printf(", %llu paired", (unsigned long long)f->paired);
		if (f->kept)
			printf(", %llu kept (deleted on one side, changed on the other)",
			    (unsigned long long)f->kept);
		if (f->held_a || f->held_b)
			printf(", %llu deletions HELD (use --force)",
			    (unsigned long long)(f->held_a + f->held_b));
		if (f->renamed)
			printf(", renamed");
		if (f->vanished)
			printf(", GONE on one side: left alone on the other");
		if (f->failed)
			printf(", FAILED: %s", f->error ? f->error : "error");
		putchar('\n');
	}
	for (size_t i = 0; i < r->copies.nrefusals; i++) {
		const struct refusal *x = &r->copies.refusals[i];
		printf("  not copied: %s UID %u (%llu bytes): %s\n", x->folder, x->uid,
		    (unsigned long long)x->size, x->reason);
	}
	if (r->interrupted)
		printf("interrupted: rerun the same command to resume\n");
	printf("mirrored: %llu A->B, %llu B->A, %llu flag updates, %llu deleted, %llu moved, "
	    "%llu paired, %llu kept, %llu deletions held, %llu folders renamed, "
	    "%llu folders left alone (%.1f s)\n",
	    (unsigned long long)r->copied_ab, (unsigned long long)r->copied_ba,
	    (unsigned long long)r->flags_set, (unsigned long long)r->deleted,
	    (unsigned long long)r->moved, (unsigned long long)r->paired,
	    (unsigned long long)r->kept, (unsigned long long)r->held,
	    (unsigned long long)r->renamed, (unsigned long long)r->vanished,
	    (double)(r->ended_ms - r->started_ms) / 1000.0);
	fflush(stdout);
}

/* One pass: list, plan, mirror. Returns an exit code. */
static int mirror_pass(struct session *s, const struct mirror_opts *mo)
{
	for (int i = 0; i < 2; i++) {
		store_folder_list_free(&s->folders[i]);
		enum store_rc r = s->store[i]->ops->list(s->store[i], &s->folders[i]);
		if (r != STORE_OK) {
			log_error("%s: cannot list folders: %s", i ? "B" : "A",
			    store_error(s->store[i]));
			return r == STORE_FATAL ? exit_for_fatal(s->store[i]->fatal) : EXIT_NETWORK;
		}
	}
	struct plan ab, ba;
	int rc = make_plan(s, &ab);
	if (rc)
		return rc;
	rc = make_reverse_plan(s, &ba);
	if (rc) {
		plan_free(&ab);
		return rc;
	}
	/* pairs seen on both sides once: a folder gone from one of them was
	 * renamed or removed there, not to be created again */
	struct known_ctx kc = {0};
	if (state_pairs_each(s->st, collect_seen_pairs, &kc) < 0) {
		log_error("%s", state_error(s->st));
		plan_free(&ab);
		plan_free(&ba);
		known_free(&kc);
		return EXIT_STATE;
	}
	struct mirror_known *mk = xcalloc(kc.n ? kc.n : 1, sizeof *mk);
	for (size_t i = 0; i < kc.n; i++)
		mk[i] = (struct mirror_known){kc.v[i].src_name, kc.v[i].dst_name, true};
	struct mirror_pairs pairs;
	mirror_pairs_build(&pairs, &ab, &ba, mk, kc.n);
	free(mk);
	known_free(&kc);
	plan_free(&ab);
	plan_free(&ba);
	int64_t run_id = 0;
	if (state_run_begin(s->st, "mirror", &run_id) < 0) {
		log_error("%s", state_error(s->st));
		mirror_pairs_free(&pairs);
		return EXIT_STATE;
	}
	struct mirror_report rep;
	char *err = NULL;
	enum store_rc r = mirror_run(s->store[0], s->store[1], s->st, &pairs, mo, &rep, &err);
	mirror_pairs_free(&pairs);
	if (!s->o->json)
		print_mirror_report(&rep, s->o->quiet);
	int exit_code = run_exit_code(s, r, err, rep.interrupted,
	    r != STORE_OK || rep.held || rep.kept || rep.copies.refused ||
	    rep.failed_folders || rep.vanished);
	free(err);
	emit_json(s, report_mirror_json(&rep, s->url[0].display, s->url[1].display, exit_code));
	char *summary = xasprintf("%llu A->B, %llu B->A, %llu deleted, %llu held",
	    (unsigned long long)rep.copied_ab, (unsigned long long)rep.copied_ba,
	    (unsigned long long)rep.deleted, (unsigned long long)rep.held);
	if (state_run_end(s->st, run_id, exit_code, (int64_t)(rep.copied_ab + rep.copied_ba), 0,
		(int64_t)rep.flags_set, (int64_t)rep.copies.refused, summary) < 0)
		log_warn("%s", state_error(s->st));
	free(summary);
	mirror_report_free(&rep);
	return exit_code;
}

/* Sleeps up to ms, waking early when asked to stop. */
static void nap(long ms)
{
	while (ms > 0 && !copier_stop) {
		long step = ms > 200 ? 200 : ms;
		struct timespec ts = {0, step * 1000000L};
		nanosleep(&ts, NULL);
		ms -= step;
	}
}

/*
 * Between two passes of --watch: IDLE on both INBOXes where the servers
 * can, so that new mail and changes there start a pass within a second;
 * every other folder is looked at by the pass that the --interval timeout
 * starts anyway. IDLE is renewed before the 29 minutes servers allow.
 */
static void wait_for_change(struct session *s, long ms)
{
	struct store *st[2] = {s->store[0], s->store[1]};
	bool idling[2] = {false, false};
	struct pollfd pfd[2];
	int n = 0;
	if (ms > 25 * 60 * 1000)
		ms = 25 * 60 * 1000;
	for (int i = 0; i < 2; i++) {
		if (!st[i]->caps.idle || !st[i]->ops->idle_begin)
			continue;
		struct box_status bs;
		memset(&bs, 0, sizeof bs);
		enum store_rc r = st[i]->ops->select(st[i], "INBOX", true, &bs);
		box_status_clear(&bs);
		if (r == STORE_OK)
			r = st[i]->ops->idle_begin(st[i]);
		if (r != STORE_OK)
			continue;
		idling[i] = true;
		bool pending = false;
		int fd = st[i]->ops->idle_fd(st[i], &pending);
		if (pending)
			ms = 0;
		if (fd >= 0)
			pfd[n++] = (struct pollfd){fd, POLLIN, 0};
	}
	if (!n) {
		nap(ms);
	} else {
		/* wake up for a change, the interval, or a signal (checked often) */
		while (ms > 0 && !copier_stop) {
			int step = ms > 200 ? 200 : (int)ms;
			int r = poll(pfd, (nfds_t)n, step);
			if (r != 0)
				break;
			ms -= step;
		}
	}
	for (int i = 0; i < 2; i++)
		if (idling[i] && st[i]->ops->idle_end(st[i]) != STORE_OK)
			log_info("%s: IDLE ended badly: %s", st[i]->label, store_error(st[i]));
}

static int cmd_mirror(struct session *s)
{
	int rc = parse_urls(s);
	if (rc)
		return rc;
	if (s->url[0].proto != PROTO_IMAP) {
		log_error("mirror: '%s' is not IMAP (a POP3 account can only be a copy source)",
		    s->url[0].display);
		return EXIT_USAGE;
	}
	if (s->o->rules.into) {
		log_error("mirror: --into does not apply (use --map)");
		return EXIT_USAGE;
	}
	if (!s->o->state_path) {
		rc = use_default_state(s->o, s->url, true);
		if (rc)
			return rc;
	}
	rc = open_state_rw(s);
	if (rc)
		return rc;
	rc = get_passwords(s);
	if (rc)
		return rc;
	rc = connect_stores(s);
	if (rc)
		return rc;
	struct mirror_opts mo;
	mirror_opts_default(&mo);
	mo.copy.batch_msgs = s->o->copy.batch_msgs;
	mo.force = s->o->force;
	if (s->o->max_delete >= 0)
		mo.max_delete = (unsigned)s->o->max_delete;
	if (s->o->max_delete_percent >= 0)
		mo.max_delete_percent = (unsigned)s->o->max_delete_percent;
	install_signals();
	struct ratelimit rl;
	setup_rate(s->o, &mo.copy, &rl);
	long backoff = 1000;
	for (;;) {
		rc = mirror_pass(s, &mo);
		if (!s->o->watch || copier_stop)
			break;
		if (rc == EXIT_NETWORK) {
			/* the network went: reconnect both sides, backing off */
			nap(backoff);
			backoff = backoff * 2 > 300000 ? 300000 : backoff * 2;
			for (int i = 0; i < 2 && !copier_stop; i++) {
				enum store_rc r = store_reconnect(s->store[i], 1);
				if (r == STORE_FATAL)
					return exit_for_fatal(s->store[i]->fatal);
			}
			continue;
		}
		if (rc != EXIT_OK && rc != EXIT_PARTIAL)
			break;
		backoff = 1000;
		wait_for_change(s, s->o->interval * 1000);
		if (copier_stop)
			break;
	}
	/* --watch is stopped by a signal: a clean stop (the state is
	 * consistent at every point), unless it cut a pass short */
	if (copier_stop && s->o->watch && rc == EXIT_INTERRUPTED)
		return EXIT_INTERRUPTED;
	return rc;
}

/* ------------------------------------------------------------------ */
/* verify */

static int cmd_verify(struct session *s)
{
	int rc = parse_urls(s);
	if (rc)
		return rc;
	/* the copy's plan: its earlier pairs come from the state, read (never
	 * written) if there is one; without it, the rules alone */
	char *dir = s->o->state_path ? NULL : default_state_dir();
	if (dir) {
		/* reading only: cannot fail once there is a directory */
		use_default_state(s->o, s->url, false);
		free(dir);
	}
	rc = open_state_if_any(s);
	if (rc)
		return rc;
	rc = get_passwords(s);
	if (rc)
		return rc;
	rc = connect_stores(s);
	if (rc)
		return rc;
	struct plan p;
	rc = make_plan(s, &p);
	if (rc)
		return rc;
	bool pop3 = s->url[0].proto == PROTO_POP3;
	struct verify_opts vo = {.deep = s->o->deep, .no_flags = pop3, .no_dates = pop3};
	struct verify_report rep;
	char *err = NULL;
	enum store_rc r = verify_run(s->store[0], s->store[1], &p, &vo, &rep, &err);
	plan_free(&p);
	if (r == STORE_FATAL) {
		struct store *bad = s->store[0]->fatal ? s->store[0] :
		    s->store[1]->fatal ? s->store[1] : NULL;
		rc = bad ? exit_for_fatal(bad->fatal) : EXIT_NETWORK;
	} else if (r != STORE_OK) {
		rc = EXIT_NETWORK;
	} else {
		rc = verify_all_there(&rep) ? EXIT_OK : EXIT_PARTIAL;
	}
	if (s->o->json || s->o->report) {
		char *json = NULL;
		size_t len = 0;
		FILE *m = open_memstream(&json, &len);
		if (m) {
			verify_print_json(m, &rep, s->url[0].display, s->url[1].display, rc);
			fclose(m);
			emit_json(s, json); /* --json, --report FILE; frees json */
		}
	}
	if (!s->o->json && (!s->o->quiet || rc))
		verify_print_text(stdout, &rep, s->url[0].display, s->url[1].display,
		    s->o->verbose ? 0 : 20);
	if (err)
		log_error("%s", err);
	free(err);
	verify_report_free(&rep);
	return rc;
}

/* ------------------------------------------------------------------ */
/* status */

struct status_ctx {
	struct state *st;
	uint64_t pairs;
};

static int show_bad(void *ctx, const struct msg_row *r)
{
	printf("      %s UID %u (%llu bytes)%s%s\n", r->state == MSG_PENDING ? "pending" : "refused",
	    r->a_uid, (unsigned long long)r->size, r->error ? ": " : "", r->error ? r->error : "");
	return 0;
}

static int show_pair(void *ctx, const struct fpair *fp)
{
	struct status_ctx *sc = ctx;
	int64_t counts[3];
	if (state_pair_counts(sc->st, fp->id, counts) < 0)
		return -1;
	char *a = plan_path_of(fp->a_name, "", '/');
	printf("  %s -> %s: %lld copied, %lld pending, %lld refused%s\n", a ? a : fp->a_name,
	    fp->b_name, (long long)counts[MSG_SYNCED], (long long)counts[MSG_PENDING],
	    (long long)counts[MSG_REFUSED], fp->last_done ? "" : " (never completed)");
	free(a);
	if (counts[MSG_PENDING] && state_msgs_each(sc->st, fp->id, MSG_PENDING, show_bad, sc) < 0)
		return -1;
	if (counts[MSG_REFUSED] && state_msgs_each(sc->st, fp->id, MSG_REFUSED, show_bad, sc) < 0)
		return -1;
	sc->pairs++;
	return 0;
}

static int show_run(void *ctx, const struct run_row *r)
{
	char when[32];
	time_t t = (time_t)r->started;
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(when, sizeof when, "%Y-%m-%d %H:%M:%SZ", &tm);
	if (!r->ended) {
		printf("    %s %s: did not finish (killed or running)\n", when, r->command);
		return 0;
	}
	printf("    %s %s: exit %d, %lld copied (%lld bytes), %lld flag updates, %lld refused, "
	    "%lld s%s%s\n", when, r->command, r->exit_code, (long long)r->copied,
	    (long long)r->bytes, (long long)r->flags_set, (long long)r->refused,
	    (long long)(r->ended - r->started), r->summary ? "; " : "",
	    r->summary ? r->summary : "");
	return 0;
}

static int status_one(const char *path)
{
	struct state *st = NULL;
	char *err = NULL;
	if (state_open(&st, path, STATE_RDONLY, &err) != STATE_OPEN_OK) {
		log_error("%s", err ? err : "cannot open state");
		free(err);
		return EXIT_STATE;
	}
	printf("state: %s (schema %d)\n", path, state_schema_version(st));
	struct status_ctx sc = {st, 0};
	int rc = state_pairs_each(st, show_pair, &sc);
	if (rc < 0) {
		log_error("%s", state_error(st));
		state_close(&st);
		return EXIT_STATE;
	}
	if (!sc.pairs)
		printf("  no folder copied yet\n");
	printf("  last runs:\n");
	if (state_runs_each(st, 5, show_run, NULL) < 0) {
		log_error("%s", state_error(st));
		state_close(&st);
		return EXIT_STATE;
	}
	state_close(&st);
	return EXIT_OK;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmd_status(struct options *o, int nargs)
{
	if (nargs)
		return cli_usage_error("status takes no URL; use --state FILE");
	if (o->state_path)
		return status_one(o->state_path);
	char *dir = default_state_dir();
	if (!dir)
		return cli_usage_error("no --state given and neither XDG_STATE_HOME nor HOME is set");
	DIR *d = opendir(dir);
	if (!d) {
		if (errno == ENOENT) {
			printf("no state in %s\n", dir);
			free(dir);
			return EXIT_OK;
		}
		log_error("cannot read '%s': %s", dir, strerror(errno));
		free(dir);
		return EXIT_STATE;
	}
	char **names = NULL;
	size_t n = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);
		if (l > 3 && !strcmp(de->d_name + l - 3, ".db"))
			push_str(&names, &n, de->d_name);
	}
	closedir(d);
	xqsort(names, n, sizeof *names, cmp_str);
	int rc = EXIT_OK;
	for (size_t i = 0; i < n; i++) {
		char *path = xasprintf("%s/%s", dir, names[i]);
		int r = status_one(path);
		if (r)
			rc = r;
		free(path);
		free(names[i]);
	}
	free(names);
	if (!n)
		printf("no state in %s\n", dir);
	free(dir);
	return rc;
}

/* ------------------------------------------------------------------ */

static void options_init(struct options *o)
{
	memset(o, 0, sizeof *o);
	copy_opts_default(&o->copy);
	o->timeout_s = 120;
	o->interval = 60;
	o->max_delete = -1;
	o->max_delete_percent = -1;
}

int cli_check_options(int argc, char **argv)
{
	struct options o;
	options_init(&o);
	o.command = argv[0];
	int rc = parse_options(&o, argc, argv);
	plan_rules_free(&o.rules);
	free(o.state_path);
	return rc;
}

int cli_main(int argc, char **argv)
{
	struct options o;
	options_init(&o);
	struct job job; /* --job FILE, --preset NAME */
	job_init(&job);

	if (argc < 2) {
		fputs(usage_main, stderr);
		return EXIT_USAGE;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
		fputs(usage_main, stdout);
		return EXIT_OK;
	}
	if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
		printf("postino %s\n", POSTINO_VERSION);
		return EXIT_OK;
	}
	if (!strcmp(cmd, "batch"))
		return batch_main(argc - 1, argv + 1);
	if (strcmp(cmd, "plan") && strcmp(cmd, "copy") && strcmp(cmd, "status") &&
	    strcmp(cmd, "mirror") && strcmp(cmd, "verify")) {
		log_error("unknown command '%s' (postino --help lists them)", cmd);
		return EXIT_USAGE;
	}
	o.command = cmd;
	int pargc = argc - 1;    /* what parse_options reads: the command line, */
	char **pargv = argv + 1; /* after a job file's and a preset's options */
	int rc = parse_options(&o, pargc, pargv);
	if (rc >= 0)
		goto out;
	if (o.job_file || o.preset) {
		char *err = NULL;
		if (job_load(&job, o.job_file, o.preset, &err) < 0) {
			rc = cli_usage_error("%s", err);
			free(err);
			goto out;
		}
		job_argv(&job, pargc, pargv, strcmp(cmd, "status") ? pargc - optind : 1);
		plan_rules_free(&o.rules);
		free(o.state_path);
		options_init(&o);
		o.command = cmd;
		pargc = job.argc;
		pargv = job.argv;
		rc = parse_options(&o, pargc, pargv);
		if (rc >= 0)
			goto out;
	}
	int nargs = pargc - optind;
	char **args = pargv + optind;

	if (o.trace)
		log_set_level(LOG_TRACE);
	else if (o.quiet)
		log_set_level(LOG_ERROR);
	else if (o.verbose)
		log_set_level(o.verbose > 1 ? LOG_DEBUG : LOG_INFO);
	if (o.log_file && log_open_file(o.log_file) < 0) {
		rc = cli_usage_error("--log '%s': %s", o.log_file, strerror(errno));
		goto out;
	}

	if (!strcmp(cmd, "status")) {
		rc = cmd_status(&o, nargs);
		goto out;
	}
	if (nargs != 2) {
		rc = cli_usage_error("%s needs two URLs, SRC and DST (postino %s --help)", cmd, cmd);
		goto out;
	}
	o.url[0] = args[0];
	o.url[1] = args[1];
	net_global_init();
	struct session s;
	memset(&s, 0, sizeof s);
	s.o = &o;
	if (!strcmp(cmd, "mirror"))
		rc = cmd_mirror(&s);
	else if (!strcmp(cmd, "verify"))
		rc = cmd_verify(&s);
	else
		rc = cmd_copy(&s, !strcmp(cmd, "plan") || o.dry_run);
	session_release(&s);
out:
	plan_rules_free(&o.rules);
	free(o.state_path);
	job_release(&job);
	log_close_file();
	return rc;
}
