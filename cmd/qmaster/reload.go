package main

import (
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/qm-dev/qm/acl"
	"github.com/qm-dev/qm/master"
)

// reloadOnHUP re-reads the --acl file at path on each SIGHUP and gives
// srv its rules; a file that does not parse is refused, with the error
// (its line, for a syntax error) logged, and the old rules stay. Without
// a file (path "") a SIGHUP is logged and ignored: by default it would
// kill the master, and a master without a data directory would lose its
// queues to a log rotation or a "systemctl reload". The func it returns
// stops it and waits for it.
func reloadOnHUP(srv *master.Server, path string, log *slog.Logger) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-hup:
			}
			if path == "" {
				log.Info("SIGHUP ignored: there is nothing to reload without --acl")
				continue
			}
			rules, err := acl.Load(path)
			if err != nil {
				log.Error("acl reload refused; the old rules stay", "err", err)
				continue
			}
			closed, err := srv.SetACL(rules)
			if err != nil {
				log.Error("acl reload refused; the old rules stay", "err", err)
				continue
			}
			log.Info("acl reloaded", "file", path, "keys", len(rules.Keys()), "connections_closed", closed)
		}
	})
	return func() {
		signal.Stop(hup)
		close(done)
		wg.Wait()
	}
}
