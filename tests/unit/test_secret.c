/*
 * test_secret.c — password sources: environment, file, command; their
 * order; first-line and CR/LF handling; and the errors for each way a
 * source can fail.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "secret.h"
#include "util.h"

#define ENV_NAME "POSTINO_TEST_SECRET_PW"

static char tmpdir[] = "/tmp/postino-test-secret-XXXXXX";

static int setup(void **state)
{
	if (!mkdtemp(tmpdir))
		return -1;
	unsetenv(ENV_NAME);
	return 0;
}

static int teardown(void **state)
{
	char *cmd = xasprintf("rm -rf '%s'", tmpdir);
	int r = system(cmd);
	free(cmd);
	return r == 0 ? 0 : -1;
}

/* Writes a file in tmpdir with the given bytes and mode; returns its path. */
static char *make_file(const char *name, const char *data, size_t len, mode_t mode)
{
	char *path = xasprintf("%s/%s", tmpdir, name);
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(chmod(path, mode), 0);
	return path;
}

/* Expects success with the value want. */
static void expect_ok(const struct secret_source *src, const char *want)
{
	char *err = (char *)"untouched";
	char *pw = secret_get(src, &err);
	if (!pw)
		fail_msg("expected '%s', got error: %s", want, err ? err : "(none)");
	assert_null(err);
	assert_string_equal(pw, want);
	secret_free(pw);
}

/* Expects failure with an error containing want. */
static void expect_err(const struct secret_source *src, const char *want)
{
	char *err = NULL;
	char *pw = secret_get(src, &err);
	if (pw)
		fail_msg("expected an error with '%s', got a password '%s'", want, pw);
	assert_non_null(err);
	if (!strstr(err, want))
		fail_msg("error '%s' lacks '%s'", err, want);
	assert_null(strchr(err, '\n'));
	free(err);
}

/*
 * Runs secret_get with stderr captured; returns what was written there
 * (the caller frees) and the password through *pw.
 */
static char *capture_stderr(const struct secret_source *src, char **pw, char **err)
{
	char *path = xasprintf("%s/stderr.txt", tmpdir);
	FILE *f = fopen(path, "w+");
	int saved = dup(STDERR_FILENO);
	char out[1024];
	size_t n;

	assert_non_null(f);
	assert_true(saved >= 0);
	fflush(stderr);
	assert_true(dup2(fileno(f), STDERR_FILENO) >= 0);
	*pw = secret_get(src, err);
	fflush(stderr);
	assert_true(dup2(saved, STDERR_FILENO) >= 0);
	close(saved);
	rewind(f);
	n = fread(out, 1, sizeof(out) - 1, f);
	out[n] = 0;
	fclose(f);
	unlink(path);
	free(path);
	return xstrdup(out);
}

static void test_no_source(void **state)
{
	struct secret_source src = { NULL, NULL, NULL };
	char *err = (char *)"untouched";

	assert_null(secret_get(&src, &err));
	assert_null(err);
	err = (char *)"untouched";
	assert_null(secret_get(NULL, &err));
	assert_null(err);

	/* An environment variable that is not set is no source either. */
	src.env = ENV_NAME;
	err = (char *)"untouched";
	assert_null(secret_get(&src, &err));
	assert_null(err);
}

static void test_env(void **state)
{
	struct secret_source src = { NULL, NULL, ENV_NAME };

	setenv(ENV_NAME, "s3cret pass\twith tab", 1);
	expect_ok(&src, "s3cret pass\twith tab");
	setenv(ENV_NAME, "", 1);
	expect_err(&src, "environment variable " ENV_NAME " is empty");
	unsetenv(ENV_NAME);
}

static void test_file(void **state)
{
	struct secret_source src = { NULL, NULL, NULL };
	char *p;

	p = make_file("nl", "pw1\n", 4, 0600);
	src.file = p;
	expect_ok(&src, "pw1");
	free(p);

	p = make_file("nonl", "pw2", 3, 0600);
	src.file = p;
	expect_ok(&src, "pw2");
	free(p);

	p = make_file("crlf", "pw3 x\r\nsecond line\n", 19, 0400);
	src.file = p;
	expect_ok(&src, "pw3 x");
	free(p);

	/* Only one trailing CR goes; leading and inner spaces stay. */
	p = make_file("spaces", "  a b \r\r\n", 9, 0600);
	src.file = p;
	expect_ok(&src, "  a b \r");
	free(p);

	/* Longer than one buffer page: the buffer grows. */
	struct buf big = BUF_INIT;
	for (int i = 0; i < 10000; i++)
		buf_addc(&big, (char)('a' + i % 26));
	buf_adds(&big, "\nnext\n");
	p = make_file("big", big.s, big.len, 0600);
	src.file = p;
	big.s[10000] = 0;
	expect_ok(&src, big.s);
	buf_release(&big);
	free(p);
}

static void test_file_errors(void **state)
{
	struct secret_source src = { NULL, NULL, NULL };
	char *p;

	p = make_file("empty", "", 0, 0600);
	src.file = p;
	expect_err(&src, "has an empty first line");
	free(p);

	p = make_file("emptyline", "\nsecond\n", 8, 0600);
	src.file = p;
	expect_err(&src, "has an empty first line");
	free(p);

	p = make_file("cronly", "\r\n", 2, 0600);
	src.file = p;
	expect_err(&src, "has an empty first line");
	free(p);

	p = make_file("nul", "a\0b\n", 4, 0600);
	src.file = p;
	expect_err(&src, "contains a NUL byte");
	free(p);

	p = xasprintf("%s/does-not-exist", tmpdir);
	src.file = p;
	char *want = xasprintf("cannot open password file '%s'", p);
	expect_err(&src, want);
	free(want);
	free(p);

	/* A directory opens but cannot be read. */
	src.file = tmpdir;
	expect_err(&src, "cannot read password file");

	/* Mode 000 stops everyone but root. */
	if (geteuid() != 0) {
		p = make_file("unreadable", "pw\n", 3, 0000);
		src.file = p;
		expect_err(&src, "cannot open password file");
		free(p);
	}

	struct buf big = BUF_INIT;
	for (int i = 0; i < 70000; i++)
		buf_addc(&big, 'x');
	p = make_file("toolong", big.s, big.len, 0600);
	src.file = p;
	expect_err(&src, "bytes or more");
	buf_release(&big);
	free(p);
}

static void test_file_permission_warning(void **state)
{
	struct secret_source src = { NULL, NULL, NULL };
	char *pw, *err, *out;

	src.file = make_file("shared", "pw\n", 3, 0644);
	out = capture_stderr(&src, &pw, &err);
	assert_non_null(pw);
	assert_string_equal(pw, "pw");
	assert_null(err);
	assert_non_null(strstr(out, "warning"));
	assert_non_null(strstr(out, "readable by other users"));
	assert_non_null(strstr(out, src.file));
	assert_null(strstr(out, "pw\n"));
	secret_free(pw);
	free(out);
	free((char *)src.file);

	src.file = make_file("group", "pw\n", 3, 0640);
	out = capture_stderr(&src, &pw, &err);
	assert_string_equal(pw, "pw");
	assert_non_null(strstr(out, "readable by other users"));
	secret_free(pw);
	free(out);
	free((char *)src.file);

	src.file = make_file("private", "pw\n", 3, 0600);
	out = capture_stderr(&src, &pw, &err);
	assert_string_equal(pw, "pw");
	assert_string_equal(out, "");
	secret_free(pw);
	free(out);
	free((char *)src.file);
}

static void test_cmd(void **state)
{
	struct secret_source src = { NULL, NULL, NULL };

	src.cmd = "printf 'first\\nsecond\\n'";
	expect_ok(&src, "first");
	src.cmd = "printf 'crlf pw\\r\\n'";
	expect_ok(&src, "crlf pw");
	src.cmd = "printf nonl";
	expect_ok(&src, "nonl");
	src.cmd = "echo 'with \"quotes\" & $dollar'";
	expect_ok(&src, "with \"quotes\" & $dollar");
	/* Lots of output after the first line is read and discarded. */
	src.cmd = "echo y; yes | head -n 200000";
	expect_ok(&src, "y");
	/* The command's stderr is not the password. */
	src.cmd = "echo noise >&2; echo pw";
	expect_ok(&src, "pw");
	/* A long single line. */
	src.cmd = "head -c 20000 /dev/zero | tr '\\0' z";
	char *want = xmalloc(20001);
	memset(want, 'z', 20000);
	want[20000] = 0;
	expect_ok(&src, want);
	free(want);
}

static void test_cmd_errors(void **state)
{
	struct secret_source src = { NULL, NULL, NULL };

	src.cmd = "exit 3";
	expect_err(&src, "password command (--passcmd) failed (exit status 3)");
	/* Output from a failed command is not used. */
	src.cmd = "echo pw; exit 1";
	expect_err(&src, "failed (exit status 1)");
	src.cmd = "/nonexistent/postino-test-cmd";
	expect_err(&src, "failed (exit status 127)");
	src.cmd = "true";
	expect_err(&src, "password command (--passcmd) printed nothing");
	src.cmd = "echo";
	expect_err(&src, "printed an empty first line");
	src.cmd = "printf '\\r\\nsecond\\n'";
	expect_err(&src, "printed an empty first line");
	src.cmd = "kill -9 $$";
	expect_err(&src, "killed by signal 9");
	src.cmd = "printf 'a\\000b\\n'";
	expect_err(&src, "printed a NUL byte");
	src.cmd = "head -c 100000 /dev/zero | tr '\\0' a";
	expect_err(&src, "bytes or more");
}

static void test_order(void **state)
{
	struct secret_source src = { NULL, NULL, ENV_NAME };
	char *p = make_file("order", "from-file\n", 10, 0600);

	setenv(ENV_NAME, "from-env", 1);
	src.cmd = "echo from-cmd";
	src.file = p;
	expect_ok(&src, "from-cmd");
	src.cmd = NULL;
	expect_ok(&src, "from-file");
	src.file = NULL;
	expect_ok(&src, "from-env");

	/* A failing source is an error, not a reason to try the next. */
	src.cmd = "exit 2";
	src.file = p;
	expect_err(&src, "exit status 2");
	src.cmd = NULL;
	char *missing = xasprintf("%s/missing", tmpdir);
	src.file = missing;
	expect_err(&src, "cannot open password file");
	free(missing);
	unsetenv(ENV_NAME);
	free(p);
}

static void test_null_err_and_free(void **state)
{
	struct secret_source src = { "exit 1", NULL, NULL };

	/* err is optional; the message is then dropped. */
	assert_null(secret_get(&src, NULL));
	src.cmd = "echo ok";
	char *pw = secret_get(&src, NULL);
	assert_string_equal(pw, "ok");
	secret_free(pw);
	secret_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_no_source),
		cmocka_unit_test(test_env),
		cmocka_unit_test(test_file),
		cmocka_unit_test(test_file_errors),
		cmocka_unit_test(test_file_permission_warning),
		cmocka_unit_test(test_cmd),
		cmocka_unit_test(test_cmd_errors),
		cmocka_unit_test(test_order),
		cmocka_unit_test(test_null_err_and_free),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
