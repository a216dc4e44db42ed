package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"github.com/visorhq/visor/registry"
)

func newTicketCmd(e *env) *cobra.Command {
	return group(&cobra.Command{Use: "ticket", Short: "list open tickets (work orders for agents)"}, newTicketListCmd(e))
}

func newTicketListCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "list open tickets (work orders for agents)",
		Long: `Without --host, every open ticket; with --host, the tickets targeted at that
host or held by it.`,
		RunE: runWith(e, runTickets),
	}
	cmd.Flags().String("host", "", "only tickets targeted at or held by this host")
	return cmd
}

// ticketOut is the CLI's JSON form of a ticket.
type ticketOut struct {
	ID          string    `json:"id"`
	Op          string    `json:"op"`
	App         string    `json:"app"`
	Rev         string    `json:"rev"`
	Proc        string    `json:"proc"`
	Instance    string    `json:"instance"`
	Host        string    `json:"host"`
	Signal      string    `json:"signal"`
	Holder      string    `json:"holder"`
	Attempts    int       `json:"attempts"`
	MaxAttempts int       `json:"max_attempts"`
	FailedHosts []string  `json:"failed_hosts"`
	Reasons     []string  `json:"reasons"`
	Created     time.Time `json:"created"`
}

func newTicketOut(t registry.Ticket) ticketOut {
	return ticketOut{
		ID: t.ID, Op: string(t.Op), App: t.App, Rev: t.Rev, Proc: t.Proc, Instance: t.Instance,
		Host: t.Host, Signal: t.Signal, Holder: t.Holder, Attempts: t.Attempts, MaxAttempts: t.MaxAttempts,
		FailedHosts: nonNil(t.FailedHosts), Reasons: nonNil(t.Reasons), Created: t.Created,
	}
}

func runTickets(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 0, 0, ""); err != nil {
		return err
	}
	host := flagString(e, "host")
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		var (
			ts  []registry.Ticket
			err error
		)
		if host != "" {
			ts, err = r.HostTickets(ctx, host)
		} else {
			ts, err = r.Tickets(ctx)
		}
		if err := e.skipped(err); err != nil {
			return fmt.Errorf("list tickets: %w", err)
		}
		out := make([]ticketOut, 0, len(ts))
		for _, t := range ts {
			out = append(out, newTicketOut(t))
		}
		// Ticket ids sort in creation order.
		sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
		err = e.print(out, func(w io.Writer) {
			fmt.Fprintln(w, "TICKET\tOP\tAPP/REV/PROC\tINSTANCE\tTARGET\tHOLDER\tATTEMPTS\tAGE")
			for _, t := range out {
				fmt.Fprintf(w, "%s\t%s\t%s/%s/%s\t%s\t%s\t%s\t%d/%d\t%s\n", t.ID, t.Op, t.App, t.Rev, t.Proc,
					dash(t.Instance), dash(t.Host), dash(t.Holder), t.Attempts, t.MaxAttempts, ago(t.Created))
			}
		})
		if err != nil || host != "" {
			return err
		}
		// Instances that wait for capacity have no ticket yet: say so.
		return printWaiting(ctx, e, r, "")
	})
}
