"""Figures for the experiment reports (matplotlib, Agg backend; seaborn styling).

Every function takes numpy arrays or torch tensors, writes one PNG (parent folders are created),
closes its figure and returns the written ``Path``. What each figure shows and how to read it:

``plot_predictive_bands(path, x_grid, bands, x_retain=..., y_retain=..., x_forget=..., y_forget=...)``
    Small multiples of 1-D predictives, one panel per unlearning method. In each panel the method's
    predictive mean is a coloured line with a shaded mean ± 2 std band; the model fitted on all the
    data (``full``, dashed grey) and the exact retrain on the retained data (``retrain``, solid black)
    are drawn in every panel as references, their bands lightly. Grey dots are the retained points,
    red crosses the forgotten ones, and the shaded vertical strip the removed region. A good method
    lies on the black curve; one that did nothing lies on the dashed one. Inside the removed region
    the retrain's band should widen (the model no longer saw data there). All panels share the
    y-limits chosen from the references and data, so one exploding method cannot squash the others;
    a panel whose band leaves those limits says "clipped" in its title.

``plot_gap_closed(path, rows)``
    Grouped bars of the gap closed, 1 - d(method, retrain) / d(none, retrain), per method (x) and
    split (colour: forget / retain / test). The line at 1 means "as good as retraining", the line at
    0 "no better than doing nothing"; below 0 the method moved the posterior *away* from the
    retrain. The y-axis is clipped to [-1.5, 1.2]; a bar that runs past it ends in a hatched tip
    with its true value written next to it, and a missing value (NaN) is written "n/a".

``plot_kl_sweep(path, x_labels, kl, reference=..., flagged=...)``
    One panel per split (forget / retain / test), one line per method: the averaged predictive KL
    to the retrain (log y-axis, lower is better) at each of a row of settings, e.g. the thresholds
    λ of the adjusted likelihood, named by ``x_labels``. The dashed line is the reference (``none``,
    doing nothing): a point below it is closer to retraining than the old posterior was. Red circles
    mark flagged runs (e.g. a re-fit that diverged and returned the old posterior). A method not run
    at a setting has no point there; a failed run (NaN) leaves a gap in its line.

``plot_gap_closed_sweep(path, x, gaps, log_x=...)``
    One panel per split, one line per method: the gap closed against a numeric setting (e.g. the
    fraction of the data deleted), with the lines at 1 ("as good as retraining") and 0 ("no better
    than doing nothing") of ``plot_gap_closed``. The y-axis is clipped to [-1.5, 1.2]; a point past it
    sits on the edge with its true value written beside it. When d(none, retrain) is tiny (small
    forget sets) the gap closed is a ratio of two small numbers and swings widely.

``plot_spectra(path, spectra)``
    Sorted eigenvalues (largest first) of one or more symmetric matrices, e.g. a Laplace precision
    before and after a down-date, on a symlog y-axis (logarithmic far from 0, linear near 0, so the
    sign is visible). A valid precision has all eigenvalues > 0; negative eigenvalues are circled in
    red and counted in the legend -- they are directions in which the down-dated "posterior" has no
    Gaussian at all.

``plot_loss_curves(path, curves)``
    Loss per optimisation step, one colour per run: the raw loss faint, a running mean on top.
    When the losses span several decades (or cross zero with a wide range) the y-axis is symlog.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from .files import atomic_path  # noqa: E402

__all__ = ["plot_predictive_bands", "plot_gap_closed", "plot_kl_sweep", "plot_gap_closed_sweep", "plot_spectra",
           "plot_loss_curves", "save_figure"]

DPI = 120
GAP_YLIM = (-1.5, 1.2)
SPLIT_ORDER = ("forget", "retain", "test")
SPLIT_TITLES = {"forget": "on the forgotten points D_f", "retain": "on the retained points D_r",
                "test": "on the test grid"}


def _arr(a, name: str) -> np.ndarray:
    """Any array-like (numpy, torch, list) -> 1-D float64 numpy array."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    out = np.asarray(a, dtype=np.float64)
    if out.ndim == 2 and 1 in out.shape:
        out = out.reshape(-1)
    if out.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (or N x 1), got shape {out.shape}")
    return out


def _arrays(mapping: Mapping[str, object], what: str, of: str) -> dict[str, np.ndarray]:
    """label -> non-empty 1-D array, for a mapping of label -> array-like ``of`` something."""
    if not mapping:
        raise ValueError(f"{what} is empty: give label -> {of}")
    out = {label: _arr(v, f"{of} of {label!r}") for label, v in mapping.items()}
    for label, a in out.items():
        if a.size == 0:
            raise ValueError(f"{of} of {label!r} are empty")
    return out


def _same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} values but {name_b} has {len(b)}; they must match")


def save_figure(fig, path) -> Path:
    """Write a matplotlib figure as PNG (parent folders created, written atomically) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:  # a half-written PNG never replaces a good one
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return path


def _split_order(names) -> list[str]:
    """The distinct split names: forget, retain, test first, any others after in order of appearance."""
    seen = list(dict.fromkeys(names))
    return [s for s in SPLIT_ORDER if s in seen] + [s for s in seen if s not in SPLIT_ORDER]


def _decade(v: float) -> float:
    """The power of ten at or below v (symlog thresholds on a decade keep the ticks near 0 apart)."""
    return float(10.0 ** math.floor(math.log10(v)))


def _finite(a: np.ndarray) -> np.ndarray:
    return a[np.isfinite(a)]


# ----------------------------------------------------------------------------------------------
# predictive bands


def plot_predictive_bands(path, x_grid, bands: Mapping[str, tuple], *, x_retain, y_retain, x_forget, y_forget,
                          region: tuple[float, float] | None = None, full: str = "none", retrain: str = "retrain",
                          max_cols: int = 4) -> Path:
    """Small multiples of predictive mean ± 2 std, one panel per method, against ``full`` and ``retrain``.

    ``bands`` maps a label to ``(mean[N], std[N])`` on ``x_grid[N]``. Labels ``full`` and ``retrain``
    are the references drawn in every panel; if they are the only labels, one panel shows both.
    """
    if not bands:
        raise ValueError("bands is empty: give at least one label -> (mean, std)")
    if max_cols < 1:
        raise ValueError(f"max_cols must be >= 1, got {max_cols}")
    xg = _arr(x_grid, "x_grid")
    order = np.argsort(xg, kind="stable")
    xg = xg[order]
    curves = {}
    for label, pair in bands.items():
        if len(pair) != 2:
            raise ValueError(f"bands[{label!r}] must be a (mean, std) pair")
        m, s = _arr(pair[0], f"mean of {label!r}"), _arr(pair[1], f"std of {label!r}")
        _same_length(m, xg, f"mean of {label!r}", "x_grid")
        _same_length(s, xg, f"std of {label!r}", "x_grid")
        curves[label] = (m[order], np.abs(s[order]))
    xr, yr = _arr(x_retain, "x_retain"), _arr(y_retain, "y_retain")
    xf, yf = _arr(x_forget, "x_forget"), _arr(y_forget, "y_forget")
    _same_length(xr, yr, "x_retain", "y_retain")
    _same_length(xf, yf, "x_forget", "y_forget")

    refs = [lab for lab in (full, retrain) if lab in curves]
    methods = [lab for lab in curves if lab not in (full, retrain)]
    panels = methods if methods else [None]

    # shared y-limits: references' mean ± 2 std and the data; fall back to robust quantiles of everything
    pool = [_finite(yr), _finite(yf)]
    for lab in refs:
        m, s = curves[lab]
        pool += [_finite(m - 2 * s), _finite(m + 2 * s)]
    if not refs:
        for m, s in curves.values():
            lo_hi = _finite(np.concatenate([m - 2 * s, m + 2 * s]))
            if lo_hi.size:
                pool.append(np.quantile(lo_hi, [0.05, 0.95]))
    pool = np.concatenate([p for p in pool if p.size] or [np.array([-1.0, 1.0])])
    lo, hi = float(pool.min()), float(pool.max())
    pad = 0.1 * (hi - lo) if hi > lo else 1.0
    ylim = (lo - pad, hi + pad)

    ncols = min(max_cols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    palette = sns.color_palette("colorblind", max(len(methods), 1) + 3)
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(nrows, ncols, figsize=(max(3.9 * ncols, 6.5), 3.0 * nrows + 0.9), sharex=True, sharey=True,
                                 squeeze=False)
    ref_style = {full: dict(color="0.45", ls="--", lw=1.4, band=0.10),
                 retrain: dict(color="black", ls="-", lw=1.4, band=0.10)}

    def draw(ax, label, color, ls="-", lw=1.8, band_alpha=0.25, zorder=3):
        m, s = curves[label]
        ax.fill_between(xg, m - 2 * s, m + 2 * s, color=color, alpha=band_alpha, lw=0, zorder=zorder - 1)
        ax.plot(xg, m, color=color, ls=ls, lw=lw, zorder=zorder)

    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_visible(False)
            continue
        label = panels[k]
        if region is not None:
            ax.axvspan(region[0], region[1], color="tab:red", alpha=0.07, lw=0, zorder=0)
        ax.scatter(xr, yr, s=5, color="0.55", alpha=0.6, lw=0, zorder=1)
        ax.scatter(xf, yf, s=14, color="tab:red", marker="x", lw=0.9, alpha=0.8, zorder=2)
        for ref in refs:
            st = ref_style[ref]
            draw(ax, ref, st["color"], st["ls"], st["lw"], st["band"], zorder=4)
        if label is None:
            ax.set_title("references only", fontsize=10)
        else:
            color = palette[methods.index(label) % len(palette)]
            draw(ax, label, color)
            m, s = curves[label]
            notes = []
            if not np.all(np.isfinite(m)) or not np.all(np.isfinite(s)):
                notes.append("has NaN/inf")
            fin_lo, fin_hi = _finite(m - 2 * s), _finite(m + 2 * s)
            if (fin_lo.size and fin_lo.min() < ylim[0]) or (fin_hi.size and fin_hi.max() > ylim[1]):
                ext = max(abs(float(fin_lo.min())) if fin_lo.size else 0.0, abs(float(fin_hi.max())) if fin_hi.size else 0.0)
                notes.append(f"clipped, band reaches ±{ext:.3g}")
            ax.set_title(label + (f"\n({'; '.join(notes)})" if notes else ""), fontsize=10,
                         color="tab:red" if notes else "black")
        ax.set_ylim(*ylim)
        if k % ncols == 0:
            ax.set_ylabel("y")
        if k // ncols == nrows - 1 or k + ncols >= len(panels):
            ax.set_xlabel("x")
            ax.tick_params(labelbottom=True)

    handles = [Patch(color=palette[0], alpha=0.4, label="method: mean ± 2 std")] if methods else []
    if full in curves:
        handles.append(Line2D([], [], color="0.45", ls="--", label=f"{full} (fit on all data)"))
    if retrain in curves:
        handles.append(Line2D([], [], color="black", label=f"{retrain} (exact retrain, the target)"))
    handles += [Line2D([], [], color="0.55", marker=".", ls="", label="retained points"),
                Line2D([], [], color="tab:red", marker="x", ls="", label="forgotten points")]
    if region is not None:
        handles.append(Patch(color="tab:red", alpha=0.15, label=f"removed region [{region[0]:g}, {region[1]:g}]"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, -0.01))
    fig.suptitle("Predictive mean ± 2 std after unlearning, against the exact retrain\n"
                 "closer to the solid black curve is better; shared y-limits from the references",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.06 if nrows > 1 else 0.09, 1, 1))
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# gap closed


def plot_gap_closed(path, rows: Sequence[Mapping]) -> Path:
    """Grouped bars of gap closed per method and split, clipped to [-1.5, 1.2] with true values annotated."""
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: give dicts with keys 'method', 'split', 'gap_closed'")
    for i, r in enumerate(rows):
        missing = {"method", "split", "gap_closed"} - set(r)
        if missing:
            raise ValueError(f"row {i} lacks key(s) {sorted(missing)}; each row needs method, split, gap_closed")
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    splits = _split_order(str(r["split"]) for r in rows)
    value = {}
    for r in rows:
        v = r["gap_closed"]
        value[(str(r["method"]), str(r["split"]))] = math.nan if v is None else float(v)

    lo, hi = GAP_YLIM
    palette = dict(zip(splits, sns.color_palette("colorblind", len(splits))))
    width = 0.8 / len(splits)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 1.1 * len(methods) * max(1, len(splits)) / 2.2), 4.6))
    ax.axhspan(lo, 0, color="tab:red", alpha=0.04, lw=0, zorder=0)
    ax.axhline(1.0, color="tab:green", lw=1.3, ls="--", zorder=1)
    ax.axhline(0.0, color="0.3", lw=1.1, zorder=1)
    for j, s in enumerate(splits):
        for i, m in enumerate(methods):
            x = i - 0.4 + width * (j + 0.5)
            v = value.get((m, s))
            if v is None:
                continue
            if not math.isfinite(v):
                ax.text(x, 0.03, "n/a", ha="center", va="bottom", fontsize=8, rotation=90, color="0.3")
                continue
            shown = min(max(v, lo), hi)
            clipped = shown != v
            ax.bar(x, shown, width * 0.95, color=palette[s], zorder=2,
                   hatch="///" if clipped else None, edgecolor="white" if clipped else None, lw=0)
            if clipped:  # true value written inside the clipped end of the bar
                ax.text(x, shown - 0.06 if v > 0 else shown + 0.06, f"{v:.3g}", ha="center",
                        va="top" if v > 0 else "bottom", fontsize=7.5, rotation=90, color="tab:red",
                        fontweight="bold", zorder=5,
                        bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85))
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=25 if max(map(len, methods)) > 8 else 0, ha="right"
                       if max(map(len, methods)) > 8 else "center")
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.set_ylim(lo - 0.25, hi + 0.1)
    ax.set_ylabel("gap closed  1 − d(method, retrain) / d(none, retrain)")
    ax.set_xlabel("unlearning method")
    handles = [Patch(color=palette[s], label=s) for s in splits]
    handles += [Line2D([], [], color="tab:green", ls="--", label="1: as good as retraining"),
                Line2D([], [], color="0.3", label="0: no better than doing nothing"),
                Patch(facecolor="0.6", hatch="///", edgecolor="white", label=f"clipped to [{lo}, {hi}]")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9,
              title="split")
    ax.set_title("Gap closed towards exact retraining (higher is better, 1 is perfect)\n"
                 "d = averaged predictive KL to the retrain; red text: true value of a clipped bar",
                 fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# sweeps: one panel per split, a line per method against a swept setting


def _sweep_series(values: Mapping[str, Mapping[str, Sequence]], n: int, what: str) -> tuple[dict, list[str]]:
    """method -> split -> float array of length ``n`` (None -> NaN), and the splits in display order."""
    if not values:
        raise ValueError(f"{what} is empty: give method -> split -> one value per setting")
    series: dict[str, dict[str, np.ndarray]] = {}
    for m, per_split in values.items():
        if not per_split:
            raise ValueError(f"{what}[{m!r}] is empty: give split -> one value per setting")
        series[str(m)] = {}
        for s, vals in per_split.items():
            a = np.array([math.nan if v is None else float(v) for v in vals], dtype=np.float64)
            if a.size != n:
                raise ValueError(f"{what}[{m!r}][{s!r}] has {a.size} values but there are {n} settings; they must match")
            series[str(m)][str(s)] = a
    return series, _split_order(s for per_split in series.values() for s in per_split)


def plot_kl_sweep(path, x_labels: Sequence[str], kl: Mapping[str, Mapping[str, Sequence[float | None]]], *,
                  reference: Mapping[str, float] | None = None, reference_label: str = "none (do nothing)",
                  flagged: Mapping[str, Sequence[bool]] | None = None,
                  flag_label: str = "diverged (old posterior returned)", xlabel: str = "setting",
                  title: str = "Distance to exact retraining against a setting") -> Path:
    """Predictive KL to retrain per split (panels) and method (lines) over the settings ``x_labels``; log y.

    ``kl[method][split]`` holds one value per setting: None where the method was not run at it (the line
    joins its neighbours), NaN where the run failed (a gap). ``reference[split]`` is drawn dashed,
    ``flagged[method]`` marks settings to circle in red (e.g. diverged runs).
    """
    labels = [str(t) for t in x_labels]
    if not labels:
        raise ValueError("x_labels is empty: give one label per setting")
    given = {m: {s: [v is not None for v in vals] for s, vals in per_split.items()} for m, per_split in kl.items()}
    series, splits = _sweep_series(kl, len(labels), "kl")
    flags = {}
    for m, f in (flagged or {}).items():
        if m not in series:
            raise ValueError(f"flagged names method {m!r}, which kl lacks; flag only plotted methods")
        flags[m] = np.asarray(f, dtype=bool)
        if flags[m].shape != (len(labels),):
            raise ValueError(f"flagged[{m!r}] has {flags[m].size} values but there are {len(labels)} settings")
    xs = np.arange(len(labels))
    colors = dict(zip(series, matplotlib.colormaps["tab10"].colors))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(splits), figsize=(5.0 * len(splits), 4.6), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, s in zip(axes, splits):
        for m, c in colors.items():
            if s not in series[m]:
                continue
            have = np.array(given[m][s])
            ys = series[m][s]
            ax.plot(xs[have], ys[have], marker="o", color=c, label=m)
            div = flags.get(m, np.zeros(len(labels), dtype=bool)) & have
            if div.any():
                ax.scatter(xs[div], ys[div], s=110, facecolor="none", edgecolor="red", lw=1.5, zorder=5,
                           label=f"{m}: {flag_label}")
        if reference is not None and s in reference:
            ax.axhline(reference[s], color="0.3", ls="--", label=reference_label)
        ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(SPLIT_TITLES.get(s, s), fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8.5)
    axes[0].set_ylabel("predictive KL to retrain (log scale; lower is better)")
    h, lab = axes[0].get_legend_handles_labels()
    uniq = dict(zip(lab, h))
    fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=max(len(uniq), 1), frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save_figure(fig, path)


def plot_gap_closed_sweep(path, x: Sequence[float], gaps: Mapping[str, Mapping[str, Sequence[float | None]]], *,
                          xticklabels: Sequence[str] | None = None, log_x: bool = False, xlabel: str = "setting",
                          title: str = "Gap closed towards retraining against a setting") -> Path:
    """Gap closed per split (panels) and method (lines) over numeric settings ``x``, clipped to [-1.5, 1.2].

    ``gaps[method][split]`` holds one value per setting (None or NaN: missing); a method with no value at
    all is left out. Values past the clip are drawn at the edge with their true value written beside them.
    """
    xv = _arr(x, "x")
    if xv.size == 0:
        raise ValueError("x is empty: give one number per setting")
    if log_x and not np.all(xv > 0):
        raise ValueError(f"log_x needs positive settings, got min {xv.min():g}; pass log_x=False")
    if xticklabels is not None and len(xticklabels) != xv.size:
        raise ValueError(f"xticklabels has {len(xticklabels)} labels but x has {xv.size} values; they must match")
    series, splits = _sweep_series(gaps, xv.size, "gaps")
    lo, hi = GAP_YLIM
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(splits), figsize=(14 * len(splits) / 3, 4.4), sharey=True, squeeze=False)
    axes = axes[0]
    palette = sns.color_palette("colorblind", len(series))
    for ax, s in zip(axes, splits):
        ax.axhline(1, color="tab:green", ls="--", lw=1.2, label="1: as good as retraining")
        ax.axhline(0, color="0.3", lw=1.0, label="0: no better than doing nothing")
        for j, (m, c) in enumerate(zip(series, palette)):
            ys = series[m].get(s)
            if ys is None or np.isnan(ys).all():
                continue
            ax.plot(xv, np.clip(ys, lo, hi), marker="o", color=c, label=m)
            for xi, y in zip(xv, ys):
                if np.isfinite(y) and not lo <= y <= hi:
                    ax.annotate(f"{y:.3g}", (xi, np.clip(y, lo, hi)), textcoords="offset points",
                                xytext=(0, -10 - 9 * j if y < lo else 5 + 9 * j), ha="center", fontsize=7, color=c)
        ax.set_ylim(lo - 0.5, hi + 0.1)
        if log_x:
            ax.set_xscale("log")
        ax.set_xticks(xv)
        ax.set_xticklabels(list(xticklabels) if xticklabels is not None else [f"{v:g}" for v in xv])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_title(SPLIT_TITLES.get(s, s), fontsize=10)
    axes[0].set_ylabel(f"gap closed (clipped to [{lo}, {hi}]; labels: true values)")
    h, lab = axes[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="lower center", ncol=len(lab), frameon=False, fontsize=9, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# spectra


def plot_spectra(path, spectra: Mapping[str, object]) -> Path:
    """Sorted eigenvalues (largest first) per label on a symlog axis; negative ones circled and counted."""
    vals = _arrays(spectra, "spectra", "eigenvalues")
    mags = np.concatenate([np.abs(_finite(a)) for a in vals.values()])
    mags = mags[mags > 0]
    top = float(mags.max()) if mags.size else 1.0
    # linear zone around 0: small enough that most eigenvalues sit in the log part, never below 1e-12·max
    linthresh = _decade(max(np.quantile(mags, 0.02) if mags.size else 1.0, 1e-15 * top, 1e-300))
    palette = sns.color_palette("colorblind", len(vals))
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
    ax.axhline(0.0, color="0.3", lw=1.0, zorder=1)
    any_neg = False
    for (label, a), color in zip(vals.items(), palette):
        fin = np.sort(_finite(a))[::-1]
        n_bad = int(a.size - fin.size)
        neg = fin < 0
        n_neg = int(neg.sum())
        idx = np.arange(1, fin.size + 1)
        text = f"{label}: {n_neg} negative of {a.size}"
        if n_neg:
            text += f" (min {fin.min():.3g})"
        if n_bad:
            text += f", {n_bad} non-finite"
        ax.plot(idx, fin, color=color, lw=1.6, marker=".", ms=3, label=text, zorder=3)
        if n_neg:
            any_neg = True
            ax.scatter(idx[neg], fin[neg], s=40, facecolor="none", edgecolor="tab:red", lw=1.2, zorder=4)
    ax.set_yscale("symlog", linthresh=linthresh)
    ymin, ymax = ax.get_ylim()
    if ymin < 0:
        ax.axhspan(ymin, 0, color="tab:red", alpha=0.05, lw=0, zorder=0)
    ax.set_ylim(ymin, ymax)
    ax.set_xlabel("index (eigenvalues sorted, largest first)")
    ax.set_ylabel(f"eigenvalue (symlog, linear within ±{linthresh:.2g})")
    handles, labels = ax.get_legend_handles_labels()
    if any_neg:
        handles.append(Line2D([], [], marker="o", ls="", markerfacecolor="none", markeredgecolor="tab:red",
                              label="negative eigenvalue"))
    ax.legend(handles=handles, loc="best", fontsize=9, frameon=True)
    ax.set_title("Eigenvalue spectra (a valid precision matrix has all eigenvalues > 0)\n"
                 "red circles / shaded half: negative eigenvalues, where no Gaussian posterior exists",
                 fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# loss curves


def _running_mean(a: np.ndarray, window: int) -> np.ndarray:
    """Trailing running mean over finite values (NaN where a window holds none)."""
    ok = np.isfinite(a)
    c = np.concatenate([[0.0], np.cumsum(np.where(ok, a, 0.0))])
    n = np.concatenate([[0], np.cumsum(ok)])
    hi = np.arange(1, a.size + 1)
    lo = np.maximum(hi - window, 0)
    cnt = n[hi] - n[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, (c[hi] - c[lo]) / np.maximum(cnt, 1), np.nan)


def plot_loss_curves(path, curves: Mapping[str, Sequence[float]]) -> Path:
    """Loss per step per label: raw (faint) and running mean; symlog y when the values span decades."""
    data = _arrays(curves, "curves", "losses per step")
    allv = np.concatenate([_finite(a) for a in data.values()])
    mags = np.abs(allv[allv != 0])
    span = float(mags.max() / mags.min()) if mags.size else 1.0
    symlog = mags.size > 0 and (span > 100 or (allv.min() < 0 < allv.max() and span > 10))
    palette = sns.color_palette("colorblind", len(data))
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for (label, a), color in zip(data.items(), palette):
        steps = np.arange(a.size)
        window = max(1, a.size // 50)
        n_bad = int((~np.isfinite(a)).sum())
        ax.plot(steps, a, color=color, alpha=0.25, lw=0.8, zorder=2)
        ax.plot(steps, _running_mean(a, window), color=color, lw=1.8, zorder=3,
                label=f"{label} ({a.size} steps" + (f", {n_bad} non-finite" if n_bad else "") + ")")
    if symlog:
        linthresh = _decade(max(np.quantile(mags, 0.05), 1e-12))
        ax.set_yscale("symlog", linthresh=linthresh)
        ax.set_ylabel(f"loss (symlog, linear within ±{linthresh:.2g})")
    else:
        ax.set_ylabel("loss")
    ax.set_xlabel("optimisation step")
    ax.legend(loc="best", fontsize=9)
    ax.set_title("Loss per step (faint: raw; solid: running mean)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)
