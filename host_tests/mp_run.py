# Runs the logic tests inside the real MicroPython interpreter, where pytest
# cannot run: every test_* function of every host_tests/logic/test_*.py.
#   MICROPYPATH=firmware/lib:tools/sim:host_tests/logic:.frozen micropython host_tests/mp_run.py [module ...]
import os
import sys

HERE = "host_tests/logic"


def modules():
    if len(sys.argv) > 1:
        return sys.argv[1:]
    return sorted(n[:-3] for n in os.listdir(HERE) if n.startswith("test_") and n.endswith(".py"))


def main():
    passed = failed = 0
    for name in modules():
        mod = __import__(name)
        for attr in sorted(dir(mod)):
            if not attr.startswith("test_"):
                continue
            fn = getattr(mod, attr)
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
