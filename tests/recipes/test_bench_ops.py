"""``parazoo bench ops`` end to end on one quick case: the subprocess protocol, the paired timing and
the allocator setting reach the JSON (numbers are not checked: timings are never asserted)."""
import json

from parazoo.recipes.bench import ops
from parazoo.recipes.bench._measure import time_pairs


def test_time_pairs_alternates_and_counts():
    calls = []
    tf, tg = time_pairs(lambda: calls.append("f"), lambda: calls.append("g"), repeats=3, warmup=1)
    assert calls == ["f", "g"] * 4 and len(tf) == len(tg) == 3 and all(t >= 0 for t in tf + tg)


def test_bench_ops_quick_case_writes_paired_results(tmp_path, capsys):
    out = tmp_path / "ops.json"
    assert ops.main(["--quick", "--ops", "selective_scan", "--backends", "cpu", "--repeats", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["malloc"] == "keep"
    assert [r["shape"] for r in res["rows"]] == ["b1 dim1536 N16 L256", "b1 dim1536 N64 L256", "b1 dim1000 N16 L256"]
    for row in res["rows"]:
        assert row["backend"] == "cpu" and "error" not in row, row
        assert row["fwd_s"] > 0 and row["fwdbwd_s"] > 0 and row["fwdbwd_over_fwd"] > 0
        # the op's own memory (y is 1.5 MB here), not the imports of a first call (that read ~150 MB)
        assert 0 <= row["fwd_peak_mb"] < 50 and row["fwd_peak_mb"] <= row["fwdbwd_peak_mb"] < 100, row
    assert "freed memory kept" in capsys.readouterr().out
