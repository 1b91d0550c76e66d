"""Test-only operations: known only when registered (test code) or with OSAPITEST_HOOKS=1 at import."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from testkit import REPO

from osapi.domain import operations
from tests import testhooks


@pytest.fixture
def no_test_operations():
    was = operations.are_test_operations_enabled()
    operations.disable_test_operations()
    try:
        yield
    finally:
        if was:
            operations.enable_test_operations()


def test_test_operations_are_unknown_until_registered(no_test_operations, monkeypatch):
    monkeypatch.setenv(operations.TEST_HOOKS_ENV, "1")  # read once at import: setting it later does nothing
    for name in testhooks.OPERATIONS:
        with pytest.raises(operations.InvalidData) as info:
            operations.get(name)
        assert "unknown operation type" in str(info.value)
    operations.enable_test_operations()
    assert operations.get("test.sleep").check({"seconds": 0}) == {"seconds": 0}
    with pytest.raises(operations.InvalidData):
        operations.get("test.sleep").check({"seconds": 61})
    with pytest.raises(operations.InvalidData):
        operations.get("test.nope")
    operations.disable_test_operations()
    with pytest.raises(operations.InvalidData):
        operations.get("test.sleep")


@pytest.mark.parametrize("value, known", [("1", True), ("yes", False), (None, False)])
def test_the_switch_is_read_at_import(value, known):
    env = {k: v for k, v in os.environ.items() if k != operations.TEST_HOOKS_ENV}
    if value is not None:
        env[operations.TEST_HOOKS_ENV] = value
    code = ("from osapi.domain import operations\n"
            "try:\n    operations.get('test.sleep'); print('known')\n"
            "except operations.InvalidData:\n    print('unknown')\n")
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(REPO)}, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == ("known" if known else "unknown"), out.stderr


def test_a_process_with_test_operations_says_so_once(no_test_operations, caplog):
    import logging

    operations._warned.clear()
    operations.enable_test_operations()
    logger = logging.getLogger("osapi.test")
    with caplog.at_level("WARNING", logger="osapi.test"):
        operations.warn_if_test_operations(logger)
        operations.warn_if_test_operations(logger)
    assert caplog.text.count("test-only operations are enabled") == 1


def test_production_table_has_no_test_operations():
    assert not [name for name in operations.OPERATIONS if name.startswith("test.")]


@pytest.mark.parametrize("tag", ["../x", "a\nb", "a\x00b", "*", ">", "", "x" * 33, None, 3])
def test_the_recording_operation_refuses_a_tag_that_is_not_a_plain_word(tag):
    with pytest.raises(operations.InvalidData):
        testhooks.record_data({"tag": tag})
    assert testhooks.record_data({"tag": "ok-1"}) == {"tag": "ok-1"}
