/*
 * test_batch.c — the accounts CSV of `postino batch` and --shard K/N.
 *
 * The parser must take what spreadsheets write (RFC 4180 quoting, CRLF,
 * a BOM, empty rows) and refuse everything doubtful with FILE:LINE and the
 * column, before any account runs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "batch.h"
#include "util.h"

static int parse(struct batch_csv *c, const char *text, char **err)
{
	*err = NULL;
	return batch_csv_parse(c, "/srv/mig/accounts.csv", text, strlen(text), err);
}

static void expect_error(const char *text, const char *want)
{
	struct batch_csv c;
	char *err = NULL;
	assert_int_equal(parse(&c, text, &err), -1);
	assert_non_null(err);
	if (strcmp(err, want) != 0)
		fail_msg("error\n  got:  %s\n  want: %s\nfor: %s", err, want, text);
	assert_int_equal(c.n, 0);
	assert_null(c.rows);
	free(err);
}

static void test_valid(void **state)
{
	const char *text =
	    "\xEF\xBB\xBF# migration of example.org, wave 1\r\n"
	    "id, source ,destination,passfile1,passcmd2,auth2,description\r\n"
	    "\r\n"
	    "alice,imaps://alice%40example.org@old.example.org,"
	    "imaps://alice@new.example.net,pass/alice,\"pass show 'new/alice'\",,"
	    "\"the boss, \"\"Alice\"\"\"\r\n"
	    "# bob's old password is in his home\n"
	    "  bob@example.org  ,\"imap://bob@old.example.org\",imaps://bob@new.example.net,"
	    "~/bob.pass,\"printf '%s\\n' \"\"x,y\"\"\",XOAUTH2,\"two\n"
	    "lines\"\n"
	    ",,,,,,\n"
	    "   \t\n"
	    "c.3,pop3s://c@pop.example.org,imaps://c@new.example.net,/abs/c,cmd,,\n";
	struct batch_csv c;
	char *err = NULL;
	setenv("HOME", "/home/admin", 1);
	assert_int_equal(parse(&c, text, &err), 0);
	assert_null(err);
	assert_int_equal(c.n, 3);

	struct batch_row *a = &c.rows[0];
	assert_string_equal(a->id, "alice");
	assert_int_equal(a->line, 4);
	assert_int_equal(a->index, 1);
	assert_string_equal(a->url[0], "imaps://alice%40example.org@old.example.org");
	assert_string_equal(a->display[0], "imaps://alice%40example.org@old.example.org:993");
	assert_string_equal(a->display[1], "imaps://alice@new.example.net:993");
	assert_string_equal(a->passfile[0], "/srv/mig/pass/alice");
	assert_null(a->passcmd[0]);
	assert_null(a->passfile[1]);
	assert_string_equal(a->passcmd[1], "pass show 'new/alice'");
	assert_null(a->auth[0]);
	assert_null(a->auth[1]);
	assert_null(a->job);

	struct batch_row *b = &c.rows[1];
	assert_string_equal(b->id, "bob@example.org"); /* spaces around dropped */
	assert_int_equal(b->line, 6);
	assert_int_equal(b->index, 2);
	assert_string_equal(b->passfile[0], "/home/admin/bob.pass");
	assert_string_equal(b->passcmd[1], "printf '%s\\n' \"x,y\"");
	assert_string_equal(b->auth[1], "xoauth2");
	assert_string_equal(b->display[1], "imaps://bob@new.example.net:993?auth=xoauth2");

	/* the empty ",,," row and the blank line are skipped; the quoted line
	 * break in row 2 counts for the line numbers */
	struct batch_row *d = &c.rows[2];
	assert_string_equal(d->id, "c.3");
	assert_int_equal(d->line, 10);
	assert_int_equal(d->index, 3);
	assert_string_equal(d->passfile[0], "/abs/c");
	assert_string_equal(d->display[0], "pop3s://c@pop.example.org:995");
	batch_csv_release(&c);
	assert_int_equal(c.n, 0);
}

static void test_job_column(void **state)
{
	struct batch_csv c;
	char *err = NULL;
	/* with a job file, URLs and passwords may come from the job */
	assert_int_equal(parse(&c,
	    "id,source,destination,passfile1,passfile2,job,preset\n"
	    "a,,,,,jobs/a.ini,\n"
	    "b,imaps://b@x,imaps://b@y,,,../b.ini,gmail\n", &err), 0);
	assert_int_equal(c.n, 2);
	assert_string_equal(c.rows[0].job, "/srv/mig/jobs/a.ini");
	assert_null(c.rows[0].url[0]);
	assert_null(c.rows[0].display[0]);
	assert_string_equal(c.rows[1].job, "/srv/mig/../b.ini");
	assert_string_equal(c.rows[1].preset, "gmail");
	batch_csv_release(&c);

	/* a header with only a job column */
	assert_int_equal(parse(&c, "ID,Job\nx,x.ini\n", &err), 0);
	assert_int_equal(c.n, 1);
	batch_csv_release(&c);

	/* a file relative to a CSV named without a directory */
	err = NULL;
	static const char rel[] = "id,src,dst,passfile1,passfile2\nq,imaps://q@x,imaps://q@y,p1,p2\n";
	assert_int_equal(batch_csv_parse(&c, "acc.csv", rel, strlen(rel), &err), 0);
	assert_string_equal(c.rows[0].passfile[0], "./p1");
	batch_csv_release(&c);
}

static void test_errors(void **state)
{
	static const char hdr[] = "id,source,destination,passfile1,passfile2\n";
	char *t;

	expect_error("# only a comment\n\n",
	    "/srv/mig/accounts.csv:3: no header row (id,source,destination,...)");
	expect_error("id,source,destinaton\n",
	    "/srv/mig/accounts.csv:1: unknown column 'destinaton' in the header (columns: id, "
	    "source, destination, passfile1, passcmd1, passfile2, passcmd2, auth1, auth2, job, "
	    "preset, description)");
	expect_error("id,source,destination,password1\n",
	    "/srv/mig/accounts.csv:1: column 'password1': a password column is refused: use "
	    "passfile1/passfile2 (a file per password) or passcmd1/passcmd2 (a command)");
	expect_error("source,destination\n",
	    "/srv/mig/accounts.csv:1: the header has no 'id' column (the first line that is "
	    "not a comment is the header)");
	expect_error("id,source\n",
	    "/srv/mig/accounts.csv:1: the header needs 'source' and 'destination' columns, or "
	    "a 'job' column");
	expect_error("id,source,src,destination\n",
	    "/srv/mig/accounts.csv:1: column 'source' is named twice in the header");

	t = xasprintf("%s\n# c\na,imaps://a@x,imaps://a@y,f\n", hdr);
	expect_error(t, "/srv/mig/accounts.csv:4: 4 fields, but the header has 5 columns");
	free(t);
	t = xasprintf("%sa,imaps://a@x,imaps://a@y,\"f,\n\ng\n", hdr);
	expect_error(t, "/srv/mig/accounts.csv:2: a quoted field is not closed (its quote "
	    "opens on this line)");
	free(t);
	t = xasprintf("%sa,imaps://a@x,imaps://a@y,\"f\"x,g\n", hdr);
	expect_error(t, "/srv/mig/accounts.csv:2: text after the closing quote of field 4 "
	    "(inside quotes, write a quote as \"\")");
	free(t);
	t = xasprintf("%sa,imaps://a@x,imaps://a@y,my\"file,g\n", hdr);
	expect_error(t, "/srv/mig/accounts.csv:2: a quote inside unquoted field 4: quote the "
	    "whole field and write the quote as \"\"");
	free(t);
	t = xasprintf("%s,imaps://a@x,imaps://a@y,f,g\n", hdr);
	expect_error(t, "/srv/mig/accounts.csv:2: column 'id': empty: every row needs an id");
	free(t);
	t = xasprintf("%sa/b,imaps://a@x,imaps://a@y,f,g\n", hdr);
	expect_error(t, "/srv/mig/accounts.csv:2: column 'id': 'a/b': use up to 64 letters, "
	    "digits and . _ - @ + (not first: . -), it names the account's files");
	free(t);
	t = xasprintf("%s..,imaps://a@x,imaps://a@y,f,g\n", hdr);
	expect_error(t, "/srv/mig/accounts.csv:2: column 'id': '..': use up to 64 letters, "
	    "digits and . _ - @ + (not first: . -), it names the account's files");
	free(t);
	t = xasprintf("%sa,imaps://a@x,imaps://a@y,f,g\n\nb,imaps://b@x,imaps://b@y,f,g\n"
	    "a,imaps://c@x,imaps://c@y,f,g\n", hdr);
	expect_error(t, "/srv/mig/accounts.csv:5: column 'id': 'a' again (first on line 2): "
	    "ids must be unique");
	free(t);
	t = xasprintf("%sa,ftp://a@x,imaps://a@y,f,g\n", hdr);
	expect_error(t, "/srv/mig/accounts.csv:2: column 'source': unknown scheme 'ftp' in "
	    "'ftp://a@x' (use imap, imaps, pop3 or pop3s)");
	free(t);
	t = xasprintf("%sa,imaps://a:hunter2@x,imaps://a@y,f,g\n", hdr);
	{
		struct batch_csv c;
		char *err = NULL;
		assert_int_equal(parse(&c, t, &err), -1);
		assert_non_null(strstr(err, "accounts.csv:2: column 'source': password in"));
		assert_null(strstr(err, "hunter2"));
		free(err);
	}
	free(t);
	t = xasprintf("%sa,imaps://a@x,pop3s://a@y,f,g\n", hdr);
	expect_error(t, "/srv/mig/accounts.csv:2: column 'destination': only IMAP can be a "
	    "destination");
	free(t);
	t = xasprintf("%sa,imaps://a@x,,f,g\n", hdr);
	expect_error(t, "/srv/mig/accounts.csv:2: column 'destination': empty, but the source "
	    "is given: give both accounts, or neither and a job file");
	free(t);
	t = xasprintf("%sa,,,f,g\n", hdr);
	expect_error(t, "/srv/mig/accounts.csv:2: column 'source': empty: give the source and "
	    "destination URLs, or a job file that names them");
	free(t);
	t = xasprintf("%sa,imaps://a@x,imaps://a@y,f,\n", hdr);
	expect_error(t, "/srv/mig/accounts.csv:2: column 'passfile2': no password for the "
	    "destination: give passfile2 (a file) or passcmd2 (a command)");
	free(t);
	expect_error("id,source,destination,passfile1,passcmd1,passfile2\n"
	    "a,imaps://a@x,imaps://a@y,f,cmd,g\n",
	    "/srv/mig/accounts.csv:2: column 'passcmd1': both passfile1 and passcmd1 are given "
	    "for the source: which one?");
	expect_error("id,source,destination,passfile1,passfile2,auth1\n"
	    "a,imaps://a@x,imaps://a@y,f,g,gssapi\n",
	    "/srv/mig/accounts.csv:2: column 'auth1': 'gssapi': use plain, login, cram-md5 or "
	    "xoauth2");
	expect_error("id,source,destination,passfile1,passfile2,auth1\n"
	    "a,pop3s://a@x,imaps://a@y,f,g,xoauth2\n",
	    "/srv/mig/accounts.csv:2: column 'auth1': XOAUTH2 is not supported for POP3 "
	    "('pop3s://a@x:995')");
	expect_error("id,source,destination,passfile1,passcmd2\n"
	    "a,imaps://a@x,imaps://a@y,f,\"line\nbreak\"\n",
	    "/srv/mig/accounts.csv:2: column 'passcmd2': a line break in the value");

	struct batch_csv c;
	char *err = NULL;
	assert_int_equal(batch_csv_parse(&c, "x.csv", "id\0", 3, &err), -1);
	assert_string_equal(err, "x.csv:1: not a text file (a NUL byte)");
	free(err);
	assert_int_equal(batch_csv_load(&c, "/nonexistent/x.csv", &err), -1);
	assert_non_null(strstr(err, "cannot read '/nonexistent/x.csv'"));
	free(err);
}

static void test_shard(void **state)
{
	unsigned k = 0, n = 0;
	char *err = NULL;
	assert_int_equal(batch_shard_parse("1/3", &k, &n, &err), 0);
	assert_int_equal(k, 1);
	assert_int_equal(n, 3);
	assert_int_equal(batch_shard_parse("7/7", &k, &n, &err), 0);
	assert_int_equal(batch_shard_parse("1/1", &k, &n, &err), 0);

	static const char *const bad[] = {"0/3", "4/3", "1/0", "a/b", "1/", "/3", "1/3x",
	    "-1/3", "1/-3", "", "3", "1//3", "1/100001", " 1/3"};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		err = NULL;
		assert_int_equal(batch_shard_parse(bad[i], &k, &n, &err), -1);
		assert_non_null(err);
		assert_non_null(strstr(err, "--shard"));
		free(err);
	}
	assert_int_equal(batch_shard_parse("0/3", &k, &n, &err), -1);
	assert_string_equal(err, "--shard '0/3': K must be from 1 to N (K is 1-based: the shards "
	    "of 4 are 1/4 to 4/4), N at most 100000");
	free(err);

	/* 2/3 of rows 1..10: 2, 5, 8 */
	size_t got[10], ng = 0;
	for (size_t i = 1; i <= 10; i++)
		if (batch_shard_has(2, 3, i))
			got[ng++] = i;
	assert_int_equal(ng, 3);
	assert_int_equal(got[0], 2);
	assert_int_equal(got[1], 5);
	assert_int_equal(got[2], 8);
	assert_false(batch_shard_has(1, 3, 0));

	/* every row in exactly one shard, whatever N */
	for (unsigned nn = 1; nn <= 9; nn++)
		for (size_t i = 1; i <= 50; i++) {
			int owners = 0;
			for (unsigned kk = 1; kk <= nn; kk++)
				owners += batch_shard_has(kk, nn, i);
			assert_int_equal(owners, 1);
		}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid),
		cmocka_unit_test(test_job_column),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_shard),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
