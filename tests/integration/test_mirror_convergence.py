#!/usr/bin/env python3
"""test_mirror_convergence — random changes on both sides, mirrored: the
accounts always end equal to what the rules say, and a second run is a
no-op.

A: Dovecot maildir LAYOUT=fs; B: maildir++ with the personal namespace
prefix 'INBOX.' (Courier/Cyrus-like), both over imaps.

Round 0 fills both accounts (messages of their own, byte-identical messages
on both with different flags, folders on one side only) and mirrors them:
the union.  Each later round applies random operations to both sides
through imaplib: APPEND, flag and keyword changes (\\Deleted included),
expunge, UID MOVE between folders, CREATE of nested and non-ASCII folders;
some rounds also expunge on one side a message whose flags the other side
changed (kept: exit 1) or the same message on both sides.  A model of the
accounts predicts the result of the rules (three-way flag merge, deletions
propagated, change beats deletion, moves, new folders).  After the mirror
run: A == B == the model, the exit code is the predicted one, and a further
run exits 0 and changes nothing (same UIDs).  Some rounds are first
interrupted (POSTINO_TEST_EXIT_AFTER=N or SIGKILL at a random moment); the
next run must still reach the same result.

The seed is printed; POSTINO_TEST_SEED=N replays a run, POSTINO_TEST_ROUNDS
sets the number of rounds (default 8).
"""

import calendar
import os
import random
import signal
import time

import harness as h
from harness import check

FLAG_POOL = ['\\Seen', '\\Flagged', '\\Answered', '\\Draft', '\\Deleted',
             '$Forwarded', '$Label1', 'work', 'todo']
SPELLING = {f.lower(): f for f in FLAG_POOL}
FOLDER_POOL = ['Arbeit', 'Arbeit/Kunden', 'Reisen', 'Privat/Fotos',
               'Ünïcödé', '日本/旅行', 'mit Leerzeichen', 'Archiv/2023/Q4']


class World:
    """An account as the model sees it: {folder: {mid: [flags, epoch]}}."""

    def __init__(self, folders=None):
        self.f = folders if folders is not None else {'INBOX': {}}

    def copy(self):
        return World({f: {m: [set(v[0]), v[1]] for m, v in msgs.items()}
                      for f, msgs in self.f.items()})

    def locate(self, mid):
        for f, msgs in self.f.items():
            if mid in msgs:
                return f
        return None

    def all(self):
        return [(f, m) for f in sorted(self.f) for m in sorted(self.f[f])]


def merge_flags(base, a, b):
    out = set()
    for fl in base | a | b:
        if (fl in a) != (fl in base):
            on = fl in a
        elif (fl in b) != (fl in base):
            on = fl in b
        else:
            on = fl in base
        if on:
            out.add(fl)
    return out


def merge(base, a, b):
    """The mirror rules -> (result World, number of kept conflicts)."""
    out = World({})
    conflicts = 0
    for f in sorted(set(a.f) | set(b.f)):
        out.f[f] = {}
        bm = base.f.get(f, {})
        am = a.f.get(f, {})
        bbm = b.f.get(f, {})
        for mid in set(bm) | set(am) | set(bbm):
            known = mid in bm
            if mid in am and mid in bbm:
                if known:
                    fl = merge_flags(bm[mid][0], am[mid][0], bbm[mid][0])
                else:
                    fl = am[mid][0] | bbm[mid][0]
                out.f[f][mid] = [fl, am[mid][1]]
            elif mid in am or mid in bbm:
                side = am if mid in am else bbm
                if not known:
                    out.f[f][mid] = [set(side[mid][0]), side[mid][1]]
                elif side[mid][0] != bm[mid][0]:
                    out.f[f][mid] = [set(side[mid][0]), side[mid][1]]
                    conflicts += 1          # deleted there, changed here
                # else: deleted on the other side, unchanged here: gone
    return out, conflicts


class Messages:
    """mid -> bytes, unique per mid."""

    def __init__(self, rng, seed):
        self.rng = rng
        self.seed = seed
        self.data = {}
        self.sha = {}
        self.n = 0

    def new(self):
        self.n += 1
        mid = self.n
        rng = self.rng
        body = h.synthetic_message(rng, mid, size=rng.choice([300, 700,
                                                              1500, 4000]),
                                   charset_body=rng.random() < 0.3,
                                   message_id=False)
        head, rest = body.split(b'\r\n', 1)
        data = head + b'\r\nMessage-ID: <conv-%d-%d@test.postino>\r\n' % (
            self.seed, mid) + rest
        self.data[mid] = data
        self.sha[mid] = h.sha256_of(data)
        epoch = calendar.timegm((2015, 1, 1, 0, 0, 0, 0, 0, 0)) + \
            rng.randint(0, 9 * 365 * 86400)
        return mid, epoch

    def snapshot(self, world):
        return {f: sorted(((self.sha[m], frozenset(v[0]), v[1])
                           for m, v in msgs.items()),
                          key=lambda t: (t[0], sorted(t[1]), t[2]))
                for f, msgs in world.f.items()}


def random_flags(rng, k=None):
    k = rng.choice([0, 0, 1, 1, 2, 3]) if k is None else k
    return set(f.lower() for f in rng.sample(FLAG_POOL, k))


def spelled(flags):
    return [SPELLING[f] for f in sorted(flags)]


class Side:
    def __init__(self, name, server, world):
        self.name = name
        self.server = server
        self.world = world
        self.conn = None

    def c(self):
        if self.conn is None:
            self.conn = self.server.connect()
        return self.conn

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def uid(self, folder, mid, msgs):
        uids = h.uids_of(self.c(), folder, sha=msgs.sha[mid])
        if len(uids) != 1:
            raise h.TestFailure('test: %s has %d copies of message %d in %s'
                                % (self.name, len(uids), mid, folder))
        return uids[0]


def initial(rng, msgs, sides):
    """Round 0: each side's own content, and shared identical messages."""
    a, b = sides
    a.world = World({'INBOX': {}, 'Arbeit': {}, 'Reisen': {}})
    b.world = World({'INBOX': {}, 'Arbeit': {}, 'Privat/Fotos': {}})
    for s in sides:
        for f in s.world.f:
            if f != 'INBOX':
                s.c().create(f)
    common = ['INBOX', 'Arbeit']
    for _ in range(5):                  # identical on both, flags differ
        mid, epoch = msgs.new()
        f = rng.choice(common)
        for s in sides:
            fl = random_flags(rng)
            s.c().append(f, msgs.data[mid], spelled(fl), (epoch, 0))
            s.world.f[f][mid] = [fl, epoch]
    for s in sides:
        for _ in range(6):
            mid, epoch = msgs.new()
            f = rng.choice(sorted(s.world.f))
            fl = random_flags(rng)
            s.c().append(f, msgs.data[mid], spelled(fl),
                         (epoch, rng.choice([0, 120, -300])))
            s.world.f[f][mid] = [fl, epoch]
    for s in sides:
        s.close()


def random_round(rng, msgs, sides, rnd):
    """Apply random operations to both sides; returns the list done."""
    a, b = sides
    other = {'A': b, 'B': a}
    touched = {}        # mid -> set of sides that did anything to it
    flagged = {}        # mid -> set of sides that changed its flags
    moved = {}          # mid -> side that moved it
    done = []
    plan = [a] * rng.randint(2, 8) + [b] * rng.randint(2, 8)
    rng.shuffle(plan)
    # Now and then, on purpose: the same message expunged on one side and
    # changed on the other (kept), or expunged on both.
    special = rng.random()
    known = [(f, m) for f, m in a.world.all() if b.world.locate(m) == f]
    if known and special < 0.3:
        f, m = rng.choice(known)
        x, y = rng.sample(sides, 2)
        fl = rng.choice(FLAG_POOL).lower()
        op = '-FLAGS' if fl in y.world.f[f][m][0] else '+FLAGS'
        y.c().uid_store(f, y.uid(f, m, msgs), op, [SPELLING[fl]])
        y.world.f[f][m][0] ^= {fl}
        h.expunge_uids(x.c(), f, [x.uid(f, m, msgs)])
        del x.world.f[f][m]
        touched[m] = {'A', 'B'}
        flagged[m] = {y.name}
        done.append('%s expunge %s #%d, %s %s %s #%d (conflict)' % (
            x.name, f, m, y.name, op, SPELLING[fl], m))
    elif known and special < 0.4:
        f, m = rng.choice(known)
        for s in sides:
            h.expunge_uids(s.c(), f, [s.uid(f, m, msgs)])
            del s.world.f[f][m]
        touched[m] = {'A', 'B'}
        done.append('A and B expunge %s #%d' % (f, m))

    for s in plan:
        y = other[s.name]
        kind = rng.choice(['append'] * 3 + ['flags'] * 4 + ['expunge'] * 2 +
                          ['move'] * 2 + ['create'])
        if kind == 'create':
            choices = [f for f in FOLDER_POOL if f not in s.world.f]
            if not choices:
                continue
            f = rng.choice(choices)
            s.c().create(f)
            s.world.f[f] = {}
            done.append('%s create %s' % (s.name, f))
            continue
        if kind == 'append':
            mid, epoch = msgs.new()
            f = rng.choice(sorted(s.world.f))
            fl = random_flags(rng)
            s.c().append(f, msgs.data[mid], spelled(fl),
                         (epoch, rng.choice([0, 60, -420])))
            s.world.f[f][mid] = [fl, epoch]
            touched[mid] = {s.name}
            done.append('%s append %s #%d %s' % (s.name, f, mid,
                                                 sorted(fl)))
            continue
        cands = []
        for f, m in s.world.all():
            if moved.get(m) == y.name:
                continue        # the other side moved it: leave it alone
            if kind == 'flags' and s.name in flagged.get(m, ()):
                continue        # one net change per side and round
            if kind == 'move' and (y.name in touched.get(m, ()) or
                                   m in moved):
                continue        # a move only of what the other side left
            cands.append((f, m))
        if not cands:
            continue
        f, m = rng.choice(cands)
        uid = s.uid(f, m, msgs)
        if kind == 'flags':
            fl = rng.choice(FLAG_POOL).lower()
            op = '-FLAGS' if fl in s.world.f[f][m][0] else '+FLAGS'
            s.c().uid_store(f, uid, op, [SPELLING[fl]])
            s.world.f[f][m][0] ^= {fl}
            flagged.setdefault(m, set()).add(s.name)
            done.append('%s %s %s %s #%d' % (s.name, op, SPELLING[fl], f, m))
        elif kind == 'expunge':
            h.expunge_uids(s.c(), f, [uid])
            del s.world.f[f][m]
            done.append('%s expunge %s #%d' % (s.name, f, m))
        elif kind == 'move':
            dsts = [d for d in sorted(s.world.f) if d != f]
            d = rng.choice(dsts)
            h.move_uids(s.c(), f, d, [uid])
            s.world.f[d][m] = s.world.f[f].pop(m)
            moved[m] = s.name
            done.append('%s move #%d %s -> %s' % (s.name, m, f, d))
        touched.setdefault(m, set()).add(s.name)
    for s in sides:
        s.close()
    return done, moved


def tolerate_moves(want, synced, moved, msgs, snap, rnd):
    """After an interrupted run, a message moved (and re-flagged) on one
    side may have been moved on the other side without the state recording
    it: the next run pairs it again by content, with the union of its
    flags.  So a moved message may end with flags between the model's and
    the model's plus those it had before the round; nothing else."""
    for mid in sorted(moved):
        dest = want.locate(mid)
        src = synced.locate(mid)
        if dest is None or src is None:
            continue
        model = want.f[dest][mid][0]
        base = synced.f[src][mid][0]
        got = [set(x[1]) for x in snap.get(dest, []) if x[0] == msgs.sha[mid]]
        if len(got) == 1 and got[0] != model and \
                model <= got[0] <= model | base:
            h.log('  round %d: moved #%d has %s, model %s: tolerated after '
                  'the interruption (union with its old flags %s)' % (
                      rnd, mid, sorted(got[0]), sorted(model), sorted(base)))
            want.f[dest][mid][0] = got[0]


def run():
    seed = int(os.environ.get('POSTINO_TEST_SEED') or
               random.SystemRandom().randrange(1, 10 ** 9))
    rounds = int(os.environ.get('POSTINO_TEST_ROUNDS') or 8)
    h.log('seed %d, %d rounds (replay: POSTINO_TEST_SEED=%d)' % (
        seed, rounds, seed))
    rng = random.Random(seed)
    t0 = time.time()
    tmp = h.make_tmpdir('mirror-conv')
    state = os.path.join(tmp, 'state.db')
    A = h.Dovecot(layout='fs', name='A')
    B = h.Dovecot(layout='maildir++', prefix='INBOX.', name='B')
    msgs = Messages(rng, seed)
    sides = (Side('A', A, None), Side('B', B, None))
    args = ['mirror', A.url(), B.url(), '--state', state,
            '--ca-file', h.default_ca().ca_file]

    initial(rng, msgs, sides)
    synced = World({})
    interrupted_rounds = 0
    for rnd in range(rounds + 1):
        if rnd == 0:
            moved = {}
            ops = ['round 0: A %s; B %s' % (
                {f: len(v) for f, v in sides[0].world.f.items()},
                {f: len(v) for f, v in sides[1].world.f.items()})]
        else:
            ops, moved = random_round(rng, msgs, sides, rnd)
        h.log('--- round %d (seed %d): %d operations' % (rnd, seed,
                                                        len(ops)))
        for o in ops:
            h.log('    ' + o)
        want, conflicts = merge(synced, sides[0].world, sides[1].world)
        want_snap = msgs.snapshot(want)
        expect = 1 if conflicts else 0
        crashed = finished = False
        how = rng.random()
        if how < 0.2:
            n = rng.randint(1, 40)
            r = h.run_postino(args, env_extra={'POSTINO_TEST_EXIT_AFTER': n})
            check(r.returncode in (99, expect), 'round %d: run with exit '
                  'after step %d: exit 99 (or %d if it ended before)' % (
                      rnd, n, expect), h.show(r))
            crashed = r.returncode == 99
            finished = not crashed
        elif how < 0.35:
            delay = rng.uniform(0.05, 1.2)
            proc = h.start_postino(args)
            try:
                proc.wait(timeout=delay)
            except Exception:
                pass
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                crashed = True
                time.sleep(0.3)     # let the servers finish its commands
                h.log('  killed (SIGKILL) after %.2fs' % delay)
            else:
                finished = True
                check(proc.returncode == expect, 'round %d: run (not killed: '
                      'it ended within %.2fs): exit %d' % (rnd, delay,
                                                           expect),
                      h.output_of(proc))
        if crashed:
            interrupted_rounds += 1
        r = h.run_postino(args)
        if finished:            # that run did the work: this one is a rerun
            codes = (0,)
        elif crashed and conflicts:     # reported before or now
            codes = (0, 1)
        else:
            codes = (expect,)
        check(r.returncode in codes, 'round %d: mirror exit %s (%d kept '
              'conflicts%s)' % (rnd, ' or '.join(map(str, codes)), conflicts,
                                ', after an interruption' if crashed else
                                ', after a complete run' if finished else ''),
              h.show(r))
        sa = h.snapshot(A, with_uids=True)
        sb = h.snapshot(B, with_uids=True)
        pa = {f: sorted((x[:3] for x in v),
                        key=lambda t: (t[0], sorted(t[1]), t[2]))
              for f, v in sa.items()}
        pb = {f: sorted((x[:3] for x in v),
                        key=lambda t: (t[0], sorted(t[1]), t[2]))
              for f, v in sb.items()}
        h.check_same(pa, pb, 'round %d: A and B equal' % rnd, ('A', 'B'))
        if crashed:
            tolerate_moves(want, synced, moved, msgs, pa, rnd)
            want_snap = msgs.snapshot(want)
        h.check_same(want_snap, pa, 'round %d: the result the rules give '
                     '(%d folders, %d messages)' % (
                         rnd, len(want_snap), h.total(want_snap)),
                     ('model', 'A and B'))
        r = h.run_postino(args)
        check(r.returncode == 0 and h.snapshot(A, with_uids=True) == sa and
              h.snapshot(B, with_uids=True) == sb,
              'round %d: a further run exits 0 and changes nothing' % rnd,
              h.show(r))
        synced = want
        sides[0].world = want.copy()
        sides[1].world = want.copy()
    h.log('seed %d: %d rounds (%d interrupted) in %.1fs' % (
        seed, rounds, interrupted_rounds, time.time() - t0))


if __name__ == '__main__':
    h.main(run)
