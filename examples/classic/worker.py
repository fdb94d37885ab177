"""The classic distributed-queue worker, unmodified BaseManager code:
take a number, put its square, until no task comes for 5 seconds.

    QM_ADDR=localhost:5000 QM_AUTHKEY=s3cret python3 worker.py
"""
import os
import queue
from multiprocessing.managers import BaseManager


class QueueManager(BaseManager):
    pass


QueueManager.register("get_task_queue")
QueueManager.register("get_result_queue")

if __name__ == "__main__":
    host, port = os.environ["QM_ADDR"].rsplit(":", 1)
    m = QueueManager(address=(host, int(port)), authkey=os.environb[b"QM_AUTHKEY"])
    m.connect()
    task, result = m.get_task_queue(), m.get_result_queue()
    while True:
        try:
            n = task.get(timeout=5)
        except queue.Empty:
            break
        result.put(n * n)
