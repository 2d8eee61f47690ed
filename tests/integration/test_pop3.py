#!/usr/bin/env python3
"""test_pop3 — `postino copy` with a POP3 source, against real Dovecot.

The source mailboxes are filled through IMAP (imaplib), which is the store
Dovecot's POP3 serves; the IMAP view of a source INBOX is the oracle for
the bytes (POP3 adds a line break to a message that lacked one; postino
drops it when LIST's size says so).  Proves:
  - import over pop3s:// and over pop3:// with STLS (no user name or
    password before TLS) of the real-world corpus, a double delivery and
    three messages with known dates: the destination INBOX holds exactly the
    source's messages, byte-exact, unread, nothing anywhere else;
    INTERNALDATE is the topmost Received: date, else Date:, else now;
    the source keeps every message (bytes, dates, POP3 listing; Dovecot's
    own RETR sets \\Seen there, which is logged, not checked);
  - a rerun imports 0; new mail (including a third delivery of a message
    already there) -> exactly the new messages are imported;
  - --into Imported/old-isp (that folder, not .../INBOX); --mark-seen;
    --no-header-date;
  - crash after the Nth durable step (POSTINO_TEST_EXIT_AFTER=N, several N)
    and real SIGKILLs during a copy over a slow link: the reruns end with
    0 lost and 0 duplicated, and one more run imports 0; SIGINT with
    --delete-after: exit 7, nothing deleted;
  - --delete-after: deletes exactly what was copied (a message delivered
    during the run stays, and the next run imports it); crashes before the
    deletion delete nothing; SIGKILL after the DELEs and before QUIT
    reaches the server deletes nothing and the rerun duplicates nothing;
    a run with a refused message deletes nothing; --keep-days 1 right after
    the copy deletes nothing, and deletes what was copied two days ago
    (the state DB's copy time moved back); ?tls=none is plaintext POP3 by
    name;
  - two POP3 accounts into one folder: with --skip-duplicates each distinct
    message once (a double delivery within one account stays two; the same
    Message-ID with another size is another message), without it both
    copies;
  - ?auth=apop is refused with exit 2 and a message naming APOP, before
    any connection; pop3:// to a server without STLS is refused (exit 6)
    before USER/PASS; a wrong password exits 5; a certificate for another
    host exits 6 (pop3s and STLS);
  - POSTINO_TEST_POP3_NO_UIDL=1 (identities from the headers): import,
    rerun 0, new double delivery both kept, crash and resume exact;
  - last, bugs found while writing this test, checked without stopping and
    failed together at the end: INTERNALDATE from an obsolete two-digit
    year and from the zone UT (real-world samples); a message delivered
    again after --delete-after deleted its first copy (same identity
    without UIDL) must be imported.
Every Dovecot, proxy and fake server started here is stopped at exit.
Seed for the random kill moments: env POSTINO_TEST_SEED (printed).
"""

import calendar
import collections
import os
import poplib
import random
import re
import signal
import sqlite3
import sys
import time

import harness as h
from harness import check

sys.path.insert(0, os.path.join(h.SOURCE_ROOT, 'tests', 'tools'))
import fakeserver  # noqa: E402
import faultproxy  # noqa: E402

DELETED_RE = re.compile(r'deleted (\d+) messages? from the source \((\d+) '
                        r'kept for --keep-days, (\d+) not copied\)')

# Steps after which a crash is simulated (copies run with --batch 10; the
# import has ~12 batches of 3 durable steps each, so the later ones may
# lie beyond the end).
CRASH_STEPS = [1, 2, 3, 4, 5, 7, 10, 14, 22, 31, 60]
NO_UIDL_CRASH_STEPS = [2, 6, 13]

NO_UIDL = {'POSTINO_TEST_POP3_NO_UIDL': '1'}


# --------------------------------------------------------------------------
# Messages

def message(n, subject, extra_headers=b'', message_id=None, body=None,
            date=b'Mon, 04 Mar 2024 10:00:00 +0000'):
    mid = message_id or b'<pop3-%d@test.postino>' % n
    head = (extra_headers +
            b'From: Sender %d <sender%d@example.org>\r\n' % (n, n) +
            b'To: alice@old-isp.example\r\n'
            b'Subject: ' + subject + b'\r\n')
    if date:
        head += b'Date: ' + date + b'\r\n'
    if mid:
        head += b'Message-ID: ' + mid + b'\r\n'
    return head + b'\r\n' + (body or b'Message %d.\r\n.a line with a dot\r\n'
                             % n)


# Three messages whose INTERNALDATE is known from their headers.
KNOWN_RECEIVED = (
    b'Received: from mx.example.org (mx.example.org [192.0.2.1])\r\n'
    b'\tby mail.old-isp.example with ESMTPS id 4SVx1\r\n'
    b'\tfor <alice@old-isp.example>; Wed, 15 Nov 2023 10:20:30 +0100 (CET)\r\n'
    b'Received: from laptop.example.org by mx.example.org;\r\n'
    b'\tWed, 15 Nov 2023 10:19:00 +0100\r\n'
    b'From: Bob <bob@example.org>\r\nTo: alice@old-isp.example\r\n'
    b'Subject: with two Received headers\r\n'
    b'Date: Tue, 14 Nov 2023 23:00:00 -0500\r\n'
    b'Message-ID: <known-received@test.postino>\r\n\r\n'
    b'The topmost Received: date counts.\r\n')
KNOWN_RECEIVED_T = calendar.timegm((2023, 11, 15, 9, 20, 30, 0, 0, 0))
KNOWN_DATE = (
    b'From: Carol <carol@example.org>\r\nTo: alice@old-isp.example\r\n'
    b'Subject: only a Date header\r\n'
    b'Date: Sat, 01 Jul 2017 12:34:56 +0200\r\n'
    b'Message-ID: <known-date@test.postino>\r\n\r\n'
    b'No Received: header: Date: counts.\r\n')
KNOWN_DATE_T = calendar.timegm((2017, 7, 1, 10, 34, 56, 0, 0, 0))
KNOWN_NONE = (
    b'From: Dave <dave@example.org>\r\nTo: alice@old-isp.example\r\n'
    b'Subject: no date at all\r\n'
    b'Message-ID: <known-none@test.postino>\r\n\r\n'
    b'Neither Received: nor Date:: now.\r\n')

DOUBLE = message(900, b'delivered twice')


def main_corpus():
    """Real-world samples, the three known messages, a double delivery."""
    msgs = []
    for p in h.realworld_files():
        with open(p, 'rb') as f:
            msgs.append(h.Msg(f.read(), (), None, os.path.basename(p)))
    msgs += [h.Msg(KNOWN_RECEIVED, label='known-received'),
             h.Msg(KNOWN_DATE, label='known-date'),
             h.Msg(KNOWN_NONE, label='known-none'),
             h.Msg(DOUBLE, label='double-1'),
             h.Msg(DOUBLE, label='double-2')]
    return msgs


def synthetic(base, n):
    return [h.Msg(message(base + i, b'synthetic %d' % (base + i)),
                  label='s%d' % (base + i)) for i in range(n)]


def deliver(src, user, datas):
    """New mail arrives in USER's POP3 mailbox (through IMAP)."""
    with src.connect(user) as c:
        for d in datas:
            c.append('INBOX', d)


# --------------------------------------------------------------------------
# Oracles

def source_view(src, user):
    """Counter of the sha256 of USER's INBOX as IMAP serves it."""
    return collections.Counter(t[0] for t in h.snapshot(src, user)['INBOX'])


def pop3_listing(src, user):
    """[(uidl, size)] of USER's POP3 mailbox, asked directly of Dovecot
    (LIST and UIDL only; QUIT commits nothing without DELE)."""
    p = poplib.POP3('127.0.0.1', src.pop3_port, timeout=30)
    try:
        p.user(user)
        p.pass_(src.users[user])
        sizes = dict(x.split() for x in p.list()[1])
        uidls = dict(x.split() for x in p.uidl()[1])
    finally:
        p.quit()
    return sorted((uidls[k].decode(), int(v)) for k, v in sizes.items())


def counter_diff(want, got):
    miss = want - got
    extra = got - want
    out = []
    if miss:
        out.append('missing at the destination: %s' % ', '.join(
            '%s…x%d' % (k[:12], v) for k, v in miss.items()))
    if extra:
        out.append('extra at the destination: %s' % ', '.join(
            '%s…x%d' % (k[:12], v) for k, v in extra.items()))
    return '\n'.join(out)


def check_exact(want, dst, user, what, folder='INBOX', flags=frozenset()):
    """The destination account holds exactly WANT (a Counter of hashes) in
    FOLDER, every message with FLAGS, and nothing in any other folder.
    Returns the destination snapshot."""
    snap = h.snapshot(dst, user)
    items = snap.get(folder, [])
    got = collections.Counter(t[0] for t in items)
    check(got == want, '%s: %s holds exactly the %d source messages, '
          'byte-exact, none lost, none duplicated' % (what, folder,
                                                      sum(want.values())),
          counter_diff(want, got))
    others = {f: len(v) for f, v in snap.items() if f != folder and v}
    check(not others, '%s: no message anywhere else' % what, others)
    bad = [t for t in items if t[1] != flags]
    check(not bad, '%s: every message has flags %s' % (
        what, sorted(flags) or '(none: unread)'),
        ', '.join('%s… %s' % (t[0][:12], sorted(t[1])) for t in bad[:5]))
    return snap


def bytes_and_flags(snap):
    """A snapshot without dates: Dovecot re-reads a pre-1970 INTERNALDATE
    (a real-world sample has a 1969 Date:) as one in 2105, so dates of a
    whole account cannot be compared between two readings."""
    return {f: collections.Counter((t[0], t[1]) for t in v)
            for f, v in snap.items()}


def copy(src_url, dst_url, state, what, extra=(), env=None, expect=0):
    r = h.run_postino(['copy', src_url, dst_url, '--state', state] +
                      list(extra), env_extra=env)
    h.expect_exit(r, expect, what)
    s = h.summary(r)
    if expect in (0, 1):
        check(s is not None, what + ': summary line printed', h.show(r))
    return r, s


def deleted_line(r):
    m = None
    for line in r.stdout.splitlines():
        m = DELETED_RE.search(line) or m
    return tuple(map(int, m.groups())) if m else None


def dest_total(dst, user):
    return h.total(h.count_messages(dst, user))


# --------------------------------------------------------------------------
# Import

def import_pop3s(src, dst, tmp):
    state = os.path.join(tmp, 'imp.db')
    url = src.url('alice', 'pop3s')
    before = h.snapshot(src, 'alice')
    listing = pop3_listing(src, 'alice')
    want = source_view(src, 'alice')
    n = sum(want.values())
    t0 = time.time()
    r, s = copy(url, dst.url('imp'), state, 'pop3s import')
    t1 = time.time()
    check(s['copied'] == n and s['refused'] == 0,
          'pop3s import: summary says copied %d, refused 0' % n, h.show(r))
    snap = check_exact(want, dst, 'imp', 'pop3s import')
    dsha = h.sha256_of(DOUBLE)
    check(collections.Counter(t[0] for t in snap['INBOX'])[dsha] == 2,
          'pop3s import: the double delivery is there twice')
    dates = {t[0]: t[2] for t in snap['INBOX']}
    for data, want_t, what in (
            (KNOWN_RECEIVED, KNOWN_RECEIVED_T, 'the topmost Received: date'),
            (KNOWN_DATE, KNOWN_DATE_T, 'the Date: header')):
        got_t = dates.get(h.sha256_of(data))
        check(got_t == want_t, 'INTERNALDATE is %s (%s)' % (
            what, time.strftime('%Y-%m-%d %H:%M:%S UTC',
                                time.gmtime(want_t))),
              'got %s' % (got_t and time.strftime(
                  '%Y-%m-%d %H:%M:%S UTC', time.gmtime(got_t))))
    got_t = dates.get(h.sha256_of(KNOWN_NONE))
    check(got_t is not None and t0 - 2 <= got_t <= t1 + 2,
          'INTERNALDATE of a message without Received:/Date: is the time '
          'of the import', 'got %s, run %s..%s' % (got_t, t0, t1))
    after = h.snapshot(src, 'alice')
    check(sorted((t[0], t[2]) for t in before['INBOX']) ==
          sorted((t[0], t[2]) for t in after['INBOX']),
          'pop3s import: the source keeps every message (bytes and dates '
          'unchanged)')
    seen = sum('\\seen' in t[1] for t in after['INBOX'])
    h.log('  (note: Dovecot marked %d of %d source messages \\Seen: its '
          'POP3 RETR does that)' % (seen, len(after['INBOX'])))
    check(pop3_listing(src, 'alice') == listing,
          'pop3s import: the POP3 listing is unchanged (%d UIDLs)' %
          len(listing))

    r, s = copy(url, dst.url('imp'), state, 'pop3s rerun')
    check(s['copied'] == 0 and s['refused'] == 0,
          'pop3s rerun: imports 0', h.show(r))
    check(bytes_and_flags(snap) == bytes_and_flags(h.snapshot(dst, 'imp')),
          'pop3s rerun: destination unchanged (bytes and flags)')

    new = [message(901, b'arrived later'), message(902, b'arrived later too'),
           DOUBLE]
    deliver(src, 'alice', new)
    want2 = source_view(src, 'alice')
    r, s = copy(url, dst.url('imp'), state, 'pop3s rerun after new mail')
    check(s['copied'] == 3, 'new mail: exactly the 3 new messages imported '
          '(one a third delivery of a message already there)', h.show(r))
    snap2 = check_exact(want2, dst, 'imp', 'after new mail')
    added = (collections.Counter(t[0] for t in snap2['INBOX']) -
             collections.Counter(t[0] for t in snap['INBOX']))
    check(added == collections.Counter(h.sha256_of(d) for d in new),
          'new mail: the 3 added messages are the new ones')
    r, s = copy(url, dst.url('imp'), state, 'pop3s rerun after the import '
                'of new mail')
    check(s['copied'] == 0, 'pop3s: one more rerun imports 0', h.show(r))


def import_stls(src, dst, tmp):
    """pop3:// (STLS required) through a recording proxy."""
    with faultproxy.FaultProxy('127.0.0.1', src.pop3_port,
                               protocol='pop3') as p:
        url = 'pop3://alice@localhost:%d' % p.port
        want = source_view(src, 'alice')
        r, s = copy(url, dst.url('stls'), os.path.join(tmp, 'stls.db'),
                    'pop3 STLS import')
        check(s['copied'] == sum(want.values()),
              'pop3 STLS import: copied %d' % sum(want.values()), h.show(r))
        check_exact(want, dst, 'stls', 'pop3 STLS import')
        sent = p.client_bytes()
        check(b'STLS\r\n' in sent[:200], 'pop3://: the client sent STLS',
              sent[:200])
        check(b'alice' not in sent and b'secret' not in sent and
              b'PASS' not in sent, 'pop3://: neither user name nor password '
              'crossed the wire in clear')


def into_folder(src, dst, tmp):
    want = source_view(src, 'alice')
    state = os.path.join(tmp, 'into.db')
    args = ['--into', 'Imported/old-isp']
    r, s = copy(src.url('alice', 'pop3s'), dst.url('into'), state,
                '--into Imported/old-isp', args)
    snap = check_exact(want, dst, 'into', '--into Imported/old-isp',
                       folder='Imported/old-isp')
    check(not any(f.endswith('/INBOX') for f in snap),
          '--into: no .../INBOX folder was made', sorted(snap))
    r, s = copy(src.url('alice', 'pop3s'), dst.url('into'), state,
                '--into rerun', args)
    check(s['copied'] == 0, '--into: rerun imports 0', h.show(r))


def mark_seen_and_dates(src, dst, tmp):
    want = source_view(src, 'alice')
    copy(src.url('alice', 'pop3s'), dst.url('seen'),
         os.path.join(tmp, 'seen.db'), '--mark-seen', ['--mark-seen'])
    check_exact(want, dst, 'seen', '--mark-seen',
                flags=frozenset({'\\seen'}))
    t0 = time.time()
    copy(src.url('alice', 'pop3s'), dst.url('nodate'),
         os.path.join(tmp, 'nodate.db'), '--no-header-date',
         ['--no-header-date'])
    t1 = time.time()
    snap = check_exact(want, dst, 'nodate', '--no-header-date')
    bad = [t for t in snap['INBOX'] if not t0 - 2 <= t[2] <= t1 + 2]
    check(not bad, '--no-header-date: every INTERNALDATE is the time of '
          'the import', bad[:3])


# --------------------------------------------------------------------------
# Interrupted imports

def crash_and_resume(src, dst, tmp, user, n, env=None, tag='UIDL'):
    """Crash after step N into DST USER; resume; exact; then rerun 0."""
    url = src.url('alice', 'pop3s')
    state = os.path.join(tmp, '%s.db' % user)
    want = source_view(src, 'alice')
    args = ['copy', url, dst.url(user), '--state', state, '--batch', '10']
    e = dict(env or {})
    e['POSTINO_TEST_EXIT_AFTER'] = n
    r = h.run_postino(args, env_extra=e, echo=False)
    first_rc = r.returncode
    if r.returncode == 0:
        h.log('  %s: the import ended before step %d' % (tag, n))
    else:
        check(r.returncode == 99, '%s: crash after step %d (exit 99)' % (
            tag, n), h.show(r))
        h.log('  after the crash at step %d: %d messages at the destination'
              % (n, dest_total(dst, user)))
        r = h.run_postino(args, env_extra=env, echo=False)
        h.expect_exit(r, 0, '%s: resume after the crash at step %d' % (tag,
                                                                         n))
    check_exact(want, dst, user, '%s: crash at step %d, resumed' % (tag, n))
    r = h.run_postino(args, env_extra=env, echo=False)
    s = h.summary(r)
    check(r.returncode == 0 and s is not None and s['copied'] == 0,
          '%s: crash at step %d: one more run imports 0' % (tag, n),
          h.show(r))
    return first_rc


def random_kills(src, dst, tmp, rng):
    """SIGKILL during imports over a slow link to the destination; rerun
    until a run finishes: 0 lost, 0 duplicated."""
    size = sum(sz for _, sz in pop3_listing(src, 'big'))
    full_time = 3.0
    slow = h.FilterProxy(dst, strip_uidplus=False, rate=size / full_time)
    url = src.url('big', 'pop3s')
    dst_url = slow.url('k')
    state = os.path.join(tmp, 'kills.db')
    args = ['copy', url, dst_url, '--state', state, '--batch', '20']
    h.log('slow link: %d bytes to import at %d bytes/s' % (
        size, size / full_time))
    kills, extra = 0, 0
    for attempt in range(1, 11):
        before = dest_total(dst, 'k')
        proc = h.start_postino(args)
        if attempt % 2:
            delay = rng.uniform(0.2, full_time)
            time.sleep(delay)
            when = 'after %.2fs' % delay
        else:
            h.wait_until(lambda: proc.poll() is not None or
                         dest_total(dst, 'k') > before, 3 * full_time, 0.02)
            when = 'as the destination grew past %d messages' % before
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            h.log('  SIGKILL %d %s (destination: %d messages)' % (
                kills, when, dest_total(dst, 'k')))
            if kills >= 5:
                break
            continue
        check(proc.returncode == 0, 'kills: a run that was not killed '
              'exits 0', 'exit %d\n%s' % (proc.returncode,
                                           h.output_of(proc)))
        extra += 1
        deliver(src, 'big', [m.data for m in synthetic(2000 + 100 * extra,
                                                        25)])
        h.log('  run %d finished by itself: 25 new messages arrived'
              % attempt)
    r = h.run_postino(args)
    h.expect_exit(r, 0, 'kills: final run')
    check(kills >= 3, 'kills: %d SIGKILLs during imports' % kills)
    check_exact(source_view(src, 'big'), dst, 'k',
                'after %d SIGKILLs' % kills)
    r = h.run_postino(args)
    s = h.summary(r)
    check(r.returncode == 0 and s is not None and s['copied'] == 0,
          'after SIGKILLs: one more run imports 0', h.show(r))

    # SIGINT during an import with --delete-after: exit 7, nothing deleted;
    # the rerun finishes the import and deletes everything.
    listing = pop3_listing(src, 'big')
    want = source_view(src, 'big')
    args = ['copy', url, slow.url('ki'), '--state',
            os.path.join(tmp, 'sigint.db'), '--delete-after']
    proc = h.start_postino(args)
    time.sleep(1.0)
    check(proc.poll() is None, 'SIGINT: the import is still running after '
          '1s (slow link)', h.output_of(proc))
    os.killpg(proc.pid, signal.SIGINT)
    try:
        rc = proc.wait(timeout=60)
    except Exception:
        rc = None
    check(rc == 7 and pop3_listing(src, 'big') == listing,
          'SIGINT during an import with --delete-after: exit 7, all %d '
          'messages still on the server' % len(listing),
          'exit %s\n%s' % (rc, h.output_of(proc)))
    r = h.run_postino(args)
    h.expect_exit(r, 0, 'rerun after SIGINT')
    check(deleted_line(r) == (len(listing), 0, 0) and
          pop3_listing(src, 'big') == [],
          'rerun after SIGINT: imports the rest, deletes all %d' %
          len(listing), h.show(r))
    check_exact(want, dst, 'ki', 'rerun after SIGINT')
    slow.stop()


# --------------------------------------------------------------------------
# --delete-after

def delete_after(src, dst, tmp):
    """A clean --delete-after run over plaintext POP3 (?tls=none) through a
    proxy: the run is held at its first RETR while new mail arrives; that
    message is not in the run's listing and must stay."""
    user = 'del'
    with faultproxy.FaultProxy('127.0.0.1', src.pop3_port,
                               protocol='pop3') as p:
        url = 'pop3://%s@localhost:%d?tls=none' % (user, p.port)
        state = os.path.join(tmp, 'del.db')
        want = source_view(src, user)
        n = sum(want.values())
        hold = p.stall_after(b'RETR ', 'c2s', plus=-5, once=True)
        proc = h.start_postino(['copy', url, dst.url(user), '--state', state,
                                '--delete-after'])
        p.wait(lambda q: hold.fired or proc.poll() is not None, 30)
        check(hold.fired, '--delete-after: the run is held at its first '
              'RETR', h.output_of(proc))
        late = message(950, b'arrived during the run')
        deliver(src, user, [late])
        p.release()
        rc = proc.wait(timeout=120)
        out = h.output_of(proc)
        check(rc == 0, '--delete-after: exit 0', out)
        m = DELETED_RE.search(out)
        check(m and int(m.group(1)) == n and int(m.group(2)) == 0,
              '--delete-after: reports %d deleted, 0 kept' % n, out)
        cmds = p.commands()
        check(cmds['DELE'] == n and cmds['QUIT'] == 1,
              '--delete-after: %d DELE and one QUIT sent' % n, dict(cmds))
        check(b'STLS' not in p.client_bytes() and
              b'USER %s' % user.encode() in p.client_bytes(),
              '?tls=none: plaintext POP3, no STLS')
        check_exact(want, dst, user, '--delete-after')
        left = source_view(src, user)
        check(left == collections.Counter([h.sha256_of(late)]),
              '--delete-after: exactly the copied messages were deleted; '
              'the one that arrived during the run is still on the server',
              left)
        check(len(pop3_listing(src, user)) == 1,
              '--delete-after: a new POP3 listing shows 1 message')
        r, s = copy(url, dst.url(user), state, '--delete-after rerun',
                    ['--delete-after'])
        check(s['copied'] == 1 and deleted_line(r) == (1, 0, 0),
              '--delete-after rerun: imports the late message and deletes '
              'it', h.show(r))
        check(pop3_listing(src, user) == [],
              '--delete-after rerun: the POP3 mailbox is empty')
        check_exact(want + collections.Counter([h.sha256_of(late)]), dst,
                    user, '--delete-after rerun')


def crash_before_delete(src, dst, tmp):
    """Every run dies (POSTINO_TEST_EXIT_AFTER) before any deletion: N=3
    while the import is incomplete (each run gets one batch further), then
    N=1 twice once every message is at the destination (the last durable
    step before --delete-after's DELEs).  All mail stays on the server
    until a clean run, which then imports nothing more."""
    user = 'dx'
    url = src.url(user, 'pop3s')
    state = os.path.join(tmp, 'dx.db')
    listing = pop3_listing(src, user)
    want = source_view(src, user)
    n = sum(want.values())
    args = ['copy', url, dst.url(user), '--state', state, '--delete-after',
            '--batch', '4']
    runs, complete_crashes, bad = 0, 0, []
    while runs < 30 and complete_crashes < 2:
        runs += 1
        complete = dest_total(dst, user) >= n
        step = 1 if complete else 3
        r = h.run_postino(args, env_extra={'POSTINO_TEST_EXIT_AFTER': step},
                          echo=False)
        if r.returncode != 99:
            bad.append('run %d (step %d): %s' % (runs, step, h.show(r)))
            break
        if pop3_listing(src, user) != listing:
            bad.append('after crash %d: the POP3 listing changed' % runs)
            break
        complete_crashes += complete
    check(not bad and complete_crashes == 2,
          '--delete-after: %d runs crashed (exit 99), the last 2 after a '
          'complete import: every message still on the server after each'
          % runs, '\n'.join(bad))
    r, s = copy(url, dst.url(user), state, '--delete-after after crashes',
                ['--delete-after'])
    check(s['copied'] == 0 and deleted_line(r) == (n, 0, 0),
          '--delete-after after crashes: imports 0, deletes %d' % n,
          h.show(r))
    check(pop3_listing(src, user) == [], '--delete-after after crashes: '
          'the POP3 mailbox is empty')
    check_exact(want, dst, user, '--delete-after after crashes')


def kill_before_quit(src, dst, tmp):
    """SIGKILL once every DELE is acknowledged but before QUIT reaches the
    server: nothing is deleted; the rerun duplicates nothing."""
    user = 'dq'
    with faultproxy.FaultProxy('127.0.0.1', src.pop3_port,
                               protocol='pop3') as p:
        url = 'pop3://%s@localhost:%d?tls=none' % (user, p.port)
        state = os.path.join(tmp, 'dq.db')
        listing = pop3_listing(src, user)
        want = source_view(src, user)
        n = sum(want.values())
        hold = p.stall_after(b'QUIT\r\n', 'c2s', plus=-6, once=True)
        proc = h.start_postino(['copy', url, dst.url(user), '--state', state,
                                '--delete-after'])
        p.wait(lambda q: hold.fired or proc.poll() is not None, 60)
        check(hold.fired and proc.poll() is None,
              'kill before QUIT: postino waits for its QUIT to be answered',
              h.output_of(proc))
        check(p.commands()['DELE'] == n, 'kill before QUIT: all %d DELEs '
              'were sent and answered' % n, dict(p.commands()))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        h.log('  SIGKILL with QUIT held back')
        p.wait(lambda q: q.open_connections() == 0, 10)
        time.sleep(0.3)     # Dovecot's session notices the disconnection
        check(pop3_listing(src, user) == listing,
              'kill before QUIT: all %d messages still on the server' % n)
        check(source_view(src, user) == want,
              'kill before QUIT: the IMAP view of the source is unchanged')
        check_exact(want, dst, user, 'kill before QUIT: the import itself')
        r, s = copy(url, dst.url(user), state, 'rerun after kill before QUIT',
                    ['--delete-after'])
        check(s['copied'] == 0 and deleted_line(r) == (n, 0, 0),
              'rerun after kill before QUIT: imports 0, deletes %d' % n,
              h.show(r))
        check(pop3_listing(src, user) == [],
              'rerun after kill before QUIT: the POP3 mailbox is empty')
        check_exact(want, dst, user, 'rerun after kill before QUIT')


def failed_run_deletes_nothing(src, tmp):
    """A destination that refuses one message: exit 1, nothing deleted;
    once it accepts, the rerun imports it and deletes everything."""
    user = 'fail'
    listing = pop3_listing(src, user)
    crt, key = h.default_ca().cert('good')
    fake = fakeserver.FakeIMAP({'users': {'alice': 'secret'}},
                               tls='implicit', cert=crt, key=key).start()
    h.track(fake)
    fake.add_rule(fakeserver.cyrus_invalid_header(contains=b'X-Refuse-Me'))
    url = src.url(user, 'pop3s')
    dst_url = 'imaps://alice@localhost:%d' % fake.port
    state = os.path.join(tmp, 'fail.db')
    r, s = copy(url, dst_url, state, '--delete-after with a refused message',
                ['--delete-after'], expect=1)
    check(s['refused'] == 1 and s['copied'] == len(listing) - 1,
          '--delete-after with a refused message: 1 refused, %d copied' % (
              len(listing) - 1), h.show(r))
    check(deleted_line(r) is None and
          pop3_listing(src, user) == listing,
          '--delete-after with a refused message: nothing deleted (%d '
          'messages still on the server)' % len(listing), h.show(r))
    fake.clear_rules()
    r, s = copy(url, dst_url, state, '--delete-after once accepted',
                ['--delete-after'])
    check(s['copied'] == 1 and deleted_line(r) == (len(listing), 0, 0),
          '--delete-after once accepted: imports the refused message, '
          'deletes all %d' % len(listing), h.show(r))
    check(pop3_listing(src, user) == [], '--delete-after once accepted: the '
          'POP3 mailbox is empty')
    check(len(fake.messages('INBOX')) == len(listing),
          '--delete-after once accepted: %d messages at the destination' %
          len(listing))
    fake.stop()


def keep_days(src, dst, tmp):
    user = 'keep'
    url = src.url(user, 'pop3s')
    state = os.path.join(tmp, 'keep.db')
    listing = pop3_listing(src, user)
    want = source_view(src, user)
    n = len(listing)
    for what in ('--keep-days 1 right after the import',
                 '--keep-days 1 rerun'):
        r, s = copy(url, dst.url(user), state, what,
                    ['--delete-after', '--keep-days', '1'])
        check(deleted_line(r) == (0, n, 0) and
              pop3_listing(src, user) == listing,
              '%s: nothing deleted, %d kept' % (what, n), h.show(r))
    check_exact(want, dst, user, '--keep-days 1')
    r = h.run_postino(['copy', url, dst.url(user), '--state', state,
                       '--keep-days', '1'])
    h.expect_exit(r, 2, '--keep-days without --delete-after')
    # Copied two days ago: the state DB's copy time of half the messages
    # moved back (white box: msg.updated, unix seconds).
    db = sqlite3.connect(state)
    try:
        ids = [x[0] for x in db.execute('SELECT id FROM msg ORDER BY id')]
        old = ids[:n // 2]
        db.execute('UPDATE msg SET updated = updated - 2 * 86400 WHERE id IN '
                   '(%s)' % ','.join(str(i) for i in old))
        db.commit()
    finally:
        db.close()
    r, s = copy(url, dst.url(user), state, '--keep-days 1, half copied two '
                'days ago', ['--delete-after', '--keep-days', '1'])
    check(deleted_line(r) == (len(old), n - len(old), 0) and
          len(pop3_listing(src, user)) == n - len(old),
          '--keep-days 1: the %d messages copied two days ago are deleted, '
          'the %d copied today kept' % (len(old), n - len(old)), h.show(r))
    r, s = copy(url, dst.url(user), state, '--delete-after without '
                '--keep-days', ['--delete-after'])
    check(s['copied'] == 0 and deleted_line(r) == (n - len(old), 0, 0) and
          pop3_listing(src, user) == [],
          '--delete-after without --keep-days: deletes the %d kept '
          'messages' % (n - len(old)), h.show(r))
    check_exact(want, dst, user, '--keep-days, then --delete-after')


# --------------------------------------------------------------------------
# Several sources into one folder

SHARED = [message(600 + i, b'sent to both addresses') for i in range(4)]
ONLY1 = [message(700 + i, b'old1 only') for i in range(3)]
ONLY2 = [message(800 + i, b'old2 only') for i in range(3)]
TWICE1 = message(750, b'delivered twice to old1')
# The same Message-ID as SHARED[0], another size: another message.
RESENT = message(600, b'sent to both addresses (resent, longer)',
                 body=b'Resent with a longer body.\r\n')


def consolidation(src, dst, tmp):
    old1 = SHARED + ONLY1 + [TWICE1, TWICE1]
    old2 = ONLY2 + SHARED + [TWICE1, RESENT]
    deliver(src, 'old1', old1)
    deliver(src, 'old2', old2)
    c1 = collections.Counter(h.sha256_of(d) for d in old1)
    c2 = collections.Counter(h.sha256_of(d) for d in old2)
    folder = ['--into', 'Consolidated']
    for skip in (True, False):
        user = 'cons' if skip else 'both'
        tag = 'with --skip-duplicates' if skip else 'without --skip-duplicates'
        extra = folder + (['--skip-duplicates'] if skip else [])
        for name in ('old1', 'old2'):
            copy(src.url(name, 'pop3s'), dst.url(user),
                 os.path.join(tmp, '%s-%s.db' % (user, name)),
                 '%s into Consolidated (%s)' % (name, tag), extra)
        if skip:
            # old1 in full (its double delivery is two messages); of old2
            # what old1 did not have: the same Message-ID and size pairs
            # once with a message already there.
            want = c1 + collections.Counter(h.sha256_of(d)
                                            for d in ONLY2 + [RESENT])
        else:
            want = c1 + c2
        check_exact(want, dst, user, 'two POP3 accounts %s' % tag,
                    folder='Consolidated')
        for name in ('old1', 'old2'):
            r, s = copy(src.url(name, 'pop3s'), dst.url(user),
                        os.path.join(tmp, '%s-%s.db' % (user, name)),
                        '%s rerun (%s)' % (name, tag), extra)
            check(s['copied'] == 0, '%s rerun (%s): imports 0' % (name, tag),
                  h.show(r))


# --------------------------------------------------------------------------
# Refusals

def refusals(src, tmp):
    with faultproxy.FaultProxy('127.0.0.1', src.pop3s_port,
                               protocol='pop3') as p:
        for scheme in ('pop3s', 'pop3'):
            url = '%s://alice@localhost:%d?auth=apop' % (scheme, p.port)
            r = h.run_postino(['copy', url, 'imaps://x@localhost:1',
                               '--state', os.path.join(tmp, 'apop.db')])
            check(r.returncode == 2 and 'APOP' in r.stderr,
                  '%s ?auth=apop: exit 2, the error names APOP' % scheme,
                  h.show(r))
        check(p.accepted == 0, '?auth=apop: refused before connecting')
    srv = fakeserver.FakePOP3({'messages': [DOUBLE]}).start()
    h.track(srv)
    r = h.run_postino(['copy', 'pop3://alice@localhost:%d' % srv.port,
                       'imaps://x@localhost:1', '--state',
                       os.path.join(tmp, 'nostls.db')])
    check(r.returncode == 6 and 'STLS' in r.stderr,
          'pop3:// to a server without STLS: exit 6, the error names STLS',
          h.show(r))
    check(not srv.commands_named('USER', 'PASS', 'AUTH', 'APOP'),
          'pop3:// without STLS: no USER/PASS/AUTH was sent',
          [c.name for c in srv.commands])
    srv.stop()
    r = h.run_postino(['copy', src.url('alice', 'pop3s'), 'imaps://x@'
                       'localhost:1', '--state', os.path.join(tmp, 'pw.db')],
                      passwords=('wrong', 'secret'))
    h.expect_exit(r, 5, 'pop3s with a wrong password')
    bad = h.Dovecot(pop3=True, cert='wronghost', name='wronghost')
    for scheme in ('pop3s', 'pop3'):
        r = h.run_postino(['copy', bad.url('alice', scheme), 'imaps://x@'
                           'localhost:1', '--state',
                           os.path.join(tmp, 'cert-%s.db' % scheme)])
        h.expect_exit(r, 6, '%s to a server whose certificate names another '
                      'host' % scheme)
    bad.stop()


# --------------------------------------------------------------------------
# Servers without UIDL (test hook)

def no_uidl(src, dst, tmp):
    user = 'nu'
    url = src.url(user, 'pop3s')
    state = os.path.join(tmp, 'nouidl.db')
    want = source_view(src, user)
    r, s = copy(url, dst.url('nouidl'), state, 'no UIDL: import', env=NO_UIDL)
    check('UIDL' in r.stderr, 'no UIDL: postino says it tells messages '
          'apart by their headers', r.stderr)
    check(s['copied'] == sum(want.values()),
          'no UIDL: copied %d' % sum(want.values()), h.show(r))
    check_exact(want, dst, 'nouidl', 'no UIDL: import')
    r, s = copy(url, dst.url('nouidl'), state, 'no UIDL: rerun', env=NO_UIDL)
    check(s['copied'] == 0, 'no UIDL: rerun imports 0', h.show(r))
    twice = message(960, b'a new double delivery')
    new = [twice, twice, DOUBLE]
    deliver(src, user, new)
    r, s = copy(url, dst.url('nouidl'), state, 'no UIDL: after new mail',
                env=NO_UIDL)
    check(s['copied'] == 3, 'no UIDL: a new double delivery and a third '
          'copy of an old one: 3 imported', h.show(r))
    check_exact(source_view(src, user), dst, 'nouidl',
                'no UIDL: after new mail')
    r, s = copy(url, dst.url('nouidl'), state, 'no UIDL: rerun after new '
                'mail', env=NO_UIDL)
    check(s['copied'] == 0, 'no UIDL: rerun after new mail imports 0',
          h.show(r))


# --------------------------------------------------------------------------
# Bugs found while writing this test: each is checked and reported, and
# the test fails at the end if any is still there (after every other check
# has run).

# Real-world samples whose only date is an obsolete RFC 5322 form, which a
# receiver must accept (RFC 5322 section 4): a two-digit year (97 = 1997,
# section 4.3) and the zone "UT".
OBS_DATES = [
    ('rfc2822/example12.eml', calendar.timegm((1997, 11, 21, 9, 55, 6, 0, 0,
                                               0)),
     'Date: 21 Nov 97 09:55:06 GMT (two-digit year)'),
    ('error_emails/missing_content_disposition.eml',
     calendar.timegm((2002, 1, 22, 14, 35, 28, 0, 0, 0)),
     'Date: Tue, 22 Jan 2002 14:35:28 UT (zone UT)'),
]


def soft(results, cond, what, detail=None):
    """Record a check without stopping: 'ok:' or 'FAILED:' now, and the
    failures are raised together at the end."""
    if cond:
        check(True, what)
    else:
        h.log('FAILED: %s%s' % (what, '\n' + str(detail) if detail else ''))
        results.append(what)


def found_bugs(src, dst, tmp):
    failures = []
    # 1. INTERNALDATE from obsolete date forms (import_pop3s's account).
    dates = {t[0]: t[2] for t in h.snapshot(dst, 'imp')['INBOX']}
    for rel, want_t, what in OBS_DATES:
        with open(os.path.join(h.REALWORLD_DIR, rel), 'rb') as f:
            got_t = dates.get(h.sha256_of(f.read()))
        soft(failures, got_t == want_t,
             'INTERNALDATE of %s from %s is %s' % (
                 rel, what, time.strftime('%Y-%m-%d %H:%M:%S UTC',
                                          time.gmtime(want_t))),
             'got %s' % (got_t is not None and time.strftime(
                 '%Y-%m-%d %H:%M:%S UTC', time.gmtime(got_t))))

    # 2. A message delivered again after --delete-after deleted its first
    # copy has the identity of the deleted one (servers without UIDL: the
    # same header hash; servers whose UIDL is a hash of the content: the
    # same UIDL).  It is a new message and must be imported.
    user = 'redo'
    url = src.url(user, 'pop3s')
    state = os.path.join(tmp, 'redo.db')
    again = message(970, b'delivered again later')
    deliver(src, user, [again, message(971, b'another one')])
    r, s = copy(url, dst.url(user), state, 'no UIDL: --delete-after',
                ['--delete-after'], env=NO_UIDL)
    check(deleted_line(r) == (2, 0, 0) and pop3_listing(src, user) == [],
          'no UIDL: --delete-after deletes the 2 copied messages', h.show(r))
    deliver(src, user, [again])
    r = h.run_postino(['copy', url, dst.url(user), '--state', state,
                       '--delete-after'], env_extra=NO_UIDL)
    s = h.summary(r)
    got = collections.Counter(t[0] for t in
                              h.snapshot(dst, user).get('INBOX', []))
    soft(failures, r.returncode == 0 and s and s['copied'] == 1 and
         got[h.sha256_of(again)] == 2 and pop3_listing(src, user) == [],
         'no UIDL: the same message delivered again after --delete-after '
         'deleted the first copy is imported (2 copies at the destination) '
         'and deleted', '%s\ncopies at the destination: %d; left on the '
         'server: %d' % (h.show(r), got[h.sha256_of(again)],
                         len(pop3_listing(src, user))))
    check(not failures, 'no known postino bug left (%d found: %s)' % (
        len(failures), '; '.join(failures)))


# --------------------------------------------------------------------------

def run():
    seed = int(os.environ.get('POSTINO_TEST_SEED') or time.time())
    h.log('seed %d (set POSTINO_TEST_SEED to repeat)' % seed)
    rng = random.Random(seed)
    tmp = h.make_tmpdir('pop3')
    t_start = time.time()

    src_users = ['alice', 'big', 'del', 'dx', 'dq', 'fail', 'keep', 'old1',
                 'old2', 'nu', 'redo']
    src = h.Dovecot(layout='fs', pop3=True, name='pop3src',
                    users={u: 'secret' for u in src_users})
    dst_users = (['imp', 'stls', 'into', 'seen', 'nodate', 'k', 'ki', 'del',
                  'dx', 'dq', 'keep', 'cons', 'both', 'nouidl', 'redo'] +
                 ['c%d' % n for n in CRASH_STEPS] +
                 ['nc%d' % n for n in NO_UIDL_CRASH_STEPS])
    dst = h.Dovecot(layout='maildir++', name='dst',
                    users={u: 'secret' for u in dst_users})

    corpus = main_corpus()
    h.populate(src, 'alice', {'INBOX': corpus})
    h.populate(src, 'nu', {'INBOX': corpus})
    h.log('source INBOX: %d messages (%d real-world samples)' % (
        len(corpus), len(h.realworld_files())))
    for user, n in (('del', 12), ('dx', 10), ('dq', 10), ('keep', 6)):
        h.populate(src, user, {'INBOX': synthetic(100 * len(user) + n, n) +
                               [h.Msg(DOUBLE), h.Msg(DOUBLE)]})
    fail_msgs = synthetic(300, 4)
    fail_msgs.insert(2, h.Msg(message(399, b'refused once',
                                      b'X-Refuse-Me: yes\r\n')))
    h.populate(src, 'fail', {'INBOX': fail_msgs})
    many = h.corpus('many', folders=['INBOX'], per_folder=150, seed=seed)
    h.populate(src, 'big', {'INBOX': many['INBOX'] +
                            [h.Msg(DOUBLE), h.Msg(DOUBLE)]})

    h.log('== import')
    import_pop3s(src, dst, tmp)
    import_stls(src, dst, tmp)
    into_folder(src, dst, tmp)
    mark_seen_and_dates(src, dst, tmp)

    h.log('== refusals')
    refusals(src, tmp)

    h.log('== crash after step N, resume')
    finished = [crash_and_resume(src, dst, tmp, 'c%d' % n, n)
                for n in CRASH_STEPS]
    check(any(rc == 99 for rc in finished) and finished[0] == 99,
          'the crash hook interrupted the early steps')
    for n in NO_UIDL_CRASH_STEPS:
        crash_and_resume(src, dst, tmp, 'nc%d' % n, n, env=NO_UIDL,
                         tag='no UIDL')

    h.log('== SIGKILL over a slow link')
    random_kills(src, dst, tmp, rng)

    h.log('== --delete-after')
    delete_after(src, dst, tmp)
    crash_before_delete(src, dst, tmp)
    kill_before_quit(src, dst, tmp)
    failed_run_deletes_nothing(src, tmp)
    keep_days(src, dst, tmp)

    h.log('== several sources into one folder')
    consolidation(src, dst, tmp)

    h.log('== no UIDL')
    no_uidl(src, dst, tmp)

    h.log('== bugs found while writing this test')
    found_bugs(src, dst, tmp)

    for s in (src, dst):
        s.check_running()
        errs = s.errors()
        check(not errs, '%s: no errors in the Dovecot log' % s.name,
              '\n'.join(errs[-10:]))
    h.log('(%.1fs)' % (time.time() - t_start))


if __name__ == '__main__':
    h.main(run)
