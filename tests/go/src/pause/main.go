// pause holds a pod sandbox's namespaces open for containerd, as Kubernetes' own pause
// image does: it waits until it is told to stop, and, when it is PID 1 of a pod that
// shares its PID namespace, reaps the orphans that are handed to it. The project builds
// it into its own `FROM scratch` image, since the test machines reach no registry.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// Every exited child, not just one: signals coalesce.
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
