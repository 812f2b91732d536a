#!/usr/bin/env python3
"""rerecord.py SESSION.qs [QSCOPE] - re-record the `# =>` result lines of a saved session.

When a deliberate change moves a recorded number (a fixed estimator, a new verdict rule), the
session's commands are re-run headless (`-b`, two BLAS threads as the test suite pins them) and
saved again; each command's `# =>` block in SESSION.qs is replaced by the fresh one, in order.
Narration comments, the header and the commands themselves are kept as they are. Refuses if the
fresh journal does not hold the same commands."""
import os
import subprocess
import sys
import tempfile


def blocks(lines):
    """[(command, [result lines])] in order; comment lines that are not results are skipped."""
    out = []
    for ln in lines:
        if ln.startswith("# => "):
            if out:
                out[-1][1].append(ln)
        elif ln.startswith("#") or not ln.strip():
            continue
        else:
            out.append((ln, []))
    return out


def main():
    path = sys.argv[1]
    qs = sys.argv[2] if len(sys.argv) > 2 else "./qscope"
    lines = open(path).read().splitlines()
    orig = blocks(lines)
    with tempfile.TemporaryDirectory() as d:
        script, fresh = os.path.join(d, "s.qs"), os.path.join(d, "fresh.qs")
        with open(script, "w") as f:
            for cmd, _ in orig:
                f.write(cmd + "\n")
            f.write('save session "%s"\n' % fresh)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="2", LC_ALL="C.UTF-8", QSCOPE_TEST="1")
        r = subprocess.run([qs, "--no-default", "-b", script], env=env, capture_output=True,
                           text=True)
        if r.returncode != 0:
            sys.exit("rerecord: %s failed:\n%s%s" % (path, r.stdout[-2000:], r.stderr[-2000:]))
        new = blocks(open(fresh).read().splitlines())
    if [c for c, _ in new] != [c for c, _ in orig]:
        sys.exit("rerecord: %s: the fresh journal holds other commands; not rewritten" % path)
    res, i = [], -1
    for ln in lines:
        if ln.startswith("# => "):
            continue
        res.append(ln)
        if not ln.startswith("#") and ln.strip():
            i += 1
            res.extend(new[i][1])
    open(path, "w").write("\n".join(res) + "\n")
    changed = sum(1 for (_, a), (_, b) in zip(orig, new) if a != b)
    print("rerecord: %s: %d of %d result blocks changed" % (path, changed, len(orig)))


if __name__ == "__main__":
    main()
