/*
 * log.h — diagnostics on stderr (and optionally a log file).
 *
 * One line per event, prefixed "postino: ". Errors always show; -v shows
 * info, -vv debug, --trace the protocol exchange (credentials redacted by the
 * caller: see net.c). Nothing here ever receives a password.
 */
#ifndef POSTINO_LOG_H
#define POSTINO_LOG_H

enum log_level {
	LOG_ERROR = 0,
	LOG_WARN = 1,
	LOG_NOTICE = 2, /* default: what a user wants to see */
	LOG_INFO = 3,   /* -v */
	LOG_DEBUG = 4,  /* -vv */
	LOG_TRACE = 5,  /* --trace */
};

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Also append every message to path (created 0600). Returns -1 on error. */
int log_open_file(const char *path);
void log_close_file(void);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_trace(...) log_msg(LOG_TRACE, __VA_ARGS__)

#endif
