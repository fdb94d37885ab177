"""Write a qm worker in Python as a plain function.

    from qmworker import task

    @task
    def square(x):
        return x * x

Run it under qworker, either way:

    qworker --server master:5000 --stdio --concurrency 4 -- python3 square.py
    qworker --server master:5000 -- python3 square.py     # a process per task

The function gets the task's payload, decoded from JSON, and returns the
result, which must be JSON-serialisable. An exception fails the attempt:
its traceback goes to stderr (qworker logs it) and its last line is the
attempt's error. print() inside the function writes to stderr, and so does
anything its subprocesses write to their stdout, so that none of it can
break the protocol on stdout. Raise Retry(seconds, "why") to fail
the attempt and have the task wait that long before its next delivery
(a service that said "come back in a minute"); it counts as an attempt.
Raise Fail("why") for an attempt that would fail however often it ran (bad
input): the task goes to the dead-letter queue now, attempts left or not.
In command mode the helper prints the stdio protocol's line (!retry
SECONDS TEXT, !fail TEXT) and exits non-zero (65, EX_DATAERR, for Fail),
which qworker reads alike.

qmworker.current() tells the function which task it runs: a dict with its
"id", "attempt" (1 for the first), "queue" and "last_error" (the error of
the attempt before, if any), to make a side effect idempotent or to log.
It needs qworker --stdio-envelope under --stdio; command mode always has it
(without "last_error").

@task runs the worker when the script's top level has finished, if the
function is defined in the script itself (__main__); elsewhere, call
run(fn). The protocol is docs/WORKERS.md of the qm repository. This module
uses only the standard library: copy it, or `pip install ./python`.
"""

import atexit
import base64
import json
import os
import sys
import time
import traceback

__all__ = ["task", "run", "current", "Retry", "Fail", "ERROR_PREFIX"]
__version__ = "0.1.0"

# A line that starts with this fails the attempt; no JSON text starts with "!".
ERROR_PREFIX = b"!error "
# A line that starts with this fails the attempt and says when to retry:
# "!retry SECONDS TEXT".
RETRY_PREFIX = b"!retry "
# A line that starts with this fails the attempt, not to be retried.
FAIL_PREFIX = b"!fail "
# The exit status of a command-mode run whose function raised Fail
# (sysexits' EX_DATAERR), with its !fail line, which qworker reads; an
# older qworker, without it, does not retry it given --no-retry-exit 65.
FAIL_EXIT = 65
# The first line in stdio mode: this child answers every task with one line.
PIPELINE_HELLO = b"!pipeline\n"
# Answers computed within this many seconds of the last write go out in one
# write; after it, each goes as it is made.
FLUSH_AFTER = 0.002

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode

# The task being run, for current(); None between tasks.
_current = None


def current():
    """The task the function runs: {"id", "attempt", "queue", "last_error"}, or None.

    Under --stdio it needs qworker --stdio-envelope; in command mode it comes
    from QM_TASK_ID, QM_ATTEMPT and QM_QUEUE. None outside a task, or when
    qworker does not say.
    """
    if _current is not None:
        return dict(_current)
    if os.environ.get("QM_STDIO") != "1" and "QM_TASK_ID" in os.environ:
        try:
            return {"id": int(os.environ["QM_TASK_ID"]), "attempt": int(os.environ.get("QM_ATTEMPT", "0")),
                    "queue": os.environ.get("QM_QUEUE", ""), "last_error": ""}
        except ValueError:
            return None
    return None


def task(fn):
    """Make fn the worker's handler; in a script, run it once the script's top level is done."""
    if getattr(fn, "__module__", None) == "__main__":
        atexit.register(_run_at_exit, fn)
    return fn


def _run_at_exit(fn):
    if sys.exc_info()[0] is None:
        code = run(fn)
        if code:
            # atexit cannot change the exit status another way.
            sys.stdout.flush()
            os._exit(code)


def run(fn, stdin=None, stdout=None, stderr=None):
    """Run fn on the tasks qworker gives this process and return an exit status.

    Under qworker --stdio (QM_STDIO=1) it answers tasks, a line each, until
    stdin ends; otherwise it runs one task, read whole from stdin (command
    mode), and returns 1 if fn failed.
    """
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stderr = stderr if stderr is not None else sys.stderr
    if stdout is None and sys.stdout is sys.__stdout__:
        # The protocol gets a descriptor of its own, and descriptor 1
        # becomes stderr's for good: what the handler's subprocesses (or C
        # code, whose buffers may flush as the process exits) write to
        # their stdout goes to the log, not into the answers.
        sys.stdout.flush()
        stdout = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)
    elif stdout is None:
        stdout = sys.stdout.buffer  # replaced by the caller: theirs
    saved = sys.stdout
    sys.stdout = stderr  # the handler's print() must not reach the protocol
    try:
        if os.environ.get("QM_STDIO") == "1":
            _serve(fn, stdin, stdout, stderr)
            return 0
        return _once(fn, stdin, stdout, stderr)
    finally:
        sys.stdout = saved


def _serve(fn, stdin, stdout, stderr):
    # "!pipeline" promises one line per task, so qworker may write tasks
    # ahead; answering a whole read at once then costs one write.
    stdout.write(PIPELINE_HELLO)
    stdout.flush()
    read = getattr(stdin, "read1", None) or stdin.read
    rest = b""
    while True:
        chunk = read(1 << 16)
        if not chunk:
            break
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        # Quick answers go out together; once the batch has taken a while,
        # each goes as it is made, so that qworker's --task-timeout,
        # counted from the answer before, does not run on tasks already
        # answered. (An answer made just before a slow task still waits
        # for it: a thread writing it at once cost a quarter of the
        # throughput of quick tasks.)
        out, since = [], time.monotonic()
        for line in lines:
            out.append(_answer(fn, line, stderr))
            if time.monotonic() - since > FLUSH_AFTER:
                stdout.write(b"".join(out))
                stdout.flush()
                out, since = [], time.monotonic()
        stdout.write(b"".join(out))
        stdout.flush()
    if rest.strip():
        stdout.write(_answer(fn, rest, stderr))
        stdout.flush()


class Retry(Exception):
    """Fail this attempt; deliver the task again after `seconds` (>= 0)."""

    def __init__(self, seconds, message="retry later"):
        if not 0 <= seconds < float("inf"):
            raise ValueError("Retry seconds must be a finite number >= 0, got %r" % (seconds,))
        super().__init__(message)
        self.seconds = float(seconds)


class Fail(Exception):
    """Fail this attempt for good: the task goes to the dead-letter queue, not retried."""


def _answer(fn, line, stderr):
    global _current
    try:
        payload = json.loads(line)
    except ValueError as exc:
        return ERROR_PREFIX + ("payload is not JSON: %s" % exc).encode() + b"\n"
    if os.environ.get("QM_STDIO_ENVELOPE") == "1":
        if not isinstance(payload, dict) or "payload" not in payload:
            return ERROR_PREFIX + b"qworker --stdio-envelope sent no envelope\n"
        _current = {"id": payload.get("id"), "attempt": payload.get("attempt"),
                    "queue": payload.get("queue", ""), "last_error": payload.get("last_error", "")}
        payload = payload["payload"]
    try:
        return _call(fn, payload, stderr)
    finally:
        _current = None


def _call(fn, payload, stderr):
    try:
        value = fn(payload)
    except Retry as exc:
        text = " ".join(str(exc).split()) or "retry later"
        return RETRY_PREFIX + ("%r %s" % (exc.seconds, text)).encode() + b"\n"
    except Fail as exc:
        return FAIL_PREFIX + (" ".join(str(exc).split()) or "failed").encode() + b"\n"
    except Exception as exc:  # noqa: BLE001 - every failure is the attempt's
        return ERROR_PREFIX + _error_text(exc, stderr).encode() + b"\n"
    try:
        return _dumps(value).encode() + b"\n"
    except (TypeError, ValueError) as exc:  # no retry makes it JSON
        return FAIL_PREFIX + _unencodable(exc, stderr).encode() + b"\n"


def _unencodable(exc, stderr):
    """The error of a result JSON cannot hold (bytes, NaN), said on stderr."""
    text = "result is not JSON: " + " ".join(str(exc).split())
    stderr.write(text + "\n")
    stderr.flush()
    return text


def _once(fn, stdin, stdout, stderr):
    payload = _command_payload(stdin.read(), os.environ.get("QM_PAYLOAD"))
    # Retry and Fail say so on stdout, as under --stdio: a command that
    # exits non-zero with such a line fails as the line says.
    try:
        value = fn(payload)
    except Retry as exc:
        text = " ".join(str(exc).split()) or "retry later"
        # backslashreplace: a lone surrogate (a file name read with
        # surrogateescape) must not make the write fail, and the run succeed.
        stdout.write(RETRY_PREFIX + ("%r %s" % (exc.seconds, text)).encode("utf-8", "backslashreplace") + b"\n")
        stdout.flush()
        return 1
    except Fail as exc:
        stdout.write(FAIL_PREFIX + (" ".join(str(exc).split()) or "failed").encode("utf-8", "backslashreplace") + b"\n")
        stdout.flush()
        return FAIL_EXIT
    except Exception as exc:  # noqa: BLE001
        _error_text(exc, stderr)
        return 1
    try:
        answer = _dumps(value)
    except (TypeError, ValueError) as exc:
        _unencodable(exc, stderr)
        return FAIL_EXIT
    stdout.write(answer.encode() + b"\n")
    stdout.flush()
    return 0


def _command_payload(data, form):
    """The payload of a task as command mode gives it: QM_PAYLOAD says how
    stdin holds it, so that the string "123" stays a string, as it does
    under --stdio."""
    if form == "bytes":  # as --stdio renders bytes: text if UTF-8, else base64
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(data).decode("ascii")
    text = data.decode("utf-8", "replace")
    if form == "text":
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text  # an older qworker, sending a string as its raw text


def _error_text(exc, stderr):
    """Log the traceback and return the error line's text: its last line."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    stderr.write(text)
    stderr.flush()
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return " ".join(last.split())  # one line
