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
        "collapsed in the tables (its models are (nearly) one model).",
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
