#!/usr/bin/env python3
"""test_cli_errors — the command line, its errors and its exit codes.

Proves:
  - --version, --help, COMMAND --help: exit 0, usage on stdout;
  - usage errors exit 2 with a one-line message: unknown command, unknown
    option, unknown URL scheme, malformed URLs, a password inside the URL
    (and that password is not echoed), --folder naming a folder the source
    does not have (the message names it);
  - a refused login exits 5 (wrong password, either side);
  - nothing listening exits 3;
  - a state file that cannot be created, or that is not a state database,
    exits 4 (and the foreign file is left as it was);
  - a second run on a state file in use by a running copy exits 4, and the
    first run still finishes with an exact copy;
  - the password sources --passfile1/2 and --passcmd1/2 work.
"""

import hashlib
import os
import re
import time

import harness as h
from harness import check


def project_version():
    with open(os.path.join(h.SOURCE_ROOT, 'meson.build')) as f:
        m = re.search(r"version\s*:\s*'([^']+)'", f.read())
    return m.group(1) if m else None


def usage_error(r, what, mention=None):
    h.expect_exit(r, 2, what)
    check(h.one_line_error(r), what + ': one-line error on stderr: ' +
          r.stderr.strip()[:120], h.show(r))
    if mention:
        check(mention in r.stderr, '%s: error names %r' % (what, mention),
              h.show(r))


def test_help_version():
    r = h.run_postino(['--version'])
    h.expect_exit(r, 0, 'postino --version')
    v = project_version()
    check(v and v in r.stdout, '--version prints %s' % v, h.show(r))
    r = h.run_postino(['--help'])
    h.expect_exit(r, 0, 'postino --help')
    check(re.search(r'usage', r.stdout, re.I) and
          all(c in r.stdout for c in ('plan', 'copy', 'status')),
          '--help prints usage naming plan, copy and status', h.show(r))
    r = h.run_postino(['copy', '--help'])
    h.expect_exit(r, 0, 'postino copy --help')
    check(re.search(r'usage', r.stdout, re.I) and '--state' in r.stdout and
          '--ca-file' in r.stdout, 'copy --help prints usage with its '
          'options', h.show(r))
    r = h.run_postino(['plan', '--help'])
    h.expect_exit(r, 0, 'postino plan --help')
    check(re.search(r'usage', r.stdout, re.I),
          'plan --help prints usage', h.show(r))


def test_usage_errors(srv, tmp):
    state = os.path.join(tmp, 'usage.db')
    good = srv.url('alice')
    dst = srv.url('bob')
    usage_error(h.run_postino(['frobnicate']), 'unknown command',
                'frobnicate')
    usage_error(h.run_postino(['copy', good, dst, '--state', state,
                               '--no-such-option']), 'unknown option',
                '--no-such-option')
    usage_error(h.run_postino(['copy', good]), 'missing destination URL')
    usage_error(h.run_postino(['copy', 'ftp://alice@localhost:21', dst,
                               '--state', state]), 'unknown scheme ftp://')
    for bad in ('imaps://alice@localhost:notaport', 'imaps://',
                'not a url at all', 'imaps://alice@:993',
                'imaps://alice@localhost:99999'):
        usage_error(h.run_postino(['copy', bad, dst, '--state', state]),
                    'malformed URL %r' % bad)
    pw = 'Hunter2-in-url'
    r = h.run_postino(['copy', 'imaps://alice:%s@localhost:%d' % (
        pw, srv.imaps_port), dst, '--state', state])
    usage_error(r, 'password in URL')
    check(pw not in r.stderr and pw not in r.stdout,
          'the password from the URL is not echoed')
    r = h.run_postino(['copy', good, dst, '--state', state,
                       '--folder', 'NoSuchFolder'])
    usage_error(r, '--folder NoSuchFolder', 'NoSuchFolder')
    check(h.total(h.snapshot(srv, 'bob')) == 0,
          'usage errors copied nothing')


def test_auth_network(srv, tmp):
    state = os.path.join(tmp, 'auth.db')
    r = h.run_postino(['copy', srv.url('alice'), srv.url('bob'), '--state',
                       state], passwords=('wrong', 'secret'))
    h.expect_exit(r, 5, 'wrong source password')
    r = h.run_postino(['copy', srv.url('alice'), srv.url('bob'), '--state',
                       state], passwords=('secret', 'wrong'))
    h.expect_exit(r, 5, 'wrong destination password')
    check('wrong' not in r.stderr.split(), 'the password is not echoed',
          h.show(r))
    r = h.run_postino(['copy', srv.url('nobody'), srv.url('bob'),
                       '--state', os.path.join(tmp, 'auth-nobody.db')])
    h.expect_exit(r, 5, 'unknown user')
    port = h.free_ports(1)[0]
    t = time.time()
    r = h.run_postino(['copy', 'imaps://alice@127.0.0.1:%d' % port,
                       srv.url('bob'), '--state',
                       os.path.join(tmp, 'closed.db'), '--timeout', '10'],
                      timeout=120)
    h.expect_exit(r, 3, 'closed port (connection refused)')
    check(time.time() - t < 60, 'connection refused reported quickly '
          '(%.1fs)' % (time.time() - t))
    check(h.total(h.snapshot(srv, 'bob')) == 0,
          'auth and network errors copied nothing')


def test_state_errors(srv, tmp):
    blocker = os.path.join(tmp, 'a-file')
    with open(blocker, 'w') as f:
        f.write('not a directory\n')
    r = h.run_postino(['copy', srv.url('alice'), srv.url('bob'), '--state',
                       os.path.join(blocker, 'state.db')])
    h.expect_exit(r, 4, 'state path below a regular file (cannot create)')
    garbage = os.path.join(tmp, 'garbage.db')
    with open(garbage, 'wb') as f:
        f.write(b'this is not an SQLite database\n' * 200)
    digest = hashlib.sha256(open(garbage, 'rb').read()).hexdigest()
    r = h.run_postino(['copy', srv.url('alice'), srv.url('carol'),
                       '--state', garbage])
    h.expect_exit(r, 4, 'state file that is not a state database')
    check(hashlib.sha256(open(garbage, 'rb').read()).hexdigest() == digest,
          'the foreign file is left unchanged')
    check(h.total(h.snapshot(srv, 'carol')) == 0,
          'nothing copied with an unusable state')


def test_lock(big, dst, tmp):
    """A second run on the state of a running copy exits 4.

    The destination is behind a slow link (about 8 s for the corpus), so
    the first run is surely still running when the second one starts.
    """
    state = os.path.join(tmp, 'lock.db')
    want = h.snapshot(big)
    size = sum(h.folder_sizes(big).values())
    slow = h.FilterProxy(dst, strip_uidplus=False, rate=size / 8.0)
    out = open(os.path.join(tmp, 'first.out'), 'w+')
    first = h.start_postino(['copy', big.url('alice'), slow.url('erin'),
                             '--state', state], stdout=out, stderr=out)
    deadline = time.time() + 30
    while time.time() < deadline and first.poll() is None and \
            not (os.path.exists(state) and slow.connections() > 0):
        time.sleep(0.05)
    time.sleep(0.5)
    check(first.poll() is None and os.path.exists(state),
          'first copy is running and has created its state file')
    r = h.run_postino(['copy', big.url('alice'), slow.url('erin'),
                       '--state', state], timeout=60)
    running = first.poll() is None
    h.expect_exit(r, 4, 'second run on the same state while one runs')
    check(running, 'the first run was still running when the second ended')
    check(re.search(r'lock|in use|busy|running', r.stderr, re.I),
          'the error says the state is in use: ' + r.stderr.strip()[:120],
          h.show(r))
    rc = first.wait(timeout=300)
    out.seek(0)
    check(rc == 0, 'the first run finishes (exit 0)', out.read())
    h.check_same(want, h.snapshot(dst, 'erin'),
                 'the first run made an exact copy despite the second')
    slow.stop()


def test_password_sources(srv, tmp):
    pf = os.path.join(tmp, 'pw1')
    with open(pf, 'w') as f:
        f.write('secret\n')
    os.chmod(pf, 0o600)
    r = h.run_postino(['copy', srv.url('alice'), srv.url('frank'),
                       '--state', os.path.join(tmp, 'pw.db'),
                       '--passfile1', pf, '--passcmd2', 'echo secret'],
                      passwords=None)
    h.expect_exit(r, 0, '--passfile1 and --passcmd2 (no env passwords)')
    h.check_same(h.snapshot(srv), h.snapshot(srv, 'frank'),
                 'copy with passfile/passcmd is exact')
    r = h.run_postino(['copy', srv.url('alice'), srv.url('frank'),
                       '--state', os.path.join(tmp, 'pw.db'),
                       '--passcmd1', 'echo wrong', '--passfile2', pf],
                      passwords=None)
    h.expect_exit(r, 5, '--passcmd1 giving a wrong password')


def run():
    tmp = h.make_tmpdir('cli')
    test_help_version()
    users = {u: 'secret' for u in ('alice', 'bob', 'carol', 'erin',
                                   'frank')}
    srv = h.Dovecot(users=users, name='srv')
    h.populate(srv, 'alice', h.corpus('small'))
    test_usage_errors(srv, tmp)
    test_auth_network(srv, tmp)
    test_state_errors(srv, tmp)
    test_password_sources(srv, tmp)
    big = h.Dovecot(name='big')
    h.populate(big, 'alice', h.corpus('many', per_folder=100))
    test_lock(big, srv, tmp)


if __name__ == '__main__':
    h.main(run)
