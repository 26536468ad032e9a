package httpapi

import (
	"errors"
	"testing"
)

func TestParseRange(t *testing.T) {
	tests := []struct {
		spec  string
		size  uint64
		want  *byteRange
		unsat bool
	}{
		{spec: "bytes=0-0", size: 10, want: &byteRange{0, 1, 10}},
		{spec: "bytes=0-9", size: 10, want: &byteRange{0, 10, 10}},
		{spec: "bytes=3-", size: 10, want: &byteRange{3, 7, 10}},
		{spec: "bytes=3-100", size: 10, want: &byteRange{3, 7, 10}},
		{spec: "bytes=-3", size: 10, want: &byteRange{7, 3, 10}},
		{spec: "bytes=-30", size: 10, want: &byteRange{0, 10, 10}},
		{spec: " Bytes = 1-2 ", size: 10, want: &byteRange{1, 2, 10}},
		{spec: "bytes=10-", size: 10, unsat: true},
		{spec: "bytes=10-20", size: 10, unsat: true},
		{spec: "bytes=-0", size: 10, unsat: true},
		{spec: "bytes=0-", size: 0, unsat: true},
		{spec: "bytes=-5", size: 0, unsat: true},
		{spec: "bytes=0-1,3-4", size: 10},
		{spec: "bytes=5-1", size: 10},
		{spec: "bytes=a-", size: 10},
		{spec: "bytes=-", size: 10},
		{spec: "bytes=--1", size: 10},
		{spec: "bytes=+1-2", size: 10},
		{spec: "bytes=1", size: 10},
		{spec: "items=1-2", size: 10},
		{spec: "bytes=99999999999999999999-", size: 10},
	}
	for _, tt := range tests {
		got, err := parseRange(tt.spec, tt.size)
		if tt.unsat {
			if !errors.Is(err, errUnsatisfiable) {
				t.Errorf("parseRange(%q, %d) = %v, %v; want unsatisfiable", tt.spec, tt.size, got, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseRange(%q, %d): %v", tt.spec, tt.size, err)
			continue
		}
		if (got == nil) != (tt.want == nil) || got != nil && *got != *tt.want {
			t.Errorf("parseRange(%q, %d) = %+v, want %+v", tt.spec, tt.size, got, tt.want)
		}
	}
}
