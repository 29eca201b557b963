package trace

import (
	"bytes"
	"strings"
	"testing"
)

func f(id uint64, asked, done int64, why string, waited ...uint64) Event {
	return Event{Kind: KindFetch, ID: id, Chunk: int(id), Why: why, Asked: asked, Done: done, Tier: "origin", Waited: waited}
}

func ids(es []Event) []uint64 {
	var out []uint64
	for _, e := range es {
		out = append(out, e.ID)
	}
	return out
}

func TestSerialChain(t *testing.T) {
	tests := []struct {
		name    string
		fetches []Event
		want    []uint64
	}{
		{"empty", nil, nil},
		{"one", []Event{f(1, 0, 36, WhyRead)}, []uint64{1}},
		{"all parallel", []Event{f(1, 0, 36, WhyRead), f(2, 1, 37, WhyRead), f(3, 2, 38, WhyPrefetch)}, []uint64{1}},
		{"strictly serial", []Event{f(1, 0, 36, WhyRead), f(2, 40, 76, WhyRead), f(3, 80, 116, WhyRead)}, []uint64{1, 2, 3}},
		{"asked the instant the previous completed", []Event{f(1, 0, 36, WhyRead), f(2, 36, 72, WhyRead)}, []uint64{1, 2}},
		{"overlap breaks the link", []Event{f(1, 0, 36, WhyRead), f(2, 35, 71, WhyRead)}, []uint64{1}},
		{
			// Two parallel branches: the longer one wins, whatever the
			// order the fetches are listed in.
			"longest branch",
			[]Event{f(4, 101, 137, WhyRead), f(1, 0, 36, WhyRead), f(2, 0, 100, WhyPrefetch), f(3, 40, 76, WhyRead)},
			[]uint64{1, 3, 4},
		},
		{"zero duration still chains", []Event{f(1, 5, 5, WhyRead), f(2, 6, 10, WhyRead)}, []uint64{1, 2}},
		{"never done ends no link", []Event{f(1, 0, -1, WhyRead), f(2, 5, 10, WhyRead)}, []uint64{1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ids(SerialChain(tt.fetches))
			if !slicesEqual(got, tt.want) {
				t.Errorf("SerialChain = %v, want %v", got, tt.want)
			}
		})
	}
}

func slicesEqual(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestAnalyzeUntilMark(t *testing.T) {
	var buf bytes.Buffer
	r := New(&buf)
	emit := []Event{
		f(1, 0, 50, WhyPrefetch),
		{Kind: KindRead, ID: 10, Off: 0, Len: 4096, Asked: 1, Done: 40, Waited: []uint64{2}},
		f(2, 1, 40, WhyRead, 10),
		f(3, 41, 80, WhyReadAhead),
		{Kind: KindMark, Name: "exec", Asked: 85},
		{Kind: KindMark, Name: "exit", Asked: 90},
		f(4, 100, 136, WhyFill), // after the output: not counted
	}
	for _, e := range emit {
		r.Emit(e)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	evs, err := Parse(&buf)
	if err != nil {
		t.Fatal(err)
	}
	a := Analyze(evs, "exit")
	if a.Until != "exit" || len(a.Fetches) != 3 || a.Blocking != 1 || a.Reads != 1 || a.ReadsWaited != 1 {
		t.Errorf("Analyze = until %q, %d fetches, %d blocking, %d/%d reads; want exit, 3, 1, 1/1", a.Until, len(a.Fetches), a.Blocking, a.ReadsWaited, a.Reads)
	}
	if got := ids(a.Chain); !slicesEqual(got, []uint64{2, 3}) {
		t.Errorf("chain = %v, want [2 3]", got)
	}
	if a.ByWhy[WhyFill] != 0 || a.ByWhy[WhyRead] != 1 || a.ByTier["origin"] != 3 {
		t.Errorf("counts = %v by why, %v by tier", a.ByWhy, a.ByTier)
	}
	if all := Analyze(evs, "no-such-mark"); all.Until != "" || len(all.Fetches) != 4 || len(all.Chain) != 3 {
		t.Errorf("without the mark: until %q, %d fetches, chain %d; want \"\", 4, 3", all.Until, len(all.Fetches), len(all.Chain))
	}
	var out strings.Builder
	if err := WriteReport(&out, a); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "serial chain: 2 fetches") {
		t.Errorf("report lacks the chain length:\n%s", out.String())
	}
}

func TestParseRejectsGarbage(t *testing.T) {
	if _, err := Parse(strings.NewReader("{\"kind\":\"fetch\"}\nnot json\n")); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("Parse(garbage) = %v, want an error naming line 2", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"kind":"fetch","id":1,"chunk":3,"asked_us":5,"done_us":9}` + "\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		evs, err := Parse(bytes.NewReader(b))
		if err == nil {
			_ = Analyze(evs, "exit")
		}
	})
}
