"""Writes the pickles that pyproto's tests and fuzz seeds read.

Run from this directory with python3 (3.9 or later):  python3 gen.py
Each value is pickled at protocols 2 to 5 into pickles/NAME.pN.pkl. The
values and what pyproto must make of them are listed in unpickle_test.go.
"""
import datetime as dt
import decimal
import os
import pickle
import zoneinfo


class Evil:
    """Unpickling this runs a shell command."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class Plain:
    """An ordinary class instance: unpickling it imports and builds it."""

    def __init__(self):
        self.x = 1


class EvalIt:
    def __reduce__(self):
        return (eval, ("__import__('os').system('touch /tmp/qm-pwned')",))


shared = "shared"
cycle = []
cycle.append(cycle)
deep = []
for _ in range(150):
    deep = [deep]

VALUES = {
    "none": None,
    "bools": [True, False],
    "ints": [0, 1, -1, 255, 256, 65535, 65536, -2**31, 2**31 - 1, 2**31,
             2**40, -2**40, 2**63 - 1, -2**63, 2**64 - 1],
    "floats": [0.0, 1.5, -2.25, 1e300, float("inf")],
    "strs": ["", "x", "h\u00e9llo \u2713", "a" * 300],
    "bytes": [b"", b"\x00\xff", b"y" * 300],
    "tuple": (1, "a", (2, 3), ()),
    "list": [1, [2, [3]], []],
    "dict": {"k": 2**40, "nested": {"a": [1, 2]}, 1: "one", (1, 2): "pair", None: 0},
    "shared": [shared, shared, [shared]],
    "request_put": ("7fa939083350", "put", ((49, "x", b"y", 1.5, None, True, [1], {"k": 2**40}),), {}),
    "request_get": ("qm-queue:task", "get", (), {"timeout": 1}),
    "request_create": (None, "create", ("get_task_queue",), {}),
    "cycle": cycle,
    "deep": deep,
    "bigint": 2**70,
    "bigints": [2**64, 2**64 + 1, -2**64 - 1, -2**63 - 1, 10**30, -10**30, 2**2100],
    "set": {1, 2},
    "sets": [set(), {"a"}, {(1, (2, b"x")), frozenset({3})}],
    "frozensets": [frozenset(), frozenset({1}), frozenset({frozenset({2})})],
    "set_key": {frozenset({1}): "one"},
    "bytearrays": [bytearray(), bytearray(b"ab"), bytearray(b"\x00\xff" * 200)],
    "datetimes": [dt.datetime(2024, 1, 2, 3, 4, 5, 6),
                  dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc),
                  dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc),
                  dt.datetime(9999, 12, 31, 23, 59, 59, 999999,
                              tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30), "X")),
                  dt.datetime(2024, 11, 3, 1, 30, fold=1),
                  dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2)))],
    "dates": [dt.date(2024, 2, 29), dt.date.min, dt.date.max],
    "times": [dt.time(), dt.time(1, 2, 3, 4), dt.time(23, 59, 59, 999999, tzinfo=dt.timezone.utc),
              dt.time(1, fold=1)],
    "timedeltas": [dt.timedelta(0), dt.timedelta(days=-1, seconds=5, microseconds=7),
                   dt.timedelta.max, dt.timedelta.min],
    "decimals": [decimal.Decimal("1.50"), decimal.Decimal("-0"), decimal.Decimal("NaN"),
                 decimal.Decimal("-Infinity"), decimal.Decimal("1E+30")],
    "complexes": [complex(1.5, -2), 0j],
    "class": set,
    "evil_zoneinfo": dt.datetime(2024, 1, 1, tzinfo=zoneinfo.ZoneInfo("UTC")),
    "evil_system": Evil("touch /tmp/qm-pwned"),
    "evil_eval": EvalIt(),
    "evil_object": Plain(),
    "evil_in_request": ("qm-queue:task", "put", (Evil("touch /tmp/qm-pwned"),), {}),
}

os.makedirs("pickles", exist_ok=True)
for name, value in VALUES.items():
    for proto in range(2, 6):
        with open(os.path.join("pickles", "%s.p%d.pkl" % (name, proto)), "wb") as f:
            f.write(pickle.dumps(value, protocol=proto))
