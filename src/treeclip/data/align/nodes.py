"""Resolving one node: every placement (resolved ranks above it) seen for one name at one rank.

The steps follow the criterion in `treeclip.data.align`'s docstring:
1. placements that agree wherever both name a rank are *compatible*; each is merged into the most complete
   placement it is compatible with (a *candidate*); one compatible with several candidates is deferred;
2. candidates that agree at kingdom/phylum/class (where both name them) form one *group*, i.e. one taxon;
   different groups are homonyms; a candidate that could join several groups is ambiguous;
3. a group of several candidates is a conflict, won by backbone > anchored > majority > source precedence;
4. deferred placements and placements with no ranks above the node (fill requests) take the canonical
   placement of the one group they fit, and are ambiguous when they fit several.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from treeclip.taxonomy import Rank

Prefix = tuple[str, ...]
Lineage = tuple[str, ...]
SourceOrder = Callable[[str], tuple[int, str]]  # source kind -> sort key (lower wins)

FAR_RANKS = Rank.CLASS + 1  # kingdom, phylum, class: placements differing there are homonyms
RULES = ("backbone", "anchored", "majority", "source_precedence", "name_order")


def depth(prefix: Prefix) -> int:
    """Number of named ranks in a prefix."""
    return sum(1 for name in prefix if name)


def named(prefix: Prefix) -> Prefix:
    """The run of named ranks at the end of a prefix (known ranks are contiguous and end there)."""
    return prefix[len(prefix) - depth(prefix):]


def _tails(prefix: Prefix) -> list[Prefix]:
    """Every non-empty tail of the named run: placements compatible with `prefix` have one of these."""
    run = named(prefix)
    return [run[len(run) - size:] for size in range(1, len(run) + 1)]


@dataclass
class Placement:
    """One distinct prefix of a node, with the raw lineages that have it and their record counts."""

    prefix: Prefix
    records: int = 0
    backbone: bool = False
    lineages: list[Lineage] = field(default_factory=list)


@dataclass
class Candidate:
    """Mutually compatible placements; the first is the most complete and names the candidate."""

    members: list[Placement]

    @property
    def prefix(self) -> Prefix:
        return self.members[0].prefix

    @property
    def records(self) -> int:
        return sum(member.records for member in self.members)

    @property
    def backbone(self) -> bool:
        return any(member.backbone for member in self.members)

    @property
    def anchored(self) -> bool:
        return bool(self.prefix[0])

    def sources(self, tally: Mapping[Lineage, Counter[str]]) -> Counter[str]:
        """Records per source over every member lineage."""
        total: Counter[str] = Counter()
        for member in self.members:
            for lineage in member.lineages:
                total.update(tally.get(lineage, ()))
        return total


@dataclass
class Conflict:
    """A group of several candidates, strongest first: `candidates[0]` won by `rule` (one of `RULES`)."""

    candidates: list[Candidate]
    sources: list[Counter[str]]  # records per source of each candidate
    rule: str


@dataclass
class Ambiguity:
    """A placement that fits several homonym groups, so no ranks above the node can be chosen."""

    placement: Placement
    options: list[Prefix]


@dataclass
class Outcome:
    """How one node resolved: placement prefix -> canonical prefix, plus what is worth logging."""

    mapping: dict[Prefix, Prefix] = field(default_factory=dict)
    groups: list[list[Candidate]] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    ambiguities: list[Ambiguity] = field(default_factory=list)


def resolve_node(placements: Iterable[Placement], *, tally: Mapping[Lineage, Counter[str]],
                 source_order: SourceOrder) -> Outcome:
    """Resolve every placement of one node (see the module docstring)."""
    placements = list(placements)
    candidates, deferred = _candidates([p for p in placements if any(p.prefix)])
    groups, fits_of = _groups(candidates)
    outcome = Outcome(groups=groups)
    for group in groups:
        if len(group) > 1:
            outcome.conflicts.append(_conflict(group, tally, source_order))
        for candidate in group:
            for member in candidate.members:
                outcome.mapping[member.prefix] = group[0].prefix
    for candidate in candidates:
        if len(fits_of[id(candidate)]) != 1:  # an orphan: it fits several groups
            for member in candidate.members:
                _place(outcome, member, fits_of[id(candidate)])
    for placement, fits in deferred:
        _place(outcome, placement, set().union(*(fits_of[id(c)] for c in fits)))
    for placement in placements:
        if not any(placement.prefix):
            _place(outcome, placement, set(range(len(groups))))
    return outcome


def _place(outcome: Outcome, placement: Placement, fits: set[int]) -> None:
    """Map a placement to the one group it fits; record an ambiguity when it fits several."""
    if len(fits) == 1:
        outcome.mapping[placement.prefix] = outcome.groups[next(iter(fits))][0].prefix
    elif fits:
        options = sorted(outcome.groups[i][0].prefix for i in fits)
        outcome.ambiguities.append(Ambiguity(placement, options))


def _candidates(placements: list[Placement]) -> tuple[list[Candidate], list[tuple[Placement, list[Candidate]]]]:
    """Merge compatible placements, most complete first; defer those compatible with several.

    Candidates are at least as complete as a later placement, so compatibility is an equal named tail.
    """
    candidates: list[Candidate] = []
    deferred = []
    by_tail: dict[Prefix, list[Candidate]] = {}
    for placement in sorted(placements, key=lambda p: (-depth(p.prefix), -p.records, p.prefix)):
        fits = by_tail.get(named(placement.prefix), [])
        if not fits:
            candidate = Candidate([placement])
            candidates.append(candidate)
            for tail in _tails(placement.prefix):
                by_tail.setdefault(tail, []).append(candidate)
        elif len(fits) == 1:
            fits[0].members.append(placement)
        else:
            deferred.append((placement, list(fits)))
    return candidates, deferred


def _groups(candidates: list[Candidate]) -> tuple[list[list[Candidate]], dict[int, set[int]]]:
    """Group candidates that agree at the far ranks, and {id(candidate): indices of the groups it fits}.

    A candidate fitting several groups (an orphan) joins none.
    """
    groups: list[list[Candidate]] = []
    fits_of: dict[int, set[int]] = {}
    by_tail: dict[Prefix, list[int]] = {}
    for candidate in sorted(candidates, key=lambda c: (-depth(c.prefix[:FAR_RANKS]), -c.records, c.prefix)):
        far = named(candidate.prefix[:FAR_RANKS])
        fits = set(by_tail.get(far, ())) if far else set(range(len(groups)))
        if not fits:
            fits = {len(groups)}
            groups.append([])
            for tail in _tails(far):
                by_tail.setdefault(tail, []).append(len(groups) - 1)
        if len(fits) == 1:
            groups[next(iter(fits))].append(candidate)
        fits_of[id(candidate)] = fits
    return groups, fits_of


def _conflict(group: list[Candidate], tally: Mapping[Lineage, Counter[str]], source_order: SourceOrder) -> Conflict:
    """Sort a group strongest first (in place) and name the rule that decided it."""
    sources = {id(c): c.sources(tally) for c in group}
    strength = {id(c): _strength(c, sources[id(c)], source_order) for c in group}
    group.sort(key=lambda c: strength[id(c)])
    first, second = (strength[id(c)] for c in group[:2])
    rule = next(rule for rule, a, b in zip(RULES, first, second) if a != b)
    return Conflict(list(group), [sources[id(c)] for c in group], rule)


def _strength(candidate: Candidate, sources: Counter[str], source_order: SourceOrder) -> tuple:
    """Sort key of a conflict's candidates (lower wins), one component per rule in `RULES`."""
    best = min((source_order(s) for s, n in sources.items() if n > 0), default=(sys.maxsize, ""))
    return (not candidate.backbone, not candidate.anchored, -candidate.records, best, candidate.prefix)
