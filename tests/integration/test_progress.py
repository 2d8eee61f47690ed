#!/usr/bin/env python3
"""test_progress — what `postino copy` shows while it works.

  - --progress plain: periodic lines on stderr ("postino: total: ...");
  - --progress tty, in a real pseudo-terminal: the display is redrawn in
    place (cursor-up and erase sequences), shows per-folder lines and a
    total line, is erased at the end, and the report follows;
  - -q: no progress at all.
(POSTINO_TEST_PROGRESS_MS makes the plain interval short enough to test.)
"""

import os
import pty
import re
import select
import subprocess
import time

import harness as h
from harness import check


def run_in_pty(argv, env, timeout=120):
    """Run argv with stdout and stderr on a pseudo-terminal; return bytes."""
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave,
                         stderr=slave, env=env, close_fds=True)
    os.close(slave)
    out = b''
    deadline = time.time() + timeout
    while time.time() < deadline:
        r, _, _ = select.select([master], [], [], 0.5)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif p.poll() is not None:
            break
    p.wait(timeout=10)
    os.close(master)
    return p.returncode, out


def main():
    tmp = h.make_tmpdir('progress')
    src = h.Dovecot(layout='fs', name='pg-src')
    h.populate(src, 'alice', h.corpus('small'))
    n = h.total(h.snapshot(src))

    # plain: periodic lines on stderr
    dst = h.Dovecot(layout='maildir++', name='pg-plain')
    r = h.run_postino(['copy', src.url(), dst.url(), '--state',
                       os.path.join(tmp, 'plain.db'), '--progress', 'plain',
                       '--max-messages-per-second', '20'],
                      env_extra={'POSTINO_TEST_PROGRESS_MS': '300'})
    h.expect_exit(r, 0, 'copy with --progress plain')
    lines = [l for l in r.stderr.splitlines() if l.startswith('postino: total: ')]
    check(len(lines) >= 2, 'plain: periodic total lines on stderr (%d)' %
          len(lines), r.stderr)
    pat = re.compile(r'^postino: total: (\d+)/(\d+) messages, .+/s, ETA .+, '
                     r'folders (\d+)/(\d+) done$')
    check(all(pat.match(l) for l in lines), 'plain: every line has the form '
          '"total: D/T messages, bytes, rate, ETA, folders"', '\n'.join(lines))
    done = [int(pat.match(l).group(1)) for l in lines]
    check(done == sorted(done), 'plain: the count only grows %s' % done)
    check('\x1b[' not in r.stderr, 'plain: no terminal escape sequences')

    # tty: redrawn in place, erased at the end, then the report
    dst2 = h.Dovecot(layout='maildir++', name='pg-tty')
    env = h.postino_env()
    argv = h.postino_argv(['copy', src.url(), dst2.url(), '--state',
                           os.path.join(tmp, 'tty.db'),
                           '--max-messages-per-second', '20'])
    rc, out = run_in_pty(argv, env)
    text = out.decode('utf-8', 'replace')
    check(rc == 0, 'tty: copy exit 0', text[-2000:])
    redraws = len(re.findall(r'\r\x1b\[\d+A', text))
    check(redraws >= 2, 'tty: the display is redrawn in place (%d times)' %
          redraws)
    check(re.search(r'  \S.*: \d+/\d+ messages, ', text) is not None,
          'tty: a line per folder being copied')
    check('total: ' in text, 'tty: a total line')
    last_total = text.rfind('total: ')
    report = text.rfind('copied %d messages' % n)
    check(report > last_total, 'tty: the report comes after the display')
    check('\x1b[J' in text[last_total:report], 'tty: the display is erased '
          'before the report')

    # -q: nothing
    dst3 = h.Dovecot(layout='maildir++', name='pg-quiet')
    rc, out = run_in_pty(h.postino_argv(['copy', src.url(), dst3.url(),
                                         '--state', os.path.join(tmp, 'q.db'),
                                         '-q']), env)
    check(rc == 0 and b'total: ' not in out and b'\x1b[' not in out,
          '-q: no progress display', out[-500:])


if __name__ == '__main__':
    h.main(main)
