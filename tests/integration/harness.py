"""harness.py — integration-test harness for postino.

Everything a test needs to exercise the real `postino` binary against real
servers, using only the Python standard library:

  TestCA        a throw-away certificate authority (certtool) with one good
                server certificate and the bad ones a TLS test needs.
  Dovecot       a private Dovecot 2.3 instance: own config, data and logs in
                a temporary directory, listening on free 127.0.0.1 ports,
                running in its own process group, always stopped at exit.
  populate()    fills an account through imaplib (the oracle: nothing here
  snapshot()    uses postino) and reads it back as a comparable value.
  run_postino() runs the binary with passwords in the environment.
  corpus()      the standard test corpus (full or small).

A snapshot is {folder: sorted list of (sha256, frozenset(flags), epoch)}
where folder is the UTF-8 path below the personal namespace prefix with '/'
between hierarchy levels, whatever the server's separator and prefix are.
Two accounts hold the same mail exactly when their snapshots are equal;
the sorted lists make the comparison a multiset one, so duplicates count.
"""

import atexit
import base64
import calendar
import hashlib
import imaplib
import os
import random
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

# --------------------------------------------------------------------------
# Paths and small utilities

SOURCE_ROOT = os.environ.get('POSTINO_SOURCE_ROOT') or os.path.abspath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
POSTINO = os.environ.get('POSTINO') or os.path.join(SOURCE_ROOT, 'build',
                                                    'postino')
REALWORLD_DIR = os.path.join(SOURCE_ROOT, 'tests', 'data', 'realworld')

KEEP_TMP = bool(os.environ.get('POSTINO_TEST_KEEP'))


class TestFailure(AssertionError):
    """Raised by check() and the helpers when an expectation fails."""


def log(msg):
    """Print a progress line at once (meson captures stdout)."""
    print(msg, flush=True)


_checks = {'passed': 0}


def check(cond, what, detail=None):
    """Assert COND; print 'ok: WHAT' or raise TestFailure with DETAIL."""
    if not cond:
        text = 'FAILED: ' + what
        if detail:
            text += '\n' + str(detail)
        raise TestFailure(text)
    _checks['passed'] += 1
    log('ok: ' + what)


def main(fn):
    """Run FN (a test body); exit 0 on success, 1 with a message on failure.

    Every server and process registered with the harness is stopped on the
    way out, whatever happened.  A test that ran no check() fails: a test
    that asserts nothing is a defect.
    """
    install_signal_handlers()
    rc = 1
    try:
        fn()
        if _checks['passed'] == 0:
            log('FAILED: the test made no check')
        else:
            log('PASS: %d checks' % _checks['passed'])
            rc = 0
    except TestFailure as e:
        log(str(e))
        _print_server_errors()
    except Exception:  # an unexpected error is a failure too
        import traceback
        traceback.print_exc(file=sys.stdout)
        _print_server_errors()
    finally:
        cleanup_all()
    sys.stdout.flush()
    sys.exit(rc)


def _print_server_errors():
    """After a failure: the errors the running servers logged (a server
    panic explains many a client failure)."""
    with _live_lock:
        servers = [o for o in _live if isinstance(o, Dovecot)]
    for srv in servers:
        lines = srv.errors()
        if lines:
            log('--- %s log errors:' % srv.name)
            for ln in lines[-10:]:
                log('  ' + ln[:300])


_tmpdirs = []


def make_tmpdir(tag):
    """A private temporary directory removed at exit (unless POSTINO_TEST_KEEP)."""
    d = tempfile.mkdtemp(prefix='postino-%s-' % tag)
    _tmpdirs.append(d)
    return d


def free_ports(n):
    """N distinct free TCP ports on 127.0.0.1 (held until all are chosen)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(('127.0.0.1', 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def port_open(port, host='127.0.0.1'):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# Process bookkeeping: whatever we start is stopped at exit, even on failure.

_live = []          # objects with .stop()
_live_lock = threading.Lock()
_handlers_installed = False


def _register(obj):
    with _live_lock:
        _live.append(obj)


def _unregister(obj):
    with _live_lock:
        if obj in _live:
            _live.remove(obj)


def cleanup_all():
    """Stop every live server/process and remove temporary directories."""
    while True:
        with _live_lock:
            if not _live:
                break
            obj = _live.pop()
        try:
            obj.stop()
        except Exception as e:  # keep going: stop the others
            log('warning: cleanup of %r failed: %s' % (obj, e))
    if not KEEP_TMP:
        while _tmpdirs:
            shutil.rmtree(_tmpdirs.pop(), ignore_errors=True)


def _on_signal(signum, frame):
    # Turn SIGTERM/SIGINT/SIGHUP (meson's timeout sends SIGTERM) into an
    # exit, so finally blocks and atexit run and the servers get stopped.
    raise SystemExit(128 + signum)


def install_signal_handlers():
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(cleanup_all)
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, _on_signal)


def group_members(pgid):
    """PIDs of live (non-zombie) processes in process group PGID."""
    out = []
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % d) as f:
                st = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces or ')'.
        fields = st[st.rindex(')') + 2:].split()
        if fields[0] != 'Z' and int(fields[2]) == pgid:
            out.append(int(d))
    return out


def kill_group(proc, grace=2.0):
    """Stop PROC and its whole process group: SIGTERM to the group, up to
    GRACE seconds for the leader to exit, then SIGKILL to whatever is left;
    returns once no live process of the group remains (or after a few
    seconds more)."""
    if proc is None:
        return
    pgid = proc.pid     # started with start_new_session: leader of its group
    own_group = pgid != os.getpgid(0)

    def signal_group(sig):
        try:
            if own_group:
                os.killpg(pgid, sig)
            elif proc.poll() is None:
                proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    signal_group(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    signal_group(signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    if own_group:
        deadline = time.time() + 5
        while group_members(pgid) and time.time() < deadline:
            signal_group(signal.SIGKILL)
            time.sleep(0.05)


# --------------------------------------------------------------------------
# TestCA

class TestCA:
    """A certificate authority made at test time with certtool.

    Attributes:
      dir       where the files are
      ca_file   the CA certificate to give postino (--ca-file)
      certs     {kind: (cert_path, key_path)} for kind in
                'good'        signed by the CA, DNS:localhost + IP:127.0.0.1
                'selfsigned'  self-signed, right names
                'wronghost'   signed by the CA, DNS:wrong.example only
                'expired'     signed by the CA, valid 2019-2020
                'notyetvalid' signed by the CA, valid from 2090
                'unknownca'   signed by another CA, right names
      other_ca_file  the CA that signed 'unknownca' (never trusted by tests)
    """

    KINDS = ('good', 'selfsigned', 'wronghost', 'expired', 'notyetvalid',
             'unknownca')

    def __init__(self, directory=None):
        self.dir = directory or make_tmpdir('ca')
        os.makedirs(self.dir, exist_ok=True)
        self._serial = 1
        self.ca_file, self._ca_key = self._make_ca('ca', 'Postino Test CA')
        self.other_ca_file, self._other_key = self._make_ca(
            'otherca', 'Unknown Test CA')
        self.certs = {}
        good = dict(dns=['localhost'], ip=['127.0.0.1'])
        self.certs['good'] = self._make_leaf('good', 'localhost', good)
        self.certs['selfsigned'] = self._make_leaf('selfsigned', 'localhost',
                                                   good, signer=None)
        self.certs['wronghost'] = self._make_leaf(
            'wronghost', 'wrong.example', dict(dns=['wrong.example'], ip=[]))
        self.certs['expired'] = self._make_leaf(
            'expired', 'localhost', good,
            dates=('2019-01-01 00:00:00', '2020-01-01 00:00:00'))
        self.certs['notyetvalid'] = self._make_leaf(
            'notyetvalid', 'localhost', good,
            dates=('2090-01-01 00:00:00', '2091-01-01 00:00:00'))
        self.certs['unknownca'] = self._make_leaf(
            'unknownca', 'localhost', good,
            signer=(self.other_ca_file, self._other_key))

    def cert(self, kind):
        return self.certs[kind]

    def _certtool(self, args, template=None):
        cmd = ['certtool'] + args
        if template is not None:
            tpl = os.path.join(self.dir, 'tpl-%d' % self._serial)
            with open(tpl, 'w') as f:
                f.write(template)
            cmd += ['--template', tpl]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError('certtool %s failed: %s' % (
                ' '.join(args), r.stderr.decode(errors='replace')))
        return r

    def _key(self, name):
        key = os.path.join(self.dir, name + '.key')
        self._certtool(['--generate-privkey', '--key-type=ecdsa',
                        '--curve=secp256r1', '--outfile', key])
        return key

    def _next_serial(self):
        self._serial += 1
        return self._serial

    def _make_ca(self, name, cn):
        key = self._key(name)
        crt = os.path.join(self.dir, name + '.crt')
        tpl = ('cn = "%s"\norganization = "postino tests"\nserial = %d\n'
               'expiration_days = 3650\nca\ncert_signing_key\ncrl_signing_key\n'
               % (cn, self._next_serial()))
        self._certtool(['--generate-self-signed', '--load-privkey', key,
                        '--outfile', crt], tpl)
        return crt, key

    def _make_leaf(self, name, cn, names, signer='ca', dates=None):
        key = self._key(name)
        crt = os.path.join(self.dir, name + '.crt')
        tpl = 'cn = "%s"\nserial = %d\n' % (cn, self._next_serial())
        for d in names['dns']:
            tpl += 'dns_name = "%s"\n' % d
        for ip in names['ip']:
            tpl += 'ip_address = "%s"\n' % ip
        tpl += 'tls_www_server\nsigning_key\nencryption_key\n'
        if dates:
            tpl += 'activation_date = "%s"\nexpiration_date = "%s"\n' % dates
        else:
            tpl += 'expiration_days = 3650\n'
        if signer is None:
            self._certtool(['--generate-self-signed', '--load-privkey', key,
                            '--outfile', crt], tpl)
        else:
            if signer == 'ca':
                signer = (self.ca_file, self._ca_key)
            self._certtool(['--generate-certificate', '--load-privkey', key,
                            '--load-ca-certificate', signer[0],
                            '--load-ca-privkey', signer[1],
                            '--outfile', crt], tpl)
        return crt, key


_default_ca = None


def default_ca():
    """The process-wide TestCA, made on first use."""
    global _default_ca
    if _default_ca is None:
        _default_ca = TestCA()
    return _default_ca


# --------------------------------------------------------------------------
# Dovecot

_instance_counter = [0]
_default_caps = None


def _ids():
    """(login user, internal user, uid, gid) for the mail processes."""
    if os.geteuid() == 0:
        import pwd
        pw = pwd.getpwnam('dovecot')
        # dovenull must exist too; Debian's dovecot-core creates both.
        pwd.getpwnam('dovenull')
        return 'dovenull', 'dovecot', pw.pw_uid, pw.pw_gid
    import pwd
    me = pwd.getpwuid(os.geteuid()).pw_name
    return me, me, os.geteuid(), os.getegid()


class Dovecot:
    """A private Dovecot instance.

    layout     'fs' (maildir LAYOUT=fs, separator '/') or 'maildir++'
               (separator '.')
    prefix     personal namespace prefix, e.g. 'INBOX.' ('' for none)
    ssl        offer TLS: an imaps (and pop3s) listener and STARTTLS
    starttls   offer STARTTLS on the plain listener; False means a server
               without any TLS (requires ssl=False)
    plaintext  allow plaintext authentication (disable_plaintext_auth=no);
               note that Dovecot always treats 127.0.0.1 to 127.0.0.1 as
               secure, so this only matters for the advertised AUTH= list.
    pop3       also run POP3 (pop3_port, pop3s_port)
    uidplus    advertise UIDPLUS (False: removed from imap_capability)
    condstore  advertise CONDSTORE/QRESYNC
    qresync    advertise QRESYNC (False: CONDSTORE without QRESYNC)
    cert       a TestCA kind ('good', 'expired', ...) of the default CA, or
               a (cert, key) pair
    users      {name: password}
    mechanisms the SASL mechanisms offered (auth_mechanisms), default
               'plain login'; e.g. 'plain login cram-md5'
    oauth2     the URL of an OAuth2 token introspection endpoint (RFC 7662,
               e.g. an OAuth2Introspection below): adds XOAUTH2 and
               OAUTHBEARER and an oauth2 passdb that POSTs token=TOKEN there
               and accepts the token when the answer says
               {"active": true, "username": USER}
    """

    def __init__(self, layout='fs', prefix='', ssl=True, starttls=True,
                 pop3=False, uidplus=True, condstore=True, cert='good',
                 users=None, plaintext=False, name=None, extra_config='',
                 start=True, mechanisms='plain login', oauth2=None,
                 qresync=True):
        if layout not in ('fs', 'maildir++'):
            raise ValueError('layout must be fs or maildir++')
        if ssl and not starttls:
            raise ValueError('Dovecot cannot offer imaps without STARTTLS on '
                             'the plain listener: use ssl=False, '
                             'starttls=False')
        self.layout = layout
        self.sep = '/' if layout == 'fs' else '.'
        if prefix and not prefix.endswith(self.sep):
            prefix += self.sep
        self.prefix = prefix
        self.ssl = ssl
        self.starttls = starttls
        self.pop3 = pop3
        self.uidplus = uidplus
        self.condstore = condstore
        self.qresync = qresync and condstore
        self.plaintext = plaintext
        self.users = dict(users or {'alice': 'secret'})
        self.extra_config = extra_config
        self.mechanisms = mechanisms
        self.oauth2 = oauth2
        if isinstance(cert, str):
            self.cert = default_ca().cert(cert) if ssl else None
        else:
            self.cert = cert
        _instance_counter[0] += 1
        self.name = name or 'dc%d' % _instance_counter[0]
        self.dir = None
        self.proc = None
        self.imap_port = self.imaps_port = None
        self.pop3_port = self.pop3s_port = None
        if start:
            self.start()

    # -- life cycle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return '<Dovecot %s %s imap=%s imaps=%s>' % (
            self.name, self.layout, self.imap_port, self.imaps_port)

    @property
    def log_path(self):
        return os.path.join(self.dir, 'dovecot.log')

    def log_text(self, tail=60):
        try:
            with open(self.log_path, errors='replace') as f:
                lines = f.read().splitlines()
        except OSError:
            return '(no log)'
        return '\n'.join(lines[-tail:])

    def errors(self):
        """Error, Fatal and Panic lines of the server log."""
        try:
            with open(self.log_path, errors='replace') as f:
                return [ln.rstrip('\n') for ln in f
                        if re.search(r': (Error|Fatal|Panic): ', ln) and
                        'Raw backtrace' not in ln]
        except (OSError, TypeError):
            return []

    def start(self):
        install_signal_handlers()
        if self.dir is None:
            self.dir = make_tmpdir('dovecot-' + self.name)
            os.chmod(self.dir, 0o755)   # the mail processes traverse it
        for attempt in range(5):
            self._allocate_ports()
            self._write_config()
            if self._launch():
                return self
        raise RuntimeError('dovecot %s did not start:\n%s' % (
            self.name, self.log_text()))

    def _allocate_ports(self):
        n = 1 + (1 if self.ssl else 0)
        if self.pop3:
            n *= 2
        ports = free_ports(n)
        self.imap_port = ports.pop(0)
        self.imaps_port = ports.pop(0) if self.ssl else None
        self.pop3_port = ports.pop(0) if self.pop3 else None
        self.pop3s_port = ports.pop(0) if self.pop3 and self.ssl else None

    def ports(self):
        return [p for p in (self.imap_port, self.imaps_port, self.pop3_port,
                            self.pop3s_port) if p]

    def _capabilities_conf(self):
        if self.uidplus and self.condstore and self.qresync:
            return ''
        caps = default_capabilities()
        drop = set()
        if not self.uidplus:
            drop.add('UIDPLUS')
        if not self.condstore:
            drop |= {'CONDSTORE', 'QRESYNC'}
        if not self.qresync:
            drop.add('QRESYNC')
        return 'imap_capability = %s\n' % ' '.join(
            c for c in caps if c.upper() not in drop)

    def _write_config(self):
        login_user, internal_user, uid, gid = _ids()
        d = self.dir
        for sub in ('run', 'state', 'home'):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        os.chmod(os.path.join(d, 'home'), 0o755)
        for user in self.users:
            home = os.path.join(d, 'home', user)
            os.makedirs(home, exist_ok=True)
            os.chown(home, uid, gid)
            os.chmod(home, 0o700)
        passwd = os.path.join(d, 'passwd')
        with open(passwd, 'w') as f:
            for user, pw in self.users.items():
                f.write('%s:{PLAIN}%s::::::\n' % (user, pw))
        os.chmod(passwd, 0o644)
        if self.layout == 'fs':
            location = 'maildir:~/Maildir:LAYOUT=fs'
        else:
            location = 'maildir:~/Maildir'
        protocols = 'imap pop3' if self.pop3 else 'imap'
        c = []
        c.append('# written by tests/integration/harness.py')
        c.append('instance_name = postino-test-%d-%s' % (os.getpid(),
                                                         self.name))
        c.append('base_dir = %s/run' % d)
        c.append('state_dir = %s/state' % d)
        c.append('listen = 127.0.0.1')
        c.append('protocols = %s' % protocols)
        c.append('log_path = %s/dovecot.log' % d)
        c.append('info_log_path = %s/dovecot.log' % d)
        c.append('debug_log_path = %s/dovecot.log' % d)
        c.append('default_login_user = %s' % login_user)
        c.append('default_internal_user = %s' % internal_user)
        c.append('default_internal_group = %s' % (
            'dovecot' if os.geteuid() == 0 else
            __import__('grp').getgrgid(os.getegid()).gr_name))
        mechs = self.mechanisms
        if self.oauth2:
            mechs += ' xoauth2 oauthbearer'
        c.append('auth_mechanisms = %s' % mechs)
        c.append('disable_plaintext_auth = %s' % (
            'no' if self.plaintext else 'yes'))
        c.append('mail_location = %s' % location)
        c.append('mail_fsync = never')
        c.append('mail_max_userip_connections = 200')
        c.append('first_valid_uid = %d' % uid)
        c.append('first_valid_gid = %d' % gid)
        c.append('pop3_uidl_format = %08Xu%08Xv')
        c.append('verbose_proctitle = no')
        c.append('shutdown_clients = yes')
        if self.ssl:
            c.append('ssl = yes')
            c.append('ssl_cert = <%s' % self.cert[0])
            c.append('ssl_key = <%s' % self.cert[1])
            c.append('ssl_min_protocol = TLSv1.2')
        else:
            c.append('ssl = no')
        caps = self._capabilities_conf()
        if caps:
            c.append(caps.rstrip('\n'))
        c.append('passdb {\n  driver = passwd-file\n  args = scheme=PLAIN %s\n}'
                 % passwd)
        if self.oauth2:
            # Tried after the passwd-file, only for the OAuth2 mechanisms.
            oconf = os.path.join(d, 'oauth2.conf')
            with open(oconf, 'w') as f:
                f.write('introspection_mode = post\n'
                        'introspection_url = %s\n'
                        'force_introspection = yes\n'
                        'username_attribute = username\n'
                        'active_attribute = active\n'
                        'active_value = true\n' % self.oauth2)
            os.chmod(oconf, 0o644)
            c.append('passdb {\n  driver = oauth2\n'
                     '  mechanisms = xoauth2 oauthbearer\n  args = %s\n}'
                     % oconf)
        c.append('userdb {\n  driver = static\n  args = uid=%d gid=%d '
                 'home=%s/home/%%n\n}' % (uid, gid, d))
        c.append('namespace inbox {\n  inbox = yes\n  separator = %s\n'
                 '  prefix = %s\n'
                 '  mailbox Sent {\n    special_use = \\Sent\n  }\n'
                 '  mailbox Drafts {\n    special_use = \\Drafts\n  }\n'
                 '  mailbox Trash {\n    special_use = \\Trash\n  }\n'
                 '  mailbox Junk {\n    special_use = \\Junk\n  }\n}'
                 % (self.sep, self.prefix))
        listeners = '  inet_listener imap {\n    address = 127.0.0.1\n' \
                    '    port = %d\n  }\n' % self.imap_port
        if self.ssl:
            listeners += '  inet_listener imaps {\n    address = 127.0.0.1\n' \
                         '    port = %d\n    ssl = yes\n  }\n' % \
                         self.imaps_port
        c.append('service imap-login {\n%s  chroot =\n}' % listeners)
        if self.pop3:
            listeners = '  inet_listener pop3 {\n    address = 127.0.0.1\n' \
                        '    port = %d\n  }\n' % self.pop3_port
            if self.ssl:
                listeners += '  inet_listener pop3s {\n' \
                             '    address = 127.0.0.1\n' \
                             '    port = %d\n    ssl = yes\n  }\n' % \
                             self.pop3s_port
            c.append('service pop3-login {\n%s  chroot =\n}' % listeners)
        # No listeners for anything we do not test.
        c.append('service anvil {\n  chroot =\n}')
        c.append('service imap-urlauth-login {\n  chroot =\n}')
        if self.extra_config:
            c.append(self.extra_config)
        self.conf_path = os.path.join(d, 'dovecot.conf')
        with open(self.conf_path, 'w') as f:
            f.write('\n'.join(c) + '\n')

    def _launch(self):
        logf = open(os.path.join(self.dir, 'stdio.log'), 'ab')
        self.proc = subprocess.Popen(
            ['dovecot', '-F', '-c', self.conf_path], stdin=subprocess.DEVNULL,
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        _register(self)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            if all(port_open(p) for p in self.ports()):
                return True
            time.sleep(0.05)
        text = self.log_text() + self._stdio()
        self.stop(remove=False)
        if 'in use' in text:   # lost a port race: try other ports
            return False
        raise RuntimeError('dovecot %s did not start (rc=%s):\n%s' % (
            self.name, self.proc.returncode, text))

    def _stdio(self):
        try:
            with open(os.path.join(self.dir, 'stdio.log'),
                      errors='replace') as f:
                return f.read()
        except OSError:
            return ''

    def stop(self, remove=True):
        """Stop the instance (its whole process group).  Idempotent."""
        if self.proc is not None:
            kill_group(self.proc, grace=0.5)
        _unregister(self)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def check_running(self):
        """Raise with the log if Dovecot died."""
        if not self.running():
            raise TestFailure('dovecot %s is not running:\n%s' % (
                self.name, self.log_text()))

    # -- addresses

    def url(self, user='alice', scheme='imaps', host='localhost', tls=None):
        """A postino URL for USER, e.g. imaps://alice@localhost:PORT."""
        port = {'imaps': self.imaps_port, 'imap': self.imap_port,
                'pop3': self.pop3_port, 'pop3s': self.pop3s_port}[scheme]
        if port is None:
            raise ValueError('%s has no %s listener' % (self.name, scheme))
        u = '%s://%s@%s:%d' % (scheme, user, host, port)
        if tls:
            u += '?tls=' + tls
        return u

    def connect(self, user='alice'):
        """An authenticated imaplib connection (the oracle's own)."""
        return ImapClient(self, user)


class FilterProxy:
    """An IMAP proxy on a free 127.0.0.1 port in front of a Dovecot that
    hides what Dovecot cannot be told to hide.

    Dovecot answers APPEND with [APPENDUID ...] (and COPY/MOVE with
    [COPYUID ...]) even when UIDPLUS is removed from imap_capability, so a
    client could still lean on them.  The proxy removes those response
    codes and the UIDPLUS capability from what the server sends (it tracks
    literals, so message bytes pass untouched); what the client sends goes
    through unchanged.

    tls='imaps': clients connect with TLS (the server's certificate); the
      proxy then also hides STARTTLS.  tls=None: plain (?tls=none URLs).
    Upstream it speaks plain IMAP to the server's plain listener.
    rate: limit what the client sends to RATE bytes a second (a slow
      uplink), so that a copy lasts long enough to be interrupted at a
      chosen moment.  strip_uidplus=False with a rate: a plain slow link.

    .port, .url(user) like Dovecot.url(); .stop(); context manager.
    """

    _CODE_RE = re.compile(rb'\[(?:APPENDUID|COPYUID) [^\]]*\] ?')
    _CAPS_RE = re.compile(rb'(\* CAPABILITY |\[CAPABILITY )([^\]\r\n]*)')

    def __init__(self, server, strip_uidplus=True, tls='imaps', rate=None):
        self.server = server
        self.strip_uidplus = strip_uidplus
        self.rate = rate
        self.tls = tls
        self.ctx = None
        if tls == 'imaps':
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            cert = server.cert or default_ca().cert('good')
            self.ctx.load_cert_chain(cert[0], cert[1])
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(('127.0.0.1', 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.stopped = False
        self.conns = []
        self.stripped = 0       # response codes removed so far
        self._link_free = 0.0   # monotonic time the slow link is free
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()
        _register(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return '<FilterProxy %d -> %d>' % (self.port, self.server.imap_port)

    def connections(self):
        """Number of client connections open now."""
        with self.lock:
            return len(self.conns) // 2

    def url(self, user='alice', host='localhost'):
        if self.tls == 'imaps':
            return 'imaps://%s@%s:%d' % (user, host, self.port)
        return 'imap://%s@%s:%d?tls=none' % (user, host, self.port)

    def stop(self):
        self.stopped = True
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        _unregister(self)

    def _accept_loop(self):
        while not self.stopped:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,),
                             daemon=True).start()

    def _serve(self, c):
        up = None
        try:
            if self.ctx is not None:
                c.settimeout(30)
                c = self.ctx.wrap_socket(c, server_side=True)
                c.settimeout(None)
            up = socket.create_connection(('127.0.0.1',
                                           self.server.imap_port))
            with self.lock:
                if self.stopped:
                    raise OSError('stopped')
                self.conns += [c, up]
            t = threading.Thread(target=self._pump_up,
                                 args=(c, up, self.rate), daemon=True)
            t.start()
            self._pump_down(up, c)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            with self.lock:
                self.conns = [s for s in self.conns if s is not c and
                              s is not up]
            for s in (c, up):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass

    def _pump_up(self, c, up, rate):
        """Client to server.  Reads the client eagerly and forwards at RATE
        (shared by all connections: one slow link).  When the client goes
        away, what it sent but the proxy has not yet forwarded is dropped
        and the server connection is reset: the link dies with the client,
        as when a machine loses its connection (a slow link must not
        deliver an APPEND seconds after its sender was killed)."""
        buf = bytearray()
        next_send = 0.0
        try:
            while True:
                wait = None
                if buf:
                    wait = max(0.0, next_send - time.monotonic())
                ready = isinstance(c, ssl.SSLSocket) and c.pending()
                if not ready:
                    ready = select.select([c], [], [], wait)[0]
                if ready:
                    data = c.recv(65536)
                    if not data:
                        if buf:
                            FilterProxy._reset(up)
                        else:
                            up.shutdown(socket.SHUT_WR)
                        return
                    if rate and not buf:
                        next_send = self._reserve(0)
                    buf += data
                if buf and time.monotonic() >= next_send:
                    n = min(len(buf), 8192) if rate else len(buf)
                    up.sendall(bytes(buf[:n]))
                    del buf[:n]
                    if rate:
                        next_send = self._reserve(n / rate)
        except (OSError, ssl.SSLError, ValueError):
            FilterProxy._reset(up)

    def _reserve(self, seconds):
        """Book SECONDS of the shared link; returns when the next chunk
        may be sent."""
        with self.lock:
            now = time.monotonic()
            self._link_free = max(self._link_free, now) + seconds
            return self._link_free

    @staticmethod
    def _reset(sock):
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            struct.pack('ii', 1, 0))
            sock.close()
        except OSError:
            pass

    def _filter_line(self, line):
        if self.strip_uidplus:
            line, n = self._CODE_RE.subn(b'', line)
            if n:
                with self.lock:
                    self.stripped += n

        def caps(m):
            words = m.group(2).split(b' ')
            drop = set()
            if self.strip_uidplus:
                drop.add(b'UIDPLUS')
            if self.tls == 'imaps':
                drop.add(b'STARTTLS')
            return m.group(1) + b' '.join(w for w in words
                                          if w.upper() not in drop)
        return self._CAPS_RE.sub(caps, line)

    def _pump_down(self, up, c):
        """Server to client: line by line, literals passed verbatim."""
        buf = b''
        literal = 0
        while True:
            data = up.recv(65536)
            if not data:
                break
            buf += data
            out = []
            while buf:
                if literal:
                    take = buf[:literal]
                    out.append(take)
                    literal -= len(take)
                    buf = buf[len(take):]
                    continue
                nl = buf.find(b'\r\n')
                if nl < 0:
                    break
                line, buf = buf[:nl + 2], buf[nl + 2:]
                m = re.search(rb'\{(\d+)\}\r\n$', line)
                if m:
                    literal = int(m.group(1))
                out.append(self._filter_line(line))
            if out:
                c.sendall(b''.join(out))
        if buf:
            c.sendall(buf)


class OAuth2Introspection:
    """A token introspection endpoint (RFC 7662) on a free 127.0.0.1 port,
    for Dovecot(oauth2=endpoint.url).

    tokens  {access token: user name}: a POSTed token=T that is a key is
            answered {"active": true, "username": USER}; any other token
            {"active": false} with status 401.
    .requests counts the requests, .seen the tokens asked about.
    """

    def __init__(self, tokens):
        import http.server
        import json
        self.tokens = dict(tokens)
        self.requests = 0
        self.seen = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get('Content-Length') or 0)
                form = _parse_form(self.rfile.read(n).decode('utf-8',
                                                            'replace'))
                tok = form.get('token', '')
                outer.requests += 1
                outer.seen.append(tok)
                user = outer.tokens.get(tok)
                doc = ({'active': True, 'username': user} if user
                       else {'active': False})
                body = json.dumps(doc).encode()
                self.send_response(200 if user else 401)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        install_signal_handlers()
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                     Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = 'http://127.0.0.1:%d/introspect' % self.port
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       daemon=True)
        self.thread.start()
        _register(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        """Stop serving and close the port.  Idempotent."""
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
        _unregister(self)


def _parse_form(text):
    from urllib.parse import parse_qs
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


def default_capabilities():
    """Dovecot's default post-login CAPABILITY list (probed once)."""
    global _default_caps
    if _default_caps is None:
        with Dovecot(ssl=False, starttls=False, name='capprobe') as probe:
            with probe.connect() as c:
                typ, data = c.imap.capability()
                caps = data[0].decode().split()
        _default_caps = [x for x in caps
                         if not x.upper().startswith(('AUTH=', 'STARTTLS',
                                                      'LOGINDISABLED'))]
    return list(_default_caps)


# --------------------------------------------------------------------------
# Modified UTF-7 (RFC 3501 5.1.3), our own encoder/decoder

def mutf7_encode(s):
    out, pending = [], []

    def flush():
        if pending:
            raw = ''.join(pending).encode('utf-16-be')
            b64 = base64.b64encode(raw).decode('ascii').rstrip('=')
            out.append('&' + b64.replace('/', ',') + '-')
            pending.clear()

    for ch in s:
        if 0x20 <= ord(ch) <= 0x7e:
            flush()
            out.append('&-' if ch == '&' else ch)
        else:
            pending.append(ch)
    flush()
    return ''.join(out)


def mutf7_decode(s):
    out, i = [], 0
    while i < len(s):
        ch = s[i]
        if ch != '&':
            out.append(ch)
            i += 1
            continue
        j = s.index('-', i)
        if j == i + 1:
            out.append('&')
        else:
            b64 = s[i + 1:j].replace(',', '/')
            b64 += '=' * (-len(b64) % 4)
            out.append(base64.b64decode(b64).decode('utf-16-be'))
        i = j + 1
    return ''.join(out)


# --------------------------------------------------------------------------
# IMAP client helpers (imaplib)

def imap_quote(s):
    return '"' + s.replace('\\', '\\\\').replace('"', '\\"') + '"'


_MONTHS = {m: i for i, m in enumerate(
    ('Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct',
     'Nov', 'Dec'), 1)}
_MONTH_NAMES = {v: k for k, v in _MONTHS.items()}


def parse_internaldate(s):
    """'17-Jul-1996 02:44:25 -0700' -> seconds since the epoch (UTC)."""
    m = re.match(r'\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) '
                 r'([+-])(\d\d)(\d\d)\s*$', s)
    if not m:
        raise ValueError('bad INTERNALDATE %r' % s)
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    t = calendar.timegm((int(year), _MONTHS[mon.capitalize()], int(day),
                         int(hh), int(mm), int(ss), 0, 0, 0))
    off = (int(zh) * 60 + int(zm)) * 60
    return t - off if sign == '+' else t + off


def format_internaldate(epoch, tz_minutes=0):
    """Epoch seconds and a zone offset -> '"dd-Mon-yyyy hh:mm:ss +hhmm"'."""
    tm = time.gmtime(epoch + tz_minutes * 60)
    sign = '+' if tz_minutes >= 0 else '-'
    a = abs(tz_minutes)
    return '"%02d-%s-%04d %02d:%02d:%02d %s%02d%02d"' % (
        tm.tm_mday, _MONTH_NAMES[tm.tm_mon], tm.tm_year, tm.tm_hour,
        tm.tm_min, tm.tm_sec, sign, a // 60, a % 60)


def _parse_list_line(item):
    """One LIST response (bytes or (bytes, literal) tuple) ->
    (flags, delimiter or None, raw mailbox name)."""
    if isinstance(item, tuple):
        head, lit = item
        head = head.decode('utf-8', 'replace')
        m = re.match(r'\((.*?)\) (NIL|"(?:\\.|[^"])*") \{\d+\}$', head)
        name = lit.decode('utf-8', 'replace')
    else:
        head = item.decode('utf-8', 'replace')
        m = re.match(r'\((.*?)\) (NIL|"(?:\\.|[^"])*") (.*)$', head)
        name = None
    if not m:
        raise ValueError('cannot parse LIST line %r' % (item,))
    flags = m.group(1).split()
    delim = m.group(2)
    delim = None if delim == 'NIL' else re.sub(r'\\(.)', r'\1', delim[1:-1])
    if name is None:
        name = m.group(3)
        if name.startswith('"'):
            name = re.sub(r'\\(.)', r'\1', name[1:-1])
    return flags, delim, name


class ImapClient:
    """A thin wrapper around imaplib.IMAP4 for the harness's own use.

    It talks plain IMAP to the server's plain listener (Dovecot treats
    loopback connections as secure), so it does not depend on TLS working.
    """

    def __init__(self, server, user):
        self.server = server
        self.user = user
        self.imap = imaplib.IMAP4('127.0.0.1', server.imap_port, timeout=60)
        self.imap.login(user, server.users[user])
        self.sep = server.sep
        self.prefix = server.prefix
        self._read_namespace()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.imap.logout()
        except Exception:
            pass

    def _read_namespace(self):
        typ, data = self.imap.namespace()
        text = data[0].decode() if data and data[0] else ''
        m = re.match(r'\(\("((?:\\.|[^"])*)" (?:"((?:\\.|[^"])*)"|NIL)\)', text)
        if m:
            self.prefix = m.group(1)
            self.sep = m.group(2) or self.sep

    def _ok(self, typ, data, what):
        if typ != 'OK':
            raise TestFailure('IMAP %s failed: %s %r' % (what, typ, data))
        return data

    # Names: a folder path is UTF-8 with '/' between levels, below the
    # personal prefix; 'INBOX' is INBOX.

    def server_name(self, path):
        if path.upper() == 'INBOX':
            return 'INBOX'
        parts = path.split('/')
        for p in parts:
            if self.sep in p:
                raise ValueError('folder %r: %r is the separator here' % (
                    path, self.sep))
        return self.prefix + self.sep.join(mutf7_encode(p) for p in parts)

    def path_of(self, raw, delim):
        name = raw
        if name.upper() == 'INBOX':
            return 'INBOX'
        if self.prefix and name.startswith(self.prefix):
            name = name[len(self.prefix):]
        parts = name.split(delim) if delim else [name]
        return '/'.join(mutf7_decode(p) for p in parts)

    def folders(self, selectable=True):
        """{path: flags} of the account's personal folders."""
        typ, data = self.imap.list('""', '"*"')
        self._ok(typ, data, 'LIST')
        out = {}
        for item in data:
            if item is None:
                continue
            flags, delim, raw = _parse_list_line(item)
            lf = {f.lower() for f in flags}
            if selectable and lf & {'\\noselect', '\\nonexistent'}:
                continue
            out[self.path_of(raw, delim)] = flags
        return out

    def create(self, path):
        name = self.server_name(path)
        typ, data = self.imap.create(imap_quote(name))
        if typ != 'OK' and b'ALREADYEXISTS' not in b' '.join(
                d for d in data if isinstance(d, bytes)):
            raise TestFailure('CREATE %s: %r' % (path, data))

    def select(self, path, readonly=True):
        typ, data = self.imap.select(imap_quote(self.server_name(path)),
                                     readonly=readonly)
        self._ok(typ, data, 'SELECT %s' % path)
        return int(data[0])

    def append(self, path, data, flags=(), date=None):
        """APPEND byte-exact (imaplib.append would rewrite bare LF).

        DATE is (epoch, tz_minutes) or None.  Returns the tagged response.
        """
        args = [imap_quote(self.server_name(path))]
        if flags:
            args.append('(' + ' '.join(flags) + ')')
        if date is not None:
            args.append(format_internaldate(*date))
        self.imap.literal = bytes(data)
        typ, resp = self.imap._simple_command('APPEND', *args)
        self._ok(typ, resp, 'APPEND to %s' % path)
        return resp

    def uid_store(self, path, uid, op, flags):
        self.select(path, readonly=False)
        typ, data = self.imap.uid('STORE', str(uid), op,
                                  '(' + ' '.join(flags) + ')')
        self._ok(typ, data, 'STORE')

    def messages(self, path):
        """[(uid, bytes, flags set, epoch)] of the folder, without \\Seen
        side effects (BODY.PEEK[])."""
        n = self.select(path)
        if n == 0:
            return []
        typ, data = self.imap.uid('FETCH', '1:*', '(UID FLAGS INTERNALDATE)')
        self._ok(typ, data, 'FETCH meta')
        meta = {}
        for item in data:
            if item is None:
                continue
            line = item[0] if isinstance(item, tuple) else item
            line = line.decode('utf-8', 'replace')
            uid = int(re.search(r'UID (\d+)', line).group(1))
            fl = re.search(r'FLAGS \(([^)]*)\)', line).group(1).split()
            date = re.search(r'INTERNALDATE "([^"]+)"', line).group(1)
            meta[uid] = (fl, parse_internaldate(date))
        typ, data = self.imap.uid('FETCH', '1:*', '(UID BODY.PEEK[])')
        self._ok(typ, data, 'FETCH body')
        bodies = {}
        for item in data:
            if isinstance(item, tuple):
                uid = int(re.search(rb'UID (\d+)', item[0]).group(1))
                bodies[uid] = item[1]
        out = []
        for uid in sorted(meta):
            if uid not in bodies:
                raise TestFailure('no body for UID %d in %s' % (uid, path))
            fl, date = meta[uid]
            out.append((uid, bodies[uid], fl, date))
        return out


def norm_flags(flags):
    return frozenset(f.lower() for f in flags if f.lower() != '\\recent')


def snapshot(server, user='alice', with_uids=False):
    """{folder path: sorted [(sha256 hex, frozenset flags, epoch)]}.

    Covers every selectable personal folder, empty ones included.
    """
    snap = {}
    with server.connect(user) as c:
        for path in sorted(c.folders()):
            items = []
            for uid, body, fl, date in c.messages(path):
                t = (hashlib.sha256(body).hexdigest(), norm_flags(fl), date)
                items.append(t + (uid,) if with_uids else t)
            snap[path] = sorted(items, key=_sort_key)
    return snap


def _sort_key(t):
    return (t[0], sorted(t[1]), t[2]) + tuple(t[3:])


def count_messages(server, user='alice'):
    """{folder path: number of messages}."""
    out = {}
    with server.connect(user) as c:
        for path in c.folders():
            out[path] = c.select(path)
    return out


def folder_sizes(server, user='alice'):
    """{folder path: total size in bytes of its messages, as served}."""
    out = {}
    with server.connect(user) as c:
        for path in c.folders():
            if c.select(path) == 0:
                out[path] = 0
                continue
            typ, data = c.imap.uid('FETCH', '1:*', '(RFC822.SIZE)')
            c._ok(typ, data, 'FETCH RFC822.SIZE')
            out[path] = sum(int(re.search(rb'RFC822\.SIZE (\d+)', x).group(1))
                            for x in data if isinstance(x, bytes))
    return out


def total(counts_or_snap):
    return sum(len(v) if isinstance(v, list) else v
               for v in counts_or_snap.values())


def diff_snapshots(a, b, names=('source', 'destination'), limit=40):
    """Human-readable differences between two snapshots (empty if equal).

    Compares folder sets and, per folder, the multisets of messages; a
    message whose bytes and date match but whose flags differ is reported
    as a flag difference.
    """
    out = []
    for f in sorted(set(a) - set(b)):
        out.append('folder %r only in %s (%d messages)' % (f, names[0],
                                                           len(a[f])))
    for f in sorted(set(b) - set(a)):
        out.append('folder %r only in %s (%d messages)' % (f, names[1],
                                                           len(b[f])))
    for f in sorted(set(a) & set(b)):
        ma = _multiset(a[f])
        mb = _multiset(b[f])
        only_a = ma - mb
        only_b = mb - ma
        if len(a[f]) != len(b[f]):
            out.append('%s: %d messages in %s, %d in %s' % (
                f, len(a[f]), names[0], len(b[f]), names[1]))
        # Pair up flag-only differences.
        for key in list(only_a):
            for keyb in list(only_b):
                if key[0] == keyb[0] and key[2] == keyb[2] and \
                        only_a[key] and only_b[keyb]:
                    n = min(only_a[key], only_b[keyb])
                    out.append('%s: message %s… flags %s in %s, %s in %s%s' % (
                        f, key[0][:12], sorted(key[1]), names[0],
                        sorted(keyb[1]), names[1],
                        ' (x%d)' % n if n > 1 else ''))
                    only_a[key] -= n
                    only_b[keyb] -= n
        for this, other, mine, theirs in ((only_a, mb, names[0], names[1]),
                                          (only_b, ma, names[1], names[0])):
            for key, n in (this + _Counter()).items():
                desc = '%s: message %s… %s date %s' % (
                    f, key[0][:12], sorted(key[1]), _fmt_epoch(key[2]))
                if other[key]:
                    out.append('%s: %d extra in %s (%s has %d)' % (
                        desc, n, mine, theirs, other[key]))
                else:
                    out.append('%s only in %s%s' % (
                        desc, mine, ' (x%d)' % n if n > 1 else ''))
    if len(out) > limit:
        out = out[:limit] + ['... %d more differences' % (len(out) - limit)]
    return out


from collections import Counter as _Counter  # noqa: E402


def _multiset(items):
    return _Counter(tuple(t[:3]) for t in items)


def _fmt_epoch(t):
    return time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(t))


def check_same(a, b, what, names=('source', 'destination')):
    """check() that two snapshots are equal, listing differences if not."""
    diffs = diff_snapshots(a, b, names)
    check(not diffs and a == b, what, '\n'.join(diffs))


def duplicates(snap):
    """{folder: number of messages beyond the first with the same bytes}."""
    out = {}
    for f, items in snap.items():
        c = _Counter(t[0] for t in items)
        extra = sum(n - 1 for n in c.values() if n > 1)
        if extra:
            out[f] = extra
    return out


def describe(snap):
    return ', '.join('%s=%d' % (f, len(v)) for f, v in sorted(snap.items()))


# --------------------------------------------------------------------------
# Test corpus

class Msg:
    """A message to append: bytes, flags (IMAP spelling), (epoch, tz)."""
    __slots__ = ('data', 'flags', 'date', 'label')

    def __init__(self, data, flags=(), date=None, label=''):
        self.data = data
        self.flags = tuple(flags)
        self.date = date
        self.label = label

    def __repr__(self):
        return '<Msg %s %d bytes %s>' % (self.label, len(self.data),
                                          self.flags)


STANDARD_FOLDERS = ['INBOX', 'Sent', 'Drafts', 'Trash', 'Junk',
                    'Archive/2023', 'Archive/2024/Q1', 'Café',
                    '日本語/レポート', 'Entwürfe', 'with space']

_FLAG_CHOICES = [
    (), ('\\Seen',), ('\\Seen',), ('\\Seen', '\\Answered'),
    ('\\Flagged',), ('\\Seen', '\\Flagged'), ('\\Draft',), ('\\Deleted',),
    ('\\Seen', '$Forwarded'), ('$Junk',), ('\\Seen', 'work'),
    ('\\Seen', '$Forwarded', 'work', '$Label1'), ('\\Answered', 'project-x'),
]

_ZONES = [0, 60, 120, -300, -420, 330, 540, 600, 765, -180]

_WORDS = ('mail migration server folder flag date message copy resume '
          'postino letter stamp envelope account mailbox imap archive '
          'report quarterly meeting agenda minutes invoice draft').split()


def synthetic_message(rng, n, size=None, charset_body=False,
                      message_id=True):
    """A deterministic RFC 5322 message of about SIZE bytes."""
    size = size if size is not None else rng.choice(
        [300, 800, 1500, 4000, 12000, 60000, 250000])
    date = 'Mon, %d Mar 2021 10:%02d:%02d +0100' % (1 + n % 28, n % 60,
                                                     (n * 7) % 60)
    subj = 'Test message %d: %s' % (n, ' '.join(rng.choice(_WORDS)
                                                 for _ in range(4)))
    if charset_body and n % 3 == 0:
        subj = '=?UTF-8?B?%s?=' % base64.b64encode(
            ('Grüße Nr. %d — 日本' % n).encode()).decode()
    h = ['From: Sender %d <sender%d@example.org>' % (n % 7, n % 7),
         'To: alice@example.com',
         'Subject: ' + subj,
         'Date: ' + date]
    if message_id:
        h.append('Message-ID: <synthetic-%d-%08x@test.postino>' % (
            n, rng.getrandbits(32)))
    h += ['MIME-Version: 1.0']
    if charset_body:
        h.append('Content-Type: text/plain; charset=utf-8')
        h.append('Content-Transfer-Encoding: 8bit')
    else:
        h.append('Content-Type: text/plain; charset=us-ascii')
    lines = []
    total_len = sum(len(x) + 2 for x in h) + 2
    while total_len < size:
        words = ' '.join(rng.choice(_WORDS) for _ in range(rng.randint(3, 11)))
        if charset_body and rng.random() < 0.2:
            words += ' — ünïcödé ✓'
        lines.append(words)
        total_len += len(words.encode()) + 2
    return ('\r\n'.join(h) + '\r\n\r\n' + '\r\n'.join(lines) +
            '\r\n').encode('utf-8')


def large_message(megabytes=20, seed=b'postino-large'):
    """A deterministic MIME message with a ~MEGABYTES base64 attachment."""
    raw = hashlib.shake_256(seed).digest(int(megabytes * 1024 * 1024 * 3 / 4))
    b64 = base64.b64encode(raw)
    body = b'\r\n'.join(b64[i:i + 76] for i in range(0, len(b64), 76))
    head = (b'From: Big Sender <big@example.org>\r\n'
            b'To: alice@example.com\r\n'
            b'Subject: a large attachment\r\n'
            b'Date: Tue, 02 Jan 2024 09:00:00 +0000\r\n'
            b'Message-ID: <large-1@test.postino>\r\n'
            b'MIME-Version: 1.0\r\n'
            b'Content-Type: multipart/mixed; boundary="=-large-="\r\n\r\n'
            b'--=-large-=\r\nContent-Type: text/plain\r\n\r\n'
            b'See attachment.\r\n\r\n'
            b'--=-large-=\r\nContent-Type: application/octet-stream\r\n'
            b'Content-Transfer-Encoding: base64\r\n'
            b'Content-Disposition: attachment; filename="big.bin"\r\n\r\n')
    return head + body + b'\r\n--=-large-=--\r\n'


def realworld_files():
    """Sorted paths of the real-world sample messages (non-empty files
    in the category folders; LICENSE/README are not messages and a
    zero-byte message cannot be APPENDed)."""
    out = []
    for root, dirs, files in os.walk(REALWORLD_DIR):
        dirs.sort()
        if os.path.samefile(root, REALWORLD_DIR):
            continue
        for f in sorted(files):
            p = os.path.join(root, f)
            if os.path.getsize(p) > 0:
                out.append(p)
    return sorted(out)


def _date(rng, i):
    """Varied INTERNALDATEs: old ones (1996, 2001), zones, recent."""
    bases = [calendar.timegm((1996, 7, 17, 2, 44, 25, 0, 0, 0)),
             calendar.timegm((2001, 9, 9, 1, 46, 40, 0, 0, 0)),
             calendar.timegm((2012, 2, 29, 23, 59, 59, 0, 0, 0)),
             calendar.timegm((2023, 12, 31, 23, 30, 0, 0, 0, 0)),
             calendar.timegm((2024, 3, 10, 12, 0, 0, 0, 0, 0))]
    t = bases[i % len(bases)] + rng.randint(0, 86400 * 30)
    return (t, _ZONES[i % len(_ZONES)])


def corpus(size='small', seed=1, folders=None, per_folder=None):
    """The standard test corpus: {folder path: [Msg]}.

    size='full': all standard folders, several synthetic messages each,
      every real-world sample (folder 'Real'), a double delivery (two
      byte-identical messages in INBOX, same flags and date), two different
      messages sharing a Message-ID, a message without Message-ID, one
      ~20 MB message (Archive/2023), keywords and old dates; Trash empty.
    size='small': the same shape with fewer messages, a subset of the
      real-world samples and no large message: a fast test's corpus.
    size='many': INBOX and two folders holding PER_FOLDER (default 100)
      synthetic messages each: for kill/resume tests.
    """
    rng = random.Random(seed)
    out = {}
    n = [0]

    def synth(**kw):
        n[0] += 1
        i = n[0]
        return Msg(synthetic_message(rng, i, **kw),
                   _FLAG_CHOICES[i % len(_FLAG_CHOICES)], _date(rng, i),
                   'synthetic-%d' % i)

    if size == 'many':
        per = per_folder or 100
        for f in (folders or ['INBOX', 'Archive/2023', 'Café']):
            out[f] = [synth(size=rng.choice([400, 1200, 3000, 9000]))
                      for _ in range(per)]
        return out

    full = size == 'full'
    per = per_folder or (6 if full else 2)
    for f in (folders or STANDARD_FOLDERS):
        out[f] = [] if f == 'Trash' else [
            synth(charset_body=(f != 'INBOX')) for _ in range(per)]
    inbox = out.setdefault('INBOX', [])
    # A double delivery: byte-identical, same flags and date.
    dup = synth()
    inbox.append(dup)
    inbox.append(Msg(dup.data, dup.flags, dup.date, dup.label + '-again'))
    # Same Message-ID, different bytes (a resent message).
    a = synthetic_message(rng, 9001, size=500)
    b = a.replace(b'Subject: ', b'Subject: Re-sent: ', 1)
    mid = b'Message-ID: <same-id@test.postino>'
    a = re.sub(rb'Message-ID: <[^>]*>', mid, a)
    b = re.sub(rb'Message-ID: <[^>]*>', mid, b)
    inbox.append(Msg(a, ('\\Seen',), _date(rng, 3), 'same-id-a'))
    inbox.append(Msg(b, (), _date(rng, 4), 'same-id-b'))
    # No Message-ID at all.
    n[0] += 1
    inbox.append(Msg(synthetic_message(rng, n[0], size=700,
                                       message_id=False),
                     ('\\Flagged', 'work'), _date(rng, 0), 'no-message-id'))
    real = realworld_files()
    if not full:
        real = real[::8]
    out['Real'] = []
    for i, p in enumerate(real):
        with open(p, 'rb') as fh:
            data = fh.read()
        out['Real'].append(Msg(data, _FLAG_CHOICES[i % len(_FLAG_CHOICES)],
                               _date(rng, i),
                               os.path.relpath(p, REALWORLD_DIR)))
    if full:
        out.setdefault('Archive/2023', []).append(
            Msg(large_message(20), ('\\Seen', '$Forwarded'),
                (calendar.timegm((2023, 6, 1, 8, 0, 0, 0, 0, 0)), 120),
                'large-20MB'))
    return out


def populate(server, user='alice', folders=None):
    """Create FOLDERS ({path: [Msg]}, default: the small corpus) in USER's
    account and append the messages, in order.  Returns the corpus."""
    if folders is None:
        folders = corpus('small')
    with server.connect(user) as c:
        for path, msgs in folders.items():
            if path.upper() != 'INBOX':
                c.create(path)
            for m in msgs:
                c.append(path, m.data, m.flags, m.date)
    return folders


def served_form(data):
    """The bytes Dovecot serves for DATA appended as-is: it stores a bare
    LF as a line end and serves every line end as CRLF, and it serves a NUL
    byte as 0x80."""
    data = re.sub(rb'(?<!\r)\n', b'\r\n', data)
    return data.replace(b'\0', b'\x80')


def expected_snapshot(folders):
    """The snapshot a Dovecot account should show after populate(FOLDERS)."""
    out = {}
    for path, msgs in folders.items():
        out[path] = sorted(((hashlib.sha256(served_form(m.data)).hexdigest(),
                             norm_flags(m.flags), m.date[0] if m.date else None)
                            for m in msgs), key=_sort_key)
    return out


# --------------------------------------------------------------------------
# Running postino

def postino_env(env_extra=None, passwords=('secret', 'secret'), home=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith('POSTINO_PASSWORD')
           and k not in ('POSTINO_TEST_EXIT_AFTER',)}
    if passwords:
        if passwords[0] is not None:
            env['POSTINO_PASSWORD1'] = passwords[0]
        if len(passwords) > 1 and passwords[1] is not None:
            env['POSTINO_PASSWORD2'] = passwords[1]
    # postino must write nothing outside what a test names: give it an
    # empty HOME and XDG dirs that the test can inspect.
    if home is None:
        home = _postino_home()
    env['HOME'] = home
    env['XDG_STATE_HOME'] = os.path.join(home, '.local', 'state')
    env['XDG_CONFIG_HOME'] = os.path.join(home, '.config')
    env['XDG_CACHE_HOME'] = os.path.join(home, '.cache')
    env['XDG_DATA_HOME'] = os.path.join(home, '.local', 'share')
    env.setdefault('LC_ALL', 'C.UTF-8')
    if env_extra:
        for k, v in env_extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = str(v)
    return env


_home = []


def _postino_home():
    if not _home:
        _home.append(make_tmpdir('home'))
    return _home[0]


def postino_home():
    """The HOME directory postino runs with (empty unless postino wrote)."""
    return _postino_home()


DEFAULT = object()


def postino_argv(args, ca_file=DEFAULT):
    argv = [POSTINO] + list(args)
    if ca_file is DEFAULT:
        ca_file = default_ca().ca_file
    if (ca_file and args and args[0] in ('plan', 'copy') and
            '--ca-file' not in args and '--help' not in args):
        argv += ['--ca-file', ca_file]
    return argv


def run_postino(args, env_extra=None, timeout=300, passwords=('secret',
                'secret'), ca_file=DEFAULT, echo=True):
    """Run postino ARGS; return subprocess.CompletedProcess (text output).

    Passwords go in POSTINO_PASSWORD1/2 (never argv); --ca-file names the
    test CA for plan/copy unless ca_file=None.  A run that outlives TIMEOUT
    is killed and reported as a failure.
    """
    argv = postino_argv(args, ca_file)
    if echo:
        log('$ ' + ' '.join(_shell_quote(a) for a in argv[1:]) +
            ('  [%s]' % ' '.join('%s=%s' % kv for kv in env_extra.items())
             if env_extra else ''))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=postino_env(env_extra, passwords),
                            start_new_session=True)
    holder = _ProcHolder(proc)
    _register(holder)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc, grace=1)
        out, err = proc.communicate()
        raise TestFailure('postino %s did not finish in %ds\nstdout:\n%s\n'
                          'stderr:\n%s' % (' '.join(args), timeout,
                                           _dec(out), _dec(err)))
    finally:
        _unregister(holder)
    r = subprocess.CompletedProcess(argv, proc.returncode, _dec(out),
                                    _dec(err))
    if echo:
        log('  -> exit %s' % r.returncode)
    return r


_out_dir = []


def start_postino(args, env_extra=None, passwords=('secret', 'secret'),
                  ca_file=DEFAULT, stdout=None, stderr=None):
    """Start postino in the background (own process group); the Popen is
    killed at exit if still running.  Unless STDOUT/STDERR are given, both
    go to a file whose text output_of(proc) returns."""
    argv = postino_argv(args, ca_file)
    log('$ ' + ' '.join(_shell_quote(a) for a in argv[1:]) + ' &')
    out = None
    if stdout is None and stderr is None:
        if not _out_dir:
            _out_dir.append(make_tmpdir('out'))
        fd, path = tempfile.mkstemp(prefix='postino-', suffix='.log',
                                    dir=_out_dir[0])
        out = os.fdopen(fd, 'wb')
        stdout = stderr = out
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                            stdout=stdout, stderr=stderr,
                            env=postino_env(env_extra, passwords),
                            start_new_session=True)
    proc.output_path = None
    if out is not None:
        out.close()
        proc.output_path = path
    _register(_ProcHolder(proc))
    return proc


def output_of(proc, tail=40):
    """The last TAIL lines a start_postino() process printed."""
    path = getattr(proc, 'output_path', None)
    if not path:
        return ''
    with open(path, 'rb') as f:
        lines = _dec(f.read()).splitlines()
    return '\n'.join(lines[-tail:])


class _ProcHolder:
    def __init__(self, proc):
        self.proc = proc

    def stop(self):
        if self.proc.poll() is None:
            kill_group(self.proc, grace=1)

    def __eq__(self, other):
        return isinstance(other, _ProcHolder) and other.proc is self.proc

    def __repr__(self):
        return '<process %d>' % self.proc.pid


def _dec(b):
    return b.decode('utf-8', 'replace') if b is not None else ''


def _shell_quote(s):
    if re.match(r'^[\w@%+=:,./-]+$', s):
        return s
    return "'" + s.replace("'", "'\\''") + "'"


def show(r, what='postino'):
    """Text of a CompletedProcess for a failure message."""
    return '%s exit %s\n--- stdout:\n%s--- stderr:\n%s' % (
        what, r.returncode, r.stdout, r.stderr)


SUMMARY_RE = re.compile(
    r'copied (\d+) messages? \((\d+) bytes?\), (\d+) flag updates?, '
    r'(\d+) refused, (\d+) already there')


def summary(r):
    """Parse copy's summary line -> dict(copied, bytes, flags, refused,
    already) or None when there is none.  The last matching line counts."""
    found = None
    for line in r.stdout.splitlines():
        m = SUMMARY_RE.search(line)
        if m:
            found = dict(zip(('copied', 'bytes', 'flags', 'refused',
                              'already'), map(int, m.groups())))
    return found


def expect_exit(r, code, what):
    check(r.returncode == code, '%s: exit %d' % (what, code), show(r))


def one_line_error(r):
    """True when stderr holds exactly one non-empty line."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    return len(lines) == 1


# --------------------------------------------------------------------------
# Changing an account through imaplib (two-way tests: mirror)
#
# They take an ImapClient (server.connect()), so that several changes can
# share one connection, and address messages by their bytes: a message is
# the one whose served bytes hash to sha256_of(DATA).

def sha256_of(data):
    """The snapshot hash of a message appended as DATA."""
    return hashlib.sha256(served_form(data)).hexdigest()


def uids_of(client, path, data=None, sha=None):
    """Sorted UIDs of the messages of PATH whose bytes are DATA (or whose
    served bytes hash to SHA)."""
    if sha is None:
        sha = sha256_of(data)
    return [uid for uid, body, fl, d in client.messages(path)
            if hashlib.sha256(body).hexdigest() == sha]


def _uid_set(uids):
    uids = sorted(set(int(u) for u in uids))
    if not uids:
        raise ValueError('no UIDs')
    return ','.join(str(u) for u in uids)


def expunge_uids(client, path, uids):
    """Remove exactly UIDS from PATH (\\Deleted, then UID EXPUNGE of those
    UIDs only: other messages flagged \\Deleted stay)."""
    client.select(path, readonly=False)
    s = _uid_set(uids)
    client._ok(*client.imap.uid('STORE', s, '+FLAGS.SILENT', '(\\Deleted)'),
               what='STORE \\Deleted')
    client._ok(*client.imap.uid('EXPUNGE', s), what='UID EXPUNGE')


def move_uids(client, src, dst, uids):
    """UID MOVE UIDS from SRC to DST (keeps bytes, flags, INTERNALDATE)."""
    client.select(src, readonly=False)
    client._ok(*client.imap.uid('MOVE', _uid_set(uids),
                                imap_quote(client.server_name(dst))),
               what='UID MOVE')


def folder_status(server, user='alice'):
    """{path: (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, MESSAGES)} of every
    selectable folder (HIGHESTMODSEQ 0 without CONDSTORE)."""
    out = {}
    with server.connect(user) as c:
        for path in c.folders():
            typ, data = c.imap.status(
                imap_quote(c.server_name(path)),
                '(UIDVALIDITY UIDNEXT MESSAGES HIGHESTMODSEQ)'
                if server.condstore else '(UIDVALIDITY UIDNEXT MESSAGES)')
            c._ok(typ, data, 'STATUS %s' % path)
            text = b' '.join(x for x in data if isinstance(x, bytes)).decode(
                'utf-8', 'replace')

            def num(key):
                m = re.search(key + r' (\d+)', text)
                return int(m.group(1)) if m else 0
            out[path] = (num('UIDVALIDITY'), num('UIDNEXT'),
                         num('HIGHESTMODSEQ'), num('MESSAGES'))
    return out


def wait_until(predicate, timeout, interval=0.25):
    """Poll PREDICATE() until it returns a true value or TIMEOUT seconds
    pass; returns (value, seconds waited)."""
    t0 = time.monotonic()
    while True:
        v = predicate()
        waited = time.monotonic() - t0
        if v or waited >= timeout:
            return v, waited
        time.sleep(interval)


def track(obj):
    """Have OBJ (anything with .stop(): a faultproxy, a fake server) stopped
    with the harness's own servers at exit, even on failure; returns OBJ."""
    install_signal_handlers()
    _register(obj)
    return obj
