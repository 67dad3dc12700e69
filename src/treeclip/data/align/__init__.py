"""Taxonomic alignment: merge the (possibly partial) lineages of many sources into one consistent taxonomy.

Pass 1 `Aligner.observe`s every record (counts per distinct lineage and source, and common names); then
`Aligner.finalize` returns an `Alignment`, whose `resolve(record)` gives the aligned `Taxon` (None = dropped;
`why_dropped` says why), `report` (``alignment.json``, see `write_report`), `summary()` and `decisions`.

**Nodes and placements.** A *node* is a name at a rank (a species node is the binomial: genus + epithet).
Its *placements* are the ranks above it in each lineage naming it ("" = unknown; known ranks are contiguous).
Lineages from the records and from the backbone are resolved rank by rank from kingdom down, so each rank
sees the ranks above it already resolved. Two placements of a node are:
- *compatible* when they agree at every rank both name; the less complete one is then **filled** from the
  more complete one (the ranks missing above a record's highest rank come from any lineage that agrees);
- a **homonym** when the highest rank at which they differ is kingdom, phylum or class: they stay distinct
  taxa keyed by their full lineage (genus *Morus* in Plantae/Moraceae and in Animalia/Aves/Sulidae), and
  common names never cross between them (they are merged per aligned lineage);
- a **conflict** when they agree at kingdom, phylum and class (where both name them) and first differ lower
  (order, family, or the genus above a species). The codes of nomenclature forbid homonyms within a
  kingdom, and the few that survive rarely share a class, so these are one taxon placed differently; one
  placement wins, by the first of these rules that separates the two strongest:
  1. *backbone*: a placement the backbone supports;
  2. *anchored*: a placement reaching the kingdom, over one that does not (cannot be checked);
  3. *majority*: the most records;
  4. *source_precedence*: the best source kind supporting it (`source_precedence`, unlisted kinds after);
  5. *name_order*: the alphabetically first lineage (only when all else ties).
  Every record of the node, including records that name none of the disputed ranks, takes the winner.

**Ambiguity.** A placement that names too little above the node to tell several homonyms apart (a bare
"Morus" when both homonyms are known) is not filled. A deeper rank may still resolve it (the binomial
"Morus alba" is known in one homonym only); when none does, it has no kingdom.

**Drops.** Records keep their deepest given rank (BIOSCAN records to family are kept as such); ranks below
are never invented. With `require_kingdom` (default), a record whose kingdom cannot be resolved is dropped,
as ambiguous or as unknown; empty taxa are dropped. Counts are in the report and the decisions (homonyms,
conflicts with their candidates' record counts per source, ambiguities) are logged as JSON-able dicts;
those that concern no record (inside the backbone alone) are not.

**Common names**: per aligned taxon, the first source kind in `common_precedence` ("backbone" for the
backbone's names) that has one; within a source the most frequent name. "" when none has one (rendering
then falls back to the scientific name, then the taxonomic string; `treeclip.taxonomy`).
"""

from treeclip.data.align.aligner import (
    BACKBONE,
    DEFAULT_COMMON_PRECEDENCE,
    DEFAULT_SOURCE_PRECEDENCE,
    Aligner,
    Alignment,
)
from treeclip.data.align.report import write_report

__all__ = [
    "BACKBONE",
    "DEFAULT_COMMON_PRECEDENCE",
    "DEFAULT_SOURCE_PRECEDENCE",
    "Aligner",
    "Alignment",
    "write_report",
]
