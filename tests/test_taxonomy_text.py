"""Text types, captions, shard texts, class strings and prompt templates: exact BioCLIP strings."""

from __future__ import annotations

import hashlib

import pytest

from treeclip.taxonomy import (
    CLASS_STRING_KINDS,
    OPENAI_TEMPLATES,
    PHOTO_TEMPLATES,
    TRAIN_TEXT_TYPES,
    Taxon,
    TextType,
    class_string,
    get_templates,
    render_caption,
    render_name,
    shard_texts,
)

HONEYEATER = Taxon(
    ("Animalia", "Chordata", "Aves", "Passeriformes", "Meliphagidae", "Ptilotula", "penicillata"),
    "White-plumed Honeyeater",
)
TAX = "Animalia Chordata Aves Passeriformes Meliphagidae Ptilotula penicillata"
TAG = ("kingdom Animalia phylum Chordata class Aves order Passeriformes family Meliphagidae "
       "genus Ptilotula species penicillata")
NO_COMMON = Taxon(HONEYEATER.lineage)
GENUS_ONLY = Taxon(HONEYEATER.lineage[:6])
CLASS_ONLY = Taxon(HONEYEATER.lineage[:3], "birds")
BINOMIAL = Taxon(("",) * 5 + ("Ptilotula", "penicillata"))


@pytest.mark.parametrize(
    ("taxon", "kind", "caption"),
    [
        (HONEYEATER, "sci", "a photo of Ptilotula penicillata."),
        (HONEYEATER, "com", "a photo of White-plumed Honeyeater."),
        (HONEYEATER, "taxon", f"a photo of {TAX}."),
        (HONEYEATER, "sci_com", "a photo of Ptilotula penicillata with common name White-plumed Honeyeater."),
        (HONEYEATER, "taxon_com", f"a photo of {TAX} with common name White-plumed Honeyeater."),
        (HONEYEATER, "taxonTag", f"a photo of {TAG}."),
        (HONEYEATER, "taxonTag_com", f"a photo of {TAG} with common name White-plumed Honeyeater."),
        # a missing common name falls back to the scientific name
        (NO_COMMON, "com", "a photo of Ptilotula penicillata."),
        (NO_COMMON, "sci_com", "a photo of Ptilotula penicillata with common name Ptilotula penicillata."),
        (NO_COMMON, "taxon_com", f"a photo of {TAX} with common name Ptilotula penicillata."),
        (NO_COMMON, "taxonTag_com", f"a photo of {TAG} with common name Ptilotula penicillata."),
        (GENUS_ONLY, "sci", "a photo of Ptilotula."),
        (GENUS_ONLY, "com", "a photo of Ptilotula."),
        (GENUS_ONLY, "taxonTag", "a photo of kingdom Animalia phylum Chordata class Aves order Passeriformes "
                                 "family Meliphagidae genus Ptilotula."),
        # above genus: no placeholders; the scientific name falls back to the taxonomic string
        (Taxon(HONEYEATER.lineage[:3]), "sci", "a photo of Animalia Chordata Aves."),
        (Taxon(HONEYEATER.lineage[:3]), "com", "a photo of Animalia Chordata Aves."),
        (Taxon(HONEYEATER.lineage[:3]), "taxon_com",
         "a photo of Animalia Chordata Aves with common name Animalia Chordata Aves."),
        (CLASS_ONLY, "taxonTag_com", "a photo of kingdom Animalia phylum Chordata class Aves with common name birds."),
        (CLASS_ONLY, "sci_com", "a photo of Animalia Chordata Aves with common name birds."),
        (BINOMIAL, "taxon", "a photo of Ptilotula penicillata."),
        (BINOMIAL, "taxonTag", "a photo of genus Ptilotula species penicillata."),
        # a label that is only a common name (a non-taxon class) renders as itself
        (Taxon(common="Tomato Late blight"), "sci_com",
         "a photo of Tomato Late blight with common name Tomato Late blight."),
        (Taxon(common="Tomato Late blight"), TextType.TAXON, "a photo of Tomato Late blight."),
    ],
)
def test_render_caption(taxon: Taxon, kind: str, caption: str) -> None:
    assert render_caption(taxon, kind) == caption
    assert render_name(taxon, kind) == caption[len("a photo of "):-1]


def test_text_type_values_and_training_mix() -> None:
    assert [t.value for t in TextType] == ["sci", "com", "taxon", "sci_com", "taxon_com", "taxonTag", "taxonTag_com"]
    assert TRAIN_TEXT_TYPES == (TextType.SCI, TextType.COM, TextType.TAXON, TextType.SCI_COM, TextType.TAXON_COM)
    assert TextType("taxonTag_com").filename == "taxonTag_com.txt"
    assert TextType.SCI == "sci"  # str-valued enum: usable as a plain string key


@pytest.mark.parametrize("kind", ["scientific", "Sci", "tag", ""])
def test_unknown_text_type_raises(kind: str) -> None:
    with pytest.raises(ValueError, match=f"unknown text type {kind!r}"):
        render_caption(HONEYEATER, kind)


def test_empty_taxon_cannot_be_rendered() -> None:
    with pytest.raises(ValueError, match="neither ranks nor a common name"):
        render_caption(Taxon(), "com")
    with pytest.raises(ValueError, match="expected a Taxon"):
        render_name(HONEYEATER.lineage, "sci")  # type: ignore[arg-type]


def test_shard_texts_full_taxon() -> None:
    texts = shard_texts(HONEYEATER)
    assert set(texts) == {
        "sci.txt", "com.txt", "taxon.txt", "sci_com.txt", "taxon_com.txt", "taxonTag.txt", "taxonTag_com.txt",
        "scientific_name.txt", "taxonomic_name.txt", "common_name.txt",
    }
    for kind in TextType:
        assert texts[kind.filename] == render_caption(HONEYEATER, kind)
    assert texts["scientific_name.txt"] == "Ptilotula penicillata"
    assert texts["taxonomic_name.txt"] == TAX
    assert texts["common_name.txt"] == "White-plumed Honeyeater"


@pytest.mark.parametrize(
    ("taxon", "scientific", "taxonomic", "common"),
    [
        (NO_COMMON, "Ptilotula penicillata", TAX, "Ptilotula penicillata"),
        (GENUS_ONLY, "Ptilotula", TAX.rsplit(" ", 1)[0], "Ptilotula"),
        (Taxon(HONEYEATER.lineage[:3]), "", "Animalia Chordata Aves", "Animalia Chordata Aves"),
        (CLASS_ONLY, "", "Animalia Chordata Aves", "birds"),
    ],
)
def test_shard_texts_raw_names_follow_treeoflife(taxon: Taxon, scientific: str, taxonomic: str, common: str) -> None:
    texts = shard_texts(taxon)
    assert texts["scientific_name.txt"] == scientific
    assert texts["taxonomic_name.txt"] == taxonomic
    assert texts["common_name.txt"] == common  # the common name after its fallback, as in TreeOfLife-10M
    assert all(caption.startswith("a photo of ") and caption.endswith(".") and " ." not in caption
               for name, caption in texts.items() if name not in {"scientific_name.txt", "taxonomic_name.txt",
                                                                  "common_name.txt"})


def test_shard_texts_needs_ranks() -> None:
    with pytest.raises(ValueError, match="at least one rank"):
        shard_texts(Taxon(common="Tomato Late blight"))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("sci", "Ptilotula penicillata"),
        ("com", "White-plumed Honeyeater"),
        ("taxon", TAX),
        ("sci_com", "Ptilotula penicillata with common name White-plumed Honeyeater"),
        ("taxon_com", f"{TAX} with common name White-plumed Honeyeater"),
        ("taxonTag", TAG),
        ("asis", "White-plumed Honeyeater"),
        (TextType.TAXON_COM, f"{TAX} with common name White-plumed Honeyeater"),
    ],
)
def test_class_string(kind: str, expected: str) -> None:
    assert class_string(HONEYEATER, kind) == expected


def test_class_string_asis_is_the_dataset_label() -> None:
    label = Taxon(common="Tomato___Late_blight")
    assert class_string(label, "asis") == "Tomato___Late_blight"
    assert class_string(NO_COMMON, "asis") == "Ptilotula penicillata"
    assert set(CLASS_STRING_KINDS) >= {"sci", "com", "taxon", "sci_com", "taxon_com", "asis"}
    with pytest.raises(ValueError, match="unknown class-string kind 'common'"):
        class_string(HONEYEATER, "common")


def test_openai_templates_are_the_80_published_ones() -> None:
    assert len(OPENAI_TEMPLATES) == 80 and len(set(OPENAI_TEMPLATES)) == 80
    assert all(t.count("{}") == 1 and t.count("{") == 1 and t.count("}") == 1 for t in OPENAI_TEMPLATES)
    assert OPENAI_TEMPLATES[0] == "a bad photo of a {}." and OPENAI_TEMPLATES[-1] == "a tattoo of the {}."
    assert "a photo of a {}." in OPENAI_TEMPLATES and "itap of my {}." in OPENAI_TEMPLATES
    # checksum of the published list, in order (cross-checked against open_clip's zero_shot_metadata)
    digest = hashlib.sha256("\n".join(OPENAI_TEMPLATES).encode()).hexdigest()
    assert digest == "4f976686fb651bb5803d4689dcd849f75efe0ef19a3c801355bc9a6f03c8a5af"


def test_template_sets() -> None:
    assert PHOTO_TEMPLATES == ("a photo of {}.",)
    assert get_templates("openai") is OPENAI_TEMPLATES and get_templates("photo") is PHOTO_TEMPLATES
    assert get_templates("photo")[0].format(render_name(HONEYEATER, "sci")) == render_caption(HONEYEATER, "sci")
    with pytest.raises(ValueError, match="unknown template set 'imagenet'"):
        get_templates("imagenet")
