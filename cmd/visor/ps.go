package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/visorhq/visor/registry"
)

func newPSCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ps [APP]",
		Short: "list instances, of all apps or of one",
		RunE:  runWith(e, runPS),
	}
	cmd.Flags().String("host", "", "only instances on this host")
	cmd.Flags().Bool("no-usage", false, "do not ask the agents for CPU, RSS and phase")
	agentClientFlags(cmd.Flags())
	return cmd
}

// instanceOut is the CLI's JSON form of an instance.
type instanceOut struct {
	ID       string         `json:"id"`
	App      string         `json:"app"`
	Rev      string         `json:"rev"`
	Proc     string         `json:"proc"`
	Host     string         `json:"host"`
	State    string         `json:"state"`
	Since    time.Time      `json:"since"`
	Port     int            `json:"port"`
	PID      int            `json:"pid"`
	Restarts map[string]int `json:"restarts"`
	ExitCode *int           `json:"exit_code"`
	Signal   string         `json:"signal"`
	Reason   string         `json:"reason"`
	// Health is the last health check's error while checks fail.
	Health  string    `json:"health,omitempty"`
	Ticket  string    `json:"ticket"`
	Created time.Time `json:"created"`
	// CPUPercent, RSSBytes and Phase come from the instance's agent
	// (fillUsage); absent when it did not answer.
	CPUPercent *float64 `json:"cpu_percent,omitempty"`
	RSSBytes   *uint64  `json:"rss_bytes,omitempty"`
	Phase      string   `json:"phase,omitempty"`
}

func newInstanceOut(i registry.Instance) instanceOut {
	out := instanceOut{
		ID: i.ID, App: i.App, Rev: i.Rev, Proc: i.Proc, Host: i.Host, State: string(i.State),
		Since: i.Since, Port: i.Port, PID: i.PID, Restarts: i.Restarts, ExitCode: i.ExitCode,
		Signal: i.Signal, Reason: i.Reason, Health: i.Health, Ticket: i.Ticket, Created: i.Created,
	}
	if out.Restarts == nil {
		out.Restarts = map[string]int{}
	}
	return out
}

// reasonCell is the REASON column: the instance's reason, and its failing
// health check if any ("unhealthy: tcp check: ... connection refused").
func (i instanceOut) reasonCell() string {
	if i.Health == "" || i.State != string(registry.InstanceStarting) && i.State != string(registry.InstanceRunning) {
		return i.Reason
	}
	h := "unhealthy: " + i.Health
	if i.Reason == "" {
		return h
	}
	return i.Reason + "; " + h
}

// restartSummary is the total restart count with the reasons, e.g. "3 (fail=2 oom=1)".
func (i instanceOut) restartSummary() string {
	total := 0
	var parts []string
	for _, k := range sortedKeys(i.Restarts) {
		if n := i.Restarts[k]; n > 0 {
			total += n
			parts = append(parts, fmt.Sprintf("%s=%d", k, n))
		}
	}
	if total == 0 {
		return "0"
	}
	return fmt.Sprintf("%d (%s)", total, strings.Join(parts, " "))
}

func zeroDash(n int) string {
	if n == 0 {
		return "-"
	}
	return strconv.Itoa(n)
}

func runPS(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 0, 1, "[APP]"); err != nil {
		return err
	}
	host := flagString(e, "host")
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		var (
			insts []registry.Instance
			err   error
		)
		switch {
		case len(args) == 1:
			insts, err = r.AppInstances(ctx, args[0])
		case host != "":
			insts, err = r.HostInstances(ctx, host)
		default:
			insts, err = r.Instances(ctx)
		}
		if err := e.skipped(err); err != nil {
			return fmt.Errorf("list instances: %w", err)
		}
		if len(args) == 1 && len(insts) == 0 {
			// No instances: say so if the app itself is unknown. (Instances of
			// an app deleted with --force are still listed.)
			if _, err := r.App(ctx, args[0]); err != nil {
				return fmt.Errorf("list instances: %w", err)
			}
		}
		out := make([]instanceOut, 0, len(insts))
		for _, i := range insts {
			if host != "" && i.Host != host {
				continue
			}
			out = append(out, newInstanceOut(i))
		}
		sort.Slice(out, func(a, b int) bool {
			x, y := out[a], out[b]
			if x.App != y.App {
				return x.App < y.App
			}
			if x.Rev != y.Rev {
				return x.Rev < y.Rev
			}
			if x.Proc != y.Proc {
				return x.Proc < y.Proc
			}
			return x.ID < y.ID
		})
		if !flagBool(e, "no-usage") {
			fillUsage(ctx, e, out)
		}
		err = e.print(out, func(w io.Writer) {
			fmt.Fprintln(w, "INSTANCE\tAPP\tREV\tPROC\tHOST\tSTATE\tSINCE\tPORT\tPID\tCPU%\tRSS\tRESTARTS\tREASON")
			for _, i := range out {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", i.ID, i.App, i.Rev, i.Proc,
					dash(i.Host), i.State, ago(i.Since), zeroDash(i.Port), zeroDash(i.PID),
					i.cpuCell(), i.rssCell(), i.restartSummary(), dash(i.reasonCell()))
			}
		})
		if err != nil || host != "" {
			return err
		}
		app := ""
		if len(args) == 1 {
			app = args[0]
		}
		return printWaiting(ctx, e, r, app)
	})
}

// printWaiting tells, on stderr, which scales of app (all when "") have
// instances waiting for capacity, and why (registry.ScaleStatus).
func printWaiting(ctx context.Context, e *env, r *registry.Registry, app string) error {
	st, err := r.ScaleStatuses(ctx, app)
	if err != nil && !errors.Is(err, registry.ErrCorrupt) {
		return fmt.Errorf("list waiting scales: %w", err)
	}
	for _, s := range st {
		fmt.Fprintf(e.stderr, "visor: %s\n", s)
	}
	return nil
}
