"""``python -m rnnkit.cells.kernels [NAME ...]``: build the compiled kernels (all, or NAMEs) for this
machine, into rnnkit's cache. Each that cannot be built says why; the exit status is then 1.

``--background`` is how rnnkit starts it on first use (``kernels.kernel``): at low priority, so
that the program that asked keeps its CPU."""

import argparse
import os
import sys
import time

from ...errors import RnnkitError
from . import KERNELS, build

parser = argparse.ArgumentParser(prog="python -m rnnkit.cells.kernels", description=__doc__.split("\n\n")[0])
parser.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(KERNELS)} (default: all)")
parser.add_argument("--background", action="store_true", help="run at low priority (how rnnkit starts it)")
args = parser.parse_args()
for unknown in set(args.names) - set(KERNELS):
    parser.error(f"no kernel named {unknown!r}; the kernels are {', '.join(KERNELS)}")
if args.background:
    os.nice(10)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: building rnnkit's kernels", flush=True)
failed = []
for name in args.names or KERNELS:
    try:
        (module,) = build(verbose=True, names=[name])
        print(f"built {name}: {module.__file__}", flush=True)
    except RnnkitError as exc:
        print(exc, file=sys.stderr, flush=True)
        failed.append(name)
sys.exit(1 if failed else 0)
