# CPython stand-in for MicroPython's `micropython` module (host tests only).
def const(x):
    return x


def schedule(f, arg):
    # No interrupts on the host: run the scheduled function at once.
    f(arg)


def heap_lock():
    return 0


def heap_unlock():
    return 0
