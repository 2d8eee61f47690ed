#!/usr/bin/env python3
"""bench/run.py — postino against mbsync, interimap and dsync, on identical
work.

    python3 bench/run.py [--messages 2000] [--repeat 3] [--rtt-ms 20]
                         [--peers postino,mbsync,interimap,dsync]
                         [--scaling 1000,10000,100000] [--quick]

What it does (see bench/README.md and docs/performance.md):

  * starts two private Dovecot 2.3 instances on 127.0.0.1 with the test
    suite's harness (tests/integration/harness.py): the source with maildir
    LAYOUT=fs (separator '/'), the destination maildir++ (separator '.'),
    both with TLS from the test CA;
  * generates a seeded corpus (default 2,000 messages, ~117 MB, 13 folders,
    nested and non-ASCII names, keywords, ten years of dates, 0.5% exact
    duplicates, one ~20 MB message) and loads it into the source with
    MULTIAPPEND (not with any of the tools measured);
  * for each tool and each repetition, on a fresh destination server and a
    fresh tool state: full copy, no-op rerun, 1% incremental (1% new
    messages plus flag changes on 1% of the messages), then the same three
    through a delay-line proxy (tests/tools/faultproxy.py) in front of each
    server, --rtt-ms round trip (dsync: Dovecot's doveadm backup reading
    the source through imapc and writing into the destination's storage,
    so only its source side goes through the proxy);
  * times every run (time.monotonic around the tool process) and takes its
    peak RSS and CPU time from /usr/bin/time -v, and the CPU the two
    Dovecot servers spent on it from /proc;
  * checks every result for exactness against the source: SHA-256 of every
    message, flags with keywords, INTERNALDATE, folders, duplicates;
  * prints Markdown tables: medians, the ratio peer ÷ postino, peak RSS,
    exactness, CPU, and the issue's targets met or missed;
  * --scaling: postino alone (or with --scaling-peers) on N small messages
    (90% in INBOX), full copy and no-op rerun: time and peak RSS.

It installs nothing.  Only 127.0.0.1 is used; every server and proxy it
started is stopped at the end, whatever happens.
"""

import argparse
import calendar
import collections
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'integration'))
import harness as h  # noqa: E402

FAULTPROXY = os.path.join(ROOT, 'tests', 'tools', 'faultproxy.py')
TIME = '/usr/bin/time'
USER, PASSWORD = 'alice', 'secret'
TOOLS = ('postino', 'mbsync', 'interimap', 'dsync')

INSTALL_HINT = {
    'mbsync': 'sudo apt-get install -y isync',
    'interimap': 'sudo apt-get install -y interimap',
    'doveadm': 'sudo apt-get install -y dovecot-core',
    TIME: 'sudo apt-get install -y time',
    'dovecot': 'sudo apt-get install -y dovecot-imapd',
    'certtool': 'sudo apt-get install -y gnutls-bin',
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# The corpus

STANDARD_FOLDERS = [
    # (path, weight in the standard profile)
    ('INBOX', 30), ('Sent', 15), ('Drafts', 1), ('Junk', 3),
    ('Archive', 8), ('Archive/2023', 12), ('Archive/2024', 8),
    ('Archive/2024/Q1', 6), ('Café', 5), ('日本語', 3),
    ('日本語/レポート', 3), ('Entwürfe', 2), ('Lists & Friends', 4),
]
KEYWORDS = ['$Forwarded', '$Junk', '$NotJunk', 'work', 'project-x',
            '$Label1', '$MDNSent']
ZONES = [0, 60, 120, -300, -420, 330, 540, 600, 765, -180, -480]
T_START = calendar.timegm((2015, 1, 1, 0, 0, 0, 0, 0, 0))
T_END = calendar.timegm((2025, 1, 1, 0, 0, 0, 0, 0, 0))
LARGE_FOLDER = 'Archive/2023'
WORDS = ('mail migration server folder flag date message copy resume '
         'letter stamp envelope account mailbox imap archive report '
         'quarterly meeting agenda minutes invoice draft budget travel '
         'schedule review contract project release customer support '
         'holiday office network backup storage').split()
UTF8_WORDS = ['Grüße', 'Übermorgen', 'naïve', 'façade', 'señor', 'Łódź',
              '日本語', 'テスト', 'Привет', 'ελληνικά', '✓', '—']
_MONTHS = ('Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep',
           'Oct', 'Nov', 'Dec')
_DAYS = ('Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun')


class TextPool:
    """A deterministic pool of text lines; a message body is a run of them
    (much faster than drawing every word)."""

    def __init__(self, rng, n=20000):
        lines = []
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 13))]
            if rng.random() < 0.15:
                words.insert(rng.randrange(len(words)), rng.choice(UTF8_WORDS))
            lines.append(' '.join(words).encode('utf-8'))
        self.lines = lines

    def text(self, rng, nbytes):
        out, size = [], 0
        i = rng.randrange(len(self.lines))
        while size < nbytes:
            ln = self.lines[i % len(self.lines)]
            out.append(ln)
            size += len(ln) + 2
            i += 1
        return b'\r\n'.join(out) + b'\r\n'


def rfc2822_date(epoch, tz):
    tm = time.gmtime(epoch + tz * 60)
    sign = '+' if tz >= 0 else '-'
    return '%s, %02d %s %04d %02d:%02d:%02d %s%02d%02d' % (
        _DAYS[tm.tm_wday], tm.tm_mday, _MONTHS[tm.tm_mon - 1], tm.tm_year,
        tm.tm_hour, tm.tm_min, tm.tm_sec, sign, abs(tz) // 60, abs(tz) % 60)


def make_message(rng, pool, tag, i, size, date, folder):
    """A deterministic RFC 5322 message of about SIZE bytes: text/plain,
    or multipart with a base64 attachment when large."""
    subj = 'Bench %d: %s' % (i, ' '.join(rng.choice(WORDS)
                                         for _ in range(rng.randint(2, 6))))
    if i % 5 == 0:
        subj = '=?UTF-8?Q?Gr=C3=BC=C3=9Fe_' + str(i) + '_=E6=97=A5=E6=9C=AC?='
    sender = rng.randrange(40)
    h_ = ['Return-Path: <sender%d@example.org>' % sender,
          'Received: from mx%d.example.org by mail.example.com; %s' % (
              sender % 4, rfc2822_date(date[0], date[1])),
          'From: Sender %d <sender%d@example.org>' % (sender, sender),
          'To: Alice <alice@example.com>',
          'Subject: ' + subj,
          'Date: ' + rfc2822_date(date[0] - rng.randint(0, 600), date[1]),
          'Message-ID: <bench-%s-%d@postino.bench>' % (tag, i),
          'MIME-Version: 1.0']
    if folder.startswith('Lists'):
        h_.append('List-Id: <friends.lists.example.org>')
    head_len = sum(len(x) + 2 for x in h_)
    if size < 9000:
        h_ += ['Content-Type: text/plain; charset=utf-8',
               'Content-Transfer-Encoding: 8bit']
        body = pool.text(rng, max(40, size - head_len - 100))
        return ('\r\n'.join(h_) + '\r\n\r\n').encode('utf-8') + body
    boundary = '=-bench-%d-=' % i
    h_.append('Content-Type: multipart/mixed; boundary="%s"' % boundary)
    text = pool.text(rng, rng.randint(300, 3000))
    att_b64 = max(100, size - head_len - len(text) - 400)
    raw = hashlib.shake_256(b'bench-%s-%d' % (tag.encode(), i)).digest(
        att_b64 * 3 // 4)
    import base64
    b64 = base64.b64encode(raw)
    att = b'\r\n'.join(b64[k:k + 76] for k in range(0, len(b64), 76))
    name = rng.choice(['report.pdf', 'photo.jpg', 'Übersicht.xlsx',
                       'slides.pptx', 'data.zip'])
    parts = [('\r\n'.join(h_) + '\r\n\r\n').encode('utf-8'),
             b'This is a multi-part message in MIME format.\r\n\r\n',
             b'--' + boundary.encode() + b'\r\n'
             b'Content-Type: text/plain; charset=utf-8\r\n'
             b'Content-Transfer-Encoding: 8bit\r\n\r\n', text, b'\r\n',
             b'--' + boundary.encode() + b'\r\n'
             b'Content-Type: application/octet-stream\r\n'
             b'Content-Transfer-Encoding: base64\r\n'
             b'Content-Disposition: attachment; filename*=utf-8\'\'' +
             name.encode('utf-8').replace(b'\xc3\x9c', b'%C3%9C') +
             b'\r\n\r\n', att, b'\r\n--' + boundary.encode() + b'--\r\n']
    return b''.join(parts)


def pick_flags(rng, folder):
    fl = []
    if folder == 'Drafts':
        fl.append('\\Draft')
    elif folder in ('Sent',) or rng.random() < 0.75:
        fl.append('\\Seen')
    if rng.random() < 0.12:
        fl.append('\\Answered')
    if rng.random() < 0.05:
        fl.append('\\Flagged')
    if folder == 'Junk':
        fl.append('$Junk')
    elif rng.random() < 0.15:
        fl += rng.sample(KEYWORDS, rng.choice([1, 1, 2]))
    return tuple(dict.fromkeys(fl))


def pick_sizes(rng, n, profile):
    """N message sizes: 'standard' a mixture of plain mails (median ~4 KB)
    and mails with attachments (median ~70 KB), mean 47 KB; 'small' a
    log-normal around 1.7 KB, mean ~2 KB."""
    if profile == 'small':
        raw = [rng.lognormvariate(7.45, 0.5) for _ in range(n)]
        mean = 1970.0
    else:
        raw = []
        for _ in range(n):
            if rng.random() < 0.7:
                raw.append(rng.lognormvariate(8.3, 0.8))      # ~4 KB
            else:
                raw.append(min(rng.lognormvariate(11.15, 1.2), 8e6))
        mean = 47000.0
    scale = mean * n / sum(raw)
    return [max(600, int(x * scale)) for x in raw]


def make_corpus(n, seed=1, profile='standard', large_mb=20, tag='c'):
    """{folder: [harness.Msg]}: N messages in all, deterministic in SEED.

    profile 'standard': 13 folders (weights above), sizes per pick_sizes,
      one LARGE_MB message in Archive/2023 (0 for none);
    profile 'small': the same folders, 90% of the messages in INBOX, small
      messages, no large one (peers.md's 100k case).
    0.5% of the messages are exact duplicates (same bytes, flags, date) of
    another message of the same folder.
    """
    rng = random.Random('%s-%d-%s-%d' % (profile, n, tag, seed))
    pool = TextPool(random.Random(seed))
    folders = [f for f, _ in STANDARD_FOLDERS]
    if profile == 'small':
        weights = [90.0] + [10.0 / (len(folders) - 1)] * (len(folders) - 1)
    else:
        weights = [w for _, w in STANDARD_FOLDERS]
    ndup = int(round(n * 0.005))
    nlarge = 1 if (profile == 'standard' and large_mb) else 0
    norig = n - ndup - nlarge
    sizes = pick_sizes(rng, norig, profile)
    out = {f: [] for f in folders}
    # Every folder gets at least one message, the rest by weight.
    where = list(folders) + rng.choices(folders, weights, k=norig -
                                        len(folders))
    rng.shuffle(where)
    for i in range(norig):
        f = where[i]
        date = (rng.randrange(T_START, T_END), rng.choice(ZONES))
        data = make_message(rng, pool, tag, i, sizes[i], date, f)
        out[f].append(h.Msg(data, pick_flags(rng, f), date, '%s-%d' % (tag, i)))
    if nlarge:
        data = h.large_message(large_mb, seed=b'bench-large-%d' % seed)
        data = data.replace(b'<large-1@test.postino>',
                            b'<bench-%s-large@postino.bench>' % tag.encode())
        out[LARGE_FOLDER].append(h.Msg(
            data, ('\\Seen', '$Forwarded'),
            (calendar.timegm((2023, 6, 1, 8, 0, 0, 0, 0, 0)), 120),
            'large'))
    # Exact duplicates, right after their original (a double delivery).
    cands = [(f, k) for f in folders for k in range(len(out[f]))
             if out[f][k].label != 'large']
    for f, k in sorted(rng.sample(cands, ndup), key=lambda x: (x[0], -x[1])):
        m = out[f][k]
        out[f].insert(k + 1, h.Msg(m.data, m.flags, m.date, m.label + '-dup'))
    return out


def corpus_stats(corpus):
    n = sum(len(v) for v in corpus.values())
    b = sum(len(m.data) for v in corpus.values() for m in v)
    return n, b


# --------------------------------------------------------------------------
# Loading the source quickly: MULTIAPPEND with LITERAL+ on a raw socket

class RawImap:
    def __init__(self, port):
        self.sock = socket.create_connection(('127.0.0.1', port), timeout=300)
        self.f = self.sock.makefile('rb')
        self.n = 0
        self.f.readline()   # greeting
        self.command(b'LOGIN %s %s' % (USER.encode(), PASSWORD.encode()))

    def command(self, cmd, payload=None):
        """Send CMD (bytes, without tag and CRLF) or, with PAYLOAD, the
        prebuilt bytes after the tag; return the tagged status line."""
        self.n += 1
        tag = b'b%d' % self.n
        if payload is None:
            self.sock.sendall(tag + b' ' + cmd + b'\r\n')
        else:
            self.sock.sendall(tag + b' ' + payload)
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError('server closed the connection')
            if line.startswith(tag + b' '):
                if not line[len(tag) + 1:].startswith(b'OK'):
                    raise RuntimeError('IMAP %s: %r' % (
                        (cmd or payload[:60]), line))
                return line

    def close(self):
        try:
            self.command(b'LOGOUT')
        except Exception:
            pass
        self.sock.close()


def wire_name(path, sep):
    if path.upper() == 'INBOX':
        return 'INBOX'
    return sep.join(h.mutf7_encode(p) for p in path.split('/'))


def load(server, corpus, batch=400, batch_bytes=24 << 20):
    """Create the folders of CORPUS and MULTIAPPEND its messages, in
    order.  Returns {folder: [APPENDUID uid...]} is not needed: no."""
    c = RawImap(server.imap_port)
    try:
        for path in corpus:
            if path.upper() != 'INBOX':
                c.command(b'CREATE ' + h.imap_quote(
                    wire_name(path, server.sep)).encode('ascii'))
        for path, msgs in corpus.items():
            box = h.imap_quote(wire_name(path, server.sep)).encode('ascii')
            i = 0
            while i < len(msgs):
                parts, size = [b'APPEND ' + box], 0
                while i < len(msgs) and len(parts) < batch + 1 and \
                        (size < batch_bytes or len(parts) == 1):
                    m = msgs[i]
                    parts.append(b' (' + ' '.join(m.flags).encode() + b') ' +
                                 h.format_internaldate(*m.date).encode() +
                                 b' {%d+}\r\n' % len(m.data) + m.data)
                    size += len(m.data)
                    i += 1
                c.command(None, b''.join(parts) + b'\r\n')
    finally:
        c.close()


# --------------------------------------------------------------------------
# Exactness: snapshots keyed by Message-ID, so differences can be named

_MID_RE = re.compile(rb'^Message-ID:\s*(<[^>\r\n]*>)', re.I | re.M)


def _header_names(head):
    names = []
    for ln in head.split(b'\r\n'):
        if ln and ln[:1] not in (b' ', b'\t') and b':' in ln:
            names.append(ln.split(b':', 1)[0].strip().lower().decode(
                'latin-1'))
    return tuple(names)


def snapshot(server):
    """{folder: [rec]} where rec = (sha256, flags, epoch, message-id,
    sha256 of the body, header names, uid)."""
    snap = {}
    with server.connect(USER) as c:
        for path in sorted(c.folders()):
            recs = []
            for uid, body, fl, date in c.messages(path):
                k = body.find(b'\r\n\r\n')
                head = body[:k] if k >= 0 else body
                m = _MID_RE.search(head)
                recs.append((hashlib.sha256(body).hexdigest(),
                             h.norm_flags(fl), date,
                             m.group(1).decode('latin-1') if m else None,
                             hashlib.sha256(body[k + 4:] if k >= 0 else b''
                                            ).hexdigest(),
                             _header_names(head), uid))
            snap[path] = recs
    return snap


def _multiset(recs):
    return collections.Counter((r[0], r[1], r[2]) for r in recs)


def compare(src, dst):
    """(exact, description of the differences)."""
    if all(_multiset(src.get(f, [])) == _multiset(dst.get(f, []))
           for f in set(src) | set(dst)) and set(src) == set(dst):
        return True, ''
    notes = collections.Counter()
    lost_flags, gained_flags = collections.Counter(), collections.Counter()
    added_headers = collections.Counter()
    for f in sorted(set(src) - set(dst)):
        notes['folder %s missing (%d messages)' % (f, len(src[f]))] += 1
    for f in sorted(set(dst) - set(src)):
        notes['extra folder %s (%d messages)' % (f, len(dst[f]))] += 1
    for f in sorted(set(src) & set(dst)):
        a = collections.defaultdict(list)
        b = collections.defaultdict(list)
        for r in src[f]:
            a[r[3]].append(r)
        for r in dst[f]:
            b[r[3]].append(r)
        for mid in set(a) | set(b):
            la = sorted(a.get(mid, []), key=lambda r: (r[0], sorted(r[1]),
                                                       r[2]))
            lb = sorted(b.get(mid, []), key=lambda r: (r[0], sorted(r[1]),
                                                       r[2]))
            if len(la) > len(lb):
                notes['missing messages' if len(lb) == 0 else
                      'duplicates lost'] += len(la) - len(lb)
            elif len(lb) > len(la):
                notes['extra messages' if len(la) == 0 else
                      'duplicated in destination'] += len(lb) - len(la)
            # Pair the rest: exact matches first.
            la2, lb2 = list(la), list(lb)
            for r in list(la2):
                for s in lb2:
                    if (r[0], r[1], r[2]) == (s[0], s[1], s[2]):
                        la2.remove(r)
                        lb2.remove(s)
                        break
            for r, s in zip(la2, lb2):
                if r[0] != s[0]:
                    if r[4] == s[4]:
                        extra = set(s[5]) - set(r[5])
                        if extra:
                            for x in sorted(extra):
                                added_headers[x] += 1
                        else:
                            notes['header bytes changed'] += 1
                    else:
                        notes['message bytes changed'] += 1
                if r[1] != s[1]:
                    for x in r[1] - s[1]:
                        lost_flags[x] += 1
                    for x in s[1] - r[1]:
                        gained_flags[x] += 1
                if r[2] != s[2]:
                    notes['INTERNALDATE changed'] += 1
    parts = []
    for k, n in added_headers.most_common():
        parts.append('%s header added to %d' % (k, n))
    if lost_flags:
        parts.append('flags lost: ' + ', '.join(
            '%s (%d)' % kv for kv in sorted(lost_flags.items())))
    if gained_flags:
        parts.append('flags gained: ' + ', '.join(
            '%s (%d)' % kv for kv in sorted(gained_flags.items())))
    for k, n in notes.items():
        parts.append('%s: %d' % (k, n) if not k.startswith(('folder',
                                                             'extra folder'))
                     else k)
    return False, '; '.join(parts) or 'differs'


def snap_count(snap):
    return sum(len(v) for v in snap.values())


# --------------------------------------------------------------------------
# CPU accounting of a Dovecot instance (master + children, reaped or not)

_TICK = os.sysconf('SC_CLK_TCK')


def server_cpu(server):
    """CPU seconds used so far by SERVER's master and all its children
    (the master reaps the imap and imap-login processes, so their time
    lands in its cutime/cstime)."""
    total = 0
    pgid = server.proc.pid
    for pid in h.group_members(pgid):
        try:
            with open('/proc/%d/stat' % pid) as f:
                st = f.read()
        except OSError:
            continue
        fl = st[st.rindex(')') + 2:].split()
        # fields after comm: state(0) ... utime(11) stime(12) cutime(13)
        # cstime(14)
        total += int(fl[11]) + int(fl[12])
        if pid == pgid:
            total += int(fl[13]) + int(fl[14])
    return total / _TICK


# --------------------------------------------------------------------------
# The latency proxy (tests/tools/faultproxy.py in its own process)

class DelayProxy:
    def __init__(self, port, rtt_ms, workdir):
        self.logf = open(os.path.join(workdir, 'faultproxy-%d.log' % port),
                         'w+')
        self.proc = subprocess.Popen(
            [sys.executable, FAULTPROXY, '--upstream', '127.0.0.1:%d' % port,
             '--delay-ms', str(rtt_ms / 2.0), '--protocol', 'raw',
             '--duration', '86400'],
            stdout=subprocess.PIPE, stderr=self.logf, stdin=subprocess.DEVNULL,
            start_new_session=True, text=True)
        h._register(self)
        line = self.proc.stdout.readline()
        m = re.search(r':(\d+) ->', line)
        if not m:
            self.stop()
            raise RuntimeError('faultproxy did not start: %r' % line)
        self.port = int(m.group(1))

    def stop(self):
        if self.proc.poll() is None:
            h.kill_group(self.proc, grace=2)
        h._unregister(self)


def probe_rtt(port, ca_file, n=7):
    """Median seconds of a NOOP round trip over imaps to PORT."""
    ctx = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection(('127.0.0.1', port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname='localhost') as t:
            f = t.makefile('rb')
            f.readline()
            times = []
            for i in range(n):
                t0 = time.monotonic()
                t.sendall(b'p%d NOOP\r\n' % i)
                while not f.readline().startswith(b'p%d ' % i):
                    pass
                times.append(time.monotonic() - t0)
            t.sendall(b'z LOGOUT\r\n')
    return statistics.median(times)


# --------------------------------------------------------------------------
# The tools

class Endpoint:
    """Where a tool connects: host name for TLS, port.  SERVER: the
    Dovecot instance behind it (dsync writes into the destination's
    storage itself, with that server's configuration)."""

    def __init__(self, port, sep, server=None):
        self.host = 'localhost'
        self.port = port
        self.sep = sep
        self.server = server


class Tool:
    name = None

    def __init__(self, workdir, ca_file):
        self.workdir = workdir
        self.ca_file = ca_file

    def prepare(self, src, dst, rundir):
        """Write config and state for a fresh job SRC -> DST in RUNDIR."""
        raise NotImplementedError

    def argv(self):
        raise NotImplementedError

    def env(self, rundir):
        home = os.path.join(rundir, 'home')
        os.makedirs(home, exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith('POSTINO_')}
        env.update(HOME=home, XDG_CONFIG_HOME=os.path.join(home, '.config'),
                   XDG_DATA_HOME=os.path.join(home, '.local', 'share'),
                   XDG_STATE_HOME=os.path.join(home, '.local', 'state'),
                   XDG_CACHE_HOME=os.path.join(home, '.cache'),
                   LC_ALL='C.UTF-8')
        return env

    def ok(self, rc, out, err):
        return rc == 0


class Postino(Tool):
    name = 'postino'

    def __init__(self, workdir, ca_file, binary, extra=()):
        super().__init__(workdir, ca_file)
        self.binary = binary
        self.extra = list(extra)

    def prepare(self, src, dst, rundir):
        self.src = 'imaps://%s@%s:%d' % (USER, src.host, src.port)
        self.dst = 'imaps://%s@%s:%d' % (USER, dst.host, dst.port)
        self.state = os.path.join(rundir, 'postino-state.db')

    def argv(self):
        return [self.binary, 'copy', self.src, self.dst, '--state',
                self.state, '--ca-file', self.ca_file, '-q'] + self.extra

    def env(self, rundir):
        env = super().env(rundir)
        env['POSTINO_PASSWORD1'] = PASSWORD
        env['POSTINO_PASSWORD2'] = PASSWORD
        return env


class Mbsync(Tool):
    """mbsync IMAP -> IMAP: far = source, near = destination, Sync Pull,
    Create Near, CopyArrivalDate yes, TLS (IMAPS) with CertificateFile."""
    name = 'mbsync'

    def prepare(self, src, dst, rundir):
        state = os.path.join(rundir, 'mbsync-state') + '/'
        os.makedirs(state, exist_ok=True)
        self.rc = os.path.join(rundir, 'mbsyncrc')
        acct = ('IMAPAccount {n}\nHost {host}\nPort {port}\nUser ' + USER +
                '\nPass ' + PASSWORD + '\nSSLType IMAPS\nCertificateFile ' +
                self.ca_file + '\nTimeout 300\n\n'
                'IMAPStore {n}\nAccount {n}\n\n')
        with open(self.rc, 'w') as f:
            f.write(acct.format(n='src', host=src.host, port=src.port))
            f.write(acct.format(n='dst', host=dst.host, port=dst.port))
            f.write('Channel bench\nFar :src:\nNear :dst:\n'
                    'Patterns INBOX *\nCreate Near\nSync Pull\n'
                    'Expunge None\nRemove None\nCopyArrivalDate yes\n'
                    'SyncState %s\n' % state)
        os.chmod(self.rc, 0o600)

    def argv(self):
        return ['mbsync', '-q', '-c', self.rc, 'bench']


class Interimap(Tool):
    """interimap: [remote] = source, [local] = destination (it syncs both
    ways; the destination starts empty, so only the source's mail moves).
    imaps with SSL_CAfile; COMPRESS off on both sides (postino and mbsync
    do not compress either)."""
    name = 'interimap'

    def prepare(self, src, dst, rundir):
        self.conf = os.path.join(rundir, 'interimap.conf')
        sect = ('[{s}]\ntype = imaps\nhost = {host}\nport = {port}\n'
                'username = ' + USER + '\npassword = ' + PASSWORD +
                '\nSSL_CAfile = ' + self.ca_file + '\ncompress = NO\n\n')
        with open(self.conf, 'w') as f:
            f.write('database = %s\n\n' % os.path.join(rundir,
                                                       'interimap.db'))
            f.write(sect.format(s='local', host=dst.host, port=dst.port))
            f.write(sect.format(s='remote', host=src.host, port=src.port))
        os.chmod(self.conf, 0o600)

    def argv(self):
        return ['interimap', '-q', '--config=' + self.conf]


class Dsync(Tool):
    """Dovecot's own migration path, dsync with the imapc storage, as
    Dovecot's migration guide (Migration/Dsync) sets it up:

        doveadm -c dsync.conf backup -R -u alice imapc:

    doveadm runs with the destination server's configuration (dsync.conf
    includes its dovecot.conf) and writes straight into its maildir++
    storage (mail_location, namespace separator '.' and mail_fsync = never
    come from there); -R pulls from the "remote", the source, which it
    reads over IMAP through imapc: imaps with certificate verification
    against the test CA, imapc_features = rfc822.size fetch-headers
    modseq and mail_prefetch_count = 20 (the guide's settings, plus modseq
    because the source has CONDSTORE).  Only the source connection is
    IMAP, so only it goes through the latency proxy.

    Reruns are the same command: a stateless 'doveadm backup' (the guide's
    way of migrating in several passes; no -s state string).  dsync gives
    the destination the source's UIDVALIDITY, UIDs and modseqs, so on a
    rerun it compares each mailbox's UIDVALIDITY, UIDNEXT, message count
    and HIGHESTMODSEQ on both sides and syncs only those that differ.
    Without the modseq feature the source's HIGHESTMODSEQ is unknown and
    every mailbox is synced again (a slower no-op, still exact)."""
    name = 'dsync'
    SETTINGS = [('imapc_features', 'rfc822.size fetch-headers modseq'),
                ('mail_prefetch_count', '20')]

    def __init__(self, workdir, ca_file, extra=()):
        super().__init__(workdir, ca_file)
        # --dsync-set KEY=VALUE: later lines of dsync.conf win.
        self.extra = [x.split('=', 1) for x in extra]

    def prepare(self, src, dst, rundir):
        if dst.server is None:
            raise ValueError('dsync needs the destination server')
        # doveadm drops to the mail user (dovecot) before it opens the TLS
        # connection, so the CA must be readable by it: a copy next to the
        # destination's own files (that directory is 0755; the bench's
        # work directory is not).
        ca = os.path.join(dst.server.dir, 'dsync-ca.crt')
        shutil.copyfile(self.ca_file, ca)
        os.chmod(ca, 0o644)
        self.conf = os.path.join(rundir, 'dsync.conf')
        with open(self.conf, 'w') as f:
            f.write('!include %s\n'
                    'imapc_host = %s\nimapc_port = %d\n'
                    'imapc_ssl = imaps\nimapc_ssl_verify = yes\n'
                    'ssl_client_ca_file = %s\n'
                    'imapc_user = %s\nimapc_password = %s\n' % (
                        dst.server.conf_path, src.host, src.port, ca, USER,
                        PASSWORD))
            for k, v in self.SETTINGS + self.extra:
                f.write('%s = %s\n' % (k.strip(), v.strip()))
        os.chmod(self.conf, 0o600)

    def argv(self):
        return ['doveadm', '-c', self.conf, 'backup', '-R', '-u', USER,
                'imapc:']


def cpu_busy():
    """CPU seconds the whole machine spent busy so far (all CPUs)."""
    with open('/proc/stat') as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (sum(v[:8]) - v[3] - v[4]) / _TICK


def proc_cpu(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            st = f.read()
    except OSError:
        return 0.0
    fl = st[st.rindex(')') + 2:].split()
    return (int(fl[11]) + int(fl[12])) / _TICK


def wait_idle(max_wait, threshold=0.15):
    """Wait (at most MAX_WAIT seconds) until the machine is nearly idle:
    other people's test runs on a 2-core machine would skew a timing.
    Returns the seconds waited."""
    t0 = time.monotonic()
    ncpu = os.cpu_count() or 1
    while True:
        b0 = cpu_busy()
        time.sleep(0.5)
        frac = (cpu_busy() - b0) / (0.5 * ncpu)
        waited = time.monotonic() - t0
        if frac < threshold or waited >= max_wait:
            return waited
        time.sleep(1.0)


def run_tool(tool, rundir, servers, timeout, others=(), idle_wait=0):
    """Run TOOL once under /usr/bin/time -v.  Returns a result dict.

    SERVERS: Dovecot instances whose CPU is charged to the run; OTHERS:
    pids of helper processes (the latency proxies) left out of the
    'foreign' CPU (what processes that are not ours used meanwhile)."""
    tfile = os.path.join(rundir, 'time.txt')
    argv = [TIME, '-v', '-o', tfile] + tool.argv()
    waited = wait_idle(idle_wait) if idle_wait else 0.0
    cpu0 = [server_cpu(s) for s in servers]
    oth0 = sum(proc_cpu(p) for p in others)
    busy0 = cpu_busy()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=tool.env(rundir), start_new_session=True)
    holder = h._ProcHolder(proc)
    h._register(holder)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        h.kill_group(proc, grace=1)
        out, err = proc.communicate()
        proc.returncode = 'timeout'
    finally:
        h._unregister(holder)
    wall = time.monotonic() - t0
    time.sleep(0.3)     # let the servers' session processes exit
    cpu1 = [server_cpu(s) for s in servers]
    busy = cpu_busy() - busy0
    oth = sum(proc_cpu(p) for p in others) - oth0
    r = dict(wall=wall, rc=proc.returncode,
             out=out.decode('utf-8', 'replace')[-2000:],
             err=err.decode('utf-8', 'replace')[-2000:],
             server_cpu=sum(b - a for a, b in zip(cpu0, cpu1)),
             helper_cpu=oth, idle_wait=waited)
    try:
        with open(tfile) as f:
            tv = f.read()
        r['rss_kb'] = int(re.search(r'Maximum resident set size \(kbytes\): '
                                    r'(\d+)', tv).group(1))
        r['user'] = float(re.search(r'User time \(seconds\): ([\d.]+)',
                                    tv).group(1))
        r['sys'] = float(re.search(r'System time \(seconds\): ([\d.]+)',
                                   tv).group(1))
        m = re.search(r'Exit status: (\d+)', tv)
        sig = re.search(r'Command terminated by signal (\d+)', tv)
        if sig and r['rc'] != 'timeout':
            # time reports "Exit status: 0" for a child killed by a
            # signal (e.g. a crash): keep that as a failure.
            r['rc'] = 'signal %s' % sig.group(1)
        elif m and r['rc'] != 'timeout':
            r['rc'] = int(m.group(1))
    except (OSError, AttributeError):
        r.update(rss_kb=None, user=None, sys=None)
    r['ok'] = r['rc'] != 'timeout' and tool.ok(r['rc'], r['out'], r['err'])
    r['foreign_cpu'] = max(0.0, busy - r['server_cpu'] - oth -
                           (r['user'] or 0) - (r['sys'] or 0))
    return r


# --------------------------------------------------------------------------
# The 1% incremental change at the source, and its undo

class Increment:
    """1% new messages (appended to the source) and flag changes on 1% of
    the messages; deterministic.  apply() then undo() leaves the source
    with the same mail as before (new UIDs aside)."""

    def __init__(self, base_corpus, base_snap, seed, n_total):
        k = max(1, int(round(n_total * 0.01)))
        self.new = make_corpus(k + len(STANDARD_FOLDERS), seed=seed,
                               profile='standard', large_mb=0, tag='incr')
        # Keep k of them, spread over the folders.
        flat = [(f, m) for f, ms in self.new.items() for m in ms]
        rng = random.Random('incr-%d' % seed)
        keep = rng.sample(flat, k)
        self.new = collections.OrderedDict()
        for f, m in keep:
            self.new.setdefault(f, []).append(m)
        msgs = sorted((f, r[6], r[1]) for f, recs in base_snap.items()
                      for r in recs)
        self.changes = []
        for j, (f, uid, flags) in enumerate(rng.sample(msgs, k)):
            new = set(flags) ^ {'\\seen'}
            if j % 2:
                new ^= {'\\flagged'}
            if j % 4 == 3:
                new.add('bench-changed')
            self.changes.append((f, uid, flags, frozenset(new)))
        self.appended = {}

    @staticmethod
    def _imap_flags(fl):
        names = {'\\seen': '\\Seen', '\\flagged': '\\Flagged',
                 '\\answered': '\\Answered', '\\draft': '\\Draft',
                 '\\deleted': '\\Deleted'}
        return '(' + ' '.join(names.get(x, x) for x in sorted(fl)) + ')'

    def apply(self, server):
        self.appended = {}
        with server.connect(USER) as c:
            for f, msgs in self.new.items():
                for m in msgs:
                    resp = c.append(f, m.data, m.flags, m.date)
                    text = b' '.join(x for x in resp if isinstance(x, bytes))
                    uid = int(re.search(rb'APPENDUID \d+ (\d+)', text).group(1))
                    self.appended.setdefault(f, []).append(uid)
            for f, uid, old, new in self.changes:
                c.select(f, readonly=False)
                c._ok(*c.imap.uid('STORE', str(uid), 'FLAGS',
                                  self._imap_flags(new)), what='STORE')

    def undo(self, server):
        with server.connect(USER) as c:
            for f, uid, old, new in self.changes:
                c.select(f, readonly=False)
                c._ok(*c.imap.uid('STORE', str(uid), 'FLAGS',
                                  self._imap_flags(old)), what='STORE')
            for f, uids in self.appended.items():
                h.expunge_uids(c, f, uids)
        self.appended = {}


# --------------------------------------------------------------------------
# The benchmark proper

SCENARIOS = [('full', 'full copy'), ('noop', 'no-op rerun'),
             ('incr', '1% incremental')]


def fmt_s(x):
    if x is None:
        return '–'
    return '%.2f s' % x if x < 100 else '%.0f s' % x


def fmt_mb(kb):
    return '–' if kb is None else '%.0f MB' % (kb / 1024.0)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix='postino-bench-')
        if not args.keep:
            h._tmpdirs.append(self.work)
        self.ca = h.default_ca()
        self.results = collections.defaultdict(list)  # (scen, tool) -> runs
        self.log_lines = []
        self.run_no = 0
        self.src_proxy = None
        # A private copy of the binary: others may rebuild during the run.
        self.postino_bin = os.path.join(self.work, 'postino')
        shutil.copy2(args.postino, self.postino_bin)

    def make_tool(self, name):
        if name == 'postino':
            return Postino(self.work, self.ca.ca_file, self.postino_bin,
                           self.args.postino_arg)
        if name == 'mbsync':
            return Mbsync(self.work, self.ca.ca_file)
        if name == 'interimap':
            return Interimap(self.work, self.ca.ca_file)
        if name == 'dsync':
            return Dsync(self.work, self.ca.ca_file, self.args.dsync_set)
        raise ValueError(name)

    def new_rundir(self, tool):
        self.run_no += 1
        d = os.path.join(self.work, 'run-%03d-%s' % (self.run_no, tool))
        os.makedirs(d)
        return d

    def check(self, src_snap, dst):
        t0 = time.monotonic()
        exact, why = compare(src_snap, snapshot(dst))
        return exact, why, time.monotonic() - t0

    def one_job(self, tool_name, src, src_snap, incr, rtt, src_ep,
                scen_prefix=''):
        """Fresh destination; full, no-op, incremental.  Records results."""
        tool = self.make_tool(tool_name)
        rundir = self.new_rundir(tool_name)
        dst = h.Dovecot(layout='maildir++', name='dst%d' % self.run_no)
        proxy = None
        try:
            dst_port = dst.imaps_port
            if rtt:
                proxy = DelayProxy(dst.imaps_port, rtt, self.work)
                dst_port = proxy.port
            tool.prepare(src_ep, Endpoint(dst_port, '.', server=dst),
                         rundir)
            for key, label in SCENARIOS:
                if key == 'incr':
                    if incr is None:
                        break
                    incr.apply(src)
                    cur_snap = snapshot(src)
                else:
                    cur_snap = src_snap
                others = [p.proc.pid for p in (proxy, self.src_proxy) if p]
                r = run_tool(tool, rundir, [src, dst], self.args.timeout,
                             others if rtt else (), self.args.idle_wait)
                r['exact'], r['diff'], tcheck = self.check(cur_snap, dst)
                scen = scen_prefix + key
                r['scenario'] = scen
                self.results[(scen, tool_name)].append(r)
                log('  %-9s %-14s %7.2f s  rss %6s  cpu %.2f+%.2f srv %.2f  '
                    'other %.2f  exit %s  exact %s%s' % (
                        tool_name, scen, r['wall'], fmt_mb(r['rss_kb']),
                        r['user'] or 0, r['sys'] or 0, r['server_cpu'],
                        r['foreign_cpu'],
                        r['rc'], 'yes' if r['exact'] else 'no',
                        '' if r['exact'] else ' (%s)' % r['diff'][:300]))
                if not r['ok']:
                    log('    stderr: ' + r['err'].strip()[-600:])
                    log('    stdout: ' + r['out'].strip()[-300:])
                if key == 'incr':
                    incr.undo(src)
        finally:
            if proxy:
                proxy.stop()
            dst.stop()
            if not self.args.keep:
                shutil.rmtree(dst.dir, ignore_errors=True)

    def main_table_runs(self):
        a = self.args
        log('corpus: %d messages, seed %d ...' % (a.messages, a.seed))
        t0 = time.monotonic()
        corpus = make_corpus(a.messages, seed=a.seed, profile='standard',
                             large_mb=a.large_mb)
        n, nbytes = corpus_stats(corpus)
        self.corpus_info = dict(messages=n, bytes=nbytes,
                                folders=len(corpus),
                                duplicates=int(round(a.messages * 0.005)))
        log('  %d messages, %.1f MB, %d folders (%.1fs)' % (
            n, nbytes / 1e6, len(corpus), time.monotonic() - t0))
        src = h.Dovecot(layout='fs', name='src')
        t0 = time.monotonic()
        load(src, corpus)
        src_snap = snapshot(src)
        log('  loaded into the source in %.1fs' % (time.monotonic() - t0))
        if snap_count(src_snap) != n:
            raise RuntimeError('source holds %d messages, not %d' % (
                snap_count(src_snap), n))
        exp = h.expected_snapshot(corpus)
        got = {f: sorted(((r[0], r[1], r[2]) for r in recs),
                         key=h._sort_key) for f, recs in src_snap.items()}
        if got != exp:
            raise RuntimeError('the source does not hold the corpus: %s' %
                               h.diff_snapshots(exp, got)[:5])
        del corpus
        incr = Increment(None, src_snap, a.seed, n)
        src_proxy = self.src_proxy = None
        if a.rtt_ms:
            src_proxy = self.src_proxy = DelayProxy(src.imaps_port, a.rtt_ms,
                                                    self.work)
            self.rtt_measured = probe_rtt(src_proxy.port, self.ca.ca_file)
            log('  latency proxy: NOOP round trip %.1f ms (loopback %.2f ms)'
                % (self.rtt_measured * 1000,
                   probe_rtt(src.imaps_port, self.ca.ca_file) * 1000))
        try:
            for rep in range(a.repeat):
                order = a.peers[rep % len(a.peers):] + \
                    a.peers[:rep % len(a.peers)]
                for rtt in ([0, a.rtt_ms] if a.rtt_ms else [0]):
                    for tool_name in order:
                        log('repeat %d/%d, %s, %s' % (
                            rep + 1, a.repeat, tool_name,
                            'RTT %g ms' % rtt if rtt else 'loopback'))
                        ep = Endpoint(src_proxy.port if rtt else
                                      src.imaps_port, '/')
                        self.one_job(tool_name, src, src_snap, incr, rtt, ep,
                                     scen_prefix='rtt-' if rtt else '')
                        # The source must be as it was (a tool that syncs
                        # both ways, or reads without PEEK, would show).
                        ok, why = compare(src_snap, snapshot(src))
                        if not ok:
                            raise RuntimeError('%s changed the source: %s' % (
                                tool_name, why))
        finally:
            if src_proxy:
                src_proxy.stop()
            src.stop()

    # -- scaling

    def scaling_runs(self):
        a = self.args
        self.scaling = []
        for n in a.scaling:
            log('scaling: %d small messages (90%% INBOX) ...' % n)
            t0 = time.monotonic()
            corpus = make_corpus(n, seed=a.seed, profile='small', tag='s')
            cn, nbytes = corpus_stats(corpus)
            src = h.Dovecot(layout='fs', name='ssrc%d' % n)
            try:
                load(src, corpus)
                del corpus
                src_snap = snapshot(src)
                log('  %d messages, %.1f MB, loaded and read back in %.0fs' % (
                    cn, nbytes / 1e6, time.monotonic() - t0))
                for tool_name in a.scaling_peers:
                    for rep in range(a.scaling_repeat):
                        ep = Endpoint(src.imaps_port, '/')
                        key = 'scale-%d-' % n
                        self.one_job(tool_name, src, src_snap, None, 0, ep,
                                     scen_prefix=key)
                        row = dict(n=cn, bytes=nbytes, tool=tool_name)
                        for s in ('full', 'noop'):
                            r = self.results[(key + s, tool_name)][-1]
                            row[s] = r
                        self.scaling.append(row)
            finally:
                src.stop()
                if not a.keep:
                    shutil.rmtree(src.dir, ignore_errors=True)

    # -- report

    def report(self):
        a = self.args
        out = []
        w = out.append
        tools = a.peers
        peers = [t for t in tools if t != 'postino']
        if a.repeat and self.results:
            ci = self.corpus_info
            w('Corpus: %d messages, %.1f MB, %d folders, seed %d; '
              'medians of %d runs; TLS (imaps, test CA) for every tool.' % (
                  ci['messages'], ci['bytes'] / 1e6, ci['folders'], a.seed,
                  a.repeat))
            if a.rtt_ms:
                w('Latency: a delay-line proxy in front of each server, '
                  '%g ms round trip (measured NOOP: %.1f ms).' % (
                      a.rtt_ms, self.rtt_measured * 1000) +
                  (' dsync reads only the source over IMAP (imapc) and '
                   'writes into the destination\'s storage directly, so '
                   'only its source connection goes through the proxy.'
                   if 'dsync' in tools else ''))
            w('')
            scen = [(k, l + ' (loopback)') for k, l in SCENARIOS]
            if a.rtt_ms:
                scen += [('rtt-' + k, l + ' (%g ms RTT)' % a.rtt_ms)
                         for k, l in SCENARIOS]
            w('Wall time (median):')
            w('')
            hdr = ['scenario'] + tools + ['%s ÷ postino' % p for p in peers
                                          if 'postino' in tools]
            w('| ' + ' | '.join(hdr) + ' |')
            w('|' + '---|' * len(hdr))
            for k, label in scen:
                med = {t: median(r['wall'] for r in self.results[(k, t)])
                       for t in tools}
                row = [label] + [fmt_s(med[t]) for t in tools]
                if 'postino' in tools:
                    for p in peers:
                        row.append('%.2f' % (med[p] / med['postino'])
                                   if med[p] and med['postino'] else '–')
                w('| ' + ' | '.join(row) + ' |')
            w('')
            w('Peak RSS (median of the runs; max in brackets):')
            w('')
            w('| scenario | ' + ' | '.join(tools) + ' |')
            w('|' + '---|' * (len(tools) + 1))
            for k, label in scen:
                row = [label]
                for t in tools:
                    rs = [r['rss_kb'] for r in self.results[(k, t)]
                          if r['rss_kb']]
                    row.append('%s (%s)' % (fmt_mb(median(rs)),
                                            fmt_mb(max(rs)))
                               if rs else '–')
                w('| ' + ' | '.join(row) + ' |')
            w('')
            w('CPU seconds (median): client user+sys / both servers:' +
              (' (dsync\'s doveadm does the destination server\'s '
               'storage work itself, so compare the sums)'
               if 'dsync' in tools else ''))
            w('')
            w('| scenario | ' + ' | '.join(tools) + ' |')
            w('|' + '---|' * (len(tools) + 1))
            for k, label in scen:
                row = [label]
                for t in tools:
                    rs = self.results[(k, t)]
                    cu = median((r['user'] or 0) + (r['sys'] or 0)
                                for r in rs)
                    sv = median(r['server_cpu'] for r in rs)
                    row.append('%.2f / %.2f' % (cu, sv) if cu is not None
                               else '–')
                w('| ' + ' | '.join(row) + ' |')
            w('')
            allruns = [r for (k, t), rs in self.results.items()
                       if not k.startswith('scale') for r in rs]
            fc = sorted(r['foreign_cpu'] for r in allruns)
            w('Noise: CPU used by processes other than the tool, the two '
              'servers and the proxies during a timed run: median %.2f s, '
              'max %.2f s (of %d runs).' % (fc[len(fc) // 2], fc[-1],
                                            len(fc)))
            w('')
            w('Exact (every run of the scenario):')
            w('')
            w('| scenario | ' + ' | '.join(tools) + ' |')
            w('|' + '---|' * (len(tools) + 1))
            for k, label in scen:
                row = [label]
                for t in tools:
                    rs = self.results[(k, t)]
                    if not rs:
                        row.append('–')
                        continue
                    bad = [r for r in rs if not r['exact'] or not r['ok']]
                    if not bad:
                        row.append('yes')
                    else:
                        r = bad[0]
                        why = r['diff'] if not r['exact'] else ''
                        if not r['ok']:
                            why = ('exit %s; ' % r['rc']) + why
                        row.append('no (%d/%d): %s' % (len(bad), len(rs),
                                                       why[:400]))
                w('| ' + ' | '.join(row) + ' |')
            w('')
            if 'postino' in tools:
                self.targets(w, peers)
        if getattr(self, 'scaling', None):
            w('Scaling (%s; small messages, 90%% in INBOX; loopback; '
              'medians of %d):' % (', '.join(a.scaling_peers),
                                   a.scaling_repeat))
            w('')
            w('| tool | messages | MB | full copy | msg/s | peak RSS | '
              'no-op rerun | no-op RSS | CPU client/servers (full) | exact |')
            w('|---|---|---|---|---|---|---|---|---|---|')
            by = collections.defaultdict(list)
            for row in self.scaling:
                by[(row['tool'], row['n'], row['bytes'])].append(row)
            for (tool, n, nbytes), rows in by.items():
                full = median(r['full']['wall'] for r in rows)
                noop = median(r['noop']['wall'] for r in rows)
                rss = median(r['full']['rss_kb'] for r in rows)
                nrss = median(r['noop']['rss_kb'] for r in rows)
                cu = median((r['full']['user'] or 0) + (r['full']['sys'] or 0)
                            for r in rows)
                sv = median(r['full']['server_cpu'] for r in rows)
                ex = all(r['full']['exact'] and r['noop']['exact'] and
                         r['full']['ok'] and r['noop']['ok'] for r in rows)
                why = '' if ex else ': ' + next(
                    (r[s]['diff'] or 'exit %s' % r[s]['rc']) for r in rows
                    for s in ('full', 'noop')
                    if not (r[s]['exact'] and r[s]['ok']))[:200]
                w('| %s | %d | %.0f | %s | %.0f | %s | %s | %s | %.1f / %.1f '
                  '| %s |' % (tool, n, nbytes / 1e6, fmt_s(full), n / full,
                              fmt_mb(rss), fmt_s(noop), fmt_mb(nrss), cu, sv,
                              ('yes' if ex else 'no' + why)))
            w('')
        return '\n'.join(out)

    def targets(self, w, peers):
        def med(k, t):
            return median(r['wall'] for r in self.results[(k, t)])
        rows = []
        p = med('full', 'postino')
        if 'interimap' in peers:
            i = med('full', 'interimap')
            rows.append(('full copy, loopback: ≥ 1.5× faster than interimap',
                         '%.2f×' % (i / p), i / p >= 1.5))
        if 'dsync' in peers:
            d = med('full', 'dsync')
            rows.append(('full copy, loopback: no slower than dsync-imapc',
                         '%s vs %s (%.2f×)' % (fmt_s(p), fmt_s(d), d / p),
                         p <= d))
        # The fastest IMAP-to-IMAP peer: dsync writes into the destination's
        # storage directly, so the latency proxy delays only half of its
        # traffic; it is not the yardstick of this target.
        imap_peers = [x for x in peers if x != 'dsync']
        if self.args.rtt_ms and imap_peers:
            best = min((med('rtt-full', x), x) for x in imap_peers)
            pr = med('rtt-full', 'postino')
            rows.append(('full copy, %g ms RTT: ≥ 2× faster than the fastest '
                         'peer (%s)' % (self.args.rtt_ms, best[1]),
                         '%.2f×' % (best[0] / pr), best[0] / pr >= 2))
        if 'mbsync' in peers:
            for k, label in (('noop', 'no-op rerun'),
                             ('incr', '1% incremental')):
                m, q = med(k, 'mbsync'), med(k, 'postino')
                rows.append(('%s, loopback: no slower than mbsync' % label,
                             '%s vs %s (%.2f×)' % (fmt_s(q), fmt_s(m), m / q),
                             q <= m))
        rss = max((r['rss_kb'] or 0) for (k, t), rs in self.results.items()
                  if t == 'postino' and not k.startswith('scale') for r in rs)
        rows.append(('peak RSS < 32 MB (largest of all postino runs above)',
                     fmt_mb(rss), rss < 32 * 1024))
        w('Targets (from the same run; ratios are peer time ÷ postino time):')
        w('')
        w('| target | measured | met? |')
        w('|---|---|---|')
        for t, m, ok in rows:
            w('| %s | %s | %s |' % (t, m, 'yes' if ok else '**no**'))
        w('')


# --------------------------------------------------------------------------

def machine_info(postino, source=None):
    def cmd(argv):
        try:
            r = subprocess.run(argv, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=20)
            return r.stdout.decode('utf-8', 'replace').strip()
        except OSError:
            return '(not found)'

    def deb(pkg):
        return cmd(['dpkg-query', '-W', '-f=${Version}', pkg])
    mem = 0
    with open('/proc/meminfo') as f:
        for ln in f:
            if ln.startswith('MemTotal:'):
                mem = int(ln.split()[1]) // 1024
    cpu = ''
    with open('/proc/cpuinfo') as f:
        for ln in f:
            if ln.startswith('model name'):
                cpu = ln.split(':', 1)[1].strip()
                break
    info = dict(nproc=os.cpu_count(), mem_mb=mem, cpu=cpu,
                kernel=platform.release(),
                debian=open('/etc/debian_version').read().strip()
                if os.path.exists('/etc/debian_version') else '?',
                dovecot=cmd(['dovecot', '--version']),
                isync=deb('isync'), interimap=deb('interimap'),
                postino=cmd([postino, '--version']),
                python=platform.python_version())
    env = dict(os.environ, GIT_OPTIONAL_LOCKS='0')
    info['postino_path'] = source or postino
    try:
        if source and os.path.realpath(source) != os.path.realpath(
                os.path.join(ROOT, 'build', 'postino')):
            raise OSError('not this tree\'s build: no commit to report')
        info['commit'] = subprocess.run(
            ['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            timeout=20).stdout.decode().strip()
        dirty = subprocess.run(
            ['git', '-C', ROOT, 'status', '--porcelain', '--', 'src',
             'state', 'meson.build'], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env,
            timeout=20).stdout.decode().split('\n')
        info['dirty'] = [ln[3:] for ln in dirty if ln.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    with open(postino, 'rb') as f:
        info['postino_sha256'] = hashlib.sha256(f.read()).hexdigest()[:16]
    return info


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description='Benchmark postino against mbsync, interimap and dsync on '
        'private Dovecot servers (127.0.0.1 only).')
    ap.add_argument('--messages', type=int, default=2000,
                    help='messages in the main corpus (default 2000)')
    ap.add_argument('--repeat', type=int, default=3,
                    help='runs per tool and scenario (default 3); 0 skips '
                    'the main table')
    ap.add_argument('--rtt-ms', type=float, default=20,
                    help='round-trip time of the latency proxy (default 20; '
                    '0: no latency scenarios)')
    ap.add_argument('--peers', default='postino,mbsync,interimap,dsync',
                    help='tools to run, of %s (default all)' %
                    ', '.join(TOOLS))
    ap.add_argument('--scaling', default='',
                    help='comma-separated message counts for the scaling '
                    'table, e.g. 1000,10000,100000 (default: none)')
    ap.add_argument('--scaling-peers', default='postino',
                    help='tools for the scaling table (default postino)')
    ap.add_argument('--scaling-repeat', type=int, default=1)
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--large-mb', type=float, default=20,
                    help='size of the one large message (default 20)')
    ap.add_argument('--quick', action='store_true',
                    help='a smoke run: 200 messages, a 2 MB large message, '
                    '1 repetition, scaling 1000 unless given')
    ap.add_argument('--postino', default=os.path.join(ROOT, 'build',
                                                      'postino'),
                    help='the binary (default build/postino; copied first)')
    ap.add_argument('--label', default='',
                    help='free text printed with the machine line, e.g. '
                    'which commit a --postino binary was built from')
    ap.add_argument('--postino-arg', action='append', default=[],
                    help='extra argument for postino copy (repeatable), '
                    'e.g. --postino-arg=--jobs=1')
    ap.add_argument('--dsync-set', action='append', default=[],
                    metavar='KEY=VALUE',
                    help='extra Dovecot setting for dsync (repeatable; '
                    'overrides the defaults), e.g. --dsync-set '
                    'imapc_features="rfc822.size fetch-headers"')
    ap.add_argument('--timeout', type=float, default=3600,
                    help='seconds before a tool run is killed')
    ap.add_argument('--idle-wait', type=float, default=60,
                    help='before each timed run, wait up to this many '
                    'seconds for the machine to be nearly idle (default 60; '
                    '0: do not wait)')
    ap.add_argument('--json', help='also write every run as JSON here')
    ap.add_argument('--keep', action='store_true',
                    help='keep the temporary directories')
    ap.add_argument('--serve', action='store_true',
                    help='only load the corpus into a source and start an '
                    'empty destination, print a postino command line and '
                    'wait (for profiling); Ctrl-C stops the servers')
    a = ap.parse_args(argv)
    if a.quick:
        a.messages = 200 if a.messages == 2000 else a.messages
        a.large_mb = 2 if a.large_mb == 20 else a.large_mb
        a.repeat = 1 if a.repeat == 3 else a.repeat
        a.scaling = a.scaling or '1000'
    a.peers = [p.strip() for p in a.peers.split(',') if p.strip()]
    a.scaling_peers = [p.strip() for p in a.scaling_peers.split(',')
                       if p.strip()]
    a.scaling = [int(x) for x in a.scaling.split(',') if x.strip()]
    for x in a.dsync_set:
        if '=' not in x or not x.split('=', 1)[0].strip():
            ap.error('--dsync-set wants KEY=VALUE, not %r' % x)
    for p in a.peers + a.scaling_peers:
        if p not in TOOLS:
            ap.error('unknown tool %r (%s)' % (p, ', '.join(TOOLS)))
    return a


def preflight(a):
    need = ['dovecot', 'certtool', TIME]
    for p in set(a.peers + (a.scaling_peers if a.scaling else [])):
        if p != 'postino':
            need.append({'dsync': 'doveadm'}.get(p, p))
    missing = [x for x in need if shutil.which(x) is None]
    if not os.access(a.postino, os.X_OK):
        log('postino binary not found at %s: build it (meson setup build && '
            'ninja -C build) or give --postino' % a.postino)
        return False
    if missing:
        for x in missing:
            log('missing: %s — install it with: %s' % (
                x, INSTALL_HINT.get(x, '?')))
        log('(or leave a peer out with --peers postino,...)')
        return False
    return True


def serve(a, bench):
    corpus = make_corpus(a.messages, seed=a.seed, large_mb=a.large_mb)
    src = h.Dovecot(layout='fs', name='src')
    load(src, corpus)
    dst = h.Dovecot(layout='maildir++', name='dst')
    n, b = corpus_stats(corpus)
    print('source: %d messages, %.1f MB' % (n, b / 1e6))
    print('POSTINO_PASSWORD1=%s POSTINO_PASSWORD2=%s %s copy '
          'imaps://%s@localhost:%d imaps://%s@localhost:%d --state %s/st.db '
          '--ca-file %s' % (PASSWORD, PASSWORD, a.postino, USER,
                            src.imaps_port, USER, dst.imaps_port, bench.work,
                            bench.ca.ca_file), flush=True)
    print('Ctrl-C (or SIGTERM to %d) stops the servers' % os.getpid(),
          flush=True)
    try:
        signal.pause()
    finally:
        src.stop()
        dst.stop()


def main(argv=None):
    a = parse_args(argv if argv is not None else sys.argv[1:])
    if not preflight(a):
        return 2
    h.install_signal_handlers()
    bench = Bench(a)
    info = machine_info(bench.postino_bin, a.postino)
    import shlex
    cmdline = 'python3 bench/run.py ' + ' '.join(
        shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv))
    t_start = time.monotonic()
    try:
        if a.serve:
            serve(a, bench)
            return 0
        if a.repeat > 0:
            bench.main_table_runs()
        if a.scaling:
            bench.scaling_runs()
    finally:
        h.cleanup_all()
    text = bench.report()
    print('Command: `%s`' % cmdline)
    print('')
    print('Machine: %d CPUs (%s), %d MB RAM, Debian %s, kernel %s; '
          'Dovecot %s (servers and dsync), mbsync (isync) %s, interimap %s, '
          '%s (%s, sha256 %s, commit %s%s); total time %.0f s.' % (
              info['nproc'], info['cpu'], info['mem_mb'], info['debian'],
              info['kernel'], info['dovecot'], info['isync'],
              info['interimap'], info['postino'], info['postino_path'],
              info['postino_sha256'], info.get('commit', '?'),
              ' + uncommitted changes in %s' % ', '.join(info['dirty'])
              if info.get('dirty') else '', time.monotonic() - t_start) +
          (' ' + a.label if a.label else ''))
    print('')
    print(text)
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(dict(command=cmdline, machine=info,
                           corpus=getattr(bench, 'corpus_info', None),
                           runs={'%s/%s' % k: v
                                 for k, v in bench.results.items()},
                           scaling=[dict(tool=r['tool'], n=r['n'],
                                         bytes=r['bytes'])
                                    for r in getattr(bench, 'scaling', [])]),
                      f, indent=1, default=str)
    return 0


if __name__ == '__main__':
    sys.exit(main())
