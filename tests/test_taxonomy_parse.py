"""Name cleaning and label parsing, table-tested on the label styles of real datasets."""

from __future__ import annotations

import pytest

from treeclip.taxonomy import (
    Taxon,
    TextType,
    clean_common,
    clean_name,
    normalize_kingdom,
    parse_binomial,
    parse_inat21_dirname,
    parse_label,
    parse_taxonomic_string,
    render_caption,
    taxon_from_fields,
)

HONEYEATER = ("Animalia", "Chordata", "Aves", "Passeriformes", "Meliphagidae", "Ptilotula", "penicillata")
SPARROW = ("Animalia", "Chordata", "Aves", "Passeriformes", "Passeridae", "Passer", "domesticus")


def binomial(genus: str, epithet: str = "") -> tuple[str, ...]:
    return ("",) * 5 + (genus, epithet)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        # authorities and years
        ("Amanita excelsa Gonn. & Rabenh.", "Amanita excelsa"),
        ("Passer domesticus (Linnaeus, 1758)", "Passer domesticus"),
        ("Quercus robur L.", "Quercus robur"),
        ("Homo sapiens Linnaeus, 1758", "Homo sapiens"),
        ("Abies alba Mill.", "Abies alba"),
        ("Bellis perennis L. 1753", "Bellis perennis"),
        ("Tilia cordata Mill. ex DC.", "Tilia cordata"),
        ("Rosa canina de Candolle", "Rosa canina"),
        ("Puma concolor (Linnaeus 1771)", "Puma concolor"),
        ("Quercus L.", "Quercus"),
        ("Meliphagidae Vigors, 1825", "Meliphagidae"),
        ("Passer domesticus, Linnaeus", "Passer domesticus"),
        # binomials, trinomials and infraspecific markers
        ("Ptilotula penicillata", "Ptilotula penicillata"),
        ("Canis lupus familiaris", "Canis lupus familiaris"),
        ("Canis lupus subsp. familiaris", "Canis lupus familiaris"),
        ("Canis lupus ssp. familiaris", "Canis lupus familiaris"),
        ("Quercus robur var. fastigiata", "Quercus robur fastigiata"),
        ("Quercus robur f. fastigiata Schwarz", "Quercus robur fastigiata"),
        ("Brassica oleracea var. capitata L.", "Brassica oleracea capitata"),
        ("Aster novae-angliae", "Aster novae-angliae"),
        # sp. / spp. / cf. / aff.
        ("Amanita sp.", "Amanita"),
        ("Amanita spp.", "Amanita"),
        ("Amanita sp. 3", "Amanita"),
        ("Amanita cf. excelsa", "Amanita"),
        ("Amanita aff. excelsa", "Amanita"),
        ("cf. Amanita excelsa", ""),
        # parentheses (subgenus), underscores, odd spacing, HTML
        ("Bombus (Pyrobombus) impatiens", "Bombus impatiens"),
        ("Bombus [Pyrobombus] impatiens", "Bombus impatiens"),
        ("Lamium_galeobdolon", "Lamium galeobdolon"),
        ("  Lamium   galeobdolon ", "Lamium galeobdolon"),
        ("Lamium\tgaleobdolon\n", "Lamium galeobdolon"),
        ("<i>Passer domesticus</i>", "Passer domesticus"),
        # capitalisation
        ("passer DOMESTICUS", "Passer domesticus"),
        ("PASSER DOMESTICUS", "Passer domesticus"),
        ("passer domesticus", "Passer domesticus"),
        ("Passer Domesticus", "Passer domesticus"),
        ("AVES", "Aves"),
        ("passeriformes", "Passeriformes"),
        # hybrids
        ("Mentha × piperita", "Mentha piperita"),
        ("Mentha x piperita", "Mentha piperita"),
        ("Mentha ×piperita", "Mentha piperita"),
        ("×Triticosecale", "Triticosecale"),
        ("× Triticosecale rimpaui", "Triticosecale rimpaui"),
        ("Salix alba × Salix fragilis", "Salix"),
        ("Salix alba x fragilis", "Salix"),
        # placeholders
        ("unknown", ""),
        ("Unknown", ""),
        ("not_classified", ""),
        ("(unidentified)", ""),
        ("NA", ""),
        ("n/a", ""),
        ("none", ""),
        ("None", ""),
        ("nan", ""),
        ("", ""),
        ("   ", ""),
        ("incertae sedis", ""),
        ("Incertae_sedis", ""),
        ("Aves incertae sedis", ""),
        ("unclassified Bacteria", ""),
        ("pleasehelp", ""),
        ("sp.", ""),
    ],
)
def test_clean_name(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean


@pytest.mark.parametrize("bad", ["12345", "03938", "#!", "?x"])
def test_clean_name_rejects_non_names(bad: str) -> None:
    with pytest.raises(ValueError, match="not a taxon name"):
        clean_name(bad)


@pytest.mark.parametrize("bad", [None, 3, 1.5, float("nan"), b"Aves", ["Aves"]])
def test_cleaners_reject_non_strings(bad: object) -> None:
    for cleaner in (clean_name, clean_common, normalize_kingdom, parse_binomial, parse_label,
                    parse_taxonomic_string, parse_inat21_dirname):
        with pytest.raises(ValueError, match="must be a string"):
            cleaner(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "kingdom"),
    [
        ("Metazoa", "Animalia"),
        ("metazoa", "Animalia"),
        ("Animalia", "Animalia"),
        ("ANIMALIA", "Animalia"),
        ("Animals", "Animalia"),
        ("Archaeplastida", "Plantae"),
        ("Chloroplastida", "Plantae"),
        ("Viridiplantae", "Plantae"),
        ("Plantae", "Plantae"),
        ("green_plants", "Plantae"),
        ("Eumycota", "Fungi"),
        ("fungi", "Fungi"),
        ("Eubacteria", "Bacteria"),
        ("Archaebacteria", "Archaea"),
        ("Chromista", "Chromista"),
        ("Protozoa", "Protozoa"),
        ("unknown", ""),
        ("", ""),
    ],
)
def test_normalize_kingdom(raw: str, kingdom: str) -> None:
    assert normalize_kingdom(raw) == kingdom


@pytest.mark.parametrize(
    ("raw", "common"),
    [
        ("White-plumed Honeyeater", "White-plumed Honeyeater"),
        ("white-plumed_honeyeater", "white-plumed honeyeater"),
        ("  House   Sparrow ", "House Sparrow"),
        ("NA", ""),
        ("unknown", ""),
        ("", ""),
    ],
)
def test_clean_common(raw: str, common: str) -> None:
    assert clean_common(raw) == common


@pytest.mark.parametrize(
    ("fields", "lineage", "common"),
    [
        # a complete, clean row
        (dict(zip(("kingdom", "phylum", "cls", "order", "family", "genus", "species"), HONEYEATER)), HONEYEATER, ""),
        # kingdom synonym + capitalisation + common name cleanup (EOL style)
        (dict(kingdom="Metazoa", phylum="chordata", cls="AVES", order="passeriformes", family="Meliphagidae",
              genus="Ptilotula", species="Penicillata", common="White-plumed_Honeyeater"),
         HONEYEATER, "White-plumed Honeyeater"),
        # duplicated genus inside the species field
        (dict(kingdom="Animalia", phylum="Chordata", cls="Aves", order="Passeriformes", family="Meliphagidae",
              genus="Ptilotula", species="Ptilotula penicillata"), HONEYEATER, ""),
        (dict(kingdom="animalia", phylum="chordata", cls="aves", order="passeriformes", family="meliphagidae",
              genus="ptilotula", species="ptilotula penicillata"), HONEYEATER, ""),
        # a missing genus taken from the binomial in the species field (also lowercase, BioCLIP style)
        (dict(kingdom="Animalia", phylum="Chordata", cls="Aves", order="Passeriformes", family="Passeridae",
              species="Passer domesticus"), SPARROW, ""),
        (dict(kingdom="Animalia", phylum="Chordata", cls="Aves", order="Passeriformes", family="Passeridae",
              species="passer domesticus"), SPARROW, ""),
        # authority in the species field, epithet-first trinomial, shouting
        (dict(kingdom="Animalia", phylum="Chordata", cls="Aves", order="Passeriformes", family="Passeridae",
              genus="Passer", species="domesticus (Linnaeus, 1758)"), SPARROW, ""),
        (dict(kingdom="Animalia", phylum="Chordata", cls="Aves", order="Passeriformes", family="Passeridae",
              genus="Passer", species="Passer domesticus (Linnaeus, 1758)"), SPARROW, ""),
        (dict(kingdom="Animalia", phylum="Chordata", cls="Aves", order="Passeriformes", family="Passeridae",
              genus="Passer", species="domesticus italiae"), SPARROW, ""),
        (dict(kingdom="Animalia", phylum="Chordata", cls="Aves", order="Passeriformes", family="Passeridae",
              genus="PASSER", species="DOMESTICUS"), SPARROW, ""),
        (dict(kingdom="Animalia", phylum="Chordata", cls="Aves", order="Passeriformes", family="Passeridae",
              species="passer DOMESTICUS"), SPARROW, ""),
        # placeholders (BIOSCAN "not_classified", EOL "(unidentified)") leave a partial lineage
        (dict(kingdom="Animalia", phylum="Arthropoda", cls="Insecta", order="Diptera", family="Cecidomyiidae",
              genus="not_classified", species="not_classified"),
         ("Animalia", "Arthropoda", "Insecta", "Diptera", "Cecidomyiidae"), ""),
        (dict(kingdom="Animalia", phylum="Arthropoda", cls="Insecta", order="Diptera", family="(unidentified)",
              genus="unknown", species="NA", common="none"), ("Animalia", "Arthropoda", "Insecta", "Diptera"), ""),
        (dict(kingdom="Animalia", phylum="Arthropoda", cls="Insecta", order="Diptera", family="Sciaridae",
              genus="Bradysia", species="sp."), ("Animalia", "Arthropoda", "Insecta", "Diptera", "Sciaridae",
                                                 "Bradysia"), ""),
        (dict(kingdom="Fungi", phylum="Basidiomycota", cls="Agaricomycetes", order="Agaricales",
              family="Amanitaceae", genus="Amanita", species="Amanita excelsa Gonn. & Rabenh."),
         ("Fungi", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae", "Amanita", "excelsa"), ""),
        (dict(kingdom="Fungi", phylum="Basidiomycota", cls="Agaricomycetes", order="Agaricales",
              family="Amanitaceae", genus="Amanita", species="cf. excelsa"),
         ("Fungi", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae", "Amanita"), ""),
        # hybrid species
        (dict(kingdom="Archaeplastida", phylum="Tracheophyta", cls="Magnoliopsida", order="Lamiales",
              family="Lamiaceae", genus="Mentha", species="× piperita"),
         ("Plantae", "Tracheophyta", "Magnoliopsida", "Lamiales", "Lamiaceae", "Mentha", "piperita"), ""),
        # higher ranks with authorities, subgenus in species field, bare binomial, empty row
        (dict(kingdom="Animalia", phylum="Arthropoda", cls="Insecta", order="Hymenoptera",
              family="Apidae Latreille, 1802", genus="Bombus", species="Bombus (Pyrobombus) impatiens"),
         ("Animalia", "Arthropoda", "Insecta", "Hymenoptera", "Apidae", "Bombus", "impatiens"), ""),
        (dict(species="Lamium_galeobdolon"), binomial("Lamium", "galeobdolon"), ""),
        (dict(common="house sparrow"), (), "house sparrow"),
        ({}, (), ""),
    ],
)
def test_taxon_from_fields(fields: dict[str, str], lineage: tuple[str, ...], common: str) -> None:
    taxon = taxon_from_fields(**fields)
    assert taxon.lineage == lineage + ("",) * (7 - len(lineage))
    assert taxon.common == common


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(kingdom="Animalia", phylum="unknown", cls="Aves"), "gap: class 'Aves'.*phylum"),
        (dict(kingdom="Animalia", phylum="Chordata", cls="Aves", order="Passeriformes", genus="Passer"),
         "gap: genus 'Passer'.*family"),
        (dict(kingdom="Animalia", phylum="Chordata", cls="Aves", order="Passeriformes", family="Passeridae",
              species="domesticus"), "gap: species 'domesticus'.*genus"),
        (dict(species="domesticus"), "epithet 'domesticus' has no genus"),
        (dict(family="Canidae", genus="Canis", species="Vulpes vulpes"),
         "species 'Vulpes vulpes' names genus 'Vulpes' but the genus field is 'Canis'"),
        (dict(kingdom="Animalia", phylum="12"), "phylum '12'"),
        (dict(genus="Passer", species="4711"), "species '4711'"),
        (dict(kingdom=None), "kingdom must be a string, got None"),
        (dict(kingdom="Animalia", cls=float("nan")), "class must be a string, got nan"),
        (dict(species=7), "species must be a string, got 7"),
        (dict(genus="Passer", common=["sparrow"]), "common must be a string"),
    ],
)
def test_taxon_from_fields_strict_errors(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        taxon_from_fields(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "lineage"),
    [
        (dict(kingdom="Animalia", phylum="unknown", cls="Aves"), ("Animalia",)),
        (dict(kingdom="Animalia", phylum="Chordata", cls="Aves", order="Passeriformes", genus="Passer",
              species="domesticus"), ("Animalia", "Chordata", "Aves", "Passeriformes")),
        (dict(kingdom="Animalia", phylum="12", cls="Aves"), ("Animalia",)),
        (dict(family="Canidae", genus="Canis", species="Vulpes vulpes"), ("", "", "", "", "Canidae", "Canis")),
        (dict(species="domesticus"), ()),
        (dict(order="Diptera", family="none", genus="Bradysia"), ("", "", "", "Diptera")),
    ],
)
def test_taxon_from_fields_lenient_truncates_at_first_gap(fields: dict[str, str], lineage: tuple[str, ...]) -> None:
    taxon = taxon_from_fields(**fields, strict=False)
    assert taxon.lineage == lineage + ("",) * (7 - len(lineage))


def test_taxon_from_fields_lenient_still_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="genus must be a string"):
        taxon_from_fields(genus=None, strict=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "lineage"),
    [
        ("03938_Animalia_Chordata_Aves_Passeriformes_Meliphagidae_Ptilotula_penicillata", HONEYEATER),
        ("train/03938_Animalia_Chordata_Aves_Passeriformes_Meliphagidae_Ptilotula_penicillata/", HONEYEATER),
        ("C:\\inat\\03938_Animalia_Chordata_Aves_Passeriformes_Meliphagidae_Ptilotula_penicillata", HONEYEATER),
        ("Animalia_Chordata_Aves_Passeriformes_Meliphagidae_Ptilotula_penicillata", HONEYEATER),
        ("00000_Animalia_Annelida_Clitellata_Crassiclitellata_Lumbricidae_Eisenia_fetida",
         ("Animalia", "Annelida", "Clitellata", "Crassiclitellata", "Lumbricidae", "Eisenia", "fetida")),
        ("09999_Plantae_Tracheophyta_Magnoliopsida_Asterales_Asteraceae_Symphyotrichum_novae-angliae",
         ("Plantae", "Tracheophyta", "Magnoliopsida", "Asterales", "Asteraceae", "Symphyotrichum", "novae-angliae")),
        ("01234_Animalia_Chordata_Mammalia_Carnivora_Canidae_Canis_lupus_familiaris",
         ("Animalia", "Chordata", "Mammalia", "Carnivora", "Canidae", "Canis", "lupus")),
    ],
)
def test_parse_inat21_dirname(name: str, lineage: tuple[str, ...]) -> None:
    assert parse_inat21_dirname(name).lineage == lineage


@pytest.mark.parametrize(
    "bad", ["03938_Animalia_Chordata_Aves", "Tomato___Late_blight", "", "03938__Chordata_Aves_Passeriformes_M_P_p"]
)
def test_parse_inat21_dirname_rejects_other_names(bad: str) -> None:
    with pytest.raises(ValueError, match="iNat2021"):
        parse_inat21_dirname(bad)


@pytest.mark.parametrize(
    ("text", "lineage"),
    [
        ("Animalia Chordata Aves Passeriformes Meliphagidae Ptilotula penicillata", HONEYEATER),
        ("animalia chordata aves passeriformes meliphagidae ptilotula penicillata", HONEYEATER),
        ("Animalia Chordata Aves Passeriformes Passeridae Passer domesticus (Linnaeus, 1758)", SPARROW),
        ("Metazoa Chordata Aves", ("Animalia", "Chordata", "Aves")),
        ("Animalia", ("Animalia",)),
        ("Animalia;Chordata;Aves;Passeriformes;Meliphagidae;Ptilotula;penicillata", HONEYEATER),
        ("Animalia | Chordata | Aves | Passeriformes | Meliphagidae | Ptilotula | Ptilotula penicillata", HONEYEATER),
        ("Animalia > Chordata > Aves", ("Animalia", "Chordata", "Aves")),
        ("Animalia;Chordata;Aves;", ("Animalia", "Chordata", "Aves")),
        ("k__Animalia;p__Chordata;c__Aves;o__Passeriformes;f__Passeridae;g__Passer;s__Passer_domesticus", SPARROW),
        ("k__Animalia; p__Chordata; c__Aves; o__; f__; g__; s__", ("Animalia", "Chordata", "Aves")),
        ("d__Bacteria;p__Proteobacteria;c__Gammaproteobacteria",
         ("Bacteria", "Proteobacteria", "Gammaproteobacteria")),
        ("kingdom Animalia phylum Chordata class Aves order Passeriformes family Meliphagidae genus Ptilotula "
         "species penicillata", HONEYEATER),
        ("kingdom Animalia phylum Chordata class Aves", ("Animalia", "Chordata", "Aves")),
        ("Animalia_Chordata_Aves", ("Animalia", "Chordata", "Aves")),
    ],
)
def test_parse_taxonomic_string(text: str, lineage: tuple[str, ...]) -> None:
    assert parse_taxonomic_string(text).lineage == lineage + ("",) * (7 - len(lineage))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no ranks"),
        ("unknown", "no ranks"),
        ("Animalia;;Aves", "gap: class 'Aves'"),
        ("k__Animalia;c__Aves", "gap: class 'Aves'"),
        ("k__Animalia;Chordata", "lacks a rank prefix"),
        ("A;B;C;D;E;F;G;H", "more than 7 ranks"),
        ("Animalia Chordata 42", "class '42'"),
        ("Animalia phylum Chordata", "no rank tag"),
    ],
)
def test_parse_taxonomic_string_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_taxonomic_string(text)


@pytest.mark.parametrize(
    ("text", "lineage"),
    [
        ("Ptilotula penicillata", binomial("Ptilotula", "penicillata")),
        ("Amanita excelsa Gonn. & Rabenh.", binomial("Amanita", "excelsa")),
        ("Passer domesticus (Linnaeus, 1758)", binomial("Passer", "domesticus")),
        ("Quercus robur L.", binomial("Quercus", "robur")),
        ("Canis lupus familiaris", binomial("Canis", "lupus")),
        ("Quercus robur subsp. broteroana", binomial("Quercus", "robur")),
        ("Bombus (Pyrobombus) impatiens", binomial("Bombus", "impatiens")),
        ("Lamium_galeobdolon", binomial("Lamium", "galeobdolon")),
        ("passer DOMESTICUS", binomial("Passer", "domesticus")),
        ("Amanita sp.", binomial("Amanita")),
        ("Amanita", binomial("Amanita")),
        ("Mentha × piperita", binomial("Mentha", "piperita")),
    ],
)
def test_parse_binomial(text: str, lineage: tuple[str, ...]) -> None:
    assert parse_binomial(text).lineage == lineage


@pytest.mark.parametrize("bad", ["", "unknown", "sp.", "cf. Amanita"])
def test_parse_binomial_without_a_name_raises(bad: str) -> None:
    with pytest.raises(ValueError, match="no scientific name"):
        parse_binomial(bad)


@pytest.mark.parametrize(
    ("label", "lineage", "common"),
    [
        ("03938_Animalia_Chordata_Aves_Passeriformes_Meliphagidae_Ptilotula_penicillata", HONEYEATER, ""),
        ("Animalia Chordata Aves Passeriformes Meliphagidae Ptilotula penicillata", HONEYEATER, ""),
        ("Metazoa;Chordata;Aves", ("Animalia", "Chordata", "Aves"), ""),
        ("k__Animalia;p__Chordata;c__Aves;o__Passeriformes;f__Passeridae;g__Passer;s__domesticus", SPARROW, ""),
        ("Passer domesticus", binomial("Passer", "domesticus"), ""),
        ("Amanita excelsa Gonn. & Rabenh.", binomial("Amanita", "excelsa"), ""),
        ("Passer domesticus (Linnaeus, 1758)", binomial("Passer", "domesticus"), ""),
        ("Quercus robur L.", binomial("Quercus", "robur"), ""),
        ("Bombus (Pyrobombus) impatiens", binomial("Bombus", "impatiens"), ""),
        ("Lamium_galeobdolon", binomial("Lamium", "galeobdolon"), ""),
        ("  Lamium   galeobdolon ", binomial("Lamium", "galeobdolon"), ""),
        ("passer DOMESTICUS", binomial("Passer", "domesticus"), ""),
        ("passer domesticus", binomial("Passer", "domesticus"), ""),
        ("Canis lupus familiaris", binomial("Canis", "lupus"), ""),
        ("Quercus robur var. fastigiata", binomial("Quercus", "robur"), ""),
        ("Amanita sp.", binomial("Amanita"), ""),
        ("Amanita cf. excelsa", binomial("Amanita"), ""),
        ("Mentha x piperita", binomial("Mentha", "piperita"), ""),
        ("Salix alba × Salix fragilis", binomial("Salix"), ""),
        ("Amanita", binomial("Amanita"), ""),
        ("Apidae", ("", "", "", "", "Apidae"), ""),
        ("Rosaceae", ("", "", "", "", "Rosaceae"), ""),
        ("Passeriformes", ("", "", "", "Passeriformes"), ""),
        ("Fagales", ("", "", "", "Fagales"), ""),
        ("Fungi", ("Fungi",), ""),
        # captions (our own renderings) parse back, with the common name
        ("a photo of Ptilotula penicillata with common name White-plumed Honeyeater.",
         binomial("Ptilotula", "penicillata"), "White-plumed Honeyeater"),
        ("a photo of kingdom Animalia phylum Chordata class Aves with common name birds.",
         ("Animalia", "Chordata", "Aves"), "birds"),
    ],
)
def test_parse_label(label: str, lineage: tuple[str, ...], common: str) -> None:
    taxon = parse_label(label)
    assert taxon is not None
    assert taxon.lineage == lineage + ("",) * (7 - len(lineage))
    assert taxon.common == common


@pytest.mark.parametrize(
    "label",
    [
        "Tomato___Late_blight",  # PlantVillage crop___disease
        "Apple___Apple_scab",
        "Corn_(maize)___Common_rust_",
        "Tomato___healthy",
        "American Goldfinch",  # Title Case common names
        "AMERICAN GOLDFINCH",  # Birds 525 style
        "ABBOTTS BABBLER",
        "Black-throated Sparrow",
        "healthy",
        "",
        "unknown",
        "(unidentified)",
        "12345",
        "leaf 3",
        "Animalia;;Aves",  # a gap: not a valid taxon
    ],
)
def test_parse_label_non_taxa(label: str) -> None:
    assert parse_label(label) is None


@pytest.mark.parametrize("kind", [TextType.TAXON, TextType.TAXON_COM, TextType.TAXON_TAG, TextType.TAXON_TAG_COM])
def test_parse_label_round_trips_rendered_captions(kind: TextType) -> None:
    taxon = Taxon(HONEYEATER, "White-plumed Honeyeater")
    parsed = parse_label(render_caption(taxon, kind))
    assert parsed == taxon
    assert parsed is not None and parsed.common == ("White-plumed Honeyeater" if "com" in kind.value else "")
