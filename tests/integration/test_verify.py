#!/usr/bin/env python3
"""test_verify — `postino verify SRC DST` proves a copy, and finds damage.

Source: Dovecot LAYOUT=fs ('/'), destination: maildir++ ('.'), the small
corpus (nested and non-ASCII folders, a double delivery, two messages
sharing a Message-ID, one without any, keywords, old dates).  Proves:
  - after a copy, verify exits 0 with a line per folder and the verdict
    "ALL THERE"; --deep (SHA-256 of every message) too; --json prints one
    JSON document that says the same with the right counts;
  - verify writes nothing: both accounts unchanged (no \\Seen), no state
    file made, with or without --state;
  - a damaged copy: a message removed, a flag added, one byte of a body
    changed (same size, same Message-ID), an INTERNALDATE moved: verify
    exits 1 and names the missing message, the flag and the date; the
    changed byte is invisible to the fast check (same Message-ID and size)
    and found by --deep; each is listed in --json with its Message-ID;
  - one copy of a double delivery removed: 1 missing;
  - a message only at the destination is reported as extra, exit 0;
  - a destination folder that does not exist: its messages are missing;
  - the folder plan is copy's: after `copy --map`, verify with the same
    --map, or with the copy's --state (its folder pairs), exits 0; without
    either, the renamed folder is missing;
  - a server that rewrites bare LF to CRLF (here: a source that serves bare
    LF, copied into Dovecot, which serves CRLF) is reported by --deep as
    "rewritten by the server: line endings", not as missing: exit 0;
  - exit codes: 5 wrong password, 3 closed port, 6 unknown CA, 2 usage.
"""

import json
import os
import re
import sys

import harness as h
from harness import check

sys.path.insert(0, os.path.join(h.SOURCE_ROOT, 'tests', 'tools'))
import fakeserver  # noqa: E402


def ca():
    return ['--ca-file', h.default_ca().ca_file]


def verify(src_url, dst_url, extra=(), expect=0, what='verify', **kw):
    r = h.run_postino(['verify', src_url, dst_url] + ca() + list(extra), **kw)
    h.expect_exit(r, expect, what)
    return r


def verify_json(src_url, dst_url, extra=(), expect=0, what='verify --json'):
    r = verify(src_url, dst_url, ['--json'] + list(extra), expect, what)
    try:
        doc = json.loads(r.stdout)
    except ValueError as e:
        raise h.TestFailure('%s: stdout is not one JSON document: %s\n%s' % (
            what, e, h.show(r)))
    return r, doc


def norm_mid(m):
    return m.strip().strip('<>').replace(' ', '') if m else m


def message_id_of(data):
    m = re.search(rb'^Message-ID:\s*(<[^>]*>)', data, re.I | re.M)
    return norm_mid(m.group(1).decode()) if m else None


def diffs(doc, kind=None):
    out = []
    for f in doc['folders']:
        for d in f.get('differences', []):
            if kind is None or d['kind'] == kind:
                out.append(dict(d, folder=f['source']))
    return out


def files_under(d):
    out = []
    for root, dirs, files in os.walk(d):
        out += [os.path.join(root, f) for f in files]
    return sorted(out)


def replace_message(client, path, uid, data, flags, date):
    """Put DATA in PATH with FLAGS and DATE (epoch, tz) instead of UID."""
    client.append(path, data, [f for f in flags if f.lower() != '\\recent'],
                  date)
    h.expunge_uids(client, path, [uid])


def clean_copy(src, dst, tmp):
    """Copy, then verify: fast, deep, JSON; nothing written by verify."""
    state = os.path.join(tmp, 'copy.db')
    r = h.run_postino(['copy', src.url(), dst.url(), '--state', state])
    h.expect_exit(r, 0, 'copy')
    src_snap, dst_snap = h.snapshot(src), h.snapshot(dst)
    check(not h.diff_snapshots(src_snap, dst_snap), 'the copy is exact',
          h.diff_snapshots(src_snap, dst_snap))
    home = h.postino_home()
    home_before = files_under(home)
    n = h.total(src_snap)

    r = verify(src.url(), dst.url(), what='verify after a clean copy')
    lines = r.stdout.splitlines()
    check(any(ln.startswith('verdict: ALL THERE: %d messages in %d folders'
                            % (n, len(src_snap))) for ln in lines),
          'verify: verdict "ALL THERE: %d messages in %d folders"' % (
              n, len(src_snap)), h.show(r))
    for f, msgs in src_snap.items():
        check(any(ln.strip().startswith('%s -> ' % f) and
                  ('%d message' % len(msgs)) in ln and 'all there' in ln
                  for ln in lines),
              'verify: a line for %s, %d messages, all there' % (f, len(msgs)),
              h.show(r))
    check(files_under(home) == home_before,
          'verify without --state wrote no file under HOME', files_under(home))

    r = verify(src.url(), dst.url(), ['--deep'], what='verify --deep')
    check('ALL THERE' in r.stdout and 'SHA-256' in r.stdout,
          'verify --deep: ALL THERE, by SHA-256', h.show(r))

    report = os.path.join(tmp, 'verify-report.json')
    r, doc = verify_json(src.url(), dst.url(), ['--state', state, '--report',
                                                report])
    with open(report) as f:
        check(json.load(f) == doc and doc['command'] == 'verify' and
              doc['postino'], 'verify --report FILE: the same document in '
              'FILE (command "verify")')
    t = doc['totals']
    check(doc['verdict'] == 'all there' and doc['exit_code'] == 0 and
          t['source_messages'] == n and t['destination_messages'] == n and
          t['missing'] == 0 and t['flags'] == 0 and t['folders'] ==
          len(src_snap), 'verify --json: all there, %d messages both sides, '
          'nothing missing' % n, r.stdout)
    check(all(f['status'] == 'ok' for f in doc['folders']
              if f['source'] in src_snap) and
          all(f['status'] == 'skipped' for f in doc['folders']
              if f['source'] not in src_snap),
          'verify --json: every folder "ok", the \\Noselect ones "skipped"',
          r.stdout)
    check(h.snapshot(src) == src_snap and h.snapshot(dst) == dst_snap,
          'verify changed neither account (no \\Seen either)')
    return state


def damage(src, dst):
    """Remove, reflag, change a byte, move a date at the destination; remove
    one copy of the double delivery."""
    done = {}
    with dst.connect() as c:
        msgs = c.messages('Café')
        uid, body, fl, d = msgs[0]
        h.expunge_uids(c, 'Café', [uid])
        done['missing'] = message_id_of(body)

        msgs = c.messages('Sent')
        uid, body, fl, d = next(m for m in msgs if 'verifytest' not in m[2])
        c.uid_store('Sent', uid, '+FLAGS', ['verifytest'])
        done['flags'] = message_id_of(body)

        msgs = c.messages('Archive/2023')
        uid, body, fl, d = msgs[0]
        # one byte of the Subject, same size, same Message-ID
        pos = body.index(b'Subject: ') + len(b'Subject: ')
        ch = body[pos:pos + 1]
        new = body[:pos] + (b'X' if ch != b'X' else b'Y') + body[pos + 1:]
        check(len(new) == len(body) and new != body,
              'damage: one byte changed, same size')
        replace_message(c, 'Archive/2023', uid, new, fl, (d, 0))
        done['content'] = message_id_of(body)

        msgs = c.messages('Drafts')
        uid, body, fl, d = msgs[0]
        replace_message(c, 'Drafts', uid, body, fl, (d + 86400, 0))
        done['date'] = message_id_of(body)

        # one copy of the double delivery in INBOX
        inbox = c.messages('INBOX')
        by_body = {}
        for m in inbox:
            by_body.setdefault(m[1], []).append(m)
        twins = next(v for v in by_body.values() if len(v) == 2)
        h.expunge_uids(c, 'INBOX', [twins[1][0]])
        done['duplicate'] = message_id_of(twins[0][1])
    return done


def damaged_copy(src, dst, state):
    done = damage(src, dst)
    h.log('damage: %s' % done)
    r = verify(src.url(), dst.url(), expect=1, what='verify of a damaged copy')
    out = r.stdout
    check(re.search(r'^verdict: DIFFERENT: 2 missing, 1 with other flags, 1 '
                    r'with another date, 0 with other content', out, re.M),
          'verify: verdict DIFFERENT: 2 missing, 1 flag, 1 date, 0 content '
          '(the changed byte is not visible by Message-ID and size)', out)
    check(re.search(r'^  Café -> Café: .*DIFFERENT: 1 missing', out, re.M) and
          re.search(r'^    missing: UID \d+ .*%s' % re.escape(done['missing']),
                    out, re.M),
          'verify: Café line says 1 missing and names its Message-ID', out)
    check(re.search(r'^    flags: UID \d+ -> UID \d+: "[^"]*" in the source, '
                    r'"[^"]*verifytest[^"]*" at the destination', out, re.M),
          'verify: the flag difference is shown with both flag sets', out)
    check(re.search(r'^    date: UID \d+ -> UID \d+: ', out, re.M),
          'verify: the date difference is shown', out)

    r, doc = verify_json(src.url(), dst.url(), expect=1,
                         what='verify --json of a damaged copy')
    check(doc['verdict'] == 'different' and doc['exit_code'] == 1,
          'verify --json: verdict "different", exit 1', r.stdout)
    missing = {norm_mid(d['message_id']) for d in diffs(doc, 'missing')}
    check(missing == {done['missing'], done['duplicate']},
          'verify --json: the two missing messages by Message-ID', missing)
    fl = diffs(doc, 'flags')
    check(len(fl) == 1 and norm_mid(fl[0]['message_id']) == done['flags'] and
          'verifytest' in fl[0]['destination_flags'] and
          'verifytest' not in fl[0]['source_flags'],
          'verify --json: the flag difference, source and destination flags',
          fl)
    dt = diffs(doc, 'date')
    check(len(dt) == 1 and norm_mid(dt[0]['message_id']) == done['date'],
          'verify --json: the date difference', dt)

    r, doc = verify_json(src.url(), dst.url(), ['--deep'], expect=1,
                         what='verify --deep --json of a damaged copy')
    ct = diffs(doc, 'content')
    check(len(ct) == 1 and norm_mid(ct[0]['message_id']) == done['content'] and
          ct[0]['folder'] == 'Archive/2023',
          'verify --deep: the changed byte is found (content, Archive/2023, '
          'its Message-ID)', r.stdout)
    check(doc['totals']['missing'] == 2 and doc['totals']['flags'] == 1 and
          doc['totals']['dates'] == 1 and not diffs(doc, 'rewritten'),
          'verify --deep: the same 2 missing, 1 flag, 1 date', doc['totals'])
    r = verify(src.url(), dst.url(), ['--deep'], expect=1,
               what='verify --deep (text) of a damaged copy')
    check(re.search(r'^    content: UID \d+ -> UID \d+ .*other bytes', r.stdout,
                    re.M) and '1 with other content' in r.stdout,
          'verify --deep (text): the content difference is listed', r.stdout)

    return done


def extra_and_missing_folder(src, dst, tmp):
    users = {'alice': 'secret', 'extra': 'secret', 'nofolder': 'secret'}
    d2 = h.Dovecot(layout='maildir++', name='dst2', users=users)
    small = {'INBOX': h.corpus('small')['INBOX'][:3],
             'Projects/Alpha': h.corpus('small')['Café'][:2]}
    s2 = h.Dovecot(layout='fs', name='src2')
    h.populate(s2, 'alice', small)
    r = h.run_postino(['copy', s2.url(), d2.url('extra'), '--state',
                       os.path.join(tmp, 'extra.db')])
    h.expect_exit(r, 0, 'copy for the extra test')
    with d2.connect('extra') as c:
        c.append('INBOX', b'From: x@example.org\r\nSubject: only here\r\n'
                 b'Message-ID: <only-here@test.postino>\r\n\r\nhi\r\n',
                 [], (1_600_000_000, 0))
    r, doc = verify_json(s2.url(), d2.url('extra'),
                         what='verify with an extra message at the destination')
    ex = diffs(doc, 'extra')
    check(doc['exit_code'] == 0 and len(ex) == 1 and
          norm_mid(ex[0]['message_id']) == 'only-here@test.postino',
          'verify: a message only at the destination is extra, exit 0', ex)
    r = verify(s2.url(), d2.url('extra'), what='verify (text), extra')
    check('1 extra at the destination' in r.stdout,
          'verify (text): "1 extra at the destination"', r.stdout)

    # nothing copied to 'nofolder': INBOX is there (empty), Projects/Alpha not
    r, doc = verify_json(s2.url(), d2.url('nofolder'), expect=1,
                         what='verify against an empty account')
    f = next(x for x in doc['folders'] if x['source'] == 'Projects/Alpha')
    check(f['destination_exists'] is False and f['missing'] == 2 and
          doc['totals']['missing'] == 5,
          'verify: a missing destination folder: its 2 messages missing, 5 in '
          'all', r.stdout)
    r = verify(s2.url(), d2.url('nofolder'), expect=1, what='verify (text), '
               'empty account')
    check(re.search(r'Projects/Alpha -> Projects/Alpha: 2 in the source; the '
                    r'destination folder does not exist', r.stdout),
          'verify (text): the missing folder is named', r.stdout)
    s2.stop()
    d2.stop()


def same_plan_as_copy(src, tmp):
    d3 = h.Dovecot(layout='maildir++', name='dst3')
    state = os.path.join(tmp, 'map.db')
    r = h.run_postino(['copy', src.url(), d3.url(), '--state', state,
                       '--map', 'Café=Kaffee/Bohnen'])
    h.expect_exit(r, 0, 'copy --map Café=Kaffee/Bohnen')
    n = len(h.snapshot(src)['Café'])
    r = verify(src.url(), d3.url(), ['--map', 'Café=Kaffee/Bohnen'],
               what='verify --map as the copy')
    check('Café -> Kaffee/Bohnen: %d message' % n in r.stdout and
          'ALL THERE' in r.stdout, 'verify --map: Café -> Kaffee/Bohnen, all '
          'there', r.stdout)
    r = verify(src.url(), d3.url(), ['--state', state],
               what='verify --state of the copy (its folder pairs)')
    check('Café -> Kaffee/Bohnen' in r.stdout and 'ALL THERE' in r.stdout,
          'verify --state: the copy\'s folder pairs, all there', r.stdout)
    r = verify(src.url(), d3.url(), expect=1,
               what='verify without the map or the state')
    check(re.search(r'Café -> Café: %d in the source; the destination folder '
                    r'does not exist' % n, r.stdout),
          'verify without the rule: Café is missing at the destination',
          r.stdout)
    d3.stop()


def rewriting_server(tmp):
    """Bare LF served by the source, CRLF by the destination."""
    bare = (b'From: lf@example.org\nTo: alice@example.org\n'
            b'Subject: bare line feeds\nMessage-ID: <bare-lf@test.postino>\n'
            b'\nline one\nline two\n')
    crlf = (b'From: crlf@example.org\r\nSubject: fine\r\n'
            b'Message-ID: <crlf@test.postino>\r\n\r\nbody\r\n')
    fake = h.track(fakeserver.FakeIMAP({'folders': {'INBOX': [
        dict(data=bare, flags=['\\Seen'], date=(1_500_000_000, 0)),
        dict(data=crlf, flags=[], date=(1_500_000_100, 0))]}}).start())
    src_url = 'imap://alice@127.0.0.1:%d/?tls=none' % fake.port
    dst = h.Dovecot(layout='maildir++', name='dst-rewrite')
    r = h.run_postino(['copy', src_url, dst.url(), '--state',
                       os.path.join(tmp, 'rw.db')])
    h.expect_exit(r, 0, 'copy from a source serving bare LF')
    served = [m[1] for m in dst.connect().messages('INBOX')]
    check(h.served_form(bare) in served and bare not in served,
          'the destination serves the bare-LF message with CRLF')
    r, doc = verify_json(src_url, dst.url(), ['--deep'],
                         what='verify --deep, rewritten by the server')
    rw = diffs(doc, 'rewritten')
    check(len(rw) == 1 and rw[0]['cause'] == 'line endings' and
          norm_mid(rw[0]['message_id']) == 'bare-lf@test.postino' and
          doc['totals']['missing'] == 0 and doc['totals']['content'] == 0,
          'verify --deep: the rewritten message is "rewritten" (line '
          'endings), not missing', r.stdout)
    r = verify(src_url, dst.url(), ['--deep'], what='verify --deep (text), '
               'rewritten')
    check(re.search(r'^    rewritten by the server: line endings: UID \d+ -> '
                    r'UID \d+ \(<bare-lf@test\.postino>', r.stdout, re.M) and
          'ALL THERE' in r.stdout,
          'verify --deep (text): "rewritten by the server: line endings", '
          'ALL THERE', r.stdout)
    r = verify(src_url, dst.url(), what='verify (fast), rewritten')
    check('rewritten by the server: line endings' in r.stdout and
          'missing' not in r.stdout.split('verdict')[0],
          'verify (fast): the size differs, and the bodies say why', r.stdout)
    dst.stop()
    fake.stop()


def exit_codes(src, dst):
    r = verify(src.url(), dst.url(), expect=5, what='verify, wrong password',
               passwords=('secret', 'wrong'))
    check(h.one_line_error(r), 'wrong password: one line on stderr', r.stderr)
    port = h.free_ports(1)[0]
    r = verify(src.url(), 'imaps://alice@localhost:%d' % port, expect=3,
               what='verify, closed port')
    r = h.run_postino(['verify', src.url(), dst.url()], ca_file=None)
    h.expect_exit(r, 6, 'verify without the test CA (unknown CA)')
    r = h.run_postino(['verify', src.url()] + ca())
    h.expect_exit(r, 2, 'verify with one URL')
    r = h.run_postino(['verify', '--help'])
    h.expect_exit(r, 0, 'verify --help')
    check('--deep' in r.stdout and '--json' in r.stdout,
          'verify --help names --deep and --json', r.stdout)


def run():
    tmp = h.make_tmpdir('verify')
    src = h.Dovecot(layout='fs', name='src')
    dst = h.Dovecot(layout='maildir++', name='dst')
    h.populate(src, 'alice', h.corpus('small'))
    state = clean_copy(src, dst, tmp)
    exit_codes(src, dst)
    damaged_copy(src, dst, state)
    extra_and_missing_folder(src, dst, tmp)
    same_plan_as_copy(src, tmp)
    rewriting_server(tmp)


if __name__ == '__main__':
    h.main(run)
