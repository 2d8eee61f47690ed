#!/usr/bin/env python3
"""test_auth — choosing the login mechanism: --auth1/--auth2/--auth, XOAUTH2.

Proves, against real private Dovecots:
  - --auth1 xoauth2 with the OAuth2 access token from --passcmd1 logs in
    (Dovecot's oauth2 passdb asks a local introspection endpoint, which
    knows one token) and copies the mail exactly; the server's log says
    method=XOAUTH2;
  - a wrong token is refused: exit 5, one line on stderr; the endpoint was
    asked about it;
  - the token appears nowhere: not in stdout/stderr of a --trace run, not
    in its --log file, not in the state DB, neither raw nor as the base64
    of the XOAUTH2 string;
  - --auth1 cram-md5 / --auth2 login, and --auth plain (both sides), log in
    with those mechanisms (the server's log says so) and copy exactly; a
    wrong password with CRAM-MD5 is exit 5;
  - the option overrides the URL's ?auth=, and `auth1 =` in a job file
    works the same;
  - refusals, exit 2 with one line: an unknown mechanism, xoauth2 for a
    POP3 source, xoauth2 at a server that does not offer it.
  - the mechanism and the TLS mode are not part of the account: a job
    copied with passwords and rerun with --auth xoauth2 (tokens from
    --passcmd), or moved from tls=none to STARTTLS on the same port, keeps
    its state, with --state and with the default state: the rerun copies
    nothing, no duplicates; a state of an older postino (display URLs
    recorded, the default file named after them) is taken over, its rows
    rewritten and the file moved; a state of other accounts is still
    refused (exit 4, one line).
  - scripts/oauth2-token.py (the token helper of docs/oauth2.md) against a
    fake token endpoint: refuses a config readable by others; exchanges
    the refresh token for an access token, caches it until shortly before
    expiry (no second request), refreshes after; keeps a rotated refresh
    token; a refused refresh is exit 1 with one line naming the endpoint's
    error; `authorize` runs the PKCE authorization-code flow with a loopback
    redirect and stores the refresh token; grant = client_credentials
    (Microsoft app-only) asks for the .default scope and caches too; and
    postino copies with the
    helper as --passcmd (its access token accepted by Dovecot).
"""

import base64
import glob
import hashlib
import http.server
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import harness as h
from harness import check

TOKEN = 'ya29.test-Access-Token-7f3c9e1d'
HELPER = os.path.join(h.SOURCE_ROOT, 'scripts', 'oauth2-token.py')


def xoauth2_b64(user, token):
    raw = 'user=%s\x01auth=Bearer %s\x01\x01' % (user, token)
    return base64.b64encode(raw.encode()).decode()


def no_secret_in(text, secret, what):
    check(secret not in text and xoauth2_b64('alice', secret) not in text,
          '%s: the token does not appear (raw or base64)' % what)


def test_xoauth2(tmp):
    with h.OAuth2Introspection({TOKEN: 'alice'}) as idp, \
            h.Dovecot(oauth2=idp.url) as src, h.Dovecot() as dst:
        corpus = h.corpus('small')
        h.populate(src, 'alice', corpus)
        want = h.snapshot(src)
        tokfile = os.path.join(tmp, 'token')
        with open(tokfile, 'w') as f:
            f.write(TOKEN + '\n')
        os.chmod(tokfile, 0o600)
        state = os.path.join(tmp, 'xo.db')
        logf = os.path.join(tmp, 'xo.log')
        r = h.run_postino(['copy', src.url(), dst.url(), '--auth1', 'xoauth2',
                           '--passcmd1', 'cat ' + tokfile, '--state', state,
                           '--trace', '--log', logf],
                          passwords=(None, 'secret'))
        h.expect_exit(r, 0, 'copy with --auth1 xoauth2, token from --passcmd1')
        h.check_same(want, h.snapshot(dst), 'xoauth2 copy is exact')
        check('method=XOAUTH2' in src.log_text(200),
              'the server logged in alice with XOAUTH2', src.log_text(20))
        check(TOKEN in idp.seen, 'the introspection endpoint was asked '
              'about the token')
        with open(logf, errors='replace') as f:
            logtext = f.read()
        check(re.search(r'auth=xoauth2 C: <redacted>', r.stderr) and
              re.search(r'auth=xoauth2 C: <redacted>', logtext) and
              ' LOGOUT' in logtext,
              '--trace shows the protocol, the login line redacted',
              r.stderr[:3000])
        no_secret_in(r.stdout + r.stderr, TOKEN, '--trace output')
        no_secret_in(logtext, TOKEN, '--log file')
        with open(state, 'rb') as f:
            db = f.read()
        check(TOKEN.encode() not in db and
              xoauth2_b64('alice', TOKEN).encode() not in db,
              'the state DB does not hold the token')

        # the URL's ?auth= gives the same account (same state, incremental)
        r = h.run_postino(['copy', src.url() + '?auth=xoauth2', dst.url(),
                           '--state', state], passwords=(TOKEN, 'secret'))
        h.expect_exit(r, 0, '?auth=xoauth2 in the URL, same state')
        s = h.summary(r)
        check(s and s['copied'] == 0, 'rerun through ?auth= copies 0',
              h.show(r))
        # --auth1 overrides the URL's ?auth=plain
        r = h.run_postino(['copy', src.url() + '?auth=plain', dst.url(),
                           '--auth1', 'xoauth2', '--state', state],
                          passwords=(TOKEN, 'secret'))
        h.expect_exit(r, 0, '--auth1 xoauth2 overrides ?auth=plain')

        # a wrong token
        before = idp.requests
        bad = 'ya29.wrong-token-000'
        r = h.run_postino(['copy', src.url(), dst.url(), '--auth1', 'xoauth2',
                           '--state', os.path.join(tmp, 'bad.db'), '--trace'],
                          passwords=(bad, 'secret'))
        h.expect_exit(r, 5, 'wrong token')
        errs = [ln for ln in r.stderr.splitlines() if 'error' in ln]
        check(len(errs) == 1 and 'login refused' in errs[0],
              'wrong token: one error line, "login refused": %s' % errs,
              h.show(r))
        no_secret_in(r.stdout + r.stderr, bad, 'wrong token --trace output')
        check(idp.requests > before, 'the endpoint refused the wrong token')
        r = h.run_postino(['copy', src.url(), dst.url(), '--auth1', 'xoauth2',
                           '--state', os.path.join(tmp, 'bad2.db')],
                          passwords=(bad, 'secret'))
        h.expect_exit(r, 5, 'wrong token without --trace')
        check(h.one_line_error(r), 'wrong token: exactly one line on stderr',
              h.show(r))

        # XOAUTH2 at a server that does not offer it
        r = h.run_postino(['copy', dst.url(), src.url(), '--auth1', 'xoauth2',
                           '--state', os.path.join(tmp, 'nox.db')],
                          passwords=(TOKEN, 'secret'))
        h.expect_exit(r, 2, 'xoauth2 at a server without AUTH=XOAUTH2')
        check(h.one_line_error(r) and 'XOAUTH2' in r.stderr,
              'the error says XOAUTH2 is not offered', h.show(r))

        test_helper_with_postino(tmp, idp, src, dst)


def accounts_of(path):
    db = sqlite3.connect(path)
    try:
        return [u for (u,) in db.execute('SELECT url FROM account ORDER BY side')]
    finally:
        db.close()


def default_state_name(a, b):
    """The file name postino gives the state of accounts A and B (its
    hash of the two strings, as in src/cli.c)."""
    return hashlib.sha256(('%s\n%s' % (a, b)).encode()).hexdigest()[:16] + '.db'


def test_switch_keeps_state(tmp):
    """Google retires app passwords: a job switched to XOAUTH2 (or from
    tls=none to STARTTLS) is the same job, with the same state."""
    tok = {'alice': TOKEN, 'bob': TOKEN + '-bob'}
    users = {'alice': 'secret', 'bob': 'secret'}
    with h.OAuth2Introspection({t: u for u, t in tok.items()}) as idp, \
            h.Dovecot(oauth2=idp.url, users=users, plaintext=True) as src, \
            h.Dovecot(oauth2=idp.url, users=users) as dst:
        xo = ['--auth', 'xoauth2']
        for u in tok:
            with open(os.path.join(tmp, 'tok-' + u), 'w') as f:
                f.write(tok[u] + '\n')
            os.chmod(os.path.join(tmp, 'tok-' + u), 0o600)
            h.populate(src, u, h.corpus('small'))

        def passcmds(u):
            tf = os.path.join(tmp, 'tok-' + u)
            return ['--passcmd1', 'cat ' + tf, '--passcmd2', 'cat ' + tf]

        def copied(r, n, what):
            h.expect_exit(r, 0, what)
            s = h.summary(r)
            check(s and s['copied'] == n, '%s: copies %d' % (what, n),
                  h.show(r))

        # --state: a password run, then XOAUTH2 on both sides
        want = h.snapshot(src, 'alice')
        n = sum(len(v) for v in want.values())
        state = os.path.join(tmp, 'switch.db')
        r = h.run_postino(['copy', src.url(), dst.url(), '--state', state])
        copied(r, n, 'copy with passwords')
        r = h.run_postino(['copy', src.url(), dst.url(), '--state', state] +
                          xo + passcmds('alice'), passwords=None)
        copied(r, 0, 'rerun with --auth xoauth2, same --state')
        check(src.log_text(300).count('method=XOAUTH2') >= 1 and
              dst.log_text(300).count('method=XOAUTH2') >= 1,
              'both sides logged in with XOAUTH2')
        h.check_same(want, h.snapshot(dst, 'alice'),
                     'no message twice at the destination')
        ids = ['imap:alice@localhost:%d' % src.imaps_port,
               'imap:alice@localhost:%d' % dst.imaps_port]
        check(accounts_of(state) == ids, 'the state records the accounts, '
              'without TLS mode or mechanism', accounts_of(state))

        # a state of an older postino: display URLs recorded
        db = sqlite3.connect(state)
        db.execute("UPDATE account SET url = ? WHERE side = 0",
                   (src.url() + '?auth=plain',))
        db.execute("UPDATE account SET url = ? WHERE side = 1",
                   ('imaps://alice@localhost:%d' % dst.imaps_port,))
        db.commit()
        db.close()
        r = h.run_postino(['copy', src.url(), dst.url(), '--state', state] +
                          xo + passcmds('alice'), passwords=None)
        copied(r, 0, 'a state with old display URLs')
        check(accounts_of(state) == ids, 'old display URLs rewritten',
              accounts_of(state))

        # still refused: other accounts
        r = h.run_postino(['copy', src.url('bob'), dst.url(), '--state',
                           state] + xo + passcmds('bob'), passwords=None)
        h.expect_exit(r, 4, 'a state of other accounts')
        check(h.one_line_error(r) and 'wrong state file?' in r.stderr,
              'other accounts: one line', h.show(r))

        # The default state, with its own XDG_STATE_HOME: bob from tls=none
        # with passwords, to STARTTLS on the same port and XOAUTH2.
        xdg = os.path.join(tmp, 'xdg')
        env = {'XDG_STATE_HOME': xdg}
        sdir = os.path.join(xdg, 'postino')
        plain = src.url('bob', scheme='imap', tls='none')
        want = h.snapshot(src, 'bob')
        r = h.run_postino(['copy', plain, dst.url('bob')], env_extra=env)
        copied(r, n, 'bob: copy with passwords, tls=none, default state')
        ids = ['imap:bob@localhost:%d' % src.imap_port,
               'imap:bob@localhost:%d' % dst.imaps_port]
        new = os.path.join(sdir, default_state_name(*ids))
        check(glob.glob(os.path.join(sdir, '*.db')) == [new],
              'one default state, named after the account identities',
              os.listdir(sdir))
        r = h.run_postino(['copy', src.url('bob', scheme='imap'),
                           dst.url('bob')] + xo + passcmds('bob'),
                          env_extra=env, passwords=None)
        copied(r, 0, 'bob: STARTTLS and --auth xoauth2, default state')
        h.check_same(want, h.snapshot(dst, 'bob'),
                     'bob: no message twice at the destination')
        check(glob.glob(os.path.join(sdir, '*.db')) == [new],
              'still the one default state', os.listdir(sdir))

        # An older postino's default state: named after the display URLs
        # of its runs (tls=none, no mechanism), display URLs recorded.
        old_urls = [plain, 'imaps://bob@localhost:%d' % dst.imaps_port]
        old = os.path.join(sdir, default_state_name(*old_urls))
        os.rename(new, old)
        db = sqlite3.connect(old)
        for side, u in enumerate(old_urls):
            db.execute("UPDATE account SET url = ? WHERE side = ?", (u, side))
        db.commit()
        db.close()
        h.populate(src, 'bob', {'INBOX': [h.Msg(
            b'From: b@example.org\r\nSubject: after the switch\r\n'
            b'Message-ID: <switch@example.org>\r\n\r\nhi\r\n')]})
        r = h.run_postino(['plan', src.url('bob', scheme='imap'),
                           dst.url('bob'), '-v'] + xo + passcmds('bob'),
                          env_extra=env, passwords=None)
        h.expect_exit(r, 0, 'plan with an old default state')
        check('reading state' in r.stderr and os.path.exists(old) and
              not os.path.exists(new), 'plan reads the old state where it '
              'is, moves nothing', h.show(r))
        r = h.run_postino(['copy', src.url('bob', scheme='imap'),
                           dst.url('bob'), '-v'] + xo + passcmds('bob'),
                          env_extra=env, passwords=None)
        copied(r, 1, 'an old default state: only the new message')
        check('moved to' in r.stderr and old in r.stderr,
              'an info line says the old state was moved', r.stderr[-3000:])
        check(glob.glob(os.path.join(sdir, '*.db')) == [new] and
              not os.path.exists(old + '-wal'),
              'the old state moved to the new name', os.listdir(sdir))
        check(accounts_of(new) == ids, 'its display URLs rewritten',
              accounts_of(new))
        h.check_same(h.snapshot(src, 'bob'), h.snapshot(dst, 'bob'),
                     'bob: exact, nothing twice')


def test_mechanisms(tmp):
    with h.Dovecot(mechanisms='plain login cram-md5') as src, \
            h.Dovecot(mechanisms='plain login cram-md5') as dst:
        h.populate(src, 'alice', h.corpus('small'))
        want = h.snapshot(src)
        state = os.path.join(tmp, 'mech.db')
        r = h.run_postino(['copy', src.url(), dst.url(), '--auth1', 'cram-md5',
                           '--auth2', 'LOGIN', '--state', state, '-vv'])
        h.expect_exit(r, 0, '--auth1 cram-md5 --auth2 LOGIN')
        h.check_same(want, h.snapshot(dst), 'cram-md5/login copy is exact')
        check('logged in with CRAM-MD5' in r.stderr and
              'logged in with LOGIN' in r.stderr,
              'postino logged in with CRAM-MD5 and SASL LOGIN', r.stderr[-3000:])
        check('method=CRAM-MD5' in src.log_text(300) and
              'method=LOGIN' in dst.log_text(300),
              'the servers logged CRAM-MD5 and LOGIN')
        r = h.run_postino(['copy', src.url(), dst.url(), '--auth', 'plain',
                           '--state', os.path.join(tmp, 'plain.db'), '-vv'])
        h.expect_exit(r, 0, '--auth plain (both sides)')
        check(r.stderr.count('logged in with PLAIN') >= 2,
              '--auth plain: both sides use SASL PLAIN', r.stderr[-3000:])
        r = h.run_postino(['copy', src.url(), dst.url(), '--auth1', 'cram-md5',
                           '--state', os.path.join(tmp, 'wrong.db')],
                          passwords=('wrong', 'secret'))
        h.expect_exit(r, 5, 'cram-md5 with a wrong password')
        check(h.one_line_error(r), 'cram-md5 refusal: one line', h.show(r))

        job = os.path.join(tmp, 'mech.ini')
        with open(job, 'w') as f:
            f.write('[source]\nurl = %s\n[destination]\nurl = %s\n'
                    '[options]\nauth1 = cram-md5\nauth2 = login\n'
                    'state = mech.db\n' % (src.url(), dst.url()))
        r = h.run_postino(['copy', '--job', job, '-vv'])
        h.expect_exit(r, 0, 'job file with auth1 = cram-md5, auth2 = login')
        check('logged in with CRAM-MD5' in r.stderr, 'the job file chose '
              'CRAM-MD5', r.stderr[-2000:])
        s = h.summary(r)
        check(s and s['copied'] == 0, 'the job is the same account pair as '
              '--auth1 cram-md5 --auth2 login: same state, nothing more to '
              'copy', h.show(r))


def test_refusals(tmp):
    r = h.run_postino(['copy', 'imaps://a@127.0.0.1:1', 'imaps://b@127.0.0.1:1',
                       '--auth1', 'gssapi'])
    h.expect_exit(r, 2, 'unknown mechanism')
    check(h.one_line_error(r) and 'gssapi' in r.stderr and
          'cram-md5' in r.stderr, 'unknown mechanism: one line naming it and '
          'the known ones', h.show(r))
    r = h.run_postino(['copy', 'pop3s://a@127.0.0.1:1', 'imaps://b@127.0.0.1:1',
                       '--auth1', 'xoauth2'])
    h.expect_exit(r, 2, 'xoauth2 for a POP3 source')
    check(h.one_line_error(r) and 'POP3' in r.stderr,
          'xoauth2 for POP3: one line', h.show(r))


# ----------------------------------------------------------------------
# scripts/oauth2-token.py against a fake token endpoint

class FakeTokenEndpoint:
    """An OAuth2 token endpoint: grant_type=refresh_token with the known
    refresh token gives a new access token (counting them); with rotate,
    also a new refresh token. grant_type=authorization_code checks the
    code and the PKCE verifier against the challenge it was given."""

    def __init__(self, client_id, client_secret, refresh, access_tokens,
                 expires_in=3600):
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh = refresh
        self.access_tokens = list(access_tokens)
        self.expires_in = expires_in
        self.rotate = False
        self.calls = []
        self.code = None
        self.challenge = None
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get('Content-Length') or 0)
                form = {k: v[0] for k, v in urllib.parse.parse_qs(
                    self.rfile.read(n).decode()).items()}
                outer.calls.append(form)
                status, doc = outer.answer(form)
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                     Handler)
        self.url = 'http://127.0.0.1:%d/token' % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        h.track(self)

    def answer(self, f):
        if (f.get('client_id') != self.client_id or
                f.get('client_secret') != self.client_secret):
            return 401, {'error': 'invalid_client'}
        if f.get('grant_type') == 'refresh_token':
            if f.get('refresh_token') != self.refresh:
                return 400, {'error': 'invalid_grant',
                             'error_description': 'Token has been expired '
                             'or revoked.'}
        elif f.get('grant_type') == 'client_credentials':
            pass
        elif f.get('grant_type') == 'authorization_code':
            verifier = f.get('code_verifier', '')
            ch = base64.urlsafe_b64encode(hashlib.sha256(
                verifier.encode()).digest()).decode().rstrip('=')
            if f.get('code') != self.code or ch != self.challenge:
                return 400, {'error': 'invalid_grant'}
        else:
            return 400, {'error': 'unsupported_grant_type'}
        doc = {'access_token': self.access_tokens.pop(0),
               'expires_in': self.expires_in, 'token_type': 'Bearer'}
        if self.rotate or f.get('grant_type') == 'authorization_code':
            self.refresh = 'rt-%d' % len(self.calls)
            doc['refresh_token'] = self.refresh
        return 200, doc

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


def run_helper(args, timeout=30, **kw):
    h.log('$ oauth2-token.py ' + ' '.join(args))
    return subprocess.run([sys.executable, HELPER] + args, text=True,
                          capture_output=True, timeout=timeout, **kw)


def write_conf(path, endpoint, refresh, extra=''):
    with open(path, 'w') as f:
        f.write('# test\nprovider = google\nclient_id = cid.apps.example\n'
                'client_secret = csecret\nrefresh_token = %s\n'
                'token_endpoint = %s\n%s' % (refresh, endpoint, extra))
    os.chmod(path, 0o600)


def test_helper(tmp):
    ep = FakeTokenEndpoint('cid.apps.example', 'csecret', 'rt-0',
                           ['at-%d' % i for i in range(1, 20)])
    conf = os.path.join(tmp, 'me.conf')
    write_conf(conf, ep.url, 'rt-0')
    os.chmod(conf, 0o644)
    r = run_helper(['--config', conf])
    check(r.returncode != 0 and 'chmod 600' in r.stderr and
          not ep.calls, 'a config readable by others is refused before any '
          'request', r.stderr)
    os.chmod(conf, 0o600)
    r = run_helper(['--config', conf])
    check(r.returncode == 0 and r.stdout == 'at-1\n',
          'refresh token exchanged: the access token, one line', r)
    check(ep.calls[-1].get('grant_type') == 'refresh_token' and
          ep.calls[-1].get('refresh_token') == 'rt-0',
          'the endpoint got grant_type=refresh_token')
    cache = conf + '.cache'
    check(os.path.exists(cache) and
          stat.S_IMODE(os.stat(cache).st_mode) == 0o600,
          'the access token is cached in a 0600 file')
    n = len(ep.calls)
    r = run_helper(['--config', conf])
    check(r.returncode == 0 and r.stdout == 'at-1\n' and len(ep.calls) == n,
          'second call: the cached token, no request', r)
    # expiry: a token with less than a minute left is not used
    ep.expires_in = 30
    os.unlink(cache)
    r = run_helper(['--config', conf])
    check(r.stdout == 'at-2\n', 'fresh token at-2 (30 s lifetime)', r)
    r = run_helper(['--config', conf])
    check(r.stdout == 'at-3\n', 'a token about to expire is refreshed', r)
    # rotation: a new refresh token is kept in the config file
    ep.expires_in = 3600
    ep.rotate = True
    os.unlink(cache)
    r = run_helper(['--config', conf])
    check(r.returncode == 0 and r.stdout == 'at-4\n', 'rotated refresh', r)
    with open(conf) as f:
        text = f.read()
    check('refresh_token = %s' % ep.refresh in text and '# test' in text and
          stat.S_IMODE(os.stat(conf).st_mode) == 0o600,
          'the rotated refresh token is saved (comments kept, still 0600)')
    ep.rotate = False
    os.unlink(cache)
    r = run_helper(['--config', conf])
    check(r.returncode == 0 and r.stdout == 'at-5\n' and
          ep.calls[-1]['refresh_token'] == ep.refresh,
          'the saved refresh token is the one used next', r)
    # a revoked refresh token
    bad = os.path.join(tmp, 'bad.conf')
    write_conf(bad, ep.url, 'rt-revoked')
    r = run_helper(['--config', bad])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    check(r.returncode == 1 and r.stdout == '' and len(lines) == 1 and
          'invalid_grant' in lines[0] and 'rt-revoked' not in r.stderr,
          'revoked refresh token: exit 1, one line naming invalid_grant, '
          'the token not echoed', r.stderr)
    # --endpoint overrides the file's
    other = os.path.join(tmp, 'other.conf')
    write_conf(other, 'http://127.0.0.1:1/nothing', ep.refresh)
    r = run_helper(['--config', other, '--endpoint', ep.url])
    check(r.returncode == 0 and r.stdout.startswith('at-'),
          '--endpoint overrides token_endpoint', r)

    # app-only (client credentials): no refresh token, the .default scope
    app = os.path.join(tmp, 'app.conf')
    with open(app, 'w') as f:
        f.write('provider = microsoft\ntenant = contoso.example\n'
                'grant = client_credentials\nclient_id = cid.apps.example\n'
                'client_secret = csecret\ntoken_endpoint = %s\n' % ep.url)
    os.chmod(app, 0o600)
    r = run_helper(['--config', app])
    check(r.returncode == 0 and r.stdout.startswith('at-') and
          ep.calls[-1].get('grant_type') == 'client_credentials' and
          ep.calls[-1].get('scope') ==
          'https://outlook.office365.com/.default',
          'client_credentials: an app token for the .default scope', r)
    n = len(ep.calls)
    r2 = run_helper(['--config', app])
    check(r2.stdout == r.stdout and len(ep.calls) == n,
          'client_credentials: cached too')

    # the one-time authorization: PKCE code flow, loopback redirect
    fresh = os.path.join(tmp, 'fresh.conf')
    with open(fresh, 'w') as f:
        f.write('provider = google\nclient_id = cid.apps.example\n'
                'client_secret = csecret\ntoken_endpoint = %s\n'
                'auth_endpoint = https://accounts.example/auth\n' % ep.url)
    os.chmod(fresh, 0o600)
    p = subprocess.Popen([sys.executable, HELPER, 'authorize', '--config',
                          fresh, '--no-browser'], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    h.track(h._ProcHolder(p))
    url = None
    deadline = time.time() + 20
    while time.time() < deadline and not url:
        line = p.stderr.readline()
        m = re.search(r'(https://accounts\.example/auth\?\S+)', line)
        if m:
            url = m.group(1)
    check(url is not None, 'authorize prints the URL to open')
    q = {k: v[0] for k, v in urllib.parse.parse_qs(
        urllib.parse.urlsplit(url).query).items()}
    check(q.get('client_id') == 'cid.apps.example' and
          q.get('code_challenge_method') == 'S256' and
          q.get('scope') == 'https://mail.google.com/' and
          q.get('access_type') == 'offline' and
          q.get('redirect_uri', '').startswith('http://127.0.0.1:'),
          'the URL asks for mail.google.com offline access with PKCE and a '
          'loopback redirect', url)
    ep.code = 'code-xyz'
    ep.challenge = q['code_challenge']
    # the browser, after consent, is sent back to the redirect URI
    back = '%s?%s' % (q['redirect_uri'], urllib.parse.urlencode(
        {'code': 'code-xyz', 'state': q['state']}))
    with urllib.request.urlopen(back, timeout=10) as resp:
        page = resp.read().decode()
    check('postino' in page, 'the redirect page answers the browser')
    out, err = p.communicate(timeout=20)
    check(p.returncode == 0, 'authorize exits 0', err)
    with open(fresh) as f:
        text = f.read()
    check('refresh_token = %s' % ep.refresh in text and
          stat.S_IMODE(os.stat(fresh).st_mode) == 0o600,
          'authorize stored the refresh token (0600)', text)
    check(ep.refresh not in out + err, 'authorize does not print the '
          'refresh token')


def test_helper_with_postino(tmp, idp, src, dst):
    """The helper as --passcmd: its access token is what Dovecot accepts."""
    ep = FakeTokenEndpoint('cid.apps.example', 'csecret', 'rt-p',
                           [TOKEN, TOKEN])
    conf = os.path.join(tmp, 'alice.conf')
    write_conf(conf, ep.url, 'rt-p')
    h.populate(src, 'alice', {'INBOX': [h.Msg(
        b'From: a@example.org\r\nSubject: via helper\r\n'
        b'Message-ID: <helper@example.org>\r\n\r\nhi\r\n')]})
    r = h.run_postino(['copy', src.url(), dst.url(), '--auth1', 'xoauth2',
                       '--passcmd1', '%s %s --config %s' % (
                           sys.executable, HELPER, conf),
                       '--state', os.path.join(tmp, 'xo.db')],
                      passwords=(None, 'secret'))
    h.expect_exit(r, 0, 'copy with --passcmd1 scripts/oauth2-token.py')
    s = h.summary(r)
    check(s and s['copied'] == 1, 'the new message copied', h.show(r))
    check(len(ep.calls) == 1, 'one token request for the whole run')
    h.check_same(h.snapshot(src), h.snapshot(dst), 'still exact')


def body():
    tmp = h.make_tmpdir('auth')
    test_refusals(tmp)
    test_helper(tmp)
    test_mechanisms(tmp)
    test_xoauth2(tmp)
    test_switch_keeps_state(tmp)


if __name__ == '__main__':
    h.main(body)
