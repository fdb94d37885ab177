"""Unit tests of qmworker; cmd/qworker's Go tests run them with real python3."""

import io
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qmworker  # noqa: E402


def square(x):
    print("squaring", x)  # must go to stderr
    return x * x


class Stdio(unittest.TestCase):
    def serve(self, fn, data):
        os.environ["QM_STDIO"] = "1"
        try:
            out, err = io.BytesIO(), io.StringIO()
            code = qmworker.run(fn, io.BytesIO(data), out, err)
            hello, _, answers = out.getvalue().partition(b"\n")
            self.assertEqual(hello, b"!pipeline")
            return code, answers, err.getvalue()
        finally:
            del os.environ["QM_STDIO"]

    def test_answers_a_line_per_task(self):
        code, out, err = self.serve(square, b'2\n3\r\n1.5\n')
        self.assertEqual(code, 0)
        self.assertEqual(out, b"4\n9\n2.25\n")
        self.assertIn("squaring 2", err)

    def test_exception_is_an_error_line(self):
        code, out, err = self.serve(square, b'"x"\n4\n')
        self.assertEqual(out, b"!error TypeError: can't multiply sequence by non-int of type 'str'\n16\n")
        self.assertIn("Traceback", err)

    def test_payload_not_json(self):
        _, out, _ = self.serve(square, b"garbage\n5\n")
        self.assertTrue(out.startswith(b"!error payload is not JSON: Expecting value"), out)
        self.assertTrue(out.endswith(b"\n25\n"), out)

    def test_result_not_json(self):
        _, out, _ = self.serve(lambda x: {1, 2}, b"1\n")
        # Not retried: no attempt makes a set JSON.
        self.assertTrue(out.startswith(b"!fail result is not JSON: Object of type set"), out)

    def test_multiline_error_is_one_line(self):
        def fail(x):
            raise ValueError("two\nlines")
        _, out, _ = self.serve(fail, b"1\n")
        self.assertEqual(out, b"!error ValueError: two lines\n")

    def test_envelope_gives_the_task(self):
        def info(x):
            return [x, qmworker.current()]
        os.environ["QM_STDIO_ENVELOPE"] = "1"
        try:
            _, out, _ = self.serve(info, b'{"id":7,"attempt":2,"queue":"tasks","last_error":"boom","payload":{"n":3}}\n3\n')
        finally:
            del os.environ["QM_STDIO_ENVELOPE"]
        self.assertEqual(out, b'[{"n":3},{"id":7,"attempt":2,"queue":"tasks","last_error":"boom"}]\n'
                              b'!error qworker --stdio-envelope sent no envelope\n')
        self.assertIsNone(qmworker.current())  # between tasks
        _, out, _ = self.serve(info, b"5\n")
        self.assertEqual(out, b"[5,null]\n")  # no envelope: not known

    def test_retry_is_a_retry_line(self):
        def busy(x):
            raise qmworker.Retry(2.5, "rate\nlimited")
        _, out, _ = self.serve(busy, b"1\n")
        self.assertEqual(out, b"!retry 2.5 rate limited\n")
        with self.assertRaises(ValueError):
            qmworker.Retry(-1)

    def test_fail_is_a_fail_line(self):
        def bad(x):
            raise qmworker.Fail("not an\nimage")
        _, out, _ = self.serve(bad, b"1\n")
        self.assertEqual(out, b"!fail not an image\n")

    def test_slow_answers_go_at_once(self):
        # A batch read at once: once it has taken a while, each answer
        # goes as it is made, so that qworker's task timeout does not run
        # on tasks already done; task 3's answer does not wait for more.
        writes = []

        class Out(io.BytesIO):
            def write(self, b):
                writes.append(bytes(b))
                return super().write(b)

        def fn(x):
            if x == 2:
                time.sleep(0.05)
            return x

        os.environ["QM_STDIO"] = "1"
        try:
            qmworker.run(fn, io.BytesIO(b"1\n2\n3\n"), Out(), io.StringIO())
        finally:
            del os.environ["QM_STDIO"]
        answers = [w for w in writes if w and w != b"!pipeline\n"]
        self.assertEqual(answers[0], b"1\n2\n", writes)  # written once task 2, slow, ended
        self.assertEqual(b"".join(answers), b"1\n2\n3\n")

    def test_unencodable_result_is_not_retried(self):
        for value in (float("nan"), b"raw"):
            code, answers, err = self.serve(lambda x, v=value: v, b"1\n")
            self.assertEqual(code, 0)
            self.assertTrue(answers.startswith(b"!fail result is not JSON: "), answers)

    def test_subprocess_output_goes_to_stderr(self):
        # A real process: the handler's subprocess inherits descriptor 1,
        # which the helper gave to stderr.
        import subprocess
        script = (
            "import subprocess, sys\n"
            "sys.path.insert(0, %r)\n"
            "import qmworker\n"
            "def f(x):\n"
            "    subprocess.run(['echo', 'from a subprocess'])\n"
            "    return x\n"
            "sys.exit(qmworker.run(f))\n" % os.path.dirname(os.path.abspath(__file__))
        )
        p = subprocess.run([sys.executable, "-c", script], input=b"1\n2\n", capture_output=True,
                           env=dict(os.environ, QM_STDIO="1"), timeout=30)
        self.assertEqual(p.stdout, b"!pipeline\n1\n2\n", p.stderr)
        self.assertIn(b"from a subprocess", p.stderr)
        # Command mode: what is left in the process's own stdout buffer,
        # flushed as it exits, stays out of the result too.
        script = script.replace("return x", "print('via __stdout__', file=sys.__stdout__)\n    return x")
        p = subprocess.run([sys.executable, "-c", script], input=b"3\n", capture_output=True,
                           env=dict(os.environ, QM_PAYLOAD="json"), timeout=30)
        self.assertEqual(p.stdout, b"3\n", p.stderr)
        self.assertIn(b"via __stdout__", p.stderr)

    def test_last_line_without_newline(self):
        self.assertEqual(self.serve(square, b"2\n3")[1], b"4\n9\n")

    def test_unicode(self):
        _, out, _ = self.serve(lambda s: s + "\u00e9\u2028", b'"caf"\n')
        self.assertEqual(out.decode(), "\"caf\u00e9\u2028\"\n")


class Command(unittest.TestCase):
    def once(self, fn, data):
        out, err = io.BytesIO(), io.StringIO()
        code = qmworker.run(fn, io.BytesIO(data), out, err)
        return code, out.getvalue(), err.getvalue()

    def test_json_payload(self):
        self.assertEqual(self.once(square, b"7\n")[:2], (0, b"49\n"))

    def test_raw_string_payload(self):
        self.assertEqual(self.once(lambda s: s.upper(), b"hello world")[:2], (0, b'"HELLO WORLD"\n'))

    def test_current_from_the_environment(self):
        os.environ.update(QM_TASK_ID="12", QM_ATTEMPT="3", QM_QUEUE="jobs")
        try:
            code, out, _ = self.once(lambda x: qmworker.current(), b"1\n")
        finally:
            for k in ("QM_TASK_ID", "QM_ATTEMPT", "QM_QUEUE"):
                del os.environ[k]
        self.assertEqual((code, out), (0, b'{"id":12,"attempt":3,"queue":"jobs","last_error":""}\n'))

    def test_payload_kind_from_qworker(self):
        # QM_PAYLOAD says how stdin holds the payload: the string "123"
        # stays a string, as under --stdio.
        kind = lambda x: type(x).__name__  # noqa: E731
        for form, data, want in (
            ("text", b"123", b'"str"\n'),
            ("text", b"null", b'"str"\n'),
            ("json", b"123\n", b'"int"\n'),
            ("json", b"[1, 2]\n", b'"list"\n'),
            ("bytes", b"\xff\x00", b'"str"\n'),
        ):
            os.environ["QM_PAYLOAD"] = form
            try:
                self.assertEqual(self.once(kind, data)[:2], (0, want), (form, data))
            finally:
                del os.environ["QM_PAYLOAD"]
        os.environ["QM_PAYLOAD"] = "bytes"
        try:
            self.assertEqual(self.once(lambda x: x, b"\xff\x00")[:2], (0, b'"/wA="\n'))
        finally:
            del os.environ["QM_PAYLOAD"]

    def test_failure_exits_1(self):
        code, out, err = self.once(square, b"oops")
        self.assertEqual((code, out), (1, b""))
        self.assertIn("TypeError", err)

    def test_unencodable_result_exits_65(self):
        code, out, err = self.once(lambda x: float("nan"), b"1")
        self.assertEqual((code, out), (65, b""))
        self.assertIn("result is not JSON", err)

    def test_fail_exits_65_with_a_fail_line(self):
        def bad(x):
            raise qmworker.Fail("not an image")
        code, out, err = self.once(bad, b"1")
        self.assertEqual((code, out), (65, b"!fail not an image\n"))

    def test_fail_with_a_lone_surrogate_still_fails(self):
        def bad(x):
            raise qmworker.Fail("bad name \udcff")
        code, out, err = self.once(bad, b"1")
        self.assertEqual((code, out), (65, b"!fail bad name \\udcff\n"))

    def test_retry_exits_1_with_a_retry_line(self):
        def busy(x):
            raise qmworker.Retry(5, "come back  later")
        code, out, err = self.once(busy, b"1")
        self.assertEqual((code, out), (1, b"!retry 5.0 come back later\n"))


if __name__ == "__main__":
    unittest.main()
