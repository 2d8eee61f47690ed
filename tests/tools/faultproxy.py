#!/usr/bin/env python3
"""faultproxy — a TCP proxy that breaks connections on purpose, for tests.

It sits between a client (postino) and a server (Dovecot, the fake server)
on the loopback interface and forwards raw bytes, so TLS passes through end
to end.  On the way it can:

  cut     close the connection once exactly N bytes of one direction have
          been delivered (counted from the start of that connection), or
          right after a byte pattern (plus K bytes), on every connection or
          only on chosen ones (e.g. only connection #3);
  stall   stop forwarding one direction without closing anything, at an
          offset or after a pattern, until release() is called;
  delay   add one-way latency to each direction (a delay line: every chunk
          is stamped when it arrives and delivered when its time comes, so
          throughput is not limited to one chunk per delay), and
          optionally a bandwidth limit;
  count   bytes, lines and IMAP/POP3 commands per direction and connection,
          and keep a bounded copy of both byte streams, so a test can
          assert what a client sent (or did not send, e.g. no "LOGIN" in
          the clear: for TLS the copy is ciphertext, which is the point).

Rules can be added, removed and changed while connections are open; all
public methods are thread-safe.  One selector thread serves every
connection.  Only loopback addresses are accepted, for both sides.

Module use:

    with FaultProxy('127.0.0.1', server_port, delay=0.010) as p:
        p.cut_at(12345, direction='s2c', conn=3)
        ... connect the client to p.port ...
        assert b'LOGIN' not in p.client_bytes()

CLI use (runs until Ctrl-C, SIGTERM or --duration; prints statistics,
never the captured bytes):

    faultproxy.py --upstream 127.0.0.1:143 --listen 10143 --delay-ms 10 \\
        --cut s2c:12345:3 --stall-after c2s:APPEND
"""

import argparse
import atexit
import collections
import errno
import ipaddress
import itertools
import re
import selectors
import signal
import socket
import struct
import sys
import threading
import time

C2S = 'c2s'     # client -> server
S2C = 's2c'     # server -> client
_DIRECTIONS = {'c2s': C2S, 'up': C2S, 'client': C2S,
               's2c': S2C, 'down': S2C, 'server': S2C}

_CUT = object()         # queue marker: cut the connection here

# Safety nets: every loop in this module is bounded by one of these.
DEFAULT_LIFETIME = 3600.0   # a forgotten proxy stops by itself
CONNECT_TIMEOUT = 10.0      # upstream connect
CUT_LINGER = 2.0            # after a 'close' cut: wait for both EOFs
READ_SIZE = 65536


def direction_name(d):
    try:
        return _DIRECTIONS[d.lower()]
    except (KeyError, AttributeError):
        raise ValueError('direction must be c2s or s2c, not %r' % (d,))


def loopback_addrinfo(host, port):
    """getaddrinfo for HOST:PORT, refusing anything that is not loopback:
    these tools must never touch another machine."""
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    good = [ai for ai in infos
            if ipaddress.ip_address(ai[4][0].split('%')[0]).is_loopback]
    if not good:
        raise ValueError('%s is not a loopback address' % host)
    return good


# --------------------------------------------------------------------------
# Rules

class Rule:
    """One fault: ACTION ('cut' or 'stall') on DIRECTION when the stream
    reaches byte offset AT, or PLUS bytes after the end of the NTH
    occurrence of the byte string AFTER.

    conn   None: every connection; an int: only that connection (1 = the
           first one accepted); a set/list of ints; or a callable(n)->bool.
    once   fire on one connection at most (the first that gets there).
    how    for cuts: 'close' (FIN to both peers after the bytes before the
           offset have been delivered: the receiver sees exactly AT bytes
           then EOF) or 'reset' (RST at once; bytes still in flight may be
           lost).

    An offset counts the bytes of that direction since the connection
    opened.  A rule fires when the stream crosses its offset; one added
    after its offset has passed on a connection never fires there.  Each
    rule fires at most once per connection.  .fired lists the connection
    numbers where it fired.
    """

    _ids = itertools.count(1)

    def __init__(self, action, direction, at=None, after=None, plus=0, nth=1,
                 conn=None, once=False, how='close'):
        if action not in ('cut', 'stall'):
            raise ValueError('action must be cut or stall')
        if (at is None) == (after is None):
            raise ValueError('give exactly one of at= and after=')
        if how not in ('close', 'reset'):
            raise ValueError('how must be close or reset')
        if isinstance(after, str):
            after = after.encode('latin-1')
        if after is not None and not after:
            raise ValueError('after= must not be empty')
        if at is not None and at < 0:
            raise ValueError('at= must be >= 0')
        self.id = next(Rule._ids)
        self.action = action
        self.direction = direction_name(direction)
        self.at = at
        self.after = bytes(after) if after is not None else None
        self.plus = int(plus)
        self.nth = int(nth)
        self.conn = conn
        self.once = once
        self.how = how
        self.fired = []

    def applies_to(self, n):
        if self.once and self.fired:
            return False
        if self.conn is None:
            return True
        if callable(self.conn):
            return bool(self.conn(n))
        if isinstance(self.conn, int):
            return n == self.conn
        return n in self.conn

    def __repr__(self):
        where = ('at=%d' % self.at if self.at is not None else
                 'after=%r+%d#%d' % (self.after, self.plus, self.nth))
        return '<Rule %d %s %s %s conn=%r>' % (self.id, self.action,
                                               self.direction, where,
                                               self.conn)


def _advance(rule, st, off, data):
    """Scan DATA (which starts at stream offset OFF) for RULE.

    ST is the rule's per-connection state {'tail', 'count', 'target'}; a
    new state is returned, not changed in place, so that a dry run over a
    whole chunk can be followed by a commit over the part that was really
    forwarded.  Returns (position in DATA where the rule fires or None,
    new state)."""
    target = st['target']
    tail, count = st['tail'], st['count']
    if target is None and rule.at is not None:
        target = rule.at
    if target is None:
        pat = rule.after
        buf = tail + bytes(data)
        base = off - len(tail)          # stream offset of buf[0]
        i = 0
        while True:
            j = buf.find(pat, i)
            if j < 0:
                break
            count += 1
            i = j + len(pat)
            if count == rule.nth:
                target = base + i + rule.plus
                break
        # Keep just enough to find a match that spans the next chunk.
        tail = buf[-(len(pat) - 1):] if len(pat) > 1 else b''
    new = {'tail': tail, 'count': count, 'target': target}
    if target is not None and off <= target <= off + len(data):
        return target - off, new
    return None, new


# --------------------------------------------------------------------------
# Statistics

class DirStats:
    """What one direction of one connection carried (a snapshot copy)."""

    def __init__(self):
        self.read = 0           # bytes read from the sender
        self.sent = 0           # bytes delivered to the receiver's kernel
        self.lines = 0          # protocol lines (literals are not lines)
        self.tagged = 0         # s2c: tagged IMAP responses
        self.commands = collections.Counter()  # c2s: IMAP/POP3 verbs
        self.captured = bytearray()            # the first capture_limit bytes
        self.cut_at = None      # offset where a cut rule fired
        self.stalled_at = None  # offset where a stall began
        self.eof = False        # the sender closed its side

    def copy(self):
        c = DirStats()
        c.__dict__.update(self.__dict__)
        c.commands = collections.Counter(self.commands)
        c.captured = bytes(self.captured)
        return c

    def __repr__(self):
        return ('<read=%d sent=%d lines=%d cmds=%s cut_at=%s stalled_at=%s>'
                % (self.read, self.sent, self.lines, dict(self.commands),
                   self.cut_at, self.stalled_at))


class ConnStats:
    """One proxied connection: number n (1-based), .c2s, .s2c (DirStats),
    .open, .opened_at, .closed_at (time.monotonic()), .error."""

    def __init__(self, n):
        self.n = n
        self.c2s = DirStats()
        self.s2c = DirStats()
        self.open = True
        self.opened_at = time.monotonic()
        self.closed_at = None
        self.error = None

    def copy(self):
        c = ConnStats(self.n)
        c.__dict__.update(self.__dict__)
        c.c2s, c.s2c = self.c2s.copy(), self.s2c.copy()
        return c

    def __getitem__(self, direction):
        return getattr(self, direction_name(direction))

    def __repr__(self):
        return '<conn %d %s c2s%r s2c%r>' % (
            self.n, 'open' if self.open else 'closed', self.c2s, self.s2c)


class _LineCounter:
    """Counts protocol lines in one direction, skipping IMAP literals, and
    for client->server the command verbs ('LOGIN', 'UID FETCH', 'RETR').
    Works on any bytes: on ciphertext it just counts nonsense."""

    _LITERAL = re.compile(rb'\{(\d{1,20})\+?\}\r?\n\Z')
    _IMAP_CMD = re.compile(rb'[^\s(){%*"\\\]]+ ([A-Za-z]+)(?: ([A-Za-z]+))?')
    _POP_CMD = re.compile(rb'([A-Za-z]{3,8})(?:[ \r\n]|\Z)')

    def __init__(self, protocol, direction, stats):
        self.protocol = protocol
        self.direction = direction
        self.stats = stats
        self.literal = 0            # literal bytes still to skip
        self.continued = False      # the next line continues a command
        self.line = bytearray()

    def feed(self, data):
        i, n = 0, len(data)
        while i < n:
            if self.literal:
                take = min(self.literal, n - i)
                self.literal -= take
                i += take
                continue
            j = data.find(b'\n', i)
            if j < 0:
                self._add(data[i:])
                return
            self._add(data[i:j + 1])
            i = j + 1
            self._line_done(bytes(self.line))
            self.line = bytearray()

    def _add(self, piece):
        self.line += piece
        if len(self.line) > 8192:
            # Keep the start (the verb) and the end (a literal announcement).
            self.line = self.line[:1024] + self.line[-64:]

    def _line_done(self, line):
        self.stats.lines += 1
        if self.protocol == 'imap':
            if self.direction == C2S and not self.continued:
                m = self._IMAP_CMD.match(line)
                if m:
                    verb = m.group(1).upper().decode()
                    if verb == 'UID' and m.group(2):
                        verb += ' ' + m.group(2).upper().decode()
                    self.stats.commands[verb] += 1
            elif (self.direction == S2C and not self.continued and
                  line[:1] not in (b'*', b'+')):
                self.stats.tagged += 1
            m = self._LITERAL.search(line)
            self.literal = int(m.group(1)) if m else 0
            self.continued = bool(m)
        elif self.protocol == 'pop3' and self.direction == C2S:
            m = self._POP_CMD.match(line)
            if m:
                self.stats.commands[m.group(1).upper().decode()] += 1


# --------------------------------------------------------------------------
# The proxy

class _Dir:
    """Forwarding state of one direction of one connection."""

    def __init__(self, name, stats, protocol):
        self.name = name
        self.src = self.dst = None
        self.queue = collections.deque()   # [due, bytes|_CUT, how]
        self.queued = 0
        self.last_due = 0.0
        self.offset = 0         # bytes that went through the rule engine
        self.held = bytearray()  # read while stalled
        self.stalled = False
        self.eof = False        # the sender closed
        self.shut = False       # that EOF was passed on
        self.cut = False
        self.want_write = False  # the receiver's buffer was full
        self.rule_state = {}    # rule id -> state for _advance()
        self.fired = set()      # ids of the rules that fired here
        self.stats = stats
        self.counter = _LineCounter(protocol, name, stats)


class _Conn:
    def __init__(self, n, client, protocol):
        self.n = n
        self.stats = ConnStats(n)
        self.client = client
        self.upstream = None
        self.connecting = True
        self.connect_deadline = time.monotonic() + CONNECT_TIMEOUT
        self.closing_deadline = None     # set by a 'close' cut
        self.client_eof = self.upstream_eof = False
        self.dirs = {C2S: _Dir(C2S, self.stats.c2s, protocol),
                     S2C: _Dir(S2C, self.stats.s2c, protocol)}
        self.masks = {}


class FaultProxy:
    """A fault-injecting TCP proxy to UPSTREAM_HOST:UPSTREAM_PORT.

    listen_port  0 picks a free port; .port tells which.
    listen_host  '127.0.0.1' (or '::1').
    delay        one-way latency in seconds for both directions (so the
                 round trip gains 2 * delay); delay_c2s / delay_s2c set one.
    rate_c2s, rate_s2c   bandwidth limits in bytes a second (None: none).
    rules        Rule objects to start with.
    protocol     'imap', 'pop3' or None: how commands are counted.
    capture_limit  bytes of each direction of each connection kept.
    max_buffer   bytes a direction may hold before the proxy stops reading
                 its sender (back-pressure, like a full TCP window).
    lifetime     the proxy stops by itself after this many seconds.
    """

    def __init__(self, upstream_host, upstream_port, listen_port=0,
                 listen_host='127.0.0.1', delay=0.0, delay_c2s=None,
                 delay_s2c=None, rate_c2s=None, rate_s2c=None, rules=(),
                 protocol='imap', capture_limit=1 << 20,
                 max_buffer=8 << 20, lifetime=DEFAULT_LIFETIME):
        self.upstream = loopback_addrinfo(upstream_host, upstream_port)[0]
        self.protocol = protocol
        self.capture_limit = capture_limit
        self.max_buffer = max_buffer
        self.lifetime = lifetime
        self._delay = {C2S: delay if delay_c2s is None else delay_c2s,
                       S2C: delay if delay_s2c is None else delay_s2c}
        self._rate = {C2S: rate_c2s, S2C: rate_s2c}
        self._rules = list(rules)
        self._lock = threading.RLock()
        self._conns = {}            # n -> _Conn (open ones)
        self._stats = []            # every ConnStats, in order
        self._ops = collections.deque()   # callables for the loop thread
        self._stop = threading.Event()
        self._thread = None
        fam, typ, proto, _, addr = loopback_addrinfo(listen_host,
                                                     listen_port)[0]
        self._listener = socket.socket(fam, typ, proto)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(addr)
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.host = listen_host
        self.port = self._listener.getsockname()[1]
        self._waker_r, self._waker_w = socket.socketpair()
        self._waker_r.setblocking(False)
        self._waker_w.setblocking(False)
        self._sel = selectors.DefaultSelector()

    # ---- life cycle

    def start(self):
        if self._thread is None:
            self._sel.register(self._listener, selectors.EVENT_READ, 'accept')
            self._sel.register(self._waker_r, selectors.EVENT_READ, 'wake')
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name='faultproxy:%d' % self.port)
            _live.add(self)
            self._thread.start()
        return self

    def stop(self, timeout=5.0):
        """Close every connection and the listener; wait for the thread."""
        self._stop.set()
        self._wake()
        if self._thread is not None and \
                self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            self._close_all()
        _live.discard(self)

    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return '<FaultProxy %d -> %s>' % (self.port, self.upstream[4][1])

    # ---- rules and knobs (any thread)

    def add_rule(self, rule=None, **kw):
        """Add RULE (or Rule(**kw)); applies at once to open connections
        too.  Returns the rule."""
        rule = rule or Rule(**kw)
        with self._lock:
            self._rules.append(rule)
        self._wake()
        return rule

    def cut_at(self, at, direction=S2C, conn=None, once=False, how='close'):
        return self.add_rule(action='cut', direction=direction, at=at,
                             conn=conn, once=once, how=how)

    def cut_after(self, pattern, direction=S2C, plus=0, nth=1, conn=None,
                  once=False, how='close'):
        return self.add_rule(action='cut', direction=direction,
                             after=pattern, plus=plus, nth=nth, conn=conn,
                             once=once, how=how)

    def stall_at(self, at, direction=S2C, conn=None, once=False):
        return self.add_rule(action='stall', direction=direction, at=at,
                             conn=conn, once=once)

    def stall_after(self, pattern, direction=S2C, plus=0, nth=1, conn=None,
                    once=False):
        return self.add_rule(action='stall', direction=direction,
                             after=pattern, plus=plus, nth=nth, conn=conn,
                             once=once)

    def remove_rule(self, rule):
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    def clear_rules(self):
        with self._lock:
            self._rules.clear()

    def rules(self):
        with self._lock:
            return list(self._rules)

    def set_delay(self, delay=None, c2s=None, s2c=None):
        """Change the one-way latency (seconds) for data read from now on;
        data already queued keeps its time, and order is always kept."""
        with self._lock:
            if delay is not None:
                self._delay[C2S] = self._delay[S2C] = delay
            if c2s is not None:
                self._delay[C2S] = c2s
            if s2c is not None:
                self._delay[S2C] = s2c
        self._wake()

    def set_rate(self, c2s=None, s2c=None):
        """Bandwidth limits in bytes a second (0 or None: unlimited)."""
        with self._lock:
            self._rate[C2S] = c2s or None
            self._rate[S2C] = s2c or None

    def stall(self, conn=None, direction='both'):
        """Stall now (connection CONN or all open ones)."""
        self._op(lambda: self._each(conn, direction, self._stall_now))

    def release(self, conn=None, direction='both'):
        """End stalls: what was held is forwarded (through the rules)."""
        self._op(lambda: self._each(conn, direction, self._release_now))

    def cut(self, conn=None, how='close'):
        """Cut now (connection CONN or all open ones)."""
        def op():
            for c in self._select_conns(conn):
                self._do_cut(c, how)
        self._op(op)

    # ---- statistics (any thread)

    def connections(self):
        """Snapshot copies of every connection's ConnStats, oldest first."""
        with self._lock:
            return [s.copy() for s in self._stats]

    def conn(self, n):
        with self._lock:
            return self._stats[n - 1].copy()

    @property
    def accepted(self):
        with self._lock:
            return len(self._stats)

    def open_connections(self):
        with self._lock:
            return len(self._conns)

    def commands(self, conn=None):
        """Counter of client command verbs (all connections or one)."""
        total = collections.Counter()
        for s in self._pick(conn):
            total.update(s.c2s.commands)
        return total

    def bytes(self, direction, conn=None, kind='sent'):
        """Bytes of DIRECTION 'read' from the sender or 'sent' on."""
        d = direction_name(direction)
        return sum(getattr(s[d], kind) for s in self._pick(conn))

    def client_bytes(self, conn=None):
        """The captured client->server bytes (bounded), concatenated."""
        return b''.join(s.c2s.captured for s in self._pick(conn))

    def server_bytes(self, conn=None):
        return b''.join(s.s2c.captured for s in self._pick(conn))

    def wait(self, predicate, timeout=10.0, interval=0.01):
        """Poll PREDICATE(proxy) until true or TIMEOUT; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            v = predicate(self)
            if v or time.monotonic() >= deadline:
                return v
            time.sleep(interval)

    def _pick(self, conn):
        with self._lock:
            if conn is None:
                return [s.copy() for s in self._stats]
            return [self._stats[conn - 1].copy()]

    # ---- the loop thread

    def _wake(self):
        try:
            self._waker_w.send(b'x')
        except OSError:
            pass        # full (a wake-up is pending anyway) or closed

    def _op(self, fn):
        with self._lock:
            self._ops.append(fn)
        self._wake()

    def _run(self):
        born = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now - born > self.lifetime:
                    break
                with self._lock:
                    timeout = self._next_timeout(now)
                events = self._sel.select(timeout)
                with self._lock:
                    now = time.monotonic()
                    for key, mask in events:
                        self._dispatch(key, mask, now)
                    while self._ops:
                        self._ops.popleft()()
                    self._service(time.monotonic())
        finally:
            self._close_all()

    def _next_timeout(self, now):
        # Wake for the earliest queued chunk that is due, a deadline, or
        # at least every quarter second (the stop flag, the lifetime).
        t = now + 0.25
        for c in self._conns.values():
            for d in c.dirs.values():
                if d.queue and not d.want_write:
                    t = min(t, d.queue[0][0])
            if c.connecting:
                t = min(t, c.connect_deadline)
            if c.closing_deadline is not None:
                t = min(t, c.closing_deadline)
        return max(0.0, t - now)

    def _dispatch(self, key, mask, now):
        what = key.data
        if what == 'accept':
            self._accept(now)
        elif what == 'wake':
            try:
                while self._waker_r.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        else:
            c, role = what
            if c.n not in self._conns:
                return
            if role == 'upstream' and c.connecting:
                self._connected(c)
                return
            if mask & selectors.EVENT_WRITE:
                d = c.dirs[C2S if role == 'upstream' else S2C]
                d.want_write = False
                self._flush(c, d, now)
            if mask & selectors.EVENT_READ and c.n in self._conns:
                self._readable(c, role, now)

    def _accept(self, now):
        for _ in range(64):     # bounded: the rest waits for the next round
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = _Conn(len(self._stats) + 1, sock, self.protocol)
            self._stats.append(c.stats)
            self._conns[c.n] = c
            fam, typ, proto, _, addr = self.upstream
            up = socket.socket(fam, typ, proto)
            up.setblocking(False)
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.upstream = up
            c.dirs[C2S].src, c.dirs[C2S].dst = sock, up
            c.dirs[S2C].src, c.dirs[S2C].dst = up, sock
            err = up.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                self._abort(c, 'upstream connect: %s' % err)
                continue
            self._update(c)

    def _connected(self, c):
        err = c.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._abort(c, 'upstream connect failed: errno %d' % err)
            return
        c.connecting = False
        self._update(c)

    def _readable(self, c, role, now):
        sock = c.client if role == 'client' else c.upstream
        if c.closing_deadline is not None:
            # After a 'close' cut: drain and discard until both peers close.
            try:
                data = sock.recv(READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b''
            if not data:
                if role == 'client':
                    c.client_eof = True
                else:
                    c.upstream_eof = True
                if c.client_eof and c.upstream_eof:
                    self._finish(c)
                else:
                    self._update(c)
            return
        d = c.dirs[C2S if role == 'client' else S2C]
        try:
            data = sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            self._abort(c, '%s read: %s' % (role, e))
            return
        if not data:
            self._eof(c, d)
            return
        d.stats.read += len(data)
        if d.stalled:
            d.held += data
        else:
            self._feed(c, d, data, now)
        if c.n in self._conns:
            self._update(c)

    def _eof(self, c, d):
        d.eof = True
        d.stats.eof = True
        if d.name == C2S and (d.stalled or c.dirs[S2C].stalled):
            # The client gave up during a stall: a real server would not
            # learn of it at once, but holding the server connection open
            # for nothing helps no test.
            self._abort(c, None)
            return
        self._flush(c, d, time.monotonic())
        if c.n in self._conns:
            self._update(c)

    def _feed(self, c, d, data, now):
        """Run DATA through the rules, then queue what may pass."""
        if not data:
            return
        fresh = {'tail': b'', 'count': 0, 'target': None}
        rules = [r for r in self._rules
                 if r.direction == d.name and r.id not in d.fired and
                 r.applies_to(c.n)]
        # Dry run: where does the first rule fire in this chunk?
        first_pos, first_rule = None, None
        for r in rules:
            pos, _ = _advance(r, d.rule_state.get(r.id, fresh), d.offset, data)
            if pos is not None and (first_pos is None or pos < first_pos):
                first_pos, first_rule = pos, r
        passed = data if first_rule is None else data[:first_pos]
        # Commit the rules' state for the bytes that really pass: bytes
        # held by a stall are scanned again when they are released.
        for r in rules:
            _, d.rule_state[r.id] = _advance(r, d.rule_state.get(r.id, fresh),
                                             d.offset, passed)
        self._forward(d, passed, now)
        if first_rule is None:
            return
        d.fired.add(first_rule.id)
        first_rule.fired.append(c.n)
        if first_rule.action == 'cut':
            d.stats.cut_at = d.offset
            d.cut = True
            due = max(now + self._delay[d.name], d.last_due)
            d.queue.append([due, _CUT, first_rule.how])
            return          # the rest is lost with the connection
        d.stats.stalled_at = d.offset
        d.stalled = True
        d.held += data[first_pos:]

    def _forward(self, d, data, now):
        if not data:
            return
        d.offset += len(data)
        room = self.capture_limit - len(d.stats.captured)
        if room > 0:
            d.stats.captured += data[:room]
        d.counter.feed(data)
        # A delay line: each chunk is due DELAY after it arrived, never
        # before the chunk ahead of it (a shortened delay keeps order).
        t = max(now + self._delay[d.name], d.last_due)
        rate = self._rate[d.name]
        if rate:
            step = max(1, min(16384, int(rate) // 50))
            for i in range(0, len(data), step):
                piece = bytes(data[i:i + step])
                t += len(piece) / rate
                d.queue.append([t, piece, None])
        else:
            d.queue.append([t, bytes(data), None])
        d.last_due = t
        d.queued += len(data)

    def _service(self, now):
        for c in list(self._conns.values()):
            if c.connecting and now > c.connect_deadline:
                self._abort(c, 'upstream connect timed out')
                continue
            if c.closing_deadline is not None:
                if now > c.closing_deadline:
                    self._finish(c)
                continue
            for d in c.dirs.values():
                if c.n not in self._conns or c.connecting:
                    break
                due = d.queue and not d.want_write and d.queue[0][0] <= now
                # An EOF that arrived while the upstream was connecting
                # must still be passed on.
                eof = d.eof and not d.shut and not d.queue and not d.stalled
                if due or eof:
                    self._flush(c, d, now)
            if c.n in self._conns:
                self._update(c)

    def _flush(self, c, d, now):
        """Deliver the chunks of D that are due."""
        if c.connecting:
            return
        while d.queue and d.queue[0][0] <= now:
            item = d.queue[0]
            if item[1] is _CUT:
                self._do_cut(c, item[2])
                return
            try:
                n = d.dst.send(item[1])
            except (BlockingIOError, InterruptedError):
                d.want_write = True
                return
            except OSError as e:
                self._abort(c, '%s write: %s' % (d.name, e))
                return
            d.stats.sent += n
            d.queued -= n
            if n < len(item[1]):
                item[1] = item[1][n:]
                d.want_write = True
                return
            d.queue.popleft()
        if not d.queue and d.eof and not d.shut and not d.stalled:
            d.shut = True
            try:
                d.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            if all(x.shut for x in c.dirs.values()):
                self._finish(c)

    def _can_read(self, c, d):
        if c.connecting or d.eof or d.cut:
            return False
        if d.stalled:
            return len(d.held) < self.max_buffer
        return d.queued < self.max_buffer

    def _update(self, c):
        """Make the selector want what each socket is good for now."""
        if c.n not in self._conns:
            return
        for role, sock in (('client', c.client), ('upstream', c.upstream)):
            out = c.dirs[C2S if role == 'client' else S2C]
            into = c.dirs[S2C if role == 'client' else C2S]
            ev = 0
            if c.closing_deadline is not None:
                if not (c.client_eof if role == 'client' else c.upstream_eof):
                    ev = selectors.EVENT_READ
            elif role == 'upstream' and c.connecting:
                ev = selectors.EVENT_WRITE
            else:
                if self._can_read(c, out):
                    ev |= selectors.EVENT_READ
                if into.want_write:
                    ev |= selectors.EVENT_WRITE
            old = c.masks.get(role, 0)
            if ev == old:
                continue
            try:
                if old and ev:
                    self._sel.modify(sock, ev, (c, role))
                elif ev:
                    self._sel.register(sock, ev, (c, role))
                else:
                    self._sel.unregister(sock)
                c.masks[role] = ev
            except (KeyError, ValueError, OSError):
                c.masks[role] = 0

    # ---- immediate actions (loop thread)

    def _select_conns(self, conn):
        if conn is None:
            return list(self._conns.values())
        c = self._conns.get(conn)
        return [c] if c else []

    def _each(self, conn, direction, fn):
        names = (C2S, S2C) if direction == 'both' else \
            (direction_name(direction),)
        for c in self._select_conns(conn):
            for name in names:
                if c.n in self._conns:
                    fn(c, c.dirs[name])
            if c.n in self._conns:
                self._update(c)

    def _stall_now(self, c, d):
        if not d.stalled:
            d.stalled = True
            d.stats.stalled_at = d.offset

    def _release_now(self, c, d):
        if not d.stalled:
            return
        d.stalled = False
        held, d.held = bytes(d.held), bytearray()
        self._feed(c, d, held, time.monotonic())
        if d.eof and not d.stalled:
            self._flush(c, d, time.monotonic())

    def _do_cut(self, c, how):
        if c.n not in self._conns:
            return
        if how == 'reset':
            self._abort(c, None, reset=True)
            return
        # FIN to both peers after what was already delivered; keep reading
        # (and discarding) so that closing with unread input does not turn
        # into an RST that could destroy the last bytes in flight.
        for d in c.dirs.values():
            d.queue.clear()
            d.queued = 0
            d.want_write = False
        for sock in (c.client, c.upstream):
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        c.closing_deadline = time.monotonic() + CUT_LINGER
        c.client_eof = c.dirs[C2S].eof
        c.upstream_eof = c.dirs[S2C].eof or c.connecting
        if c.client_eof and c.upstream_eof:
            self._finish(c)
        else:
            self._update(c)

    def _abort(self, c, error, reset=False):
        c.stats.error = error
        if reset:
            for sock in (c.client, c.upstream):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack('ii', 1, 0))
                except OSError:
                    pass
        self._finish(c)

    def _finish(self, c):
        self._conns.pop(c.n, None)
        for role, sock in (('client', c.client), ('upstream', c.upstream)):
            if sock is None:
                continue
            if c.masks.get(role):
                try:
                    self._sel.unregister(sock)
                except (KeyError, ValueError, OSError):
                    pass
            try:
                sock.close()
            except OSError:
                pass
        c.masks = {}
        c.stats.open = False
        c.stats.closed_at = time.monotonic()

    def _close_all(self):
        with self._lock:
            for c in list(self._conns.values()):
                self._finish(c)
            for s in (self._listener, self._waker_r, self._waker_w):
                try:
                    s.close()
                except OSError:
                    pass
            try:
                self._sel.close()
            except (OSError, RuntimeError):
                pass


# Whatever a test forgets is stopped when the interpreter exits.
_live = set()


@atexit.register
def _stop_all():
    for p in list(_live):
        try:
            p.stop(timeout=1.0)
        except Exception:
            pass


# --------------------------------------------------------------------------
# CLI

def _parse_rule(spec, action, pattern):
    # DIR:OFFSET[:CONN]  or  DIR:PATTERN[:CONN] (pattern: Python escapes)
    parts = spec.split(':')
    if len(parts) < 2:
        raise argparse.ArgumentTypeError('want DIR:%s[:CONN]' %
                                         ('PATTERN' if pattern else 'OFFSET'))
    direction = parts[0]
    conn = int(parts[-1]) if len(parts) > 2 else None
    value = ':'.join(parts[1:-1]) if len(parts) > 2 else parts[1]
    if pattern:
        pat = value.encode('latin-1').decode('unicode_escape').encode(
            'latin-1')
        return Rule(action, direction, after=pat, conn=conn)
    return Rule(action, direction, at=int(value), conn=conn)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description='Fault-injecting TCP proxy for tests (loopback only).')
    ap.add_argument('--upstream', required=True,
                    help='PORT or HOST:PORT of the server (loopback)')
    ap.add_argument('--listen', type=int, default=0, help='port (0: free)')
    ap.add_argument('--listen-host', default='127.0.0.1')
    ap.add_argument('--delay-ms', type=float, default=0.0,
                    help='one-way latency, both directions')
    ap.add_argument('--delay-c2s-ms', type=float)
    ap.add_argument('--delay-s2c-ms', type=float)
    ap.add_argument('--rate-c2s', type=float, help='bytes a second')
    ap.add_argument('--rate-s2c', type=float, help='bytes a second')
    ap.add_argument('--protocol', choices=('imap', 'pop3', 'raw'),
                    default='imap')
    for name, action, pattern, what in (
            ('--cut', 'cut', False, 'DIR:OFFSET[:CONN]'),
            ('--cut-after', 'cut', True, 'DIR:PATTERN[:CONN]'),
            ('--stall', 'stall', False, 'DIR:OFFSET[:CONN]'),
            ('--stall-after', 'stall', True, 'DIR:PATTERN[:CONN]')):
        ap.add_argument(name, action='append', default=[], metavar=what,
                        type=lambda s, a=action, p=pattern:
                        _parse_rule(s, a, p))
    ap.add_argument('--duration', type=float, default=DEFAULT_LIFETIME,
                    help='stop after this many seconds (default %(default)s)')
    a = ap.parse_args(argv)
    host, _, port = a.upstream.rpartition(':')
    rules = a.cut + a.cut_after + a.stall + a.stall_after
    ms = lambda v: None if v is None else v / 1000.0  # noqa: E731
    p = FaultProxy(host or '127.0.0.1', int(port), listen_port=a.listen,
                   listen_host=a.listen_host, delay=a.delay_ms / 1000.0,
                   delay_c2s=ms(a.delay_c2s_ms), delay_s2c=ms(a.delay_s2c_ms),
                   rate_c2s=a.rate_c2s, rate_s2c=a.rate_s2c, rules=rules,
                   protocol=None if a.protocol == 'raw' else a.protocol,
                   lifetime=a.duration)
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    p.start()
    print('faultproxy: %s:%d -> %s:%s' % (a.listen_host, p.port,
                                          host or '127.0.0.1', port),
          flush=True)
    stop.wait(a.duration)
    p.stop()
    # Statistics only: the captured bytes may hold credentials.
    for s in p.connections():
        print('conn %d: c2s read %d sent %d%s; s2c read %d sent %d%s; '
              'commands %s' % (
                  s.n, s.c2s.read, s.c2s.sent,
                  ' cut@%d' % s.c2s.cut_at if s.c2s.cut_at is not None else '',
                  s.s2c.read, s.s2c.sent,
                  ' cut@%d' % s.s2c.cut_at if s.s2c.cut_at is not None else '',
                  dict(s.c2s.commands)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
