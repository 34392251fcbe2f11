"""The status contract is written once: gateway and operator import it, never copy it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from switchboard_contract import ErrorCode, Field

ROOT = Path(__file__).resolve().parents[1]
# What an error code looks like (lowercase words joined by _, with a platform-ish prefix).
CODE_LIKE = re.compile(r"(telegram|qqbot|qq|gateway|backend)_[a-z_]+")


def _literals(package: str) -> list[tuple[str, int, str]]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append((path.name, node.lineno, node.value))
    return found


def test_no_error_code_is_spelled_out_outside_the_contract():
    """A code written as a string literal can drift from the operator's table (it did:
    `gateway_config_invalid` against `config_invalid`)."""
    codes = {str(c) for c in ErrorCode}
    offenders = [f"{name}:{line}: {value!r}" for package in ("gateway", "operator")
                 for name, line, value in _literals(package)
                 if CODE_LIKE.fullmatch(value) and (value in codes or "_error" in value
                                                     or "_invalid" in value)]
    assert not offenders, offenders


def test_no_status_field_name_is_spelled_out_in_the_status_writers():
    fields = {str(f) for f in Field} - {"state", "conditions", "circuit", "restarts"}
    for package, module in (("gateway", "status.py"), ("operator", "restarts.py")):
        spelled = [f"{module}:{line}: {value!r}" for name, line, value in _literals(package)
                   if name == module and value in fields]
        assert not spelled, spelled


def test_the_one_backoff_doubles_caps_and_never_overflows():
    from switchboard_contract.backoff import doubling

    assert [doubling(5, n, 60) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 40, 60]
    assert doubling(0.5, 5000, 10) == 10  # 0.5 * 2.0 ** 4999 would raise OverflowError
    assert doubling(30, 1, 10) == 10
