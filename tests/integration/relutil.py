"""relutil.py — helpers shared by the reliability tests (test_rel_*.py,
issue #6; docs/reliability.md).

  run_measured()  runs postino like harness.run_postino, and also returns
                  its own resource use (os.wait4): CPU seconds (user+sys),
                  wall seconds and peak RSS, so that a test can tell a
                  clean failure from a hang, a CPU spin or a memory blow-up.
  fake_imap()     a plain-text fake IMAP server (tests/tools/fakeserver.py)
                  with a folder of synthetic messages, and its URL.
  figure()        prints one figure line ("figure: NAME = VALUE"), which
                  docs/reliability.md collects.
"""

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time

import harness as h

sys.path.insert(0, os.path.join(h.SOURCE_ROOT, 'tests', 'tools'))
import fakeserver  # noqa: E402
import faultproxy  # noqa: E402

LONG = os.environ.get('POSTINO_TEST_LONG') == '1'
# Sanitizer builds are slower and use more memory (shadow memory): bounds
# that are about postino's behaviour (not its speed) are scaled by these.
SANITIZED = bool(os.environ.get('ASAN_OPTIONS'))


def known_bug(cond, what):
    """A check of a postino bug that is known, reported and not yet fixed
    (listed in docs/reliability.md): prints 'ok: WHAT' once it holds, else
    'KNOWN BUG: WHAT' without failing the test.  Returns COND."""
    if cond:
        h.check(True, what)
    else:
        h.log('KNOWN BUG: ' + what)
        figure('known bug', what)
    return bool(cond)


def figure(name, value):
    h.log('figure: %s = %s' % (name, value))


class Measured:
    """What run_measured returns: returncode, stdout, stderr, wall, cpu
    (user+sys seconds), maxrss_kb, timed_out."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def show(self):
        return ('exit %s (wall %.1fs, cpu %.2fs, peak RSS %d kB%s)\n--- '
                'stdout:\n%s--- stderr:\n%s' % (
                    self.returncode, self.wall, self.cpu, self.maxrss_kb,
                    ', TIMED OUT' if self.timed_out else '', self.stdout,
                    self.stderr))


def run_measured(args, env_extra=None, timeout=120, passwords=('secret',
                 'secret'), ca_file=h.DEFAULT, echo=True):
    """Run postino ARGS to its end (or kill it after TIMEOUT seconds) and
    return a Measured.  returncode is negative for a signal."""
    argv = h.postino_argv(args, ca_file)
    if echo:
        h.log('$ ' + ' '.join(h._shell_quote(a) for a in argv[1:]) +
              ('  [%s]' % ' '.join('%s=%s' % kv for kv in env_extra.items())
               if env_extra else ''))
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=err, env=h.postino_env(env_extra,
                                                          passwords),
                            start_new_session=True)
    timed_out = False
    status = ru = None
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - t0 > timeout:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            pid, status, ru = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    # the process group may have children left (a --passcmd): kill them
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    out.seek(0)
    err.seek(0)
    m = Measured(returncode=proc.returncode, wall=wall,
                 cpu=ru.ru_utime + ru.ru_stime, maxrss_kb=ru.ru_maxrss,
                 stdout=h._dec(out.read()), stderr=h._dec(err.read()),
                 timed_out=timed_out)
    out.close()
    err.close()
    if echo:
        h.log('  -> exit %s in %.1fs (cpu %.2fs, peak RSS %d MB)' % (
            m.returncode, m.wall, m.cpu, m.maxrss_kb // 1024))
    return m


def synth(n, size=600, tag='rel'):
    """N distinct small messages (bytes), CRLF, each with a Message-ID."""
    out = []
    for i in range(1, n + 1):
        body = ('line %d of message %d\r\n' % (0, i)) * max(1, size // 24)
        out.append(('From: sender%d@example.org\r\nTo: alice@example.org\r\n'
                    'Subject: %s message %d\r\nMessage-ID: <%s-%d@test.postino>'
                    '\r\nDate: Mon, 1 Jan 2024 10:%02d:00 +0000\r\n\r\n%s' % (
                        i, tag, i, tag, i, i % 60, body)).encode())
    return out


def fake_imap(messages=(), folder='INBOX', rules=(), **script):
    """A started plain-text FakeIMAP holding MESSAGES in FOLDER; stopped at
    exit.  Returns the server; url_of(srv) gives its URL."""
    folders = {'INBOX': []}
    folders[folder] = [dict(data=m, flags=['\\Seen'] if i % 3 == 0 else [],
                            date=(1704103200 + i * 60, 60))
                       for i, m in enumerate(messages)]
    sc = dict(folders=folders, rules=list(rules))
    sc.update(script)
    srv = fakeserver.FakeIMAP(sc)
    srv.start()
    return h.track(srv)


def url_of(srv, user='alice', scheme='imap', tls='none', port=None):
    u = '%s://%s@127.0.0.1:%d' % (scheme, user, port or srv.port)
    return u + ('/?tls=none' if tls == 'none' else '')


def digests(msgs):
    """Sorted SHA-256 of the bytes of fake-server messages (a multiset)."""
    return sorted(hashlib.sha256(m.data).hexdigest() for m in msgs)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def no_crash(m):
    """True when postino ended by itself with one of its own exit codes
    (not a signal, not a sanitizer report, not an internal error)."""
    return (not m.timed_out and m.returncode in (0, 1, 2, 3, 4, 5, 6, 7)
            and 'AddressSanitizer' not in m.stderr
            and 'runtime error' not in m.stderr)
