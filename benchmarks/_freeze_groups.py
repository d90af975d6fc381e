"""Baseline masks for ``freeze_cifar10.py``: random, largest-change and matched-random groups.

A *family* is a list of tensor names that share their groups (one score per output channel in
the learned mask): ``[name]`` for an untied tensor, ``[conv.weight, bn.weight, bn.bias]`` for a
convolution tied to its BatchNorm (``FreezeConfig(tie_norm=True)``). Baselines for a tied
learned mask pick tied groups too, so both freeze whole (filter, γ_j, β_j) triples.
"""

from __future__ import annotations

import math

import torch


def families_of(model, names, tied: bool) -> list[list[str]]:
    """The families of the maskable ``names`` (one per tensor unless ``tied``)."""
    if not tied:
        return [[n] for n in names]
    from unlearnable.defenses.freeze_steps import tied_families

    return tied_families(model, names)


def group_sizes(model, names, level) -> dict[str, int]:
    """Groups per tensor: 1 (tensor level, or a scalar), else the size of dim 0."""
    params = dict(model.named_parameters())
    return {
        n: 1 if level == "tensor" or params[n].dim() == 0 else params[n].shape[0] for n in names
    }


def pick_groups(chosen, families, level) -> dict:
    """``{name: None}`` (tensor level) or ``{name: channels}`` from ``(family, group)`` pairs,
    every member of a family getting the same channels."""
    frozen: dict[str, list[int]] = {}
    for f, g in chosen:
        for n in families[f]:
            frozen.setdefault(n, []).append(g)
    if level == "tensor":
        return dict.fromkeys(frozen)
    return {n: tuple(sorted(c)) for n, c in frozen.items()}


def count(families, sizes) -> int:
    """Number of groups (what the target ratio counts)."""
    return sum(sizes[f[0]] for f in families)


def largest_change(pre, ft, families, sizes, level, k) -> dict:
    """The ``k`` groups with the largest RMS change from θ_pre to θ_ft (over every element of
    the group, all members of its family)."""
    p_pre, p_ft = dict(pre.named_parameters()), dict(ft.named_parameters())
    scored = []
    for f, members in enumerate(families):
        groups = sizes[members[0]]
        delta = torch.cat(
            [(p_ft[n].detach() - p_pre[n].detach()).reshape(groups, -1) for n in members], 1
        )
        rms = delta.norm(dim=1) / math.sqrt(delta.shape[1])
        scored += [(float(r), f, g) for g, r in enumerate(rms)]
    scored.sort(key=lambda t: -t[0])
    return pick_groups([(f, g) for _, f, g in scored[:k]], families, level)


def random_groups(families, sizes, level, k, seed) -> dict:
    """``k`` groups drawn uniformly (seeded)."""
    every = [(f, g) for f, members in enumerate(families) for g in range(sizes[members[0]])]
    order = torch.randperm(len(every), generator=torch.Generator().manual_seed(seed))
    return pick_groups([every[i] for i in order[:k].tolist()], families, level)


def matched_random(mask, families, sizes, level, seed) -> dict | None:
    """Random groups with the learned mask's number of frozen groups in every family (tests
    whether *which* channels matter, beyond how many per tensor). ``None`` at tensor level."""
    if level == "tensor":
        return None
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for f, members in enumerate(families):
        if members[0] not in mask.frozen:
            continue
        channels = mask.frozen[members[0]]
        frozen = sizes[members[0]] if channels is None else len(channels)
        picks = torch.randperm(sizes[members[0]], generator=g)[:frozen].tolist()
        chosen += [(f, c) for c in picks]
    return pick_groups(chosen, families, level)
