// Command pause is the infra process of every pod sandbox on the test node: it holds the pod's namespaces
// open until it is told to stop. Kubernetes' own pause is C and ships as an image from registry.k8s.io,
// which cannot be reached here, so the node builds this one and imports it into containerd as an image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 1)
	// As PID 1 of the sandbox the kernel drops signals that have no handler: handle the stopping ones.
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	// Reap children that end up here (a shared PID namespace makes this PID 1 of every container's orphans).
	reaped := make(chan os.Signal, 1)
	signal.Notify(reaped, syscall.SIGCHLD)
	for {
		select {
		case <-signals:
			os.Exit(0)
		case <-reaped:
			for {
				var status syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}
