package agent

import (
	"context"
	"time"

	"github.com/shirou/gopsutil/v4/load"
	"github.com/shirou/gopsutil/v4/mem"

	"github.com/visorhq/visor/registry"
)

// hostLoad samples the host's load and memory (gopsutil) and counts the
// live instances supervised here.
func (a *Agent) hostLoad() registry.HostLoad {
	var l registry.HostLoad
	if avg, err := load.Avg(); err == nil {
		l.Load1 = avg.Load1
	}
	if vm, err := mem.VirtualMemory(); err == nil {
		l.MemUsedPercent = vm.UsedPercent
	}
	if a.sup != nil {
		l.Instances = a.adm.liveCount()
	}
	return l
}

// statusLoop writes the host record with fresh load figures every
// StatusInterval (at most once per 10 s), with a jittered first write, until
// ctx ends. This and lease keepalives are the only etcd traffic of an idle
// agent.
func (a *Agent) statusLoop(ctx context.Context, s *registry.HostSession) {
	t := time.NewTimer(a.cfg.StatusInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.UpdateHost(ctx, a.hostRecord()); err != nil && ctx.Err() == nil {
			a.log.Warn("write host status", "error", err)
		}
		t.Reset(a.cfg.StatusInterval)
	}
}
