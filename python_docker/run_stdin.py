"""Entry point of the image when it is run directly (no BioCage agent).

Runs the code in $PYTHON_CODE if set, else the code read from standard input,
as in `echo 'print(1)' | docker run --rm -i biocage:latest`.
"""
import os
import sys

code = os.environ.get("PYTHON_CODE")
if code is None:
    code = sys.stdin.read()
exec(compile(code, "<stdin>", "exec"), {"__name__": "__main__"})
