package lab

import "runtime"

// lockAndDiscard locks the goroutine to its thread without unlocking, so
// the runtime destroys the thread when the goroutine exits: for code that
// switches namespaces and does not switch back.
func lockAndDiscard() { runtime.LockOSThread() }
