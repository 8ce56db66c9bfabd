"""The ``bayes-unlearn`` command line.

Sub-commands: ``demo`` (fit and predict on the synthetic 1-D set), ``methods`` (list the
registered inference and unlearning methods) and ``region-study`` (the BNN region deletion against
retraining, ``analysis.region_study``). Configurable experiment runs (``run``) come with the
analysis issue.
"""

from __future__ import annotations

import argparse
import sys


def _methods(args: argparse.Namespace) -> int:
    from inference import METHODS

    print("inference methods (fit(model, x, y, method=...)):")
    for name, text in METHODS.items():
        print(f"  {name:<12} {text}")
    try:
        from unlearning import describe_methods
    except ImportError:
        return 0
    print("\nunlearning methods (unlearn(posterior, x_forget, y_forget, method=...)):")
    for name, text in describe_methods().items():
        print(f"  {name:<18} {text}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(["--seed", str(args.seed)] + (["--no-progress"] if args.no_progress else []))


def _region_study(args: argparse.Namespace) -> int:
    from .region_study import main as study_main

    argv = ["--family", args.family, "--seed", str(args.seed)]
    if args.methods:
        argv += ["--methods", args.methods]
    if args.out:
        argv += ["--out", args.out]
    return study_main(argv)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bayes-unlearn",
                                 description="Bayesian machine unlearning of neural regression models (Pyro).")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("demo", help="fit a Bayesian MLP on synthetic 1-D data and print predictions")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_demo)
    p = sub.add_parser("methods", help="list the registered inference (and unlearning) methods")
    p.set_defaults(func=_methods)
    from .region_study import FAMILY_OPTIONS

    p = sub.add_parser("region-study", help="BNN region deletion: every unlearning method against retraining")
    p.add_argument("--family", default="laplace", choices=sorted(FAMILY_OPTIONS), help="inference family")
    p.add_argument("--methods", default=None, help='space-separated, each NAME or NAME:key=value,... '
                   '(default: every Bayesian method)')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.set_defaults(func=_region_study)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
