"""Audit: was this model trained on images protected with my key? A key-based test, a p-value.

The owner's key determines each class's mark (for CUDA, a blur filter per class). A model
trained on the protected images learned "this mark means this class"; marking clean probe
images and watching the model's top-1 answers tests that, against the marks of many other
keys (the null distribution), in the spirit of "radioactive data" (Sablayrolles et al., ICML
2020) and dataset ownership verification with watermarks (Li et al., NeurIPS 2022)::

    from unlearnable.audit import AuditConfig, audit_model, write_audit_folder

    result = audit_model(loaded_model, key, "photos-protected/unlearnable-manifest.json",
                         probes, config=AuditConfig(null_keys=100, alpha=0.01))
    result.p_value, result.flagged                 # the verdict's statistic
    write_audit_folder(result, "runs/audit")       # JSON, Markdown, null histogram

Modules: :mod:`.engine` (the test), :mod:`.stats` (statistics on predictions),
:mod:`.result` (what an audit found), :mod:`.methods` (the registry of what each protection method marks; ``cuda`` built in),
:mod:`.null_keys`, :mod:`.classes` (owner <-> model classes), :mod:`.probes` (reading a probe
folder), :mod:`.report` (verdict text, Markdown, run folder).
"""

from .classes import AuditClassError, ClassMatch, match_classes, read_class_map
from .engine import STATISTICS, AuditConfig, as_predictor, audit_model
from .methods import (
    AUDIT_METHODS,
    UNSUPPORTED_METHODS,
    AuditMethodError,
    AuditPlan,
    CudaAuditPlan,
    audit_plan,
    filter_all_classes,
)
from .null_keys import null_key, null_keys
from .probes import Probes, load_probes
from .report import report_markdown, verdict_headline, verdict_text, write_audit_folder
from .result import AuditResult, ClassRow
from .stats import Summary

__all__ = [
    "AUDIT_METHODS",
    "STATISTICS",
    "UNSUPPORTED_METHODS",
    "AuditClassError",
    "AuditConfig",
    "AuditMethodError",
    "AuditPlan",
    "AuditResult",
    "ClassMatch",
    "ClassRow",
    "CudaAuditPlan",
    "Probes",
    "Summary",
    "as_predictor",
    "audit_model",
    "audit_plan",
    "filter_all_classes",
    "load_probes",
    "match_classes",
    "null_key",
    "null_keys",
    "read_class_map",
    "report_markdown",
    "verdict_headline",
    "verdict_text",
    "write_audit_folder",
]
