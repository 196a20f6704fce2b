"""Replays real doctest examples through `biocage --json repl` and compares with doctest.

The examples of the docstrings of some stdlib and pandas modules are found and run
natively with doctest inside the sandbox image (in a plain python3 process there); each
docstring's examples are then replayed one run at a time in a BioCage session, in a
namespace made like doctest's (the module's globals), and checked with doctest's own
OutputChecker. Prints how many of the natively passing examples also pass when replayed,
and exits 1 below the floor (--floor, default 0.99).

    python3 tests/doctest_replay.py --biocage target/debug/biocage --runtime docker
"""

import argparse
import doctest
import json
import subprocess
import sys
import time

MODULES = [
    "json", "collections", "fractions", "decimal", "statistics", "textwrap", "difflib",
    "heapq", "bisect", "functools", "operator", "string", "base64", "ipaddress",
    "pandas.core.frame", "pandas.core.series", "pandas.core.strings.accessor",
]

# Runs in a plain python3 in the sandbox: finds the examples and runs them with doctest.
EXTRACT = r'''
import doctest, importlib, json, sys
out = []
counts = {}
for name in MODULES:
    try:
        mod = importlib.import_module(name)
    except Exception:
        continue
    # pandas' own doctest set-up puts pd and np in every namespace.
    extra = {"pd": importlib.import_module("pandas"), "np": importlib.import_module("numpy")} \
        if name.startswith("pandas") else None
    for test in doctest.DocTestFinder().find(mod, name, extraglobs=extra):
        if not test.examples:
            continue
        results = []
        class Runner(doctest.DocTestRunner):
            def report_success(self, out, test, example, got):
                results.append(True)
            def report_failure(self, out, test, example, got):
                results.append(False)
            def report_unexpected_exception(self, out, test, example, exc_info):
                results.append(False)
        Runner(optionflags=doctest.ELLIPSIS).run(test, out=lambda s: None, clear_globs=True)
        if len(results) != len(test.examples):
            continue  # a SKIP option or an early stop: not comparable
        counts[name] = counts.get(name, 0) + len(test.examples)
        out.append({"module": name, "name": test.name, "examples": [
            {"source": e.source, "want": e.want, "exc_msg": e.exc_msg,
             "options": {str(k): v for k, v in e.options.items()}, "native": ok}
            for e, ok in zip(test.examples, results)]})
with open("/workspace/doctests.json", "w") as f:
    json.dump(out, f)
print(json.dumps(counts))
'''

RESET = r'''
for _k in [k for k in list(globals()) if not k.startswith("__")]:
    del globals()[_k]
globals().update({k: v for k, v in vars(__import__("importlib").import_module(%r)).items()
                  if k not in ("__name__", "__builtins__", "__file__", "__spec__", "__loader__")})
if %r.startswith("pandas"):
    import pandas as pd, numpy as np
'''


class Repl:
    """A `biocage --json repl` process: one request line in, one result line out."""

    def __init__(self, biocage, runtime):
        self.proc = subprocess.Popen(
            [biocage, "--runtime", runtime, "--json", "repl", "--allow-unenforced"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def run(self, code, timeout=30):
        self.proc.stdin.write(json.dumps({"code": code, "timeout": timeout}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("biocage repl ended")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def got_text(result):
    """What doctest would have seen printed for one example."""
    got = result.get("stdout", "")
    if result.get("value") is not None:
        got += result["value"] + "\n"
    return got


def passes(example, result, checker):
    flags = doctest.ELLIPSIS
    for flag, on in example["options"].items():
        flags = flags | int(flag) if on else flags & ~int(flag)
    error = result.get("error")
    if example["exc_msg"] is not None:
        if not error or error.get("kind") != "exception":
            return False
        tb = (error.get("traceback") or "").rstrip("\n").split("\n")
        want = example["exc_msg"]
        lines = want.count("\n") or 1
        got_exc = "\n".join(tb[-lines:]) + "\n"
        # Exceptions of other modules are printed with their module: doctest compares the
        # text after the last dot-qualified name too.
        if checker.check_output(want, got_exc, flags):
            return True
        return got_exc.split(":", 1)[-1] == want.split(":", 1)[-1] and \
            got_exc.split(":", 1)[0].split(".")[-1] == want.split(":", 1)[0].split(".")[-1]
    if error:
        return False
    return checker.check_output(example["want"], got_text(result), flags)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--biocage", default="target/debug/biocage")
    ap.add_argument("--runtime", default="docker")
    ap.add_argument("--floor", type=float, default=0.99)
    ap.add_argument("--show", type=int, default=10, help="disagreements to print")
    args = ap.parse_args()
    started = time.monotonic()
    repl = Repl(args.biocage, args.runtime)
    code = "import subprocess, sys\nMODULES = %r\n" % MODULES
    code += ("r = subprocess.run([sys.executable, '-c', 'MODULES = %%r\\n' %% MODULES + %r],"
             " capture_output=True, text=True)\n" % EXTRACT)
    code += "print(r.stdout.strip(), r.stderr[-2000:])"
    r = repl.run(code, timeout=600)
    if not r.get("success"):
        sys.exit("extracting the examples failed: %s" % json.dumps(r)[:2000])
    print("examples found per module:", r["stdout"].strip()[:2000])
    tests, chunk = "", 1 << 19
    while True:
        part = repl.run("with open('/workspace/doctests.json') as f:\n    f.seek(%d)\n"
                        "    print(f.read(%d), end='')" % (len(tests), chunk))
        tests += part["stdout"]
        if len(part["stdout"]) < chunk:
            break
    tests = json.loads(tests)
    checker = doctest.OutputChecker()
    native = agree = 0
    shown = 0
    for test in tests:
        repl.run(RESET % (test["module"], test["module"]))
        for ex in test["examples"]:
            result = repl.run(ex["source"])
            if not ex["native"]:
                continue
            native += 1
            if passes(ex, result, checker):
                agree += 1
            elif shown < args.show:
                shown += 1
                print("DISAGREE %s: %r\n  want %r\n  got %r" % (
                    test["name"], ex["source"][:200], (ex["exc_msg"] or ex["want"])[:200],
                    json.dumps(result)[:300]))
    repl.close()
    ratio = agree / native if native else 0.0
    print("doctest replay on %s: %d docstrings; %d examples pass natively, %d of them pass "
          "replayed through biocage repl --json (%.2f%%; floor %.0f%%) in %.0f s" % (
              args.runtime, len(tests), native, agree, 100 * ratio, 100 * args.floor,
              time.monotonic() - started))
    sys.exit(0 if native and ratio >= args.floor else 1)


if __name__ == "__main__":
    main()
