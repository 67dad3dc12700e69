"""The evaluation report: chance level, image and class counts, a spread beside every accuracy, rank columns in
rank order, and hierarchy metrics only over the ranks a task's classes have."""

from __future__ import annotations

from treeclip.eval.report import hierarchy_table, markdown_report, paper_table


def _result(task: str, ranks: dict[str, float], *, n_images: int = 400, n_classes: int = 20) -> dict:
    return {"model": "m", "task": task, "n_images": n_images, "n_classes": n_classes,
            "zero_shot": {"taxon_com": {"top1": 0.5, "top5": 0.8}},
            "simpleshot": {"1": {"mean": 0.3, "std": 0.02, "runs": [0.28, 0.3, 0.32]}},
            "hierarchy": {"rank_accuracy": ranks, "mistake_severity": 2.0, "distance_spearman": 0.4}}


# A task named down to species, listed with its deep ranks first (as a dict built bottom-up would), and an
# insect task whose classes are families.
SPECIES = _result("birds", {"species": 0.5, "genus": 0.6, "kingdom": 1.0, "phylum": 0.95, "class": 0.9,
                            "order": 0.8, "family": 0.7})
FAMILIES = _result("insects", {"kingdom": 1.0, "phylum": 1.0, "class": 1.0, "order": 0.6, "family": 0.4},
                   n_images=100, n_classes=50)


def test_every_accuracy_has_its_spread_and_a_chance_row() -> None:
    table = paper_table([SPECIES, FAMILIES], text_type="taxon_com")
    assert "| chance | – | 5.0 | 2.0 | 3.5 |" in table  # 1/20 and 1/50
    assert "| m | zero-shot | 50.0 ± 2.5 | 50.0 ± 5.0 |" in table  # sqrt(.25/400), sqrt(.25/100)
    assert "| m | 1-shot | 30.0 ± 2.0 | 30.0 ± 2.0 |" in table


def test_rank_columns_in_rank_order_and_missing_ranks_said() -> None:
    table = hierarchy_table([SPECIES, FAMILIES])
    header = table.splitlines()[0]
    assert header.startswith("| Model | Task | kingdom | phylum | class | order | family | genus | species |")
    insects = next(line for line in table.splitlines() if "| insects |" in line)
    assert insects.count("| – ") >= 2  # no genus, no species figure
    assert "insects: its classes are not named at genus, species" in table


def test_report_has_a_task_table_with_counts() -> None:
    report = markdown_report([SPECIES, FAMILIES], text_type="taxon_com")
    assert "| birds | 400 | 20 | 5.0 | kingdom, phylum, class, order, family, genus, species |" in report
    assert "| insects | 100 | 50 | 2.0 | kingdom, phylum, class, order, family |" in report


def _typed(task: str, types: dict[str, float]) -> dict:
    return {"model": "m", "task": task, "n_images": 100, "n_classes": 10,
            "zero_shot": {t: {"top1": v, "top5": 1.0} for t, v in types.items()}}


def test_each_task_is_scored_and_labelled_with_its_own_text_type() -> None:
    """A Meta-Album task (asis) beside a taxonomic one (taxon_com, then sci): each task's zero-shot figure is its
    own first text type, never the first task's type looked up in the other (which gives '–')."""
    results = [_typed("plankton", {"asis": 0.4}), _typed("birds", {"taxon_com": 0.6, "sci": 0.2})]
    table = paper_table(results)
    assert table.splitlines()[0] == "| Model | Setting | plankton (asis) | birds (taxon_com) | Mean |"
    assert "| m | zero-shot | 40.0 ± 4.9 | 60.0 ± 4.9 | 50.0 ± 3.5 |" in table
    report = markdown_report(results)
    assert "| plankton | 100 | 10 | 10.0 | – | `asis` |" in report
    assert "| birds | 100 | 10 | 10.0 | – | `taxon_com`, `sci` |" in report
    assert "each task's own first text type" in report
    assert "| m | zero-shot | 20.0 ± 4.0 | 20.0 ± 4.0 |" in paper_table(results[1:], text_type="sci")  # asked: used
    one_type = markdown_report(results[1:])  # a single type is named once, above the table
    assert "| Model | Setting | birds | Mean |" in one_type and "zero-shot class texts: `taxon_com`" in one_type
