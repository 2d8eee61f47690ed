#!/usr/bin/env python3
"""test_copy_basic — `postino copy` makes an exact copy, and reruns are
incremental.

Source: Dovecot maildir LAYOUT=fs (separator '/'); destination: maildir++
(separator '.').  The full corpus: non-ASCII and nested folders, an empty
folder, every real-world sample, a double delivery, keywords, old dates
and a 20 MB message.  Proves:
  - the copy is exact: bytes, flags, INTERNALDATEs, folders, duplicates;
  - the source is not changed (no \\Seen set by reading);
  - a rerun copies nothing and changes nothing ("copied 0");
  - flag changes at the source (added, removed, keyword) are pushed;
  - a new source message is copied, and only it;
  - the same holds the other way round (maildir++ -> fs) and into a
    server whose personal namespace has the prefix 'INBOX.';
  - copies into 20 never-used accounts (INBOX not yet created) all succeed.
"""

import os
import re
import time

import harness as h
from harness import check


def copy(src_url, dst_url, state, what, extra=()):
    t = time.time()
    r = h.run_postino(['copy', src_url, dst_url, '--state', state] +
                      list(extra), timeout=400)
    h.log('  (%.1fs) %s' % (time.time() - t,
                            (r.stdout.strip().splitlines() or [''])[-1]))
    h.expect_exit(r, 0, what)
    s = h.summary(r)
    check(s is not None, what + ': summary line printed', h.show(r))
    return r, s


def exact_copy(src, dst, tmp, tag, expect_bytes=True):
    """Copy SRC to DST (fresh), then check exactness and incrementality."""
    state = os.path.join(tmp, tag + '.db')
    before = h.snapshot(src)
    n = h.total(before)
    h.log('%s: source %d messages: %s' % (tag, n, h.describe(before)))
    # --jobs given: four connections a side even for a small account
    r, s = copy(src.url(), dst.url(), state, tag + ' first copy',
                ['--jobs', '4'])
    after_src = h.snapshot(src)
    h.check_same(before, after_src, tag + ': source unchanged by the copy',
                 ('before', 'after'))
    got = h.snapshot(dst)
    h.check_same(before, got, tag + ': destination equals source exactly')
    check(h.duplicates(got) == h.duplicates(before),
          tag + ': duplicates kept as in the source (%s)' %
          h.duplicates(before))
    check(s['copied'] == n and s['refused'] == 0,
          tag + ': summary says copied %d, refused 0' % n, h.show(r))
    if expect_bytes:
        size = sum(h.folder_sizes(src).values())
        check(s['bytes'] == size, tag + ': summary bytes = %d' % size,
              h.show(r))
    # Rerun: nothing to do.
    r, s = copy(src.url(), dst.url(), state, tag + ' rerun')
    check(s['copied'] == 0 and s['refused'] == 0 and 'copied 0' in r.stdout,
          tag + ': rerun reports copied 0', h.show(r))
    h.check_same(got, h.snapshot(dst), tag + ': rerun left destination '
                 'unchanged', ('before rerun', 'after rerun'))
    return state


def flag_changes(src, dst, state):
    """Change flags at the source; a rerun must push exactly those."""
    changes = []
    with src.connect() as c:
        inbox = c.messages('INBOX')
        # \Seen removed, \Flagged added, a keyword added, in three folders.
        uid, body, fl, d = next(m for m in inbox if '\\Seen' in m[2])
        c.uid_store('INBOX', uid, '-FLAGS', ['\\Seen'])
        changes.append('INBOX -\\Seen')
        cafe = c.messages('Café')
        uid = next(m[0] for m in cafe if '\\Flagged' not in m[2])
        c.uid_store('Café', uid, '+FLAGS', ['\\Flagged'])
        changes.append('Café +\\Flagged')
        jp = c.messages('日本語/レポート')
        c.uid_store('日本語/レポート', jp[0][0], '+FLAGS', ['$Important'])
        changes.append('日本語/レポート +$Important')
        # A keyword removed too.
        real = c.messages('Real')
        uid = next(m[0] for m in real if 'work' in m[2])
        c.uid_store('Real', uid, '-FLAGS', ['work'])
        changes.append('Real -work')
    want = h.snapshot(src)
    r, s = copy(src.url(), dst.url(), state, 'rerun after flag changes',
                ['-vv'])
    # Four folders changed, nothing new, --jobs not given: the run keeps to
    # its two connections if the prepass's STATUS round trip was under
    # 15 ms (loopback, unless the machine is very busy), else it opens the
    # default four a side. Either way the log says what it measured and
    # the logins agree with it.
    m = re.search(r'connections per side: (\d+) \(new messages: (-?\d+) at '
                  r'most; STATUS round trip: (-?\d+) ms\)', r.stderr)
    check(m is not None, 'the copier says how many connections and why',
          h.show(r))
    if m:
        n, work, rtt = (int(x) for x in m.groups())
        check(work == 0, 'the prepass saw no new message (%d)' % work)
        expect = 1 if 0 <= rtt < 15 else 4
        check(n == expect, 'little work, STATUS round trip %d ms: %d '
              'connection(s) a side' % (rtt, expect), h.show(r))
        check(r.stderr.count('logged in as') == 2 * n,
              '%d logins, as many as connections' % (2 * n), h.show(r))
    h.check_same(want, h.snapshot(dst),
                 'flag changes pushed (%s)' % ', '.join(changes))
    check(s['copied'] == 0 and s['flags'] >= len(changes),
          'summary: copied 0, at least %d flag updates' % len(changes),
          h.show(r))


def new_message(src, dst, state):
    with src.connect() as c:
        data = (b'From: late@example.org\r\nTo: alice@example.com\r\n'
                b'Subject: arrived after the first copy\r\n'
                b'Message-ID: <late-1@test.postino>\r\n\r\nhello again\r\n')
        c.append('Café', data, ['$Forwarded'],
                 (1_600_000_000, -240))
    before = h.snapshot(dst)
    want = h.snapshot(src)
    r, s = copy(src.url(), dst.url(), state, 'rerun after a new message')
    got = h.snapshot(dst)
    h.check_same(want, got, 'new message copied, destination equals source')
    check(s['copied'] == 1, 'summary: copied 1', h.show(r))
    added = {f: len(got[f]) - len(before.get(f, [])) for f in got}
    check(added.get('Café') == 1 and sum(added.values()) == 1,
          'exactly one message added, in Café', added)


def fresh_accounts(tmp):
    """Copies into never-used accounts, many times.

    A new account's INBOX does not exist until first used; Dovecot creates
    it on the fly, and two sessions doing so at once can see "Mailbox
    already exists".  Migrating into a brand-new account is the common
    case, so every one of these copies must succeed.
    """
    users = {'new%d' % i: 'secret' for i in range(20)}
    src = h.Dovecot(layout='fs', name='fresh-src')
    dst = h.Dovecot(layout='maildir++', name='fresh-dst', users=users)
    small = h.corpus('small')
    h.populate(src, 'alice', {'INBOX': small['INBOX'][:3],
                              'Café': small['Café'],
                              'Sent': small['Sent']})
    want = h.snapshot(src)
    failures = []
    for user in sorted(users):
        r = h.run_postino(['copy', src.url(), dst.url(user), '--state',
                           os.path.join(tmp, user + '.db')], echo=False)
        if r.returncode != 0:
            failures.append('%s: %s' % (user, h.show(r)))
        elif h.diff_snapshots(want, h.snapshot(dst, user)):
            failures.append('%s: copy differs: %s' % (user, h.diff_snapshots(
                want, h.snapshot(dst, user))))
    check(not failures, 'copies into %d never-used accounts all exit 0 and '
          'are exact' % len(users), '\n'.join(failures[:3]))
    src.stop()
    dst.stop()


def run():
    tmp = h.make_tmpdir('copy-basic')
    fresh_accounts(tmp)
    full = h.corpus('full')
    src = h.Dovecot(layout='fs', name='src')
    dst = h.Dovecot(layout='maildir++', name='dst')
    h.populate(src, 'alice', full)
    state = exact_copy(src, dst, tmp, 'fs->maildir++')
    flag_changes(src, dst, state)
    new_message(src, dst, state)

    # The other way round: the maildir++ copy back into an fs server.
    back = h.Dovecot(layout='fs', name='back')
    exact_copy(dst, back, tmp, 'maildir++->fs')
    # And into a Courier/Cyrus-like namespace with prefix INBOX.
    pref = h.Dovecot(layout='maildir++', prefix='INBOX.', name='prefixed')
    exact_copy(src, pref, tmp, 'fs->INBOX.-prefixed')
    with pref.connect() as c:
        names = c.imap.list()[1]
    check(any(b'"INBOX.Archive.2024.Q1"' in x or b' INBOX.Archive.2024.Q1'
              in x for x in names if x),
          'folders created below the INBOX. prefix on the destination',
          names)


if __name__ == '__main__':
    h.main(run)
