"""``wnjax demo``: the main job. A short tour of the library's core claims.

1. The equivalence check (EWN flow = unnormalized flow with rate ``||w_u||^2``; SWN differs;
   GD approaches both with an ``O(eta)`` error): ``wnjax.equivalence_check``.
2. lin-sep at small size (few seeds): ``wnjax.reproduce("lin-sep", ...)``, the same run as
   ``wnjax reproduce lin-sep``; its figures and report go to ``OUT/lin-sep/``.
3. XOR at small size: ``wnjax.reproduce("xor", ...)``, into ``OUT/xor/``.

With ``--jobs 2`` (the default on a machine with 2 or more cores) the equivalence check, which
is mostly compilation, runs in a second (spawned) process beside the two experiments.

Then one summary figure ``OUT/demo.png`` (equivalence, lin-sep and XOR panels), ``OUT/report.md``
(the numbers and the verdicts of every claim) and ``OUT/metrics.json``. The experiments' verdicts
are the data their runs return (``metrics["verdicts"]``), never recomputed here.

SIGINT/SIGTERM stop the demo at the running part's next safe point and start no other part:
``report.md`` and ``metrics.json`` then hold the finished parts, marked PARTIAL (no summary
figure, no verdict from a part cut short), and the exit status is 128 + the signal.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

import wnjax._runtime.interrupt as _interrupt
from wnjax._cli import positive_int

# The experiments, the equivalence check and matplotlib are imported where they are used, after
# the equivalence worker has been started: its own imports then overlap the parent's.

HELP = "run the main job: the equivalence check, then lin-sep and XOR at small size"

NAMES = ("ewn", "swn", "standard")
PARTS = ("equivalence", "lin_sep", "xor")
TITLES = {"equivalence": "equivalence", "lin_sep": "lin-sep", "xor": "XOR"}
# Seconds the equivalence worker has, after a stop request, to hand back its partial result.
WORKER_GRACE = 2.0


def embed_report(report: str, folder: str) -> str:
    """An experiment's ``report.md`` as a section of the demo report: its title dropped, its
    headings one level deeper, and its figure names prefixed by ``folder/`` (relative links)."""
    lines = report.rstrip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    out = []
    for line in lines:
        if line.startswith("#"):
            line = "##" + line
        elif line.startswith("Figures: "):
            names = [n.strip() for n in line[len("Figures: ") :].split(",") if n.strip()]
            line = "Figures: " + ", ".join(f"[{n}]({folder}/{n})" for n in names)
        out.append(line)
    return "\n".join(out).strip()


def _steps_key(metrics: dict, name: str) -> tuple[str, str]:
    """lin-sep's cost metric of ``name`` and its unit: GD epochs (accepted steps), or log t
    under ``flow``."""
    if metrics["dynamics"] == "gd":
        return f"{name}_epochs_to_target", "GD epochs (accepted steps) to the target"
    return f"{name}_log_t_to_target", "log t at the target"


def plot_summary(eq: dict, lin: dict, xor: dict, out: str, name: str = "demo.png") -> str:
    """One figure, six panels: the equivalence's flow-path errors and GD errors against ``eta``;
    lin-sep's cost to the target and final relative neuron norms; XOR's relative neuron norms
    and kept-neuron counts beside the paper's. **Returns:** the file name written in ``out``."""
    import numpy as np

    import wnjax.experiments._lin_sep as lin_sep_experiment
    import wnjax.experiments._xor as xor_experiment
    from wnjax.experiments._report import PARAM_STYLE, pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    # (a) flow paths: EWN-GF and SWN-GF against the rate-||w_u||^2 flow.
    ax = axes[0, 0]
    errs = {"EWN": eq["ewn_max_rel_err"], "SWN": eq["swn_max_rel_err"]}
    ax.bar(
        list(errs),
        list(errs.values()),
        color=[PARAM_STYLE["ewn"]["color"], PARAM_STYLE["swn"]["color"]],
    )
    for i, v in enumerate(errs.values()):
        ax.text(i, v, f"{v:.1e}", ha="center", va="bottom", fontsize=9)
    ax.axhline(eq["rtol"], ls=":", c="k", lw=0.8, label=f"solver rtol {eq['rtol']:g}")
    ax.set(
        yscale="log",
        ylabel="max_t ||w - w_rate|| / ||w_rate||",
        title="equivalence: flow vs rate-||w_u||^2 flow",
    )
    ax.legend(fontsize=8)
    # (b) GD: both errors shrink like eta.
    ax = axes[0, 1]
    for key, label, exponent in (
        ("gd_drift", "EWN-GD vs rate-GD", eq["gd_drift_exponent"]),
        ("gd_vs_flow", "GD vs flow", eq["gd_vs_flow_exponent"]),
    ):
        eta, err = np.asarray(eq[key], float).T
        ax.loglog(eta, err, "o-", label=f"{label} (slope {exponent:.2f})")
    ax.set(
        xlabel="eta",
        ylabel="relative error at T = k eta",
        title=f"equivalence: GD over T = {eq['gd_horizon']:g}",
    )
    ax.legend(fontsize=8)
    # (c) lin-sep: cost to the target, per seed, beside the paper's epochs.
    ax = axes[0, 2]
    for i, k in enumerate(NAMES):
        key, unit = _steps_key(lin, k)
        cost = np.asarray(lin[key], float)
        ax.bar(i, np.nanmedian(cost), color=PARAM_STYLE[k]["color"], alpha=0.5)
        ax.plot(np.full(cost.size, i), cost, "o", color=PARAM_STYLE[k]["color"], ms=4)
        paper = lin_sep_experiment.PAPER_EPOCHS.get(k)
        if paper is not None and lin["dynamics"] == "gd":
            ax.plot(i, paper, "k*", ms=10, label="paper (epochs)" if k == "ewn" else None)
    ax.set_xticks(range(len(NAMES)), [PARAM_STYLE[k]["label"] for k in NAMES])
    ax.set(
        yscale="log" if lin["dynamics"] == "gd" else "linear",
        ylabel=unit,
        title=f"lin-sep: to log L = {lin['target_log_loss']:g}",
    )
    if lin["dynamics"] == "gd":
        ax.legend(fontsize=8)
    # (d), (e) final relative norms, sorted, mean over seeds; (f) XOR kept neurons vs paper.
    for ax, metrics, title, threshold in (
        (
            axes[1, 0],
            lin,
            "lin-sep: final relative norms (8 neurons)",
            lin_sep_experiment.THRESHOLD,
        ),
        (axes[1, 1], xor, "XOR: final relative norms (20 neurons)", xor_experiment.THRESHOLD),
    ):
        for k in NAMES:
            rel = -np.sort(-np.asarray(metrics[f"{k}_relative_norms"], float), axis=1)
            kept = np.asarray(metrics[f"{k}_kept"], float)
            ax.plot(
                np.arange(rel.shape[1]),
                rel.mean(0),
                "o-",
                ms=3,
                color=PARAM_STYLE[k]["color"],
                label=f"{PARAM_STYLE[k]['label']}: {kept.mean():.3g} above {threshold}",
            )
        ax.axhline(threshold, ls="--", c="k", lw=0.8)
        ax.set(xlabel="neuron (sorted)", ylabel="||w_u|| / ||W_1||", title=title, ylim=(0, 1))
        ax.legend(fontsize=8)
    ax = axes[1, 2]
    for i, k in enumerate(NAMES):
        kept = np.asarray(xor[f"{k}_kept"], float)
        ax.bar(i, kept.mean(), color=PARAM_STYLE[k]["color"], alpha=0.5)
        ax.plot(np.full(kept.size, i), kept, "o", color=PARAM_STYLE[k]["color"], ms=4)
        ax.plot(i, xor_experiment.PAPER[k], "k*", ms=10, label="paper" if k == "ewn" else None)
    ax.set_xticks(range(len(NAMES)), [PARAM_STYLE[k]["label"] for k in NAMES])
    ax.set(
        ylabel=f"neurons with relative norm > {xor_experiment.THRESHOLD}",
        title="XOR: kept neurons (of 20)",
        ylim=(0, xor_experiment.WIDTH + 1),
    )
    ax.legend(fontsize=8)
    return save_figure(fig, out, name)


def equivalence_job(seed: int, x64: bool) -> tuple[dict, float]:
    """``equivalence_check`` on the default problem of ``seed`` with float64 on or off, as run in
    a worker process. **Returns:** the check's dict and the seconds it took."""
    import jax

    from wnjax._analysis.equivalence import equivalence_check

    jax.config.update("jax_enable_x64", x64)
    start = time.perf_counter()
    with _interrupt.handling():  # a signal to this worker stops the check, which returns
        eq = equivalence_check(jax.random.key(seed))
    return eq, time.perf_counter() - start


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=os.path.join("runs", "demo"), help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the equivalence problem")
    parser.add_argument("--target", type=float, default=-300.0, help="lin-sep's target log L")
    parser.add_argument("--xor-target", type=float, default=-50.0, help="XOR's target log L")
    parser.add_argument(
        "--seeds", type=positive_int, default=3, help="seeds of lin-sep and XOR (vmapped)"
    )
    parser.add_argument(
        "--max-steps",
        type=positive_int,
        default=None,
        help="GD step budget of lin-sep and XOR (default: each experiment's own)",
    )
    parser.add_argument(
        "--jobs",
        type=positive_int,
        default=min(2, os.cpu_count() or 1),
        help="2: run the equivalence check in a second process beside the "
        "experiments; 1: everything in this process, one after the other",
    )


def run_parts(args: argparse.Namespace, parts: dict, cut: dict, seconds: dict) -> None:
    """The equivalence check (in a spawned process when ``args.jobs > 1``) and the lin-sep and
    XOR runs of ``wnjax.reproduce`` into ``OUT/lin-sep`` and ``OUT/xor``.

    Fills ``parts`` (``'equivalence'``, ``'lin_sep'``, ``'xor'``: the check's dict and the
    experiments' metrics) as each part finishes, and ``seconds``. A stop request (SIGINT/SIGTERM)
    starts no further part; a part it cut short goes into ``cut`` instead of ``parts``.
    """
    import jax

    size = {} if getattr(args, "max_steps", None) is None else {"max_steps": args.max_steps}
    seeds, xor_target = getattr(args, "seeds", 3), getattr(args, "xor_target", -50.0)
    x64 = bool(jax.config.read("jax_enable_x64"))
    pool = pending = None
    if getattr(args, "jobs", 1) > 1:
        pool = multiprocessing.get_context("spawn").Pool(1)
        print("equivalence check (in a second process) ...", flush=True)
        pending = pool.apply_async(equivalence_job, (args.seed, x64))
    else:
        print("equivalence check ...", flush=True)
        _equivalence_done(equivalence_job(args.seed, x64), parts, cut, seconds)
    from wnjax.experiments._reproduce import reproduce

    try:
        experiments = (
            ("lin_sep", "lin-sep", f"lin-sep, {seeds} seeds", args.target),
            ("xor", "xor", f"XOR, {seeds} seeds", xor_target),
        )
        for key, name, title, target in experiments:
            if _interrupt.requested():
                break
            print(f"{title}, to log L = {target:g} ...", flush=True)
            t = time.perf_counter()
            metrics = reproduce(
                name, seeds=seeds, out=os.path.join(args.out, name), target=target, **size
            )
            seconds[key] = time.perf_counter() - t
            if _interrupt.requested() or (isinstance(metrics, dict) and metrics.get("partial")):
                cut[key] = metrics
            else:
                parts[key] = metrics
        if pending is not None:
            while not pending.ready() and not _interrupt.requested():
                pending.wait(0.1)
            pending.wait(WORKER_GRACE)  # at once unless stopped: then its partial result
            if pending.ready():
                _equivalence_done(pending.get(), parts, cut, seconds)
    finally:
        if pool is not None:
            pool.terminate()  # a check still running after a stop request is not waited for
            pool.join()


def _equivalence_done(job: tuple[dict, float], parts: dict, cut: dict, seconds: dict) -> None:
    """Record the equivalence check's ``(result, seconds)`` and print its report."""
    from wnjax._analysis.equivalence import format_report

    eq, seconds["equivalence"] = job
    (cut if eq.get("interrupted") else parts)["equivalence"] = eq
    print(format_report(eq), flush=True)


def _settings(args: argparse.Namespace) -> dict:
    return {
        "seed": args.seed,
        "seeds": getattr(args, "seeds", 3),
        "lin_sep_target": args.target,
        "xor_target": getattr(args, "xor_target", -50.0),
        **({} if getattr(args, "max_steps", None) is None else {"max_steps": args.max_steps}),
        "jobs": getattr(args, "jobs", 1),
    }


def _equivalence_verdict(eq: dict) -> dict:
    from wnjax.experiments._report import judge

    return judge(
        bool(eq["equivalent"] and eq["swn_differs"]),
        "EWN gradient flow = unnormalized flow with per-neuron rate ||w_u||^2; SWN differs",
        f"EWN max path error {eq['ewn_max_rel_err']:.1e}, SWN {eq['swn_max_rel_err']:.2f}; "
        f"GD error ~ eta^{eq['gd_vs_flow_exponent']:.2f}",
    )


def run(args: argparse.Namespace) -> int:
    """Run the tour, write ``demo.png``, ``report.md`` and ``metrics.json`` under ``args.out``.

    **Returns:** the exit code, 0 if the equivalence holds (EWN matches, SWN differs); the
    experiments' verdicts are reported but do not change it; 128 + the signal when stopped.
    """
    from wnjax._sweeps.store import writable_dir
    from wnjax.experiments._report import REPRODUCED, write_outputs

    writable_dir(args.out)
    start = time.perf_counter()
    parts, cut, seconds = {}, {}, {}

    def partial() -> None:
        write_partial(args, parts, cut, seconds)
        print(
            f"PARTIAL: interrupted; finished: {', '.join(TITLES[k] for k in parts) or 'none'}; "
            f"{args.out}/report.md and metrics.json hold them."
        )

    with _interrupt.handling(on_timeout=partial):
        run_parts(args, parts, cut, seconds)
        if _interrupt.requested():
            _interrupt.stopping()  # what follows writes the results
    if len(parts) < len(PARTS):
        partial()
        return _interrupt.exit_code()
    eq, lin, xor = (parts[k] for k in PARTS)
    lin_out, xor_out = os.path.join(args.out, "lin-sep"), os.path.join(args.out, "xor")
    figure = plot_summary(eq, lin, xor, args.out)
    reports = {}
    for key, folder in (("lin_sep", lin_out), ("xor", xor_out)):
        with open(os.path.join(folder, "report.md")) as f:
            reports[key] = f.read()
    eq_verdict = _equivalence_verdict(eq)
    verdicts = {
        "equivalence": [eq_verdict],
        "lin_sep": list(lin.get("verdicts", [])),
        "xor": list(xor.get("verdicts", [])),
    }
    seconds["total"] = time.perf_counter() - start
    metrics = {
        "equivalence": eq,
        "lin_sep": lin,
        "xor": xor,
        "verdicts": verdicts,
        "settings": _settings(args),
        "seconds": seconds,
    }
    write_outputs(args.out, metrics, _report(eq, eq_verdict, reports, verdicts, figure, seconds))
    n_ok = sum(v["verdict"] == REPRODUCED for vs in verdicts.values() for v in vs)
    n_all = sum(len(vs) for vs in verdicts.values())
    print(
        f"\n{n_ok}/{n_all} claims reproduced; wrote {os.path.join(args.out, figure)}, "
        f"{args.out}/report.md and {args.out}/metrics.json ({seconds['total']:.0f} s)"
    )
    return 0 if (eq["equivalent"] and eq["swn_differs"]) else 1


def write_partial(args: argparse.Namespace, parts: dict, cut: dict, seconds: dict) -> None:
    """Write ``report.md`` and ``metrics.json`` of a stopped demo: the finished parts with their
    verdicts, marked PARTIAL, and the parts cut short or not run, without a verdict."""
    from wnjax._analysis.equivalence import format_report
    from wnjax.experiments._report import render_verdict, write_outputs

    parts, cut = dict(parts), dict(cut)  # the main thread may still add to them
    verdicts = {}
    if "equivalence" in parts:
        verdicts["equivalence"] = [_equivalence_verdict(parts["equivalence"])]
    for key in ("lin_sep", "xor"):
        if key in parts:
            verdicts[key] = list(parts[key].get("verdicts", []))
    not_finished = [k for k in PARTS if k not in parts]
    missing = [TITLES[k] + (" (cut short)" if k in cut else "") for k in not_finished]
    lines = [
        "# wnjax demo",
        "",
        "**PARTIAL**: interrupted (SIGINT/SIGTERM). Finished: "
        f"{', '.join(TITLES[k] for k in parts) or 'none'}. Not finished, no verdict: "
        f"{', '.join(missing)}. No summary figure.",
    ]
    for key in PARTS:
        if key not in parts:
            continue
        lines += ["", f"## {TITLES[key]}", ""]
        if key == "equivalence":
            lines += ["```", format_report(parts[key]), "```", ""]
            lines += [render_verdict(v) for v in verdicts[key]]
        else:
            folder = "lin-sep" if key == "lin_sep" else "xor"
            lines.append(f"Report: [{folder}/report.md]({folder}/report.md)")
            lines += [""] + [render_verdict(v) for v in verdicts[key]]
    metrics = {
        **{k: parts.get(k, cut.get(k)) for k in PARTS},
        "partial": True,
        "finished": list(parts),
        "not_finished": not_finished,
        "verdicts": verdicts,
        "settings": _settings(args),
        "seconds": dict(seconds),
    }
    write_outputs(args.out, metrics, "\n".join(lines))


def _report(
    eq: dict, eq_verdict: dict, reports: dict, verdicts: dict, figure: str, seconds: dict
) -> str:
    """The demo's ``report.md``: a verdict summary table from ``verdicts`` (part -> list of
    ``{"claim", "verdict", "detail"}``), then one section per part."""
    from wnjax._analysis.equivalence import format_report
    from wnjax.experiments._report import REPRODUCED, render_verdict

    titles = TITLES
    lines = [
        "# wnjax demo",
        "",
        "A short tour of the first paper's claims: the equivalence check, then the lin-sep and XOR "
        "experiments at small size, run exactly as `wnjax reproduce lin-sep` / `wnjax reproduce "
        "xor` (their full figures and reports are in `lin-sep/` and `xor/`).",
        "",
        f"![demo]({figure})",
        "",
        "## Verdicts",
        "",
        "| part | claim | verdict |",
        "|---|---|---|",
    ]
    for part, vs in verdicts.items():
        for v in vs:
            tag = v["verdict"] if v["verdict"] == REPRODUCED else f"**{v['verdict']}**"
            lines.append(f"| {titles[part]} | {v['claim']} | {tag} |")
    lines += [
        "",
        "## 1. EWN gradient flow = unnormalized flow with per-neuron rate ||w_u||^2",
        "",
        "```",
        format_report(eq),
        "```",
        "",
        render_verdict(eq_verdict),
        "",
        "## 2. lin-sep",
        "",
        embed_report(reports["lin_sep"], "lin-sep"),
        "",
        "## 3. XOR",
        "",
        embed_report(reports["xor"], "xor"),
        "",
        "Time (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())
        + " (with --jobs 2 the equivalence check runs beside the experiments).",
        "",
    ]
    return "\n".join(lines)
