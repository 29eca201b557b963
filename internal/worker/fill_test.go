package worker

import "testing"

func TestParseRate(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"", 0, false},
		{"0", 0, false},
		{"52428800", 52428800, false},
		{"50M", 50 << 20, false},
		{"50MB/s", 50 << 20, false},
		{"1G/s", 1 << 30, false},
		{"512k", 512 << 10, false},
		{"-1", 0, true},
		{"fast", 0, true},
		{"M", 0, true},
		{"99999999999999999999G", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseRate(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}
