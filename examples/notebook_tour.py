# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # infoplane in a notebook
#
# From a trained network to a chance-corrected information plane, in well under a minute on a laptop
# CPU, with the `digits` data that ships with scikit-learn (nothing to download). The steps:
#
# 1. train a small LeNet-5 for a few epochs, keeping a checkpoint per epoch;
# 2. `ip.extract` the activations of every layer into an HDF5 store, and look at it;
# 3. `ip.estimate` nHSIC(X;Z) and nHSIC(Y;Z) per layer and epoch, and read each value against its
#    exact chance level;
# 4. `ip.plot_plane` / `ip.plot_curves` into matplotlib Axes of our own;
# 5. bring your own model and data: any `torch.nn.Module` over any `Dataset` of `(x, y)` pairs.
#
# Open it with `jupytext --to notebook examples/notebook_tour.py` (or run it as a script). It
# writes everything under `tour/` in the working directory.

# %%
from collections import OrderedDict
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.utils.data import DataLoader

import infoplane as ip
from infoplane.data import load_dataset
from trainers import TrainConfig, train

torch.manual_seed(0)
work = Path("tour")

# %% [markdown]
# ## 1. Train, keeping a checkpoint per epoch
#
# `trainers.train` runs one training regime (here end to end with cross-entropy) and writes
# `epoch_0000.pt` (the initialisation) to `epoch_0003.pt`. A larger learning rate and a 600-image
# subset keep this to a few seconds.

# %%
checkpoints = train(TrainConfig(model="lenet5", dataset="digits", regime="e2e", epochs=3, subset=600, lr=2e-3,
                                batch_size=64, out=str(work / "run"), overwrite=True, device="cpu",
                                progress=False))
[p.name for p in checkpoints]

# %% [markdown]
# ## 2. Extract the activations
#
# `ip.extract` runs every checkpoint over a stratified subset of 300 test images and streams the
# output of each top-level layer into one store. The store's `repr` says what it holds.

# %%
store_path = ip.extract(checkpoints, layers="all", out=work / "acts.h5", samples=300, progress=False)
store = ip.ActivationStore(store_path)
store

# %% [markdown]
# One layer at one checkpoint as a table: one row per image, its dataset index and label, then the
# flattened activations `f0 .. f{d-1}`.

# %%
last = store.checkpoints()[-1]
fc1 = store.to_dataframe(last, "fc1")
store.close()
fc1.iloc[:5, :6]

# %% [markdown]
# ## 3. Estimate, and read the values against chance
#
# `ip.estimate` takes the fields of `EstimateConfig` as keywords; the defaults are the minibatch
# protocol of Sakamoto & Sato (2024): batches of m = 100, eps = 1e-5, RBF bandwidth 5 sqrt(d).
# Every row carries the exact chance level of its value: `null_mean` and `null_sd` (the mean and
# standard deviation of nHSIC when Z is independent of X or Y), `z = (value - null_mean) / null_sd`,
# and `adjusted = (value - null_mean) / (max_value - null_mean)`: 0 at chance, 1 at the largest value
# the layer could reach. Raw nHSIC values of different layers are not comparable (the chance level
# depends on the layer's width and on m); the adjusted ones are.

# %%
df = ip.estimate(store_path, batch_size=100, progress=False)
cols = ["epoch", "layer", "target", "value", "null_mean", "null_sd", "z", "adjusted"]
df[cols].head(10)

# %%
final = df[df["epoch"] == df["epoch"].max()]
for row in final.itertuples():
    verdict = "above chance" if row.z > 2 else "indistinguishable from chance"
    print(f"{row.layer:>6} nHSIC({row.target.upper()};Z) = {row.value:6.3f}   chance {row.null_mean:6.3f} "
          f"± {row.null_sd:.3f}   z = {row.z:5.1f}   adjusted = {row.adjusted:5.2f}   ({verdict})")

# %% [markdown]
# ## 4. Plot into your own figures
#
# Plot functions return the matplotlib `Figure`. `ax=` takes one Axes (one panel) or an array of
# Axes (one per layer); `fig=` lays the panels out in a figure of yours; `out=` also saves the figure.

# %%
layers = list(dict.fromkeys(df.sort_values("layer_index")["layer"]))
fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers) + 1.5, 3.4), layout="constrained")
ip.plot_plane(df, ax=axes, adjusted=True, title="LeNet-5 on digits: chance-adjusted nHSIC")

# %% [markdown]
# One layer next to its curves over epochs (Y only), in one figure:

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
ip.plot_plane(df, ax=left, layers=["fc1"])
ip.plot_curves(df, ax=right, targets="y", adjusted=True)
fig.savefig(work / "fc1.png")

# %%
curves = ip.plot_curves(df, out=work / "curves.png")

# %% [markdown]
# ## 5. Your own model and data
#
# `ip.extract(model, data)` takes any `torch.nn.Module` and a `Dataset` or `DataLoader` yielding
# `(x, y)` with integer labels (here the digits test split; a torchvision model and
# `ip.image_folder("photos/")` work the same way). Each call stores the model's current weights as
# one checkpoint; `epoch=` names it, so a plain PyTorch training loop can put every epoch into one
# store. Layer names are the model's module names (`named_modules()`).

# %%
train_set, test_set = load_dataset("digits", split="train"), load_dataset("digits", split="test")
mlp = nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc1=nn.Linear(64, 64), relu1=nn.ReLU(),
                                fc2=nn.Linear(64, 32), relu2=nn.ReLU(), out=nn.Linear(32, 10)))
optimiser = torch.optim.Adam(mlp.parameters(), lr=3e-3)
batches = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
own_store = work / "mlp.h5"
own_store.unlink(missing_ok=True)
for epoch in range(4):
    if epoch:  # epoch 0 is the initialisation
        for x, y in batches:
            optimiser.zero_grad()
            nn.functional.cross_entropy(mlp(x), y).backward()
            optimiser.step()
    ip.extract(mlp, test_set, layers="relu1,relu2,out", out=own_store, samples=300, epoch=epoch, progress=False)
ip.ActivationStore(own_store)

# %%
own = ip.estimate(own_store, batch_size=100, progress=False)
own.pivot_table(index=["layer", "target"], columns="epoch", values="adjusted").round(2)

# %%
ip.plot_plane(own, fig=plt.figure(figsize=(11, 3.6), layout="constrained"), adjusted=True)
