/*
 * report.c — end-of-run reports as JSON documents.
 */
#include "report.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "util.h"

/* Length of a valid UTF-8 sequence at s, or 0. */
static size_t utf8_len(const unsigned char *s)
{
	if (s[0] < 0x80)
		return 1;
	size_t n = (s[0] & 0xE0) == 0xC0 ? 2 : (s[0] & 0xF0) == 0xE0 ? 3
	    : (s[0] & 0xF8) == 0xF0 ? 4 : 0;
	if (!n || (n == 2 && s[0] < 0xC2) || s[0] > 0xF4)
		return 0;
	for (size_t i = 1; i < n; i++)
		if ((s[i] & 0xC0) != 0x80)
			return 0;
	if (n == 3 && ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] >= 0xA0)))
		return 0;
	if (n == 4 && ((s[0] == 0xF0 && s[1] < 0x90) || (s[0] == 0xF4 && s[1] >= 0x90)))
		return 0;
	return n;
}

void json_add_str(struct buf *b, const char *s)
{
	if (!s) {
		buf_adds(b, "null");
		return;
	}
	buf_addc(b, '"');
	const unsigned char *p = (const unsigned char *)s;
	while (*p) {
		if (*p == '"' || *p == '\\') {
			buf_addc(b, '\\');
			buf_addc(b, (char)*p++);
		} else if (*p < 0x20) {
			buf_addf(b, "\\u%04x", *p++);
		} else {
			size_t n = utf8_len(p);
			if (!n) {
				buf_adds(b, "\\ufffd");
				p++;
			} else {
				buf_add(b, p, n);
				p += n;
			}
		}
	}
	buf_addc(b, '"');
}

static void kv_str(struct buf *b, const char *k, const char *v, bool comma)
{
	buf_addf(b, "%s\"%s\":", comma ? "," : "", k);
	json_add_str(b, v);
}

static void kv_u(struct buf *b, const char *k, unsigned long long v, bool comma)
{
	buf_addf(b, "%s\"%s\":%llu", comma ? "," : "", k, v);
}

static void kv_b(struct buf *b, const char *k, bool v, bool comma)
{
	buf_addf(b, "%s\"%s\":%s", comma ? "," : "", k, v ? "true" : "false");
}

static void head(struct buf *b, const char *command, const char *src, const char *dst,
    int exit_code, int64_t ms)
{
	buf_adds(b, "{\"postino\":");
	json_add_str(b, POSTINO_VERSION);
	kv_str(b, "command", command, true);
	kv_str(b, command[0] == 'm' ? "a" : "source", src, true);
	kv_str(b, command[0] == 'm' ? "b" : "destination", dst, true);
	buf_addf(b, ",\"exit_code\":%d,\"duration_s\":%.3f", exit_code, (double)ms / 1000.0);
}

static void refusals(struct buf *b, const struct refusal *v, size_t n)
{
	buf_adds(b, ",\"not_copied\":[");
	for (size_t i = 0; i < n; i++) {
		buf_adds(b, i ? ",{" : "{");
		kv_str(b, "folder", v[i].folder, false);
		kv_u(b, "uid", v[i].uid, true);
		kv_u(b, "size", v[i].size, true);
		kv_str(b, "reason", v[i].reason, true);
		buf_addc(b, '}');
	}
	buf_addc(b, ']');
}

char *report_copy_json(const struct copy_report *r, const char *src, const char *dst,
    int exit_code)
{
	struct buf b = BUF_INIT;
	head(&b, "copy", src, dst, exit_code, r->ended_ms - r->started_ms);
	buf_adds(&b, ",\"totals\":{");
	kv_u(&b, "copied", r->copied, false);
	kv_u(&b, "bytes", r->bytes, true);
	kv_u(&b, "flags_updated", r->flags_set, true);
	kv_u(&b, "already_there", r->already, true);
	kv_u(&b, "refused", r->refused, true);
	kv_u(&b, "duplicates_skipped", r->duplicates, true);
	kv_u(&b, "failed_folders", r->failed_folders, true);
	kv_b(&b, "interrupted", r->interrupted, true);
	buf_adds(&b, "},\"folders\":[");
	for (size_t i = 0; i < r->nfolders; i++) {
		const struct folder_report *f = &r->folders[i];
		buf_adds(&b, i ? ",{" : "{");
		kv_str(&b, "source", f->src_path, false);
		kv_str(&b, "destination", f->dst_path, true);
		kv_b(&b, "created", f->created, true);
		kv_b(&b, "unchanged", f->skipped_fast, true);
		kv_u(&b, "copied", f->copied, true);
		kv_u(&b, "bytes", f->bytes, true);
		kv_u(&b, "flags_updated", f->flags_set, true);
		kv_u(&b, "already_there", f->already, true);
		kv_u(&b, "refused", f->refused, true);
		kv_u(&b, "duplicates_skipped", f->duplicates, true);
		kv_u(&b, "re_paired", f->relinked, true);
		kv_str(&b, "keywords_dropped", f->dropped_keywords, true);
		kv_b(&b, "failed", f->failed, true);
		kv_str(&b, "error", f->error, true);
		buf_addc(&b, '}');
	}
	buf_addc(&b, ']');
	refusals(&b, r->refusals, r->nrefusals);
	buf_adds(&b, "}\n");
	return buf_detach(&b);
}

char *report_mirror_json(const struct mirror_report *r, const char *a, const char *b_url,
    int exit_code)
{
	struct buf b = BUF_INIT;
	head(&b, "mirror", a, b_url, exit_code, r->ended_ms - r->started_ms);
	buf_adds(&b, ",\"totals\":{");
	kv_u(&b, "copied_a_to_b", r->copied_ab, false);
	kv_u(&b, "copied_b_to_a", r->copied_ba, true);
	kv_u(&b, "flags_updated", r->flags_set, true);
	kv_u(&b, "deleted", r->deleted, true);
	kv_u(&b, "moved", r->moved, true);
	kv_u(&b, "paired", r->paired, true);
	kv_u(&b, "kept", r->kept, true);
	kv_u(&b, "deletions_held", r->held, true);
	kv_u(&b, "folders_renamed", r->renamed, true);
	kv_u(&b, "folders_left_alone", r->vanished, true);
	kv_u(&b, "failed_folders", r->failed_folders, true);
	kv_b(&b, "interrupted", r->interrupted, true);
	buf_adds(&b, "},\"folders\":[");
	for (size_t i = 0; i < r->nfolders; i++) {
		const struct mirror_folder_report *f = &r->folders[i];
		buf_adds(&b, i ? ",{" : "{");
		kv_str(&b, "a", f->a_path, false);
		kv_str(&b, "b", f->b_path, true);
		kv_b(&b, "created_on_a", f->created_a, true);
		kv_b(&b, "created_on_b", f->created_b, true);
		kv_b(&b, "unchanged", f->skipped_fast, true);
		kv_u(&b, "copied_a_to_b", f->copied_ab, true);
		kv_u(&b, "copied_b_to_a", f->copied_ba, true);
		kv_u(&b, "flags_updated_on_a", f->flags_a, true);
		kv_u(&b, "flags_updated_on_b", f->flags_b, true);
		kv_u(&b, "deleted_on_a", f->deleted_a, true);
		kv_u(&b, "deleted_on_b", f->deleted_b, true);
		kv_u(&b, "moved_on_a", f->moved_a, true);
		kv_u(&b, "moved_on_b", f->moved_b, true);
		kv_u(&b, "paired", f->paired, true);
		kv_u(&b, "kept", f->kept, true);
		kv_u(&b, "deletions_held_on_a", f->held_a, true);
		kv_u(&b, "deletions_held_on_b", f->held_b, true);
		kv_b(&b, "renamed", f->renamed, true);
		kv_b(&b, "gone_on_one_side", f->vanished, true);
		kv_b(&b, "failed", f->failed, true);
		kv_str(&b, "error", f->error, true);
		buf_addc(&b, '}');
	}
	buf_addc(&b, ']');
	refusals(&b, r->copies.refusals, r->copies.nrefusals);
	buf_adds(&b, "}\n");
	return buf_detach(&b);
}

int report_write(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	if (fchmod(fd, 0600) < 0 || write_all(fd, text, strlen(text)) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return close(fd);
}
