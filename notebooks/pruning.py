# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # pruning: EWN's relative sparsity pays off late in training
#
# docs/theory.md §4: an MLP with one hidden ReLU layer (with bias) and WN on the hidden layer,
# trained by SGD (batch 128, step `eta0/L`) with checkpoints at `log L = -10, -100, -300`. At
# each checkpoint the k% of hidden neurons with the smallest norm (`exp(a_u)`, `|g_u|` or the
# row norm) are removed, with no fine-tuning. The paper (MNIST, width 1024):
#
# - at `log L = -300` **EWN keeps much more accuracy under heavy pruning** (97.2% vs SWN 92.5%
#   and unnormalized 93.1% at 80% pruned; 93.2% vs 75.9% / 79.2% at 90%);
# - at `log L = -10` **EWN is the worst** of the three: the advantage is asymptotic.
#
# The built-in default data is scikit-learn's 8x8 digits (always available); pass
# `data="mnist", data_dir=...` for MNIST IDX files.
#
# What to look at: the accuracy-vs-fraction-pruned curves at each checkpoint.
#
# Set `WNJAX_SMOKE=1` to run at a tiny size (CI does).

# %%
import os

import jax

import wnjax

jax.config.update("jax_enable_x64", True)
SMOKE = os.environ.get("WNJAX_SMOKE") == "1"
NAME = "pruning"
OUT = os.path.join("runs", "notebooks", NAME)

# %% [markdown]
# ## Run it as the CLI does
#
# `wnjax.reproduce` runs exactly `wnjax reproduce pruning` (same defaults, same report) and
# returns the metrics dict; it also writes the figures, `metrics.json` and `report.md` under
# `OUT`. With `WNJAX_SMOKE=1` the sizes shrink to seconds (width 16, 2 epochs on 256 points: no checkpoint is reached).

# %%
options = dict(seeds=1, width=16, max_epochs=2, train_size=256) if SMOKE else {}
metrics = wnjax.reproduce(NAME, out=OUT, **options)
wnjax.experiments.show_run(OUT)

# %% [markdown]
# The accuracy table: checkpoint x seed x fraction pruned (NaN where a checkpoint was not
# reached).

# %%
print("fractions pruned:", metrics["fractions"])
for k, table in metrics["test_accuracy"].items():
    print(k, table)

# %% [markdown]
# ## Change one thing and rerun
#
# A wider hidden layer: heavy pruning removes more neurons, and the relative sparsity
# of EWN has more room to show.
# Any flag of `wnjax reproduce pruning --help` works here, with `-` written as `_`. (At smoke
# size only the option names are checked, to keep CI fast.)

# %%
variant = dict(width=512)
assert set(variant) <= wnjax.experiments.options(NAME), sorted(wnjax.experiments.options(NAME))
if SMOKE:
    print("smoke run: the variant", variant, "is not run")
else:
    other = wnjax.reproduce(NAME, out=OUT + "-variant", **variant)
    wnjax.experiments.show_run(OUT + "-variant")
