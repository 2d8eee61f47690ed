#!/usr/bin/env python3
"""test_harness — the test harness itself, without postino.

The other integration tests trust harness.py as their oracle; this test
shows that trust is earned: certificates are good or bad as labelled (seen
by Python's own TLS client), servers start several at a time and stop
completely, populate() and snapshot() round-trip the corpus exactly across
layouts, separators and prefixes, and a snapshot comparison notices a
changed flag, a lost duplicate and a missing folder.
"""

import os
import ssl
import socket
import time

import harness as h
from harness import check


def tls_verify(port, ca_file, host='localhost'):
    """Connect with Python's TLS client; return None or the verify error."""
    ctx = ssl.create_default_context(cafile=ca_file)
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=10) as s:
            with ctx.wrap_socket(s, server_hostname=host):
                return None
    except ssl.SSLCertVerificationError as e:
        return e.verify_message or str(e)


def test_certificates():
    ca = h.default_ca()
    for kind in h.TestCA.KINDS:
        crt, key = ca.cert(kind)
        check(os.path.getsize(crt) > 0 and os.path.getsize(key) > 0,
              'certificate %s generated' % kind)
    # One server per certificate, all at once (also: many instances).
    servers = {k: h.Dovecot(cert=k, name='cert-' + k) for k in h.TestCA.KINDS}
    ports = [p for s in servers.values() for p in s.ports()]
    check(len(set(ports)) == len(ports),
          '%d instances run at once on distinct ports' % len(servers))
    expect = {
        'good': None,
        'selfsigned': 'self-signed',
        'wronghost': 'mismatch',
        'expired': 'expired',
        'notyetvalid': 'not yet valid',
        'unknownca': 'unable to get local issuer',
    }
    for kind, srv in servers.items():
        err = tls_verify(srv.imaps_port, ca.ca_file)
        if expect[kind] is None:
            check(err is None, 'good certificate verifies for "localhost"',
                  err)
            err = tls_verify(srv.imaps_port, ca.ca_file, host='127.0.0.1')
            check(err is None, 'good certificate verifies for 127.0.0.1', err)
            err = tls_verify(srv.imaps_port, None)
            check(err is not None,
                  'good certificate fails without the test CA (%s)' % err)
        else:
            check(err is not None and expect[kind] in err.lower(),
                  '%s certificate is rejected: %s' % (kind, err))
    for srv in servers.values():
        srv.stop()
    check(not any(s.running() for s in servers.values()),
          'all certificate servers stopped')


def test_start_stop():
    srv = h.Dovecot(layout='fs', pop3=True)
    pgid = os.getpgid(srv.proc.pid)
    check(pgid == srv.proc.pid and pgid != os.getpgid(0),
          'dovecot runs in its own process group')
    ports = srv.ports()
    check(len(ports) == 4 and all(h.port_open(p) for p in ports),
          'imap, imaps, pop3 and pop3s listeners accept')
    url = srv.url('alice')
    check(url == 'imaps://alice@localhost:%d' % srv.imaps_port,
          'url() gives %s' % url)
    srv.stop()
    time.sleep(0.2)
    check(not any(h.port_open(p) for p in ports), 'ports closed after stop()')
    alive = h.group_members(pgid)
    check(not alive, 'no live process of the group is left', alive)
    srv.stop()  # idempotent
    with h.Dovecot(ssl=False, starttls=False, plaintext=True) as plain:
        check(plain.imaps_port is None and h.port_open(plain.imap_port),
              'a server without TLS starts (plain listener only)')
        with plain.connect() as c:
            typ, caps = c.imap.capability()
        check(b'STARTTLS' not in caps[0], 'it does not offer STARTTLS')
    check(not plain.running(), 'context manager stops the server')


def test_capability_toggles():
    srv = h.Dovecot(uidplus=False, condstore=False)
    with srv.connect() as c:
        caps = c.imap.capability()[1][0].decode().split()
        check('UIDPLUS' not in caps and 'CONDSTORE' not in caps and
              'QRESYNC' not in caps and 'IMAP4rev1' in caps,
              'uidplus=False, condstore=False remove them from CAPABILITY')
        resp = c.append('INBOX', b'Subject: t\r\n\r\nx\r\n')
    check(b'APPENDUID' in resp[0],
          'but Dovecot still answers APPENDUID (hence FilterProxy)')
    with h.FilterProxy(srv) as proxy:
        import imaplib
        ctx = ssl.create_default_context(cafile=h.default_ca().ca_file)
        m = imaplib.IMAP4_SSL('localhost', proxy.port, ssl_context=ctx)
        m.login('alice', 'secret')
        caps = m.capability()[1][0].decode().split()
        m.literal = b'Subject: t2\r\n\r\nbody {5}\r\n'
        typ, resp = m._simple_command('APPEND', 'INBOX')
        m.select('INBOX')
        typ, data = m.fetch('2', '(BODY.PEEK[])')
        m.logout()
    check('UIDPLUS' not in caps and 'STARTTLS' not in caps,
          'proxy hides UIDPLUS and STARTTLS')
    check(typ == 'OK' and b'APPENDUID' not in resp[0] and proxy.stripped >= 1,
          'proxy strips APPENDUID from the APPEND answer')
    check(data[0][1] == b'Subject: t2\r\n\r\nbody {5}\r\n',
          'proxy passes message bytes (with a literal-like text) unchanged')
    # A slow link: data arrives intact, at the given rate.
    with h.FilterProxy(srv, strip_uidplus=False, tls=None,
                       rate=100_000) as slow:
        body = b'Subject: slow\r\n\r\n' + b'x' * 60_000 + b'\r\n'
        m = imaplib.IMAP4('127.0.0.1', slow.port)
        m.login('alice', 'secret')
        t = time.time()
        m.literal = body
        typ, resp = m._simple_command('APPEND', 'INBOX')
        took = time.time() - t
        m.select('INBOX')
        typ, data = m.fetch('3', '(BODY.PEEK[])')
        check(data[0][1] == body and took >= 0.35,
              'slow proxy: 60 kB APPEND intact, took %.2fs at 100 kB/s' %
              took)
        # A client that dies mid-APPEND: what the proxy still held is
        # dropped, the server sees a reset and saves nothing.
        s = socket.create_connection(('127.0.0.1', slow.port))
        s.recv(1000)
        s.sendall(b'a LOGIN alice secret\r\n')
        time.sleep(0.3)
        big = b'Subject: lost\r\n\r\n' + b'y' * 200_000 + b'\r\n'
        s.sendall(b'b APPEND INBOX {%d+}\r\n' % len(big) + big)
        time.sleep(0.3)
        s.close()
        time.sleep(2.5)
        m.noop()
        typ, data = m.select('INBOX')
        m.logout()
        check(int(data[0]) == 3, 'slow proxy: the APPEND of a client that '
              'died is not delivered later')
    srv.stop()


def test_mutf7():
    cases = {'INBOX': 'INBOX', 'Café': 'Caf&AOk-', 'Entwürfe': 'Entw&APw-rfe',
             '日本語': '&ZeVnLIqe-', 'R&D': 'R&-D', 'with space': 'with space',
             'レポート': '&MOww3TD8MMg-', '~peter/mail/台北/日本語':
             '~peter/mail/&U,BTFw-/&ZeVnLIqe-'}
    for text, enc in cases.items():
        check(h.mutf7_encode(text) == enc and h.mutf7_decode(enc) == text,
              'modified UTF-7 %r <-> %r' % (text, enc))


def test_populate_snapshot():
    full = h.corpus('full')
    n = sum(len(v) for v in full.values())
    real = len(full['Real'])
    check(real == len(h.realworld_files()) and real >= 100,
          'full corpus holds all %d real-world messages' % real)
    check(max(len(m.data) for ms in full.values() for m in ms) > 20e6,
          'full corpus holds a message over 20 MB')
    check(set(h.STANDARD_FOLDERS) <= set(full), 'full corpus folders: %s' %
          ', '.join(sorted(full)))
    t = time.time()
    a = h.Dovecot(layout='fs', name='fs')
    b = h.Dovecot(layout='maildir++', name='mpp')
    c = h.Dovecot(layout='maildir++', prefix='INBOX.', name='prefixed')
    for srv in (a, b, c):
        h.populate(srv, 'alice', full)
    h.log('populated 3 servers with %d messages in %.1fs' % (n, time.time() -
                                                             t))
    t = time.time()
    sa, sb, sc = (h.snapshot(s) for s in (a, b, c))
    h.log('3 snapshots in %.1fs' % (time.time() - t))
    exp = h.expected_snapshot(full)
    h.check_same(exp, sa, 'fs-layout snapshot equals the corpus exactly',
                 ('corpus', 'server'))
    h.check_same(sa, sb, 'fs and maildir++ servers compare equal',
                 ('fs', 'maildir++'))
    h.check_same(sa, sc, 'fs and INBOX.-prefixed servers compare equal',
                 ('fs', 'prefixed'))
    check(h.duplicates(sa).get('INBOX') == 1,
          'the double delivery is kept as two messages')
    check(len(sa['Trash']) == 0 and 'Trash' in sa,
          'an empty folder is part of the snapshot')
    check(sa == h.snapshot(a), 'snapshot does not change the account '
          '(BODY.PEEK: no \\Seen set)')
    with c.connect() as conn:
        raw = [f for f in conn.folders()]
        listed = conn.imap.list()[1]
    check(any(b'INBOX.Archive.2024.Q1' in x for x in listed if x) and
          'Archive/2024/Q1' in raw,
          'prefixed server stores Archive/2024/Q1 as INBOX.Archive.2024.Q1')
    counts = h.count_messages(b)
    check(h.total(counts) == n == h.total(sb),
          'count_messages agrees: %d messages' % n)
    # The comparison notices what matters.
    with b.connect() as conn:
        msgs = conn.messages('Café')
        conn.uid_store('Café', msgs[0][0], '+FLAGS', ['$Changed'])
        dup_uid = [u for u, body, fl, d in conn.messages('INBOX')
                   if body == full['INBOX'][-4].data][0]
        conn.uid_store('INBOX', dup_uid, '+FLAGS', ['\\Deleted'])
        conn.imap.expunge()
        conn.imap.delete(h.imap_quote(conn.server_name('Trash')))
    sb2 = h.snapshot(b)
    diffs = h.diff_snapshots(sa, sb2)
    h.log('\n'.join('  ' + d for d in diffs))
    check(any('Café' in d and '$changed' in d for d in diffs),
          'diff reports a changed flag')
    check(any(d.startswith('INBOX: message') and
              '1 extra in source (destination has 1)' in d
              for d in diffs), 'diff reports one lost copy of a duplicate')
    check(any("'Trash' only in source" in d for d in diffs),
          'diff reports a missing folder')
    check(len(diffs) == 4 and sa != sb2, 'and nothing else (4 lines with '
          'the INBOX count)')


def run():
    test_mutf7()
    test_certificates()
    test_start_stop()
    test_capability_toggles()
    test_populate_snapshot()


if __name__ == '__main__':
    h.main(run)
