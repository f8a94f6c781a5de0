package migrate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// DefaultCRIUPrefix is where scripts/criu.sh installs CRIU (its
// SSI_CRIU_PREFIX): the criu binary is DefaultCRIUPrefix/bin/criu.
const DefaultCRIUPrefix = "/opt/ssi-criu"

// The oldest CRIU that works: Debian 12's 3.17 cannot dump on recent
// kernels (vdso: Unexpected rt vDSO area bounds) and 4.1.1 cannot dump a
// process with an inet socket on kernels >= 6.16.
const MinMajor, MinMinor = 4, 2

// PostCopyPipeSize is the fs.pipe-max-size post-copy migration needs: CRIU
// moves memory pages through pipes of this size.
const PostCopyPipeSize = 4 << 20

// ErrNoCRIU: no criu binary was found (FindCRIU).
var ErrNoCRIU = errors.New("criu not found")

// Timeouts of the CRIU commands when ctx has no deadline of its own.
const (
	versionTimeout = 10 * time.Second
	checkTimeout   = 60 * time.Second
)

// FindCRIU returns the criu binary to use, in this order:
//
//  1. configured (the daemon's --criu flag), when not empty;
//  2. $SSI_CRIU;
//  3. $SSI_CRIU_PREFIX/bin/criu, else DefaultCRIUPrefix/bin/criu (where
//     scripts/criu.sh installs it);
//  4. criu in $PATH.
//
// A path that was given (configured or $SSI_CRIU) must exist and be
// executable: it is an error naming it, not a reason to look further.
func FindCRIU(configured string) (string, error) {
	if configured != "" {
		if err := executable(configured); err != nil {
			return "", fmt.Errorf("criu %s: %w", configured, err)
		}
		return configured, nil
	}
	if p := os.Getenv("SSI_CRIU"); p != "" {
		if err := executable(p); err != nil {
			return "", fmt.Errorf("criu %s (from SSI_CRIU): %w", p, err)
		}
		return p, nil
	}
	prefix := os.Getenv("SSI_CRIU_PREFIX")
	if prefix == "" {
		prefix = DefaultCRIUPrefix
	}
	installed := filepath.Join(prefix, "bin", "criu")
	if executable(installed) == nil {
		return installed, nil
	}
	if p, err := exec.LookPath("criu"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%w (not in SSI_CRIU, %s nor PATH): install CRIU >= %d.%d with scripts/criu.sh (or make deps)",
		ErrNoCRIU, installed, MinMajor, MinMinor)
}

// executable reports why path is not an executable regular file, or nil.
func executable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return errors.New("not a regular file")
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return errors.New("not executable")
	}
	return nil
}

// Version is a CRIU release, e.g. 4.2.1.
type Version struct{ Major, Minor, Sublevel int }

// String is the version as CRIU prints it: 4.2.1, or 4.2 for a sublevel 0.
func (v Version) String() string {
	if v.Sublevel == 0 {
		return fmt.Sprintf("%d.%d", v.Major, v.Minor)
	}
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Sublevel)
}

// AtLeast reports whether v is major.minor or newer.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || v.Major == major && v.Minor >= minor
}

// ParseVersion reads the output of criu --version:
//
//	Version: 4.2.1
//	GitID: v4.2.1-3-g0123abc   (builds from git only)
func ParseVersion(out string) (Version, error) {
	for _, line := range strings.Split(out, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "Version:")
		if !ok {
			continue
		}
		rest = strings.TrimSpace(rest)
		// The numbers end at the first character that is neither a digit
		// nor a dot (4.2-rc1, 4.2.1+git).
		if i := strings.IndexFunc(rest, func(r rune) bool { return r != '.' && (r < '0' || r > '9') }); i >= 0 {
			rest = rest[:i]
		}
		f := strings.Split(rest, ".")
		if len(f) < 2 || len(f) > 3 {
			return Version{}, fmt.Errorf("criu --version: cannot read version %q", strings.TrimSpace(line))
		}
		var n [3]int
		for i, s := range f {
			v, err := strconv.Atoi(s)
			if err != nil || v < 0 {
				return Version{}, fmt.Errorf("criu --version: cannot read version %q", strings.TrimSpace(line))
			}
			n[i] = v
		}
		return Version{Major: n[0], Minor: n[1], Sublevel: n[2]}, nil
	}
	return Version{}, fmt.Errorf("criu --version printed no \"Version:\" line: %q", firstLine(out))
}

// CRIUVersion runs path --version and returns the version it prints.
func CRIUVersion(ctx context.Context, path string) (Version, error) {
	out, err := run(ctx, versionTimeout, path, "--version")
	if err != nil {
		return Version{}, fmt.Errorf("%s --version failed: %w%s", path, err, detail(out))
	}
	return ParseVersion(out)
}

// CRIUCheck runs path check (which needs root), CRIU's own test of the
// kernel features it needs, and returns its output ("Looks good.", maybe
// after warnings). A non-zero exit is an error carrying the output.
func CRIUCheck(ctx context.Context, path string) (string, error) {
	out, err := run(ctx, checkTimeout, path, "check")
	if err != nil {
		return out, fmt.Errorf("criu check (%s) failed, this kernel or machine lacks what CRIU needs: %w%s", path, err, detail(out))
	}
	return out, nil
}

// run runs a CRIU command and returns its combined output; ctx bounds it,
// or timeout when ctx has no deadline.
func run(ctx context.Context, timeout time.Duration, path string, args ...string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, path, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second // a child keeping the output open does not hold us
	err := cmd.Run()
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return out.String(), err
}

// detail is ": " and the last lines of a failed command's output (CRIU
// prints the reason last), or "".
func detail(out string) string {
	out = strings.TrimSpace(out)
	if out == "" {
		return ""
	}
	lines := strings.Split(out, "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return ": " + strings.Join(lines, "\n")
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// PipeMaxSize returns fs.pipe-max-size, the largest pipe an unprivileged
// process may ask for; post-copy migration needs PostCopyPipeSize.
func PipeMaxSize() (int, error) {
	b, err := os.ReadFile("/proc/sys/fs/pipe-max-size")
	if err != nil {
		return 0, fmt.Errorf("reading fs.pipe-max-size: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("reading fs.pipe-max-size: %w", err)
	}
	return n, nil
}
