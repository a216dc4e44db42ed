package ui

import (
	"time"

	"github.com/visorhq/visor/registry"
)

// maxOverviewCharts bounds the charts on the overview; the other apps'
// charts are on their own pages.
const maxOverviewCharts = 24

// pictures are a page's charts; History nil (no history kept) shows none.
type pictures struct {
	Kept   bool
	Since  time.Time
	Every  time.Duration
	Charts []Chart
	More   int // apps left off the overview
}

func (h *Handler) newPictures() pictures {
	if h.cfg.History == nil {
		return pictures{}
	}
	return pictures{Kept: true, Since: h.cfg.History.Since(), Every: h.cfg.History.cfg.Interval}
}

// appChart charts the app's running instances: the samples, then the
// count at this moment (running, from History.Now), so that the chart's
// last point agrees with the page's tables between samples.
func (h *Handler) appChart(app string, now time.Time, running map[string]float64) Chart {
	hs := h.cfg.History
	pts := hs.AppRunning(app)
	if running != nil {
		pts = append(pts, Point{T: now, V: running[app]})
	}
	return Chart{ID: "app-" + app, Title: "Running instances of " + app, Unit: "", Points: pts,
		Window: hs.Window(), End: now}
}

// overviewPictures charts the running instances of the apps in rows (in
// their order), at most maxOverviewCharts.
func (h *Handler) overviewPictures(rows []scaleRow) pictures {
	p := h.newPictures()
	if !p.Kept {
		return p
	}
	now := time.Now()
	running, _, _ := h.cfg.History.Now()
	seen := map[string]bool{}
	for _, r := range rows {
		if seen[r.App] {
			continue
		}
		seen[r.App] = true
		if len(p.Charts) == maxOverviewCharts {
			p.More++
			continue
		}
		p.Charts = append(p.Charts, h.appChart(r.App, now, running))
	}
	return p
}

func (h *Handler) appPictures(app string) pictures {
	p := h.newPictures()
	if p.Kept {
		running, _, _ := h.cfg.History.Now()
		p.Charts = []Chart{h.appChart(app, time.Now(), running)}
	}
	return p
}

func (h *Handler) hostPictures(host string) pictures {
	p := h.newPictures()
	if !p.Kept {
		return p
	}
	hs, now := h.cfg.History, time.Now()
	load, mem := hs.HostLoad(host)
	if _, hosts, ok := hs.Now(); ok {
		if l, live := hosts[host]; live {
			load = append(load, Point{T: now, V: l.Load1})
			mem = append(mem, Point{T: now, V: l.MemUsedPercent})
		}
	}
	p.Charts = []Chart{
		{ID: "load-" + host, Title: "Load average (1 min) of " + host, Points: load, Window: hs.Window(), End: now, Decimals: 2},
		{ID: "mem-" + host, Title: "Memory used on " + host, Unit: "%", Points: mem, Max: 100, Window: hs.Window(), End: now, Decimals: 1},
	}
	return p
}

// transitions is the instance's state history, newest first.
func (h *Handler) transitions(id string) []Transition {
	if h.cfg.History == nil {
		return nil
	}
	ts := h.cfg.History.Transitions(id)
	for i, j := 0, len(ts)-1; i < j; i, j = i+1, j-1 {
		ts[i], ts[j] = ts[j], ts[i]
	}
	return ts
}

// restartCount sums an instance's restarts over their reasons.
func restartCount(in registry.Instance) int {
	n := 0
	for _, v := range in.Restarts {
		n += v
	}
	return n
}
