"""The classic BaseManager producer, driven by qbench through stdin, one
command a line; each answer is one JSON line:
  throughput N  put N tasks, collect N results: {"seconds": s}
  rtt K         K single-task round trips: {"rtt_ns": [...]}
It exits at the end of its input."""
import json
import os
import sys
import time
from multiprocessing.managers import BaseManager


class QueueManager(BaseManager):
    pass


QueueManager.register("get_tasks")
QueueManager.register("get_results")


def throughput(tasks, results, n, payload):
    start = time.perf_counter()
    for i in range(n):
        tasks.put((i, payload))
    for i in range(n):
        _, value = results.get(timeout=60)
        if i == 0 and value != payload:
            sys.exit("result is not the payload")
    return {"seconds": time.perf_counter() - start}


def round_trips(tasks, results, k, payload):
    rtt_ns = []
    for i in range(k):
        t0 = time.perf_counter_ns()
        tasks.put((i, payload))
        results.get(timeout=60)
        rtt_ns.append(time.perf_counter_ns() - t0)
    return {"rtt_ns": rtt_ns}


if __name__ == "__main__":
    port, size = (int(a) for a in sys.argv[1:3])
    m = QueueManager(address=("127.0.0.1", port), authkey=os.environb[b"QB_AUTHKEY"])
    m.connect()
    tasks, results = m.get_tasks(), m.get_results()
    payload = b"x" * size
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd, arg = line.split()
        if cmd == "throughput":
            out = throughput(tasks, results, int(arg), payload)
        elif cmd == "rtt":
            out = round_trips(tasks, results, int(arg), payload)
        else:
            sys.exit("unknown command " + cmd)
        print(json.dumps(out), flush=True)
