// Package worker runs tasks from a qm master: it takes tasks from a queue
// under a lease, runs a Handler on each with bounded concurrency, keeps the
// leases of running tasks alive, and completes each task with its result or
// its error, reconnecting whenever the connection to the master drops.
//
// A worker in a few lines:
//
//	err := worker.Run(ctx, worker.Config{
//		Server:  "master:5000",
//		Authkey: key,
//		Handler: func(ctx context.Context, t worker.Task) (any, error) {
//			v, err := t.Value()
//			if err != nil {
//				return nil, err
//			}
//			return fmt.Sprint(v), nil
//		},
//	})
//
// Cancelling ctx drains the worker: it takes no new tasks, lets the running
// handlers finish (their ctx is not cancelled), completes them and returns
// nil. Builtin and Command give ready-made handlers.
//
// The files follow the jobs: run.go is Run, the reconnect loop and serve,
// the one goroutine that decides where each result goes; pool.go the
// handler goroutines; task.go what a handler goroutine does with a task;
// results.go the result pipeline between them and the master; session.go
// one connection's leases and their renewal.
package worker
