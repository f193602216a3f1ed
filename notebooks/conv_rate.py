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
# # conv-rate: EWN's loss curve hardly depends on depth
#
# docs/theory.md §4: 20 points in R^2 (support points (1, 1) with y = -1 and (-1, 1) with y = +1),
# deep linear nets of depth 1-4, width 100, no bias, every depth started at the **same
# end-to-end predictor**; GD with constant lr 0.001 for 5000 steps, logistic loss. Theory
# (docs/theory.md §3): EWN's loss rate `Theta(1/(t (log t)^2))` does not depend on the depth,
# the unnormalized rate `Theta(1/(t (log t)^(2 - 2/L)))` does. The paper's final-loss ratios,
# depth 1 to depth 4: **EWN about 2x, SWN about 28x, unnormalized about 70x**.
#
# What to look at: the three loss panels (EWN's curves bunch together) and the ratio column of
# the report beside the paper's.
#
# Set `WNJAX_SMOKE=1` to run at a tiny size (CI does).

# %%
import json
import os

import jax

import wnjax

jax.config.update("jax_enable_x64", True)
SMOKE = os.environ.get("WNJAX_SMOKE") == "1"
NAME = "conv-rate"
OUT = os.path.join("runs", "notebooks", NAME)

# %% [markdown]
# ## Run it as the CLI does
#
# `wnjax.reproduce` runs exactly `wnjax reproduce conv-rate` (same defaults, same report) and
# returns the metrics dict; it also writes the figures, `metrics.json` and `report.md` under
# `OUT`. With `WNJAX_SMOKE=1` the sizes shrink to seconds (depths 1-2, width 4, 20 steps).

# %%
options = dict(seeds=1, steps=20, width=4, depths=[1, 2]) if SMOKE else {}
metrics = wnjax.reproduce(NAME, out=OUT, **options)
wnjax.experiments.show_run(OUT)

# %% [markdown]
# The final-loss ratio from the first to the last depth, per seed.

# %%
print(json.dumps(metrics["ratio_first_to_last_depth"], default=str))

# %% [markdown]
# ## Change one thing and rerun
#
# Exact gradient flow over the same time span `lr x steps` instead of GD.
# Any flag of `wnjax reproduce conv-rate --help` works here, with `-` written as `_`. (At smoke
# size only the option names are checked, to keep CI fast.)

# %%
variant = dict(dynamics="flow")
assert set(variant) <= wnjax.experiments.options(NAME), sorted(wnjax.experiments.options(NAME))
if SMOKE:
    print("smoke run: the variant", variant, "is not run")
else:
    other = wnjax.reproduce(NAME, out=OUT + "-variant", **variant)
    wnjax.experiments.show_run(OUT + "-variant")
