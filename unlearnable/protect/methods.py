"""Protection methods as registry entries: a frozen config class plus a ``prepare`` function.

:func:`~unlearnable.protect.protect_directory` takes a method config (or a registered name,
which means that method's default config) and :class:`RunOptions`. It finds the entry of the
config's class in :data:`METHODS`, discovers the images, calls the entry's ``prepare(config,
context)`` with a :class:`MethodContext` (folders, discovered files, key, run options), and
hands the :class:`~unlearnable.io.runner.FolderJob` it returns (a protector, each file's label,
what the manifest records) to the folder runner (:func:`unlearnable.io.runner.run_folder`), which
reads, protects, writes and records every file. Nothing else looks at the method: no if/else on
method names anywhere.

Built-in entries (``unlearnable protect --method NAME``):

* ``cuda`` (:class:`~.cuda_method.CudaConfig`): a key-derived blur filter per class;
* ``cluster-cuda`` (:class:`~.cuda_method.ClusterCudaConfig`): the same filters on the k-means
  clusters of a surrogate's features (label-agnostic; the CLI's ``--labels clusters``);
* ``photo`` (:class:`~.photo_method.PhotoConfig`): for photographs, CUDA designed at a
  scraper's resolution plus a key-derived colour transform per class;
* ``uc`` (:class:`~.uc_method.UCMethodConfig`): Unlearnable Clusters.

This module and the entry modules are importable without torch (the CLI lists the entries
before any command runs); a ``prepare`` function imports the heavy modules it needs inside.

How to add a method
-------------------
1. Tensor code and a protector, in their own module (say ``protect/stacked.py``): pure
   functions on ``(B, C, H, W)`` float tensors in [0, 1], and a class that fits
   :class:`~unlearnable.io.runner.Protector` (``method`` name for the manifest,
   ``parameters()``, ``plan(h, w)``, ``describe_plan(plan)``, ``apply(images, label_ids, plan)``;
   picklable: it is sent to worker processes). Derive all randomness from the key.
2. The entry, in a torch-free module (say ``protect/stacked_method.py``)::

       from dataclasses import dataclass

       from ..errors import UsageError
       from .methods import MethodContext, register_method

       @dataclass(frozen=True)
       class StackedConfig:
           labels: str = "auto"          # auto | folders | single | FILE.csv
           eps: float = 8 / 255

           def __post_init__(self) -> None:   # refuse bad settings early, as UsageError
               if not 0 < self.eps <= 1:
                   raise UsageError(f"eps must be in (0, 1], got {self.eps}")

       @register_method("stacked", StackedConfig, summary="CUDA filters plus a colour shortcut")
       def prepare_stacked(config: StackedConfig, context: MethodContext):
           from ..io.runner import FolderJob
           from .stacked import StackedProtector       # heavy imports here

           labels = context.assign_labels(config.labels)
           return FolderJob(
               protector=StackedProtector(context.key, labels.classes, config.eps),
               labels=labels.labels, classes=labels.classes, label_mode=labels.mode,
               problems=labels.problems,
           )

3. Add ``".stacked_method"`` to :data:`BUILTIN_METHOD_MODULES` (a third-party package instead
   names its module in the ``unlearnable.plugins`` entry-point group).

That is all: ``protect_directory(src, dst, key, StackedConfig(eps=4 / 255))`` and
``method="stacked"`` work, and ``unlearnable protect --method stacked`` is offered. For the
command line, an entry may also give ``cli_options`` (:class:`MethodOption`: options that
``unlearnable protect`` adds) and ``from_options(values) -> config`` (``values``: every method
option of the command by name, ``None`` when not given; raise ``UsageError`` for options that
do not apply). Without ``from_options``, the config is built from the values whose names are
fields of the config class. A method that clusters with a surrogate sets ``uses_surrogate=True``
so the command resolves ``--device`` for it; its ``prepare`` can call
:func:`unlearnable.protect.uc_pipeline.cluster_for_method` and return
``FolderClusters.folder_job(protector)``. The manifest records the protector's ``method`` and
``parameters()`` and whatever the job's ``manifest_extra`` holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..registry import Registry

if TYPE_CHECKING:
    import torch

    from ..datasets import LabelAssignment
    from ..io.executors import Executor
    from ..io.runner import FolderJob, OutputOptions
    from ..keys import SecretKey
    from .feature_pass import StageProgress

Prepare = Callable[[Any, "MethodContext"], "FolderJob"]
"""``prepare(config, context) -> FolderJob``: what a method does before the files are written."""

BUILTIN_METHOD_MODULES = (".cuda_method", ".photo_method", ".uc_method")
"""Modules (relative to :mod:`unlearnable.protect`) whose entries are registered on first use."""

DEFAULT_METHOD = "photo"
"""The method ``unlearnable protect`` and :func:`~unlearnable.protect.protect_directory` use when
none is named: the best trade-off measured on real photographs (``benchmarks/real_photos.py``;
README, "What protection to expect")."""


def _default_output() -> OutputOptions:
    from ..io.runner import OutputOptions

    return OutputOptions()


@dataclass(frozen=True)
class RunOptions:
    """How a protect run goes, whatever the method.

    ``output``: how files are written (:class:`~unlearnable.io.runner.OutputOptions`), including
    the per-file visual-cost budget ``max_visual_cost``, e.g.
    ``RunOptions(output=OutputOptions(max_visual_cost=0.05))``.
    ``resume``: continue a run in a non-empty output folder (files done with the same key and
    settings are kept). ``workers``: processes for reading, protecting and writing files
    (default: the CPUs this process may use); ``executor`` replaces that pool by any
    :class:`~unlearnable.io.executors.Executor`. ``threads``: torch threads for the surrogate
    work (feature extraction, UC optimisation; default: the current setting, capped at the CPUs).
    ``device``: where a surrogate runs (default CPU). ``allow_pickle``: permit pickle-based
    surrogate checkpoints (only for files you trust). ``include_hidden``: protect hidden files
    and folders (names starting with ``.``) too; by default they are reported as skipped.
    """

    output: OutputOptions = field(default_factory=_default_output)
    resume: bool = False
    workers: int | None = None
    executor: Executor | None = None
    threads: int | None = None
    device: str | torch.device | None = None
    allow_pickle: bool = False
    include_hidden: bool = False

    def __post_init__(self) -> None:
        for name in ("workers", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name} must be >= 1, got {value}")


@dataclass(frozen=True)
class MethodContext:
    """What a method's ``prepare`` gets: the folders, the discovered image files (relative POSIX
    paths, sorted), the key, the run options and the stage-progress callback. For WebDataset
    shards and Parquet files, ``input_dir`` is a
    :class:`~unlearnable.io.formats.source.RecordSource` (an
    :class:`~unlearnable.protect.feature_pass.ImageSource` whose ``read(path)`` gives a
    record's image), ``files`` the records' manifest paths, and ``output_dir`` a local folder
    for the method's caches."""

    input_dir: Path
    output_dir: Path
    files: list[str]
    key: SecretKey
    run: RunOptions
    stage_progress: StageProgress | None = None
    labeller: Callable[[str], LabelAssignment] | None = None
    """Labels of records that are not files of a folder (shards, Parquet rows, a batch):
    ``labeller(source) -> LabelAssignment``; None: :func:`unlearnable.datasets.assign_labels`."""

    def assign_labels(self, source: str | Path) -> LabelAssignment:
        """Labels of :attr:`files` from ``source``: ``auto``, ``folders``, ``single`` or a CSV
        file (see :mod:`unlearnable.datasets`); a bad source raises a ``UsageError``."""
        if self.labeller is not None:
            return self.labeller(str(source))
        from ..datasets import assign_labels

        return assign_labels(self.input_dir, self.files, str(source))


@dataclass(frozen=True)
class MethodOption:
    """A command-line option that a method adds to ``unlearnable protect``. ``flag`` is the
    option (``--plaid-eps``); its value reaches ``from_options`` under :attr:`name`
    (``plaid_eps``), ``None`` when not given. ``type`` is ``str``, ``int`` or ``float``."""

    flag: str
    type: type = str
    help: str = ""
    metavar: str | None = None

    @property
    def name(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Method:
    """A registered protection method (see the module docstring)."""

    name: str
    config_type: type
    prepare: Prepare
    summary: str
    from_options: Callable[[Mapping[str, Any]], Any] | None = None
    cli_options: tuple[MethodOption, ...] = ()
    uses_surrogate: bool = False

    def config(self, **options: Any) -> Any:
        """This method's config from keyword options; an option it does not have is refused
        (``UsageError``) with the list of those it has."""
        known = [f.name for f in dataclasses.fields(self.config_type)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise UsageError(
                f"method {self.name!r} has no option {', '.join(unknown)}; "
                f"its options: {', '.join(known)}"
            )
        return self.config_type(**options)

    def config_from_options(self, values: Mapping[str, Any]) -> Any:
        """The config from command-line values (see the module docstring)."""
        if self.from_options is not None:
            return self.from_options(values)
        known = {f.name for f in dataclasses.fields(self.config_type)}
        return self.config_type(
            **{name: value for name, value in values.items() if name in known and value is not None}
        )


class MethodRegistry(Registry[Method]):
    """:class:`~unlearnable.registry.Registry` of :class:`Method` s that also finds the entry of
    a config object, and registers the built-in entries on first use."""

    def __init__(self) -> None:
        super().__init__("protection method")
        self._by_config: dict[type, Method] = {}
        self._builtins_loaded = False

    def add(self, name: str, obj: Method) -> None:
        if obj.config_type in self._by_config:
            other = self._by_config[obj.config_type].name
            raise ValueError(f"config {obj.config_type.__name__} already belongs to {other!r}")
        super().add(name, obj)
        self._by_config[obj.config_type] = obj

    def remove(self, name: str) -> Method:
        """Unregister ``name`` (tests register throw-away methods); returns its entry."""
        entry = self.get(name)
        del self._entries[name.lower()]
        del self._by_config[entry.config_type]
        return entry

    def get(self, name: str) -> Method:
        self._load_builtins()
        return super().get(name)

    def names(self) -> list[str]:
        self._load_builtins()
        return super().names()

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return super().__contains__(name)

    def for_config(self, config: object) -> Method | None:
        """The entry whose config class is ``type(config)`` (or a base of it), or None."""
        self._load_builtins()
        for kind in type(config).__mro__:
            if kind in self._by_config:
                return self._by_config[kind]
        return None

    def _load_builtins(self) -> None:
        if self._builtins_loaded:
            return
        self._builtins_loaded = True
        for module in BUILTIN_METHOD_MODULES:
            import_module(module, __package__)


METHODS = MethodRegistry()
"""Every protection method by name (built-in entries, then plugins)."""


def register_method(
    name: str,
    config_type: type,
    *,
    summary: str,
    from_options: Callable[[Mapping[str, Any]], Any] | None = None,
    cli_options: tuple[MethodOption, ...] = (),
    uses_surrogate: bool = False,
) -> Callable[[Prepare], Prepare]:
    """Decorator: register the decorated ``prepare(config, context) -> FolderJob`` as method
    ``name`` with its frozen config class (see the module docstring)."""
    if not dataclasses.is_dataclass(config_type):
        raise TypeError(f"{config_type!r} must be a (frozen) dataclass")

    def decorate(prepare: Prepare) -> Prepare:
        METHODS.add(
            name,
            Method(name, config_type, prepare, summary, from_options, cli_options, uses_surrogate),
        )
        return prepare

    return decorate


def resolve_method(method: object) -> tuple[Method, Any]:
    """``(entry, config)`` for a registered name (its default config) or a config object;
    ``UsageError`` for an unknown name or an object that is no method's config."""
    if isinstance(method, str):
        entry = method_entry(method)
        return entry, entry.config_type()
    entry = METHODS.for_config(method)
    if entry is None:
        configs = ", ".join(
            f"{METHODS.get(name).config_type.__name__} ({name})" for name in METHODS.names()
        )
        raise UsageError(
            f"method must be a method name or config, got {type(method).__name__}; "
            f"the configs are: {configs}"
        )
    return entry, method


def method_config(name: str, **options: Any) -> Any:
    """The config of method ``name`` with ``options`` (``UsageError`` for an unknown method, or
    an option that belongs to another method), e.g. ``method_config("uc", clusters=5)``."""
    return method_entry(name).config(**options)


def method_entry(name: str) -> Method:
    """The entry registered as ``name``; ``UsageError`` listing the choices when there is none."""
    if name not in METHODS:
        raise UsageError(
            f"unknown protection method {name!r}; choose from: {', '.join(METHODS.names())}"
        )
    return METHODS.get(name)
