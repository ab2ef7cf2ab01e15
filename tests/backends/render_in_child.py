"""Run one ApiBackend.render in a process of its own (a test kills it mid-task).

argv[1]: a pickle of (backend, job). Nothing secret travels in it: the key is read from this
process's environment, as a Ray worker would read its own.
"""

import pickle
import sys

backend, job = pickle.loads(open(sys.argv[1], "rb").read())
print(backend.render(job).status, flush=True)
