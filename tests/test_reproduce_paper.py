"""The reproduction of Sakamoto & Sato (2024): verdict logic on hand-made tables, and --quick end to end."""
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import _repro_analysis as A
from benchmarks import reproduce_paper as R


# ----------------------------------------------------------------------------- decide()
@pytest.mark.parametrize("per_seed, blockers, expected", [
    ([True, True, True], [], A.HOLDS),
    ([False, False, False], [], A.FAILS),
    ([True, False, True], [], A.CANNOT_TELL),       # seeds disagree
    ([True, None, True], [], A.CANNOT_TELL),        # one seed cannot be judged
    ([True, True], [], A.CANNOT_TELL),              # fewer than 3 seeds
    ([True, True, True], ["run x not converged"], A.CANNOT_TELL),
    ([False, False, False], ["run x not converged"], A.CANNOT_TELL),
])
def test_decide(per_seed, blockers, expected):
    verdict, reason = A.decide(per_seed, 3, blockers)
    assert verdict == expected
    assert reason


# ----------------------------------------------------------------------------- layer_stats()
def _est_rows(values, std, null_sd=0.001, protocol="recommended", layer="conv1", target="x", variant="lw-linear",
              seed=0, n_batches=4):
    rows = []
    for ep, v in enumerate(values):
        rows.append({"run": f"r_{variant}_{seed}", "group": f"ds/lenet5/{variant}", "dataset": "ds", "model": "lenet5",
                     "variant": variant, "seed": seed, "protocol": protocol, "layer": layer, "layer_index": 1,
                     "target": target, "epoch": ep, "value": v, "null_mean": 0.0, "null_sd": null_sd,
                     "max_value": 1.0, "adjusted": v, "std": std, "n_batches": n_batches, "batch_size": 500})
    return rows


def test_layer_stats_roles():
    # rises 0.1 -> 0.5 and falls to 0.3 with se 0.01: compresses (drop 0.2 / 0.014 sd >> 2)
    comp = _est_rows([0.1, 0.3, 0.5, 0.4, 0.3], std=0.02)
    # same shape but noise sd 0.2 per batch (se 0.1): the drop is within 2 sd -> keeps
    noisy = _est_rows([0.1, 0.3, 0.5, 0.4, 0.3], std=0.2, layer="conv2")
    # a flat trajectory at chance (z = 0.5): role chance
    flat = _est_rows([0.0005, 0.0004, 0.0005, 0.0003, 0.0002], std=0.00001, layer="fc1")
    st = A.layer_stats(pd.DataFrame(comp + noisy + flat)).set_index("layer")
    assert st.loc["conv1", "role"] == "compresses" and st.loc["conv1", "rises"]
    assert st.loc["conv1", "drop_in_sd"] == pytest.approx(0.2 / math.hypot(0.01, 0.01))
    assert st.loc["conv2", "role"] == "keeps" and not st.loc["conv2", "compresses"]
    assert st.loc["fc1", "role"] == "chance"


def test_fall_from_initialisation_is_not_compression():
    # highest at the random initialisation, flat afterwards: not a fall during training
    st = A.layer_stats(pd.DataFrame(_est_rows([0.8, 0.4, 0.41, 0.4, 0.4], std=0.02))).iloc[0]
    assert st["max_at_init"] and st["peak_epoch"] == 2
    assert st["role"] == "keeps" and st["drop_incl_init_in_sd"] > 10


def test_paper_protocol_subtracts_chance():
    rows = _est_rows([5.0, 6.0, 7.0], std=1.0, protocol="paper", n_batches=16)
    for r in rows:
        r["null_mean"], r["null_sd"] = 4.0, 0.01
    df = A.chance_corrected(pd.DataFrame(rows))
    assert np.allclose(df["v"], [1.0, 2.0, 3.0])
    assert np.allclose(df["se"], 0.25)  # std / sqrt(n_batches) > null sd


# ----------------------------------------------------------------------------- Judge on hand-made tables
def _runs(acc):
    rows = []
    for (variant, seed), a in acc.items():
        rows.append({"run": f"{variant}{seed}", "group": f"ds/lenet5/{variant}", "dataset": "ds", "model": "lenet5",
                     "variant": variant, "seed": seed, "epochs": 30, "n_test": 10000, "num_classes": 10,
                     "final_test_acc": a, "final_train_acc": 0.99, "plateau": a, "ratio": 1.0, "converged": True})
    return pd.DataFrame(rows)


def _judge(runs, stats=None):
    cfg = R.ReproConfig(hard_dataset="ds")
    return A.Judge(cfg, runs, stats if stats is not None else pd.DataFrame(), pd.DataFrame())


def test_accuracy_claim_holds_only_beyond_two_null_sd():
    # null sd of a difference of two ~0.88 accuracies on 10,000 images: ~0.0046
    big = {("e2e", s): 0.90 for s in range(3)} | {("lw-linear", s): 0.87 for s in range(3)}
    small = {("e2e", s): 0.882 for s in range(3)} | {("lw-linear", s): 0.880 for s in range(3)}
    mixed = {("e2e", 0): 0.90, ("e2e", 1): 0.90, ("e2e", 2): 0.881} | {("lw-linear", s): 0.88 for s in range(3)}
    for acc, expected in ((big, A.HOLDS), (small, A.FAILS), (mixed, A.CANNOT_TELL)):
        j = _judge(_runs(acc))
        j.claim_a()
        (v,) = [x for x in j.verdicts if x["claim"] == "a1"]
        assert v["verdict"] == expected, v
        eff = np.array(v["statistic"]["per_seed"])
        sd0 = np.array(v["statistic"]["null_sd"])
        assert list(eff > 2 * sd0) == v["per_seed_holds"]


def test_unconverged_run_blocks_a_holding_claim():
    runs = _runs({("e2e", s): 0.90 for s in range(3)} | {("lw-linear", s): 0.80 for s in range(3)})
    runs.loc[runs["run"] == "lw-linear1", ["converged", "ratio"]] = (False, 0.9)
    j = _judge(runs)
    j.claim_a()
    assert j.verdicts[0]["verdict"] == A.CANNOT_TELL
    assert "not converged" in j.verdicts[0]["reason"]


def test_first_layer_claim_b():
    runs = _runs({(v, s): 0.88 for v in ("e2e", "lw-linear") for s in range(3)})
    rows = []
    for s in range(3):
        for proto in ("paper", "recommended"):
            rows += _est_rows([0.1, 0.5, 0.3], std=0.01, variant="lw-linear", seed=s, protocol=proto)  # rise + fall
            rows += _est_rows([0.1, 0.4, 0.5], std=0.01, variant="e2e", seed=s, protocol=proto)        # keeps rising
    j = _judge(runs, A.layer_stats(pd.DataFrame(rows)))
    j.claim_b()
    assert [v["verdict"] for v in j.verdicts] == [A.HOLDS, A.HOLDS]
    # now E2E falls too in one seed: the statement fails there -> seeds disagree
    rows = [r for r in rows if not (r["variant"] == "e2e" and r["seed"] == 2)]
    for proto in ("paper", "recommended"):
        rows += _est_rows([0.1, 0.5, 0.3], std=0.01, variant="e2e", seed=2, protocol=proto)
    j = _judge(runs, A.layer_stats(pd.DataFrame(rows)))
    j.claim_b()
    assert [v["verdict"] for v in j.verdicts] == [A.CANNOT_TELL, A.CANNOT_TELL]
    assert j.verdicts[0]["per_seed_holds"] == [True, True, False]


# ----------------------------------------------------------------------------- --quick end to end
def test_quick_end_to_end(tmp_path: Path):
    out, work = tmp_path / "out", tmp_path / "runs"
    t0 = time.perf_counter()
    assert R.main(["--quick", "--out", str(out), "--work", str(work), "--no-figures"]) == 0
    first = time.perf_counter() - t0
    doc = json.loads((out / "verdicts.json").read_text())
    verdicts = doc["verdicts"]
    assert {v["claim"] for v in verdicts} == set(A.CLAIMS)
    runs = pd.read_csv(out / "runs.csv").set_index("run")
    for v in verdicts:
        for key in ("claim", "setting", "verdict", "statistic", "seeds", "epochs", "test_acc"):
            assert key in v, (key, v)
        assert v["verdict"] in A.VERDICTS
        assert len(v["seeds"]) == 2 and len(v["per_seed_holds"]) == 2
        # the verdict follows from the per-seed outcomes and the convergence of the runs involved
        unconverged = [g for g in v["runs"] for s in v["seeds"]
                       if not bool(runs.loc[f"{g.replace('/', '_')}_s{s}", "converged"])]
        expected, _ = A.decide(v["per_seed_holds"], 2, ["x"] if unconverged else [])
        assert v["verdict"] == expected, v
        for var, accs in v["test_acc"].items():
            assert all(0.0 <= a <= 1.0 for a in accs)
    # accuracy statistics are recomputable from runs.csv
    a1 = [v for v in verdicts if v["claim"] == "a1" and v["setting"] == "digits/lenet5"][0]
    for s, eff in zip(a1["seeds"], a1["statistic"]["per_seed"]):
        acc = runs["final_test_acc"]
        d = acc[f"digits_lenet5_e2e_s{s}"] - acc[f"digits_lenet5_lw-linear_s{s}"]
        assert eff == pytest.approx(d, abs=1e-3)
    assert "| claim | setting |" in (out / "findings.md").read_text()
    assert (out / "layer_stats.csv").exists() and (out / "trajectories.csv").exists()
    # resumable: a second call trains nothing and decides the same
    mtimes = {p: p.stat().st_mtime for p in work.glob("*/done.json")}
    t0 = time.perf_counter()
    assert R.main(["--quick", "--out", str(out), "--work", str(work), "--no-figures"]) == 0
    assert {p: p.stat().st_mtime for p in work.glob("*/done.json")} == mtimes
    assert time.perf_counter() - t0 < first
    again = json.loads((out / "verdicts.json").read_text())["verdicts"]
    assert [v["verdict"] for v in again] == [v["verdict"] for v in verdicts]
