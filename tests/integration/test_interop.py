#!/usr/bin/env python3
"""test_interop — servers other than a default Dovecot (issue #8).

Proves, against real Dovecot "the other way round" (personal namespace
prefix 'INBOX.', separator '.') and against tests/tools/fakeserver.py
playing Cyrus, Office 365 and Gmail:
  - folders map by their components below each side's prefix, both ways:
    an fs Dovecot (no prefix, '/') copied into an 'INBOX.' Dovecot and that
    one copied back into a fresh fs Dovecot are exact, every folder below
    the prefix; `postino mirror` both ways ends with both sides equal;
  - Cyrus-like folder creation: every CREATE below 'INBOX.' (top-level
    refused); a name with characters Cyrus refuses is created under the
    escape rule (fullwidth look-alikes), recorded in the state, shown by
    `plan` and kept by later runs, never a new level, never lost; a plain
    NO for an existing folder (no [ALREADYEXISTS]) is no failure; only
    folders subscribed at the source are subscribed; UIDVALIDITY shared by
    every folder (Cyrus) does not mix folders up;
  - message refusals with Cyrus's and Office 365's texts (invalid header,
    NUL byte, empty message, too big): each reported with the server's
    text, exit 1, everything else copied exactly; a rerun tries them again
    and duplicates nothing;
  - a per-folder keyword limit (Cyrus "Too many user flags in mailbox"):
    messages are copied without the keywords the folder cannot take, and
    the dropped keywords are reported;
  - a server refusing dates before 1970: the message is copied dated
    1970-01-01 and the changed date reported;
  - [OVERQUOTA] stops the run at once with a clear error: the messages left
    are reported, no further APPEND is sent;
  - Gmail: [Gmail]/All Mail, Important and Starred (\\All, \\Important,
    \\Flagged) are neither read nor copied; [Gmail]/Sent Mail goes to Sent.
"""

import os
import re
import sys

import harness as h
from harness import check

sys.path.insert(0, os.path.join(h.SOURCE_ROOT, 'tests', 'tools'))
import fakeserver  # noqa: E402
from fakeserver import FakeIMAP  # noqa: E402

FW = {c: chr(0xFEE0 + ord(c)) for c in '%!;<>{}|`*'}
FW['/'] = '\u2215'


def esc(name):
    """The escape rule (planner.h), written out again here."""
    return ''.join(FW.get(c, c) for c in name)


def fake_url(srv, user='alice'):
    return 'imap://%s@127.0.0.1:%d?tls=none' % (user, srv.port)


def copy(src_url, dst_url, state, extra=(), timeout=300):
    return h.run_postino(['copy', src_url, dst_url, '--state', state] +
                         list(extra), timeout=timeout)


def msg(i, subject='hello', extra=b'', size=0):
    body = b'body %d\r\n' % i
    if size:
        body += b'x' * max(0, size - len(body)) + b'\r\n'
    return (b'From: a%d@example.org\r\nTo: alice@example.com\r\n'
            b'Subject: %s %d\r\nMessage-ID: <interop-%d@test.postino>\r\n%s'
            b'\r\n' % (i, subject.encode(), i, i, extra) + body)


def fake_content(srv, folder):
    """Sorted [(bytes, lower-case flags, epoch)] of a fake server folder."""
    ms = srv.messages(folder)
    if ms is None:
        return None
    return sorted((bytes(m.data), tuple(sorted(f.lower() for f in m.flags)),
                   m.date[0]) for m in ms)


def dated(folders):
    """Gives every message spec without a date one (so that the copy's
    dates can be compared); returns FOLDERS."""
    n = 0
    for specs in folders.values():
        for s in specs:
            if 'date' not in s:
                n += 1
                s['date'] = (1_600_000_000 + 3600 * n, 0)
    return folders


def spec_content(specs):
    out = []
    for s in specs:
        if not isinstance(s, dict):
            s = {'data': s}
        d = s.get('date')
        out.append((bytes(s['data']),
                    tuple(sorted(f.lower() for f in s.get('flags', ()))),
                    d[0] if isinstance(d, tuple) else d))
    return sorted(out)


def creates(srv):
    return [str(c.args[0]) for c in srv.commands_named('CREATE')]


def appends_to(srv, name):
    return [c for c in srv.commands_named('APPEND') if str(c.args[0]) == name]


# --------------------------------------------------------------------------
# Dovecot, the other way round

def dovecot_both_ways(tmp):
    src = h.Dovecot(layout='fs', name='io-fs')
    pref = h.Dovecot(layout='maildir++', prefix='INBOX.', name='io-pref')
    folders = h.corpus('small')
    folders['v1.2'] = [h.Msg(msg(900), ('\\Seen',), (1_600_000_000, 0))]
    h.populate(src, 'alice', folders)
    want = h.snapshot(src)

    r = copy(src.url(), pref.url(), os.path.join(tmp, 'fs-pref.db'))
    h.expect_exit(r, 0, 'fs -> INBOX.-prefixed copy')
    got = h.snapshot(pref)
    # '.' is the destination's separator: "v1.2" keeps one level, with
    # U+2024 for its dot (the delimiter rule).
    want_pref = dict(want)
    want_pref['v1\u20242'] = want_pref.pop('v1.2')
    h.check_same(want_pref, got, 'fs -> INBOX.: exact, by components below '
                 'the prefix')
    with pref.connect() as c:
        typ, data = c.imap.list('""', '"*"')
    names = [h._parse_list_line(x)[2] for x in data if x]
    outside = [n for n in names if n != 'INBOX' and not n.startswith('INBOX.')]
    check(not outside, 'every folder below the INBOX. prefix', names)
    check('INBOX.Archive.2024.Q1' in names and 'INBOX.v1&ICQ-2' in names,
          'Archive/2024/Q1 is INBOX.Archive.2024.Q1; v1.2 is one level',
          names)

    # And back: the prefixed server as the source, into a fresh fs server.
    back = h.Dovecot(layout='fs', name='io-back')
    r = copy(pref.url(), back.url(), os.path.join(tmp, 'pref-fs.db'))
    h.expect_exit(r, 0, 'INBOX.-prefixed -> fs copy')
    h.check_same(got, h.snapshot(back), 'INBOX. -> fs: exact, the prefix '
                 'stripped (no INBOX/ level)')
    with back.connect() as c:
        check(not any(p.startswith('INBOX/') for p in c.folders()),
              'no folder below INBOX/ on the fs side', c.folders())
    r = copy(pref.url(), back.url(), os.path.join(tmp, 'pref-fs.db'))
    h.expect_exit(r, 0, 'INBOX. -> fs rerun')
    check(h.summary(r) and h.summary(r)['copied'] == 0,
          'INBOX. -> fs rerun copies nothing', h.show(r))
    back.stop()
    return src, pref


def mirror(a_url, b_url, state, what, expect=(0,)):
    r = h.run_postino(['mirror', a_url, b_url, '--state', state,
                       '--ca-file', h.default_ca().ca_file])
    check(r.returncode in expect, '%s: exit %s' % (what, expect), h.show(r))
    return r


def dovecot_mirror(tmp):
    """Mirror an fs Dovecot and an INBOX.-prefixed one, each way round as A."""
    for n, a_is_prefixed in enumerate((False, True)):
        fs = h.Dovecot(layout='fs', name='mi-fs%d' % n)
        pref = h.Dovecot(layout='maildir++', prefix='INBOX.',
                         name='mi-pref%d' % n)
        # the fs side also has the small corpus (non-ASCII names, nested
        # folders, keywords, a double delivery)
        corpus = h.corpus('small', seed=7 + n)
        corpus['INBOX'].append(h.Msg(msg(1), ('\\Seen',), (1_500_000_000, 0)))
        corpus['Projects/Alpha'] = [h.Msg(msg(2), ('$Label1',),
                                          (1_500_000_100, 60))]
        corpus['Only on fs'] = [h.Msg(msg(3), (), (1_500_000_200, 0))]
        h.populate(fs, 'alice', corpus)
        h.populate(pref, 'alice', {
            'INBOX': [h.Msg(msg(4), ('\\Flagged',), (1_500_000_300, 0))],
            'Projects/Beta': [h.Msg(msg(5), (), (1_500_000_400, -300))],
            'Archive/2024': [h.Msg(msg(6), ('\\Seen', 'work'),
                                   (1_500_000_500, 0))],
        })
        a, b = (pref, fs) if a_is_prefixed else (fs, pref)
        tag = 'mirror %s <-> %s' % (a.name, b.name)
        state = os.path.join(tmp, 'mirror%d.db' % n)
        mirror(a.url(), b.url(), state, tag + ' first pass')
        sa, sb = h.snapshot(a), h.snapshot(b)
        h.check_same(sa, sb, tag + ': both sides equal', ('A', 'B'))
        union = set(corpus) | {'Projects/Beta', 'Archive/2024'}
        n_all = h.total({f: len(m) for f, m in corpus.items()}) + 3
        check(set(sa) == union and h.total(sa) == n_all,
              tag + ': the union of both (%d messages), by path below the '
              'prefix' % n_all, h.describe(sa))
        with pref.connect() as c:
            typ, data = c.imap.list('""', '"*"')
        names = [h._parse_list_line(x)[2] for x in data if x]
        check(all(n == 'INBOX' or n.startswith('INBOX.') for n in names),
              tag + ': folders made on the prefixed side are below INBOX.',
              names)
        # A change on each side, a second pass: still equal.
        with a.connect() as c:
            c.append('Projects/Beta', msg(7), ['\\Seen'], (1_500_000_600, 0))
        with b.connect() as c:
            c.append('Projects/Alpha', msg(8), [], (1_500_000_700, 0))
        mirror(a.url(), b.url(), state, tag + ' second pass')
        sa, sb = h.snapshot(a), h.snapshot(b)
        h.check_same(sa, sb, tag + ': equal after changes on both sides',
                     ('A', 'B'))
        check(h.total(sa) == n_all + 2, tag + ': %d messages on each side'
              % (n_all + 2), h.describe(sa))
        fs.stop()
        pref.stop()


# --------------------------------------------------------------------------
# Cyrus-like folders

CYRUS = dict(namespace=('INBOX.', '.'), refuse_toplevel=True,
             create_exists_code=False, refuse_chars='/%!;<>{}|`',
             collapse_separators=True, create_parents=True)


def cyrus_folders(tmp):
    shared_uv = 1_700_000_000
    src_folders = {
        'INBOX': [{'data': msg(10), 'flags': ['\\Seen']}],
        'Work': [{'data': msg(11)}],
        'Work/Projects': [{'data': msg(12), 'flags': ['$Label1']}],
        'Offers 50%!': [{'data': msg(13)}],
        'Deals|2024': [{'data': msg(14)}],
        'Deals|2024/Q1 <new>': [{'data': msg(15)}],
        'a;b`c': [{'data': msg(16)}],
        'v1.2': [{'data': msg(17)}],
        'Team A': [{'data': msg(18)}],
        'Team B': [{'data': msg(19)}],
        'Unsubscribed': [{'data': msg(20)}],
        'Archive': [{'data': msg(23)}],
    }
    subscribed = ['INBOX', 'Work', 'Work/Projects', 'Offers 50%!',
                  'Deals|2024/Q1 <new>', 'v1.2', 'Team A']
    src = FakeIMAP({'folders': dated(src_folders), 'subscribed': subscribed,
                    'uidvalidity': shared_uv}).start()
    # INBOX and INBOX.Archive exist at the destination and share one
    # UIDVALIDITY too (Cyrus: the creation time in seconds)
    dst = FakeIMAP(dict(CYRUS, uidvalidity=shared_uv, folders={
        'INBOX': [], 'INBOX.Archive': []})).start()
    state = os.path.join(tmp, 'cyrus.db')
    maps = ['--map', 'Team A=Teams', '--map', 'Team B=Teams']
    want = {  # source folder -> destination wire name
        'INBOX': 'INBOX',
        'Work': 'INBOX.Work',
        'Work/Projects': 'INBOX.Work.Projects',
        'Offers 50%!': 'INBOX.' + h.mutf7_encode(esc('Offers 50%!')),
        'Deals|2024': 'INBOX.' + h.mutf7_encode(esc('Deals|2024')),
        'Deals|2024/Q1 <new>': 'INBOX.%s.%s' % (
            h.mutf7_encode(esc('Deals|2024')), h.mutf7_encode(esc('Q1 <new>'))),
        'a;b`c': 'INBOX.' + h.mutf7_encode(esc('a;b`c')),
        'v1.2': 'INBOX.v1&ICQ-2',
        'Unsubscribed': 'INBOX.Unsubscribed',
        'Archive': 'INBOX.Archive',
    }

    r = copy(fake_url(src), fake_url(dst), state, maps)
    h.expect_exit(r, 0, 'copy into a Cyrus-like server')
    made = creates(dst)
    check(all(n.startswith('INBOX.') for n in made),
          'every CREATE is below INBOX. (top-level names are refused)', made)
    for f, wire in want.items():
        check(fake_content(dst, wire) == spec_content(src_folders[f]),
              '%s -> %s: its messages, exactly' % (f, wire),
              '%r\n%s' % (fake_content(dst, wire), h.show(r)))
    teams = fake_content(dst, 'INBOX.Teams')
    check(teams == sorted(spec_content(src_folders['Team A']) +
                          spec_content(src_folders['Team B'])),
          'Team A and Team B both in INBOX.Teams (second CREATE: a plain NO '
          'for an existing folder, no failure)', teams)
    check(made.count('INBOX.Teams') == 2,
          'INBOX.Teams was created twice, the second answered NO', made)
    plain = [n for n in made if any(ch in n for ch in '%!|;<>`')]
    check(len(plain) >= 4, 'the plain names were tried first (%d)' %
          len(plain), made)
    # nothing with a refused character exists, nothing became a new level
    bad = [n for n in dst.folders() if any(ch in n for ch in '/%!;<>{}|`')]
    check(not bad, 'no folder name with a refused character', bad)
    extra = set(dst.folders()) - set(want.values()) - {'INBOX.Teams'}
    check(not extra, 'no other folder was made (no new level)', dst.folders())
    check('escape rule' in r.stderr and esc('Offers 50%!') in r.stderr,
          'the escaped names are reported', h.show(r))
    subs = {str(c.args[0]) for c in dst.commands_named('SUBSCRIBE')}
    want_subs = {want[f] for f in subscribed if f not in ('INBOX', 'Team A')}
    want_subs.add('INBOX.Teams')
    check(subs == want_subs, 'exactly the folders subscribed at the source '
          'are subscribed', 'got %s\nwant %s' % (sorted(subs),
                                                  sorted(want_subs)))

    # The escaped names are in the state: plan shows them, later runs use
    # them without trying the plain names again.
    r = h.run_postino(['plan', fake_url(src), fake_url(dst), '--state',
                       state] + maps)
    h.expect_exit(r, 0, 'plan after the copy')
    line = [ln for ln in r.stdout.splitlines() if ln.startswith('Offers 50%!')]
    check(line and esc('Offers 50%!') in line[0] and
          'escaped as in earlier runs' in line[0],
          'plan shows Offers 50%! going to its escaped name, and why',
          r.stdout)
    n_create = len(creates(dst))
    src.add_message('Offers 50%!', msg(21), ['\\Seen'], (1_600_000_000, 0))
    src.add_message('Work', msg(22))
    r = copy(fake_url(src), fake_url(dst), state, maps)
    h.expect_exit(r, 0, 'rerun into the Cyrus-like server')
    s = h.summary(r)
    check(s and s['copied'] == 2, 'rerun: the 2 new messages copied',
          h.show(r))
    check(len(creates(dst)) == n_create, 'rerun: no CREATE at all',
          creates(dst)[n_create:])
    check(len(fake_content(dst, want['Offers 50%!'])) == 2 and
          len(fake_content(dst, 'INBOX.Work')) == 2,
          'rerun: each new message in its own folder (UIDVALIDITY is the '
          'same in every folder)')
    src.stop()
    dst.stop()


def create_refused(tmp):
    """A folder refused under its plain and its escaped name fails alone,
    reported with both of the server's answers; nothing else is lost."""
    src_folders = dated({
        'INBOX': [{'data': msg(24)}],
        'Secret <x>': [{'data': msg(25)}],
        'Fine': [{'data': msg(26)}],
    })
    src = FakeIMAP({'folders': src_folders}).start()
    dst = FakeIMAP(dict(CYRUS, rules=[fakeserver.refuse(
        'CREATE', 'Permission denied', contains=b'Secret')])).start()
    r = copy(fake_url(src), fake_url(dst), os.path.join(tmp, 'cr.db'))
    h.expect_exit(r, 1, 'a folder that cannot be created: exit 1')
    check(re.search(r"Secret <x> -> .*FAILED: .*INBOX\.Secret <x>': Permission "
                    r"denied; nor as 'Secret %s' \(escape rule\): .*Permission "
                    r"denied" % re.escape(esc('<x>')), r.stdout),
          'the folder is reported failed, with both refusals', h.show(r))
    check(creates(dst).count('INBOX.Secret <x>') == 1 and
          creates(dst).count('INBOX.Secret ' + h.mutf7_encode(esc('<x>'))) == 1,
          'plain and escaped name each tried once', creates(dst))
    check(fake_content(dst, 'INBOX') == spec_content(src_folders['INBOX']) and
          fake_content(dst, 'INBOX.Fine') == spec_content(src_folders['Fine']),
          'the other folders are copied')
    check(not appends_to(dst, 'INBOX.Secret <x>'), 'nothing appended to '
          'the folder that does not exist')
    src.stop()
    dst.stop()


# --------------------------------------------------------------------------
# refused messages

CYRUS_NUL = 'Message contains NUL characters'
CYRUS_NOSEP = 'Message has no header/body separator'


def refusals(tmp):
    big = msg(35, size=40000)
    src_msgs = [
        {'data': msg(30), 'flags': ['\\Seen']},
        {'data': msg(31, extra=b'X-Broken header without colon\r\n'),
         'flags': ['$Label1']},
        {'data': msg(32, extra=b'X-Nul: a\0b\r\n')},
        {'data': b''},
        {'data': msg(34), 'flags': ['\\Flagged', 'work']},
        {'data': big, 'flags': ['\\Seen']},
        {'data': msg(36)},
    ]
    other = [{'data': msg(37)}]
    src = FakeIMAP({'folders': dated({'INBOX': src_msgs, 'Other': other})}
                   ).start()
    dst = FakeIMAP({
        'max_message_size': 30000,
        'rules': [
            fakeserver.cyrus_invalid_header(contains=b'X-Broken header'),
            fakeserver.refuse('APPEND', CYRUS_NUL, contains=b'X-Nul:'),
            fakeserver.refuse('APPEND', CYRUS_NOSEP, match=lambda cmd: any(
                len(m.data) == 0 for m in cmd.messages)),
        ]}).start()
    state = os.path.join(tmp, 'refusals.db')
    for attempt in ('first run', 'rerun'):
        r = copy(fake_url(src), fake_url(dst), state)
        h.expect_exit(r, 1, 'refusals, %s: exit 1 (some messages not copied)'
                      % attempt)
        s = h.summary(r)
        check(s and s['refused'] == 4,
              'refusals, %s: the summary says 4 refused' % attempt, h.show(r))
        for uid, text in ((2, fakeserver.CYRUS_INVALID_HEADER),
                          (3, CYRUS_NUL), (4, CYRUS_NOSEP),
                          (6, fakeserver.O365_TOOBIG)):
            check(re.search(r'not copied: INBOX UID %d \(\d+ bytes\): .*%s' % (
                uid, re.escape(text)), r.stdout),
                  'refusals, %s: UID %d reported with "%s"' % (attempt, uid,
                                                               text),
                  h.show(r))
        check('[TOOBIG]' in r.stdout, 'the response code is kept in the '
              'report ([TOOBIG])', r.stdout)
        good = [m for i, m in enumerate(src_msgs) if i + 1 in (1, 5, 7)]
        check(fake_content(dst, 'INBOX') == spec_content(good),
              'refusals, %s: the 3 other INBOX messages copied exactly, '
              'once' % attempt, fake_content(dst, 'INBOX'))
        check(fake_content(dst, 'Other') == spec_content(other),
              'refusals, %s: the other folder copied' % attempt)
    r = h.run_postino(['status', '--state', state])
    check(fakeserver.CYRUS_INVALID_HEADER in r.stdout and
          'TOOBIG' in r.stdout, 'postino status lists the refusals with '
          "the server's text", h.show(r))
    src.stop()
    dst.stop()


# --------------------------------------------------------------------------
# keywords, dates, quota

def keyword_limit(tmp):
    src_msgs = [
        {'data': msg(40), 'flags': ['k1']},
        {'data': msg(41), 'flags': ['\\Seen', 'k2', 'k3']},
        {'data': msg(42), 'flags': ['\\Flagged', 'k4']},
        {'data': msg(43), 'flags': ['k1', 'k5']},
        {'data': msg(44), 'flags': ['\\Seen', 'k2']},
    ]
    src = FakeIMAP({'folders': dated({'INBOX': src_msgs})}).start()
    dst = FakeIMAP({'keyword_limit': 3}).start()
    r = copy(fake_url(src), fake_url(dst), os.path.join(tmp, 'kw.db'))
    h.expect_exit(r, 0, 'keyword limit: every message copied')
    want = [dict(m) for m in src_msgs]
    want[2]['flags'] = ['\\Flagged']      # k4 would be the 4th keyword
    want[3]['flags'] = ['k1']             # k5 too; k1 is there already
    check(fake_content(dst, 'INBOX') == spec_content(want),
          'keyword limit: all 5 messages, without k4 and k5 only',
          fake_content(dst, 'INBOX'))
    check(re.search(r'UID 3 copied without the keywords k4 \(.*Too many user '
                    r'flags in mailbox\)', r.stderr) and
          re.search(r'UID 4 copied without the keywords k5', r.stderr),
          'keyword limit: each message and its dropped keywords reported, '
          "with the server's text", h.show(r))
    check(re.search(r'does not keep the keywords k4 k5', r.stderr),
          'keyword limit: the folder report names k4 and k5', h.show(r))
    src.stop()
    dst.stop()


def pre1970(tmp):
    old = (-86400 * 365 * 5, 60)   # 1965, +0100
    src_msgs = [{'data': msg(50), 'flags': ['\\Seen'], 'date': old},
                {'data': msg(51), 'date': (1_600_000_000, 0)}]
    src = FakeIMAP({'folders': {'INBOX': src_msgs}}).start()
    dst = FakeIMAP({'refuse_pre1970': True}).start()
    r = copy(fake_url(src), fake_url(dst), os.path.join(tmp, 'date.db'))
    h.expect_exit(r, 0, 'date before 1970: the message is copied')
    got = dst.messages('INBOX')
    by = {bytes(m.data): m for m in got}
    m = by.get(msg(50))
    check(len(got) == 2 and m is not None and m.date == (0, 0) and
          m.flags == ['\\Seen'],
          'the 1965 message is there, dated 1970-01-01 00:00:00 +0000, '
          'flags kept', [(x.date, x.flags) for x in got])
    check(by.get(msg(51)) and by[msg(51)].date == (1_600_000_000, 0),
          'the other message keeps its date')
    check(re.search(r'UID 1: the destination refused its date '
                    r'1965-01-0\d 01:00:00 \+0100 \(Date before 1970 is not '
                    r'supported\); copied dated 1970-01-01', r.stderr),
          'the changed date is reported with the original date and the '
          "server's text", h.show(r))
    src.stop()
    dst.stop()


def overquota(tmp):
    src_msgs = [{'data': msg(60 + i, size=1000)} for i in range(10)]
    src = FakeIMAP({'folders': {'INBOX': src_msgs,
                                'Later': [{'data': msg(80, size=1000)}]}}
                   ).start()
    dst = FakeIMAP({'quota_bytes': 5500}).start()
    r = copy(fake_url(src), fake_url(dst), os.path.join(tmp, 'quota.db'),
             ['--batch', '3', '--jobs', '1'])
    h.expect_exit(r, 1, 'over quota: exit 1')
    s = h.summary(r)
    check(s and s['copied'] == 3 and s['refused'] == 3,
          'over quota: 3 copied, the 3 of the refused batch recorded',
          h.show(r))
    check(re.search(r'over quota.*OVERQUOTA.*4 more messages of this folder '
                    r'not tried', r.stderr + r.stdout),
          'over quota: a clear error naming the messages left', h.show(r))
    check(len(appends_to(dst, 'INBOX')) == 2 and
          not appends_to(dst, 'Later'),
          'over quota: no APPEND after the refusal, not one by one, not to '
          'the next folder', [(str(c.args[0]), len(c.messages))
                              for c in dst.commands_named('APPEND')])
    check(len(dst.messages('INBOX')) == 3, 'over quota: 3 messages stored')
    src.stop()
    dst.stop()


# --------------------------------------------------------------------------
# Gmail

def gmail(tmp):
    inbox = [{'data': msg(90), 'flags': ['\\Seen']}, {'data': msg(91)}]
    label = [{'data': msg(92), 'flags': ['\\Flagged']}]
    sent = [{'data': msg(93), 'flags': ['\\Seen']}]
    dated({'': inbox + label + sent})
    src = FakeIMAP({
        'folders': {
            'INBOX': inbox, 'Label1': label, '[Gmail]': [],
            '[Gmail]/All Mail': inbox + label + sent,
            '[Gmail]/Important': inbox[:1],
            '[Gmail]/Starred': label,
            '[Gmail]/Sent Mail': sent,
        },
        'special_use': {'[Gmail]': '\\Noselect', '[Gmail]/All Mail': '\\All',
                        '[Gmail]/Important': '\\Important',
                        '[Gmail]/Starred': '\\Flagged',
                        '[Gmail]/Sent Mail': '\\Sent'},
    }).start()
    dst = FakeIMAP({'folders': {'INBOX': [], 'Sent': []},
                    'special_use': {'Sent': '\\Sent'}}).start()
    state = os.path.join(tmp, 'gmail.db')
    r = h.run_postino(['plan', fake_url(src), fake_url(dst), '--state', state])
    h.expect_exit(r, 0, 'gmail: plan')
    for f in ('[Gmail]/All Mail', '[Gmail]/Important', '[Gmail]/Starred'):
        line = [ln for ln in r.stdout.splitlines() if ln.startswith(f)]
        check(line and 'skip: virtual folder' in line[0],
              'gmail: plan skips %s as a virtual folder' % f, r.stdout)
    n_src_cmds = len(src.commands)
    r = copy(fake_url(src), fake_url(dst), state)
    h.expect_exit(r, 0, 'gmail: copy')
    read = {str(c.args[0]) for c in src.commands[n_src_cmds:]
            if c.name in ('SELECT', 'EXAMINE', 'STATUS')}
    check(not read & {'[Gmail]/All Mail', '[Gmail]/Important',
                      '[Gmail]/Starred'},
          'gmail: the virtual folders are never opened', read)
    check(fake_content(dst, 'INBOX') == spec_content(inbox) and
          fake_content(dst, 'Label1') == spec_content(label) and
          fake_content(dst, 'Sent') == spec_content(sent),
          'gmail: INBOX, Label1 and Sent Mail (into Sent) copied once each')
    check(set(dst.folders()) == {'INBOX', 'Sent', 'Label1'},
          'gmail: no [Gmail] folder made at the destination', dst.folders())
    s = h.summary(r)
    check(s and s['copied'] == 4, 'gmail: 4 messages copied, not 10',
          h.show(r))
    src.stop()
    dst.stop()


def run():
    tmp = h.make_tmpdir('interop')
    cyrus_folders(tmp)
    create_refused(tmp)
    refusals(tmp)
    keyword_limit(tmp)
    pre1970(tmp)
    overquota(tmp)
    gmail(tmp)
    src, pref = dovecot_both_ways(tmp)
    src.stop()
    pref.stop()
    dovecot_mirror(tmp)


if __name__ == '__main__':
    h.main(run)
