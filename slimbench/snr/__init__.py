"""SNR analysis of Adam's second moments and the compression rules derived from it (paper Sec. 4).

    model + Adam ──track_snr──► SNRRecord (snr.json) ──derive_rules──► rules.json ──► SlimAdam(rules=...)

* :mod:`~slimbench.snr.stats`: ``snr(v, dims)``, the candidates K of a shape.
* :mod:`~slimbench.snr.tracker`: ``track_snr(model, optimizer)`` hooks any Adam-family optimizer.
* :mod:`~slimbench.snr.record`: the versioned ``slimbench.snr`` file.
* :mod:`~slimbench.snr.derive`: mean SNR, K* per parameter or layer type, saved fraction vs cutoff, transfer.
* :mod:`~slimbench.snr.run`: train a task with Adam(W) under the tracker (``python -m slimbench snr``).
"""
from slimbench.snr.derive import Applied, Derived, apply_rules, derive_rules, mean_snr, sweep_cutoffs
from slimbench.snr.record import SNRRecord, load_snr
from slimbench.snr.run import run_snr
from slimbench.snr.stats import candidates, dims_key, snr, snr_all, snr_many
from slimbench.snr.tracker import Schedule, SNRTracker, track_snr

__all__ = ["snr", "snr_all", "snr_many", "candidates", "dims_key", "track_snr", "SNRTracker", "Schedule",
           "SNRRecord", "load_snr", "derive_rules", "Derived", "mean_snr", "sweep_cutoffs", "apply_rules",
           "Applied", "run_snr"]
