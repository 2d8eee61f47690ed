/*
 * report.h — end-of-run reports as JSON (--json on stdout, --report FILE).
 *
 * The schema is stable: fields are only ever added. See docs/reports.md.
 */
#ifndef POSTINO_REPORT_H
#define POSTINO_REPORT_H

#include "copier.h"
#include "mirror.h"
#include "util.h"

/* The JSON document of a copy run; caller frees. */
char *report_copy_json(const struct copy_report *r, const char *src, const char *dst,
    int exit_code);
/* The JSON document of a mirror pass; caller frees. */
char *report_mirror_json(const struct mirror_report *r, const char *a, const char *b,
    int exit_code);
/* Writes text to path, created 0600. 0, or -1 with errno. */
int report_write(const char *path, const char *text);

/* JSON string escaping (invalid UTF-8 becomes U+FFFD). */
void json_add_str(struct buf *b, const char *s);

#endif
