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
// Besides the tasks it runs, a worker prefetches: it takes up to P more, to
// wait in it until a slot frees, where P is as many as its slots finish
// during one get's round trip, Concurrency × round trip / mean handler
// time, at most Config.MaxPrefetch. Handler times are a moving average of
// the handlers' run times; the round trip is the least of the last gets
// that returned tasks (a get may have waited at the master, the least did
// not), at least 50µs. P is 0 until both are known, and for tasks slower
// than a round trip, which are taken only as slots free: quick tasks come
// in batches at Concurrency 1, and a slow task never waits in one worker
// while another is idle. Prefetched tasks are leased, and their leases
// renewed, like running ones.
//
// Cancelling ctx drains the worker: it takes no new tasks, gives back the
// tasks it has prefetched and not started (other workers take them at
// once), lets the running handlers finish (their ctx is not cancelled),
// completes them all and returns nil. Builtin and Command give ready-made
// handlers. KillCommands is for a program that must exit at once.
//
// The files follow the jobs: run.go is Run, the reconnect loop and serve,
// the one goroutine that decides where each result goes; pool.go the
// handler goroutines; task.go what a handler goroutine does with a task;
// results.go the result pipeline between them and the master; session.go
// one connection's leases and their renewal.
package worker
