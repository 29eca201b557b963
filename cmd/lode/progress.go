package main

import (
	"io"
	"os"
	"sync"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// termProgress draws a progress bar per build phase on a terminal and
// nothing otherwise (logs and the summary line still say what happened).
type termProgress struct {
	mu  sync.Mutex
	out io.Writer
	bar *progressbar.ProgressBar
}

func newProgress(out io.Writer) *termProgress {
	f, ok := out.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return &termProgress{out: out}
}

func (p *termProgress) Phase(name string, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		p.bar.Finish()
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

func (p *termProgress) Add(n int64) {
	p.mu.Lock()
	b := p.bar
	p.mu.Unlock()
	if b != nil {
		b.Add64(n)
	}
}

func (p *termProgress) Finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		p.bar.Finish()
		p.bar = nil
	}
}
