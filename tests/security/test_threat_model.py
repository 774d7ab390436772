"""SECURITY.md names a test for every claim: each of those tests must exist, so the document cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def test_every_test_named_in_security_md_exists():
    text = (ROOT / "SECURITY.md").read_text()
    references = REFERENCE.findall(text)
    assert len(references) >= 40, "SECURITY.md should name the test behind each claim"
    missing = [
        f"{path}::{name}"
        for path, name in references
        if not re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), re.MULTILINE)
    ]
    assert not missing, missing
    # and every test of the campaign is named there
    campaign = {
        f"tests/security/{path.name}::{name}"
        for path in (ROOT / "tests" / "security").glob("test_*.py")
        for name in re.findall(r"^def (test_\w+)\(", path.read_text(), re.MULTILINE)
    }
    unnamed = (
        campaign
        - {f"{path}::{name}" for path, name in references}
        - {"tests/security/test_threat_model.py::test_every_test_named_in_security_md_exists"}
    )
    assert not unnamed, unnamed
