"""The peak-memory probe measures one phase, not the whole process."""

import sys

import pytest

from prost_lightning.peak_memory import peak_bytes, reset_peak

MB = 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the resettable high-water mark is Linux's")
def test_a_reset_forgets_an_earlier_larger_phase():
    block = bytearray(200 * MB)  # an earlier phase (e.g. evaluation before a fit)
    block[::4096] = b"x" * len(block[::4096])  # touch every page so it is resident
    del block
    earlier = peak_bytes()
    assert reset_peak() is True
    assert peak_bytes() < earlier - 100 * MB

    block = bytearray(50 * MB)  # the phase being measured
    block[::4096] = b"x" * len(block[::4096])
    assert peak_bytes() >= 50 * MB
    del block


def test_peak_is_positive_without_a_device():
    assert peak_bytes(None) > 0
