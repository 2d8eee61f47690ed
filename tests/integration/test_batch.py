#!/usr/bin/env python3
"""test_batch — `postino batch ACCOUNTS.csv`, against real private Dovecots.

Proves:
  - three account rows, one of them with a wrong source password: the two
    good accounts end with exact copies, the bad one fails with exit 5 and
    copies nothing; the batch exits 1; the summary table and the JSON
    summary (--json and --report) say which failed and why ("login
    refused"), with per-account counts, exit codes, state, report, log and
    output files (mode 0600) in --out;
  - passwords come only from the rows' password files and commands: the
    batch's own POSTINO_PASSWORD1/2 do not reach the children, which see
    POSTINO_BATCH_ID; no password appears in the batch's output or in any
    file in --out;
  - a rerun after fixing the bad row: exit 0, the good accounts copy 0
    (incremental, from their own states), the fixed one copies everything;
    a new message is copied by the next rerun, and only it;
  - --shard K/N: 2/3 over five rows runs exactly rows 2 and 5 (their
    destinations get the mail, the others stay empty); 1/3 and 3/3 then
    do the rest; a bad K/N is exit 2 with one line;
  - a CSV error (bad URL on a row, a duplicate id) is exit 2 with one line
    naming FILE:LINE and the column, and no account runs (--out is not
    even created);
  - a second batch on the same --out is refused (exit 4, one line) and
    the first goes on;
  - SIGTERM during a batch is forwarded to the running account, the batch
    exits 7 with the account "interrupted" in the summary and the other
    account "not run"; a rerun completes both exactly.
"""

import glob
import json
import os
import signal
import stat
import time

import harness as h
from harness import check

SRC_USERS = {'alice': 'src-alice-pw', 'bob': 'src-bob-pw',
             'mallory': 'src-mallory-pw'}
DST_USERS = {'alice': 'dst-alice-pw', 'bob': 'dst-bob-pw',
             'mallory': 'dst-mallory-pw'}
ENV_DECOY = 'env-decoy-pw-should-not-be-used'


def write(path, text, mode=0o600):
    with open(path, 'w') as f:
        f.write(text)
    os.chmod(path, mode)


def batch(args, **kw):
    return h.run_postino(['batch'] + args + ['--ca-file',
                                             h.default_ca().ca_file], **kw)


def summary_rows(stdout):
    """{id: line} of the summary table."""
    rows = {}
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith('ID '):
            for ln in lines[i + 1:]:
                if ln.startswith('batch:'):
                    break
                rows[ln.split()[0]] = ln
    return rows


def all_files_text(directory):
    out = b''
    for p in glob.glob(os.path.join(directory, '*')):
        with open(p, 'rb') as f:
            out += f.read()
    return out


def test_three_accounts(tmp):
    src = h.Dovecot(name='bsrc', users=SRC_USERS)
    dst = h.Dovecot(name='bdst', layout='maildir++', users=DST_USERS)
    for i, u in enumerate(SRC_USERS):
        h.populate(src, u, h.corpus('small', seed=10 + i))
    want = {u: h.snapshot(src, u) for u in SRC_USERS}
    pw = os.path.join(tmp, 'pw')
    os.makedirs(pw)
    for u in SRC_USERS:
        write(os.path.join(pw, 'src-' + u), SRC_USERS[u] + '\n')
        write(os.path.join(pw, 'dst-' + u), DST_USERS[u] + '\n')
    write(os.path.join(pw, 'src-mallory'), 'not-her-password\n')
    # bob's source password comes from a command that checks that the
    # batch's POSTINO_PASSWORD1 was not passed on and that it runs for bob
    bob_cmd = ('test -z "$POSTINO_PASSWORD1" && test -z "$POSTINO_PASSWORD2" '
               '&& test "$POSTINO_BATCH_ID" = bob && cat %s'
               % os.path.join(pw, 'src-bob'))
    csv = os.path.join(tmp, 'accounts.csv')
    write(csv,
          '# wave 1\n'
          'id,source,destination,passfile1,passcmd1,passfile2,description\n'
          'alice,%s,%s,pw/src-alice,,pw/dst-alice,"first, of course"\n'
          '\n'
          'bob,%s,%s,,"%s",pw/dst-bob,\n'
          'mallory,%s,%s,pw/src-mallory,,pw/dst-mallory,wrong password\n'
          % (src.url('alice'), dst.url('alice'), src.url('bob'),
             dst.url('bob'), bob_cmd.replace('"', '""'),
             src.url('mallory'), dst.url('mallory')), 0o644)
    out = os.path.join(tmp, 'out')
    report = os.path.join(tmp, 'summary.json')
    r = batch([csv, '--out', out, '--jobs', '2', '--report', report],
              passwords=(ENV_DECOY, ENV_DECOY))
    h.expect_exit(r, 1, 'batch with one failing account')
    for u in ('alice', 'bob'):
        h.check_same(want[u], h.snapshot(dst, u), '%s: exact copy' % u)
    check(h.total(h.snapshot(dst, 'mallory')) == 0,
          'mallory (wrong password): nothing copied')
    rows = summary_rows(r.stdout)
    check(set(rows) == {'alice', 'bob', 'mallory'},
          'the summary table has a line per account', r.stdout)
    check(' ok ' in rows['alice'] and ' ok ' in rows['bob'],
          'alice and bob: ok in the table', r.stdout)
    check(' failed ' in rows['mallory'] and 'login refused' in
          rows['mallory'] and rows['mallory'].split()[6] == '5',
          'mallory: failed, exit 5, reason "login refused"', r.stdout)
    check('1 not ok (mallory)' in r.stdout, 'the last line names mallory',
          r.stdout)
    with open(report) as f:
        doc = json.load(f)
    check(stat.S_IMODE(os.stat(report).st_mode) == 0o600,
          '--report file is 0600')
    acc = {a['id']: a for a in doc['accounts']}
    n_alice = h.total(want['alice'])
    check(doc['command'] == 'batch' and doc['exit_code'] == 1 and
          doc['totals']['ok'] == 2 and doc['totals']['failed'] == 1 and
          doc['totals']['copied'] == n_alice + h.total(want['bob']),
          'JSON totals: 2 ok, 1 failed, every message counted', doc['totals'])
    check(acc['alice']['result'] == 'ok' and acc['alice']['exit_code'] == 0
          and acc['alice']['copied'] == n_alice and
          acc['alice']['line'] == 3 and acc['bob']['line'] == 5,
          'JSON: alice ok, her count, the CSV lines', acc['alice'])
    check(acc['mallory']['result'] == 'failed' and
          acc['mallory']['exit_code'] == 5 and
          'login refused' in acc['mallory']['reason'] and
          acc['mallory']['copied'] is None,
          'JSON: mallory failed, exit 5, why', acc['mallory'])
    for u in SRC_USERS:
        for ext in ('db', 'log', 'out'):
            p = os.path.join(out, '%s.%s' % (u, ext))
            check(os.path.exists(p) and
                  stat.S_IMODE(os.stat(p).st_mode) == 0o600,
                  '%s exists, mode 0600' % os.path.basename(p))
    check(os.path.exists(os.path.join(out, 'alice.json')) and
          not os.path.exists(os.path.join(out, 'mallory.json')),
          'a per-account report for alice (none for the failed login)')
    with open(os.path.join(out, 'alice.json')) as f:
        check(json.load(f)['totals']['copied'] == n_alice,
              "alice's own report counts her messages")
    secrets = [p.encode() for p in
               list(SRC_USERS.values()) + list(DST_USERS.values()) +
               [ENV_DECOY]]
    blob = all_files_text(out) + (r.stdout + r.stderr).encode()
    check(not any(s in blob for s in secrets),
          'no password in the batch output or any file in --out')

    # rerun after fixing mallory's password: incremental
    write(os.path.join(pw, 'src-mallory'), SRC_USERS['mallory'] + '\n')
    r = batch([csv, '--out', out, '--json'], passwords=(ENV_DECOY, ENV_DECOY))
    h.expect_exit(r, 0, 'rerun after fixing the password')
    doc = json.loads(r.stdout)
    acc = {a['id']: a for a in doc['accounts']}
    check(acc['alice']['copied'] == 0 and acc['bob']['copied'] == 0 and
          acc['alice']['already_there'] == n_alice,
          'rerun: alice and bob copy 0 (their states know everything)', acc)
    check(acc['mallory']['result'] == 'ok' and
          acc['mallory']['copied'] == h.total(want['mallory']),
          'rerun: mallory copies all her mail', acc['mallory'])
    check('ID ' in r.stderr, 'with --json, the table goes to stderr')
    for u in SRC_USERS:
        h.check_same(want[u], h.snapshot(dst, u), '%s: exact after rerun' % u)

    new = h.Msg(b'From: x@example.org\r\nSubject: new\r\n'
                b'Message-ID: <batch-new@example.org>\r\n\r\nnew\r\n')
    h.populate(src, 'alice', {'INBOX': [new]})
    r = batch([csv, '--out', out, '--json', '-q'])
    h.expect_exit(r, 0, 'second rerun')
    acc = {a['id']: a for a in json.loads(r.stdout)['accounts']}
    check(acc['alice']['copied'] == 1 and acc['bob']['copied'] == 0 and
          acc['mallory']['copied'] == 0,
          'the new message is copied, and only it', acc)
    h.check_same(h.snapshot(src, 'alice'), h.snapshot(dst, 'alice'),
                 'alice exact with the new message')
    return src, dst


def test_shards(tmp, src):
    users = {'u%d' % i: 'pw%d' % i for i in range(1, 6)}
    dst = h.Dovecot(name='shards', users=users)
    pw = os.path.join(tmp, 'spw')
    os.makedirs(pw)
    write(os.path.join(pw, 'src'), SRC_USERS['bob'] + '\n')
    lines = ['id,source,destination,passfile1,passfile2']
    for i in range(1, 6):
        write(os.path.join(pw, 'u%d' % i), 'pw%d\n' % i)
        lines.append('row%d,%s,%s,spw/src,spw/u%d' % (
            i, src.url('bob'), dst.url('u%d' % i), i))
        if i == 3:
            lines.append('# a comment between rows does not count')
    csv = os.path.join(tmp, 'shards.csv')
    write(csv, '\n'.join(lines) + '\n')
    out = os.path.join(tmp, 'shard-out')
    want = h.snapshot(src, 'bob')
    r = batch([csv, '--out', out, '--shard', '2/3', '--json'])
    h.expect_exit(r, 0, '--shard 2/3')
    ids = [a['id'] for a in json.loads(r.stdout)['accounts']]
    check(ids == ['row2', 'row5'], '--shard 2/3 runs rows 2 and 5: %s' % ids)
    check(json.loads(r.stdout)['shard'] == {'k': 2, 'n': 3},
          'the JSON names the shard')
    for i in range(1, 6):
        got = h.total(h.snapshot(dst, 'u%d' % i))
        if i in (2, 5):
            h.check_same(want, h.snapshot(dst, 'u%d' % i),
                         'row%d copied by shard 2/3' % i)
        else:
            check(got == 0, 'row%d untouched by shard 2/3' % i)
    check(sorted(os.path.basename(p) for p in glob.glob(out + '/*.db')) ==
          ['row2.db', 'row5.db'], 'only rows 2 and 5 have a state')
    for k in (1, 3):
        r = batch([csv, '--out', out, '--shard', '%d/3' % k, '--json'])
        h.expect_exit(r, 0, '--shard %d/3' % k)
        ids = [a['id'] for a in json.loads(r.stdout)['accounts']]
        check(ids == {1: ['row1', 'row4'], 3: ['row3']}[k],
              '--shard %d/3 runs %s' % (k, ids))
    for i in range(1, 6):
        h.check_same(want, h.snapshot(dst, 'u%d' % i),
                     'row%d exact after the three shards' % i)
    for bad in ('0/3', '4/3', 'two/3', '1/0'):
        r = batch([csv, '--out', out, '--shard', bad])
        h.expect_exit(r, 2, '--shard %s' % bad)
        check(h.one_line_error(r) and '--shard' in r.stderr,
              '--shard %s: one line' % bad, h.show(r))


def test_csv_errors(tmp):
    out = os.path.join(tmp, 'never')
    csv = os.path.join(tmp, 'bad.csv')
    write(csv, 'id,source,destination,passcmd1,passcmd2\n'
               'a,imaps://a@127.0.0.1:1,imaps://a@127.0.0.1:2,echo x,echo y\n'
               'b,imaps://b@127.0.0.1:1,imaps//b@127.0.0.1:2,echo x,echo y\n')
    r = batch([csv, '--out', out])
    h.expect_exit(r, 2, 'a bad URL on line 3')
    check(h.one_line_error(r) and '%s:3: column \'destination\'' % csv in
          r.stderr, 'the error names FILE:3 and the column', h.show(r))
    check(not os.path.exists(out), 'nothing ran: --out not created')
    write(csv, 'id,source,destination,passcmd1,passcmd2\n'
               'a,imaps://a@127.0.0.1:1,imaps://a@127.0.0.1:2,echo x,echo y\n'
               'a,imaps://b@127.0.0.1:1,imaps://b@127.0.0.1:2,echo x,echo y\n')
    r = batch([csv, '--out', out])
    h.expect_exit(r, 2, 'a duplicate id')
    check(h.one_line_error(r) and "%s:3: column 'id': 'a' again (first on "
          "line 2)" % csv in r.stderr, 'duplicate id: FILE:LINE, column',
          h.show(r))
    write(csv, 'id,source,destination,passfile1,passcmd2\n'
               'a,imaps://a@127.0.0.1:1,imaps://a@127.0.0.1:2,nope,echo y\n')
    r = batch([csv, '--out', out])
    h.expect_exit(r, 2, 'a password file that does not exist')
    check(h.one_line_error(r) and "bad.csv:2: column 'passfile1'" in r.stderr,
          'missing password file: FILE:LINE, column', h.show(r))
    r = batch([csv, '--out', out, '--folder'])
    h.expect_exit(r, 2, 'an option without its value')
    r = batch([csv, '--out', out, '--batch', '0'])
    h.expect_exit(r, 2, 'a bad option for the accounts (--batch 0)')
    check(h.one_line_error(r) and '--batch' in r.stderr,
          'checked as copy would, before any account runs', h.show(r))
    check(not os.path.exists(out), 'still nothing ran')
    r = h.run_postino(['batch', '--help'])
    h.expect_exit(r, 0, 'batch --help')
    check('--shard K/N' in r.stdout and '--jobs N' in r.stdout,
          'batch --help lists its options', r.stdout)


def test_interrupt(tmp, src):
    big = h.Dovecot(name='big', users={'k1': 'pk1', 'k2': 'pk2'})
    h.populate(big, 'k1', h.corpus('many', per_folder=60, seed=3))
    h.populate(big, 'k2', h.corpus('many', per_folder=5, seed=4))
    dst = h.Dovecot(name='slowdst', users={'k1': 'pk1', 'k2': 'pk2'})
    size = sum(h.folder_sizes(big, 'k1').values())
    slow = h.FilterProxy(dst, strip_uidplus=False, rate=size / 6.0)
    pw = os.path.join(tmp, 'ipw')
    os.makedirs(pw)
    for u in ('k1', 'k2'):
        write(os.path.join(pw, u), 'p%s\n' % u)
    csv = os.path.join(tmp, 'slow.csv')
    write(csv, 'id,source,destination,passfile1,passfile2\n'
               'k1,%s,%s,ipw/k1,ipw/k1\nk2,%s,%s,ipw/k2,ipw/k2\n'
               % (big.url('k1'), slow.url('k1'), big.url('k2'),
                  slow.url('k2')))
    out = os.path.join(tmp, 'iout')
    proc = h.start_postino(['batch', csv, '--out', out, '--jobs', '1',
                            '--ca-file', h.default_ca().ca_file])
    state = os.path.join(out, 'k1.db')
    ok, _ = h.wait_until(lambda: os.path.exists(state) and
                         os.path.getsize(os.path.join(out, 'k1.log')) > 0, 20)
    time.sleep(1.5)
    check(ok and proc.poll() is None, 'the batch is copying k1',
          h.output_of(proc))
    r = batch([csv, '--out', out])
    h.expect_exit(r, 4, 'a second batch on the same --out')
    check(h.one_line_error(r) and 'in use by another postino batch' in
          r.stderr, 'a second batch on the same --out: one line', h.show(r))
    check(os.path.getsize(os.path.join(out, 'k1.log')) > 0 and
          proc.poll() is None, 'the first batch goes on undisturbed')
    os.kill(proc.pid, signal.SIGTERM)     # the batch only, not its group
    try:
        rc = proc.wait(timeout=60)
    except Exception:
        rc = None
    text = h.output_of(proc, tail=80)
    check(rc == 7, 'SIGTERM: the batch exits 7', 'exit %s\n%s' % (rc, text))
    rows = summary_rows(text)
    check('interrupted' in rows.get('k1', '') and
          'not run' in rows.get('k2', ''),
          'the summary: k1 interrupted, k2 not run', text)
    check('rerun' in text.splitlines()[-1], 'the last line says to rerun',
          text)
    with open(os.path.join(out, 'k1.out')) as f:
        k1 = f.read()
    check('interrupted' in k1, "k1's own output says it was interrupted "
          '(the signal reached it)', k1[-1500:])
    r = batch([csv, '--out', out])
    h.expect_exit(r, 0, 'rerun after SIGTERM')
    for u in ('k1', 'k2'):
        h.check_same(h.snapshot(big, u), h.snapshot(dst, u),
                     '%s exact after the rerun' % u)


def body():
    tmp = h.make_tmpdir('batch')
    test_csv_errors(tmp)
    src, dst = test_three_accounts(tmp)
    test_shards(tmp, src)
    test_interrupt(tmp, src)


if __name__ == '__main__':
    h.main(body)
