/*
 * cli.h — the command line: postino plan|copy|status|--help|--version.
 */
#ifndef POSTINO_CLI_H
#define POSTINO_CLI_H

/* Exit codes (documented in docs/postino.1 and README). */
enum {
	EXIT_OK = 0,          /* everything done */
	EXIT_PARTIAL = 1,     /* finished, but some messages were not copied */
	EXIT_USAGE = 2,       /* bad command line, URL, job file, folder rule */
	EXIT_NETWORK = 3,     /* cannot connect, or the connection kept failing */
	EXIT_STATE = 4,       /* state DB locked by another run, or unusable */
	EXIT_AUTH = 5,        /* login refused */
	EXIT_TLS = 6,         /* TLS: certificate/host check failed, no STARTTLS */
	EXIT_INTERRUPTED = 7, /* stopped by a signal; rerun to resume */
	EXIT_SOFTWARE = 70,   /* internal error (EX_SOFTWARE) */
};

int cli_main(int argc, char **argv);

/*
 * Parses argv (argv[0] is the command, e.g. "copy") as that command's
 * options, without running anything: for `postino batch`, which passes
 * options on to each account's copy. Returns -1 if they are all valid,
 * else the exit code (the one-line error is already logged).
 */
int cli_check_options(int argc, char **argv);

/* Logs a bad-usage message (one line) and returns EXIT_USAGE, for
 * `return cli_usage_error(...)`. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
