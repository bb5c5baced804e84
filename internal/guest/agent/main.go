// Command agent is the program a sealift test guest runs after its /init
// has configured the network. It proves a guest stays the same guest
// across live migrations:
//
//   - a counter increments every 100 ms and is printed on the console
//     ("sealift-counter N boot=ID");
//   - TCP 7777 echoes whatever it receives;
//   - TCP 7778 answers "boot=ID counter=N\n" and closes.
//
// ID is the kernel's random boot id: it changes on every boot, so the same
// ID with a larger counter means the guest kept running.
//
// It uses the standard library only and is built with CGO_ENABLED=0.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

var counter atomic.Uint64

func main() {
	boot := "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		boot = strings.TrimSpace(string(b))
	}
	echo, err := net.Listen("tcp", ":7777")
	if err != nil {
		fmt.Println("sealift-agent error:", err)
		os.Exit(1)
	}
	status, err := net.Listen("tcp", ":7778")
	if err != nil {
		fmt.Println("sealift-agent error:", err)
		os.Exit(1)
	}
	go serve(echo, func(c net.Conn) { _, _ = io.Copy(c, c) })
	go serve(status, func(c net.Conn) {
		fmt.Fprintf(c, "boot=%s counter=%d\n", boot, counter.Load())
	})
	fmt.Printf("sealift-agent ready boot=%s\n", boot)
	t := time.NewTicker(100 * time.Millisecond)
	for range t.C {
		n := counter.Add(1)
		fmt.Printf("sealift-counter %d boot=%s\n", n, boot)
	}
}

func serve(l net.Listener, handle func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(time.Minute))
			handle(c)
		}()
	}
}
