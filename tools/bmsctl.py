"""bmsctl: host client for the openbms serial console (CPython only).

    bmsctl --port /dev/ttyUSB0 status
    bmsctl --port /dev/ttyUSB0 monitor
    bmsctl --port /dev/ttyUSB0 log 50
    bmsctl --port /dev/ttyUSB0 record --csv pack.csv --interval 5
    bmsctl plot pack.csv --png pack.png

Every exchange opens the port, sends one command, reads until the reply and
closes the port again, so several bmsctl processes (a monitor and a one-off
`status`, say) can take turns on one port. `bmsctl --help` lists the exit
codes.
"""
import argparse
import csv
import errno
import json
import os
import re
import select
import shutil
import sys
import time

import serial

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_NO_PORT = 3
EXIT_BUSY = 4
EXIT_NO_REPLY = 5
EXIT_GARBLED = 6
EXIT_BOARD_ERROR = 7

EXIT_CODES = (
    (EXIT_OK, "ok"),
    (EXIT_OTHER, "any other error (unreadable CSV for plot, file not writable, ...)"),
    (EXIT_USAGE, "usage error"),
    (EXIT_NO_PORT, "port not found"),
    (EXIT_BUSY, "port busy: another program held it for --timeout seconds"),
    (EXIT_NO_REPLY, "no reply within --timeout"),
    (EXIT_GARBLED, "garbled reply: bytes arrived but no valid reply line"),
    (EXIT_BOARD_ERROR, "the board answered 'error: ...'"),
)

# Lines the board or the virtual board may print at any time; never a reply.
NOISE_PREFIXES = ("openbms ready after", "sim:", "***")

BUSY_RETRY_S = 0.05
READ_SLICE_S = 0.05  # longest a read blocks, so deadlines are kept to ~50 ms
CHAT_WINDOW_S = 0.3  # how long the monitor collects the reply to a typed line
NEAR_WARN_MV = 50  # a cell this close to a warning level is shown yellow
MESSAGE_LINES = 8

RED, YELLOW, GREEN, RESET = "\x1b[31m", "\x1b[33m", "\x1b[32m", "\x1b[0m"
HOME, CLEAR_SCREEN, CLEAR_EOL, CLEAR_BELOW = "\x1b[H", "\x1b[2J", "\x1b[K", "\x1b[J"
BAR_CHARS = {True: ("\u2588", "\u2591"), False: ("#", ".")}  # (filled, empty); ASCII for plain output

_ESCAPE_SEQ = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|O.|.)?")  # arrow keys, function keys, Alt+key


class CtlError(Exception):
    """A failure with its exit code; main() prints the message on one line."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


# ---- the serial link ---------------------------------------------------------------


def _open_error(port, e):
    if e.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return CtlError(EXIT_NO_PORT, "port %s not found" % port)
    return CtlError(EXIT_OTHER, "cannot open %s: %s" % (port, e))


def _is_busy(e):
    # flock() of a port another process locked, or a port opened with TIOCEXCL.
    return e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY)


def _lines(ser, deadline):
    """Yield the lines received until the deadline (bytes, line end removed),
    then whatever partial line is left."""
    buf = b""
    while time.monotonic() < deadline:
        buf += ser.read(ser.in_waiting or 1)
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.rstrip(b"\r")
    if buf:
        yield buf.rstrip(b"\r")


def _decode(raw):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _is_noise(text):
    return not text.strip() or text.startswith(NOISE_PREFIXES)


def json_reply(required_key):
    """A reply parser: the JSON object that has required_key, else None."""

    def parse(text):
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        return obj if isinstance(obj, dict) and required_key in obj else None

    return parse


def ok_reply(text):
    return text if text == "ok" or text.startswith("ok ") else None


class Link:
    """One board on one port; every call is one open-ask-close exchange."""

    def __init__(self, port, baud=115200, timeout=2.0):
        self.port = port
        self.baud = baud
        self.timeout = timeout

    def _open(self):
        ser = serial.Serial()  # unopened: settings below take effect at open()
        ser.port = self.port
        ser.baudrate = self.baud
        ser.timeout = READ_SLICE_S
        ser.write_timeout = self.timeout
        ser.exclusive = True
        # Low before open, so USB-serial adapters wired to EN/BOOT do not reset the board.
        ser.dtr = False
        ser.rts = False
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                ser.open()
                break
            except serial.SerialException as e:
                if not _is_busy(e):
                    raise _open_error(self.port, e) from None
                if time.monotonic() >= deadline:
                    raise CtlError(EXIT_BUSY, "port %s is busy (held by another program for %g s)"
                                   % (self.port, self.timeout)) from None
                time.sleep(BUSY_RETRY_S)
        ser.reset_input_buffer()  # stale bytes from before this exchange are no reply
        return ser

    def _send(self, ser, command):
        ser.write(command.encode("utf-8") + b"\n")
        ser.flush()

    def ask(self, command, parse):
        """Send command; return parse(line) for the first line it accepts.

        Noise lines are skipped. A line that is neither noise, an error nor a
        reply is remembered but waited past: it may be the tail of an earlier
        reply still on the wire."""
        junk = None
        try:
            with self._open() as ser:
                self._send(ser, command)
                for raw in _lines(ser, time.monotonic() + self.timeout):
                    text = _decode(raw)
                    if text is None:
                        junk = raw
                        continue
                    if _is_noise(text):
                        continue
                    if text.startswith("error: "):
                        raise CtlError(EXIT_BOARD_ERROR, "board replied: " + text)
                    reply = parse(text)
                    if reply is not None:
                        return reply
                    junk = raw
        except serial.SerialException as e:
            raise CtlError(EXIT_OTHER, "%s: %s" % (self.port, e)) from None
        if junk is not None:
            raise CtlError(EXIT_GARBLED, "garbled reply to '%s': %r" % (command, junk[:60]))
        raise CtlError(EXIT_NO_REPLY, "no reply to '%s' from %s within %g s (board powered? baud %d right?)"
                       % (command, self.port, self.timeout, self.baud))

    def chat(self, line, window=CHAT_WINDOW_S):
        """Send a typed line as-is; return every non-blank line received within window."""
        try:
            with self._open() as ser:
                self._send(ser, line)
                received = [raw.decode("utf-8", "replace") for raw in _lines(ser, time.monotonic() + window)]
        except serial.SerialException as e:
            raise CtlError(EXIT_OTHER, "%s: %s" % (self.port, e)) from None
        return [text for text in received if text.strip()]

    def status(self):
        return self.ask("status --json", json_reply("state"))

    def config(self):
        return self.ask("config get --json", json_reply("cell_ov_mv"))


# ---- text for humans ---------------------------------------------------------------


def _on(flag):
    return "on" if flag else "off"


def _names(items):
    return ", ".join(str(x) for x in items) or "none"


def _soc(s):
    return "--" if s.get("soc_pct") is None else "%d%%" % s["soc_pct"]


def _uptime(seconds):
    return "%d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)


def _temp(c):
    return "fault" if c is None else "%.1f C" % c


def _temps_line(s):
    parts = ["T%d %s" % (i + 1, _temp(c)) for i, c in enumerate(s["temps_c"])]
    if s.get("board_c") is not None:
        parts.append("board %.1f C" % s["board_c"])
    return "temps " + ("  ".join(parts) if parts else "--")


def _errors_line(e):
    line = "errors: comm %d  tick %d  missed ticks %d" % (e["comm"], e["tick"], e["missed"])
    if "crc" in e:  # firmware that counts front-end link errors
        line += "  crc %d  bus %d  chip resets %d" % (e["crc"], e["bus"], e.get("chip_resets", 0))
    return line


def _extra_lines(s):
    """Lines for the optional status keys."""
    lines = []
    if "pchg" in s:
        lines.append("precharge %s%s" % (_on(s["pchg"]), "  (failed)" if s.get("precharge_failed") else ""))
    if s.get("config_problem"):
        lines.append("config: " + s["config_problem"])
    return lines


def _bal_state(s):
    # Why the bleeders are as they are (firmware that reports it).
    return " (%s)" % s["bal"] if s.get("bal") else ""


def format_status(s):
    lines = ["state %s  CHG %s  DSG %s  SOC %s  uptime %s"
             % (s["state"], _on(s["chg"]), _on(s["dsg"]), _soc(s), _uptime(s["uptime_s"]))]
    cells = s["cells_mv"]
    if cells:
        lines.append("pack %.2f V  current %+.3f A  cells %d..%d mV (delta %d mV)"
                     % (s["pack_mv"] / 1000, s["current_ma"] / 1000, min(cells), max(cells),
                        max(cells) - min(cells)))
        lines.append(_temps_line(s))
    else:
        lines.append("no measurement yet")
    lines.append("faults: %s  warnings: %s  balancing: %s%s"
                 % (_names(s["faults"]), _names(s["warnings"]), _names(s["balancing"]), _bal_state(s)))
    lines.append(_errors_line(s["errors"]) + "  reset cause %s" % s.get("reset_cause", "?"))
    return "\n".join(lines + _extra_lines(s))


def format_cells(c):
    cells = c["cells_mv"]
    if not cells:
        return "no measurement yet"
    lo, hi = min(cells), max(cells)
    lines = []
    for n, mv in enumerate(cells, 1):
        tag = " max" if mv == hi else (" min" if mv == lo else "")
        lines.append("%2d %5d mV%s%s" % (n, mv, tag, " bal" if n in c["balancing"] else ""))
    lines.append("delta %d mV" % (hi - lo))
    return "\n".join(lines)


def format_faults(f):
    lines = ["faults: " + _names(f["faults"]), "warnings: " + _names(f["warnings"]),
             "trips since boot: " + (", ".join("%s %d" % kv for kv in f.get("trips", {}).items()) or "none")]
    if "errors" in f:
        lines.append(_errors_line(f["errors"]))
    if f.get("config_problem"):
        lines.append("config: " + f["config_problem"])
    return "\n".join(lines)


def format_config(values):
    return "\n".join("%s = %s" % (k, values[k]) for k in sorted(values))


# ---- the monitor view --------------------------------------------------------------


def cell_colour(mv, cfg):
    uv_warn, ov_warn = cfg["cell_uv_warn_mv"], cfg["cell_ov_warn_mv"]
    if mv <= uv_warn or mv >= ov_warn:
        return RED
    if mv <= uv_warn + NEAR_WARN_MV or mv >= ov_warn - NEAR_WARN_MV:
        return YELLOW
    return GREEN


def _bar(mv, cfg, width, color):
    lo, hi = cfg["cell_uv_mv"], cfg["cell_ov_mv"]
    frac = min(1.0, max(0.0, (mv - lo) / (hi - lo))) if hi > lo else 0.0
    filled = round(frac * width)
    full, empty = BAR_CHARS[color]
    return full * filled + empty * (width - filled)


def _cell_lines(s, cfg, width, color):
    # " 1 <bar> 3300 mV bal": 3 columns before the bar, 13 after it.
    bar_width = max(8, width - 16)
    lines = []
    for n, mv in enumerate(s["cells_mv"], 1):
        text = "%s %5d mV" % (_bar(mv, cfg, bar_width, color), mv)
        if color:
            text = cell_colour(mv, cfg) + text + RESET
        mark = "bal" if n in s["balancing"] else ""
        lines.append(("%2d %s %s" % (n, text, mark)).rstrip())
    return lines


def render(status, cfg, width=80, color=True):
    """One monitor frame as text: ANSI colours on the cell bars only if color."""
    s = status
    lines = ["openbms  state %s  CHG %s  DSG %s  SOC %s  uptime %s"
             % (s["state"], _on(s["chg"]), _on(s["dsg"]), _soc(s), _uptime(s["uptime_s"]))]
    cells = s["cells_mv"]
    if cells:
        lines.append("pack %.3f V  current %+.3f A" % (s["pack_mv"] / 1000, s["current_ma"] / 1000))
        lines += _cell_lines(s, cfg, width, color)
        lines.append("min %d mV  max %d mV  delta %d mV" % (min(cells), max(cells), max(cells) - min(cells)))
        if s.get("bal"):
            lines.append("balancing: %s" % s["bal"])
        lines.append(_temps_line(s))
    else:
        lines.append("no measurement yet")
    lines.append("faults: " + _names(s["faults"]))
    lines.append("warnings: " + _names(s["warnings"]))
    lines.append(_errors_line(s["errors"]))
    return "\n".join(lines + _extra_lines(s))


def apply_keys(cmdline, keys):
    """Edit the monitor's command line with typed keys.

    Returns (cmdline, lines entered, quit)."""
    entered = []
    for ch in _ESCAPE_SEQ.sub("", keys):
        if ch in "\r\n":
            if cmdline.strip():
                entered.append(cmdline)
            cmdline = ""
        elif ch in "\x7f\x08":
            cmdline = cmdline[:-1]
        elif ch == "q" and not cmdline:
            return cmdline, entered, True
        elif ch.isprintable():
            cmdline += ch
    return cmdline, entered, False


def _every(interval, duration=None):
    """Yield at start and every interval seconds (no drift) until duration is over."""
    t0 = time.monotonic()
    due = t0
    while duration is None or due < t0 + duration:
        time.sleep(max(0.0, due - time.monotonic()))
        yield
        # After a stall (a slow exchange), poll again at once instead of catching up in a burst.
        due = max(due + interval, time.monotonic())


def _warn(message):
    print("bmsctl: warning: " + message, file=sys.stderr, flush=True)


def _monitor_plain(link, cfg, args):
    first = True
    for _ in _every(args.interval):
        try:
            s = link.status()
        except CtlError as e:
            if first:
                raise
            _warn(e.message)
            continue
        width = shutil.get_terminal_size((80, 24)).columns
        print(render(s, cfg, width, color=False), flush=True)
        if args.once:
            break
        print(flush=True)
        first = False
    return EXIT_OK


def _draw(frame, notice, messages, cmdline):
    lines = frame.split("\n") + ([notice] if notice else [])
    lines += [""] + messages[-MESSAGE_LINES:] + ["> " + cmdline]
    sys.stdout.write(HOME + (CLEAR_EOL + "\n").join(lines) + CLEAR_EOL + CLEAR_BELOW)
    sys.stdout.flush()


def _run_typed(link, line):
    """Send one typed line; return the message-area lines."""
    try:
        reply = link.chat(line)
    except CtlError as e:
        reply = ["bmsctl: " + e.message]
    return ["> " + line] + (reply or ["(no reply within %g s)" % CHAT_WINDOW_S])


class _Monitor:
    """The interactive view: state kept between polls and key presses."""

    def __init__(self, link, cfg, status):
        self.link = link
        self.cfg = cfg
        self.status = status
        self.notice = ""  # why the view is stale, if it is
        self.messages = []
        self.cmdline = ""

    def poll(self):
        try:
            self.status = self.link.status()
            self.notice = ""
        except CtlError as e:
            self.notice = "! %s (view is stale)" % e.message

    def enter(self, line):
        self.messages = _run_typed(self.link, line)
        if line.split()[0] == "config":  # the bars follow a changed warning level
            try:
                self.cfg = self.link.config()
            except CtlError as e:
                self.notice = "! " + e.message

    def draw(self):
        width = shutil.get_terminal_size((80, 24)).columns
        _draw(render(self.status, self.cfg, width), self.notice, self.messages, self.cmdline)

    def run(self, interval):
        fd = sys.stdin.fileno()
        self.draw()
        due = time.monotonic() + interval
        while True:
            if time.monotonic() >= due:
                self.poll()
                self.draw()
                due = time.monotonic() + interval
            if select.select([fd], [], [], max(0.0, due - time.monotonic()))[0]:
                keys = os.read(fd, 256).decode("utf-8", "replace")
                self.cmdline, entered, quit_ = apply_keys(self.cmdline, keys)
                if quit_:
                    return
                for line in entered:
                    self.enter(line)
                    due = 0.0  # show the command's effect now
                self.draw()


def _monitor_tty(link, cfg, status, interval):
    import termios  # POSIX only: imported here so the other commands do not need it
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)  # keys one by one, no echo; Ctrl-C still raises KeyboardInterrupt
        sys.stdout.write(CLEAR_SCREEN)
        _Monitor(link, cfg, status).run(interval)
    except KeyboardInterrupt:
        pass
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        sys.stdout.write(RESET + "\n")
        sys.stdout.flush()
    return EXIT_OK


# ---- the CSV log -------------------------------------------------------------------


def csv_header(n_cells, n_temps):
    return (["t_s", "uptime_s", "state", "chg", "dsg", "pack_mv", "current_ma", "soc_pct"]
            + ["cell%d_mv" % n for n in range(1, n_cells + 1)]
            + ["t%d_c" % n for n in range(1, n_temps + 1)]
            + ["board_c", "faults", "balancing"])


def _field(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return int(v)
    return v


def _padded(values, n):
    """Exactly n fields: a reply with fewer (board just reset) leaves gaps."""
    values = values[:n]
    return [_field(v) for v in values] + [""] * (n - len(values))


def csv_row(t_s, s, n_cells, n_temps):
    return ([format(t_s, ".3f")] + [_field(s.get(k)) for k in
                                    ("uptime_s", "state", "chg", "dsg", "pack_mv", "current_ma", "soc_pct")]
            + _padded(s["cells_mv"], n_cells) + _padded(s["temps_c"], n_temps)
            + [_field(s.get("board_c")), " ".join(s["faults"]), " ".join(str(n) for n in s["balancing"])])


# ---- commands ----------------------------------------------------------------------


def _print_reply(link, command, key, formatter, as_json):
    parse = json_reply(key)
    text = link.ask(command + " --json", lambda line: line if parse(line) is not None else None)
    print(text if as_json else formatter(json.loads(text)))  # --json: the line as received
    return EXIT_OK


def cmd_status(link, args):
    return _print_reply(link, "status", "state", format_status, args.json)


def cmd_cells(link, args):
    return _print_reply(link, "cells", "cells_mv", format_cells, args.json)


def cmd_faults(link, args):
    return _print_reply(link, "faults", "faults", format_faults, args.json)


def cmd_config(link, args):
    if args.action == "set":
        print(link.ask("config set %s %s" % (args.key, args.value), ok_reply))
        return EXIT_OK
    if args.key:
        return _print_reply(link, "config get " + args.key, args.key, format_config, args.json)
    return _print_reply(link, "config get", "cell_ov_mv", format_config, args.json)


def cmd_monitor(link, args):
    cfg = link.config()
    if args.once or not (sys.stdout.isatty() and sys.stdin.isatty()):
        return _monitor_plain(link, cfg, args)
    # The first poll is made before the terminal changes, so a wrong port fails with its exit code.
    return _monitor_tty(link, cfg, link.status(), args.interval)


def cmd_record(link, args):
    out = writer = layout = None
    rows = 0
    t0 = time.monotonic()
    try:
        for _ in _every(args.interval, args.duration):
            try:
                s = link.status()
            except CtlError as e:
                if out is None:
                    raise
                _warn(e.message)  # a long log rides out a board reset or a busy port
                continue
            if layout is None:
                if not s["cells_mv"]:
                    continue  # just after a reset: the columns come from the first measurement
                layout = (len(s["cells_mv"]), len(s["temps_c"]))
                out = open(args.csv, "w", newline="")
                writer = csv.writer(out)
                writer.writerow(csv_header(*layout))
            writer.writerow(csv_row(time.monotonic() - t0, s, *layout))
            out.flush()  # rows survive a crash or Ctrl-C
            rows += 1
            if args.count and rows >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        if out:
            out.close()
    print("%d rows written to %s" % (rows, args.csv), file=sys.stderr)
    return EXIT_OK


LOG_DEFAULT = 20
LOG_MAX = 256  # the board's ring holds this many
EVENT_JSON_BYTES = 260  # about the longest event record in `log --json`, for the reply's time on the wire


def _firmware_eventlog():
    # The board's own formatter, so `bmsctl log` prints exactly what the
    # console's `log` prints (firmware/lib runs under CPython with the shims).
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for p in ("firmware/lib", "host_tests/shims"):
        full = os.path.join(root, p)
        if full not in sys.path:
            sys.path.append(full)
    from bms import eventlog

    return eventlog


def format_event(e):
    """One event log record as the board's `log` prints it."""
    eventlog = _firmware_eventlog()
    d = dict.fromkeys(eventlog.FIELDS)  # an older board may send fewer keys
    d["value"] = 0
    d.update(e)
    return eventlog.text(d)


def format_log(doc):
    lines = [format_event(e) for e in doc["events"]] or ["log empty"]
    torn, lost = doc.get("torn", 0), doc.get("dropped", 0)
    if torn:
        lines.append("(%d torn record%s skipped)" % (torn, "" if torn == 1 else "s"))
    if lost:
        lines.append("(%d event%s lost since boot: queue full or flash failing)" % (lost, "" if lost == 1 else "s"))
    return "\n".join(lines)


def cmd_log(link, args):
    if args.csv is not None:  # the old meaning of `log`
        if args.n is not None or args.json:
            raise CtlError(EXIT_USAGE, "log --csv (now: record --csv) takes no N or --json")
        print("bmsctl: note: 'log --csv' is now 'record --csv'; 'log' reads the board's event log", file=sys.stderr)
        if args.interval is None:
            args.interval = 1.0
        return cmd_record(link, args)
    if args.interval is not None or args.duration is not None or args.count is not None:
        raise CtlError(EXIT_USAGE, "--interval, --duration and --count belong to record --csv FILE")
    n = LOG_DEFAULT if args.n is None else args.n
    # Up to 256 records of JSON in one line: at 115200 baud that takes
    # seconds on the wire, on top of the usual wait for the reply.
    wire_s = n * EVENT_JSON_BYTES * 10.0 / link.baud
    slow = Link(link.port, link.baud, link.timeout + wire_s)
    parse = json_reply("events")
    text = slow.ask("log %d --json" % n, lambda line: line if parse(line) is not None else None)
    print(text if args.json else format_log(json.loads(text)))
    return EXIT_OK


def cmd_plot(args):
    from tools import plotting  # matplotlib takes a while to import; only plot needs it

    try:
        plotting.plot_csv(args.log, args.png, title=args.title)
    except (OSError, ValueError) as e:
        raise CtlError(EXIT_OTHER, "plot: %s" % e) from None
    return EXIT_OK


# ---- command line ------------------------------------------------------------------


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError("not a number: %r" % text) from None
        if value <= 0:
            raise argparse.ArgumentTypeError("must be > 0: %r" % text)
        return value

    return parse


def _log_count(text):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text) from None
    if not 1 <= n <= LOG_MAX:
        raise argparse.ArgumentTypeError("must be 1..%d: %r" % (LOG_MAX, text))
    return n


def build_parser():
    epilog = "exit codes:\n" + "\n".join("  %d  %s" % row for row in EXIT_CODES)
    ap = argparse.ArgumentParser(prog="bmsctl", description="talk to an openbms board on a serial port",
                                 epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", help="serial port, e.g. /dev/ttyUSB0 (every command but plot)")
    ap.add_argument("--baud", type=_positive(int), default=115200)
    ap.add_argument("--timeout", type=_positive(float), default=2.0,
                    help="seconds to wait for the port, then for the reply (default 2)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, what in (("status", "state, FETs, pack, SOC, faults"), ("cells", "cell voltages and balancing"),
                       ("faults", "faults, warnings, trip counts, error counters")):
        p = sub.add_parser(name, help=what)
        p.add_argument("--json", action="store_true", help="print the board's JSON line as received")

    p = sub.add_parser("config", help="read or change settings")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    g = actions.add_parser("get", help="all settings, or one")
    g.add_argument("key", nargs="?")
    g.add_argument("--json", action="store_true")
    s = actions.add_parser("set", help="change a setting now (not saved on the board)")
    s.add_argument("key")
    s.add_argument("value")

    p = sub.add_parser("monitor", help="live view with a command line (q or Ctrl-C quits)")
    p.add_argument("--interval", type=_positive(float), default=1.0)
    p.add_argument("--once", action="store_true", help="print one plain frame and exit")

    p = sub.add_parser("log", help="the board's event log: the latest N events (default %d), oldest first" % LOG_DEFAULT)
    p.add_argument("n", nargs="?", type=_log_count, metavar="N", help="1..%d" % LOG_MAX)
    p.add_argument("--json", action="store_true", help="print the board's JSON line as received")
    # The old `log --csv FILE ...`, kept as an alias of record.
    p.add_argument("--csv", metavar="FILE", help=argparse.SUPPRESS)
    p.add_argument("--interval", type=_positive(float), help=argparse.SUPPRESS)
    p.add_argument("--duration", type=_positive(float), help=argparse.SUPPRESS)
    p.add_argument("--count", type=_positive(int), help=argparse.SUPPRESS)

    p = sub.add_parser("record", help="poll status into a CSV file")
    p.add_argument("--csv", required=True, metavar="FILE")
    p.add_argument("--interval", type=_positive(float), default=1.0)
    p.add_argument("--duration", type=_positive(float), metavar="SECONDS")
    p.add_argument("--count", type=_positive(int), metavar="N")

    p = sub.add_parser("plot", help="plot a CSV log to a PNG file")
    p.add_argument("log", metavar="LOG")
    p.add_argument("--png", required=True, metavar="FILE")
    p.add_argument("--title")
    return ap


COMMANDS = {"status": cmd_status, "cells": cmd_cells, "faults": cmd_faults, "config": cmd_config,
            "monitor": cmd_monitor, "log": cmd_log, "record": cmd_record}


def main(argv=None):
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
        if args.command != "plot" and not args.port:
            ap.error("--port is required for %s" % args.command)
    except SystemExit as e:  # argparse exits on usage errors and --help; main() returns codes
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        if args.command == "plot":
            return cmd_plot(args)
        return COMMANDS[args.command](Link(args.port, args.baud, args.timeout), args)
    except CtlError as e:
        print("bmsctl: error: " + e.message, file=sys.stderr)
        return e.code
    except OSError as e:  # e.g. the log file cannot be written
        print("bmsctl: error: %s" % e, file=sys.stderr)
        return EXIT_OTHER


if __name__ == "__main__":
    sys.exit(main())
