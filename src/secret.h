/*
 * secret.h — where passwords come from: never the command line.
 *
 * For account N (1 or 2), in order: --passcmdN 'COMMAND' (first line of its
 * standard output, run with /bin/sh -c), --passfileN FILE (first line; the
 * file should not be readable by others: a warning if it is), the
 * environment variable POSTINO_PASSWORDN. The value is kept in memory locked
 * against swapping where possible and wiped on release.
 */
#ifndef POSTINO_SECRET_H
#define POSTINO_SECRET_H

struct secret_source {
	const char *cmd;   /* --passcmdN */
	const char *file;  /* --passfileN */
	const char *env;   /* name of the environment variable */
};

/*
 * Returns a newly allocated password, or NULL with *err set (one line naming
 * the source at fault; caller frees). If no source is configured, returns
 * NULL with *err = NULL.
 */
char *secret_get(const struct secret_source *src, char **err);

/* Wipes and frees. */
void secret_free(char *s);

#endif
