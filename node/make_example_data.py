"""Write per-site example data files from the Wisconsin breast-cancer data bundled with scikit-learn.

Each ``site-K.csv`` holds every row dealt to site K (its training rows, then its local test rows) in the node's data
format: a header row, the 30 WDBC feature columns by name, and the target column (``diagnosis``: 1 = malignant).
``holdout.csv`` is the consortium's global held-out test set, for reporting only; no site trains on it.

    python node/make_example_data.py --sites 5 --split dirichlet:0.3 --seed 0

Run it from an installed heagg (``pip install -e .``) or with ``PYTHONPATH=.`` from the repository root.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from heagg.data import DEFAULT_TARGET, Dataset, load_wdbc, write_csv
from heagg.errors import HeaggError
from heagg.splits import SPLIT_FORMS, split_sites

DEFAULT_OUT = Path(__file__).resolve().parent / "example-data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3, help="number of sites (default 3)")
    parser.add_argument("--split", default="iid", help=f"how rows are dealt: {SPLIT_FORMS} (default iid)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"target column name (default {DEFAULT_TARGET})")
    args = parser.parse_args(argv)
    try:
        federation = split_sites(load_wdbc(), args.sites, args.split, seed=args.seed)
        args.out.mkdir(parents=True, exist_ok=True)
        for site in federation.sites:
            rows = Dataset.concat([site.train, site.test], site.name)
            path = args.out / f"{site.name}.csv"
            write_csv(rows, path, target=args.target)
            benign, malignant = rows.class_counts()
            print(f"{path}: {len(rows)} rows ({malignant} malignant, {benign} benign)")
        holdout = args.out / "holdout.csv"
        write_csv(federation.test, holdout, target=args.target)
        print(f"{holdout}: {len(federation.test)} rows, the global test set (reporting only)")
    except HeaggError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
