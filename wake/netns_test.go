package wake

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"golang.org/x/net/ipv4"

	"github.com/dpgate/dpgate/internal/testutil"
)

// The broadcast paths cannot be tested on loopback: the test builds two
// network namespaces joined by a veth pair (10.213.0.1/24 - .2/24), runs
// the gateway side of Wake in one and a receiver in the other, both as
// child processes of this test binary, and checks what arrives.

const helperEnv = "DPGATE_WAKE_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "send":
		helperSend()
		return
	case "recv":
		helperRecv()
		return
	}
	os.Exit(m.Run())
}

var deviceMAC = net.HardwareAddr{0x02, 0, 0, 0, 0x02, 0x13}

// helperSend wakes the device at 10.213.0.2 and prints the Result.
func helperSend() {
	k, err := LoadOrCreateKeys(os.Getenv("DPGATE_WAKE_DIR"), "")
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	s, _ := New(Config{Keys: k, Logger: testutil.Quiet(), Lookup: func(string) (Target, bool) {
		return Target{Addr: netip.MustParseAddr("10.213.0.2"), MAC: deviceMAC}, true
	}})
	json.NewEncoder(os.Stdout).Encode(s.Wake("pc-netns", "test"))
}

// helperRecv prints "port destination hex" for each datagram arriving on
// UDP 7, 9 and 15000 until it has 7 or 10 s passed.
func helperRecv() {
	type pkt struct {
		port int
		dst  string
		body []byte
	}
	ch := make(chan pkt, 16)
	for _, port := range []int{7, 9, 15000} {
		c, err := net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", port))
		if err != nil {
			fmt.Println("listen:", err)
			os.Exit(1)
		}
		p := ipv4.NewPacketConn(c)
		p.SetControlMessage(ipv4.FlagDst, true)
		go func() {
			buf := make([]byte, 2048)
			for {
				n, cm, _, err := p.ReadFrom(buf)
				if err != nil {
					return
				}
				dst := "?"
				if cm != nil {
					dst = cm.Dst.String()
				}
				ch <- pkt{port, dst, append([]byte(nil), buf[:n]...)}
			}
		}()
	}
	fmt.Println("ready")
	deadline := time.After(10 * time.Second)
	for range 7 {
		select {
		case p := <-ch:
			fmt.Printf("%d %s %s\n", p.port, p.dst, hex.EncodeToString(p.body))
		case <-deadline:
			return
		}
	}
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func TestWakeOnLANBroadcastsInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces (ip netns add); the loopback tests cover the rest")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2) to create network namespaces")
	}
	id := fmt.Sprint(os.Getpid() % 100000)
	nsA, nsB, vA, vB := "dpgwa"+id, "dpgwb"+id, "dpgva"+id, "dpgvb"+id
	if out, err := exec.Command("ip", "netns", "add", nsA).CombinedOutput(); err != nil {
		if strings.Contains(string(out), "not permitted") {
			t.Skipf("root without the right to create network namespaces here (a restricted container): %s", out)
		}
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", nsA).Run() })
	sh(t, "ip", "netns", "add", nsB)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", nsB).Run() })
	sh(t, "ip", "link", "add", vA, "netns", nsA, "type", "veth", "peer", "name", vB, "netns", nsB)
	sh(t, "ip", "-n", nsA, "addr", "add", "10.213.0.1/24", "dev", vA)
	sh(t, "ip", "-n", nsB, "addr", "add", "10.213.0.2/24", "dev", vB)
	for _, ns := range [][2]string{{nsA, vA}, {nsB, vB}} {
		sh(t, "ip", "-n", ns[0], "link", "set", "lo", "up")
		sh(t, "ip", "-n", ns[0], "link", "set", ns[1], "up")
	}
	self, _ := os.Executable()
	recv := exec.Command("ip", "netns", "exec", nsB, self)
	recv.Env = append(os.Environ(), helperEnv+"=recv")
	out, _ := recv.StdoutPipe()
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	defer recv.Process.Kill()
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != "ready" {
		t.Fatalf("receiver: %q", sc.Text())
	}
	send := exec.Command("ip", "netns", "exec", nsA, self)
	send.Env = append(os.Environ(), helperEnv+"=send", "DPGATE_WAKE_DIR="+t.TempDir())
	res, err := send.Output()
	if err != nil {
		t.Fatalf("sender: %v: %s", err, res)
	}
	var r Result
	if err := json.Unmarshal(res, &r); err != nil {
		t.Fatalf("sender printed %q", res)
	}
	for _, a := range r.Attempts {
		if a.Err != "" {
			t.Errorf("attempt %s to %s failed: %s", a.Via, a.To, a.Err)
		}
	}
	var got []string
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			continue
		}
		b, _ := hex.DecodeString(f[2])
		switch f[0] {
		case "15000":
			var d Datagram
			if err := d.DecodeFromBytes(b, gopacket.NilDecodeFeedback); err != nil || d.DeviceID != "pc-netns" {
				t.Errorf("datagram on 15000: %v", err)
			}
		default:
			var w WakeOnLAN
			if err := w.DecodeFromBytes(b, gopacket.NilDecodeFeedback); err != nil || w.MAC.String() != deviceMAC.String() {
				t.Errorf("magic packet on %s: %v", f[0], err)
			}
		}
		got = append(got, f[0]+" "+f[1])
	}
	slices.Sort(got)
	want := []string{"15000 10.213.0.2", "7 10.213.0.2", "7 10.213.0.255", "7 255.255.255.255", "9 10.213.0.2", "9 10.213.0.255", "9 255.255.255.255"}
	if !slices.Equal(got, want) {
		t.Errorf("received (port destination):\n%v\nwant:\n%v", got, want)
	}
}
