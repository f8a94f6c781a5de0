#!/usr/bin/env bash
# Real test suites on a directory: the parts of CPython's and Go's own test
# suites that exercise a filesystem, run with their temporary files in each
# DIR given, so that a filesystem (the cluster's, a FUSE mount, ...) can be
# compared with a local one test by test.
#
# Usage: scripts/fs-suites.sh [--json FILE] LABEL=DIR [LABEL=DIR ...]
#   e.g. scripts/fs-suites.sh ext4=/tmp/s1 cfs=/mnt/ssi/s1
#
# Suites, for each DIR (in DIR/ssi-suites.PID, removed afterwards):
#   cpython  Debian's libpython3.11-testsuite with Debian's /usr/bin/python3.11
#            (not whatever python3 is first on PATH): regrtest -j1 --timeout 300
#            of test_os test_posix test_shutil test_fcntl test_mmap
#            test_tempfile test_pathlib test_fileio, with TMPDIR and the
#            working directory in DIR; test cases counted from --junit-xml.
#   go       go test -count=1 -json os io/fs of the installed toolchain with
#            TMPDIR=DIR (t.TempDir() is there, and go test's work directory:
#            the test binaries are linked in DIR and run from there; the
#            build cache is the machine's); top-level tests counted.
# Prints passed / failed / skipped per suite and label, then every test that
# failed on a label but passed on the first label (the baseline), with the
# first lines of its failure output. --json FILE writes all of it.
#
# Exit status: 0 when the suites ran (failed tests are results, not errors),
# 2 on a usage error or a missing prerequisite (scripts/deps.sh --suites),
# 1 when a suite could not run at all (no results) on some label. Each suite
# has 1200 s on each label (SUITE_TIMEOUT=SECONDS to change it): the
# CPython modules share them, one regrtest each; a process that cannot be
# stopped (stuck in a filesystem that does not answer) is left behind and
# said, so that the script always ends.
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"

usage() {
	echo "usage: scripts/fs-suites.sh [--json FILE] LABEL=DIR [LABEL=DIR ...]   (the first is the baseline)" >&2
	exit 2
}

py=/usr/bin/python3.11
py_tests=(test_os test_posix test_shutil test_fcntl test_mmap test_tempfile test_pathlib test_fileio)
go_pkgs=(os io/fs)
limit=${SUITE_TIMEOUT:-1200} # seconds for each suite on each label

json=
labels=() dirs=()
declare -A seen=()
while [ $# -gt 0 ]; do
	case $1 in
	--json)
		[ $# -ge 2 ] || usage
		json=$2
		shift
		;;
	--json=*) json=${1#--json=} ;;
	-h | --help) usage ;;
	-*)
		echo "fs-suites: unknown option $1" >&2
		usage
		;;
	?*=?*)
		label=${1%%=*} dir=${1#*=}
		if ! [[ $label =~ ^[A-Za-z0-9._+-]+$ ]]; then
			echo "fs-suites: label '$label': use letters, digits and ._+-" >&2
			exit 2
		fi
		if [ -n "${seen[$label]:-}" ]; then
			echo "fs-suites: label '$label' given twice" >&2
			exit 2
		fi
		if [ ! -d "$dir" ]; then
			echo "fs-suites: $dir (for $label) is not a directory" >&2
			exit 2
		fi
		seen[$label]=1
		labels+=("$label")
		dirs+=("$(cd "$dir" && pwd -P)")
		;;
	*) usage ;;
	esac
	shift
done
[ ${#labels[@]} -gt 0 ] || usage
if [ ! -x "$py" ] || [ ! -f /usr/lib/python3.11/test/test_os.py ]; then
	echo "fs-suites: $py or its test suite is not installed; run scripts/deps.sh --suites" >&2
	exit 2
fi
if ! command -v go >/dev/null 2>&1; then
	echo "fs-suites: go is not installed (expected in /usr/local/go/bin)" >&2
	exit 2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ssi-suites.XXXXXX")
work=
hung=0 stuck=()
# bounded SECS CMD...: CMD under timeout (TERM after SECS, KILL 30 s later),
# returning its status. A process that waits for a FUSE daemon which does
# not answer cannot be killed, and timeout (and we) would wait for ever: so
# 60 s after the KILL, stop waiting, leave it behind, set hung=1, return 125.
bounded() {
	local secs=$1 pid dog fin="" rc=0
	shift
	timeout -k 30 "$secs" "$@" &
	pid=$!
	sleep $((secs + 90)) &
	dog=$!
	wait -n -p fin "$pid" "$dog" || rc=$?
	if [ "$fin" = "$dog" ]; then
		hung=1
		stuck+=("pid $pid: $*")
		echo "could not be stopped (stuck in the filesystem?), left behind: $*" >&2
		return 125
	fi
	kill "$dog" 2>/dev/null || true
	wait "$dog" 2>/dev/null || true
	return "$rc"
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	if [ -n "$work" ] && [ "$hung" = 0 ]; then
		bounded 600 rm -rf "$work" || echo "fs-suites: could not remove $work" >&2
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for i in "${!labels[@]}"; do
	label=${labels[$i]} dir=${dirs[$i]} out=$tmp/out/$i
	mkdir -p "$out"
	work=$dir/ssi-suites.$$
	hung=0
	if ! bounded 60 mkdir "$work" "$work/py" "$work/go" 2>"$out/mkdir.err"; then
		echo "fs-suites: $label: cannot create $work: $(head -n1 "$out/mkdir.err")" >&2
		for mod in "${py_tests[@]}"; do echo "mkdir" >"$out/py-$mod.rc"; done
		echo "mkdir" >"$out/go.rc"
		work=
		continue
	fi

	# One regrtest per module, so that a module that hangs or crashes does
	# not take the others' results with it; all of them within $limit s.
	echo "== $label: $dir: cpython (${py_tests[*]})"
	t0=$(date +%s)
	for mod in "${py_tests[@]}"; do
		left=$((t0 + limit - $(date +%s)))
		if [ "$left" -le 0 ]; then
			echo "out of time" >"$out/py-$mod.rc"
			printf '   %-14s %s\n' "$mod" "not run: out of time"
			continue
		fi
		rc=0
		bounded "$left" env -C "$work/py" -u PYTHONPATH -u PYTHONHOME -u PYTHONSTARTUP TMPDIR="$work/py" \
			"$py" -m test -j1 --timeout 300 --junit-xml "$out/py-$mod.xml" "$mod" \
			</dev/null >"$out/py-$mod.out" 2>&1 || rc=$?
		echo "$rc" >"$out/py-$mod.rc"
		printf '   %-14s %s\n' "$mod" "$(grep -m1 -oE "\] $mod .*" "$out/py-$mod.out" | cut -c$((${#mod} + 4))- || true) (exit $rc)"
	done
	echo "   $(($(date +%s) - t0)) s"

	echo "== $label: $dir: go test ${go_pkgs[*]}"
	t0=$(date +%s)
	rc=0
	if [ "$hung" = 1 ]; then
		echo "   not run: the filesystem hung"
		echo "skipped (hung)" >"$out/go.rc"
	else
		# No GOTMPDIR: t.TempDir() would use it instead of TMPDIR. So go
		# test's work directory, where it links the test binaries and runs
		# them from, is in DIR too.
		bounded "$limit" env -u GOTMPDIR TMPDIR="$work/go" GOFLAGS=-buildvcs=false GOTOOLCHAIN=local \
			go test -count=1 -json "${go_pkgs[@]}" </dev/null >"$out/go.json" 2>"$out/go.err" || rc=$?
		echo "$rc" >"$out/go.rc"
		echo "   exit $rc after $(($(date +%s) - t0)) s"
	fi

	if [ "$hung" = 1 ]; then
		echo "fs-suites: $label: a process could not be stopped (stuck in the filesystem?); $work left as it is" >&2
		echo "hung" >"$out/hung"
	else
		bounded 600 rm -rf "$work" || echo "fs-suites: $label: could not remove $work" >&2
	fi
	work=
done

# The table, the new failures, the JSON: one Python program over the
# outputs ($tmp/out/N/{py.xml,py.out,py.rc,go.json,go.err,go.rc}).
args=()
for i in "${!labels[@]}"; do args+=("${labels[$i]}" "${dirs[$i]}" "$tmp/out/$i"); done
rc=0
"$py" - "$json" "$limit" "${py_tests[*]}" "${go_pkgs[*]}" "${args[@]}" <<'EOF' || rc=$?
import json, os, re, sys
import xml.etree.ElementTree as ET

jsonpath, limit, py_tests, go_pkgs = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
rest = sys.argv[5:]
labels = [(rest[i], rest[i + 1], rest[i + 2]) for i in range(0, len(rest), 3)]
MAXLINES = 12


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def first_lines(text, n=MAXLINES):
    lines = [l.rstrip() for l in (text or "").splitlines() if l.strip()]
    return lines[:n] + (["... (%d more lines)" % (len(lines) - n)] if len(lines) > n else [])


def status_note(rc):
    if rc == "mkdir":
        return "could not create its directory"
    if rc == "124":
        return "timed out (timeout %s)" % limit
    if rc == "125":
        return "hung: a process could not be stopped (stuck in the filesystem?)"
    if rc == "skipped (hung)":
        return "not run: the filesystem hung before"
    if rc == "out of time":
        return "not run: the suite's %s s were over" % limit
    return None


def junit(xml, tests):
    """Adds the test cases of one JUnit XML file from regrtest to tests."""
    root = ET.fromstring(xml)
    for tc in root.iter("testcase"):
        name = tc.get("name") or "?"
        fail = tc.find("failure")
        if fail is None:
            fail = tc.find("error")
        if fail is not None:
            # The exception, then where: the traceback's last frame.
            lines = first_lines(fail.get("message") or fail.text or "", 5)
            tb = (fail.text or "").splitlines()
            at = [i for i, l in enumerate(tb) if l.startswith('  File "')]
            if at:
                lines += ["at" + tb[at[-1]][1:]] + [l for l in tb[at[-1] + 1:at[-1] + 2] if not l.startswith(("Traceback", "  File"))]
            tests[name] = ("fail", lines)
        elif tc.find("skipped") is not None:
            tests[name] = ("skip", first_lines(tc.find("skipped").text or "", 2))
        else:
            tests[name] = ("pass", [])


def cpython(out):
    """Results of regrtest, one run per module: test cases from the JUnit
    XML, each module's outcome from its log ("[1/1] test_os passed")."""
    r = {"tests": {}, "modules": {}, "note": None, "ran": False}
    for mod in py_tests:
        rc = (read(os.path.join(out, "py-%s.rc" % mod)) or "").strip()
        log = read(os.path.join(out, "py-%s.out" % mod)) or ""
        xml = read(os.path.join(out, "py-%s.xml" % mod))
        m = re.search(r"\] %s( .*)?$" % re.escape(mod), log, re.M)
        status = (m.group(1) or " passed").strip() if m else None
        note = status_note(rc)
        if xml:
            try:
                junit(xml, r["tests"])
                r["ran"] = True
            except ET.ParseError as e:
                note = note or "unreadable JUnit XML: %s" % e
        if note:
            status = note + (" (%s)" % status if status else "")
        elif status is None:
            tail = first_lines(log, 1000)[-2:]
            status = "no result (exit %s)%s" % (rc, ": " + " / ".join(tail) if tail else "")
        r["modules"][mod] = status
    if not r["ran"]:
        r["note"] = "; ".join(sorted(set(r["modules"].values())))
    return r


def gotests(out):
    """Results of go test -json: top-level tests and, for the failures, leaves."""
    r = {"tests": {}, "packages": {}, "note": None, "ran": False}
    rc = (read(os.path.join(out, "go.rc")) or "").strip()
    r["note"] = status_note(rc)
    output, status = {}, {}
    for line in (read(os.path.join(out, "go.json")) or "").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        pkg, test, action = ev.get("Package", "?"), ev.get("Test"), ev.get("Action")
        key = (pkg, test)
        if action == "output":
            output.setdefault(key, []).append(ev.get("Output", ""))
        elif action in ("pass", "fail", "skip"):
            status[key] = action
            if test is None:
                r["packages"][pkg] = action
    for (pkg, test), st in status.items():
        if test is None:
            continue
        r["ran"] = True
        name = "%s.%s" % (pkg, test)
        text = "".join(output.get((pkg, test), []))
        # Drop go test's own "=== RUN" / "--- FAIL" framing lines.
        lines = [l for l in text.splitlines() if not re.match(r"^\s*(=== (RUN|PAUSE|CONT|NAME)|--- (PASS|SKIP))", l)]
        st = {"pass": "pass", "fail": "fail", "skip": "skip"}[st]
        r["tests"][name] = (st, first_lines("\n".join(lines)) if st != "pass" else [])
    for pkg, st in r["packages"].items():
        if st == "fail" and not any(n.startswith(pkg + ".") and s[0] == "fail" for n, s in r["tests"].items()):
            # Build failure, panic, timeout of the test binary: say so.
            text = "".join(output.get((pkg, None), []))
            r["tests"][pkg + " (package)"] = ("fail", first_lines(text))
    err = read(os.path.join(out, "go.err")) or ""
    if not r["ran"] and not r["note"]:
        r["note"] = "no results (exit %s): %s" % (rc, " / ".join(first_lines(err, 3)))
    return r


def toplevel(tests, go):
    """Counts: Go's top-level tests only (subtests are in their parents)."""
    c = {"pass": 0, "fail": 0, "skip": 0}
    for name, (st, _) in tests.items():
        if go and "/" in name.split(".", 1)[-1] and not name.endswith("(package)"):
            continue
        c[st] += 1
    return c


def leaves(tests, go):
    """Failed tests none of whose subtests failed (for Go; all for CPython)."""
    failed = [n for n, (st, _) in tests.items() if st == "fail"]
    if not go:
        return failed
    return [n for n in failed if not any(m != n and m.startswith(n + "/") for m in failed)]


results = []
for label, d, out in labels:
    results.append({"label": label, "dir": d, "cpython": cpython(out), "go": gotests(out)})

suites = [("cpython", "cpython: %d modules" % len(py_tests), False), ("go", "go test " + " ".join(go_pkgs), True)]
base = results[0]
rows = []
for key, title, go in suites:
    row = [title]
    for r in results:
        s = r[key]
        c = toplevel(s["tests"], go)
        cell = "%d / %d / %d" % (c["pass"], c["fail"], c["skip"]) if s["ran"] else "did not run"
        row.append(cell)
        s["counts"] = c
    rows.append(row)
    if key == "cpython":
        row = ["  modules passed"]
        for r in results:
            m = r["cpython"]["modules"]
            row.append("%d of %d" % (sum(v == "passed" for v in m.values()), len(py_tests)))
        rows.append(row)
head = ["suite (passed / failed / skipped)"] + [r["label"] for r in results]
widths = [max(len(x[i]) for x in rows + [head]) for i in range(len(head))]
print()
for x in [head] + rows:
    print("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(x)))
print("(go: top-level tests; their subtests are counted in them)")

notran = []
for r in results:
    for key, title, go in suites:
        s = r[key]
        if not s["ran"]:
            notran.append("%s: %s: %s" % (r["label"], key, s["note"]))
        elif s["note"]:
            print("%s: %s: %s" % (r["label"], key, s["note"]))
        if key == "cpython":
            for t, v in s["modules"].items():
                if v != "passed":
                    print("%s: cpython: %s %s" % (r["label"], t, v))
for line in notran:
    print("DID NOT RUN: " + line)

# The failures that are the label's own: failed there, passed on the baseline.
for r in results:
    r["new_failures"] = []
    r["also_on_baseline"] = []
    for key, title, go in suites:
        tests, btests = r[key]["tests"], base[key]["tests"]
        for n in sorted(leaves(tests, go)):
            b = btests.get(n, ("absent", []))[0]
            if r is base:
                continue
            if b == "pass":
                r["new_failures"].append({"suite": key, "test": n, "output": tests[n][1]})
            else:
                r["also_on_baseline"].append({"suite": key, "test": n, "baseline": b})
for r in results[1:]:
    print()
    if not r["new_failures"]:
        print("%s: no test failed that passed on %s" % (r["label"], base["label"]))
    else:
        print("%s: %d tests failed that passed on %s:" % (r["label"], len(r["new_failures"]), base["label"]))
        for f in r["new_failures"]:
            print("  %s: %s" % (f["suite"], f["test"]))
            for l in f["output"]:
                print("      " + l)
    if r["also_on_baseline"]:
        print("%s: also failed, but not passed on %s either: %s" % (
            r["label"], base["label"], ", ".join("%s (%s there)" % (f["test"], f["baseline"]) for f in r["also_on_baseline"])))
bfail = [n for key, title, go in suites for n in leaves(base[key]["tests"], go)]
if bfail:
    print()
    print("%s (baseline) failures: %s" % (base["label"], ", ".join(sorted(bfail))))
    for key, title, go in suites:
        for n in sorted(leaves(base[key]["tests"], go)):
            print("  %s: %s" % (key, n))
            for l in base[key]["tests"][n][1]:
                print("      " + l)

if jsonpath:
    doc = {"baseline": base["label"], "python_tests": py_tests, "go_packages": go_pkgs, "labels": []}
    for r in results:
        e = {"label": r["label"], "dir": r["dir"], "new_failures": r["new_failures"], "suites": {}}
        for key, title, go in suites:
            s = r[key]
            e["suites"][key] = {
                "ran": s["ran"], "note": s["note"], "counts": s["counts"],
                "tests": {n: {"status": st, "output": o} for n, (st, o) in sorted(s["tests"].items())},
            }
            if key == "cpython":
                e["suites"][key]["modules"] = s["modules"]
        doc["labels"].append(e)
    with open(jsonpath, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print("results written to " + jsonpath)
sys.exit(1 if notran else 0)
EOF
exit "$rc"
