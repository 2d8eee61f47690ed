#!/usr/bin/env python3
"""test_copy_resume — a copy killed at any moment resumes to an exact copy,
without duplicates and without losses.

Proves:
  - crash after the Nth durable step (POSTINO_TEST_EXIT_AFTER=N, exit 99),
    for N = 1..12 and a spread of later steps: the crash leaves at most N
    appended messages, and a plain rerun ends with the destination equal
    to the source (multiset: no duplicate, no loss), and a further rerun
    copies 0;
  - the same against a destination without UIDPLUS (capability removed and
    APPENDUID/COPYUID hidden by a proxy), so resuming cannot rely on
    APPENDUID;
  - a chain of crashes in one destination (crash, crash, ..., finish);
  - real SIGKILLs at random moments of a copy of 300 messages over a slow
    link, repeated until a run finishes: exact copy, no duplicates;
  - SIGINT during a copy: exit 7 (interrupted), and a rerun finishes it.
Seed for the random parts: env POSTINO_TEST_SEED (printed).
"""

import os
import random
import signal
import time

import harness as h
from harness import check

# Every step up to 12, then a spread of later ones (which may lie past the
# end of the copy).
CRASH_STEPS = list(range(1, 13)) + [15, 18, 22, 27, 33, 40, 50, 65, 80]
NOPLUS_STEPS = [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 27, 35, 50]


def copy_args(src_url, dst_url, state):
    # four workers (a small copy on loopback would keep to one): crashes
    # land while several connections append at once
    return ['copy', src_url, dst_url, '--state', state, '--jobs', '4']


def crash_then_resume(src, src_snap, dst_url_of, dst, user, state, n,
                      tag):
    """One crash at step N into a fresh account, then resume.

    Up to step 12 the crash must happen (the copy of the small corpus has
    more durable steps than that: a state commit and an APPEND for each
    folder at least); a later N may lie beyond the end of the copy, when
    the run finishes normally.
    """
    r = h.run_postino(copy_args(src.url(), dst_url_of(user), state),
                      env_extra={'POSTINO_TEST_EXIT_AFTER': n}, echo=False)
    if n <= 12 or r.returncode != 0:
        check(r.returncode == 99, '%s: crash at step %d exits 99' % (tag, n),
              h.show(r))
        partial = h.total(h.count_messages(dst, user))
        h.log('  after the crash at step %d: %d messages at the destination'
              % (n, partial))
        r = h.run_postino(copy_args(src.url(), dst_url_of(user), state),
                          echo=False)
        h.expect_exit(r, 0, '%s: resume after crash at step %d' % (tag, n))
    else:
        h.log('  %s: the copy ended before step %d' % (tag, n))
    h.check_same(src_snap, h.snapshot(dst, user),
                 '%s: crash at step %d, resumed: exact copy' % (tag, n))
    r = h.run_postino(copy_args(src.url(), dst_url_of(user), state),
                      echo=False)
    s = h.summary(r)
    check(r.returncode == 0 and s is not None and s['copied'] == 0,
          '%s: crash at step %d: third run copies 0' % (tag, n), h.show(r))
    return n


def chain_of_crashes(src, src_snap, dst, user, tmp, rng):
    state = os.path.join(tmp, 'chain.db')
    runs = 0
    for runs in range(1, 41):
        n = rng.randint(2, 15)
        r = h.run_postino(copy_args(src.url(), dst.url(user), state),
                          env_extra={'POSTINO_TEST_EXIT_AFTER': n},
                          echo=False)
        if r.returncode == 0:
            break
        check(r.returncode == 99, 'chain: run %d crashed at step %d '
              '(exit 99)' % (runs, n), h.show(r))
    else:
        r = h.run_postino(copy_args(src.url(), dst.url(user), state))
        h.expect_exit(r, 0, 'chain: final run without crash')
    h.check_same(src_snap, h.snapshot(dst, user),
                 'chain of %d crashing runs: exact copy' % runs)


def dest_count(c):
    """Messages in all folders of an open harness connection."""
    n = 0
    for path in c.folders():
        typ, data = c.imap.status(h.imap_quote(c.server_name(path)),
                                  '(MESSAGES)')
        n += int(data[0].decode().rsplit('MESSAGES ', 1)[1].rstrip(')'))
    return n


def wait_count(dst, user, target, proc, timeout=120):
    """Poll the destination until it holds at least TARGET messages.
    Returns the count seen, or None if PROC ended first."""
    deadline = time.time() + timeout
    with dst.connect(user) as c:
        while time.time() < deadline:
            if proc.poll() is not None:
                return None
            n = dest_count(c)
            if n >= target:
                return n
            time.sleep(0.01)
    return None


def random_kills(src, dst, proxy, user, tmp, rng, full_time, seed):
    """SIGKILL at random moments, rerun until a run exits 0.

    The destination is behind a slow link (PROXY), so a full copy lasts
    about FULL_TIME seconds.  Odd runs are killed after a random delay;
    even runs right after the destination count grows (an APPEND has
    completed, quite possibly before postino recorded it).  Whenever a run finishes
    before 6 kills have happened, 40 new messages arrive at the source (in
    a new folder and in INBOX) and the killing goes on; after 12 runs, one
    is let finish.
    """
    state = os.path.join(tmp, 'kills.db')
    url = proxy.url(user)
    kills = 0
    finished = False
    extra = 0
    for attempt in range(1, 13):
        with dst.connect(user) as c:
            before = dest_count(c)
        proc = h.start_postino(copy_args(src.url(), url, state))
        if attempt % 2:
            delay = rng.uniform(0.05, full_time)
            time.sleep(delay)
            when = 'after %.2fs' % delay
        else:
            seen = wait_count(dst, user, before + 1, proc,
                              timeout=3 * full_time)
            when = ('as the destination reached %d messages' % seen
                    if seen is not None else 'at a random moment')
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            h.log('  SIGKILL %d %s' % (kills, when))
            continue
        h.log('  run %d finished by itself (exit %d)' % (attempt,
                                                         proc.returncode))
        check(proc.returncode == 0, 'random kills: a run that was not '
              'killed exits 0', 'exit %d\n%s' % (proc.returncode,
                                                  h.output_of(proc)))
        if kills >= 6:
            finished = True
            break
        extra += 1
        more = h.corpus('many', folders=['More/%d' % extra, 'INBOX'],
                        per_folder=20, seed=seed + extra)
        h.populate(src, 'alice', more)
        h.log('  added 40 messages to the source (More/%d, INBOX)' % extra)
    if not finished:
        r = h.run_postino(copy_args(src.url(), url, state))
        h.expect_exit(r, 0, 'random kills: final run')
    src_snap = h.snapshot(src)
    total_n = h.total(src_snap)
    check(kills >= 3, 'random kills: %d SIGKILLs during copies' % kills)
    got = h.snapshot(dst, user)
    h.check_same(src_snap, got, 'after %d SIGKILLs: exact copy of %d '
                 'messages' % (kills, total_n))
    check(h.duplicates(got) == h.duplicates(src_snap),
          'after SIGKILLs: no duplicate message')
    r = h.run_postino(copy_args(src.url(), url, state))
    s = h.summary(r)
    check(r.returncode == 0 and s is not None and s['copied'] == 0,
          'after SIGKILLs: one more run copies 0', h.show(r))


def sigint(src, src_snap, dst, proxy, user, tmp):
    """SIGINT in the middle of a (slow) copy: exit 7, then resume."""
    state = os.path.join(tmp, 'sigint.db')
    url = proxy.url(user)
    proc = h.start_postino(copy_args(src.url(), url, state))
    time.sleep(1.0)
    check(proc.poll() is None, 'copy still running after 1s (slow link)',
          'exit %s\n%s' % (proc.returncode, h.output_of(proc)))
    os.killpg(proc.pid, signal.SIGINT)
    try:
        rc = proc.wait(timeout=60)
    except Exception:
        rc = None
    check(rc == 7, 'SIGINT during a copy: exit 7', 'exit %s\n%s' % (
        rc, h.output_of(proc)))
    r = h.run_postino(copy_args(src.url(), url, state))
    h.expect_exit(r, 0, 'rerun after SIGINT')
    h.check_same(src_snap, h.snapshot(dst, user),
                 'rerun after SIGINT: exact copy')


def run():
    seed = int(os.environ.get('POSTINO_TEST_SEED') or time.time())
    h.log('seed %d (set POSTINO_TEST_SEED to repeat)' % seed)
    rng = random.Random(seed)
    tmp = h.make_tmpdir('resume')

    # Part 1: crash after step N, a fresh destination account for each N.
    src = h.Dovecot(layout='fs', name='src')
    h.populate(src, 'alice', h.corpus('small'))
    src_snap = h.snapshot(src)
    h.log('small corpus: %d messages in %d folders' % (h.total(src_snap),
                                                       len(src_snap)))
    users = {'u%d' % n: 'secret' for n in CRASH_STEPS}
    users['chain'] = 'secret'
    dst = h.Dovecot(layout='maildir++', name='dst', users=users)
    for n in CRASH_STEPS:
        crash_then_resume(src, src_snap, dst.url, dst, 'u%d' % n,
                          os.path.join(tmp, 'crash-%d.db' % n), n, 'UIDPLUS')
    chain_of_crashes(src, src_snap, dst, 'chain', tmp, rng)

    # Part 2: a destination without UIDPLUS.
    users = {'n%d' % n: 'secret' for n in NOPLUS_STEPS}
    noplus = h.Dovecot(layout='maildir++', name='noplus', uidplus=False,
                       users=users)
    proxy = h.FilterProxy(noplus)
    for n in NOPLUS_STEPS:
        crash_then_resume(src, src_snap, proxy.url, noplus, 'n%d' % n,
                          os.path.join(tmp, 'noplus-%d.db' % n), n,
                          'no UIDPLUS')
    check(proxy.stripped > 0, 'APPENDUID was hidden from postino %d times'
          % proxy.stripped)

    # Part 3: real SIGKILLs and a SIGINT during a copy of 300 messages,
    # the destination behind a slow link so that a copy takes ~4 seconds.
    big = h.Dovecot(layout='fs', name='big')
    h.populate(big, 'alice', h.corpus('many', per_folder=100, seed=seed))
    big_snap = h.snapshot(big)
    size = sum(h.folder_sizes(big).values())
    full_time = 4.0
    dst2 = h.Dovecot(layout='maildir++', name='dst2',
                     users={'k': 'secret', 'i': 'secret'})
    slow = h.FilterProxy(dst2, strip_uidplus=False, rate=size / full_time)
    h.log('%d messages, %d bytes, link %d bytes/s' % (
        h.total(big_snap), size, size / full_time))
    random_kills(big, dst2, slow, 'k', tmp, rng, full_time, seed)
    sigint(big, h.snapshot(big), dst2, slow, 'i', tmp)

if __name__ == '__main__':
    h.main(run)
