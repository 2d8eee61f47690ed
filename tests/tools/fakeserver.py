#!/usr/bin/env python3
"""fakeserver — scripted fake IMAP4rev1 and POP3 servers for tests.

Dovecot is the reference server in the integration tests; this module plays
the servers Dovecot cannot imitate: the ones that refuse, throttle, lie and
die at awkward moments.  Underneath the faults is a small but correct
in-memory IMAP server (and a POP3 server), so a client gets ordinary
answers until a scripted behaviour says otherwise.

    srv = FakeIMAP(script={
        'folders': {'INBOX': [b'Subject: hi\\r\\n\\r\\nhello\\r\\n']},
        'rules': [cyrus_invalid_header(contains=b'\\nBad header\\r\\n'),
                  o365_throttled(ms=2000, command='APPEND', nth=3)],
    }).start()
    ... point the client at 127.0.0.1:srv.port ...
    assert srv.commands_named('APPEND')
    srv.stop()

A script is a dict (see IMAP_DEFAULTS and POP3_DEFAULTS for every key);
'rules' is a list of Rule objects or dicts of Rule's arguments.  Rules can
also be added while the server runs (add_rule).  Every command received
is recorded in .commands (credentials included, in memory only: __repr__
redacts them and nothing here prints them).  Only loopback addresses are
used.  Run this file with --help for the command-line form.
"""

import argparse
import atexit
import base64
import calendar
import copy
import datetime
import ipaddress
import json
import re
import signal
import socket
import ssl
import sys
import threading
import time

DEFAULT_CAPABILITIES = ['IMAP4rev1', 'LITERAL+', 'UIDPLUS', 'MULTIAPPEND',
                        'CONDSTORE', 'NAMESPACE', 'MOVE', 'IDLE', 'STARTTLS',
                        'AUTH=PLAIN']
DEFAULT_PERMANENTFLAGS = ['\\Answered', '\\Flagged', '\\Deleted', '\\Seen',
                          '\\Draft', '\\*']
SYSTEM_FLAGS = {f.lower(): f for f in ('\\Answered', '\\Flagged',
                                        '\\Deleted', '\\Seen', '\\Draft')}
MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep',
          'Oct', 'Nov', 'Dec']

DEFAULT_LIFETIME = 3600.0   # a forgotten server stops by itself

# Texts real servers use, for the presets below.
CYRUS_INVALID_HEADER = 'Message contains invalid header'
O365_TOOBIG = 'Maximum size of appendable message has been exceeded.'
O365_THROTTLED = ('Request is throttled. Suggested Backoff Time: '
                  '%d milliseconds')

IMAP_DEFAULTS = {
    'users': {'alice': 'secret'},
    'capabilities': None,        # None: DEFAULT_CAPABILITIES
    'capabilities_after_login': None,   # None: the list minus AUTH=, STARTTLS
    'greeting': 'OK',            # 'OK', 'PREAUTH' (as the first user), 'BYE'
    'greeting_text': 'fake IMAP4rev1 server ready',
    'greeting_capability': True,  # [CAPABILITY ...] in the greeting
    'login_capability': False,    # [CAPABILITY ...] in the LOGIN OK
    'advertise_starttls': True,   # False: a STARTTLS listener hiding it
    'starttls_inject': None,      # bytes sent in clear right after the OK
    'logindisabled': False,       # LOGINDISABLED until TLS is active
    'silent': False,              # accept, then never send a byte
    'namespace': ('', '/'),       # personal (prefix, separator)
    # {name: [bytes | dict(data=, flags=, date=, uid=)]}
    'folders': {'INBOX': []},
    'special_use': {},            # {name: '\\Sent' or a list}
    'subscribed': None,           # None: every initial folder
    'uidvalidity': None,          # int (all folders share it) or {name: int}
    'permanentflags': None,       # None: DEFAULT_PERMANENTFLAGS
    'keyword_limit': None,        # refuse APPEND/STORE above K keywords
    'keyword_limit_response': ('NO', None, 'Too many user flags in mailbox'),
    'refuse_pre1970': False,      # refuse INTERNALDATE before 1970
    'pre1970_response': ('NO', None, 'Date before 1970 is not supported'),
    'max_message_size': None,     # bytes; above: NO [TOOBIG] (Office 365)
    'quota_bytes': None,          # account total; above: NO [OVERQUOTA]
    'create_exists_code': True,   # False: plain NO for an existing folder
    'refuse_toplevel': False,     # CREATE outside the prefix: NO (Cyrus)
    'refuse_chars': '',           # CREATE with any of these: NO (Cyrus)
    'collapse_separators': False,  # 'a..b' -> 'a.b' (Cyrus)
    'create_parents': True,       # CREATE a/b/c makes a and a/b too
    'timeout': 120.0,             # idle read timeout of a connection
    'max_literal': 256 << 20,     # larger literals get BAD and a BYE
    'rules': [],
}

POP3_DEFAULTS = {
    'users': {'alice': 'secret'},
    'maildrops': None,            # {user: [bytes | dict(data, uidl)]}
    'messages': [],               # the maildrop of every user not named
    'uidl': True,                 # False: no UIDL command, not in CAPA
    'capa': None,                 # None: computed
    'greeting_text': 'fake POP3 server ready',
    'advertise_stls': True,
    'starttls_inject': None,
    'silent': False,
    'lock': False,                # refuse a second session of a user
    'timeout': 120.0,
    'rules': [],
}


def loopback_addrinfo(host, port):
    """getaddrinfo for HOST:PORT, refusing anything but loopback."""
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    good = [ai for ai in infos
            if ipaddress.ip_address(ai[4][0].split('%')[0]).is_loopback]
    if not good:
        raise ValueError('%s is not a loopback address' % host)
    return good


def _b(s):
    return s if isinstance(s, bytes) else s.encode('utf-8', 'surrogateescape')


def _s(b):
    return b if isinstance(b, str) else b.decode('utf-8', 'surrogateescape')


class Closed(Exception):
    """The connection ended (EOF, timeout, server stop, or on purpose)."""


class ProtocolError(Exception):
    """The client sent something unparsable: answered with BAD."""


# --------------------------------------------------------------------------
# Rules: what to do instead of (or on top of) the normal answer

class Rule:
    """A scripted behaviour.  Selection (all must hold):

      command   verb ('APPEND', 'UID FETCH', 'RETR'), a list of verbs, or
                '*' for any
      conn      connection number (1 = first accepted) or a list of them
      user      the logged-in user
      match     callable(Command) -> bool; for APPEND, Command.messages
                holds each message (.data, .flags, .date)
      contains  bytes found in an APPENDed message (any of a MULTIAPPEND)
                or, for other commands, in the command line
      phase     'command' (default: the whole command has been read) or
                'literal' (IMAP: when literal number `literal_index` of the
                command is announced, before the '+' of a synchronising
                literal; after `after_bytes` bytes of it if set)

    Then counting the commands that passed the selection (n = 1, 2, ...):

      every     fire when n is a multiple of it
      nth       fire when n equals it (or is in it, a list)
      after     fire when n > it
      times     fire at most this many times

    Actions:
      'no', 'bad'   tagged NO/BAD with `code` and `text` (POP3: -ERR text;
                    'err' is a synonym)
      'bye'         '* BYE text' and close (in phase 'literal': mid-APPEND)
      'eof'         close without a word
      'silent'      answer nothing more on this connection
      'delay'       wait `seconds`, then answer normally
      'ok'          answer normally but with `code`/`text` in the tagged OK
                    (e.g. code 'THROTTLED' instead of APPENDUID)
      'untagged'    send `lines` first, then answer normally
      'shrink_exists'   drop the last `by` messages of the selected folder
                    without EXPUNGE and announce the smaller EXISTS
      'rewind_uidnext'  the folder (named in the command or selected) loses
                    its last `by` UIDs and UIDNEXT goes back (UIDVALIDITY
                    unchanged): a later session sees UIDNEXT go backwards
      'set_uidvalidity' the folder gets UIDVALIDITY `value`
      'fetch_extra' FETCH answers also carry `unrequested` UIDs and, with
                    `duplicate`, every response twice
      'literal_eof' FETCH: announce a literal of `announce` bytes (default:
                    the real size), send `send` bytes of it, then EOF
      'eof_mid'     POP3 RETR/TOP: +OK and `after_bytes` bytes, then EOF

    Any rule may also have `delay` (seconds before acting) and `then`
    ('bye' with `bye_text`, or 'eof') to end the connection after its
    answer.  .count and .fired tell how often it matched and fired.
    """

    ACTIONS = ('no', 'bad', 'err', 'bye', 'eof', 'silent', 'delay', 'ok',
               'untagged', 'shrink_exists', 'rewind_uidnext',
               'set_uidvalidity', 'fetch_extra', 'literal_eof', 'eof_mid')

    def __init__(self, command='*', action='no', code=None, text=None,
                 every=None, nth=None, after=None, times=None, match=None,
                 contains=None, conn=None, user=None, phase='command',
                 literal_index=0, after_bytes=0, delay=0.0, then=None,
                 bye_text='Connection closed', lines=(), seconds=0.0, by=1,
                 value=None, unrequested=(), duplicate=False, announce=None,
                 send=None, name=None):
        if action not in self.ACTIONS:
            raise ValueError('unknown action %r' % action)
        if phase not in ('command', 'literal'):
            raise ValueError('phase must be command or literal')
        if isinstance(command, str):
            command = [command]
        self.commands = [c.upper() for c in command]
        self.action = 'no' if action == 'err' else action
        self.code, self.text = code, text
        self.every, self.after, self.times = every, after, times
        self.nth = nth if nth is None or isinstance(nth, int) else set(nth)
        self.match = match
        self.contains = _b(contains) if contains is not None else None
        self.conn = conn
        self.user = user
        self.phase = phase
        self.literal_index = literal_index
        self.after_bytes = after_bytes
        self.delay = delay
        self.then = then
        self.bye_text = bye_text
        self.lines = [_b(x) for x in lines]
        self.seconds = seconds
        self.by = by
        self.value = value
        self.unrequested = list(unrequested)
        self.duplicate = duplicate
        self.announce = announce
        self.send = send
        self.name = name or action
        self.count = 0
        self.fired = 0

    @classmethod
    def make(cls, r):
        return r if isinstance(r, Rule) else cls(**r)

    def selects(self, cmd, phase, literal_index=None):
        if phase != self.phase:
            return False
        if phase == 'literal' and literal_index != self.literal_index:
            return False
        if '*' not in self.commands and cmd.name not in self.commands:
            return False
        if self.conn is not None:
            conns = self.conn if isinstance(self.conn, (list, tuple, set)) \
                else [self.conn]
            if cmd.conn not in conns:
                return False
        if self.user is not None and cmd.user != self.user:
            return False
        if self.contains is not None:
            if cmd.messages:
                if not any(self.contains in m.data for m in cmd.messages):
                    return False
            elif self.contains not in cmd.line:
                return False
        if self.match is not None and not self.match(cmd):
            return False
        return True

    def decide(self):
        """Count one selected command; True when the rule fires for it."""
        self.count += 1
        n = self.count
        if self.times is not None and self.fired >= self.times:
            return False
        if self.every is not None and n % self.every:
            return False
        if self.nth is not None:
            if isinstance(self.nth, int) and n != self.nth:
                return False
            if isinstance(self.nth, set) and n not in self.nth:
                return False
        if self.after is not None and n <= self.after:
            return False
        self.fired += 1
        return True

    def __repr__(self):
        return '<Rule %s %s count=%d fired=%d>' % (
            self.name, '/'.join(self.commands), self.count, self.fired)


# Presets for what real servers say.  Keyword arguments select, as in Rule.

def refuse(command, text, code=None, kind='no', **kw):
    return Rule(command=command, action=kind, code=code, text=text, **kw)


def cyrus_invalid_header(**kw):
    """Cyrus refusing a message: NO Message contains invalid header."""
    kw.setdefault('command', 'APPEND')
    return Rule(action='no', text=CYRUS_INVALID_HEADER,
                name='cyrus_invalid_header', **kw)


def o365_toobig(**kw):
    """Office 365: NO [TOOBIG] Maximum size of appendable message ..."""
    kw.setdefault('command', 'APPEND')
    return Rule(action='no', code='TOOBIG', text=O365_TOOBIG,
                name='o365_toobig', **kw)


def overquota(**kw):
    kw.setdefault('command', 'APPEND')
    return Rule(action='no', code='OVERQUOTA', text='Quota exceeded',
                name='overquota', **kw)


def o365_throttled(ms=2000, **kw):
    """Office 365 throttling: NO Request is throttled..., then * BYE."""
    kw.setdefault('command', '*')
    return Rule(action='no', text=O365_THROTTLED % ms, then='bye',
                bye_text='Connection is closed. 13', name='o365_throttled',
                **kw)


def throttled_ok(**kw):
    """A server that completes the command but tags OK [THROTTLED]."""
    kw.setdefault('command', '*')
    return Rule(action='ok', code='THROTTLED', name='throttled_ok', **kw)


# --------------------------------------------------------------------------
# Commands as received

class AppendMsg:
    def __init__(self, flags, date, data):
        self.flags = flags      # [str]
        self.date = date        # the INTERNALDATE string or None
        self.data = data        # bytes

    def __repr__(self):
        return '<AppendMsg %d bytes flags=%r date=%r>' % (
            len(self.data), self.flags, self.date)


class Command:
    """One client command: conn, tag, name ('UID FETCH'), args (parsed
    tokens), line (the first line, raw bytes), literals ([bytes]),
    messages ([AppendMsg] for APPEND), sasl (AUTHENTICATE responses),
    user (logged in at the time), tls (bool), at (time.time()).
    Credentials are kept raw in memory; repr() redacts them."""

    SECRET = ('LOGIN', 'AUTHENTICATE', 'PASS', 'AUTH', 'APOP')

    def __init__(self, conn, tag, name, line, user, tls):
        self.conn, self.tag, self.name = conn, tag, name
        self.line = line
        self.args = []
        self.literals = []
        self.messages = []
        self.sasl = []
        self.user = user
        self.tls = tls
        self.aborted = False
        self.at = time.time()

    def __repr__(self):
        if self.name in self.SECRET:
            return '<Command #%d %s %s [redacted]>' % (self.conn, self.tag,
                                                       self.name)
        return '<Command #%d %s %s %r>' % (self.conn, self.tag, self.name,
                                           self.line[:80])


# --------------------------------------------------------------------------
# The mail store

class Message:
    __slots__ = ('uid', 'data', 'flags', 'date', 'modseq')

    def __init__(self, uid, data, flags, date, modseq):
        self.uid = uid
        self.data = data
        self.flags = list(flags)
        self.date = date        # (epoch seconds, zone offset in minutes)
        self.modseq = modseq

    def copy(self):
        return Message(self.uid, self.data, self.flags, self.date,
                       self.modseq)

    def __repr__(self):
        return '<Message uid=%d %d bytes %r>' % (self.uid, len(self.data),
                                                 self.flags)


class Folder:
    def __init__(self, name, uidvalidity, special_use=()):
        self.name = name
        self.uidvalidity = uidvalidity
        self.uidnext = 1
        self.msgs = []                  # in UID order
        self.highestmodseq = 1
        self.special_use = list(special_use)
        self.keywords = {}              # lower-case -> first spelling
        self.deleted = False

    def by_uid(self, uid):
        for m in self.msgs:
            if m.uid == uid:
                return m
        return None

    def size(self):
        return sum(len(m.data) for m in self.msgs)


def parse_date(s):
    """IMAP date-time -> (epoch, zone minutes); ValueError if malformed."""
    m = re.match(r'^ ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) '
                 r'([+-])(\d\d)(\d\d)$', s)
    if not m:
        raise ValueError('bad date-time %r' % s)
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    try:
        month = [x.lower() for x in MONTHS].index(mon.lower()) + 1
    except ValueError:
        raise ValueError('bad month in %r' % s)
    zone = (int(zh) * 60 + int(zm)) * (-1 if sign == '-' else 1)
    datetime.datetime(int(year), month, int(day))   # validates the day
    epoch = calendar.timegm((int(year), month, int(day), int(hh), int(mm),
                             int(ss), 0, 0, 0)) - zone * 60
    return epoch, zone


def format_date(date):
    epoch, zone = date
    t = datetime.datetime(1970, 1, 1) + datetime.timedelta(
        seconds=epoch + zone * 60)
    return '%02d-%s-%04d %02d:%02d:%02d %s%02d%02d' % (
        t.day, MONTHS[t.month - 1], t.year, t.hour, t.minute, t.second,
        '-' if zone < 0 else '+', abs(zone) // 60, abs(zone) % 60)


def _date_of(v):
    if v is None:
        return int(time.time()), 0
    if isinstance(v, (int, float)):
        return int(v), 0
    if isinstance(v, str):
        return parse_date(v)
    return int(v[0]), int(v[1])


# --------------------------------------------------------------------------
# IMAP syntax

class Atom(str):
    """An unquoted token (quoted strings are plain str, literals bytes)."""


def tokenize(parts):
    """Tokens of a command: PARTS alternate text (bytes) and literal data
    (bytearray, so it cannot be mistaken for text).  Lists become Python
    lists; '[...]' inside an atom (BODY[HEADER.FIELDS (X)]) stays in it."""
    stack = [[]]
    for part in parts:
        if isinstance(part, bytearray):
            stack[-1].append(bytes(part))
            continue
        s, i, n = part, 0, len(part)
        while i < n:
            ch = s[i:i + 1]
            if ch == b' ':
                i += 1
            elif ch == b'(':
                new = []
                stack[-1].append(new)
                stack.append(new)
                i += 1
            elif ch == b')':
                if len(stack) == 1:
                    raise ProtocolError('unbalanced )')
                stack.pop()
                i += 1
            elif ch == b'"':
                out = bytearray()
                i += 1
                while True:
                    if i >= n:
                        raise ProtocolError('unterminated string')
                    c = s[i:i + 1]
                    if c == b'\\' and i + 1 < n:
                        out += s[i + 1:i + 2]
                        i += 2
                    elif c == b'"':
                        i += 1
                        break
                    else:
                        out += c
                        i += 1
                stack[-1].append(_s(bytes(out)))
            else:
                j = i
                while j < n and s[j:j + 1] not in (b' ', b'(', b')', b'"'):
                    if s[j:j + 1] == b'[':
                        k = s.find(b']', j)
                        if k < 0:
                            raise ProtocolError('unterminated [')
                        j = k
                    j += 1
                stack[-1].append(Atom(_s(s[i:j])))
                i = j
    if len(stack) != 1:
        raise ProtocolError('unbalanced (')
    return stack[0]


def quote(s):
    """A mailbox name or string as IMAP wants it: quoted, or a literal."""
    raw = _b(s)
    if any(c < 0x20 or c > 0x7e for c in raw):
        return b'{%d}\r\n' % len(raw) + raw
    return b'"' + raw.replace(b'\\', b'\\\\').replace(b'"', b'\\"') + b'"'


def parse_set(text):
    """'1:3,7,9:*' -> [(lo, hi)] with None for '*'."""
    out = []
    for piece in str(text).split(','):
        a, _, b = piece.partition(':')
        try:
            lo = None if a == '*' else int(a)
            hi = lo if not b else (None if b == '*' else int(b))
        except ValueError:
            raise ProtocolError('bad sequence set %r' % text)
        if (lo is not None and lo < 1) or (hi is not None and hi < 1):
            raise ProtocolError('bad sequence set %r' % text)
        out.append((lo, hi))
    return out


def in_set(ranges, n, star):
    for lo, hi in ranges:
        lo = star if lo is None else lo
        hi = star if hi is None else hi
        if min(lo, hi) <= n <= max(lo, hi):
            return True
    return False


def uid_set_text(uids):
    """[1,2,3,7] -> '1:3,7'."""
    out, run = [], []
    for u in sorted(uids):
        if run and u == run[-1] + 1:
            run.append(u)
        else:
            if run:
                out.append(run)
            run = [u]
    if run:
        out.append(run)
    return ','.join('%d' % r[0] if len(r) == 1 else '%d:%d' % (r[0], r[-1])
                    for r in out)


def header_block(data):
    """The header of a message, with the empty line that ends it."""
    for sep in (b'\r\n\r\n', b'\n\n'):
        i = data.find(sep)
        if i >= 0:
            return data[:i + len(sep)]
    return data


def header_fields(data, names, negate=False):
    names = {n.lower() for n in names}
    out = []
    keep = False
    for line in header_block(data).splitlines(True):
        if line in (b'\r\n', b'\n'):
            break
        if line[:1] in (b' ', b'\t'):
            if keep:
                out.append(line)
            continue
        name = line.split(b':', 1)[0].strip().lower().decode('latin-1')
        keep = (name in names) != negate
        if keep:
            out.append(line)
    return b''.join(out) + b'\r\n'


# --------------------------------------------------------------------------
# Shared server machinery

class _Server:
    """Listener, accept thread, per-connection threads, stop()."""

    DEFAULTS = {}
    PROTO = 'server'

    def __init__(self, script=None, tls=None, cert=None, key=None,
                 host='127.0.0.1', port=0, lifetime=DEFAULT_LIFETIME):
        if tls not in (None, 'implicit', 'starttls'):
            raise ValueError("tls must be None, 'implicit' or 'starttls'")
        if tls and not cert:
            raise ValueError('TLS needs cert= (and key=)')
        self.script = dict(copy.deepcopy(
            {k: v for k, v in self.DEFAULTS.items() if k != 'rules'}))
        for k, v in (script or {}).items():
            if k not in self.DEFAULTS:
                raise ValueError('unknown script key %r' % k)
            self.script[k] = v
        self.rules = [Rule.make(r) for r in (script or {}).get('rules', ())]
        self.tls = tls
        self.ctx = None
        if tls:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(cert, key)
        self.lifetime = lifetime
        self.lock = threading.RLock()
        self.commands = []      # every Command, in order
        self.events = []        # (conn, what, detail)
        self.errors = []        # unexpected exceptions in sessions (bugs)
        self.connections = 0    # accepted so far
        self._socks = set()
        self._threads = []
        self._stop = threading.Event()
        self._thread = None
        fam, typ, proto, _, addr = loopback_addrinfo(host, port)[0]
        self._listener = socket.socket(fam, typ, proto)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(addr)
        self._listener.listen(64)
        self.host = host
        self.port = self._listener.getsockname()[1]

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._accept_loop, daemon=True,
                name='%s:%d' % (self.PROTO, self.port))
            _live.add(self)
            self._thread.start()
        return self

    def stop(self, timeout=5.0):
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            _hard_shutdown(s)
        deadline = time.monotonic() + timeout
        for t in [self._thread] + list(self._threads):
            if t is not None and t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        _live.discard(self)

    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return '<%s %d tls=%s>' % (type(self).__name__, self.port, self.tls)

    def add_rule(self, rule=None, **kw):
        rule = Rule.make(rule or kw)
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear_rules(self):
        with self.lock:
            self.rules.clear()

    def commands_named(self, *names):
        names = {n.upper() for n in names}
        with self.lock:
            return [c for c in self.commands if c.name in names]

    def event(self, conn, what, detail=None):
        with self.lock:
            self.events.append((conn, what, detail))

    def events_named(self, what):
        with self.lock:
            return [e for e in self.events if e[1] == what]

    def wait(self, predicate, timeout=10.0, interval=0.01):
        deadline = time.monotonic() + timeout
        while True:
            v = predicate(self)
            if v or time.monotonic() >= deadline:
                return v
            time.sleep(interval)

    def _fire(self, cmd, phase, literal_index=None):
        """Yield the rules that fire for CMD, in order.  Lazily: a rule is
        counted only when the caller asks for the next one, so the rules
        after a terminal action (a NO, a BYE) do not count the command."""
        with self.lock:
            rules = list(self.rules)
        for r in rules:
            with self.lock:
                fires = r.selects(cmd, phase, literal_index) and r.decide()
            if fires:
                self.event(cmd.conn, 'rule', r.name)
                yield r

    def _accept_loop(self):
        born = time.monotonic()
        self._listener.settimeout(0.2)
        while not self._stop.is_set() and \
                time.monotonic() - born < self.lifetime:
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with self.lock:
                self.connections += 1
                n = self.connections
                self._socks.add(sock)
                self._threads = [t for t in self._threads if t.is_alive()]
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = threading.Thread(target=self._serve, args=(n, sock),
                                 daemon=True, name='%s#%d' % (self.PROTO, n))
            with self.lock:
                self._threads.append(t)
            t.start()
        try:
            self._listener.close()
        except OSError:
            pass

    def _serve(self, n, sock):
        self.event(n, 'connect')
        session = self.SESSION(self, n, sock)
        try:
            session.run()
        except (Closed, OSError, ssl.SSLError, socket.timeout):
            pass
        except Exception as e:     # a bug in this module: keep it for tests
            import traceback
            with self.lock:
                self.errors.append('conn %d: %r\n%s' % (
                    n, e, traceback.format_exc()))
        finally:
            session.close()
            self.event(n, 'disconnect')


def _hard_shutdown(sock):
    # socket.socket.shutdown, not SSLSocket.shutdown: wake a thread blocked
    # in recv() without touching the TLS object it is using.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _Session:
    """Line/literal I/O shared by the IMAP and POP3 sessions."""

    def __init__(self, server, n, sock):
        self.server = server
        self.script = server.script
        self.n = n
        self.sock = sock
        self.buf = bytearray()
        self.out = []
        self.tls_active = False
        self.closing = False
        self.silent = False
        self.user = None
        sock.settimeout(self.script['timeout'])

    # -- input

    def _recv(self):
        if self.server._stop.is_set():
            raise Closed()
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise Closed('idle timeout')
        if not data:
            raise Closed('EOF')
        self.buf += data

    def read_line(self, limit=1 << 16):
        while True:
            i = self.buf.find(b'\n')
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > limit:
                raise Closed('line too long')
            self._recv()

    def read_line_timeout(self, seconds):
        """A line, or None if none came within SECONDS (IDLE polling)."""
        if b'\n' in self.buf:
            return self.read_line()
        self.sock.settimeout(seconds)
        try:
            self._recv()
        except Closed as e:
            if str(e) == 'idle timeout':
                return None
            raise
        finally:
            self.sock.settimeout(self.script['timeout'])
        return self.read_line() if b'\n' in self.buf else None

    def read_exact(self, n):
        out = bytearray()
        while len(out) < n:
            if not self.buf:
                self._recv()
            take = min(n - len(out), len(self.buf))
            out += self.buf[:take]
            del self.buf[:take]
        return out

    def discard_until_eof(self):
        """What a silent server does: read and ignore until the client
        goes, the idle timeout passes, or the server stops."""
        while True:
            self.buf.clear()
            self._recv()

    # -- output

    def put(self, data):
        self.out.append(_b(data))

    def flush(self):
        if self.out:
            data, self.out = b''.join(self.out), []
            if not self.silent:
                self.sock.sendall(data)

    def sleep(self, seconds):
        if self.server._stop.wait(seconds):
            raise Closed('server stopped')

    def start_tls(self, ok_line):
        """Send OK_LINE (+ any scripted injection) in clear, then handshake.
        Plaintext the client pipelined after the command is discarded, as
        it must be (it could have been injected by an attacker)."""
        inject = self.script.get('starttls_inject')
        self.sock.sendall(_b(ok_line) + (_b(inject) if inject else b''))
        if self.buf:
            self.server.event(self.n, 'discarded', len(self.buf))
            self.buf.clear()
        self.wrap_tls()
        self.server.event(self.n, 'starttls')

    def wrap_tls(self):
        self.sock.settimeout(10)
        tls = self.server.ctx.wrap_socket(self.sock, server_side=True)
        tls.settimeout(self.script['timeout'])
        with self.server.lock:
            self.server._socks.discard(self.sock)
            self.server._socks.add(tls)
        self.sock = tls
        self.tls_active = True

    def close(self):
        with self.server.lock:
            self.server._socks.discard(self.sock)
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# IMAP

class _ImapSession(_Session):

    def __init__(self, server, n, sock):
        super().__init__(server, n, sock)
        self.state = 'nonauth'
        self.folder = None
        self.readonly = False
        self.view = []          # UIDs in sequence-number order
        self.condstore = False  # CONDSTORE enabled in this session
        self.override = None    # an 'ok' rule for the current command
        self.fetch_faults = {}  # action -> rule, for the current FETCH

    # -- life

    def run(self):
        srv = self.server
        if srv.tls == 'implicit':
            self.wrap_tls()
        if self.script['silent']:
            self.silent = True
            self.discard_until_eof()
        g = self.script['greeting'].upper()
        if g == 'PREAUTH':
            self.user = next(iter(self.script['users']), None)
            self.state = 'auth'
        code = ''
        if self.script['greeting_capability'] and g != 'BYE':
            code = '[CAPABILITY %s] ' % ' '.join(self.capabilities())
        self.put('* %s %s%s\r\n' % (g, code, self.script['greeting_text']))
        self.flush()
        if g == 'BYE':
            return
        while not self.closing:
            cmd = self.read_command()
            if cmd is not None:
                self.execute(cmd)
            self.flush()
            if self.silent:
                self.discard_until_eof()

    def capabilities(self):
        caps = list(self.script['capabilities'] or DEFAULT_CAPABILITIES)
        if self.state != 'nonauth':
            after = self.script['capabilities_after_login']
            if after is not None:
                return list(after)
            return [c for c in caps if not c.upper().startswith('AUTH=') and
                    c.upper() not in ('STARTTLS', 'LOGINDISABLED',
                                      'SASL-IR')]
        can_starttls = (self.server.tls == 'starttls' and
                        not self.tls_active and
                        self.script['advertise_starttls'])
        if not can_starttls:
            caps = [c for c in caps if c.upper() != 'STARTTLS']
        if self.script['logindisabled'] and not self.tls_active:
            caps.append('LOGINDISABLED')
        return caps

    def has_cap(self, name):
        return name.upper() in (c.upper() for c in self.capabilities())

    # -- reading a command (literals included)

    _LITERAL = re.compile(rb'\{(\d+)(\+?)\}\r?\n\Z')
    _HEAD = re.compile(rb'([^ \r\n]+) ([A-Za-z]+)(?: ([A-Za-z]+))?')

    def read_command(self):
        first = self.read_line()
        m = self._HEAD.match(first)
        tag = _s(m.group(1)) if m else '*'
        name = m.group(2).upper().decode() if m else ''
        if name == 'UID' and m.group(3):
            name += ' ' + m.group(3).upper().decode()
        cmd = Command(self.n, tag, name, first.rstrip(b'\r\n'), self.user,
                      self.tls_active)
        parts = []
        line = first
        refused = None          # a literal-phase NO/BAD for a '+' literal
        while True:
            lm = self._LITERAL.search(line)
            if not lm:
                parts.append(line.rstrip(b'\r\n'))
                break
            parts.append(line[:lm.start()])
            size, nonsync = int(lm.group(1)), bool(lm.group(2))
            if size > self.script['max_literal']:
                self.put('* BYE Literal too large\r\n')
                self.closing = True
                self._record(cmd, aborted=True)
                return None
            act, plus_sent = self._literal_rules(cmd, len(cmd.literals),
                                                 size, nonsync)
            if act == 'abort':
                self._record(cmd, aborted=True)
                return None
            if act is not None:
                refused = act
            if not nonsync and not plus_sent:
                self.sock.sendall(b'+ Ready for literal data\r\n')
            data = self.read_exact(size)
            cmd.literals.append(bytes(data))
            parts.append(data)
            line = self.read_line()
        try:
            toks = tokenize(parts)
            skip = 3 if cmd.name.startswith('UID ') else 2
            if not m or len(toks) < skip:
                raise ProtocolError('no command')
            cmd.args = toks[skip:]
            if name == 'APPEND':
                cmd.messages = self._append_messages(cmd.args)
        except ProtocolError as e:
            self._record(cmd)
            self.put('%s BAD %s\r\n' % (tag, e))
            return None
        self._record(cmd)
        if refused is not None:
            self._respond_rule(cmd, refused)
            return None
        return cmd

    def _record(self, cmd, aborted=False):
        cmd.aborted = aborted
        with self.server.lock:
            self.server.commands.append(cmd)

    def _literal_rules(self, cmd, index, size, nonsync):
        """Rules of phase 'literal' when literal INDEX is announced.
        Returns (action, whether '+' was sent), the action being None (go
        on), 'abort' (the command is over) or a NO/BAD rule to answer once
        the whole command has been read."""
        rule = next(self.server._fire(cmd, 'literal', index), None)
        if rule is None:
            return None, False
        self.flush()
        if rule.delay:
            self.sleep(rule.delay)
        plus_sent = False
        if rule.after_bytes:
            if not nonsync:
                self.sock.sendall(b'+ Ready for literal data\r\n')
                plus_sent = True
            got = self.read_exact(min(rule.after_bytes, size))
            self.buf[:0] = got  # unread: if the command goes on, it is whole
        if rule.action in ('no', 'bad'):
            if nonsync or plus_sent:
                return rule, plus_sent   # the literal comes anyway
            self.put('%s %s %s\r\n' % (cmd.tag, rule.action.upper(),
                                       self._text(rule, 'Refused')))
            self._then(rule)
            return 'abort', plus_sent
        if rule.action == 'bye':
            self.put('* BYE %s\r\n' % (rule.text or 'Server shutting down'))
            self.closing = True
            return 'abort', plus_sent
        if rule.action == 'eof':
            self.closing = True
            return 'abort', plus_sent
        if rule.action == 'silent':
            self.silent = True
            return 'abort', plus_sent
        return None, plus_sent

    def _append_messages(self, args):
        if not args:
            raise ProtocolError('APPEND needs a mailbox')
        rest, msgs, i = args[1:], [], 0
        while i < len(rest):
            flags, date = [], None
            if isinstance(rest[i], list):
                flags = [str(f) for f in rest[i]]
                i += 1
            if i < len(rest) and type(rest[i]) is str:
                date = rest[i]
                i += 1
            if i >= len(rest) or not isinstance(rest[i], bytes):
                raise ProtocolError('APPEND wants a literal')
            msgs.append(AppendMsg(flags, date, rest[i]))
            i += 1
        if not msgs:
            raise ProtocolError('APPEND without a message')
        return msgs

    # -- rules, then the command

    @staticmethod
    def _text(rule, default):
        code = '[%s] ' % rule.code if rule.code else ''
        return code + (rule.text or default)

    def _respond_rule(self, cmd, rule):
        """A terminal NO/BAD from a rule, then its `then`."""
        self.put('%s %s %s\r\n' % (cmd.tag, rule.action.upper(),
                                   self._text(rule, 'Refused')))
        self._then(rule)

    def _then(self, rule):
        if rule.then == 'bye':
            self.put('* BYE %s\r\n' % rule.bye_text)
            self.closing = True
        elif rule.then == 'eof':
            self.closing = True

    def execute(self, cmd):
        self.override = None
        self.fetch_faults = {}
        for rule in self.server._fire(cmd, 'command'):
            if rule.delay:
                self.flush()
                self.sleep(rule.delay)
            a = rule.action
            if a == 'delay':
                self.flush()
                self.sleep(rule.seconds)
            elif a == 'untagged':
                for line in rule.lines:
                    self.put(line.rstrip(b'\r\n') + b'\r\n')
            elif a == 'ok':
                self.override = rule
            elif a in ('fetch_extra', 'literal_eof'):
                self.fetch_faults[a] = rule
            elif a in ('shrink_exists', 'rewind_uidnext', 'set_uidvalidity'):
                with self.server.lock:
                    self._state_fault(cmd, rule)
            elif a in ('no', 'bad'):
                self._respond_rule(cmd, rule)
                return
            elif a == 'bye':
                self.put('* BYE %s\r\n' % (rule.text or
                                             'Server shutting down'))
                self.closing = True
                return
            elif a == 'eof':
                self.closing = True
                return
            elif a == 'silent':
                self.flush()
                self.silent = True
                return
        handler, states = self.COMMANDS.get(cmd.name, (None, None))
        if handler is None:
            self.put('%s BAD Unknown command %s\r\n' % (cmd.tag, cmd.name))
            return
        if self.state not in states:
            self.put('%s BAD Command %s not valid in state %s\r\n' % (
                cmd.tag, cmd.name, self.state))
            return
        try:
            if cmd.name in self.UNLOCKED:
                handler(self, cmd)
            else:
                with self.server.lock:
                    handler(self, cmd)
        except ProtocolError as e:
            self.put('%s BAD %s\r\n' % (cmd.tag, e))
        if self.override is not None:
            self._then(self.override)

    def tagged(self, cmd, status, text, code=None):
        if status == 'OK' and self.override is not None:
            if self.override.code is not None:
                code = self.override.code
            if self.override.text is not None:
                text = self.override.text
        self.put('%s %s %s%s\r\n' % (cmd.tag, status,
                                     '[%s] ' % code if code else '', text))

    def _state_fault(self, cmd, rule):
        f = self.folder
        if rule.action != 'shrink_exists' and cmd.args and \
                cmd.name in ('SELECT', 'EXAMINE', 'STATUS'):
            f = self._get_folder(cmd.args[0])
        if f is None:
            return
        if rule.action == 'shrink_exists':
            gone = {m.uid for m in f.msgs[len(f.msgs) - rule.by:]} \
                if rule.by > 0 else set()
            f.msgs = [m for m in f.msgs if m.uid not in gone]
            if self.folder is f:
                self.view = [u for u in self.view if u not in gone]
                self.put('* %d EXISTS\r\n' % len(self.view))
        elif rule.action == 'rewind_uidnext':
            f.uidnext = max(1, f.uidnext - rule.by)
            f.msgs = [m for m in f.msgs if m.uid < f.uidnext]
        elif rule.action == 'set_uidvalidity':
            f.uidvalidity = int(rule.value)

    # -- the store

    @property
    def store(self):
        return self.server.store

    def _norm_name(self, name):
        name = _s(name if not isinstance(name, list) else '')
        sep = self.script['namespace'][1]
        if name.upper() == 'INBOX':
            return 'INBOX'
        if sep and name.upper().startswith('INBOX' + sep):
            name = 'INBOX' + name[5:]
        if sep and self.script['collapse_separators']:
            while sep + sep in name:
                name = name.replace(sep + sep, sep)
        if sep and name.endswith(sep) and len(name) > 1:
            name = name[:-1]
        return name

    def _get_folder(self, name):
        f = self.store.get(self._norm_name(name))
        return f if f is not None and not f.deleted else None

    def sync(self, expunges=True):
        """Tell the session about changes made by others (or by faults)."""
        f = self.folder
        if f is None:
            return
        current = [m.uid for m in f.msgs]
        if expunges:
            present = set(current)
            for i in range(len(self.view) - 1, -1, -1):
                if self.view[i] not in present:
                    self.put('* %d EXPUNGE\r\n' % (i + 1))
                    del self.view[i]
        known = set(self.view)
        new = [u for u in current if u not in known]
        if new:
            self.view.extend(new)
            self.put('* %d EXISTS\r\n' % len(self.view))

    def _messages(self, set_text, uid):
        """[(seq, Message)] of the session's view that SET_TEXT selects."""
        ranges = parse_set(set_text)
        f = self.folder
        by_uid = {m.uid: m for m in f.msgs}
        out = []
        if uid:
            star = max(self.view) if self.view else 0
            for seq, u in enumerate(self.view, 1):
                if in_set(ranges, u, star) and u in by_uid:
                    out.append((seq, by_uid[u]))
        else:
            star = len(self.view)
            for lo, hi in ranges:
                for v in (lo, hi):
                    if v is not None and v > star:
                        raise ProtocolError('Invalid messageset')
            for seq, u in enumerate(self.view, 1):
                if in_set(ranges, seq, star) and u in by_uid:
                    out.append((seq, by_uid[u]))
        return out

    def _permanent(self):
        return self.script['permanentflags'] or DEFAULT_PERMANENTFLAGS

    def _norm_flags(self, f, flags):
        """Canonical flags for folder F: system flags spelled properly,
        keywords in the folder's first spelling, unknown ones dropped when
        PERMANENTFLAGS has no \\*.  ProtocolError for bad system flags."""
        perm = self._permanent()
        allow_new = '\\*' in perm
        permset = {p.lower() for p in perm}
        out = []
        for fl in flags:
            low = fl.lower()
            if fl.startswith('\\'):
                if low not in SYSTEM_FLAGS:
                    raise ProtocolError('Invalid system flag %s' % fl)
                if low in permset:
                    out.append(SYSTEM_FLAGS[low])
                continue
            if not allow_new and low not in permset and low not in f.keywords:
                continue
            out.append(f.keywords.get(low, fl))
        seen, uniq = set(), []
        for fl in out:
            if fl.lower() not in seen:
                seen.add(fl.lower())
                uniq.append(fl)
        return uniq

    def _keyword_check(self, f, flag_lists):
        limit = self.script['keyword_limit']
        if limit is None:
            return None
        new = set(f.keywords)
        for flags in flag_lists:
            new.update(fl.lower() for fl in flags if not fl.startswith('\\'))
        if len(new) > limit:
            return self.script['keyword_limit_response']
        return None

    def _learn_keywords(self, f, flags):
        for fl in flags:
            if not fl.startswith('\\'):
                f.keywords.setdefault(fl.lower(), fl)

    def _flag_list(self, flags):
        return '(%s)' % ' '.join(flags)

    # -- commands: any state

    def c_capability(self, cmd):
        self.put('* CAPABILITY %s\r\n' % ' '.join(self.capabilities()))
        self.tagged(cmd, 'OK', 'Capability completed')

    def c_noop(self, cmd):
        self.sync()
        self.tagged(cmd, 'OK', 'NOOP completed')

    def c_logout(self, cmd):
        self.put('* BYE Logging out\r\n')
        self.tagged(cmd, 'OK', 'Logout completed')
        self.closing = True

    def c_id(self, cmd):
        self.put('* ID ("name" "postino-fakeserver")\r\n')
        self.tagged(cmd, 'OK', 'ID completed')

    def c_enable(self, cmd):
        on = [str(a).upper() for a in cmd.args
              if str(a).upper() == 'CONDSTORE' and self.has_cap('CONDSTORE')]
        if on:
            self.condstore = True
        self.put('* ENABLED%s\r\n' % ''.join(' ' + x for x in on))
        self.tagged(cmd, 'OK', 'Enabled')

    # -- not authenticated

    def c_starttls(self, cmd):
        if self.server.tls != 'starttls' or self.tls_active:
            self.put('%s BAD STARTTLS not available\r\n' % cmd.tag)
            return
        self.flush()
        self.start_tls('%s OK Begin TLS negotiation now\r\n' % cmd.tag)

    def _login_ok(self, cmd, user):
        self.user = user
        self.state = 'auth'
        code = None
        if self.script['login_capability']:
            code = 'CAPABILITY ' + ' '.join(self.capabilities())
        self.tagged(cmd, 'OK', 'Logged in', code)

    def c_login(self, cmd):
        if len(cmd.args) != 2 or isinstance(cmd.args[0], list) or \
                isinstance(cmd.args[1], list):
            raise ProtocolError('LOGIN wants user and password')
        if self.script['logindisabled'] and not self.tls_active:
            self.tagged(cmd, 'NO', 'Plaintext login disallowed',
                        'PRIVACYREQUIRED')
            return
        user, pw = _s(cmd.args[0]), _s(cmd.args[1])
        if self.script['users'].get(user) == pw:
            self._login_ok(cmd, user)
        else:
            self.tagged(cmd, 'NO', 'Authentication failed.',
                        'AUTHENTICATIONFAILED')

    def c_authenticate(self, cmd):
        if not cmd.args:
            raise ProtocolError('AUTHENTICATE wants a mechanism')
        mech = str(cmd.args[0]).upper()
        if mech != 'PLAIN' or not self.has_cap('AUTH=PLAIN'):
            self.tagged(cmd, 'NO', 'Unsupported authentication mechanism')
            return
        if len(cmd.args) > 1:
            resp = _b(str(cmd.args[1]))
        else:
            self.put('+ \r\n')
            self.flush()
            resp = self.read_line().rstrip(b'\r\n')
        cmd.sasl.append(resp)
        if resp == b'*':
            self.tagged(cmd, 'BAD', 'Authentication cancelled')
            return
        try:
            raw = base64.b64decode(resp if resp != b'=' else b'',
                                   validate=True)
            _authz, user, pw = raw.split(b'\0')
        except (ValueError, base64.binascii.Error):
            self.tagged(cmd, 'BAD', 'Invalid SASL response')
            return
        with self.server.lock:
            if self.script['users'].get(_s(user)) == _s(pw):
                self._login_ok(cmd, _s(user))
            else:
                self.tagged(cmd, 'NO', 'Authentication failed.',
                            'AUTHENTICATIONFAILED')

    # -- authenticated

    def c_namespace(self, cmd):
        prefix, sep = self.script['namespace']
        self.put(b'* NAMESPACE ((' + quote(prefix) + b' ' + quote(sep) +
                 b')) NIL NIL\r\n')
        self.tagged(cmd, 'OK', 'Namespace completed')

    def _pattern(self, ref, pat):
        sep = self.script['namespace'][1]
        full = _s(ref) + _s(pat)
        rx = ''
        for ch in full:
            if ch == '*':
                rx += '.*'
            elif ch == '%':
                rx += '[^%s]*' % re.escape(sep) if sep else '.*'
            else:
                rx += re.escape(ch)
        return re.compile('^' + rx + '$', re.S), full

    def _attrs(self, f):
        sep = self.script['namespace'][1]
        kids = any(g.name.startswith(f.name + sep) and not g.deleted
                   for g in self.store.values() if g is not f)
        return ['\\HasChildren' if kids else '\\HasNoChildren'] + \
            f.special_use

    def c_list(self, cmd, lsub=False):
        args = list(cmd.args)
        select_opts, return_opts = [], []
        if args and isinstance(args[0], list):
            select_opts = [str(x).upper() for x in args.pop(0)]
        if len(args) >= 3 and str(args[-2]).upper() == 'RETURN':
            return_opts = args[-1]
            args = args[:-2]
        if len(args) != 2:
            raise ProtocolError('LIST wants reference and pattern')
        ref, pats = args
        pats = pats if isinstance(pats, list) else [pats]
        sep = self.script['namespace'][1]
        sepq = quote(sep)
        if not lsub and len(pats) == 1 and _s(pats[0]) == '':
            self.put(b'* LIST (\\Noselect) ' + sepq + b' ""\r\n')
            self.tagged(cmd, 'OK', 'List completed')
            return
        status_items = None
        ret = [str(x).upper() if not isinstance(x, list) else x
               for x in return_opts]
        for i, x in enumerate(ret):
            if x == 'STATUS' and i + 1 < len(ret):
                status_items = ret[i + 1]
        subs = self.store.subscribed
        names = set(subs) if lsub or 'SUBSCRIBED' in select_opts else \
            {n for n, f in self.store.items() if not f.deleted}
        for name in sorted(names, key=lambda n: (n != 'INBOX', n)):
            ok = False
            for p in pats:
                rx, _ = self._pattern(ref, p)
                # INBOX is case-insensitive: 'inbox' and 'Inbox' match it.
                if rx.match(name) or (name == 'INBOX' and re.match(
                        rx.pattern, name, re.I | re.S)):
                    ok = True
            if not ok:
                continue
            f = self._get_folder(name)
            attrs = self._attrs(f) if f else ['\\NonExistent' if not lsub
                                              else '\\Noselect']
            if 'SPECIAL-USE' in select_opts and not (f and f.special_use):
                continue
            if (not lsub and name in subs and
                    ('SUBSCRIBED' in select_opts or 'SUBSCRIBED' in ret)):
                attrs.append('\\Subscribed')
            self.put(b'* ' + (b'LSUB' if lsub else b'LIST') + b' (' +
                     ' '.join(attrs).encode() + b') ' + sepq + b' ' +
                     quote(name) + b'\r\n')
            if status_items is not None and f is not None:
                self._status_line(f, status_items)
        self.tagged(cmd, 'OK', 'List completed')

    def c_lsub(self, cmd):
        self.c_list(cmd, lsub=True)

    def c_create(self, cmd):
        if len(cmd.args) < 1:
            raise ProtocolError('CREATE wants a mailbox')
        raw = _s(cmd.args[0])
        prefix, sep = self.script['namespace']
        bad = [c for c in self.script['refuse_chars'] if c in raw]
        if bad:
            self.tagged(cmd, 'NO', 'Invalid mailbox name')
            return
        name = self._norm_name(raw)
        if name == 'INBOX' or self._get_folder(name):
            if self.script['create_exists_code']:
                self.tagged(cmd, 'NO', 'Mailbox already exists',
                            'ALREADYEXISTS')
            else:
                self.tagged(cmd, 'NO', 'Mailbox already exists')
            return
        if self.script['refuse_toplevel'] and prefix and \
                not name.startswith(self._norm_name(prefix) + sep):
            self.tagged(cmd, 'NO', 'Permission denied')
            return
        if self.script['create_parents'] and sep:
            parts = name.split(sep)
            for i in range(1, len(parts)):
                parent = sep.join(parts[:i])
                if parent and not self._get_folder(parent) and \
                        (prefix == '' or parent + sep != prefix):
                    self.store.create(parent)
        self.store.create(name)
        self.tagged(cmd, 'OK', 'Create completed')

    def c_delete(self, cmd):
        if not cmd.args:
            raise ProtocolError('DELETE wants a mailbox')
        f = self._get_folder(cmd.args[0])
        if f is None or f.name == 'INBOX':
            self.tagged(cmd, 'NO', 'Mailbox cannot be deleted', 'NONEXISTENT'
                        if f is None else 'CANNOT')
            return
        f.deleted = True
        del self.store[f.name]
        self.tagged(cmd, 'OK', 'Delete completed')

    def c_subscribe(self, cmd, on=True):
        if not cmd.args:
            raise ProtocolError('SUBSCRIBE wants a mailbox')
        name = self._norm_name(cmd.args[0])
        if on:
            self.store.subscribed.add(name)
        else:
            self.store.subscribed.discard(name)
        self.tagged(cmd, 'OK', '%sSubscribe completed' % ('' if on else 'Un'))

    def c_unsubscribe(self, cmd):
        self.c_subscribe(cmd, on=False)

    def _status_line(self, f, items):
        vals = []
        for it in items:
            it = str(it).upper()
            v = {'MESSAGES': len(f.msgs), 'RECENT': 0,
                 'UIDNEXT': f.uidnext, 'UIDVALIDITY': f.uidvalidity,
                 'UNSEEN': sum(1 for m in f.msgs if '\\Seen' not in m.flags),
                 'SIZE': f.size()}.get(it)
            if it == 'HIGHESTMODSEQ' and self.has_cap('CONDSTORE'):
                v = f.highestmodseq
            if v is None:
                raise ProtocolError('Unknown STATUS item %s' % it)
            vals.append('%s %d' % (it, v))
        self.put(b'* STATUS ' + quote(f.name) + b' (' +
                 ' '.join(vals).encode() + b')\r\n')

    def c_status(self, cmd):
        if len(cmd.args) != 2 or not isinstance(cmd.args[1], list):
            raise ProtocolError('STATUS wants a mailbox and items')
        f = self._get_folder(cmd.args[0])
        if f is None:
            self.tagged(cmd, 'NO', 'Mailbox does not exist', 'NONEXISTENT')
            return
        self._status_line(f, cmd.args[1])
        self.tagged(cmd, 'OK', 'Status completed')

    def c_select(self, cmd, readonly=False):
        if not cmd.args:
            raise ProtocolError('SELECT wants a mailbox')
        params = cmd.args[1] if len(cmd.args) > 1 and \
            isinstance(cmd.args[1], list) else []
        if any(str(p).upper() == 'CONDSTORE' for p in params):
            self.condstore = True
        f = self._get_folder(cmd.args[0])
        self.folder, self.state, self.view = None, 'auth', []
        if f is None:
            self.tagged(cmd, 'NO', 'Mailbox does not exist', 'NONEXISTENT')
            return
        self.folder, self.state, self.readonly = f, 'selected', readonly
        self.view = [m.uid for m in f.msgs]
        flags = list(SYSTEM_FLAGS.values()) + list(f.keywords.values())
        perm = [p for p in self._permanent()]
        if '\\*' not in perm:
            perm = perm + [k for k in f.keywords.values() if k not in perm]
        self.put('* FLAGS %s\r\n' % self._flag_list(flags))
        self.put('* OK [PERMANENTFLAGS %s] Flags permitted\r\n' %
                 self._flag_list([] if readonly else perm))
        self.put('* %d EXISTS\r\n* 0 RECENT\r\n' % len(self.view))
        unseen = [i for i, m in enumerate(f.msgs, 1)
                  if '\\Seen' not in m.flags]
        if unseen:
            self.put('* OK [UNSEEN %d] First unseen\r\n' % unseen[0])
        self.put('* OK [UIDVALIDITY %d] UIDs valid\r\n' % f.uidvalidity)
        self.put('* OK [UIDNEXT %d] Predicted next UID\r\n' % f.uidnext)
        if self.has_cap('CONDSTORE'):
            self.put('* OK [HIGHESTMODSEQ %d] Highest\r\n' % f.highestmodseq)
        self.tagged(cmd, 'OK', '%s completed' % cmd.name,
                    'READ-ONLY' if readonly else 'READ-WRITE')

    def c_examine(self, cmd):
        self.c_select(cmd, readonly=True)

    def c_append(self, cmd):
        f = self._get_folder(cmd.args[0])
        if f is None:
            self.tagged(cmd, 'NO', 'Mailbox does not exist', 'TRYCREATE')
            return
        prepared = []
        size = sum(g.size() for g in self.store.values())
        for am in cmd.messages:
            for fl in am.flags:
                if fl.lower() == '\\recent':
                    raise ProtocolError('Invalid system flag \\Recent')
            flags = self._norm_flags(f, am.flags)
            try:
                date = parse_date(am.date) if am.date is not None else \
                    (int(time.time()), 0)
            except ValueError:
                raise ProtocolError('Invalid date-time')
            if self.script['refuse_pre1970'] and date[0] < 0:
                st, code, text = self.script['pre1970_response']
                self.tagged(cmd, st, text, code)
                return
            lim = self.script['max_message_size']
            if lim is not None and len(am.data) > lim:
                self.tagged(cmd, 'NO', O365_TOOBIG, 'TOOBIG')
                return
            size += len(am.data)
            q = self.script['quota_bytes']
            if q is not None and size > q:
                self.tagged(cmd, 'NO', 'Quota exceeded (mailbox is full)',
                            'OVERQUOTA')
                return
            prepared.append((am.data, flags, date))
        refusal = self._keyword_check(f, [p[1] for p in prepared])
        if refusal:
            self.tagged(cmd, refusal[0], refusal[2], refusal[1])
            return
        uids = []
        for data, flags, date in prepared:
            self._learn_keywords(f, flags)
            f.highestmodseq += 1
            m = Message(f.uidnext, bytes(data), flags, date, f.highestmodseq)
            f.uidnext += 1
            f.msgs.append(m)
            uids.append(m.uid)
        if self.folder is f:
            self.sync(expunges=False)
        code = None
        if self.has_cap('UIDPLUS'):
            code = 'APPENDUID %d %s' % (f.uidvalidity, uid_set_text(uids))
        self.tagged(cmd, 'OK', 'Append completed', code)

    def c_idle(self, cmd):
        self.put('+ idling\r\n')
        with self.server.lock:
            self.sync()
        self.flush()
        deadline = time.monotonic() + self.script['timeout']
        while time.monotonic() < deadline:
            line = self.read_line_timeout(0.2)
            if line is not None:
                if line.strip().upper() == b'DONE':
                    self.tagged(cmd, 'OK', 'Idle completed')
                else:
                    self.tagged(cmd, 'BAD', 'Expected DONE')
                return
            with self.server.lock:
                self.sync()
            self.flush()
        self.put('* BYE Autologout; idle for too long\r\n')
        self.closing = True

    # -- selected

    def _parse_fetch_items(self, spec):
        items = spec if isinstance(spec, list) else [spec]
        out = []
        for it in items:
            if isinstance(it, list):
                raise ProtocolError('bad FETCH item list')
            up = str(it).upper()
            if up in ('ALL', 'FAST', 'FULL'):
                # ENVELOPE and BODY are not implemented: FAST for all three.
                out += [('FLAGS',), ('INTERNALDATE',), ('RFC822.SIZE',)]
                continue
            if up in ('UID', 'FLAGS', 'INTERNALDATE', 'RFC822.SIZE',
                      'MODSEQ', 'RFC822', 'RFC822.HEADER', 'RFC822.TEXT'):
                out.append((up,))
                continue
            m = re.match(r'^BODY(\.PEEK)?\[([^\]]*)\](?:<(\d+)\.(\d+)>)?$',
                         str(it), re.I)
            if not m:
                raise ProtocolError('Unsupported FETCH item %s' % it)
            section = m.group(2)
            sm = re.match(r'^(HEADER\.FIELDS(?:\.NOT)?) \((.*)\)$', section,
                          re.I)
            if sm:
                kind = sm.group(1).upper()
                fields = [x.strip('"') for x in sm.group(2).split()]
            elif section.upper() in ('', 'HEADER', 'TEXT', '1'):
                kind, fields = section.upper(), []
            else:
                raise ProtocolError('Unsupported section %s' % section)
            partial = (int(m.group(3)), int(m.group(4))) if m.group(3) \
                else None
            out.append(('BODY', bool(m.group(1)), section, kind, fields,
                        partial))
        return out

    def _section(self, m, kind, fields):
        if kind == '':
            return m.data
        if kind == 'HEADER':
            return header_block(m.data)
        if kind in ('TEXT', '1'):
            return m.data[len(header_block(m.data)):]
        return header_fields(m.data, fields, negate=kind.endswith('.NOT'))

    def c_fetch(self, cmd, uid=False):
        if len(cmd.args) < 2:
            raise ProtocolError('FETCH wants a set and items')
        items = self._parse_fetch_items(cmd.args[1])
        changedsince = None
        if len(cmd.args) > 2:
            mods = cmd.args[2] if isinstance(cmd.args[2], list) else []
            for i, x in enumerate(mods):
                if str(x).upper() == 'CHANGEDSINCE' and i + 1 < len(mods):
                    changedsince = int(mods[i + 1])
            if changedsince is None:
                raise ProtocolError('Unsupported FETCH modifier')
            self.condstore = True
        if any(i[0] == 'MODSEQ' for i in items):
            self.condstore = True
        if uid and not any(i[0] == 'UID' for i in items):
            items.insert(0, ('UID',))
        if changedsince is not None and not any(i[0] == 'MODSEQ'
                                                for i in items):
            items.append(('MODSEQ',))
        self.sync(expunges=uid)
        selected = self._messages(cmd.args[0], uid)
        if changedsince is not None:
            selected = [(s, m) for s, m in selected if m.modseq > changedsince]
        extra = self.fetch_faults.get('fetch_extra')
        if extra is not None:
            selected = self._fetch_extra(selected, extra)
        for seq, m in selected:
            if not self._fetch_one(seq, m, items):
                return      # a literal fault ended the connection
        self.tagged(cmd, 'OK', 'Fetch completed')

    def _fetch_extra(self, selected, rule):
        out = []
        for seq, m in selected:
            out.append((seq, m))
            if rule.duplicate:
                out.append((seq, m))
        by_uid = {u: i for i, u in enumerate(self.view, 1)}
        for u in rule.unrequested:
            m = self.folder.by_uid(u)
            if m is None:       # a phantom: a UID the folder never had
                m = Message(u, b'Subject: phantom\r\n\r\nphantom\r\n', [],
                            (0, 0), 1)
            out.append((by_uid.get(u, max(1, len(self.view))), m))
        return out

    def _fetch_one(self, seq, m, items):
        parts = []
        seen_change = False
        for it in items:
            name = it[0]
            if name == 'UID':
                parts.append(b'UID %d' % m.uid)
            elif name == 'FLAGS':
                parts.append(('FLAGS %s' % self._flag_list(m.flags)).encode())
            elif name == 'INTERNALDATE':
                parts.append(('INTERNALDATE "%s"' % format_date(m.date))
                             .encode())
            elif name == 'RFC822.SIZE':
                parts.append(b'RFC822.SIZE %d' % len(m.data))
            elif name == 'MODSEQ':
                parts.append(b'MODSEQ (%d)' % m.modseq)
            else:
                if name == 'BODY':
                    _, peek, section, kind, fields, partial = it
                    data = self._section(m, kind, fields)
                    label = 'BODY[%s]' % section
                    if partial:
                        data = data[partial[0]:partial[0] + partial[1]]
                        label += '<%d>' % partial[0]
                else:
                    peek = name == 'RFC822.HEADER'
                    data = {'RFC822': m.data,
                            'RFC822.HEADER': header_block(m.data),
                            'RFC822.TEXT': m.data[len(header_block(
                                m.data)):]}[name]
                    label = name
                if not peek and not self.readonly and \
                        '\\Seen' not in m.flags and m in self.folder.msgs:
                    m.flags.append('\\Seen')
                    self.folder.highestmodseq += 1
                    m.modseq = self.folder.highestmodseq
                    seen_change = True
                fault = self.fetch_faults.get('literal_eof')
                if fault is not None:
                    announce = fault.announce if fault.announce is not None \
                        else len(data)
                    send = fault.send if fault.send is not None else \
                        min(len(data) // 2, announce)
                    body = (data * (1 + send // max(1, len(data))))[:send]
                    head = b'* %d FETCH (' % seq + b' '.join(parts) + \
                        (b' ' if parts else b'')
                    self.put(head + label.encode() + b' {%d}\r\n' % announce +
                             body)
                    self.closing = True
                    return False
                parts.append(label.encode() + b' {%d}\r\n' % len(data) + data)
        if seen_change and not any(i[0] == 'FLAGS' for i in items):
            parts.append(('FLAGS %s' % self._flag_list(m.flags)).encode())
        line = b'* %d FETCH (' % seq + b' '.join(parts) + b')\r\n'
        self.put(line)
        return True

    def c_uid_fetch(self, cmd):
        self.c_fetch(cmd, uid=True)

    def c_store(self, cmd, uid=False):
        args = list(cmd.args)
        if len(args) < 3:
            raise ProtocolError('STORE wants a set, an operation and flags')
        unchanged = None
        if isinstance(args[1], list):
            mods = args.pop(1)
            if len(mods) == 2 and str(mods[0]).upper() == 'UNCHANGEDSINCE':
                unchanged = int(mods[1])
                self.condstore = True
            else:
                raise ProtocolError('Unsupported STORE modifier')
        op = str(args[1]).upper()
        m_op = re.match(r'^([+-]?)FLAGS(\.SILENT)?$', op)
        if not m_op:
            raise ProtocolError('Bad STORE operation %s' % op)
        flags = args[2] if isinstance(args[2], list) else args[2:]
        flags = [str(x) for x in flags]
        if self.readonly:
            self.tagged(cmd, 'NO', 'Mailbox is read-only', 'READ-ONLY')
            return
        self.sync(expunges=uid)
        f = self.folder
        targets = self._messages(args[0], uid)
        new = self._norm_flags(f, flags)
        if m_op.group(1) != '-':
            refusal = self._keyword_check(f, [new])
            if refusal:
                self.tagged(cmd, refusal[0], refusal[2], refusal[1])
                return
            self._learn_keywords(f, new)
        modified = []
        for seq, m in targets:
            if unchanged is not None and m.modseq > unchanged:
                modified.append(m.uid if uid else seq)
                continue
            low = {x.lower() for x in new}
            if m_op.group(1) == '+':
                after = m.flags + [x for x in new if x.lower() not in
                                   {y.lower() for y in m.flags}]
            elif m_op.group(1) == '-':
                after = [x for x in m.flags if x.lower() not in low]
            else:
                after = list(new)
            changed = sorted(x.lower() for x in after) != \
                sorted(x.lower() for x in m.flags)
            if changed:
                m.flags = after
                f.highestmodseq += 1
                m.modseq = f.highestmodseq
            if not m_op.group(2) or (changed and self.condstore and
                                     unchanged is not None):
                items = []
                if uid:
                    items.append('UID %d' % m.uid)
                items.append('FLAGS %s' % self._flag_list(m.flags))
                if self.condstore:
                    items.append('MODSEQ (%d)' % m.modseq)
                self.put('* %d FETCH (%s)\r\n' % (seq, ' '.join(items)))
        if modified:
            self.tagged(cmd, 'OK', 'Conditional STORE failed',
                        'MODIFIED %s' % uid_set_text(modified))
        else:
            self.tagged(cmd, 'OK', 'Store completed')

    def c_uid_store(self, cmd):
        self.c_store(cmd, uid=True)

    def _expunge(self, uids=None, announce=True):
        f = self.folder
        gone = {m.uid for m in f.msgs if '\\Deleted' in m.flags and
                (uids is None or m.uid in uids)}
        if not gone:
            return
        f.msgs = [m for m in f.msgs if m.uid not in gone]
        f.highestmodseq += 1
        for i in range(len(self.view) - 1, -1, -1):
            if self.view[i] in gone:
                if announce:
                    self.put('* %d EXPUNGE\r\n' % (i + 1))
                del self.view[i]

    def c_expunge(self, cmd):
        if self.readonly:
            self.tagged(cmd, 'NO', 'Mailbox is read-only', 'READ-ONLY')
            return
        self.sync()
        self._expunge()
        self.tagged(cmd, 'OK', 'Expunge completed')

    def c_uid_expunge(self, cmd):
        if not cmd.args:
            raise ProtocolError('UID EXPUNGE wants a set')
        if self.readonly:
            self.tagged(cmd, 'NO', 'Mailbox is read-only', 'READ-ONLY')
            return
        self.sync()
        uids = {m.uid for _, m in self._messages(cmd.args[0], True)}
        self._expunge(uids)
        self.tagged(cmd, 'OK', 'Expunge completed')

    def c_copy(self, cmd, uid=False, move=False):
        if len(cmd.args) != 2:
            raise ProtocolError('COPY wants a set and a mailbox')
        dest = self._get_folder(cmd.args[1])
        if dest is None:
            self.tagged(cmd, 'NO', 'Mailbox does not exist', 'TRYCREATE')
            return
        if move and self.readonly:
            self.tagged(cmd, 'NO', 'Mailbox is read-only', 'READ-ONLY')
            return
        self.sync(expunges=uid)
        src = self._messages(cmd.args[0], uid)
        pairs = []
        for _, m in src:
            self._learn_keywords(dest, m.flags)
            dest.highestmodseq += 1
            n = Message(dest.uidnext, m.data, m.flags, m.date,
                        dest.highestmodseq)
            dest.uidnext += 1
            dest.msgs.append(n)
            pairs.append((m.uid, n.uid))
        code = None
        if pairs and self.has_cap('UIDPLUS'):
            code = 'COPYUID %d %s %s' % (
                dest.uidvalidity, ','.join(str(a) for a, _ in pairs),
                ','.join(str(b) for _, b in pairs))
        if move:
            if code:
                self.put('* OK [%s] Moved\r\n' % code)
                code = None
            for _, m in src:
                if '\\Deleted' not in m.flags:
                    m.flags.append('\\Deleted')
            self._expunge({a for a, _ in pairs})
        if self.folder is dest:
            self.sync(expunges=False)
        self.tagged(cmd, 'OK', 'Move completed' if move else 'Copy completed',
                    code)

    def c_uid_copy(self, cmd):
        self.c_copy(cmd, uid=True)

    def c_move(self, cmd):
        self.c_copy(cmd, move=True)

    def c_uid_move(self, cmd):
        self.c_copy(cmd, uid=True, move=True)

    def c_close(self, cmd):
        if not self.readonly:
            self._expunge(announce=False)
        self.folder, self.state, self.view = None, 'auth', []
        self.tagged(cmd, 'OK', 'Close completed')

    def c_unselect(self, cmd):
        self.folder, self.state, self.view = None, 'auth', []
        self.tagged(cmd, 'OK', 'Unselect completed')

    def c_check(self, cmd):
        self.sync()
        self.tagged(cmd, 'OK', 'Check completed')

    def c_search(self, cmd, uid=False):
        self.sync(expunges=uid)
        args = list(cmd.args)
        if len(args) >= 2 and str(args[0]).upper() == 'CHARSET':
            args = args[2:]
        star_uid = max(self.view) if self.view else 0
        all_msgs = self._messages('1:*', False) if self.view else []

        def keys(toks):
            # Conjunction of the keys in TOKS (consumed from the front).
            preds = []
            while toks:
                preds.append(key(toks))
            return lambda s, m: all(p(s, m) for p in preds)

        def key(toks):
            t = toks.pop(0)
            if isinstance(t, list):
                return keys(list(t))
            k = str(t).upper()
            flag = {'SEEN': '\\Seen', 'DELETED': '\\Deleted',
                    'FLAGGED': '\\Flagged', 'ANSWERED': '\\Answered',
                    'DRAFT': '\\Draft'}
            if k == 'ALL':
                return lambda s, m: True
            if k in flag:
                return lambda s, m, f=flag[k]: f in m.flags
            if k.startswith('UN') and k[2:] in flag:
                return lambda s, m, f=flag[k[2:]]: f not in m.flags
            if k in ('KEYWORD', 'UNKEYWORD'):
                kw = str(toks.pop(0)).lower()
                has = k == 'KEYWORD'
                return lambda s, m: (kw in {x.lower() for x in m.flags}) == has
            if k == 'NOT':
                p = key(toks)
                return lambda s, m: not p(s, m)
            if k == 'OR':
                a, b = key(toks), key(toks)
                return lambda s, m: a(s, m) or b(s, m)
            if k == 'UID':
                r = parse_set(toks.pop(0))
                return lambda s, m: in_set(r, m.uid, star_uid)
            if k in ('LARGER', 'SMALLER'):
                n = int(toks.pop(0))
                return (lambda s, m: len(m.data) > n) if k == 'LARGER' \
                    else (lambda s, m: len(m.data) < n)
            if k == 'MODSEQ':
                n = int(toks.pop(0))
                self.condstore = True
                return lambda s, m: m.modseq >= n
            if k == 'HEADER':
                field, value = str(toks.pop(0)), _b(toks.pop(0)).lower()
                return lambda s, m: value in header_fields(
                    m.data, [field]).lower()
            if re.match(r'^[\d*][\d:,*]*$', k):
                r = parse_set(k)
                return lambda s, m: in_set(r, s, len(self.view))
            raise ProtocolError('Unsupported SEARCH key %s' % k)

        pred = keys(args)
        hits = [m.uid if uid else s for s, m in all_msgs if pred(s, m)]
        self.put('* SEARCH%s\r\n' % ''.join(' %d' % h for h in hits))
        self.tagged(cmd, 'OK', 'Search completed')

    def c_uid_search(self, cmd):
        self.c_search(cmd, uid=True)

    ANY = ('nonauth', 'auth', 'selected')
    AUTH = ('auth', 'selected')
    SEL = ('selected',)
    COMMANDS = {
        'CAPABILITY': (c_capability, ANY), 'NOOP': (c_noop, ANY),
        'LOGOUT': (c_logout, ANY), 'ID': (c_id, ANY),
        'STARTTLS': (c_starttls, ('nonauth',)),
        'LOGIN': (c_login, ('nonauth',)),
        'AUTHENTICATE': (c_authenticate, ('nonauth',)),
        'ENABLE': (c_enable, AUTH), 'NAMESPACE': (c_namespace, AUTH),
        'LIST': (c_list, AUTH), 'LSUB': (c_lsub, AUTH),
        'CREATE': (c_create, AUTH), 'DELETE': (c_delete, AUTH),
        'SUBSCRIBE': (c_subscribe, AUTH),
        'UNSUBSCRIBE': (c_unsubscribe, AUTH),
        'STATUS': (c_status, AUTH), 'SELECT': (c_select, AUTH),
        'EXAMINE': (c_examine, AUTH), 'APPEND': (c_append, AUTH),
        'IDLE': (c_idle, AUTH),
        'FETCH': (c_fetch, SEL), 'UID FETCH': (c_uid_fetch, SEL),
        'STORE': (c_store, SEL), 'UID STORE': (c_uid_store, SEL),
        'EXPUNGE': (c_expunge, SEL), 'UID EXPUNGE': (c_uid_expunge, SEL),
        'COPY': (c_copy, SEL), 'UID COPY': (c_uid_copy, SEL),
        'MOVE': (c_move, SEL), 'UID MOVE': (c_uid_move, SEL),
        'SEARCH': (c_search, SEL), 'UID SEARCH': (c_uid_search, SEL),
        'CLOSE': (c_close, SEL), 'UNSELECT': (c_unselect, SEL),
        'CHECK': (c_check, SEL),
    }
    # These talk to the client in the middle: they take the lock themselves.
    UNLOCKED = ('STARTTLS', 'AUTHENTICATE', 'IDLE')


class _Store(dict):
    """{name: Folder} plus the subscription list."""

    def __init__(self, script):
        super().__init__()
        self.subscribed = set()
        self.next_uidvalidity = 1700000001
        uv = script['uidvalidity']
        special = script['special_use']
        for name, msgs in script['folders'].items():
            f = self.create(name, uv.get(name) if isinstance(uv, dict)
                            else uv)
            su = special.get(name, ())
            f.special_use = [su] if isinstance(su, str) else list(su)
            for spec in msgs:
                if not isinstance(spec, dict):
                    spec = {'data': spec}
                uid = spec.get('uid') or f.uidnext
                flags = list(spec.get('flags', ()))
                for fl in flags:
                    if not fl.startswith('\\'):
                        f.keywords.setdefault(fl.lower(), fl)
                f.highestmodseq += 1
                f.msgs.append(Message(uid, _b(spec['data']), flags,
                                      _date_of(spec.get('date')),
                                      f.highestmodseq))
                f.uidnext = max(f.uidnext, uid + 1)
            f.msgs.sort(key=lambda m: m.uid)
        if 'INBOX' not in self:
            self.create('INBOX')
        subs = script['subscribed']
        self.subscribed = set(self) if subs is None else set(subs)

    def create(self, name, uidvalidity=None):
        if uidvalidity is None:
            uidvalidity = self.next_uidvalidity
        self.next_uidvalidity = max(self.next_uidvalidity, uidvalidity) + 1
        f = Folder(name, uidvalidity)
        self[name] = f
        return f


class FakeIMAP(_Server):
    """A scripted IMAP4rev1 server on 127.0.0.1:.port (see module doc).

    script  a dict; keys and defaults in IMAP_DEFAULTS
    tls     None (plain, STARTTLS refused and not advertised),
            'implicit' (TLS from the first byte), 'starttls'
    cert, key   PEM files for TLS
    """

    DEFAULTS = IMAP_DEFAULTS
    PROTO = 'imap'
    SESSION = _ImapSession

    def __init__(self, script=None, tls=None, cert=None, key=None, **kw):
        super().__init__(script, tls, cert, key, **kw)
        self.store = _Store(self.script)

    # Test-side views of the store (copies, taken under the lock).

    def folders(self):
        with self.lock:
            return sorted(self.store)

    def messages(self, folder):
        with self.lock:
            f = self.store.get(folder)
            return [m.copy() for m in f.msgs] if f else None

    def folder_info(self, folder):
        with self.lock:
            f = self.store[folder]
            return {'uidvalidity': f.uidvalidity, 'uidnext': f.uidnext,
                    'highestmodseq': f.highestmodseq,
                    'keywords': sorted(f.keywords.values()),
                    'special_use': list(f.special_use)}

    def add_message(self, folder, data, flags=(), date=None):
        """Deliver a message now (as another client would); its UID."""
        with self.lock:
            f = self.store.get(folder) or self.store.create(folder)
            f.highestmodseq += 1
            m = Message(f.uidnext, _b(data), list(flags), _date_of(date),
                        f.highestmodseq)
            f.uidnext += 1
            f.msgs.append(m)
            return m.uid


# --------------------------------------------------------------------------
# POP3

class PopMsg:
    def __init__(self, data, uidl):
        self.data = _b(data)
        self.uidl = uidl
        # POP3 speaks CRLF: bare LFs become CRLF, as real servers do.
        self.wire = re.sub(rb'(?<!\r)\n', b'\r\n', self.data)

    def __repr__(self):
        return '<PopMsg %s %d bytes>' % (self.uidl, len(self.wire))


def _dot_stuff(data):
    if data and not data.endswith(b'\r\n'):
        data += b'\r\n'
    lines = data.split(b'\r\n')
    return b'\r\n'.join(b'.' + ln if ln.startswith(b'.') else ln
                        for ln in lines)


class PopError(Exception):
    """A POP3 command that gets -ERR with this text."""


class _PopSession(_Session):

    def __init__(self, server, n, sock):
        super().__init__(server, n, sock)
        self.state = 'auth'     # AUTHORIZATION; then 'trans'
        self.pending_user = None
        self.msgs = []
        self.deleted = set()

    def run(self):
        if self.server.tls == 'implicit':
            self.wrap_tls()
        if self.script['silent']:
            self.silent = True
            self.discard_until_eof()
        self.put('+OK %s\r\n' % self.script['greeting_text'])
        self.flush()
        while not self.closing:
            line = self.read_line(limit=4096)
            words = line.rstrip(b'\r\n').split(b' ')
            name = _s(words[0]).upper()
            cmd = Command(self.n, '', name, line.rstrip(b'\r\n'), self.user,
                          self.tls_active)
            cmd.args = [_s(w) for w in words[1:]]
            with self.server.lock:
                self.server.commands.append(cmd)
            self.execute(cmd)
            self.flush()
            if self.silent:
                self.discard_until_eof()

    def execute(self, cmd):
        override = None
        for rule in self.server._fire(cmd, 'command'):
            if rule.delay:
                self.sleep(rule.delay)
            a = rule.action
            if a == 'delay':
                self.sleep(rule.seconds)
            elif a == 'ok':
                override = rule
            elif a in ('no', 'bad'):
                self.put('-ERR %s\r\n' % _ImapSession._text(rule, 'Refused'))
                self._then(rule)
                return
            elif a in ('bye', 'eof'):
                if a == 'bye':
                    self.put('-ERR %s\r\n' % (rule.text or 'Server closing'))
                self.closing = True
                return
            elif a == 'silent':
                self.silent = True
                return
            elif a == 'eof_mid':
                if self._eof_mid(cmd, rule):
                    return
        handler = getattr(self, 'p_' + cmd.name.lower(), None)
        states = self.STATES.get(cmd.name, ())
        if handler is None or (cmd.name == 'UIDL' and
                               not self.script['uidl']):
            self.put('-ERR Unknown command\r\n')
            return
        if self.state not in states:
            self.put('-ERR Command not valid in this state\r\n')
            return
        try:
            with self.server.lock:
                ok_line = handler(cmd)
        except PopError as e:
            self.put('-ERR %s\r\n' % e)
            return
        except (ValueError, IndexError):
            self.put('-ERR Invalid arguments\r\n')
            return
        if ok_line is not None:
            if override is not None and override.text:
                ok_line = override.text
            self.put('+OK %s\r\n' % ok_line if ok_line else '+OK\r\n')
        if override is not None:
            self._then(override)

    def _then(self, rule):
        if rule.then in ('bye', 'eof'):
            self.closing = True

    def _msg(self, arg):
        i = int(arg)
        if i < 1 or i > len(self.msgs):
            raise PopError('No such message')
        if i in self.deleted:
            raise PopError('Message is deleted')
        return self.msgs[i - 1]

    def _eof_mid(self, cmd, rule):
        if self.state != 'trans' or not cmd.args:
            return False
        try:
            m = self._msg(cmd.args[0])
        except (PopError, ValueError):
            return False
        body = _dot_stuff(m.wire)
        self.put(b'+OK %d octets\r\n' % len(m.wire) + body[:rule.after_bytes])
        self.closing = True
        return True

    def capa(self):
        caps = self.script['capa']
        if caps is None:
            caps = ['TOP', 'USER', 'RESP-CODES', 'AUTH-RESP-CODE',
                    'SASL PLAIN']
            if self.script['uidl']:
                caps.insert(1, 'UIDL')
            if self.server.tls == 'starttls' and not self.tls_active and \
                    self.script['advertise_stls'] and self.state == 'auth':
                caps.append('STLS')
        return caps

    # Handlers return the text of '+OK' (None: they answered themselves).

    def p_capa(self, cmd):
        self.put('+OK Capability list follows\r\n%s.\r\n' % ''.join(
            c + '\r\n' for c in self.capa()))

    def p_stls(self, cmd):
        if self.server.tls != 'starttls' or self.tls_active:
            self.put('-ERR STLS not available\r\n')
            return None
        self.flush()
        self.start_tls('+OK Begin TLS negotiation\r\n')

    def p_user(self, cmd):
        self.pending_user = cmd.args[0] if cmd.args else ''
        return 'User accepted'

    def _login(self, user, pw):
        if self.script['users'].get(user) != pw:
            self.put('-ERR [AUTH] Authentication failed\r\n')
            return None
        srv = self.server
        if self.script['lock'] and user in srv.pop_locked:
            self.put('-ERR [IN-USE] Mailbox is locked\r\n')
            return None
        srv.pop_locked.add(user)
        self.user = user
        self.state = 'trans'
        self.msgs = list(srv.maildrop(user))
        return 'Logged in, %d messages' % len(self.msgs)

    def p_pass(self, cmd):
        if self.pending_user is None:
            self.put('-ERR USER first\r\n')
            return None
        pw = _s(cmd.line[5:]) if len(cmd.line) > 5 else ''
        return self._login(self.pending_user, pw)

    def p_auth(self, cmd):
        if not cmd.args:
            self.put('+OK\r\nPLAIN\r\n.\r\n')
            return None
        if cmd.args[0].upper() != 'PLAIN':
            self.put('-ERR Unsupported mechanism\r\n')
            return None
        if len(cmd.args) > 1:
            resp = _b(cmd.args[1])
        else:
            self.put('+ \r\n')
            self.flush()
            resp = self.read_line().rstrip(b'\r\n')
        cmd.sasl.append(resp)
        try:
            _authz, user, pw = base64.b64decode(resp, validate=True).split(
                b'\0')
        except (ValueError, base64.binascii.Error):
            self.put('-ERR Invalid SASL response\r\n')
            return None
        return self._login(_s(user), _s(pw))

    def _live(self):
        return [(i, m) for i, m in enumerate(self.msgs, 1)
                if i not in self.deleted]

    def p_stat(self, cmd):
        live = self._live()
        return '%d %d' % (len(live), sum(len(m.wire) for _, m in live))

    def p_list(self, cmd, uidl=False):
        if cmd.args:
            i = int(cmd.args[0])
            m = self._msg(i)
            return '%d %s' % (i, m.uidl if uidl else len(m.wire))
        self.put('+OK\r\n' + ''.join(
            '%d %s\r\n' % (i, m.uidl if uidl else len(m.wire))
            for i, m in self._live()) + '.\r\n')

    def p_uidl(self, cmd):
        return self.p_list(cmd, uidl=True)

    def p_retr(self, cmd):
        m = self._msg(cmd.args[0])
        self.put(b'+OK %d octets\r\n' % len(m.wire) + _dot_stuff(m.wire) +
                 b'.\r\n')

    def p_top(self, cmd):
        m = self._msg(cmd.args[0])
        n = int(cmd.args[1])
        head = header_block(m.wire)
        body = m.wire[len(head):].split(b'\r\n')
        text = head + b'\r\n'.join(body[:n]) + (b'\r\n' if n else b'')
        self.put(b'+OK\r\n' + _dot_stuff(text) + b'.\r\n')

    def p_dele(self, cmd):
        self._msg(cmd.args[0])
        self.deleted.add(int(cmd.args[0]))
        return 'Marked to be deleted'

    def p_rset(self, cmd):
        self.deleted.clear()
        return 'Reset'

    def p_noop(self, cmd):
        return ''

    def p_quit(self, cmd):
        if self.state == 'trans':
            # The UPDATE state: deletions are committed only here.
            gone = [self.msgs[i - 1] for i in self.deleted]
            drop = self.server.maildrop(self.user)
            drop[:] = [m for m in drop if m not in gone]
            self.deleted.clear()
        self.closing = True
        return 'Bye'

    STATES = {'CAPA': ('auth', 'trans'), 'QUIT': ('auth', 'trans'),
              'STLS': ('auth',), 'USER': ('auth',), 'PASS': ('auth',),
              'AUTH': ('auth',), 'STAT': ('trans',), 'LIST': ('trans',),
              'UIDL': ('trans',), 'RETR': ('trans',), 'TOP': ('trans',),
              'DELE': ('trans',), 'RSET': ('trans',), 'NOOP': ('trans',)}

    def close(self):
        if self.user is not None:
            with self.server.lock:
                self.server.pop_locked.discard(self.user)
        super().close()


class FakePOP3(_Server):
    """A scripted POP3 server (see module doc; keys in POP3_DEFAULTS)."""

    DEFAULTS = POP3_DEFAULTS
    PROTO = 'pop3'
    SESSION = _PopSession

    def __init__(self, script=None, tls=None, cert=None, key=None, **kw):
        super().__init__(script, tls, cert, key, **kw)
        self.pop_locked = set()
        self._drops = {}
        drops = self.script['maildrops'] or {}
        for user in self.script['users']:
            specs = drops.get(user, self.script['messages'])
            self._drops[user] = [self._pop_msg(s, i)
                                 for i, s in enumerate(specs, 1)]

    @staticmethod
    def _pop_msg(spec, i):
        if isinstance(spec, dict):
            return PopMsg(spec['data'], spec.get('uidl', 'msg-%d' % i))
        return PopMsg(spec, 'msg-%d' % i)

    def maildrop(self, user):
        """The live list of USER's messages (PopMsg; .data, .uidl)."""
        with self.lock:
            return self._drops.setdefault(user, [])


# --------------------------------------------------------------------------

_live = set()


@atexit.register
def _stop_all():
    for s in list(_live):
        try:
            s.stop(timeout=1.0)
        except Exception:
            pass


def main(argv=None):
    ap = argparse.ArgumentParser(
        description='Scripted fake IMAP/POP3 server for tests (loopback).')
    ap.add_argument('--pop3', action='store_true', help='POP3, not IMAP')
    ap.add_argument('--port', type=int, default=0)
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--tls', choices=('implicit', 'starttls'))
    ap.add_argument('--cert')
    ap.add_argument('--key')
    ap.add_argument('--script', help='a JSON file: the script dict (rules '
                    'as dicts; bytes as strings)')
    ap.add_argument('--duration', type=float, default=DEFAULT_LIFETIME)
    a = ap.parse_args(argv)
    script = {}
    if a.script:
        with open(a.script) as f:
            script = json.load(f)
        if 'namespace' in script:
            script['namespace'] = tuple(script['namespace'])
    cls = FakePOP3 if a.pop3 else FakeIMAP
    srv = cls(script, tls=a.tls, cert=a.cert, key=a.key, host=a.host,
              port=a.port, lifetime=a.duration)
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    srv.start()
    print('fakeserver: %s on %s:%d' % (cls.__name__, a.host, srv.port),
          flush=True)
    stop.wait(a.duration)
    srv.stop()
    # Command names only: the arguments may hold credentials.
    for c in srv.commands:
        print('conn %d: %s' % (c.conn, c.name))
    for e in srv.errors:
        print('error: ' + e, file=sys.stderr)
    return 1 if srv.errors else 0


if __name__ == '__main__':
    sys.exit(main())
