"""src.eval.chair: hand-written captions with known hallucinations, the reference code's special
cases, the demo's shapes, and agreement with the reference implementation on 120 captions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from spacy.language import Language

from src.data.coco import load_captions, load_image_categories
from src.data.noun_phrases import load_spacy
from src.eval.chair import (
    SPACY_PIPES_OFF,
    ChairCaption,
    category_vocabulary,
    chair_metrics,
    chair_per_image,
    chair_problem,
    coco_vocabulary,
    find_mentions,
    image_objects,
    score_chair,
    vocabulary_for,
)

REFERENCE_OUTPUTS = Path(__file__).with_name("chair_reference.json")
DEMO_CATEGORIES = [f"{color} {kind}" for kind in ("circle", "square", "triangle")
                   for color in ("red", "green", "blue")]


@pytest.fixture(scope="module")
def nlp() -> Language:
    return load_spacy(disable=SPACY_PIPES_OFF)


def _objects(texts: list[str], nlp: Language) -> list[list[str]]:
    return [[m.object for m in found] for found in find_mentions(texts, coco_vocabulary(), nlp)]


def _write_instances(path: Path, categories: list[str], present: dict[int, list[str]]) -> Path:
    ids = {name: index + 1 for index, name in enumerate(categories)}
    annotations = [{"id": n, "image_id": image_id, "category_id": ids[name],
                    "bbox": [0, 0, 10, 10], "iscrowd": 0}
                   for n, (image_id, name) in enumerate(
                       (i, name) for i, names in present.items() for name in names)]
    path.write_text(json.dumps({"images": [{"id": i} for i in present],
                                "annotations": annotations,
                                "categories": [{"id": v, "name": k} for k, v in ids.items()]}))
    return path


def test_one_hallucinated_object_and_a_synonym_that_is_not(tmp_path: Path) -> None:
    instances = _write_instances(tmp_path / "instances.json", ["person", "dog", "cat", "bench"],
                                 {1: ["person", "dog"], 2: ["person", "bench"]})
    captions = {1: "A man walking his dog next to a cat.",  # "man" is a person; no cat there
                2: "Two women sitting on a bench."}
    references = {1: ["Someone walks a dog."], 2: ["People on a bench."]}
    per_image = chair_per_image(captions, references, instances)

    assert [(m.text, m.object) for m in per_image[1].mentions] == [
        ("man", "person"), ("dog", "dog"), ("cat", "cat")]
    assert [m.text for m in per_image[1].hallucinated] == ["cat"]
    assert per_image[1].hallucinated[0].start == captions[1].index("cat")
    assert per_image[2].hallucinated == ()
    metrics = chair_metrics(per_image, num_resamples=200, seed=0)
    # 1 of 5 mentions (man, dog, cat, women, bench), 1 of 2 captions
    assert metrics["chair_i"] == pytest.approx(1 / 5)
    assert metrics["chair_s"] == pytest.approx(1 / 2)
    assert (metrics["chair_mentions"], metrics["chair_hallucinated"]) == (5, 1)
    low, high = metrics["chair_i_ci95"]
    assert 0.0 <= low <= metrics["chair_i"] <= high <= 1.0


def test_reference_captions_add_objects(tmp_path: Path) -> None:
    instances = _write_instances(tmp_path / "instances.json", ["person", "cat"], {1: ["person"]})
    caption = {1: "A girl holding a kitten."}
    without = chair_per_image(caption, {1: ["A girl."]}, instances)
    with_cat = chair_per_image(caption, {1: ["A girl with her cat."]}, instances)
    assert [m.object for m in without[1].hallucinated] == ["cat"]
    assert with_cat[1].hallucinated == ()


@pytest.mark.parametrize(("caption", "objects"), [
    ("A boy eats a hot dog.", ["person", "hot dog"]),  # not a dog
    ("Hot dogs and a dog.", ["hot dog", "dog"]),
    ("A teddy bear on a bed.", ["teddy bear", "bed"]),  # not a bear
    ("A baby elephant and an adult giraffe.", ["elephant", "giraffe"]),  # no person
    ("A passenger jet over a passenger train.", ["airplane", "train"]),
    ("The seat of the toilet is up.", ["toilet"]),  # "seat" is no chair beside a toilet
    ("A toilet seat.", ["toilet"]),
    ("A chair with a seat cushion.", ["chair", "chair"]),
    ("A batter at home plate near the train track.", []),  # no plate, no train
    ("Men, children and people with knives, mice and scissors.",
     ["person", "person", "person", "knife", "mouse", "scissors"]),
    ("A man skiing with skis.", ["person", "skis"]),  # "skiing" names no skis
    ("Two wine glasses and a cell phone.", ["wine glass", "cell phone"]),
    ("A hot-dog and a teddy-bear.", ["hot dog", "teddy bear"]),
    ("A stove top oven.", ["oven"]),
    ("A bus and a motor bike.", ["bus", "motorcycle"]),
    ("", []),
])
def test_reference_rules(caption: str, objects: list[str], nlp: Language) -> None:
    assert _objects([caption], nlp) == [objects]


def test_demo_shapes(nlp: Language) -> None:
    vocabulary = vocabulary_for(DEMO_CATEGORIES)
    assert vocabulary == category_vocabulary(DEMO_CATEGORIES)
    objects = image_objects([7], {7: ["red circle", "green square"]}, {}, vocabulary, nlp)
    assert objects[7] == {"red circle", "circle", "green square", "square"}
    per_image = score_chair({7: "a large red circle to the left of a small blue square, "
                                "a circle and a triangle."}, objects, vocabulary, nlp)
    assert [m.object for m in per_image[7].mentions] == [
        "red circle", "blue square", "circle", "triangle"]
    assert [m.text for m in per_image[7].hallucinated] == ["blue square", "triangle"]
    plural = score_chair({7: "two red circles."}, objects, vocabulary, nlp)
    assert [m.object for m in plural[7].mentions] == ["red circle"]


def test_vocabulary_choice() -> None:
    assert vocabulary_for(["person", "dog"]) == coco_vocabulary()
    assert len(coco_vocabulary().category_objects) == 80


def test_unavailable_without_an_instances_file(tmp_path: Path) -> None:
    assert chair_problem(None) is not None
    assert "not found" in chair_problem(tmp_path / "instances_val2017.json")
    assert chair_problem(_write_instances(tmp_path / "i.json", ["dog"], {1: ["dog"]})) is None


def test_metrics_with_no_mentions() -> None:
    per_image = {1: ChairCaption((), ()), 2: ChairCaption((), ())}
    metrics = chair_metrics(per_image, num_resamples=50, seed=0)
    assert metrics["chair_i"] == 0.0 and metrics["chair_s"] == 0.0
    assert metrics["chair_i_ci95"] == [0.0, 0.0]


# Where we differ from the reference code on the recorded captions, and why (each kept on
# purpose; see the module docstring of src.eval.chair).
DIFFERENCES = {
    "A white stove top oven sitting in a kitchen next to a doorway.": "stove top oven: one",
    "A stove top oven below a microwave.": "stove top oven: one",
    "A double length metro bus drives down a city street.": "pattern singularizes bus to bu",
    "A red bus passes by an old church and statue.": "bus",
    "Passenger jets parked at the airport next to a bus.": "bus",
    "A bus driving down the road past a red car.": "bus",
    "A woman on a motorcycle next to a bus.": "bus",
    "A little boy holding a hot-dog next to his dog.": "hyphenated hot-dog",
    "A stuffed teddy-bear next to a cup of coffee.": "hyphenated teddy-bear",
    "A laptop computer, a cell phone and an iPhone next to a mouse.": "iPhone never matches",
    "A cheesecake and a sandwich on a table.": "' cheesecake' in the published list",
    "A woman sitting on a motor bike.": "' motor bike' in the published list",
}


def test_agrees_with_the_reference_implementation(coco_mini: Path, nlp: Language) -> None:
    recorded = json.loads(REFERENCE_OUTPUTS.read_text())
    names, categories = load_image_categories(coco_mini / "annotations/instances_train2017.json")
    references = {i: [c.caption for c in caps] for i, caps in load_captions(
        coco_mini / "annotations/captions_train2017.json").by_image().items()}
    vocabulary = vocabulary_for(names)
    image_ids = sorted(int(i) for i in recorded["image_objects"])
    objects = image_objects(image_ids, categories, references, vocabulary, nlp)
    assert {str(i): sorted(objects[i]) for i in image_ids} == recorded["image_objects"]

    captions = recorded["captions"]
    found = find_mentions([c["caption"] for c in captions], vocabulary, nlp)
    differing = set()
    for caption, mentions in zip(captions, found, strict=True):
        ours = [m.object for m in mentions]
        hallucinated = [m.object for m in mentions if m.object not in objects[caption["image_id"]]]
        if (ours, hallucinated) != (caption["objects"], caption["hallucinated"]):
            differing.add(caption["caption"])
    assert differing == set(DIFFERENCES)
    assert len(captions) - len(differing) == 108
