"""The classic BaseManager master: a task queue and a result queue served
to workers over TCP. Prints its port, then serves until killed."""
import os
import queue
from multiprocessing.managers import BaseManager

tasks = queue.Queue()
results = queue.Queue()


class QueueManager(BaseManager):
    pass


QueueManager.register("get_tasks", callable=lambda: tasks)
QueueManager.register("get_results", callable=lambda: results)

if __name__ == "__main__":
    m = QueueManager(address=("127.0.0.1", 0), authkey=os.environb[b"QB_AUTHKEY"])
    server = m.get_server()
    print(server.address[1], flush=True)
    server.serve_forever()
