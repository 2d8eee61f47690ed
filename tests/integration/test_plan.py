#!/usr/bin/env python3
"""test_plan — `postino plan` and `postino copy --dry-run` write nothing.

Proves:
  - plan exits 0 and prints every source folder (UTF-8, '/' separated)
    with its destination name and its message count, --map renames show;
  - plan changes neither the destination nor the source (no \\Seen), and
    creates no state file: neither the --state path nor anything under
    HOME/XDG dirs when --state is not given;
  - on an existing state (after a copy, with a new source message) plan
    leaves the state file byte-identical;
  - copy --dry-run likewise writes nothing, and names the folders.
"""

import hashlib
import os
import re

import harness as h
from harness import check


def files_under(d):
    out = []
    for root, dirs, files in os.walk(d):
        out += [os.path.join(root, f) for f in files]
    return sorted(out)


def state_files(path):
    return [p for p in (path, path + '-wal', path + '-shm', path + '-journal')
            if os.path.exists(p)]


def count_re(n):
    return re.compile(r'(?<![\d.,])%d(?![\d.,])' % n)


def check_lists_folders(r, src_snap, what, renames=None):
    """Each source folder on a line with its count (and its new name)."""
    lines = r.stdout.splitlines()
    renames = renames or {}
    for f, msgs in sorted(src_snap.items()):
        target = renames.get(f, f)
        rx = count_re(len(msgs))
        # With a rename, the old name must show besides the new one.
        ok = any(target in ln and f in (ln.replace(target, '', 1)
                                        if f != target else ln) and
                 rx.search(ln) for ln in lines)
        check(ok, '%s: %s -> %s with %d messages' % (what, f, target,
                                                     len(msgs)), h.show(r))


def nothing_written(src, dst, src_before, dst_before, what, user='alice'):
    h.check_same(dst_before, h.snapshot(dst, user),
                 what + ': destination unchanged', ('before', 'after'))
    h.check_same(src_before, h.snapshot(src), what + ': source unchanged',
                 ('before', 'after'))


def run():
    tmp = h.make_tmpdir('plan')
    src = h.Dovecot(layout='fs', name='src')
    dst = h.Dovecot(layout='maildir++', name='dst',
                    users={'alice': 'secret', 'carol': 'secret'})
    h.populate(src, 'alice', h.corpus('small'))
    src_snap = h.snapshot(src)
    dst_snap = h.snapshot(dst)
    home = h.postino_home()
    home_before = files_under(home)

    # plan with an explicit --state that does not exist
    state = os.path.join(tmp, 'plan.db')
    r = h.run_postino(['plan', src.url(), dst.url(), '--state', state])
    h.expect_exit(r, 0, 'plan')
    check_lists_folders(r, src_snap, 'plan lists')
    nothing_written(src, dst, src_snap, dst_snap, 'plan')
    check(not state_files(state), 'plan created no state file',
          state_files(state))

    # plan without --state: nothing appears under HOME or XDG dirs
    r = h.run_postino(['plan', src.url(), dst.url()])
    h.expect_exit(r, 0, 'plan without --state')
    check(files_under(home) == home_before,
          'plan without --state wrote no file under HOME',
          files_under(home))
    nothing_written(src, dst, src_snap, dst_snap, 'plan without --state')

    # --map shows in the plan
    r = h.run_postino(['plan', src.url(), dst.url(), '--state', state,
                       '--map', 'Café=Kaffee/Bohnen'])
    h.expect_exit(r, 0, 'plan --map')
    check_lists_folders(r, {'Café': src_snap['Café']}, 'plan --map',
                        {'Café': 'Kaffee/Bohnen'})
    nothing_written(src, dst, src_snap, dst_snap, 'plan --map')
    check(not state_files(state), 'plan --map created no state file')

    # copy --dry-run
    dry = os.path.join(tmp, 'dry.db')
    r = h.run_postino(['copy', src.url(), dst.url(), '--state', dry,
                       '--dry-run'])
    h.expect_exit(r, 0, 'copy --dry-run')
    check(all(f in r.stdout for f in src_snap),
          'copy --dry-run names every source folder', h.show(r))
    nothing_written(src, dst, src_snap, dst_snap, 'copy --dry-run')
    check(not state_files(dry), 'copy --dry-run created no state file',
          state_files(dry))
    check(files_under(home) == home_before,
          'copy --dry-run wrote no file under HOME', files_under(home))

    # plan on an existing state: the state file stays byte-identical
    real = os.path.join(tmp, 'real.db')
    r = h.run_postino(['copy', src.url(), dst.url('carol'), '--state', real])
    h.expect_exit(r, 0, 'a real copy to carol')
    with src.connect() as c:
        c.append('Sent', b'Subject: new\r\nMessage-ID: <new@test>\r\n\r\n'
                 b'new message\r\n', ['\\Seen'], (1_650_000_000, 60))
    src_snap2 = h.snapshot(src)
    carol = h.snapshot(dst, 'carol')
    digests = {p: hashlib.sha256(open(p, 'rb').read()).hexdigest()
               for p in state_files(real)}
    r = h.run_postino(['plan', src.url(), dst.url('carol'), '--state', real])
    h.expect_exit(r, 0, 'plan after a copy')
    check('Sent' in r.stdout, 'plan after a copy names Sent (new message)',
          h.show(r))
    after = {p: hashlib.sha256(open(p, 'rb').read()).hexdigest()
             for p in state_files(real)}
    check(after.get(real) == digests.get(real) and
          digests.get(real + '-wal') in (None, after.get(real + '-wal')),
          'plan left the state database unchanged',
          '%s\n%s' % (digests, after))
    wal = real + '-wal'
    check(not os.path.exists(wal) or os.path.getsize(wal) ==
          (os.path.getsize(wal) if wal in digests else 0),
          'plan wrote nothing to the write-ahead log')
    nothing_written(src, dst, src_snap2, carol, 'plan after a copy',
                    'carol')
    r = h.run_postino(['copy', src.url(), dst.url('carol'), '--state', real,
                       '--dry-run'])
    h.expect_exit(r, 0, 'copy --dry-run after a copy')
    nothing_written(src, dst, src_snap2, carol, 'dry-run after a copy',
                    'carol')


if __name__ == '__main__':
    h.main(run)
