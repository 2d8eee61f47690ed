#!/usr/bin/env python3
"""test_tls — postino verifies certificates and insists on TLS.

Servers with a good certificate (from the test CA) and with each bad one:
self-signed, wrong host name, expired, not yet valid, signed by an unknown
CA; and a server without TLS at all.  Proves:
  - imaps with --ca-file of the test CA works (copy exact), also when the
    URL names 127.0.0.1 (IP subjectAltName);
  - without --ca-file the test CA is not trusted: exit 6;
  - every bad certificate, on imaps and on STARTTLS, as source or as
    destination: exit 6, stderr names the problem, nothing written;
  - imap:// upgrades with STARTTLS and works;
  - imap:// to a server that offers no STARTTLS: exit 6 (no silent
    plaintext);
  - ?tls=none works against a server that allows plaintext.
"""

import os
import re

import harness as h
from harness import check

PROBLEM = {
    'selfsigned': r'self[- ]?signed|issuer|not trusted|untrusted|unknown|'
                  r'signer',
    'wronghost': r'host ?name|does not match|mismatch|wrong\.example|'
                 r'name in the certificate',
    'expired': r'expired',
    'notyetvalid': r'not (yet )?(valid|activated)|not been activated|'
                   r'future|activation|before',
    'unknownca': r'issuer|not trusted|untrusted|unknown|signer',
}
TLS_WORDS = r'certificate|tls|ssl'


def copy(tmp, src_url, dst_url, tag, **kw):
    state = os.path.join(tmp, re.sub(r'\W+', '_', tag) + '.db')
    return h.run_postino(['copy', src_url, dst_url, '--state', state,
                          '--timeout', '30'], timeout=120, **kw)


def run():
    tmp = h.make_tmpdir('tls')
    ca = h.default_ca()
    users = {u: 'secret' for u in ('alice', 'bob', 'bob2', 'bob3', 'bob4',
                                   'bob5', 'carol')}
    good = h.Dovecot(users=users, name='good')
    bad = {k: h.Dovecot(cert=k, name=k) for k in PROBLEM}
    plain = h.Dovecot(ssl=False, starttls=False, plaintext=True,
                      users={'alice': 'secret', 'dave': 'secret'},
                      name='plain')
    corpus = {'INBOX': h.corpus('small')['INBOX'][:3],
              'Café': h.corpus('small')['Café']}
    for srv in [good, plain] + list(bad.values()):
        h.populate(srv, 'alice', corpus)
    want = h.snapshot(good)

    # Good certificate, verified with the test CA.
    r = copy(tmp, good.url('alice'), good.url('bob'), 'good imaps')
    h.expect_exit(r, 0, 'imaps with --ca-file')
    h.check_same(want, h.snapshot(good, 'bob'), 'imaps copy is exact')
    r = copy(tmp, good.url('alice', host='127.0.0.1'),
             good.url('bob4', host='127.0.0.1'), 'good imaps by IP')
    h.expect_exit(r, 0, 'imaps to 127.0.0.1 (certificate has the IP)')
    h.check_same(want, h.snapshot(good, 'bob4'), 'copy by IP is exact')

    # STARTTLS.
    r = copy(tmp, good.url('alice', scheme='imap'),
             good.url('bob2', scheme='imap'), 'good starttls')
    h.expect_exit(r, 0, 'imap:// with STARTTLS')
    h.check_same(want, h.snapshot(good, 'bob2'), 'STARTTLS copy is exact')

    # Without --ca-file the test CA is unknown.
    r = copy(tmp, good.url('alice'), good.url('bob3'), 'no ca file',
             ca_file=None)
    h.expect_exit(r, 6, 'imaps without --ca-file (test CA not trusted)')
    check(re.search(TLS_WORDS, r.stderr, re.I),
          'stderr speaks of the certificate', h.show(r))
    check(h.total(h.snapshot(good, 'bob3')) == 0,
          'nothing copied without a trusted certificate')

    # Each bad certificate: as source (imaps and STARTTLS), and as
    # destination (imaps).
    for kind, srv in bad.items():
        for scheme in ('imaps', 'imap'):
            r = copy(tmp, srv.url('alice', scheme=scheme),
                     good.url('carol'), '%s %s src' % (kind, scheme))
            h.expect_exit(r, 6, '%s certificate, %s source' % (kind, scheme))
            check(re.search(PROBLEM[kind], r.stderr, re.I) and
                  re.search(TLS_WORDS, r.stderr, re.I),
                  '%s (%s): stderr names the problem: %s' % (
                      kind, scheme, r.stderr.strip()[:160]), h.show(r))
        r = copy(tmp, good.url('alice'), srv.url('alice'), kind + ' dst')
        h.expect_exit(r, 6, '%s certificate, destination' % kind)
        check(re.search(PROBLEM[kind], r.stderr, re.I),
              '%s destination: stderr names the problem' % kind, h.show(r))
    check(h.total(h.snapshot(good, 'carol')) == 0,
          'nothing was copied from any bad server')
    for kind, srv in bad.items():
        h.check_same(want, h.snapshot(srv), 'bad %s destination untouched'
                     % kind, ('expected', kind))

    # No STARTTLS offered: refuse, do not fall back to plaintext.
    r = copy(tmp, plain.url('alice', scheme='imap'), good.url('carol'),
             'no starttls src')
    h.expect_exit(r, 6, 'imap:// source without STARTTLS')
    check(re.search(r'starttls', r.stderr, re.I),
          'stderr says STARTTLS is missing', h.show(r))
    r = copy(tmp, good.url('alice'), plain.url('dave', scheme='imap'),
             'no starttls dst')
    h.expect_exit(r, 6, 'imap:// destination without STARTTLS')
    check(h.total(h.snapshot(plain, 'dave')) == 0,
          'nothing written to the destination without STARTTLS')

    # Explicit plaintext.
    r = copy(tmp, plain.url('alice', scheme='imap', tls='none'),
             good.url('bob5'), 'tls none')
    h.expect_exit(r, 0, 'imap://...?tls=none against a plaintext server')
    h.check_same(h.snapshot(plain), h.snapshot(good, 'bob5'),
                 '?tls=none copy is exact')


if __name__ == '__main__':
    h.main(run)
