"""py_growth.py - a Python program that keeps growing buffers, run by
Debian's python3 with PYTHONMALLOC=malloc for the language tests
(tests/languages.rs).

Protocol: stdout "ready <pid>", then on stdin "go" allocate, print "done",
and stay until stdin closes.

Each `bytearray(N)` call goes bytearray's __init__ -> PyByteArray_Resize ->
PyObject_Malloc, which with PYTHONMALLOC=malloc is glibc's malloc: one
block of N + 1 bytes per object, allocated from the interpreter's main loop
(_PyEval_EvalFrameDefault). The blocks stay in KEEP until the process
exits.

KEEP IN SYNC with PYTHON_* in tests/languages.rs.
"""

import os
import sys

BLOCKS = 8
SIZE = 123457

KEEP = []


def grow():
    for _ in range(BLOCKS):
        KEEP.append(bytearray(SIZE))


print("ready", os.getpid(), flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(1)
grow()
print("done", flush=True)
for _ in sys.stdin:
    pass
