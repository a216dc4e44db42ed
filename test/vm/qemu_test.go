package vm

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/visorhq/visor/internal/testtime"
)

// Guest machine settings. The template's saved state is only valid for the
// same device set, so every guest is started with exactly these.
const (
	guestMemMB = 512
	// tbSizeMB caps TCG's translation cache (default: a quarter of guest
	// memory up to 1 GiB per vCPU); with it a guest costs ~450 MB on the host.
	tbSizeMB = 64
	// kernelArgs boot the image's kernel straight into systemd.
	kernelArgs = "root=/dev/vda rw console=ttyS0 net.ifnames=0 loglevel=4 panic=-1"
	// cmdPort is the virtio-serial port of the guest's command channel.
	cmdPort = "org.visor.cmd"
)

// image is a built VM image (mkimage.sh's output directory).
type image struct {
	dir string
}

func (im image) base() string   { return filepath.Join(im.dir, "base.qcow2") }
func (im image) kernel() string { return filepath.Join(im.dir, "vmlinuz") }
func (im image) initrd() string { return filepath.Join(im.dir, "initrd.img") }

// guest is one qemu VM of the suite, run inside the suite's namespace.
type guest struct {
	name string
	idx  int    // 1-based: address .10+idx
	dir  string // overlay disk, sockets, console log
	tap  string
	mac  string
	im   image
	net  *network

	mu   sync.Mutex // guards cmd, done, ch
	cmd  *exec.Cmd
	done chan struct{}
	ch   *channel
}

func newGuest(n *network, im image, dir, name string, idx int) *guest {
	return &guest{
		name: name, idx: idx, dir: dir, im: im, net: n,
		tap: fmt.Sprintf("vmtap%d", idx),
		mac: fmt.Sprintf("52:54:00:51:64:%02x", 10+idx),
	}
}

func (g *guest) disk() string    { return filepath.Join(g.dir, g.name+".qcow2") }
func (g *guest) qmpSock() string { return filepath.Join(g.dir, g.name+".qmp") }
func (g *guest) cmdSock() string { return filepath.Join(g.dir, g.name+".cmd") }
func (g *guest) console() string { return filepath.Join(g.dir, g.name+".console") }

// args is qemu's command line; incoming names a saved state to restore.
func (g *guest) args(incoming string) []string {
	a := []string{
		"netns", "exec", g.net.ns, "qemu-system-x86_64",
		"-name", g.name, "-nodefaults", "-no-user-config", "-display", "none",
		"-machine", "q35", "-accel", "tcg,tb-size=" + strconv.Itoa(tbSizeMB),
		"-m", strconv.Itoa(guestMemMB), "-smp", "1",
		"-kernel", g.im.kernel(), "-initrd", g.im.initrd(), "-append", kernelArgs,
		"-drive", "file=" + g.disk() + ",if=none,id=d0,format=qcow2,discard=unmap",
		"-device", "virtio-blk-pci,drive=d0",
		"-netdev", "tap,id=n0,ifname=" + g.tap + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=" + g.mac,
		"-device", "virtio-rng-pci",
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=cmd,path=" + g.cmdSock() + ",server=on,wait=off",
		"-device", "virtserialport,chardev=cmd,name=" + cmdPort,
		"-qmp", "unix:" + g.qmpSock() + ",server=on,wait=off",
		"-serial", "file:" + g.console(),
	}
	if incoming != "" {
		a = append(a, "-incoming", "exec:cat "+incoming)
	}
	return a
}

// start runs qemu (restoring incoming when set) and connects the command
// channel. qemu dies with the test process (Pdeathsig; `ip netns exec`
// execs it) and, at the latest, with the janitor's sweep of the namespace.
func (g *guest) start(ctx context.Context, incoming string) error {
	for _, s := range []string{g.qmpSock(), g.cmdSock()} {
		_ = os.Remove(s)
	}
	logf, err := os.OpenFile(filepath.Join(g.dir, g.name+".qemu.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("ip", g.args(incoming)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start qemu for %s: %w", g.name, err)
	}
	done := make(chan struct{})
	go func() { // owned by done: kill waits for it
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	g.mu.Lock()
	g.cmd, g.done = cmd, done
	g.mu.Unlock()
	if incoming != "" {
		if err := g.resume(ctx); err != nil {
			return err
		}
	}
	conn, err := dialUnix(ctx, g.cmdSock(), done)
	if err != nil {
		return fmt.Errorf("%s: command channel: %w (qemu log: %s)", g.name, err, tail(filepath.Join(g.dir, g.name+".qemu.log"), 10))
	}
	ch := newChannel(conn)
	g.mu.Lock()
	g.ch = ch
	g.mu.Unlock()
	return nil
}

// resume waits for the incoming migration (the saved state) to be loaded
// and lets the guest run: the state was saved stopped, and a restored
// guest keeps the run state it was saved with.
func (g *guest) resume(ctx context.Context) error {
	q, err := dialQMP(ctx, g.qmpSock(), g.exited())
	if err != nil {
		return err
	}
	defer q.conn.Close()
	tk := time.NewTicker(100 * time.Millisecond)
	defer tk.Stop()
	for {
		r, err := q.do("query-status", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status string `json:"status"`
		}
		_ = json.Unmarshal(r, &st)
		switch st.Status {
		case "running":
			return nil
		case "paused", "postmigrate":
			_, err := q.do("cont", nil)
			return err
		case "inmigrate", "prelaunch":
		default:
			return fmt.Errorf("%s: restoring the saved state: run state %q", g.name, st.Status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: restoring the saved state: %w", g.name, ctx.Err())
		case <-tk.C:
		}
	}
}

// dialUnix connects to a socket qemu creates, retrying until it exists,
// qemu exits or ctx ends.
func dialUnix(ctx context.Context, path string, exited <-chan struct{}) (net.Conn, error) {
	tk := time.NewTicker(50 * time.Millisecond)
	defer tk.Stop()
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect %s: %w (last: %v)", path, ctx.Err(), err)
		case <-exited:
			return nil, fmt.Errorf("qemu exited before %s was up", path)
		case <-tk.C:
		}
	}
}

// kill ends qemu with SIGKILL (a hard power-off) and waits for it.
func (g *guest) kill() error {
	g.mu.Lock()
	cmd, done, ch := g.cmd, g.done, g.ch
	g.cmd, g.ch = nil, nil
	g.mu.Unlock()
	if ch != nil {
		ch.close()
	}
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Kill()
	tm := time.NewTimer(testtime.Scaled(30 * time.Second))
	defer tm.Stop()
	select {
	case <-done:
		return nil
	case <-tm.C:
		return fmt.Errorf("qemu of %s (pid %d) has not exited after SIGKILL", g.name, cmd.Process.Pid)
	}
}

// exited is closed when the current qemu process has exited.
func (g *guest) exited() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.done
}

// run runs script in the guest (bash, as root) and returns its combined
// output and exit code; err is for the channel, not the script.
func (g *guest) run(ctx context.Context, script string) (string, int, error) {
	g.mu.Lock()
	ch := g.ch
	g.mu.Unlock()
	if ch == nil {
		return "", -1, fmt.Errorf("%s is not running", g.name)
	}
	return ch.call(ctx, script)
}

// must runs script and returns its output, or an error naming the guest,
// the script and its output when it fails.
func (g *guest) must(ctx context.Context, script string) (string, error) {
	out, rc, err := g.run(ctx, script)
	if err != nil {
		return out, fmt.Errorf("%s: %w (script: %s)", g.name, err, firstLine(script))
	}
	if rc != 0 {
		return out, fmt.Errorf("%s: exit %d from %q: %s", g.name, rc, firstLine(script), strings.TrimSpace(out))
	}
	return out, nil
}

// waitAgent waits until the guest's command channel answers (after a boot
// or restore).
func (g *guest) waitAgent(ctx context.Context) error {
	_, err := g.probe(ctx, "true", func(string) bool { return true })
	return err
}

// probe sends script to the guest until an answer satisfies ok and returns
// that answer's output. While the guest cannot answer (restoring, booting,
// rebooting) requests wait in the channel, or are lost with a reboot: a new
// one goes out after a pause that grows from 3 s to 15 s (scaled), and
// every one stays awaited, so that a late answer counts. One probe every
// 3 s, each answered only after the previous ones, left a slow guest
// (restored at load 30) a queue of probes to run, one bash each, that grew
// faster than it ran them.
func (g *guest) probe(ctx context.Context, script string, ok func(out string) bool) (string, error) {
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel (deferred later, runs first)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	answers := make(chan string)
	send := func() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, rc, err := g.run(pctx, script)
			if err != nil || rc != 0 || !ok(out) {
				return
			}
			select {
			case answers <- out:
			case <-pctx.Done():
			}
		}()
	}
	pause, most := testtime.Scaled(3*time.Second), testtime.Scaled(15*time.Second)
	tm := time.NewTimer(0)
	defer tm.Stop()
	for {
		select {
		case out := <-answers:
			return out, nil
		case <-ctx.Done():
			return "", fmt.Errorf("%s: command channel not answering %q: %w (console: %s)", g.name, firstLine(script), ctx.Err(), tail(g.console(), 15))
		case <-g.exited():
			return "", fmt.Errorf("%s: qemu exited (log: %s)", g.name, tail(filepath.Join(g.dir, g.name+".qemu.log"), 10))
		case <-tm.C:
			send()
			tm.Reset(pause)
			pause = min(2*pause, most)
		}
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return l
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// channel is the host end of a guest's command channel: requests "<id>
// <base64 script>", answers "<id> <rc> <base64 output>". A reader goroutine
// dispatches answers to the callers by id; close ends it and waits for it.
type channel struct {
	conn net.Conn
	wmu  sync.Mutex // serializes writes

	mu      sync.Mutex
	next    int
	waiting map[int]chan answer
	readErr error
	readEnd chan struct{}
}

type answer struct {
	rc  int
	out string
}

func newChannel(c net.Conn) *channel {
	ch := &channel{conn: c, waiting: map[int]chan answer{}, readEnd: make(chan struct{})}
	go ch.read()
	return ch
}

func (ch *channel) read() {
	defer close(ch.readEnd)
	sc := bufio.NewScanner(ch.conn)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue // the guest's own noise, or a line cut by a reboot
		}
		id, err1 := strconv.Atoi(f[0])
		rc, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil {
			continue
		}
		var out []byte
		if len(f) > 2 {
			out, _ = base64.StdEncoding.DecodeString(f[2])
		}
		ch.mu.Lock()
		w := ch.waiting[id]
		delete(ch.waiting, id)
		ch.mu.Unlock()
		if w != nil {
			w <- answer{rc: rc, out: string(out)}
		}
	}
	ch.mu.Lock()
	ch.readErr = errors.Join(errors.New("command channel closed"), sc.Err())
	ch.mu.Unlock()
}

func (ch *channel) close() {
	_ = ch.conn.Close()
	<-ch.readEnd
}

func (ch *channel) call(ctx context.Context, script string) (string, int, error) {
	w := make(chan answer, 1)
	ch.mu.Lock()
	if ch.readErr != nil {
		err := ch.readErr
		ch.mu.Unlock()
		return "", -1, err
	}
	ch.next++
	id := ch.next
	ch.waiting[id] = w
	ch.mu.Unlock()
	defer func() {
		ch.mu.Lock()
		delete(ch.waiting, id)
		ch.mu.Unlock()
	}()
	line := strconv.Itoa(id) + " " + base64.StdEncoding.EncodeToString([]byte(script)) + "\n"
	ch.wmu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		_ = ch.conn.SetWriteDeadline(dl)
	}
	_, err := ch.conn.Write([]byte(line))
	ch.wmu.Unlock()
	if err != nil {
		return "", -1, fmt.Errorf("send: %w", err)
	}
	select {
	case a := <-w:
		return a.out, a.rc, nil
	case <-ch.readEnd:
		return "", -1, errors.New("command channel closed")
	case <-ctx.Done():
		return "", -1, fmt.Errorf("no answer: %w", ctx.Err())
	}
}

// qmp is a minimal QEMU Machine Protocol client: one command at a time,
// events skipped.
type qmp struct {
	conn net.Conn
	sc   *bufio.Scanner
}

func dialQMP(ctx context.Context, path string, exited <-chan struct{}) (*qmp, error) {
	c, err := dialUnix(ctx, path, exited)
	if err != nil {
		return nil, err
	}
	q := &qmp{conn: c, sc: bufio.NewScanner(c)}
	q.sc.Buffer(make([]byte, 64<<10), 4<<20)
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if !q.sc.Scan() { // the greeting
		c.Close()
		return nil, fmt.Errorf("qmp greeting: %v", q.sc.Err())
	}
	if _, err := q.do("qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

// do runs one command and returns its "return" value.
func (q *qmp) do(cmd string, args map[string]any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for q.sc.Scan() {
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Desc string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := json.Unmarshal(q.sc.Bytes(), &resp); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		switch {
		case resp.Event != "":
			continue
		case resp.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s", cmd, resp.Error.Desc)
		default:
			return resp.Return, nil
		}
	}
	return nil, fmt.Errorf("qmp %s: connection ended: %v", cmd, q.sc.Err())
}

// saveState stops the running guest and writes its state to file
// (migration to a file), waiting for the migration to complete; qemu then
// quits. The guest's disk is consistent when it returns.
func (g *guest) saveState(ctx context.Context, file string) error {
	q, err := dialQMP(ctx, g.qmpSock(), g.exited())
	if err != nil {
		return err
	}
	defer q.conn.Close()
	if _, err := q.do("stop", nil); err != nil {
		return err
	}
	if _, err := q.do("migrate", map[string]any{"uri": "exec:cat >" + file}); err != nil {
		return err
	}
	tk := time.NewTicker(200 * time.Millisecond)
	defer tk.Stop()
	for {
		r, err := q.do("query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status string `json:"status"`
		}
		_ = json.Unmarshal(r, &st)
		switch st.Status {
		case "completed":
			_, _ = q.do("quit", nil)
			select {
			case <-g.exited():
			case <-ctx.Done():
				return fmt.Errorf("qemu of %s did not quit after saving: %w", g.name, ctx.Err())
			}
			g.mu.Lock()
			ch := g.ch
			g.ch, g.cmd = nil, nil
			g.mu.Unlock()
			if ch != nil {
				ch.close()
			}
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("saving %s: migration %s", g.name, st.Status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("saving %s: %w (status %s)", g.name, ctx.Err(), st.Status)
		case <-tk.C:
		}
	}
}
