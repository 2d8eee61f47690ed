/*
 * message.c — header lookup, Message-ID, IMAP date formatting.
 */
#include "message.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util.h"

#include <libetpan/libetpan.h>

size_t msg_header_len(const char *msg, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (msg[i] != '\n')
			continue;
		/* an empty line: "\n\n" or "\n\r\n" */
		if (i + 1 < len && msg[i + 1] == '\n')
			return i + 2;
		if (i + 2 < len && msg[i + 1] == '\r' && msg[i + 2] == '\n')
			return i + 3;
	}
	return len;
}

static bool is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

char *msg_header_get(const char *hdr, size_t len, const char *name)
{
	size_t nlen = strlen(name);
	size_t i = 0;
	while (i < len) {
		/* i is at the start of a line */
		size_t eol = i;
		while (eol < len && hdr[eol] != '\n')
			eol++;
		if (eol - i > nlen && !strncasecmp(hdr + i, name, nlen)) {
			size_t p = i + nlen;
			while (p < eol && is_wsp(hdr[p]))
				p++;
			if (p < eol && hdr[p] == ':') {
				struct buf b = BUF_INIT;
				p++;
				for (;;) {
					size_t e = eol;
					if (e > p && hdr[e - 1] == '\r')
						e--;
					buf_add(&b, hdr + p, e - p);
					/* continuation lines start with white space */
					if (eol + 1 < len && is_wsp(hdr[eol + 1])) {
						p = eol + 1;
						eol = p;
						while (eol < len && hdr[eol] != '\n')
							eol++;
						continue;
					}
					break;
				}
				char *s = b.s ? b.s : xstrdup("");
				size_t a = 0, z = strlen(s);
				while (a < z && (is_wsp(s[a]) || s[a] == '\r' || s[a] == '\n'))
					a++;
				while (z > a && (is_wsp(s[z - 1]) || s[z - 1] == '\r' || s[z - 1] == '\n'))
					z--;
				char *r = xstrndup(s + a, z - a);
				free(s);
				return r;
			}
		}
		if (eol - i == 0 || (eol - i == 1 && hdr[i] == '\r'))
			break; /* end of the header block */
		i = eol + 1;
	}
	return NULL;
}

char *msg_message_id(const char *hdr, size_t len)
{
	char *v = msg_header_get(hdr, len, "Message-ID");
	if (!v)
		return NULL;
	const char *lt = strchr(v, '<');
	const char *gt = lt ? strchr(lt, '>') : NULL;
	const char *a = v, *z = v + strlen(v);
	if (lt && gt) {
		a = lt + 1;
		z = gt;
	}
	struct buf b = BUF_INIT;
	for (const char *p = a; p < z; p++)
		if (!is_wsp(*p) && *p != '\r' && *p != '\n')
			buf_addc(&b, *p);
	free(v);
	if (!b.len) {
		buf_release(&b);
		return NULL;
	}
	return buf_detach(&b);
}

void imap_date_format(char out[32], int64_t t, int tzoff_min)
{
	static const char *const mon[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	time_t local = (time_t)(t + (int64_t)tzoff_min * 60);
	struct tm tm;
	gmtime_r(&local, &tm);
	int z = tzoff_min < 0 ? -tzoff_min : tzoff_min;
	snprintf(out, 32, "%02d-%s-%04d %02d:%02d:%02d %c%02d%02d", tm.tm_mday,
	    mon[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec,
	    tzoff_min < 0 ? '-' : '+', (z / 60) % 100, z % 60);
}

int msg_date_parse(const char *s, size_t len, int64_t *t_r, int *tzoff_r)
{
	size_t idx = 0;
	struct mailimf_date_time *dt = NULL;
	/* mailimf wants a NUL-terminated buffer it may read to the end of */
	char *copy = xstrndup(s, len);
	int r = mailimf_date_time_parse(copy, len, &idx, &dt);
	/* libetpan 1.9.4 returns the zone "UT" (also the "UT" of "UTC") as 1,
	 * which reads as +0001 */
	bool ut = r == MAILIMF_NO_ERROR && dt && idx >= 2 && copy[idx - 2] == 'U' &&
	    copy[idx - 1] == 'T';
	free(copy);
	if (r != MAILIMF_NO_ERROR || !dt)
		return -1;
	if (ut)
		dt->dt_zone = 0;
	/* RFC 5322 4.3: a two-digit year is 20yy below 50, else 19yy; a
	 * three-digit year is 1900 + it */
	if (dt->dt_year >= 0 && dt->dt_year < 50)
		dt->dt_year += 2000;
	else if (dt->dt_year >= 50 && dt->dt_year < 1000)
		dt->dt_year += 1900;
	int ok = dt->dt_year >= 1900 && dt->dt_year < 10000 && dt->dt_month >= 1 &&
	    dt->dt_month <= 12 && dt->dt_day >= 1 && dt->dt_day <= 31 && dt->dt_hour < 24 &&
	    dt->dt_min < 60 && dt->dt_sec <= 60;
	if (ok) {
		struct tm tm = {0};
		tm.tm_year = dt->dt_year - 1900;
		tm.tm_mon = dt->dt_month - 1;
		tm.tm_mday = dt->dt_day;
		tm.tm_hour = dt->dt_hour;
		tm.tm_min = dt->dt_min;
		tm.tm_sec = dt->dt_sec;
		int z = dt->dt_zone < 0 ? -dt->dt_zone : dt->dt_zone;
		int off = (z / 100) * 60 + z % 100;
		if (dt->dt_zone < 0)
			off = -off;
		*tzoff_r = off;
		*t_r = (int64_t)timegm(&tm) - (int64_t)off * 60;
	}
	mailimf_date_time_free(dt);
	return ok ? 0 : -1;
}

int msg_arrival_date(const char *hdr, size_t len, int64_t *t_r, int *tzoff_r)
{
	char *v = msg_header_get(hdr, len, "Received");
	if (v) {
		/* the date follows the last ';' */
		const char *semi = strrchr(v, ';');
		int r = semi ? msg_date_parse(semi + 1, strlen(semi + 1), t_r, tzoff_r) : -1;
		free(v);
		if (r == 0)
			return 0;
	}
	v = msg_header_get(hdr, len, "Date");
	if (v) {
		int r = msg_date_parse(v, strlen(v), t_r, tzoff_r);
		free(v);
		if (r == 0)
			return 0;
	}
	return -1;
}
