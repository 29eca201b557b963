package ext4img

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"testing"
)

func TestBufPipe(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	data := make([]byte, 5*pipeBufLen+12345)
	rng.Read(data)
	boom := errors.New("producer failed")
	for _, tc := range []struct {
		name string
		werr error
	}{{"eof", nil}, {"writer's error", boom}} {
		t.Run(tc.name, func(t *testing.T) {
			p := newBufPipe()
			go func() {
				rest := data
				for len(rest) > 0 {
					k := min(len(rest), 1+rng.Intn(3*pipeBufLen/2))
					if _, err := p.Write(rest[:k]); err != nil {
						t.Errorf("Write: %v", err)
						return
					}
					rest = rest[k:]
				}
				p.CloseWrite(tc.werr)
			}()
			var got bytes.Buffer
			_, err := io.CopyBuffer(&got, p, make([]byte, 7777))
			want := tc.werr // io.Copy turns io.EOF into nil
			if !errors.Is(err, want) && !(want == nil && err == nil) {
				t.Fatalf("copy: %v, want %v", err, want)
			}
			if !bytes.Equal(got.Bytes(), data) {
				t.Fatalf("read %d bytes, not the %d written", got.Len(), len(data))
			}
		})
	}
	t.Run("reader closes", func(t *testing.T) {
		p := newBufPipe()
		stop := errors.New("converter failed")
		done := make(chan error)
		go func() {
			for {
				if _, err := p.Write(data); err != nil {
					done <- err
					return
				}
			}
		}()
		if _, err := io.ReadFull(p, make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		p.CloseWithError(stop)
		if err := <-done; !errors.Is(err, stop) {
			t.Fatalf("Write after the reader closed = %v, want %v", err, stop)
		}
	})
}

// BenchmarkPipe streams 64 MiB in 1 MiB writes through bufPipe and io.Pipe
// (with the 1 MiB bufio.Writer BuildEntries had before it), reading in
// 32 KiB reads as tar2ext4 does.
func BenchmarkPipe(b *testing.B) {
	const total = 64 << 20
	chunk := make([]byte, 1<<20)
	for _, bc := range []struct {
		name string
		pipe func() (io.Writer, func(), io.Reader)
	}{
		{"bufPipe", func() (io.Writer, func(), io.Reader) {
			p := newBufPipe()
			return p, func() { p.CloseWrite(nil) }, p
		}},
		{"io.Pipe", func() (io.Writer, func(), io.Reader) {
			pr, pw := io.Pipe()
			return pw, func() { pw.Close() }, pr
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(total)
			buf := make([]byte, 32<<10)
			for b.Loop() {
				w, closeW, r := bc.pipe()
				go func() {
					for range total / len(chunk) {
						w.Write(chunk)
					}
					closeW()
				}()
				if _, err := io.CopyBuffer(io.Discard, r, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
