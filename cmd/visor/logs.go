package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/visorhq/visor/registry"
)

// maxLogTail is the most history lines an agent serves (agent/api.go's
// maxTail); a larger --tail is refused here rather than by the agent.
const maxLogTail = 100000

func init() {
	register(&command{
		Name:  "logs",
		Args:  "INSTANCE",
		Short: "print (and follow) an instance's output, through its host's agent",
		Long: `logs finds the instance's host in the registry and asks that host's agent
(its HTTP API, or with --socket a local agent's unix socket) for the last
--tail lines of --stream; with -f it keeps streaming until interrupted.`,
		Flags: func(fs *flag.FlagSet) {
			fs.Bool("f", false, "follow: keep printing new output")
			fs.String("stream", "stdout", "stdout or stderr")
			fs.Int("tail", 100, "lines of history to print first")
			agentClientFlags(fs)
		},
		Run: runLogs,
	})
	register(&command{
		Name:  "signal",
		Args:  "INSTANCE SIGNAL",
		Short: "send a signal (TERM, HUP, USR1, ...) to an instance's process group",
		Flags: agentClientFlags,
		Run:   runSignal,
	})
}

// agentClientFlags are the flags of commands that call an agent's API.
func agentClientFlags(fs *flag.FlagSet) {
	fs.String("token", os.Getenv("VISOR_TOKEN"), "bearer token of the agents' HTTP API (env VISOR_TOKEN)")
	fs.String("socket", "", "call the agent on this unix socket (e.g. /run/visor/agent.sock) instead of over HTTP")
}

// agentCall is a resolved agent API endpoint for one instance.
type agentCall struct {
	client *http.Client
	base   string
	token  string
}

// agentFor finds the agent that runs instance id.
func agentFor(ctx context.Context, e *env, id string) (agentCall, error) {
	socket, token := flagString(e, "socket"), flagString(e, "token")
	if socket != "" {
		return agentCall{base: "http://agent", client: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", socket)
			},
		}}}, nil
	}
	var call agentCall
	err := withRegistry(ctx, e, func(r *registry.Registry) error {
		in, err := r.Instance(ctx, id)
		if err != nil {
			return err
		}
		if in.Host == "" {
			return fmt.Errorf("instance %s is %s and has no host yet", id, in.State)
		}
		h, err := r.Host(ctx, in.Host)
		if err != nil {
			return fmt.Errorf("host %s of instance %s: %w", in.Host, id, err)
		}
		if h.APIAddr == "" {
			return fmt.Errorf("the agent on host %s serves no HTTP API (use --socket on that host)", in.Host)
		}
		call = agentCall{client: http.DefaultClient, base: "http://" + h.APIAddr, token: token}
		return nil
	})
	return call, err
}

func (c agentCall) do(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("call agent: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var e struct {
			Error string `json:"error"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		err := fmt.Errorf("agent: %s", e.Error)
		if resp.StatusCode == http.StatusBadRequest {
			err = asUsage(err)
		}
		return nil, err
	}
	return resp, nil
}

func runLogs(ctx context.Context, e *env, args []string) error {
	if len(args) != 1 {
		return usageError("logs: want exactly one INSTANCE")
	}
	stream := flagString(e, "stream")
	if stream != "stdout" && stream != "stderr" {
		return usageError("logs: --stream must be stdout or stderr, not %q", stream)
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
	if flagBool(e, "f") {
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
