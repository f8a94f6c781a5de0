package cli

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/ssi-cluster/ssi/internal/migrate"
	"github.com/ssi-cluster/ssi/internal/rexec"
)

// Outcomes of a doctor check.
const (
	checkOK   = "ok"
	checkWarn = "warn"
	checkFail = "FAIL"
)

// doctorCheck is one line of ssi doctor (and its --json form).
type doctorCheck struct {
	Check  string `json:"check"`
	Status string `json:"status"` // ok, warn or FAIL
	Detail string `json:"detail"`
}

func init() {
	cmd := &Command{
		Name:    "doctor",
		Summary: "check that this machine has what ssi needs (CRIU, kernel settings, cgroups, root)",
		Usage:   "ssi doctor [--criu PATH] [--json]",
		Help: `Checks this machine, without asking the daemon: the criu binary (found as
the daemon finds it: --criu, $SSI_CRIU, /opt/ssi-criu/bin/criu, PATH) and
its version (at least 4.2; install it with scripts/criu.sh), 'criu check',
fs.pipe-max-size (post-copy migration needs 4 MiB), a cgroup freezer, and
running as root. One line per check: ok, warn or FAIL and what was found.
Exits 1 when a check FAILs, 0 otherwise (warnings included).

Example:
  ssi doctor
  ssi doctor --criu /usr/local/sbin/criu --json`,
	}
	cmd.Run = func(env *Env, args []string) error {
		fs := NewFlags(env, cmd)
		criu := fs.String("criu", "", "the criu binary to check (default: as the daemon finds it)")
		asJSON := fs.Bool("json", false, "print JSON")
		if err := Parse(env, cmd, fs, args); err != nil {
			return err
		}
		if fs.NArg() != 0 {
			return Usagef("unexpected argument %q", fs.Arg(0))
		}
		ctx := env.Ctx
		if ctx == nil {
			ctx = context.Background()
		}
		checks := doctorChecks(ctx, *criu)
		failed := false
		for _, c := range checks {
			failed = failed || c.Status == checkFail
		}
		if *asJSON {
			if err := writeJSON(env.Stdout, checks); err != nil {
				return err
			}
		} else {
			for _, c := range checks {
				fmt.Fprintf(env.Stdout, "%-4s  %-13s  %s\n", c.Status, c.Check, c.Detail)
			}
		}
		if failed {
			return &ExitError{Code: ExitFailure}
		}
		return nil
	}
	Register(cmd)
}

// doctorChecks runs every check of ssi doctor, in the order printed.
func doctorChecks(ctx context.Context, configured string) []doctorCheck {
	var checks []doctorCheck
	add := func(name, status, format string, a ...any) {
		checks = append(checks, doctorCheck{Check: name, Status: status, Detail: oneLine(fmt.Sprintf(format, a...))})
	}
	root := os.Geteuid() == 0

	path, err := migrate.FindCRIU(configured)
	switch {
	case err != nil:
		add("criu", checkFail, "%v", err)
	default:
		v, err := migrate.CRIUVersion(ctx, path)
		switch {
		case err != nil:
			add("criu", checkFail, "%v (install CRIU >= %d.%d with scripts/criu.sh)", err, migrate.MinMajor, migrate.MinMinor)
			path = "" // not a criu that works: its check would say nothing
		case !v.AtLeast(migrate.MinMajor, migrate.MinMinor):
			add("criu", checkFail, "%s is CRIU %v, older than %d.%d (which migration needs): install it with scripts/criu.sh",
				path, v, migrate.MinMajor, migrate.MinMinor)
		default:
			add("criu", checkOK, "%s: CRIU %v (>= %d.%d)", path, v, migrate.MinMajor, migrate.MinMinor)
		}
	}
	switch {
	case path == "":
		add("criu check", checkFail, "not run: no working criu")
	case !root:
		add("criu check", checkWarn, "not run: criu check needs root")
	default:
		out, err := migrate.CRIUCheck(ctx, path)
		if err != nil {
			add("criu check", checkFail, "%v", err)
		} else {
			add("criu check", checkOK, "%s", criuCheckSummary(out))
		}
	}

	if n, err := migrate.PipeMaxSize(); err != nil {
		add("pipe-max-size", checkWarn, "%v", err)
	} else if n < migrate.PostCopyPipeSize {
		add("pipe-max-size", checkWarn, "%d: post-copy migration needs fs.pipe-max-size ≥ %d: sysctl -w fs.pipe-max-size=%d",
			n, migrate.PostCopyPipeSize, migrate.PostCopyPipeSize)
	} else {
		add("pipe-max-size", checkOK, "%d", n)
	}

	migrationFeatures(ctx, path, root, add)

	if d, err := rexec.Freezer(); err != nil {
		add("freezer", checkFail, "%v", err)
	} else {
		add("freezer", checkOK, "%s", d)
	}

	if root {
		add("root", checkOK, "running as root")
	} else {
		add("root", checkWarn, "running as uid %d, not root: jobs cannot get namespaces, criu cannot checkpoint", os.Geteuid())
	}
	return checks
}

// criuCheckSummary is what ssi doctor says of a successful criu check: its
// verdict ("Looks good."), and how many other lines (warnings) it printed.
func criuCheckSummary(out string) string {
	var verdict string
	var others []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "":
		case verdict == "" && strings.HasPrefix(l, "Looks good"):
			verdict = l
		default:
			others = append(others, l)
		}
	}
	if verdict == "" {
		if len(others) == 0 {
			return "passed"
		}
		verdict, others = others[0], others[1:]
	}
	switch len(others) {
	case 0:
		return verdict
	case 1:
		return fmt.Sprintf("%s (and: %s)", verdict, others[0])
	default:
		return fmt.Sprintf("%s (and %d more lines, the first: %s)", verdict, len(others), others[0])
	}
}

// oneLine joins a multi-line message for a one-line report.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(strings.TrimSpace(s), "\n", " | ")), " ")
}

// migrationFeatures adds the checks of what the kernel gives migration
// beyond criu check: userfaultfd for post-copy (lazy pages), soft-dirty
// tracking for pre-copy (which ssi does not do: it says so).
func migrationFeatures(ctx context.Context, path string, root bool, add func(name, status, format string, a ...any)) {
	switch {
	case path == "":
		add("post-copy", checkWarn, "not checked: no working criu")
		return
	case !root:
		add("post-copy", checkWarn, "not checked: criu check needs root")
		return
	}
	if err := migrate.UserFaultFD(ctx, path); err != nil {
		add("post-copy", checkWarn, "%v: CRIU cannot restore with lazy pages here, so large jobs move with their memory copied while frozen (migrate --precopy)", err)
	} else {
		add("post-copy", checkOK, "userfaultfd: CRIU restores with lazy pages (migrate --postcopy)")
	}
	switch dirty, err := migrate.SoftDirty(ctx, path); {
	case err != nil:
		add("soft-dirty", checkWarn, "%v", err)
	case dirty:
		add("soft-dirty", checkOK, "the kernel tracks dirty pages (pre-copy would be possible; ssi moves large jobs with post-copy)")
	default:
		add("soft-dirty", checkWarn, "this kernel does not track dirty pages (no CONFIG_MEM_SOFT_DIRTY): no pre-copy (iterative dumps while the job runs); large jobs move with post-copy instead")
	}
}
