#!/usr/bin/env python3
"""demo.py — postino copying a real mailbox between two real servers.

Starts two throw-away Dovecot instances on free 127.0.0.1 ports (source:
maildir with '/' as separator; destination: maildir++ with '.'), fills the
source with a sample mailbox, runs `postino copy`, shows the destination,
checks it equals the source, shows that a rerun copies nothing, and stops
the servers.  Run through scripts/demo.sh (which builds postino first).

  --full        use the full test corpus (with a 20 MB message)
  --keep        leave the servers running until Enter is pressed
"""

import os
import subprocess
import sys
import time
import unicodedata

import harness as h


def cols(s):
    """Display width of S in a terminal (CJK characters take two)."""
    return sum(2 if unicodedata.east_asian_width(c) in 'WF' else 1
               for c in s)


def pad(s, width):
    return s + ' ' * max(0, width - cols(s))


def table(title, counts_src, counts_dst=None):
    print()
    print(title)
    names = sorted(set(counts_src) | set(counts_dst or {}))
    width = max(cols(n) for n in names) + 2
    if counts_dst is None:
        for n in names:
            print('  %s %5d' % (pad(n, width), counts_src[n]))
    else:
        print('  %s %6s %6s' % (pad('folder', width), 'source', 'dest'))
        for n in names:
            print('  %s %6s %6s' % (pad(n, width), counts_src.get(n, '-'),
                                    counts_dst.get(n, '-')))
    sys.stdout.flush()


def postino(args):
    argv = h.postino_argv(args)
    shown = ['postino'] + [a if not a.startswith('/') else
                           os.path.basename(a) for a in args] + [
        '--ca-file', 'test-ca.crt']
    print('\n$ POSTINO_PASSWORD1=... POSTINO_PASSWORD2=... ' +
          ' '.join(shown), flush=True)
    t = time.time()
    r = subprocess.run(argv, env=h.postino_env(), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = r.stdout.decode('utf-8', 'replace')
    sys.stdout.write(out)
    print('[exit %d, %.1fs]' % (r.returncode, time.time() - t), flush=True)
    return r.returncode, out


def run():
    full = '--full' in sys.argv
    if not os.access(h.POSTINO, os.X_OK):
        print('postino binary not found at %s: build it first '
              '(ninja -C build)' % h.POSTINO)
        return 2
    tmp = h.make_tmpdir('demo')
    state = os.path.join(tmp, 'demo-state.db')
    print('Starting two private Dovecot servers on 127.0.0.1 ...')
    src = h.Dovecot(layout='fs', name='demo-src')
    dst = h.Dovecot(layout='maildir++', name='demo-dst')
    print('  source:      %s  (maildir, separator "/")' % src.url())
    print('  destination: %s  (maildir++, separator ".")' % dst.url())
    sample = h.corpus('full' if full else 'small')
    h.populate(src, 'alice', sample)
    src_counts = h.count_messages(src)
    table('Source mailbox (%d messages):' % h.total(src_counts), src_counts)

    rc, out = postino(['copy', src.url(), dst.url(), '--state', state])
    if rc != 0:
        print('\npostino copy failed (exit %d).' % rc)
        return 1
    dst_counts = h.count_messages(dst)
    table('Folders and message counts after the copy:', src_counts,
          dst_counts)
    diffs = h.diff_snapshots(h.snapshot(src), h.snapshot(dst))
    if diffs:
        print('\nThe destination differs from the source:')
        for d in diffs:
            print('  ' + d)
        return 1
    print('\nDestination equals source: same bytes (SHA-256), flags and '
          'INTERNALDATE for every message.')

    rc, out = postino(['copy', src.url(), dst.url(), '--state', state])
    if rc != 0:
        print('\nrerun failed (exit %d).' % rc)
        return 1
    print('\nThe rerun had nothing to copy.' if 'copied 0' in out else
          '\nUnexpected: the rerun copied something.')
    if '--keep' in sys.argv:
        print('\nServers still running (user alice, password secret). '
              'Press Enter to stop them.')
        try:
            input()
        except EOFError:
            pass
    print('\nStopping the servers.')
    return 0 if 'copied 0' in out else 1


if __name__ == '__main__':
    h.install_signal_handlers()
    try:
        code = run()
    finally:
        h.cleanup_all()
    sys.exit(code)
