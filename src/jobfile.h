/*
 * jobfile.h — job files and provider presets (docs/jobfiles.md).
 *
 * A job file is an INI-like text that names both accounts, where their
 * passwords come from, the folder rules and the options of a run, so that
 * `postino copy --job FILE` repeats the same job. A preset (plans/NAME.ini)
 * is the same format without accounts: the facts of a provider (server,
 * connections, batch sizes, folders to leave out) selected with
 * `--preset NAME` or `preset = NAME` in a job file.
 *
 * Both are turned into command-line options, which go before the real
 * command line: what the command line says overrides the file, and the
 * file overrides its presets. Every value is checked here, so that an
 * error names the file and line ("job.ini:12: unknown key 'foldr'"). A
 * password in a job file is refused: passwords come from passcmd, passfile
 * or the environment only.
 */
#ifndef POSTINO_JOBFILE_H
#define POSTINO_JOBFILE_H

#include <stddef.h>

struct job {
	/* options, "--key=value" or "--flag": those of the presets, in the
	 * order they apply, then the job file's own */
	char **opts;
	size_t nopts;
	char **own;
	size_t nown;
	char *url[2];       /* from [source] / [destination], or NULL */
	char *preset_name;  /* top-level `preset =` of the job file, or NULL */
	/* the merged argument vector made by job_argv() */
	char **argv;
	int argc;
};

void job_init(struct job *j);
void job_release(struct job *j);

/*
 * Loads the job file at path (NULL: none) and the preset named on the
 * command line (NULL: none) into j. Presets come first (the job file's
 * `preset =`, those of its account sections, then the command line's),
 * then the job file's options (job_argv() puts them in that order). Returns 0, or -1 with *err_r set to one line
 * that names the file and line at fault (caller frees).
 */
int job_load(struct job *j, const char *path, const char *preset, char **err_r);

/*
 * Parses a job file from memory (name is used in messages and to resolve
 * relative paths: its directory): presets it names go to j->opts, its own
 * options to j->own. For tests and job_load().
 */
int job_parse(struct job *j, const char *name, const char *text, size_t len, char **err_r);

/* A preset's [server]: the defaults of an account that names the preset. */
struct job_server {
	char *host;      /* NULL when absent */
	unsigned port;   /* 0: the scheme's */
	char *tls;       /* "implicit", "starttls", "none", or NULL */
	char *protocol;  /* "imap", "pop3", or NULL */
	char *auth;      /* SASL mechanism, or NULL */
};
void job_server_release(struct job_server *srv);

/*
 * Loads preset NAME (or a file, if NAME holds a '/' or ends in ".ini") and
 * adds its options to j->opts; srv (if not NULL) gets its [server].
 * Returns 0, or -1 with *err_r set (caller frees).
 */
int job_load_preset(struct job *j, const char *name, struct job_server *srv, char **err_r);

/*
 * The directories searched for presets, in order: $POSTINO_PLANS_DIR,
 * $XDG_CONFIG_HOME/postino/plans (or ~/.config/postino/plans), and the
 * installed plans directory. Returns the number written to dirs (at most
 * 3; each caller frees).
 */
size_t job_preset_dirs(char *dirs[3]);

/*
 * The argument vector for parse_options(): argv[0] (the command), the
 * presets' options, the job file's, then argv[1..argc-1] (the command line, which thus wins).
 * If the command line has no positional argument (npos == 0) and the job
 * names both accounts, their URLs are appended. j keeps the memory.
 */
void job_argv(struct job *j, int argc, char **argv, int npos);

#endif
