# A worker in Python: qworker --stdio ... -- python3 square.py
# (PYTHONPATH=python, or pip install ./python, makes qmworker importable.)
from qmworker import task


@task
def square(x):
    return x * x
