"""pruning: a one-hidden-layer MLP trained by SGD to log L = -10, -100, -300, then pruned.

At each checkpoint the hidden neurons with the smallest norm parameter (``exp(a_u)`` for EWN,
``|g_u|`` for SWN, ``||w_u||`` unnormalized: ``LayerWeight.scale_params``) are removed, with no
fine-tuning; removing neuron ``u`` zeroes its outgoing weights (its bias goes with it). EWN's
relative sparsity (SPEC section 3) should make it the most prunable at ``log L = -300`` but not
at ``-10``.
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._data import digits, mnist
from .._models import MLP
from .._parameterize import ewn, standard, swn, to_standard
from ._report import PARAM_STYLE, mean_std, pyplot, save_figure, table, verdict, write_outputs
from ._runner import run_gd

DESCRIPTION = "MLP, SGD with eta0/L to log L = -10/-100/-300, prune smallest neurons: EWN prunes best late"
CHECKPOINTS = (-10.0, -100.0, -300.0)
FRACTIONS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
PAPER = {  # MNIST, log L = -300: accuracy (%) at 80% and 90% of hidden neurons pruned
    0.8: {"ewn": 97.2, "swn": 92.5, "standard": 93.1},
    0.9: {"ewn": 93.2, "swn": 75.9, "standard": 79.2},
}


def parameterized(name: str, model: MLP):
    """WN on the hidden layer only (``'ewn'``/``'swn'``), or the plain model."""
    if name == "standard":
        return standard(model)
    return {"ewn": ewn, "swn": swn}[name](model, where=lambda m: [m.layers[0]])


def pruned_accuracy(p, X: jnp.ndarray, y: jnp.ndarray, fraction: float) -> jnp.ndarray:
    """Test accuracy after removing the ``fraction`` of hidden neurons with the smallest
    ``scale_params`` (no fine-tuning)."""
    scores = p.layers[0].scale_params()
    width = scores.shape[0]
    k = int(round(fraction * width))
    order = jnp.argsort(scores)
    mask = jnp.ones(width).at[order[:k]].set(0.0)
    plain = to_standard(p)
    plain = eqx.tree_at(lambda m: m.layers[1].weight, plain, plain.layers[1].weight * mask[None, :])
    return jnp.mean(jnp.argmax(jax.vmap(plain)(X), axis=1) == y)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", choices=("digits", "mnist"), default="digits",
                        help="scikit-learn's 8x8 digits (default) or MNIST IDX files")
    parser.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files")
    parser.add_argument("--width", type=int, default=None, help="hidden width (default 128; --full 1024)")
    parser.add_argument("--lr", type=float, default=0.01, help="eta0 of the SGD step eta0/L")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-steps", type=int, default=20_000)


def load(args, key):
    """``X_train, y_train, X_test, y_test, note``."""
    if args.data == "mnist":
        if not args.data_dir:
            raise ValueError("--data mnist needs --data-dir DIR, a folder with the MNIST IDX files.")
        return mnist(key, args.data_dir)
    Xtr, ytr, Xte, yte = digits(key)
    return Xtr, ytr, Xte, yte, f"scikit-learn digits: {len(Xtr)} train / {len(Xte)} test (random split)"


def run(args: argparse.Namespace) -> dict:
    width = args.width or (1024 if args.full else 128)
    k_data, k_net, k_sgd = jax.random.split(jax.random.key(0), 3)
    Xtr, ytr, Xte, yte, note = load(args, k_data)
    keys = jax.random.split(k_net, args.seeds)
    acc, ck_loss, ck_steps, reached = {}, {}, {}, {}
    for name in ("ewn", "swn", "standard"):
        models = eqx.filter_vmap(lambda k: parameterized(
            name, MLP(Xtr.shape[1], width, 2, 10, activation="relu", hidden_bias=True, key=k)))(keys)
        r = run_gd(models, Xtr, ytr, num_steps=args.max_steps, learning_rate=args.lr,
                   objective="log_loss", loss="cross_entropy", batch_size=args.batch_size,
                   key=k_sgd, target_log_loss=CHECKPOINTS[-1], checkpoints=CHECKPOINTS,
                   chunk_size=20)
        ck_loss[name], ck_steps[name] = r.checkpoint_log_loss, r.checkpoint_steps
        reached[name] = r.reached & ~r.diverged
        table_ = np.full((len(CHECKPOINTS), args.seeds, len(FRACTIONS)), np.nan)
        for j, ck in enumerate(r.checkpoints):
            if ck is None:
                continue
            a = jax.vmap(lambda p: jnp.stack([pruned_accuracy(p, Xte, yte, f) for f in FRACTIONS]))(ck)
            table_[j] = np.where((r.checkpoint_steps[j] >= 0)[:, None], np.asarray(a), np.nan)
        acc[name] = table_
    metrics = {
        "data": note, "width": width, "lr": args.lr, "batch_size": args.batch_size,
        "checkpoints": CHECKPOINTS, "fractions": FRACTIONS,
        "test_accuracy": acc, "checkpoint_log_loss": ck_loss, "checkpoint_steps": ck_steps,
        "reached_last_checkpoint": reached,
    }
    plt = pyplot()
    fig, axes = plt.subplots(1, len(CHECKPOINTS), figsize=(14, 3.8), sharey=True)
    for ax, j, ck in zip(axes, range(len(CHECKPOINTS)), CHECKPOINTS):
        for name in acc:
            m = np.nanmean(acc[name][j], 0)
            sd = np.nanstd(acc[name][j], 0)
            ax.errorbar(FRACTIONS, 100 * m, yerr=100 * sd, marker="o", ms=3, capsize=2, **PARAM_STYLE[name])
        ax.set(title=f"log L = {ck:g}", xlabel="fraction of hidden neurons pruned")
        ax.legend()
    axes[0].set_ylabel("test accuracy (%)")
    figs = [save_figure(fig, args.out, "pruning.png")]
    fi = {f: FRACTIONS.index(f) for f in (0.0, 0.8, 0.9)}
    rows = []
    for j, ck in enumerate(CHECKPOINTS):
        for name in acc:
            paper = (f"{PAPER[0.8][name]} / {PAPER[0.9][name]}" if ck == -300 else "-")
            rows.append([f"{ck:g}", PARAM_STYLE[name]["label"],
                         mean_std(ck_steps[name][j][ck_steps[name][j] >= 0]),
                         *(mean_std(100 * acc[name][j][:, fi[f]]) for f in (0.0, 0.8, 0.9)), paper])

    def heavy(name, j):  # mean accuracy at 80% and 90% pruned, per seed
        return np.mean(acc[name][j][:, [fi[0.8], fi[0.9]]], axis=1)

    last, first = len(CHECKPOINTS) - 1, 0
    h_last = {k: np.nanmean(heavy(k, last)) for k in acc}
    h_first = {k: np.nanmean(heavy(k, first)) for k in acc}
    lines = [
        "# pruning", "",
        f"Data: {note}. MLP {Xtr.shape[1]}-{width}-10, ReLU, hidden bias, WN on the hidden layer, "
        f"cross-entropy (sum over the batch), minibatch SGD, batch {args.batch_size}, step "
        f"eta0/L_batch with eta0 = {args.lr} (gradient of log L; no adaptive eta0), at most "
        f"{args.max_steps} steps. Checkpoints: the first chunk end (20 steps) where the full "
        f"training log L is at or below -10, -100, -300. Pruning criterion: the single final-norm "
        f"parameter (exp(a_u), |g_u|, ||w_u||), no fine-tuning. {args.seeds} seeds, vmapped.", "",
        table(["log L", "", "SGD steps", "acc. 0% pruned", "acc. 80%", "acc. 90%",
               "paper (MNIST) 80% / 90%"], rows), "",
        "Seeds that never reached a checkpoint are left out of its row (n/a if none did): "
        + ", ".join(f"{PARAM_STYLE[k]['label']} reached -300 on {int(reached[k].sum())}/{args.seeds}"
                    for k in acc) + ".", "",
        "## Verdicts", "",
        verdict(bool(h_last["ewn"] > max(h_last["swn"], h_last["standard"])),
                "at log L = -300 EWN keeps the most accuracy under heavy pruning (80-90%)",
                ", ".join(f"{PARAM_STYLE[k]['label']} {100 * v:.1f}%" for k, v in h_last.items())
                + " (mean of 80% and 90%)"),
        verdict(bool(h_first["ewn"] < max(h_first["swn"], h_first["standard"])),
                "at log L = -10 EWN is not the best (paper: the worst)",
                ", ".join(f"{PARAM_STYLE[k]['label']} {100 * v:.1f}%" for k, v in h_first.items())),
        "", "Figures: " + ", ".join(figs),
    ]
    write_outputs(args.out, metrics, "\n".join(lines))
    return metrics
