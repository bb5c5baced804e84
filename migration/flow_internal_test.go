package migration

import (
	"errors"
	"runtime"
	"testing"
)

// TestGoWait: the goroutine goWait starts behaves as the caller's own
// would: its error comes back, a panic becomes an error, and
// runtime.Goexit in it ends the waiting goroutine too.
func TestGoWait(t *testing.T) {
	boom := errors.New("boom")
	if err := goWait(func() error { return boom })(); !errors.Is(err, boom) {
		t.Fatalf("error: %v", err)
	}
	if err := goWait(func() error { panic("bug") })(); err == nil || err.Error() != "panicked: bug" {
		t.Fatalf("panic: %v", err)
	}
	after := make(chan bool, 1)
	go func() {
		defer func() { after <- false }()
		goWait(func() error { runtime.Goexit(); return nil })()
		after <- true
	}()
	if <-after {
		t.Fatal("the waiter went on after its goroutine's Goexit")
	}
}
