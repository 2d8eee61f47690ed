#!/usr/bin/env python3
"""oauth2-token.py — an OAuth2 access token for postino's --passcmd.

postino logs in to Gmail and Office 365 with XOAUTH2 (--auth1/--auth2
xoauth2), and the "password" is then a short-lived access token. This
helper turns a long-lived refresh token into one, and is what --passcmd
runs:

    postino copy imaps://me%40example.com@outlook.office365.com \\
        imaps://me@new.example --auth1 xoauth2 \\
        --passcmd1 'scripts/oauth2-token.py --config ~/.config/postino/me.conf'

Once, to get the refresh token (a browser opens; sign in and consent):

    scripts/oauth2-token.py authorize --config ~/.config/postino/me.conf

The config file (mode 0600: it holds the client secret and the refresh
token; anything else is refused) has one `key = value` a line, `#`
comments:

    provider = google          # or microsoft
    tenant = common            # microsoft: your tenant ID or domain
    client_id = 1234-abc.apps.googleusercontent.com
    client_secret = ...        # Google desktop clients have one; public
                               # Microsoft clients have none
    refresh_token = ...        # written by `authorize`
    # optional: token_endpoint, auth_endpoint, scope, redirect_host
    # grant = client_credentials (Microsoft, app-only: no refresh token,
    # no authorize; the app must be allowed the mailboxes in Exchange)

The access token is cached in FILE.cache (0600) until a minute before it
expires (FILE.lock serialises concurrent calls), so that a run of postino (or many) costs one request an hour. A
refresh token the provider rotates (Microsoft does) is written back to the
config file. The access token goes to stdout, one line; nothing secret is
ever written to stderr. Exit 0, or 1 with one line on stderr.

docs/oauth2.md says how to register the application with Google and
Microsoft. Python 3 standard library only.
"""

import argparse
import base64
import fcntl
import hashlib
import http.server
import json
import os
import secrets
import socket
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

PROVIDERS = {
    'google': {
        'token': 'https://oauth2.googleapis.com/token',
        'auth': 'https://accounts.google.com/o/oauth2/v2/auth',
        'scope': 'https://mail.google.com/',
        'auth_params': {'access_type': 'offline', 'prompt': 'consent'},
        'redirect_host': '127.0.0.1',
        'refresh_scope': False,
    },
    'microsoft': {
        'token': 'https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token',
        'auth': 'https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize',
        'scope': 'https://outlook.office.com/IMAP.AccessAsUser.All '
                 'offline_access',
        'auth_params': {'prompt': 'select_account'},
        'redirect_host': 'localhost',
        'refresh_scope': True,
    },
}

KEYS = ('provider', 'tenant', 'client_id', 'client_secret', 'refresh_token',
        'token_endpoint', 'auth_endpoint', 'scope', 'redirect_host', 'user',
        'grant')

# grant = client_credentials (Microsoft only): an application's own token
# for every mailbox it was given access to in Exchange Online; no user
# signs in and there is no refresh token. This is the scope it asks for.
APP_SCOPE = 'https://outlook.office365.com/.default'

EARLY = 60          # seconds: a cached token this close to expiry is renewed
TIMEOUT = 30        # seconds for an HTTP request


class Failure(Exception):
    """One line for stderr, then exit 1."""


def private(path, what):
    """Refuse a file that others may read or write."""
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise Failure('%s %s is accessible to others (mode %o): chmod 600 %s'
                      % (what, path, stat.S_IMODE(st.st_mode), path))


def read_config(path):
    try:
        private(path, 'config file')
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise Failure('config file %s does not exist' % path)
    except OSError as e:
        raise Failure('cannot read %s: %s' % (path, e.strerror))
    conf = {}
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith('#'):
            continue
        key, eq, value = s.partition('=')
        key = key.strip().lower()
        if not eq or key not in KEYS:
            raise Failure('%s:%d: expected one of %s = value'
                          % (path, n, ', '.join(KEYS)))
        value = value.strip()
        if key in conf:
            raise Failure('%s:%d: %s is set twice' % (path, n, key))
        conf[key] = value
    provider = conf.get('provider', 'google').lower()
    if provider not in PROVIDERS:
        raise Failure('%s: provider = %s: use google or microsoft'
                      % (path, provider))
    conf['provider'] = provider
    grant = conf.get('grant', 'refresh_token')
    if grant not in ('refresh_token', 'client_credentials'):
        raise Failure('%s: grant = %s: use refresh_token or client_credentials'
                      % (path, grant))
    if grant == 'client_credentials' and not conf.get('client_secret'):
        raise Failure('%s: grant = client_credentials needs client_secret'
                      % path)
    conf['grant'] = grant
    if not conf.get('client_id'):
        raise Failure('%s: client_id is missing' % path)
    return conf


def write_private(path, text):
    """Write TEXT to PATH atomically, mode 0600 from the start."""
    tmp = '%s.tmp.%d' % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_refresh_token(path, token):
    """Put refresh_token = TOKEN in the config, keeping everything else."""
    with open(path, encoding='utf-8') as f:
        lines = f.read().splitlines()
    out, done = [], False
    for line in lines:
        if line.strip().split('=', 1)[0].strip().lower() == 'refresh_token':
            if not done:
                out.append('refresh_token = %s' % token)
                done = True
            continue
        out.append(line)
    if not done:
        out.append('refresh_token = %s' % token)
    write_private(path, '\n'.join(out) + '\n')


def endpoint(conf, which, override=None):
    if override:
        return override
    if conf.get(which + '_endpoint'):
        return conf[which + '_endpoint']
    url = PROVIDERS[conf['provider']][which]
    return url.replace('{tenant}', conf.get('tenant') or 'common')


def scope_of(conf):
    return conf.get('scope') or PROVIDERS[conf['provider']]['scope']


def post_form(url, form):
    """POST FORM to the token endpoint; the JSON answer, or Failure."""
    data = urllib.parse.urlencode(form).encode()
    req = urllib.request.Request(url, data=data, headers={
        'Content-Type': 'application/x-www-form-urlencoded',
        'Accept': 'application/json'})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:
        try:
            doc = json.loads(e.read().decode('utf-8', 'replace'))
        except ValueError:
            doc = {}
        err = doc.get('error') or 'HTTP %d' % e.code
        desc = doc.get('error_description')
        hint = ''
        if err == 'invalid_grant':
            hint = '; run oauth2-token.py authorize again'
        raise Failure('token endpoint %s refused: %s%s%s' % (
            url, err, ' (%s)' % desc.splitlines()[0][:200] if desc else '',
            hint))
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, 'reason', e)
        raise Failure('cannot reach token endpoint %s: %s' % (url, reason))
    try:
        doc = json.loads(body.decode('utf-8'))
    except ValueError:
        raise Failure('token endpoint %s: the answer is not JSON' % url)
    if not isinstance(doc, dict) or not doc.get('access_token'):
        raise Failure('token endpoint %s: no access_token in the answer' % url)
    return doc


def client_form(conf):
    form = {'client_id': conf['client_id']}
    if conf.get('client_secret'):
        form['client_secret'] = conf['client_secret']
    return form


def fingerprint(token):
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def read_cache(path, refresh_token):
    try:
        private(path, 'cache file')
        with open(path, encoding='utf-8') as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if (not isinstance(doc, dict) or
            doc.get('refresh') != fingerprint(refresh_token) or
            not isinstance(doc.get('expires_at'), (int, float)) or
            doc['expires_at'] - EARLY <= time.time()):
        return None
    return doc.get('access_token') or None


def write_cache(path, access_token, expires_in, refresh_token):
    try:
        life = float(expires_in)
    except (TypeError, ValueError):
        life = 3600.0
    write_private(path, json.dumps({
        'access_token': access_token, 'expires_at': time.time() + life,
        'refresh': fingerprint(refresh_token)}) + '\n')


def store_answer(args, conf, doc):
    """Keep a rotated refresh token, cache the access token."""
    refresh = conf.get('refresh_token') or ''
    new = doc.get('refresh_token')
    if new and new != refresh:
        save_refresh_token(args.config, new)
        refresh = new
    if not args.no_cache:
        write_cache(args.cache, doc['access_token'], doc.get('expires_in'),
                    refresh)


def cmd_token(args):
    conf = read_config(args.config)
    if conf['grant'] == 'client_credentials':
        if not args.no_cache:
            token = read_cache(args.cache, '')
            if token:
                return token
        form = client_form(conf)
        form.update(grant_type='client_credentials',
                    scope=conf.get('scope') or APP_SCOPE)
        doc = post_form(endpoint(conf, 'token', args.endpoint), form)
        store_answer(args, conf, doc)
        return doc['access_token']
    if not conf.get('refresh_token'):
        raise Failure('%s has no refresh_token: run oauth2-token.py '
                      'authorize --config %s first' % (args.config,
                                                       args.config))
    if not args.no_cache:
        token = read_cache(args.cache, conf['refresh_token'])
        if token:
            return token
    form = client_form(conf)
    form.update(grant_type='refresh_token',
                refresh_token=conf['refresh_token'])
    if PROVIDERS[conf['provider']]['refresh_scope'] or conf.get('scope'):
        form['scope'] = scope_of(conf)
    doc = post_form(endpoint(conf, 'token', args.endpoint), form)
    store_answer(args, conf, doc)
    return doc['access_token']


def cmd_authorize(args):
    conf = read_config(args.config)
    prov = PROVIDERS[conf['provider']]
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(
        verifier.encode()).digest()).decode().rstrip('=')
    state = secrets.token_urlsafe(16)
    got = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            q = {k: v[0] for k, v in q.items()}
            if q.get('state') == state and ('code' in q or 'error' in q):
                got.update(q)
                text = ('postino: authorization %s; you can close this '
                        'window.' % ('received' if 'code' in q else
                                     'refused: ' + q['error']))
                code = 200
            else:
                text, code = 'postino: not the expected answer', 400
            body = ('<!doctype html><title>postino</title><p>%s</p>'
                    % text).encode()
            self.send_response(code)
            self.send_header('Content-Type', 'text/html; charset=utf-8')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    host = conf.get('redirect_host') or prov['redirect_host']
    httpd = http.server.HTTPServer(('127.0.0.1', args.port), Handler)
    try:
        redirect = 'http://%s:%d/' % (host, httpd.server_address[1])
        params = {'client_id': conf['client_id'], 'response_type': 'code',
                  'redirect_uri': redirect, 'scope': scope_of(conf),
                  'state': state, 'code_challenge': challenge,
                  'code_challenge_method': 'S256'}
        params.update(prov['auth_params'])
        if conf.get('user'):
            params['login_hint'] = conf['user']
        url = '%s?%s' % (endpoint(conf, 'auth', args.auth_endpoint),
                         urllib.parse.urlencode(params,
                                                quote_via=urllib.parse.quote))
        print('oauth2-token: open this address in a browser, sign in as the '
              'mailbox owner and allow access:\n%s' % url, file=sys.stderr,
              flush=True)
        if not args.no_browser:
            import webbrowser
            webbrowser.open(url)
        deadline = time.time() + args.wait
        while not got and time.time() < deadline:
            httpd.timeout = max(0.1, deadline - time.time())
            httpd.handle_request()
    finally:
        httpd.server_close()
    if not got:
        raise Failure('no answer from the browser within %d s' % args.wait)
    if 'error' in got:
        raise Failure('authorization refused: %s' % got['error'])
    form = client_form(conf)
    form.update(grant_type='authorization_code', code=got['code'],
                redirect_uri=redirect, code_verifier=verifier)
    if prov['refresh_scope']:
        form['scope'] = scope_of(conf)
    doc = post_form(endpoint(conf, 'token', args.endpoint), form)
    if not doc.get('refresh_token'):
        raise Failure('the token endpoint gave no refresh token (Google: '
                      'access_type=offline needs prompt=consent; Microsoft: '
                      'the offline_access scope)')
    save_refresh_token(args.config, doc['refresh_token'])
    conf['refresh_token'] = doc['refresh_token']
    if not args.no_cache:
        write_cache(args.cache, doc['access_token'], doc.get('expires_in'),
                    doc['refresh_token'])
    print('oauth2-token: refresh token saved in %s' % args.config,
          file=sys.stderr)


def main(argv):
    p = argparse.ArgumentParser(
        prog='oauth2-token.py',
        description='Print an OAuth2 access token for postino --passcmd, '
                    'or (authorize) obtain the refresh token once.')
    p.add_argument('command', nargs='?', default='token',
                   choices=('token', 'authorize'))
    p.add_argument('--config', required=True, help='the config file (0600)')
    p.add_argument('--endpoint', help='token endpoint (overrides the '
                   "provider's and token_endpoint)")
    p.add_argument('--auth-endpoint', help='authorization endpoint '
                   '(authorize)')
    p.add_argument('--cache', help='cache file (default: CONFIG.cache)')
    p.add_argument('--no-cache', action='store_true',
                   help='always ask the token endpoint')
    p.add_argument('--no-browser', action='store_true',
                   help='authorize: only print the address')
    p.add_argument('--port', type=int, default=0,
                   help='authorize: loopback port for the redirect '
                   '(default: any free one)')
    p.add_argument('--wait', type=int, default=300,
                   help='authorize: seconds to wait for the browser')
    args = p.parse_args(argv)
    args.config = os.path.expanduser(args.config)
    if not args.cache:
        args.cache = args.config + '.cache'
    if not os.path.exists(args.config):
        print('oauth2-token: config file %s does not exist' % args.config,
              file=sys.stderr)
        return 1
    try:
        # CONFIG.lock, not the config itself: that is replaced by a rename
        lock = os.fdopen(os.open(args.config + '.lock',
                                 os.O_RDWR | os.O_CREAT, 0o600), 'rb')
    except OSError as e:
        print('oauth2-token: cannot open %s.lock: %s' % (args.config,
                                                         e.strerror),
              file=sys.stderr)
        return 1
    try:
        # one refresh at a time per account: a rotated refresh token
        # must not be used by a second refresh racing the first
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if args.command == 'authorize':
            cmd_authorize(args)
        else:
            sys.stdout.write(cmd_token(args) + '\n')
    except Failure as e:
        print('oauth2-token: %s' % e, file=sys.stderr)
        return 1
    except (OSError, socket.error) as e:
        print('oauth2-token: %s' % e, file=sys.stderr)
        return 1
    finally:
        lock.close()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
