"""A build lock left by a killed build: waited for with a warning, then a one-line error, never forever."""

from __future__ import annotations

import logging

import pytest
from torch.utils import cpp_extension

from streaming_vlm.train.build_lock import (
    BUILD_LOCK_WAIT_S,
    BuildLockError,
    build_lock_wait_s,
    extension_build_dir,
    wait_for_build_lock,
)


class FakeTime:
    """A clock that only sleeping moves; ``on_sleep(n)`` runs after the n-th sleep."""

    def __init__(self, on_sleep=None):
        self.now, self.sleeps, self.on_sleep = 1000.0, 0, on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        if self.on_sleep:
            self.on_sleep(self.sleeps)


@pytest.fixture
def lock(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.delenv("STREAMING_VLM_BUILD_LOCK_WAIT_S", raising=False)
    path = tmp_path / "deepspeed_shm_comm" / "lock"
    path.parent.mkdir()
    return path


@pytest.mark.parametrize("extensions_dir", [None, "custom"])
def test_the_build_directory_is_torchs(tmp_path, monkeypatch, extensions_dir):
    if extensions_dir is None:
        monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    else:
        monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / extensions_dir))
    # the oracle is torch's own (private) rule, the one cpp_extension.load builds under
    assert str(extension_build_dir("deepspeed_shm_comm")) == cpp_extension._get_build_directory(
        "deepspeed_shm_comm", False
    )


def test_no_lock_returns_at_once(lock):
    fake = FakeTime()
    wait_for_build_lock("deepspeed_shm_comm", 5, sleep=fake.sleep, clock=fake.clock)
    assert fake.sleeps == 0


def test_a_lock_that_goes_away_is_waited_for_with_one_warning(lock, caplog):
    lock.write_bytes(b"")
    fake = FakeTime(on_sleep=lambda n: lock.unlink() if n == 7 else None)  # a live build ends after 7 s
    with caplog.at_level(logging.INFO, logger="streaming_vlm.train.build_lock"):
        wait_for_build_lock("deepspeed_shm_comm", 60, sleep=fake.sleep, clock=fake.clock)
    assert fake.sleeps == 7
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(lock) in warnings[0].getMessage()


def test_a_lock_that_stays_is_a_one_line_error_naming_the_file(lock):
    lock.write_bytes(b"")
    fake = FakeTime()
    with pytest.raises(BuildLockError) as info:
        wait_for_build_lock("deepspeed_shm_comm", 30, sleep=fake.sleep, clock=fake.clock)
    message = str(info.value)
    assert "\n" not in message and str(lock) in message and "delete the file" in message
    assert info.value.exit_status == 1
    assert 30 <= fake.now - 1000.0 <= 31  # waited the whole timeout, then stopped
    assert lock.is_file()  # never deleted here: a live build elsewhere may own it


def test_the_wait_comes_from_the_environment(lock, monkeypatch):
    assert build_lock_wait_s() == BUILD_LOCK_WAIT_S == 300.0
    monkeypatch.setenv("STREAMING_VLM_BUILD_LOCK_WAIT_S", "12.5")
    assert build_lock_wait_s() == 12.5
    lock.write_bytes(b"")
    fake = FakeTime()
    with pytest.raises(BuildLockError):
        wait_for_build_lock("deepspeed_shm_comm", sleep=fake.sleep, clock=fake.clock)
    assert 12.5 <= fake.now - 1000.0 <= 13.5


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_wait_is_a_usage_error(monkeypatch, value):
    monkeypatch.setenv("STREAMING_VLM_BUILD_LOCK_WAIT_S", value)
    with pytest.raises(BuildLockError) as info:
        build_lock_wait_s()
    assert info.value.exit_status == 2 and "STREAMING_VLM_BUILD_LOCK_WAIT_S" in str(info.value)
