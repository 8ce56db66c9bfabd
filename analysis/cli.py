"""The ``bayes-unlearn`` command line.

Sub-commands: ``run`` (a whole unlearning experiment from a TOML config into a results folder,
``analysis.experiment``), ``methods`` (list the registered inference and unlearning methods),
``sweep`` (scenarios × seeds of ``run`` on Ray or serially, with bootstrap intervals,
``analysis.sweep``) and ``demo`` (fit and predict on the synthetic 1-D set). Every sub-command has
``--help``. The pitfalls study is a research study beside the benchmarks, not part of the installed
library: ``python -m benchmarks.pitfalls`` from the repository root (``bayes-unlearn pitfalls`` says so).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _methods(args: argparse.Namespace) -> int:
    from ..inference import METHODS

    print("inference methods (fit(model, x, y, method=...)):")
    for name, text in METHODS.items():
        print(f"  {name:<12} {text}")
    try:
        from ..unlearning import describe_methods
    except ImportError:
        return 0
    print("\nunlearning methods (unlearn(posterior, x_forget, y_forget, method=...)):")
    for name, text in describe_methods().items():
        print(f"  {name:<18} {text}")
    return 0


PITFALLS_MOVED = ("the pitfalls study moved to `python -m benchmarks.pitfalls` (a research study, not part of the "
                  "installed library)")

# what `run` writes into its results folder: `--overwrite` removes exactly these, nothing else
RUN_OUTPUTS = ("report.md", "metrics.json", "metrics.csv", "config.toml", "environment.json", "status.json", "figures",
               "posteriors")


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty results folder (stale files would mix with the new run) unless ``--overwrite``,
    which removes the previous run's outputs first; a folder holding anything else is never cleared."""
    from .config import ConfigError

    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a folder")
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return
    if not overwrite:
        raise ConfigError(f"--out {str(out)!r} is not empty ({', '.join(present[:4])}{', ...' if len(present) > 4 else ''});"
                          " choose a new folder or pass --overwrite to replace the previous results")
    foreign = [n for n in present if n not in RUN_OUTPUTS]
    if foreign:
        raise ConfigError(f"--out {str(out)!r} holds files that are not results of `run` ({', '.join(foreign[:4])}); "
                          "--overwrite only replaces a previous run's results: choose a new folder")
    import shutil

    for name in present:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _run(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config

    try:
        cfg = load_config(args.config, quick=args.quick, seed=args.seed)
        from .experiment import run_experiment

        out = args.out = args.out or f"results/{'quick' if args.quick else 'default'}-seed{cfg['seed']}"
        _prepare_out(Path(out), args.overwrite)
        t0 = time.perf_counter()
        doc = run_experiment(cfg, out, progress=not args.no_progress)
    except ConfigError as e:
        print(f"bayes-unlearn run: bad config: {e}", file=sys.stderr)
        return 2
    failed = [r["method"] for r in doc["results"] if r.get("error")]
    print(f"done in {time.perf_counter() - t0:.0f} s: {len(doc['results'])} methods, "
          f"{doc['request']['num_forget']} points forgotten" + (f"; failed: {', '.join(failed)}" if failed else ""))
    print(f"report: {Path(out) / 'report.md'}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .sweep import run_sweep

    t0 = time.perf_counter()
    try:
        summary = run_sweep(args.config, args.out, quick=args.quick, engine=args.engine, address=args.address,
                            num_cpus=args.num_cpus, resume=args.resume, progress=not args.no_progress)
    except ConfigError as e:
        print(f"bayes-unlearn sweep: {e}", file=sys.stderr)
        return 2
    t = summary["tasks"]
    print(f"done in {time.perf_counter() - t0:.0f} s: {t['complete']} tasks complete, {len(t['failed'])} failed"
          + "".join(f"\n  failed: {f['scenario']}/seed{f['seed']}: {f['error']}" for f in t["failed"]))
    print(f"summary: {Path(args.out) / 'summary.json'}; report: {Path(args.out) / 'report.md'}")
    return 1 if t["failed"] else 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(["--seed", str(args.seed)] + (["--no-progress"] if args.no_progress else []))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bayes-unlearn",
                                 description="Bayesian machine unlearning of neural regression models (Pyro).")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("run", help="run an unlearning experiment against exact retraining into a results folder",
                       description="Fit a posterior, remove the forget set with every configured unlearning "
                       "method, compare each with exact retraining and write metrics.json/csv, report.md, "
                       "figures, ArviZ netCDF posteriors, config.toml and environment.json. Without --config: "
                       "the 1-D BNN with a deleted input region and every registered method.")
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="TOML file with the settings that differ from the default (see README)")
    p.add_argument("--out", default=None, metavar="DIR", help="results folder (default results/<default|quick>-seedN)")
    p.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    p.add_argument("--quick", action="store_true", help="a smaller, shorter run (under a minute)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of a previous run in --out (a non-empty folder is refused otherwise)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_run)
    p = sub.add_parser("sweep", help="run scenarios × seeds of `run` (Ray or serial) and summarise them with "
                       "bootstrap intervals", description="Run every (scenario, seed) of a sweep file as one "
                       "`bayes-unlearn run` into DIR/<scenario>/seed<k>/ (each with a task.json record), then write "
                       "DIR/summary.json, summary.csv, report.md and figures/: per scenario, method and metric the "
                       "mean over seeds with a 95 % percentile-bootstrap interval. Every task's configuration is "
                       "checked before anything runs. Exit status: 0, 1 when a task failed (the sweep still "
                       "finishes), 2 for a bad sweep file or folder.")
    p.add_argument("--config", required=True, metavar="SWEEP.toml",
                   help="sweep file: seeds, [base], [scenarios.<name>], [methods] (see README, Sweeps)")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep folder")
    p.add_argument("--quick", action="store_true", help="every task at the --quick scale of `run`")
    p.add_argument("--engine", choices=["ray", "serial"], default="ray",
                   help="ray: one single-CPU Ray task per (scenario, seed) (default); serial: one after another "
                   "in this process")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="a running Ray cluster (e.g. 'auto' or 'ray://host:10001'); default: start a local instance")
    p.add_argument("--num-cpus", type=int, default=None, metavar="N",
                   help="CPUs of the local Ray instance = tasks at once (default: all)")
    p.add_argument("--resume", action="store_true",
                   help="finish a sweep in DIR: rerun only the tasks without a complete task.json")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_sweep)
    p = sub.add_parser("demo", help="fit a Bayesian MLP on synthetic 1-D data and print predictions")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_demo)
    p = sub.add_parser("methods", help="list the registered inference (and unlearning) methods")
    p.set_defaults(func=_methods)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["pitfalls"]:  # a former sub-command: say where it went
        print(f"bayes-unlearn pitfalls: {PITFALLS_MOVED}", file=sys.stderr)
        return 2
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    return _guarded(args.func, args, argv[0])


def _guarded(func, args: argparse.Namespace, command: str) -> int:
    """Run a sub-command: Ctrl-C gives exit 130 and one line, any other error exit 1 and one line naming it
    (``BAYES_UNLEARN_TRACEBACK=1`` re-raises for the traceback). ``run`` records either in ``status.json``."""
    import os

    out = getattr(args, "out", None)
    where = ("" if not out else f" (finished tasks kept in {out}; --resume runs the rest)" if command == "sweep"
             else f" (partial results in {out}; its status.json says so)")
    try:
        return func(args)
    except KeyboardInterrupt:
        print(f"bayes-unlearn {command}: interrupted{where}", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 -- one line, never a raw traceback, unless asked for
        if os.environ.get("BAYES_UNLEARN_TRACEBACK"):
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"bayes-unlearn {command}: failed: {type(e).__name__}: {msg}{where}; "
              "set BAYES_UNLEARN_TRACEBACK=1 for the traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
