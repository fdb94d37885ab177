"""The classic distributed-queue producer, unmodified BaseManager code:
put the numbers 1..N in the task queue, collect N results.

    QM_ADDR=localhost:5000 QM_AUTHKEY=s3cret python3 producer.py 100
"""
import os
import sys
from multiprocessing.managers import BaseManager


class QueueManager(BaseManager):
    pass


QueueManager.register("get_task_queue")
QueueManager.register("get_result_queue")

if __name__ == "__main__":
    host, port = os.environ["QM_ADDR"].rsplit(":", 1)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    m = QueueManager(address=(host, int(port)), authkey=os.environb[b"QM_AUTHKEY"])
    m.connect()
    task, result = m.get_task_queue(), m.get_result_queue()
    for i in range(1, n + 1):
        task.put(i)
    total = sum(result.get(timeout=60) for _ in range(n))
    print("sum of the squares of 1..%d = %d" % (n, total))
