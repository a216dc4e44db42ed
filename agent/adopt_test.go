package agent

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
)

// adoptFakes records what adoption asked of each part; every method may
// run on several goroutines (adoptAll adopts in parallel).
type adoptFakes struct {
	mu        sync.Mutex
	local     []supervisor.Status
	adoptErr  map[string]error
	hostInsts []registry.Instance
	tickets   map[string]registry.Ticket

	resumed, touched, dropped, replaced, reclaimed []string
	expected                                       map[string]string // instance -> ticket
	updated                                        []registry.Instance
}

func (f *adoptFakes) note(list *[]string, v string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	*list = append(*list, v)
	slices.Sort(*list)
}

func (f *adoptFakes) List() []supervisor.Status { return slices.Clone(f.local) }
func (f *adoptFakes) Resume(id string) error    { f.note(&f.resumed, id); return nil }
func (f *adoptFakes) touch(id string)           { f.note(&f.touched, id) }
func (f *adoptFakes) drop(id string) bool       { f.note(&f.dropped, id); return true }
func (f *adoptFakes) expect(id string, t registry.Ticket) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expected[id] = t.ID
}

func (f *adoptFakes) HostInstances(ctx context.Context, host string) ([]registry.Instance, error) {
	return f.hostInsts, nil
}

func (f *adoptFakes) Ticket(ctx context.Context, id string) (registry.Ticket, error) {
	if t, ok := f.tickets[id]; ok {
		return t, nil
	}
	return registry.Ticket{}, registry.ErrNotFound
}

func (f *adoptFakes) Adopt(ctx context.Context, id string) (registry.Instance, error) {
	return registry.Instance{ID: id}, f.adoptErr[id]
}

func (f *adoptFakes) Reclaim(ctx context.Context, t registry.Ticket) error {
	f.note(&f.reclaimed, t.ID)
	return nil
}

func (f *adoptFakes) UpdateInstance(ctx context.Context, in registry.Instance) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.updated = append(f.updated, in)
	return nil
}

// TestAdoptAll: with a new session, a local instance the registry still
// gives this host is adopted and resumed (and its unheld start ticket
// reclaimed and expected by the writer); one another host now holds, or
// the registry no longer has, is dropped and stopped; a terminal one and
// one whose adoption failed for another reason are left to the writer; a
// registry instance of this host with no local process is written back as
// exited, while pending, claimed and terminal ones are left alone. No etcd.
func TestAdoptAll(t *testing.T) {
	f := &adoptFakes{
		local: []supervisor.Status{
			{ID: "keep", State: supervisor.StateRunning, Meta: map[string]string{metaTicket: "tk-keep"}},
			{ID: "held", State: supervisor.StateRunning, Meta: map[string]string{metaTicket: "tk-held"}},
			{ID: "moved", State: supervisor.StateRunning},
			{ID: "deleted", State: supervisor.StateRunning},
			{ID: "done", State: supervisor.StateExited},
			{ID: "flaky", State: supervisor.StateRunning},
		},
		adoptErr: map[string]error{
			"moved":   registry.ErrNotHolder,
			"deleted": registry.ErrNotFound,
			"flaky":   errors.New("connection reset"),
		},
		tickets: map[string]registry.Ticket{
			"tk-keep": {ID: "tk-keep", Op: registry.TicketStart},
			"tk-held": {ID: "tk-held", Op: registry.TicketStart, Holder: "h2"},
		},
		hostInsts: []registry.Instance{
			{ID: "keep", Host: "h1", State: registry.InstanceRunning},
			{ID: "vanished", Host: "h1", State: registry.InstanceRunning},
			{ID: "waiting", Host: "h1", State: registry.InstancePending},
			{ID: "claimed", Host: "h1", State: registry.InstanceClaimed},
			{ID: "over", Host: "h1", State: registry.InstanceExited},
		},
		expected: map[string]string{},
	}
	ad := &adopter{host: "h1", log: hclog.NewNullLogger(), sup: f, writer: f, reg: f,
		replaced: func(id string) { f.note(&f.replaced, id) }}
	ad.adoptAll(context.Background(), f)

	for _, tc := range []struct {
		what      string
		got, want []string
	}{
		{"resumed", f.resumed, []string{"held", "keep"}},
		{"touched", f.touched, []string{"done", "flaky", "held", "keep"}},
		{"dropped", f.dropped, []string{"deleted", "moved"}},
		{"stopped as replaced", f.replaced, []string{"deleted", "moved"}},
		{"start tickets reclaimed", f.reclaimed, []string{"tk-keep"}},
	} {
		if !slices.Equal(tc.got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.what, tc.got, tc.want)
		}
	}
	if len(f.expected) != 1 || f.expected["keep"] != "tk-keep" {
		t.Errorf("writer expects %v, want keep's ticket tk-keep only", f.expected)
	}
	if len(f.updated) != 1 || f.updated[0].ID != "vanished" || f.updated[0].State != registry.InstanceExited ||
		f.updated[0].Reason != "process not found on host after agent restart" {
		t.Errorf("written back: %+v, want vanished as exited with the reason", f.updated)
	}
}
