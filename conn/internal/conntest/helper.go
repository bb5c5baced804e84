package conntest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sealift/sealift/internal/nsutil"
)

// helperEnv is the variable that turns the test binary into the echo
// helper, set by Main.
var helperEnv string

// Main is the body of a test package's TestMain: with the variable
// envName set (by StartEchoHelper, in a child process of the test binary)
// it runs the echo helper and never returns; otherwise it runs the tests
// and exits. The echo helper lets a scale test's server side run in
// another process, so that neither process needs more than 10,000
// sockets.
func Main(m *testing.M, envName string) {
	helperEnv = envName
	if addrs := os.Getenv(envName); addrs != "" {
		runEchoHelper(strings.Split(addrs, ","))
		return
	}
	os.Exit(m.Run())
}

// runEchoHelper echoes on addrs and prints "END reset" or "END other" for
// every connection that ends.
func runEchoHelper(addrs []string) {
	out := make(chan string, 1024)
	for _, a := range addrs {
		ln, err := net.Listen("tcp4", a)
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					err := ReadEcho(c)
					c.Close()
					if errors.Is(err, syscall.ECONNRESET) {
						out <- "END reset"
					} else {
						out <- "END other"
					}
				}()
			}
		}()
	}
	fmt.Println("READY")
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); os.Exit(0) }() // parent gone: exit
	for l := range out {
		fmt.Println(l)
	}
}

// EchoHelper is a running child echo server.
type EchoHelper struct {
	resets chan struct{}
}

// StartEchoHelper runs the echo helper (the test binary re-executed; its
// TestMain must call Main) in ns on the IPv4 addrs; it is stopped in t's
// cleanup.
func StartEchoHelper(t testing.TB, ns string, addrs ...string) *EchoHelper {
	t.Helper()
	if helperEnv == "" {
		t.Fatal("conntest: StartEchoHelper needs TestMain to call conntest.Main")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+strings.Join(addrs, ","))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := nsutil.Do(ns, cmd.Start); err != nil {
		t.Fatalf("start echo helper in %s: %v", ns, err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	h := &EchoHelper{resets: make(chan struct{}, 1<<16)}
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() || sc.Text() != "READY" {
		t.Fatalf("echo helper: %q %v", sc.Text(), sc.Err())
	}
	go func() {
		for sc.Scan() {
			if sc.Text() == "END reset" {
				select {
				case h.resets <- struct{}{}:
				default: // nobody counts (benchmarks)
				}
			}
		}
	}()
	return h
}

// AwaitResets waits until n of the helper's connections have ended with
// ECONNRESET, and fails t if its context ends first.
func (h *EchoHelper) AwaitResets(t testing.TB, n int) {
	t.Helper()
	timeout := time.After(WaitTimeout)
	for i := 0; i < n; i++ {
		select {
		case <-h.resets:
		case <-timeout:
			t.Fatalf("peer side: %d of %d saw ECONNRESET within %v", i, n, WaitTimeout)
		}
	}
}
