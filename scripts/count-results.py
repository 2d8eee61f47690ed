#!/usr/bin/env python3
"""count-results.py [LABEL=]TESTLOG... — print 'N passed, N failed' over
meson's testlog.json files (one JSON object a line).  OK and EXPECTEDFAIL
pass; FAIL, TIMEOUT, ERROR, UNEXPECTEDPASS and SKIP fail.  Exit 1 if any
failed or none ran."""

import json
import sys

PASS = {'OK', 'EXPECTEDFAIL'}


def main(args):
    passed = failed = 0
    names = []
    for arg in args:
        label, _, path = arg.rpartition('=')
        try:
            with open(path) as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    t = json.loads(line)
                    name = '%s%s' % (label + ':' if label else '', t.get('name'))
                    if t.get('result') in PASS:
                        passed += 1
                    else:
                        failed += 1
                        names.append('%s (%s)' % (name, t.get('result')))
        except OSError as e:
            print('no test log: %s' % e)
            failed += 1
    if names:
        print('failed: ' + ', '.join(names))
    print('%d passed, %d failed' % (passed, failed))
    return 1 if failed or not passed else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:] or ['build/meson-logs/testlog.json']))
