package agent

import (
	"context"
	"net"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shirou/gopsutil/v4/load"
	"github.com/shirou/gopsutil/v4/mem"

	"github.com/visorhq/visor/registry"
)

// statusSession is what the host status writes with (*registry.HostSession).
type statusSession interface {
	UpdateHost(ctx context.Context, h registry.Host) error
}

// systemLoad reads the machine's figures (gopsutilLoad); a figure that
// cannot be read is reported as 0.
type systemLoad interface {
	load1() (float64, error)
	memUsedPercent() (float64, error)
}

// liveCounter counts the instances live or reserved here (*admission).
type liveCounter interface {
	liveCount() int
}

// hostStatus is the agent's part that makes the host record (record) and
// keeps its load figures fresh in the registry (run), from the few values
// it needs: the record's fixed fields, the bound HTTP address, and the
// load sources.
type hostStatus struct {
	// base is the host record's fixed fields (no APIAddr, no Load).
	base     registry.Host
	interval time.Duration // Config.StatusInterval
	log      hclog.Logger
	// httpAddr returns the HTTP API's bound address, "" before it
	// listens or without HTTP (Agent.HTTPAddr).
	httpAddr func() string
	system   systemLoad
	live     liveCounter
}

// hostStatusOf is the agent's hostStatus part.
func hostStatusOf(cfg Config, log hclog.Logger, adm *admission, started time.Time, httpAddr func() string) *hostStatus {
	return &hostStatus{
		base: registry.Host{
			ID:        cfg.HostID,
			Addr:      cfg.Addr,
			Labels:    cfg.Labels,
			Capacity:  adm.capacity,
			Resources: &adm.resources,
			Version:   cfg.Version,
			APIScheme: apiScheme(cfg),
			Started:   started,
		},
		interval: cfg.StatusInterval,
		log:      log,
		httpAddr: httpAddr,
		system:   gopsutilLoad{},
		live:     adm,
	}
}

// record is the host record with fresh load figures.
func (h *hostStatus) record() registry.Host {
	r := h.base
	r.APIAddr = h.apiAddr()
	r.Load = h.load()
	return r
}

// load samples the host's load and memory and counts the live instances
// supervised here.
func (h *hostStatus) load() registry.HostLoad {
	var l registry.HostLoad
	if v, err := h.system.load1(); err == nil {
		l.Load1 = v
	}
	if v, err := h.system.memUsedPercent(); err == nil {
		l.MemUsedPercent = v
	}
	l.Instances = h.live.liveCount()
	return l
}

// apiAddr is the HTTP API address other hosts' CLIs can call: the bound
// address, with an unspecified IP replaced by the host's Addr.
func (h *hostStatus) apiAddr() string {
	addr := h.httpAddr()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return net.JoinHostPort(h.base.Addr, port)
	}
	return addr
}

// run writes the host record with fresh load figures every interval
// (Config.StatusInterval: at most once per 10 s), the first an interval
// after it starts (registering wrote the record), until ctx ends. A write
// that fails is logged and the next comes an interval later. This and
// lease keepalives are the only etcd traffic of an idle agent.
func (h *hostStatus) run(ctx context.Context, s statusSession) {
	t := time.NewTimer(h.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.UpdateHost(ctx, h.record()); err != nil && ctx.Err() == nil {
			h.log.Warn("write host status", "error", err)
		}
		t.Reset(h.interval)
	}
}

// gopsutilLoad is the systemLoad of this machine (gopsutil).
type gopsutilLoad struct{}

func (gopsutilLoad) load1() (float64, error) {
	avg, err := load.Avg()
	if err != nil {
		return 0, err
	}
	return avg.Load1, nil
}

func (gopsutilLoad) memUsedPercent() (float64, error) {
	vm, err := mem.VirtualMemory()
	if err != nil {
		return 0, err
	}
	return vm.UsedPercent, nil
}
