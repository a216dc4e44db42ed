package vm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/visorhq/visor/registry"
)

// scenarioUpgrade: dpkg -i of version+1 on h3; the postinst restarts the
// running agent onto the new binary; its instances keep running, in the
// same cgroups (checkLayout).
func scenarioUpgrade(t *testing.T, f *fleet) {
	ctx, cancel := f.within(15 * time.Minute)
	defer cancel()
	g := f.guest("h3")
	before, beforeProcs, oldPID := f.hostState(ctx, t, g)
	if err := f.installDeb(ctx, g, "0.0.1~vm2"); err != nil {
		t.Fatal(err)
	}
	out, err := g.must(ctx, "dpkg-query -W -f='${Version}' visor; echo; visor version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "0.0.1~vm2-1") || !strings.Contains(out, "v0.0.1-vm2") {
		t.Fatalf("after the upgrade: %q, want package 0.0.1~vm2-1 and binary v0.0.1-vm2", out)
	}
	p, err := unitProps(ctx, g, "ActiveState", "MainPID")
	if err != nil {
		t.Fatal(err)
	}
	if p["ActiveState"] != "active" || p["MainPID"] == oldPID {
		t.Fatalf("after the upgrade: %v (main pid before %s): want active with a new agent", p, oldPID)
	}
	if err := waitFor(ctx, time.Second, func(ctx context.Context) string {
		h, err := f.reg.Host(ctx, g.name)
		if err != nil {
			return err.Error()
		}
		if h.Version != "v0.0.1-vm2" {
			return "host record version " + h.Version
		}
		return ""
	}); err != nil {
		t.Fatal(err)
	}
	f.checkKept(ctx, t, g, before, beforeProcs)
	f.checkLayout(ctx, t, g)
}

// hostStarted returns the start time in g's host record (zero if none).
func (f *fleet) hostStarted(ctx context.Context, name string) time.Time {
	h, err := f.reg.Host(ctx, name)
	if err != nil {
		return time.Time{}
	}
	return h.Started
}

// scenarioPowerOffReboot is scenarios 5 and 6 of the issue, overlapped so
// that the two boots (the suite's slowest steps) run at once: kill -9 of
// h2's qemu (a hard power-off), and its instances are replaced on the other
// hosts; then h2 boots from its disk while h1 gets a clean `systemctl
// reboot`. On each, the agent starts at boot (once), the host rejoins and
// nothing runs twice: none of h2's replaced instances runs again, h1's run
// on h1 (restarted in place) or nowhere, depending on whether the reboot
// outlasted ttl + lost_grace (see checkRejoined); the app settles at its
// scale on all three hosts, in the cgroup layout of checkLayout.
func scenarioPowerOffReboot(t *testing.T, f *fleet) {
	ctx, cancel := f.within(15 * time.Minute)
	defer cancel()
	off, rb := f.guest("h2"), f.guest("h1")
	offBefore, _, _ := f.hostState(ctx, t, off)
	if err := off.kill(); err != nil {
		t.Fatal(err)
	}
	offAt := time.Now()
	snap := map[string]registry.Instance{}
	if err := waitFor(ctx, 500*time.Millisecond, func(ctx context.Context) string {
		return f.settled(ctx, scale, f.except(off.name), snap)
	}); err != nil {
		t.Fatalf("after powering %s off: %v", off.name, err)
	}
	t.Logf("%s's %d instances replaced on the others %s after the power-off (ttl 10s + grace 20s)", off.name, len(offBefore), time.Since(offAt).Round(100*time.Millisecond))
	rbBefore := map[string]registry.Instance{} // what h1 runs now, h2's replacements included
	for id, in := range snap {
		if in.Host == rb.name {
			rbBefore[id] = in
		}
	}
	start := time.Now()
	var wg sync.WaitGroup
	var bootErr, rebootErr error
	wg.Add(2)
	go func() {
		defer wg.Done()
		if bootErr = off.start(ctx, ""); bootErr == nil {
			bootErr = off.waitAgent(ctx)
		}
		t.Logf("%s booted (command channel up) in %s", off.name, time.Since(start).Round(100*time.Millisecond))
	}()
	go func() {
		defer wg.Done()
		rebootErr = reboot(ctx, rb)
		t.Logf("%s rebooted (command channel up) in %s", rb.name, time.Since(start).Round(100*time.Millisecond))
	}()
	wg.Wait()
	if err := errors.Join(bootErr, rebootErr); err != nil {
		t.Fatal(err)
	}
	f.checkRejoined(ctx, t, off, start, offBefore, true)
	f.checkRejoined(ctx, t, rb, start, rbBefore, false)
}

// checkRejoined waits until g's agent, started by systemd at boot, has a
// host record newer than since, then checks that the fleet is settled with
// every host (exactly scale instances, each host running a process for
// each of its instances and no other) and what became of old, g's
// instances before it went down. When they were replaced while g was
// down (replaced: the suite waited for that), none of them runs again.
// Otherwise g may have come back within ttl + lost_grace, and its agent
// then restarts them in place (a 31 s reboot did, where the template's
// systemd 254 boots faster than 252 did): each of old then runs on g
// or nowhere, never on another host.
func (f *fleet) checkRejoined(ctx context.Context, t *testing.T, g *guest, since time.Time, old map[string]registry.Instance, replaced bool) {
	t.Helper()
	if err := waitFor(ctx, time.Second, func(ctx context.Context) string {
		if st := f.hostStarted(ctx, g.name); !st.After(since) {
			return fmt.Sprintf("%s's host record started %s", g.name, st)
		}
		return ""
	}); err != nil {
		t.Fatal(err)
	}
	out, err := g.must(ctx, "systemctl is-enabled visor-agent; systemctl is-active visor-agent; journalctl -b -u visor-agent --no-pager | grep -c ' Started visor-agent'")
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(out); len(f) != 3 || f[0] != "enabled" || f[1] != "active" || f[2] != "1" {
		t.Fatalf("%s after boot: %q, want enabled, active, started once this boot", g.name, out)
	}
	snap := map[string]registry.Instance{}
	if err := waitFor(ctx, time.Second, func(ctx context.Context) string {
		return f.settled(ctx, scale, f.names(), snap)
	}); err != nil {
		t.Fatal(err)
	}
	again := 0
	for id, in := range snap {
		if _, was := old[id]; !was {
			continue
		}
		switch {
		case in.Host != g.name:
			t.Errorf("instance %s of %s before it went down runs on %s", id, g.name, in.Host)
		case replaced:
			t.Errorf("instance %s of %s before it went down (replaced since) runs there again (pid %d)", id, g.name, in.PID)
		default:
			again++
		}
	}
	if !replaced {
		t.Logf("%s: %d of its %d instances from before the reboot restarted in place (back within ttl + lost_grace), the others replaced", g.name, again, len(old))
	}
	f.checkLayout(ctx, t, g)
}

// reboot runs `systemctl reboot` in g and waits until g answers from its
// next boot (a new boot id).
func reboot(ctx context.Context, g *guest) error {
	out, err := g.must(ctx, "cat /proc/sys/kernel/random/boot_id")
	if err != nil {
		return err
	}
	old := strings.TrimSpace(out)
	if _, err := g.must(ctx, "(sleep 1; systemctl reboot) >/dev/null 2>&1 </dev/null &"); err != nil {
		return err
	}
	// The channel answers again once the guest is up after the reboot.
	if _, err := g.probe(ctx, "cat /proc/sys/kernel/random/boot_id", func(out string) bool {
		id := strings.TrimSpace(out)
		return id != "" && id != old
	}); err != nil {
		return fmt.Errorf("%s did not come back from the reboot: %w", g.name, err)
	}
	return nil
}

// scenarioPurge: systemctl stop then dpkg --purge on h3 (the host that
// stayed up through scenarios 5 and 6, so it runs instances): the agent is
// gone, its instances keep running (KillMode=process, as
// packaging/README.md says: drain first if they should stop), the registry
// replaces them on the other hosts, and nothing of the package is left on
// disk.
func scenarioPurge(t *testing.T, f *fleet) {
	ctx, cancel := f.within(15 * time.Minute)
	defer cancel()
	g := f.guest("h3")
	_, beforeProcs, _ := f.hostState(ctx, t, g)
	if _, err := g.must(ctx, "systemctl stop visor-agent && dpkg --purge visor"); err != nil {
		t.Fatal(err)
	}
	out, rc, err := g.run(ctx, `for p in /usr/bin/visor /lib/systemd/system/visor-agent.service /etc/visor /var/lib/visor /run/visor /etc/systemd/system/visor-agent.service.d /usr/share/doc/visor /usr/lib/tmpfiles.d/visor.conf; do
	[ -e "$p" ] && echo "left: $p"
done
dpkg-query -W visor 2>/dev/null && echo "still known to dpkg"
pgrep -x visor && echo "agent still running"
systemctl cat visor-agent >/dev/null 2>&1 && echo "unit still known"
true`)
	if err != nil || rc != 0 || strings.TrimSpace(out) != "" {
		t.Fatalf("after stop and purge: %v %d %q", err, rc, out)
	}
	procs, err := f.guestProcs(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	for pid, info := range beforeProcs {
		if procs[pid] != info {
			t.Errorf("instance process %d (%s) ended with the purge; the documented behaviour is that it keeps running", pid, info)
		}
	}
	if err := waitFor(ctx, time.Second, func(ctx context.Context) string {
		run, err := f.running(ctx)
		if err != nil {
			return err.Error()
		}
		for _, in := range run {
			if in.Host == g.name {
				return fmt.Sprintf("instance %s still on %s", in.ID, in.Host)
			}
		}
		if len(run) != scale {
			return fmt.Sprintf("%d running on %v, want %d", len(run), f.except(g.name), scale)
		}
		if _, err := f.reg.Host(ctx, g.name); err == nil {
			return g.name + " still has a host record"
		}
		return ""
	}); err != nil {
		t.Fatal(err)
	}
}
