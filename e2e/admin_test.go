package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// grpcurlPath finds the real grpcurl: on PATH, or where scripts/tools.sh
// installs it.
func grpcurlPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("grpcurl"); err == nil {
		return p
	}
	p, err := filepath.Abs("../.tools/bin/grpcurl")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("grpcurl is required (scripts/tools.sh installs it): %v", err)
	}
	return p
}

// grpcurl runs grpcurl against the index as docs/operate.md shows it; token
// "" sends no authorization header, data "" no request body.
func (c *cluster) grpcurl(token, data string, args ...string) (stdout, stderr string, err error) {
	c.t.Helper()
	full := []string{"-plaintext"}
	if token != "" {
		full = append(full, "-H", "authorization: Bearer "+token)
	}
	if data != "" {
		full = append(full, "-d", data)
	}
	full = append(append(full, c.indexAddr), args...)
	cmd := exec.Command(grpcurlPath(c.t), full...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// admin runs an admin call with the operator's token and returns its
// output, failing the test on error.
func (c *cluster) admin(method, data string) string {
	c.t.Helper()
	out, errOut, err := c.grpcurl(c.adminToken, data, "nixcache.index.v1.AdminService/"+method)
	if err != nil {
		c.t.Fatalf("grpcurl %s %s: %v\n%s", method, data, err, errOut)
	}
	return out
}

// messages decodes grpcurl's output: one JSON object per message.
func messages(t *testing.T, out string) []map[string]any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	var msgs []map[string]any
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("decode grpcurl output: %v\n%s", err, out)
		}
		msgs = append(msgs, m)
	}
	return msgs
}

// TestAdminGRPCurl drives every admin call with the real grpcurl, as
// docs/operate.md shows them, and checks the scopes on gRPC and on the JSON API.
func TestAdminGRPCurl(t *testing.T) {
	c := newCluster(t)
	top, closure := buildClosure(t)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL, top)

	out, errOut, err := c.grpcurl("", "", "list")
	if err != nil || !strings.Contains(out, "nixcache.index.v1.AdminService") || !strings.Contains(out, "grpc.health.v1.Health") {
		t.Fatalf("grpcurl list: %v\n%s%s", err, out, errOut)
	}
	out, errOut, err = c.grpcurl("", "", "describe", "nixcache.index.v1.AdminService")
	if err != nil || !strings.Contains(out, "rpc CollectGarbage") || !strings.Contains(out, "rpc AddKey") {
		t.Fatalf("grpcurl describe: %v\n%s%s", err, out, errOut)
	}

	list := messages(t, c.admin("ListPaths", `{"query": "top-", "page_size": 10}`))
	if paths, _ := list[0]["paths"].([]any); len(paths) != 1 || paths[0].(map[string]any)["storePath"] != top {
		t.Errorf("ListPaths: %v", list)
	}
	got := messages(t, c.admin("GetPath", `{"path": "`+closure[0]+`"}`))[0]
	if refs, _ := got["referrers"].([]any); len(refs) == 0 {
		t.Errorf("GetPath %s: no referrers: %v", closure[0], got)
	}
	stats := messages(t, c.admin("GetStats", ""))[0]
	if stats["pushedPaths"] != "3" {
		t.Errorf("GetStats: %v", stats)
	}
	c.admin("Pin", `{"path": "`+top+`", "closure": true}`)
	if pins := messages(t, c.admin("ListPins", ""))[0]["pins"].([]any); len(pins) != 1 {
		t.Errorf("ListPins: %v", pins)
	}
	c.admin("Unpin", `{"path": "`+hashPart(top)+`"}`)
	if keys := messages(t, c.admin("ListKeys", ""))[0]["keys"].([]any); keys[0].(map[string]any)["publicKey"] != c.publicKey {
		t.Errorf("ListKeys: %v", keys)
	}
	verify := messages(t, c.admin("Verify", ""))
	if last := verify[len(verify)-1]; last["done"] != true || last["checked"] != "3" || last["bad"] != nil {
		t.Errorf("Verify: %v", verify)
	}
	gc := messages(t, c.admin("CollectGarbage", `{"dry_run": true, "max_total_size": 1}`))
	if last := gc[len(gc)-1]; last["done"] != true || last["deleted"] != "3" {
		t.Errorf("CollectGarbage dry run: %v", gc)
	}
	del := messages(t, c.admin("DeletePath", `{"path": "`+closure[0]+`", "with_referrers": true, "dry_run": true}`))[0]
	if d, _ := del["deleted"].([]any); len(d) != 3 {
		t.Errorf("DeletePath dry run: %v", del)
	}
	// Refused without with_referrers.
	_, errOut, err = c.grpcurl(c.adminToken, `{"path": "`+closure[0]+`"}`, "nixcache.index.v1.AdminService/DeletePath")
	if err == nil || !strings.Contains(errOut, "FailedPrecondition") {
		t.Errorf("DeletePath of a referred-to path: %v\n%s", err, errOut)
	}

	// Scopes: no token, a read token, on gRPC and on the JSON API.
	for _, tt := range []struct {
		name, token string
		grpc        string
		http        int
	}{
		{"no token", "", "Unauthenticated", http.StatusUnauthorized},
		{"wrong token", "not-a-token", "Unauthenticated", http.StatusUnauthorized},
		{"read token", c.readToken, "PermissionDenied", http.StatusForbidden},
		{"push token", c.pushToken, "PermissionDenied", http.StatusForbidden},
	} {
		_, errOut, err := c.grpcurl(tt.token, "", "nixcache.index.v1.AdminService/ListPaths")
		if err == nil || !strings.Contains(errOut, tt.grpc) {
			t.Errorf("%s: grpcurl ListPaths: %v, want %s\n%s", tt.name, err, tt.grpc, errOut)
		}
		if got := httpStatus(t, "GET", c.URL+"/api/v1/paths", tt.token, nil); got != tt.http {
			t.Errorf("%s: GET /api/v1/paths: %d, want %d", tt.name, got, tt.http)
		}
		if got := httpStatus(t, "POST", c.URL+"/api/v1/gc", tt.token, strings.NewReader(`{"dry_run": true}`)); got != tt.http {
			t.Errorf("%s: POST /api/v1/gc: %d, want %d", tt.name, got, tt.http)
		}
	}
	resp := httpDo(t, "GET", c.URL+"/api/v1/paths?query=top-", c.adminToken, nil, nil)
	if resp.status != http.StatusOK || !strings.Contains(resp.body, top) {
		t.Errorf("GET /api/v1/paths as admin: %d %s", resp.status, resp.body)
	}
	resp = httpDo(t, "POST", c.URL+"/api/v1/gc", c.adminToken, strings.NewReader(`{"dry_run": true, "max_total_size": "1"}`), nil)
	if resp.status != http.StatusOK || !strings.Contains(resp.body, `"done":true`) {
		t.Errorf("POST /api/v1/gc as admin: %d %s", resp.status, resp.body)
	}
}

// gcPaths runs CollectGarbage with grpcurl and returns the paths it
// deleted (or would).
func (c *cluster) gcPaths(data string) []string {
	c.t.Helper()
	var paths []string
	msgs := messages(c.t, c.admin("CollectGarbage", data))
	for _, m := range msgs {
		if p, ok := m["storePath"].(string); ok {
			paths = append(paths, p)
		}
	}
	if last := msgs[len(msgs)-1]; last["done"] != true {
		c.t.Fatalf("CollectGarbage did not finish: %v", last)
	}
	return paths
}

// TestGarbageCollection fills the cache with closures, downloads some, and
// collects down to a size limit: the dry run matches the real run, pins
// stay, and every closure left still substitutes with the real Nix.
func TestGarbageCollection(t *testing.T) {
	c := newCluster(t)
	push := nixConfig("netrc-file = " + c.netrc(c.pushToken))
	trusting := nixConfig("trusted-public-keys = " + c.publicKey)
	var tops []string
	closures := map[string][]string{}
	for range 4 {
		top, closure := buildClosure(t)
		mustNix(t, push, "nix", "copy", "--to", c.URL, top)
		tops = append(tops, top)
		closures[top] = closure
	}
	pinned := tops[0]
	c.admin("Pin", `{"path": "`+pinned+`", "closure": true}`)
	// Downloads set the last access of the last two closures.
	for _, top := range tops[2:] {
		mustNix(t, trusting, "nix", "copy", "--from", c.URL, "--to", filepath.Join(t.TempDir(), "store"), top)
	}
	stats := messages(t, c.admin("GetStats", ""))[0]
	var stored uint64
	if err := json.Unmarshal([]byte(stats["storedBytes"].(string)), &stored); err != nil {
		t.Fatalf("storedBytes: %v", err)
	}
	limit := stored / 2
	req := `{"max_total_size": ` + jsonNumber(limit)
	dry := c.gcPaths(req + `, "dry_run": true}`)
	real := c.gcPaths(req + `}`)
	if len(real) == 0 || !slices.Equal(dry, real) {
		t.Fatalf("GC deleted %v; the dry run said %v", real, dry)
	}
	for _, p := range closures[pinned] {
		if slices.Contains(real, p) {
			t.Errorf("pinned closure: %s deleted", p)
		}
	}
	after := messages(t, c.admin("GetStats", ""))[0]
	var kept uint64
	json.Unmarshal([]byte(after["storedBytes"].(string)), &kept)
	if kept > limit {
		t.Errorf("%d bytes kept, limit %d", kept, limit)
	}
	for _, top := range tops {
		if slices.Contains(real, top) {
			if got := httpStatus(t, "GET", c.URL+"/"+hashPart(top)+".narinfo", "", nil); got != http.StatusNotFound {
				t.Errorf("deleted %s: narinfo %d", top, got)
			}
			continue
		}
		store := filepath.Join(t.TempDir(), "store")
		if _, errOut, err := nixRun(t, trusting, "nix", "copy", "--from", c.URL, "--to", store, top); err != nil {
			t.Errorf("closure of %s kept, but it does not substitute: %v\n%s", top, err, errOut)
		}
	}
}

func jsonNumber(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// narFileOf returns where the index stores the NAR file of a path.
func (c *cluster) narFileOf(storePath string) string {
	c.t.Helper()
	resp := httpDo(c.t, "GET", c.URL+"/"+hashPart(storePath)+".narinfo", "", nil, nil)
	for _, line := range strings.Split(resp.body, "\n") {
		if url, ok := strings.CutPrefix(line, "URL: nar/"); ok {
			hash := strings.SplitN(url, ".", 2)[0]
			return filepath.Join(c.dir, "index", "nars", hash[:2], url)
		}
	}
	c.t.Fatalf("no URL in the narinfo of %s: %s", storePath, resp.body)
	return ""
}

// TestVerifyCorruptNar corrupts a stored NAR file: Verify reports it and
// the path is no longer served.
func TestVerifyCorruptNar(t *testing.T) {
	c := newCluster(t)
	top, _ := buildClosure(t)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL, top)
	file := c.narFileOf(top)
	narURL := strings.TrimPrefix(file, filepath.Join(c.dir, "index", "nars")+"/")
	narURL = c.URL + "/nar/" + filepath.Base(narURL)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	msgs := messages(t, c.admin("Verify", ""))
	var reported bool
	for _, m := range msgs {
		if m["storePath"] == top && m["ok"] != true && m["problem"] != nil {
			reported = true
		}
	}
	if last := msgs[len(msgs)-1]; !reported || last["bad"] != "1" || last["done"] != true {
		t.Fatalf("Verify did not report %s: %v", top, msgs)
	}
	for _, url := range []string{c.URL + "/" + hashPart(top) + ".narinfo", narURL} {
		if got := httpStatus(t, "GET", url, "", nil); got != http.StatusNotFound {
			t.Errorf("GET %s after Verify: %d, want 404", url, got)
		}
	}
}

// TestKeyRotation adds a key, after which clients trusting only it accept
// every path, then retires the old one, whose signatures go.
func TestKeyRotation(t *testing.T) {
	c := newCluster(t)
	top, closure := buildClosure(t)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL, top)

	msgs := messages(t, c.admin("AddKey", `{"name": "e2e-cache-2"}`))
	last := msgs[len(msgs)-1]
	newKey, _ := last["key"].(map[string]any)["publicKey"].(string)
	if last["done"] != true || last["resigned"] != "3" || !strings.HasPrefix(newKey, "e2e-cache-2:") {
		t.Fatalf("AddKey: %v", msgs)
	}
	substitutes := func(key string) error {
		store := filepath.Join(t.TempDir(), "store")
		_, errOut, err := nixRun(t, nixConfig("trusted-public-keys = "+key), "nix", "copy", "--from", c.URL, "--to", store, top)
		if err != nil {
			return &nixError{err, errOut}
		}
		return nil
	}
	if err := substitutes(newKey); err != nil {
		t.Fatalf("a client trusting only the new key: %v", err)
	}

	msgs = messages(t, c.admin("RetireKey", `{"name": "e2e-cache-1"}`))
	if last := msgs[len(msgs)-1]; last["done"] != true || last["updated"] != "3" {
		t.Fatalf("RetireKey: %v", msgs)
	}
	for _, p := range closure {
		resp := httpDo(t, "GET", c.URL+"/"+hashPart(p)+".narinfo", "", nil, nil)
		if strings.Contains(resp.body, "Sig: e2e-cache-1:") || !strings.Contains(resp.body, "Sig: e2e-cache-2:") {
			t.Errorf("narinfo of %s after RetireKey:\n%s", p, resp.body)
		}
	}
	if err := substitutes(c.publicKey); err == nil {
		t.Error("a client trusting only the retired key still substitutes")
	}
	if err := substitutes(newKey); err != nil {
		t.Errorf("a client trusting only the new key, after RetireKey: %v", err)
	}
}

type nixError struct {
	err    error
	stderr string
}

func (e *nixError) Error() string { return e.err.Error() + "\n" + e.stderr }

// TestAdminJSONWithCurl drives the JSON admin API with the real curl, as
// docs/operate.md shows it: the token as a Bearer header, answers in JSON.
func TestAdminJSONWithCurl(t *testing.T) {
	c := newCluster(t)
	top, closure := buildClosure(t)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL, top)

	curl := func(token string, args ...string) (status int, body string) {
		t.Helper()
		full := []string{"-sS", "-w", "\n%{http_code}"}
		if token != "" {
			full = append(full, "-H", "Authorization: Bearer "+token)
		}
		out, err := exec.Command("curl", append(full, args...)...).Output()
		if err != nil {
			t.Fatalf("curl %v: %v", args, err)
		}
		i := strings.LastIndexByte(string(out), '\n')
		if _, err := fmt.Sscan(string(out[i+1:]), &status); err != nil {
			t.Fatalf("curl %v: no status in %q", args, out)
		}
		return status, string(out[:i])
	}

	status, body := curl(c.adminToken, c.URL+"/api/v1/stats")
	var stats struct {
		PushedPaths string `json:"pushed_paths"`
	}
	if err := json.Unmarshal([]byte(body), &stats); status != http.StatusOK || err != nil || stats.PushedPaths != fmt.Sprint(len(closure)) {
		t.Errorf("curl /api/v1/stats: %d %v %s, want pushed_paths %d", status, err, body, len(closure))
	}
	if status, body = curl(c.adminToken, c.URL+"/api/v1/paths/"+hashPart(top)); status != http.StatusOK || !strings.Contains(body, top) {
		t.Errorf("curl /api/v1/paths/<hash>: %d %s", status, body)
	}
	if status, body = curl(c.adminToken, "-X", "POST", "-d", `{"dry_run": true}`, c.URL+"/api/v1/gc"); status != http.StatusOK || !strings.Contains(body, `"done":true`) {
		t.Errorf("curl POST /api/v1/gc: %d %s", status, body)
	}
	if status, _ = curl("", c.URL+"/api/v1/paths"); status != http.StatusUnauthorized {
		t.Errorf("curl /api/v1/paths without a token: %d, want 401", status)
	}
	if status, _ = curl(c.readToken, "-X", "DELETE", c.URL+"/api/v1/paths/"+hashPart(top)); status != http.StatusForbidden {
		t.Errorf("curl DELETE with a read token: %d, want 403", status)
	}
}
