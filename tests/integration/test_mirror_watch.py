#!/usr/bin/env python3
"""test_mirror_watch — `postino mirror --watch` keeps running and mirrors
changes within seconds, both ways, and stops cleanly on SIGTERM.

A: Dovecot maildir LAYOUT=fs; B: maildir++; both over imaps.

Proves:
  - `mirror --watch --interval 1` does the initial sync (the union) and
    stays running; a second run on the same state meanwhile gets exit 4;
  - a message appended on A appears on B within 10 s; a flag change and a
    new message on B reach A; an expunge on A reaches B; a new folder on B
    is created on A; each time A == B, with no duplicate;
  - SIGTERM: the process exits within 10 s with 0 or 7 and prints no
    error; a plain run afterwards exits 0 and changes nothing (the state
    is consistent);
  - a new message and a flag change made on B while a pass is busy copying
    into the same folder (a slow link from A, through a proxy) reach A
    within seconds too: they are not hidden by the marks of that pass;
  - SIGTERM while a pass is busy (fetching 40 messages over the slow
    link, checked through the proxy's byte count): exit 0 or 7 within
    10 s, no duplicate, and a plain run then completes the sync (A == B,
    nothing lost or duplicated), and a further run changes nothing.
"""

import os
import re
import signal
import sys
import time

import harness as h
from harness import check

sys.path.insert(0, os.path.join(h.SOURCE_ROOT, 'tests', 'tools'))
import faultproxy  # noqa: E402

WAIT = 10           # seconds a change may take to reach the other side


def msg(i, tag):
    return (b'From: watcher@example.org\r\nTo: alice@example.com\r\n'
            b'Subject: watch test %d (%s)\r\n'
            b'Date: Wed, 05 Jun 2024 10:00:%02d +0000\r\n'
            b'Message-ID: <watch-%s-%d@test.postino>\r\n\r\n'
            b'Message %d, written while postino was watching.\r\n'
            % (i, tag.encode(), i % 60, tag.encode(), i, i))


def plain(snap):
    return {f: sorted((x[:3] for x in v),
                      key=lambda t: (t[0], sorted(t[1]), t[2]))
            for f, v in snap.items()}


def wait_same(a, b, what, pred=None, timeout=WAIT):
    """Poll until A and B are equal (and PRED(snapshot of A) holds)."""
    state = {}

    def ok():
        sa, sb = h.snapshot(a), h.snapshot(b)
        state['a'], state['b'] = sa, sb
        return sa == sb and (pred is None or pred(sa))
    done, waited = h.wait_until(ok, timeout, interval=0.3)
    h.check_same(state['a'], state['b'], '%s: A and B equal within %ds '
                 '(%.1fs)' % (what, timeout, waited), ('A', 'B'))
    check(done, '%s: the change is there' % what,
          h.describe(state['a']))
    return state['a']


def alive(proc, what):
    check(proc.poll() is None, what + ': postino --watch still running',
          h.output_of(proc))


def stop(proc, what):
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=WAIT)
    except Exception:
        pass
    rc = proc.poll()
    out = h.output_of(proc, tail=60)
    check(rc in (0, 7), '%s: SIGTERM -> exit 0 or 7 within %ds (exit %s '
          'after %.1fs)' % (what, WAIT, rc, time.monotonic() - t), out)
    bad = [ln for ln in out.splitlines() if re.search(r'\berror:', ln, re.I)]
    check(not bad, '%s: no error printed' % what, out)
    h.log('  last output: ' + ' / '.join(out.splitlines()[-3:]))
    return rc


def run():
    tmp = h.make_tmpdir('mirror-watch')
    state = os.path.join(tmp, 'state.db')
    a = h.Dovecot(layout='fs', name='A')
    b = h.Dovecot(layout='maildir++', name='B')
    with a.connect() as c:
        c.create('Projekte')
        for i in range(1, 4):
            c.append('INBOX', msg(i, 'a'), ['\\Seen'], (1717581600 + i, 0))
        c.append('Projekte', msg(4, 'a'), [], (1717581700, 120))
    with b.connect() as c:
        for i in range(1, 3):
            c.append('INBOX', msg(i, 'b'), ['\\Flagged'], (1717581800 + i, 0))
    args = ['mirror', a.url(), b.url(), '--state', state, '--ca-file',
            h.default_ca().ca_file]
    watch = args + ['--watch', '--interval', '1']

    proc = h.start_postino(watch)
    sa = wait_same(a, b, 'initial sync', lambda s: len(s.get('INBOX', []))
                   == 5 and len(s.get('Projekte', [])) == 1, timeout=20)
    check(h.duplicates(sa) == {}, 'initial sync: no duplicate')
    # The state is locked while --watch runs: a second run is refused.
    r = h.run_postino(args, timeout=60)
    check(r.returncode == 4 and r.stderr.strip(), 'a second mirror on the '
          'same state while --watch runs: exit 4 (state locked), with a '
          'message', h.show(r))
    time.sleep(2.5)             # a couple of intervals with nothing to do
    alive(proc, 'after the initial sync')
    check(h.snapshot(a) == sa and h.snapshot(b) == sa,
          'idle intervals change nothing')

    # A -> B: a new message.
    new = msg(10, 'a')
    sha = h.sha256_of(new)
    with a.connect() as c:
        c.append('INBOX', new, ['$Label1'], (1717590000, 0))
    t = time.monotonic()
    sa = wait_same(a, b, 'new message on A', lambda s: any(
        m[0] == sha for m in s['INBOX']))
    h.log('  new message on A reached B after %.1fs' % (time.monotonic() - t))
    alive(proc, 'new message on A')

    # B -> A: a flag change and a new message in another folder.
    new_b = msg(11, 'b')
    sha_b = h.sha256_of(new_b)
    target = h.sha256_of(msg(1, 'a'))
    with b.connect() as c:
        uid = h.uids_of(c, 'INBOX', sha=target)[0]
        c.uid_store('INBOX', uid, '+FLAGS', ['\\Answered', 'work'])
        c.uid_store('INBOX', uid, '-FLAGS', ['\\Seen'])
        c.append('Projekte', new_b, [], (1717590100, 0))
    sa = wait_same(a, b, 'flag change and new message on B', lambda s: any(
        m[0] == target and m[1] == {'\\answered', 'work'}
        for m in s['INBOX']) and any(m[0] == sha_b for m in s['Projekte']))
    alive(proc, 'changes on B')

    # A -> B: an expunge.
    gone = h.sha256_of(msg(2, 'b'))
    with a.connect() as c:
        h.expunge_uids(c, 'INBOX', h.uids_of(c, 'INBOX', sha=gone))
    sa = wait_same(a, b, 'expunge on A', lambda s: not any(
        m[0] == gone for m in s['INBOX']))

    # B -> A: a new folder.
    with b.connect() as c:
        c.create('Neu/Ünter')
        c.append('Neu/Ünter', msg(12, 'b'), ['\\Seen'], (1717590200, 0))
    sa = wait_same(a, b, 'new folder on B', lambda s: len(
        s.get('Neu/Ünter', [])) == 1)
    check(h.duplicates(sa) == {} and h.total(sa) == 8,
          'after all changes: 8 messages, no duplicate', h.describe(sa))
    alive(proc, 'all changes')

    stop(proc, 'idle watch')
    before = (h.snapshot(a, with_uids=True), h.snapshot(b, with_uids=True))
    r = h.run_postino(args)
    h.expect_exit(r, 0, 'plain run after --watch stopped')
    check((h.snapshot(a, with_uids=True), h.snapshot(b, with_uids=True)) ==
          before, 'plain run after --watch: nothing changed (same UIDs)')

    # A change made on B while a pass is busy copying into the same folder
    # (a slow link from A) is not hidden from the next passes.
    pa = faultproxy.FaultProxy('127.0.0.1', a.imaps_port).start()
    pb = faultproxy.FaultProxy('127.0.0.1', b.imaps_port).start()
    slow = ['mirror', 'imaps://alice@localhost:%d' % pa.port,
            'imaps://alice@localhost:%d' % pb.port, '--state',
            os.path.join(tmp, 'slow.db'), '--ca-file', h.default_ca().ca_file,
            '--watch', '--interval', '1']
    proc = h.start_postino(slow)
    sa = wait_same(a, b, 'watch through proxies (a new state: pairs '
                   'everything again)', timeout=20)
    time.sleep(1.5)
    check(h.snapshot(a) == sa and h.total(sa) == 8,
          'watch through proxies: nothing copied, nothing duplicated',
          h.describe(h.snapshot(a)))
    with b.connect() as c:
        n0 = c.select('INBOX')
    pa.set_rate(s2c=80000)          # about 3 s for 240 KB
    b0 = pa.bytes('s2c')
    with a.connect() as c:
        for i in range(100, 140):
            c.append('INBOX', msg(i, 'slow') + (b'x' * 70 + b'\r\n') * 85, [],
                     (1717610000 + i, 0))
    # Busy: postino is fetching the new messages from A (it has scanned
    # both sides' INBOX).
    fetching, _ = h.wait_until(lambda: pa.bytes('s2c') - b0 > 60000, 20,
                               interval=0.05)
    check(fetching, 'a pass is fetching the 40 new messages from A over '
          'the slow link')
    during = msg(200, 'during')
    with b.connect() as c:
        c.append('INBOX', during, ['\\Seen'], (1717620000, 0))
        uid = h.uids_of(c, 'INBOX', sha=target)[0]
        c.uid_store('INBOX', uid, '+FLAGS', ['$Label1'])
        left = n0 + 41 - c.select('INBOX')
    check(left > 0, 'a new message and a flag change on B\'s INBOX while '
          'the pass was still copying into it (%d of 40 to go)' % left)
    pa.set_rate(s2c=None)
    sha_d = h.sha256_of(during)
    sa = wait_same(a, b, 'changes made on B during a busy pass', lambda s: (
        any(m[0] == sha_d for m in s['INBOX']) and
        any(m[0] == target and '$label1' in m[1] for m in s['INBOX'])),
        timeout=WAIT + 5)
    alive(proc, 'changes during a busy pass')
    stop(proc, 'watch through proxies')

    # SIGTERM while a pass is busy copying over the slow link.
    proc = h.start_postino(slow)
    wait_same(a, b, 'watch through proxies, started again', timeout=20)
    pa.set_rate(s2c=60000)          # about 4 s for 240 KB
    b0 = pa.bytes('s2c')
    with a.connect() as c:
        for i in range(20, 60):
            c.append('INBOX', msg(i, 'burst-a') + (b'y' * 70 + b'\r\n') * 85,
                     ['\\Seen'], (1717600000 + i, 0))
    with b.connect() as c:
        for i in range(20, 40):
            c.append('Projekte', msg(i, 'burst-b'), [], (1717600000 + i, 0))
        uid = h.uids_of(c, 'INBOX', sha=target)[0]
        c.uid_store('INBOX', uid, '+FLAGS', ['\\Flagged'])
    fetching, _ = h.wait_until(lambda: pa.bytes('s2c') - b0 > 60000, 20,
                               interval=0.05)
    check(fetching and proc.poll() is None, 'busy watch: a pass is fetching '
          'the 40 new messages from A when SIGTERM comes')
    rc = stop(proc, 'busy watch')
    h.log('  busy watch: exit %d%s' % (rc, ' (the pass was cut short)'
                                       if rc == 7 else ''))
    pa.set_rate(s2c=None)
    sa0, sb0 = h.snapshot(a), h.snapshot(b)
    h.log('  at SIGTERM: A %s; B %s' % (h.describe(sa0), h.describe(sb0)))
    check(h.duplicates(sa0) == {} and h.duplicates(sb0) == {},
          'busy watch: no duplicate after SIGTERM')
    r = h.run_postino(slow[:-3])        # the same, without --watch
    h.expect_exit(r, 0, 'plain run after the busy watch was stopped')
    sa, sb = h.snapshot(a, with_uids=True), h.snapshot(b, with_uids=True)
    h.check_same(plain(sa), plain(sb), 'after the plain run: A and B equal',
                 ('A', 'B'))
    check(len(plain(sa)['INBOX']) == 5 + 41 + 40 and
          len(plain(sa)['Projekte']) == 2 + 20 and h.duplicates(plain(sa))
          == {} and any(m[0] == target and '\\flagged' in m[1]
                        for m in sa['INBOX']),
          'after the plain run: all 60 new messages and the flag, once each',
          h.describe(plain(sa)))
    r = h.run_postino(slow[:-3])
    check(r.returncode == 0 and h.snapshot(a, with_uids=True) == sa and
          h.snapshot(b, with_uids=True) == sb,
          'a further run exits 0 and changes nothing', h.show(r))
    pa.stop()
    pb.stop()

if __name__ == '__main__':
    h.main(run)
