"""Test-only operations exist only with OSAPITEST_HOOKS=1 and never in the production table."""

from __future__ import annotations

import pytest

from osapi.job import operations, testhooks


def test_test_operations_are_unknown_without_the_switch(monkeypatch):
    monkeypatch.delenv(testhooks.ENV, raising=False)
    for name in testhooks.OPERATIONS:
        with pytest.raises(operations.InvalidData) as info:
            operations.get(name)
        assert "unknown operation type" in str(info.value)
    monkeypatch.setenv(testhooks.ENV, "yes")  # only exactly "1" switches them on
    with pytest.raises(operations.InvalidData):
        operations.get("test.sleep")


def test_test_operations_with_the_switch(monkeypatch):
    monkeypatch.setenv(testhooks.ENV, "1")
    assert operations.get("test.sleep").check({"seconds": 0}) == {"seconds": 0}
    with pytest.raises(operations.InvalidData):
        operations.get("test.sleep").check({"seconds": 61})
    with pytest.raises(operations.InvalidData):
        operations.get("test.nope")


def test_production_table_has_no_test_operations():
    assert not [name for name in operations.OPERATIONS if name.startswith("test.")]
