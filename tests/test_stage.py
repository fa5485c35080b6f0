"""The stage contract: retries, isolation of failing samples as errors (not rejects), filters and their counted
reasons, declared keys enforced."""

import pyarrow as pa

from hoi_factory.datasets import drop_non_finite, rows_to_table
from hoi_factory.stage import Filter, MapStage, Reject, Stage, run_stages


def rows(n):
    return [{"sample_id": f"s{i}", "input_id": f"in{i}", "x": i} for i in range(n)]


class ExplodesOnSeven(Stage):
    """Fails any batch that contains x == 7, like a decoder hitting one corrupt file."""

    batch_size = 4

    def __init__(self):
        self.calls = 0

    def process(self, batch):
        self.calls += 1
        if any(r["x"] == 7 for r in batch):
            raise ValueError("cannot decode sample 7")
        return [{**r, "y": r["x"] * 2} for r in batch]


class FlakyOnce(Stage):
    """Fails the first time it sees each batch (a transient fault), then works."""

    batch_size = 5

    def __init__(self):
        self.seen = set()

    def process(self, batch):
        key = batch[0]["sample_id"]
        if key not in self.seen:
            self.seen.add(key)
            raise ConnectionError("transient")
        return batch


class OddFilter(Filter):
    def reason_to_drop(self, row):
        return "odd" if row["x"] % 2 else None


class SquareRows(MapStage):
    def process_row(self, row):
        if row["x"] == 4:
            return Reject.of(row, "four is not welcome")
        return {**row, "sq": row["x"] ** 2}


def test_a_failing_sample_is_isolated_as_an_error_while_the_rest_go_on():
    stage = ExplodesOnSeven()
    out = run_stages([stage], rows(10), retries=1)
    assert sorted(r["x"] for r in out.rows) == [0, 1, 2, 3, 4, 5, 6, 8, 9]
    assert all(r["y"] == 2 * r["x"] for r in out.rows)
    assert out.rejects == []  # an exception is not a filter's decision
    [error] = out.errors
    assert (error.stage, error.sample_id, error.input_id) == ("ExplodesOnSeven", "s7", "in7")
    assert error.error == "ValueError: cannot decode sample 7"
    assert "Traceback" in error.traceback and "raise ValueError" in error.traceback
    assert out.stats["ExplodesOnSeven"].errors == 1 and not out.stats["ExplodesOnSeven"].rejected


def test_a_failed_batch_is_retried_and_nothing_is_lost():
    out = run_stages([FlakyOnce()], rows(10), retries=1)
    assert [r["x"] for r in out.rows] == list(range(10)) and out.rejects == [] and out.errors == []


def test_without_retries_a_transient_fault_falls_back_to_single_samples():
    out = run_stages([FlakyOnce()], rows(3), retries=0)
    # The batch fails (first sight of s0); alone, s0 works, while s1 and s2 fail at their first sight and, with
    # no retries left, are counted as errors: accounted for, never silently lost.
    assert [r["x"] for r in out.rows] == [0]
    assert [(e.sample_id, e.error) for e in out.errors] == [("s1", "ConnectionError: transient"),
                                                            ("s2", "ConnectionError: transient")]


def test_filters_and_map_stages_count_reasons_in_a_funnel():
    out = run_stages([OddFilter(), SquareRows()], rows(10))
    assert [r["sq"] for r in out.rows] == [0, 4, 36, 64]
    assert out.stats["OddFilter"].to_dict()["rejected"] == {"odd": 5}
    assert (out.stats["OddFilter"].rows_in, out.stats["OddFilter"].rows_out) == (10, 5)
    assert out.stats["SquareRows"].rejected == {"four is not welcome": 1}
    assert len(out.rejects) == 6


class ForgetsItsKey(MapStage):
    makes = frozenset({"y"})

    def process_row(self, row):
        return row if row["x"] == 3 else {**row, "y": 1}


class ReturnsNothing(Stage):
    def process(self, batch):
        return []


def test_a_row_without_a_declared_key_is_an_error_not_a_silent_null():
    out = run_stages([ForgetsItsKey()], rows(5))
    assert [r["x"] for r in out.rows] == [0, 1, 2, 4]
    [error] = out.errors
    assert error.sample_id == "s3" and "declares it makes ['y'] but did not" in error.error


def test_a_stage_that_loses_rows_fails_every_row_as_an_error():
    out = run_stages([ReturnsNothing()], rows(3), retries=0)
    assert out.rows == [] and [e.sample_id for e in out.errors] == ["s0", "s1", "s2"]
    assert "returned list of 0 results for 1 rows" in out.errors[0].error  # isolated, still losing it


def test_rows_that_do_not_fit_the_schema_are_rejected_not_fatal():
    schema = pa.schema([("sample_id", pa.string()), ("value", pa.int64())])
    table, rejects = rows_to_table(
        [{"sample_id": "a", "value": 1}, {"sample_id": "b", "value": "not a number"}, {"sample_id": "c", "value": 3}],
        schema,
    )
    assert table.column("sample_id").to_pylist() == ["a", "c"]
    assert [r.sample_id for r in rejects] == ["b"] and rejects[0].reason == "output does not fit the dataset schema"


def test_non_finite_floats_are_found_at_any_list_depth_and_rejected():
    nan, inf = float("nan"), float("inf")
    table = pa.table({
        "sample_id": ["a", "b", "c", "d", "e"],
        "input_id": ["ia", "ib", "ic", "id", "ie"],
        "score": [1.0, None, 2.0, -inf, 3.0],  # a null is missing, not non-finite
        "points": [[[0.0, 1.0]], [[2.0, nan]], [], None, [[1.0], [inf]]],
        "label": ["x", "y", "z", "w", "v"],
    })
    kept, rejects = drop_non_finite(table)
    assert kept.column("sample_id").to_pylist() == ["a", "c"]
    assert [(r.sample_id, r.input_id, r.reason, r.detail) for r in rejects] == [
        ("b", "ib", "non-finite values", "points"), ("d", "id", "non-finite values", "score"),
        ("e", "ie", "non-finite values", "points")]
    kept, rejects = drop_non_finite(table, allowed=frozenset({"points"}))
    assert [r.sample_id for r in rejects] == ["d"] and kept.num_rows == 4
