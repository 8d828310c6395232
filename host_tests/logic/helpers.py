# Shared by the logic tests; runs under CPython and MicroPython.
import os

from bms import config
from bms.afe import Afe, NTC_OK

_counter = [0]


def _base():
    return "/tmp/openbms-test-%d" % os.getpid() if hasattr(os, "getpid") else "/tmp/openbms-test-mp"


def _rmtree(path):
    for name in os.listdir(path):
        p = path + "/" + name
        if os.stat(p)[0] & 0x4000:  # directory
            _rmtree(p)
        else:
            os.remove(p)
    os.rmdir(path)


def cleanup():
    """Remove every directory tmpdir() made in this process."""
    try:
        _rmtree(_base())
    except OSError:
        pass


def tmpdir():
    """A fresh empty directory under /tmp (no tempfile module on MicroPython)."""
    _counter[0] += 1
    base = _base()
    for p in (base, "%s/%d" % (base, _counter[0])):
        try:
            os.mkdir(p)
        except OSError:
            pass
    d = "%s/%d" % (base, _counter[0])
    for name in os.listdir(d):
        os.remove(d + "/" + name)
    return d


class FakeClock:
    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now


class FakeAfe(Afe):
    """A front-end whose readings the test sets; records what the BMS switched.

    Stands in for hardware in logic tests (the chip drivers have their own
    tests against chip models)."""

    def __init__(self, cells=4, temps=2, board_temp=True, precharge=False, balance=True):
        self.max_cells = cells
        self.n_temps = temps
        self.has_board_temp = board_temp
        self.has_precharge = precharge
        self.can_balance = balance
        self.cells_mv = [3300] * cells
        self.current_ma = 0
        self.temps_c = [25] * temps
        self.temp_status = [NTC_OK] * temps
        self.board_c = 30
        self.hw_faults = 0
        self.fail = None  # exception instance to raise from read()
        self.fresh = True
        self.chg = self.dsg = self.pchg = False
        self.fet_log = []
        self.mask = 0
        self.n_cells = cells
        self.inits = 0
        self.init_fail = None  # exception instance to raise from init()
        self.protections = 0  # configure_protection calls
        self.cleared = 0
        self.short_present = False

    def init(self, n_cells):
        if self.init_fail is not None:
            raise self.init_fail
        self.n_cells = n_cells
        self.inits += 1
        self.set_fets(False, False)

    def configure_protection(self, cfg):
        self.protections += 1
        return {}

    def read(self, m):
        if self.fail is not None:
            raise self.fail
        if not self.fresh:
            return False
        total = 0
        for i in range(self.n_cells):
            m.cells_mv[i] = self.cells_mv[i]
            total += self.cells_mv[i]
        m.pack_mv = total
        m.current_ma = self.current_ma
        for i in range(self.n_temps):
            m.temps_dc[i] = int(round(self.temps_c[i] * 10))
            m.temp_status[i] = self.temp_status[i]
        m.board_dc = int(round(self.board_c * 10))
        m.hw_faults = self.hw_faults
        return True

    def set_fets(self, chg, dsg, pchg=False):
        self.chg = chg
        self.dsg = dsg
        self.pchg = pchg

    def set_balancing(self, mask):
        self.mask = mask

    def clear_faults(self):
        self.cleared += 1
        if self.short_present:
            return False
        self.hw_faults = 0
        return True


def saved_config(d, **changes):
    cfg = config.defaults("lfp", 4)
    for k in changes:
        cfg = cfg.with_value(k, str(changes[k]))
    config.save(cfg, d + "/config.json")
    return d + "/config.json"


def boot_bms(config_path, afe=None):
    """A Bms on a FakeAfe (or afe) with a fake clock, from config_path."""
    from bms.app import Bms

    afe = afe or FakeAfe()
    clock = FakeClock()
    bms = Bms(afe, config_path, "test", clock=clock)
    bms.clock = clock
    return bms, afe


def make_bms(afe=None, **changes):
    """A Bms on a FakeAfe with a saved LFP config (changes applied)."""
    return boot_bms(saved_config(tmpdir(), **changes), afe)


def run(bms, ticks):
    """Advance the fake clock one tick period and tick, `ticks` times; after
    each tick the main-loop work, as firmware/main.py does."""
    period = bms.cfg["tick_ms"]
    for _ in range(ticks):
        bms.clock.now += period
        bms.tick()
        bms.service()
