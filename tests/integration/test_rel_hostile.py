#!/usr/bin/env python3
"""test_rel_hostile — hostile or broken IMAP servers (issue #6, row 10;
docs/reliability.md).

Fake servers (tests/tools/fakeserver.py) lie, break and inject; postino
must reject what it cannot use cleanly: one of its own exit codes, no
crash or sanitizer report, within a bound on time, CPU (no spin: user+sys
well below wall time when it waited) and memory (peak RSS), and nothing
lost or duplicated once the server behaves again.  Each case prints its
figures (exit, wall, CPU, peak RSS).

  - EXISTS shrinking under a FETCH; UIDNEXT going backwards with new mail
    reusing the UIDs; unrequested and duplicated UIDs in FETCH answers;
  - a literal announced as {4000000000}; EOF in the middle of a literal;
    BYE in the middle of an APPEND (destination);
  - malformed PERMANENTFLAGS and NAMESPACE responses (libetpan 1.9.4
    dereferences NULL on them: postino's guard drops the connection first);
  - PREAUTH on a STARTTLS connection, data injected after STARTTLS OK,
    STARTTLS not advertised: refused (exit 6), no credentials sent.
"""

import os

import harness as h
from harness import check
import relutil as R
from relutil import fakeserver, faultproxy

N = 30
RSS_MB = 600 if R.SANITIZED else 150   # peak RSS bound for these small runs


def bounded(m, what, wall=60):
    """The common bound: no crash, in time, no spin, bounded memory."""
    check(R.no_crash(m), '%s: clean end (exit %s), no crash' % (
        what, m.returncode), m.show())
    check(m.wall < wall, '%s: ended in %.1fs (< %ds)' % (what, m.wall, wall),
          m.show())
    # Spinning shows as CPU close to wall time; a run this small needs
    # little CPU whatever happens.
    check(m.cpu < max(2.0, 0.5 * m.wall) * (3 if R.SANITIZED else 1),
          '%s: CPU %.2fs for %.1fs wall (no spin)' % (what, m.cpu, m.wall),
          m.show())
    check(m.maxrss_kb < RSS_MB * 1024, '%s: peak RSS %d MB (< %d MB)' % (
        what, m.maxrss_kb // 1024, RSS_MB), m.show())
    R.figure('hostile %s' % what, 'exit %d, %.1fs wall, %.2fs cpu, %d MB '
             'peak RSS' % (m.returncode, m.wall, m.cpu, m.maxrss_kb // 1024))


def copy(src, dst, state, extra=(), timeout=120):
    return R.run_measured(['copy', R.url_of(src), R.url_of(dst), '--state',
                           state, '--timeout', '5', '--jobs', '1'] +
                          list(extra), ca_file=None, timeout=timeout)


def converge(src, dst, state, what, tries=4):
    """Rerun until exit 0; the destination then holds each source message
    once."""
    m = None
    for _ in range(tries):
        m = copy(src, dst, state)
        if m.returncode == 0:
            break
    check(m.returncode == 0, '%s: a rerun completes' % what, m.show())
    want = R.digests(src.messages('INBOX'))
    got = R.digests(dst.messages('INBOX'))
    check(got == want, '%s: destination equals source (%d), no duplicate' % (
        what, len(want)), 'want %d got %d' % (len(want), len(got)))


def case_shrink_exists(tmp):
    src = R.fake_imap(R.synth(N, tag='shrink'), rules=[
        dict(command=['FETCH', 'UID FETCH'], action='shrink_exists', by=5,
             times=1)])
    dst = R.fake_imap()
    state = os.path.join(tmp, 'shrink.db')
    m = copy(src, dst, state)
    bounded(m, 'EXISTS shrinking during FETCH')
    check(len(src.messages('INBOX')) == N - 5, 'the source lost 5 messages')
    got = R.digests(dst.messages('INBOX'))
    check(len(got) == len(set(got)), 'EXISTS shrinking: no duplicate')
    converge(src, dst, state, 'EXISTS shrinking')


def case_uidnext_backwards(tmp):
    src = R.fake_imap(R.synth(N, tag='rewind'))
    dst = R.fake_imap()
    state = os.path.join(tmp, 'rewind.db')
    m = copy(src, dst, state)
    check(m.returncode == 0, 'UIDNEXT backwards: first copy', m.show())
    before = src.folder_info('INBOX')['uidnext']
    # The server loses its last 3 UIDs, and new mail gets them again.
    src.add_rule(command=['SELECT', 'EXAMINE', 'STATUS'],
                 action='rewind_uidnext', by=3, times=1)
    with fakeserver_client(src):
        pass
    new = R.synth(3, tag='reused-uid')
    uids = [src.add_message('INBOX', d) for d in new]
    check(max(uids) < before, 'new messages got reused UIDs %s (UIDNEXT was '
          '%d)' % (uids, before))
    m = copy(src, dst, state)
    bounded(m, 'UIDNEXT going backwards')
    have = set(R.digests(dst.messages('INBOX')))
    lost = [u for u, d in zip(uids, new) if R.sha(d) not in have]
    got = R.digests(dst.messages('INBOX'))
    check(len(got) == len(set(got)), 'UIDNEXT backwards: no duplicate')
    # A reused UID is noticed by its size differing from the copied one's;
    # the row becomes an orphan and the new message is copied.
    check(not lost, 'UIDNEXT backwards: the 3 messages with reused UIDs are '
          'copied (lost: %s)' % lost)
    # A copy never deletes: the 3 messages the source lost stay at the
    # destination; every source message is there once.
    m = copy(src, dst, state)
    check(m.returncode == 0, 'UIDNEXT backwards: a rerun completes', m.show())
    want = R.digests(src.messages('INBOX'))
    got = R.digests(dst.messages('INBOX'))
    check(set(want) <= set(got) and len(got) == len(set(got)) and
          len(got) == len(want) + 3,
          'UIDNEXT backwards: every source message once, the 3 lost at the '
          'source kept (%d = %d + 3)' % (len(got), len(want)))


class fakeserver_client:
    """Touch a fake server once with imaplib (so that a rule on SELECT /
    STATUS fires outside postino)."""

    def __init__(self, srv):
        self.srv = srv

    def __enter__(self):
        import imaplib
        c = imaplib.IMAP4('127.0.0.1', self.srv.port)
        c.login('alice', 'secret')
        c.select('INBOX')
        c.logout()
        return self

    def __exit__(self, *exc):
        return False


def case_fetch_extra(tmp):
    src = R.fake_imap(R.synth(N, tag='extra'), rules=[
        # on the body FETCHes (a scan "UID n:*" may name any UID)
        dict(command='UID FETCH', contains=b'BODY.PEEK[]',
             action='fetch_extra', unrequested=[3, 99999], duplicate=True)])
    dst = R.fake_imap()
    state = os.path.join(tmp, 'extra.db')
    m = copy(src, dst, state)
    bounded(m, 'unrequested and duplicate UIDs in FETCH')
    got = R.digests(dst.messages('INBOX'))
    check(len(got) == len(set(got)), 'unrequested/duplicate UIDs: no '
          'duplicate at the destination (%d messages)' % len(got))
    check(src.rules[0].fired >= 1, 'the server sent unrequested UIDs %d '
          'times' % src.rules[0].fired)
    src.rules.clear()
    converge(src, dst, state, 'unrequested/duplicate UIDs')


def case_literal(tmp, announce, send, what):
    msgs = R.synth(N, tag='lit')
    src = R.fake_imap(msgs)
    rule = src.add_rule(command='UID FETCH', action='literal_eof',
                        announce=announce, send=send)
    dst = R.fake_imap()
    state = os.path.join(tmp, 'lit%s.db' % announce)
    m = copy(src, dst, state)
    bounded(m, what)
    check(m.returncode != 0, '%s: not reported as a success (exit %d)' % (
        what, m.returncode), m.show())
    check(rule.fired >= 1, '%s: the server did it %d times' % (what,
                                                               rule.fired))
    src.rules.remove(rule)
    converge(src, dst, state, what)


def case_bye_mid_append(tmp):
    src = R.fake_imap(R.synth(N, tag='byeapp'))
    dst = R.fake_imap(rules=[dict(command='APPEND', action='bye',
                                  phase='literal', after_bytes=100,
                                  nth=[2, 5], bye_text='going away')])
    state = os.path.join(tmp, 'byeapp.db')
    m = copy(src, dst, state, ['--batch', '5'])
    bounded(m, 'BYE in the middle of an APPEND')
    converge(src, dst, state, 'BYE mid-APPEND')


def case_malformed(tmp, command, line, what):
    src = R.fake_imap(R.synth(5, tag='mal'))
    rule = src.add_rule(command=command, action='untagged', lines=[line])
    dst = R.fake_imap()
    state = os.path.join(tmp, 'mal-%s.db' % command)
    m = copy(src, dst, state)
    check(m.returncode not in (-11, -6), '%s: postino did not crash '
          '(exit %d)' % (what, m.returncode), m.show())
    bounded(m, what)
    check(rule.fired >= 1, '%s: sent %d times' % (what, rule.fired))
    src.rules.remove(rule)
    converge(src, dst, state, what)


def case_starttls(tmp, what, **script):
    ca = h.default_ca()
    crt, key = ca.cert('good')
    sc = dict(folders={'INBOX': R.synth(3, tag='stls')})
    sc.update(script)
    srv = h.track(fakeserver.FakeIMAP(sc, tls='starttls', cert=crt,
                                      key=key).start())
    dst = R.fake_imap()
    p = h.track(faultproxy.FaultProxy('127.0.0.1', srv.port).start())
    state = os.path.join(tmp, 'stls-%d.db' % p.port)
    m = R.run_measured(['copy', 'imap://alice@localhost:%d' % p.port,
                        R.url_of(dst), '--state', state, '--timeout', '5'],
                       timeout=60)
    bounded(m, what)
    check(m.returncode == 6, '%s: refused with exit 6' % what, m.show())
    sent = p.client_bytes()
    check(b'LOGIN' not in sent.upper() and b'AUTHENTICATE' not in
          sent.upper() and b'secret' not in sent,
          '%s: no LOGIN/AUTHENTICATE/password bytes on the wire (%d bytes '
          'sent)' % (what, len(sent)))
    check(not srv.commands_named('LOGIN', 'AUTHENTICATE', 'SELECT',
                                 'EXAMINE', 'UID FETCH', 'FETCH'),
          '%s: the server saw no login and no mailbox command' % what)
    check(not dst.messages('INBOX'), '%s: nothing copied' % what)


def run():
    tmp = h.make_tmpdir('hostile')
    case_shrink_exists(tmp)
    case_fetch_extra(tmp)
    case_literal(tmp, 4000000000, 0, 'literal announced as {4000000000}')
    case_literal(tmp, None, 100, 'EOF in the middle of a literal')
    case_bye_mid_append(tmp)
    case_malformed(tmp, ['SELECT', 'EXAMINE'],
                   b'* OK [PERMANENTFLAGS (%)] hostile',
                   'malformed PERMANENTFLAGS')
    case_malformed(tmp, 'NAMESPACE', b'* NAMESPACE (("" "/")) NIL (("#s',
                   'malformed NAMESPACE')
    case_starttls(tmp, 'PREAUTH on a STARTTLS connection',
                  greeting='PREAUTH')
    case_starttls(tmp, 'data injected after STARTTLS OK',
                  starttls_inject=b'* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] '
                  b'injected\r\n')
    case_starttls(tmp, 'STARTTLS not advertised', advertise_starttls=False)
    case_uidnext_backwards(tmp)


if __name__ == '__main__':
    h.main(run)
