# Runs the logic and simulator tests inside the real MicroPython interpreter,
# where pytest cannot run: every test_* function of every test_*.py in
# host_tests/logic and host_tests/sim (both folders on MICROPYPATH).
#   MICROPYPATH=firmware/lib:firmware:tools/sim:host_tests/logic:host_tests/sim:host_tests/drivers:.frozen \
#       micropython host_tests/mp_run.py [module ...]
import gc
import os
import sys

FOLDERS = ("host_tests/logic", "host_tests/sim", "host_tests/drivers")


def modules():
    if len(sys.argv) > 1:
        return sys.argv[1:]
    names = []
    for d in FOLDERS:
        names += [n[:-3] for n in os.listdir(d) if n.startswith("test_") and n.endswith(".py")]
    return sorted(names)


def main():
    passed = failed = 0
    for name in modules():
        mod = __import__(name)
        for attr in sorted(dir(mod)):
            if not attr.startswith("test_"):
                continue
            fn = getattr(mod, attr)
            gc.collect()  # each test starts on a clean heap, as one on its own would
            try:
                fn()
                passed += 1
                print("PASS %s.%s" % (name, attr))
            except Exception as e:
                failed += 1
                print("FAIL %s.%s" % (name, attr))
                sys.print_exception(e)
    try:
        import helpers

        helpers.cleanup()
    except ImportError:
        pass
    print("micropython: %d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed or not passed else 0)


main()
