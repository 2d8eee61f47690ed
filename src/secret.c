/*
 * secret.c — reads an account's password from a command, a file or the
 * environment (see secret.h).
 *
 * Passwords live in buffers of their own pages, locked against swapping
 * when the system allows (mlock failure, e.g. RLIMIT_MEMLOCK, is not an
 * error: the value is still wiped), and every buffer that held a password,
 * including the ones outgrown while reading, is wiped before it is freed.
 * Own pages, because munlock() works on whole pages: unlocking one secret
 * must not unlock another, or a neighbour's data.
 */
#include "secret.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

extern char **environ;

/* OAuth2 tokens can run to a few KiB; anything this long is a mistake. */
#define SECRET_MAX (64 * 1024)

/* A growable buffer in locked pages; p[len] is always 0. */
struct sbuf {
	char *p;
	size_t len;
	size_t cap;
};

static size_t page_size(void)
{
	long n = sysconf(_SC_PAGESIZE);
	return n > 0 ? (size_t)n : 4096;
}

/* Zeroed, page-aligned, locked if possible; cap is a multiple of a page. */
static char *secure_alloc(size_t cap)
{
	void *p;

	if (posix_memalign(&p, page_size(), cap) != 0) {
		fputs("postino: out of memory\n", stderr);
		abort();
	}
	memset(p, 0, cap);
	(void)mlock(p, cap);
	return p;
}

static void secure_release(char *p, size_t cap)
{
	if (!p)
		return;
	explicit_bzero(p, cap);
	(void)munlock(p, cap);
	free(p);
}

/* Makes room for at least one more byte and the NUL. */
static void sbuf_grow(struct sbuf *sb)
{
	size_t cap = sb->cap ? sb->cap * 2 : page_size();
	char *p = secure_alloc(cap);

	if (sb->p)
		memcpy(p, sb->p, sb->len);
	secure_release(sb->p, sb->cap);
	sb->p = p;
	sb->cap = cap;
}

static void sbuf_release(struct sbuf *sb)
{
	secure_release(sb->p, sb->cap);
	sb->p = NULL;
	sb->len = sb->cap = 0;
}

enum { LINE_OK = 0, LINE_READ_ERROR = -1, LINE_TOO_LONG = -2, LINE_NUL = -3 };

/*
 * Reads the first line of fd into sb, without its "\n" or "\r\n". With
 * drain, reads on to the end (a command must not die of SIGPIPE before we
 * learn its exit status), discarding the rest; otherwise stops at the first
 * newline. *total is the number of bytes read. Returns a LINE_* value;
 * LINE_READ_ERROR leaves errno set.
 */
static int read_first_line(int fd, struct sbuf *sb, bool drain, size_t *total)
{
	char scratch[512]; /* the rest of the output: may hold secrets too */
	bool in_line = true;
	int ret = LINE_OK, saved_errno = 0;

	*total = 0;
	for (;;) {
		char *dst = scratch;
		size_t room = sizeof(scratch);

		if (in_line) {
			if (sb->len + 1 >= sb->cap) {
				if (sb->cap >= SECRET_MAX) {
					ret = LINE_TOO_LONG;
					in_line = false;
					if (!drain)
						break;
					continue;
				}
				sbuf_grow(sb);
			}
			dst = sb->p + sb->len;
			room = sb->cap - sb->len - 1;
		}
		ssize_t n = read(fd, dst, room);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			saved_errno = errno;
			ret = LINE_READ_ERROR;
			break;
		}
		if (n == 0)
			break;
		*total += (size_t)n;
		if (!in_line)
			continue;
		char *nl = memchr(dst, '\n', (size_t)n);
		if (!nl) {
			sb->len += (size_t)n;
			continue;
		}
		sb->len = (size_t)(nl - sb->p);
		in_line = false;
		if (!drain)
			break;
	}
	explicit_bzero(scratch, sizeof(scratch));
	/* Whatever followed the first line in sb goes too. */
	explicit_bzero(sb->p + sb->len, sb->cap - sb->len);
	if (sb->len > 0 && sb->p[sb->len - 1] == '\r')
		sb->p[--sb->len] = 0;
	if (ret == LINE_OK && memchr(sb->p, 0, sb->len))
		ret = LINE_NUL;
	errno = saved_errno;
	return ret;
}

/*
 * The returned password: in locked pages of its own, NUL-filled after the
 * value, so that secret_free() can wipe it from its length alone.
 */
static char *secure_strndup(const char *p, size_t len)
{
	size_t page = page_size();
	char *s = secure_alloc((len + 1 + page - 1) / page * page);

	memcpy(s, p, len);
	return s;
}

static char *sbuf_detach(struct sbuf *sb)
{
	char *s = secure_strndup(sb->p, sb->len);

	sbuf_release(sb);
	return s;
}

static char *from_command(const char *cmd, char **err)
{
	struct sbuf sb = { NULL, 0, 0 };
	char *res = NULL;
	int pfd[2], status, r, read_errno;
	size_t total;
	pid_t pid;

	sbuf_grow(&sb);
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		*err = xasprintf("cannot run the password command (--passcmd): %s",
				 strerror(errno));
		goto out;
	}
	pid = fork();
	if (pid < 0) {
		*err = xasprintf("cannot run the password command (--passcmd): %s",
				 strerror(errno));
		close(pfd[0]);
		close(pfd[1]);
		goto out;
	}
	if (pid == 0) {
		/* Only async-signal-safe calls: the parent may have threads. */
		char *argv[] = { "sh", "-c", (char *)cmd, NULL };
		if (pfd[1] == STDOUT_FILENO)
			fcntl(pfd[1], F_SETFD, 0);
		else if (dup2(pfd[1], STDOUT_FILENO) < 0)
			_exit(127);
		execve("/bin/sh", argv, environ);
		_exit(127);
	}
	close(pfd[1]);
	r = read_first_line(pfd[0], &sb, true, &total);
	read_errno = errno;
	close(pfd[0]);
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			*err = xasprintf("cannot wait for the password command (--passcmd): %s",
					 strerror(errno));
			goto out;
		}
	}

	/* The exit status first: a failed command's output is not a password. */
	if (WIFSIGNALED(status)) {
		*err = xasprintf("password command (--passcmd) killed by signal %d",
				 WTERMSIG(status));
	} else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		*err = xasprintf("password command (--passcmd) failed (exit status %d)",
				 WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	} else if (r == LINE_READ_ERROR) {
		*err = xasprintf("cannot read the output of the password command (--passcmd): %s",
				 strerror(read_errno));
	} else if (r == LINE_TOO_LONG) {
		*err = xasprintf("password command (--passcmd) printed a first line "
				 "of %d bytes or more", SECRET_MAX);
	} else if (r == LINE_NUL) {
		*err = xstrdup("password command (--passcmd) printed a NUL byte");
	} else if (total == 0) {
		*err = xstrdup("password command (--passcmd) printed nothing");
	} else if (sb.len == 0) {
		*err = xstrdup("password command (--passcmd) printed an empty first line");
	} else {
		res = sbuf_detach(&sb);
	}

out:
	sbuf_release(&sb);
	return res;
}

static char *from_file(const char *path, char **err)
{
	struct sbuf sb = { NULL, 0, 0 };
	struct stat st;
	char *res = NULL;
	size_t total;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		*err = xasprintf("cannot open password file '%s': %s", path, strerror(errno));
		return NULL;
	}
	/* Only a regular file has meaningful modes: not so a <(pass show) pipe. */
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & (S_IRGRP | S_IROTH)))
		log_warn("password file '%s' is readable by other users (chmod 600 it)", path);

	sbuf_grow(&sb);
	r = read_first_line(fd, &sb, false, &total);
	if (r == LINE_READ_ERROR)
		*err = xasprintf("cannot read password file '%s': %s", path, strerror(errno));
	else if (r == LINE_TOO_LONG)
		*err = xasprintf("password file '%s' has a first line of %d bytes or more",
				 path, SECRET_MAX);
	else if (r == LINE_NUL)
		*err = xasprintf("password file '%s' contains a NUL byte", path);
	else if (sb.len == 0)
		*err = xasprintf("password file '%s' has an empty first line", path);
	else
		res = sbuf_detach(&sb);
	close(fd);
	sbuf_release(&sb);
	return res;
}

static char *from_env(const char *name, char **err)
{
	const char *v = getenv(name);

	if (!v)
		return NULL; /* not configured */
	if (!*v) {
		*err = xasprintf("environment variable %s is empty", name);
		return NULL;
	}
	return secure_strndup(v, strlen(v));
}

char *secret_get(const struct secret_source *src, char **err)
{
	char *dummy = NULL, **e = err ? err : &dummy;
	char *res = NULL;

	*e = NULL;
	if (!src)
		return NULL;
	if (src->cmd)
		res = from_command(src->cmd, e);
	else if (src->file)
		res = from_file(src->file, e);
	else if (src->env)
		res = from_env(src->env, e);
	free(dummy);
	return res;
}

void secret_free(char *s)
{
	if (!s)
		return;
	/*
	 * Only up to the NUL: the rest of our buffers is zero already, and a
	 * string from elsewhere must not be overrun.
	 */
	size_t len = strlen(s) + 1;
	explicit_bzero(s, len);
	(void)munlock(s, len);
	free(s);
}
