"""The classic BaseManager worker: take a task, compute (echo), put the
result, until killed."""
import os
import queue
import sys
from multiprocessing.managers import BaseManager


class QueueManager(BaseManager):
    pass


QueueManager.register("get_tasks")
QueueManager.register("get_results")

if __name__ == "__main__":
    m = QueueManager(address=("127.0.0.1", int(sys.argv[1])), authkey=os.environb[b"QB_AUTHKEY"])
    m.connect()
    tasks, results = m.get_tasks(), m.get_results()
    print("ready", flush=True)
    while True:
        try:
            task = tasks.get(timeout=1)
        except queue.Empty:
            continue
        results.put(task)
