"""Sweep YAML -> a typed, validated `SweepSpec`. Every error names the file and the field.

    name: smoke
    storage: results                  # local folder or any pyarrow URI (s3://bucket/prefix)
    seed: 0
    sources:
      archs: [cnn_small, mlp]
      datasets: [digits]
      seeds: [0, 1]
      train: {epochs: 15, batch_size: 64, lr: 0.05}
      subset: {cnn_small: ["bn2.*", "fc.*"]}     # optional; default pdiff.DEFAULT_SUBSET
      collect: {k: 50, interval: 2, unit: step, lr: 0.01}
      max_failures: 5                 # restarts of a cell's Ray Train run (a lost spot node); it resumes
      max_acc_drop: 5                 # points the snapshots' mean val acc may fall below the source's (pdiff.health)
    pdiff:
      knobs:                          # a value is fixed; a mapping with `type` is searched
        latent_dim: {type: choice, values: [32, 64]}
        latent_noise: {type: loguniform, low: 0.01, high: 0.5}
        ae_steps: 5000                # a bound: the AE stops once its reconstructions reach ae_min_r2
        ae_min_r2: 0.95               # share of the snapshots' variance the AE must reconstruct
        normalize: global             # global (per-coordinate centre, one scale) | tensor (per-tensor)
        sampler: ddim
      objective: [accuracy]           # best val acc of the N models; mean_accuracy: their mean (more resolution);
                                      # either may be followed by novelty for a multi-objective search
      num_samples: 4                  # with no searched knob: repeats of the fixed configuration
      max_concurrent: 2
      search: tpe                     # tpe | random | grid (all searched knobs choices)
      early_stopping: {grace_period: 2}   # ASHA on intermediate val accuracy; omit for none
      baselines: true
      noise_sigma: 0.01
    resources:
      sources: {cpus: 1, gpus: 0, workers: 1}
      trials: {cpus: 1, gpus: 0}

Every key, its type, default and meaning: `python -m orchestrator.explain` (docs/reference.md), generated from
the fields the keys fill, which declare them once (`orchestrator.spec.keys` lays the file out).

The package: `model` (SweepSpec, Cell, Distribution, Resources), `keys` (the YAML layout), `loader` (the file
and its YAML), `reader` (typed reading with field paths), `parse` (parse_spec, load_spec), `docs` (the reference).

Rules beyond the types:

- Values are checked by the dataclasses they fill, in their `__post_init__` (pdiff's TrainConfig,
  CollectConfig, AEConfig, LDMConfig, PdiffConfig; Resources, Distribution and SweepSpec here):
  a `pdiff.checks.ConfigError` naming the field becomes a SpecError at its path in the file. The parser
  maps YAML to Python types and checks the sweep tool's own size maxima (below).
- `name` is a slug: ASCII letters, digits, '-', '_' and '.', starting with a
  letter or a digit, at most 128 characters. It names the sweep's folder
  `<storage>/<name>`, so it can never be '.', '..' or hold a separator.
- The file is UTF-8 YAML of at most 1 MB. YAML aliases (`*anchor`, and so `<<:`
  merges) are refused: a few aliases can expand to gigabytes (an alias bomb). So is a
  key written twice in one mapping (YAML would keep the last one silently), naming both
  lines; a syntax error is one line with its line and column.
- Each subset pattern must match a parameter of its architecture, as built for each dataset
  of the sweep (on torch's meta device: no memory, no weights), so a typo fails here, not in
  stage 1 on Ray.
- Numbers are finite, and every number has a documented maximum (larger values are typos or runs of
  weeks; a message names the field and its maximum). Shares, decays and points of accuracy
  (ae_min_r2, ae_min_fidelity, ema_decay, sources.max_acc_drop) are bounded by their dataclasses.
  The maxima, from the fields' metadata:

"""

from orchestrator.spec.docs import REFERENCE_PATH, maxima_text, reference, spec_keys
from orchestrator.spec.keys import MAXIMA, SPEC_PATHS
from orchestrator.spec.loader import MAX_SPEC_BYTES
from orchestrator.spec.model import (DISTRIBUTIONS, MAX_SEED, OBJECTIVES, SEARCHES, Cell, Distribution, Resources,
                                     SpecError, SweepSpec, is_placeholder_storage)
from orchestrator.spec.parse import load_spec, parse_spec
from orchestrator.store.paths import is_sweep_name

__doc__ += maxima_text("      ")

__all__ = ["SpecError", "Distribution", "Resources", "Cell", "SweepSpec", "load_spec", "parse_spec",
           "is_sweep_name", "is_placeholder_storage", "MAXIMA", "MAX_SEED", "SPEC_PATHS", "DISTRIBUTIONS",
           "OBJECTIVES", "SEARCHES", "MAX_SPEC_BYTES", "reference", "spec_keys", "REFERENCE_PATH"]
