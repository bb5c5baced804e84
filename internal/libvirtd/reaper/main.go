// Command reaper runs one daemon (libvirtd) in a private mount namespace
// as a child subreaper, so the processes the daemon daemonizes (QEMU) are
// re-parented to it and reaped at once instead of by a slow PID 1.
//
//	reaper [-tmpfs DIR]... [-bind SRC=DST]... -- PROGRAM ARGS...
//
// It must be started in a new mount namespace whose mounts are private
// (the launcher uses CLONE_NEWNS, which Go makes private). It mounts the
// tmpfs and bind mounts in order, starts PROGRAM, forwards SIGTERM and
// SIGINT to it, reaps every child, and when PROGRAM exits kills the
// children that remain, reaps them and exits with PROGRAM's status.
//
// Standard library only; built with CGO_ENABLED=0.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const prSetChildSubreaper = 36

func main() {
	args := os.Args[1:]
	type mnt struct{ src, dst, kind string }
	var mounts []mnt
	for len(args) > 0 && args[0] != "--" {
		if len(args) < 2 {
			fail("missing value for %s", args[0])
		}
		switch args[0] {
		case "-tmpfs":
			mounts = append(mounts, mnt{dst: args[1], kind: "tmpfs"})
		case "-bind":
			src, dst, ok := strings.Cut(args[1], "=")
			if !ok {
				fail("bad -bind %q", args[1])
			}
			mounts = append(mounts, mnt{src: src, dst: dst, kind: "bind"})
		default:
			fail("unknown flag %q", args[0])
		}
		args = args[2:]
	}
	if len(args) < 2 {
		fail("usage: reaper [-tmpfs DIR]... [-bind SRC=DST]... -- PROGRAM ARGS...")
	}
	args = args[1:]
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); e != 0 {
		fail("prctl(PR_SET_CHILD_SUBREAPER): %v", e)
	}
	for _, m := range mounts {
		var err error
		if m.kind == "tmpfs" {
			err = syscall.Mount("tmpfs", m.dst, "tmpfs", 0, "mode=0755")
		} else {
			err = syscall.Mount(m.src, m.dst, "", syscall.MS_BIND|syscall.MS_REC, "")
		}
		if err != nil {
			fail("mount %s %s on %s: %v", m.kind, m.src, m.dst, err)
		}
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	pid, err := syscall.ForkExec(args[0], args, &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: []uintptr{0, 1, 2},
	})
	if err != nil {
		fail("start %s: %v", args[0], err)
	}
	go func() {
		for s := range sigs {
			_ = syscall.Kill(pid, s.(syscall.Signal))
		}
	}()
	status := 0
	for {
		var ws syscall.WaitStatus
		p, err := syscall.Wait4(-1, &ws, 0, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			break // no children left
		}
		if p == pid {
			status = ws.ExitStatus()
			if ws.Signaled() {
				status = 128 + int(ws.Signal())
			}
			killChildren()
			// Reap what is left; give up after a while.
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				q, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if err == syscall.ECHILD {
					break
				}
				if q == 0 {
					time.Sleep(10 * time.Millisecond)
				}
			}
			os.Exit(status)
		}
	}
	os.Exit(status)
}

// killChildren sends SIGKILL to every process whose parent is this one.
func killChildren() {
	self := os.Getpid()
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		if pp, _ := strconv.Atoi(f[1]); pp == self {
			if p, err := strconv.Atoi(filepath.Base(filepath.Dir(d))); err == nil {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
	}
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "reaper: "+format+"\n", a...)
	os.Exit(111)
}
