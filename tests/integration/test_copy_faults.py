#!/usr/bin/env python3
"""test_copy_faults — copies stay exact when the servers change under the
state or the connection breaks.

Proves, against real Dovecot:
  - the destination folder deleted and recreated (a new UIDVALIDITY): the
    rerun re-pairs by content and copies the messages again, once each;
  - the source folder recreated with the same messages (a new UIDVALIDITY):
    the rerun appends nothing, and a message new since is copied;
  - connections cut at chosen byte offsets (source and destination side,
    inside a message literal, inside an APPEND): every run ends in success
    or a clean "rerun to resume" exit within the timeout, and the final run
    converges to an exact copy with no duplicate;
  - a stalled destination is detected within --timeout, and postino
    reconnects and finishes.
"""

import os
import sys
import time

import harness as h
from harness import check

sys.path.insert(0, os.path.join(h.SOURCE_ROOT, 'tests', 'tools'))
import faultproxy  # noqa: E402


def copy(src_url, dst_url, state, extra=(), timeout=300):
    return h.run_postino(['copy', src_url, dst_url, '--state', state,
                          '--timeout', '5'] + list(extra), timeout=timeout)


def recreate(server, path):
    """Delete folder PATH and make it again with the same messages, in the
    same order (Dovecot gives the new folder a new UIDVALIDITY)."""
    with server.connect() as c:
        msgs = c.messages(path)
        c.select('INBOX')  # a selected folder cannot be deleted cleanly
        name = c.server_name(path)
        typ, data = c.imap.delete(h.imap_quote(name))
        check(typ == 'OK', 'deleted %s' % path, data)
        c.create(path)
        for uid, body, flags, date in msgs:
            fl = [f for f in flags if f.lower() != '\\recent']
            c.append(path, body, fl, (date, 0))
    return len(msgs)


def uidvalidity(server, path):
    with server.connect() as c:
        typ, data = c.imap.status(h.imap_quote(c.server_name(path)),
                                  '(UIDVALIDITY)')
        return data[0]


def test_uidvalidity(tmp):
    src = h.Dovecot(layout='fs', name='uv-src')
    dst = h.Dovecot(layout='maildir++', name='uv-dst')
    folders = h.corpus('small')
    h.populate(src, 'alice', folders)
    state = os.path.join(tmp, 'uv.db')
    r = copy(src.url(), dst.url(), state)
    h.expect_exit(r, 0, 'first copy')
    want = h.snapshot(src)
    h.check_same(want, h.snapshot(dst), 'first copy exact')

    # The destination folder is lost and made again, empty.
    before = uidvalidity(dst, 'Café')
    with dst.connect() as c:
        c.imap.delete(h.imap_quote(c.server_name('Café')))
        c.create('Café')
    check(uidvalidity(dst, 'Café') != before,
          'destination Café has a new UIDVALIDITY')
    r = copy(src.url(), dst.url(), state)
    h.expect_exit(r, 0, 'rerun after the destination folder was recreated')
    h.check_same(want, h.snapshot(dst),
                 'destination recreated: messages copied again, once each')
    s = h.summary(r)
    check(s and s['copied'] == len(want['Café']),
          'summary: exactly the %d messages of Café copied' %
          len(want['Café']), h.show(r))

    # The source folder is made again with the same messages.
    before = uidvalidity(src, 'Sent')
    n = recreate(src, 'Sent')
    check(uidvalidity(src, 'Sent') != before and n > 0,
          'source Sent recreated with %d messages, new UIDVALIDITY' % n)
    with src.connect() as c:
        c.append('Sent', b'From: a@b\r\nMessage-ID: <after-uv@x>\r\n\r\nnew\r\n',
                 ['\\Seen'])
    r = copy(src.url(), dst.url(), state)
    h.expect_exit(r, 0, 'rerun after the source folder was recreated')
    s = h.summary(r)
    check(s and s['copied'] == 1,
          'source recreated: only the one new message appended', h.show(r))
    h.check_same(h.snapshot(src), h.snapshot(dst),
                 'source recreated: destination equals source, no duplicate')


def test_cuts(tmp):
    src = h.Dovecot(layout='fs', name='cut-src')
    dst = h.Dovecot(layout='maildir++', name='cut-dst')
    folders = h.corpus('small')
    h.populate(src, 'alice', folders)
    want = h.snapshot(src)
    total = h.total(want)
    # Cut points: early (login), in the middle of a FETCH literal, in the
    # middle of an APPEND, late; on either side.
    cases = [('src', 's2c', 3000), ('src', 's2c', 60000), ('src', 'c2s', 900),
             ('dst', 'c2s', 40000), ('dst', 'c2s', 150000),
             ('dst', 's2c', 2500), ('dst', 'c2s', 5000)]
    for i, (side, direction, offset) in enumerate(cases):
        d = h.Dovecot(layout='maildir++', name='cut-d%d' % i)
        state = os.path.join(tmp, 'cut%d.db' % i)
        target = src if side == 'src' else d
        with faultproxy.FaultProxy('127.0.0.1', target.imaps_port) as p:
            p.cut_at(offset, direction, conn=1)
            url = 'imaps://alice@localhost:%d' % p.port
            s_url, d_url = (url, d.url()) if side == 'src' else (src.url(), url)
            t = time.time()
            r = copy(s_url, d_url, state, ['--jobs', '1'], timeout=120)
            took = time.time() - t
            check(r.returncode in (0, 3) and took < 60,
                  'cut %s %s at %d: exit %d in %.1fs (ok or resumable)' % (
                      side, direction, offset, r.returncode, took), h.show(r))
            fired = p.conn(1).s2c.cut_at or p.conn(1).c2s.cut_at
            check(bool(fired) or r.returncode == 0,
                  'cut %s %s at %d: the proxy cut the connection' % (
                      side, direction, offset))
            for attempt in range(3):
                if r.returncode == 0:
                    break
                r = copy(s_url, d_url, state, ['--jobs', '1'], timeout=120)
            h.expect_exit(r, 0, 'cut %s %s at %d: a rerun completes' % (
                side, direction, offset))
        got = h.snapshot(d)
        h.check_same(want, got, 'cut %s %s at %d: exact, no duplicate (%d)' % (
            side, direction, offset, total))
        d.stop()


def test_stall(tmp):
    src = h.Dovecot(layout='fs', name='stall-src')
    dst = h.Dovecot(layout='maildir++', name='stall-dst')
    h.populate(src, 'alice', h.corpus('small'))
    state = os.path.join(tmp, 'stall.db')
    with faultproxy.FaultProxy('127.0.0.1', dst.imaps_port) as p:
        p.stall_at(20000, 'c2s', conn=1)  # TLS: an offset inside the APPENDs
        url = 'imaps://alice@localhost:%d' % p.port
        t = time.time()
        r = copy(src.url(), url, state, ['--jobs', '1'], timeout=120)
        took = time.time() - t
        # The stalled connection times out after 5 s; postino reconnects
        # (the proxy stalls only connection 1) and finishes.
        check(r.returncode == 0, 'stalled destination: reconnected and '
              'finished, exit 0', h.show(r))
        check(5 <= took < 45, 'stall detected by the 5 s timeout (%.1fs)' % took)
        check('connection lost; reconnecting' in r.stderr,
              'the stall is reported as a lost connection', h.show(r))
        check(p.accepted >= 2, 'a second connection was made (%d)' % p.accepted)
    h.check_same(h.snapshot(src), h.snapshot(dst),
                 'after the stall: exact, no duplicate')


def main():
    tmp = h.make_tmpdir('faults')
    test_uidvalidity(tmp)
    test_cuts(tmp)
    test_stall(tmp)


if __name__ == '__main__':
    h.main(main)
