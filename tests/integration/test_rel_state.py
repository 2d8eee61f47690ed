#!/usr/bin/env python3
"""test_rel_state — the state DB survives kills, a full disk and a
read-only disk, and is never shared by two runs (issue #6, row 9;
docs/reliability.md).

Proves:
  - SIGKILL at random moments of copies that commit all the time (batches
    of 2 messages, three commits a batch): after every kill
    PRAGMA integrity_check says ok and the foreign keys hold; the runs
    resume to an exact copy (0 lost, 0 duplicated) — 30 kills, 100 with
    POSTINO_TEST_LONG=1;
  - the state DB on a full file system (a 1 MB tmpfs): the copy stops
    cleanly (exit 4, the reason on stderr, no crash), the DB is intact, and
    once there is room a rerun completes exactly, without a duplicate;
  - the state DB on a read-only file system: the run stops before sending
    anything (no APPEND without a durable intent), the destination is
    unchanged; writable again, a rerun completes;
  - two concurrent runs on one state: the second is refused (exit 4) at
    once, and the first still completes exactly (test_cli_errors checks
    the same against Dovecot).
The file systems are tmpfs mounts made by the test (root); without the
right to mount, the full disk is simulated with RLIMIT_FSIZE instead and
the read-only case is skipped with a message.
"""

import os
import random
import resource
import signal
import sqlite3
import subprocess
import time

import harness as h
from harness import check
import relutil as R

KILLS = 100 if R.LONG else 30
N = 400


def integrity(path):
    """(integrity_check result, foreign_key_check rows)."""
    db = sqlite3.connect(path, timeout=10)
    try:
        ic = db.execute('PRAGMA integrity_check').fetchall()
        fk = db.execute('PRAGMA foreign_key_check').fetchall()
        return [r[0] for r in ic], fk
    finally:
        db.close()


def copy_args(src, dst, state, extra=()):
    return ['copy', R.url_of(src), R.url_of(dst), '--state', state,
            '--batch', '2', '--jobs', '1', '--timeout', '10'] + list(extra)


def exact(src, dst, what):
    want = R.digests(src.messages('INBOX'))
    got = R.digests(dst.messages('INBOX'))
    check(got == want, '%s: destination equals source (%d), no duplicate, '
          'none lost' % (what, len(want)), 'want %d, got %d (%d distinct)' % (
              len(want), len(got), len(set(got))))


def kills(tmp, rng):
    src = R.fake_imap(R.synth(N, size=300, tag='kill'))
    scratch = R.fake_imap()
    m = R.run_measured(copy_args(src, scratch, os.path.join(tmp, 'full.db')),
                       ca_file=None)
    check(m.returncode == 0, 'uninterrupted copy of %d messages in %.1fs' % (
        N, m.wall), m.show())
    full = m.wall
    killed = rounds = 0
    ok_checks = 0
    dst = state = None
    t0 = time.monotonic()
    while killed < KILLS:
        if dst is None:
            rounds += 1
            dst = R.fake_imap()
            state = os.path.join(tmp, 'kill%d.db' % rounds)
        proc = h.start_postino(copy_args(src, dst, state), ca_file=None)
        time.sleep(rng.uniform(0.05, max(0.2, full * 0.8)))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed += 1
        else:
            check(proc.returncode == 0, 'a run that was not killed exits 0',
                  h.output_of(proc))
            exact(src, dst, 'kill round %d' % rounds)
            dst = None
        if state and os.path.exists(state):
            ic, fk = integrity(state)
            if ic != ['ok'] or fk:
                check(False, 'integrity_check after kill %d' % killed,
                      '%s %s' % (ic, fk))
            ok_checks += 1
    if dst is not None:
        m = R.run_measured(copy_args(src, dst, state), ca_file=None)
        check(m.returncode == 0, 'the last round completes', m.show())
        exact(src, dst, 'after the last kill')
    check(ok_checks >= KILLS, '%d SIGKILLs during commits: integrity_check '
          'ok and no foreign key violation after every one (%d checks, %d '
          'rounds)' % (killed, ok_checks, rounds))
    R.figure('state DB kills', '%d kills, %d integrity checks ok, %d rounds, '
             '%.0fs' % (killed, ok_checks, rounds, time.monotonic() - t0))


def mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%s,mode=0700' %
                        size, 'tmpfs', path], capture_output=True)
    return r.returncode == 0


def remount(path, opts):
    r = subprocess.run(['mount', '-o', 'remount,' + opts, path],
                       capture_output=True)
    check(r.returncode == 0, 'remount %s %s' % (path, opts), r.stderr)


class Mount:
    def __init__(self, path):
        self.path = path

    def stop(self):
        subprocess.run(['umount', '-l', self.path], capture_output=True)


def full_disk(tmp):
    src = R.fake_imap(R.synth(3000, size=200, tag='full'))
    dst = R.fake_imap()
    mnt = os.path.join(tmp, 'small')
    mounted = os.geteuid() == 0 and mount_tmpfs(mnt, '1m')
    if mounted:
        h.track(Mount(mnt))
        state = os.path.join(mnt, 'state.db')
        m = R.run_measured(copy_args(src, dst, state, ['--batch', '50']),
                           ca_file=None)
        how = '1 MB tmpfs'
    else:
        h.log('cannot mount a tmpfs here: RLIMIT_FSIZE of 1 MB instead')
        os.makedirs(mnt, exist_ok=True)
        state = os.path.join(mnt, 'state.db')

        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        m = run_limited(copy_args(src, dst, state, ['--batch', '50']), limit)
        how = 'RLIMIT_FSIZE 1 MB'
    R.figure('full disk', '%s: exit %d after %d of 3000 messages' % (
        how, m.returncode, len(dst.messages('INBOX'))))
    check(R.no_crash(m) and m.returncode == 4, 'state DB on a full disk '
          '(%s): clean stop, exit 4' % how, m.show())
    check(m.stderr.strip() and ('full' in m.stderr.lower() or 'space' in
                                m.stderr.lower() or 'disk' in
                                m.stderr.lower()),
          'full disk: stderr says why: %s' % m.stderr.strip()[-160:])
    ic, fk = integrity(state) if not mounted else integrity_copy(state, tmp)
    check(ic == ['ok'] and not fk, 'full disk: the state DB is intact')
    got = R.digests(dst.messages('INBOX'))
    check(len(got) == len(set(got)) and 0 < len(got) < 3000,
          'full disk: %d messages copied before the stop, no duplicate' %
          len(got))
    if mounted:
        remount(mnt, 'size=64m')
        m = R.run_measured(copy_args(src, dst, state, ['--batch', '50']),
                           ca_file=None)
    else:
        m = R.run_measured(copy_args(src, dst, state, ['--batch', '50']),
                           ca_file=None)
    check(m.returncode == 0, 'full disk: with room again, a rerun exits 0',
          m.show())
    exact(src, dst, 'full disk, then room again')
    return mounted, mnt


def integrity_copy(state, tmp):
    """integrity() of a copy (the DB's own file system may be full)."""
    import shutil
    d = os.path.join(tmp, 'icopy')
    os.makedirs(d, exist_ok=True)
    for suffix in ('', '-wal'):
        if os.path.exists(state + suffix):
            shutil.copy(state + suffix, os.path.join(d, 'x.db' + suffix))
    return integrity(os.path.join(d, 'x.db'))


def run_limited(args, preexec):
    import tempfile
    argv = h.postino_argv(args, None)
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                         env=h.postino_env(), preexec_fn=preexec,
                         start_new_session=True)
    try:
        p.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    out.seek(0)
    err.seek(0)
    return R.Measured(returncode=p.returncode, wall=time.monotonic() - t0,
                      cpu=0.0, maxrss_kb=0, stdout=h._dec(out.read()),
                      stderr=h._dec(err.read()),
                      timed_out=False)


def read_only(tmp, mounted, mnt):
    if not mounted:
        h.log('read-only state DB: not checked (cannot mount here)')
        return
    src = R.fake_imap(R.synth(40, tag='ro'))
    dst = R.fake_imap()
    state = os.path.join(mnt, 'ro.db')
    m = R.run_measured(copy_args(src, dst, state), ca_file=None)
    check(m.returncode == 0, 'read-only: first copy', m.show())
    for d in R.synth(10, tag='ro-new'):
        src.add_message('INBOX', d)
    before = len(dst.messages('INBOX'))
    appends = len(dst.commands_named('APPEND'))
    remount(mnt, 'ro')
    m = R.run_measured(copy_args(src, dst, state), ca_file=None)
    R.figure('read-only state DB', 'exit %d' % m.returncode)
    check(R.no_crash(m) and m.returncode == 4, 'read-only state DB: clean '
          'stop, exit 4', m.show())
    check(len(dst.messages('INBOX')) == before and
          len(dst.commands_named('APPEND')) == appends,
          'read-only state DB: nothing sent to the destination (no APPEND '
          'without a durable intent)')
    remount(mnt, 'rw')
    m = R.run_measured(copy_args(src, dst, state), ca_file=None)
    check(m.returncode == 0, 'read-only: writable again, a rerun exits 0',
          m.show())
    exact(src, dst, 'read-only, then writable')


def concurrent(tmp):
    src = R.fake_imap(R.synth(60, tag='conc'))
    dst = R.fake_imap(rules=[dict(command='APPEND', action='delay',
                                  seconds=0.1)])
    state = os.path.join(tmp, 'conc.db')
    first = h.start_postino(copy_args(src, dst, state), ca_file=None)
    _, waited = h.wait_until(lambda: dst.commands_named('APPEND'), 30, 0.02)
    m = R.run_measured(copy_args(src, dst, state), ca_file=None)
    check(m.returncode == 4 and m.wall < 10, 'a second run on the same state '
          'is refused: exit 4 in %.1fs' % m.wall, m.show())
    check(first.poll() is None, 'the first run was still running then')
    rc = first.wait(timeout=120)
    check(rc == 0, 'the first run completes (exit 0)', h.output_of(first))
    exact(src, dst, 'two concurrent runs')


def run():
    seed = int(os.environ.get('POSTINO_TEST_SEED') or time.time())
    h.log('seed %d (set POSTINO_TEST_SEED to repeat)' % seed)
    rng = random.Random(seed)
    tmp = h.make_tmpdir('relstate')
    concurrent(tmp)
    mounted, mnt = full_disk(tmp)
    read_only(tmp, mounted, mnt)
    kills(tmp, rng)


if __name__ == '__main__':
    h.main(run)
