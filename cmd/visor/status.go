package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/visorhq/visor/registry"
)

func newStatusCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "one screen on the fleet: hosts, desired vs running, problems, waiting work",
		Long: `status summarises the fleet from the registry on one screen:

  hosts      how many are up, draining and lost (a lost host holds live
             instances but its agent's lease is gone); draining and lost
             hosts are named
  scales     per app, revision and process type: desired against running,
             and the instances starting, unhealthy (running or starting
             with a failing health check), in backoff, failed and lost
  tickets    the work orders no host holds yet, grouped by what they ask
             for and why they wait (the last reason a host gave); and the
             scales whose instances wait for room (no ticket is written
             for those yet), with the reconciler's reason

-o json prints the same as one JSON document.`,
		RunE: runWith(e, runStatus),
	}
}

// statusOut is `visor status`: the fleet on one screen.
type statusOut struct {
	Hosts     hostsSummary           `json:"hosts"`
	Scales    []scaleSummary         `json:"scales"`
	Instances instanceCounts         `json:"instances"`
	Tickets   ticketsSummary         `json:"tickets"`
	Waiting   []registry.ScaleStatus `json:"waiting"`
}

type hostsSummary struct {
	Up       int `json:"up"`
	Draining int `json:"draining"`
	Lost     int `json:"lost"`
	// Problems are the hosts that are not simply up, by id.
	Problems []hostProblem `json:"problems"`
}

type hostProblem struct {
	Host      string `json:"host"`
	State     string `json:"state"` // draining or lost
	Instances int    `json:"instances"`
}

// instanceCounts are the desired count beside the instance counts.
type instanceCounts struct {
	Desired int `json:"desired"`
	registry.InstanceCounts
}

type scaleSummary struct {
	App  string `json:"app"`
	Rev  string `json:"rev"`
	Proc string `json:"proc"`
	instanceCounts
}

type ticketsSummary struct {
	Claimed int           `json:"claimed"`
	Waiting int           `json:"waiting"`
	Groups  []ticketGroup `json:"groups"`
}

// ticketGroup is the unclaimed tickets of one op and process type that
// wait for the same reason.
type ticketGroup struct {
	Op     string `json:"op"`
	App    string `json:"app"`
	Rev    string `json:"rev"`
	Proc   string `json:"proc"`
	Count  int    `json:"count"`
	Reason string `json:"reason"`
}

func runStatus(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 0, 0, ""); err != nil {
		return err
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		st, err := readStatus(ctx, e, r)
		if err != nil {
			return err
		}
		return e.print(st, st.write)
	})
}

// readStatus reads hosts, instances, scales, tickets and scale statuses;
// records that do not decode are skipped with a warning (e.skipped).
func readStatus(ctx context.Context, e *env, r *registry.Registry) (statusOut, error) {
	var st statusOut
	hosts, err := r.Hosts(ctx)
	if err := e.skipped(err); err != nil {
		return st, fmt.Errorf("status: hosts: %w", err)
	}
	insts, err := r.Instances(ctx)
	if err := e.skipped(err); err != nil {
		return st, fmt.Errorf("status: instances: %w", err)
	}
	scales, err := r.Scales(ctx, "")
	if err := e.skipped(err); err != nil {
		return st, fmt.Errorf("status: scales: %w", err)
	}
	tickets, err := r.Tickets(ctx)
	if err := e.skipped(err); err != nil {
		return st, fmt.Errorf("status: tickets: %w", err)
	}
	waits, err := r.ScaleStatuses(ctx, "")
	if err := e.skipped(err); err != nil {
		return st, fmt.Errorf("status: waiting scales: %w", err)
	}
	st.Hosts = summariseHosts(hosts, insts)
	st.Scales = summariseScales(scales, insts)
	for _, s := range st.Scales {
		st.Instances.Desired += s.Desired
	}
	for _, in := range insts {
		st.Instances.Add(in)
	}
	st.Tickets = summariseTickets(tickets)
	st.Waiting = waits
	if st.Waiting == nil {
		st.Waiting = []registry.ScaleStatus{}
	}
	return st, nil
}

// summariseHosts counts the live hosts by drain, and names as lost the
// hosts that live instances (not terminal, not yet marked lost) name but
// that have no host record: their agent's lease is gone.
func summariseHosts(hosts []registry.Host, insts []registry.Instance) hostsSummary {
	var s hostsSummary
	live := map[string]bool{}
	on := map[string]int{}
	for _, in := range insts {
		if in.Host != "" && !in.State.Terminal() && in.State != registry.InstanceLost {
			on[in.Host]++
		}
	}
	for _, h := range hosts {
		live[h.ID] = true
		if h.Draining {
			s.Draining++
			s.Problems = append(s.Problems, hostProblem{Host: h.ID, State: "draining", Instances: on[h.ID]})
		} else {
			s.Up++
		}
	}
	for host, n := range on {
		if !live[host] {
			s.Lost++
			s.Problems = append(s.Problems, hostProblem{Host: host, State: "lost", Instances: n})
		}
	}
	sort.Slice(s.Problems, func(i, j int) bool { return s.Problems[i].Host < s.Problems[j].Host })
	if s.Problems == nil {
		s.Problems = []hostProblem{}
	}
	return s
}

// summariseScales joins the desired counts with the instances; a process
// type with instances but no desired count shows with desired 0.
func summariseScales(scales []registry.ScaleEntry, insts []registry.Instance) []scaleSummary {
	idx := map[[3]string]*scaleSummary{}
	row := func(app, rev, proc string) *scaleSummary {
		k := [3]string{app, rev, proc}
		if s, ok := idx[k]; ok {
			return s
		}
		s := &scaleSummary{App: app, Rev: rev, Proc: proc}
		idx[k] = s
		return s
	}
	for _, sc := range scales {
		row(sc.App, sc.Rev, sc.Proc).Desired = sc.Desired
	}
	for _, in := range insts {
		if in.State == registry.InstanceExited {
			continue
		}
		row(in.App, in.Rev, in.Proc).Add(in)
	}
	out := make([]scaleSummary, 0, len(idx))
	for _, s := range idx {
		if s.Desired == 0 && s.Running+s.Starting+s.Backoff+s.Stopping+s.Failed+s.Lost == 0 {
			continue
		}
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		return a.App+"\x00"+a.Rev+"\x00"+a.Proc < b.App+"\x00"+b.Rev+"\x00"+b.Proc
	})
	return out
}

// summariseTickets counts claimed tickets and groups the unclaimed ones by
// op, process type and the last reason a host gave up on them.
func summariseTickets(tickets []registry.Ticket) ticketsSummary {
	var s ticketsSummary
	idx := map[ticketGroup]int{}
	for _, t := range tickets {
		if t.Holder != "" {
			s.Claimed++
			continue
		}
		s.Waiting++
		g := ticketGroup{Op: string(t.Op), App: t.App, Rev: t.Rev, Proc: t.Proc, Reason: ticketWhy(t)}
		idx[g]++
	}
	for g, n := range idx {
		g.Count = n
		s.Groups = append(s.Groups, g)
	}
	slices.SortFunc(s.Groups, func(a, b ticketGroup) int {
		return strings.Compare(a.Op+a.App+"\x00"+a.Rev+"\x00"+a.Proc+"\x00"+a.Reason, b.Op+b.App+"\x00"+b.Rev+"\x00"+b.Proc+"\x00"+b.Reason)
	})
	if s.Groups == nil {
		s.Groups = []ticketGroup{}
	}
	return s
}

// ticketWhy says why an unclaimed ticket waits.
func ticketWhy(t registry.Ticket) string {
	switch {
	case len(t.Reasons) > 0:
		return fmt.Sprintf("released %d× by %s: %s", t.Attempts, strings.Join(t.FailedHosts, ","), t.Reasons[len(t.Reasons)-1])
	case t.Host != "":
		return "for host " + t.Host + ", not claimed yet"
	default:
		return "not claimed yet"
	}
}

// write prints st as text.
func (st statusOut) write(w io.Writer) {
	h := st.Hosts
	fmt.Fprintf(w, "HOSTS\t%d up, %d draining, %d lost\n", h.Up, h.Draining, h.Lost)
	for _, p := range h.Problems {
		fmt.Fprintf(w, "  %s\t%s, %d instance%s\n", p.Host, p.State, p.Instances, plural(p.Instances))
	}
	c := st.Instances
	fmt.Fprintf(w, "INSTANCES\t%d/%d running, %d starting, %d unhealthy, %d backoff, %d stopping, %d failed, %d lost\n",
		c.Running, c.Desired, c.Starting, c.Unhealthy, c.Backoff, c.Stopping, c.Failed, c.Lost)
	fmt.Fprintf(w, "TICKETS\t%d waiting, %d claimed\n", st.Tickets.Waiting, st.Tickets.Claimed)
	for _, g := range st.Tickets.Groups {
		fmt.Fprintf(w, "  %d %s %s/%s/%s\t%s\n", g.Count, g.Op, g.App, dash(g.Rev), dash(g.Proc), g.Reason)
	}
	for _, ws := range st.Waiting {
		fmt.Fprintf(w, "  %s/%s/%s\t%d/%d admitted, %d waiting for room: %s\n", ws.App, ws.Rev, ws.Proc, ws.Admitted, ws.Desired, ws.Waiting, ws.Reason)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "APP\tREV\tPROC\tRUNNING/DESIRED\tSTARTING\tUNHEALTHY\tBACKOFF\tFAILED\tLOST")
	for _, s := range st.Scales {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\t%s\n", s.App, s.Rev, s.Proc, s.Running, s.Desired,
			zeroDash(s.Starting), zeroDash(s.Unhealthy), zeroDash(s.Backoff), zeroDash(s.Failed), zeroDash(s.Lost))
	}
}
