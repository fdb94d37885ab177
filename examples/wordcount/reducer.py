"""Reduce: add up the partial counts of the words one reducer owns.

A task is {"partials": [{word: count}, ...]}; the result is {word: count}.
"""
from qmworker import task


@task
def reduce_counts(t):
    total = {}
    for partial in t["partials"]:
        for word, n in partial.items():
            total[word] = total.get(word, 0) + n
    return total
