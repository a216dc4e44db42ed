package agent

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/registry"
)

const gib = 1 << 30

func TestHostCapacity(t *testing.T) {
	cases := []struct {
		name  string
		facts hostFacts
		res   registry.HostResources
		slots int
		by    string
	}{
		{
			name:  "memory binds",
			facts: hostFacts{MemoryBytes: 16 * gib, CPUs: 4, PidLimit: 4194304},
			// 16 GiB less a tenth; pids less a tenth.
			res:   registry.HostResources{MemoryBytes: 16*gib - 16*gib/10, CPUMillis: 4000, Pids: 4194304 - 419430},
			slots: int((16*gib - 16*gib/10) / DefaultInstanceMemory), by: "memory",
		},
		{
			name:  "pids bind",
			facts: hostFacts{MemoryBytes: 256 * gib, CPUs: 2, PidLimit: 32768},
			res:   registry.HostResources{MemoryBytes: 256*gib - 256*gib/10, CPUMillis: 2000, Pids: 32768 - 3276},
			slots: (32768 - 3276) / DefaultInstancePids, by: "pids",
		},
		{
			name:  "small host keeps the minimum reserves",
			facts: hostFacts{MemoryBytes: 1 * gib, CPUs: 1, PidLimit: 1000},
			res:   registry.HostResources{MemoryBytes: 1*gib - minMemoryReserve, CPUMillis: 1000, Pids: 1000 - minPidsReserve},
			slots: 6, by: "memory", // 768 MiB / 128 MiB; pids: 744/32 = 23
		},
		{
			name:  "tiny host gets one slot",
			facts: hostFacts{MemoryBytes: 200 << 20, PidLimit: 40},
			res:   registry.HostResources{MemoryBytes: 100 << 20, Pids: 20},
			slots: 1, by: "memory",
		},
		{
			name:  "nothing known is unlimited",
			facts: hostFacts{},
			slots: 0, by: "unknown",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := hostResources(c.facts)
			if res != c.res {
				t.Errorf("hostResources = %+v, want %+v", res, c.res)
			}
			slots, by := defaultCapacity(res, DefaultInstanceMemory, DefaultInstancePids)
			if slots != c.slots || by != c.by {
				t.Errorf("defaultCapacity = %d by %s, want %d by %s", slots, by, c.slots, c.by)
			}
		})
	}
}

func TestAdmit(t *testing.T) {
	res := registry.HostResources{MemoryBytes: 1 * gib, CPUMillis: 2000}
	cases := []struct {
		name     string
		capacity int
		res      registry.HostResources
		used     usage
		want     reservation
		ok       bool
		why      string
	}{
		{"room", 10, res, usage{Instances: 3, MemoryBytes: 384 << 20}, reservation{MemoryBytes: 128 << 20}, true, ""},
		{"slots full", 3, res, usage{Instances: 3}, reservation{MemoryBytes: 1}, false, "all 3 slots used"},
		{"unlimited slots, memory bounds", 0, res, usage{Instances: 100, MemoryBytes: 1000 << 20}, reservation{MemoryBytes: 128 << 20},
			false, "memory: 1000 MiB of 1024 MiB reserved, the instance needs 128 MiB"},
		{"exact memory fit", 10, res, usage{Instances: 1, MemoryBytes: 768 << 20}, reservation{MemoryBytes: 256 << 20}, true, ""},
		{"larger than the host", 10, res, usage{}, reservation{MemoryBytes: 2 * gib},
			false, "the instance reserves 2048 MiB, more than the host's 1024 MiB"},
		{"cpu bounds declared cpu", 10, res, usage{Instances: 2, CPUMillis: 1800}, reservation{CPUMillis: 250},
			false, "cpu: 1800m of 2000m reserved, the instance needs 250m"},
		{"undeclared cpu is not bounded", 10, res, usage{Instances: 2, CPUMillis: 2000}, reservation{}, true, ""},
		{"unknown resources bound nothing", 0, registry.HostResources{}, usage{Instances: 1e6, MemoryBytes: 1 << 50}, reservation{MemoryBytes: gib}, true, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ok, why := admit(c.capacity, c.res, c.used, c.want)
			if ok != c.ok || why != c.why {
				t.Errorf("admit = %v %q, want %v %q", ok, why, c.ok, c.why)
			}
		})
	}
}

func TestPidLimit(t *testing.T) {
	write := func(t *testing.T, path, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name  string
		files map[string]string
		want  int
	}{
		{"nothing readable", nil, 0},
		{"pid_max binds", map[string]string{"proc/sys/kernel/pid_max": "32768\n", "proc/sys/kernel/threads-max": "192725\n"}, 32768},
		{"threads-max binds", map[string]string{"proc/sys/kernel/pid_max": "4194304\n", "proc/sys/kernel/threads-max": "60000\n"}, 60000},
		{"the agent's cgroup binds", map[string]string{
			"proc/sys/kernel/pid_max":                "4194304\n",
			"proc/self/cgroup":                       "0::/system.slice/visor.service\n",
			"cg/system.slice/visor.service/pids.max": "max\n",
			"cg/system.slice/pids.max":               "4000\n",
		}, 4000},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, body := range c.files {
				write(t, filepath.Join(dir, name), body)
			}
			if got := pidLimit(filepath.Join(dir, "proc"), filepath.Join(dir, "cg")); got != c.want {
				t.Errorf("pidLimit = %d, want %d", got, c.want)
			}
		})
	}
}

// TestReservationMeta: what an instance reserves survives in its meta
// (for re-adoption), and an instance without it reserves the default.
func TestReservationMeta(t *testing.T) {
	a := newAdmission(0, registry.HostResources{}, DefaultInstanceMemory)
	m := map[string]string{}
	r := a.reservationOf(registry.Ticket{Reserve: &registry.Limits{CPUMillis: 500}})
	if r != (reservation{MemoryBytes: DefaultInstanceMemory, CPUMillis: 500}) {
		t.Fatalf("reservationOf = %+v", r)
	}
	r.meta(m)
	if got := a.reservationFromMeta(m); got != r {
		t.Errorf("from meta = %+v, want %+v", got, r)
	}
	if got := a.reservationFromMeta(nil); got != (reservation{MemoryBytes: DefaultInstanceMemory}) {
		t.Errorf("from empty meta = %+v", got)
	}
	if s := mib(3 << 20); !strings.HasPrefix(s, "3 ") {
		t.Errorf("mib = %q", s)
	}
}

// TestAgentMemoryWait: a start that the host's free slots would take but
// its memory would not is not written as a ticket no host claims: the
// scale waits, with a reason naming memory, as it does for slots. The
// host advertises what an instance declaring no memory reserves
// (HostResources.InstanceMemory), so the fleet counts its running
// instances as the agent does.
func TestAgentMemoryWait(t *testing.T) {
	f := newFixture(t)
	res := hostResources(readHostFacts())
	if res.MemoryBytes == 0 {
		if runtime.GOOS == "linux" {
			t.Fatal("this host's memory cannot be read (/proc/meminfo): the agent could not admit by memory")
		}
		t.Skip("this host's memory cannot be read")
	}
	quarter := res.MemoryBytes / 4
	f.startAgent(t, "host-a", t.TempDir(), func(c *Config) {
		c.StopOnExit = true
		c.Capacity = 0 // automatic: memory / InstanceMemory = 4 (or fewer, by pids)
		c.InstanceMemory = quarter
	})
	var h registry.Host
	proctest.WaitFor(t, 10*time.Second, "host-a advertising its resources", func() bool {
		var err error
		h, err = f.reg.Host(f.ctx, "host-a")
		return err == nil && h.Resources != nil
	})
	if h.Resources.InstanceMemory != quarter {
		t.Fatalf("host record instance_memory = %d, want %d", h.Resources.InstanceMemory, quarter)
	}
	if h.Capacity < 3 {
		t.Skipf("automatic capacity %d (bound by pids): the test needs a free slot beside 2 instances", h.Capacity)
	}
	_, err := f.reg.Scale(f.ctx, "demo", "v1", "web", 2)
	must(t, err)
	f.waitRunning(t, "demo", 2) // half the memory reserved, by default
	_, err = f.reg.SetProcType(f.ctx, registry.ProcType{App: "demo", Name: "big", Command: "sleep 3600",
		Limits: registry.Limits{MemoryBytes: 2*quarter + 1<<20}})
	must(t, err)
	// v1 was released without big: big ships in the next release.
	_, err = f.reg.RegisterRevisionFrom(f.ctx, "demo", "v2", "v1")
	must(t, err)
	sr, err := f.reg.Scale(f.ctx, "demo", "v2", "big", 1)
	must(t, err)
	if len(sr.Started) != 0 || sr.Waiting != 1 || !strings.HasPrefix(sr.Reason, "no host has memory: 1 host") {
		t.Fatalf("scale big=1 beside 2 default instances: %d started, %d waiting (%q)", len(sr.Started), sr.Waiting, sr.Reason)
	}
	st, err := f.reg.ScaleStatuses(f.ctx, "demo")
	must(t, err)
	if len(st) != 1 || st[0].Proc != "big" || st[0].Waiting != 1 || st[0].Reason != sr.Reason {
		t.Fatalf("scale statuses = %+v, want big waiting for memory", st)
	}
}
