"""Map: count the words of one document, split by reducer.

A task is {"text": "...", "reducers": R}; the result maps each reducer
number (as a string) to the counts of the words that reducer owns.
"""
import re
import zlib

from qmworker import task


def partition(word, reducers):
    # crc32, not hash(): the same word must go to the same reducer in
    # every process.
    return zlib.crc32(word.encode()) % reducers


@task
def map_words(t):
    out = {}
    for word in re.findall(r"[a-z']+", t["text"].lower()):
        counts = out.setdefault(str(partition(word, t["reducers"])), {})
        counts[word] = counts.get(word, 0) + 1
    return out
