package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Exit codes of visor, documented in `visor --help` and the README.
const (
	exitOK          = 0 // the command did what it was asked
	exitError       = 1 // it failed (registry, agent, system)
	exitUsage       = 2 // bad command line or input: unknown command, flag or value
	exitWaitTimeout = 3 // a --wait gave up after --wait-timeout; the change itself was made
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// errUsage marks an error whose message is a usage problem; the exit code
// is 2. Test for it with errors.Is; make one with usageError or asUsage,
// which add no text of their own, so that a usage error wrapped with
// context ("service render: ...") still reads as one message.
var errUsage = errors.New("usage")

// errWaitTimeout marks the error of a --wait that gave up; the exit code
// is 3. Make one with waitTimeout.
var errWaitTimeout = errors.New("wait timed out")

// markedErr is an error that reads as err and matches mark with errors.Is.
type markedErr struct{ err, mark error }

func (m markedErr) Error() string        { return m.err.Error() }
func (m markedErr) Unwrap() error        { return m.err }
func (m markedErr) Is(target error) bool { return target == m.mark }

// usageError returns a usage error with a one-line message formatted as
// by fmt.Errorf (%w wraps).
func usageError(format string, args ...any) error {
	return markedErr{fmt.Errorf(format, args...), errUsage}
}

// asUsage marks err as a usage error, keeping its message and its chain.
func asUsage(err error) error {
	if err == nil || errors.Is(err, errUsage) {
		return err
	}
	return markedErr{err, errUsage}
}

// waitTimeout returns the error of a --wait that timed out, formatted as
// by fmt.Errorf.
func waitTimeout(format string, args ...any) error {
	return markedErr{fmt.Errorf(format, args...), errWaitTimeout}
}

// joinErrors returns the errors of errs that are not nil as one error on
// one line, separated by "; "; errors.Is and errors.As see each of them.
// It is errors.Join for a CLI whose errors are one line each.
func joinErrors(errs ...error) error {
	var list []error
	for _, err := range errs {
		if err != nil {
			list = append(list, err)
		}
	}
	switch len(list) {
	case 0:
		return nil
	case 1:
		return list[0]
	}
	return joinedError(list)
}

type joinedError []error

func (j joinedError) Error() string {
	msgs := make([]string, len(j))
	for i, err := range j {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (j joinedError) Unwrap() []error { return j }

// errorLine is err's message as the one line run prints after "visor: ":
// an error that spans lines (one from another program, say) is joined, and
// a "visor: " that a wrapped error already starts with is not repeated.
func errorLine(err error) string {
	lines := strings.FieldsFunc(err.Error(), func(r rune) bool { return r == '\n' || r == '\r' })
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return strings.TrimPrefix(strings.Join(lines, "; "), "visor: ")
}

// exitCode maps the error a command returned to the process exit code.
func exitCode(err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errUsage):
		return exitUsage
	case errors.Is(err, errWaitTimeout):
		return exitWaitTimeout
	default:
		return exitError
	}
}

// run executes one invocation and returns the process exit code. It is the
// whole program minus os.Exit, so tests can call it.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runContext(ctx, args, stdin, stdout, stderr)
}

// runContext is run with the context that an interrupt cancels passed in, so
// that tests can end following commands (events -f, hosts -w). Each call
// builds its own command tree: cobra commands hold their parsed flags.
func runContext(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	root := newRootCmd(e)
	root.SetArgs(normalizeArgs(root, args))
	err := root.ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "visor: %s\n", errorLine(err))
	}
	return exitCode(err)
}
