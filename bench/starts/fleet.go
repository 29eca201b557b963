package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lode-dev/lode/internal/cachenode"
)

// fleet is N cache nodes on 127.0.0.2, 127.0.0.3, …: `lode cache serve`
// processes when a lode binary is given, else in-process servers. Restart
// replaces a node with an empty one on the same address.
type fleet struct {
	lode  string // binary; "" for in-process nodes
	cpus  string // taskset CPU list for node processes; "" = not pinned
	mem   int64
	addrs []string

	mu     sync.Mutex
	procs  []*exec.Cmd
	cancel []context.CancelFunc
	done   []chan struct{}
	hwm    []int64 // peak RSS of each node, max over its lives (processes)
	logDir string
}

func startFleet(ctx context.Context, n int, basePort int, memBytes int64, lode, cpus, logDir string) (*fleet, error) {
	f := &fleet{lode: lode, cpus: cpus, mem: memBytes, procs: make([]*exec.Cmd, n), cancel: make([]context.CancelFunc, n),
		done: make([]chan struct{}, n), hwm: make([]int64, n), logDir: logDir}
	for i := range n {
		f.addrs = append(f.addrs, net.JoinHostPort(fmt.Sprintf("127.0.0.%d", 2+i), strconv.Itoa(basePort)))
	}
	for i := range n {
		if err := f.start(ctx, i); err != nil {
			f.close()
			return nil, err
		}
	}
	return f, nil
}

func (f *fleet) urls() []string {
	var u []string
	for _, a := range f.addrs {
		u = append(u, "http://"+a)
	}
	return u
}

func (f *fleet) start(ctx context.Context, i int) error {
	addr := f.addrs[i]
	if f.lode != "" {
		log, err := os.OpenFile(fmt.Sprintf("%s/node%d.log", f.logDir, i), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		args := []string{f.lode, "cache", "serve", "--listen", addr, "--mem", strconv.FormatInt(f.mem, 10)}
		if f.cpus != "" {
			// taskset before exec: every thread of the node inherits it.
			args = append([]string{"taskset", "-c", f.cpus}, args...)
		}
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			log.Close()
			return fmt.Errorf("starting cache node %s: %w", addr, err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); log.Close(); close(done) }()
		f.mu.Lock()
		f.procs[i], f.done[i] = cmd, done
		f.mu.Unlock()
	} else {
		srv, err := cachenode.NewServer(cachenode.ServerConfig{MemBytes: f.mem})
		if err != nil {
			return err
		}
		var l net.Listener
		for try := 0; try < 100; try++ {
			if l, err = net.Listen("tcp", addr); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("listening for cache node %s: %w", addr, err)
		}
		sctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { srv.Serve(sctx, l); close(done) }()
		f.mu.Lock()
		f.cancel[i], f.done[i] = cancel, done
		f.mu.Unlock()
	}
	return waitHealthy(ctx, addr)
}

func waitHealthy(ctx context.Context, addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("cache node %s did not come up: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop kills node i (SIGKILL: a crash, its memory is gone).
func (f *fleet) stop(i int) {
	f.mu.Lock()
	cmd, cancel, done := f.procs[i], f.cancel[i], f.done[i]
	f.procs[i], f.cancel[i] = nil, nil
	f.mu.Unlock()
	if cmd != nil {
		if h := vmHWM(cmd.Process.Pid); h > f.hwm[i] {
			f.hwm[i] = h
		}
		cmd.Process.Signal(syscall.SIGKILL)
	}
	if cancel != nil {
		cancel()
	}
	if done != nil {
		<-done
	}
}

// restart replaces nodes idx with empty ones, all stopped before any starts.
func (f *fleet) restart(ctx context.Context, idx ...int) error {
	for _, i := range idx {
		f.stop(i)
	}
	for _, i := range idx {
		if err := f.start(ctx, i); err != nil {
			return err
		}
	}
	return nil
}

// cpuTime returns the CPU time (user + system) the node processes now
// running have used (0 for in-process nodes): read before and after a
// sweep step, the fleet's share of its CPUs.
func (f *fleet) cpuTime() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var sum time.Duration
	for _, cmd := range f.procs {
		if cmd != nil {
			sum += procCPU(cmd.Process.Pid)
		}
	}
	return sum
}

// procCPU is utime + stime of process pid from /proc/PID/stat (0 if
// unreadable), at the kernel's USER_HZ of 100.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command (which may hold spaces) start after ")".
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	fs := strings.Fields(string(b[i+1:]))
	if len(fs) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(fs[11], 10, 64)  // field 14, utime
	st, _ := strconv.ParseInt(fs[12], 10, 64) // field 15, stime
	return time.Duration(u+st) * 10 * time.Millisecond
}

// runDelay is the time the threads of process pid (0 for self) have spent
// runnable but waiting for a CPU (the second field of
// /proc/PID/task/*/schedstat): the CPU the host did not give it when it
// wanted it. Threads that have exited are not counted.
func runDelay(pid int) time.Duration {
	dir := "/proc/self/task"
	if pid > 0 {
		dir = fmt.Sprintf("/proc/%d/task", pid)
	}
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if err != nil {
			continue
		}
		if fs := strings.Fields(string(b)); len(fs) >= 2 {
			ns, _ := strconv.ParseInt(fs[1], 10, 64)
			sum += time.Duration(ns)
		}
	}
	return sum
}

// runDelay sums runDelay over the node processes now running.
func (f *fleet) runDelay() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var sum time.Duration
	for _, cmd := range f.procs {
		if cmd != nil {
			sum += runDelay(cmd.Process.Pid)
		}
	}
	return sum
}

// peakRSS returns each node's peak resident set so far (processes only).
func (f *fleet) peakRSS() []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := append([]int64(nil), f.hwm...)
	for i, cmd := range f.procs {
		if cmd != nil {
			out[i] = max(out[i], vmHWM(cmd.Process.Pid))
		}
	}
	return out
}

func (f *fleet) close() {
	for i := range f.addrs {
		f.stop(i)
	}
}

// vmHWM returns the peak resident set size of process pid (0 for self) in
// bytes, from /proc/PID/status, or 0 if unreadable.
func vmHWM(pid int) int64 {
	p := "/proc/self/status"
	if pid > 0 {
		p = fmt.Sprintf("/proc/%d/status", pid)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
