package store

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestPutGetDeleteForEach(t *testing.T) {
	db, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Get("b", "missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get on a missing bucket: got %v, want ErrNotFound", err)
	}
	for i := range 5 {
		if err := db.Put("b", fmt.Sprintf("k%d", i), []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	v, err := db.Get("b", "k3")
	if err != nil || len(v) != 1 || v[0] != 3 {
		t.Errorf("Get k3 = %v, %v; want [3]", v, err)
	}
	if err := db.Delete("b", "k3"); err != nil {
		t.Fatal(err)
	}
	if err := db.Delete("nobucket", "k"); err != nil {
		t.Errorf("Delete in a missing bucket: %v, want nil", err)
	}
	var keys []string
	db.ForEach("b", func(k, _ []byte) error { keys = append(keys, string(k)); return nil })
	if got := strings.Join(keys, ","); got != "k0,k1,k2,k4" {
		t.Errorf("ForEach keys = %s, want k0,k1,k2,k4", got)
	}
}

func TestSecondOpenIsLocked(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, err = Open(dir, Options{LockTimeout: 50 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: got %v, want ErrLocked", err)
	}
}

// TestSurvivesKill9 runs a child process that writes records and prints
// each key once Put has returned; the parent kills it with SIGKILL in the
// middle of writing, reopens the file, and checks that every reported
// record is there and that the file is consistent.
func TestSurvivesKill9(t *testing.T) {
	if dir := os.Getenv("DPGATE_STORE_CHILD"); dir != "" {
		childWriter(dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSurvivesKill9$")
	cmd.Env = append(os.Environ(), "DPGATE_STORE_CHILD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	const killAfter = 300
	acked := map[string]bool{}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if k, ok := strings.CutPrefix(line, "acked "); ok {
			acked[k] = true
			if len(acked) == killAfter {
				cmd.Process.Signal(syscall.SIGKILL)
				break
			}
		}
	}
	cmd.Wait()
	if len(acked) < killAfter {
		t.Fatalf("child acknowledged only %d records before it ended, want %d", len(acked), killAfter)
	}

	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("reopen after kill -9: %v", err)
	}
	defer db.Close()
	if err := db.Check(); err != nil {
		t.Fatalf("consistency check after kill -9: %v", err)
	}
	missing := 0
	for k := range acked {
		v, err := db.Get("queue", k)
		if err != nil || string(v) != "payload-"+k {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d acknowledged records lost or corrupt after kill -9", missing, len(acked))
	}
}

func childWriter(dir string) {
	db, err := Open(dir, Options{})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	w := bufio.NewWriter(os.Stdout)
	for i := 0; i < 100000; i++ { // bounded: the parent kills us long before
		k := strconv.Itoa(i)
		if err := db.Put("queue", k, []byte("payload-"+k)); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Fprintf(w, "acked %s\n", k)
		w.Flush()
	}
	os.Exit(0)
}

// TestBatchGroupCommit: concurrent Batch calls all commit, and a failing
// call fails alone (its batch-mates are committed by a retry).
func TestBatchGroupCommit(t *testing.T) {
	db, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const n = 500
	errBoom := errors.New("boom")
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = db.Batch(func(tx *bolt.Tx) error {
				if i%50 == 7 {
					return errBoom
				}
				b, err := tx.CreateBucketIfNotExists([]byte("batch"))
				if err != nil {
					return err
				}
				k := []byte(fmt.Sprint(i))
				return b.Put(k, Seal(k, []byte("v")))
			})
		}()
	}
	wg.Wait()
	for i := range n {
		_, getErr := db.Get("batch", fmt.Sprint(i))
		if i%50 == 7 {
			if !errors.Is(errs[i], errBoom) || getErr == nil {
				t.Errorf("call %d: err %v, stored %v; want boom and nothing stored", i, errs[i], getErr == nil)
			}
			continue
		}
		if errs[i] != nil || getErr != nil {
			t.Errorf("call %d: err %v, get %v; want committed", i, errs[i], getErr)
		}
	}
}

// TestCommitsCounted: Stats counts the write transactions committed
// since Open (not those before it) and the page writes they made.
func TestCommitsCounted(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	put := func(k string) {
		t.Helper()
		if err := db.Put("counted", k, []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	put("a")
	put("b")
	if st := db.Stats(); st.Commits != 2 || st.PageWrites < 2 {
		t.Errorf("after two puts: %d commits, %d page writes; want 2 and at least 2", st.Commits, st.PageWrites)
	}
	db.Close()
	if db, err = Open(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	put("c")
	if st := db.Stats(); st.Commits != 1 {
		t.Errorf("after reopening and one put: %d commits, want 1", st.Commits)
	}
}
