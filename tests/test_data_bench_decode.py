"""``benchmarks/decode.py --what seek`` runs and records what it measured (tiny settings)."""

import json


def test_the_seek_benchmark_records_each_file_and_clip(tmp_path):
    from benchmarks.decode import SEEK_FILES, main

    assert main(["--what", "seek", "--repeats", "1", "--seek-seconds", "2", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("decode-*.json")
    seek = json.loads(result.read_text())["seek"]
    assert seek["config"]["frames"] == 50 and seek["git"] is not None
    rows = seek["results"]
    assert [r["file"] for r in rows[::3]] == [name for name, _ in SEEK_FILES]
    by_file = {r["file"]: r for r in rows if r["clip"] == "test T=8"}
    assert by_file["kinetics_gop50.avi"]["addressing"] == "sequential"
    assert by_file["kinetics_gop25.mp4"]["addressing"] == "timestamps"
    for row in rows:
        assert row["decode all"]["frames_decoded"] == 50
        assert row["loader"]["frames_decoded"] <= row["sequential"]["frames_decoded"] + 1
        assert all(row[m]["ms"] > 0 for m in ("loader", "sequential", "decode all"))
    # A key frame every 25 of 50 frames: the test clip's first frames need not the second GOP.
    assert by_file["kinetics_gop25.mp4"]["keyframes"] == 2
