// Package cli owns the command line of the multi-call ssi binary: argv[0]
// dispatch, one file per command family, flag parsing, output tables and
// --json, and the single place where errors become messages and exit codes.
// It must not hold cluster logic: commands talk to the local daemon (or, for
// init/join/up, to the packages that create data directories).
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// Exit codes used by every command.
const (
	ExitOK      = 0
	ExitFailure = 1   // the cluster refused the request (duplicate, unknown node, permission, ...)
	ExitUsage   = 2   // bad flags or malformed input; nothing was sent
	ExitUpgrade = 3   // ssi daemon: the cluster's log needs a newer ssi (docs/UPGRADES.md)
	ExitRemote  = 255 // ssi itself failed: daemon, leader or node unreachable, connection lost
)

// Command is one subcommand of ssi.
type Command struct {
	Name    string   // what the user types after "ssi"
	Aliases []string // OpenSSI names that reach this command through a symlink (e.g. "cluster")
	Summary string   // one line for "ssi help"
	Usage   string   // synopsis, e.g. "ssi cluster [-V] [--json]"
	Help    string   // longer text, must contain at least one example
	Hidden  bool     // internal helpers (re-exec targets) are not listed
	Link    bool     // Name itself is an OpenSSI name installed as a symlink
	Run     func(env *Env, args []string) error
}

var commands = map[string]*Command{}

// Register adds a command; it is called from init functions in this package.
func Register(c *Command) {
	for _, n := range append([]string{c.Name}, c.Aliases...) {
		if _, dup := commands[n]; dup {
			panic("cli: duplicate command " + n)
		}
		commands[n] = c
	}
}

// Env is what a running command may use: its streams and context.
type Env struct {
	Ctx    context.Context
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Prog   string // the name the command was invoked as, for messages
}

// UsageError reports bad flags or arguments: exit 2, nothing was changed.
// Usage, when set, is the synopsis to show instead of the command's (a
// subcommand's, such as ssi dhcp set).
type UsageError struct{ Msg, Usage string }

func (e *UsageError) Error() string { return e.Msg }

// Usagef returns a *UsageError.
func Usagef(format string, a ...any) error { return &UsageError{Msg: fmt.Sprintf(format, a...)} }

// ExitError carries a remote process's own exit status (or the status the
// daemon chose when it could not start it: 126, 127, 255), or the worst of
// several statuses whose messages were already printed (onall, ssi kill),
// and an optional message. Every other error gets its code from exitCode
// (errors.go).
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}
func (e *ExitError) Unwrap() error { return e.Err }

// Main runs the command named by argv[0] or argv[1] and returns the exit code.
func Main(argv []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	env := &Env{Ctx: ctx, Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	return Run(env, argv)
}

// Run is Main with explicit streams, for tests.
func Run(env *Env, argv []string) int {
	base := filepath.Base(argv[0])
	args := argv[1:]
	cmd, ok := commands[base]
	if !ok || base == "ssi" {
		if len(args) == 0 {
			printHelp(env.Stdout)
			return ExitUsage
		}
		name := args[0]
		args = args[1:]
		if name == "-h" || name == "--help" {
			name = "help"
		}
		cmd, ok = commands[name]
		if !ok {
			fmt.Fprintf(env.Stderr, "ssi: unknown command %q; run 'ssi help' for the list\n", name)
			return ExitUsage
		}
		base = "ssi " + name
	}
	env.Prog = base
	err := cmd.Run(env, args)
	return report(env, cmd, err)
}

// report prints err's message and returns its exit code; errors.go owns
// the mapping.
func report(env *Env, cmd *Command, err error) int {
	if msg := message(err); msg != "" {
		fmt.Fprintf(env.Stderr, "%s: %s\n", env.Prog, msg)
		var ue *UsageError
		if errors.As(err, &ue) {
			usage := cmd.Usage
			if ue.Usage != "" {
				usage = ue.Usage
			}
			fmt.Fprintf(env.Stderr, "usage: %s\n", usage)
		}
	}
	return exitCode(err)
}

// NewFlags returns a flag set whose -h prints the command's help.
func NewFlags(env *Env, cmd *Command) *flag.FlagSet {
	fs := flag.NewFlagSet(cmd.Name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// Parse parses flags; -h prints help and returns flag.ErrHelp, other errors
// become usage errors.
func Parse(env *Env, cmd *Command, fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printCommandHelp(env.Stdout, cmd, fs)
			return flag.ErrHelp
		}
		return Usagef("%v", err)
	}
	return nil
}

// parseOne parses flags and exactly one positional argument, described by
// what in the usage error.
func parseOne(env *Env, cmd *Command, fs *flag.FlagSet, args []string, what string) (string, error) {
	if err := Parse(env, cmd, fs, args); err != nil {
		return "", err
	}
	if fs.NArg() != 1 {
		return "", Usagef("expected %s", what)
	}
	return fs.Arg(0), nil
}

// parseNone parses flags and refuses positional arguments.
func parseNone(env *Env, cmd *Command, fs *flag.FlagSet, args []string) error {
	if err := Parse(env, cmd, fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return Usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

func printCommandHelp(w io.Writer, cmd *Command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: %s\n\n%s\n", cmd.Usage, cmd.Summary)
	if cmd.Help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(cmd.Help))
	}
	if fs != nil {
		var b strings.Builder
		fs.SetOutput(&b)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		if b.Len() > 0 {
			fmt.Fprintf(w, "\noptions:\n%s", b.String())
		}
	}
}

func printHelp(w io.Writer) {
	fmt.Fprintln(w, "ssi: a single-system-image cluster for unmodified Linux.")
	fmt.Fprintln(w, "usage: ssi <command> [options]   (or through a symlink named after the command)")
	fmt.Fprintln(w, "\ncommands:")
	var names []string
	for n, c := range commands {
		if n == c.Name && !c.Hidden {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		c := commands[n]
		alias := ""
		if len(c.Aliases) > 0 {
			alias = " (" + strings.Join(c.Aliases, ", ") + ")"
		}
		fmt.Fprintf(w, "  %-22s %s%s\n", n, c.Summary, alias)
	}
	fmt.Fprintln(w, "\nRun 'ssi <command> -h' for a command's options and an example.")
}

func init() {
	Register(&Command{
		Name:    "help",
		Summary: "list commands, or explain one",
		Usage:   "ssi help [COMMAND]",
		Help:    "Example:\n  ssi help cluster",
		Run: func(env *Env, args []string) error {
			if len(args) == 0 {
				printHelp(env.Stdout)
				return nil
			}
			if args[0] == "-h" || args[0] == "--help" {
				printCommandHelp(env.Stdout, commands["help"], nil)
				return nil
			}
			c, ok := commands[args[0]]
			if !ok {
				return Usagef("unknown command %q", args[0])
			}
			// Let the command print its own flags by running it with -h.
			return c.Run(env, []string{"-h"})
		},
	})
}
