package drv

import (
	"slices"
	"testing"
)

func TestParseOutputs(t *testing.T) {
	tests := []struct {
		name, text string
		want       []string
		wantErr    bool
	}{
		{
			name: "one output (as nix-instantiate writes it)",
			text: `Derive([("out","/nix/store/ji460gcyfbyb6s346qh01l1mjl953b81-hooked-dbg-3","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo dbg3 > $out"],[])`,
			want: []string{"/nix/store/ji460gcyfbyb6s346qh01l1mjl953b81-hooked-dbg-3"},
		},
		{
			name: "several, fixed-output and content-addressed",
			text: `Derive([("dev","/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x-dev","",""),("ca","","r:sha256",""),("out","/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-x","r:sha256","ab\"c")],[],[])`,
			want: []string{"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x-dev", "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-x"},
		},
		{name: "not a derivation", text: `{"out": 1}`, wantErr: true},
		{name: "cut short", text: `Derive([("out","/nix/store/aaaa`, wantErr: true},
		{name: "three fields", text: `Derive([("out","/nix/store/a","")],[])`, wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseOutputs(tt.text)
		if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("%s: ParseOutputs = %q, %v; want %q, error %v", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}
