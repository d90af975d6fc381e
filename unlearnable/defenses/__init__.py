"""What a model owner or auditor does: expose and remove backdoors (EBYD), freeze the tensors
that illegal fine-tuning needs (FreezeAsGuard). Import the submodules directly; this package
does not import them (each pulls in torch and its own dependencies)."""
