"""MapReduce word count over qm queues, driven with BaseManager proxies.

    QM_ADDR=localhost:5000 QM_AUTHKEY=s3cret python3 driver.py [DOCS] [REDUCERS]

It generates a corpus of DOCS documents, puts a map task per document in
queue "map", shuffles the mappers' output (queue "shuffled") by reducer,
puts a reduce task per reducer in queue "reduce", merges the reducers'
output (queue "counted") and prints the ten commonest words. The mappers
and reducers are qworker --stdio workers (see README.md).
"""
import collections
import os
import random
import re
import sys
from multiprocessing.managers import BaseManager

WORDS = ("the of and to a in that is was he for it with as his on be at by had "
         "not are but from or have an they which one you were her all she there "
         "would their we him been has when who will more no if out so said what "
         "queue worker master task lease result").split()


class QueueManager(BaseManager):
    pass


for name in ("map", "shuffled", "reduce", "counted"):
    QueueManager.register("get_%s_queue" % name)


def corpus(docs):
    """DOCS documents of Zipf-distributed words, the same on every run."""
    rng = random.Random(17)
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    return [" ".join(rng.choices(WORDS, weights, k=rng.randint(50, 300))) for _ in range(docs)]


def main():
    docs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    reducers = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    host, port = os.environ["QM_ADDR"].rsplit(":", 1)
    m = QueueManager(address=(host, int(port)), authkey=os.environb[b"QM_AUTHKEY"])
    m.connect()
    texts = corpus(docs)

    map_q, shuffled = m.get_map_queue(), m.get_shuffled_queue()
    for text in texts:
        map_q.put({"text": text, "reducers": reducers})
    # The shuffle: each mapper's output, split by reducer.
    partials = collections.defaultdict(list)
    for _ in texts:
        for r, counts in shuffled.get(timeout=60).items():
            partials[r].append(counts)

    reduce_q, counted = m.get_reduce_queue(), m.get_counted_queue()
    for r, ps in partials.items():
        reduce_q.put({"partials": ps})
    total = collections.Counter()
    for _ in partials:
        total.update(counted.get(timeout=60))

    local = collections.Counter(w for t in texts for w in re.findall(r"[a-z']+", t.lower()))
    for word, n in total.most_common(10):
        print("%-8s %d" % (word, n))
    print("words: %d, distinct: %d, %s" % (sum(total.values()), len(total),
          "the same as a local count" if total == local else "NOT the same as a local count"))
    return 0 if total == local else 1


if __name__ == "__main__":
    sys.exit(main())
