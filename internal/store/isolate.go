package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// checkEnv, set to a file's path, makes a process that links this package
// run only the consistency check of that file, print the result as JSON
// and exit: the child of isolatedConsistency.
const checkEnv = "_DPGATE_STORE_CHECK_CHILD"

func init() {
	if path := os.Getenv(checkEnv); path != "" {
		os.Exit(checkChild(path))
	}
}

type childResult struct {
	Problems []string `json:"problems"`
	CutShort bool     `json:"cut_short"`
	Locked   bool     `json:"locked"`
}

func checkChild(path string) int {
	var res childResult
	lockTimeout, _ := time.ParseDuration(os.Getenv(checkEnv + "_LOCK"))
	err := guard("check", func() error {
		b, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockTimeout})
		if err != nil {
			return err
		}
		defer b.Close()
		res.Problems, res.CutShort = consistency(b, path)
		return nil
	})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		res.Locked = true
	case err != nil:
		res.Problems = append(res.Problems, err.Error())
	}
	json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

// isolatedConsistency runs consistency on the file in a child process
// (this executable again). bbolt's Check walks in a goroutine of its own,
// where a damaged page can fault fatally (a key or value pointing past
// the memory map), count to four billion (a corrupted overflow count) or
// recurse for ever: in a child that ends the child, bounded in time, and
// the file is reported damaged instead of the gateway crashing at every
// start.
func isolatedConsistency(path string, lockTimeout time.Duration) (problems []string, cutShort bool, err error) {
	exe := "/proc/self/exe" // still this binary after the file on disk was replaced
	if _, err := os.Stat(exe); err != nil {
		if exe, err = os.Executable(); err != nil {
			return nil, false, fmt.Errorf("store: %w", err)
		}
	}
	limit := 30 * time.Second
	if st, err := os.Stat(path); err == nil {
		limit += time.Duration(st.Size()/(50<<20)) * time.Second // a second per 50 MiB, on top
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), checkEnv+"="+path, checkEnv+"_LOCK="+lockTimeout.String())
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	runErr := cmd.Run()
	var res childResult
	switch {
	case ctx.Err() != nil:
		return []string{fmt.Sprintf("bbolt's consistency check did not finish within %s (pages pointing in a loop?)", limit)}, false, nil
	case runErr != nil || json.Unmarshal(out.Bytes(), &res) != nil:
		return []string{"bbolt's consistency check crashed on this file: " + firstLines(errOut.String(), 2)}, false, nil
	case res.Locked:
		return nil, false, fmt.Errorf("%w: %s", ErrLocked, path)
	}
	return res.Problems, res.CutShort, nil
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(strings.TrimSpace(s), "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], " ")
}
