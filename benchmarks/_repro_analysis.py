"""Statistics, verdicts, findings and figures of ``benchmarks/reproduce_paper.py``.

Everything here reads finished runs (``WORK/<run>/metrics.csv``, ``estimates_<protocol>.csv``,
``weights.csv``) and never trains, so ``--analyse-only`` can re-decide and redraw at any time.

Per (run, protocol, layer, target) trajectory over checkpoints (``layer_stats``):
  v_k = the chance-corrected value at checkpoint k: under the paper's protocol (m = 100) the raw
  minibatch-mean nHSIC minus its exact permutation-null mean (``value - null_mean``); under the
  recommended protocol (m = 500) ``adjusted`` = (value - null_mean) / (max_value - null_mean).
  se_k = max(null_sd_k, std_k / sqrt(n_batches_k)) on the same scale: the larger of the chance sd and
  the minibatch standard error of the mean. peak = argmax of v_k over the trained checkpoints
  (epoch >= 1): compression is a fall during training, not a fall from the random initialisation
  (under the adjusted scale an untrained network's layers are closest to the input, see
  ``max_at_init`` and ``drop_incl_init_in_sd``, which are reported but not used for verdicts).
  rise = v_peak - v_0 and drop = v_peak - v_last, each in units of the sd of the difference,
  sqrt(se_peak^2 + se_0^2) resp. sqrt(se_peak^2 + se_last^2).
  above chance: z_peak = (value - null_mean) / null_sd at the peak > threshold (2).
  role: "compresses" if above chance and drop > 2 sd, "keeps" if above chance and not, "chance" if
  the peak is not above chance (nothing to compress).

Per-seed decisions are combined into a verdict (``decide``): HOLDS when the statement holds in every
seed (beyond 2 null-sd where it asserts an effect), FAILS when it holds in none, CANNOT TELL when
the seeds disagree, a seed cannot be judged (e.g. a layer at chance), fewer than ``min_seeds`` seeds
finished, or a run of the comparison is not converged (final test accuracy < 95 % of its plateau).

Convergence (``convergence``): the plateau of a run's test accuracy is estimated by fitting
a - b exp(-epoch / tau) to its per-epoch test accuracy (epochs >= 1); plateau = max(fitted a, best
accuracy of the last quarter of the epochs); ratio = final / plateau. A run still rising has a
fitted plateau above its final accuracy; a run whose accuracy fell after an early best is not
undertrained and counts as converged (``fell_from_best`` flags it).
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

log = logging.getLogger("reproduce_paper.analysis")

HOLDS, FAILS, CANNOT_TELL = "HOLDS", "FAILS", "CANNOT TELL"
VERDICTS = (HOLDS, FAILS, CANNOT_TELL)
PROTOCOL_LABEL = {"paper": "paper protocol (m = {m}, value - chance)",
                  "recommended": "recommended protocol (m = {m}, adjusted)"}
VARIANT_LABEL = {"e2e": "E2E (CE)", "lw-linear": "layer-wise, linear heads", "lw-mlp": "layer-wise, MLP heads",
                 "lw-nhsic": "layer-wise + nHSIC term", "e2e-supcon": "E2E SupCon", "e2e-simclr": "E2E SimCLR",
                 "toy-lw": "layer-wise", "toy-e2e": "E2E"}
MODEL_LABEL = {"lenet5": "LeNet5", "mlp": "Toy-MLP", "vgg11_bn": "VGG11-BN (reduced)", "toy-linear": "toy W + Toy-MLP"}

CLAIMS: Dict[str, str] = {
    "a1": "E2E reaches a higher test accuracy than layer-wise training with linear heads",
    "a2": "the E2E - layer-wise gap shrinks with MLP heads (layer-wise MLP heads > linear heads)",
    "b": "layer-wise: the first layer's nHSIC(X;Z) rises then falls; E2E: it does not fall",
    "c1": "E2E: at least one middle layer compresses nHSIC(X;Z) while the last hidden layer keeps nHSIC(Y;Z)",
    "c2": "layer-wise: every hidden layer compresses nHSIC(X;Z)",
    "d": "layer-role differentiation: E2E hidden layers split into compressing and non-compressing ones, "
         "layer-wise hidden layers all behave alike",
    "e1": "the nHSIC augmenting term (eq. 11, lambda = 0.05) removes layer-wise compression "
          "(no hidden layer compresses nHSIC(X;Z), where plain layer-wise has at least one)",
    "e2": "the nHSIC augmenting term does not raise test accuracy (gain not beyond 2 null-sd)",
    "e3": "E2E SupCon compresses nHSIC(X;Z) in every hidden layer",
    "e4": "E2E SimCLR compresses nHSIC(X;Z) in every hidden layer",
    "f": "toy example: layer-wise training collapses the second singular value of W, E2E does not",
}
SOURCE = {"a1": "Table 1, Fig. 5", "a2": "Fig. 5", "b": "Fig. 3b", "c1": "Figs. 6, 15-16", "c2": "Figs. 6, 15-16",
          "d": "title, sec. 5", "e1": "eq. 11, Fig. 10", "e2": "eq. 11", "e3": "Fig. 10", "e4": "Fig. 10",
          "f": "sec. 4.2, Fig. 4"}
#: Claims that need the final checkpoints to be converged (all of them here: final accuracy and
#: late compression are both statements about trained networks).
LATE = set(CLAIMS)


# ----------------------------------------------------------------------------- loading
def _num(df: pd.DataFrame, col: str) -> np.ndarray:
    return pd.to_numeric(df[col], errors="coerce").to_numpy(float) if col in df else np.full(len(df), np.nan)


def convergence(metrics: pd.DataFrame, fraction: float = 0.95) -> Dict[str, float]:
    """Final / plateau test accuracy of one run (module doc); also the final train accuracy."""
    from scipy.optimize import curve_fit

    m = metrics.sort_values("epoch")
    m = m[m["epoch"] >= 1]
    ep, acc = _num(m, "epoch"), _num(m, "test_acc")
    ok = np.isfinite(acc)
    ep, acc = ep[ok], acc[ok]
    if len(acc) == 0:
        return {"final_test_acc": math.nan, "final_train_acc": math.nan, "plateau": math.nan, "ratio": math.nan,
                "converged": False, "plateau_source": "none"}
    final = float(acc[-1])
    best = float(acc.max())
    a_fit, src = math.nan, "best observed"
    if len(acc) >= 4 and acc.max() > acc.min():
        try:
            popt, _ = curve_fit(lambda t, a, b, tau: a - b * np.exp(-t / tau), ep, acc,
                                p0=(best, best - float(acc[0]) + 1e-3, max(1.0, ep.max() / 4)),
                                bounds=([0.0, -1.0, 0.05], [1.0, 2.0, 10.0 * ep.max()]), maxfev=20000)
            a_fit = float(popt[0])
        except (RuntimeError, ValueError):
            a_fit = math.nan
    late = float(acc[ep >= 0.75 * ep.max()].max())
    plateau, src = late, "best of the last quarter"
    if math.isfinite(a_fit) and a_fit > late:
        plateau, src = a_fit, "fit a - b exp(-t/tau)"
    ratio = final / plateau if plateau > 0 else math.nan
    train = _num(m, "train_acc")
    return {"final_test_acc": final, "final_train_acc": float(train[-1]) if len(train) else math.nan,
            "best_test_acc": best, "plateau": plateau, "plateau_source": src, "ratio": ratio,
            "converged": bool(math.isfinite(ratio) and ratio >= fraction),
            "fell_from_best": bool(final < fraction * best)}


def load_runs(specs: Sequence[Any], work: Path, fraction: float) -> pd.DataFrame:
    """One row per finished run: identity, epochs, accuracy, convergence and timing."""
    rows = []
    for s in specs:
        d = work / s.name
        done = d / "done.json"
        if not done.exists() or not (d / "metrics.csv").exists():
            continue
        rec = json.loads(done.read_text())
        met = pd.read_csv(d / "metrics.csv")
        conf = json.loads((d / "config.json").read_text()) if (d / "config.json").exists() else {}
        ds = (conf.get("resolved", {}) or {}).get("dataset", {}) or {}
        n_test = int(ds.get("test_size", 0) or 0)
        ts = s.train.get("test_subset")
        if ts:
            n_test = min(n_test, int(ts)) if n_test else int(ts)
        rows.append({"run": s.name, "group": s.group, "dataset": s.dataset, "model": s.model, "variant": s.variant,
                     "seed": s.seed, "epochs": int(met["epoch"].max()), "n_test": n_test,
                     "num_classes": int(ds.get("num_classes", 10) or 10), **convergence(met, fraction),
                     "train_s": rec.get("train_s", math.nan), "seconds": rec.get("seconds", math.nan)})
    return pd.DataFrame(rows)


def load_estimates(specs: Sequence[Any], work: Path) -> pd.DataFrame:
    """The estimates of every finished nHSIC run, both protocols, with run identity columns."""
    frames = []
    for s in specs:
        if s.measure != "nhsic" or not (work / s.name / "done.json").exists():
            continue
        for proto in ("paper", "recommended"):
            p = work / s.name / f"estimates_{proto}.csv"
            if not p.exists():
                continue
            df = pd.read_csv(p)
            df = df[df["status"] == "ok"].copy()
            df["run"], df["group"], df["variant"], df["seed"] = s.name, s.group, s.variant, s.seed
            df["model"], df["dataset"], df["protocol"] = s.model, s.dataset, proto
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def chance_corrected(df: pd.DataFrame) -> pd.DataFrame:
    """Adds ``v`` (chance-corrected value) and ``se`` (its sd) per row, by protocol (module doc)."""
    df = df.copy()
    val, nm, ns, mx = _num(df, "value"), _num(df, "null_mean"), _num(df, "null_sd"), _num(df, "max_value")
    std, nb, adj = _num(df, "std"), _num(df, "n_batches"), _num(df, "adjusted")
    se_raw = np.fmax(ns, np.where(nb > 1, std / np.sqrt(np.maximum(nb, 1)), np.nan))
    se_raw = np.where(np.isfinite(se_raw), se_raw, ns)
    rec = (df["protocol"] == "recommended").to_numpy()
    span = mx - nm
    df["v"] = np.where(rec, adj, val - nm)
    df["se"] = np.where(rec, se_raw / np.where(span > 0, span, np.nan), se_raw)
    df["z"] = np.where(ns > 0, (val - nm) / ns, np.nan)
    return df


def layer_stats(est: pd.DataFrame, threshold: float = 2.0) -> pd.DataFrame:
    """Rise, drop, chance margin and role per (run, protocol, layer, target) trajectory (module doc)."""
    if est.empty:
        return pd.DataFrame()
    df = chance_corrected(est)
    rows = []
    keys = ["run", "group", "dataset", "model", "variant", "seed", "protocol", "layer", "layer_index", "target"]
    for key, sub in df.groupby(keys, sort=False):
        sub = sub.sort_values("epoch")
        v, se, z = sub["v"].to_numpy(float), sub["se"].to_numpy(float), sub["z"].to_numpy(float)
        if len(v) < 3 or not np.isfinite(v).all():
            continue
        ep = sub["epoch"].to_numpy(int)
        trained = np.flatnonzero(ep >= 1)
        ip = int(trained[np.argmax(v[trained])]) if len(trained) else int(np.argmax(v))
        i_all = int(np.argmax(v))
        n_all = math.hypot(se[i_all], se[-1])
        n_rise = math.hypot(se[ip], se[0])
        n_drop = math.hypot(se[ip], se[-1])
        rise = float(v[ip] - v[0])
        drop = float(v[ip] - v[-1])
        above = bool(z[ip] > threshold)
        comp = above and drop > threshold * n_drop
        rows.append(dict(zip(keys, key)) | {
            "batch_size": int(sub["batch_size"].iloc[0]), "n_checkpoints": len(v),
            "first": float(v[0]), "peak": float(v[ip]), "last": float(v[-1]),
            "peak_epoch": int(sub["epoch"].iloc[ip]), "last_epoch": int(sub["epoch"].iloc[-1]),
            "rise": rise, "rise_sd": n_rise, "rise_in_sd": rise / n_rise if n_rise > 0 else math.nan,
            "drop": drop, "drop_sd": n_drop, "drop_in_sd": drop / n_drop if n_drop > 0 else math.nan,
            "max_at_init": bool(ep[i_all] == 0),
            "drop_incl_init_in_sd": float(v[i_all] - v[-1]) / n_all if n_all > 0 else math.nan,
            "z_peak": float(z[ip]), "z_last": float(z[-1]), "rises": bool(rise > threshold * n_rise),
            "compresses": bool(comp), "role": "compresses" if comp else ("keeps" if above else "chance")})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- verdict logic
def decide(per_seed: Sequence[Optional[bool]], min_seeds: int, blockers: Sequence[str] = (),
           why_none: Sequence[str] = (), pooled: Optional[bool] = None) -> Tuple[str, str]:
    """The verdict from per-seed outcomes (True: the statement holds in that seed, False: it does
    not, None: that seed cannot be judged). ``blockers``: reasons that make the claim untestable
    (e.g. unconverged runs). ``pooled``: for a single numeric effect, whether the mean effect over
    seeds is beyond 2 null-sd of the mean; when it is but no single seed's effect is, the test is
    underpowered and the verdict is CANNOT TELL instead of FAILS. Returns (verdict, reason)."""
    n = len(per_seed)
    if n < int(min_seeds):
        return CANNOT_TELL, f"{n} seed(s) finished, {min_seeds} needed"
    if blockers:
        return CANNOT_TELL, "; ".join(blockers)
    if any(x is None for x in per_seed):
        k = sum(x is None for x in per_seed)
        return CANNOT_TELL, f"{k} of {n} seeds cannot be judged" + (f" ({'; '.join(why_none)})" if why_none else "")
    k = sum(bool(x) for x in per_seed)
    if k == n:
        return HOLDS, f"holds in all {n} seeds"
    if k == 0 and pooled:
        return CANNOT_TELL, (f"no single seed beyond 2 null-sd, but the mean over the {n} seeds is beyond 2 null-sd of "
                             "the mean: underpowered")
    if k == 0:
        return FAILS, f"holds in none of {n} seeds"
    return CANNOT_TELL, f"holds in {k} of {n} seeds"


def _msd(xs: Iterable[float]) -> Dict[str, float]:
    a = np.asarray([x for x in xs if x is not None and math.isfinite(float(x))], float)
    return {"mean": float(a.mean()) if len(a) else math.nan,
            "sd": float(a.std(ddof=1)) if len(a) >= 2 else math.nan}


def _r(x: Any, nd: int = 4) -> Any:
    if isinstance(x, float):
        return None if not math.isfinite(x) else float(f"{x:.{nd}g}")
    if isinstance(x, dict):
        return {k: _r(v, nd) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_r(v, nd) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _r(float(x), nd) if isinstance(x, np.floating) else int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x



def _every_layer_compresses(lx: "pd.DataFrame", seed: int, who: str = ""
                            ) -> Tuple[Optional[bool], Optional[str], Optional[float], Optional[float]]:
    """One seed of an 'every hidden layer compresses' statement: (verdict or None when undecidable,
    the reason when undecidable, fraction of layers compressing, smallest peak z)."""
    if lx.empty:
        return None, f"seed {seed}: no estimates", None, None
    frac, z = float(lx["compresses"].mean()), float(lx["z_peak"].min())
    if (lx["role"] == "chance").any():
        return None, f"seed {seed}: {who}{', '.join(lx[lx['role'] == 'chance']['layer'])} at chance", frac, z
    return bool(lx["compresses"].all()), None, frac, z

class Judge:
    """Evaluates every claim on the loaded tables."""

    def __init__(self, cfg: Any, runs: pd.DataFrame, stats: pd.DataFrame, weights: pd.DataFrame) -> None:
        self.cfg, self.runs, self.stats, self.weights = cfg, runs, stats, weights
        self.thr = float(cfg.threshold)
        self.verdicts: List[Dict[str, Any]] = []

    # -- helpers
    def run_rows(self, group: str) -> pd.DataFrame:
        return self.runs[self.runs["group"] == group].sort_values("seed") if len(self.runs) else self.runs

    def seeds(self, *groups: str) -> List[int]:
        sets = [set(self.run_rows(g)["seed"]) for g in groups]
        return sorted(set.intersection(*sets)) if sets else []

    def acc(self, group: str, seed: int) -> Tuple[float, int]:
        r = self.runs[(self.runs["group"] == group) & (self.runs["seed"] == seed)]
        return float(r["final_test_acc"].iloc[0]), int(r["n_test"].iloc[0])

    def blockers(self, groups: Sequence[str], seeds: Sequence[int]) -> List[str]:
        r = self.runs[self.runs["group"].isin(groups) & self.runs["seed"].isin(seeds)]
        bad = r[~r["converged"].astype(bool)]
        return [f"{x.run} not converged (final {x.final_test_acc:.3f} = {100 * x.ratio:.0f}% of plateau "
                f"{x.plateau:.3f})" for x in bad.itertuples()]

    def layers(self, group: str, seed: int, proto: str, target: str = "x", hidden: bool = True) -> pd.DataFrame:
        s = self.stats
        if s.empty:
            return s
        s = s[(s["group"] == group) & (s["seed"] == seed) & (s["protocol"] == proto) & (s["target"] == target)]
        if hidden:
            s = s[s["layer"] != "out"]
        return s.sort_values("layer_index")

    def accuracy_block(self, groups: Sequence[str], seeds: Sequence[int]) -> Dict[str, Any]:
        out: Dict[str, Any] = {"test_acc": {}, "train_acc": {}, "epochs": {}, "convergence_ratio": {}}
        for g in groups:
            r = self.run_rows(g)
            r = r[r["seed"].isin(seeds)]
            v = g.split("/")[-1]
            out["test_acc"][v] = [float(x) for x in r["final_test_acc"]]
            out["train_acc"][v] = [float(x) for x in r["final_train_acc"]]
            out["epochs"][v] = int(r["epochs"].max()) if len(r) else None
            out["convergence_ratio"][v] = [float(x) for x in r["ratio"]]
        return out

    def add(self, claim: str, setting: str, protocol: str, groups: Sequence[str], seeds: Sequence[int],
            per_seed: Sequence[Optional[bool]], statistic: Dict[str, Any], why_none: Sequence[str] = (),
            pooled: Optional[bool] = None) -> None:
        verdict, reason = decide(per_seed, self.cfg.min_seeds, self.blockers(groups, seeds) if claim in LATE else [],
                                 why_none, pooled)
        acc = self.accuracy_block(groups, seeds)
        self.verdicts.append(_r({
            "claim": claim, "statement": CLAIMS[claim], "source": SOURCE[claim], "setting": setting,
            "protocol": protocol, "verdict": verdict, "reason": reason, "statistic": statistic,
            "per_seed_holds": list(per_seed), "seeds": list(seeds), "epochs": acc["epochs"],
            "test_acc": acc["test_acc"], "train_acc": acc["train_acc"],
            "convergence_ratio": acc["convergence_ratio"], "runs": list(groups)}))

    def protocols(self) -> List[Tuple[str, str]]:
        return [("paper", f"m={self.cfg.m_paper}, value - chance"),
                ("recommended", f"m={self.cfg.m_recommended}, adjusted")]

    # -- (a) accuracy
    def claim_a(self) -> None:
        for (ds, model), _ in self.runs.groupby(["dataset", "model"]):
            base = f"{ds}/{model}"
            have = set(self.runs[(self.runs["dataset"] == ds) & (self.runs["model"] == model)]["variant"])
            if not {"e2e", "lw-linear"} <= have:
                continue
            pairs = [("a1", f"{base}/e2e", f"{base}/lw-linear")]
            if "lw-mlp" in have:
                pairs.append(("a2", f"{base}/lw-mlp", f"{base}/lw-linear"))
            for claim, ga, gb in pairs:
                seeds = self.seeds(ga, gb)
                eff, sd0, ok, margin = [], [], [], []
                for s in seeds:
                    pa, n = self.acc(ga, s)
                    pb, nb_ = self.acc(gb, s)
                    d = pa - pb
                    sd = math.sqrt(pa * (1 - pa) / n + pb * (1 - pb) / nb_)
                    eff.append(d)
                    sd0.append(sd)
                    ok.append(bool(d > self.thr * sd))
                    chance = 1.0 / 10
                    margin.append(min((pa - chance) / math.sqrt(pa * (1 - pa) / n),
                                      (pb - chance) / math.sqrt(pb * (1 - pb) / nb_)))
                name = "acc(E2E) - acc(layer-wise linear)" if claim == "a1" else \
                    "acc(layer-wise MLP heads) - acc(layer-wise linear heads)"
                stat = {"name": name, "per_seed": eff, **_msd(eff), "null_sd": sd0,
                        "null_sd_definition": "binomial sd of the accuracy difference on the test samples",
                        "effect_in_null_sd": [e / s if s > 0 else math.nan for e, s in zip(eff, sd0)],
                        "threshold_null_sd": self.thr, "chance_margin_sd": min(margin) if margin else math.nan,
                        "n_test": int(self.acc(ga, seeds[0])[1]) if seeds else 0}
                pooled_sd = math.sqrt(float(np.mean(np.square(sd0)))) / math.sqrt(len(sd0)) if sd0 else math.nan
                pooled = bool(np.mean(eff) > self.thr * pooled_sd) if sd0 else None
                stat["mean_effect_in_null_sd_of_mean"] = float(np.mean(eff)) / pooled_sd if sd0 else math.nan
                self.add(claim, base, "accuracy", [ga, gb], seeds, ok, stat, pooled=pooled)

    # -- (b) first layer rise-and-fall
    def claim_b(self) -> None:
        ds, model = self.cfg.hard_dataset, "lenet5"
        ge, gl = f"{ds}/{model}/e2e", f"{ds}/{model}/lw-linear"
        seeds = self.seeds(ge, gl)
        for proto, plabel in self.protocols():
            ok, why, lw_c, lw_r, e_c, zs = [], [], [], [], [], []
            for s in seeds:
                le, ll = self.layers(ge, s, proto), self.layers(gl, s, proto)
                if le.empty or ll.empty:
                    ok.append(None)
                    why.append(f"seed {s}: no estimates")
                    continue
                fe, fl = le.iloc[0], ll.iloc[0]
                lw_c.append(float(fl["drop_in_sd"]))
                lw_r.append(float(fl["rise_in_sd"]))
                e_c.append(float(fe["drop_in_sd"]))
                zs.append(min(float(fl["z_peak"]), float(fe["z_peak"])))
                if fl["role"] == "chance":
                    ok.append(None)
                    why.append(f"seed {s}: layer-wise {fl['layer']} peak at chance")
                    continue
                ok.append(bool(fl["rises"] and fl["compresses"] and not fe["compresses"]))
            layer = str(self.layers(gl, seeds[0], proto).iloc[0]["layer"]) if seeds and not self.stats.empty else "?"
            stat = {"name": f"{layer} nHSIC(X;Z): layer-wise drop peak->last, layer-wise rise first->peak, E2E drop "
                            "(each in sd of the difference)",
                    "per_seed": {"layerwise_drop_in_sd": lw_c, "layerwise_rise_in_sd": lw_r, "e2e_drop_in_sd": e_c},
                    "layerwise_drop": _msd(lw_c), "e2e_drop": _msd(e_c), "threshold_null_sd": self.thr,
                    "chance_margin_z_peak": min(zs) if zs else math.nan}
            self.add("b", f"{ds}/{model}", plabel, [ge, gl], seeds, ok, stat, why)

    # -- (c) IB signature in E2E, uniform compression in layer-wise
    def claim_c(self) -> None:
        ds = self.cfg.hard_dataset
        for model in ("vgg11_bn", "lenet5"):
            ge, gl = f"{ds}/{model}/e2e", f"{ds}/{model}/lw-linear"
            seeds = self.seeds(ge, gl)
            if not seeds:
                continue
            for proto, plabel in self.protocols():
                ok1, why1, n_mid, y_drop, zs1 = [], [], [], [], []
                ok2, why2, n_lw, zs2 = [], [], [], []
                for s in seeds:
                    hx = self.layers(ge, s, proto, "x")
                    hy = self.layers(ge, s, proto, "y")
                    if len(hx) < 3 or hy.empty:
                        ok1.append(None)
                        why1.append(f"seed {s}: fewer than 3 hidden layers estimated")
                    else:
                        mid = hx.iloc[1:-1]
                        last_y = hy.iloc[-1]
                        n_mid.append(int(mid["compresses"].sum()) / len(mid))
                        y_drop.append(float(last_y["drop_in_sd"]))
                        zs1.append(float(min(mid["z_peak"].min(), last_y["z_peak"])))
                        if last_y["role"] == "chance":
                            ok1.append(None)
                            why1.append(f"seed {s}: E2E last hidden layer's nHSIC(Y;Z) at chance")
                        else:
                            ok1.append(bool(mid["compresses"].any() and not last_y["compresses"]))
                    ok, why, frac, z = _every_layer_compresses(self.layers(gl, s, proto, "x"), s, "layer-wise ")
                    ok2.append(ok)
                    why2 += [why] if why else []
                    n_lw += [frac] if frac is not None else []
                    zs2 += [z] if z is not None else []
                stat1 = {"name": "E2E: fraction of middle hidden layers compressing nHSIC(X;Z); last hidden layer's "
                                 "nHSIC(Y;Z) drop in sd", "per_seed": {"middle_fraction_compressing": n_mid,
                                                                       "last_hidden_y_drop_in_sd": y_drop},
                         "middle_fraction": _msd(n_mid), "y_drop": _msd(y_drop), "threshold_null_sd": self.thr,
                         "chance_margin_z_peak": min(zs1) if zs1 else math.nan,
                         "same_test_on_layerwise_runs": self._signature(gl, seeds, proto)}
                stat2 = {"name": "layer-wise: fraction of hidden layers compressing nHSIC(X;Z)",
                         "per_seed": n_lw, **_msd(n_lw), "threshold_null_sd": self.thr,
                         "chance_margin_z_peak": min(zs2) if zs2 else math.nan}
                self.add("c1", f"{ds}/{model}", plabel, [ge], seeds, ok1, stat1, why1)
                self.add("c2", f"{ds}/{model}", plabel, [gl], seeds, ok2, stat2, why2)

    def _signature(self, group: str, seeds: Sequence[int], proto: str) -> List[Optional[bool]]:
        """The c1 statement evaluated on another configuration (reported beside c1, not part of it)."""
        res: List[Optional[bool]] = []
        for s in seeds:
            hx, hy = self.layers(group, s, proto, "x"), self.layers(group, s, proto, "y")
            if len(hx) < 3 or hy.empty or hy.iloc[-1]["role"] == "chance":
                res.append(None)
            else:
                res.append(bool(hx.iloc[1:-1]["compresses"].any() and not hy.iloc[-1]["compresses"]))
        return res

    # -- (d) differentiation
    def claim_d(self) -> None:
        ds = self.cfg.hard_dataset
        for model in ("lenet5", "mlp", "vgg11_bn"):
            ge, gl = f"{ds}/{model}/e2e", f"{ds}/{model}/lw-linear"
            seeds = self.seeds(ge, gl)
            if not seeds:
                continue
            for proto, plabel in self.protocols():
                ok, why, fe, fl, spe, spl = [], [], [], [], [], []
                for s in seeds:
                    le = self.layers(ge, s, proto)
                    ll = self.layers(gl, s, proto)
                    ke, kl = le[le["role"] != "chance"], ll[ll["role"] != "chance"]
                    if len(ke) < 2 or len(kl) < 2:
                        ok.append(None)
                        why.append(f"seed {s}: fewer than 2 hidden layers above chance")
                        continue
                    fe.append(float(ke["compresses"].mean()))
                    fl.append(float(kl["compresses"].mean()))
                    spe.append(float(ke["drop_in_sd"].std(ddof=1)))
                    spl.append(float(kl["drop_in_sd"].std(ddof=1)))
                    e_diff = ke["role"].nunique() == 2
                    l_unif = kl["role"].nunique() == 1
                    ok.append(bool(e_diff and l_unif))
                stat = {"name": "fraction of hidden layers (above chance) compressing nHSIC(X;Z), E2E vs layer-wise "
                                "(differentiated: strictly between 0 and 1; uniform: 0 or 1); sd across layers of the "
                                "drop in sd units",
                        "per_seed": {"e2e_fraction": fe, "layerwise_fraction": fl, "e2e_drop_spread": spe,
                                     "layerwise_drop_spread": spl},
                        "e2e_fraction": _msd(fe), "layerwise_fraction": _msd(fl), "threshold_null_sd": self.thr}
                self.add("d", f"{ds}/{model}", plabel, [ge, gl], seeds, ok, stat, why)

    # -- (e) nHSIC term, contrastive losses
    def claim_e(self) -> None:
        ds, model = self.cfg.hard_dataset, "lenet5"
        base = f"{ds}/{model}"
        gl, gn = f"{base}/lw-linear", f"{base}/lw-nhsic"
        seeds = self.seeds(gl, gn)
        if seeds:
            for proto, plabel in self.protocols():
                ok, why, nl, nn_ = [], [], [], []
                for s in seeds:
                    ll, ln = self.layers(gl, s, proto), self.layers(gn, s, proto)
                    if ll.empty or ln.empty:
                        ok.append(None)
                        why.append(f"seed {s}: no estimates")
                        continue
                    nl.append(int(ll["compresses"].sum()))
                    nn_.append(int(ln["compresses"].sum()))
                    if nl[-1] == 0:
                        ok.append(None)
                        why.append(f"seed {s}: plain layer-wise compresses no layer (nothing to remove)")
                    else:
                        ok.append(bool(nn_[-1] == 0))
                stat = {"name": "hidden layers compressing nHSIC(X;Z): layer-wise + nHSIC term vs plain layer-wise",
                        "per_seed": {"with_term": nn_, "plain": nl}, "threshold_null_sd": self.thr}
                self.add("e1", base, plabel, [gl, gn], seeds, ok, stat, why)
            gain, sd0, ok = [], [], []
            for s in seeds:
                pn, n = self.acc(gn, s)
                pl, n2 = self.acc(gl, s)
                sd = math.sqrt(pn * (1 - pn) / n + pl * (1 - pl) / n2)
                gain.append(pn - pl)
                sd0.append(sd)
                ok.append(bool(pn - pl <= self.thr * sd))
            stat = {"name": "acc(layer-wise + nHSIC term) - acc(layer-wise)", "per_seed": gain, **_msd(gain),
                    "null_sd": sd0, "effect_in_null_sd": [g / s for g, s in zip(gain, sd0)],
                    "threshold_null_sd": self.thr}
            self.add("e2", base, "accuracy", [gl, gn], seeds, ok, stat)
        for claim, v in (("e3", "e2e-supcon"), ("e4", "e2e-simclr")):
            g = f"{base}/{v}"
            seeds = self.seeds(g)
            if not seeds:
                continue
            for proto, plabel in self.protocols():
                ok, why, frac, zs = [], [], [], []
                for s in seeds:
                    o, w, f, z = _every_layer_compresses(self.layers(g, s, proto), s)
                    ok.append(o)
                    why += [w] if w else []
                    frac += [f] if f is not None else []
                    zs += [z] if z is not None else []
                stat = {"name": "fraction of hidden layers compressing nHSIC(X;Z)", "per_seed": frac, **_msd(frac),
                        "threshold_null_sd": self.thr, "chance_margin_z_peak": min(zs) if zs else math.nan}
                self.add(claim, base, plabel, [g], seeds, ok, stat, why)

    # -- (f) toy rank collapse
    def claim_f(self) -> None:
        if self.weights.empty:
            return
        gl, ge = "toy-rings/toy-linear/toy-lw", "toy-rings/toy-linear/toy-e2e"
        seeds = self.seeds(gl, ge)
        ok, rl, re_, sd0 = [], [], [], []
        for s in seeds:
            vals = {}
            for g in (gl, ge):
                w = self.weights[(self.weights["group"] == g) & (self.weights["seed"] == s)].sort_values("epoch")
                r = w["s2_over_s1"].to_numpy(float)
                tail = r[-max(3, len(r) // 3):]
                vals[g] = (float(r[-1]), float(np.std(tail, ddof=1)) if len(tail) >= 2 else math.nan)
            d = vals[ge][0] - vals[gl][0]
            sd = math.hypot(vals[ge][1], vals[gl][1])
            rl.append(vals[gl][0])
            re_.append(vals[ge][0])
            sd0.append(sd)
            ok.append(bool(d > self.thr * sd) if math.isfinite(sd) else None)
        stat = {"name": "s2/s1 of W at the last epoch, E2E minus layer-wise",
                "per_seed": {"layerwise_s2_over_s1": rl, "e2e_s2_over_s1": re_},
                "layerwise": _msd(rl), "e2e": _msd(re_), "null_sd": sd0,
                "null_sd_definition": "sd of s2/s1 over the last third of the epochs (both runs, combined)",
                "threshold_null_sd": self.thr}
        self.add("f", "toy-rings/toy-linear", "weights", [gl, ge], seeds, ok, stat)

    def all(self) -> List[Dict[str, Any]]:
        for f in (self.claim_a, self.claim_b, self.claim_c, self.claim_d, self.claim_e, self.claim_f):
            if len(self.runs):
                f()
        order = list(CLAIMS)
        self.verdicts.sort(key=lambda v: (order.index(v["claim"]), v["setting"], v["protocol"]))
        return self.verdicts


# ----------------------------------------------------------------------------- output
def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _f(x: Any, nd: int = 3) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if not math.isfinite(x) else f"{x:.{nd}g}"


def summarise_statistic(v: Dict[str, Any]) -> str:
    """One line: the per-seed effect (and its null sd where there is one)."""
    st = v["statistic"]
    ps = st.get("per_seed")

    def seq(xs: Sequence[Any], nd: int = 3) -> str:
        return "[" + ", ".join(_f(x, nd) for x in xs) + "]"

    if isinstance(ps, dict):
        parts = [f"{k.replace('_', ' ')} {seq(x)}" for k, x in ps.items()]
        s = "; ".join(parts)
    else:
        s = f"{seq(ps)} (mean {_f(st.get('mean'))} ± {_f(st.get('sd'), 2)})"
    if "null_sd" in st:
        s += f"; null sd {seq(st['null_sd'], 2)}"
    cm = st.get("chance_margin_z_peak", st.get("chance_margin_sd"))
    if cm is not None:
        s += f"; chance margin z ≥ {_f(cm)}"
    return s


def verdict_table(verdicts: Sequence[Dict[str, Any]]) -> str:
    """A markdown table of the verdicts (printed at the end of a run and used in findings.md)."""
    lines = ["| claim | setting | protocol | verdict | statistic (per seed) | why |", "|---|---|---|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v['claim']} | {v['setting']} | {v['protocol']} | **{v['verdict']}** | "
                     f"{summarise_statistic(v)} | {v['reason']} |")
    return "\n".join(lines)


def accuracy_table(runs: pd.DataFrame) -> str:
    """Per configuration: test / train accuracy and convergence over seeds."""
    if runs.empty:
        return "(no finished runs)"
    lines = ["| dataset | model | training | seeds | epochs | test acc (mean ± sd) | best test acc during training | "
             "train acc | final / plateau (min) | converged |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (ds, model, var), r in runs.groupby(["dataset", "model", "variant"], sort=True):
        ta = _msd(r["final_test_acc"])
        tr = _msd(r["final_train_acc"])
        lines.append(f"| {ds} | {MODEL_LABEL.get(model, model)} | {VARIANT_LABEL.get(var, var)} | {len(r)} | "
                     f"{int(r['epochs'].max())} | {ta['mean']:.3f} ± {_f(ta['sd'], 2)} | "
                     f"{r['best_test_acc'].mean():.3f} | "
                     f"{tr['mean']:.3f} | "
                     f"{r['ratio'].min():.3f} | {int(r['converged'].sum())}/{len(r)} |")
    return "\n".join(lines)


NOTES: Dict[str, str] = {
    "a1": "accuracy after the paper's schedule compressed into the epochs above; null sd = binomial sd of the "
          "difference on the test images",
    "a2": "the MLP head has one hidden layer of 512 units (F.1.1)",
    "b": "the first layer is conv1; 'rises' = from the initialisation to the highest trained checkpoint; under "
         "the adjusted scale an untrained layer is already close to the input (random features keep its "
         "geometry), so a first layer whose value only falls from initialisation does not count as rising",
    "c1": "middle layers = hidden layers other than the first and the last; the last hidden layer is the input of "
          "the classifier",
    "c2": "a hidden layer whose peak is at chance makes the seed undecidable",
    "d": "roles are taken from the per-layer compression verdicts; layers at chance are left out",
    "e1": "undecidable in a seed where plain layer-wise training compresses no layer",
    "e2": "holds in a seed unless the term raises accuracy by more than 2 null-sd",
    "e3": "SupCon on two noise-and-shift views of each image (grayscale data), accuracy from a linear probe",
    "e4": "SimCLR as e3, without labels",
    "f": "null sd = fluctuation of s2/s1 over the last third of the epochs",
}

_PROTO_SHORT = {"accuracy": "", "weights": ""}


def _short(v: Dict[str, Any]) -> str:
    """The verdict's reason and its per-seed statistic, for the claim-by-claim outcome."""
    st = v["statistic"]
    if v["protocol"] == "accuracy":
        eff = st.get("effect_in_null_sd", [])
        return (f"{v['reason']}; effect {_f(st.get('mean'))} ± {_f(st.get('sd'), 2)}, per seed "
                f"{', '.join(_f(e, 2) for e in eff)} null-sd")
    return f"{v['reason']}; {summarise_statistic(v)}"


def in_short(verdicts: Sequence[Dict[str, Any]]) -> List[str]:
    """Which statements hold, which fail, which cannot be told (one line each)."""
    def name(v: Dict[str, Any]) -> str:
        proto = "" if v["protocol"] in ("accuracy", "weights") else f", {v['protocol']}"
        return f"({v['claim']}) {v['setting']}{proto}"

    out = []
    for k in VERDICTS:
        vs = [name(v) for v in verdicts if v["verdict"] == k]
        out.append(f"- **{k}** ({len(vs)}): " + ("; ".join(vs) if vs else "none") + ".")
    return out


def observations(stats: Optional[pd.DataFrame], verdicts: Sequence[Dict[str, Any]]) -> List[str]:
    """Data-driven remarks a reader of the paper needs next to the verdicts (computed, not hand-written)."""
    out: List[str] = []
    if stats is None or stats.empty:
        return ["- (no nHSIC estimates)"]
    hx = stats[(stats["target"] == "x") & (stats["layer"] != "out")]
    rec = hx[hx["protocol"] == "recommended"]
    if len(rec):
        frac = rec.groupby("variant")["max_at_init"].mean()
        out.append("- Under the recommended protocol nHSIC(X;Z) of a hidden layer is highest at the random "
                   "initialisation in " + ", ".join(f"{100 * frac[v]:.0f}% ({VARIANT_LABEL.get(v, v)})"
                                                      for v in frac.index) +
                   " of the (run, layer) trajectories. A fall from the initialisation is not counted as "
                   "compression (see *How a verdict is decided*).")
    pap = hx[hx["protocol"] == "paper"].copy()
    if len(pap) and (pap["variant"] == "lw-nhsic").any():
        pap["last_in_sd"] = pap["last"] / (pap["drop_sd"] / math.sqrt(2))
        m = pap.groupby("variant")["last_in_sd"].median()
        out.append("- Paper protocol, last checkpoint, median over hidden layers of (value - chance) in sd: " +
                   ", ".join(f"{VARIANT_LABEL.get(v, v)} {m[v]:.2g}" for v in m.index) + ".")
        if m.get("lw-nhsic", math.inf) < 2:
            nh = stats[(stats["variant"] == "lw-nhsic") & (stats["protocol"] == "paper") & (stats["target"] == "x")]
            out.append("  With the nHSIC term the layers end at chance under the paper's protocol although the term "
                       "maximises nHSIC(X;Z): the raw value rises to its ceiling, where it equals its chance level "
                       "(an RBF Gram matrix of Z close to the identity, i.e. activations far apart relative to "
                       f"sigma = 5 sqrt(d)); peak epochs {sorted(set(int(e) for e in nh['peak_epoch']))}.")
    for v in verdicts:
        if v["claim"] == "c1" and "same_test_on_layerwise_runs" in v["statistic"]:
            lw = v["statistic"]["same_test_on_layerwise_runs"]
            k = sum(bool(x) for x in lw if x is not None)
            out.append(f"- (c1) {v['setting']}, {v['protocol']}: E2E {v['verdict']}; the same statement on the "
                       f"layer-wise runs holds in {k} of {len(lw)} seeds.")
    return out


def write_findings(out: Path, cfg: Any, runs: pd.DataFrame, verdicts: List[Dict[str, Any]], figures: List[str],
                   wall_s: float, stats: Optional[pd.DataFrame] = None) -> Path:
    """findings.md: the outcome claim by claim, what was run, how verdicts are decided, all numbers, figures."""
    counts = {k: sum(v["verdict"] == k for v in verdicts) for k in VERDICTS}
    ep = cfg.epochs
    by_claim: Dict[str, List[Dict[str, Any]]] = {}
    for v in verdicts:
        by_claim.setdefault(v["claim"], []).append(v)
    lines = [
        "# Repeating Sakamoto & Sato (2024): E2E vs layer-wise training, claim by claim", "",
        f"Generated by `python benchmarks/reproduce_paper.py{' --quick' if cfg.mode == 'quick' else ''}` "
        "(`--analyse-only` re-decides and redraws from the finished runs). "
        f"{len(verdicts)} verdicts: {counts[HOLDS]} HOLDS, {counts[FAILS]} FAILS, {counts[CANNOT_TELL]} CANNOT TELL. "
        f"Training, extraction and estimation took {wall_s / 60:.0f} minutes of wall time on 2 shared CPU cores "
        f"({cfg.workers} run(s) at a time, {cfg.threads} torch thread each). The sizes (below) are far smaller "
        "than the paper's: a FAILS is a failure at this scale, not a refutation at the paper's.", "",
        "## In short", ""] + in_short(verdicts) + ["", "## Outcome, claim by claim", ""]
    for c, text in CLAIMS.items():
        vs = by_claim.get(c)
        if not vs:
            continue
        parts = []
        for v in vs:
            proto = "" if v["protocol"] in ("accuracy", "weights") else f", {v['protocol']}"
            parts.append(f"{v['setting']}{proto}: **{v['verdict']}** ({_short(v)})")
        lines.append(f"- **({c})** {text} [{SOURCE[c]}]. " + "; ".join(parts) + f". *Note:* {NOTES[c]}.")
    lines += [
        "", "## Observations beside the verdicts", ""] + observations(stats, verdicts) + [
        "", "## What was run", "",
        f"- Datasets: {cfg.hard_dataset} (the harder task; the paper used CIFAR-10) with "
        f"{cfg.subset or 'all'} training images and {cfg.test_subset or 'all'} test images for accuracy; "
        f"{cfg.easy_dataset} (scikit-learn's 8x8 digits, 1,437 / 360 images; the paper used MNIST) for the accuracy "
        "claims only: its test split is too small for the evaluation sample nHSIC needs here.",
        f"- Models: LeNet5; the Toy-MLP ({cfg.mlp_depth} x {cfg.mlp_width}, app. F.4.4); VGG11-BN at width "
        f"{cfg.vgg_width:g} (every channel count x {cfg.vgg_width:g}, one layer per convolution); the toy model of "
        "sec. 4.2 (a bias-free 2 x 2 W followed by the Toy-MLP) on the two-ring data.",
        f"- Training: Adam, lr {cfg.lr:g}, batch {cfg.batch_size}, the paper's step schedule (x0.2 at 1/2, 3/4, 7/8 "
        "and "
        f"15/16 of the run); epochs: LeNet5 {ep['lenet5']}, Toy-MLP {ep['mlp']}, VGG11-BN {ep['vgg11_bn']}, digits "
        f"{ep['easy']}, toy {ep['toy']} (preset `sakamoto2024-toy`: SGD, lr 0.1, weight decay on W only). "
        f"Seeds {', '.join(map(str, cfg.seeds))}. Layer-wise = every layer trained by its own CE loss through a "
        "linear (or one-hidden-layer MLP) auxiliary head, gradients stopped between layers; nHSIC term: eq. 11 with "
        f"lambda = {cfg.nhsic_lambda:g} and T = the input; SupCon / SimCLR: E2E contrastive losses, accuracy from a "
        "linear probe.",
        f"- Measurement: {cfg.num_checkpoints} log-spaced checkpoints plus the initialisation; activations of "
        f"{cfg.eval_samples} stratified test images; nHSIC(X;Z) and nHSIC(Y;Z), RBF kernel, sigma = 5 sqrt(d), "
        f"eps = 1e-5 (app. F.1.2). Two protocols: the paper's (minibatches of m = {cfg.m_paper}; the curve is the "
        f"raw value minus its exact chance level) and the recommended one (m = {cfg.m_recommended}; the "
        "chance-adjusted value (value - chance) / (max - chance)).", "",
        "## How a verdict is decided", "",
        "Each claim is a statement fixed before the run, with its own statistic, decided seed by seed. A seed "
        f"supports an effect only beyond {cfg.threshold:g} null-sd: for accuracy, the binomial sd of the difference "
        "on the test images; for a rise or fall of nHSIC, the sd of the difference between two checkpoints (per "
        "checkpoint the larger of the exact chance sd and the minibatch standard error). A layer *compresses* when "
        "its peak over the trained checkpoints (epoch >= 1) is above chance "
        f"(z > {cfg.threshold:g}) and its last value "
        f"is more than {cfg.threshold:g} sd below that peak; it *keeps* when above chance and not compressing. "
        "The initialisation is left out of the peak on purpose: under the adjusted scale an untrained network is "
        "closest to its input, so every layer of every regime would 'compress' from epoch 0 "
        "(`layer_stats.csv` reports that fall as `drop_incl_init_in_sd` and flags `max_at_init`). "
        "**HOLDS** = the statement holds in every seed; "
        "**FAILS** = in none; **CANNOT TELL** = the seeds disagree, a seed cannot be judged (a layer at chance, "
        f"nothing to remove), fewer than {cfg.min_seeds} seeds, or a run of the comparison is not converged (final "
        f"test accuracy under {100 * cfg.converged_fraction:.0f}% of its plateau: the larger of the asymptote of "
        "a - b exp(-epoch/tau) fitted to the test accuracy and the best accuracy of the last quarter of the epochs; "
        "a run whose accuracy fell after an early best is not undertrained and counts as converged). nHSIC claims "
        "are decided under both protocols.", "",
        "## All verdicts", "", verdict_table(verdicts), "",
        "## Accuracy and convergence", "", accuracy_table(runs), "",
        "The plateau is that of this schedule: the learning rate decays from half of the run on, so a flat "
        "final stretch can also mean a small learning rate. Train accuracies are given so that a reader can judge "
        f"how far from fitting the training set the runs are (lowest mean train accuracy of a configuration: "
        f"{runs.groupby('group')['final_train_acc'].mean().min() if len(runs) else math.nan:.3f}).", "",
        "## Figures", "",
        "One figure per model and protocol: one panel per layer (top row nHSIC(X;Z), bottom row nHSIC(Y;Z)), E2E "
        "and layer-wise (linear heads) in the same panel; thick line = mean over seeds, thin lines = seeds; grey "
        "band = chance ± 2 sd (the sd the verdicts use); x axis: epoch + 1, log scale. Tables: `runs.csv` (one row "
        "per run), `layer_stats.csv` (one row per run, protocol, layer and target), `trajectories.csv` (every "
        "value), `verdicts.json`.", ""]
    lines += [f"- `{f}`" for f in figures]
    lines += [""]
    path = out / "findings.md"
    _atomic(path, "\n".join(lines))
    return path


# ----------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _epoch_ticks(ax: Any) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ax.xaxis.set_major_locator(FixedLocator([1, 2, 5, 10, 20, 50, 100, 200, 500]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())


COLORS = {"e2e": "tab:blue", "lw-linear": "tab:orange", "lw-mlp": "tab:green", "lw-nhsic": "tab:red",
          "e2e-supcon": "tab:purple", "e2e-simclr": "tab:brown"}


def fig_layers(df: pd.DataFrame, model: str, proto: str, variants: Sequence[str], out: Path, title: str,
               targets: Sequence[str] = ("x", "y")) -> Optional[str]:
    """Panels per layer (columns) and target (rows), the variants overlaid, chance band shaded."""
    sub = df[(df["model"] == model) & (df["protocol"] == proto) & df["variant"].isin(variants)]
    if sub.empty:
        return None
    plt = _plt()
    layers = (sub[["layer", "layer_index"]].drop_duplicates().sort_values("layer_index")["layer"].tolist())
    fig, axes = plt.subplots(len(targets), len(layers), figsize=(2.2 * len(layers) + 0.6, 2.3 * len(targets) + 0.7),
                             squeeze=False, sharex=True)
    for i, t in enumerate(targets):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            cell = sub[(sub["target"] == t) & (sub["layer"] == layer)]
            band = float(np.nanmean(cell["se"])) * 2 if len(cell) else 0.0
            ax.axhspan(-band, band, color="0.85", zorder=0, label="chance ± 2 sd" if (i, j) == (0, 0) else None)
            ax.axhline(0, color="0.5", lw=0.6, zorder=1)
            for var in variants:
                c = cell[cell["variant"] == var]
                if c.empty:
                    continue
                for _, s in c.groupby("seed"):
                    s = s.sort_values("epoch")
                    ax.plot(s["epoch"] + 1, s["v"], color=COLORS.get(var, "k"), lw=0.6, alpha=0.45)
                m = c.groupby("epoch")["v"].mean()
                ax.plot(m.index + 1, m.values, color=COLORS.get(var, "k"), lw=2,
                        label=VARIANT_LABEL.get(var, var) if (i, j) == (0, 0) else None)
            ax.set_xscale("log")
            _epoch_ticks(ax)
            if i == 0:
                ax.set_title(layer, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"nHSIC({'X' if t == 'x' else 'Y'};Z)\n" +
                              ("adjusted" if proto == "recommended" else "value - chance"), fontsize=8)
            if i == len(targets) - 1:
                ax.set_xlabel("epoch + 1", fontsize=8)
            ax.tick_params(labelsize=7)
    height = fig.get_size_inches()[1]
    fig.suptitle(title, fontsize=10, x=0.01, y=1 - 0.08 / height, ha="left", va="top")
    fig.legend(loc="upper left", bbox_to_anchor=(0.01, 1 - 0.34 / height), fontsize=8, ncol=len(variants) + 1,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / height))
    name = f"nhsic_{model}_{'-'.join(v for v in variants) if len(variants) > 2 else 'e2e-vs-layerwise'}_{proto}.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def fig_accuracy(runs: pd.DataFrame, out: Path) -> Optional[str]:
    """Test accuracy per configuration, seeds as dots."""
    if runs.empty:
        return None
    plt = _plt()
    groups = [g for g, _ in runs.groupby(["dataset", "model"], sort=True)]
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.2), squeeze=False)
    for ax, (ds, model) in zip(axes[0], groups):
        r = runs[(runs["dataset"] == ds) & (runs["model"] == model)]
        vars_ = [v for v in VARIANT_LABEL if v in set(r["variant"])]
        for k, v in enumerate(vars_):
            a = r[r["variant"] == v]["final_test_acc"].to_numpy(float)
            ax.bar(k, a.mean(), color=COLORS.get(v, "0.6"), alpha=0.6)
            ax.plot(np.full(len(a), k), a, "k.", ms=4)
        ax.set_xticks(range(len(vars_)))
        ax.set_xticklabels([VARIANT_LABEL.get(v, v) for v in vars_], rotation=40, ha="right", fontsize=7)
        lo = float(r["final_test_acc"].min())
        ax.set_ylim(max(0.0, lo - 0.1), min(1.0, float(r["final_test_acc"].max()) + 0.03))
        ax.set_title(f"{ds} / {MODEL_LABEL.get(model, model)}", fontsize=9)
        ax.set_ylabel("final test accuracy", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)
    return "accuracy.png"


def fig_toy(weights: pd.DataFrame, out: Path) -> Optional[str]:
    """s2/s1 of the toy model's W over epochs, both regimes, seeds as lines."""
    if weights.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for g, col in (("toy-rings/toy-linear/toy-lw", "tab:orange"), ("toy-rings/toy-linear/toy-e2e", "tab:blue")):
        w = weights[weights["group"] == g]
        for k, (_, s) in enumerate(w.groupby("seed")):
            s = s.sort_values("epoch")
            ax.plot(s["epoch"], s["s2_over_s1"], color=col, lw=1,
                    label=VARIANT_LABEL[g.split("/")[-1]] if k == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("s2 / s1 of W")
    ax.set_title("toy example (sec. 4.2): rank of W", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "toy_rank.png", dpi=110)
    plt.close(fig)
    return "toy_rank.png"


def load_weights(specs: Sequence[Any], work: Path) -> pd.DataFrame:
    """The toy runs' singular values of W per epoch."""
    frames = []
    for s in specs:
        p = work / s.name / "weights.csv"
        if s.measure == "weights" and p.exists() and (work / s.name / "done.json").exists():
            df = pd.read_csv(p)
            df["group"], df["seed"], df["variant"] = s.group, s.seed, s.variant
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def analyse(cfg: Any, specs: Sequence[Any], work: Path, out: Path, wall_s: float = math.nan,
            figures: bool = True) -> Dict[str, Any]:
    """Load the finished runs, decide every claim, write verdicts.json, findings.md, tables and figures."""
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(specs, work, cfg.converged_fraction)
    est = load_estimates(specs, work)
    stats = layer_stats(est, cfg.threshold)
    weights = load_weights(specs, work)
    verdicts = Judge(cfg, runs, stats, weights).all()
    if len(runs):
        runs.round(5).to_csv(out / "runs.csv", index=False)
    if len(stats):
        stats.round(5).to_csv(out / "layer_stats.csv", index=False)
    traj = chance_corrected(est) if len(est) else pd.DataFrame()
    if len(traj):
        cols = ["group", "variant", "seed", "protocol", "batch_size", "epoch", "layer", "layer_index", "target",
                "value", "null_mean", "null_sd", "std", "n_batches", "adjusted", "z", "v", "se"]
        traj[cols].to_csv(out / "trajectories.csv", index=False, float_format="%.5g")
    if len(weights):
        weights[["group", "seed", "epoch", "s1", "s2", "s2_over_s1"]].to_csv(out / "toy_weights.csv", index=False,
                                                                           float_format="%.5g")
    _atomic(out / "verdicts.json", json.dumps({"config": cfg.to_dict(), "wall_s": _r(float(wall_s)),
                                               "verdicts": verdicts}, indent=1))
    figs: List[str] = []
    if figures:
        for model in ("lenet5", "mlp", "vgg11_bn"):
            for proto, m in (("paper", cfg.m_paper), ("recommended", cfg.m_recommended)):
                f = fig_layers(traj, model, proto, ("e2e", "lw-linear"), out,
                               f"{MODEL_LABEL[model]} on {cfg.hard_dataset}: E2E vs layer-wise, "
                               f"{PROTOCOL_LABEL[proto].format(m=m)}")
                if f:
                    figs.append(f)
        for proto, m in (("paper", cfg.m_paper), ("recommended", cfg.m_recommended)):
            f = fig_layers(traj, "lenet5", proto, ("e2e", "lw-linear", "lw-nhsic", "e2e-supcon", "e2e-simclr"), out,
                           f"LeNet5 on {cfg.hard_dataset}: losses and the nHSIC term (claim e), "
                           f"{PROTOCOL_LABEL[proto].format(m=m)}", targets=("x",))
            if f:
                figs.append(f)
        for f in (fig_accuracy(runs, out), fig_toy(weights, out)):
            if f:
                figs.append(f)
    write_findings(out, cfg, runs, verdicts, figs, wall_s, stats)
    return {"runs": runs, "stats": stats, "verdicts": verdicts, "figures": figs}
