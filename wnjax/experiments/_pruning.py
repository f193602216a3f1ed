"""pruning: a one-hidden-layer MLP trained to log L = -10, -100, -300, then pruned.

Training is minibatch SGD with ``eta = eta0/L`` and epoch-level backtracking of ``eta0`` (the
Exp-WN MNIST schedule, ``run_sgd_backtracking``) on a plain-ReLU net, or, with
``--dynamics flow``, the exact loss-normalized gradient flow ``d theta/ds = -grad log L`` (full
batch) on the ReLU^2 variant of the net (plain ReLU makes the flow a differential inclusion).
At each checkpoint the hidden neurons with the smallest norm parameter (``exp(a_u)`` for EWN,
``|g_u|`` for SWN, ``||w_u||`` unnormalized: ``LayerWeight.scale_params``) are removed, with no
fine-tuning; removing neuron ``u`` zeroes its outgoing weights (its bias goes with it). EWN's
relative sparsity (SPEC section 3) should make it the most prunable at ``log L = -300`` but not
at ``-10``.
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from wnjax.data._sets import digits, mnist
from wnjax._nets.models import MLP
from wnjax._nets.parameterize import ewn, standard, swn, to_standard
from wnjax.experiments._report import PARAM_STYLE, mean_std, pyplot, save_figure, table, verdict, write_outputs
from wnjax.experiments._runner import run_flow_checkpoints, run_sgd_backtracking

DESCRIPTION = ("MLP, SGD with eta0/L + backtracking (or exact flow) to log L = -10/-100/-300, prune "
               "smallest neurons: EWN prunes best late")
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


def prune_mask(p, fraction: float) -> jnp.ndarray:
    """``m_u = 0`` for the ``round(fraction * width)`` hidden neurons with the smallest
    ``scale_params`` (``exp(a_u)``, ``|g_u|`` or ``||w_u||``), ``m_u = 1`` for the others."""
    scores = p.layers[0].scale_params()
    width = scores.shape[0]
    k = int(round(fraction * width))
    return jnp.ones(width, scores.dtype).at[jnp.argsort(scores)[:k]].set(0.0)


def pruned_model(p, fraction: float) -> MLP:
    """The plain model with the pruned neurons removed: ``W2 <- W2 diag(m)`` (``prune_mask``),
    so neuron ``u`` (its incoming weights and bias included) no longer reaches the output."""
    plain = to_standard(p)
    mask = prune_mask(p, fraction)
    return eqx.tree_at(lambda m: m.layers[1].weight, plain, plain.layers[1].weight * mask[None, :])


def pruned_accuracy(p, X: jnp.ndarray, y: jnp.ndarray, fraction: float) -> jnp.ndarray:
    """Test accuracy ``mean_i [argmax_j f_j(x_i) = y_i]`` of ``pruned_model(p, fraction)`` (no
    fine-tuning)."""
    hit = jnp.argmax(jax.vmap(pruned_model(p, fraction))(X), axis=1) == y
    return jnp.mean(hit.astype(X.dtype))


def accuracy_table(checkpoints: tuple, valid: np.ndarray, X, y) -> np.ndarray:
    """``(levels, seeds, fractions)`` test accuracies of the stacked checkpoint models (``nan``
    where ``valid`` is false: the seed never reached that level)."""
    table_ = np.full(valid.shape + (len(FRACTIONS),), np.nan)
    for j, ck in enumerate(checkpoints):
        if ck is None:
            continue
        a = jax.vmap(lambda p: jnp.stack([pruned_accuracy(p, X, y, f) for f in FRACTIONS]))(ck)
        table_[j] = np.where(valid[j][:, None], np.asarray(a), np.nan)
    return table_


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", choices=("digits", "mnist"), default="digits",
                        help="scikit-learn's 8x8 digits (default) or MNIST IDX files")
    parser.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files")
    parser.add_argument("--dynamics", choices=("gd", "flow"), default="gd",
                        help="minibatch SGD, eta0/L with backtracking, plain ReLU (default); or the "
                        "exact loss-normalized gradient flow, full batch, on the ReLU^2 net")
    parser.add_argument("--width", type=int, default=None,
                        help="hidden width (default: 128 for gd, 32 for flow; --full 1024)")
    parser.add_argument("--train-size", type=int, default=None,
                        help="use the first N training points (default: all for gd, 300 for flow)")
    parser.add_argument("--lr", type=float, default=0.01, help="initial eta0 of the SGD step eta0/L")
    parser.add_argument("--cap", type=float, default=None, help="cap on eta0 (default none, as Exp-WN)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-epochs", type=int, default=4000,
                        help="budget of attempted (kept or undone) SGD epochs per run")
    parser.add_argument("--rtol", type=float, default=1e-6, help="flow: relative tolerance (atol = rtol/100)")
    parser.add_argument("--max-steps", type=int, default=200_000, help="flow: solver steps per level")


def load(args, key):
    """``X_train, y_train, X_test, y_test, note``."""
    if args.data == "mnist":
        if not args.data_dir:
            raise ValueError("--data mnist needs --data-dir DIR, a folder with the MNIST IDX files.")
        return mnist(key, args.data_dir)
    Xtr, ytr, Xte, yte = digits(key)
    return Xtr, ytr, Xte, yte, f"scikit-learn digits: {len(Xtr)} train / {len(Xte)} test (random split)"


def train(name: str, args, Xtr, ytr, width: int, keys, k_sgd) -> dict:
    """Train the stacked ``name`` models; per-checkpoint models, ``log L``, steps and validity."""
    activation = "relu" if args.dynamics == "gd" else "relu2"
    models = eqx.filter_vmap(lambda k: parameterized(
        name, MLP(Xtr.shape[1], width, 2, 10, activation=activation, hidden_bias=True, key=k)))(keys)
    if args.dynamics == "gd":
        r = run_sgd_backtracking(
            models, Xtr, ytr, learning_rate=args.lr, batch_size=args.batch_size, key=k_sgd,
            max_epochs=args.max_epochs, target_log_loss=CHECKPOINTS[-1], checkpoints=CHECKPOINTS,
            max_learning_rate=args.cap)
        return dict(checkpoints=r.checkpoints, valid=r.checkpoint_steps >= 0,
                    log_loss=r.checkpoint_log_loss, steps=r.checkpoint_steps,
                    final_log_loss=r.history["log_loss"][-1], epochs=r.history["epochs"],
                    undone=r.history["undone"], eta0=r.history["eta0"][-1], curve=r.history["log_loss"],
                    curve_x=r.steps, stalled=r.diverged)
    r = run_flow_checkpoints(models, Xtr, ytr, levels=CHECKPOINTS, loss="cross_entropy",
                             rtol=args.rtol, atol=args.rtol * 1e-2, max_steps=args.max_steps,
                             degree=3.0)
    return dict(checkpoints=r.checkpoints, valid=r.ok, log_loss=r.log_loss, steps=r.num_steps,
                s=r.s, log_t=r.log_t)


def _unanswered(claim: str, detail: str) -> str:
    return f"- **not answered**: {claim} ({detail})"


def run(args: argparse.Namespace) -> dict:
    flow = args.dynamics == "flow"
    width = args.width or (1024 if args.full else (32 if flow else 128))
    k_data, k_net, k_sgd = jax.random.split(jax.random.key(0), 3)
    Xtr, ytr, Xte, yte, note = load(args, k_data)
    n_train = args.train_size or (300 if flow else None)
    if n_train is not None and n_train < len(Xtr):
        Xtr, ytr = Xtr[:n_train], ytr[:n_train]
        note += f"; training on its first {n_train} training points"
    keys = jax.random.split(k_net, args.seeds)
    res, acc, wall = {}, {}, {}
    for name in ("ewn", "swn", "standard"):
        t = time.perf_counter()
        res[name] = train(name, args, Xtr, ytr, width, keys, k_sgd)
        acc[name] = accuracy_table(res[name]["checkpoints"], res[name]["valid"], Xte, yte)
        wall[name] = time.perf_counter() - t
    metrics = {
        "data": note, "dynamics": args.dynamics, "activation": "relu2" if flow else "relu",
        "width": width, "n_train": int(len(Xtr)), "checkpoints": CHECKPOINTS, "fractions": FRACTIONS,
        "test_accuracy": acc, "wall_s": wall,
        "checkpoint_log_loss": {k: r["log_loss"] for k, r in res.items()},
        "checkpoint_steps": {k: r["steps"] for k, r in res.items()},
        "reached": {k: r["valid"] for k, r in res.items()},
    }
    if flow:
        metrics.update(rtol=args.rtol, checkpoint_s={k: r["s"] for k, r in res.items()},
                       checkpoint_log_t={k: r["log_t"] for k, r in res.items()})
    else:
        metrics.update(lr=args.lr, cap=args.cap, batch_size=args.batch_size, max_epochs=args.max_epochs,
                       final_log_loss={k: r["final_log_loss"] for k, r in res.items()},
                       epochs_kept={k: r["epochs"] for k, r in res.items()},
                       epochs_undone={k: r["undone"] for k, r in res.items()},
                       final_eta0={k: r["eta0"] for k, r in res.items()},
                       stalled={k: r["stalled"] for k, r in res.items()})
    figs = _figures(args, acc, res, flow)
    metrics["verdicts"], lines = _report(args, note, width, Xtr, acc, res, wall, flow)
    write_outputs(args.out, metrics, "\n".join(lines + ["", "Figures: " + ", ".join(figs)]))
    return metrics


def _figures(args, acc: dict, res: dict, flow: bool) -> list:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(CHECKPOINTS), figsize=(14, 3.8), sharey=True)
    for ax, j, ck in zip(axes, range(len(CHECKPOINTS)), CHECKPOINTS):
        for name in acc:
            n_ok = int(res[name]["valid"][j].sum())
            if n_ok == 0:
                continue
            m, sd = np.nanmean(acc[name][j], 0), np.nanstd(acc[name][j], 0)
            style = dict(PARAM_STYLE[name], label=f"{PARAM_STYLE[name]['label']} ({n_ok} seeds)")
            ax.errorbar(FRACTIONS, 100 * m, yerr=100 * sd, marker="o", ms=3, capsize=2, **style)
        ax.set(title=f"log L = {ck:g}", xlabel="fraction of hidden neurons pruned")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no seed got here", ha="center", transform=ax.transAxes)
    axes[0].set_ylabel("test accuracy (%)")
    figs = [save_figure(fig, args.out, "pruning.png")]
    if not flow:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, r in res.items():
            ax.plot(r["curve_x"], r["curve"], color=PARAM_STYLE[name]["color"], lw=0.8)
            ax.plot([], [], **PARAM_STYLE[name])
        for ck in CHECKPOINTS:
            ax.axhline(ck, color="gray", lw=0.5, ls="--")
        ax.set(xlabel="SGD steps of kept epochs", ylabel="full training log L")
        ax.legend()
        figs.append(save_figure(fig, args.out, "pruning_loss.png"))
    return figs


def _report(args, note, width, Xtr, acc, res, wall, flow) -> tuple[dict, list]:
    fi = {f: FRACTIONS.index(f) for f in (0.0, 0.8, 0.9)}
    rows = []
    for j, ck in enumerate(CHECKPOINTS):
        for name in acc:
            r = res[name]
            paper = f"{PAPER[0.8][name]} / {PAPER[0.9][name]}" if ck == -300 else "-"
            steps = r["steps"][j][r["valid"][j]]
            rows.append([f"{ck:g}", PARAM_STYLE[name]["label"], f"{int(r['valid'][j].sum())}/{args.seeds}",
                         mean_std(steps), mean_std(r["log_loss"][j]),
                         *(mean_std(100 * acc[name][j][:, fi[f]]) for f in (0.0, 0.8, 0.9)), paper])

    def heavy(name, j):  # mean accuracy at 80% and 90% pruned, over the seeds that got there
        return float(np.nanmean(acc[name][j][:, [fi[0.8], fi[0.9]]]))

    def answered(j):
        return all(res[k]["valid"][j].any() for k in acc)

    verdicts, lines_v = {}, []
    for j, claim, want_best in ((len(CHECKPOINTS) - 1, "at log L = -300 EWN keeps the most accuracy "
                                 "under heavy pruning (80-90%)", True),
                                (0, "at log L = -10 EWN is not the best under heavy pruning "
                                 "(paper: the worst)", False)):
        if not answered(j):
            verdicts[CHECKPOINTS[j]] = None
            missing = [PARAM_STYLE[k]["label"] for k in acc if not res[k]["valid"][j].any()]
            lines_v.append(_unanswered(claim, f"no seed of {', '.join(missing)} reached log L = "
                                       f"{CHECKPOINTS[j]:g} within the budget"))
            continue
        h = {k: heavy(k, j) for k in acc}
        best = h["ewn"] > max(h["swn"], h["standard"])
        ok = bool(best if want_best else not best)
        verdicts[CHECKPOINTS[j]] = ok
        lines_v.append(verdict(ok, claim, ", ".join(
            f"{PARAM_STYLE[k]['label']} {100 * v:.1f}%" for k, v in h.items()) + " (mean of 80% and 90%)"))
    if flow:
        how = (f"exact loss-normalized gradient flow d theta/ds = -grad log L (diffrax Tsit5, rtol "
               f"{args.rtol:g}, atol {args.rtol * 1e-2:g}), full batch, on the **ReLU^2** variant of "
               "the net (plain ReLU makes the flow a differential inclusion). Each checkpoint is the "
               "root-found crossing of its level. Steps = cumulative solver steps.")
    else:
        how = (f"**plain ReLU**, minibatch SGD, batch {args.batch_size}, step eta0 grad(L_b/|b|)/(L/n) "
               "with L the full training loss at the epoch's start (Exp-WN's eta0/L in the mean "
               f"convention); eta0 starts at {args.lr:g} and is adapted per epoch as in the Exp-WN "
               "MNIST code: an epoch that raises the **full training loss** is undone and eta0 /= 1.1, "
               f"else eta0 *= 1.1 (cap: {args.cap}). Budget: {args.max_epochs} attempted epochs. "
               "Checkpoints: the first kept epoch with full training log L at or below the level. "
               "Steps = SGD steps of kept epochs.")
    lines = [
        "# pruning", "",
        f"Data: {note}. MLP {Xtr.shape[1]}-{width}-10, hidden bias, WN on the hidden layer only, "
        f"cross-entropy summed over points. Dynamics: {how} Pruning criterion: the single "
        "final-norm parameter (exp(a_u), |g_u|, ||w_u||) at the checkpoint, no fine-tuning; a pruned "
        f"neuron's outgoing weights are zeroed. {args.seeds} seeds, vmapped.", "",
        table(["log L", "", "seeds there", "steps", "log L at ckpt", "acc. 0% pruned", "acc. 80%",
               "acc. 90%", "paper (MNIST) 80% / 90%"], rows), "",
        "Seeds that never reached a checkpoint are left out of its row. Wall time: "
        + ", ".join(f"{PARAM_STYLE[k]['label']} {v:.0f} s" for k, v in wall.items()) + ".",
    ]
    if not flow:
        lines += ["", "Where the runs ended: " + "; ".join(
            f"{PARAM_STYLE[k]['label']} final log L {mean_std(r['final_log_loss'])}, "
            f"{mean_std(r['epochs'])} kept / {mean_std(r['undone'])} undone epochs, "
            f"final eta0 {mean_std(r['eta0'])}" for k, r in res.items()) + "."]
    lines += ["", "## Verdicts", "", *lines_v]
    return verdicts, lines
