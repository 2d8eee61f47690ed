#!/usr/bin/env python3
"""test_mirror — `postino mirror` keeps two accounts equal, both ways.

A: Dovecot maildir LAYOUT=fs (separator '/'); B: maildir++ (separator '.').
Each starts with messages of its own, byte-identical messages on both sides
(which must be paired, never duplicated; flags are the union), a double
delivery, two different messages sharing a Message-ID, a message without
Message-ID, a message flagged \\Deleted (which must survive every expunge
postino does), keywords, nested and non-ASCII folders, folders on one side
only (one of them empty).

postino reaches A and B through counting proxies (tests/tools/faultproxy.py)
so the test can see which commands it sent to each side.

Proves, each step followed by "A and B equal each other and the expected
result" and by a rerun that exits 0 and changes nothing (same UIDs, same
UIDNEXT/HIGHESTMODSEQ, no writing command sent):
  - the first run makes the union; exactly the missing messages are copied;
  - changes on A only (new message, flag added/removed, keyword added/
    removed) reach B, and nothing is written to A; the same from B to A;
  - changes on both sides: different flags of the same message are both
    applied, the same flag changed both ways once, new messages both ways;
  - an expunge on A removes the message from B (and vice versa);
  - expunged on A but flags changed on B: kept on both, reported, exit 1;
  - a move on A (and on B) is reproduced as a move: no APPEND;
  - a new folder (nested, non-ASCII, empty) on B is created on A;
  - mass-deletion guard: 60 of 100 expunged on A -> exit 1, nothing deleted
    on B in that folder (a deletion elsewhere still goes through), the
    held-back messages not copied back; --force deletes them; 50 of 55 is
    below the guard;
  - a deleted state file, and a folder whose UIDVALIDITY changed, cause no
    deletion and no duplicate (the union again);
  - --max-delete/--max-delete-percent lower the guard;
  - failures give their exit codes and change nothing: wrong password (5),
    unreachable server (3), unknown CA (6), usage (2);
  - a new message and a flag change made on B while a pass is busy copying
    into the same folder (a slow link from A) reach A at the next run: the
    pass does not record marks that hide them from the fast path;
  - POSTINO_TEST_EXIT_AFTER=N for every step N of a first run and of an
    incremental run (with deletions and a move): a plain rerun converges to
    what an uninterrupted run gives, without loss or duplicate.
"""

import calendar
import hashlib
import os
import random
import re
import sys

import harness as h
from harness import check

sys.path.insert(0, os.path.join(h.SOURCE_ROOT, 'tests', 'tools'))
import faultproxy  # noqa: E402

# Commands that change an account.
WRITES = ('APPEND', 'STORE', 'UID STORE', 'EXPUNGE', 'UID EXPUNGE', 'MOVE',
          'UID MOVE', 'COPY', 'UID COPY', 'CREATE', 'DELETE', 'RENAME',
          'SUBSCRIBE', 'UNSUBSCRIBE')
MOVES = ('MOVE', 'UID MOVE', 'COPY', 'UID COPY')
EXPUNGES = ('EXPUNGE', 'UID EXPUNGE')

# Steps tried at most when looking for the end of a run (safety bound).
MAX_STEPS = 400

SIDES = ('A', 'B')


# --------------------------------------------------------------------------
# Test messages

class Catalogue:
    """label -> Msg (bytes and INTERNALDATE); deterministic."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.msgs = {}
        self.n = 0

    def __getitem__(self, label):
        if label not in self.msgs:
            self.add(label)
        return self.msgs[label]

    def add(self, label, data=None, message_id=True, size=None):
        self.n += 1
        rng = self.rng
        if data is None:
            data = h.synthetic_message(
                rng, 7000 + self.n, size=size or rng.choice(
                    [400, 900, 2500, 6000]), message_id=message_id,
                charset_body=self.n % 3 == 0)
            # Make the label visible in the message (debugging), and the
            # bytes unique even for two labels with equal synthetic parts.
            data = data.replace(b'Subject: ', ('Subject: [%s] ' % label)
                                .encode(), 1)
        t = calendar.timegm((2019, 1, 1, 0, 0, 0, 0, 0, 0)) + \
            rng.randint(0, 5 * 365 * 86400)
        self.msgs[label] = h.Msg(data, (), (t, rng.choice([0, 60, -300, 330])),
                                 label)
        return self.msgs[label]

    def sha(self, label):
        return h.sha256_of(self[label].data)

    def message_id(self, label):
        m = re.search(rb'Message-ID: <([^>]*)>', self[label].data)
        return m.group(1).decode() if m else None


def same_id_pair(cat):
    """Two different messages sharing a Message-ID (a resent message)."""
    a = cat['sameid-a'].data
    mid = b'Message-ID: <same-id-mirror@test.postino>'
    a2 = re.sub(rb'Message-ID: <[^>]*>', mid, a)
    b2 = a2.replace(b'Subject: ', b'Subject: Re-sent: ', 1)
    cat.add('sameid-a', a2)
    cat.add('sameid-b', b2)


# An account pair described as entries (folder, label, flags on A or None,
# flags on B or None), plus folders that exist empty.

def populate_spec(pair, cat, spec, empty_a=(), empty_b=()):
    for side, server in (('A', pair.a), ('B', pair.b)):
        idx = 2 if side == 'A' else 3
        with server.connect(pair.user) as c:
            made = set()
            for e in spec:
                folder = e[0]
                if e[idx] is None:
                    continue
                if folder != 'INBOX' and folder not in made:
                    c.create(folder)
                    made.add(folder)
                m = cat[e[1]]
                c.append(folder, m.data, e[idx], m.date)
            for folder in (empty_a if side == 'A' else empty_b):
                c.create(folder)


def spec_expected(cat, spec, empty=()):
    """The union: each entry once with the union of its flags."""
    e = Expected()
    for folder in empty:
        e.folder(folder)
    for folder, label, fa, fb in spec:
        flags = set(fa or ()) | set(fb or ())
        e.add(folder, cat.sha(label), flags, cat[label].date[0])
    return e


class Expected:
    """The mail both accounts should hold: {folder: [[sha, flags, epoch]]}."""

    def __init__(self):
        self.f = {'INBOX': []}

    def copy(self):
        e = Expected()
        e.f = {k: [[s, set(fl), t] for s, fl, t in v]
               for k, v in self.f.items()}
        return e

    def folder(self, folder):
        self.f.setdefault(folder, [])

    def add(self, folder, sha, flags, epoch):
        self.folder(folder)
        self.f[folder].append([sha, set(h.norm_flags(flags)), epoch])

    def find(self, folder, sha):
        hits = [m for m in self.f.get(folder, []) if m[0] == sha]
        if len(hits) != 1:
            raise h.TestFailure('test bug: %d expected copies of %s… in %s' %
                                (len(hits), sha[:12], folder))
        return hits[0]

    def remove(self, folder, sha):
        m = self.find(folder, sha)
        self.f[folder].remove(m)
        return m

    def flags(self, folder, sha, op, flags):
        m = self.find(folder, sha)
        fl = set(h.norm_flags(flags))
        if op.startswith('+'):
            m[1] |= fl
        elif op.startswith('-'):
            m[1] -= fl
        else:
            m[1] = fl

    def snap(self):
        return {k: sorted(((s, frozenset(fl), t) for s, fl, t in v),
                          key=lambda x: (x[0], sorted(x[1]), x[2]))
                for k, v in self.f.items()}


# --------------------------------------------------------------------------
# The account pair and postino runs

class Pair:
    """Accounts USER on A and B, the state file, and (with proxies) the
    counting proxies postino goes through."""

    def __init__(self, a, b, user, state, proxies=False):
        self.a, self.b, self.user, self.state = a, b, user, state
        self.pa = self.pb = None
        if proxies:
            self.pa = faultproxy.FaultProxy('127.0.0.1', a.imap_port).start()
            self.pb = faultproxy.FaultProxy('127.0.0.1', b.imap_port).start()
            self.a_url = 'imap://%s@localhost:%d?tls=none' % (user,
                                                              self.pa.port)
            self.b_url = 'imap://%s@localhost:%d?tls=none' % (user,
                                                              self.pb.port)
        else:
            self.a_url = a.url(user)
            self.b_url = b.url(user)
        self.cmds = None

    def server(self, side):
        return self.a if side == 'A' else self.b

    def args(self, extra=()):
        return ['mirror', self.a_url, self.b_url, '--state', self.state,
                '--ca-file', h.default_ca().ca_file] + list(extra)

    def run(self, what, expect=(0,), extra=(), env=None, echo=True):
        """Run postino mirror; check its exit code is in EXPECT (None: no
        check).  Afterwards self.cmds = {side: Counter of the commands
        postino sent to that side during this run} (with proxies)."""
        before = {}
        if self.pa:
            before = {'A': self.pa.commands(), 'B': self.pb.commands()}
        r = h.run_postino(self.args(extra), env_extra=env, echo=echo)
        if self.pa:
            # The proxy counts a command when its line has arrived; give
            # the last ones (LOGOUT) a moment.
            self.pa.wait(lambda p: p.open_connections() == 0, timeout=3)
            self.pb.wait(lambda p: p.open_connections() == 0, timeout=3)
            self.cmds = {'A': self.pa.commands() - before['A'],
                         'B': self.pb.commands() - before['B']}
        if echo:
            tail = [ln for ln in (r.stdout + r.stderr).splitlines()
                    if ln.strip()][-4:]
            for ln in tail:
                h.log('    | ' + ln)
        if expect is not None:
            if isinstance(expect, int):
                expect = (expect,)
            check(r.returncode in expect, '%s: exit %s' % (
                what, ' or '.join(map(str, expect))), h.show(r))
        return r

    def writes(self, side, verbs=WRITES):
        return {k: v for k, v in self.cmds[side].items() if k in verbs}

    def snaps(self, uids=False):
        return (h.snapshot(self.a, self.user, with_uids=uids),
                h.snapshot(self.b, self.user, with_uids=uids))

    def status(self):
        return (h.folder_status(self.a, self.user),
                h.folder_status(self.b, self.user))

    def remove_state(self):
        n = 0
        for suffix in ('', '-wal', '-shm', '-journal'):
            p = self.state + suffix
            if os.path.exists(p):
                os.unlink(p)
                n += 1
        return n


SUMMARY_RE = re.compile(
    r'mirrored: (\d+) A->B, (\d+) B->A, (\d+) flag updates?, (\d+) deleted, '
    r'(\d+) moved, (\d+) paired, (\d+) kept, (\d+) deletions? held')
SUMMARY_KEYS = ('ab', 'ba', 'flags', 'deleted', 'moved', 'paired', 'kept',
                'held')


def summary(r):
    """postino mirror's last summary line -> dict, or None."""
    found = None
    for line in (r.stdout + r.stderr).splitlines():
        m = SUMMARY_RE.search(line)
        if m:
            found = dict(zip(SUMMARY_KEYS, map(int, m.groups())))
    return found


def check_summary(r, what, **want):
    """The summary line says WANT (the keys given; the others are free)."""
    s = summary(r)
    check(s is not None and all(s[k] == v for k, v in want.items()),
          '%s: the summary says %s' % (what, ', '.join(
              '%s=%d' % kv for kv in sorted(want.items()))),
          'summary: %r\n%s' % (s, h.show(r)))


def check_equal(pair, what, expected=None):
    """A == B (== EXPECTED); returns A's snapshot."""
    sa, sb = pair.snaps()
    h.check_same(sa, sb, what + ': A and B hold the same mail', ('A', 'B'))
    if expected is not None:
        h.check_same(expected.snap(), sa, what + ': and it is the expected '
                     'mail', ('expected', 'A and B'))
    return sa


def check_noop_rerun(pair, what):
    """A rerun exits 0 and changes nothing at all."""
    snaps = pair.snaps(uids=True)
    status = pair.status()
    r = pair.run(what + ': rerun', expect=0)
    check_summary(r, what + ': rerun', **{k: 0 for k in SUMMARY_KEYS})
    check(pair.snaps(uids=True) == snaps,
          what + ': rerun changed no message (same UIDs, flags, dates)',
          '\n'.join(h.diff_snapshots(snaps[0], pair.snaps()[0], ('before',
                                                                  'after'))))
    after = pair.status()
    check(after == status, what + ': rerun left UIDNEXT, HIGHESTMODSEQ and '
          'UIDVALIDITY of every folder unchanged on both sides',
          '\n'.join('%s %s: %s -> %s' % (s, f, status[i].get(f),
                                         after[i].get(f))
                    for i, s in enumerate(SIDES)
                    for f in sorted(set(status[i]) | set(after[i]))
                    if status[i].get(f) != after[i].get(f)))
    if pair.pa:
        check(not pair.writes('A') and not pair.writes('B'),
              what + ': rerun sent no writing command to either side',
              pair.cmds)


# --------------------------------------------------------------------------
# Changes through imaplib, applied to the accounts and to the expectation

def do_ops(pair, cat, ops, exp=None):
    """OPS: tuples (side, op, ...):
      (S, 'append', folder, label, flags)
      (S, 'flags', folder, label, '+FLAGS'|'-FLAGS', [flags])
      (S, 'expunge', folder, label)
      (S, 'move', src, dst, label)
      (S, 'create', folder)
    Each is applied to side S; EXP (an Expected) follows the op as a
    change that must reach the other side."""
    for op in ops:
        side, kind = op[0], op[1]
        server = pair.server(side)
        with server.connect(pair.user) as c:
            if kind == 'append':
                folder, label, flags = op[2:]
                m = cat[label]
                c.append(folder, m.data, flags, m.date)
                if exp:
                    exp.add(folder, cat.sha(label), flags, m.date[0])
                continue
            if kind == 'create':
                c.create(op[2])
                if exp:
                    exp.folder(op[2])
                continue
            folder, label = (op[2], op[3]) if kind != 'move' else (op[2],
                                                                   op[4])
            uids = h.uids_of(c, folder, cat[label].data)
            if len(uids) != 1:
                raise h.TestFailure('test setup: %s has %d copies of %s in '
                                    '%s' % (side, len(uids), label, folder))
            if kind == 'flags':
                c.uid_store(folder, uids[0], op[4], op[5])
                if exp:
                    exp.flags(folder, cat.sha(label), op[4], op[5])
            elif kind == 'expunge':
                h.expunge_uids(c, folder, uids)
                if exp:
                    exp.remove(folder, cat.sha(label))
            elif kind == 'move':
                h.move_uids(c, folder, op[3], uids)
                if exp:
                    m = exp.remove(folder, cat.sha(label))
                    exp.folder(op[3])
                    exp.f[op[3]].append(m)
            else:
                raise ValueError(kind)
    h.log('  changes: ' + '; '.join(
        '%s %s %s' % (o[0], o[1], ' '.join(str(x) for x in o[2:]))
        for o in ops))


def sync_step(pair, exp, what, expect=0):
    """Mirror, check the expected result, then a no-op rerun."""
    r = pair.run(what, expect=expect)
    check_equal(pair, what, exp)
    check_noop_rerun(pair, what)
    return r


def uidnext_growth(before, after):
    """{folder: UIDs allocated} between two folder_status() results."""
    out = {}
    for f, st in after.items():
        grew = st[1] - (before[f][1] if f in before else 1)
        if grew:
            out[f] = grew
    return out


# --------------------------------------------------------------------------
# The main account

def initial_spec(cat):
    same_id_pair(cat)
    cat.add('nomid', message_id=False)
    S, F, D = '\\Seen', '\\Flagged', '\\Deleted'
    spec = [
        ('INBOX', 'a1', (S,), None),
        ('INBOX', 'a2', (S, '$Forwarded', 'work'), None),
        ('INBOX', 'a3', (D,), None),                  # flagged \Deleted
        ('INBOX', 'b1', None, ()),
        ('INBOX', 'b2', None, (F, 'project-x')),
        ('INBOX', 's1', (S,), (S,)),                  # identical on both
        ('INBOX', 's2', (), ()),
        ('INBOX', 's3', (S,), (F, '$Label1')),        # flags differ: union
        ('INBOX', 'nomid', ('work',), ('work',)),     # no Message-ID
        ('INBOX', 'dup', (S,), (S,)),                 # double delivery on A,
        ('INBOX', 'dup', (S,), None),                 # single on B
        ('INBOX', 'sameid-a', (), None),              # same Message-ID,
        ('INBOX', 'sameid-b', None, (S,)),            # other bytes
        ('Archive/2023', 'arch1', (S,), (S, '\\Answered')),
        ('Archive/2023', 'arch2', ('todo',), None),
        ('Archive/2023', 'arch3', None, ()),
        ('Sent', 'sent1', (S,), (S,)),
        ('Sent', 'sent2', (S,), None),
        ('Café', 'cafe1', (S,), None),                # only on A
        ('Café', 'cafe2', ('$Label1',), None),
        ('日本語/レポート', 'jp1', None, (F,)),        # only on B
        ('日本語/レポート', 'jp2', None, ()),
        ('with space', 'ws1', None, (S,)),
    ]
    return spec, ['Leer'], []       # 'Leer': an empty folder on A only


def error_exits(pair, tmp):
    """The exit codes of runs that cannot work; none changes anything."""
    before = pair.snaps(uids=True)
    ca = ['--ca-file', h.default_ca().ca_file]
    closed = 'imap://alice@localhost:%d?tls=none' % h.free_ports(1)[0]
    cases = [
        ('B\'s password wrong', 5, ['mirror', pair.a_url, pair.b_url,
                                    '--state', os.path.join(tmp, 'e1.db')] +
         ca, ('secret', 'wrong')),
        ('B unreachable (closed port)', 3,
         ['mirror', pair.a_url, closed, '--state',
          os.path.join(tmp, 'e2.db')] + ca, ('secret', 'secret')),
        ('imaps with a certificate of an unknown CA (no --ca-file)', 6,
         ['mirror', pair.a.url(), pair.b.url(), '--state',
          os.path.join(tmp, 'e3.db')], ('secret', 'secret')),
        ('only one URL', 2, ['mirror', pair.a_url, '--state',
                             os.path.join(tmp, 'e4.db')] + ca,
         ('secret', 'secret')),
        ('an unknown option', 2, ['mirror', pair.a_url, pair.b_url,
                                  '--state', os.path.join(tmp, 'e5.db'),
                                  '--no-such-option'] + ca,
         ('secret', 'secret')),
    ]
    for what, code, args, pw in cases:
        r = h.run_postino(args, passwords=pw, timeout=120)
        check(r.returncode == code and r.stderr.strip(),
              'mirror, %s: exit %d with a message' % (what, code), h.show(r))
    check(pair.snaps(uids=True) == before,
          'the failed runs changed nothing on A or B')


def first_run(pair, cat, spec, empty_a, empty_b):
    exp = spec_expected(cat, spec, list(empty_a) + list(empty_b))
    sa0, sb0 = pair.snaps()
    h.log('A: %s\nB: %s' % (h.describe(sa0), h.describe(sb0)))
    check(sa0 != sb0 and set(sa0) != set(sb0),
          'setup: A and B differ in messages and folders')
    st0 = pair.status()
    r = pair.run('first run', expect=0)
    check_equal(pair, 'first run (union)', exp)
    # Copies: what each side lacked; paired: s1 s2 s3 nomid dup arch1 sent1.
    lack_a = sum(len(exp.f[f]) - len(sa0.get(f, [])) for f in exp.f)
    lack_b = sum(len(exp.f[f]) - len(sb0.get(f, [])) for f in exp.f)
    check_summary(r, 'first run', ab=lack_b, ba=lack_a, paired=7, deleted=0,
                  moved=0, kept=0, held=0)
    sa = pair.snaps()[0]
    check(len(sa['INBOX']) == 13 and h.duplicates(sa) == {'INBOX': 1},
          'first run: the identical messages were paired, not duplicated '
          '(INBOX: 13 messages, the double delivery twice)',
          h.describe(sa))
    # Exactly the missing messages were copied: UIDNEXT grew by as many.
    st1 = pair.status()
    for i, side, before in ((0, 'A', sa0), (1, 'B', sb0)):
        want = {f: len(exp.f[f]) - len(before.get(f, [])) for f in exp.f}
        want = {f: n for f, n in want.items() if n}
        got = uidnext_growth(st0[i], st1[i])
        check(got == want, 'first run: %s received exactly the messages it '
              'lacked (%d), each once' % (side, sum(want.values())),
              'UIDs allocated per folder: %r, expected %r' % (got, want))
    check(pair.writes('A', EXPUNGES) == {} and
          pair.writes('B', EXPUNGES) == {},
          'first run: nothing expunged on either side', pair.cmds)
    with pair.b.connect(pair.user) as c:
        raw = c.imap.list('""', '"*"')[1]
    check(any(b'"Caf&AOk-"' in x or b' Caf&AOk-' in x for x in raw if x),
          'first run: Café created on B with its maildir++ wire name', raw)
    check_noop_rerun(pair, 'first run')
    return exp


def one_sided(pair, cat, exp, side):
    other = 'B' if side == 'A' else 'A'
    S = '\\Seen'
    if side == 'A':
        ops = [('A', 'append', 'INBOX', 'new-a1', (S,)),
               ('A', 'flags', 'INBOX', 'a1', '-FLAGS', [S]),
               ('A', 'flags', 'INBOX', 'b1', '+FLAGS', ['\\Flagged']),
               ('A', 'flags', 'INBOX', 's2', '+FLAGS', ['work']),
               ('A', 'flags', 'INBOX', 'a2', '-FLAGS', ['work']),
               ('A', 'flags', 'Café', 'cafe2', '+FLAGS', ['\\Answered'])]
    else:
        ops = [('B', 'append', 'Archive/2023', 'new-b1', ('$Label1',)),
               ('B', 'flags', 'INBOX', 's1', '-FLAGS', [S]),
               ('B', 'flags', 'Archive/2023', 'arch3', '+FLAGS', [S]),
               ('B', 'flags', '日本語/レポート', 'jp1', '-FLAGS',
                ['\\Flagged']),
               ('B', 'flags', 'INBOX', 'b2', '-FLAGS', ['project-x']),
               ('B', 'flags', 'INBOX', 'b2', '+FLAGS', ['todo'])]
    do_ops(pair, cat, ops, exp)
    what = 'changes on %s only' % side
    pair.run(what, expect=0)
    check_equal(pair, what, exp)
    check(not pair.writes(side),
          '%s: nothing written to %s, where nothing was to change' % (
              what, side), pair.cmds)
    check(pair.cmds[other].get('APPEND', 0) >= 1 and
          not pair.writes(other, EXPUNGES + MOVES),
          '%s: %s got the new message by APPEND, nothing expunged or moved' %
          (what, other), pair.cmds)
    check_noop_rerun(pair, what)


def both_sides(pair, cat, exp):
    S, F = '\\Seen', '\\Flagged'
    # Current flags, to make the scenario's premises explicit.
    premises = {('INBOX', 's3'): {'\\seen', '\\flagged', '$label1'},
                ('INBOX', 's1'): set(),
                ('Archive/2023', 'arch1'): {'\\seen', '\\answered'},
                ('INBOX', 'b1'): {'\\flagged'}}
    for (folder, label), fl in premises.items():
        got = exp.find(folder, cat.sha(label))[1]
        if got != fl:
            raise h.TestFailure('test bug: %s flags %s, premise %s' % (
                label, got, fl))
    ops = [('A', 'flags', 'INBOX', 's3', '-FLAGS', [F]),   # different flags
           ('B', 'flags', 'INBOX', 's3', '+FLAGS', ['\\Answered']),
           ('A', 'flags', 'INBOX', 's1', '+FLAGS', [S]),   # same flag, same
           ('B', 'flags', 'INBOX', 's1', '+FLAGS', [S]),   # way, both sides
           ('A', 'flags', 'Archive/2023', 'arch1', '-FLAGS', ['\\Answered']),
           ('B', 'flags', 'Archive/2023', 'arch1', '-FLAGS', ['\\Answered']),
           ('A', 'flags', 'INBOX', 'b1', '+FLAGS', ['work']),  # keywords
           ('B', 'flags', 'INBOX', 'b1', '+FLAGS', ['$Label1']),
           ('A', 'append', 'INBOX', 'new-a2', ()),
           ('B', 'append', 'INBOX', 'new-b2', (F,))]
    do_ops(pair, cat, ops, exp)
    check(exp.find('INBOX', cat.sha('s3'))[1] ==
          {'\\seen', '$label1', '\\answered'},
          'premise: s3 should end with \\Seen $Label1 \\Answered')
    sync_step(pair, exp, 'changes on both sides')


def deletions(pair, cat, exp, side):
    other = 'B' if side == 'A' else 'A'
    if side == 'A':
        ops = [('A', 'expunge', 'INBOX', 'a2'),
               ('A', 'expunge', 'Café', 'cafe1')]
    else:
        ops = [('B', 'expunge', 'INBOX', 'b2'),
               ('B', 'expunge', '日本語/レポート', 'jp2')]
    do_ops(pair, cat, ops, exp)
    what = 'expunged on %s' % side
    r = pair.run(what, expect=0)
    check_summary(r, what, deleted=2, ab=0, ba=0, moved=0, kept=0)
    check_equal(pair, what + ' -> expunged on %s too' % other, exp)
    with pair.server(other).connect(pair.user) as c:
        inbox = c.messages('INBOX')
    check(any(m[1] == h.served_form(cat['a3'].data) and '\\Deleted' in m[2]
              for m in inbox),
          what + ': the message flagged \\Deleted (never expunged by the '
          'user) is still on %s' % other)
    check(sum(pair.writes(other, EXPUNGES).values()) >= 1 and
          not pair.writes(other, ('APPEND',) + MOVES) and
          not pair.writes(side),
          what + ': %s got an expunge and nothing else that adds mail; '
          'nothing written to %s' % (other, side), pair.cmds)
    check_noop_rerun(pair, what)


def conflict(pair, cat, exp):
    """Expunged on A, flags changed on B: kept on both, reported."""
    ops = [('A', 'expunge', 'Archive/2023', 'arch2'),
           ('B', 'flags', 'Archive/2023', 'arch2', '+FLAGS', ['\\Flagged'])]
    do_ops(pair, cat, ops)          # exp: the message stays, B's flags
    exp.flags('Archive/2023', cat.sha('arch2'), '+FLAGS', ['\\Flagged'])
    what = 'expunged on A, flags changed on B'
    r = pair.run(what + ' (a conflict: exit 1)', expect=1)
    check_equal(pair, what + ': kept on both, with B\'s flags', exp)
    out = r.stdout + r.stderr
    lines = [ln for ln in out.splitlines()
             if 'Archive/2023' in ln and 'deleted on A' in ln and
             'changed on B' in ln and 'kept' in ln]
    check(lines, what + ': postino reports it: "Archive/2023: message '
          'deleted on A but changed on B: kept"', h.show(r))
    h.log('  report: ' + ' / '.join(lines[:3]))
    check_summary(r, what, kept=1, ba=1, ab=0, deleted=0)
    check(pair.cmds['A'].get('APPEND', 0) >= 1,
          what + ': the message went back to A by APPEND', pair.cmds)
    check_noop_rerun(pair, what)


def moves(pair, cat, exp, side):
    other = 'B' if side == 'A' else 'A'
    if side == 'A':
        ops = [('A', 'move', 'Café', 'Archive/2023', 'cafe2'),
               ('A', 'move', 'INBOX', 'Leer', 'a1')]
        moved = [('Café', 'Archive/2023', 'cafe2'), ('INBOX', 'Leer', 'a1')]
    else:
        ops = [('B', 'move', '日本語/レポート', 'with space', 'jp1')]
        moved = [('日本語/レポート', 'with space', 'jp1')]
    do_ops(pair, cat, ops, exp)
    before = h.snapshot(pair.server(other), pair.user, with_uids=True)
    what = 'moved on %s' % side
    r = pair.run(what, expect=0)
    check_summary(r, what, moved=len(moved), ab=0, ba=0, deleted=0)
    check_equal(pair, what, exp)
    after = h.snapshot(pair.server(other), pair.user, with_uids=True)
    for src, dst, label in moved:
        sha = cat.sha(label)
        n_dst = sum(1 for m in after[dst] if m[0] == sha)
        n_src = sum(1 for m in after[src] if m[0] == sha)
        check(n_dst == 1 and n_src == 0,
              '%s: on %s, %s is once in %s and not in %s, same bytes' % (
                  what, other, label, dst, src))
        old = [m for m in before[src] if m[0] == sha]
        new = [m for m in after[dst] if m[0] == sha]
        check(old and new and old[0][1:3] == new[0][1:3],
              '%s: on %s, %s kept its flags and INTERNALDATE' % (
                  what, other, label), (old, new))
    check(pair.cmds[other].get('APPEND', 0) == 0,
          '%s: no APPEND to %s: the move was reproduced as a move' % (
              what, other), pair.cmds)
    check(sum(pair.writes(other, MOVES).values()) >= 1,
          '%s: %s got a MOVE (or COPY) command' % (what, other), pair.cmds)
    check(not pair.writes(side), '%s: nothing written to %s' % (what, side),
          pair.cmds)
    check_noop_rerun(pair, what)


def new_folders(pair, cat, exp):
    ops = [('B', 'create', 'Neu/Unterordner'),
           ('B', 'append', 'Neu/Unterordner', 'neu1', ('\\Seen', 'work')),
           ('B', 'create', 'Ordner ß'),          # stays empty
           ('B', 'create', 'Projekte'),
           ('B', 'append', 'Projekte', 'proj1', ())]
    do_ops(pair, cat, ops, exp)
    sync_step(pair, exp, 'new folders on B')
    with pair.a.connect(pair.user) as c:
        fl = c.folders()
    check('Neu/Unterordner' in fl and 'Ordner ß' in fl and 'Neu' not in fl,
          'new folders on B: created on A (the parent Neu stays a '
          '\\Noselect level, as on B)', sorted(fl))


def bulk_catalogue(cat, prefix, n):
    for i in range(n):
        cat.add('%s%03d' % (prefix, i), size=300)
    return ['%s%03d' % (prefix, i) for i in range(n)]


def mass_deletion(pair, cat, exp):
    bulk = bulk_catalogue(cat, 'bulk', 100)
    bulk2 = bulk_catalogue(cat, 'bulk2-', 55)
    ops = [('A', 'create', 'Bulk')] + \
        [('A', 'append', 'Bulk', lbl, ('\\Seen',)) for lbl in bulk] + \
        [('B', 'create', 'Bulk2')] + \
        [('B', 'append', 'Bulk2', lbl, ()) for lbl in bulk2]
    with pair.a.connect(pair.user) as c:    # faster than do_ops
        c.create('Bulk')
        for lbl in bulk:
            c.append('Bulk', cat[lbl].data, ('\\Seen',), cat[lbl].date)
    with pair.b.connect(pair.user) as c:
        c.create('Bulk2')
        for lbl in bulk2:
            c.append('Bulk2', cat[lbl].data, (), cat[lbl].date)
    for op in ops:
        if op[1] == 'create':
            exp.folder(op[2])
        else:
            exp.add(op[2], cat.sha(op[3]), op[4], cat[op[3]].date[0])
    sync_step(pair, exp, 'Bulk (100, on A) and Bulk2 (55, on B) mirrored')

    # 60 of 100 expunged on A, plus one in INBOX.
    gone = bulk[::5] + bulk[1::5] + bulk[2::5]          # 60
    with pair.a.connect(pair.user) as c:
        uids = [u for u, body, fl, d in c.messages('Bulk')
                if hashlib.sha256(body).hexdigest() in
                {cat.sha(x) for x in gone}]
        check(len(uids) == 60, 'setup: 60 messages of Bulk chosen on A')
        h.expunge_uids(c, 'Bulk', uids)
    do_ops(pair, cat, [('A', 'expunge', 'INBOX', 'new-a1')])
    held = exp.copy()
    held.remove('INBOX', cat.sha('new-a1'))
    exp_a = held.copy()
    for x in gone:
        exp_a.remove('Bulk', cat.sha(x))
    what = '60 of 100 expunged in Bulk on A'
    for attempt in ('', ' again'):
        r = pair.run(what + ', run%s without --force: guard, exit 1' %
                     attempt, expect=1)
        sa, sb = pair.snaps()
        h.check_same(held.snap(), sb, what + attempt + ': nothing deleted in '
                     'Bulk on B (100 left); the INBOX deletion went through',
                     ('expected', 'B'))
        h.check_same(exp_a.snap(), sa, what + attempt + ': A keeps its 40: '
                     'the held-back messages were not copied back',
                     ('expected', 'A'))
        check([ln for ln in (r.stdout + r.stderr).splitlines()
               if 'Bulk' in ln and '60' in ln and '--force' in ln],
              what + attempt + ': a line names the folder and the 60 '
              'deletions, and asks for --force', h.show(r))
        check_summary(r, what + attempt, held=60,
                      deleted=1 if not attempt else 0, ab=0, ba=0)
    r = pair.run(what + ', with --force', expect=0, extra=['--force'])
    check_summary(r, what + ', with --force', deleted=60, held=0)
    check_equal(pair, what + ': with --force, deleted on B', exp_a)
    check(len(h.snapshot(pair.b, pair.user)['Bulk']) == 40,
          what + ': B\'s Bulk has the 40 left')
    check_noop_rerun(pair, what + ' (forced)')
    exp.f = exp_a.f

    # 50 of 55 is not more than max(50, 10%): no guard.
    ops = [('B', 'expunge', 'Bulk2', lbl) for lbl in bulk2[:50]]
    with pair.b.connect(pair.user) as c:
        shas = {cat.sha(x) for x in bulk2[:50]}
        uids = [u for u, body, fl, d in c.messages('Bulk2')
                if hashlib.sha256(body).hexdigest() in shas]
        h.expunge_uids(c, 'Bulk2', uids)
    before_a = h.snapshot(pair.a, pair.user, with_uids=True)
    for op in ops:
        exp.remove('Bulk2', cat.sha(op[3]))
    what = '50 of 55 expunged in Bulk2 on B'
    r = pair.run(what + ', with --max-delete 10 --max-delete-percent 50 '
                 '(limit 27): held, exit 1', expect=1,
                 extra=['--max-delete', '10', '--max-delete-percent', '50'])
    check_summary(r, what + ' with a lower limit', held=50, deleted=0)
    check(h.snapshot(pair.a, pair.user, with_uids=True) == before_a,
          what + ' with a lower limit: nothing changed on A')
    sync_step(pair, exp, what + ' (at the default limit of 50: no guard)')


def lost_state(pair, cat, exp):
    n = pair.remove_state()
    check(n >= 1 and not os.path.exists(pair.state),
          'state file deleted (%d files)' % n)
    # Changes that, with a state, would be a deletion and a flag removal;
    # without one they are just differences: the union again.
    do_ops(pair, cat, [('A', 'expunge', 'INBOX', 's2'),
                       ('B', 'flags', 'Sent', 'sent1', '-FLAGS',
                        ['\\Seen'])])
    what = 'state deleted, s2 expunged on A, \\Seen removed on B'
    st0 = pair.status()
    r = pair.run(what, expect=0)
    check_summary(r, what, ba=1, ab=0, deleted=0, moved=0, held=0)
    check_equal(pair, what + ': nothing deleted, nothing duplicated '
                '(s2 back on A, sent1 \\Seen on both)', exp)
    st1 = pair.status()
    check(uidnext_growth(st0[0], st1[0]) == {'INBOX': 1} and
          uidnext_growth(st0[1], st1[1]) == {},
          what + ': exactly one message copied (s2 to A), nothing to B',
          (uidnext_growth(st0[0], st1[0]), uidnext_growth(st0[1], st1[1])))
    check(not pair.writes('A', EXPUNGES) and not pair.writes('B', EXPUNGES),
          what + ': no expunge on either side', pair.cmds)
    check_noop_rerun(pair, what)


def uidvalidity_change(pair, cat, exp):
    """Archive/2023 on B deleted and made again: a new UIDVALIDITY, one
    message missing, one keyword added."""
    folder = 'Archive/2023'
    st0 = h.folder_status(pair.b, pair.user)[folder]
    with pair.b.connect(pair.user) as c:
        msgs = c.messages(folder)
    with pair.b.connect(pair.user) as c:
        c._ok(*c.imap.delete(h.imap_quote(c.server_name(folder))),
              what='DELETE')
        c.create(folder)
        for uid, body, fl, date in msgs:
            if body == h.served_form(cat['arch3'].data):
                continue
            fl = [f for f in fl if f != '\\Recent']
            if body == h.served_form(cat['arch1'].data):
                fl.append('todo')
            c.append(folder, body, fl, (date, 0))
    st1 = h.folder_status(pair.b, pair.user)[folder]
    check(st1[0] != st0[0],
          'setup: %s on B has a new UIDVALIDITY (%d -> %d), %d -> %d '
          'messages' % (folder, st0[0], st1[0], st0[3], st1[3]))
    exp.flags(folder, cat.sha('arch1'), '+FLAGS', ['todo'])
    what = 'UIDVALIDITY of %s changed on B' % folder
    r = pair.run(what, expect=0)
    check_summary(r, what, ab=1, ba=0, deleted=0, moved=0, held=0)
    check_equal(pair, what + ': no deletion (arch3 copied back to B), no '
                'duplicate, the new keyword on A', exp)
    check(not pair.writes('A', EXPUNGES) and not pair.writes('B', EXPUNGES),
          what + ': no expunge on either side', pair.cmds)
    check_noop_rerun(pair, what)


def concurrent_change(pair, cat, exp):
    """Another client changes B's INBOX while a pass is busy copying into
    it (a slow link from A): the change must not be lost: the next run
    brings it to A."""
    with pair.a.connect(pair.user) as c:
        for i in range(40):
            m = cat.add('slow%02d' % i, size=6000)
            c.append('INBOX', m.data, (), m.date)
            exp.add('INBOX', cat.sha('slow%02d' % i), (), m.date[0])
    with pair.b.connect(pair.user) as c:
        n0 = c.select('INBOX')
    pair.pa.set_rate(s2c=80000)         # about 3 s for the 240 KB
    try:
        b0 = pair.pa.bytes('s2c')
        proc = h.start_postino(pair.args())
        # Busy: postino is fetching the new messages from A (it has
        # scanned both sides' INBOX).
        h.wait_until(
            lambda: pair.pa.bytes('s2c') - b0 > 60000 or
            proc.poll() is not None, 30, interval=0.05)
        busy = proc.poll() is None and pair.pa.bytes('s2c') - b0 > 60000
        do_ops(pair, cat, [('B', 'append', 'INBOX', 'during', ('\Seen',)),
                           ('B', 'flags', 'INBOX', 's1', '+FLAGS',
                            ['\Flagged'])], exp)
        with pair.b.connect(pair.user) as c:
            left = n0 + 40 + 1 - c.select('INBOX')
        check(busy and proc.poll() is None and left > 0,
              'a new message and a flag change on B\'s INBOX while postino '
              'was still copying into it (%d of 40 to go)' % left,
              h.output_of(proc))
        proc.wait(timeout=120)
    finally:
        pair.pa.set_rate(s2c=None)
    check(proc.returncode == 0, 'the busy run: exit 0', h.output_of(proc))
    what = 'a run after changes made during the previous pass'
    pair.run(what, expect=0)
    check_equal(pair, what + ': they reached A (not hidden by the marks of '
                'the previous pass)', exp)
    check_noop_rerun(pair, what)


# --------------------------------------------------------------------------
# Interrupted at every step

def crash_spec():
    S, F = '\\Seen', '\\Flagged'
    spec = [('INBOX', 'c-a1', (S,), None),
            ('INBOX', 'c-a2', (), None),
            ('INBOX', 'c-b1', None, (F,)),
            ('INBOX', 'c-s1', (S,), (S,)),
            ('INBOX', 'c-s2', (), ('work',)),
            ('Sub/Tief', 'c-a3', (S,), None),
            ('Sub/Tief', 'c-a4', (), None),
            ('Ünï', 'c-b2', None, ()),
            ('Ünï', 'c-b3', None, ('$Label1',))]
    changes = [('A', 'append', 'INBOX', 'c-n1', ('\\Seen',)),
               ('A', 'flags', 'INBOX', 'c-s1', '-FLAGS', [S]),
               ('A', 'expunge', 'INBOX', 'c-a2'),
               ('A', 'move', 'Sub/Tief', 'INBOX', 'c-a3'),
               ('B', 'append', 'Ünï', 'c-n2', ()),
               ('B', 'flags', 'INBOX', 'c-s2', '+FLAGS', [F]),
               ('B', 'expunge', 'Ünï', 'c-b3'),
               ('B', 'create', 'Neu'),
               ('B', 'append', 'Neu', 'c-n3', ('work',))]
    return spec, changes


def plain(snap):
    """A snapshot taken with_uids=True, without the UIDs."""
    return {f: sorted((x[:3] for x in v),
                      key=lambda t: (t[0], sorted(t[1]), t[2]))
            for f, v in snap.items()}


def crash_sweep(a, b, tmp, cat, kind):
    """KIND 'first': crash the first run at step N; 'incremental': a first
    run, then the changes, then crash that run at step N.  For every N
    until a run finishes by itself: a plain rerun must converge to what the
    uninterrupted run gave."""
    spec, changes = crash_spec()
    quiet = dict(echo=False)

    def prepare(user, exp=None):
        p = Pair(a, b, user, os.path.join(tmp, user + '.db'))
        populate_spec(p, cat, spec)
        if kind == 'incremental':
            p.run('%s: first run' % user, expect=0, echo=exp is not None)
            do_ops(p, cat, changes, exp)
        return p

    # The reference: uninterrupted.
    exp = spec_expected(cat, spec)
    ref = prepare('%s-ref' % kind, exp)
    ref.run('%s reference run' % kind, expect=0)
    want = check_equal(ref, '%s reference run' % kind, exp)
    k = None
    failures = []
    for n in range(1, MAX_STEPS + 1):
        p = prepare('%s%d' % (kind[0], n))
        r = p.run('crash at step %d' % n, expect=None,
                  env={'POSTINO_TEST_EXIT_AFTER': n}, **quiet)
        if r.returncode in (0, 1):
            check(r.returncode == 0,
                  '%s run with exit after step %d: finished (exit 0)' % (
                      kind, n), h.show(r))
            k = n - 1
            sa, sb = p.snaps()
            diffs = h.diff_snapshots(want, sa, ('reference', 'A')) + \
                h.diff_snapshots(want, sb, ('reference', 'B'))
            check(not diffs, '%s run: ends after %d durable steps, A and B '
                  'as the reference' % (kind, k), '\n'.join(diffs))
            break
        check(r.returncode == 99, '%s run, exit after step %d: exit 99' % (
            kind, n), h.show(r))
        crash = r
        resume = p.run('resume after step %d' % n, expect=0, **quiet)
        sa, sb = p.snaps(uids=True)
        diffs = h.diff_snapshots(want, plain(sa), ('reference', 'A')) + \
            h.diff_snapshots(want, plain(sb), ('reference', 'B'))
        r = p.run('after resume %d' % n, expect=None, **quiet)
        if r.returncode != 0 or p.snaps(uids=True) != (sa, sb):
            diffs.append('a further run exited %d or changed something' %
                         r.returncode)
        if diffs:
            # Go on with the other steps: the list of steps that fail says
            # more than the first one alone.
            h.log('  FAILS: %s run crashed at step %d, resumed: %s' % (
                kind, n, '; '.join(diffs)))
            failures.append((n, '\n'.join(diffs) + '\n' +
                             h.show(crash, 'crashed run') +
                             h.show(resume, 'resumed run') +
                             h.show(r, 'further run')))
        else:
            h.log('  ok: %s run crashed at step %d, resumed: as the '
                  'reference; a further run changes nothing' % (kind, n))
    check(k is not None, '%s run: finished within %d steps' % (kind,
                                                               MAX_STEPS))
    check(k >= 3, '%s run: the test hook interrupted it at %d steps (at '
          'least 3: the hook works)' % (kind, k))
    return k, failures


# --------------------------------------------------------------------------

def run():
    tmp = h.make_tmpdir('mirror')
    users = {'alice': 'secret', 'first-ref': 'secret',
             'incremental-ref': 'secret'}
    for n in range(1, MAX_STEPS + 1):
        users['f%d' % n] = 'secret'
        users['i%d' % n] = 'secret'
    a = h.Dovecot(layout='fs', name='A', users=users)
    b = h.Dovecot(layout='maildir++', name='B', users=users)
    cat = Catalogue(seed=20240601)
    pair = Pair(a, b, 'alice', os.path.join(tmp, 'alice.db'), proxies=True)

    spec, empty_a, empty_b = initial_spec(cat)
    populate_spec(pair, cat, spec, empty_a, empty_b)
    error_exits(pair, tmp)
    exp = first_run(pair, cat, spec, empty_a, empty_b)
    one_sided(pair, cat, exp, 'A')
    one_sided(pair, cat, exp, 'B')
    both_sides(pair, cat, exp)
    deletions(pair, cat, exp, 'A')
    deletions(pair, cat, exp, 'B')
    conflict(pair, cat, exp)
    moves(pair, cat, exp, 'A')
    moves(pair, cat, exp, 'B')
    new_folders(pair, cat, exp)
    mass_deletion(pair, cat, exp)
    lost_state(pair, cat, exp)
    uidvalidity_change(pair, cat, exp)

    k1, f1 = crash_sweep(a, b, tmp, cat, 'first')
    k2, f2 = crash_sweep(a, b, tmp, cat, 'incremental')
    concurrent_change(pair, cat, exp)
    for kind, k, fails in (('first', k1, f1), ('incremental', k2, f2)):
        check(not fails, '%s run interrupted after each of its %d steps, '
              'then resumed: A and B as after an uninterrupted run, and a '
              'further run changes nothing' % (kind, k),
              'failing steps: %s; the first one:\n%s' % (
                  [f[0] for f in fails], fails[0][1] if fails else ''))


if __name__ == '__main__':
    h.main(run)
