"""The method comparison table (benchmarks/method_table.py) on hand-made results."""

import json

from benchmarks import method_table as mt


def _run(root, name, adapter, acc):  # type: ignore[no-untyped-def]
    run = root / name
    run.mkdir()
    m = {"accuracy": acc, "ece": 0.125, "brier": 0.2, "auroc": None, "overconfident_ratio": 0.5}
    (run / "metrics.json").write_text(json.dumps(dict.fromkeys(mt.DATASETS, m)))
    (run / "run.json").write_text(json.dumps({"adapter": adapter}))
    return run


def test_table2_column_reads_the_run_or_the_base_model(tmp_path):
    base = _run(tmp_path, "base-direct", None, 0.5)
    grpo = _run(tmp_path, "grpo", "runs/grpo", 0.75)
    brier = _run(tmp_path, "cal-grpo-brier", "runs/cal-grpo-brier", 0.625)
    t2 = tmp_path / "table2"
    t2.mkdir()
    (t2 / "base.json").write_text(json.dumps({"share_p_gt_0.99": 0.0}))
    (t2 / "grpo.json").write_text(json.dumps({"share_p_gt_0.99": 0.934}))
    assert mt.table2_share(base, t2) == 0.0  # no adapter: the base model's rollouts
    assert mt.table2_share(grpo, t2) == 0.934
    assert mt.table2_share(brier, t2) is None  # not measured
    assert mt.table2_share(grpo, None) is None
    table = {r.name: {**mt.load(r), "table2_share_p_gt_0.99": mt.table2_share(r, t2)} for r in (base, grpo, brier)}
    rows = mt.markdown(table).splitlines()
    assert rows[0].count("|") == rows[1].count("|") == rows[2].count("|") == 6
    assert rows[3] == "| grpo | 75.0% / 12.5% / 0.200 / – / 50% | 75.0% / 12.5% / 0.200 / – / 50% | 93.4% | " + (
        mt._paper("grpo") + " |"
    )
    assert "| – |" in rows[4]
    mt.plot(table, tmp_path / "methods.png")
    assert (tmp_path / "methods.png").stat().st_size > 10_000


def test_points_on_each_other_share_one_label():
    groups = mt.nearby_groups({"grpo": (29.7, 69.9), "rlcr": (29.9, 69.9), "sft": (3.4, 70.8), "capo": (33.0, 52.4)})
    assert [names for names, _ in groups] == [["grpo", "rlcr"], ["sft"], ["capo"]]
    assert groups[0][1] == (29.7, 69.9)
