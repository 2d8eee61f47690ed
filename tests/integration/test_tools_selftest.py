#!/usr/bin/env python3
"""test_tools_selftest — the test tools themselves, without postino.

Other tests trust tests/tools/faultproxy.py and tests/tools/fakeserver.py
to do exactly what they are told; this test earns that trust with
Python's own clients (imaplib, poplib, raw sockets) as the only peers:

  faultproxy  passes bytes unchanged (plain and TLS), cuts at the exact
              byte offset of the chosen connection and direction (also in
              the middle of a literal), stalls and releases, adds latency
              that shows up as the round trip it should while not throttling
              throughput, counts commands and bytes, keeps a copy that shows
              no plaintext LOGIN through TLS, takes rule changes while
              running, serves many connections and stops cleanly;
  fakeserver  serves a mailbox that imaplib can list, select, fetch, store,
              expunge and append to (MULTIAPPEND over a raw socket), over
              plain, implicit TLS and STARTTLS, and a POP3 maildrop for
              poplib; every injected fault is observed from the client side;
  both CLIs   start, serve and stop on a signal.
"""

import base64
import imaplib
import os
import poplib
import re
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time

import harness as h
from harness import check

sys.path.insert(0, os.path.join(h.SOURCE_ROOT, 'tests', 'tools'))
import faultproxy as fp     # noqa: E402
import fakeserver as fs     # noqa: E402

TOOLS = os.path.join(h.SOURCE_ROOT, 'tests', 'tools')
MSG_A = (b'From: a@example.org\r\nSubject: first\r\n'
         b'Message-ID: <a@test>\r\n\r\nhello\r\n.dot line\r\n')
MSG_B = b'From: b@example.org\r\nSubject: second\r\n\r\nbody b\r\n'
_servers = []


def started(obj):
    """Start a tool and have it stopped at the end whatever happens."""
    _servers.append(obj)
    return obj.start()


def stop_all():
    while _servers:
        _servers.pop().stop()


# --------------------------------------------------------------------------
# Small peers for the proxy tests

class Upstream:
    """A TCP server for the proxy: 'source' sends PAYLOAD then closes (or
    with hold=True waits for the client to close), 'sink' reads until EOF
    and records how many bytes each connection brought, 'echo' echoes."""

    def __init__(self, mode, payload=b'', hold=False):
        self.mode, self.payload, self.hold = mode, payload, hold
        self.received = []          # sink: byte counts, one a connection
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.ls = socket.socket()
        self.ls.bind(('127.0.0.1', 0))
        self.ls.listen(64)
        self.ls.settimeout(0.2)
        self.port = self.ls.getsockname()[1]

    def start(self):
        threading.Thread(target=self._loop, daemon=True).start()
        return self

    def stop(self):
        self.stopped.set()
        self.ls.close()

    def _loop(self):
        deadline = time.monotonic() + 120
        while not self.stopped.is_set() and time.monotonic() < deadline:
            try:
                c, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,),
                             daemon=True).start()

    def _serve(self, c):
        c.settimeout(10)
        try:
            if self.mode == 'source':
                c.sendall(self.payload)
                if self.hold:
                    while c.recv(65536):
                        pass
            elif self.mode == 'sink':
                n = 0
                while True:
                    d = c.recv(65536)
                    if not d:
                        break
                    n += len(d)
                with self.lock:
                    self.received.append(n)
            else:
                while True:
                    d = c.recv(65536)
                    if not d:
                        break
                    c.sendall(d)
        except OSError:
            pass
        finally:
            c.close()


def recv_all(sock, limit=1 << 26):
    out = bytearray()
    while len(out) < limit:
        try:
            d = sock.recv(65536)
        except ConnectionResetError:
            break
        if not d:
            break
        out += d
    return bytes(out)


def recv_exactly(sock, n):
    out = bytearray()
    while len(out) < n:
        d = sock.recv(n - len(out))
        if not d:
            break
        out += d
    return bytes(out)


def silent_for(sock, seconds):
    """True when SOCK delivers nothing (not even EOF) for SECONDS."""
    sock.settimeout(seconds)
    try:
        sock.recv(1)
        return False
    except socket.timeout:
        return True
    finally:
        sock.settimeout(10)


def connect(port):
    return socket.create_connection(('127.0.0.1', port), timeout=10)


# --------------------------------------------------------------------------
# faultproxy

def test_proxy_cut_offsets():
    payload = os.urandom(1 << 20)
    src = started(Upstream('source', payload))
    p = started(fp.FaultProxy('127.0.0.1', src.port, protocol=None))
    rule = p.cut_at(12345, direction='s2c', conn=3)
    got = []
    for _ in range(4):
        with connect(p.port) as s:
            got.append(recv_all(s))
    check(got[0] == payload and got[1] == payload and got[3] == payload,
          'proxy: connections 1, 2 and 4 pass 1 MiB unchanged')
    check(got[2] == payload[:12345],
          'proxy: connection #3 cut after exactly 12345 bytes s2c (got %d)'
          % len(got[2]))
    st = p.wait(lambda p: not p.conn(3).open and p.conn(3))
    check(st.s2c.cut_at == 12345 and st.s2c.sent == 12345 and
          rule.fired == [3], 'proxy: stats and rule agree on the cut', st)

    # Client -> server, every connection, counted at the server.
    sink = started(Upstream('sink'))
    p2 = started(fp.FaultProxy('127.0.0.1', sink.port, protocol=None))
    p2.cut_at(5000, direction='c2s')
    for _ in range(2):
        with connect(p2.port) as s:
            try:
                s.sendall(os.urandom(100000))
            except OSError:
                pass        # the cut may reach us while sending
            recv_all(s)
    sink_done = lambda: len(sink.received) == 2   # noqa: E731
    deadline = time.monotonic() + 5
    while not sink_done() and time.monotonic() < deadline:
        time.sleep(0.02)
    check(sink.received == [5000, 5000],
          'proxy: c2s cut at 5000 on every connection: the server got '
          'exactly %s' % sink.received)


def test_proxy_cut_mid_literal():
    big = b'Subject: big\r\n\r\n' + b'x' * 199984 + b'\r\n'
    srv = started(fs.FakeIMAP({'folders': {'INBOX': [big]}}))
    p = started(fp.FaultProxy('127.0.0.1', srv.port))
    marker = b'BODY[] {%d}\r\n' % len(big)
    p.cut_after(marker, direction='s2c', plus=1000, conn=2)
    bodies = []
    for _ in range(2):
        c = imaplib.IMAP4('127.0.0.1', p.port, timeout=10)
        c.login('alice', 'secret')
        c.select('INBOX')
        try:
            typ, data = c.uid('FETCH', '1', '(BODY.PEEK[])')
            bodies.append(data[0][1])
            c.logout()
        except (imaplib.IMAP4.abort, OSError) as e:
            bodies.append(e)
    check(bodies[0] == big, 'proxy: connection 1 fetches the 200 KB literal')
    check(isinstance(bodies[1], Exception),
          'proxy: imaplib fails when connection 2 is cut mid-literal (%s)'
          % bodies[1])
    st = p.wait(lambda p: not p.conn(2).open and p.conn(2))
    start = st.s2c.captured.find(marker) + len(marker)
    check(st.s2c.cut_at == start + 1000 and st.s2c.sent == start + 1000,
          'proxy: the cut came exactly 1000 bytes into the literal')


def test_proxy_stall():
    src = started(Upstream('source', b'hello MARK world', hold=True))
    p = started(fp.FaultProxy('127.0.0.1', src.port, protocol=None))
    p.stall_after(b'MARK', direction='s2c')
    with connect(p.port) as s:
        check(recv_exactly(s, 10) == b'hello MARK',
              'proxy: bytes up to the stall pattern arrive')
        check(silent_for(s, 0.5), 'proxy: then nothing, and no EOF')
        check(p.conn(1).s2c.stalled_at == 10 and p.conn(1).open,
              'proxy: stats show the stall at offset 10, connection open')
        p.release()
        check(recv_exactly(s, 6) == b' world',
              'proxy: release() delivers the held bytes')

    # A rule added while the connection is open, on c2s.
    echo = started(Upstream('echo'))
    p2 = started(fp.FaultProxy('127.0.0.1', echo.port, protocol=None))
    with connect(p2.port) as s:
        s.sendall(b'ab')
        check(recv_exactly(s, 2) == b'ab', 'proxy: echo through the proxy')
        gone = p2.cut_at(3, direction='c2s')    # added, then removed
        p2.remove_rule(gone)
        p2.stall_at(6, direction='c2s', conn=1)
        s.sendall(b'cdefgh')
        check(recv_exactly(s, 4) == b'cdef',
              'proxy: c2s stall added at run time: bytes before offset 6 pass')
        check(silent_for(s, 0.4), 'proxy: c2s bytes after the stall held')
        p2.release(conn=1)
        check(recv_exactly(s, 2) == b'gh', 'proxy: c2s release')


def test_proxy_latency():
    echo = started(Upstream('echo'))
    p = started(fp.FaultProxy('127.0.0.1', echo.port, delay=0.010,
                              protocol=None))
    rtts, echoed = [], []
    with connect(p.port) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(12):
            t = time.monotonic()
            s.sendall(b'ping%02d' % i)
            echoed.append(recv_exactly(s, 6) == b'ping%02d' % i)
            rtts.append(time.monotonic() - t)
    check(all(echoed), 'proxy: 12 pings echoed through the delay')
    med = statistics.median(rtts)
    check(0.019 <= med <= 0.045 and min(rtts) >= 0.0195,
          'proxy: 10 ms each way gives a ~20 ms round trip (median %.1f ms, '
          'min %.1f ms)' % (med * 1000, min(rtts) * 1000))

    # A delay line, not a sleep per read: 8 MiB with 50 ms one way takes
    # about 50 ms more than without, not 50 ms per chunk.
    payload = os.urandom(8 << 20)
    src = started(Upstream('source', payload))
    p2 = started(fp.FaultProxy('127.0.0.1', src.port, delay=0.050,
                               protocol=None))
    t = time.monotonic()
    with connect(p2.port) as s:
        first = s.recv(65536)
        t_first = time.monotonic() - t
        data = first + recv_all(s)
    total = time.monotonic() - t
    check(data == payload, 'proxy: 8 MiB arrive complete and in order')
    check(t_first >= 0.048, 'proxy: first byte after the one-way delay '
          '(%.1f ms)' % (t_first * 1000))
    check(total < 1.5, 'proxy: throughput not limited to a chunk per delay '
          '(8 MiB in %.2f s; %d reads of 64 KiB would need %.1f s)' % (
              total, len(payload) // 65536, len(payload) / 65536 * 0.05))
    # Shortening the delay mid-stream must not let later chunks overtake.
    p2.set_rate(s2c=4 << 20)        # 2 s of data: the change lands mid-way
    with connect(p2.port) as s:
        first = s.recv(65536)
        p2.set_delay(0.0)
        data = first + recv_all(s)
    check(data == payload, 'proxy: order kept across a delay change '
          '(with a 4 MiB/s rate limit)')


def test_proxy_counting_and_tls():
    ca = h.default_ca()
    crt, key = ca.cert('good')
    srv = started(fs.FakeIMAP({'folders': {'INBOX': [MSG_A]}}))
    p = started(fp.FaultProxy('127.0.0.1', srv.port))
    c = imaplib.IMAP4('127.0.0.1', p.port, timeout=10)
    c.login('alice', 'secret')
    c.select('INBOX')
    # A literal whose text looks like a command must not be counted.
    trap = b'Subject: trap\r\n\r\nA1 LOGIN x y\r\nA2 SELECT z\r\n'
    c.append('INBOX', None, None, trap)
    c.uid('FETCH', '1:*', '(UID FLAGS BODY.PEEK[])')
    c.logout()
    st = p.wait(lambda p: not p.conn(1).open and p.conn(1))
    cmds = st.c2s.commands
    check(cmds['LOGIN'] == 1 and cmds['SELECT'] == 1 and
          cmds['APPEND'] == 1 and cmds['UID FETCH'] == 1 and
          cmds['LOGOUT'] == 1,
          'proxy: commands counted, literals skipped: %s' % dict(cmds))
    check(st.s2c.tagged == sum(cmds.values()),
          'proxy: one tagged response counted per command (%d)'
          % st.s2c.tagged)
    check(st.c2s.read == st.c2s.sent == len(st.c2s.captured) and
          st.s2c.read == st.s2c.sent and p.bytes('c2s') == st.c2s.sent,
          'proxy: byte counts agree (c2s %d, s2c %d)' % (st.c2s.sent,
                                                         st.s2c.sent))
    check(b'LOGIN alice "secret"' in p.client_bytes(1),
          'proxy: the plaintext capture shows the LOGIN')

    # Implicit TLS through the proxy: the capture is ciphertext.
    tsrv = started(fs.FakeIMAP({}, tls='implicit', cert=crt, key=key))
    tp = started(fp.FaultProxy('127.0.0.1', tsrv.port))
    ctx = ssl.create_default_context(cafile=ca.ca_file)
    c = imaplib.IMAP4_SSL('localhost', tp.port, ssl_context=ctx, timeout=10)
    c.login('alice', 'secret')
    c.logout()
    tp.wait(lambda p: not p.conn(1).open)
    sent = tp.client_bytes()
    check(len(tsrv.commands_named('LOGIN')) == 1,
          'proxy: TLS passes end to end (the server got the LOGIN)')
    check(len(sent) > 200 and b'LOGIN' not in sent and
          b'secret' not in sent and b'alice' not in sent,
          'proxy: TLS capture (%d bytes) holds no plaintext LOGIN' %
          len(sent))

    # STARTTLS: the capture shows STARTTLS in clear, then nothing readable.
    ssrv = started(fs.FakeIMAP({}, tls='starttls', cert=crt, key=key))
    sp = started(fp.FaultProxy('127.0.0.1', ssrv.port))
    c = imaplib.IMAP4('localhost', sp.port, timeout=10)
    c.starttls(ctx)
    c.authenticate('PLAIN', lambda _: b'\0alice\0secret')
    c.logout()
    sp.wait(lambda p: not p.conn(1).open)
    sent = sp.client_bytes()
    check(b'STARTTLS' in sent and b'AUTHENTICATE' not in sent and
          base64.b64encode(b'\0alice\0secret') not in sent,
          'proxy: after STARTTLS no AUTHENTICATE in the clear')


def test_proxy_many_and_stop():
    echo = started(Upstream('echo'))
    p = started(fp.FaultProxy('127.0.0.1', echo.port, protocol=None,
                              delay=0.002))
    results = []
    lock = threading.Lock()

    def client(i):
        data = os.urandom(65536)
        ok = False
        try:
            with connect(p.port) as s:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                ok = recv_all(s) == data
        except OSError:
            pass
        with lock:
            results.append(ok)
    threads = [threading.Thread(target=client, args=(i,), daemon=True)
               for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    check(len(results) == 40 and all(results) and p.accepted == 40,
          'proxy: 40 concurrent connections echo 64 KiB each')
    check(p.wait(lambda p: p.open_connections() == 0),
          'proxy: half-closes pass through and every connection ends')
    s = connect(p.port)
    s.sendall(b'x')
    check(recv_exactly(s, 1) == b'x', 'proxy: an open connection')
    p.stop()
    check(not p.running(), 'proxy: stop() ends the thread')
    s.settimeout(5)
    try:
        eof = s.recv(10) == b''
    except OSError:
        eof = True
    s.close()
    check(eof, 'proxy: stop() closes open connections')
    check(not h.port_open(p.port), 'proxy: stop() closes the listener')


# --------------------------------------------------------------------------
# fakeserver: IMAP

class Raw:
    """A raw IMAP client: exact bytes in, exact bytes out."""

    def __init__(self, port, timeout=5):
        self.s = connect(port)
        self.s.settimeout(timeout)
        self.buf = b''

    def line(self):
        while b'\r\n' not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise EOFError(self.buf)
            self.buf += d
        line, self.buf = self.buf.split(b'\r\n', 1)
        return line + b'\r\n'

    def send(self, data):
        self.s.sendall(data)

    def until(self, tag):
        """Lines up to the tagged one (literals appended to their line)."""
        out = []
        while True:
            line = self.line()
            if line.endswith(b'}\r\n') and b'{' in line:
                n = int(line[line.rindex(b'{') + 1:-3])
                while len(self.buf) < n:
                    d = self.s.recv(65536)
                    if not d:
                        raise EOFError(line)
                    self.buf += d
                line += self.buf[:n]
                self.buf = self.buf[n:]
                line += self.line()
            out.append(line)
            if line.startswith(tag.encode() + b' '):
                return out

    def rest(self):
        """Everything until EOF."""
        out = self.buf
        self.buf = b''
        return out + recv_all(self.s)

    def login(self):
        self.line()
        self.send(b'L LOGIN alice secret\r\n')
        return self.until('L')

    def close(self):
        self.s.close()


def test_imap_basics():
    ca = h.default_ca()
    crt, key = ca.cert('good')
    srv = started(fs.FakeIMAP({
        'folders': {'INBOX': [MSG_A, {'data': MSG_B,
                                      'flags': ['\\Seen', 'Work'],
                                      'date': '01-Jan-2001 10:00:00 +0200'}],
                    'Sent': [], 'Junk': []},
        'special_use': {'Sent': '\\Sent', 'Junk': ['\\Junk']},
        'uidvalidity': {'INBOX': 42},
        'permanentflags': ['\\Seen', '\\Deleted', '\\Flagged', '\\*'],
    }, tls='starttls', cert=crt, key=key))
    c = imaplib.IMAP4('127.0.0.1', srv.port, timeout=10)
    check('STARTTLS' in c.capabilities and 'MULTIAPPEND' in c.capabilities
          and 'AUTH=PLAIN' in c.capabilities,
          'imap: default capabilities advertised')
    try:
        c.login('alice', 'wrong')
        bad_login = False
    except imaplib.IMAP4.error as e:
        bad_login = 'AUTHENTICATIONFAILED' in str(e)
    check(bad_login, 'imap: a wrong password gets NO [AUTHENTICATIONFAILED]')
    c.login('alice', 'secret')
    typ, ns = c.namespace()
    check(ns == [b'(("" "/")) NIL NIL'], 'imap: NAMESPACE', ns)
    typ, lst = c.list()
    check(b'(\\HasNoChildren \\Sent) "/" "Sent"' in lst and
          b'(\\HasNoChildren \\Junk) "/" "Junk"' in lst,
          'imap: LIST shows special-use attributes', lst)
    check(c.create('Archive/2020')[0] == 'OK', 'imap: CREATE')
    typ, lst = c.list('""', 'Archive*')
    check(lst == [b'(\\HasChildren) "/" "Archive"',
                  b'(\\HasNoChildren) "/" "Archive/2020"'],
          'imap: CREATE made the parent too; LIST pattern', lst)
    typ, lst = c.list('""', '%')
    check(b'(\\HasNoChildren) "/" "Archive/2020"' not in lst,
          'imap: % does not cross the separator')
    c.subscribe('Archive/2020')
    typ, lsub = c.lsub('""', 'Arch*')
    check(lsub == [b'(\\HasNoChildren) "/" "Archive/2020"'],
          'imap: SUBSCRIBE and LSUB', lsub)
    typ, data = c.select('INBOX')
    r = c.untagged_responses
    check(data == [b'2'] and r['UIDVALIDITY'] == [b'42'] and
          r['UIDNEXT'] == [b'3'] and r['HIGHESTMODSEQ'] == [b'3'] and
          r['PERMANENTFLAGS'] == [b'(\\Seen \\Deleted \\Flagged \\*)'],
          'imap: SELECT gives EXISTS, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, '
          'PERMANENTFLAGS', r)
    typ, data = c.uid('FETCH', '1:*', '(UID FLAGS INTERNALDATE RFC822.SIZE '
                      'BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)] MODSEQ)')
    check(data[0][0] == b'1 (UID 1 FLAGS () INTERNALDATE "%s" RFC822.SIZE %d'
          b' BODY[HEADER.FIELDS (MESSAGE-ID)] {24}' % (
              fs.format_date(srv.messages('INBOX')[0].date).encode(),
              len(MSG_A)) and
          data[0][1] == b'Message-ID: <a@test>\r\n\r\n' and
          data[1] == b' MODSEQ (2))',
          'imap: UID FETCH of UID FLAGS INTERNALDATE RFC822.SIZE HEADER.FIELDS'
          ' MODSEQ', data)
    check(b'INTERNALDATE "01-Jan-2001 10:00:00 +0200"' in data[2][0] and
          b'FLAGS (\\Seen Work)' in data[2][0],
          'imap: date with its zone and keywords come back as given')
    typ, data = c.uid('FETCH', '1:*', '(BODY.PEEK[])')
    check(data[0][1] == MSG_A and data[2][1] == MSG_B,
          'imap: BODY.PEEK[] returns the exact bytes')
    check(srv.messages('INBOX')[0].flags == [],
          'imap: BODY.PEEK[] does not set \\Seen')
    typ, data = c.fetch('1', '(BODY[TEXT])')
    check(data[0][1] == b'hello\r\n.dot line\r\n' and
          b'FLAGS (\\Seen)' in data[1],
          'imap: BODY[TEXT] works and sets \\Seen', data)
    typ, data = c.append('INBOX', '(\\Flagged work)',
                         '"05-Mar-2020 12:34:56 -0330"', b'Subject: n\r\n\r\nn'
                         b'\r\n')
    check(typ == 'OK' and data == [b'[APPENDUID 42 3] Append completed'],
          'imap: APPEND answers APPENDUID', data)
    m = srv.messages('INBOX')[2]
    check(m.flags == ['\\Flagged', 'Work'] and
          m.date == fs.parse_date('05-Mar-2020 12:34:56 -0330') and
          m.data == b'Subject: n\r\n\r\nn\r\n',
          'imap: APPEND stored bytes, date and flags (first keyword '
          'spelling wins)', m)
    c.noop()
    typ, data = c.uid('STORE', '1', '+FLAGS.SILENT', '(\\Deleted)')
    check(data == [None], 'imap: +FLAGS.SILENT answers no FETCH', data)
    typ, data = c.uid('STORE', '2', '-FLAGS', '(Work)')
    check(data and b'FLAGS (\\Seen)' in data[0], 'imap: -FLAGS', data)
    typ, data = c.uid('FETCH', '1:*', '(FLAGS) (CHANGEDSINCE 5)')
    uids = sorted(int(x.split(b'UID ')[1].split()[0]) for x in data)
    check(uids == [1, 2], 'imap: CHANGEDSINCE returns just the changed '
          'messages (%s)' % uids, data)
    typ, data = c.uid('EXPUNGE', '1:2')
    check(typ == 'OK' and [m.uid for m in srv.messages('INBOX')] == [2, 3],
          'imap: UID EXPUNGE removes only \\Deleted messages in the set')
    typ, data = c.status('INBOX', '(MESSAGES UIDNEXT UIDVALIDITY UNSEEN '
                         'HIGHESTMODSEQ)')
    check(data[0].startswith(b'"INBOX" (MESSAGES 2 UIDNEXT 4 UIDVALIDITY 42 '
                             b'UNSEEN 1 HIGHESTMODSEQ '),
          'imap: STATUS', data)
    c.logout()
    # STARTTLS, then AUTHENTICATE PLAIN.
    ctx = ssl.create_default_context(cafile=ca.ca_file)
    c = imaplib.IMAP4('localhost', srv.port, timeout=10)
    c.starttls(ctx)
    check('STARTTLS' not in c.capabilities, 'imap: STARTTLS works, then is '
          'no longer advertised')
    typ, _ = c.authenticate('PLAIN', lambda _: b'\0alice\0secret')
    check(typ == 'OK', 'imap: AUTHENTICATE PLAIN over STARTTLS')
    c.logout()
    logins = srv.commands_named('LOGIN')
    check(logins[-1].args == ['alice', 'secret'] and
          'secret' not in repr(logins[-1]) and
          srv.commands_named('AUTHENTICATE')[0].tls,
          'imap: commands recorded raw (repr redacted), with their TLS state')
    # Implicit TLS.
    isrv = started(fs.FakeIMAP({}, tls='implicit', cert=crt, key=key))
    c = imaplib.IMAP4_SSL('localhost', isrv.port, ssl_context=ctx,
                          timeout=10)
    check('STARTTLS' not in c.capabilities and
          c.login('alice', 'secret')[0] == 'OK',
          'imap: implicit TLS, certificate verified by the client')
    c.logout()
    check(not srv.errors and not isrv.errors, 'imap: no server-side errors',
          srv.errors + isrv.errors)


def test_imap_multiappend():
    srv = started(fs.FakeIMAP({'uidvalidity': 7}))
    r = Raw(srv.port)
    r.login()
    one, two = b'Subject: 1\r\n\r\none\r\n', b'Subject: 2\r\n\r\ntwo\r\n'
    # First message LITERAL+, second synchronising: the server must say '+'.
    r.send(b'A APPEND INBOX (\\Seen) {%d+}\r\n' % len(one) + one +
           b' (kw) "01-Jan-2020 00:00:00 +0000" {%d}\r\n' % len(two))
    plus = r.line()
    check(plus.startswith(b'+ '), 'multiappend: "+" for the synchronising '
          'literal only')
    r.send(two + b'\r\n')
    out = r.until('A')
    check(out[-1] == b'A OK [APPENDUID 7 1:2] Append completed\r\n',
          'multiappend: one APPENDUID for both', out)
    ms = srv.messages('INBOX')
    check([m.data for m in ms] == [one, two] and ms[0].flags == ['\\Seen']
          and ms[1].flags == ['kw'] and ms[1].date == (1577836800, 0),
          'multiappend: both stored with their flags and dates')
    # All or nothing: one bad message refuses the batch.
    srv.add_rule(fs.cyrus_invalid_header(contains=b'Bad:'))
    bad = b'Subject: 3\r\nBad: yes\r\n\r\nx\r\n'
    r.send(b'B APPEND INBOX {%d+}\r\n' % len(one) + one +
           b' {%d+}\r\n' % len(bad) + bad + b'\r\n')
    out = r.until('B')
    check(out[-1] == b'B NO Message contains invalid header\r\n' and
          len(srv.messages('INBOX')) == 2,
          'multiappend: a refused message refuses the whole command', out)
    check(len(srv.commands_named('APPEND')[-1].messages) == 2,
          'multiappend: the record holds both messages')
    # Pipelined LITERAL+ APPENDs in one write: answered in order.
    r.send(b'P1 APPEND INBOX {%d+}\r\n' % len(one) + one + b'\r\n' +
           b'P2 APPEND INBOX {%d+}\r\n' % len(two) + two + b'\r\n')
    out = [ln for ln in r.until('P2') if ln.startswith(b'P')]
    check(out == [b'P1 OK [APPENDUID 7 3] Append completed\r\n',
                  b'P2 OK [APPENDUID 7 4] Append completed\r\n'],
          'imap: pipelined APPENDs answered in order', out)
    r.close()


def imap(srv, select=None):
    c = imaplib.IMAP4('127.0.0.1', srv.port, timeout=10)
    c.login('alice', 'secret')
    if select:
        c.select(select)
    return c


def msg(i, size=0):
    return (b'Subject: m%d\r\nMessage-ID: <%d@t>\r\n\r\n' % (i, i) +
            b'y' * size + b'\r\n')


def test_imap_refusals():
    # Every 2nd APPEND refused with Cyrus's text.
    srv = started(fs.FakeIMAP({'rules': [fs.cyrus_invalid_header(every=2)]}))
    c = imap(srv)
    res = [c.append('INBOX', None, None, msg(i)) for i in range(4)]
    check([r[0] for r in res] == ['OK', 'NO', 'OK', 'NO'] and
          res[1][1] == [b'Message contains invalid header'] and
          len(srv.messages('INBOX')) == 2,
          'fault: every 2nd APPEND gets "NO Message contains invalid header"')
    c.logout()
    # A predicate: messages over 1000 bytes, Office 365's TOOBIG.
    srv = started(fs.FakeIMAP({'rules': [fs.o365_toobig(
        match=lambda cmd: any(len(m.data) > 1000 for m in cmd.messages))]}))
    c = imap(srv)
    small = c.append('INBOX', None, None, msg(1, 10))
    big = c.append('INBOX', None, None, msg(2, 2000))
    check(small[0] == 'OK' and big == ('NO', [
        b'[TOOBIG] Maximum size of appendable message has been exceeded.']),
        'fault: APPEND matching a predicate gets NO [TOOBIG]', big)
    c.logout()
    # Quota, size limit, keyword limit, dates before 1970, \Recent.
    srv = started(fs.FakeIMAP({'quota_bytes': 3000, 'keyword_limit': 3,
                               'refuse_pre1970': True,
                               'max_message_size': 2500}))
    c = imap(srv, 'INBOX')
    check(c.append('INBOX', None, None, msg(1, 2600))[1][0].startswith(
        b'[TOOBIG]'), 'fault: max_message_size gives NO [TOOBIG]')
    c.append('INBOX', None, None, msg(1, 2000))
    over = c.append('INBOX', None, None, msg(2, 1000))
    check(over[0] == 'NO' and over[1][0].startswith(b'[OVERQUOTA]'),
          'fault: NO [OVERQUOTA] past the quota', over)
    ok3 = c.append('INBOX', '(a b c)', None, msg(3))
    c.noop()
    refused = c.uid('STORE', '1', '+FLAGS', '(d)')
    four = c.append('INBOX', '(e)', None, msg(4))
    check(ok3[0] == 'OK' and refused[0] == 'NO' and four[0] == 'NO' and
          four[1] == [b'Too many user flags in mailbox'],
          'fault: keyword limit 3 refuses the 4th keyword (STORE and APPEND)')
    old = c.append('INBOX', None, '"31-Dec-1969 23:59:59 +0000"', msg(5))
    new = c.append('INBOX', None, '"01-Jan-1970 00:00:00 +0000"', msg(6))
    check(old[0] == 'NO' and new[0] == 'OK',
          'fault: INTERNALDATE before 1970 refused, 1970 accepted')
    try:
        c.append('INBOX', '(\\Recent)', None, msg(7))
        recent = False
    except imaplib.IMAP4.error as e:
        recent = 'Recent' in str(e)
    check(recent, 'imap: \\Recent in APPEND gets BAD')
    c.logout()
    # NO and BAD on chosen commands.
    srv = started(fs.FakeIMAP({'rules': [
        fs.refuse('LIST', 'List refused'),
        fs.refuse('SELECT', 'Bad select', kind='bad', nth=1)]}))
    c = imap(srv)
    lst = c.list()
    try:
        c.select('INBOX')
        sel = None
    except imaplib.IMAP4.error as e:
        sel = str(e)
    check(lst == ('NO', [b'List refused']) and 'Bad select' in sel and
          c.select('INBOX')[0] == 'OK',
          'fault: NO on LIST, BAD on the first SELECT only')
    c.logout()
    # A slow answer with extra untagged data; rules after a terminal
    # action do not count the command.
    late = fs.Rule(command='NOOP', action='no', text='late')
    srv = started(fs.FakeIMAP({'rules': [
        {'command': 'NOOP', 'action': 'delay', 'seconds': 0.3},
        {'command': 'NOOP', 'action': 'untagged',
         'lines': ['* OK [ALERT] hello']},
        {'command': 'NOOP', 'action': 'bad', 'text': 'first', 'nth': 1},
        late]}))
    c = imap(srv)
    t = time.monotonic()
    try:
        c.noop()
        first = None
    except imaplib.IMAP4.error as e:
        first = str(e)
    slow = time.monotonic() - t
    second = c.noop()
    check(slow >= 0.3 and 'first' in first and second == ('NO', [b'late'])
          and c.untagged_responses.get('ALERT') and
          late.count == 1,
          'fault: delay, untagged lines, and rule order (%.2f s)' % slow)
    c.logout()


def test_imap_throttling():
    srv = started(fs.FakeIMAP({'rules': [
        fs.o365_throttled(ms=1500, command='APPEND', nth=2),
        fs.throttled_ok(command='SELECT')]}))
    c = imap(srv)
    typ, data = c.select('INBOX')
    check(typ == 'OK' and c.untagged_responses.get('THROTTLED') == [b''],
          'fault: OK [THROTTLED] on a successful SELECT')
    first = c.append('INBOX', None, None, msg(1))
    second = c.append('INBOX', None, None, msg(2))
    check(first[0] == 'OK' and second == ('NO', [
        b'Request is throttled. Suggested Backoff Time: 1500 milliseconds']),
        'fault: Office 365 throttling NO on the 2nd APPEND', second)
    try:
        c.noop()
        died = False
    except (imaplib.IMAP4.abort, OSError):
        died = True
    check(died and c.untagged_responses.get('BYE'),
          'fault: ... followed by * BYE and the end of the connection')
    check(len(srv.messages('INBOX')) == 1, 'fault: the throttled message '
          'was not stored')


def test_imap_namespaces():
    srv = started(fs.FakeIMAP({'namespace': ('INBOX.', '.'),
                               'refuse_toplevel': True,
                               'create_exists_code': False}))
    c = imap(srv)
    check(c.namespace()[1] == [b'(("INBOX." ".")) NIL NIL'],
          'fault: NAMESPACE with the prefix INBOX. and separator .')
    top = c.create('Top')
    sub = c.create('INBOX.Sub')
    again = c.create('INBOX.Sub')
    check(top == ('NO', [b'Permission denied']) and sub[0] == 'OK' and
          again == ('NO', [b'Mailbox already exists']),
          'fault: top-level CREATE refused; existing folder: plain NO '
          'without [ALREADYEXISTS]', (top, sub, again))
    check(c.list()[1] == [b'(\\HasChildren) "." "INBOX"',
                          b'(\\HasNoChildren) "." "INBOX.Sub"'],
          'imap: LIST under the INBOX. prefix')
    c.logout()
    srv = started(fs.FakeIMAP({}))
    c = imap(srv)
    c.create('A')
    check(c.create('A') == ('NO', [b'[ALREADYEXISTS] Mailbox already '
                                   b'exists']),
          'imap: by default an existing folder gets NO [ALREADYEXISTS]')
    c.logout()


def test_imap_lies():
    inbox = [msg(i) for i in range(1, 4)]
    srv = started(fs.FakeIMAP({'folders': {'INBOX': inbox}, 'rules': [
        {'command': 'NOOP', 'action': 'shrink_exists', 'by': 1, 'nth': 1},
        {'command': 'SELECT', 'action': 'rewind_uidnext', 'by': 2,
         'nth': 3},
        {'command': 'UID FETCH', 'action': 'fetch_extra', 'duplicate': True,
         'unrequested': [1, 99], 'nth': 1}]}))
    c = imap(srv, 'INBOX')
    c.noop()
    check(c.untagged_responses.get('EXISTS') == [b'3', b'2'] and
          'EXPUNGE' not in c.untagged_responses,
          'fault: EXISTS shrinks from 3 to 2 without EXPUNGE')
    typ, data = c.uid('FETCH', '2', '(FLAGS)')
    uids = [int(x.split(b'UID ')[1].split()[0]) for x in data]
    check(uids == [2, 2, 1, 99],
          'fault: FETCH answers duplicated and unrequested UIDs %s' % uids)
    c.logout()
    c = imap(srv, 'INBOX')
    v1 = c.untagged_responses['UIDVALIDITY']
    n1 = c.untagged_responses['UIDNEXT']
    c.logout()
    c = imap(srv, 'INBOX')
    check(c.untagged_responses['UIDNEXT'] == [b'2'] and n1 == [b'4'] and
          c.untagged_responses['UIDVALIDITY'] == v1,
          'fault: UIDNEXT goes backwards (4 -> 2) between sessions, '
          'UIDVALIDITY unchanged')
    c.logout()


def test_imap_broken_connections():
    body = b'Subject: big\r\n\r\n' + b'z' * 1000 + b'\r\n'
    srv = started(fs.FakeIMAP({'folders': {'INBOX': [body]}, 'rules': [
        {'command': 'UID FETCH', 'action': 'literal_eof',
         'announce': 4000000000, 'send': 100, 'conn': 1},
        {'command': 'UID FETCH', 'action': 'literal_eof', 'conn': 2},
        {'command': 'APPEND', 'phase': 'literal', 'action': 'bye',
         'text': 'Gone', 'conn': 3},
        {'command': 'APPEND', 'phase': 'literal', 'action': 'bye',
         'after_bytes': 5, 'conn': 4},
        {'command': 'APPEND', 'phase': 'literal', 'action': 'no',
         'text': 'Not now', 'conn': 5},
        {'command': 'NOOP', 'action': 'silent', 'conn': 6},
        {'command': 'SELECT', 'action': 'eof', 'conn': 7}]}))
    fetch = b'F UID FETCH 1 (BODY.PEEK[])\r\n'
    r = Raw(srv.port)
    r.login()
    r.send(b'S SELECT INBOX\r\n')
    r.until('S')
    r.send(fetch)
    line = r.line()
    rest = r.rest()
    check(line == b'* 1 FETCH (UID 1 BODY[] {4000000000}\r\n' and
          rest == body[:100], 'fault: {4000000000} announced, 100 bytes, EOF')
    r = Raw(srv.port)
    r.login()
    r.send(b'S SELECT INBOX\r\n')
    r.until('S')
    r.send(fetch)
    line = r.line()
    rest = r.rest()
    check(line == b'* 1 FETCH (UID 1 BODY[] {%d}\r\n' % len(body) and
          rest == body[:len(body) // 2],
          'fault: EOF in the middle of a literal (%d of %d bytes)' % (
              len(rest), len(body)))
    # BYE instead of the continuation, and BYE 5 bytes into the literal.
    r = Raw(srv.port)
    r.login()
    r.send(b'A APPEND INBOX {10}\r\n')
    check(r.line() == b'* BYE Gone\r\n' and r.rest() == b'',
          'fault: * BYE instead of "+" for an APPEND literal, then EOF')
    r = Raw(srv.port)
    r.login()
    r.send(b'A APPEND INBOX {10}\r\n')
    plus = r.line()
    r.send(b'0123456789\r\n')
    check(plus.startswith(b'+') and r.line().startswith(b'* BYE') and
          r.rest() == b'' and srv.commands_named('APPEND')[-1].aborted and
          not srv.messages('INBOX')[1:],
          'fault: * BYE in the middle of an APPEND literal, nothing stored')
    # A NO instead of '+': the client must not send the literal.
    r = Raw(srv.port)
    r.login()
    r.send(b'A APPEND INBOX {10}\r\n')
    no = r.line()
    r.send(b'N NOOP\r\n')
    check(no == b'A NO Not now\r\n' and r.until('N')[-1].startswith(b'N OK'),
          'fault: NO instead of "+"; the session goes on')
    r.close()
    # A command that is never answered; a connection dropped at SELECT.
    r = Raw(srv.port)
    r.login()
    r.send(b'N NOOP\r\n')
    check(silent_for(r.s, 0.5), 'fault: NOOP left unanswered (silent)')
    r.close()
    c = imaplib.IMAP4('127.0.0.1', srv.port, timeout=10)
    c.login('alice', 'secret')
    try:
        c.select('INBOX')
        dropped = False
    except (imaplib.IMAP4.abort, OSError):
        dropped = True
    check(dropped, 'fault: EOF instead of an answer to SELECT')
    check(not srv.errors, 'fault: no server-side errors', srv.errors)


def test_imap_greetings_and_tls():
    ca = h.default_ca()
    crt, key = ca.cert('good')
    # A server that accepts and never says a word.
    srv = started(fs.FakeIMAP({'silent': True}))
    r = Raw(srv.port)
    check(silent_for(r.s, 0.5), 'fault: silent server: no greeting')
    r.close()
    # PREAUTH on a STARTTLS listener.
    srv = started(fs.FakeIMAP({'greeting': 'PREAUTH'}, tls='starttls',
                              cert=crt, key=key))
    r = Raw(srv.port)
    g = r.line()
    r.send(b'T STARTTLS\r\n')
    check(g.startswith(b'* PREAUTH') and b'STARTTLS' not in g and
          r.until('T')[-1].startswith(b'T BAD'),
          'fault: PREAUTH greeting on a STARTTLS listener; STARTTLS then '
          'refused', g)
    r.close()
    # Data injected right after the STARTTLS OK, in clear.
    srv = started(fs.FakeIMAP(
        {'starttls_inject': b'* OK [ALERT] injected\r\n'},
        tls='starttls', cert=crt, key=key))
    r = Raw(srv.port)
    r.line()
    r.send(b'T STARTTLS\r\n')
    ok = r.line()
    injected = r.line()
    check(ok.startswith(b'T OK') and injected == b'* OK [ALERT] injected\r\n',
          'fault: plaintext injected after the STARTTLS OK')
    r.close()
    # STARTTLS not advertised (but still possible).
    srv = started(fs.FakeIMAP({'advertise_starttls': False}, tls='starttls',
                              cert=crt, key=key))
    c = imaplib.IMAP4('127.0.0.1', srv.port, timeout=10)
    check('STARTTLS' not in c.capabilities, 'fault: STARTTLS not advertised')
    c.logout()
    srv = started(fs.FakeIMAP({'logindisabled': True}, tls='starttls',
                              cert=crt, key=key))
    c = imaplib.IMAP4('localhost', srv.port, timeout=10)
    caps = c.capabilities
    c.starttls(ssl.create_default_context(cafile=ca.ca_file))
    check('LOGINDISABLED' in caps and 'LOGINDISABLED' not in c.capabilities
          and c.login('alice', 'secret')[0] == 'OK',
          'imap: LOGINDISABLED until STARTTLS')
    c.logout()
    # IDLE sees a message delivered meanwhile.
    srv = started(fs.FakeIMAP({}))
    r = Raw(srv.port)
    r.login()
    r.send(b'S SELECT INBOX\r\n')
    r.until('S')
    r.send(b'I IDLE\r\n')
    plus = r.line()
    srv.add_message('INBOX', msg(1))
    exists = r.line()
    r.send(b'DONE\r\n')
    check(plus.startswith(b'+') and exists == b'* 1 EXISTS\r\n' and
          r.until('I')[-1].startswith(b'I OK'),
          'imap: IDLE reports a new message, DONE ends it')
    r.close()


# --------------------------------------------------------------------------
# fakeserver: POP3

def test_pop3():
    ca = h.default_ca()
    crt, key = ca.cert('good')
    msgs = [MSG_A, {'data': MSG_B, 'uidl': '1234.2'},
            b'Subject: lf\n\nbare LF\n']
    srv = started(fs.FakePOP3({'messages': msgs}, tls='starttls', cert=crt,
                              key=key))
    ctx = ssl.create_default_context(cafile=ca.ca_file)
    p = poplib.POP3('localhost', srv.port, timeout=10)
    caps = p.capa()
    check(all(k in caps for k in ('UIDL', 'USER', 'TOP', 'STLS')),
          'pop3: CAPA', caps)
    p.stls(ctx)
    p.user('alice')
    p.pass_('secret')
    wire = [MSG_A, MSG_B, b'Subject: lf\r\n\r\nbare LF\r\n']
    check(p.stat() == (3, sum(map(len, wire))), 'pop3: STAT')
    check(p.list()[1] == [b'%d %d' % (i, len(w))
                          for i, w in enumerate(wire, 1)], 'pop3: LIST')
    check(p.uidl()[1] == [b'1 msg-1', b'2 1234.2', b'3 msg-3'] and
          p.uidl(2).endswith(b'2 1234.2'), 'pop3: UIDL')
    got = p.retr(1)[1]
    check(b'\r\n'.join(got) + b'\r\n' == MSG_A,
          'pop3: RETR with a dot-stuffed line')
    top = p.top(1, 1)[1]
    check(top == [b'From: a@example.org', b'Subject: first',
                  b'Message-ID: <a@test>', b'', b'hello'], 'pop3: TOP', top)
    p.dele(1)
    p.rset()
    p.dele(2)
    try:
        p.retr(2)
        deleted = False
    except poplib.error_proto:
        deleted = True
    check(deleted, 'pop3: a deleted message cannot be retrieved')
    check(len(srv.maildrop('alice')) == 3,
          'pop3: DELE is not committed before QUIT')
    p.quit()
    drop = srv.maildrop('alice')
    check([m.uidl for m in drop] == ['msg-1', 'msg-3'],
          'pop3: QUIT commits DELE (after RSET of the first)')
    # DELE without QUIT commits nothing.
    p = poplib.POP3('localhost', srv.port, timeout=10)
    p.stls(ctx)
    p.user('alice')
    p.pass_('secret')
    p.dele(1)
    p.close()
    check(srv.wait(lambda s: len(s.events_named('disconnect')) == 2) and
          len(srv.maildrop('alice')) == 2, 'pop3: EOF without QUIT deletes '
          'nothing')
    check(srv.commands_named('PASS')[0].tls, 'pop3: PASS recorded, sent '
          'under TLS')

    # No UIDL; -ERR on a chosen command; EOF in the middle of RETR.
    srv = started(fs.FakePOP3({'messages': [MSG_A], 'uidl': False, 'rules': [
        fs.refuse('STAT', 'Not today'),
        {'command': 'RETR', 'action': 'eof_mid', 'after_bytes': 30}]}))
    r = Raw(srv.port)
    r.line()
    r.send(b'AUTH PLAIN\r\n')
    cont = r.line()
    r.send(base64.b64encode(b'\0alice\0secret') + b'\r\n')
    check(cont.startswith(b'+') and r.line().startswith(b'+OK'),
          'pop3: AUTH PLAIN')
    r.send(b'NOOP\r\nQUIT\r\n')
    check(r.line() == b'+OK\r\n' and r.line().startswith(b'+OK'),
          'pop3: NOOP and QUIT')
    r.close()
    p = poplib.POP3('127.0.0.1', srv.port, timeout=10)
    check('UIDL' not in p.capa(), 'pop3: a server without UIDL')
    p.user('alice')
    p.pass_('secret')
    errs = []
    for fn in (p.uidl, p.stat):
        try:
            fn()
            errs.append(None)
        except poplib.error_proto as e:
            errs.append(e.args[0])
    check(errs[0] is not None and errs[1] == b'-ERR Not today',
          'pop3: UIDL refused; -ERR on STAT', errs)
    try:
        p.retr(1)
        eof = False
    except (poplib.error_proto, OSError):
        eof = True
    check(eof, 'pop3: EOF in the middle of RETR')
    p.close()
    check(not srv.errors, 'pop3: no server-side errors', srv.errors)


# --------------------------------------------------------------------------
# The command-line forms

def run_cli(args, client):
    proc = subprocess.Popen([sys.executable] + args, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        first = proc.stdout.readline().decode()
        # The first address printed is the one listening.
        port = int(re.search(r'127\.0\.0\.1:(\d+)', first).group(1))
        client(port)
    finally:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            h.kill_group(proc)
            out, err = proc.communicate()
    return first, proc.returncode, out.decode(), err.decode()


def test_clis():
    def imap_client(port):
        c = imaplib.IMAP4('127.0.0.1', port, timeout=10)
        c.login('alice', 'secret')
        c.logout()
    first, rc, out, err = run_cli(
        [os.path.join(TOOLS, 'fakeserver.py'), '--duration', '30'],
        imap_client)
    check(rc == 0 and 'conn 1: LOGIN' in out and 'secret' not in out,
          'cli: fakeserver.py serves, stops on SIGTERM, prints no password',
          first + out + err)
    srv = started(fs.FakeIMAP({}))

    def proxy_client(port):
        imap_client(port)
    first, rc, out, err = run_cli(
        [os.path.join(TOOLS, 'faultproxy.py'), '--upstream',
         str(srv.port), '--delay-ms', '1', '--duration', '30'], proxy_client)
    check(rc == 0 and 'conn 1:' in out and "'LOGIN': 1" in out and
          'secret' not in out,
          'cli: faultproxy.py proxies, stops on SIGTERM, prints counts only',
          first + out + err)


def run():
    t0 = time.monotonic()
    try:
        for fn in (test_proxy_cut_offsets, test_proxy_cut_mid_literal,
                   test_proxy_stall, test_proxy_latency,
                   test_proxy_counting_and_tls, test_proxy_many_and_stop,
                   test_imap_basics, test_imap_multiappend,
                   test_imap_refusals, test_imap_throttling,
                   test_imap_namespaces, test_imap_lies,
                   test_imap_broken_connections,
                   test_imap_greetings_and_tls, test_pop3, test_clis):
            h.log('--- %s' % fn.__name__)
            fn()
    finally:
        stop_all()
    threads = [t for t in threading.enumerate()
               if t.name.startswith(('faultproxy:', 'imap:', 'pop3:', 'imap#',
                                        'pop3#'))]
    check(not threads, 'every tool thread stopped', threads)
    h.log('(%.1f s)' % (time.monotonic() - t0))


if __name__ == '__main__':
    h.main(run)
