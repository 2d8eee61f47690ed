#!/usr/bin/env python3
"""test_jobfile — job files (--job), presets (--preset), help and install.

Proves, with the real binary and real Dovecot servers:
  - `postino copy --job FILE` runs a whole job from the file alone: both
    accounts (one as url, one as user/host/port), passwords from a passfile
    (relative to the job file) and a passcmd, a folder rule, a state file
    (relative to the job file), options; the copy is exact less the
    excluded folder; a rerun copies nothing; `verify --job` and `status
    --job` use the same job; `plan --job` shows it;
  - the command line overrides the file: --state, the URLs, --folder;
  - errors name the file and the line: an unknown key (with a suggestion),
    a password in the file (refused, never echoed), a bad number; exit 2
    with one line on stderr, before any connection;
  - presets: every shipped preset loads; an unknown one is refused with the
    list of known ones; --preset gmail leaves "[Gmail]/All Mail" out of the
    plan; a preset named in an account section gives its server (host,
    port) to `user = ...`;
  - `mirror --job` runs a two-way job from a file;
  - `postino --help` and each COMMAND --help name verify, --job, --preset;
  - `meson install` puts the binary, postino(1), the bash completion and the
    presets in their places; the completion completes commands, options and
    preset names.
"""

import os
import re
import shutil
import subprocess

import harness as h
from harness import check

PLANS = os.path.join(h.SOURCE_ROOT, 'plans')
ENV = {'POSTINO_PLANS_DIR': PLANS}
NO_PW = (None, None)


def write(path, text, mode=0o600):
    with open(path, 'w') as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def job_text(src, dst, extra_options=''):
    return ('# a test job\n'
            '[source]\n'
            'user = alice\n'
            'host = localhost\n'
            'port = %d\n'
            'passfile = src.pass\n'
            '\n'
            '[destination]\n'
            'url = %s\n'
            'passcmd = echo secret\n'
            '\n'
            '[folders]\n'
            'exclude = Junk\n'
            '\n'
            '[options]\n'
            'state = job.db\n'
            'ca-file = %s\n'
            'jobs = 2\n'
            'batch = 7\n%s' % (src.imaps_port, dst.url(), h.default_ca().ca_file,
                               extra_options))


def copy_by_job(src, dst, tmp):
    jobdir = os.path.join(tmp, 'jobs')
    os.makedirs(jobdir)
    write(os.path.join(jobdir, 'src.pass'), 'secret\n')
    job = write(os.path.join(jobdir, 'job.ini'), job_text(src, dst))
    want = {f: v for f, v in h.snapshot(src).items() if f != 'Junk'}

    r = h.run_postino(['plan', '--job', job], passwords=NO_PW)
    h.expect_exit(r, 0, 'plan --job')
    check(re.search(r'^Junk\s.*skip', r.stdout, re.M) and
          re.search(r'^Café\s+Café', r.stdout, re.M),
          'plan --job: the job\'s folder rule shows (Junk skipped)', h.show(r))

    r = h.run_postino(['copy', '--job', job], passwords=NO_PW)
    h.expect_exit(r, 0, 'copy --job (accounts, passwords, rules from the file)')
    got = h.snapshot(dst)
    got.pop('Junk', None)   # the destination's own (empty) special folder
    h.check_same(want, got, 'copy --job: exact copy less the excluded Junk')
    check(not h.snapshot(dst).get('Junk'),
          'copy --job: nothing copied into Junk')
    check(os.path.exists(os.path.join(jobdir, 'job.db')),
          'copy --job: the state file is where the job says (relative to the '
          'job file, not the working directory)')
    s = h.summary(r)
    check(s and s['copied'] == h.total(want), 'copy --job: summary copied %d'
          % h.total(want), h.show(r))

    r = h.run_postino(['copy', '--job', job], passwords=NO_PW)
    h.expect_exit(r, 0, 'copy --job rerun')
    check(h.summary(r)['copied'] == 0, 'copy --job rerun: copied 0',
          h.show(r))

    r = h.run_postino(['verify', '--job', job], passwords=NO_PW)
    h.expect_exit(r, 0, 'verify --job (the job\'s rules: Junk not expected)')
    check('ALL THERE' in r.stdout and re.search(r'Junk: skipped', r.stdout),
          'verify --job: ALL THERE, Junk skipped as in the copy', r.stdout)

    r = h.run_postino(['status', '--job', job], passwords=NO_PW)
    h.expect_exit(r, 0, 'status --job')
    check(os.path.join(jobdir, 'job.db') in r.stdout and 'INBOX -> INBOX' in
          r.stdout, 'status --job: the job\'s state file', r.stdout)
    return job, jobdir


def overrides(src, dst, job, jobdir, tmp):
    db = os.path.join(jobdir, 'job.db')
    with open(db, 'rb') as f:
        before = f.read()
    other = os.path.join(tmp, 'other.db')
    r = h.run_postino(['copy', '--job', job, '--state', other],
                      passwords=NO_PW)
    h.expect_exit(r, 0, 'copy --job --state OTHER')
    check(os.path.exists(other), 'the command line\'s --state is used')
    with open(db, 'rb') as f:
        check(f.read() == before, 'the job file\'s state is left alone')

    r = h.run_postino(['plan', '--job', job, src.url(), dst.url('carol')],
                      passwords=NO_PW)
    h.expect_exit(r, 0, 'plan --job SRC DST (URLs on the command line)')
    check(('-> %s' % dst.url('carol')) in r.stdout.splitlines()[0],
          'the command line\'s URLs win over the job\'s', r.stdout)

    r = h.run_postino(['plan', '--job', job, '--folder', 'Café'],
                      passwords=NO_PW)
    h.expect_exit(r, 0, 'plan --job --folder Café')
    check(re.search(r'^Café\s+Café\s.*copy', r.stdout, re.M) and
          re.search(r'^INBOX\s.*skip', r.stdout, re.M),
          'a --folder on the command line adds to the job\'s rules', r.stdout)


def errors(tmp):
    bad = os.path.join(tmp, 'bad.ini')
    cases = [
        ('[options]\njobs = 2\nfoldr = Archive\n',
         "%s:3: unknown key 'foldr' (did you mean 'folder'?)"),
        ('[source]\nurl = imaps://a@localhost:1\n\npassword = hunter2\n',
         '%s:4: a password in a job file is refused'),
        ('# x\n\n[options]\n\njobs = lots\n',
         "%s:5: jobs = 'lots': expected a number from 1 to 64"),
        ('[options]\nskip-duplicates = perhaps\n',
         "%s:2: skip-duplicates = 'perhaps': expected yes or no"),
    ]
    for text, want in cases:
        write(bad, text)
        for cmd in ('copy', 'verify'):
            r = h.run_postino([cmd, '--job', bad, 'imaps://a@localhost:1',
                               'imaps://b@localhost:1'], passwords=NO_PW)
            h.expect_exit(r, 2, '%s --job with an error' % cmd)
            check(h.one_line_error(r) and (want % bad) in r.stderr and
                  'hunter2' not in r.stderr + r.stdout,
                  '%s --job: "%s"' % (cmd, want % 'bad.ini'), h.show(r))
    r = h.run_postino(['copy', '--job', os.path.join(tmp, 'none.ini')])
    h.expect_exit(r, 2, 'copy --job with a missing file')
    check('none.ini: No such file or directory' in r.stderr,
          'a missing job file is named', r.stderr)


def presets(src, dst, tmp):
    for name in ('gmail', 'outlook', 'office365', 'yahoo', 'icloud',
                 'fastmail', 'dovecot'):
        r = h.run_postino(['plan', src.url(), dst.url(), '--preset', name],
                          env_extra=ENV)
        h.expect_exit(r, 0, 'plan --preset %s (loads; its options apply)'
                      % name)
    r = h.run_postino(['plan', src.url(), dst.url(), '--preset', 'gmial'],
                      env_extra=ENV)
    h.expect_exit(r, 2, 'plan --preset gmial')
    check("unknown preset 'gmial' (known: dovecot, fastmail, gmail, icloud, "
          "office365, outlook, yahoo)" in r.stderr,
          'an unknown preset is refused with the list of known ones', r.stderr)

    # Gmail's virtual folders by name: left out by --preset gmail
    g = h.Dovecot(layout='fs', name='gmailish')
    small = h.corpus('small')
    h.populate(g, 'alice', {'INBOX': small['INBOX'][:2],
                            '[Gmail]/All Mail': small['INBOX'][:2],
                            '[Gmail]/Starred': small['INBOX'][:1]})
    r = h.run_postino(['plan', g.url(), dst.url('carol')], env_extra=ENV)
    h.expect_exit(r, 0, 'plan of a Gmail-like account without the preset')
    check(re.search(r'^\[Gmail\]/All Mail\s.*copy', r.stdout, re.M),
          'without the preset, [Gmail]/All Mail would be copied', r.stdout)
    r = h.run_postino(['plan', g.url(), dst.url('carol'), '--preset',
                       'gmail'], env_extra=ENV)
    h.expect_exit(r, 0, 'plan --preset gmail')
    check(re.search(r'^\[Gmail\]/All Mail\s.*skip', r.stdout, re.M) and
          re.search(r'^\[Gmail\]/Starred\s.*skip', r.stdout, re.M) and
          re.search(r'^INBOX\s.*copy', r.stdout, re.M),
          '--preset gmail: [Gmail]/All Mail and Starred skipped, INBOX '
          'copied', r.stdout)
    g.stop()

    # a preset of one's own that names the server: `user =` is enough
    mine = os.path.join(tmp, 'myplans')
    os.makedirs(mine)
    write(os.path.join(mine, 'local.ini'),
          '# the test server\n[server]\nhost = localhost\nport = %d\n'
          '[options]\njobs = 1\n' % src.imaps_port)
    job = write(os.path.join(tmp, 'preset-job.ini'),
                '[source]\npreset = local\nuser = alice\n'
                '[destination]\nurl = %s\n[options]\nstate = preset.db\n'
                % dst.url('dave'))
    r = h.run_postino(['copy', '--job', job],
                      env_extra={'POSTINO_PLANS_DIR': mine})
    h.expect_exit(r, 0, 'copy --job with [source] preset = local, user = alice')
    h.check_same(h.snapshot(src), h.snapshot(dst, 'dave'),
                 'the preset\'s server (host, port) made the source URL; '
                 'exact copy')


def mirror_job(tmp):
    a = h.Dovecot(layout='fs', name='mir-a')
    b = h.Dovecot(layout='maildir++', name='mir-b')
    small = h.corpus('small')
    h.populate(a, 'alice', {'INBOX': small['INBOX'][:3]})
    h.populate(b, 'alice', {'Café': small['Café'][:2]})
    job = write(os.path.join(tmp, 'mirror.ini'),
                '[a]\nurl = %s\n[b]\nurl = %s\n[options]\nstate = mirror.db\n'
                'ca-file = %s\nmax-delete = 10\n' % (
                    a.url(), b.url(), h.default_ca().ca_file))
    r = h.run_postino(['mirror', '--job', job])
    h.expect_exit(r, 0, 'mirror --job')
    sa, sb = h.snapshot(a), h.snapshot(b)
    check(len(sa['Café']) == 2 and len(sb['INBOX']) == 3 and
          not h.diff_snapshots(sa, sb),
          'mirror --job: both accounts hold the union', h.diff_snapshots(sa,
                                                                        sb))
    a.stop()
    b.stop()


def help_texts():
    r = h.run_postino(['--help'])
    h.expect_exit(r, 0, 'postino --help')
    check('verify SRC DST' in r.stdout and '--job FILE' in r.stdout and
          '--preset NAME' in r.stdout, 'postino --help names verify, --job, '
          '--preset', r.stdout)
    for cmd in ('copy', 'plan', 'mirror', 'verify'):
        r = h.run_postino([cmd, '--help'])
        h.expect_exit(r, 0, '%s --help' % cmd)
        check('--job FILE' in r.stdout and '--preset NAME' in r.stdout and
              len(r.stdout.splitlines()) <= 50,
              '%s --help: short, names --job and --preset' % cmd, r.stdout)


def install(tmp):
    build = os.path.dirname(h.POSTINO)
    meson = shutil.which('meson')
    if not meson or not os.path.exists(os.path.join(build, 'build.ninja')):
        check(False, 'meson and the build directory of %s are there' %
              h.POSTINO)
    dest = os.path.join(tmp, 'destdir')
    r = subprocess.run([meson, 'install', '-C', build, '--no-rebuild',
                        '--destdir', dest], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    check(r.returncode == 0, 'meson install --destdir', r.stdout.decode(
        errors='replace')[-3000:])
    files = []
    for root, dirs, names in os.walk(dest):
        files += [os.path.relpath(os.path.join(root, n), dest) for n in names]

    def one(suffix):
        hits = [f for f in files if f.endswith(suffix)]
        check(len(hits) == 1, 'installed: .../%s' % suffix, sorted(files))
        return os.path.join(dest, hits[0])

    binary = one('bin/postino')
    check(os.access(binary, os.X_OK), 'the installed binary is executable')
    man = one('share/man/man1/postino.1')
    with open(man) as f:
        text = f.read()
    check(re.search(r'^\.TH POSTINO 1 ', text, re.M) and
          '.SH EXIT STATUS' in text and '.SH JOB FILES' in text and
          '.B verify' in text and r'\-\-job' in text,
          'postino(1) is a man page that covers verify and --job')
    comp = one('share/bash-completion/completions/postino')
    for p in ('gmail', 'outlook', 'office365', 'yahoo', 'icloud', 'fastmail',
              'dovecot'):
        one('share/postino/plans/%s.ini' % p)
    one('share/doc/postino/examples/example-gmail-to-fastmail.ini')
    one('share/doc/postino/jobfiles.md')

    # the completion: commands, options of a command, preset names
    plans_dir = os.path.dirname(one('share/postino/plans/gmail.ini'))

    def complete(words):
        script = ('source %s\nCOMP_WORDS=(%s)\nCOMP_CWORD=%d\n'
                  '_postino\nprintf "%%s\\n" "${COMPREPLY[@]}"\n' % (
                      h._shell_quote(comp),
                      ' '.join(h._shell_quote(w) for w in words),
                      len(words) - 1))
        r = subprocess.run(['bash', '-c', script], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                           env=dict(os.environ, POSTINO_PLANS_DIR=plans_dir))
        check(r.returncode == 0, 'completion runs: %s' % ' '.join(words),
              r.stderr.decode(errors='replace'))
        return set(r.stdout.decode().split())

    got = complete(['postino', ''])
    check({'plan', 'copy', 'mirror', 'verify', 'status'} <= got,
          'completion: the commands', got)
    got = complete(['postino', 'verify', '--d'])
    check('--deep' in got, 'completion: verify --d -> --deep', got)
    got = complete(['postino', 'copy', '--preset', ''])
    check({'gmail', 'outlook', 'dovecot'} <= got,
          'completion: --preset names the installed presets', got)


def run():
    tmp = h.make_tmpdir('jobfile')
    src = h.Dovecot(layout='fs', name='src')
    dst = h.Dovecot(layout='maildir++', name='dst',
                    users={'alice': 'secret', 'carol': 'secret',
                           'dave': 'secret'})
    small = h.corpus('small')
    h.populate(src, 'alice', {f: small[f] for f in
                              ('INBOX', 'Sent', 'Junk', 'Café',
                               'Archive/2023')})
    help_texts()
    errors(tmp)
    job, jobdir = copy_by_job(src, dst, tmp)
    overrides(src, dst, job, jobdir, tmp)
    presets(src, dst, tmp)
    mirror_job(tmp)
    install(tmp)


if __name__ == '__main__':
    h.main(run)
