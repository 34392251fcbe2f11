// pause: the sandbox process of every pod on the real node. It holds the pod's namespaces and
// waits for a signal; built here because no registry is reachable to pull registry.k8s.io/pause.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	// Children re-parented to us (none unless the pod shares its PID namespace) are reaped.
	go func() {
		for {
			var ws syscall.WaitStatus
			if _, err := syscall.Wait4(-1, &ws, 0, nil); err != nil {
				return
			}
		}
	}()
	<-sig
}
