package rexec

import "os"

// Terminal returns the pty master of a TTY job (the daemon's side of its
// terminal), or nil. Its owner may read, write and resize it as Stdout,
// Stdin and Resize do; a job that moves (internal/procspace) carries its
// terminal's state from it. The job closes it when it is closed.
func (j *Job) Terminal() *os.File { return j.tty }
