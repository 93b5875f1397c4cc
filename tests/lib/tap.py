"""TAP output for Python tests (tests/run counts "ok N" / "not ok N" lines).

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
    from tap import Tap
    t = Tap(3)                      # prints the plan "1..3"
    t.ok("registry answers")
    t.fail("body", f"got {body!r}") # detail lines become "# " comments
    t.check("status", status == 200, f"status {status}")
    sys.exit(t.done())              # 0 only if nothing failed
"""
import sys


class Tap:
    def __init__(self, plan=None):
        self.n = 0
        self.failed = 0
        if plan is not None:
            self.plan(plan)

    def plan(self, n):
        print(f"1..{n}", flush=True)

    def ok(self, name):
        self.n += 1
        print(f"ok {self.n} - {name}", flush=True)

    def fail(self, name, detail=""):
        self.n += 1
        self.failed += 1
        print(f"not ok {self.n} - {name}", flush=True)
        for line in str(detail).splitlines():
            print(f"#   {line}", flush=True)

    def check(self, name, cond, detail=""):
        """ok if cond is true, else fail with detail; returns cond."""
        if cond:
            self.ok(name)
        else:
            self.fail(name, detail)
        return bool(cond)

    def done(self):
        """Exit status for sys.exit: 0 only if nothing failed."""
        return 1 if self.failed else 0
