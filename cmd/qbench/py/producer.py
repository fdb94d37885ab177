"""The classic BaseManager producer: put N tasks, collect N results; then
single-task round trips. Prints one JSON object."""
import json
import os
import sys
import time
from multiprocessing.managers import BaseManager


class QueueManager(BaseManager):
    pass


QueueManager.register("get_tasks")
QueueManager.register("get_results")

WARMUP = 100

if __name__ == "__main__":
    port, n, size, rtt = (int(a) for a in sys.argv[1:5])
    m = QueueManager(address=("127.0.0.1", port), authkey=os.environb[b"QB_AUTHKEY"])
    m.connect()
    tasks, results = m.get_tasks(), m.get_results()
    payload = b"x" * size

    start = time.perf_counter()
    for i in range(n):
        tasks.put((i, payload))
    for i in range(n):
        _, value = results.get(timeout=60)
        if i == 0 and value != payload:
            sys.exit("result is not the payload")
    seconds = time.perf_counter() - start

    rtt_ns = []
    for i in range(WARMUP + rtt):
        t0 = time.perf_counter_ns()
        tasks.put((i, payload))
        results.get(timeout=60)
        if i >= WARMUP:
            rtt_ns.append(time.perf_counter_ns() - t0)
    print(json.dumps({"seconds": seconds, "rtt_ns": rtt_ns}), flush=True)
