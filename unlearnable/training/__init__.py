"""One training loop for every trainer in the package (victims, adversarial training, clean
unlearning, mask-constrained fine-tuning, diffusion fine-tuning): :func:`fit`.

* :mod:`.loop`: :func:`fit`, :class:`FitConfig`, :class:`StepResult`, :class:`Mean`,
  :class:`History`;
* :mod:`.params`: :class:`ParamFilter` (train only some tensors);
* :mod:`.callbacks`: evaluation columns, CSV logging, progress, early stopping;
* :mod:`.schedules`: learning-rate schedules by epoch;
* :mod:`.seeding`: named seed streams and the seeded global RNG;
* :mod:`.batches`: moving and measuring batches of any structure;
* :mod:`.classification`: image classification helpers (batches, accuracy, histogram).

Example (a tiny regression on dict batches)::

    from unlearnable.training import FitConfig, fit, stop_when

    history = fit(
        model,
        [{"x": x, "y": y} for x, y in pairs],
        lambda m, b: ((m(b["x"]) - b["y"]) ** 2).mean(),
        lambda params: torch.optim.AdamW(params, lr=1e-3),
        FitConfig(epochs=10, seed=0),
        callbacks=[stop_when("train_loss", "<", 1e-3)],
    )
"""

from .batches import batch_len, index_batches, to_device
from .callbacks import (
    Callback,
    Columns,
    CSVLogger,
    EpochProgress,
    StepProgress,
    StopOnNonFinite,
    StopWhen,
    rows_to_csv,
    stop_when,
)
from .loop import (
    BatchSource,
    FitConfig,
    FitState,
    History,
    LossFn,
    Mean,
    OptimizerFactory,
    Schedule,
    StepInfo,
    StepResult,
    fit,
)
from .params import ParamFilter, select_parameters
from .schedules import Constant, Cosine, MultiStep
from .seeding import derive_seed, seeded_global_rng, stream_generator

__all__ = [
    "BatchSource",
    "CSVLogger",
    "Callback",
    "Columns",
    "Constant",
    "Cosine",
    "EpochProgress",
    "FitConfig",
    "FitState",
    "History",
    "LossFn",
    "Mean",
    "MultiStep",
    "OptimizerFactory",
    "ParamFilter",
    "Schedule",
    "StepInfo",
    "StepProgress",
    "StepResult",
    "StopOnNonFinite",
    "StopWhen",
    "batch_len",
    "derive_seed",
    "fit",
    "index_batches",
    "rows_to_csv",
    "seeded_global_rng",
    "select_parameters",
    "stop_when",
    "stream_generator",
    "to_device",
]
