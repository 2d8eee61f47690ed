#!/usr/bin/env python3
"""test_rel_secrets — passwords stay secret (issue #6, row 12;
docs/reliability.md).

A copy between two accounts with distinctive passwords, given three ways
(--passcmd1, --passcmd2, --passfile2, POSTINO_PASSWORD1), at the highest
verbosity (-vv --trace --log FILE), over STARTTLS and imaps, with AUTH and
LOGIN.  Proves, for each password, in plain text and as base64 of the
SASL PLAIN message:
  - it never appears in any /proc/*/cmdline while postino runs (polled);
  - a --passcmd child does not get the other account's password, nor its
    own, in its environment (postino exports no password to children);
  - it is in no log: stdout, stderr, the --log file;
  - it is not in the state DB (the database file, its -wal and -shm);
and, with umask 000, the state DB (and -wal, -shm, the lock file) and the
log file are created 0600.
"""

import base64
import glob
import os
import stat
import threading
import time

import harness as h
from harness import check
import relutil as R

PW1 = 'Src-Pw-7f3a9c-q0'
PW2 = 'Dst-Pw-2be81d-z9'


def forms(user, pw):
    """The byte strings that would betray PW."""
    raw = pw.encode()
    out = {'plain': raw}
    for authz in (b'', user.encode()):
        plain = authz + b'\0' + user.encode() + b'\0' + raw
        out['base64 PLAIN %r' % authz] = base64.b64encode(plain)
    out['base64'] = base64.b64encode(raw)
    return out


def leaks(data, secrets):
    return [name for name, pat in secrets.items() if pat in data]


def scan_cmdlines(secrets, stop, found):
    while not stop.is_set():
        for p in glob.glob('/proc/[0-9]*/cmdline'):
            try:
                with open(p, 'rb') as f:
                    data = f.read()
            except OSError:
                continue
            bad = leaks(data, secrets)
            if bad:
                found.append((p, bad))
        found.append(None)  # one pass done
        time.sleep(0.05)


def run():
    tmp = h.make_tmpdir('secrets')
    src = h.Dovecot(layout='fs', name='src', users={'alice': PW1})
    dst = h.Dovecot(layout='maildir++', name='dst', users={'bob': PW2, 'carol': PW2})
    h.populate(src, 'alice', h.corpus('many', per_folder=60, seed=6))
    size = sum(h.folder_sizes(src, 'alice').values())
    slow = h.FilterProxy(dst, strip_uidplus=False, rate=size / 3.0)
    secrets = {}
    for who, pw in (('alice', PW1), ('bob', PW2), ('carol', PW2)):
        for k, v in forms(who, pw).items():
            secrets['%s %s' % (who, k)] = v

    # --passcmd children: each prints its password and records its
    # environment.
    env1 = os.path.join(tmp, 'env1')
    env2 = os.path.join(tmp, 'env2')
    cmd1 = os.path.join(tmp, 'pass1.sh')
    cmd2 = os.path.join(tmp, 'pass2.sh')
    for path, pw, envf in ((cmd1, PW1, env1), (cmd2, PW2, env2)):
        with open(path, 'w') as f:
            f.write('#!/bin/sh\ncat /proc/$$/environ > %s\nprintf "%%s\\n" '
                    '"$(cat %s.pw)"\n' % (envf, path))
        with open(path + '.pw', 'w') as f:
            f.write(pw)
        os.chmod(path, 0o700)
    passfile2 = os.path.join(tmp, 'pass2.txt')
    with open(passfile2, 'w') as f:
        f.write(PW2 + '\n')

    runs = [
        ('passcmd1 + passcmd2, imaps, slow link', [
            '--passcmd1', cmd1, '--passcmd2', cmd2], (None, None),
         slow.url('bob')),
        ('POSTINO_PASSWORD1 + passfile2, STARTTLS', [
            '--passfile2', passfile2], (PW1, None),
         dst.url('carol', scheme='imap')),
    ]
    old_umask = os.umask(0)
    try:
        for i, (what, extra, pws, dst_url) in enumerate(runs):
            state = os.path.join(tmp, 'state%d.db' % i)
            logf = os.path.join(tmp, 'log%d.txt' % i)
            stop = threading.Event()
            found = []
            t = threading.Thread(target=scan_cmdlines,
                                 args=(secrets, stop, found), daemon=True)
            t.start()
            m = R.run_measured(['copy', src.url('alice', scheme='imap'),
                                dst_url, '--state', state, '-vv', '--trace',
                                '--log', logf] + extra, passwords=pws,
                               timeout=300)
            stop.set()
            t.join()
            passes = found.count(None)
            hits = [x for x in found if x]
            check(m.returncode == 0, '%s: copy exit 0' % what, m.show())
            check(passes >= 3 and not hits, '%s: no password in any '
                  '/proc/*/cmdline (%d scans of all processes)' % (
                      what, passes), hits)
            R.figure('secrets cmdline scans (%s)' % what, passes)
            with open(logf, 'rb') as f:
                log_bytes = f.read()
            check(len(log_bytes) > 1000 and (
                b'LOGIN' in log_bytes.upper() or
                b'AUTHENTICATE' in log_bytes.upper()),
                  '%s: the trace log has the protocol (%d bytes)' % (
                      what, len(log_bytes)))
            for name, data in (('stdout', m.stdout.encode()),
                               ('stderr', m.stderr.encode()),
                               ('--log file', log_bytes)):
                bad = leaks(data, secrets)
                check(not bad, '%s: no password in %s (%d bytes)' % (
                    what, name, len(data)), bad)
            dbfiles = [p for p in glob.glob(state + '*')]
            blob = b''
            for p in dbfiles:
                with open(p, 'rb') as f:
                    blob += f.read()
            bad = leaks(blob, secrets)
            check(not bad and len(blob) > 4096, '%s: no password in the state '
                  'DB (%s: %d bytes)' % (what, ', '.join(
                      os.path.basename(p) for p in dbfiles), len(blob)), bad)
            for p in dbfiles + [logf]:
                mode = stat.S_IMODE(os.stat(p).st_mode)
                check(mode & 0o077 == 0, '%s: %s is mode %04o with umask '
                      '000' % (what, os.path.basename(p), mode))
        # The --passcmd children's environments.
        for envf, other, own in ((env1, PW2, PW1), (env2, PW1, PW2)):
            with open(envf, 'rb') as f:
                env = f.read()
            names = sorted(x.split(b'=', 1)[0].decode() for x in
                           env.split(b'\0') if x)
            check(other.encode() not in env and own.encode() not in env,
                  '%s: a --passcmd child has no password in its environment '
                  '(%d variables)' % (os.path.basename(envf), len(names)))
            check(not [n for n in names if n.startswith('POSTINO_PASSWORD')],
                  '%s: no POSTINO_PASSWORD* variable exported to the child' %
                  os.path.basename(envf), names)
    finally:
        os.umask(old_umask)
    want = h.snapshot(src, 'alice')
    for user in ('bob', 'carol'):
        h.check_same(want, h.snapshot(dst, user), 'the copy to %s is exact'
                     % user)


if __name__ == '__main__':
    h.main(run)
