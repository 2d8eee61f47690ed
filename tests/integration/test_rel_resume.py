#!/usr/bin/env python3
"""test_rel_resume — interrupted copies resume exactly (issue #6, rows 1-4;
docs/reliability.md).  test_copy_resume and test_copy_faults cover the
first steps, a SIGKILL series and chosen cuts; this test covers the rest of
the matrix:

  1. POSTINO_TEST_EXIT_AFTER=N for EVERY durable step N of a 20-message copy
     (batches of 2: every commit and every APPEND), each into a fresh
     destination, then a plain rerun: equal to an uninterrupted copy
     (bytes, flags, dates), and one more run copies 0;
  2. SIGKILL at random moments of a 300-message copy over a slow link,
     resumed until done: 0 lost, 0 duplicated, flags and dates equal — into
     a Dovecot with UIDPLUS and into one without (capability removed,
     APPENDUID hidden by the harness proxy): 10 kills each (50 over 2,000
     messages with POSTINO_TEST_LONG=1);
  3. the connection cut at random byte offsets (source and destination
     side, 20 cuts; 100 with POSTINO_TEST_LONG=1): every run ends in success
     or a clean resumable exit within the timeout, never a hang or a CPU
     spin (postino's user+sys CPU time well below its wall time), and the
     final run converges exactly;
  4. a stall (bytes stop, connection open) on either side is detected
     within --timeout and the run finishes.
Seed: POSTINO_TEST_SEED (printed).
"""

import os
import random
import signal
import time

import harness as h
from harness import check
import relutil as R
from relutil import faultproxy

LONG = R.LONG


def every_step(tmp):
    src = R.fake_imap(R.synth(20, tag='step'))
    base = R.fake_imap()
    args = ['--batch', '2', '--jobs', '1', '--timeout', '10']

    def copy(dst, state, env=None):
        return R.run_measured(['copy', R.url_of(src), R.url_of(dst),
                               '--state', state] + args, ca_file=None,
                              env_extra=env, echo=False)
    m = copy(base, os.path.join(tmp, 'base.db'))
    check(m.returncode == 0, 'uninterrupted copy of 20 messages', m.show())
    want = R.digests(base.messages('INBOX'))
    flags = sorted((x.data, tuple(sorted(x.flags)), x.date)
                   for x in base.messages('INBOX'))
    n = 0
    while True:
        n += 1
        dst = R.fake_imap()
        state = os.path.join(tmp, 'step%d.db' % n)
        m = copy(dst, state, {'POSTINO_TEST_EXIT_AFTER': n})
        if m.returncode == 0:
            break       # step n lies past the end of the copy
        check(m.returncode == 99, 'crash after step %d: exit 99' % n,
              m.show())
        m = copy(dst, state)
        got = sorted((x.data, tuple(sorted(x.flags)), x.date)
                     for x in dst.messages('INBOX'))
        if m.returncode != 0 or got != flags:
            check(False, 'crash after step %d, resumed: equal to the '
                  'uninterrupted copy' % n, m.show())
        m = copy(dst, state)
        if 'copied 0 messages' not in m.stdout:
            check(False, 'crash after step %d: a third run copies 0' % n,
                  m.show())
        dst.stop()
    check(n > 20 and R.digests(dst.messages('INBOX')) == want,
          'interrupted after every one of the %d durable steps of a '
          '20-message copy: each resumed to an exact copy, no duplicate, '
          'flags and dates equal; a third run copied 0' % (n - 1))
    R.figure('every step', '%d durable steps, each interrupted and resumed'
             % (n - 1))


def kills(tmp, rng, uidplus):
    per = 667 if LONG else 100
    nkills = 50 if LONG else 10
    tag = 'UIDPLUS' if uidplus else 'no UIDPLUS'
    src = h.Dovecot(layout='fs', name='ksrc')
    h.populate(src, 'alice', h.corpus('many', per_folder=per,
                                      seed=rng.randint(1, 10 ** 6)))
    want = h.snapshot(src)
    total = h.total(want)
    size = sum(h.folder_sizes(src).values())
    dst = h.Dovecot(layout='maildir++', name='kdst', uidplus=uidplus)
    full = (25.0 if LONG else 4.0)
    link = h.FilterProxy(dst, strip_uidplus=not uidplus, rate=size / full)
    state = os.path.join(tmp, 'kills-%s.db' % tag.replace(' ', ''))
    args = ['copy', src.url(), link.url(), '--state', state,
            '--timeout', '20']
    killed = runs = 0
    t0 = time.monotonic()
    while killed < nkills and runs < nkills * 3:
        runs += 1
        proc = h.start_postino(args)
        time.sleep(rng.uniform(0.1, full))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed += 1
            continue
        check(proc.returncode == 0, '%s: a run not killed exits 0' % tag,
              h.output_of(proc))
        break
    for _ in range(3):
        r = h.run_postino(args, timeout=600)
        if r.returncode == 0:
            break
    h.expect_exit(r, 0, '%s: the final run' % tag)
    got = h.snapshot(dst)
    h.check_same(want, got, '%s: after %d SIGKILLs, %d messages: 0 lost, 0 '
                 'duplicated, flags and dates equal' % (tag, killed, total))
    check(h.duplicates(got) == h.duplicates(want), '%s: no extra duplicate'
          % tag)
    r = h.run_postino(args)
    s = h.summary(r)
    check(r.returncode == 0 and s and s['copied'] == 0, '%s: one more run '
          'copies 0' % tag, h.show(r))
    if not uidplus:
        check(link.stripped > 0, 'APPENDUID was hidden %d times' %
              link.stripped)
    R.figure('SIGKILL series (%s)' % tag, '%d kills over %d messages, %.0fs'
             % (killed, total, time.monotonic() - t0))
    src.stop()
    dst.stop()
    link.stop()


def cuts(tmp, rng):
    ncuts = 100 if LONG else 20
    src = h.Dovecot(layout='fs', name='csrc')
    h.populate(src, 'alice', h.corpus('many', per_folder=40, seed=7))
    want = h.snapshot(src)
    size = sum(h.folder_sizes(src).values())
    users = {'u%d' % i: 'secret' for i in range(ncuts)}
    dst = h.Dovecot(layout='maildir++', name='cdst', users=users)
    worst_ratio = 0.0
    runs = fired = 0
    t0 = time.monotonic()
    for i in range(ncuts):
        side = 'src' if i % 2 else 'dst'
        direction = rng.choice(['s2c', 'c2s'])
        # offsets over the whole exchange: about `size` bytes flow s2c on
        # the source side and c2s on the destination side
        big = (side == 'src') == (direction == 's2c')
        # (the other directions carry a few kilobytes: the handshake, the
        # commands or the answers)
        offset = rng.randint(1, int(size * 1.1) if big else 6000)
        user = 'u%d' % i
        target = src if side == 'src' else dst
        state = os.path.join(tmp, 'cut%d.db' % i)
        with faultproxy.FaultProxy('127.0.0.1', target.imaps_port) as p:
            rule = p.cut_at(offset, direction, once=True)
            url = 'imaps://%s@localhost:%d' % (
                'alice' if side == 'src' else user, p.port)
            s_url, d_url = (url, dst.url(user)) if side == 'src' else (
                src.url(), url)
            for attempt in range(4):
                # one connection a side, so that the whole exchange
                # crosses the proxied one and the offsets are reached
                m = R.run_measured(['copy', s_url, d_url, '--state', state,
                                    '--timeout', '5', '--jobs', '1'],
                                   timeout=120, echo=False)
                runs += 1
                busy = m.cpu / max(m.wall, 0.01)
                worst_ratio = max(worst_ratio, busy if m.wall > 2 else 0)
                if not (R.no_crash(m) and m.returncode in (0, 3) and
                        m.wall < 60):
                    check(False, 'cut %d (%s %s at %d): success or a clean '
                          'resumable exit in time' % (i, side, direction,
                                                      offset), m.show())
                if m.wall > 2 and busy > 0.6 * (2 if R.SANITIZED else 1):
                    check(False, 'cut %d: no CPU spin (cpu %.2fs for %.1fs)'
                          % (i, m.cpu, m.wall), m.show())
                if m.returncode == 0:
                    break
        check(m.returncode == 0, 'cut %d (%s %s at byte %d, %s): converged'
              % (i, side, direction, offset,
                 'cut' if rule.fired else 'not reached'), m.show())
        fired += bool(rule.fired)
        got = h.snapshot(dst, user)
        if got != want:
            h.check_same(want, got, 'cut %d: exact' % i)
    check(fired >= ncuts // 2, '%d random cuts (source and destination, '
          'both directions), %d of them reached: every run clean and in '
          'time, every copy exact, no duplicate' % (ncuts, fired))
    check(worst_ratio < 0.6 * (2 if R.SANITIZED else 1),
          'no CPU spin: worst user+sys / wall of a run over 2s = %.2f' %
          worst_ratio)
    R.figure('random cuts', '%d cuts (%d reached), %d runs, worst CPU/wall '
             '%.2f, %.0fs' % (ncuts, fired, runs, worst_ratio,
                              time.monotonic() - t0))


def stalls(tmp):
    src = R.fake_imap(R.synth(40, tag='stall'))
    for side in ('source', 'destination'):
        dst = R.fake_imap()
        target = src if side == 'source' else dst
        with faultproxy.FaultProxy('127.0.0.1', target.port) as p:
            # the first connection stops forwarding once the FETCH / APPEND
            # traffic has started
            p.stall_after(b'UID FETCH' if side == 'source' else b'APPEND',
                          'c2s', conn=1)
            purl = 'imap://alice@127.0.0.1:%d/?tls=none' % p.port
            s_url, d_url = (purl, R.url_of(dst)) if side == 'source' else (
                R.url_of(src), purl)
            m = R.run_measured(['copy', s_url, d_url, '--state',
                                os.path.join(tmp, 'stall-%s.db' % side),
                                '--timeout', '3', '--jobs', '1'],
                               ca_file=None, timeout=90)
            check(m.returncode == 0 and 3 <= m.wall < 30,
                  'stalled %s: detected by the 3 s timeout, reconnected and '
                  'finished in %.1fs' % (side, m.wall), m.show())
            check(m.cpu < 1.0 * (3 if R.SANITIZED else 1),
                  'stalled %s: waiting cost %.2fs CPU (no spin)' % (side,
                                                                  m.cpu))
            R.figure('stall (%s)' % side, 'finished in %.1fs with '
                     '--timeout 3' % m.wall)
        check(R.digests(dst.messages('INBOX')) ==
              R.digests(src.messages('INBOX')),
              'stalled %s: exact, no duplicate' % side)


def run():
    seed = int(os.environ.get('POSTINO_TEST_SEED') or time.time())
    h.log('seed %d (set POSTINO_TEST_SEED to repeat)%s' % (
        seed, ', long variants' if LONG else ''))
    rng = random.Random(seed)
    tmp = h.make_tmpdir('relresume')
    every_step(tmp)
    stalls(tmp)
    kills(tmp, rng, uidplus=True)
    kills(tmp, rng, uidplus=False)
    cuts(tmp, rng)


if __name__ == '__main__':
    h.main(run)
