//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCompletionAndMan: the bash completion completes commands,
// subcommands and each one's flags; the man page has a section for every
// command and subcommand.
func TestCompletionAndMan(t *testing.T) {
	r := dpgate(t, nil, "completion", "bash")
	if r.Code != 0 {
		t.Fatalf("completion bash: exit %d: %s", r.Code, r.Stderr)
	}
	script := filepath.Join(t.TempDir(), "dpgate.bash")
	os.WriteFile(script, []byte(r.Stdout), 0o644)
	for words, want := range map[string]string{
		"dpgate ce":                    "cert",
		"dpgate cert ag":               "agent-gen",
		"dpgate cert agent-gen --pass": "--password-file",
		"dpgate push --w":              "--wait",
		"dpgate status --j":            "--json",
	} {
		w := strings.Fields(words)
		out, err := exec.Command("bash", "-c", `source "$1"; COMP_WORDS=(${@:2}); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); _dpgate; echo "${COMPREPLY[*]}"`, "bash", script, strings.Join(w, " ")).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Errorf("completing %q: %q (%v), want %q", words, out, err, want)
		}
	}
	if r := dpgate(t, nil, "completion", "zsh"); r.Code != 0 || !strings.HasPrefix(r.Stdout, "#compdef dpgate") {
		t.Errorf("completion zsh: exit %d, %q", r.Code, r.Stdout[:min(40, len(r.Stdout))])
	}
	man := dpgate(t, nil, "man")
	for _, want := range []string{".TH DPGATE 1", ".SH COMMANDS", ".SS serve\n", ".SS cert agent-gen\n", ".SS status\n", "DPGATE_ADDR"} {
		if man.Code != 0 || !strings.Contains(man.Stdout, want) {
			t.Errorf("dpgate man: exit %d, no %q", man.Code, want)
		}
	}
}

func TestCountSaysOneOrMany(t *testing.T) {
	for _, c := range []struct {
		n    int
		noun string
		want string
	}{{0, "member", "0 members"}, {1, "member", "1 member"}, {2, "push", "2 pushes"}, {1, "push", "1 push"}, {3, "unreadable branch", "3 unreadable branches"}, {5, "open file", "5 open files"}} {
		if got := count(c.n, c.noun); got != c.want {
			t.Errorf("count(%d, %q) = %q, want %q", c.n, c.noun, got, c.want)
		}
	}
}
