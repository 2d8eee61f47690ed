#!/usr/bin/env python3
"""test_mirror_modes — `postino mirror` with each kind of server: QRESYNC,
CONDSTORE without QRESYNC, and neither (capabilities removed from Dovecot's
imap_capability), and a mirror whose other side refuses folder names.

A: Dovecot maildir LAYOUT=fs ('/'); B: maildir++ ('.').  For each mode:

  - a first run makes the union, a rerun is a no-op;
  - new messages, flag changes (system flags and keywords, set and
    cleared) and expunges, made on each side, reach the other side, and a
    further run is a no-op (same UIDs, flags, UIDNEXT and HIGHESTMODSEQ);
  - the way postino learnt them, from its --trace (the protocol) and -vv:
    with QRESYNC, UID FETCH ... (CHANGEDSINCE m VANISHED) and no FETCH of
    the flags of the whole folder; with CONDSTORE only, UID FETCH ...
    (CHANGEDSINCE m) and a listing of UIDs only in the folders where
    something was expunged; without CONDSTORE, the flags of every folder;
  - in a folder of 300 messages where one changed and one was expunged,
    the servers send FETCH answers for a handful of messages, not 300
    (with CONDSTORE); an unchanged folder costs one STATUS a side and no
    other command.

Then B is tests/tools/fakeserver.py playing Cyrus (folder names with
/ % ! ; < > { } | or backtick refused by CREATE): folders of A with such
names are created on B under the escape rule, A's messages reach them, a
new message there reaches A's folder, later runs make no CREATE; and the
same the other way round (B's folder with a name A's server refuses).
"""

import os
import random
import re
import sys

import harness as h
from harness import check

sys.path.insert(0, os.path.join(h.SOURCE_ROOT, 'tests', 'tools'))
from fakeserver import FakeIMAP  # noqa: E402

MODES = (('qresync', {}),
         ('condstore', {'qresync': False}),
         ('plain', {'condstore': False}))

FULL_FLAGS_SCAN = re.compile(r' C: \d+ FETCH \d+:(\*|\d+) \(UID FLAGS')
CHANGEDSINCE = re.compile(r' C: \d+ UID FETCH 1:\* \(UID FLAGS RFC822\.SIZE'
                          r'[^)]*\) \(CHANGEDSINCE \d+( VANISHED)?\)')
LISTING = re.compile(r' C: \d+ FETCH \d+:(\*|\d+) \(UID( MODSEQ)?\)$')
FETCH_ANSWER = re.compile(r' S: \* \d+ FETCH ')
FLAGS_ANSWER = re.compile(r' S: \* \d+ FETCH \(.*FLAGS')


class Cat:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.n = 0
        self.m = {}

    def __getitem__(self, label):
        if label not in self.m:
            self.n += 1
            data = h.synthetic_message(self.rng, 9000 + self.n, size=600)
            data = data.replace(b'Subject: ', ('Subject: [%s] ' % label)
                                .encode(), 1)
            self.m[label] = data
        return self.m[label]


def run(args, what, expect=0, extra=()):
    r = h.run_postino(args + list(extra), echo=False)
    check(r.returncode == expect, '%s: exit %d' % (what, expect), h.show(r))
    return r


def side_lines(r, port):
    tag = ':%d ' % port
    return [ln for ln in r.stderr.splitlines() if tag in ln]


def equal(a, b, what):
    sa, sb = h.snapshot(a), h.snapshot(b)
    h.check_same(sa, sb, what + ': A and B hold the same mail', ('A', 'B'))
    return sa


def noop_rerun(a, b, args, what):
    before = (h.snapshot(a, with_uids=True), h.snapshot(b, with_uids=True),
              h.folder_status(a), h.folder_status(b))
    r = run(args, what + ': rerun')
    after = (h.snapshot(a, with_uids=True), h.snapshot(b, with_uids=True),
             h.folder_status(a), h.folder_status(b))
    check(after == before, what + ': the rerun changed nothing on either '
          'side (UIDs, flags, UIDNEXT, HIGHESTMODSEQ)', h.show(r))


def uid(server, folder, data):
    with server.connect() as c:
        u = h.uids_of(c, folder, data)
    check(len(u) == 1, 'setup: one copy of the message in %s' % folder, u)
    return u[0]


def store(server, folder, data, op, flags):
    u = uid(server, folder, data)
    with server.connect() as c:
        c.uid_store(folder, u, op, flags)


def expunge(server, folder, data):
    u = uid(server, folder, data)
    with server.connect() as c:
        h.expunge_uids(c, folder, [u])


def flags_of(server, folder, data):
    with server.connect() as c:
        for u, body, fl, d in c.messages(folder):
            if body == h.served_form(data):
                return set(h.norm_flags(fl))
    return None


def mode_test(name, caps, tmp, cat):
    a = h.Dovecot(layout='fs', name='A-' + name, **caps)
    b = h.Dovecot(layout='maildir++', name='B-' + name, **caps)
    state = os.path.join(tmp, name + '.db')
    args = ['mirror', a.url(), b.url(), '--state', state, '--ca-file',
            h.default_ca().ca_file]
    L = lambda s: cat['%s-%s' % (name, s)]  # noqa: E731
    with a.connect() as c:
        for i in range(4):
            c.append('INBOX', L('a%d' % i), ('\\Seen',) if i % 2 else ())
        c.create('Big')
        for i in range(300):
            c.append('Big', L('big%03d' % i), ('\\Seen',) if i % 3 else ())
        c.create('Quiet')
        c.append('Quiet', L('q1'), ('\\Seen',))
    with b.connect() as c:
        for i in range(3):
            c.append('INBOX', L('b%d' % i), ('work',) if i else ())
        c.create('Lists')
        c.append('Lists', L('l1'), ('$Label1',))
    tag = '%s: ' % name
    run(args, tag + 'first run')
    equal(a, b, tag + 'first run')
    noop_rerun(a, b, args, tag + 'first run')
    noop_rerun(a, b, args, tag + 'second rerun')

    # Changes on both sides.
    with a.connect() as c:
        c.append('INBOX', L('new-a'), ('\\Flagged',))
    with b.connect() as c:
        c.append('Lists', L('new-b'), ())
    store(a, 'INBOX', L('a1'), '-FLAGS', ['\\Seen'])
    store(a, 'INBOX', L('b1'), '+FLAGS', ['$Forwarded'])
    store(b, 'INBOX', L('a2'), '+FLAGS', ['\\Answered'])
    store(b, 'INBOX', L('b2'), '-FLAGS', ['work'])
    expunge(a, 'INBOX', L('b0'))
    expunge(b, 'INBOX', L('a3'))
    expunge(a, 'Lists', L('l1'))
    store(a, 'Big', L('big123'), '+FLAGS', ['\\Flagged'])
    expunge(b, 'Big', L('big200'))
    what = tag + 'changes on both sides'
    r = run(args, what, extra=['--trace', '-vv'])
    sa = equal(a, b, what)
    check(flags_of(b, 'INBOX', L('new-a')) == {'\\flagged'} and
          flags_of(a, 'Lists', L('new-b')) == set(),
          what + ': the new messages reached the other side with their flags')
    check(flags_of(b, 'INBOX', L('a1')) == set() and
          flags_of(b, 'INBOX', L('b1')) == {'work', '$forwarded'} and
          flags_of(a, 'INBOX', L('a2')) == {'\\answered'} and
          flags_of(a, 'INBOX', L('b2')) == set() and
          flags_of(b, 'Big', L('big123')) == {'\\flagged'},
          what + ': flag changes (set, cleared, keywords) went both ways')
    gone = [(a, 'INBOX', 'a3'), (b, 'INBOX', 'b0'), (b, 'Lists', 'l1'),
            (a, 'Big', 'big200')]
    check(all(flags_of(s, f, L(x)) is None for s, f, x in gone) and
          len(sa['Big']) == 299 and len(sa['INBOX']) == 6,
          what + ': the expunges went both ways', h.describe(sa))

    lines = r.stderr.splitlines()
    full = [ln for ln in lines if FULL_FLAGS_SCAN.search(ln)]
    since = [ln for ln in lines if CHANGEDSINCE.search(ln)]
    listings = [ln for ln in lines if LISTING.search(ln)]
    if name == 'plain':
        # 4 folders a side; A's Lists is empty (no command needed)
        check(len(full) == 7 and not since and
              'scanned incrementally' not in r.stderr,
              what + ': without CONDSTORE, the flags of every non-empty '
              'folder on both sides (%d full scans)' % len(full),
              '\n'.join(full))
    else:
        check(not full, what + ': no FETCH of the flags of a whole folder',
              '\n'.join(full))
        vanished = [ln for ln in since if ln.endswith('VANISHED)')]
        if name == 'qresync':
            check(len(since) == 6 and len(vanished) == 6 and not listings,
                  what + ': each changed folder on each side: one UID FETCH '
                  '(CHANGEDSINCE m VANISHED), no listing of UIDs',
                  '\n'.join(since + listings))
            check(any('ENABLE QRESYNC' in ln for ln in lines),
                  what + ': QRESYNC enabled')
        else:
            check(len(since) == 6 and not vanished,
                  what + ': each changed folder on each side: one UID FETCH '
                  '(CHANGEDSINCE m), without VANISHED', '\n'.join(since))
            # expunged: A INBOX, A Lists, B INBOX, B Big (A's Lists is
            # empty now: its listing needs no command)
            said = [ln for ln in lines if 'deletions from a listing' in ln]
            check(len(said) == 4 and len(listings) == 3,
                  what + ': a listing of UIDs in the 4 folders (of 6) where '
                  'EXISTS said something was gone', '\n'.join(said +
                                                             listings))
        # Big: a handful of FETCH answers with flags, not 300 (with
        # QRESYNC a handful of answers at all; without it B's expunge
        # costs a listing of UIDs)
        big, big_flags = [], []
        for port in (a.imaps_port, b.imaps_port):
            sl = side_lines(r, port)
            sel = [i for i, ln in enumerate(sl) if
                   re.search(r' C: \d+ SELECT Big ', ln)]
            check(sel, what + ': Big selected on both sides')
            # the answers after SELECT Big, up to the next SELECT
            for ln in sl[sel[0] + 1:]:
                if ' C: ' in ln and 'SELECT' in ln:
                    break
                if FETCH_ANSWER.search(ln):
                    big.append(ln)
                if FLAGS_ANSWER.search(ln):
                    big_flags.append(ln)
        check(len(big_flags) <= 4, what + ': in Big (300 messages, one '
              'changed, one expunged) the servers sent the flags of %d '
              'messages' % len(big_flags), '\n'.join(big_flags[:20]))
        if name == 'qresync':
            check(len(big) <= 4, what + ': ... and %d FETCH answers in all'
                  % len(big), '\n'.join(big[:20]))
        check(re.search(r'Big: A scanned incrementally', r.stderr) and
              re.search(r'Big: B scanned incrementally', r.stderr),
              what + ': -vv says Big was scanned incrementally on both sides')
        # Quiet: unchanged, the fast path: one STATUS, no SELECT
        for port, side in ((a.imaps_port, 'A'), (b.imaps_port, 'B')):
            sl = side_lines(r, port)
            quiet = [ln for ln in sl if ' C: ' in ln and 'Quiet' in ln]
            check(len(quiet) == 1 and re.search(r' STATUS "?Quiet"? \(',
                                                quiet[0]),
                  what + ': Quiet (unchanged) on %s: one STATUS and no other '
                  'command' % side, '\n'.join(quiet))
    noop_rerun(a, b, args, what)
    noop_rerun(a, b, args, what + ' (again)')
    a.stop()
    b.stop()


# --------------------------------------------------------------------------
# The other side refuses folder names (Cyrus)

CYRUS = dict(namespace=('INBOX.', '.'), refuse_toplevel=True,
             create_exists_code=False, refuse_chars='/%!;<>{}|`',
             collapse_separators=True, create_parents=True)


def creates(srv):
    return [str(c.args[0]) for c in srv.commands_named('CREATE')]


def fake_url(srv):
    return 'imap://alice@127.0.0.1:%d?tls=none' % srv.port


FW = {c: chr(0xFEE0 + ord(c)) for c in '%!;<>{}|`*'}


def esc(name):
    """The escape rule (planner.h), written out again here."""
    return ''.join(FW.get(c, c) for c in name)


def content(srv, folder):
    ms = srv.messages(folder)
    return None if ms is None else sorted(
        (bytes(m.data), tuple(sorted(f.lower() for f in m.flags)))
        for m in ms)


def escape_test(tmp, cat):
    """Both sides Cyrus-like: each has a folder whose name the other
    refuses."""
    offers, deals = 'INBOX.Offers 50%!', 'INBOX.Deals|2024'
    offers_esc = 'INBOX.' + h.mutf7_encode(esc('Offers 50%!'))
    deals_esc = 'INBOX.' + h.mutf7_encode(esc('Deals|2024'))
    a = FakeIMAP(dict(CYRUS, folders={
        'INBOX': [], offers: [{'data': cat['esc-a1'], 'flags': ['\\Seen'],
                               'date': (1_600_000_000, 0)}]})).start()
    b = FakeIMAP(dict(CYRUS, folders={
        'INBOX': [], deals: [{'data': cat['esc-b1'], 'flags': ['$Label1'],
                              'date': (1_600_000_100, 0)}]})).start()
    state = os.path.join(tmp, 'escape.db')
    args = ['mirror', fake_url(a), fake_url(b), '--state', state]
    r = run(args, 'escape: first run')
    bad = [f for f in a.folders() + b.folders()
           if any(ch in f for ch in '%!|')]
    check(offers_esc in b.folders() and deals_esc in a.folders() and
          sorted(bad) == sorted([offers, deals]),
          'escape: each side refused the other\'s name and has the escaped '
          'one (%s on B, %s on A); nothing else with a refused character' %
          (offers_esc, deals_esc), (a.folders(), b.folders(), creates(a),
                                    creates(b), h.show(r)))
    check(offers in creates(b) and deals in creates(a),
          'escape: the plain names were tried first', (creates(a),
                                                       creates(b)))
    check(content(b, offers_esc) == content(a, offers) and
          content(a, deals_esc) == content(b, deals) and
          len(content(a, deals_esc)) == 1,
          'escape: the messages (with their flags) are in the escaped '
          'folders', h.show(r))
    check('escape rule' in r.stderr, 'escape: the escaped names are '
          'reported', h.show(r))
    n = (len(creates(a)), len(creates(b)))
    a.add_message(offers, cat['esc-a2'], ['\\Flagged'], (1_600_000_200, 0))
    b.add_message(offers_esc, cat['esc-b2'], ['\\Seen'], (1_600_000_300, 0))
    a.add_message(deals_esc, cat['esc-a3'], [], (1_600_000_400, 0))
    r = run(args, 'escape: second run')
    check((len(creates(a)), len(creates(b))) == n,
          'escape: the second run made no CREATE (the pairs are in the '
          'state)', (creates(a), creates(b)))
    check(content(a, offers) == content(b, offers_esc) and
          len(content(a, offers)) == 3 and
          content(a, deals_esc) == content(b, deals) and
          len(content(b, deals)) == 2,
          'escape: new messages on either side of an escaped pair reached '
          'the other side', (content(a, offers), content(b, offers_esc),
                             h.show(r)))
    run(args, 'escape: third run')
    check((len(creates(a)), len(creates(b))) == n,
          'escape: the third run made no CREATE either')
    a.stop()
    b.stop()


def test():
    tmp = h.make_tmpdir('mirror-modes')
    cat = Cat(20240909)
    for name, caps in MODES:
        mode_test(name, caps, tmp, cat)
    escape_test(tmp, cat)


if __name__ == '__main__':
    h.main(test)
