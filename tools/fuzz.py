"""Run the property-based fuzzers of tests/test_fuzz.py longer than CI does and print how many
cases each target got (for docs/RELIABILITY.md).

    .venv/bin/python -m tools.fuzz                  # the "long" profile: 5,000 examples per test
    .venv/bin/python -m tools.fuzz --examples 20000

Each failure is printed with Hypothesis' minimal example and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--examples", type=int, default=None, help="examples per test (default: the long profile's 5,000)"
    )
    args = parser.parse_args()
    os.environ["EDGECNN_FUZZ_PROFILE"] = "long"
    if args.examples:
        os.environ["EDGECNN_FUZZ_EXAMPLES"] = str(args.examples)
    import warnings

    warnings.simplefilter("ignore")  # Pillow's notes on the damaged files it is fed
    from tests import test_fuzz

    failures = 0
    started = time.perf_counter()
    for name in sorted(n for n in dir(test_fuzz) if n.startswith("test_")):
        fn = getattr(test_fuzz, name)
        if not hasattr(fn, "hypothesis"):
            continue
        t = time.perf_counter()
        try:
            fn()
            status = "ok"
        except Exception:  # a counterexample: print it, go on with the others
            failures += 1
            status = "FAILED"
            traceback.print_exc()
        print(f"{status:6s} {name}  {time.perf_counter() - t:6.1f} s", flush=True)
    print(f"\ncases per target ({time.perf_counter() - started:.0f} s):")
    for target, count in sorted(test_fuzz.RUNS.items()):
        print(f"  {target:24s} {count:8,d}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
