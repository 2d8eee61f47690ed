/*
 * test_jobfile.c — job files and presets: what each key becomes, in which
 * order the options apply (presets, the file, the command line), and that
 * every error names the file and the line; a password is refused without
 * being echoed.
 */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "jobfile.h"
#include "util.h"

static char tmpdir[] = "/tmp/postino-jobfile-XXXXXX";

static void write_file(const char *name, const char *text)
{
	char *path = xasprintf("%s/%s", tmpdir, name);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	free(path);
}

static int setup(void **state)
{
	if (!mkdtemp(tmpdir))
		return -1;
	char *plans = xasprintf("%s/plans", tmpdir);
	mkdir(plans, 0700);
	setenv("POSTINO_PLANS_DIR", plans, 1);
	setenv("HOME", "/home/tester", 1);
	unsetenv("XDG_CONFIG_HOME");
	free(plans);
	write_file("plans/mail.ini",
	    "# a provider\n"
	    "[server]\n"
	    "host = imap.mail.example\n"
	    "port = 1993\n"
	    "auth = xoauth2\n"
	    "[options]\n"
	    "jobs = 2\n"
	    "batch = 50\n"
	    "[folders]\n"
	    "exclude = \\[Mail\\]/All\n");
	write_file("plans/plain.ini", "timeout = 300\nskip-duplicates = yes\n");
	write_file("plans/bad.ini", "jobs = 2\nfoldr = x\n");
	write_file("plans/withaccount.ini", "[source]\nurl = imaps://a@b\n");
	write_file("plans/nested.ini", "preset = plain\n");
	return 0;
}

static int teardown(void **state)
{
	char *cmd = xasprintf("rm -rf '%s'", tmpdir);
	int rc = system(cmd);
	free(cmd);
	return rc == 0 ? 0 : -1;
}

/* Parses text as the job file NAME (in tmpdir); returns 0 or -1 and *err. */
static int parse(struct job *j, const char *name, const char *text, char **err)
{
	job_init(j);
	char *path = xasprintf("%s/%s", tmpdir, name);
	*err = NULL;
	int rc = job_parse(j, path, text, strlen(text), err);
	free(path);
	return rc;
}

/* The error for a one-file job, without the temp directory in front. */
static char *error_of(const char *text)
{
	struct job j;
	char *err = NULL;
	int rc = parse(&j, "job.ini", text, &err);
	job_release(&j);
	assert_int_equal(rc, -1);
	assert_non_null(err);
	char *prefix = xasprintf("%s/", tmpdir);
	assert_true(!strncmp(err, prefix, strlen(prefix)));
	char *out = xstrdup(err + strlen(prefix));
	free(prefix);
	free(err);
	return out;
}

static void expect_error(const char *text, const char *want)
{
	char *got = error_of(text);
	if (strcmp(got, want))
		fail_msg("for:\n%s\nwanted: %s\ngot:    %s", text, want, got);
	free(got);
}

static void test_full_job(void **state)
{
	struct job j;
	char *err;
	const char *text =
	    "# a job\n"
	    "; another comment\n"
	    "\n"
	    "[source]\n"
	    "url = imaps://alice@old.example.org\n"
	    "passfile = secrets/old.pass\n"
	    "\n"
	    "[destination]\n"
	    "user = bob@example.net\n"
	    "host = new.example.net\n"
	    "passcmd = pass show new\n"
	    "\n"
	    "[folders]\n"
	    "folder = INBOX\n"
	    "folder = Archive/*\n"
	    "exclude = \"Spam \"\n"
	    "map = Old Sent = Sent\n"
	    "into = Imported\n"
	    "\n"
	    "[options]\n"
	    "state = ~/mig.db\n"
	    "ca-file = /etc/ca.pem\n"
	    "jobs = 3\n"
	    "batch = 100\n"
	    "Skip-Duplicates = yes\n"
	    "mark-seen = no\n"
	    "keep-days = 0\n"
	    "max-delete-percent = 20\n";
	assert_int_equal(parse(&j, "job.ini", text, &err), 0);
	assert_null(err);
	assert_string_equal(j.url[0], "imaps://alice@old.example.org");
	assert_string_equal(j.url[1], "imaps://bob%40example.net@new.example.net");
	assert_int_equal(j.nopts, 0); /* no preset */
	char *pass = xasprintf("--passfile1=%s/secrets/old.pass", tmpdir);
	const char *want[] = {
		pass,
		"--passcmd2=pass show new",
		"--folder=INBOX",
		"--folder=Archive/*",
		"--exclude=Spam ",
		"--map=Old Sent=Sent",
		"--into=Imported",
		"--state=/home/tester/mig.db",
		"--ca-file=/etc/ca.pem",
		"--jobs=3",
		"--batch=100",
		"--skip-duplicates",
		"--keep-days=0",
		"--max-delete-percent=20",
	};
	assert_int_equal(j.nown, ARRAY_SIZE(want));
	for (size_t i = 0; i < ARRAY_SIZE(want); i++)
		assert_string_equal(j.own[i], want[i]);
	free(pass);
	job_release(&j);
}

static void test_argv_order(void **state)
{
	struct job j;
	char *err;
	const char *text =
	    "[a]\nurl = imaps://a@x.example\n[b]\nurl = imaps://b@y.example\n"
	    "[options]\njobs = 3\n";
	assert_int_equal(parse(&j, "job.ini", text, &err), 0);
	char *cmdline[] = {"copy", "--jobs", "5", NULL};
	/* no URL on the command line: the job's go last */
	job_argv(&j, 3, cmdline, 0);
	assert_int_equal(j.argc, 6);
	assert_string_equal(j.argv[0], "copy");
	assert_string_equal(j.argv[1], "--jobs=3");
	assert_string_equal(j.argv[2], "--jobs");  /* the command line: later, wins */
	assert_string_equal(j.argv[3], "5");
	assert_string_equal(j.argv[4], "imaps://a@x.example");
	assert_string_equal(j.argv[5], "imaps://b@y.example");
	assert_null(j.argv[6]);
	/* URLs on the command line: the job's are not added */
	char *cmdline2[] = {"copy", "imaps://c@z", "imaps://d@z", NULL};
	job_argv(&j, 3, cmdline2, 2);
	assert_int_equal(j.argc, 4);
	assert_string_equal(j.argv[2], "imaps://c@z");
	assert_string_equal(j.argv[3], "imaps://d@z");
	job_release(&j);
}

static void test_errors_name_file_and_line(void **state)
{
	expect_error("[options]\njobs = 2\nfoldr = Archive\n",
	    "job.ini:3: unknown key 'foldr' (did you mean 'folder'?)");
	expect_error("frobnicate = 1\n", "job.ini:1: unknown key 'frobnicate'");
	expect_error("\n\n[options]\njobs = many\n",
	    "job.ini:4: jobs = 'many': expected a number from 1 to 64");
	expect_error("jobs = 65\n", "job.ini:1: jobs = '65': expected a number from 1 to 64");
	expect_error("batch = 0\n", "job.ini:1: batch = '0': expected a number from 1 to 5000");
	expect_error("watch = maybe\n", "job.ini:1: watch = 'maybe': expected yes or no");
	expect_error("jobs = 2\n\njobs = 3\n",
	    "job.ini:3: 'jobs' is set again (first on line 1)");
	expect_error("map = Sent\n", "job.ini:1: map = 'Sent': expected SOURCE = DESTINATION");
	expect_error("map = = Sent\n", "job.ini:1: map = '= Sent': expected SOURCE = DESTINATION");
	expect_error("[sauce]\n", "job.ini:1: unknown section [sauce] (sections: [source], "
	    "[destination], [folders], [options])");
	expect_error("[options\n", "job.ini:1: expected [section]");
	expect_error("# c\njust words\n", "job.ini:2: expected key = value");
	expect_error("url = imaps://a@b\n",
	    "job.ini:1: 'url' does not belong in this section: it belongs in [source] or "
	    "[destination]");
	expect_error("[source]\njobs = 3\n",
	    "job.ini:2: 'jobs' does not belong in this section: it belongs in [options]");
	expect_error("[source]\nuser = me\n",
	    "job.ini:2: [source] has a user but no host: give host, url, or a preset that "
	    "names the server");
	expect_error("[destination]\nurl = imaps://a@b\nuser = me\n",
	    "job.ini:2: [destination] has a url and also user, host, port, tls, protocol or "
	    "auth: give one or the other");
	expect_error("[source]\nhost = h\nport = 99999\n",
	    "job.ini:3: port = '99999': expected a number from 1 to 65535");
	expect_error("[source]\nuser = u\nhost = h\ntls = maybe\n",
	    "job.ini:4: tls = 'maybe': expected implicit, starttls or none");
	expect_error("[source]\nurl = ftp://a@b\n",
	    "job.ini:2: source URL: unknown scheme 'ftp' in 'ftp://a@b' (use imap, imaps, "
	    "pop3 or pop3s)");
	expect_error("[source]\n[source]\n", "job.ini:2: [source] again (first on line 1)");
	expect_error("[server]\nhost = h\n",
	    "job.ini:1: [server] belongs in a preset; in a job file, give host and port in "
	    "[source] or [destination]");
	expect_error("state =\n", "job.ini:1: 'state' needs a value");
	expect_error("\nauth2 = gssapi\n",
	    "job.ini:2: auth2 = 'gssapi': expected plain, login, cram-md5 or xoauth2");
}

static void test_password_refused(void **state)
{
	static const char *const keys[] = {"password", "password1", "Password2", "pass",
	    "passwd", "src-password", "secret"};
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
		char *text = xasprintf("[source]\nurl = imaps://a@b\n%s = hunter2\n", keys[i]);
		char *got = error_of(text);
		assert_string_equal(got, "job.ini:3: a password in a job file is refused: "
		    "passwords come from passcmd, passfile or POSTINO_PASSWORD1/2 only");
		assert_null(strstr(got, "hunter2"));
		free(got);
		free(text);
	}
	/* in a URL: refused by the URL parser, the line named, never echoed */
	char *got = error_of("[options]\njobs = 2\n[source]\nurl = imaps://me:hunter2@host\n");
	assert_true(!strncmp(got, "job.ini:4: source URL: ", 23));
	assert_null(strstr(got, "hunter2"));
	free(got);
}

static void test_preset_in_account(void **state)
{
	struct job j;
	char *err;
	const char *text =
	    "[source]\npreset = mail\nuser = me@mail.example\n"
	    "[destination]\nuser = me\nhost = ::1\nport = 143\ntls = starttls\n"
	    "[options]\njobs = 4\n";
	assert_int_equal(parse(&j, "job.ini", text, &err), 0);
	assert_string_equal(j.url[0], "imaps://me%40mail.example@imap.mail.example:1993?auth=xoauth2");
	assert_string_equal(j.url[1], "imap://me@[::1]:143");
	/* the preset's options first, the file's after them */
	assert_int_equal(j.nopts, 3);
	assert_string_equal(j.opts[0], "--jobs=2");
	assert_string_equal(j.opts[1], "--batch=50");
	assert_string_equal(j.opts[2], "--exclude=\\[Mail\\]/All");
	assert_int_equal(j.nown, 1);
	assert_string_equal(j.own[0], "--jobs=4");
	job_release(&j);

	/* the account's own settings win over the preset's server */
	assert_int_equal(parse(&j, "job.ini",
	    "[source]\npreset = mail\nuser = u\nport = 993\nauth = plain\n", &err), 0);
	assert_string_equal(j.url[0], "imaps://u@imap.mail.example:993?auth=plain");
	job_release(&j);

	/* plaintext and auth together */
	assert_int_equal(parse(&j, "job.ini",
	    "[source]\nuser = u\nhost = h\ntls = none\nauth = login\nprotocol = pop3\n", &err), 0);
	assert_string_equal(j.url[0], "pop3://u@h?tls=none&auth=login");
	job_release(&j);
}

static void test_presets_order_and_errors(void **state)
{
	char *path = xasprintf("%s/job.ini", tmpdir);
	write_file("job.ini", "preset = plain\n[options]\njobs = 7\n");
	struct job j;
	job_init(&j);
	char *err = NULL;
	/* the file's preset, then the command line's, then the file */
	assert_int_equal(job_load(&j, path, "mail", &err), 0);
	assert_int_equal(j.nopts, 5);
	assert_string_equal(j.opts[0], "--timeout=300");
	assert_string_equal(j.opts[1], "--skip-duplicates");
	assert_string_equal(j.opts[2], "--jobs=2");
	assert_int_equal(j.nown, 1);
	assert_string_equal(j.own[0], "--jobs=7");
	assert_string_equal(j.preset_name, "plain");
	char *argv[] = {"copy", "--jobs=9", NULL};
	job_argv(&j, 2, argv, 0);
	assert_string_equal(j.argv[j.argc - 1], "--jobs=9"); /* the command line: last */
	assert_string_equal(j.argv[j.argc - 2], "--jobs=7");
	job_release(&j);

	/* an unknown preset lists the known ones */
	job_init(&j);
	assert_int_equal(job_load(&j, NULL, "nosuch", &err), -1);
	assert_string_equal(err, "--preset 'nosuch': unknown preset 'nosuch' (known: bad, mail, "
	    "nested, plain, withaccount)");
	free(err);
	job_release(&j);

	/* named in a job file: the line of the job file */
	write_file("job.ini", "\n[destination]\npreset = gmial\nuser = x\n");
	job_init(&j);
	assert_int_equal(job_load(&j, path, NULL, &err), -1);
	char *want = xasprintf("%s:3: unknown preset 'gmial' (known: bad, mail, nested, plain, "
	    "withaccount)", path);
	assert_string_equal(err, want);
	free(want);
	free(err);
	job_release(&j);

	/* an error inside a preset names the preset's file and line */
	job_init(&j);
	assert_int_equal(job_load(&j, NULL, "bad", &err), -1);
	want = xasprintf("--preset 'bad': %s/plans/bad.ini:2: unknown key 'foldr' (did you "
	    "mean 'folder'?)", tmpdir);
	assert_string_equal(err, want);
	free(want);
	free(err);
	job_release(&j);

	job_init(&j);
	assert_int_equal(job_load(&j, NULL, "withaccount", &err), -1);
	assert_non_null(strstr(err, "withaccount.ini:1: a preset names no account: [source] "
	    "belongs in a job file (--job)"));
	free(err);
	job_release(&j);

	job_init(&j);
	assert_int_equal(job_load(&j, NULL, "nested", &err), -1);
	assert_non_null(strstr(err, "nested.ini:1: a preset cannot name another preset"));
	free(err);
	job_release(&j);

	/* a preset given as a path */
	char *direct = xasprintf("%s/plans/plain.ini", tmpdir);
	job_init(&j);
	assert_int_equal(job_load(&j, NULL, direct, &err), 0);
	assert_int_equal(j.nopts, 2);
	job_release(&j);
	free(direct);

	/* a job file that is not there */
	job_init(&j);
	assert_int_equal(job_load(&j, "/nonexistent/job.ini", NULL, &err), -1);
	assert_string_equal(err, "/nonexistent/job.ini: No such file or directory");
	free(err);
	job_release(&j);
	free(path);
}

static void test_binary_refused(void **state)
{
	struct job j;
	char *err = NULL;
	job_init(&j);
	static const char text[] = "jobs = 2\nfolder = a\0b\n";
	char *path = xasprintf("%s/bin.ini", tmpdir);
	assert_int_equal(job_parse(&j, path, text, sizeof text - 1, &err), -1);
	char *want = xasprintf("%s:2: a NUL byte: this is not a text file", path);
	assert_string_equal(err, want);
	free(want);
	free(err);
	free(path);
	job_release(&j);
}

/* Every preset shipped in plans/ loads, names its server, and sets options;
 * every example job parses (its presets found in plans/). */
static void test_shipped_plans(void **state)
{
#ifdef SOURCE_ROOT
	static const char *const presets[] = {"gmail", "outlook", "office365", "yahoo",
	    "icloud", "fastmail", "dovecot"};
	char *saved = xstrdup(getenv("POSTINO_PLANS_DIR"));
	setenv("POSTINO_PLANS_DIR", SOURCE_ROOT "/plans", 1);
	for (size_t i = 0; i < ARRAY_SIZE(presets); i++) {
		struct job j;
		job_init(&j);
		struct job_server srv;
		char *err = NULL;
		if (job_load_preset(&j, presets[i], &srv, &err) < 0)
			fail_msg("preset %s: %s", presets[i], err);
		assert_true(j.nopts > 0);
		if (strcmp(presets[i], "dovecot"))
			assert_non_null(srv.host);
		assert_int_equal(srv.port, 993);
		job_server_release(&srv);
		job_release(&j);
	}
	static const char *const examples[] = {"example-gmail-to-fastmail.ini",
	    "example-pop3-import.ini", "example-mirror.ini"};
	for (size_t i = 0; i < ARRAY_SIZE(examples); i++) {
		struct job j;
		job_init(&j);
		char *err = NULL;
		char *path = xasprintf("%s/plans/%s", SOURCE_ROOT, examples[i]);
		if (job_load(&j, path, NULL, &err) < 0)
			fail_msg("%s: %s", examples[i], err);
		assert_non_null(j.url[0]);
		assert_non_null(j.url[1]);
		free(path);
		job_release(&j);
	}
	struct job j;
	job_init(&j);
	char *err = NULL;
	char *path = xasprintf("%s/plans/example-gmail-to-fastmail.ini", SOURCE_ROOT);
	assert_int_equal(job_load(&j, path, NULL, &err), 0);
	assert_string_equal(j.url[0], "imaps://me%40gmail.com@imap.gmail.com:993");
	assert_string_equal(j.url[1], "imaps://me%40fastmail.com@imap.fastmail.com:993");
	bool all_mail = false;
	for (size_t i = 0; i < j.nopts; i++)
		all_mail |= !strcmp(j.opts[i], "--exclude=\\[Gmail\\]/All Mail");
	assert_true(all_mail);
	free(path);
	job_release(&j);
	setenv("POSTINO_PLANS_DIR", saved, 1);
	free(saved);
#else
	skip();
#endif
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_full_job),
		cmocka_unit_test(test_argv_order),
		cmocka_unit_test(test_errors_name_file_and_line),
		cmocka_unit_test(test_password_refused),
		cmocka_unit_test(test_preset_in_account),
		cmocka_unit_test(test_presets_order_and_errors),
		cmocka_unit_test(test_binary_refused),
		cmocka_unit_test(test_shipped_plans),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
