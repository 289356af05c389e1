"""Every figure of the report, by file name: its title and caption, in the report's order (the figures'
modules draw them, `orchestrator.results.report` lays them out under these words)."""

from __future__ import annotations

from pdiff.names import COLLAPSE_IOU, COLLAPSE_SPREAD

__all__ = ["FIGURES", "caption"]



def _collapse_rule(whose: str) -> str:
    """The collapse rule as the captions word it (pdiff.verdicts holds the rule and its thresholds)."""
    return (f"pairwise IoU of {whose} wrong-prediction sets >= {COLLAPSE_IOU} or spread < {COLLAPSE_SPREAD}x the "
            "snapshots'")


FIGURES: dict[str, tuple[str, str]] = {
    "similarity.png": (
        "Similarity of wrong predictions",
        "Mean IoU of the sets of test examples two models get wrong: between two snapshots (original-original, "
        "self-pairs excluded), between two p-diff models of the val-selected trial (generated-generated), and "
        "between a p-diff model and a snapshot (original-generated). Computed from each model's wrong-prediction "
        "set as stored in the tables (test_wrong). 'COLLAPSED' over generated-generated: the trial is flagged "
        "collapsed in the tables (its models are (nearly) one model). A mean over all pairs hides how close each "
        "model is to its *nearest* snapshot: the max-IoU figure below shows that, model by model.",
    ),
    "max_iou.png": (
        "Max IoU of each model to the snapshots",
        "Per family, the distribution of each model's max IoU of its test mistakes to any snapshot's (1 = the same "
        "mistakes as some snapshot: a copy; lower = more novel): p-diff's generated models of the val-selected "
        "trial and each baseline's models (their stored test_max_iou), and as the reference the snapshots' "
        "leave-one-out (each snapshot's max IoU to the *other* snapshots, recomputed from their stored "
        "wrong-prediction sets; sources.snapshot_loo_max_iou is its mean, the dotted line). Box: quartiles and "
        "median, whiskers from min to max; points: the models, spread sideways only to be seen (their height is "
        "the value). Tick labels: the number of models and their mean. Dashed line: the collapse threshold "
        f"(COLLAPSE_IOU = {COLLAPSE_IOU}, for the IoU between a family's own models): a model at or above it makes "
        "(nearly) the mistakes of one snapshot. How to read it: a family whose box sits at or above the "
        "snapshots' is no more novel than a snapshot is among the snapshots (memorising), however low the mean "
        "IoUs of the similarity figure are.",
    ),
    "accuracy_novelty.png": (
        "Accuracy against novelty",
        "Test accuracy of every model against its test max IoU to the snapshots (test_max_iou; 1 = the same "
        "mistakes as some snapshot, a copy). Snapshots: max IoU to the other snapshots. p-diff: the val-selected "
        "trial (other trials faint; x: a collapsed trial). Large outlined markers: each method's mean. Up and to "
        "the left is better. No jitter: each point is drawn at its model's values, so identical models overlap, "
        "and the legend gives the number of models and of distinct points where they differ. A collapsed family "
        f"({_collapse_rule('its')}, from the tables) has a black X over its mean and the label "
        "'collapsed': its models are (nearly) one model.",
    ),
    "pareto.png": (
        "Accuracy and novelty: the search's Pareto front",
        "Drawn for a sweep searched on two objectives (accuracy and novelty, as its Optuna journal records them; "
        "no figure otherwise). Every completed trial of the cell: x its val max IoU to the snapshots (the mean "
        "over its generated models, trials.val_max_iou; lower = more novel), y its val accuracy (its best "
        "generated model's, trials.val_acc_pct). Joined, ringed points: the Pareto front (no other trial is both "
        "as novel and as accurate, one of them strictly); star: the val-selected trial. Reference points, the "
        "same statistics on the validation split: the snapshots (their leave-one-out max IoU, "
        "sources.snapshot_loo_val_max_iou; the best snapshot's val accuracy) and each baseline (its models' "
        "mean val max IoU; its best model's val accuracy). Up and to the left is better; a front that does not "
        "reach left of the snapshots offers no novelty at their accuracy. A pooled panel draws each cell's "
        "front apart. Validation split only: the test split is never used to choose.",
    ),
    "tsne.png": (
        "t-SNE of parameter vectors",
        "t-SNE (scikit-learn, PCA initialisation, perplexity scaled to the number of vectors) of the generated "
        "parameter subset: snapshots, p-diff (val-selected trial) and each baseline. Vectors holding NaN or "
        "infinite values (a diverged run) are left out, with a count on the panel.",
    ),
    "search_history.png": (
        "Search history",
        "Objective (val accuracy of the val-selected generated model) of each trial in the order the search "
        "asked for it (its stored `trial_index`; tables without it: the modification time of its `trials` file, "
        "the row a trial writes last); the line is the best so far. Grey crosses: trials stopped early or failed "
        "(their last reported value). Ringed black X: a collapsed trial (its generated models are (nearly) one "
        f"model: {_collapse_rule('their')}).",
    ),
    "parallel_coordinates.png": (
        "Searched hyperparameters",
        "Parallel coordinates of the knobs that vary across the sweep's trials, each axis normalised to the "
        "sweep's range (log scale for knobs spanning more than a decade), coloured by val accuracy.",
    ),
    "importance.png": (
        "Hyperparameter importance",
        "fANOVA importance of each searched knob for val accuracy (optuna.importance.get_param_importances on "
        "a study rebuilt in memory from the completed trials of the cell).",
    ),
    "loss_curves.png": (
        "Training losses",
        "Training loss against step (log scale) of the autoencoder (MSE of the reconstruction, normalised "
        "units, with the noise augmentation on) and of the latent diffusion model (MSE of the predicted noise), "
        "from the `curves` table: bold, the cell's val-selected trial; faint, up to 4 other completed trials "
        "(best val accuracy first). Each point is the mean loss of the steps since the previous point (at most "
        "200 points per phase and trial).",
    ),
}


def caption(name: str, how: str) -> tuple[str, str]:
    """A figure's title and caption; the search history's says how its trials were ordered (`how`:
    `orchestrator.results.figure_data.trial_history`'s)."""
    title, text = FIGURES[name]
    return title, text + (f" Order used here: {how}." if name == "search_history.png" else "")
