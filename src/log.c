/*
 * log.c — diagnostics on stderr and an optional log file.
 */
#include "log.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static enum log_level cur_level = LOG_NOTICE;
static FILE *log_file;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void log_set_level(enum log_level level)
{
	cur_level = level;
}

enum log_level log_get_level(void)
{
	return cur_level;
}

int log_open_file(const char *path)
{
	/* 0600 whatever the umask: a log may name accounts and folders. */
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	if (fchmod(fd, 0600) < 0) {
		close(fd);
		return -1;
	}
	FILE *f = fdopen(fd, "a");
	if (!f) {
		close(fd);
		return -1;
	}
	log_close_file();
	log_file = f;
	return 0;
}

void log_close_file(void)
{
	if (log_file)
		fclose(log_file);
	log_file = NULL;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	if (level > cur_level && !log_file)
		return;
	static const char *const prefix[] = {
		"error: ", "warning: ", "", "", "", "",
	};
	va_list ap;
	pthread_mutex_lock(&log_lock);
	if (level <= cur_level) {
		fputs("postino: ", stderr);
		fputs(prefix[level], stderr);
		va_start(ap, fmt);
		vfprintf(stderr, fmt, ap);
		va_end(ap);
		fputc('\n', stderr);
	}
	if (log_file && level <= (cur_level > LOG_INFO ? cur_level : LOG_INFO)) {
		char ts[32];
		time_t t = time(NULL);
		struct tm tm;
		gmtime_r(&t, &tm);
		strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
		fprintf(log_file, "%s %s", ts, prefix[level]);
		va_start(ap, fmt);
		vfprintf(log_file, fmt, ap);
		va_end(ap);
		fputc('\n', log_file);
		fflush(log_file);
	}
	pthread_mutex_unlock(&log_lock);
}
