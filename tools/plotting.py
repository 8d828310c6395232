"""Plot a CSV log (from `bmsctl log` or the scenario runner) to a PNG file.

Four stacked panels sharing the time axis: cell voltages, current,
temperatures, SOC. Columns named true_* (the simulator's ground truth) are
drawn dashed next to the measured ones. Spans where CHG or DSG was off are
shaded light red on every panel, so FET trips line up with their cause.
"""
import csv
import math
import os
import re

# Drawn on an Agg canvas directly: no pyplot, so no global backend or display.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

TIME_COLUMNS = ("sim_t_s", "uptime_s", "t_s")  # first usable one wins
FET_COLUMNS = ("chg", "dsg")
_CELL = re.compile(r"cell(\d+)_mv")
_TRUE_CELL = re.compile(r"true_cell(\d+)_mv")
_TEMP = re.compile(r"t(\d+)_c")
NAN = float("nan")


class _Log:
    def __init__(self, path):
        self.path = path
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            self.rows = list(reader)
            self.fields = reader.fieldnames or []
        if not self.rows:
            raise ValueError("%s has no data rows" % path)

    def column(self, name, scale=1.0):
        """The column as floats times scale; an empty field is NaN (a gap in the line)."""
        values = []
        for line, row in enumerate(self.rows, 2):  # line 1 is the header
            text = (row.get(name) or "").strip()
            try:
                values.append(float(text) * scale if text else NAN)
            except ValueError:
                raise ValueError("%s line %d: %s is %r, not a number" % (self.path, line, name, text)) from None
        return values

    def numbered(self, pattern):
        """[(n, column)] for the columns matching pattern, by n."""
        found = [(int(m.group(1)), f) for f in self.fields for m in [pattern.fullmatch(f)] if m]
        return sorted(found)


def _time_axis(log):
    """(column name, seconds): the first time column with a number in every row, never decreasing.

    uptime_s goes back to 0 when the board resets; such a log falls back to t_s."""
    for name in TIME_COLUMNS:
        if name not in log.fields:
            continue
        try:
            t = log.column(name)
        except ValueError:
            continue
        if all(math.isfinite(v) for v in t) and all(b >= a for a, b in zip(t, t[1:])):
            return name, t
    raise ValueError("%s has no usable time column (one of %s, a number in every row, never decreasing)"
                     % (log.path, ", ".join(TIME_COLUMNS)))


def _time_unit(span_s):
    if span_s > 2 * 3600:
        return 3600.0, "h"
    if span_s > 2 * 60:
        return 60.0, "min"
    return 1.0, "s"


def _fet_off_spans(log, x):
    """[(x_start, x_end)] where chg or dsg was 0; each span ends at the next row with both on."""
    # The gates themselves when the log has them (a scenario log): a board
    # that is resetting reports nothing, but its FETs are still off.
    true_flags = ["true_" + c for c in FET_COLUMNS if "true_" + c in log.fields]
    flags = true_flags or [c for c in FET_COLUMNS if c in log.fields]
    off = [any((row.get(c) or "").strip() == "0" for c in flags) for row in log.rows]
    spans = []
    start = None
    for i, is_off in enumerate(off):
        if is_off and start is None:
            start = i
        elif not is_off and start is not None:
            spans.append((x[start], x[i]))
            start = None
    if start is not None:
        spans.append((x[start], x[-1]))
    return spans


def _plot_cells(ax, log, x):
    truth = dict(log.numbered(_TRUE_CELL))
    for i, (n, name) in enumerate(log.numbered(_CELL)):
        colour = "C%d" % (i % 10)
        ax.plot(x, log.column(name, 0.001), color=colour, lw=1.2, label="cell %d" % n)
        if n in truth:
            ax.plot(x, log.column(truth[n], 0.001), color=colour, lw=0.7, ls="--",
                    label="true (dashed)" if i == 0 else None)
    ax.set_ylabel("cells (V)")


def _plot_measured_and_true(ax, log, x, name, scale, ylabel):
    true_name = "true_" + name
    has_truth = true_name in log.fields
    if name in log.fields:
        ax.plot(x, log.column(name, scale), color="C0", lw=1.2, label="measured" if has_truth else None)
    if has_truth:
        ax.plot(x, log.column(true_name, scale), color="C1", lw=0.9, ls="--", label="true")
    ax.set_ylabel(ylabel)


def _plot_temps(ax, log, x):
    series = [("T%d" % n, name) for n, name in log.numbered(_TEMP)]
    series += [(label, name) for label, name in (("board", "board_c"), ("pack", "pack_temp_c")) if name in log.fields]
    for label, name in series:
        ax.plot(x, log.column(name), lw=1.2, label=label)
    ax.set_ylabel("temp (\u00b0C)")


def _finish(ax, spans, label_spans):
    for k, (a, b) in enumerate(spans):
        ax.axvspan(a, b, color="red", alpha=0.15, lw=0, label="CHG or DSG off" if label_spans and k == 0 else None)
    ax.grid(alpha=0.3)
    if not ax.lines:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="gray")
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize="x-small", ncol=min(8, len(handles)), loc="upper right")


def plot_csv(csv_path, png_path, title=None):
    """Write the four-panel plot of the CSV log at csv_path to png_path.

    Raises ValueError if the log has no rows, no usable time column or a
    field that is not a number."""
    log = _Log(csv_path)
    time_name, t = _time_axis(log)
    div, unit = _time_unit(t[-1] - t[0])
    x = [v / div for v in t]

    fig = Figure(figsize=(11, 10), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(4, 1, sharex=True)
    _plot_cells(axes[0], log, x)
    _plot_measured_and_true(axes[1], log, x, "current_ma", 0.001, "current (A)")
    _plot_temps(axes[2], log, x)
    _plot_measured_and_true(axes[3], log, x, "soc_pct", 1.0, "SOC (%)")
    spans = _fet_off_spans(log, x)
    for i, ax in enumerate(axes):
        _finish(ax, spans, label_spans=i == 0)
    axes[-1].set_xlabel("%s (%s)" % (time_name, unit))
    fig.suptitle(title or os.path.basename(csv_path))
    fig.savefig(png_path)
