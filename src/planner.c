/*
 * planner.c — folder mapping: a pure function of folder lists, state and
 * rules (see planner.h for the rules).
 */
#include "planner.h"

#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

#include "mutf7.h"
#include "util.h"

/* Look-alikes for a delimiter inside a name (UTF-8). */
static const char *lookalike(char c)
{
	switch (c) {
	case '/': return "\xE2\x88\x95"; /* U+2215 DIVISION SLASH */
	case '.': return "\xE2\x80\xA4"; /* U+2024 ONE DOT LEADER */
	case '\\': return "\xEF\xBC\xBC"; /* U+FF3C FULLWIDTH REVERSE SOLIDUS */
	default: return "_";
	}
}

static bool is_inbox(const char *s)
{
	return !ascii_strcasecmp(s, "INBOX");
}

char *plan_path_of(const char *wire, const char *prefix, char delim)
{
	if (is_inbox(wire))
		return xstrdup("INBOX");
	size_t pl = prefix ? strlen(prefix) : 0;
	if (pl && !strncmp(wire, prefix, pl) && wire[pl])
		wire += pl;
	struct buf out = BUF_INIT;
	const char *p = wire;
	for (;;) {
		const char *e = delim ? strchr(p, delim) : NULL;
		size_t len = e ? (size_t)(e - p) : strlen(p);
		char *raw = xstrndup(p, len);
		char *dec = mutf7_decode(raw);
		free(raw);
		if (!dec) {
			buf_release(&out);
			return NULL;
		}
		if (out.len)
			buf_addc(&out, '/');
		for (const char *q = dec; *q; q++) {
			if (*q == '/')
				buf_adds(&out, lookalike('/'));
			else
				buf_addc(&out, *q);
		}
		free(dec);
		if (!e)
			break;
		p = e + 1;
	}
	return buf_detach(&out);
}

char *plan_wire_of(const char *path, const char *prefix, char delim)
{
	if (is_inbox(path))
		return xstrdup("INBOX");
	struct buf out = BUF_INIT;
	buf_adds(&out, prefix ? prefix : "");
	const char *p = path;
	bool first = true;
	for (;;) {
		const char *e = strchr(p, '/');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		struct buf comp = BUF_INIT;
		for (size_t i = 0; i < len; i++) {
			if (p[i] == (delim ? delim : '/')) {
				buf_adds(&comp, lookalike(p[i]));
			} else if (delim && delim != '/' && len - i >= 3 &&
			    !memcmp(p + i, lookalike('/'), 3)) {
				/* plan_path_of's stand-in for a '/' in a name:
				 * a plain '/' where it is not the delimiter */
				buf_addc(&comp, '/');
				i += 2;
			} else {
				buf_addc(&comp, p[i]);
			}
		}
		char *enc = mutf7_encode(comp.s ? comp.s : "");
		buf_release(&comp);
		if (!enc) {
			buf_release(&out);
			return NULL;
		}
		if (!first)
			buf_addc(&out, delim ? delim : '/');
		buf_adds(&out, enc);
		free(enc);
		first = false;
		if (!e)
			break;
		p = e + 1;
	}
	return buf_detach(&out);
}

/* ---- the escape rule (planner.h) ---- */

/* Appends the look-alike of an escaped character: U+2215 for '/' (as for a
 * delimiter inside a name), else the fullwidth form, U+FEE0 above it. */
static void add_escaped(struct buf *b, char c)
{
	if (c == '/') {
		buf_adds(b, lookalike('/'));
		return;
	}
	unsigned cp = 0xFEE0u + (unsigned char)c;
	buf_addc(b, (char)(0xE0 | (cp >> 12)));
	buf_addc(b, (char)(0x80 | ((cp >> 6) & 0x3F)));
	buf_addc(b, (char)(0x80 | (cp & 0x3F)));
}

static bool escaped_char(char c)
{
	return c && strchr(PLAN_ESCAPED_CHARS, c);
}

char *plan_escape_name(const char *utf8)
{
	struct buf out = BUF_INIT;
	for (const char *p = utf8; *p; p++) {
		if (escaped_char(*p))
			add_escaped(&out, *p);
		else
			buf_addc(&out, *p);
	}
	return buf_detach(&out);
}

char *plan_unescape_name(const char *utf8)
{
	struct buf out = BUF_INIT;
	for (const unsigned char *p = (const unsigned char *)utf8; *p; p++) {
		if (p[0] == 0xE2 && p[1] == 0x88 && p[2] == 0x95) {
			buf_addc(&out, '/');
			p += 2;
			continue;
		}
		if (p[0] == 0xEF && (p[1] == 0xBC || p[1] == 0xBD) && p[2] >= 0x80 && p[2] < 0xC0) {
			unsigned cp = 0xF000u | (unsigned)(p[1] & 0x3F) << 6 | (unsigned)(p[2] & 0x3F);
			char c = (char)(cp - 0xFEE0u);
			if (cp > 0xFEE0u && cp - 0xFEE0u < 0x7F && c != '/' && escaped_char(c)) {
				buf_addc(&out, c);
				p += 2;
				continue;
			}
		}
		buf_addc(&out, (char)*p);
	}
	return buf_detach(&out);
}

char *plan_escape_wire(const char *wire, const char *prefix, char delim)
{
	if (is_inbox(wire))
		return xstrdup("INBOX");
	struct buf out = BUF_INIT;
	const char *p = wire;
	size_t pl = prefix ? strlen(prefix) : 0;
	if (pl && !strncmp(wire, prefix, pl) && wire[pl]) {
		buf_add(&out, wire, pl);
		p += pl;
	}
	for (;;) {
		const char *e = delim ? strchr(p, delim) : NULL;
		size_t len = e ? (size_t)(e - p) : strlen(p);
		char *raw = xstrndup(p, len);
		char *dec = mutf7_decode(raw);
		free(raw);
		char *enc = NULL;
		if (dec) {
			char *esc = plan_escape_name(dec);
			enc = mutf7_encode(esc);
			free(esc);
			free(dec);
		}
		if (!enc) {
			buf_release(&out);
			return NULL;
		}
		buf_adds(&out, enc);
		free(enc);
		if (!e)
			break;
		buf_addc(&out, delim);
		p = e + 1;
	}
	return buf_detach(&out);
}

/* ---- special use ---- */

struct role {
	unsigned attr;
	const char *names[6];
};

static const struct role roles[] = {
	{FA_SENT, {"Sent", "Sent Items", "Sent Messages", "Sent Mail", NULL}},
	{FA_DRAFTS, {"Drafts", "Draft", NULL}},
	{FA_TRASH, {"Trash", "Deleted Items", "Deleted Messages", "Bin", NULL}},
	{FA_JUNK, {"Junk", "Spam", "Junk E-mail", "Junk Email", "Bulk Mail", NULL}},
	{FA_ARCHIVE, {"Archive", "Archives", NULL}},
};

static bool role_named(const struct role *r, const char *path)
{
	for (size_t i = 0; r->names[i]; i++)
		if (!ascii_strcasecmp(r->names[i], path))
			return true;
	return false;
}

static const struct role *role_of(unsigned attrs, const char *path)
{
	for (size_t i = 0; i < ARRAY_SIZE(roles); i++)
		if (attrs & roles[i].attr)
			return &roles[i];
	for (size_t i = 0; i < ARRAY_SIZE(roles); i++)
		if (role_named(&roles[i], path))
			return &roles[i];
	return NULL;
}

static char delim_of(const struct plan_side *side)
{
	if (side->delim)
		return side->delim;
	for (size_t i = 0; i < side->folders->n; i++)
		if (side->folders->v[i].delim)
			return side->folders->v[i].delim;
	return '/';
}

static const struct store_folder *find_wire(const struct plan_side *side, const char *wire)
{
	for (size_t i = 0; i < side->folders->n; i++) {
		const struct store_folder *f = &side->folders->v[i];
		if (!strcmp(f->name, wire) || (is_inbox(wire) && is_inbox(f->name)))
			return f;
	}
	return NULL;
}

/* The destination path for a special-use source folder, or NULL. */
static char *special_target(const struct role *r, const char *src_path,
    const struct plan_side *dst, char ddelim)
{
	for (size_t i = 0; i < dst->folders->n; i++) {
		const struct store_folder *f = &dst->folders->v[i];
		if ((f->attrs & r->attr) && !(f->attrs & FA_NOSELECT))
			return plan_path_of(f->name, dst->prefix, f->delim ? f->delim : ddelim);
	}
	/* Prefer the source's own name, then the list order. */
	char *same = NULL, *other = NULL;
	for (size_t i = 0; i < dst->folders->n; i++) {
		const struct store_folder *f = &dst->folders->v[i];
		if (f->attrs & FA_NOSELECT)
			continue;
		char *p = plan_path_of(f->name, dst->prefix, f->delim ? f->delim : ddelim);
		if (p && role_named(r, p)) {
			if (!ascii_strcasecmp(p, src_path) && !same)
				same = p, p = NULL;
			else if (!other)
				other = p, p = NULL;
		}
		free(p);
	}
	if (same) {
		free(other);
		return same;
	}
	return other;
}

static bool glob_match(const char *glob, const char *path)
{
	return fnmatch(glob, path, 0) == 0;
}

/* --map: the longest SRC that is path or a parent of it. */
static char *apply_maps(const struct plan_rules *rules, const char *path)
{
	const struct plan_map *best = NULL;
	size_t best_len = 0;
	for (size_t i = 0; i < rules->nmaps; i++) {
		const struct plan_map *m = &rules->maps[i];
		size_t l = strlen(m->src);
		bool hit = !strcmp(path, m->src) || (!strncmp(path, m->src, l) && path[l] == '/') ||
		    (is_inbox(m->src) && is_inbox(path));
		if (hit && l >= best_len) {
			best = m;
			best_len = l;
		}
	}
	if (!best)
		return NULL;
	if (is_inbox(path) || !path[best_len])
		return xstrdup(best->dst);
	return xasprintf("%s%s", best->dst, path + best_len);
}

static void add_warning(struct plan *p, char *w)
{
	p->warnings = xrealloc(p->warnings, (p->nwarnings + 1) * sizeof *p->warnings);
	p->warnings[p->nwarnings++] = w;
}

int plan_build(struct plan *p, const struct plan_side *src, const struct plan_side *dst,
    const struct plan_rules *rules, const struct plan_known *known, size_t nknown,
    char **err)
{
	memset(p, 0, sizeof *p);
	*err = NULL;
	char sdelim = delim_of(src), ddelim = delim_of(dst);
	bool *glob_used = xcalloc(rules->nfolders ? rules->nfolders : 1, sizeof(bool));
	p->v = xcalloc(src->folders->n ? src->folders->n : 1, sizeof *p->v);

	for (size_t i = 0; i < src->folders->n; i++) {
		const struct store_folder *f = &src->folders->v[i];
		struct plan_entry *e = &p->v[p->n];
		char *path = plan_path_of(f->name, src->prefix, f->delim ? f->delim : sdelim);
		if (!path) {
			add_warning(p, xasprintf("source folder '%s' has an invalid modified UTF-7 "
			    "name; copied under its raw name", f->name));
			path = xstrdup(f->name);
		}
		e->src_name = xstrdup(f->name);
		e->src_path = path;
		e->src_attrs = f->attrs;
		p->n++;

		bool named = false;
		for (size_t g = 0; g < rules->nfolders; g++)
			if (glob_match(rules->folders[g], path)) {
				glob_used[g] = true;
				named = true;
			}
		if (f->attrs & (FA_NOSELECT | FA_NONEXISTENT)) {
			e->action = PLAN_SKIP;
			e->reason = "cannot hold messages (\\Noselect)";
			continue;
		}
		if (rules->nfolders && !named) {
			e->action = PLAN_SKIP;
			e->reason = "not selected by --folder";
			continue;
		}
		bool excluded = false;
		for (size_t x = 0; x < rules->nexcludes; x++)
			if (glob_match(rules->excludes[x], path))
				excluded = true;
		if (excluded) {
			e->action = PLAN_SKIP;
			e->reason = "excluded by --exclude";
			continue;
		}
		if ((f->attrs & (FA_ALL | FA_IMPORTANT | FA_FLAGGED)) && !named) {
			e->action = PLAN_SKIP;
			e->reason = "virtual folder (\\All, \\Important or \\Flagged): its "
			    "messages are copied from their own folders";
			continue;
		}

		char *dpath = apply_maps(rules, path);
		const char *known_dst = NULL;
		for (size_t k = 0; k < nknown; k++)
			if (!strcmp(known[k].src_name, f->name))
				known_dst = known[k].dst_name;
		if (dpath) {
			e->reason = "--map";
		} else if (rules->into) {
			dpath = src->single ? xstrdup(rules->into)
			    : xasprintf("%s/%s", rules->into, path);
			e->reason = "--into";
		} else if (known_dst) {
			e->dst_name = xstrdup(known_dst);
			e->dst_path = plan_path_of(known_dst, dst->prefix, ddelim);
			if (!e->dst_path)
				e->dst_path = xstrdup(known_dst);
			/* an escaped name chosen by an earlier run: say so */
			char *plain = plan_wire_of(path, dst->prefix, ddelim);
			char *esc = plain ? plan_escape_wire(plain, dst->prefix, ddelim) : NULL;
			e->reason = esc && strcmp(esc, plain) && !strcmp(esc, known_dst)
			    ? "escaped as in earlier runs: the destination refused the name"
			    : "as in earlier runs";
			free(plain);
			free(esc);
		} else {
			const struct role *r = is_inbox(path) ? NULL : role_of(f->attrs, path);
			if (r && (dpath = special_target(r, path, dst, ddelim)))
				e->reason = "special-use folder";
			else {
				dpath = xstrdup(path);
				e->reason = "same name";
			}
		}
		if (!e->dst_name) {
			e->dst_path = dpath;
			e->dst_name = plan_wire_of(dpath, dst->prefix, ddelim);
			if (!e->dst_name) {
				*err = xasprintf("destination folder name '%s' is not valid UTF-8", dpath);
				goto fail;
			}
		}
		/* a \Noselect destination cannot take messages: CREATE makes it a
		 * folder (and is harmless where it already is one) */
		const struct store_folder *df = find_wire(dst, e->dst_name);
		e->action = df && !(df->attrs & (FA_NOSELECT | FA_NONEXISTENT)) ? PLAN_COPY
		    : PLAN_CREATE;
		if (e->action == PLAN_CREATE) {
			char *esc = plan_escape_wire(e->dst_name, dst->prefix, ddelim);
			if (esc && strcmp(esc, e->dst_name)) {
				e->dst_escaped = esc;
				e->dst_escaped_path = plan_path_of(esc, dst->prefix, ddelim);
				if (!e->dst_escaped_path)
					e->dst_escaped_path = xstrdup(esc);
			} else {
				free(esc);
			}
		}
	}

	for (size_t g = 0; g < rules->nfolders && !rules->allow_unmatched; g++)
		if (!glob_used[g]) {
			*err = xasprintf("--folder '%s' matches no folder at the source",
			    rules->folders[g]);
			goto fail;
		}
	/* The escape rule never merges folders: an escaped name that is
	 * another folder's destination (or escaped name) is not offered. */
	for (size_t i = 0; i < p->n; i++) {
		struct plan_entry *a = &p->v[i];
		if (!a->dst_escaped)
			continue;
		for (size_t j = 0; j < p->n; j++) {
			const struct plan_entry *b = &p->v[j];
			if (j == i || b->action == PLAN_SKIP)
				continue;
			if (!strcmp(a->dst_escaped, b->dst_name) ||
			    (j < i && b->dst_escaped && !strcmp(a->dst_escaped, b->dst_escaped))) {
				add_warning(p, xasprintf("'%s': if the destination refuses this name, "
				    "its escaped form '%s' is that of '%s' already: not used",
				    a->src_path, a->dst_escaped_path, b->src_path));
				free(a->dst_escaped);
				free(a->dst_escaped_path);
				a->dst_escaped = a->dst_escaped_path = NULL;
				break;
			}
		}
	}
	/* Two source folders into one destination folder: allowed (their
	 * messages are tracked apart), but worth saying. */
	for (size_t i = 0; i < p->n; i++)
		for (size_t j = i + 1; j < p->n; j++)
			if (p->v[i].action != PLAN_SKIP && p->v[j].action != PLAN_SKIP &&
			    !strcmp(p->v[i].dst_name, p->v[j].dst_name))
				add_warning(p, xasprintf("'%s' and '%s' both go to '%s'",
				    p->v[i].src_path, p->v[j].src_path, p->v[i].dst_path));
	free(glob_used);
	return 0;
fail:
	free(glob_used);
	plan_free(p);
	return -1;
}

void plan_free(struct plan *p)
{
	for (size_t i = 0; i < p->n; i++) {
		free(p->v[i].src_name);
		free(p->v[i].src_path);
		free(p->v[i].dst_name);
		free(p->v[i].dst_path);
		free(p->v[i].dst_escaped);
		free(p->v[i].dst_escaped_path);
	}
	free(p->v);
	for (size_t i = 0; i < p->nwarnings; i++)
		free(p->warnings[i]);
	free(p->warnings);
	memset(p, 0, sizeof *p);
}

void plan_rules_free(struct plan_rules *r)
{
	for (size_t i = 0; i < r->nfolders; i++)
		free(r->folders[i]);
	free(r->folders);
	for (size_t i = 0; i < r->nexcludes; i++)
		free(r->excludes[i]);
	free(r->excludes);
	for (size_t i = 0; i < r->nmaps; i++) {
		free(r->maps[i].src);
		free(r->maps[i].dst);
	}
	free(r->maps);
	free(r->into);
	memset(r, 0, sizeof *r);
}
