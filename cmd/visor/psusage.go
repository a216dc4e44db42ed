package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/visorhq/visor/supervisor"
)

// usageTimeout bounds the call to one agent for ps's CPU, RSS and phase.
const usageTimeout = 5 * time.Second

// fillUsage asks the agent of every host with live instances in out for
// their CPU, RSS and phase (GET /v1/instances) and fills them in; an
// instance whose process is SIGSTOPped shows state "stopped" (issue 17,
// item 1). An agent that does not answer costs a warning on stderr naming
// it, and its instances keep "-".
func fillUsage(ctx context.Context, e *env, out []instanceOut) {
	byHost := map[string]string{} // host -> one of its live instances
	for _, i := range out {
		if i.Host != "" && i.PID > 0 {
			byHost[i.Host] = i.ID
		}
	}
	if flagString(e, "socket") != "" {
		// One local agent: ask it once.
		for h, id := range byHost {
			byHost = map[string]string{h: id}
			break
		}
	}
	usage := map[string]supervisor.Status{}
	for host, id := range byHost {
		sts, err := agentStatuses(ctx, e, id)
		if err != nil {
			fmt.Fprintf(e.stderr, "visor: host %s: no CPU, RSS or phase: %v\n", host, err)
			continue
		}
		for _, st := range sts {
			usage[st.ID] = st
		}
	}
	for k, i := range out {
		st, ok := usage[i.ID]
		if !ok || st.PID != i.PID || st.PID == 0 {
			continue
		}
		cpu, rss := st.CPUPercent, st.RSSBytes
		out[k].CPUPercent, out[k].RSSBytes, out[k].Phase = &cpu, &rss, string(st.Phase)
		if st.Phase == supervisor.PhaseStopped {
			out[k].State = "stopped"
		}
	}
}

// agentStatuses lists the instances of the agent that runs instance id.
func agentStatuses(ctx context.Context, e *env, id string) ([]supervisor.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, usageTimeout)
	defer cancel()
	call, err := agentFor(ctx, e, id)
	if err != nil {
		return nil, err
	}
	resp, err := call.do(ctx, http.MethodGet, "/v1/instances", nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var sts []supervisor.Status
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&sts); err != nil {
		return nil, fmt.Errorf("decode the agent's instances: %w", err)
	}
	return sts, nil
}

// cpuCell and rssCell format the usage columns of ps ("-" when unknown).
func (i instanceOut) cpuCell() string {
	if i.CPUPercent == nil {
		return "-"
	}
	return strconv.FormatFloat(*i.CPUPercent, 'f', 1, 64)
}

func (i instanceOut) rssCell() string {
	if i.RSSBytes == nil {
		return "-"
	}
	const mib = 1 << 20
	if *i.RSSBytes >= mib {
		return strconv.FormatFloat(float64(*i.RSSBytes)/mib, 'f', 1, 64) + "M"
	}
	return strconv.FormatUint(*i.RSSBytes/1024, 10) + "K"
}
