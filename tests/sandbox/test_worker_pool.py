"""TimeoutPool: per-item deadlines kill only the overrunning worker; errors come back as outcomes."""

import time

import pytest

from metastone.sandbox.worker_pool import TimeoutPool


def slow_square(x):
    if x < 0:
        time.sleep(60)
    if x == 13:
        raise RuntimeError("unlucky")
    return x * x


def test_results_in_order_with_timeouts_and_errors():
    with TimeoutPool(workers=2, timeout_s=1.0) as pool:
        start = time.monotonic()
        outcomes = pool.map(slow_square, [1, -1, 2, 13, 3, -2, 4])
        assert time.monotonic() - start < 8
        assert [o.status for o in outcomes] == ["ok", "timeout", "ok", "error", "ok", "timeout", "ok"]
        assert [o.value for o in outcomes if o.ok] == [1, 4, 9, 16]
        assert "unlucky" in outcomes[3].error
        assert pool.timeouts == 2
        assert [o.value for o in pool.map(slow_square, [5, 6])] == [25, 36]


def test_empty_and_bad_arguments():
    with TimeoutPool(workers=1, timeout_s=1.0) as pool:
        assert pool.map(slow_square, []) == []
    with pytest.raises(ValueError, match="timeout_s"):
        TimeoutPool(timeout_s=0)
