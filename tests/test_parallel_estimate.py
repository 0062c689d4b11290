"""Jobs of `infoplane estimate` on worker threads, worker processes, a Dask cluster and shards:
the table is the same as the serial one, value for value."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from infoplane.estimate import EstimateConfig, estimate_store, estimate_to_csv
from infoplane.parallel import parse_shard, shard

N = 120
VALUE_COLS = ["value", "std", "null_mean", "null_sd", "z", "p_value", "adjusted", "max_value", "baseline",
              "baseline_std"]
KEY = ["checkpoint", "layer", "target"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from _store_helpers import write_store

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, N)
    x = rng.normal(size=(N, 5))

    def layers(epoch):
        return {"a": np.eye(3)[y] * (epoch + 1) + rng.normal(size=(N, 3)), "b": rng.normal(size=(N, 4)),
                "c": x[:, :2] + 0.5 * epoch * rng.normal(size=(N, 2))}

    return write_store(tmp_path_factory.mktemp("par") / "s.h5", x, y, layers, epochs=range(3))


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a = a.sort_values(KEY).reset_index(drop=True)
    b = b.sort_values(KEY).reset_index(drop=True)
    assert list(a[KEY].itertuples(index=False)) == list(b[KEY].itertuples(index=False))
    for col in VALUE_COLS:
        np.testing.assert_array_equal(a[col].to_numpy(float), b[col].to_numpy(float), err_msg=col)


@pytest.mark.parametrize("kw", [dict(protocol="minibatch", batch_size=20),
                                dict(protocol="full"),
                                dict(estimator="hsic", batch_size=30, baseline=True)])
def test_worker_threads_give_the_serial_table(store, kw):
    serial = estimate_store(store, EstimateConfig(progress=False, **kw))
    threads = estimate_store(store, EstimateConfig(progress=False, jobs=2, backend="threads", **kw))
    assert list(threads.index) == list(serial.index)
    pd.testing.assert_frame_equal(threads.drop(columns="seconds"), serial.drop(columns="seconds"))


def test_worker_processes_give_the_serial_table(store):
    cfg = dict(batch_size=20, baseline=True, progress=False)
    serial = estimate_store(store, EstimateConfig(**cfg))
    procs = estimate_store(store, EstimateConfig(jobs=2, backend="processes", **cfg))
    assert list(procs[KEY].itertuples(index=False)) == list(serial[KEY].itertuples(index=False))  # store order
    _same(procs, serial)


def test_dask_cluster_gives_the_serial_table(store):
    distributed = pytest.importorskip("distributed")
    cfg = dict(batch_size=20, progress=False)
    serial = estimate_store(store, EstimateConfig(**cfg))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as cluster:
        got = estimate_store(store, EstimateConfig(scheduler=cluster.scheduler_address, **cfg))
    _same(got, serial)


def test_no_scheduler_at_the_address_is_a_clear_error(store, monkeypatch):
    pytest.importorskip("distributed")
    import infoplane.parallel

    monkeypatch.setattr(infoplane.parallel, "CONNECT_TIMEOUT_S", 1)
    with pytest.raises(ValueError, match="--scheduler"):
        estimate_store(store, EstimateConfig(batch_size=20, progress=False, scheduler="tcp://127.0.0.1:9"))


def test_shards_partition_the_jobs_and_concatenate_to_the_whole(store, tmp_path):
    whole = estimate_store(store, EstimateConfig(batch_size=20, progress=False))
    parts = [estimate_to_csv(store, tmp_path / f"part{i}.csv", EstimateConfig(batch_size=20, progress=False,
                                                                              shard=f"{i}/4"))
             for i in range(4)]
    tables = [pd.read_csv(p) for p in parts]
    assert sum(len(t) for t in tables) == len(whole)
    _same(pd.concat(tables), whole)


def test_merge_joins_the_shards_and_refuses_what_is_not_one_run(store, tmp_path):
    from infoplane.estimate import merge_estimates

    whole = estimate_store(store, EstimateConfig(batch_size=20, progress=False))
    parts = [estimate_to_csv(store, tmp_path / f"p{i}.csv", EstimateConfig(batch_size=20, progress=False,
                                                                          shard=f"{i}/3")) for i in range(3)]
    merged = pd.read_csv(merge_estimates(parts[::-1], tmp_path / "all.csv"))
    assert list(merged[KEY].itertuples(index=False)) == list(whole[KEY].itertuples(index=False))
    _same(merged, whole)
    with pytest.raises(ValueError, match=r"shard\(s\) 1/3 are missing"):
        merge_estimates([parts[0], parts[2]], tmp_path / "x.csv")
    with pytest.raises(ValueError, match="given twice"):
        merge_estimates([parts[0], parts[0], parts[1], parts[2]], tmp_path / "x.csv")
    import shutil

    shutil.copy(parts[0], tmp_path / "copy0.csv")
    with pytest.raises(ValueError, match="both shard 0/3"):
        merge_estimates([parts[0], tmp_path / "copy0.csv", parts[1], parts[2]], tmp_path / "x.csv")
    other = estimate_to_csv(store, tmp_path / "q.csv", EstimateConfig(batch_size=30, progress=False, shard="1/3"))
    with pytest.raises(ValueError, match="batch_size"):
        merge_estimates([parts[0], other, parts[2]], tmp_path / "x.csv")
    plain = estimate_to_csv(store, tmp_path / "plain.csv", EstimateConfig(batch_size=20, progress=False))
    with pytest.raises(ValueError, match="not one shard"):
        merge_estimates([plain], tmp_path / "x.csv")
    with pytest.raises(ValueError, match="is one of the inputs"):
        merge_estimates(parts, parts[0])
    assert not (tmp_path / "x.csv").exists()
    cli = subprocess.run([sys.executable, "-m", "infoplane", "merge", *map(str, parts), "--out",
                          str(tmp_path / "cli.csv")], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    _same(pd.read_csv(tmp_path / "cli.csv"), whole)
    bad = subprocess.run([sys.executable, "-m", "infoplane", "merge", str(parts[0]), "--out", str(tmp_path / "b.csv")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "missing" in bad.stderr and "Traceback" not in bad.stderr


def test_shard_spec():
    assert parse_shard("1/3") == (1, 3)
    assert shard(list(range(7)), "1/3") == [1, 4]
    assert shard([1, 2], None) == [1, 2]
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="jobs"):
        EstimateConfig(jobs=0).validate()
    with pytest.raises(ValueError, match="backend"):
        EstimateConfig(backend="gpu").validate()


def test_cli_jobs_and_shard(store, tmp_path):
    base = [sys.executable, "-m", "infoplane", "estimate", str(store), "--batch-size", "20", "--no-progress"]
    one = subprocess.run(base + ["--out", str(tmp_path / "one.csv")], capture_output=True, text=True)
    two = subprocess.run(base + ["--jobs", "2", "--out", str(tmp_path / "two.csv")], capture_output=True, text=True)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    _same(pd.read_csv(tmp_path / "two.csv"), pd.read_csv(tmp_path / "one.csv"))
    bad = subprocess.run(base + ["--shard", "4/4"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--shard" in bad.stderr and "Traceback" not in bad.stderr


def test_interrupt_on_worker_threads_keeps_only_whole_layers_and_resumes(store, tmp_path, monkeypatch):
    import infoplane.estimate as est

    cfg = EstimateConfig(batch_size=20, progress=False, jobs=2, backend="threads")
    ref = estimate_store(store, cfg)
    real, calls = est._Runner.result, {"n": 0}

    def flaky(self, reader, target, shuffled, cache=None):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return real(self, reader, target, shuffled, cache)

    monkeypatch.setattr(est._Runner, "result", flaky)
    out = tmp_path / "e.csv"
    with pytest.raises(KeyboardInterrupt):
        estimate_to_csv(store, out, cfg)
    assert not out.exists() and est.resume_path(out).exists()
    monkeypatch.setattr(est._Runner, "result", real)
    estimate_to_csv(store, out, cfg)
    _same(pd.read_csv(out), ref)
    assert not est.resume_path(out).exists()


def test_default_jobs_is_one_per_core_for_kernel_minibatch_only():
    from infoplane.parallel import cores, n_jobs

    assert n_jobs(EstimateConfig()) == cores()
    assert n_jobs(EstimateConfig(protocol="full")) == 1
    assert n_jobs(EstimateConfig(estimator="snn")) == 1
    assert n_jobs(EstimateConfig(jobs=3)) == 3


def test_low_rank_with_an_exact_input_side_is_the_same_on_threads_and_within_tolerance(tmp_path):
    """--tolerance on a store whose input side needs more than m/4 pivots: X falls back to its exact
    resolvent (computed once per store), layers stay low rank, values do not depend on the jobs."""
    from _store_helpers import write_store

    rng = np.random.default_rng(5)
    n = 240
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 40))

    def layers(epoch):
        return {"smooth": np.tanh(x[:, :1] * (epoch + 1)), "two": x[:, :2] + 0.01 * epoch}

    path = write_store(tmp_path / "fb.h5", x, y, layers, epochs=range(2))
    kw = dict(protocol="full", tolerance=1e-3, progress=False)
    serial = estimate_store(path, EstimateConfig(jobs=1, **kw))
    threads = estimate_store(path, EstimateConfig(jobs=2, backend="threads", **kw))
    pd.testing.assert_frame_equal(threads.drop(columns="seconds"), serial.drop(columns="seconds"))
    exact = estimate_store(path, EstimateConfig(protocol="full", progress=False))
    sx, ex = serial[serial.target == "x"], exact[exact.target == "x"]
    assert (sx.rank_target == ex.rank_target).all() and (sx.rank_z < n // 4).all()     # X exact, Z low rank
    gap = ex.value.to_numpy() - sx.value.to_numpy()
    assert (gap >= -1e-9).all() and (gap <= sx.error_bound.to_numpy() + 1e-9).all()
    assert (sx.error_bound <= 1e-3 * sx.value).all()
