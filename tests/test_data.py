"""The node's data contract: every way a site file can be wrong gives one DataError naming the problem."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from heagg.data import WDBC_FEATURES, Dataset, load_table, load_wdbc, write_csv
from heagg.errors import DataError, UsageError

FEATURES = ("radius", "texture")


def write(tmp_path: Path, text: str, name: str = "site.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path, *, target: str = "diagnosis", features=FEATURES) -> str:
    with pytest.raises(DataError) as info:
        load_table(path, target=target, features=features)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


# --- the bundled data set -------------------------------------------------------------------------------------------


def test_wdbc_features_are_sklearns_names():
    assert tuple(str(n) for n in load_breast_cancer().feature_names) == WDBC_FEATURES
    assert len(WDBC_FEATURES) == 30


def test_load_wdbc_codes_malignant_as_one():
    data = load_wdbc()
    sk = load_breast_cancer()
    assert data.X.shape == (569, 30) and data.X.dtype == np.float32 and data.y.dtype == np.int64
    assert data.class_counts() == (357, 212)  # WDBC: 357 benign, 212 malignant
    assert np.array_equal(data.y, 1 - sk.target)  # sklearn codes malignant as 0
    assert list(sk.target_names[sk.target[data.y == 1]]) == ["malignant"] * 212
    assert len(data) == 569 and data.features == WDBC_FEATURES


def test_dataset_is_read_only_and_checked():
    data = Dataset(np.zeros((3, 2)), np.array([0, 1, 1]), FEATURES, "d")
    with pytest.raises(ValueError, match="read-only"):
        data.X[0, 0] = 1.0
    with pytest.raises(ValueError, match="only 0 and 1"):
        Dataset(np.zeros((2, 2)), np.array([0, 2]), FEATURES, "d")
    with pytest.raises(ValueError, match="feature names"):
        Dataset(np.zeros((2, 3)), np.array([0, 1]), FEATURES, "d")


# --- good files ------------------------------------------------------------------------------------------------------


def test_csv_round_trip_is_exact(tmp_path):
    data = load_wdbc()
    path = tmp_path / "wdbc.csv"
    write_csv(data, path)
    back = load_table(path, target="diagnosis", features=WDBC_FEATURES)
    assert np.array_equal(back.X, data.X) and np.array_equal(back.y, data.y)
    assert back.features == WDBC_FEATURES and back.name == "wdbc"
    assert path.read_text().splitlines()[0].split(",")[-1] == "diagnosis"


def test_write_csv_target_name_is_a_parameter(tmp_path):
    data = Dataset(np.array([[1.5, 2.25]]), np.array([1]), FEATURES, "d")
    path = tmp_path / "d.csv"
    write_csv(data, path, target="label")
    assert path.read_text().splitlines() == ["radius,texture,label", "1.5,2.25,1"]
    with pytest.raises(UsageError):
        write_csv(data, path, target="radius")


def test_columns_taken_in_requested_order_and_extras_ignored(tmp_path):
    path = write(tmp_path, "id,texture,notes,diagnosis,radius\n7,10.5,x,1,3\n8,11,y,0,4\n\n")
    data = load_table(path, target="diagnosis", features=("radius", "texture"))
    assert data.features == ("radius", "texture")
    assert data.X.tolist() == [[3.0, 10.5], [4.0, 11.0]]
    assert data.y.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["M", "B", "b", " m "], [1, 0, 0, 1]),
        (["Malignant", "benign", "BENIGN"], [1, 0, 0]),
        (["yes", "No", "YES"], [1, 0, 1]),
        (["true", "False"], [1, 0]),
        (["negative", "Positive"], [0, 1]),
        (["1", "0", "1.0", "0.0"], [1, 0, 1, 0]),
    ],
)
def test_known_label_pairs_map_positive_to_one(tmp_path, labels, expected):
    rows = "".join(f"1,2,{label}\n" for label in labels)
    path = write(tmp_path, "radius,texture,diagnosis\n" + rows)
    assert load_table(path, target="diagnosis", features=FEATURES).y.tolist() == expected


def test_single_class_is_accepted_with_a_warning(tmp_path, caplog):
    path = write(tmp_path, "radius,texture,diagnosis\n1,2,B\n3,4,b\n")
    with caplog.at_level(logging.WARNING, logger="heagg.data"):
        data = load_table(path, target="diagnosis", features=FEATURES)
    assert data.y.tolist() == [0, 0]
    assert "one class only" in caplog.text and "benign" in caplog.text


# --- bad files -------------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    assert "no such file" in load_error(tmp_path / "nope.csv")


def test_directory_instead_of_file(tmp_path):
    assert "directory" in load_error(tmp_path)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path, text):
    assert "empty" in load_error(write(tmp_path, text))


def test_header_only(tmp_path):
    assert "no data rows" in load_error(write(tmp_path, "radius,texture,diagnosis\n"))


def test_missing_target_column_suggests_close_name(tmp_path):
    message = load_error(write(tmp_path, "radius,texture,Diagnosis\n1,2,1\n"))
    assert "'diagnosis'" in message and "did you mean 'Diagnosis'" in message and "--target" in message


def test_missing_feature_columns_are_listed(tmp_path):
    path = write(tmp_path, "radius,diagnosis\n1,1\n")
    message = load_error(path, features=("radius", "texture", "area"))
    assert "2 feature column(s)" in message and "'texture'" in message and "'area'" in message
    assert "'radius'" not in message.split("column(s):")[1]


def test_header_missing_is_detected(tmp_path):
    message = load_error(write(tmp_path, "1,2,1\n3,4,0\n"))
    assert "header row" in message


def test_non_numeric_value_names_column_row_and_value(tmp_path):
    path = write(tmp_path, "radius,texture,diagnosis\n1,2,1\n\n3,4,0\n5,abc,1\n")
    message = load_error(path)
    assert "column 'texture'" in message and "row 3" in message and "'abc'" in message


def test_decimal_comma_is_non_numeric(tmp_path):
    message = load_error(write(tmp_path, 'radius,texture,diagnosis\n"1,5",2,1\n'))
    assert "column 'radius'" in message and "row 1" in message and "'1,5'" in message


@pytest.mark.parametrize(
    ("cell", "what"),
    [
        ("", "empty cell"),
        ("NaN", "missing value"),
        ("NA", "missing value"),
        ("inf", "infinite"),
        ("-Infinity", "infinite"),
        ("1e39", "out-of-range"),
    ],
)
def test_missing_and_infinite_values_name_column_and_row(tmp_path, cell, what):
    path = write(tmp_path, f"radius,texture,diagnosis\n1,2,1\n{cell},4,0\n")
    message = load_error(path)
    assert "column 'radius'" in message and "row 2" in message and what in message


def test_missing_target_label(tmp_path):
    message = load_error(write(tmp_path, "radius,texture,diagnosis\n1,2,1\n3,4,\n"))
    assert "column 'diagnosis'" in message and "row 2" in message and "missing target" in message


def test_three_numeric_labels_is_not_binary(tmp_path):
    message = load_error(write(tmp_path, "radius,texture,diagnosis\n1,2,1\n3,4,0\n5,6,2\n"))
    assert "not binary" in message and "row 3" in message and "'2'" in message and "0/1" in message


def test_three_string_labels_is_not_binary(tmp_path):
    message = load_error(write(tmp_path, "radius,texture,diagnosis\n1,2,M\n3,4,B\n5,6,unknown\n"))
    assert "not binary" in message and "'unknown'" in message


def test_unknown_numeric_pair_asks_to_recode(tmp_path):
    # the original Wisconsin data codes 2 = benign, 4 = malignant: heagg must not guess
    message = load_error(write(tmp_path, "radius,texture,diagnosis\n1,2,2\n3,4,4\n"))
    assert "'2', '4'" in message and "recode the target to 0/1" in message


def test_unknown_string_pair_asks_to_recode(tmp_path):
    message = load_error(write(tmp_path, "radius,texture,diagnosis\n1,2,case\n3,4,control\n"))
    assert "'case', 'control'" in message and "recode the target to 0/1" in message


def test_labels_from_two_different_pairs_are_refused(tmp_path):
    message = load_error(write(tmp_path, "radius,texture,diagnosis\n1,2,yes\n3,4,B\n"))
    assert "not a known positive/negative pair" in message


def test_ragged_row(tmp_path):
    message = load_error(write(tmp_path, "radius,texture,diagnosis\n1,2,1\n3,4\n"))
    assert "row 2" in message and "2 fields" in message


def test_duplicate_header_column(tmp_path):
    message = load_error(write(tmp_path, "radius,texture,radius,diagnosis\n1,2,3,1\n"))
    assert "'radius'" in message and "more than once" in message


def test_not_utf8(tmp_path):
    path = tmp_path / "site.csv"
    path.write_bytes(b"radius,texture,diagnosis\n\xff\xfe1,2,1\n")
    assert "UTF-8" in load_error(path)


def test_bad_arguments_are_usage_errors(tmp_path):
    path = write(tmp_path, "radius,texture,diagnosis\n1,2,1\n")
    with pytest.raises(UsageError, match="also listed as a feature"):
        load_table(path, target="radius", features=FEATURES)
    with pytest.raises(UsageError, match="listed twice"):
        load_table(path, target="diagnosis", features=("radius", "radius"))


def test_parquet(tmp_path):
    path = tmp_path / "site.parquet"
    if importlib.util.find_spec("pyarrow") is None:
        path.write_bytes(b"PAR1")
        message = load_error(path)
        assert "pip install pyarrow" in message
    else:  # pragma: no cover - depends on the environment; both branches assert
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"radius": [1.0, 2.0], "texture": [3, 4], "diagnosis": ["M", "B"]}), path)
        data = load_table(path, target="diagnosis", features=FEATURES)
        assert data.X.tolist() == [[1.0, 3.0], [2.0, 4.0]] and data.y.tolist() == [1, 0]


# --- the node's example files ----------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def test_example_node_config_names_every_node_option():
    config = tomllib.loads((REPO / "node" / "example-node.toml").read_text(encoding="utf-8"))
    assert set(config) == {"site", "keys", "connect", "data", "target", "state"}
    assert config["connect"].startswith("tcp://") and config["target"] == "diagnosis"


def test_make_example_data_writes_loadable_site_files(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "node" / "make_example_data.py"),
            "--out",
            str(tmp_path),
            "--sites",
            "4",
            "--split",
            "size:0.4",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    sites = [load_table(tmp_path / f"site-{k}.csv", target="diagnosis", features=WDBC_FEATURES) for k in range(1, 5)]
    holdout = load_table(tmp_path / "holdout.csv", target="diagnosis", features=WDBC_FEATURES)
    assert sum(len(s) for s in sites) + len(holdout) == 569
    assert abs(len(sites[0]) - 0.4 * sum(len(s) for s in sites)) <= 2
    pooled = np.concatenate([s.X for s in sites] + [holdout.X])
    assert len(np.unique(pooled, axis=0)) == 569  # every WDBC row exactly once


def test_make_example_data_reports_a_bad_split_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(REPO / "node" / "make_example_data.py"), "--out", str(tmp_path), "--split", "skewed"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "accepted forms" in result.stderr
