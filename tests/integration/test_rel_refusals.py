#!/usr/bin/env python3
"""test_rel_refusals — a destination that refuses, throttles or is full
(issue #6, rows 5, 6, 7; docs/reliability.md).  Fake IMAP servers
(tests/tools/fakeserver.py) on both sides, plain text on loopback.

Proves:
  - NO on 5% of the APPENDs (every 20th): those messages are reported
    ("not copied: ... UID n") and the exit code is 1; the rerun retries
    them and exits 0 with an exact copy;
  - BYE in the middle of APPENDs (twice): postino reconnects; the run ends
    exact, or the rerun does, without a duplicate;
  - Office 365 throttling ("NO Request is throttled. Suggested Backoff
    Time: N milliseconds", then BYE): postino waits at least N ms before
    it connects again (measured from the BYE to the next connection),
    reconnects and loses nothing; "OK [THROTTLED]" instead of APPENDUID:
    the copy stays exact;
  - over quota (NO [OVERQUOTA]) and too big (NO [TOOBIG]): the run ends
    with exit 1, the refused messages are listed, the source is untouched
    (no STORE, EXPUNGE, MOVE or APPEND there, same messages and flags),
    and nothing is duplicated.
"""

import os
import re
import time

import harness as h
from harness import check
import relutil as R
from relutil import fakeserver

N = 60


# One APPEND command per message (pipelined), so that "every 20th APPEND"
# is every 20th message.
ONE_BY_ONE = {'POSTINO_TEST_NO_MULTIAPPEND': '1'}


def copy(src, dst, state, extra=(), timeout=180, env=ONE_BY_ONE):
    return R.run_measured(['copy', R.url_of(src), R.url_of(dst), '--state',
                           state, '--jobs', '1', '--timeout', '10'] +
                          list(extra), ca_file=None, timeout=timeout,
                          env_extra=env)


def exact(src, dst, what):
    want = R.digests(src.messages('INBOX'))
    got = R.digests(dst.messages('INBOX'))
    check(got == want, '%s: destination equals source (%d messages), no '
          'duplicate' % (what, len(want)), 'want %d got %d' % (len(want),
                                                              len(got)))


def listed_uids(m):
    return sorted(int(u) for u in re.findall(r'not copied: \S+ UID (\d+)',
                                             m.stdout))


def untouched(src, before, what):
    check(src.messages('INBOX') and
          [(x.uid, x.data, sorted(x.flags)) for x in src.messages('INBOX')] ==
          before, '%s: the source is unchanged' % what)
    bad = src.commands_named('STORE', 'UID STORE', 'EXPUNGE', 'UID EXPUNGE',
                             'MOVE', 'UID MOVE', 'APPEND', 'COPY', 'UID COPY')
    check(not bad, '%s: no write command reached the source' % what,
          [c.line for c in bad])


def src_state(src):
    return [(x.uid, x.data, sorted(x.flags)) for x in src.messages('INBOX')]


def no_on_5_percent(tmp):
    src = R.fake_imap(R.synth(N, tag='no5'))
    rule = fakeserver.Rule(command='APPEND', action='no', every=20,
                           text='Temporary failure, try again')
    dst = R.fake_imap(rules=[rule])
    state = os.path.join(tmp, 'no5.db')
    m = copy(src, dst, state, ['--batch', '10'])
    listed = listed_uids(m)
    R.figure('NO on 5% of APPENDs', '%d APPENDs, %d refused, exit %d' % (
        rule.count, rule.fired, m.returncode))
    check(m.returncode == 1, 'NO on every 20th APPEND: exit 1 (not '
          'everything copied)', m.show())
    check(rule.fired >= 2 and len(listed) >= rule.fired - 1,
          'the %d refused messages are listed (%s)' % (rule.fired, listed),
          m.show())
    got = R.digests(dst.messages('INBOX'))
    check(len(got) == len(set(got)) and len(got) < N, 'the first run copied '
          '%d of %d, no duplicate' % (len(got), N))
    dst.rules.remove(rule)
    m = copy(src, dst, state)
    check(m.returncode == 0 and not listed_uids(m), 'the rerun retries the '
          'refused messages and exits 0', m.show())
    exact(src, dst, 'NO on 5% of APPENDs, rerun')


def bye_mid_append(tmp):
    src = R.fake_imap(R.synth(N, tag='bye'))
    rule = fakeserver.Rule(command='APPEND', action='bye', phase='literal',
                           after_bytes=50, nth=[4, 9],
                           bye_text='Server shutting down')
    dst = R.fake_imap(rules=[rule])
    state = os.path.join(tmp, 'bye.db')
    m = copy(src, dst, state, ['--batch', '5'])
    check(R.no_crash(m) and m.returncode in (0, 3), 'BYE mid-APPEND: exit %d '
          '(done or resumable)' % m.returncode, m.show())
    check(rule.fired == 2, 'the server said BYE in the middle of an APPEND '
          'twice')
    for _ in range(3):
        if m.returncode == 0:
            break
        m = copy(src, dst, state)
    check(m.returncode == 0, 'BYE mid-APPEND: a run exits 0', m.show())
    exact(src, dst, 'BYE mid-APPEND')


def stamp_events(srv):
    """Have SRV's events carry the time: [(t, conn, what, detail)]."""
    log = []
    orig = srv.event

    def event(conn, what, detail=None):
        log.append((time.monotonic(), conn, what, detail))
        orig(conn, what, detail)
    srv.event = event
    return log


def throttled(tmp):
    ms = 1500
    src = R.fake_imap(R.synth(N, tag='thr'))
    rule = fakeserver.o365_throttled(ms=ms, command='APPEND', nth=2)
    dst = R.fake_imap(rules=[rule])
    log = stamp_events(dst)
    state = os.path.join(tmp, 'thr.db')
    m = copy(src, dst, state, ['--batch', '5'])
    check(rule.fired == 1, 'the server throttled one APPEND')
    t_thr = [t for t, c, what, d in log if what == 'rule'][:1]
    t_next = [t for t, c, what, d in log if what == 'connect' and t_thr and
              t > t_thr[0]][:1]
    gap = (t_next[0] - t_thr[0]) if t_next else None
    R.figure('throttling (suggested %d ms)' % ms, 'exit %d in %.2fs, next '
             'connection %s ms after the throttle' % (
                 m.returncode, m.wall, int(gap * 1000) if gap else 'never'))
    check(R.no_crash(m), 'throttled: clean end (exit %d)' % m.returncode,
          m.show())
    check(gap is not None and gap >= ms / 1000.0,
          'throttled: postino waited %s ms (>= the suggested %d ms) before '
          'it connected again' % (int(gap * 1000) if gap else None, ms),
          [x[:3] for x in log])
    check(gap is not None and gap < ms / 1000.0 * 1.1 + 2,
          'throttled: and not much longer (cap, jitter <= 10%)')
    check(m.returncode == 0 and not listed_uids(m),
          'throttled: the throttled message is sent again in the same run: '
          'exit 0, nothing listed as not copied', m.show())
    exact(src, dst, 'throttled (NO + BYE)')

    # OK [THROTTLED] instead of [APPENDUID ...]
    src2 = R.fake_imap(R.synth(N, tag='throk'))
    rule = fakeserver.throttled_ok(command='APPEND', every=2)
    dst2 = R.fake_imap(rules=[rule])
    m = copy(src2, dst2, os.path.join(tmp, 'throk.db'), ['--batch', '5'])
    check(rule.fired >= 3 and m.returncode == 0, 'OK [THROTTLED] on every '
          'second APPEND (%d): exit 0' % rule.fired, m.show())
    exact(src2, dst2, 'OK [THROTTLED]')


def quota(tmp):
    msgs = R.synth(N, size=2000, tag='quota')
    src = R.fake_imap(msgs)
    before = src_state(src)
    limit = sum(len(d) for d in msgs) // 2
    dst = R.fake_imap(quota_bytes=limit)
    state = os.path.join(tmp, 'quota.db')
    m = copy(src, dst, state, ['--batch', '10'])
    got = R.digests(dst.messages('INBOX'))
    listed = listed_uids(m)
    R.figure('over quota', 'exit %d, %d copied, %d listed as not copied' % (
        m.returncode, len(got), len(listed)))
    check(R.no_crash(m) and m.returncode == 1, 'over quota: exit 1', m.show())
    mt = re.search(r'(\d+) more messages? of this folder not tried',
                   m.stdout + m.stderr)
    untried = int(mt.group(1)) if mt else 0
    check(listed and len(listed) + untried == N - len(got) and
          len(got) == len(set(got)),
          'over quota: the run stops: %d copied, %d refused and listed, %d '
          'said not tried, no duplicate' % (len(got), len(listed), untried),
          m.show())
    check('OVERQUOTA' in m.stdout + m.stderr or 'uota' in m.stdout +
          m.stderr, 'over quota: the reason is shown')
    untouched(src, before, 'over quota')

    big = R.synth(4, size=200000, tag='big')
    small = R.synth(20, size=500, tag='small')
    src = R.fake_imap(small[:10] + big + small[10:])
    before = src_state(src)
    dst = R.fake_imap(max_message_size=100000)
    m = copy(src, dst, os.path.join(tmp, 'toobig.db'), ['--batch', '5'])
    listed = listed_uids(m)
    R.figure('message too big', 'exit %d, %d copied, %d listed' % (
        m.returncode, len(dst.messages('INBOX')), len(listed)))
    check(R.no_crash(m) and m.returncode == 1, 'too big: exit 1', m.show())
    check(listed == [11, 12, 13, 14], 'too big: exactly the 4 large messages '
          'are listed (%s)' % listed, m.show())
    check(sorted(R.digests(dst.messages('INBOX'))) ==
          sorted(R.sha(d) for d in small), 'too big: the 20 others are '
          'copied, once each')
    untouched(src, before, 'too big')
    m = copy(src, dst, os.path.join(tmp, 'toobig.db'))
    check(m.returncode == 1 and len(dst.messages('INBOX')) == 20,
          'too big: a rerun still reports them (exit 1) and copies nothing '
          'twice', m.show())


def run():
    tmp = h.make_tmpdir('refusals')
    no_on_5_percent(tmp)
    bye_mid_append(tmp)
    quota(tmp)
    throttled(tmp)


if __name__ == '__main__':
    h.main(run)
