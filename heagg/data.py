"""A site's data: the in-memory ``Dataset`` and the adapters that read it from a hospital's files.

The node's data contract (``node/README.md``): one CSV (or Parquet) table with a header row, the consortium's
feature columns by name (extra columns are ignored) and one binary target column. Every way a file can break that
contract is a ``DataError`` whose one-line message names the file, the column and the 1-based data row where that
applies, and says what to do — a hospital's data manager must be able to fix the file from the message alone.

Target labels. The positive class (1) is the condition the model predicts — cancer — so sensitivity is recall on
malignant cases. A target column is accepted when its values are 0/1, or when its distinct values (compared
case-insensitively, surrounding spaces ignored) fall within one known positive/negative pair of
``KNOWN_LABEL_PAIRS`` (M/B, malignant/benign, yes/no, true/false, positive/negative); the first of the pair maps
to 1. Any other labelling (say 2/4, or "case"/"control") is refused with a request to recode to 0/1: guessing
which label is the positive class would silently invert a site's update.

One class only. A file whose target holds a single class is accepted (with a logged warning): label-skewed sites
are real — a screening clinic may see only benign cases — and they still contribute to the consortium's model.
"""

from __future__ import annotations

import csv
import difflib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from heagg.errors import DataError, UsageError

log = logging.getLogger(__name__)

#: the 30 feature names of scikit-learn's ``load_breast_cancer()``, in its column order
WDBC_FEATURES: tuple[str, ...] = (
    "mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness",
    "mean compactness", "mean concavity", "mean concave points", "mean symmetry", "mean fractal dimension",
    "radius error", "texture error", "perimeter error", "area error", "smoothness error",
    "compactness error", "concavity error", "concave points error", "symmetry error", "fractal dimension error",
    "worst radius", "worst texture", "worst perimeter", "worst area", "worst smoothness",
    "worst compactness", "worst concavity", "worst concave points", "worst symmetry", "worst fractal dimension",
)  # fmt: skip

#: target column name used by ``write_csv`` and the example data
DEFAULT_TARGET = "diagnosis"

#: (positive, negative) label pairs mapped to (1, 0); compared case-insensitively
KNOWN_LABEL_PAIRS: tuple[tuple[str, str], ...] = (
    ("m", "b"),
    ("malignant", "benign"),
    ("yes", "no"),
    ("true", "false"),
    ("positive", "negative"),
)

PARQUET_SUFFIXES = (".parquet", ".pq")

# cells that mean "no value" in exports from common tools; reported as missing rather than non-numeric
_MISSING_MARKERS = frozenset({"", "na", "n/a", "nan", "null", "none", "?", "-"})
# features are stored as float32: larger magnitudes would silently become infinity
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Feature matrix ``X`` (float32, n x d), binary target ``y`` (int64, 1 = malignant) and the column names.

    The arrays are copied and made read-only so a ``Dataset`` cannot change under a caller that holds it.
    """

    X: np.ndarray
    y: np.ndarray
    features: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        X = np.array(self.X, dtype=np.float32, copy=True)
        y = np.array(self.y, dtype=np.int64, copy=True)
        features = tuple(self.features)
        if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
            raise ValueError(f"Dataset {self.name!r}: X must be (n, d) and y (n,), got {X.shape} and {y.shape}")
        if X.shape[1] != len(features):
            raise ValueError(f"Dataset {self.name!r}: X has {X.shape[1]} columns but {len(features)} feature names")
        if y.size and not np.isin(y, (0, 1)).all():
            raise ValueError(f"Dataset {self.name!r}: y must hold only 0 and 1")
        X.setflags(write=False)
        y.setflags(write=False)
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "features", features)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_features(self) -> int:
        return len(self.features)

    def class_counts(self) -> tuple[int, int]:
        """(benign, malignant) row counts."""
        positives = int(self.y.sum())
        return len(self) - positives, positives

    def take(self, rows: np.ndarray | Sequence[int], name: str) -> Dataset:
        """The rows at the given indices, as a new data set called ``name``."""
        index = np.asarray(rows, dtype=np.int64)
        return Dataset(self.X[index], self.y[index], self.features, name)

    @staticmethod
    def concat(parts: Sequence[Dataset], name: str) -> Dataset:
        """The rows of ``parts`` one after the other; all parts must have the same features."""
        if not parts:
            raise ValueError("nothing to concatenate")
        features = parts[0].features
        if any(p.features != features for p in parts):
            raise ValueError("cannot concatenate data sets with different features")
        return Dataset(np.concatenate([p.X for p in parts]), np.concatenate([p.y for p in parts]), features, name)


def load_wdbc() -> Dataset:
    """The Wisconsin diagnostic breast-cancer data bundled with scikit-learn (569 rows, 30 features).

    scikit-learn codes malignant as 0; heagg flips it so that 1 = malignant, the positive class.
    """
    from sklearn.datasets import load_breast_cancer  # imported here: sklearn is slow to import

    bunch = load_breast_cancer()
    if tuple(str(f) for f in bunch.feature_names) != WDBC_FEATURES:
        raise RuntimeError("scikit-learn's breast-cancer feature names differ from heagg.data.WDBC_FEATURES")
    return Dataset(bunch.data, 1 - bunch.target, WDBC_FEATURES, "wdbc")


def _check_path_and_features(path: Path, features: tuple[str, ...], target: str | None) -> None:
    if not features:
        raise UsageError("no feature columns given")
    duplicates = sorted({f for f in features if features.count(f) > 1})
    if duplicates:
        raise UsageError(f"feature columns listed twice: {', '.join(map(repr, duplicates))}")
    if target is not None and target in features:
        raise UsageError(f"the target column {target!r} is also listed as a feature")
    if not path.exists():
        raise DataError(f"{path}: no such file; give the path of the site's CSV or Parquet data file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give the path of the site's CSV or Parquet data file")


def _read_columns(path: Path, features: tuple[str, ...], target: str | None) -> tuple[np.ndarray, dict]:
    wanted = (*features, target) if target is not None else features
    if path.suffix.lower() in PARQUET_SUFFIXES:
        header, columns = _read_parquet(path, wanted)
    else:
        header, columns = _read_csv(path, wanted)
    _check_columns(path, header, target, features)
    X = np.empty((len(columns[features[0]]), len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        X[:, j] = [_feature_value(path, name, row, cell) for row, cell in enumerate(columns[name], start=1)]
    return X, columns


def load_table(path: str | Path, *, target: str, features: Sequence[str]) -> Dataset:
    """Read a site's CSV or Parquet file into a ``Dataset`` with columns in the order of ``features``.

    Parquet (``.parquet``/``.pq``) needs ``pyarrow``. Raises ``DataError`` for any breach of the data contract.
    """
    path = Path(path)
    features = tuple(features)
    _check_path_and_features(path, features, target)
    X, columns = _read_columns(path, features, target)
    y = _binary_target(path, target, columns[target])
    dataset = Dataset(X, y, features, path.stem)
    benign, malignant = dataset.class_counts()
    if benign == 0 or malignant == 0:
        only = "malignant (1)" if benign == 0 else "benign (0)"
        log.warning("%s: every row is %s; the site will train on one class only", path, only)
    return dataset


def load_features(path: str | Path, *, features: Sequence[str]) -> np.ndarray:
    """Read only the feature columns of new patients (no target needed), with the same checks as ``load_table``."""
    path = Path(path)
    features = tuple(features)
    _check_path_and_features(path, features, None)
    return _read_columns(path, features, None)[0]


def write_csv(dataset: Dataset, path: str | Path, *, target: str = DEFAULT_TARGET) -> None:
    """Write ``dataset`` as CSV: a header (features..., ``target``), then one row per record, target as 0/1.

    Values are written in their shortest form that reads back to the same float32, so a round trip is exact.
    """
    if target in dataset.features:
        raise UsageError(f"the target column name {target!r} is also a feature name")
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow((*dataset.features, target))
        for x_row, label in zip(dataset.X, dataset.y, strict=True):
            writer.writerow([*(np.format_float_positional(v, unique=True, trim="-") for v in x_row), int(label)])


def _read_csv(path: Path, wanted: tuple[str, ...]) -> tuple[list[str], dict[str, list[Any]]]:
    """Header and the wanted columns (as raw strings) of a CSV file; missing columns are simply absent."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = _first_nonblank(reader)
            if header is None:
                raise DataError(f"{path}: the file is empty; expected a header row naming the columns, then data rows")
            header = [h.strip() for h in header]
            repeated = sorted({h for h in header if header.count(h) > 1 and h in wanted})
            if repeated:
                raise DataError(f"{path}: column(s) {', '.join(map(repr, repeated))} appear more than once in "
                                "the header; rename or drop the duplicates")
            positions = {name: header.index(name) for name in wanted if name in header}
            columns: dict[str, list[Any]] = {name: [] for name in positions}
            row = 0
            for fields in reader:
                if not any(f.strip() for f in fields):
                    continue  # blank lines (often a trailing one) carry no record
                row += 1
                if len(fields) != len(header):
                    raise DataError(f"{path}: row {row} (line {reader.line_num}) has {len(fields)} fields but the "
                                    f"header has {len(header)}; check for a stray or missing delimiter")
                for name, position in positions.items():
                    columns[name].append(fields[position])
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); "
                        "export it as UTF-8 CSV") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc}); export it as comma-separated CSV") from exc
    if row == 0:
        raise DataError(f"{path}: has a header row but no data rows")
    return header, columns


def _first_nonblank(reader: Any) -> list[str] | None:
    for fields in reader:
        if any(f.strip() for f in fields):
            return list(fields)
    return None


def _read_parquet(path: Path, wanted: tuple[str, ...]) -> tuple[list[str], dict[str, list[Any]]]:
    """Header and the wanted columns (as Python values) of a Parquet file."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(f"{path}: reading Parquet needs pyarrow, which is not installed; "
                        "run `pip install pyarrow` or export the table as CSV") from exc
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    header = [str(name) for name in table.column_names]
    if table.num_rows == 0:
        raise DataError(f"{path}: has columns but no data rows")
    columns = {name: table.column(name).to_pylist() for name in wanted if name in header}
    return header, columns


def _check_columns(path: Path, header: list[str], target: str | None, features: tuple[str, ...]) -> None:
    present = set(header)
    hint = ""
    if header and all(_is_number(h) for h in header):
        hint = "; the first line looks like data: the file needs a header row naming the columns"
    if target is not None and target not in present:
        raise DataError(f"{path}: no target column {target!r}{_did_you_mean(target, header)}; "
                        f"pass the name of the 0/1 diagnosis column with --target{hint}")
    missing = [f for f in features if f not in present]
    if missing:
        listed = ", ".join(repr(m) for m in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise DataError(f"{path}: missing {len(missing)} feature column(s): {listed}"
                        f"{_did_you_mean(missing[0], header)}; the file must hold every consortium feature "
                        f"by its exact name{hint}")


def _did_you_mean(name: str, header: list[str]) -> str:
    close = difflib.get_close_matches(name, header, n=1, cutoff=0.8)
    if not close:
        close = [h for h in header if h.casefold() == name.casefold()]
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _feature_value(path: Path, column: str, row: int, cell: Any) -> float:
    if cell is None or (isinstance(cell, str) and cell.strip().casefold() in _MISSING_MARKERS):
        shown = "an empty cell" if cell is None or not cell.strip() else f"{cell.strip()!r}"
        raise DataError(f"{path}: column {column!r}, row {row}: missing value ({shown}); "
                        "impute or drop the row before training")
    if isinstance(cell, bool) or not isinstance(cell, (str, int, float)):
        raise DataError(f"{path}: column {column!r}, row {row}: non-numeric value {cell!r}; features must be numbers")
    try:
        value = float(cell)
    except ValueError:
        raise DataError(f"{path}: column {column!r}, row {row}: non-numeric value {cell.strip()!r}; "
                        "features must be plain numbers with '.' as the decimal point") from None
    if math.isnan(value):
        raise DataError(f"{path}: column {column!r}, row {row}: missing value (NaN); "
                        "impute or drop the row before training")
    if math.isinf(value) or abs(value) > _FLOAT32_MAX:
        raise DataError(f"{path}: column {column!r}, row {row}: infinite or out-of-range value {cell!r}; "
                        "fix or drop the row")
    return value


def _binary_target(path: Path, column: str, cells: list[Any]) -> np.ndarray:
    """Map the target column to 0/1 by the rule in the module docstring."""
    labels: list[str] = []
    for row, cell in enumerate(cells, start=1):
        text = "" if cell is None else str(cell).strip()
        if text.casefold() in _MISSING_MARKERS:
            raise DataError(f"{path}: column {column!r}, row {row}: missing target label; "
                            "every row needs a 0/1 diagnosis")
        labels.append(text)

    numbers = [_as_float(label) for label in labels]
    if all(n is not None for n in numbers):
        if all(n in (0.0, 1.0) for n in numbers):
            return np.asarray(numbers, dtype=np.int64)
        distinct_numbers = set(numbers)
        if len(distinct_numbers) <= 2:
            raise DataError(f"{path}: column {column!r} holds {_shown(labels)}; there is no known mapping of "
                            "these to malignant/benign, so recode the target to 0/1 (1 = malignant)")
        row = next(i for i, n in enumerate(numbers, start=1) if n not in (0.0, 1.0))
        raise DataError(f"{path}: column {column!r} is not binary: {len(distinct_numbers)} distinct values "
                        f"(row {row} holds {labels[row - 1]!r}); recode the target to 0/1 (1 = malignant)")

    folded = [label.casefold() for label in labels]
    distinct = sorted(set(folded))
    if len(distinct) > 2:
        raise DataError(f"{path}: column {column!r} is not binary: {len(distinct)} distinct labels "
                        f"({_shown(labels)}); recode the target to 0/1 (1 = malignant)")
    for positive, negative in KNOWN_LABEL_PAIRS:
        if set(distinct) <= {positive, negative}:
            log.info("%s: target %r mapped %r -> 1 and %r -> 0", path, column, positive, negative)
            return np.asarray([f == positive for f in folded], dtype=np.int64)
    raise DataError(f"{path}: column {column!r} holds {_shown(labels)}, which is not a known positive/negative "
                    "pair (M/B, malignant/benign, yes/no, true/false, positive/negative); "
                    "recode the target to 0/1 (1 = malignant)")


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _shown(labels: list[str], limit: int = 5) -> str:
    distinct = list(dict.fromkeys(labels))
    shown = ", ".join(repr(v) for v in distinct[:limit])
    return shown + (f", ... ({len(distinct)} in all)" if len(distinct) > limit else "")
