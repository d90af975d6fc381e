"""Model files: save our classifiers, load ours and other people's, safely.

Our format is a pair ``model.safetensors`` (weights; a format that cannot run code when read)
+ ``model.json`` (:class:`ModelSpec`: builder name and arguments, class names in output order,
input size and normalisation, tool version, free-form metadata), in a folder or named by a stem::

    from unlearnable.checkpoints import ModelSpec, load_model, save_model

    spec = ModelSpec(arch="resnet20", classes=["cat", "dog"], input_size=32,
                     metadata={"trained_on": "photos-protected", "epochs": 40})
    save_model(model, "runs/victim", spec)        # runs/victim/model.{safetensors,json}
    loaded = load_model("runs/victim")            # LoadedModel, eval mode
    labels = loaded.predict(images)               # images (B, C, H, W) float in [0, 1]

:func:`load_model` also reads TorchScript and ``torch.export`` archives (with ``classes`` and
``input_size`` from the caller), and bare state dicts for a registered architecture (``arch=``):
safetensors, or a pickled ``.pt``/``.pth`` only with ``trust_pickle=True``.
:func:`read_state_dict` is the one reader of weights files in the package (surrogates use it
too).
"""

from .files import load_model, model_paths, save_model
from .formats import (
    FORMAT_EXPORT,
    FORMAT_PICKLE,
    FORMAT_SAFETENSORS,
    FORMAT_TORCHSCRIPT,
    FORMAT_UNLEARNABLE,
    MODEL_JSON,
    MODEL_WEIGHTS,
    UntrustedPickleError,
    WeightsFile,
    detect_format,
    read_state_dict,
    sha256_file,
)
from .loaded import LoadedModel
from .spec import SCHEMA_NAME, SCHEMA_VERSION, ModelSpec

__all__ = [
    "FORMAT_EXPORT",
    "FORMAT_PICKLE",
    "FORMAT_SAFETENSORS",
    "FORMAT_TORCHSCRIPT",
    "FORMAT_UNLEARNABLE",
    "MODEL_JSON",
    "MODEL_WEIGHTS",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "LoadedModel",
    "ModelSpec",
    "UntrustedPickleError",
    "WeightsFile",
    "detect_format",
    "load_model",
    "model_paths",
    "read_state_dict",
    "save_model",
    "sha256_file",
]
