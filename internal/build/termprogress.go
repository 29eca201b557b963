package build

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// TermProgress (a build Progress) draws a progress bar per build phase on a terminal and
// nothing otherwise (logs and the summary line still say what happened).
type TermProgress struct {
	mu   sync.Mutex
	out  io.Writer
	bar  *progressbar.ProgressBar
	skip string // a phase not drawn (flatten, while layer bars show a pull)
}

// NewTermProgress returns a Progress that draws a bar per build phase when
// out is a terminal, and nil otherwise (logs and the summary line still say
// what happened). Call Finish when the build ends.
// skip names a phase not drawn ("flatten" while layer bars show a pull).
func NewTermProgress(out io.Writer, skip string) *TermProgress {
	f, ok := out.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return &TermProgress{out: out, skip: skip}
}

func (p *TermProgress) Phase(name string, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		p.bar.Finish()
		p.bar = nil
	}
	if name == p.skip {
		return
	}
	p.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(p.out),
		progressbar.OptionSetDescription(name),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100_000_000),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionFullWidth(),
	)
}

func (p *TermProgress) Add(n int64) {
	p.mu.Lock()
	b := p.bar
	p.mu.Unlock()
	if b != nil {
		b.Add64(n)
	}
}

func (p *TermProgress) Finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		p.bar.Finish()
		p.bar = nil
	}
}

// PullProgress shows registry layer downloads (oci.PullProgress): on a
// terminal a bar per layer with bytes and rate, in layer order (the layer
// the flattener waits for; later layers download meanwhile and their bar
// starts where they are); elsewhere one line per finished layer.
type PullProgress struct {
	mu     sync.Mutex
	out    io.Writer
	tty    bool
	layers map[int]*pullLayer
	cur    int // layer whose bar is shown
	bar    *progressbar.ProgressBar
}

type pullLayer struct {
	count      int
	digest     string
	size, done int64
	start, end time.Time
	finished   bool
	err        error
}

// NewPullProgress returns the registry pull progress for out.
func NewPullProgress(out io.Writer) *PullProgress {
	f, ok := out.(*os.File)
	return &PullProgress{out: out, tty: ok && term.IsTerminal(int(f.Fd())), layers: map[int]*pullLayer{}}
}

func (p *PullProgress) LayerStart(i, count int, digest string, size int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.layers[i] = &pullLayer{count: count, digest: digest, size: size, start: time.Now()}
	p.show()
}

func (p *PullProgress) LayerAdd(i int, n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.layers[i]
	l.done += n
	if p.bar != nil && i == p.cur {
		p.bar.Add64(n)
	}
}

func (p *PullProgress) LayerDone(i int, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.layers[i]
	l.finished, l.err, l.end = true, err, time.Now()
	p.show()
}

// show advances past finished layers in order, printing each, and starts
// the bar of the next one.
func (p *PullProgress) show() {
	for {
		l := p.layers[p.cur]
		if l == nil {
			return
		}
		if !l.finished {
			if p.tty && p.bar == nil {
				p.bar = progressbar.NewOptions64(l.size,
					progressbar.OptionSetWriter(p.out),
					progressbar.OptionSetDescription(fmt.Sprintf("layer %d/%d %s", p.cur+1, l.count, short(l.digest))),
					progressbar.OptionShowBytes(true),
					progressbar.OptionSetWidth(30),
					progressbar.OptionThrottle(100*time.Millisecond),
					progressbar.OptionClearOnFinish(),
				)
				p.bar.Add64(l.done)
			}
			return
		}
		if p.bar != nil {
			p.bar.Finish()
			p.bar = nil
		}
		secs := l.end.Sub(l.start).Seconds()
		status := "pulled"
		if l.err != nil {
			status = "failed"
		}
		fmt.Fprintf(p.out, "%s layer %d/%d %s: %s in %.2fs (%s/s)\n", status, p.cur+1, l.count, short(l.digest),
			humanize.IBytes(uint64(l.done)), secs, humanize.IBytes(uint64(float64(l.done)/max(secs, 1e-3))))
		p.cur++
	}
}

func short(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}
