"""Bad input from a user gets one line that says what is wrong and what to do: never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from heagg.data import load_wdbc, write_csv


def heagg(*args, env=None, cwd=None, timeout=120):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "heagg", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("heagg: error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "keys"
    env = {
        "HEAGG_PASSPHRASE_SITE_1": "correct horse 1",
        "HEAGG_PASSPHRASE_SITE_2": "correct horse 2",
        "HEAGG_PASSPHRASE_SITE_3": "correct horse 3",
        "HEAGG_PASSPHRASE_AGGREGATOR": "aggregator pass",
    }
    result = heagg("keygen", "--sites", "site-1,site-2,site-3", "--threshold", "2", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def good_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "site.csv"
    write_csv(load_wdbc(), path)
    return path


def node_args(keys, site="site-1", data=None, target="diagnosis"):
    return [
        "node",
        "--site",
        site,
        "--keys",
        str(keys),
        "--connect",
        "tcp://127.0.0.1:1",
        "--data",
        str(data),
        "--target",
        target,
    ]


def test_keygen_refuses_to_overwrite_and_checks_its_options(keys, tmp_path):
    before = sorted(p.name for p in keys.iterdir())
    assert_one_line_error(
        heagg("keygen", "--sites", "a,b", "--threshold", "2", "--out", str(keys), "--insecure-no-passphrase"),
        "already exists",
    )
    assert sorted(p.name for p in keys.iterdir()) == before
    assert_one_line_error(
        heagg("keygen", "--sites", "a,b", "--threshold", "3", "--out", str(tmp_path / "k"), "--insecure-no-passphrase"),
        "--threshold",
    )
    assert_one_line_error(
        heagg(
            "keygen", "--sites", "a,b/c", "--threshold", "1", "--out", str(tmp_path / "k"), "--insecure-no-passphrase"
        ),
        "site name",
    )
    assert_one_line_error(
        heagg("keygen", "--sites", "a,b", "--threshold", "1", "--out", str(tmp_path / "k")), "HEAGG_PASSPHRASE"
    )  # no TTY, no passphrase in the environment: say how to give one
    assert not (tmp_path / "k").exists()


def test_wrong_passphrase_and_damaged_share_files(keys, good_csv, tmp_path):
    assert_one_line_error(
        heagg(*node_args(keys, data=good_csv), env={"HEAGG_PASSPHRASE": "not the one"}),
        "wrong passphrase",
        "site-1.share",
    )
    damaged = tmp_path / "keys"
    subprocess.run(["cp", "-r", str(keys), str(damaged)], check=True)
    share = damaged / "sites" / "site-1.share"
    raw = bytearray(share.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    share.write_bytes(bytes(raw))
    assert_one_line_error(
        heagg(*node_args(damaged, data=good_csv), env={"HEAGG_PASSPHRASE": "correct horse 1"}),
        "corrupted",
        "site-1.share",
    )
    inspected = heagg("keys", "inspect", str(share))
    assert "MISMATCH" in inspected.stdout and "Traceback" not in inspected.stderr
    # another site's share file in the wrong place
    (damaged / "sites" / "site-1.share").unlink()
    (damaged / "sites" / "site-2.share").rename(damaged / "sites" / "site-1.share")
    assert_one_line_error(
        heagg(*node_args(damaged, data=good_csv), env={"HEAGG_PASSPHRASE": "correct horse 2"}), "site-2"
    )
    assert_one_line_error(heagg(*node_args(keys, site="site-9", data=good_csv)), "site-9", "not in consortium")


def test_bad_data_files_name_the_file_column_and_row(keys, good_csv, tmp_path):
    env = {"HEAGG_PASSPHRASE": "correct horse 1"}
    assert_one_line_error(
        heagg(*node_args(keys, data=tmp_path / "missing.csv"), env=env), "missing.csv", "no such file"
    )
    lines = good_csv.read_text().splitlines()
    header = lines[0].split(",")
    bad = tmp_path / "nan.csv"
    row = lines[3].split(",")
    row[2] = "nan"
    bad.write_text("\n".join([lines[0], lines[1], lines[2], ",".join(row)]) + "\n")
    assert_one_line_error(heagg(*node_args(keys, data=bad), env=env), "nan.csv", repr(header[2]), "row 3")
    text = tmp_path / "text.csv"
    row = lines[1].split(",")
    row[0] = "big"
    text.write_text("\n".join([lines[0], ",".join(row)]) + "\n")
    assert_one_line_error(heagg(*node_args(keys, data=text), env=env), "text.csv", repr(header[0]), "row 1")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert_one_line_error(heagg(*node_args(keys, data=empty), env=env), "empty.csv")
    assert_one_line_error(heagg(*node_args(keys, data=good_csv, target="outcome"), env=env), "outcome")
    dropped = tmp_path / "dropped.csv"
    dropped.write_text("\n".join(",".join(line.split(",")[1:]) for line in lines[:5]) + "\n")
    assert_one_line_error(heagg(*node_args(keys, data=dropped), env=env), "dropped.csv", header[0])


def test_a_port_in_use_and_a_missing_key_directory(keys, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = heagg(
            "aggregator",
            "--keys",
            str(keys),
            "--bind",
            f"tcp://127.0.0.1:{port}",
            "--rounds",
            "1",
            "--state",
            str(tmp_path / "agg"),
            env={"HEAGG_PASSPHRASE": "aggregator pass"},
        )
    assert_one_line_error(result, "in use")
    assert_one_line_error(heagg("aggregator", "--keys", str(tmp_path / "nope"), "--rounds", "1"), "nope")
    assert_one_line_error(heagg("predict", "--model", str(tmp_path / "model.pt"), "--data", "x.csv"), "model.pt")
    assert_one_line_error(heagg("simulate", "--split", "banana", "-q"), "banana")
    assert_one_line_error(heagg("simulate", "--sites", "3", "--threshold", "5", "-q"), "--threshold")
