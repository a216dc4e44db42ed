package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// maxLogTail is the most history lines an agent serves (agent/api.go's
// maxTail); a larger --tail is refused here rather than by the agent.
const maxLogTail = 100000

func newLogsCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "logs INSTANCE",
		Short: "print (and follow) an instance's output, through its host's agent",
		Long: `logs finds the instance's host in the registry and asks that host's agent
(its HTTP API, or with --socket a local agent's unix socket) for the last
--tail lines of --stream; with -f it keeps streaming until interrupted.

By default (--stream all) it shows stdout and stderr together, each line
labelled "stdout | " or "stderr | ". The log files carry no timestamps, so
the history comes stdout's last --tail lines first, then stderr's; followed
lines (-f) of both come in the order the agent reads them, which is the
order they were written, give or take a few milliseconds between the two
files. --stream stdout or --stream stderr prints one of them, unlabelled.`,
		RunE: runWith(e, runLogs),
	}
	cmd.Flags().BoolP("follow", "f", false, "follow: keep printing new output")
	cmd.Flags().String("stream", "all", "all (stdout and stderr, labelled), stdout or stderr")
	cmd.Flags().Int("tail", 100, "lines of history to print first")
	agentClientFlags(cmd.Flags())
	return cmd
}

func newSignalCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "signal INSTANCE SIGNAL",
		Short: "send a signal (TERM, HUP, USR1, ...) to an instance's process group",
		RunE:  runWith(e, runSignal),
	}
	agentClientFlags(cmd.Flags())
	return cmd
}

func runLogs(ctx context.Context, e *env, args []string) error {
	if len(args) != 1 {
		return usageError("logs: want exactly one INSTANCE")
	}
	stream := flagString(e, "stream")
	if stream != "stdout" && stream != "stderr" && stream != "all" {
		return usageError("logs: --stream must be all, stdout or stderr, not %q", stream)
	}
	tail := flagValue[int](e, "tail")
	if tail < 0 || tail > maxLogTail {
		return usageError("logs: --tail %d must be from 0 to %d", tail, maxLogTail)
	}
	call, err := agentFor(ctx, e, args[0])
	if err != nil {
		return err
	}
	q := url.Values{"stream": {stream}, "tail": {strconv.Itoa(tail)}}
	if flagBool(e, "follow") {
		q.Set("follow", "1")
	}
	resp, err := call.do(ctx, http.MethodGet, "/v1/instances/"+url.PathEscape(args[0])+"/logs?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(e.stdout, resp.Body)
	if ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return nil // interrupted while following
	}
	return err
}

func runSignal(ctx context.Context, e *env, args []string) error {
	if len(args) != 2 {
		return usageError("signal: want INSTANCE and SIGNAL")
	}
	call, err := agentFor(ctx, e, args[0])
	if err != nil {
		return err
	}
	body, _ := json.Marshal(map[string]string{"signal": args[1]})
	resp, err := call.do(ctx, http.MethodPost, "/v1/instances/"+url.PathEscape(args[0])+"/signal", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp.Body.Close()
	return e.print(map[string]string{"instance": args[0], "signal": strings.ToUpper(args[1])}, func(w io.Writer) {
		fmt.Fprintf(w, "sent %s to %s\n", strings.ToUpper(args[1]), args[0])
	})
}
