/* fuzz_imap_response.c — libFuzzer harness: libetpan's IMAP response
 * parser as postino uses it (docs/libetpan.md, "Unit-testing without a
 * socket"): the bytes go through postino's guard (imap_guard.c, which
 * net.c puts in front of libetpan), then what it lets through goes to
 * mailimap_response_parse on a NULL stream, with the extensions
 * postino relies on (UIDPLUS, CONDSTORE, NAMESPACE...) registered, as
 * libetpan does by default. Known libetpan 1.9.4 defects are listed in
 * docs/reliability.md. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <libetpan/libetpan.h>

#include "imap_guard.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Exported by libetpan but not declared in its headers. */
int mailimap_response_parse(mailstream *fd, MMAPString *buffer,
    struct mailimap_parser_context *parser_ctx, size_t *indx,
    struct mailimap_response **result, size_t progr_rate,
    progress_function *progr_fun);

/*
 * libetpan is a shared library without coverage instrumentation, so
 * libFuzzer would be blind to what the parser did. This walker (compiled
 * with instrumentation) visits the parsed tree the way postino's response
 * handling does: each kind of response, response code, FETCH item, flag and
 * extension is its own branch here, which gives the fuzzer its feedback.
 * It also reads every string, so a dangling pointer shows under ASan.
 */
static volatile size_t sink_;

static void see_str(const char *s)
{
	if (s)
		sink_ += strlen(s);
}

static void see_flag(struct mailimap_flag *f)
{
	if (!f)
		return;
	switch (f->fl_type) {
	case MAILIMAP_FLAG_ANSWERED: sink_ += 1; break;
	case MAILIMAP_FLAG_FLAGGED: sink_ += 2; break;
	case MAILIMAP_FLAG_DELETED: sink_ += 3; break;
	case MAILIMAP_FLAG_SEEN: sink_ += 4; break;
	case MAILIMAP_FLAG_DRAFT: sink_ += 5; break;
	case MAILIMAP_FLAG_KEYWORD: see_str(f->fl_data.fl_keyword); break;
	case MAILIMAP_FLAG_EXTENSION: see_str(f->fl_data.fl_extension); break;
	default: sink_ += 6; break;
	}
}

static void see_ext(struct mailimap_extension_data *e)
{
	if (!e || !e->ext_extension)
		return;
	switch (e->ext_extension->ext_id) {
	case MAILIMAP_EXTENSION_UIDPLUS:
		if (e->ext_type == MAILIMAP_UIDPLUS_RESP_CODE_APND && e->ext_data) {
			struct mailimap_uidplus_resp_code_apnd *a = e->ext_data;
			sink_ += a->uid_uidvalidity;
			if (a->uid_set && a->uid_set->set_list)
				sink_ += (size_t)clist_count(a->uid_set->set_list);
		} else if (e->ext_type == MAILIMAP_UIDPLUS_RESP_CODE_COPY) {
			sink_ += 11;
		} else {
			sink_ += 12;
		}
		break;
	case MAILIMAP_EXTENSION_CONDSTORE:
		if (e->ext_type == MAILIMAP_CONDSTORE_TYPE_FETCH_DATA && e->ext_data) {
			struct mailimap_condstore_fetch_mod_resp *m = e->ext_data;
			sink_ += (size_t)m->cs_modseq_value;
		} else if (e->ext_type == MAILIMAP_CONDSTORE_TYPE_RESP_TEXT_CODE) {
			sink_ += 13;
		} else if (e->ext_type == MAILIMAP_CONDSTORE_TYPE_SEARCH_DATA) {
			sink_ += 14;
		} else if (e->ext_type == MAILIMAP_CONDSTORE_TYPE_STATUS_INFO) {
			sink_ += 15;
		}
		break;
	case MAILIMAP_EXTENSION_QRESYNC: sink_ += 16; break;
	case MAILIMAP_EXTENSION_NAMESPACE: sink_ += 17; break;
	case MAILIMAP_EXTENSION_ID: sink_ += 18; break;
	case MAILIMAP_EXTENSION_ENABLE: sink_ += 19; break;
	case MAILIMAP_EXTENSION_XLIST: sink_ += 20; break;
	case MAILIMAP_EXTENSION_ANNOTATEMORE: sink_ += 21; break;
	case MAILIMAP_EXTENSION_ACL: sink_ += 22; break;
	case MAILIMAP_EXTENSION_QUOTA: sink_ += 23; break;
	default: sink_ += 24; break;
	}
}

static void see_code(struct mailimap_resp_text_code *c)
{
	if (!c)
		return;
	switch (c->rc_type) {
	case MAILIMAP_RESP_TEXT_CODE_ALERT: sink_ += 31; break;
	case MAILIMAP_RESP_TEXT_CODE_BADCHARSET: sink_ += 32; break;
	case MAILIMAP_RESP_TEXT_CODE_CAPABILITY_DATA: sink_ += 33; break;
	case MAILIMAP_RESP_TEXT_CODE_PARSE: sink_ += 34; break;
	case MAILIMAP_RESP_TEXT_CODE_PERMANENTFLAGS:
		for (clistiter *it = c->rc_data.rc_perm_flags ? clist_begin(c->rc_data.rc_perm_flags)
		    : NULL; it; it = clist_next(it)) {
			struct mailimap_flag_perm *fp = clist_content(it);
			if (fp->fl_type == MAILIMAP_FLAG_PERM_ALL)
				sink_ += 35;
			else
				see_flag(fp->fl_flag);
		}
		break;
	case MAILIMAP_RESP_TEXT_CODE_READ_ONLY: sink_ += 36; break;
	case MAILIMAP_RESP_TEXT_CODE_READ_WRITE: sink_ += 37; break;
	case MAILIMAP_RESP_TEXT_CODE_TRY_CREATE: sink_ += 38; break;
	case MAILIMAP_RESP_TEXT_CODE_UIDNEXT: sink_ += c->rc_data.rc_uidnext; break;
	case MAILIMAP_RESP_TEXT_CODE_UIDVALIDITY: sink_ += c->rc_data.rc_uidvalidity; break;
	case MAILIMAP_RESP_TEXT_CODE_UNSEEN: sink_ += 39; break;
	case MAILIMAP_RESP_TEXT_CODE_OTHER:
		see_str(c->rc_data.rc_atom.atom_name);
		see_str(c->rc_data.rc_atom.atom_value);
		break;
	case MAILIMAP_RESP_TEXT_CODE_EXTENSION: see_ext(c->rc_data.rc_ext_data); break;
	default: sink_ += 40; break;
	}
}

static void see_text(struct mailimap_resp_text *t)
{
	if (!t)
		return;
	see_code(t->rsp_code);
	see_str(t->rsp_text);
}

static void see_msg_att(struct mailimap_msg_att *att)
{
	if (!att)
		return;
	for (clistiter *it = clist_begin(att->att_list); it; it = clist_next(it)) {
		struct mailimap_msg_att_item *item = clist_content(it);
		if (item->att_type == MAILIMAP_MSG_ATT_ITEM_DYNAMIC) {
			struct mailimap_msg_att_dynamic *d = item->att_data.att_dyn;
			for (clistiter *f = d && d->att_list ? clist_begin(d->att_list) : NULL; f;
			    f = clist_next(f)) {
				struct mailimap_flag_fetch *ff = clist_content(f);
				if (ff->fl_type == MAILIMAP_FLAG_FETCH_RECENT)
					sink_ += 41;
				else
					see_flag(ff->fl_flag);
			}
		} else if (item->att_type == MAILIMAP_MSG_ATT_ITEM_STATIC) {
			struct mailimap_msg_att_static *st = item->att_data.att_static;
			switch (st->att_type) {
			case MAILIMAP_MSG_ATT_UID: sink_ += st->att_data.att_uid; break;
			case MAILIMAP_MSG_ATT_RFC822_SIZE: sink_ += st->att_data.att_rfc822_size; break;
			case MAILIMAP_MSG_ATT_INTERNALDATE:
				if (st->att_data.att_internal_date) {
					struct mailimap_date_time *dt = st->att_data.att_internal_date;
					sink_ += (size_t)(dt->dt_year + dt->dt_zone);
				}
				break;
			case MAILIMAP_MSG_ATT_BODY_SECTION:
				if (st->att_data.att_body_section) {
					struct mailimap_msg_att_body_section *b = st->att_data.att_body_section;
					if (b->sec_body_part && b->sec_length) {
						/* every byte must be readable */
						const volatile char *p = b->sec_body_part;
						sink_ += (size_t)p[0] + (size_t)p[b->sec_length - 1];
					}
				}
				break;
			case MAILIMAP_MSG_ATT_ENVELOPE: sink_ += 42; break;
			case MAILIMAP_MSG_ATT_RFC822: sink_ += 43; break;
			case MAILIMAP_MSG_ATT_RFC822_HEADER: sink_ += 44; break;
			case MAILIMAP_MSG_ATT_RFC822_TEXT: sink_ += 45; break;
			case MAILIMAP_MSG_ATT_BODYSTRUCTURE: sink_ += 46; break;
			case MAILIMAP_MSG_ATT_BODY: sink_ += 47; break;
			default: sink_ += 48; break;
			}
		} else if (item->att_type == MAILIMAP_MSG_ATT_ITEM_EXTENSION) {
			see_ext(item->att_data.att_extension_data);
		}
	}
}

static void see_data(struct mailimap_response_data *d)
{
	if (!d)
		return;
	switch (d->rsp_type) {
	case MAILIMAP_RESP_DATA_TYPE_COND_STATE:
		if (d->rsp_data.rsp_cond_state) {
			sink_ += (size_t)d->rsp_data.rsp_cond_state->rsp_type;
			see_text(d->rsp_data.rsp_cond_state->rsp_text);
		}
		break;
	case MAILIMAP_RESP_DATA_TYPE_COND_BYE:
		if (d->rsp_data.rsp_bye)
			see_text(d->rsp_data.rsp_bye->rsp_text);
		break;
	case MAILIMAP_RESP_DATA_TYPE_MAILBOX_DATA: {
		struct mailimap_mailbox_data *mb = d->rsp_data.rsp_mailbox_data;
		if (!mb)
			break;
		switch (mb->mbd_type) {
		case MAILIMAP_MAILBOX_DATA_FLAGS:
			for (clistiter *it = mb->mbd_data.mbd_flags && mb->mbd_data.mbd_flags->fl_list
			    ? clist_begin(mb->mbd_data.mbd_flags->fl_list) : NULL; it; it = clist_next(it))
				see_flag(clist_content(it));
			break;
		case MAILIMAP_MAILBOX_DATA_LIST:
		case MAILIMAP_MAILBOX_DATA_LSUB: {
			struct mailimap_mailbox_list *l = mb->mbd_data.mbd_list;
			if (l) {
				see_str(l->mb_name);
				sink_ += (size_t)l->mb_delimiter;
				if (l->mb_flag && l->mb_flag->mbf_oflags)
					sink_ += (size_t)clist_count(l->mb_flag->mbf_oflags);
			}
			break;
		}
		case MAILIMAP_MAILBOX_DATA_SEARCH: sink_ += 51; break;
		case MAILIMAP_MAILBOX_DATA_STATUS:
			if (mb->mbd_data.mbd_status) {
				see_str(mb->mbd_data.mbd_status->st_mailbox);
				for (clistiter *it = mb->mbd_data.mbd_status->st_info_list
				    ? clist_begin(mb->mbd_data.mbd_status->st_info_list) : NULL; it;
				    it = clist_next(it)) {
					struct mailimap_status_info *si = clist_content(it);
					if (si->st_att == MAILIMAP_STATUS_ATT_EXTENSION ||
					    si->st_att == MAILIMAP_STATUS_ATT_HIGHESTMODSEQ)
						see_ext(si->st_ext_data);
					else
						sink_ += si->st_value;
				}
			}
			break;
		case MAILIMAP_MAILBOX_DATA_EXISTS: sink_ += mb->mbd_data.mbd_exists; break;
		case MAILIMAP_MAILBOX_DATA_RECENT: sink_ += mb->mbd_data.mbd_recent; break;
		case MAILIMAP_MAILBOX_DATA_EXTENSION_DATA: see_ext(mb->mbd_data.mbd_extension); break;
		default: sink_ += 52; break;
		}
		break;
	}
	case MAILIMAP_RESP_DATA_TYPE_MESSAGE_DATA: {
		struct mailimap_message_data *md = d->rsp_data.rsp_message_data;
		if (md && md->mdt_type == MAILIMAP_MESSAGE_DATA_FETCH)
			see_msg_att(md->mdt_msg_att);
		else if (md)
			sink_ += md->mdt_number;
		break;
	}
	case MAILIMAP_RESP_DATA_TYPE_CAPABILITY_DATA:
		if (d->rsp_data.rsp_capability_data && d->rsp_data.rsp_capability_data->cap_list)
			sink_ += (size_t)clist_count(d->rsp_data.rsp_capability_data->cap_list);
		break;
	case MAILIMAP_RESP_DATA_TYPE_EXTENSION_DATA: see_ext(d->rsp_data.rsp_extension_data); break;
	default: sink_ += 53; break;
	}
}

static void see_response(struct mailimap_response *resp)
{
	for (clistiter *it = resp->rsp_cont_req_or_resp_data_list
	    ? clist_begin(resp->rsp_cont_req_or_resp_data_list) : NULL; it; it = clist_next(it)) {
		struct mailimap_cont_req_or_resp_data *c = clist_content(it);
		if (c->rsp_type == MAILIMAP_RESP_RESP_DATA)
			see_data(c->rsp_data.rsp_resp_data);
		else
			sink_ += 54;
	}
	struct mailimap_response_done *done = resp->rsp_resp_done;
	if (done && done->rsp_type == MAILIMAP_RESP_DONE_TYPE_TAGGED && done->rsp_data.rsp_tagged &&
	    done->rsp_data.rsp_tagged->rsp_cond_state) {
		sink_ += (size_t)done->rsp_data.rsp_tagged->rsp_cond_state->rsp_type;
		see_text(done->rsp_data.rsp_tagged->rsp_cond_state->rsp_text);
	} else if (done && done->rsp_type == MAILIMAP_RESP_DONE_TYPE_FATAL) {
		sink_ += 55;
	}
}

/*
 * libetpan 1.9.4 allocates an announced literal up front ({4000000000}
 * asks for 4 GB: docs/libetpan.md #3). That is known, and how postino
 * copes with it is checked end to end by test_rel_hostile; here it would
 * only stop the fuzzer, so inputs announcing more than 16 MiB are skipped.
 */
static bool huge_literal(const uint8_t *d, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (d[i] != '{')
			continue;
		uint64_t v = 0;
		size_t j = i + 1;
		while (j < n && d[j] >= '0' && d[j] <= '9' && v < (1u << 30))
			v = v * 10 + (uint64_t)(d[j++] - '0');
		if (v > (1u << 24))
			return true;
	}
	return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (huge_literal(data, size))
		return 0;
	/* The parser needs a complete response; a tagged line ends it. */
	MMAPString *buf = mmap_string_new_len((const char *)data, size);
	if (!buf)
		return 0;
	mmap_string_append(buf, "\r\nA1 OK done\r\n");
	struct imap_guard guard;
	memset(&guard, 0, sizeof guard);
	if (imap_guard_feed(&guard, buf->str, buf->len) < 0) {
		/* postino drops the connection before libetpan parses */
		mmap_string_free(buf);
		return 0;
	}
	/* The parser context reads workaround switches from a session: one
	 * without a stream will do (NULL crashes in libetpan). */
	static mailimap *session;
	if (!session)
		session = mailimap_new(0, NULL);
	struct mailimap_parser_context *ctx = mailimap_parser_context_new(session);
	size_t idx = 0;
	struct mailimap_response *resp = NULL;
	int r = mailimap_response_parse(NULL, buf, ctx, &idx, &resp, 0, NULL);
	if (r == MAILIMAP_NO_ERROR && resp) {
		see_response(resp);
		mailimap_response_free(resp);
	} else {
		sink_ += (size_t)r;
	}
	mailimap_parser_context_free(ctx);
	mmap_string_free(buf);
	return 0;
}
